#!/usr/bin/env bash
# Rebuilds the demo model bundle that `edge-runtime` runs by default (edge-runtime/demo/bundle):
# a small encoder pretrained on the SYNTHETIC echo phantom, view and EF probes on it, quantized
# to int8 and signed with the published demo key (edge-runtime/demo/keys). Nothing here has seen
# a patient; the bundle says so and only the generic-cpu board profile trusts the demo key.
#
#   bash scripts/build-demo-bundle.sh [WORKDIR]      (CPU, roughly 20-40 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-target/demo-work}
mkdir -p "$work"
cargo build --release -p trainer -p quantize
T=$root/target/release/trainer
Q=$root/target/release/quantize

cd "$work"
# same layout the quick-start configs expect (data/phantom, runs/phantom)
[ -f data/phantom/view/train.csv ] || "$T" synth --out data/phantom --patients 60
"$T" pretrain --config "$root/configs/quickstart/pretrain-tiny.yaml"
"$T" probe --config "$root/configs/quickstart/probe-view.yaml"
"$T" probe --config "$root/configs/quickstart/probe-ef.yaml"

view=$(ls -d runs/phantom/evals/*/view | head -n 1)
ef=$(ls -d runs/phantom/evals/*/ef | head -n 1)
out=$root/edge-runtime/demo/bundle
rm -rf "$out.new"
"$Q" build \
    --checkpoint runs/phantom/pretrain-tiny/latest \
    --probe "view=$view/probe" --probe "ef=$ef/probe" \
    --valid-views ef=a4c \
    --model-id echojepa-demo-phantom --model-version "$(date -u +%Y.%m.%d)" \
    --description "demo: 4-block 96-wide EchoJEPA-style encoder pretrained on the synthetic phantom" \
    --synthetic --sector full \
    --key "$root/edge-runtime/demo/keys/echojepa-demo.secret" \
    --out "$out.new"
rm -rf "$out"
mv "$out.new" "$out"
"$Q" verify "$out" --key "$root/edge-runtime/demo/keys/echojepa-demo.pub"
echo "demo bundle written to $out"
