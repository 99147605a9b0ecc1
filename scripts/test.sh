#!/usr/bin/env bash
# The project's test command (README): the default build's tests, then the opt-in features whose
# system packages are present (all of them are required when CI=true; see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== default features: cargo test --workspace"
cargo test --workspace --quiet

have() { pkg-config --exists "$1" 2>/dev/null; }
need() { # need FEATURE-LABEL CHECK...
    local label=$1; shift
    for c in "$@"; do
        if ! have "$c"; then
            if [ "${CI:-}" = "true" ]; then
                echo "CI: system package for $label missing ($c)" >&2; exit 1
            fi
            echo "== skipping $label: pkg-config cannot find $c (see .ci/run for the packages)"
            return 1
        fi
    done
}

# The opt-in features, in one build (one feature resolution, so candle is compiled once more,
# not once per feature).
features=()
if need "ffmpeg feature" libavcodec libavformat libswscale; then
    features+=(echojepa/ffmpeg echojepa/dicom)
fi
if need "libudev feature" libudev; then
    features+=(firmware-host/libudev)
fi
if [ -n "$(ls /usr/lib/llvm-*/lib/libclang*.so* 2>/dev/null)" ] || [ -n "${LIBCLANG_PATH:-}" ]; then
    features+=(edge-runtime/v4l)
elif [ "${CI:-}" = "true" ]; then
    echo "CI: libclang missing for the v4l feature (see .ci/run)" >&2; exit 1
fi
if [ ${#features[@]} -gt 0 ]; then
    list=$(IFS=,; echo "${features[*]}")
    echo "== opt-in features: $list"
    cargo test -p echojepa -p firmware-host -p edge-runtime --features "$list" --quiet
fi
