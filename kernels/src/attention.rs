//! Multi-head self-attention core for a ViT block, in f32, straight from the fused `qkv`
//! output of `Linear(D, 3D)` (row layout `[q | k | v]`, heads contiguous inside each, as in
//! `qkv.reshape(N, 3, H, hd)`) into the `N × D` input of the output projection.
//!
//! Per head, K and Vᵀ are packed once into GEMM panels; then each block of query rows computes
//! `S = Q·Kᵀ/√hd` (f32 GEMM), a row softmax in place, and `O = S·V` written directly into its
//! head's columns of `out`. Only one `QB × N` score block per thread is ever materialised.
//! RoPE is applied by the caller to the q and k columns of `qkv` beforehand.
//!
//! [`attention_int8`] is the same computation with both products on the int8 GEMM (keys and
//! values packed as int8 weights on every call), the softmax still in f32.

use crate::aligned::AlignedVec;
use crate::error::{KernelError, check_dim, check_len};
use crate::gemm_f32::{Epi, GemmF32, NR};
use crate::gemm_i8::{ActivationRange, PackedInt8Linear};
use crate::pool::SharedMut;
use crate::{F32Kernel, Int8Kernel};

/// Query rows per task (the score block `QB × N` stays in L2 for N up to ~2k).
const QB: usize = 48;

/// `out[N × D] = concat_h softmax(q_h·k_hᵀ/√hd)·v_h` with `qkv: N × 3D`, `D = heads·head_dim`.
pub fn attention(
    qkv: &[f32],
    n: usize,
    heads: usize,
    head_dim: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    attention_with(F32Kernel::best(), qkv, n, heads, head_dim, out)
}

/// [`attention`] with an explicit f32 kernel (tests).
pub fn attention_with(
    kernel: F32Kernel,
    qkv: &[f32],
    n: usize,
    heads: usize,
    head_dim: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !kernel.is_supported() {
        return Err(KernelError::Unsupported(kernel.name()));
    }
    let d = check_shapes(qkv, n, heads, head_dim, out)?;
    let ld = 3 * d;
    let npk = n.div_ceil(NR); // panels of Kᵀ-as-weight (N columns)
    let npv = head_dim.div_ceil(NR); // panels of V-as-weight (hd columns)
    // Packed K per head: [npk][hd][16]; packed V per head: [npv][N][16].
    let kstride = npk * head_dim * NR;
    let vstride = npv * n * NR;
    // This thread's buffers from its last call of the same size (their padding lanes are still
    // zero: packing writes the same positions every time), else fresh zeroed ones.
    let kept = PACKED_KV.with(|c| c.take());
    let (mut kp, mut vp) = match kept {
        Some((k, v)) if k.len() == heads * kstride && v.len() == heads * vstride => (k, v),
        _ => (
            AlignedVec::<f32>::zeroed(heads * kstride),
            AlignedVec::<f32>::zeroed(heads * vstride),
        ),
    };
    {
        let kpp = SharedMut::new(kp.as_mut_ptr());
        let vpp = SharedMut::new(vp.as_mut_ptr());
        crate::pool::for_each_index(heads, |h| {
            // SAFETY: head h owns slices [h·stride, (h+1)·stride) of both buffers.
            let (kh, vh) = unsafe {
                (
                    std::slice::from_raw_parts_mut(kpp.get().add(h * kstride), kstride),
                    std::slice::from_raw_parts_mut(vpp.get().add(h * vstride), vstride),
                )
            };
            let koff = d + h * head_dim;
            let voff = 2 * d + h * head_dim;
            // Kᵀ: panel p holds, for each of the head's hd channels, its 16 tokens' values.
            pack_keys(&qkv[koff..], ld, n, head_dim, kh);
            // V: panel c/16 holds, for each token, 16 consecutive channels (a plain copy).
            for j in 0..n {
                let vrow = &qkv[j * ld + voff..j * ld + voff + head_dim];
                for (c0, part) in vrow.chunks(NR).enumerate() {
                    let at = ((c0 * n) + j) * NR;
                    vh[at..at + part.len()].copy_from_slice(part);
                }
            }
        });
    }
    let qblocks = n.div_ceil(QB);
    let tasks = heads * qblocks;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let outp = SharedMut::new(out.as_mut_ptr());
    let simd = kernel != F32Kernel::Scalar;
    let (kpr, vpr) = (&kp, &vp);
    crate::pool::for_each_chunk(tasks, 1, |range| {
        let mut s = vec![0f32; QB * n];
        for t in range {
            let (h, qb) = (t / qblocks, t % qblocks);
            let r0 = qb * QB;
            let rows = QB.min(n - r0);
            let scores = GemmF32 {
                // SAFETY (pointer arithmetic): row r0, column h·hd of qkv is in bounds.
                a: qkv[r0 * ld + h * head_dim..].as_ptr(),
                lda: ld,
                m: rows,
                k: head_dim,
                b: kpr[h * kstride..].as_ptr(),
                n,
                c: s.as_mut_ptr(),
                ldc: n,
                bias: None,
                epilogue: Epi::None,
                alpha: scale,
            };
            // SAFETY: all pointers cover the sizes above; `s` is this thread's own buffer.
            unsafe { scores.run_block(kernel, 0..rows, 0..npk) };
            for r in 0..rows {
                crate::softmax::softmax_row(&mut s[r * n..(r + 1) * n], simd);
            }
            let ctx = GemmF32 {
                a: s.as_ptr(),
                lda: n,
                m: rows,
                k: n,
                b: vpr[h * vstride..].as_ptr(),
                n: head_dim,
                // SAFETY (pointer arithmetic): row r0, column h·hd of out is in bounds.
                c: unsafe { outp.get().add(r0 * d + h * head_dim) },
                ldc: d,
                bias: None,
                epilogue: Epi::None,
                alpha: 1.0,
            };
            // SAFETY: task (h, qb) alone writes rows r0..r0+rows, columns of head h of `out`.
            unsafe { ctx.run_block(kernel, 0..rows, 0..npv) };
        }
    });
    PACKED_KV.with(|c| c.set(Some((kp, vp))));
    Ok(())
}

/// Packs the keys of one head (`n` tokens of `hd` values, token `j` at `k[j·ld..]`) as the
/// weight `[⌈n/16⌉][hd][16]` of the scores' product: `dst[(p·hd + t)·16 + lane] = k[(16p +
/// lane)·ld + t]`; lanes past `n` are left as they are.
fn pack_keys(k: &[f32], ld: usize, n: usize, hd: usize, dst: &mut [f32]) {
    let full = n / NR;
    #[cfg(target_arch = "x86_64")]
    if F32Kernel::best() == F32Kernel::Avx512
        && ld <= i32::MAX as usize / NR
        && (full == 0 || (full * NR - 1) * ld + hd <= k.len())
        && full * hd * NR <= dst.len()
    {
        for p in 0..full {
            let src = &k[p * NR * ld..];
            // SAFETY: AVX-512F is selected, so the CPU has it; panel p's 16 rows of hd values
            // lie in `src` (its last row is row 16·full − 1 at most, checked above), `dst`
            // holds panel p (checked above), 16·ld fits in i32.
            unsafe { crate::x86::avx512::transpose_keys16(src, ld, hd, &mut dst[p * hd * NR..]) };
        }
    } else {
        pack_keys_scalar(k, ld, 0, full * NR, hd, dst);
    }
    #[cfg(not(target_arch = "x86_64"))]
    pack_keys_scalar(k, ld, 0, full * NR, hd, dst);
    pack_keys_scalar(k, ld, full * NR, n, hd, dst);
}

/// [`pack_keys`] for tokens `j0..j1`, element by element.
fn pack_keys_scalar(k: &[f32], ld: usize, j0: usize, j1: usize, hd: usize, dst: &mut [f32]) {
    for j in j0..j1 {
        let (p, lane) = (j / NR, j % NR);
        for (t, &v) in k[j * ld..j * ld + hd].iter().enumerate() {
            dst[(p * hd + t) * NR + lane] = v;
        }
    }
}

thread_local! {
    /// The packed keys and values of this thread's last [`attention_with`] call, reused by the
    /// next call of the same size (a fresh multi-megabyte buffer per block costs more in page
    /// faults than the packing itself).
    static PACKED_KV: std::cell::Cell<Option<(AlignedVec<f32>, AlignedVec<f32>)>> =
        const { std::cell::Cell::new(None) };
}

/// [`attention`] with both products in int8: per head, K (one scale per token) and Vᵀ (one
/// scale per channel) are quantized and packed as int8 weights, each block of query rows
/// (pre-scaled by `1/√hd`, a power of two for the usual head sizes) and, after the f32 softmax,
/// each row of probabilities is quantized per row to `act` like a linear layer's input.
/// Faster than f32 where attention dominates (many tokens); it adds the activations' and the
/// keys' and values' quantization error to every score and context vector.
pub fn attention_int8(
    qkv: &[f32],
    n: usize,
    heads: usize,
    head_dim: usize,
    act: ActivationRange,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let d = check_shapes(qkv, n, heads, head_dim, out)?;
    let ld = 3 * d;
    let kernel = Int8Kernel::best();
    // Per head: K as an `N × hd` weight (scores = Q·Kᵀ), Vᵀ as an `hd × N` weight (ctx = P·V).
    let slots: Vec<std::sync::Mutex<Option<Packed>>> =
        (0..heads).map(|_| std::sync::Mutex::new(None)).collect();
    crate::pool::for_each_index(heads, |h| {
        // A non-finite key or value is named as such (index into this head's K or Vᵀ).
        let rename = |what: &'static str| {
            move |e| match e {
                KernelError::NonFinite { index, .. } => KernelError::NonFinite { what, index },
                e => e,
            }
        };
        // Both straight from `qkv`: K's rows are its token rows, Vᵀ is read transposed.
        let pair =
            PackedInt8Linear::from_f32_rows(kernel, &qkv[d + h * head_dim..], ld, n, head_dim)
                .map_err(rename("attention keys"))
                .and_then(|kl| {
                    let vl = PackedInt8Linear::from_f32_transposed(
                        kernel,
                        &qkv[2 * d + h * head_dim..],
                        ld,
                        head_dim,
                        n,
                    )
                    .map_err(rename("attention values (transposed)"))?;
                    Ok((kl.with_activations(act), vl.with_activations(act)))
                });
        if let Ok(mut slot) = slots[h].lock() {
            *slot = Some(pair);
        }
    });
    let mut packed = Vec::with_capacity(heads);
    for slot in slots {
        // Every slot is filled: `for_each_index` runs every head (a panic would propagate).
        let p = slot
            .into_inner()
            .ok()
            .flatten()
            .ok_or(KernelError::Unsupported(
                "int8 attention (a head was not packed)",
            ))?;
        packed.push(p?);
    }
    let qblocks = n.div_ceil(QB);
    let tasks = heads * qblocks;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let outp = SharedMut::new(out.as_mut_ptr());
    let simd = F32Kernel::best() != F32Kernel::Scalar; // the softmax's kernel
    let packed = &packed;
    crate::pool::for_each_chunk(tasks, 1, |range| {
        let mut q = vec![0f32; QB * head_dim];
        let mut s = vec![0f32; QB * n];
        let mut ctx = vec![0f32; QB * head_dim];
        let mut sums = [0f32; QB];
        for t in range {
            let (h, qb) = (t / qblocks, t % qblocks);
            let (kl, vl) = &packed[h];
            let r0 = qb * QB;
            let rows = QB.min(n - r0);
            for r in 0..rows {
                let src = &qkv[(r0 + r) * ld + h * head_dim..][..head_dim];
                for (dst, &v) in q[r * head_dim..(r + 1) * head_dim].iter_mut().zip(src) {
                    *dst = v * scale;
                }
            }
            kl.forward_serial(&q, rows, &mut s);
            // Unnormalized probabilities: the row quantization adapts to their range anyway,
            // and dividing the context rows by the sums saves a pass over the scores.
            for (r, sum) in sums.iter_mut().enumerate().take(rows) {
                *sum = crate::softmax::exp_shifted_row(&mut s[r * n..(r + 1) * n], simd);
            }
            vl.forward_serial(&s, rows, &mut ctx);
            for (r, sum) in sums.iter().enumerate().take(rows) {
                // SAFETY: task (h, qb) alone writes rows r0..r0+rows, columns of head h.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        outp.get().add((r0 + r) * d + h * head_dim),
                        head_dim,
                    )
                };
                let inv = 1.0 / sum;
                for (o, &c) in dst.iter_mut().zip(&ctx[r * head_dim..(r + 1) * head_dim]) {
                    *o = c * inv;
                }
            }
        }
    });
    Ok(())
}

/// Checks the sizes of an attention call; returns the model width `heads · head_dim`.
fn check_shapes(
    qkv: &[f32],
    n: usize,
    heads: usize,
    head_dim: usize,
    out: &[f32],
) -> Result<usize, KernelError> {
    check_dim("tokens", n, 1 << 20)?;
    check_dim("heads", heads, 4096)?;
    check_dim("head_dim", head_dim, 4096)?;
    let d = heads * head_dim;
    check_len("qkv", qkv.len(), n * 3 * d)?;
    check_len("out", out.len(), n * d)?;
    Ok(d)
}

/// One head's keys and values packed as int8 weights, or why they could not be.
type Packed = Result<(PackedInt8Linear, PackedInt8Linear), KernelError>;
