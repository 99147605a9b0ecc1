//! V-JEPA 2 3-D RoPE applied in place to the q and k columns of a fused `qkv` buffer
//! (`N × 3D`, layout `[q | k | v]`, heads contiguous), reproducing the reference exactly:
//! per head, segments of `s = 2·⌊⌊hd/3⌋/2⌋` dims for time, height and width, then an unrotated
//! tail; `ω_k = 10000^(−k/(s/2))` in f32; cos/sin TILED over the segment while ADJACENT pairs are
//! rotated: `out[2j] = x[2j]·cos[2j] − x[2j+1]·sin[2j]`, `out[2j+1] = x[2j+1]·cos[2j+1] + x[2j]·sin[2j+1]`.

use crate::error::{KernelError, check_dim, check_len};

/// Per-token cos/sin tables (`tokens × head_dim`, tail = 1/0).
#[derive(Debug, Clone)]
pub struct RopeTables {
    head_dim: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTables {
    /// Tables for the full grid of `t × hp × wp` tokens, token `n = t·hp·wp + h·wp + w`.
    pub fn grid(t: usize, hp: usize, wp: usize, head_dim: usize) -> Result<Self, KernelError> {
        let pos: Vec<[usize; 3]> = (0..t * hp * wp)
            .map(|n| [n / (hp * wp), (n % (hp * wp)) / wp, n % wp])
            .collect();
        Self::positions(&pos, head_dim)
    }

    /// Tables for arbitrary (time, height, width) patch indices (e.g. kept tokens of a mask).
    pub fn positions(pos: &[[usize; 3]], head_dim: usize) -> Result<Self, KernelError> {
        check_dim("head_dim", head_dim, 4096)?;
        let s = 2 * ((head_dim / 3) / 2);
        let m = s / 2;
        let omega: Vec<f32> = (0..m)
            .map(|k| 1.0 / 10000f32.powf(k as f32 / m as f32))
            .collect();
        let mut cos = vec![1f32; pos.len() * head_dim];
        let mut sin = vec![0f32; pos.len() * head_dim];
        for (n, p) in pos.iter().enumerate() {
            for (axis, &pa) in p.iter().enumerate() {
                for i in 0..s {
                    let theta = pa as f32 * omega[i % m];
                    cos[n * head_dim + axis * s + i] = theta.cos();
                    sin[n * head_dim + axis * s + i] = theta.sin();
                }
            }
        }
        Ok(Self { head_dim, cos, sin })
    }

    /// Number of tokens covered.
    pub fn tokens(&self) -> usize {
        self.cos.len() / self.head_dim
    }
}

/// Rotate the q and k columns of `qkv` (`n × 3·heads·head_dim`) in place.
pub fn apply_rope_qk(
    qkv: &mut [f32],
    n: usize,
    heads: usize,
    head_dim: usize,
    tables: &RopeTables,
) -> Result<(), KernelError> {
    let d = heads * head_dim;
    check_len("qkv", qkv.len(), n * 3 * d)?;
    check_len("rope head_dim", tables.head_dim, head_dim)?;
    check_len("rope tokens", tables.tokens(), n)?;
    let hd = head_dim;
    let base = crate::pool::SharedMut::new(qkv.as_mut_ptr());
    let simd = crate::F32Kernel::best() != crate::F32Kernel::Scalar;
    let run = |tokens: std::ops::Range<usize>| {
        for tok in tokens {
            // SAFETY: every token's row of `qkv` (checked length) is rotated by one chunk only.
            let row = unsafe { std::slice::from_raw_parts_mut(base.get().add(tok * 3 * d), 2 * d) };
            let c = &tables.cos[tok * hd..(tok + 1) * hd];
            let s = &tables.sin[tok * hd..(tok + 1) * hd];
            for x in row.chunks_exact_mut(hd) {
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: `simd` means AVX2 was detected; c and s hold hd values.
                    unsafe { crate::x86::avx2::rope_pairs(x, c, s) };
                    continue;
                }
                let _ = simd;
                for j in 0..hd / 2 {
                    let (x0, x1) = (x[2 * j], x[2 * j + 1]);
                    x[2 * j] = x0 * c[2 * j] - x1 * s[2 * j];
                    x[2 * j + 1] = x1 * c[2 * j + 1] + x0 * s[2 * j + 1];
                }
            }
        }
    };
    // The same threshold as the layer norm: below it a parallel region costs more than it saves.
    if n * 2 * d < 32 * 1024 {
        run(0..n);
    } else {
        crate::pool::for_each_chunk(n, 8, run);
    }
    Ok(())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    /// The AVX2 rotation gives the scalar rotation's bits, on even and odd lengths.
    #[test]
    fn simd_pairs_are_bit_identical() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        for hd in [2usize, 7, 8, 9, 20, 64, 66] {
            let x: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.731).sin() * 3.0).collect();
            let c: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.37).cos()).collect();
            let s: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut want = x.clone();
            for j in 0..hd / 2 {
                let (x0, x1) = (want[2 * j], want[2 * j + 1]);
                want[2 * j] = x0 * c[2 * j] - x1 * s[2 * j];
                want[2 * j + 1] = x1 * c[2 * j + 1] + x0 * s[2 * j + 1];
            }
            let mut got = x.clone();
            // SAFETY: AVX2 was detected; c and s hold hd values.
            unsafe { crate::x86::avx2::rope_pairs(&mut got, &c, &s) };
            for i in 0..hd {
                assert_eq!(got[i].to_bits(), want[i].to_bits(), "hd {hd} value {i}");
            }
        }
    }
}
