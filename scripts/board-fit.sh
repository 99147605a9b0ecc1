#!/usr/bin/env bash
# Which encoder keeps up with each board profile's clip rate? (issue 22, item 5)
#
# For each encoder preset (default: vit_tiny, vit_small and vit_base at 112 px, 16 frames) this
#   1. makes a checkpoint with view and EF heads by one step of `trainer finetune` from random
#      weights (the weights do not matter for speed; the bundle is NOT a usable model),
#   2. builds an int8 bundle with `quantize build` (default settings, signed with the demo key so
#      the generic-cpu profile runs it),
#   3. runs `edge-runtime bench` on the phantom stream in real time at the boards' rate (30 fps,
#      a clip every 8 frames: 3.75 clips/s) for $SECONDS_PER_RUN seconds, and records the encoder's
#      time per clip and the clips dropped,
# then measures this machine's int8 peak (`cargo bench -p echojepa-kernels --bench roofline`, the
# loop of the int8 kernel this CPU selects) and prints one table: measured here, then projected
# for each board profile from the int8 peak of its cores (scripts/board_fit_table.py says how).
#
#   bash scripts/board-fit.sh [WORK_DIR]          (about 5 minutes on 2 cores, after the build)
#
# The boards' CPUs multiply int8 with vector instructions (NEON `sdot`) and have no matrix unit,
# so on a CPU with AMX tiles everything here runs the AVX-512 VNNI kernel (the same bits, the
# same class of instruction as the boards') unless ECHOJEPA_KERNEL_INT8 says otherwise; the
# projection is only meaningful for a vector kernel.
#
# Environment: MODELS (space-separated NAME@RES, default "vit_tiny@112 vit_small@112
# vit_base@112"), SECONDS_PER_RUN (default 30), THREADS (default: every CPU),
# ECHOJEPA_KERNEL_INT8 (default: the best vector kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(realpath -m "${1:-target/board-fit}")
models=${MODELS:-"vit_tiny@112 vit_small@112 vit_base@112"}
secs=${SECONDS_PER_RUN:-30}
threads=${THREADS:-$(nproc)}
mkdir -p "$work"
if [ -z "${ECHOJEPA_KERNEL_INT8:-}" ] && grep -qw amx_int8 /proc/cpuinfo 2>/dev/null &&
    grep -qw avx512_vnni /proc/cpuinfo; then
    export ECHOJEPA_KERNEL_INT8=avx512vnni
    echo "this CPU has AMX: measuring with the avx512vnni kernel, the boards' class of int8 unit" \
        "(ECHOJEPA_KERNEL_INT8=amx measures AMX; its projection is not meaningful)" >&2
fi

cargo build --release -p trainer -p quantize -p edge-runtime
T=$root/target/release/trainer
Q=$root/target/release/quantize
E=$root/target/release/edge-runtime

dims() {
    case "$1" in
    vit_tiny) echo "192 12 3" ;;
    vit_small) echo "384 12 6" ;;
    vit_base) echo "768 12 12" ;;
    *)
        echo "unknown preset $1 (vit_tiny, vit_small, vit_base)" >&2
        exit 2
        ;;
    esac
}

cd "$work"
for m in $models; do
    name=${m%@*}
    res=${m#*@}
    read -r width depth heads <<<"$(dims "$name")"
    tag="${name}-${res}"
    cat >"$tag.yaml" <<EOF
# scripts/board-fit.sh: one fine-tuning step from random weights, for timing only
app: vjepa
eval_name: finetune
folder: runs
tag: $tag
model_kwargs:
  pretrain_kwargs:
    encoder:
      model_name: $name
      embed_dim: $width
      depth: $depth
      num_heads: $heads
      patch_size: 16
      tubelet_size: 2
experiment:
  classifier:
    num_heads: $heads
    num_probe_blocks: 1
  data:
    dataset_type: PhantomStream
    resolution: $res
    frames_per_clip: 16
    frame_step: 2
  optimization:
    batch_size: 1
    num_epochs: 1
    seed: 0
finetune:
  init: random
  steps_per_epoch: 1
  lr: 1.0e-3
  encoder_lr: 1.0e-3
  layer_decay: 0.9
  warmup_epochs: 0
  final_lr_ratio: 1.0
  freeze_blocks: 0
  drop_path: 0.0
  weight_decay: 0.05
  clip_grad: 1.0
  heads:
  - {name: view, task: view}
  - {name: ef, task: ef, views: [a4c, a2c]}
  phantom:
    width: 320
    height: 240
    fps: 30
  val_clips: 2
  test_clips: 2
EOF
    if [ ! -e "runs/finetune/$tag/latest.safetensors" ]; then
        "$T" finetune --config "$tag.yaml" >"$tag.finetune.log" 2>&1 ||
            { echo "trainer finetune failed for $tag; see $work/$tag.finetune.log" >&2; exit 1; }
    fi
    rm -rf "$tag.bundle"
    "$Q" build --checkpoint "runs/finetune/$tag/latest" \
        --model-id "board-fit-$tag" --model-version 0.0.0 --synthetic \
        --description "timing only: random weights after one step (scripts/board-fit.sh)" \
        --key "$root/edge-runtime/demo/keys/echojepa-demo.secret" --out "$tag.bundle" --json \
        >"$tag.build.json"
    "$E" bench --board generic-cpu --bundle "$tag.bundle" --threads "$threads" \
        --fps 30 --phantom-views a4c,a2c,plax,psax,a3c,subcostal --phantom-seconds 4 \
        --seconds "$secs" --json >"$tag.bench.json"
    echo "$tag: done" >&2
done

cd "$root"
ECHOJEPA_THREADS=$threads cargo bench -q -p echojepa-kernels --bench roofline -- --json \
    >"$work/roofline.json"
MODELS="$models" THREADS="$threads" python3 "$root/scripts/board_fit_table.py" "$work"
