//! What happens to each output tile after the GEMM: bias is always added (when the layer has
//! one), then the [`Epilogue`] is applied while the tile is still in cache.

/// Fused post-processing of `y = x · Wᵀ + b`.
#[derive(Debug, Clone, Copy, Default)]
pub enum Epilogue<'a> {
    /// `out = y`.
    #[default]
    None,
    /// `out = gelu(y)` (exact erf GELU).
    Gelu,
    /// `out = y + residual`, with `residual` laid out like `out` (`m × out_features`).
    AddResidual(&'a [f32]),
    /// `out += y` (the residual is already in `out`; saves a buffer).
    Accumulate,
}

/// Finish one output row segment in place: `row[c] = epi(row[c] + bias[c])`. `row` holds the
/// raw GEMM sums (plus the old contents of `out` for `Accumulate`, which the GEMM kept).
/// `res` is the matching residual segment for `AddResidual`.
pub(crate) fn finish_row_f32(
    row: &mut [f32],
    bias: Option<&[f32]>,
    gelu: bool,
    res: Option<&[f32]>,
    simd: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only set by callers that checked AVX2+FMA.
        unsafe { crate::x86::avx2::finish_row_f32(row, bias, gelu, res) };
        return;
    }
    let _ = simd;
    if let Some(b) = bias {
        for (o, b) in row.iter_mut().zip(b) {
            *o += b;
        }
    }
    if let Some(r) = res {
        for (o, r) in row.iter_mut().zip(r) {
            *o += r;
        }
    }
    if gelu {
        crate::activation::gelu_slice_scalar(row);
    }
}
