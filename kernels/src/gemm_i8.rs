//! int8 linear layers: weights quantized once (symmetric, one scale per output channel) and
//! packed into 16-column panels of 4-byte k-groups; activations quantized per call (asymmetric
//! u8, one scale and zero point per row); u8·i8 products summed in i32 by `tdpbusd` (AMX
//! tiles), `vpdpbusd` (VNNI), `vpmaddubsw`+`vpmaddwd` (AVX2) or portable code; dequantization, bias and the epilogue are
//! fused into the tile store.
//!
//! With `q_x = round(x / s_x) + z_x` (u8) and `q_w = round(w / s_w)` (i8):
//! `y[r, c] = s_x[r] · s_w[c] · (Σ_k q_x[r, k] · q_w[c, k] − z_x[r] · Σ_k q_w[c, k]) + b[c]`.

use std::cell::RefCell;

use crate::aligned::AlignedVec;
use crate::cpu::Int8Kernel;
use crate::epilogue::Epilogue;
use crate::error::{KernelError, check_dim, check_finite, check_len};
use crate::gemm_f32::{Epi, MAX_DIM, NR};

/// Bytes of one packed k-group of one panel: 16 columns × 4 consecutive k.
const GROUP_BYTES: usize = NR * 4;
/// Row block (input rows kept in L1/L2 across the panels of a thread).
const MC: usize = 96;
/// Rows per thread from which a parallel int8 layer splits rows between threads (each
/// quantizing its own) instead of splitting output columns over rows quantized by the caller.
const ROW_SPLIT_MIN: usize = 96;
/// Largest row tile of any int8 microkernel.
const MR_MAX: usize = 12;
/// Rows of one AMX `A` tile (a block is two of them).
const AMX_ROWS: usize = 16;
/// Zero bytes after the last panel: an AMX `B` tile reads 16 k-groups (1 KiB) of a panel
/// whatever its k, so the last tile of the last panel may read up to 15 groups past its end
/// (multiplied by activation bytes that are zero).
const B_SLACK: usize = 1024;

/// Weight of one linear layer, `W: [out, in]`, quantized to int8 and packed.
#[derive(Debug, Clone)]
pub struct PackedInt8Linear {
    n: usize,
    k: usize,
    /// k rounded up to a multiple of 4.
    kp: usize,
    kernel: Int8Kernel,
    /// Range of the quantized activations (kept by [`retarget`](Self::retarget)).
    act: ActivationRange,
    /// `n_panels × (kp / 4) × GROUP_BYTES`, zero-padded, then `B_SLACK` zero bytes.
    panels: AlignedVec<i8>,
    /// Per-channel weight scale, padded with zeros to `n_panels × NR`.
    wscale: AlignedVec<f32>,
    /// Per-channel sum of the quantized weights (for the activation zero point).
    colsum: AlignedVec<i32>,
    bias: Option<AlignedVec<f32>>,
}

impl PackedInt8Linear {
    /// Quantize and pack `weight` (`out × in`, row-major: PyTorch `nn.Linear.weight`) for the
    /// best int8 kernel of this CPU; bias (`out`) stays f32. Activations use
    /// [`ActivationRange::configured`].
    pub fn from_f32(
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        bias: Option<&[f32]>,
    ) -> Result<Self, KernelError> {
        Ok(
            Self::from_f32_with(Int8Kernel::best(), weight, out_features, in_features, bias)?
                .with_activations(ActivationRange::configured()),
        )
    }

    /// [`from_f32`](Self::from_f32) for an explicit kernel, with 8-bit activations
    /// ([`ActivationRange::U8`]). The kernel is fixed at packing because it decides the weight
    /// range (±64 for AVX2, ±127 otherwise).
    pub fn from_f32_with(
        kernel: Int8Kernel,
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        bias: Option<&[f32]>,
    ) -> Result<Self, KernelError> {
        let (n, k) = (out_features, in_features);
        check_dim("out_features", n, MAX_DIM)?;
        check_dim("in_features", k, MAX_DIM)?;
        check_len("weight", weight.len(), n * k)?;
        let mut l = Self::alloc(kernel, n, k)?;
        let simd = l.simd_packing();
        for c in 0..n {
            l.pack_channel(c, &weight[c * k..(c + 1) * k], simd)?;
        }
        l.set_bias(bias)?;
        Ok(l)
    }

    /// [`from_f32_with`](Self::from_f32_with) for a weight whose rows lie `ld` floats apart
    /// in `weight` (row `c` is `weight[c·ld .. c·ld + in]`), e.g. one head's keys inside a
    /// fused `qkv` buffer, without copying them out first. A non-finite weight is reported at
    /// its index in the dense `out × in` matrix.
    pub(crate) fn from_f32_rows(
        kernel: Int8Kernel,
        weight: &[f32],
        ld: usize,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, KernelError> {
        let (n, k) = (out_features, in_features);
        check_extent(weight.len(), n, ld, k)?;
        let mut l = Self::alloc(kernel, n, k)?;
        let simd = l.simd_packing();
        for c in 0..n {
            l.pack_channel(c, &weight[c * ld..c * ld + k], simd)?;
        }
        Ok(l)
    }

    /// [`from_f32_with`](Self::from_f32_with) for the transpose of `src`: weight `[c, j]` is
    /// `src[j·ld + c]` (`j < in`, `c < out`), e.g. one head's values `V` (tokens × channels,
    /// inside a fused `qkv` buffer) packed as the weight `Vᵀ` of `P·V`. A non-finite weight is
    /// reported at its index in the dense `out × in` matrix `Vᵀ`.
    pub(crate) fn from_f32_transposed(
        kernel: Int8Kernel,
        src: &[f32],
        ld: usize,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, KernelError> {
        let (n, k) = (out_features, in_features);
        check_extent(src.len(), k, ld, n)?;
        let mut l = Self::alloc(kernel, n, k)?;
        let simd = l.simd_packing();
        l.pack_transposed(src, ld, simd)?;
        Ok(l)
    }

    /// The body of [`from_f32_transposed`](Self::from_f32_transposed) (AVX2 where `simd`, for
    /// whole blocks of 8 channels; bit-identical to the scalar code).
    fn pack_transposed(&mut self, src: &[f32], ld: usize, simd: bool) -> Result<(), KernelError> {
        let (n, k) = (self.n, self.k);
        let mut amax = vec![0f32; n];
        // Whole strips of 8 channels with AVX2 where `simd`; a non-finite value sends the
        // search for its index to the scalar loop.
        #[allow(unused_mut)] // only the x86 SIMD path advances it
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if simd {
            while done + 8 <= n {
                // SAFETY: `simd` only for SIMD kernels (AVX2+FMA present); rows j < k hold
                // channels done..done+8 (checked extent); `amax` has n entries.
                let finite = unsafe {
                    crate::x86::avx2::abs_max_cols8(
                        src.as_ptr().add(done),
                        ld,
                        k,
                        amax.as_mut_ptr().add(done),
                    )
                };
                if !finite {
                    break;
                }
                done += 8;
            }
        }
        for j in 0..k {
            let row = &src[j * ld..j * ld + n];
            for (c, (m, &v)) in amax.iter_mut().zip(row).enumerate().skip(done) {
                if !v.is_finite() {
                    return Err(KernelError::NonFinite {
                        what: "weight",
                        index: c * k + j,
                    });
                }
                *m = m.max(v.abs());
            }
        }
        let wmax = self.kernel.weight_max();
        let inv: Vec<f32> = amax
            .iter()
            .zip(self.wscale.iter_mut())
            .map(|(&m, ws)| {
                let (scale, inv) = channel_scale(m, wmax);
                *ws = scale;
                inv
            })
            .collect();
        let kg = self.kp / 4;
        #[allow(unused_mut)] // only the x86 SIMD path advances it
        let mut c0 = 0;
        #[cfg(target_arch = "x86_64")]
        if simd {
            while c0 + 8 <= n {
                // SAFETY: `simd` only for SIMD kernels (AVX2+FMA present); channels c0..c0+8
                // lie in one panel (8 divides NR) at byte (c0 % NR)·4 of each of its kg
                // groups; src rows j < k hold channels c0..c0+8 (checked extent).
                unsafe {
                    crate::x86::avx2::quantize_weight_cols8(
                        src.as_ptr().add(c0),
                        ld,
                        k,
                        inv.as_ptr().add(c0),
                        wmax,
                        self.panels
                            .as_mut_ptr()
                            .add((c0 / NR) * kg * GROUP_BYTES + (c0 % NR) * 4),
                        self.colsum.as_mut_ptr().add(c0),
                    );
                }
                c0 += 8;
            }
        }
        let _ = simd;
        for j in 0..k {
            let row = &src[j * ld..j * ld + n];
            let (g, t) = (j / 4, j % 4);
            for c in c0..n {
                let q = quantize_weight(row[c], inv[c], wmax);
                self.colsum[c] += q as i32;
                self.panels[((c / NR) * kg + g) * GROUP_BYTES + (c % NR) * 4 + t] = q;
            }
        }
        Ok(())
    }

    /// A zeroed packing of an `n × k` weight for `kernel`, 8-bit activations.
    fn alloc(kernel: Int8Kernel, n: usize, k: usize) -> Result<Self, KernelError> {
        if !kernel.is_supported() {
            return Err(KernelError::Unsupported(kernel.name()));
        }
        check_dim("out_features", n, MAX_DIM)?;
        check_dim("in_features", k, MAX_DIM)?;
        let np = n.div_ceil(NR);
        let kp = k.div_ceil(4) * 4;
        Ok(Self {
            n,
            k,
            kp,
            kernel,
            act: ActivationRange::U8,
            panels: AlignedVec::<i8>::zeroed(np * (kp / 4) * GROUP_BYTES + B_SLACK),
            wscale: AlignedVec::<f32>::zeroed(np * NR),
            colsum: AlignedVec::<i32>::zeroed(np * NR),
            bias: None,
        })
    }

    /// Bytes between the quantized activation rows this layer's kernel reads: `kp`, or for AMX
    /// `kp` rounded up to whole 64-byte tile rows.
    fn lda(&self) -> usize {
        if self.kernel == Int8Kernel::Amx {
            self.kp.div_ceil(64) * 64
        } else {
            self.kp
        }
    }

    /// Whether packing may use the AVX2 quantizers: every SIMD int8 kernel implies AVX2+FMA.
    fn simd_packing(&self) -> bool {
        cfg!(target_arch = "x86_64") && self.kernel != Int8Kernel::Scalar
    }

    /// Quantize output channel `c` (its `k` weights, `row`) into its lane of its panel, with
    /// its scale and weight sum (AVX2 where `simd`, bit-identical to the scalar code).
    fn pack_channel(&mut self, c: usize, row: &[f32], simd: bool) -> Result<(), KernelError> {
        let non_finite = |row: &[f32]| KernelError::NonFinite {
            what: "weight",
            index: c * self.k + row.iter().position(|v| !v.is_finite()).unwrap_or(0),
        };
        let wmax = self.kernel.weight_max();
        let kg = self.kp / 4;
        let (p, j) = (c / NR, c % NR);
        // This channel's 4 bytes in every k-group of its panel are GROUP_BYTES apart.
        let lane = &mut self.panels[p * kg * GROUP_BYTES + j * 4..];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` only for SIMD kernels (AVX2+FMA present); the lane holds kg
            // groups GROUP_BYTES apart and ⌈k/4⌉ = kg.
            let (scale, sum) = unsafe {
                let amax = crate::x86::avx2::abs_max_finite(row).ok_or_else(|| non_finite(row))?;
                let (scale, inv) = channel_scale(amax, wmax);
                let sum = crate::x86::avx2::quantize_weight_row(
                    row,
                    inv,
                    wmax,
                    lane.as_mut_ptr(),
                    GROUP_BYTES,
                    |v| quantize_weight(v, inv, wmax),
                );
                (scale, sum)
            };
            self.wscale[c] = scale;
            self.colsum[c] = sum;
            return Ok(());
        }
        let _ = simd;
        if row.iter().any(|v| !v.is_finite()) {
            return Err(non_finite(row));
        }
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (scale, inv) = channel_scale(amax, wmax);
        let mut sum = 0i32;
        for (g, four) in row.chunks(4).enumerate() {
            let mut w = [0i8; 4];
            for (q, &v) in w.iter_mut().zip(four) {
                *q = quantize_weight(v, inv, wmax);
                sum += *q as i32;
            }
            lane[g * GROUP_BYTES..g * GROUP_BYTES + 4].copy_from_slice(&w);
        }
        self.wscale[c] = scale;
        self.colsum[c] = sum;
        Ok(())
    }

    fn set_bias(&mut self, bias: Option<&[f32]>) -> Result<(), KernelError> {
        if let Some(b) = bias {
            check_len("bias", b.len(), self.n)?;
            check_finite("bias", b)?;
            let mut p = AlignedVec::<f32>::zeroed(self.wscale.len());
            p[..self.n].copy_from_slice(b);
            self.bias = Some(p);
        }
        Ok(())
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// The kernel this layer was packed for.
    pub fn kernel(&self) -> Int8Kernel {
        self.kernel
    }

    /// The range this layer quantizes its input rows to.
    pub fn activations(&self) -> ActivationRange {
        self.act
    }

    /// The same weights with input rows quantized to `range` from now on.
    pub fn with_activations(mut self, range: ActivationRange) -> Self {
        self.set_activations(range);
        self
    }

    /// Quantize input rows to `range` from now on (the packed weights are unchanged).
    pub fn set_activations(&mut self, range: ActivationRange) {
        self.act = range;
    }

    /// The same integer weights and activation range run by another kernel (tests and
    /// benchmarks compare kernels bit for bit this way). Fails when the CPU lacks the kernel or
    /// when the kernel's weight range is narrower than this packing's (a ±127 packing cannot
    /// run on AVX2).
    pub fn retarget(&self, kernel: Int8Kernel) -> Result<Self, KernelError> {
        if !kernel.is_supported() || kernel.weight_max() < self.kernel.weight_max() {
            return Err(KernelError::Unsupported(kernel.name()));
        }
        let mut l = self.clone();
        l.kernel = kernel;
        Ok(l)
    }

    /// The dequantized weights (`out × in`), e.g. to measure the quantization error.
    pub fn dequantized_weight(&self) -> Vec<f32> {
        let kg = self.kp / 4;
        let mut w = vec![0f32; self.n * self.k];
        for c in 0..self.n {
            let (p, j) = (c / NR, c % NR);
            for kk in 0..self.k {
                let q = self.panels[(p * kg + kk / 4) * GROUP_BYTES + j * 4 + kk % 4];
                w[c * self.k + kk] = q as f32 * self.wscale[c];
            }
        }
        w
    }

    /// `out[m × out] = x[m × in] · Wᵀ (+ b)` on the calling thread only, for callers that are
    /// already one task of a parallel region (attention's per-head products). Sizes are the
    /// caller's to get right.
    pub(crate) fn forward_serial(&self, x: &[f32], m: usize, out: &mut [f32]) {
        debug_assert!(x.len() >= m * self.k && out.len() >= m * self.n);
        // SAFETY: `x` and `out` cover m rows (caller).
        unsafe { self.run(x, m, out, Epi::None, false) };
    }

    /// `out[m × out] = epilogue(x[m × in] · Wᵀ + b)`: quantizes each row of `x`, multiplies in
    /// int8 and dequantizes into `out`.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        check_dim("m", m, MAX_DIM)?;
        check_len("x", x.len(), m * self.k)?;
        check_len("out", out.len(), m * self.n)?;
        if let Epilogue::AddResidual(r) = epilogue {
            check_len("residual", r.len(), m * self.n)?;
        }
        // SAFETY: sizes were checked.
        unsafe { self.run(x, m, out, epilogue.into(), true) };
        Ok(())
    }

    /// Quantize the rows of `x` into this thread's scratch, then multiply on the pool
    /// (`parallel`) or on this thread.
    ///
    /// # Safety
    /// `x` holds `m × in` values, `out` (and a residual) `m × out`.
    unsafe fn run(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: Epi, parallel: bool) {
        let nt = crate::pool::num_threads();
        let work = m as f64 * self.n as f64 * self.k as f64;
        if parallel && nt > 1 && work >= 4.0e5 && m >= ROW_SPLIT_MIN * nt {
            // Enough rows for every thread: each quantizes and multiplies its own rows, so the
            // quantization pass runs in parallel too and the region needs no second split.
            let outp = crate::pool::SharedMut::new(out.as_mut_ptr());
            // (`Epi` holds a raw pointer; the chunks only read the residual, each its own rows.)
            let epi = SendEpi(epilogue);
            let epi = &epi;
            crate::pool::for_each_chunk(m, 8, |rows| {
                let r0 = rows.start;
                let rm = rows.len();
                let epi = match epi.0 {
                    // SAFETY (pointer arithmetic): row r0 of the residual is in bounds.
                    Epi::Residual(p, ld) => Epi::Residual(unsafe { p.add(r0 * self.n) }, ld),
                    e => e,
                };
                // SAFETY: this chunk alone writes rows r0..r0+rm of `out`; `x` covers them.
                unsafe {
                    let o =
                        std::slice::from_raw_parts_mut(outp.get().add(r0 * self.n), rm * self.n);
                    self.run(&x[r0 * self.k..(r0 + rm) * self.k], rm, o, epi, false);
                }
            });
            return;
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let q = &mut *s;
            let simd = self.kernel != Int8Kernel::Scalar;
            let lda = self.lda();
            // An AMX block reads 32 rows from its first whatever its height: rows past m may
            // hold anything (their sums are never stored).
            let spare = if self.kernel == Int8Kernel::Amx {
                2 * AMX_ROWS
            } else {
                0
            };
            quantize_rows(x, m, self.k, lda, spare, self.act.max(), q, simd);
            let g = GemmI8 {
                layer: self,
                a: q.data.as_ptr(),
                lda,
                sa: q.scale.as_ptr(),
                za: q.zero.as_ptr(),
                m,
                c: out.as_mut_ptr(),
                epilogue,
            };
            // SAFETY: sizes as the caller promised; `q` and `out` live for the whole call.
            unsafe {
                if parallel {
                    g.run_parallel();
                } else {
                    g.run_block(0..m, 0..self.n.div_ceil(NR));
                }
            }
        });
    }
}

/// Range of the per-row u8 activations of an int8 layer (`q_x` in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActivationRange {
    /// 0..=255, the default.
    #[default]
    U8,
    /// 0..=127: half the levels, for speed on AVX2. With weights ±64 one `vpmaddubsw` lane is
    /// then at most `2·127·64 = 16256`, so the AVX2 tile adds the lanes of two k-groups in i16
    /// (at most 32512, no saturation) before one `vpmaddwd` widens them: three multiply
    /// instructions per 8 k instead of four. The other kernels run it too but gain nothing.
    U7,
}

impl ActivationRange {
    /// Largest quantized activation.
    pub fn max(self) -> i32 {
        match self {
            ActivationRange::U8 => 255,
            ActivationRange::U7 => 127,
        }
    }

    /// `u8` or `u7` (also the values of `ECHOJEPA_INT8_ACTIVATIONS`).
    pub fn name(self) -> &'static str {
        match self {
            ActivationRange::U8 => "u8",
            ActivationRange::U7 => "u7",
        }
    }

    /// The range [`PackedInt8Linear::from_f32`] uses: the settings'
    /// [`int8_activations`](crate::KernelSettings::int8_activations) (8 bits unless set).
    pub fn configured() -> Self {
        crate::settings::current().int8_activations
    }

    /// Whether attention runs in int8 and with which activations: the settings'
    /// [`int8_attention`](crate::KernelSettings::int8_attention) (f32 unless set). See
    /// [`crate::attention::attention_int8`].
    pub fn attention_configured() -> Option<Self> {
        crate::settings::current().int8_attention
    }
}

/// Per-row quantized activations (reused between calls on the same thread).
#[derive(Default)]
pub(crate) struct QuantRows {
    data: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
}

thread_local! {
    static SCRATCH: RefCell<QuantRows> = RefCell::new(QuantRows::default());
}

/// A buffer of `len` floats holds `rows` rows of `width` floats `ld` apart.
fn check_extent(len: usize, rows: usize, ld: usize, width: usize) -> Result<(), KernelError> {
    if rows > 1 && ld < width {
        return Err(KernelError::Stride {
            what: "weight",
            ld,
            width,
        });
    }
    let need = if rows == 0 {
        0
    } else {
        (rows - 1) * ld + width
    };
    if len < need {
        return Err(KernelError::Len {
            what: "weight",
            got: len,
            expected: need,
        });
    }
    Ok(())
}

/// Per-channel weight scale (0 for an all-zero channel) and the factor that maps weights to
/// levels (`±wmax` at the largest magnitude `amax`).
#[inline]
fn channel_scale(amax: f32, wmax: i32) -> (f32, f32) {
    if amax > 0.0 {
        let scale = amax / wmax as f32;
        (scale, 1.0 / scale)
    } else {
        (0.0, 1.0)
    }
}

/// One weight's level: `w·inv` rounded half away from zero, clamped to `±wmax`. The rounding
/// avoids a libm call (`f32::round` is one on baseline x86-64): attention packs its keys and
/// values on every call.
#[inline]
fn quantize_weight(w: f32, inv: f32, wmax: i32) -> i8 {
    ((w * inv + 0.5f32.copysign(w)) as i32).clamp(-wmax, wmax) as i8
}

/// Scale and zero point for one row so that its range (widened to include 0) maps to
/// 0..=`qmax`.
#[inline]
pub(crate) fn row_params(lo: f32, hi: f32, qmax: i32) -> (f32, i32) {
    let lo = lo.min(0.0);
    let hi = hi.max(0.0);
    if hi - lo <= f32::MIN_POSITIVE || !(hi - lo).is_finite() {
        return (1.0, 0);
    }
    let scale = (hi - lo) / qmax as f32;
    let zero = (-lo / scale).round().clamp(0.0, qmax as f32) as i32;
    (scale, zero)
}

/// Quantizes the `m` rows of `x` (`k` wide) into `q`, rows `kp` bytes apart (zero past `k`),
/// with room for `spare` more rows after them. The buffer only grows.
#[allow(clippy::too_many_arguments)]
fn quantize_rows(
    x: &[f32],
    m: usize,
    k: usize,
    kp: usize,
    spare: usize,
    qmax: i32,
    q: &mut QuantRows,
    simd: bool,
) {
    let need = (m + spare) * kp;
    if q.data.len() < need {
        q.data.resize(need, 0);
    }
    q.scale.resize(m, 0.0);
    q.zero.resize(m, 0);
    for r in 0..m {
        let row = &x[r * k..(r + 1) * k];
        let dst = &mut q.data[r * kp..(r + 1) * kp];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` means the packing kernel is an x86 SIMD one, so AVX2 is present.
            let (s, z) = unsafe { crate::x86::avx2::quantize_row(row, dst, qmax) };
            q.scale[r] = s;
            q.zero[r] = z;
            continue;
        }
        let _ = simd;
        let (lo, hi) = row
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let (s, z) = row_params(lo, hi, qmax);
        let inv = 1.0 / s;
        for (d, &v) in dst.iter_mut().zip(row) {
            *d = ((v * inv).round_ties_even() as i32 + z).clamp(0, qmax) as u8;
        }
        dst[k..].fill(0);
        q.scale[r] = s;
        q.zero[r] = z;
    }
}

/// An epilogue handed to the row chunks of one call.
struct SendEpi(Epi);
// SAFETY: the residual it may point at outlives the call and is only read.
unsafe impl Sync for SendEpi {}

struct GemmI8<'l> {
    layer: &'l PackedInt8Linear,
    a: *const u8,
    /// Bytes between rows of `a` (`PackedInt8Linear::lda`).
    lda: usize,
    sa: *const f32,
    za: *const i32,
    m: usize,
    c: *mut f32,
    epilogue: Epi,
}

// SAFETY: threads read the shared inputs and write disjoint column ranges of `c`.
unsafe impl Send for GemmI8<'_> {}
// SAFETY: as above.
unsafe impl Sync for GemmI8<'_> {}

impl GemmI8<'_> {
    unsafe fn run_parallel(&self) {
        let l = self.layer;
        let np = l.n.div_ceil(NR);
        let nt = crate::pool::num_threads();
        let work = self.m as f64 * l.n as f64 * l.k as f64;
        if nt <= 1 || work < 4.0e5 {
            // SAFETY: forwarded.
            unsafe { self.run_block(0..self.m, 0..np) };
        } else if np >= 4 * nt {
            crate::pool::for_each_chunk(np, 2, |pr| {
                // SAFETY: disjoint panels → disjoint columns of `c`.
                unsafe { self.run_block(0..self.m, pr) }
            });
        } else {
            crate::pool::for_each_chunk(self.m, 24, |rr| {
                // SAFETY: disjoint rows of `c`.
                unsafe { self.run_block(rr, 0..np) }
            });
        }
    }

    unsafe fn run_block(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        let l = self.layer;
        #[cfg(target_arch = "x86_64")]
        if l.kernel == Int8Kernel::Amx {
            // SAFETY: forwarded; the layer was packed for AMX, so the CPU and OS allow it.
            unsafe { self.run_block_amx(rows, panels) };
            return;
        }
        let kg = l.kp / 4;
        let (mr, np_step) = match l.kernel {
            Int8Kernel::Scalar => (4, 1),
            Int8Kernel::Avx2 => (4, 1),
            Int8Kernel::AvxVnni => (6, 1),
            Int8Kernel::Avx512Vnni | Int8Kernel::Amx => (8, 2),
            Int8Kernel::NeonDot => (4, 1),
        };
        let simd = l.kernel != Int8Kernel::Scalar;
        // AVX2 finishes full 16-column panels in registers (`i8_panel_fused`), AVX-512 VNNI
        // full pairs of panels (`i8_8x32_fused`).
        let fused = cfg!(target_arch = "x86_64") && l.kernel == Int8Kernel::Avx2;
        let fused512 = cfg!(target_arch = "x86_64") && l.kernel == Int8Kernel::Avx512Vnni;
        let mut tile = [[0i32; 2 * NR]; MR_MAX];
        // Row blocks of at most MC rows, as equal as whole tiles allow (196 rows are two
        // blocks of 104 and 92, not 96, 96 and a 4-row block that streams B for 4 rows).
        let nblocks = rows.len().div_ceil(MC).max(1);
        let mc = rows.len().div_ceil(nblocks).div_ceil(mr) * mr;
        let mut mb = rows.start;
        while mb < rows.end {
            let mend = (mb + mc).min(rows.end);
            let mut p = panels.start;
            while p < panels.end {
                let pcount = np_step.min(panels.end - p);
                let col0 = p * NR;
                let cols = (pcount * NR).min(l.n - col0);
                if fused && cols == NR {
                    // SAFETY: rows mb..mend < m and panel p < n_panels lie inside A, B and C.
                    unsafe {
                        let a = self.a.add(mb * self.lda);
                        let b = l.panels.as_ptr().add(p * kg * GROUP_BYTES);
                        self.fused_panel(kg, a, mb, mend - mb, b, col0);
                    }
                    p += pcount;
                    continue;
                }
                let in_registers = fused512 && cols == pcount * NR;
                let mut r = mb;
                while r < mend {
                    let rcount = mr.min(mend - r);
                    // SAFETY: r < m and p < n_panels, so the tile lies inside A, B and C; the
                    // fused AVX-512 tile only for a layer packed for it (CPU checked).
                    unsafe {
                        let a = self.a.add(r * self.lda);
                        let b = l.panels.as_ptr().add(p * kg * GROUP_BYTES);
                        if in_registers {
                            self.fused_tile512(kg, a, r, rcount, b, pcount, col0);
                        } else {
                            self.micro(kg, a, rcount, b, pcount, &mut tile);
                            self.finish_tile(&tile, r, rcount, col0, cols, simd);
                        }
                    }
                    r += rcount;
                }
                p += pcount;
            }
            mb = mend;
        }
    }

    /// [`run_block`](Self::run_block) with AMX: blocks of up to 32 rows × 2 full panels in
    /// tile registers, finished by the AVX-512 epilogue; a ragged last panel by the AVX-512
    /// VNNI tile (same packing, same sums).
    ///
    /// # Safety
    /// As `run_block`; the layer was packed for AMX; the activation rows are `self.lda` (a
    /// multiple of 64) bytes apart with 32 readable rows after the last.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run_block_amx(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        use crate::x86::amx;
        let l = self.layer;
        let kg = l.kp / 4;
        let kc = self.lda / amx::KC;
        let bstride = kg * GROUP_BYTES;
        let mut tile = [[0i32; 2 * NR]; MR_MAX];
        // SAFETY: AMX is available (the kernel was accepted at packing).
        unsafe { amx::configure() };
        // Row blocks of MC rows outside, panel pairs inside; but for k of 768 and more with at
        // most 1 MiB of activation rows, one block of all the rows, i.e. panel pairs outside: a
        // pair of panels (32 columns × k bytes, 24 KiB and more) then stays in L1 while the
        // rows' tiles stream from L2. On one core vit_base's four layers at 392 rows took
        // 4.1–4.2 ms of CPU time that way against 4.7–5.9 in blocks of 96 rows (four runs each,
        // alternating), while 1568 rows of k = 1536 (2.4 MiB, more than L2) took 2.8–3.2 ms
        // against 2.0.
        let mc = if self.lda >= 768 && rows.len() * self.lda <= 1 << 20 {
            rows.len().max(1)
        } else {
            MC
        };
        let mut mb = rows.start;
        while mb < rows.end {
            let mend = (mb + mc).min(rows.end);
            let mut p = panels.start;
            while p < panels.end {
                let pcount = 2.min(panels.end - p);
                let col0 = p * NR;
                let cols = (pcount * NR).min(l.n - col0);
                let full = cols == pcount * NR;
                let step = if full { 2 * AMX_ROWS } else { 8 };
                let mut r = mb;
                while r < mend {
                    let rc = step.min(mend - r);
                    // SAFETY: rows r..r+rc < m and panels p..p+pcount lie inside A, B and C;
                    // A has 32 readable rows past any row (`spare` in `run`), B `B_SLACK`
                    // bytes past its last panel, and A is zero past k.
                    unsafe {
                        let a = self.a.add(r * self.lda);
                        let b = l.panels.as_ptr().add(p * bstride);
                        if full {
                            let e = self.tile_epi(r, col0);
                            if pcount == 2 {
                                amx::i8_32x32_fused::<2>(kc, a, self.lda, rc, b, bstride, &e);
                            } else {
                                amx::i8_32x32_fused::<1>(kc, a, self.lda, rc, b, bstride, &e);
                            }
                        } else {
                            self.micro(kg, a, rc, b, pcount, &mut tile);
                            self.finish_tile(&tile, r, rc, col0, cols, true);
                        }
                    }
                    r += rc;
                }
                p += pcount;
            }
            mb = mend;
        }
        // SAFETY: as above.
        unsafe { amx::release() };
    }

    #[inline]
    unsafe fn micro(
        &self,
        kg: usize,
        a: *const u8,
        rows: usize,
        b: *const i8,
        pcount: usize,
        tile: &mut [[i32; 2 * NR]; MR_MAX],
    ) {
        let lda = self.lda;
        let bstride = kg * GROUP_BYTES;
        // SAFETY: forwarded; the kernel was checked at packing time.
        unsafe {
            match self.layer.kernel {
                Int8Kernel::Scalar => scalar_micro(kg, a, lda, rows, b, bstride, pcount, tile),
                #[cfg(target_arch = "x86_64")]
                Int8Kernel::Avx2 => {
                    let pairs = self.layer.act == ActivationRange::U7;
                    crate::x86::avx2::i8_4x16(kg, a, lda, rows, b, pairs, tile)
                }
                #[cfg(target_arch = "x86_64")]
                Int8Kernel::AvxVnni => crate::x86::avxvnni::i8_6x16(kg, a, lda, rows, b, tile),
                #[cfg(target_arch = "x86_64")]
                Int8Kernel::Avx512Vnni | Int8Kernel::Amx => {
                    if pcount == 2 {
                        crate::x86::avx512::i8_8x32::<2>(kg, a, lda, rows, b, bstride, tile)
                    } else {
                        crate::x86::avx512::i8_8x32::<1>(kg, a, lda, rows, b, bstride, tile)
                    }
                }
                #[cfg(target_arch = "aarch64")]
                Int8Kernel::NeonDot => crate::arm::neon::i8_4x16_dot(kg, a, lda, rows, b, tile),
                #[allow(unreachable_patterns)]
                _ => unreachable!("unsupported kernels are rejected at packing"),
            }
        }
    }

    /// One full 16-column AVX2 panel for `rows` rows from `r0`, dequantized in registers.
    #[inline]
    unsafe fn fused_panel(
        &self,
        kg: usize,
        a: *const u8,
        r0: usize,
        rows: usize,
        b: *const i8,
        col0: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            let l = self.layer;
            // SAFETY: row r0 < m, column col0 + 16 <= n (caller).
            unsafe {
                let e = self.tile_epi(r0, col0);
                // SAFETY: the layer was packed for AVX2, so the CPU has it; sizes as above; U7
                // activations are ≤ 127 as `pairs` needs.
                let pairs = l.act == ActivationRange::U7;
                crate::x86::avx2::i8_panel_fused(kg, a, self.lda, rows, b, pairs, &e);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (kg, a, r0, rows, b, col0);
            unreachable!("the fused tile is x86-only");
        }
    }

    /// The dequantization inputs of the fused tiles for the tile at row `r0`, column `col0`.
    ///
    /// # Safety
    /// Row `r0` < m and column `col0` < n: the pointers are offset into C, the residual and the
    /// per-channel vectors (padded to whole panels).
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_epi(&self, r0: usize, col0: usize) -> crate::x86::TileEpi {
        let l = self.layer;
        let n = l.n;
        // SAFETY: in bounds as the caller promised.
        unsafe {
            crate::x86::TileEpi {
                sa: self.sa.add(r0),
                za: self.za.add(r0),
                wscale: l.wscale.as_ptr().add(col0),
                colsum: l.colsum.as_ptr().add(col0),
                bias: l.bias.as_ref().map(|v| v.as_ptr().add(col0)),
                res: match self.epilogue {
                    Epi::Residual(p, _) => Some(p.add(r0 * n + col0)),
                    _ => None,
                },
                c: self.c.add(r0 * n + col0),
                ldc: n,
                gelu: matches!(self.epilogue, Epi::Gelu),
                accumulate: matches!(self.epilogue, Epi::Accumulate),
            }
        }
    }

    /// One AVX-512 VNNI tile of `rows` ≤ 8 rows from `r0` and `pcount` full panels from
    /// column `col0`, dequantized in registers.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn fused_tile512(
        &self,
        kg: usize,
        a: *const u8,
        r0: usize,
        rows: usize,
        b: *const i8,
        pcount: usize,
        col0: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: row r0 < m, columns col0..col0 + 16·pcount <= n (caller).
            unsafe {
                let e = self.tile_epi(r0, col0);
                let bstride = kg * GROUP_BYTES;
                // SAFETY: the layer was packed for AVX-512 VNNI, so the CPU has it; sizes as
                // above.
                if pcount == 2 {
                    crate::x86::avx512::i8_8x32_fused::<2>(kg, a, self.lda, rows, b, bstride, &e);
                } else {
                    crate::x86::avx512::i8_8x32_fused::<1>(kg, a, self.lda, rows, b, bstride, &e);
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (kg, a, r0, rows, b, pcount, col0);
            unreachable!("the fused AVX-512 tile is x86-only");
        }
    }

    unsafe fn finish_tile(
        &self,
        tile: &[[i32; 2 * NR]; MR_MAX],
        r0: usize,
        rows: usize,
        col0: usize,
        cols: usize,
        simd: bool,
    ) {
        let l = self.layer;
        let n = l.n;
        // The NEON tile multiplies `q − 128` (signed bytes): it lacks `128 · colsum`, which
        // shifting the zero point by 128 puts back.
        let za_shift = if l.kernel == Int8Kernel::NeonDot {
            128
        } else {
            0
        };
        for (i, acc) in tile.iter().enumerate().take(rows) {
            let r = r0 + i;
            // SAFETY: r < m; columns col0..col0+cols are inside row r of C, the padded
            // per-channel vectors have n_panels × NR entries.
            unsafe {
                let out = std::slice::from_raw_parts_mut(self.c.add(r * n + col0), cols);
                let res = match self.epilogue {
                    Epi::Residual(p, _) => {
                        Some(std::slice::from_raw_parts(p.add(r * n + col0), cols))
                    }
                    _ => None,
                };
                let d = Dequant {
                    sa: *self.sa.add(r),
                    za: *self.za.add(r) - za_shift,
                    wscale: &l.wscale[col0..col0 + cols],
                    colsum: &l.colsum[col0..col0 + cols],
                    bias: l.bias.as_ref().map(|b| &b[col0..col0 + cols]),
                    gelu: matches!(self.epilogue, Epi::Gelu),
                    accumulate: matches!(self.epilogue, Epi::Accumulate),
                    res,
                };
                d.finish(&acc[..cols], out, simd);
            }
        }
    }
}

/// Everything needed to turn one row of i32 sums into the finished f32 output.
pub(crate) struct Dequant<'a> {
    pub sa: f32,
    pub za: i32,
    pub wscale: &'a [f32],
    pub colsum: &'a [i32],
    pub bias: Option<&'a [f32]>,
    pub gelu: bool,
    pub accumulate: bool,
    pub res: Option<&'a [f32]>,
}

impl Dequant<'_> {
    fn finish(&self, acc: &[i32], out: &mut [f32], simd: bool) {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` is set only for x86 SIMD kernels, which all imply AVX2+FMA.
            unsafe { crate::x86::avx2::dequant_row(self, acc, out) };
            return;
        }
        let _ = simd;
        for (c, o) in out.iter_mut().enumerate() {
            let mut y = (acc[c] - self.za * self.colsum[c]) as f32 * (self.sa * self.wscale[c]);
            if let Some(b) = self.bias {
                y += b[c];
            }
            if let Some(res) = self.res {
                y += res[c];
            }
            if self.gelu {
                y = crate::activation::gelu(y);
            }
            *o = if self.accumulate { *o + y } else { y };
        }
    }
}

/// Portable tile: `rows × (pcount·16)` i32 sums of u8·i8 products.
#[allow(clippy::too_many_arguments)]
unsafe fn scalar_micro(
    kg: usize,
    a: *const u8,
    lda: usize,
    rows: usize,
    b: *const i8,
    bstride: usize,
    pcount: usize,
    tile: &mut [[i32; 2 * NR]; MR_MAX],
) {
    for (r, trow) in tile.iter_mut().enumerate().take(rows) {
        for p in 0..pcount {
            let mut acc = [0i32; NR];
            for g in 0..kg {
                // SAFETY: group g < kg of row r and of panel p.
                unsafe {
                    let av = a.add(r * lda + 4 * g);
                    let bv = b.add(p * bstride + g * GROUP_BYTES);
                    for (j, s) in acc.iter_mut().enumerate() {
                        for t in 0..4 {
                            *s += *av.add(t) as i32 * *bv.add(j * 4 + t) as i32;
                        }
                    }
                }
            }
            trow[p * NR..(p + 1) * NR].copy_from_slice(&acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn same_packing(a: &PackedInt8Linear, b: &PackedInt8Linear, what: &str) {
        assert_eq!((a.n, a.k, a.kp), (b.n, b.k, b.kp), "{what}: shape");
        assert_eq!(&a.panels[..], &b.panels[..], "{what}: panels");
        assert_eq!(&a.wscale[..], &b.wscale[..], "{what}: scales");
        assert_eq!(&a.colsum[..], &b.colsum[..], "{what}: weight sums");
    }

    /// The scalar packing of a dense weight, whatever the kernel.
    fn scalar_packing(kernel: Int8Kernel, w: &[f32], n: usize, k: usize) -> PackedInt8Linear {
        let mut l = PackedInt8Linear::alloc(kernel, n, k).unwrap();
        for c in 0..n {
            l.pack_channel(c, &w[c * k..(c + 1) * k], false).unwrap();
        }
        l
    }

    /// Keys read in place from a strided buffer and values read transposed pack exactly like
    /// dense copies, and the AVX2 quantizers exactly like the scalar code, on ragged shapes
    /// (partial k-groups, channel counts that are not a multiple of 8 or 16, a zero channel).
    #[test]
    fn strided_and_transposed_packing_match_the_dense_scalar_packing() {
        for kernel in Int8Kernel::available() {
            for &(n, k) in &[(1, 1), (5, 13), (21, 64), (37, 30), (64, 392)] {
                let ld = k + 7;
                let mut buf = values(n * ld, (n * 31 + k) as u32);
                buf[..ld].fill(0.0); // channel 0 all zero
                let dense: Vec<f32> = (0..n * k).map(|i| buf[(i / k) * ld + i % k]).collect();
                let want = scalar_packing(kernel, &dense, n, k);
                let what = format!("{} {n}×{k}", kernel.name());
                let rows = PackedInt8Linear::from_f32_rows(kernel, &buf, ld, n, k).unwrap();
                same_packing(&rows, &want, &format!("{what} rows"));
                let with = PackedInt8Linear::from_f32_with(kernel, &dense, n, k, None).unwrap();
                same_packing(&with, &want, &format!("{what} dense"));

                // The same weight stored transposed: src[j·ld2 + c] = W[c, j].
                let ld2 = n + 3;
                let mut src = vec![f32::NAN; k * ld2];
                for c in 0..n {
                    for j in 0..k {
                        src[j * ld2 + c] = dense[c * k + j];
                    }
                }
                let tr = PackedInt8Linear::from_f32_transposed(kernel, &src, ld2, n, k).unwrap();
                same_packing(&tr, &want, &format!("{what} transposed"));
            }
        }
    }

    #[test]
    fn packing_names_the_non_finite_weight_a_short_buffer_and_overlapping_rows() {
        let kernel = Int8Kernel::best();
        let (n, k, ld) = (19, 10, 12);
        let mut buf = values(n * ld, 3);
        buf[7 * ld + 9] = f32::NAN; // W[7, 9]
        assert_eq!(
            PackedInt8Linear::from_f32_rows(kernel, &buf, ld, n, k).unwrap_err(),
            KernelError::NonFinite {
                what: "weight",
                index: 7 * k + 9
            }
        );
        // Transposed: src[j·ld + c] = W[c, j]; W[11, 4] is infinite.
        let mut src = values(k * ld.max(n), 4);
        let ld = ld.max(n);
        src[4 * ld + 11] = f32::INFINITY;
        assert_eq!(
            PackedInt8Linear::from_f32_transposed(kernel, &src, ld, n, k).unwrap_err(),
            KernelError::NonFinite {
                what: "weight",
                index: 11 * k + 4
            }
        );
        assert!(matches!(
            PackedInt8Linear::from_f32_rows(kernel, &buf[..(n - 1) * 12 + k - 1], 12, n, k),
            Err(KernelError::Len { what: "weight", .. })
        ));
        assert_eq!(
            PackedInt8Linear::from_f32_rows(kernel, &buf, k - 1, n, k).unwrap_err(),
            KernelError::Stride {
                what: "weight",
                ld: k - 1,
                width: k
            }
        );
    }
}
