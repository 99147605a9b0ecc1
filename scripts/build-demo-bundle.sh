#!/usr/bin/env bash
# Rebuilds the demo model bundle that `edge-runtime` runs by default (edge-runtime/demo/bundle)
# from a clean clone, on the CPU, deterministically for its seeds:
#
#   1. V-JEPA pretraining of a small encoder (4 blocks, 96 wide) on phantom clips rendered on the
#      fly (configs/demo/pretrain-stream.yaml, seed 0);
#   2. end-to-end fine-tuning of that encoder with three heads (configs/demo/finetune.yaml,
#      seed 0): the echo view, EF regressed directly, and the LV cavity traced per pixel, from
#      which the cart measures EF beat by beat; the view head's temperature, the EF confidence
#      threshold and the traced EF's calibration line are fitted on validation patients;
#   3. `quantize build` (int8, signed with the published demo key in edge-runtime/demo/keys) with
#      the recipe, seeds, timings and test metrics written into the signed manifest;
#   4. `quantize report` on 600 fresh phantom clips (the int8 checks must pass);
#   5. `edge-runtime bench` on phantom patients never used in training, six views, 60 s.
#
# Everything is SYNTHETIC: no patient data is involved, the bundle says so and only the
# generic-cpu board profile trusts the demo key.
#
#   bash scripts/build-demo-bundle.sh [OUT_DIR]     (about 50-60 minutes on 2 cores)
#
# OUT_DIR defaults to edge-runtime/demo/bundle. Working files go to $DEMO_WORK (default
# target/demo-work); the reports land there as quantize-report.{md,json} and bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$(realpath -m "${1:-edge-runtime/demo/bundle}")
work=$(realpath -m "${DEMO_WORK:-target/demo-work}")
version=${DEMO_VERSION:-2026.12.7}
mkdir -p "$work"
now() { date +%s; }

t0=$(now)
cargo build --release -p trainer -p quantize -p edge-runtime
T=$root/target/release/trainer
Q=$root/target/release/quantize
E=$root/target/release/edge-runtime
t1=$(now)

cd "$work"
"$T" pretrain --config "$root/configs/demo/pretrain-stream.yaml"
t2=$(now)
"$T" finetune --config "$root/configs/demo/finetune.yaml"
t3=$(now)
ck=runs/demo/finetune/demo/latest
summary=runs/demo/finetune/demo/summary.json

# test metrics of the fine-tuning, one line each, for the manifest
metric() { python3 -c "import json,sys; d=json.load(open('$summary')); v=d$1; print('n/a' if v is None else (f'{v:.4g}' if isinstance(v,float) else v))"; }
view_acc=$(metric "['test']['view_accuracy']")
ef_reg=$(metric "['test']['ef_mae']")
ef_mean=$(metric "['test']['ef_mean_predictor_mae']")
dice=$(metric "['test']['lv_dice']")
beats=$(metric "['test_scans']['ef_beats_mae']")
beats_mean=$(metric "['test_scans']['ef_mean_predictor_mae']")
per_view=$(python3 -c "import json; d=json.load(open('$summary')); print(', '.join(f\"{v['view']} {v['correct']}/{v['clips']}\" for v in d['test'].get('per_view', [])))")

rm -rf "$out.new"
# --max-time-ratio 1000: every layer within the error budget is int8. By default a layer is int8
# only where it timed faster than f32, which depends on what else the machine is doing (beside a
# compile, six of the demo's 17 layers timed too slow and stayed f16, and the bundle failed the
# size check); the demo bundle must come out the same from every build of the same checkpoint.
# --tail-clips 600: the search for the worst tokens end to end runs on 600 phantom clips (seeds
# 1000000..1000599, apart from the report's 5000000..) rather than the default 64, because the
# demo's worst token is about one in 100,000.
# --ef-from regressor: the cart shows the EF regressor and draws the traced LV beside it. The
# fine-tuning's validation prefers the traced LV when it measures better on its scans, but live
# the traced LV of a run that chose it gave 0.68-0.77 x the mean predictor and its regressor
# 0.52-0.62 x (BENCHMARKS.md, 2026-12-07, session 10).
"$Q" build \
    --checkpoint "$ck" --max-time-ratio 1000 --tail-clips 600 --ef-from regressor \
    --model-id echojepa-demo-phantom --model-version "$version" \
    --description "demo: 4-block 96-wide EchoJEPA-style encoder, V-JEPA pretrained then fine-tuned end to end on the synthetic phantom; view, EF regressor and LV tracing (EF per beat)" \
    --synthetic --sector full \
    --note "recipe=scripts/build-demo-bundle.sh: configs/demo/pretrain-stream.yaml (300 steps x 8 clips) then configs/demo/finetune.yaml (3000 steps x 8 clips), 8 frames every 4th at 30 fps, 112 px" \
    --note "seeds=pretrain meta.seed 0, finetune optimization.seed 0; phantom patients train [2^32, 2^33), validation [2000000, 2001000), test [3000000, 3001000)" \
    --note "timings=build $((t1 - t0)) s, pretrain $((t2 - t1)) s, finetune $((t3 - t2)) s on $(nproc) cores ($(uname -m))" \
    --note "test_metrics=phantom test patients (SYNTHETIC): view accuracy $view_acc ($per_view); EF regressor MAE $ef_reg (mean predictor $ef_mean); LV Dice $dice; EF per beat from the traced LV over 4-clip scans MAE $beats (mean predictor $beats_mean)" \
    --note "ef_source=--ef-from regressor: the EF regressor (the traced LV measured worse live, clip by clip); the cart draws the traced LV beside it" \
    --key "$root/edge-runtime/demo/keys/echojepa-demo.secret" \
    --out "$out.new"
t4=$(now)
"$Q" verify "$out.new" --key "$root/edge-runtime/demo/keys/echojepa-demo.pub"
"$Q" report "$out.new" --key "$root/edge-runtime/demo/keys/echojepa-demo.pub" \
    --checkpoint "$ck" --phantom 600 --seed 5000000 \
    --markdown quantize-report.md --report quantize-report.json
# the checks are printed; a failed one is reported (and recorded in quantize-report.md) but does
# not stop the build: what int8 costs is a measurement, not a gate here
python3 - <<'EOF'
import json
r = json.load(open("quantize-report.json"))
for c in r["checks"]:
    print(f"  int8 check {c['what']}: {c['value']:.4g} (limit {c['limit']}) {'pass' if c['pass'] else 'FAIL'}")
if any(not c["pass"] for c in r["checks"]):
    print("WARNING: some int8 checks failed; see quantize-report.md")
EOF
t5=$(now)
rm -rf "$out"
mv "$out.new" "$out"
"$E" bench --bundle "$out" --fast --phantom-seed 7771 \
    --phantom-views a4c,a2c,plax,psax,a3c,subcostal --phantom-seconds 4 --seconds 60 --json > bench.json
t6=$(now)
echo "demo bundle written to $out"
echo "timings: build $((t1 - t0)) s, pretrain $((t2 - t1)) s, finetune $((t3 - t2)) s, quantize build $((t4 - t3)) s, report $((t5 - t4)) s, bench $((t6 - t5)) s; total $((t6 - t0)) s"
echo "reports: $work/quantize-report.md, $work/bench.json"
