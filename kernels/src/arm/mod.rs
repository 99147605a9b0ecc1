//! aarch64 SIMD microkernels (Jetson-class CPUs). Each function is compiled for its extension
//! with `#[target_feature]` and only called after run-time detection (see `crate::cpu`).

pub(crate) mod neon;
