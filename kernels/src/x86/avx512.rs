//! AVX-512 kernels: a 12×32 f32 FMA tile (two 16-column panels per pass) and an 8×32 u8·i8
//! `vpdpbusd` tile (AVX-512 VNNI), both with one or two panels (`NP`) for ragged widths.

use std::arch::x86_64::*;

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
    let ap: [*const u8; 8] =
        std::array::from_fn(|r| if r < rows { a.wrapping_add(r * lda) } else { a });
    let mut t = [[_mm512_setzero_si512(); NP]; 8];
    for g in 0..kg {
        // SAFETY: g < kg; each row has 4·kg bytes; each panel has kg groups of 64 bytes.
        unsafe {
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
    for (r, tr) in t.iter().enumerate().take(rows) {
        for (h, &v) in tr.iter().enumerate() {
            // SAFETY: tile rows hold 32 i32; h < NP ≤ 2.
            unsafe { _mm512_storeu_si512(tile[r].as_mut_ptr().add(16 * h) as *mut __m512i, v) };
        }
    }
}
