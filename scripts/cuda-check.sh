#!/usr/bin/env bash
# CUDA check of the trainer, for a machine with an NVIDIA GPU and the CUDA toolkit (nvcc).
# Builds `trainer` with `--features cuda`, then, in a scratch directory:
#   1. bench-pretrain: pretraining throughput of vit_tiny and vit_small at 16x112x112 on
#      cuda:0 in bf16 (and f32 for comparison);
#   2. synth: a small phantom dataset;
#   3. pretrain (quick-start config) on cuda:0 for a few dozen steps, killed half way and resumed;
#   4. probe (EF regression) on cuda:0 from the checkpoint;
#   5. the same probe on the CPU from the same checkpoint, to compare.
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
say "done; log in $LOG"
