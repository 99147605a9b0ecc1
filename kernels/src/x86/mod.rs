//! x86-64 SIMD microkernels. Each function is compiled for its instruction set with
//! `#[target_feature]` and only called after run-time detection (see `crate::cpu`).

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod avxvnni;
