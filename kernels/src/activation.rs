//! Exact-erf GELU, `0.5·x·(1 + erf(x/√2))` (PyTorch `nn.GELU()` default, not the tanh
//! approximation), as scalar and AVX2 code sharing one erf approximation.
//!
//! erf uses Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7, below f32 resolution of the
//! GELU output for |x| < 4), with a Cephes-style `exp`.

const ERF_P: f32 = 0.327_591_1;
const ERF_A1: f32 = 0.254_829_6;
const ERF_A2: f32 = -0.284_496_74;
const ERF_A3: f32 = 1.421_413_8;
const ERF_A4: f32 = -1.453_152;
const ERF_A5: f32 = 1.061_405_4;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// erf(x) with absolute error ≤ ~2e-7 (A&S 7.1.26 plus f32 rounding).
pub fn erf(x: f32) -> f32 {
    let ax = x.abs();
    let t = 1.0 / (1.0 + ERF_P * ax);
    let poly = ((((ERF_A5 * t + ERF_A4) * t + ERF_A3) * t + ERF_A2) * t + ERF_A1) * t;
    let y = 1.0 - poly * (-ax * ax).exp();
    if x < 0.0 { -y } else { y }
}

/// GELU with the exact erf form.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// Apply [`gelu`] to every element, with SIMD when the CPU has it.
pub fn gelu_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::F32Kernel::best() != crate::F32Kernel::Scalar {
        // SAFETY: `best()` is not Scalar only when AVX2+FMA were detected.
        unsafe { avx2::gelu_slice(x) };
        return;
    }
    gelu_slice_scalar(x);
}

pub(crate) fn gelu_slice_scalar(x: &mut [f32]) {
    for v in x {
        *v = gelu(*v);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// 8-lane `exp(x)` for x ≤ 0 (inputs below -87 give 0-ish denormal-free results).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp_neg(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.398_199_9e-3));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.333_452e-3));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.166_579_6e-2));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(0.166_666_65));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(0.5));
        let x2 = _mm256_mul_ps(x, x);
        y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0)));
        let n = _mm256_cvtps_epi32(fx);
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            n,
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(y, pow2n)
    }

    /// 8-lane GELU (same formula as the scalar [`gelu`]).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn gelu8(x: __m256) -> __m256 {
        let z = _mm256_mul_ps(x, _mm256_set1_ps(FRAC_1_SQRT_2));
        let sign = _mm256_and_ps(z, _mm256_set1_ps(-0.0));
        let az = _mm256_andnot_ps(_mm256_set1_ps(-0.0), z);
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), az, one));
        let mut p = _mm256_set1_ps(ERF_A5);
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A4));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A3));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A2));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A1));
        p = _mm256_mul_ps(p, t);
        let e = exp_neg(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), az), az));
        let y = _mm256_fnmadd_ps(p, e, one);
        let erf = _mm256_or_ps(y, sign);
        _mm256_mul_ps(
            _mm256_mul_ps(_mm256_set1_ps(0.5), x),
            _mm256_add_ps(one, erf),
        )
    }

    /// GELU over a slice.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn gelu_slice(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` has exactly 8 elements.
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                _mm256_storeu_ps(c.as_mut_ptr(), gelu8(v));
            }
        }
        gelu_slice_scalar(chunks.into_remainder());
    }
}
