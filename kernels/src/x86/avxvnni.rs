//! AVX-VNNI kernel (256-bit `vpdpbusd`, e.g. Alder Lake and Zen 5 without AVX-512): a 6×16
//! u8·i8 → i32 tile with full-range ±127 weights.

use std::arch::x86_64::*;

/// int8 tile: `tile[r][0..16] = Σ_g A_u8[r, 4g..4g+4] · B_i8[g][16 × 4]`.
///
/// # Safety
/// AVX-VNNI and AVX2 present; `a` readable for `rows` rows of `4·kg` bytes at stride `lda`;
/// `b` for `kg × 64` bytes; 1 ≤ rows ≤ 6.
#[target_feature(enable = "avxvnni,avx2,fma")]
pub(crate) unsafe fn i8_6x16(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    tile: &mut [[i32; 32]; 12],
) {
    let ap: [*const u8; 6] =
        std::array::from_fn(|r| if r < rows { a.wrapping_add(r * lda) } else { a });
    let mut t = [[_mm256_setzero_si256(); 2]; 6];
    for g in 0..kg {
        // SAFETY: g < kg; each row has 4·kg bytes; B has kg groups of 64 bytes.
        unsafe {
            let b0 = _mm256_loadu_si256(b.add(g * 64) as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(g * 64 + 32) as *const __m256i);
            for r in 0..6 {
                let av = _mm256_set1_epi32((ap[r].add(4 * g) as *const i32).read_unaligned());
                t[r][0] = _mm256_dpbusd_avx_epi32(t[r][0], av, b0);
                t[r][1] = _mm256_dpbusd_avx_epi32(t[r][1], av, b1);
            }
        }
    }
    for (r, tr) in t.iter().enumerate().take(rows) {
        // SAFETY: tile rows hold 32 i32; we write the first 16.
        unsafe {
            _mm256_storeu_si256(tile[r].as_mut_ptr() as *mut __m256i, tr[0]);
            _mm256_storeu_si256(tile[r].as_mut_ptr().add(8) as *mut __m256i, tr[1]);
        }
    }
}
