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

if need "ffmpeg feature" libavcodec libavformat libswscale; then
    echo "== echojepa with ffmpeg + dicom features"
    cargo test -p echojepa --features ffmpeg,dicom --quiet
fi
