//! x86-64 SIMD microkernels. Each function is compiled for its instruction set with
//! `#[target_feature]` and only called after run-time detection (see `crate::cpu`).

pub(crate) mod amx;
pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod avxvnni;

/// Per-tile dequantization inputs of the fused int8 tiles (AVX2 4×16, AVX-512 8×32):
/// everything is already offset to the tile's first row (`sa`, `za`, `c`, `res`) and first
/// column (`wscale`, `colsum`, `bias`, `c`, `res`); `c` and `res` rows are `ldc` apart.
#[derive(Clone, Copy)]
pub(crate) struct TileEpi {
    pub sa: *const f32,
    pub za: *const i32,
    pub wscale: *const f32,
    pub colsum: *const i32,
    pub bias: Option<*const f32>,
    pub res: Option<*const f32>,
    pub c: *mut f32,
    pub ldc: usize,
    pub gelu: bool,
    pub accumulate: bool,
}

impl TileEpi {
    /// The same tile's inputs `r` rows further down.
    ///
    /// # Safety
    /// Row `r` of the tile exists (the row pointers stay inside their buffers).
    #[inline]
    pub(crate) unsafe fn down(&self, r: usize) -> Self {
        // SAFETY: as the caller promised.
        unsafe {
            Self {
                sa: self.sa.add(r),
                za: self.za.add(r),
                res: self.res.map(|p| p.add(r * self.ldc)),
                c: self.c.add(r * self.ldc),
                ..*self
            }
        }
    }
}
