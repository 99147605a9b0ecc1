//! AVX-512 kernels: a 12×32 f32 FMA tile (two 16-column panels per pass) and an 8×32 u8·i8
//! `vpdpbusd` tile (AVX-512 VNNI), both with one or two panels (`NP`) for ragged widths.

use std::arch::x86_64::*;

use super::TileEpi;

/// Mask with the first `n` (0..=16) lanes set.
#[inline]
fn mask16(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// f32 tile: `C[rows × cols] (+)= alpha · A[rows × kc] · [B_p | B_p+1][kc × 16·NP]`.
///
/// # Safety
/// AVX-512F present; `a` readable for `rows` rows of `kc` at stride `lda`; panel `h` of B at
/// `b + h·bstride` readable for `kc × 16`; `c` writable for `rows` rows of `cols` ≤ 16·NP at
/// stride `ldc`, with `cols > 16·(NP−1)`; 1 ≤ rows ≤ 12.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn f32_12x32<const NP: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    bstride: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    acc: bool,
    alpha: f32,
) {
    let ap: [*const f32; 12] =
        std::array::from_fn(|r| if r < rows { a.wrapping_add(r * lda) } else { a });
    let mut t = [[_mm512_setzero_ps(); NP]; 12];
    for kk in 0..kc {
        // SAFETY: kk < kc; each panel holds kc × 16 floats; every ap[r] row has kc floats.
        unsafe {
            // B streams from L2 across page boundaries, where the hardware prefetcher stops:
            // ask for the panel 16 steps ahead (a hint; it never faults past the end).
            for h in 0..NP {
                _mm_prefetch::<_MM_HINT_T0>(
                    b.wrapping_add(h * bstride + (kk + 16) * 16) as *const i8
                );
            }
            let bv: [__m512; NP] =
                std::array::from_fn(|h| _mm512_loadu_ps(b.add(h * bstride + kk * 16)));
            for r in 0..12 {
                let av = _mm512_set1_ps(ap[r].add(kk).read_unaligned());
                for h in 0..NP {
                    t[r][h] = _mm512_fmadd_ps(av, bv[h], t[r][h]);
                }
            }
        }
    }
    let al = _mm512_set1_ps(alpha);
    for (r, tr) in t.iter().enumerate().take(rows) {
        for (h, &v) in tr.iter().enumerate() {
            let m = mask16(cols - 16 * h);
            // SAFETY: row r < rows; masked lanes stay inside the `cols` columns of the tile.
            unsafe {
                let cp = c.add(r * ldc + 16 * h);
                let mut v = _mm512_mul_ps(v, al);
                if acc {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, cp));
                }
                _mm512_mask_storeu_ps(cp, m, v);
            }
        }
    }
}

/// The i32 sums of an 8×(16·NP) int8 tile: `Σ_g A_u8[r, 4g..4g+4] · B_p+h[g][16 × 4]`.
///
/// # Safety
/// As [`i8_8x32`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn i8_8x32_sums<const NP: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    bstride: usize,
) -> [[__m512i; NP]; 8] {
    let ap: [*const u8; 8] =
        std::array::from_fn(|r| if r < rows { a.wrapping_add(r * lda) } else { a });
    let mut t = [[_mm512_setzero_si512(); NP]; 8];
    for g in 0..kg {
        // SAFETY: g < kg; each row has 4·kg bytes; each panel has kg groups of 64 bytes.
        unsafe {
            // As in the f32 tile: the panel 16 k-groups ahead.
            for h in 0..NP {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(h * bstride + (g + 16) * 64));
            }
            let bv: [__m512i; NP] = std::array::from_fn(|h| {
                _mm512_loadu_si512(b.add(h * bstride + g * 64) as *const __m512i)
            });
            for r in 0..8 {
                let av = _mm512_set1_epi32((ap[r].add(4 * g) as *const i32).read_unaligned());
                for h in 0..NP {
                    t[r][h] = _mm512_dpbusd_epi32(t[r][h], av, bv[h]);
                }
            }
        }
    }
    t
}

/// int8 tile: `tile[r][16h..16h+16] = Σ_g A_u8[r, 4g..4g+4] · B_p+h[g][16 × 4]`.
///
/// # Safety
/// AVX-512F/BW/VNNI present; `a` readable for `rows` rows of `4·kg` bytes at stride `lda`;
/// panel `h` of B at `b + h·bstride` readable for `kg × 64` bytes; 1 ≤ rows ≤ 8.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn i8_8x32<const NP: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    bstride: usize,
    tile: &mut [[i32; 32]; 12],
) {
    // SAFETY: forwarded.
    let t = unsafe { i8_8x32_sums::<NP>(kg, a, lda, rows, b, bstride) };
    for (r, tr) in t.iter().enumerate().take(rows) {
        for (h, &v) in tr.iter().enumerate() {
            // SAFETY: tile rows hold 32 i32; h < NP ≤ 2.
            unsafe { _mm512_storeu_si512(tile[r].as_mut_ptr().add(16 * h) as *mut __m512i, v) };
        }
    }
}

/// [`i8_8x32`] for `NP` full 16-column panels with the dequantization epilogue applied straight
/// from the accumulator registers (no i32 tile round trip through memory): per lane the same
/// operations in the same order as the AVX2 epilogue (`dequant8`, `gelu8`), so the outputs
/// are bit-identical to the unfused path.
///
/// # Safety
/// As [`i8_8x32`]; `e` points at `rows` rows of `16·NP` writable (`c`) / readable (`res`)
/// floats at stride `ldc`, `16·NP` column entries of `wscale`, `colsum`, `bias`, and `rows`
/// entries of `sa`, `za`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn i8_8x32_fused<const NP: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    bstride: usize,
    e: &TileEpi,
) {
    // SAFETY: forwarded.
    unsafe {
        let t = i8_8x32_sums::<NP>(kg, a, lda, rows, b, bstride);
        finish_8x32::<NP>(&t, rows, e);
    }
}

/// The dequantization epilogue of the fused int8 tiles on up to 8 rows of `16·NP` i32 sums in
/// registers: per lane the same operations in the same order as the AVX2 epilogue
/// (`dequant8`, `gelu8`), so every tile that ends here (the VNNI and the AMX ones) gives the
/// bits of the unfused path.
///
/// # Safety
/// AVX-512F present; `e` points at `rows` ≤ 8 rows of `16·NP` writable (`c`) / readable
/// (`res`) floats at stride `ldc`, `16·NP` column entries of `wscale`, `colsum`, `bias`, and
/// `rows` entries of `sa`, `za`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn finish_8x32<const NP: usize>(
    t: &[[__m512i; NP]; 8],
    rows: usize,
    e: &TileEpi,
) {
    // SAFETY: 16·NP column entries behind each per-column pointer (caller).
    let (cs, ws, bias) = unsafe {
        let cs: [__m512i; NP] =
            std::array::from_fn(|h| _mm512_loadu_si512(e.colsum.add(16 * h) as *const __m512i));
        let ws: [__m512; NP] = std::array::from_fn(|h| _mm512_loadu_ps(e.wscale.add(16 * h)));
        let bias = e
            .bias
            .map(|b| -> [__m512; NP] { std::array::from_fn(|h| _mm512_loadu_ps(b.add(16 * h))) });
        (cs, ws, bias)
    };
    for (r, tr) in t.iter().enumerate().take(rows) {
        // SAFETY: r < rows; row r of `c` / `res` has 16·NP floats (caller).
        unsafe {
            let sw = _mm512_set1_ps(*e.sa.add(r));
            let vza = _mm512_set1_epi32(*e.za.add(r));
            for h in 0..NP {
                let at = r * e.ldc + 16 * h;
                let s = _mm512_sub_epi32(tr[h], _mm512_mullo_epi32(vza, cs[h]));
                let mut y = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(sw, ws[h]));
                if let Some(b) = bias {
                    y = _mm512_add_ps(y, b[h]);
                }
                if let Some(p) = e.res {
                    y = _mm512_add_ps(y, _mm512_loadu_ps(p.add(at)));
                }
                if e.gelu {
                    y = crate::activation::avx512::gelu16(y);
                }
                let out = e.c.add(at);
                if e.accumulate {
                    y = _mm512_add_ps(y, _mm512_loadu_ps(out));
                }
                _mm512_storeu_ps(out, y);
            }
        }
    }
}

/// One panel of attention keys: `dst[t·16 + lane] = src[lane·ld + t]` for 16 tokens (`lane`)
/// and `hd` channels (`t`), gathered 16 tokens at a time.
///
/// # Safety
/// AVX-512F present; `src` holds 16 rows of `hd` floats `ld` apart (`15·ld + hd` floats),
/// `dst` at least `16·hd`; `16·ld` fits in i32.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_keys16(src: &[f32], ld: usize, hd: usize, dst: &mut [f32]) {
    debug_assert!(src.len() >= 15 * ld + hd && dst.len() >= 16 * hd);
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(ld as i32),
    );
    for t in 0..hd {
        // SAFETY: lane l reads src[l·ld + t], inside `src`; 16 floats at dst[16t..] (caller).
        unsafe {
            let v = _mm512_i32gather_ps::<4>(idx, src.as_ptr().add(t));
            _mm512_storeu_ps(dst.as_mut_ptr().add(16 * t), v);
        }
    }
}
