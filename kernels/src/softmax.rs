//! Numerically stable softmax over each row of a row-major matrix, in place.

use crate::error::{KernelError, check_len};

/// `x[r] = softmax(x[r])` for each of the `rows` rows of length `n`.
pub fn softmax_rows(x: &mut [f32], rows: usize, n: usize) -> Result<(), KernelError> {
    check_len("x", x.len(), rows * n)?;
    let simd = crate::F32Kernel::best() != crate::F32Kernel::Scalar;
    for r in 0..rows {
        softmax_row(&mut x[r * n..(r + 1) * n], simd);
    }
    Ok(())
}

pub(crate) fn softmax_row(x: &mut [f32], simd: bool) {
    if x.is_empty() {
        return;
    }
    let inv = 1.0 / exp_shifted_row(x, simd);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is set only when AVX2+FMA were detected.
        unsafe { avx2::scale_row(x, inv) };
        return;
    }
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `x[i] = exp(x[i] − max(x))`; returns `Σ x[i]` (softmax without its normalization, for
/// callers that divide later). `x` must be non-empty.
pub(crate) fn exp_shifted_row(x: &mut [f32], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is set only when AVX2+FMA were detected; AVX-512F is checked here.
        return unsafe {
            if crate::F32Kernel::best() == crate::F32Kernel::Avx512 {
                avx2::exp_shifted_row_wide(x)
            } else {
                avx2::exp_shifted_row(x)
            }
        };
    }
    let _ = simd;
    let mx = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut s = 0.0;
    for v in x.iter_mut() {
        *v = (*v - mx).exp();
        s += *v;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::activation::avx2::exp_neg;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2+FMA present; `x` non-empty.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted_row(x: &mut [f32]) -> f32 {
        let n = x.len();
        let n8 = n / 8 * 8;
        let mut vm = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n.
            vm = _mm256_max_ps(vm, unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) });
        }
        let mut ma = [0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(ma.as_mut_ptr(), vm) };
        let mut mx = ma.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for &v in &x[n8..] {
            mx = mx.max(v);
        }
        let vmx = _mm256_set1_ps(mx);
        let mut vs = _mm256_setzero_ps();
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n.
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(p), vmx));
                vs = _mm256_add_ps(vs, e);
                _mm256_storeu_ps(p, e);
            }
        }
        let mut sa = [0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(sa.as_mut_ptr(), vs) };
        let mut s: f32 = sa.iter().sum();
        for v in &mut x[n8..] {
            *v = (*v - mx).exp();
            s += *v;
        }
        s
    }

    /// [`exp_shifted_row`] with the exponentials taken 16 lanes at a time (the AVX-512 `exp_neg`, the
    /// same operations per lane) and added to the sum in the 8-lane order: bit-identical.
    ///
    /// # Safety
    /// AVX2, FMA and AVX-512F present; `x` non-empty.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(super) unsafe fn exp_shifted_row_wide(x: &mut [f32]) -> f32 {
        use crate::activation::avx512::exp_neg as exp_neg16;
        let n = x.len();
        let n8 = n / 8 * 8;
        // The maximum in two independent 16-lane chains (the maximum of finite values does
        // not depend on the order it is taken in).
        let (mut m0, mut m1) = (
            _mm512_set1_ps(f32::NEG_INFINITY),
            _mm512_set1_ps(f32::NEG_INFINITY),
        );
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n.
            unsafe {
                m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x.as_ptr().add(i)));
                m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x.as_ptr().add(i + 16)));
            }
            i += 32;
        }
        let mut mx = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
        for &v in &x[i..] {
            mx = mx.max(v);
        }
        for &v in &x[n8..] {
            mx = mx.max(v);
        }
        let mut vs = _mm256_setzero_ps();
        let vmx16 = _mm512_set1_ps(mx);
        let mut i = 0;
        while i + 16 <= n8 {
            // SAFETY: i + 16 <= n.
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let e = exp_neg16(_mm512_sub_ps(_mm512_loadu_ps(p), vmx16));
                _mm512_storeu_ps(p, e);
                // The 8-lane sum's order: elements i..i+8, then i+8..i+16.
                vs = _mm256_add_ps(vs, _mm512_castps512_ps256(e));
                vs = _mm256_add_ps(
                    vs,
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e))),
                );
            }
            i += 16;
        }
        if i < n8 {
            // SAFETY: i + 8 <= n.
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(p), _mm256_set1_ps(mx)));
                vs = _mm256_add_ps(vs, e);
                _mm256_storeu_ps(p, e);
            }
        }
        let mut sa = [0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(sa.as_mut_ptr(), vs) };
        let mut s: f32 = sa.iter().sum();
        for v in &mut x[n8..] {
            *v = (*v - mx).exp();
            s += *v;
        }
        s
    }

    /// `x *= inv`.
    ///
    /// # Safety
    /// AVX2 present.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scale_row(x: &mut [f32], inv: f32) {
        let n = x.len();
        let n8 = n / 8 * 8;
        let vi = _mm256_set1_ps(inv);
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n.
            unsafe {
                let p = x.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), vi));
            }
        }
        for v in &mut x[n8..] {
            *v *= inv;
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    /// The 16-lane exponentials give the 8-lane row's bits and sum, on row lengths with and
    /// without a final 8-block and a scalar tail.
    #[test]
    fn wide_exponentials_are_bit_identical() {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma"))
        {
            return;
        }
        for n in [1, 7, 8, 15, 16, 24, 37, 392, 1568] {
            let row: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 0.037)
                .collect();
            let (mut a, mut b) = (row.clone(), row.clone());
            // SAFETY: AVX2, FMA and AVX-512F were detected.
            let (sa, sb) = unsafe {
                (
                    super::avx2::exp_shifted_row_wide(&mut a),
                    super::avx2::exp_shifted_row(&mut b),
                )
            };
            assert_eq!(sa.to_bits(), sb.to_bits(), "sum, n = {n}");
            for i in 0..n {
                assert_eq!(a[i].to_bits(), b[i].to_bits(), "n = {n}, element {i}");
            }
        }
    }
}
