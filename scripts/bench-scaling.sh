#!/usr/bin/env bash
# Data-parallel scaling on one machine: the same training, with the same global batch, run by
#   (a) one process using all THREADS cores, and
#   (b) THREADS processes under `mpirun`, one core each (each rank holds the model, trains on its
#       share of every global batch and averages gradients through MPI),
# for pretraining (V-JEPA, phantom stream) and fine-tuning (three heads, phantom stream) of the
# quick-start encoder (96 wide, 4 blocks, 16 frames of 112 px). Prints a table of clips per
# second (median over the steps after the first two; fine-tuning: the second epoch) and the ratio
# b / a. SYNTHETIC phantom clips; nothing is kept but the log.
#
#   cargo build --release -p trainer --features mpi     # needs openmpi-bin libopenmpi-dev libclang-dev
#   scripts/bench-scaling.sh                            # THREADS=2 STEPS=10 BATCH=8
#   THREADS=4 STEPS=20 scripts/bench-scaling.sh /tmp/scaling
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-/tmp/bench-scaling}"
T="${TRAINER:-$REPO/target/release/trainer}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-10}"
BATCH="${BATCH:-8}"
if [ $((BATCH % THREADS)) -ne 0 ]; then
    echo "BATCH ($BATCH) must be a multiple of THREADS ($THREADS)" >&2
    exit 2
fi
if ! command -v mpirun >/dev/null; then
    echo "mpirun not found: install openmpi-bin (and build the trainer with --features mpi)" >&2
    exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
# Open MPI refuses root unless told; these are ignored for other users
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export RUST_LOG=warn

pretrain_yaml() { # name tasks batch
    cat <<EOF
app: vjepa
nodes: 1
tasks_per_node: $2
folder: $OUT/$1
data:
  dataset_type: PhantomStream
  frame_step: 2
  phantom: {width: 320, height: 240, fps: 30}
  batch_size: $3
  crop_size: 112
  patch_size: 16
  dataset_fpcs: [16]
  tubelet_size: 2
mask:
- {aspect_ratio: [0.75, 1.5], num_blocks: 8, spatial_scale: [0.15, 0.15], temporal_scale: [1.0, 1.0]}
- {aspect_ratio: [0.75, 1.5], num_blocks: 2, spatial_scale: [0.7, 0.7], temporal_scale: [1.0, 1.0]}
meta: {save_every_freq: 0, seed: 0}
model: {model_name: vit_tiny, embed_dim: 96, depth: 4, num_heads: 4, pred_depth: 2, pred_embed_dim: 96, pred_num_heads: 4}
optimization:
  ema: [0.998, 1.0]
  ipe: $STEPS
  epochs: 1
  start_lr: 2.0e-4
  lr: 6.25e-4
  final_lr: 1.0e-6
  warmup: 0
  weight_decay: 0.04
EOF
}

finetune_yaml() { # name tasks batch
    cat <<EOF
app: vjepa
eval_name: finetune
nodes: 1
tasks_per_node: $2
folder: $OUT/$1
tag: t
model_kwargs:
  pretrain_kwargs:
    encoder: {checkpoint_key: target_encoder, model_name: vit_tiny, embed_dim: 96, depth: 4, num_heads: 4, patch_size: 16, tubelet_size: 2}
experiment:
  classifier: {num_heads: 4, num_probe_blocks: 1}
  data: {dataset_type: PhantomStream, resolution: 112, frames_per_clip: 16, frame_step: 2}
  optimization: {batch_size: $3, num_epochs: 2, seed: 0}
finetune:
  init: random
  steps_per_epoch: $((STEPS / 2))
  lr: 1.0e-3
  encoder_lr: 5.0e-4
  layer_decay: 0.75
  warmup_epochs: 0.5
  drop_path: 0.1
  clip_grad: 1.0
  val_clips: 6
  test_clips: 6
  lv_scans: 1
  heads:
  - {name: view, task: view}
  - {name: ef, task: ef, views: [a4c, a2c]}
  - {name: lv, task: lv_segmentation, views: [a4c, a2c]}
  phantom: {width: 320, height: 240, fps: 30}
EOF
}

# median of the pretraining clips/s column (8) after the first two steps
pretrain_rate() {
    tail -n +4 "$1/metrics.csv" | cut -d, -f8 | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}
# clips/s of the second fine-tuning epoch
finetune_rate() {
    local col
    col=$(head -1 "$1/metrics.csv" | tr ',' '\n' | grep -n '^clips_per_s$' | cut -d: -f1)
    sed -n 3p "$1/metrics.csv" | cut -d, -f"$col"
}

LOG="$OUT/scaling.txt"
{
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "global batch $BATCH, $STEPS steps, $THREADS threads vs $THREADS ranks x 1 thread; $(date -u +%F)"
} | tee "$LOG"

pretrain_yaml one 1 "$BATCH" > "$OUT/pretrain-one.yaml"
pretrain_yaml ranks "$THREADS" $((BATCH / THREADS)) > "$OUT/pretrain-ranks.yaml"
finetune_yaml ft-one 1 "$BATCH" > "$OUT/finetune-one.yaml"
finetune_yaml ft-ranks "$THREADS" $((BATCH / THREADS)) > "$OUT/finetune-ranks.yaml"

echo "pretraining: one process, $THREADS threads" | tee -a "$LOG"
RAYON_NUM_THREADS="$THREADS" "$T" pretrain --config "$OUT/pretrain-one.yaml" > "$OUT/pretrain-one.log" 2>&1
echo "pretraining: $THREADS ranks, 1 thread each" | tee -a "$LOG"
mpirun --oversubscribe -np "$THREADS" -x RAYON_NUM_THREADS=1 -x RUST_LOG \
    "$T" pretrain --config "$OUT/pretrain-ranks.yaml" > "$OUT/pretrain-ranks.log" 2>&1
echo "fine-tuning: one process, $THREADS threads" | tee -a "$LOG"
RAYON_NUM_THREADS="$THREADS" "$T" finetune --config "$OUT/finetune-one.yaml" > "$OUT/finetune-one.log" 2>&1
echo "fine-tuning: $THREADS ranks, 1 thread each" | tee -a "$LOG"
mpirun --oversubscribe -np "$THREADS" -x RAYON_NUM_THREADS=1 -x RUST_LOG \
    "$T" finetune --config "$OUT/finetune-ranks.yaml" > "$OUT/finetune-ranks.log" 2>&1

p1=$(pretrain_rate "$OUT/one")
pn=$(pretrain_rate "$OUT/ranks")
f1=$(finetune_rate "$OUT/ft-one/finetune/t")
fn=$(finetune_rate "$OUT/ft-ranks/finetune/t")
{
    echo
    echo "| job | 1 process x $THREADS threads (clips/s) | $THREADS ranks x 1 thread (clips/s) | ranks / process |"
    echo "|---|---|---|---|"
    awk -v a="$p1" -v b="$pn" 'BEGIN {printf "| pretrain | %.2f | %.2f | %.2f |\n", a, b, b / a}'
    awk -v a="$f1" -v b="$fn" 'BEGIN {printf "| finetune | %.2f | %.2f | %.2f |\n", a, b, b / a}'
} | tee -a "$LOG"
echo "log: $LOG"
