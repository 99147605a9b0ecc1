//! AVX2 + FMA kernels: the 6×16 f32 tile, the 4×16 u8·i8 tile (`vpmaddubsw` → `vpmaddwd`),
//! per-row activation quantization, and the dequantize/bias/GELU/residual row epilogues.

use std::arch::x86_64::*;

use super::TileEpi;

use crate::activation::avx2::gelu8;
use crate::gemm_i8::{Dequant, row_params};

/// Lane mask with the first `n` (0..=8) lanes set.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn mask8(n: usize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
}

/// Rows of the AVX2 f32 tile: 6 × 2 accumulators + 2 B vectors + 1 broadcast = 15 of the 16
/// ymm registers. Twelve independent FMA chains hide the FMA latency (4 cycles × 2 pipes needs
/// at least 8); with 4 rows (8 chains) any stall idles a pipe. Side by side on Zen 3
/// (`gemm_cputime`, release, three alternating runs) the 6-row tile took 0.7–1.0× the CPU time
/// of the 4-row one on the encoder shapes; an earlier note that 6 rows spilled came from a
/// dev-profile build.
pub(crate) const F32_MR: usize = 6;

/// f32 tile: `C[rows × cols] (+)= alpha · A[rows × kc] · B[kc × 16]`.
///
/// # Safety
/// AVX2+FMA present; `a` readable for `rows` rows of `kc` at stride `lda`; `b` for `kc × 16`;
/// `c` writable for `rows` rows of `cols` (≤ 16) at stride `ldc`; 1 ≤ rows ≤ `F32_MR`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn f32_6x16(
    kc: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    acc: bool,
    alpha: f32,
) {
    // Rows past `rows` re-read row 0 (always valid) and are never stored.
    let ap: [*const f32; F32_MR] =
        std::array::from_fn(|r| if r < rows { a.wrapping_add(r * lda) } else { a });
    let mut t = [[_mm256_setzero_ps(); 2]; F32_MR];
    for kk in 0..kc {
        // SAFETY: kk < kc; B holds kc × 16 floats; every ap[r] row has kc floats.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(kk * 16));
            let b1 = _mm256_loadu_ps(b.add(kk * 16 + 8));
            for r in 0..F32_MR {
                let av = _mm256_set1_ps(ap[r].add(kk).read_unaligned());
                t[r][0] = _mm256_fmadd_ps(av, b0, t[r][0]);
                t[r][1] = _mm256_fmadd_ps(av, b1, t[r][1]);
            }
        }
    }
    let al = _mm256_set1_ps(alpha);
    let m0 = mask8(cols.min(8));
    let m1 = mask8(cols.saturating_sub(8));
    for (r, tr) in t.iter().enumerate().take(rows) {
        // SAFETY: row r < rows; masked lanes stay inside the `cols` columns of the tile.
        unsafe {
            let cp = c.add(r * ldc);
            let mut v0 = _mm256_mul_ps(tr[0], al);
            let mut v1 = _mm256_mul_ps(tr[1], al);
            if cols == 16 {
                if acc {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cp));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cp.add(8)));
                }
                _mm256_storeu_ps(cp, v0);
                _mm256_storeu_ps(cp.add(8), v1);
            } else {
                if acc {
                    v0 = _mm256_add_ps(v0, _mm256_maskload_ps(cp, m0));
                    v1 = _mm256_add_ps(v1, _mm256_maskload_ps(cp.add(8), m1));
                }
                _mm256_maskstore_ps(cp, m0, v0);
                _mm256_maskstore_ps(cp.add(8), m1, v1);
            }
        }
    }
}

/// The k loop of the 4×16 int8 tile: the i32 sums of rows `0..rows` (rows past `rows` repeat
/// row 0 and are ignored), two 8-column halves each. With `PAIRS`, two k-groups' `vpmaddubsw`
/// results are added in i16 before `vpmaddwd`, which needs every activation ≤ 127.
///
/// # Safety
/// As [`i8_4x16`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn i8_4x16_sums<const PAIRS: bool>(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
) -> [[__m256i; 2]; 4] {
    let ap: [*const u8; 4] =
        std::array::from_fn(|r| if r < rows { a.wrapping_add(r * lda) } else { a });
    let ones = _mm256_set1_epi16(1);
    let mut t = [[_mm256_setzero_si256(); 2]; 4];
    // Two k-groups at a time: activations are ≤ 127 (`ActivationRange::U7`) and weights
    // |w| ≤ 64, so each `vpmaddubsw` lane is at most 16256 in magnitude and two of them add in
    // i16 without overflow; one `vpmaddwd` then widens the pair sums to i32.
    let pairs = if PAIRS { kg / 2 } else { 0 };
    for gp in 0..pairs {
        let g = 2 * gp;
        // SAFETY: g + 1 < kg; each row has 4·kg bytes; B has kg groups of 64 bytes.
        unsafe {
            let b0 = _mm256_loadu_si256(b.add(g * 64) as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(g * 64 + 32) as *const __m256i);
            let b2 = _mm256_loadu_si256(b.add(g * 64 + 64) as *const __m256i);
            let b3 = _mm256_loadu_si256(b.add(g * 64 + 96) as *const __m256i);
            for r in 0..4 {
                let a0 = _mm256_set1_epi32((ap[r].add(4 * g) as *const i32).read_unaligned());
                let a1 = _mm256_set1_epi32((ap[r].add(4 * g + 4) as *const i32).read_unaligned());
                let s0 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(a0, b0), _mm256_maddubs_epi16(a1, b2));
                let s1 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(a0, b1), _mm256_maddubs_epi16(a1, b3));
                t[r][0] = _mm256_add_epi32(t[r][0], _mm256_madd_epi16(s0, ones));
                t[r][1] = _mm256_add_epi32(t[r][1], _mm256_madd_epi16(s1, ones));
            }
        }
    }
    for g in 2 * pairs..kg {
        // SAFETY: g < kg, as above.
        unsafe {
            let b0 = _mm256_loadu_si256(b.add(g * 64) as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(g * 64 + 32) as *const __m256i);
            for r in 0..4 {
                let av = _mm256_set1_epi32((ap[r].add(4 * g) as *const i32).read_unaligned());
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones);
                t[r][0] = _mm256_add_epi32(t[r][0], p0);
                t[r][1] = _mm256_add_epi32(t[r][1], p1);
            }
        }
    }
    t
}

/// int8 tile: `tile[r][0..16] = Σ_g A_u8[r, 4g..4g+4] · B_i8[g][16 × 4]` with
/// `vpmaddubsw` (pairs → i16; cannot saturate because |w| ≤ 64; with `pairs`, two k-groups'
/// results add in i16, which needs A ≤ 127) and `vpmaddwd` (→ i32).
///
/// # Safety
/// AVX2 present; `a` readable for `rows` rows of `4·kg` bytes at stride `lda`; `b` for
/// `kg × 64` bytes; 1 ≤ rows ≤ 4; with `pairs`, every byte of A ≤ 127.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn i8_4x16(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    pairs: bool,
    tile: &mut [[i32; 32]; 12],
) {
    // SAFETY: forwarded.
    let t = unsafe {
        if pairs {
            i8_4x16_sums::<true>(kg, a, lda, rows, b)
        } else {
            i8_4x16_sums::<false>(kg, a, lda, rows, b)
        }
    };
    for (r, tr) in t.iter().enumerate().take(rows) {
        // SAFETY: tile rows hold 32 i32; we write the first 16.
        unsafe {
            _mm256_storeu_si256(tile[r].as_mut_ptr() as *mut __m256i, tr[0]);
            _mm256_storeu_si256(tile[r].as_mut_ptr().add(8) as *mut __m256i, tr[1]);
        }
    }
}

/// [`i8_4x16`] with the dequantization epilogue applied straight from the accumulator
/// registers, for a full 16-column panel: no i32 tile round trip through memory, the
/// per-column vectors loaded once for all rows, and the output (or residual) rows prefetched
/// before the k loop so that `Accumulate` does not wait on a cache miss at the end. Both this
/// and [`dequant_row`] finish 8 lanes with [`dequant8`], so the results are bit-identical to the
/// unfused path.
///
/// # Safety
/// As [`i8_4x16`]; `e` points at `rows` rows of 16 writable (`c`) / readable (`res`) floats at
/// stride `ldc`, 16 column entries of `wscale`, `colsum`, `bias`, and `rows` entries of
/// `sa`, `za`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn i8_4x16_fused<const PAIRS: bool>(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    e: &TileEpi,
) {
    // The tile's output rows are read at the end (`Accumulate` / residual); start loading them
    // now. Prefetch never faults, so the second line of each row may safely lie past the end.
    let pre = if e.accumulate {
        Some(e.c as *const f32)
    } else {
        e.res
    };
    if let Some(p) = pre {
        for r in 0..rows {
            let row = p.wrapping_add(r * e.ldc) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(60));
        }
    }
    // SAFETY: forwarded.
    let t = unsafe { i8_4x16_sums::<PAIRS>(kg, a, lda, rows, b) };
    // SAFETY: 16 column entries behind each per-column pointer (caller).
    let (cs, ws, bias) = unsafe {
        let cs = [
            _mm256_loadu_si256(e.colsum as *const __m256i),
            _mm256_loadu_si256(e.colsum.add(8) as *const __m256i),
        ];
        let ws = [_mm256_loadu_ps(e.wscale), _mm256_loadu_ps(e.wscale.add(8))];
        let bias = e
            .bias
            .map(|b| [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))]);
        (cs, ws, bias)
    };
    for (r, tr) in t.iter().enumerate().take(rows) {
        // SAFETY: r < rows; row r of `c` / `res` has 16 floats (caller).
        unsafe {
            let vsa = _mm256_set1_ps(*e.sa.add(r));
            let vza = _mm256_set1_epi32(*e.za.add(r));
            for h in 0..2 {
                let at = r * e.ldc + 8 * h;
                dequant8(
                    tr[h],
                    vsa,
                    vza,
                    cs[h],
                    ws[h],
                    bias.map(|b| b[h]),
                    e.res.map(|p| p.add(at)),
                    e.gelu,
                    e.accumulate,
                    e.c.add(at),
                );
            }
        }
    }
}

/// Every row tile of one full 16-column panel for `rows` rows ([`i8_4x16_fused`] 4 rows at a
/// time) in one call: the per-call cost (argument set-up, register saves) is paid once per
/// panel and row block instead of once per 4 rows, which is a tenth of the tile's time when k
/// is short.
///
/// # Safety
/// As [`i8_4x16_fused`], for `rows` rows (any number) of A at stride `lda` and of `e`'s
/// per-row pointers; with `pairs`, every byte of A ≤ 127.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn i8_panel_fused(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    pairs: bool,
    e: &TileEpi,
) {
    // SAFETY: forwarded; each tile covers rows r..r+4 (or fewer at the end) of every operand.
    unsafe {
        if pairs {
            panel_rows::<true>(kg, a, lda, rows, b, e)
        } else {
            panel_rows::<false>(kg, a, lda, rows, b, e)
        }
    }
}

/// The row loop of [`i8_panel_fused`].
///
/// # Safety
/// As [`i8_panel_fused`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn panel_rows<const PAIRS: bool>(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    e: &TileEpi,
) {
    let mut r = 0;
    while r < rows {
        let n = 4.min(rows - r);
        // SAFETY: rows r..r+n of every operand are inside what the caller promised.
        unsafe {
            let tile = TileEpi {
                sa: e.sa.add(r),
                za: e.za.add(r),
                res: e.res.map(|p| p.add(r * e.ldc)),
                c: e.c.add(r * e.ldc),
                ..*e
            };
            i8_4x16_fused::<PAIRS>(kg, a.add(r * lda), lda, n, b, &tile);
        }
        r += n;
    }
}

/// Quantize one row to u8 in 0..=`qmax` (asymmetric, range widened to include 0); bytes past
/// `x.len()` in `dst` are zeroed. Returns (scale, zero point). Bit-identical to the scalar path.
///
/// # Safety
/// AVX2+FMA present; `dst.len() >= x.len()`; `qmax` ≤ 255.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_row(x: &[f32], dst: &mut [u8], qmax: i32) -> (f32, i32) {
    let k = x.len();
    let mut vlo = _mm256_set1_ps(f32::INFINITY);
    let mut vhi = _mm256_set1_ps(f32::NEG_INFINITY);
    // Two independent chains for the bulk (the extremes of finite values do not depend on the
    // order they are taken in), then one for the rest.
    let (mut lo2, mut hi2) = (vlo, vhi);
    let mut i = 0;
    while i + 16 <= k {
        // SAFETY: i + 16 <= k.
        let (v0, v1) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(x.as_ptr().add(i + 8)),
            )
        };
        vlo = _mm256_min_ps(vlo, v0);
        vhi = _mm256_max_ps(vhi, v0);
        lo2 = _mm256_min_ps(lo2, v1);
        hi2 = _mm256_max_ps(hi2, v1);
        i += 16;
    }
    vlo = _mm256_min_ps(vlo, lo2);
    vhi = _mm256_max_ps(vhi, hi2);
    while i + 8 <= k {
        // SAFETY: i + 8 <= k.
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        vlo = _mm256_min_ps(vlo, v);
        vhi = _mm256_max_ps(vhi, v);
        i += 8;
    }
    let mut lo_a = [0f32; 8];
    let mut hi_a = [0f32; 8];
    // SAFETY: arrays of 8 floats.
    unsafe {
        _mm256_storeu_ps(lo_a.as_mut_ptr(), vlo);
        _mm256_storeu_ps(hi_a.as_mut_ptr(), vhi);
    }
    let mut lo = lo_a.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let mut hi = hi_a.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in &x[i..] {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (scale, zero) = row_params(lo, hi, qmax);
    let inv = 1.0 / scale;
    let vinv = _mm256_set1_ps(inv);
    let vz = _mm256_set1_epi32(zero);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let vmax = _mm256_set1_epi8(qmax as u8 as i8);
    let mut i = 0;
    while i + 32 <= k {
        // SAFETY: i + 32 <= k <= dst.len().
        unsafe {
            let q = |o: usize| {
                _mm256_add_epi32(
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i + o)), vinv)),
                    vz,
                )
            };
            let w01 = _mm256_packs_epi32(q(0), q(8));
            let w23 = _mm256_packs_epi32(q(16), q(24));
            let bytes = _mm256_min_epu8(
                _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w01, w23), perm),
                vmax,
            );
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, bytes);
        }
        i += 32;
    }
    for j in i..k {
        dst[j] = ((x[j] * inv).round_ties_even() as i32 + zero).clamp(0, qmax) as u8;
    }
    dst[k..].fill(0);
    (scale, zero)
}

/// Largest magnitude in `x`, or `None` if some value is not finite.
///
/// # Safety
/// AVX2+FMA present.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn abs_max_finite(x: &[f32]) -> Option<f32> {
    let absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let inf = _mm256_set1_ps(f32::INFINITY);
    let mut m = _mm256_setzero_ps();
    // All-ones lanes while every value seen is finite (NaN compares false too).
    let mut ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    let mut i = 0;
    while i + 8 <= x.len() {
        // SAFETY: i + 8 <= len.
        let a = _mm256_and_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) }, absmask);
        ok = _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_LT_OQ>(a, inf));
        m = _mm256_max_ps(m, a);
        i += 8;
    }
    if _mm256_movemask_ps(ok) != 0xff {
        return None;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let mut amax = lanes.iter().fold(0f32, |a, &b| a.max(b));
    for &v in &x[i..] {
        if !v.is_finite() {
            return None;
        }
        amax = amax.max(v.abs());
    }
    Some(amax)
}

/// Per column of an 8-column strip, `k` rows `ld` apart: the largest magnitude into `out`, or
/// `false` if some value is not finite (then `out` is unspecified).
///
/// # Safety
/// AVX2+FMA present; `src[j·ld .. j·ld + 8]` readable for `j < k`; `out` holds 8 floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn abs_max_cols8(src: *const f32, ld: usize, k: usize, out: *mut f32) -> bool {
    let absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let inf = _mm256_set1_ps(f32::INFINITY);
    let mut m = _mm256_setzero_ps();
    let mut ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for j in 0..k {
        // SAFETY: row j of the strip (caller).
        let a = _mm256_and_ps(unsafe { _mm256_loadu_ps(src.add(j * ld)) }, absmask);
        ok = _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_LT_OQ>(a, inf));
        m = _mm256_max_ps(m, a);
    }
    // SAFETY: 8 floats (caller).
    unsafe { _mm256_storeu_ps(out, m) };
    _mm256_movemask_ps(ok) == 0xff
}

/// The weight levels of 8 floats: `w·inv` rounded half away from zero and clamped to `±wmax`,
/// as i32 lanes; bit-identical to `gemm_i8::quantize_weight` (a separate multiply and add,
/// truncating conversion; the values are in range, so it never saturates).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_levels8(w: __m256, inv: __m256, wmax: __m256i) -> __m256i {
    let half = _mm256_or_ps(
        _mm256_and_ps(w, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN))),
        _mm256_set1_ps(0.5),
    );
    let q = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(w, inv), half));
    _mm256_max_epi32(
        _mm256_min_epi32(q, wmax),
        _mm256_sub_epi32(_mm256_setzero_si256(), wmax),
    )
}

/// Quantize one output channel's weights `row` with `inv` (levels ±`wmax`) into its lane of a
/// packed panel: the 4 bytes of k-group `g` go to `lane + g·stride`. Whole groups of 8 k use
/// AVX2, the rest the scalar `quantize`; returns the sum of the levels.
///
/// # Safety
/// AVX2+FMA present; `lane + g·stride .. + 4` writable for every group `g < ⌈len/4⌉`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_weight_row(
    row: &[f32],
    inv: f32,
    wmax: i32,
    lane: *mut i8,
    stride: usize,
    quantize: impl Fn(f32) -> i8,
) -> i32 {
    let vinv = _mm256_set1_ps(inv);
    let vmax = _mm256_set1_epi32(wmax);
    let mut vsum = _mm256_setzero_si256();
    let mut i = 0;
    while i + 8 <= row.len() {
        // SAFETY: i + 8 <= len; groups i/4 and i/4 + 1 are inside the lane (caller).
        unsafe {
            let q = weight_levels8(_mm256_loadu_ps(row.as_ptr().add(i)), vinv, vmax);
            vsum = _mm256_add_epi32(vsum, q);
            // i32 → i16 → i8 within each 128-bit half: bytes 0..4 of each half are its levels.
            let b16 = _mm256_packs_epi32(q, q);
            let b8 = _mm256_packs_epi16(b16, b16);
            let lo = _mm256_cvtsi256_si32(b8);
            let hi = _mm256_extract_epi32::<4>(b8);
            (lane.add((i / 4) * stride) as *mut i32).write_unaligned(lo);
            (lane.add((i / 4 + 1) * stride) as *mut i32).write_unaligned(hi);
        }
        i += 8;
    }
    let mut sums = [0i32; 8];
    // SAFETY: 8 i32.
    unsafe { _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, vsum) };
    let mut sum: i32 = sums.iter().sum();
    for (j, &v) in row.iter().enumerate().skip(i) {
        let q = quantize(v);
        sum += q as i32;
        // SAFETY: group j/4 is inside the lane (caller).
        unsafe { *lane.add((j / 4) * stride + j % 4) = q };
    }
    sum
}

/// Quantize a weight stored transposed (`W[c, j] = src[j·ld + c]`, `c < 8`) for 8 consecutive
/// output channels of one panel (`inv`: their 8 factors), 4 k at a time: the 4 levels of each
/// channel form one 32-bit word, and the 8 words of a k-group are one 32-byte store at
/// `dst + 64·g` (packed panels: 16 columns × 4 bytes per group). k past `k` are zero. Adds
/// each channel's levels to `colsum`.
///
/// # Safety
/// AVX2+FMA present; `src[j·ld .. j·ld + 8]` readable for `j < k`; `dst + 64·g .. + 32`
/// writable for `g < ⌈k/4⌉`; `inv` and `colsum` hold 8 entries.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_weight_cols8(
    src: *const f32,
    ld: usize,
    k: usize,
    inv: *const f32,
    wmax: i32,
    dst: *mut i8,
    colsum: *mut i32,
) {
    // SAFETY: as the caller promised.
    unsafe {
        let vinv = _mm256_loadu_ps(inv);
        let vmax = _mm256_set1_epi32(wmax);
        let bytes = _mm256_set1_epi32(0xff);
        let mut vsum = _mm256_setzero_si256();
        for g in 0..k.div_ceil(4) {
            let mut word = _mm256_setzero_si256();
            for t in 0..4 {
                let j = 4 * g + t;
                if j < k {
                    let q = weight_levels8(_mm256_loadu_ps(src.add(j * ld)), vinv, vmax);
                    vsum = _mm256_add_epi32(vsum, q);
                    let b = _mm256_and_si256(q, bytes);
                    let shifted = match t {
                        0 => b,
                        1 => _mm256_slli_epi32::<8>(b),
                        2 => _mm256_slli_epi32::<16>(b),
                        _ => _mm256_slli_epi32::<24>(b),
                    };
                    word = _mm256_or_si256(word, shifted);
                }
            }
            _mm256_storeu_si256(dst.add(64 * g) as *mut __m256i, word);
        }
        let cs = colsum as *mut __m256i;
        _mm256_storeu_si256(cs, _mm256_add_epi32(_mm256_loadu_si256(cs), vsum));
    }
}

/// Finish 8 lanes of one output row: `y = (acc − za·colsum) · (sa·wscale) (+ bias) (+ res)`,
/// GELU if asked, added to `*out` for `Accumulate`, stored to `out`. The one definition of the
/// int8 epilogue arithmetic (fused tile and row epilogue alike).
///
/// # Safety
/// AVX2+FMA present; `out` (and `res`) valid for 8 floats.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequant8(
    acc: __m256i,
    sa: __m256,
    za: __m256i,
    colsum: __m256i,
    wscale: __m256,
    bias: Option<__m256>,
    res: Option<*const f32>,
    gelu: bool,
    accumulate: bool,
    out: *mut f32,
) {
    let s = _mm256_sub_epi32(acc, _mm256_mullo_epi32(za, colsum));
    let mut y = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(sa, wscale));
    if let Some(b) = bias {
        y = _mm256_add_ps(y, b);
    }
    if let Some(r) = res {
        // SAFETY: 8 readable floats (caller).
        y = _mm256_add_ps(y, unsafe { _mm256_loadu_ps(r) });
    }
    if gelu {
        y = gelu8(y);
    }
    // SAFETY: 8 writable floats (caller).
    unsafe {
        if accumulate {
            y = _mm256_add_ps(y, _mm256_loadu_ps(out));
        }
        _mm256_storeu_ps(out, y);
    }
}

/// Dequantize one row segment of i32 sums and apply bias / residual / GELU / accumulate.
///
/// # Safety
/// AVX2+FMA present; all slices of `d` and `acc` have `out.len()` elements.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dequant_row(d: &Dequant<'_>, acc: &[i32], out: &mut [f32]) {
    let cols = out.len();
    let vsa = _mm256_set1_ps(d.sa);
    let vza = _mm256_set1_epi32(d.za);
    let mut c = 0;
    while c + 8 <= cols {
        // SAFETY: c + 8 <= cols = length of every slice used here.
        unsafe {
            dequant8(
                _mm256_loadu_si256(acc.as_ptr().add(c) as *const __m256i),
                vsa,
                vza,
                _mm256_loadu_si256(d.colsum.as_ptr().add(c) as *const __m256i),
                _mm256_loadu_ps(d.wscale.as_ptr().add(c)),
                d.bias.map(|b| _mm256_loadu_ps(b.as_ptr().add(c))),
                d.res.map(|r| r.as_ptr().add(c)),
                d.gelu,
                d.accumulate,
                out.as_mut_ptr().add(c),
            );
        }
        c += 8;
    }
    for c in c..cols {
        let mut y = (acc[c] - d.za * d.colsum[c]) as f32 * (d.sa * d.wscale[c]);
        if let Some(b) = d.bias {
            y += b[c];
        }
        if let Some(r) = d.res {
            y += r[c];
        }
        if d.gelu {
            y = crate::activation::gelu(y);
        }
        out[c] = if d.accumulate { out[c] + y } else { y };
    }
}

/// `row = gelu?(row + bias + res)` in place (f32 GEMM epilogue).
///
/// # Safety
/// AVX2+FMA present; `bias` and `res`, when given, have `row.len()` elements.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn finish_row_f32(
    row: &mut [f32],
    bias: Option<&[f32]>,
    gelu: bool,
    res: Option<&[f32]>,
) {
    let n = row.len();
    let mut c = 0;
    while c + 8 <= n {
        // SAFETY: c + 8 <= n = length of every slice used here.
        unsafe {
            let p = row.as_mut_ptr().add(c);
            let mut y = _mm256_loadu_ps(p);
            if let Some(b) = bias {
                y = _mm256_add_ps(y, _mm256_loadu_ps(b.as_ptr().add(c)));
            }
            if let Some(r) = res {
                y = _mm256_add_ps(y, _mm256_loadu_ps(r.as_ptr().add(c)));
            }
            if gelu {
                y = gelu8(y);
            }
            _mm256_storeu_ps(p, y);
        }
        c += 8;
    }
    for c in c..n {
        let mut y = row[c];
        if let Some(b) = bias {
            y += b[c];
        }
        if let Some(r) = res {
            y += r[c];
        }
        row[c] = if gelu { crate::activation::gelu(y) } else { y };
    }
}

/// RoPE on one head's `x` (pairs `(x[2j], x[2j+1])` rotated by `c`, `s`), 8 values at a time:
/// `x[2j] = x[2j]·c[2j] − x[2j+1]·s[2j]`, `x[2j+1] = x[2j+1]·c[2j+1] + x[2j]·s[2j+1]`, the
/// same products and sums as the scalar code (no fused multiply-add), so bit-identical.
///
/// An odd last value is left as it is, as in the scalar code.
///
/// # Safety
/// AVX2 present; `c` and `s` have at least `x.len()` values.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn rope_pairs(x: &mut [f32], c: &[f32], s: &[f32]) {
    let n = x.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n <= c.len(), s.len().
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let v = _mm256_loadu_ps(p);
            let swapped = _mm256_permute_ps::<0b10_11_00_01>(v);
            let a = _mm256_mul_ps(v, _mm256_loadu_ps(c.as_ptr().add(i)));
            let b = _mm256_mul_ps(swapped, _mm256_loadu_ps(s.as_ptr().add(i)));
            // even lanes a − b, odd lanes a + b
            _mm256_storeu_ps(p, _mm256_addsub_ps(a, b));
        }
        i += 8;
    }
    while i + 2 <= n {
        let (x0, x1) = (x[i], x[i + 1]);
        x[i] = x0 * c[i] - x1 * s[i];
        x[i + 1] = x1 * c[i + 1] + x0 * s[i + 1];
        i += 2;
    }
}
