//! Run-time CPU dispatch: which microkernels this CPU can run, the best one, and an override
//! through environment variables for benchmarks (`ECHOJEPA_KERNEL_F32`, `ECHOJEPA_KERNEL_INT8`,
//! values as printed by `name()`).

use std::sync::OnceLock;

/// f32 GEMM microkernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum F32Kernel {
    /// Portable Rust (auto-vectorised where the compiler manages).
    Scalar,
    /// x86-64 AVX2 + FMA, 4×16 register tile.
    Avx2Fma,
    /// x86-64 AVX-512F, 12×32 register tile.
    Avx512,
}

/// int8 GEMM microkernels (u8 activations × i8 weights, i32 accumulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Int8Kernel {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 `vpmaddubsw` + `vpmaddwd`. The u8·i8 pair sums saturate at i16, so the
    /// weights of this kernel are quantized to ±64 (7 bits) instead of ±127.
    Avx2,
    /// x86-64 AVX-VNNI `vpdpbusd` on 256-bit vectors (Alder Lake, Zen 5 ...), weights ±127.
    AvxVnni,
    /// x86-64 AVX-512 VNNI `vpdpbusd` on 512-bit vectors (Ice Lake+, Zen 4+), weights ±127.
    Avx512Vnni,
    /// x86-64 AMX `tdpbusd` on 16×64-byte tiles (Sapphire Rapids+), with the AVX-512 VNNI
    /// packing and epilogue: the same sums, so the same bits as `Avx512Vnni`. Weights ±127.
    Amx,
    /// aarch64 NEON `sdot` (Armv8.2 dot product: Cortex-A76/A78, e.g. Jetson Orin), weights ±127.
    NeonDot,
}

impl F32Kernel {
    /// Stable lowercase name (also the value of `ECHOJEPA_KERNEL_F32`).
    pub fn name(self) -> &'static str {
        match self {
            F32Kernel::Scalar => "scalar",
            F32Kernel::Avx2Fma => "avx2",
            F32Kernel::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            F32Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            F32Kernel::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            F32Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every kernel this CPU can run, slowest first.
    pub fn available() -> Vec<F32Kernel> {
        [F32Kernel::Scalar, F32Kernel::Avx2Fma, F32Kernel::Avx512]
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }

    /// The kernel used by `forward`: the one the [settings](crate::KernelSettings) name if this
    /// CPU supports it, else the best.
    pub fn best() -> F32Kernel {
        static BEST: OnceLock<F32Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let all = Self::available();
            crate::settings::current()
                .f32_kernel
                .filter(|k| all.contains(k))
                .unwrap_or(*all.last().unwrap_or(&F32Kernel::Scalar))
        })
    }
}

impl Int8Kernel {
    /// Stable lowercase name (also the value of `ECHOJEPA_KERNEL_INT8`).
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Scalar => "scalar",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::AvxVnni => "avxvnni",
            Int8Kernel::Avx512Vnni => "avx512vnni",
            Int8Kernel::Amx => "amx",
            Int8Kernel::NeonDot => "neon-dot",
        }
    }

    /// Largest weight magnitude after quantization. 64 for AVX2 (so that
    /// `2 · 255 · 64 = 32640` never saturates `vpmaddubsw`), 127 otherwise.
    pub fn weight_max(self) -> i32 {
        match self {
            Int8Kernel::Avx2 => 64,
            _ => 127,
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Int8Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::AvxVnni => {
                std::arch::is_x86_feature_detected!("avxvnni")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Amx => {
                Int8Kernel::Avx512Vnni.is_supported() && crate::x86::amx::available()
            }
            #[cfg(target_arch = "aarch64")]
            Int8Kernel::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every kernel this CPU can run, slowest first.
    pub fn available() -> Vec<Int8Kernel> {
        [
            Int8Kernel::Scalar,
            Int8Kernel::Avx2,
            Int8Kernel::AvxVnni,
            Int8Kernel::Avx512Vnni,
            Int8Kernel::Amx,
            Int8Kernel::NeonDot,
        ]
        .into_iter()
        .filter(|k| k.is_supported())
        .collect()
    }

    /// The kernel used by `from_f32`: the one the [settings](crate::KernelSettings) name if this
    /// CPU supports it, else the best.
    pub fn best() -> Int8Kernel {
        static BEST: OnceLock<Int8Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let all = Self::available();
            crate::settings::current()
                .int8_kernel
                .filter(|k| all.contains(k))
                .unwrap_or(*all.last().unwrap_or(&Int8Kernel::Scalar))
        })
    }
}

/// One-line description of what this CPU runs, for benchmark logs.
pub fn describe() -> String {
    format!(
        "f32 kernel {} (available: {}), int8 kernel {} (available: {}), int8 activations {}, int8 attention {}, {} threads",
        F32Kernel::best().name(),
        F32Kernel::available()
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(","),
        Int8Kernel::best().name(),
        Int8Kernel::available()
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(","),
        crate::settings::current().int8_activations.name(),
        crate::settings::current()
            .int8_attention
            .map_or("off", |r| r.name()),
        crate::pool::num_threads()
    )
}
