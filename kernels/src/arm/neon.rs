//! NEON dot-product (`sdot`, Armv8.2 `dotprod`: Cortex-A76/A78 as in Jetson Orin) int8 tile.
//!
//! `sdot` multiplies signed bytes, and its by-element form multiplies four weight columns (16
//! bytes: 4 columns × 4 k) by one 4-byte k-group of an activation row, which is exactly one
//! quarter of a packed 16-column k-group. The u8 activations are made signed by flipping their
//! top bit (`q − 128`); the caller adds the `128 · Σ w` this removes back through the zero
//! point. The dot-product intrinsics are not stable in Rust yet, so `sdot` is inline assembly.

use std::arch::aarch64::*;

/// `acc += Σ_t b[4i + t] · a[4·L + t]` for each i32 lane `i`: weights `b` (4 columns × 4 k) times
/// k-group `L` of the activations `a`.
///
/// # Safety
/// The CPU has `dotprod`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot_lane<const L: i32>(acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only arithmetic; the CPU has `dotprod` (caller).
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[{l}]",
            acc = inout(vreg) acc,
            b = in(vreg) b,
            a = in(vreg_low16) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// The 16 weight bytes of columns `4c..4c + 4` of packed k-group `g`.
///
/// # Safety
/// Group `g` of the panel is readable.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn weights(b: *const i8, g: usize, c: usize) -> int8x16_t {
    // SAFETY: 16 of the group's 64 bytes (caller).
    unsafe { vld1q_s8(b.add(g * 64 + 16 * c)) }
}

/// int8 tile: `tile[r][0..16] = Σ_g (A_u8[r, 4g..4g+4] − 128) · B_i8[g][16 × 4]` in i32, for
/// rows `0..rows` (rows past `rows` repeat row 0 and are not stored). Four k-groups of each row
/// are loaded at a time and each is used by lane.
///
/// # Safety
/// The CPU has NEON and `dotprod`; `a` readable for `rows` rows of `4·kg` bytes at stride `lda`;
/// `b` for `kg × 64` bytes; 1 ≤ rows ≤ 4.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn i8_4x16_dot(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    tile: &mut [[i32; 32]; 12],
) {
    let ap: [*const u8; 4] =
        std::array::from_fn(|r| if r < rows { a.wrapping_add(r * lda) } else { a });
    let flip = vdupq_n_u8(0x80);
    let mut acc = [[vdupq_n_s32(0); 4]; 4];
    let mut g = 0;
    while g + 4 <= kg {
        // SAFETY: groups g..g+4 lie inside every row and inside B.
        unsafe {
            let av: [int8x16_t; 4] = std::array::from_fn(|r| {
                vreinterpretq_s8_u8(veorq_u8(vld1q_u8(ap[r].add(4 * g)), flip))
            });
            macro_rules! group {
                ($l:literal) => {
                    let bv: [int8x16_t; 4] = std::array::from_fn(|c| weights(b, g + $l, c));
                    for r in 0..4 {
                        for c in 0..4 {
                            acc[r][c] = sdot_lane::<$l>(acc[r][c], bv[c], av[r]);
                        }
                    }
                };
            }
            group!(0);
            group!(1);
            group!(2);
            group!(3);
        }
        g += 4;
    }
    while g < kg {
        // SAFETY: group g lies inside every row and inside B.
        unsafe {
            let av: [int8x16_t; 4] = std::array::from_fn(|r| {
                let word = (ap[r].add(4 * g) as *const u32).read_unaligned() ^ 0x8080_8080;
                vreinterpretq_s8_u32(vdupq_n_u32(word))
            });
            let bv: [int8x16_t; 4] = std::array::from_fn(|c| weights(b, g, c));
            for r in 0..4 {
                for c in 0..4 {
                    acc[r][c] = sdot_lane::<0>(acc[r][c], bv[c], av[r]);
                }
            }
        }
        g += 1;
    }
    for (r, row) in acc.iter().enumerate().take(rows) {
        for (c, v) in row.iter().enumerate() {
            // SAFETY: tile rows hold 32 i32; columns 4c..4c+4 < 16.
            unsafe { vst1q_s32(tile[r].as_mut_ptr().add(4 * c), *v) };
        }
    }
}
