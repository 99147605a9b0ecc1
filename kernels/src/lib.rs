//! Int8 and f32 GEMM kernels (plus layer norm, softmax, GELU and attention helpers) for the
//! EchoJEPA edge encoder.
//!
//! Why this crate exists: candle's own CPU quantized matmul is only fast for some shapes (its
//! VNNI Q8_0 path needs `K % 256 == 0`; at `K = 384`, the ViT-S width, it is ~5x slower than f32),
//! and the edge runtime must beat ONNX Runtime on every encoder size. The kernels here work on
//! plain row-major `f32` slices so that the encoder can call them without tensor copies.
//!
//! # The interface
//!
//! * [`PackedF32Linear`] and [`PackedInt8Linear`] hold the weight of one `nn.Linear`
//!   (`weight: [out, in]`, PyTorch layout, `y = x · Wᵀ + b`) packed for the microkernels.
//!   Both have the same `forward(x, m, out, epilogue)`: `x` is `m × in` row-major, `out` is
//!   `m × out` row-major, and the [`Epilogue`] fuses bias, exact-erf GELU or a residual add
//!   into the store of each output tile.
//! * [`PackedLinear`] is either of the two, so each layer can keep the faster precision.
//! * The int8 path quantizes each activation row on the fly (asymmetric u8, one scale and zero
//!   point per row), multiplies with int8 weights (one scale per output channel) in i32, and
//!   dequantizes in the epilogue.
//! * [`norm::layer_norm`], [`softmax::softmax_rows`], [`activation::gelu_in_place`] and
//!   [`attention::attention`] cover the rest of a ViT block in f32 without extra copies.
//!
//! The int8 microkernels: AVX2 (`vpmaddubsw`), AVX-VNNI and AVX-512 VNNI (`vpdpbusd`) on
//! x86-64, NEON dot product (`sdot`, Jetson Orin's Cortex-A78AE) on aarch64, and portable Rust.
//! The aarch64 kernel is tested under user-mode QEMU (`scripts/test.sh`).
//!
//! Every entry point picks the best kernel for the running CPU at run time ([`cpu`]); the
//! `_with` variants take an explicit kernel so that tests can compare every available one
//! against the scalar reference. Work is split over a crate-wide thread pool ([`pool`]) with a
//! static partition (each thread always gets the same share of the output).
//!
//! How they run (threads, kernels, int8 activation width, int8 attention) is one value,
//! [`KernelSettings`], installed once with [`settings::configure`]; this crate never reads the
//! environment (the binaries do, at their edge, with [`KernelSettings::from_env`]).

pub mod activation;
mod aligned;
#[cfg(target_arch = "aarch64")]
mod arm;
pub mod attention;
pub mod cpu;
mod epilogue;
pub mod error;
pub mod gemm_f32;
pub mod gemm_i8;
pub mod norm;
pub mod pool;
pub mod rope;
pub mod settings;
pub mod softmax;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use cpu::{F32Kernel, Int8Kernel};
pub use epilogue::Epilogue;
pub use error::KernelError;
pub use gemm_f32::PackedF32Linear;
pub use gemm_i8::{ActivationRange, PackedInt8Linear};
pub use settings::{KernelSettings, SettingsError};

/// A packed linear layer in either precision; see [`PackedF32Linear`] and [`PackedInt8Linear`].
#[derive(Debug, Clone)]
pub enum PackedLinear {
    /// f32 weights, f32 FMA microkernel.
    F32(PackedF32Linear),
    /// int8 weights (per-output-channel scales), dynamically quantized u8 activations.
    Int8(PackedInt8Linear),
}

impl PackedLinear {
    /// Output features (rows of the PyTorch weight).
    pub fn out_features(&self) -> usize {
        match self {
            PackedLinear::F32(l) => l.out_features(),
            PackedLinear::Int8(l) => l.out_features(),
        }
    }

    /// Input features (columns of the PyTorch weight).
    pub fn in_features(&self) -> usize {
        match self {
            PackedLinear::F32(l) => l.in_features(),
            PackedLinear::Int8(l) => l.in_features(),
        }
    }

    /// `out = epilogue(x · Wᵀ + b)`; see [`PackedF32Linear::forward`].
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        match self {
            PackedLinear::F32(l) => l.forward(x, m, out, epilogue),
            PackedLinear::Int8(l) => l.forward(x, m, out, epilogue),
        }
    }
}
