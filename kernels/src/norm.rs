//! LayerNorm over the last dimension of a row-major `rows × d` matrix, in f32, written straight
//! into the caller's output buffer (parallel over rows for large inputs).

use crate::error::{KernelError, check_dim, check_len};

/// `out[r] = (x[r] − mean) / sqrt(var + eps) · gamma + beta` for each row (biased variance, as
/// `torch.nn.LayerNorm`).
pub fn layer_norm(
    x: &[f32],
    rows: usize,
    d: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_dim("d", d, crate::gemm_f32::MAX_DIM)?;
    check_len("x", x.len(), rows * d)?;
    check_len("out", out.len(), rows * d)?;
    check_len("gamma", gamma.len(), d)?;
    check_len("beta", beta.len(), d)?;
    let simd = crate::F32Kernel::best() != crate::F32Kernel::Scalar;
    let outp = crate::pool::SharedMut::new(out.as_mut_ptr());
    let run = |rr: std::ops::Range<usize>| {
        for r in rr {
            let xr = &x[r * d..(r + 1) * d];
            // SAFETY: each row of `out` is written by exactly one chunk.
            let or = unsafe { std::slice::from_raw_parts_mut(outp.get().add(r * d), d) };
            layer_norm_row(xr, gamma, beta, eps, or, simd);
        }
    };
    if rows * d < 32 * 1024 {
        run(0..rows);
    } else {
        crate::pool::for_each_chunk(rows, 8, run);
    }
    Ok(())
}

pub(crate) fn layer_norm_row(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
    simd: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is set only when AVX2+FMA were detected.
        unsafe { avx2::layer_norm_row(x, gamma, beta, eps, out) };
        return;
    }
    let _ = simd;
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    let inv = 1.0 / (var + eps).sqrt();
    for i in 0..x.len() {
        out[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2+FMA present; all slices have `x.len()` elements.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn layer_norm_row(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        out: &mut [f32],
    ) {
        let n = x.len();
        let n8 = n / 8 * 8;
        let mut s = _mm256_setzero_ps();
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n.
            s = _mm256_add_ps(s, unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) });
        }
        let mut sum = hsum(s);
        for &v in &x[n8..] {
            sum += v;
        }
        let mean = sum / n as f32;
        let vm = _mm256_set1_ps(mean);
        let mut q = _mm256_setzero_ps();
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n.
            let dlt = _mm256_sub_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) }, vm);
            q = _mm256_fmadd_ps(dlt, dlt, q);
        }
        let mut sq = hsum(q);
        for &v in &x[n8..] {
            sq += (v - mean) * (v - mean);
        }
        let inv = 1.0 / (sq / n as f32 + eps).sqrt();
        let vi = _mm256_set1_ps(inv);
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n for every slice.
            unsafe {
                let dlt = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vm);
                let g = _mm256_mul_ps(_mm256_loadu_ps(gamma.as_ptr().add(i)), vi);
                let y = _mm256_fmadd_ps(dlt, g, _mm256_loadu_ps(beta.as_ptr().add(i)));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
            }
        }
        for i in n8..n {
            out[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
        }
    }
}
