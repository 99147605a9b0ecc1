//! f32 linear layers: weights packed once into 16-column panels, multiplied by an FMA register
//! tile (AVX2 6×16, AVX-512 12×32, scalar 4×16) with cache blocking over k (`KC`) and rows
//! (`MC`), bias/GELU/residual fused into the tile store.

use crate::aligned::AlignedVec;
use crate::cpu::F32Kernel;
use crate::epilogue::{Epilogue, finish_row_f32};
use crate::error::{KernelError, check_dim, check_finite, check_len};

/// Columns per packed panel (two AVX2 vectors, one AVX-512 vector).
pub const NR: usize = 16;
/// k-block: one `KC × NR` panel slice (16 KiB) stays in L1 while a block of rows streams by.
const KC: usize = 256;
/// Row block: `MC × KC` of the input (72 KiB) stays in L2 across all panels of a thread.
const MC: usize = 72;
/// Largest supported dimension (keeps all index arithmetic far from overflow).
pub const MAX_DIM: usize = 1 << 24;

/// Weight of one linear layer, `W: [out, in]`, packed for the f32 microkernels.
#[derive(Debug, Clone)]
pub struct PackedF32Linear {
    n: usize,
    k: usize,
    /// `n_panels × k × NR`, zero-padded past `n`.
    panels: AlignedVec<f32>,
    /// Bias padded with zeros to `n_panels × NR`.
    bias: Option<AlignedVec<f32>>,
}

pub(crate) fn pack_f32_panels(w: &[f32], n: usize, k: usize) -> AlignedVec<f32> {
    let np = n.div_ceil(NR);
    let mut panels = AlignedVec::<f32>::zeroed(np * k * NR);
    for c in 0..n {
        let (p, j) = (c / NR, c % NR);
        let base = p * k * NR + j;
        let row = &w[c * k..(c + 1) * k];
        for (kk, &v) in row.iter().enumerate() {
            panels[base + kk * NR] = v;
        }
    }
    panels
}

impl PackedF32Linear {
    /// Pack `weight` (`out × in`, row-major: PyTorch `nn.Linear.weight`) and an optional bias
    /// (`out`). Errors name the operand whose size or values are wrong.
    pub fn from_f32(
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        bias: Option<&[f32]>,
    ) -> Result<Self, KernelError> {
        check_dim("out_features", out_features, MAX_DIM)?;
        check_dim("in_features", in_features, MAX_DIM)?;
        check_len("weight", weight.len(), out_features * in_features)?;
        check_finite("weight", weight)?;
        let np = out_features.div_ceil(NR);
        let bias = match bias {
            Some(b) => {
                check_len("bias", b.len(), out_features)?;
                check_finite("bias", b)?;
                let mut p = AlignedVec::<f32>::zeroed(np * NR);
                p[..out_features].copy_from_slice(b);
                Some(p)
            }
            None => None,
        };
        Ok(Self {
            n: out_features,
            k: in_features,
            panels: pack_f32_panels(weight, out_features, in_features),
            bias,
        })
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// `out[m × out] = epilogue(x[m × in] · Wᵀ + b)` with the best kernel for this CPU.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        self.forward_with(F32Kernel::best(), x, m, out, epilogue)
    }

    /// [`forward`](Self::forward) with an explicit kernel (tests and benchmarks).
    pub fn forward_with(
        &self,
        kernel: F32Kernel,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        if !kernel.is_supported() {
            return Err(KernelError::Unsupported(kernel.name()));
        }
        check_dim("m", m, MAX_DIM)?;
        check_len("x", x.len(), m * self.k)?;
        check_len("out", out.len(), m * self.n)?;
        if let Epilogue::AddResidual(r) = epilogue {
            check_len("residual", r.len(), m * self.n)?;
        }
        let g = GemmF32 {
            a: x.as_ptr(),
            lda: self.k,
            m,
            k: self.k,
            b: self.panels.as_ptr(),
            n: self.n,
            c: out.as_mut_ptr(),
            ldc: self.n,
            bias: self.bias.as_ref().map(|b| b.as_ptr()),
            epilogue: epilogue.into(),
            alpha: 1.0,
        };
        // SAFETY: every pointer/size pair was checked above; `out` is exclusively borrowed.
        unsafe { g.run_parallel(kernel) };
        Ok(())
    }
}

/// Epilogue with the residual as a raw pointer (row stride = ldc), so that it can cross threads.
#[derive(Clone, Copy)]
pub(crate) enum Epi {
    None,
    Gelu,
    Residual(*const f32, usize),
    Accumulate,
}

impl<'a> From<Epilogue<'a>> for Epi {
    fn from(e: Epilogue<'a>) -> Self {
        match e {
            Epilogue::None => Epi::None,
            Epilogue::Gelu => Epi::Gelu,
            Epilogue::AddResidual(r) => Epi::Residual(r.as_ptr(), usize::MAX),
            Epilogue::Accumulate => Epi::Accumulate,
        }
    }
}

/// One f32 GEMM call: `C[m × n] = epi(alpha · A[m × k] · B + bias)` with B packed in panels.
#[derive(Clone, Copy)]
pub(crate) struct GemmF32 {
    pub a: *const f32,
    pub lda: usize,
    pub m: usize,
    pub k: usize,
    pub b: *const f32,
    pub n: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub bias: Option<*const f32>,
    pub epilogue: Epi,
    /// Scale applied to the product (before bias); 1 for linear layers.
    pub alpha: f32,
}

// SAFETY: the raw pointers describe buffers that the caller keeps alive and that threads only
// access in disjoint output regions (read-only inputs, disjoint `c` tiles).
unsafe impl Send for GemmF32 {}
// SAFETY: as above.
unsafe impl Sync for GemmF32 {}

impl GemmF32 {
    /// Split over the pool (by panels when there are enough, else by rows) and run.
    ///
    /// # Safety
    /// All pointers must be valid for the sizes in `self`; `c` must not alias the inputs.
    pub(crate) unsafe fn run_parallel(&self, kernel: F32Kernel) {
        let np = self.n.div_ceil(NR);
        let nt = crate::pool::num_threads();
        let work = self.m as f64 * self.n as f64 * self.k as f64;
        if nt <= 1 || work < 2.0e5 {
            // SAFETY: forwarded contract.
            unsafe { self.run_block(kernel, 0..self.m, 0..np) };
        } else if np >= 4 * nt {
            crate::pool::for_each_chunk(np, 2, |pr| {
                // SAFETY: disjoint panel ranges write disjoint columns of `c`.
                unsafe { self.run_block(kernel, 0..self.m, pr) }
            });
        } else {
            crate::pool::for_each_chunk(self.m, 12, |rr| {
                // SAFETY: disjoint row ranges write disjoint rows of `c`.
                unsafe { self.run_block(kernel, rr, 0..np) }
            });
        }
    }

    /// Compute rows `rows` × panels `panels` of C on the current thread.
    ///
    /// # Safety
    /// As [`run_parallel`](Self::run_parallel); the region must not be written concurrently.
    pub(crate) unsafe fn run_block(
        &self,
        kernel: F32Kernel,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
    ) {
        let (mr, np_step) = match kernel {
            F32Kernel::Scalar => (4, 1),
            #[cfg(target_arch = "x86_64")]
            F32Kernel::Avx2Fma => (crate::x86::avx2::F32_MR, 1),
            #[cfg(not(target_arch = "x86_64"))]
            F32Kernel::Avx2Fma => (4, 1),
            F32Kernel::Avx512 => (12, 2),
        };
        let simd = kernel != F32Kernel::Scalar;
        let accumulate_c = matches!(self.epilogue, Epi::Accumulate);
        let mut kb = 0;
        while kb < self.k {
            let kc = KC.min(self.k - kb);
            let last_k = kb + kc == self.k;
            let mut mb = rows.start;
            while mb < rows.end {
                let mend = (mb + MC).min(rows.end);
                let mut p = panels.start;
                while p < panels.end {
                    let pcount = np_step.min(panels.end - p);
                    let col0 = p * NR;
                    let cols = (pcount * NR).min(self.n - col0);
                    let mut r = mb;
                    while r < mend {
                        let rcount = mr.min(mend - r);
                        // SAFETY: r < m, kb < k, p < n_panels; the tile is inside C.
                        unsafe {
                            let a = self.a.add(r * self.lda + kb);
                            let b = self.b.add(p * self.k * NR + kb * NR);
                            let c = self.c.add(r * self.ldc + col0);
                            let acc = kb > 0 || accumulate_c;
                            // alpha is linear, so scaling every k-block scales the sum.
                            self.micro(kernel, kc, a, rcount, b, pcount, c, cols, acc, self.alpha);
                            if last_k {
                                self.finish_tile(r, rcount, col0, cols, simd);
                            }
                        }
                        r += rcount;
                    }
                    p += pcount;
                }
                mb = mend;
            }
            kb += kc;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn micro(
        &self,
        kernel: F32Kernel,
        kc: usize,
        a: *const f32,
        rows: usize,
        b: *const f32,
        pcount: usize,
        c: *mut f32,
        cols: usize,
        acc: bool,
        alpha: f32,
    ) {
        let bstride = self.k * NR;
        // SAFETY: forwarded from run_block; kernel support was checked by the caller.
        unsafe {
            match kernel {
                F32Kernel::Scalar => {
                    scalar_micro(kc, a, self.lda, rows, b, c, self.ldc, cols, acc, alpha)
                }
                #[cfg(target_arch = "x86_64")]
                F32Kernel::Avx2Fma => crate::x86::avx2::f32_6x16(
                    kc, a, self.lda, rows, b, c, self.ldc, cols, acc, alpha,
                ),
                #[cfg(target_arch = "x86_64")]
                F32Kernel::Avx512 => {
                    if pcount == 2 {
                        crate::x86::avx512::f32_12x32::<2>(
                            kc, a, self.lda, rows, b, bstride, c, self.ldc, cols, acc, alpha,
                        )
                    } else {
                        crate::x86::avx512::f32_12x32::<1>(
                            kc, a, self.lda, rows, b, bstride, c, self.ldc, cols, acc, alpha,
                        )
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("unsupported kernels are rejected before the GEMM"),
            }
        }
        let _ = (pcount, bstride);
    }

    /// Bias + epilogue on a finished tile.
    unsafe fn finish_tile(&self, r0: usize, rows: usize, col0: usize, cols: usize, simd: bool) {
        let (gelu, res) = match self.epilogue {
            Epi::Gelu => (true, None),
            Epi::Residual(p, ld) => (
                false,
                Some((p, if ld == usize::MAX { self.ldc } else { ld })),
            ),
            Epi::None | Epi::Accumulate => (false, None),
        };
        if self.bias.is_none() && !gelu && res.is_none() {
            return;
        }
        for r in r0..r0 + rows {
            // SAFETY: row r, columns col0..col0+cols lie inside C (and the residual/bias).
            unsafe {
                let row = std::slice::from_raw_parts_mut(self.c.add(r * self.ldc + col0), cols);
                let bias = self
                    .bias
                    .map(|b| std::slice::from_raw_parts(b.add(col0), cols));
                let res = res.map(|(p, ld)| std::slice::from_raw_parts(p.add(r * ld + col0), cols));
                finish_row_f32(row, bias, gelu, res, simd);
            }
        }
    }
}

/// Portable 4×16 tile. Rows past `rows` and columns past `cols` are neither read nor written
/// (the packed panel is zero-padded, so computing them would be harmless anyway).
#[allow(clippy::too_many_arguments)]
unsafe fn scalar_micro(
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
    let mut t = [[0f32; NR]; 4];
    for kk in 0..kc {
        // SAFETY: kk < kc; the panel slice has kc × NR values.
        let bv: &[f32; NR] = unsafe { &*(b.add(kk * NR) as *const [f32; NR]) };
        for (r, tr) in t.iter_mut().enumerate().take(rows) {
            // SAFETY: row r < rows of A, column kk < kc.
            let av = unsafe { *a.add(r * lda + kk) };
            for j in 0..NR {
                tr[j] += av * bv[j];
            }
        }
    }
    for (r, tr) in t.iter().enumerate().take(rows) {
        for (j, v) in tr.iter().enumerate().take(cols) {
            // SAFETY: (r, j) is inside the tile of C.
            unsafe {
                let p = c.add(r * ldc + j);
                *p = if acc { *p + alpha * v } else { alpha * v };
            }
        }
    }
}
