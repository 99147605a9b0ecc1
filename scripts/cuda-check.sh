#!/usr/bin/env bash
# CUDA check of the trainer, for a machine with an NVIDIA GPU and the CUDA toolkit (nvcc).
# Builds `trainer` with `--features cuda`, then, in a scratch directory:
#   1. bench-pretrain: pretraining throughput of vit_tiny and vit_small at 16x112x112 on
#      cuda:0 in bf16 (and f32 for comparison);
#   2. synth: a small phantom dataset;
#   3. pretrain (quick-start config) on cuda:0 for a few dozen steps, killed half way and resumed;
#   4. probe (EF regression) on cuda:0 from the checkpoint;
#   5. the same probe on the CPU from the same checkpoint, to compare;
#   6. NCCL: `trainer collective-check` on G ranks, one per visible GPU, started with torchrun's
#      variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; no torchrun needed),
#      then a tiny pretraining on G ranks with batch 2 per rank against one process with batch
#      2G: the loss and grad_norm columns of metrics.csv must agree. With one GPU, NCCL cannot
#      put two ranks on it: the check runs NCCL on a world of one and the pretraining compares
#      a launched world of one (cuda:LOCAL_RANK) with a plain process.
# Takes a few minutes after the build. Results: $OUT/cuda-check.txt.
#
#   scripts/cuda-check.sh                # OUT=/tmp/cuda-check
#   OUT=/somewhere STEPS=60 scripts/cuda-check.sh
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/cuda-check}"
STEPS="${STEPS:-40}"
mkdir -p "$OUT"
LOG="$OUT/cuda-check.txt"
: > "$LOG"
say() { echo "== $*" | tee -a "$LOG"; }

if ! command -v nvidia-smi >/dev/null; then
    echo "nvidia-smi not found: this script needs an NVIDIA GPU" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv | tee -a "$LOG"
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    CUDA_COMPUTE_CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')"
    export CUDA_COMPUTE_CAP
fi
say "building trainer --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
(cd "$REPO" && cargo build --release -p trainer --features cuda 2>&1 | tail -3)
T="$CARGO_TARGET_DIR/release/trainer"

say "1. pretraining throughput (random clips, reference masks, 12-layer predictor)"
for model in vit_tiny vit_small; do
    for dt in bfloat16 float32; do
        "$T" bench-pretrain --model "$model" --frames 16 --crop 112 --batch 16 --steps 5 --warmup 2 \
            --dtype "$dt" --devices cuda:0 | tee -a "$LOG"
    done
done

cd "$OUT"
say "2. synthetic phantom dataset"
"$T" synth --out data/phantom --patients 48 --seed 1 | tail -2 | tee -a "$LOG"

say "3. pretraining on cuda:0, killed after ~half the steps, then resumed"
rm -rf runs
HALF=$((STEPS / 2))
"$T" pretrain --config "$REPO/configs/quickstart/pretrain-tiny.yaml" --devices cuda:0 \
    --max-steps "$HALF" | tee -a "$LOG"
"$T" pretrain --config "$REPO/configs/quickstart/pretrain-tiny.yaml" --devices cuda:0 \
    --resume --max-steps "$STEPS" | tee -a "$LOG"
cp runs/phantom/pretrain-tiny/metrics.csv "$OUT/metrics-resumed.csv"
rm -rf runs/phantom/pretrain-tiny-straight
"$T" pretrain --config "$REPO/configs/quickstart/pretrain-tiny.yaml" --devices cuda:0 \
    --out runs/phantom/pretrain-tiny-straight --max-steps "$STEPS" | tee -a "$LOG"
if cmp -s <(cut -d, -f1,3 "$OUT/metrics-resumed.csv") <(cut -d, -f1,3 runs/phantom/pretrain-tiny-straight/metrics.csv); then
    say "resume: loss curve identical to the uninterrupted run"
else
    say "resume: loss curves DIFFER (expected identical on one GPU up to non-deterministic kernels):"
    paste -d' ' <(cut -d, -f1,3 "$OUT/metrics-resumed.csv") <(cut -d, -f3 runs/phantom/pretrain-tiny-straight/metrics.csv) | tail -5 | tee -a "$LOG"
fi

say "4. EF probe on cuda:0"
"$T" probe --config "$REPO/configs/quickstart/probe-ef.yaml" --devices cuda:0 \
    --out runs/probe-ef-cuda | tee -a "$LOG"
say "5. EF probe on cpu (same checkpoint)"
"$T" probe --config "$REPO/configs/quickstart/probe-ef.yaml" --devices cpu \
    --out runs/probe-ef-cpu | tee -a "$LOG"
say "6. NCCL across the GPUs of this machine"
G="$(nvidia-smi -L | grep -c '^GPU ' || true)"
PORT="${MASTER_PORT:-29533}"
# launch_ranks N LABEL CMD...: N processes of CMD with torchrun's variables, one per GPU; rank 0's
# output goes to the log, every rank's to $OUT/LABEL-rank<r>.log; fails when any rank fails.
launch_ranks() {
    local n="$1" label="$2" r rc=0
    shift 2
    local pids=()
    for ((r = 0; r < n; r++)); do
        RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n GROUP_WORLD_SIZE=1 \
            MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT "$@" >"$OUT/$label-rank$r.log" 2>&1 &
        pids+=("$!")
    done
    for r in "${!pids[@]}"; do
        wait "${pids[$r]}" || { rc=1; echo "rank $r of $n failed:" | tee -a "$LOG"; tail -5 "$OUT/$label-rank$r.log" | tee -a "$LOG"; }
    done
    tail -8 "$OUT/$label-rank0.log" | tee -a "$LOG"
    PORT=$((PORT + 1))
    return "$rc"
}
# tiny_config FILE FOLDER TASKS BATCH: the pretraining config of tests/mpi.rs (a 2-block 32-wide
# encoder on 4 frames of 64 px from the phantom stream), float32, 2 epochs of 3 steps
tiny_config() {
    cat >"$1" <<YAML
app: vjepa
nodes: 1
tasks_per_node: $3
folder: $2
data:
  dataset_type: PhantomStream
  frame_step: 4
  phantom:
    width: 160
    height: 120
    fps: 30
  batch_size: $4
  crop_size: 64
  patch_size: 16
  dataset_fpcs: [4]
  tubelet_size: 2
mask:
- aspect_ratio: [0.75, 1.5]
  num_blocks: 2
  spatial_scale: [0.15, 0.15]
- aspect_ratio: [0.75, 1.5]
  num_blocks: 1
  spatial_scale: [0.5, 0.5]
meta:
  save_every_freq: 0
  seed: 3
  dtype: float32
model:
  model_name: vit_tiny
  embed_dim: 32
  depth: 2
  num_heads: 2
  pred_depth: 1
  pred_embed_dim: 32
  pred_num_heads: 2
optimization:
  ema: [0.99, 0.999]
  ipe: 3
  epochs: 2
  start_lr: 1.0e-4
  lr: 1.0e-3
  final_lr: 1.0e-4
  warmup: 1
YAML
}
# same_curves A B: the loss (3rd) and grad_norm (7th) columns of two metrics.csv agree to TOL
# relative (GPU reductions are not bit-reproducible; the CPU ranks of tests/mpi.rs agree to 1e-5)
same_curves() {
    paste -d, "$1" "$2" | awk -F, -v tol="${TOL:-1e-4}" -v n=9 '
        NR == 1 { next }
        { rows++
          for (c = 3; c <= 7; c += 4) {
              a = $c; b = $(c + n); d = a - b; if (d < 0) d = -d
              m = a < 0 ? -a : a
              if (d > tol * m) { bad++; printf "  step %s column %d: %s vs %s\n", $1, c, a, b }
              if (m > 0 && d / m > worst) worst = d / m
          } }
        END { printf "  %d rows, largest relative difference %.3g\n", rows, worst
              exit (bad > 0 || rows == 0) }'
}
NCCL_OK=1
if [ "$G" -ge 2 ]; then
    say "6a. collective-check on $G ranks, one per GPU (NCCL)"
    launch_ranks "$G" check "$T" collective-check --devices cuda --floats 67108864 || NCCL_OK=0
else
    say "6a. one GPU: NCCL cannot put two ranks on one GPU, so no multi-rank NCCL check here; NCCL on a world of one instead"
    launch_ranks 1 check "$T" collective-check --devices cuda --engine nccl --floats 67108864 || NCCL_OK=0
fi
say "6b. pretraining on $G rank(s) with batch 2 each vs one process with batch $((2 * G))"
rm -rf runs/nccl-ranks runs/nccl-one
tiny_config "$OUT/nccl-ranks.yaml" "$OUT/runs/nccl-ranks" "$G" 2
tiny_config "$OUT/nccl-one.yaml" "$OUT/runs/nccl-one" 1 "$((2 * G))"
launch_ranks "$G" pretrain "$T" pretrain --config "$OUT/nccl-ranks.yaml" --devices cuda \
    --collective-timeout 300 || NCCL_OK=0
"$T" pretrain --config "$OUT/nccl-one.yaml" --devices cuda:0 | tail -2 | tee -a "$LOG"
if same_curves "$OUT/runs/nccl-ranks/metrics.csv" "$OUT/runs/nccl-one/metrics.csv" | tee -a "$LOG"; then
    say "NCCL: $G rank(s) follow one process (loss and grad_norm within ${TOL:-1e-4} relative)"
else
    NCCL_OK=0
    say "NCCL: $G rank(s) DIFFER from one process (or a run failed); rows above"
fi
if [ "$G" -lt 2 ]; then
    say "note: one GPU, so the multi-rank NCCL path (rendezvous between processes, ring all-reduce) was NOT exercised"
fi
if [ "$NCCL_OK" = 1 ]; then
    say "6. NCCL section passed"
else
    say "6. NCCL section FAILED"
fi

say "done; log in $LOG"
