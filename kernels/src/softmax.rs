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
        // SAFETY: `simd` is set only when AVX2+FMA were detected.
        return unsafe { avx2::exp_shifted_row(x) };
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
