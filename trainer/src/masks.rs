//! The multi-block 3-D mask sampler of V-JEPA pretraining (reference `MaskCollator`): per batch
//! and mask config, one block size drawn from a step-seeded generator, `num_blocks` blocks placed
//! per sample whose union is the prediction target, tubes over time, and every sample truncated
//! to the batch-minimum context and target lengths.
//!
//! Every draw is a pure function of `(seed, step, mask config index)`, so a resumed run sees the
//! very same masks as an uninterrupted one.

use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::pretrain::MaskCfg;

/// Token grid `(T', Hp, Wp)` of a clip: tubelets × patch rows × patch columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl Grid {
    pub fn new(frames: usize, crop: usize, tubelet: usize, patch: usize) -> Self {
        Self {
            t: frames / tubelet,
            h: crop / patch,
            w: crop / patch,
        }
    }
    pub fn tokens(&self) -> usize {
        self.t * self.h * self.w
    }
}

/// One batch of masks for one mask config: ascending token indices, equal lengths per kind.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchMasks {
    /// Context (kept) token indices per sample, `[B][K_ctx]`.
    pub enc: Vec<Vec<u32>>,
    /// Target (predicted) token indices per sample, `[B][K_tgt]`.
    pub pred: Vec<Vec<u32>>,
    /// The block size `(t, h, w)` drawn for this batch.
    pub block: (usize, usize, usize),
}

impl BatchMasks {
    pub fn enc_tensor(&self, dev: &Device) -> Result<Tensor> {
        to_tensor(&self.enc, dev)
    }
    pub fn pred_tensor(&self, dev: &Device) -> Result<Tensor> {
        to_tensor(&self.pred, dev)
    }
}

fn to_tensor(rows: &[Vec<u32>], dev: &Device) -> Result<Tensor> {
    let b = rows.len();
    let k = rows.first().map_or(0, Vec::len);
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (b, k), dev)?)
}

/// Sampler for one mask configuration on one token grid.
#[derive(Debug, Clone)]
pub struct MultiBlockMasker {
    pub cfg: MaskCfg,
    pub grid: Grid,
    /// Index of this config in the `mask` list (separates the random streams).
    pub index: usize,
}

/// Attempts per sample before a config that leaves no context is reported as an error.
const MAX_TRIES: usize = 200;

impl MultiBlockMasker {
    pub fn new(cfg: MaskCfg, grid: Grid, index: usize) -> Self {
        Self { cfg, grid, index }
    }

    /// The block size of one batch, drawn from the step-seeded generator.
    pub fn block_size(&self, rng: &mut impl Rng) -> (usize, usize, usize) {
        let g = self.grid;
        let c = &self.cfg;
        let u =
            |rng: &mut dyn rand::RngCore, r: [f64; 2]| r[0] + rng.random::<f64>() * (r[1] - r[0]);
        let ts = u(rng, c.temporal_scale);
        let t = ((g.t as f64 * ts) as usize).max(1);
        let ss = u(rng, c.spatial_scale);
        let keep = ((g.h * g.w) as f64 * ss) as usize;
        let ar = u(rng, c.aspect_ratio);
        let h = ((keep as f64 * ar).sqrt().round_ties_even() as usize).min(g.h);
        let w = ((keep as f64 / ar).sqrt().round_ties_even() as usize).min(g.w);
        (t.min(g.t), h, w)
    }

    /// Context/target split of one sample: ones = context, zeros (union of blocks) = target.
    fn sample_one(
        &self,
        block: (usize, usize, usize),
        rng: &mut impl Rng,
    ) -> Option<(Vec<u32>, Vec<u32>)> {
        let g = self.grid;
        let (t, h, w) = block;
        let max_ctx_t = ((g.t as f64 * self.cfg.max_temporal_keep) as usize).max(1);
        for _ in 0..MAX_TRIES {
            let mut keep = vec![true; g.tokens()];
            for _ in 0..self.cfg.num_blocks {
                let top = rng.random_range(0..=g.h - h);
                let left = rng.random_range(0..=g.w - w);
                let start = rng.random_range(0..=g.t - t);
                for tt in start..start + t {
                    for y in top..top + h {
                        for x in left..left + w {
                            keep[tt * g.h * g.w + y * g.w + x] = false;
                        }
                    }
                }
                if max_ctx_t < g.t {
                    keep[max_ctx_t * g.h * g.w..].fill(false);
                }
            }
            let enc: Vec<u32> = (0..keep.len())
                .filter(|&i| keep[i])
                .map(|i| i as u32)
                .collect();
            if enc.is_empty() {
                continue;
            }
            let pred: Vec<u32> = (0..keep.len())
                .filter(|&i| !keep[i])
                .map(|i| i as u32)
                .collect();
            return Some((enc, pred));
        }
        None
    }

    /// Masks for a batch of `batch` clips at training step `step`.
    pub fn sample(&self, batch: usize, seed: u64, step: u64) -> Result<BatchMasks> {
        let mut size_rng = stream(seed, step, self.index, 0);
        let mut pos_rng = stream(seed, step, self.index, 1);
        let block = self.block_size(&mut size_rng);
        let g = self.grid;
        let mut enc = Vec::with_capacity(batch);
        let mut pred = Vec::with_capacity(batch);
        for _ in 0..batch {
            let Some((e, p)) = self.sample_one(block, &mut pos_rng) else {
                bail!(
                    "mask[{}]: {} blocks of {}x{}x{} cover the whole {}x{}x{} token grid in {MAX_TRIES} \
                     tries, leaving no context; lower spatial_scale or num_blocks",
                    self.index,
                    self.cfg.num_blocks,
                    block.0,
                    block.1,
                    block.2,
                    g.t,
                    g.h,
                    g.w
                );
            };
            enc.push(e);
            pred.push(p);
        }
        let mut min_enc = enc.iter().map(Vec::len).min().unwrap_or(0);
        if let Some(mk) = self.cfg.max_keep {
            min_enc = min_enc.min(mk.max(1));
        }
        let min_pred = pred.iter().map(Vec::len).min().unwrap_or(0);
        for e in &mut enc {
            e.truncate(min_enc);
        }
        for p in &mut pred {
            p.truncate(min_pred);
        }
        let n = g.tokens() as u32;
        if self.cfg.full_complement {
            pred = enc.iter().map(|e| complement(e, n)).collect();
        } else if self.cfg.pred_full_complement {
            enc = pred.iter().map(|p| complement(p, n)).collect();
        }
        if self.cfg.inv_block {
            std::mem::swap(&mut enc, &mut pred);
        }
        if pred.iter().any(Vec::is_empty) {
            bail!(
                "mask[{}]: a batch with no target tokens (block {:?} on grid {}x{}x{})",
                self.index,
                block,
                g.t,
                g.h,
                g.w
            );
        }
        Ok(BatchMasks { enc, pred, block })
    }
}

fn complement(sorted: &[u32], n: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(n as usize - sorted.len().min(n as usize));
    let mut it = sorted.iter().peekable();
    for i in 0..n {
        if it.peek() == Some(&&i) {
            it.next();
        } else {
            out.push(i);
        }
    }
    out
}

/// An independent random stream for `(seed, step, config, purpose)`.
pub fn stream(seed: u64, step: u64, index: usize, purpose: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(crate::rng::mix(&[
        seed,
        0x6d61_736b,
        step,
        index as u64,
        purpose,
    ]))
}

/// Mean context and target sizes of a config, estimated from `batches` sampled batches
/// (used by `--dry-run`; reads no data).
pub fn estimate(
    masker: &MultiBlockMasker,
    batch: usize,
    seed: u64,
    batches: u64,
) -> Result<(f64, f64)> {
    let (mut ctx, mut tgt) = (0.0, 0.0);
    for s in 0..batches {
        let m = masker.sample(batch, seed, s)?;
        ctx += m.enc[0].len() as f64;
        tgt += m.pred[0].len() as f64;
    }
    Ok((ctx / batches as f64, tgt / batches as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ss: f64, blocks: usize) -> MaskCfg {
        MaskCfg {
            aspect_ratio: [0.75, 1.5],
            full_complement: false,
            pred_full_complement: false,
            inv_block: false,
            max_keep: None,
            max_temporal_keep: 1.0,
            num_blocks: blocks,
            spatial_scale: [ss, ss],
            temporal_scale: [1.0, 1.0],
        }
    }

    const GRID: Grid = Grid { t: 8, h: 14, w: 14 };

    #[test]
    fn context_and_target_partition_the_grid_and_are_tubes() {
        let m = MultiBlockMasker::new(cfg(0.15, 8), GRID, 0);
        for step in 0..20 {
            let b = m.sample(1, 7, step).unwrap();
            let (e, p) = (&b.enc[0], &b.pred[0]);
            // single sample: no truncation, so the two sets partition the tokens
            assert_eq!(e.len() + p.len(), GRID.tokens());
            assert!(e.windows(2).all(|w| w[0] < w[1]) && p.windows(2).all(|w| w[0] < w[1]));
            // temporal scale 1.0: every spatial position is target in all or no frames
            let hw = (GRID.h * GRID.w) as u32;
            let first: Vec<u32> = p.iter().copied().filter(|&i| i < hw).collect();
            for t in 1..GRID.t as u32 {
                let frame: Vec<u32> = p
                    .iter()
                    .copied()
                    .filter(|&i| i / hw == t)
                    .map(|i| i % hw)
                    .collect();
                assert_eq!(frame, first, "target is a tube over time");
            }
        }
    }

    #[test]
    fn block_size_follows_the_reference_formula() {
        // spatial 0.7 on 14x14: keep = int(196*0.7) = 137; ar in [0.75,1.5] -> h,w within
        // round(sqrt(137*0.75))=10 ..= min(14, round(sqrt(137*1.5))=14).
        let m = MultiBlockMasker::new(cfg(0.7, 2), GRID, 1);
        for step in 0..50 {
            let (t, h, w) = m.block_size(&mut stream(3, step, 1, 0));
            assert_eq!(t, 8);
            assert!((10..=14).contains(&h) && (10..=14).contains(&w), "{h}x{w}");
            let area = (h * w) as f64;
            assert!((area - 137.0).abs() < 30.0, "area {area}");
        }
        // 0.15 on 14x14: keep 29 -> sides 5..=7
        let m = MultiBlockMasker::new(cfg(0.15, 8), GRID, 0);
        let (_, h, w) = m.block_size(&mut stream(3, 0, 0, 0));
        assert!((4..=7).contains(&h) && (4..=7).contains(&w));
    }

    #[test]
    fn block_size_is_shared_by_the_batch_and_lengths_are_batch_minimum() {
        let m = MultiBlockMasker::new(cfg(0.15, 8), GRID, 0);
        let b = m.sample(6, 1, 4).unwrap();
        // Replay the two streams by hand: one block size for the batch, then per-sample masks.
        let block = m.block_size(&mut stream(1, 4, 0, 0));
        assert_eq!(block, b.block);
        let mut pos = stream(1, 4, 0, 1);
        let full: Vec<_> = (0..6)
            .map(|_| m.sample_one(block, &mut pos).unwrap())
            .collect();
        let min_e = full.iter().map(|x| x.0.len()).min().unwrap();
        let min_p = full.iter().map(|x| x.1.len()).min().unwrap();
        assert!(
            full.iter().any(|x| x.0.len() != min_e),
            "samples differ before truncation"
        );
        for (i, (e, p)) in full.iter().enumerate() {
            assert_eq!(b.enc[i], e[..min_e]);
            assert_eq!(b.pred[i], p[..min_p]);
        }
        let t = b.enc_tensor(&Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[6, min_e]);
        assert_eq!(b.pred_tensor(&Device::Cpu).unwrap().dims(), &[6, min_p]);
    }

    #[test]
    fn masks_are_a_function_of_seed_and_step() {
        let m = MultiBlockMasker::new(cfg(0.15, 8), GRID, 0);
        assert_eq!(m.sample(4, 9, 11).unwrap(), m.sample(4, 9, 11).unwrap());
        assert_ne!(m.sample(4, 9, 11).unwrap(), m.sample(4, 9, 12).unwrap());
        assert_ne!(m.sample(4, 9, 11).unwrap(), m.sample(4, 10, 11).unwrap());
        let other = MultiBlockMasker::new(cfg(0.15, 8), GRID, 1);
        assert_ne!(m.sample(4, 9, 11).unwrap(), other.sample(4, 9, 11).unwrap());
    }

    #[test]
    fn reference_configs_give_expected_mask_ratios() {
        // Short-range (8 x 0.15) and long-range (2 x 0.7) on 16x224x224: the long-range config
        // hides most of the clip, the short-range one roughly half to three quarters.
        let short = MultiBlockMasker::new(cfg(0.15, 8), GRID, 0);
        let long = MultiBlockMasker::new(cfg(0.7, 2), GRID, 1);
        let (_, ts) = estimate(&short, 8, 0, 30).unwrap();
        let (_, tl) = estimate(&long, 8, 0, 30).unwrap();
        let n = GRID.tokens() as f64;
        assert!(
            ts / n > 0.4 && ts / n < 0.85,
            "short-range target ratio {}",
            ts / n
        );
        assert!(
            tl / n > 0.7 && tl / n < 0.98,
            "long-range target ratio {}",
            tl / n
        );
    }

    #[test]
    fn impossible_config_is_an_error_not_a_hang() {
        let g = Grid { t: 2, h: 2, w: 2 };
        let m = MultiBlockMasker::new(cfg(1.0, 2), g, 0);
        let e = m.sample(2, 0, 0).unwrap_err().to_string();
        assert!(e.contains("no context"), "{e}");
    }

    #[test]
    fn max_temporal_keep_limits_context_to_early_frames() {
        let mut c = cfg(0.15, 2);
        c.max_temporal_keep = 0.5;
        let m = MultiBlockMasker::new(c, GRID, 0);
        let b = m.sample(2, 0, 0).unwrap();
        let hw = (GRID.h * GRID.w) as u32;
        assert!(b.enc.iter().flatten().all(|&i| i / hw < 4));
    }

    #[test]
    fn full_complement_and_inversion() {
        let mut c = cfg(0.15, 8);
        c.full_complement = true;
        let m = MultiBlockMasker::new(c.clone(), GRID, 0);
        let b = m.sample(3, 0, 0).unwrap();
        for (e, p) in b.enc.iter().zip(&b.pred) {
            assert_eq!(e.len() + p.len(), GRID.tokens());
        }
        c.full_complement = false;
        c.inv_block = true;
        let inv = MultiBlockMasker::new(c, GRID, 0).sample(3, 0, 0).unwrap();
        let plain = MultiBlockMasker::new(cfg(0.15, 8), GRID, 0)
            .sample(3, 0, 0)
            .unwrap();
        assert_eq!(inv.enc, plain.pred);
        assert_eq!(inv.pred, plain.enc);
    }
}
