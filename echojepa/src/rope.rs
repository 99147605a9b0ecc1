//! 3-D rotary position embedding of V-JEPA 2, reproduced with the reference's quirk.
//!
//! Per head of dimension `hd`, the first `3·s` dims (`s = 2·⌊⌊hd/3⌋/2⌋`) are split into time,
//! height and width segments; the tail is left unrotated. Within a segment of length `s`
//! (`m = s/2`), angle `i` is `p · ω[i mod m]` with `ω_k = 10000^(-k/m)` — the frequencies are
//! TILED — while the rotation pairs ADJACENT dims: `y[2j] = -x[2j+1]`, `y[2j+1] = x[2j]`, and
//! `out = x·cos + y·sin`. This is not a norm-preserving rotation, but released weights depend on
//! it. Positions are raw integer indices (tubelet, patch row, patch column).

use candle_core::{D, DType, Device, Result, Tensor};

/// Per-axis segment length for a head dimension.
pub fn segment_len(head_dim: usize) -> usize {
    2 * ((head_dim / 3) / 2)
}

/// Token grid `(T', Hp, Wp)`; token `n = t·Hp·Wp + h·Wp + w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl Grid {
    pub fn tokens(&self) -> usize {
        self.t * self.h * self.w
    }

    /// `(t, h, w)` of token `n`.
    pub fn coords(&self, n: usize) -> (usize, usize, usize) {
        let hw = self.h * self.w;
        (n / hw, (n % hw) / self.w, n % self.w)
    }
}

/// Cos/sin tables for a set of token ids, shaped `[B, 1, N, 3·s]` so they broadcast over heads.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    rotated: usize,
}

impl RopeTables {
    /// Tables for token ids `ids` (one row per batch element; all rows the same length).
    pub fn new(
        head_dim: usize,
        grid: Grid,
        ids: &[Vec<usize>],
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let s = segment_len(head_dim);
        let m = s / 2;
        let b = ids.len();
        let n = ids.first().map_or(0, |r| r.len());
        let width = 3 * s;
        // Angles in f64, rounded to the model dtype once at the end.
        let omega: Vec<f64> = (0..m)
            .map(|k| 1.0 / 10000f64.powf(k as f64 / m as f64))
            .collect();
        let mut cos = Vec::with_capacity(b * n * width);
        let mut sin = Vec::with_capacity(b * n * width);
        for row in ids {
            if row.len() != n {
                candle_core::bail!("rope: ragged token id rows ({} vs {n})", row.len());
            }
            for &id in row {
                let (t, h, w) = grid.coords(id);
                for p in [t, h, w] {
                    for i in 0..s {
                        let theta = p as f64 * omega[i % m];
                        cos.push(theta.cos() as f32);
                        sin.push(theta.sin() as f32);
                    }
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, 1, n, width), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (b, 1, n, width), dev)?.to_dtype(dtype)?;
        Ok(Self {
            cos,
            sin,
            rotated: width,
        })
    }

    /// Tables for all tokens of the grid in order, batch dimension 1.
    pub fn full(head_dim: usize, grid: Grid, dtype: DType, dev: &Device) -> Result<Self> {
        let ids: Vec<usize> = (0..grid.tokens()).collect();
        Self::new(head_dim, grid, &[ids], dtype, dev)
    }

    /// Applies the rotation to `x` `[B, H, N, hd]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, n, hd) = x.dims4()?;
        let r = self.rotated;
        let xr = x.narrow(D::Minus1, 0, r)?;
        let pairs = xr.reshape((b, h, n, r / 2, 2))?;
        let x0 = pairs.narrow(D::Minus1, 0, 1)?;
        let x1 = pairs.narrow(D::Minus1, 1, 1)?;
        let swapped = Tensor::cat(&[&x1.neg()?, &x0], D::Minus1)?.reshape((b, h, n, r))?;
        let rotated = (xr.broadcast_mul(&self.cos)? + swapped.broadcast_mul(&self.sin)?)?;
        if r == hd {
            Ok(rotated)
        } else {
            let tail = x.narrow(D::Minus1, r, hd - r)?;
            Tensor::cat(&[&rotated, &tail], D::Minus1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_lengths_match_reference() {
        assert_eq!(segment_len(64), 20);
        assert_eq!(segment_len(80), 26);
        assert_eq!(segment_len(88), 28);
        assert_eq!(segment_len(32), 10);
    }

    #[test]
    fn quirk_mixes_two_frequencies_per_pair() -> Result<()> {
        // hd = 12 -> s = 4, m = 2: pair (0,1) uses omega0 for dim 0 and omega1 for dim 1.
        let dev = Device::Cpu;
        let grid = Grid { t: 3, h: 1, w: 1 };
        let tables = RopeTables::new(12, grid, &[vec![2]], DType::F32, &dev)?;
        let x: Vec<f32> = (0..12).map(|i| i as f32 + 1.0).collect();
        let x = Tensor::from_vec(x.clone(), (1, 1, 1, 12), &dev)?;
        let out = tables.apply(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let p = 2.0f64; // time position of token 2
        let w0 = 1.0f64;
        let w1 = 1.0 / 10000f64.powf(0.5);
        let e0 = 1.0 * (p * w0).cos() - 2.0 * (p * w0).sin();
        let e1 = 2.0 * (p * w1).cos() + 1.0 * (p * w1).sin();
        assert!((out[0] as f64 - e0).abs() < 1e-5, "{} vs {e0}", out[0]);
        assert!((out[1] as f64 - e1).abs() < 1e-5, "{} vs {e1}", out[1]);
        // height and width positions are 0: unchanged; tail unchanged.
        for (i, v) in out.iter().enumerate().skip(4) {
            assert_eq!(*v, i as f32 + 1.0);
        }
        Ok(())
    }
}
