#!/usr/bin/env bash
# The project's test command (README): the default build's tests, then the opt-in features whose
# system packages are present (all of them are required when CI=true; see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Lints first (fast to fail): formatting, and clippy with warnings as errors. The workspace's
# clippy configuration includes the 150-line limit on functions (clippy.toml, Cargo.toml).
echo "== lints: cargo fmt --check, cargo clippy --workspace --all-targets -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

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
    features+=(echojepa-video/ffmpeg echojepa-video/dicom)
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
    cargo test -p echojepa-video -p firmware-host -p edge-runtime --features "$list" --quiet
fi

# Data-parallel training on two CPU ranks under mpirun (the trainer's `mpi` feature): pretraining,
# fine-tuning and probing give the same losses and weights as one process with the same global
# batch, a killed or stalled rank stops the job, a 2-rank run resumes on one
# (trainer/tests/mpi.rs, docs/DISTRIBUTED.md). Built together with the `nccl` feature (the GPU
# engine, loaded at run time, so it builds without CUDA), whose code is linted here and whose
# engine choice must leave CPU ranks on MPI.
if need "mpi feature" ompi && command -v mpirun >/dev/null; then
    echo "== mpi and nccl features: clippy, cargo test -p trainer --features mpi,nccl --test mpi"
    cargo clippy -p trainer --features mpi,nccl --all-targets --quiet -- -D warnings
    cargo test -p trainer --features mpi,nccl --test mpi --quiet
fi

# The aarch64 int8 kernels (NEON `sdot`, what a Jetson Orin runs) cross-built and tested under
# user-mode QEMU, whose CPU has the dot-product extension.
if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu \
    && command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null; then
    echo "== aarch64 kernels under qemu-aarch64: cargo test -p echojepa-kernels --target aarch64-unknown-linux-gnu"
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
        cargo test -p echojepa-kernels --release --target aarch64-unknown-linux-gnu --quiet
elif [ "${CI:-}" = "true" ]; then
    echo "CI: the aarch64 target, qemu-aarch64 or aarch64-linux-gnu-gcc is missing (see .ci/run)" >&2; exit 1
else
    echo "== skipping the aarch64 kernels: needs rustup target aarch64-unknown-linux-gnu, qemu-user and gcc-aarch64-linux-gnu (see .ci/run)"
fi

# Fuzzing (docs/FUZZING.md): each target replays its committed corpus and kept crashes, then
# mutates them for FUZZ_SECONDS (default 15) seconds. A panic, a hang or an over-cap allocation
# fails the run and leaves the input in fuzz/crashes/TARGET/ (commit it: it becomes a test).
echo "== fuzzing: every target for ${FUZZ_SECONDS:-15} s each (echojepa-fuzz run all)"
cargo run -p echojepa-fuzz --quiet -- run all --seconds "${FUZZ_SECONDS:-15}"
