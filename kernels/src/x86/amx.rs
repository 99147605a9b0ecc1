//! Intel AMX int8 tiles (`tdpbusd`, Sapphire Rapids and later): a block of up to 32 rows × 32
//! columns of u8·i8 sums held in four 16×16 i32 tile registers, finished by the AVX-512
//! epilogue of the VNNI tile.
//!
//! The weight panels need no other layout: one k-group of a 16-column panel is 16 columns × 4
//! bytes, which is one 64-byte row of an AMX `B` tile, so 16 consecutive k-groups (64 k) of a
//! panel are one `B` tile. The activations are one `A` tile per 16 rows and 64 k, read straight
//! from the quantized rows (`lda` a multiple of 64, zero past `k`). The i32 sums are exact, as
//! those of `vpdpbusd` are, so a layer gives the same bits with this kernel as with the VNNI one.
//!
//! Linux hands out the tile registers' 8 KiB of state only to a process that asks for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`available`] asks once. Each call
//! loads the tile configuration and releases the tiles when it ends, so a thread that is not
//! multiplying carries no tile state through context switches.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::TileEpi;

/// Bytes of k (u8 activations) one tile multiply consumes: 16 k-groups of 4.
pub(crate) const KC: usize = 64;
/// Rows of one `A` tile.
pub(crate) const TILE_ROWS: usize = 16;

/// Palette 1 with every one of the eight tiles 16 rows × 64 bytes: C tiles `tmm0..=3` (16×16
/// i32), A tiles `tmm4`, `tmm5` (16 rows × 64 u8), B tiles `tmm6`, `tmm7` (16 k-groups × 16
/// columns × 4 i8).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1; // palette
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little endian)
        c[48 + t] = 16; // rows
        t += 1;
    }
    TileConfig(c)
};

/// Whether this CPU has AMX-TILE and AMX-INT8 and the operating system lets this process use
/// the tile registers (asked for once, on the first call).
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        if __cpuid(0).eax < 7 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 25) == 0 {
            return false;
        }
        request_tile_data()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes which extended states this process
    // may use; it fails cleanly (non-zero) on kernels without AMX support.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// A 4 KiB i32 buffer for the tiles' sums on the way to the epilogue (32 rows × 32 columns).
#[repr(C, align(64))]
struct Sums([[i32; 32]; 32]);

/// Loads the tile configuration on this thread; [`release`] undoes it.
///
/// # Safety
/// [`available`] returned true.
#[inline]
pub(crate) unsafe fn configure() {
    // SAFETY: AMX is available (caller); the configuration is 64 valid bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
}

/// Returns the tile registers to their initial state.
///
/// # Safety
/// [`available`] returned true.
#[inline]
pub(crate) unsafe fn release() {
    // SAFETY: AMX is available (caller).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `rows` ≤ 32 rows × `16·NP` columns: `Σ_k A_u8[r, k] · B[k, c]` over `kc` chunks of 64 k,
/// then the AVX-512 epilogue ([`super::avx512::finish_8x32`]) into `e`.
///
/// # Safety
/// AVX-512F/BW/VNNI and AMX available and the tiles configured ([`configure`]) on this thread;
/// `a` readable for `TILE_ROWS · ⌈rows / 16⌉` rows of `kc · 64` bytes at stride `lda` (rows
/// past `rows` may hold anything); panel `h` of B at `b + h·bstride` readable for `kc · 1024`
/// bytes, and where a panel has fewer k-groups than that the A bytes of the missing k are zero;
/// `e` as for [`super::avx512::finish_8x32`] with `rows` rows.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn i8_32x32_fused<const NP: usize>(
    kc: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    bstride: usize,
    e: &TileEpi,
) {
    let two = rows > TILE_ROWS;
    let a1 = a.wrapping_add(TILE_ROWS * lda);
    let b1 = b.wrapping_add(bstride);
    // SAFETY: the tiles are configured (caller); every load reads 16 rows of 64 bytes inside
    // the ranges the caller promised.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for ch in 0..kc {
            let (ak, bk) = (a.add(ch * KC), b.add(ch * 1024));
            asm!(
                "tileloadd tmm4, [{a} + {lda} * 1]",
                "tileloadd tmm6, [{b} + {s} * 1]",
                "tdpbusd tmm0, tmm4, tmm6",
                a = in(reg) ak, lda = in(reg) lda, b = in(reg) bk, s = in(reg) 64usize,
                options(nostack, readonly)
            );
            if NP == 2 {
                asm!(
                    "tileloadd tmm7, [{b} + {s} * 1]",
                    "tdpbusd tmm1, tmm4, tmm7",
                    b = in(reg) b1.add(ch * 1024), s = in(reg) 64usize,
                    options(nostack, readonly)
                );
            }
            if two {
                asm!(
                    "tileloadd tmm5, [{a} + {lda} * 1]",
                    "tdpbusd tmm2, tmm5, tmm6",
                    a = in(reg) a1.add(ch * KC), lda = in(reg) lda,
                    options(nostack, readonly)
                );
                if NP == 2 {
                    asm!("tdpbusd tmm3, tmm5, tmm7", options(nostack, nomem));
                }
            }
        }
        // Only the stored tiles' rows and columns are read back below.
        let mut sums = std::mem::MaybeUninit::<Sums>::uninit();
        let base = sums.as_mut_ptr() as *mut i32;
        let ld = 32usize * 4; // bytes per row of `sums`
        asm!(
            "tilestored [{c} + {ld} * 1], tmm0",
            c = in(reg) base, ld = in(reg) ld, options(nostack)
        );
        if NP == 2 {
            asm!(
                "tilestored [{c} + {ld} * 1], tmm1",
                c = in(reg) base.add(16), ld = in(reg) ld, options(nostack)
            );
        }
        if two {
            asm!(
                "tilestored [{c} + {ld} * 1], tmm2",
                c = in(reg) base.add(16 * 32), ld = in(reg) ld, options(nostack)
            );
            if NP == 2 {
                asm!(
                    "tilestored [{c} + {ld} * 1], tmm3",
                    c = in(reg) base.add(16 * 32 + 16), ld = in(reg) ld, options(nostack)
                );
            }
        }
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(8);
            let t: [[__m512i; NP]; 8] = std::array::from_fn(|i| {
                std::array::from_fn(|h| {
                    _mm512_load_si512(base.add((r + i) * 32 + 16 * h) as *const __m512i)
                })
            });
            super::avx512::finish_8x32::<NP>(&t, n, &e.down(r));
            r += 8;
        }
    }
}
