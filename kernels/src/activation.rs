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

/// 16-lane AVX-512 twins of the AVX2 functions, with the same operations in the same order, so
/// every lane is bit-identical to [`avx2::gelu8`] on the same input (the int8 GEMM's AVX-512
/// epilogue uses them; a test pins the two together).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// The sign bit in every lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sign_mask() -> __m512i {
        _mm512_set1_epi32(i32::MIN)
    }

    /// 16-lane [`avx2::exp_neg`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp_neg(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693_359_4), x);
        let x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.121_944_4e-4), x);
        let mut y = _mm512_set1_ps(1.987_569_1e-4);
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.398_199_9e-3));
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.333_452e-3));
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.166_579_6e-2));
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(0.166_666_65));
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(0.5));
        let x2 = _mm512_mul_ps(x, x);
        y = _mm512_fmadd_ps(y, x2, _mm512_add_ps(x, _mm512_set1_ps(1.0)));
        let n = _mm512_cvtps_epi32(fx);
        let pow2n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            n,
            _mm512_set1_epi32(127),
        )));
        _mm512_mul_ps(y, pow2n)
    }

    /// 16-lane [`avx2::gelu8`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn gelu16(x: __m512) -> __m512 {
        let z = _mm512_mul_ps(x, _mm512_set1_ps(FRAC_1_SQRT_2));
        let zi = _mm512_castps_si512(z);
        let sign = _mm512_and_si512(zi, sign_mask());
        let az = _mm512_castsi512_ps(_mm512_andnot_si512(sign_mask(), zi));
        let one = _mm512_set1_ps(1.0);
        let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(ERF_P), az, one));
        let mut p = _mm512_set1_ps(ERF_A5);
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(ERF_A4));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(ERF_A3));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(ERF_A2));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(ERF_A1));
        p = _mm512_mul_ps(p, t);
        let e = exp_neg(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), az), az));
        let y = _mm512_fnmadd_ps(p, e, one);
        let erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
        _mm512_mul_ps(
            _mm512_mul_ps(_mm512_set1_ps(0.5), x),
            _mm512_add_ps(one, erf),
        )
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;

    /// The AVX-512 GELU gives the AVX2 GELU's bits on every input, from large negative values
    /// (where erf saturates and exp underflows) through zero to large positive ones.
    #[test]
    fn avx512_gelu_is_bit_identical_to_avx2() {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma"))
        {
            return;
        }
        let mut xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.0037).collect();
        xs.extend([
            -100.0, -30.0, -9.5, -1e-30, 0.0, -0.0, 1e-30, 9.5, 30.0, 100.0, 1e6,
        ]);
        while !xs.len().is_multiple_of(16) {
            xs.push(0.5);
        }
        for chunk in xs.chunks_exact(16) {
            let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
            // SAFETY: AVX2, FMA and AVX-512F were detected; the arrays hold 16 floats.
            unsafe {
                let v = _mm512_loadu_ps(chunk.as_ptr());
                _mm512_storeu_ps(a.as_mut_ptr(), super::avx512::gelu16(v));
                for h in 0..2 {
                    let v = _mm256_loadu_ps(chunk.as_ptr().add(8 * h));
                    _mm256_storeu_ps(b.as_mut_ptr().add(8 * h), super::avx2::gelu8(v));
                }
            }
            for i in 0..16 {
                assert_eq!(a[i].to_bits(), b[i].to_bits(), "gelu({})", chunk[i]);
            }
        }
    }
}
