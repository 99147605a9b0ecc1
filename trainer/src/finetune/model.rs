//! The encoder with its heads as one trainable model: stochastic depth, frozen leading blocks,
//! layer-wise learning rates, and the three losses (view cross-entropy, EF SmoothL1 on
//! z-scores, LV cavity binary cross-entropy per pixel).

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use echojepa::EncoderConfig;
use echojepa::checkpoint::TensorMap;
use echojepa::encoder::VisionTransformer;
use echojepa::nn::Linear;
use echojepa::probe::AttentiveProbe;
use echojepa::rope::RopeTables;
use echojepa::{ProbeConfig, ProbeKind};
use rand::Rng;

use super::config::{HeadCfg, HeadTask};

/// One head of the model.
pub enum Head {
    Attentive(AttentiveProbe),
    /// Tokens `[B, N, D]` → per-token logits `[B, N, tubelet · patch²]`.
    Lv(Linear),
}

/// The model: encoder plus heads, built from a `VarBuilder` (trainable or fixed tensors).
pub struct FtModel {
    pub encoder: VisionTransformer,
    pub heads: Vec<Head>,
    pub enc_cfg: EncoderConfig,
}

/// Probe architecture of an attentive head.
pub fn probe_config(
    task: HeadTask,
    embed_dim: usize,
    num_heads: usize,
    depth: usize,
) -> Option<ProbeConfig> {
    let (kind, n) = match task {
        HeadTask::View => (ProbeKind::Classifier, echojepa_phantom::View::ALL.len()),
        HeadTask::Ef => (ProbeKind::Regressor, 1),
        HeadTask::LvSegmentation => return None,
    };
    Some(ProbeConfig {
        kind,
        embed_dim,
        num_heads,
        depth,
        num_outputs: n,
        mlp_ratio: 4.0,
        slots: None,
    })
}

/// Output width of the LV decoder: every pixel of a tubelet.
pub fn lv_width(enc: &EncoderConfig) -> usize {
    enc.tubelet_size * enc.patch_size * enc.patch_size
}

impl FtModel {
    /// Builds the model on `vb`: the encoder at `encoder.*`, head `h` at `heads.{name}.*`.
    pub fn new(
        enc_cfg: &EncoderConfig,
        heads: &[HeadCfg],
        probe_heads: usize,
        probe_depth: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let encoder = VisionTransformer::new(enc_cfg, vb.pp("encoder"))?;
        let mut out = Vec::with_capacity(heads.len());
        for h in heads {
            let hvb = vb.pp(format!("heads.{}", h.name));
            out.push(
                match probe_config(h.task, enc_cfg.embed_dim, probe_heads, probe_depth) {
                    Some(pc) => Head::Attentive(AttentiveProbe::new(&pc, hvb)?),
                    None => Head::Lv(Linear::new(enc_cfg.embed_dim, lv_width(enc_cfg), hvb)?),
                },
            );
        }
        Ok(Self {
            encoder,
            heads: out,
            enc_cfg: enc_cfg.clone(),
        })
    }

    /// Encodes `[B, 3, T, H, W]` to `[B, N, D]`. In training, each residual branch of block `i`
    /// is dropped per sample with probability `drop[i]` (kept ones scaled by `1/(1-p)`), and the
    /// patch embedding and the first `freeze` blocks get no gradient.
    pub fn encode(
        &self,
        video: &Tensor,
        drop: Option<DropPath<'_>>,
        freeze: usize,
    ) -> Result<Tensor> {
        let pe = self.encoder.patch_embed();
        let grid = pe.grid(video)?;
        let mut x = pe.forward(video)?;
        let rope = RopeTables::full(self.enc_cfg.head_dim(), grid, x.dtype(), x.device())?;
        let b = x.dim(0)?;
        let mut drop = drop;
        for (i, blk) in self.encoder.blocks().iter().enumerate() {
            if freeze > 0 && i == freeze {
                // nothing below trains: no gradient needs to flow there
                x = x.detach();
            }
            let a = blk
                .attn()
                .forward(&blk.norm1().forward(&x)?, Some(&rope), None)?;
            let a = match &mut drop {
                Some(d) => d.apply(&a, i, b)?,
                None => a,
            };
            x = (x + a)?;
            let m = blk.mlp().forward(&blk.norm2().forward(&x)?)?;
            let m = match &mut drop {
                Some(d) => d.apply(&m, i, b)?,
                None => m,
            };
            x = (x + m)?;
        }
        if freeze >= self.encoder.blocks().len() {
            x = x.detach();
        }
        Ok(self.encoder.norm().forward(&x)?)
    }

    /// Every head's raw output on the tokens.
    pub fn heads_forward(&self, tokens: &Tensor) -> Result<Vec<Tensor>> {
        self.heads
            .iter()
            .map(|h| match h {
                Head::Attentive(p) => Ok(p.forward(tokens, None)?),
                Head::Lv(l) => Ok(l.forward(tokens)?),
            })
            .collect()
    }
}

/// Stochastic depth of one training step: the rate of each block, the step's random stream,
/// and which rows of the global batch this process holds. The keep/drop draws are made for the
/// whole global batch and each rank takes its rows, so N ranks drop exactly the residual
/// branches one process with the whole batch drops.
pub struct DropPath<'a> {
    pub rates: &'a [f64],
    pub rng: &'a mut dyn rand::RngCore,
    /// First row of this process's share in the global batch.
    pub offset: usize,
    /// Rows of the global batch.
    pub global: usize,
}

impl DropPath<'_> {
    fn apply(&mut self, x: &Tensor, block: usize, b: usize) -> Result<Tensor> {
        let global = self.global.max(self.offset + b);
        drop_path(x, self.rates[block], b, self.offset, global, &mut *self.rng)
    }
}

fn drop_path(
    x: &Tensor,
    p: f64,
    b: usize,
    offset: usize,
    global: usize,
    rng: &mut dyn rand::RngCore,
) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    // every row of the global batch is drawn (not only this share's: the stream must advance
    // as far as one process's does before the next block draws)
    let all: Vec<f32> = (0..global)
        .map(|_| {
            if rng.random::<f64>() < p {
                0.0
            } else {
                (1.0 / (1.0 - p)) as f32
            }
        })
        .collect();
    let keep = all[offset..offset + b].to_vec();
    let mask = Tensor::from_vec(keep, (b, 1, 1), x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&mask)?)
}

/// Stochastic-depth rate of each block: linear from 0 to `max` over the depth.
pub fn drop_rates(depth: usize, max: f64) -> Vec<f64> {
    (0..depth)
        .map(|i| {
            if depth <= 1 {
                max
            } else {
                max * i as f64 / (depth - 1) as f64
            }
        })
        .collect()
}

/// Learning-rate multiplier of a parameter relative to the heads' peak rate: heads 1, encoder
/// block `i` `encoder_lr / lr · decay^(depth − 1 − i)`, patch embedding one step further, the
/// final norm as the last block.
pub fn lr_scale(name: &str, depth: usize, lr: f64, encoder_lr: f64, decay: f64) -> f64 {
    let Some(rest) = name.strip_prefix("encoder.") else {
        return 1.0;
    };
    let base = if lr > 0.0 { encoder_lr / lr } else { 0.0 };
    let steps_from_top = if let Some(b) = rest.strip_prefix("blocks.") {
        let i: usize = b
            .split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        depth.saturating_sub(1 + i)
    } else if rest.starts_with("patch_embed") {
        depth
    } else {
        0
    };
    base * decay.powi(steps_from_top as i32)
}

/// Whether a parameter trains when the patch embedding and `freeze` blocks are frozen.
pub fn is_trainable(name: &str, freeze: usize) -> bool {
    if freeze == 0 {
        return true;
    }
    let Some(rest) = name.strip_prefix("encoder.") else {
        return true;
    };
    if rest.starts_with("patch_embed") {
        return false;
    }
    if let Some(b) = rest.strip_prefix("blocks.") {
        let i: usize = b
            .split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        return i >= freeze;
    }
    true
}

/// Fills a `VarMap` with `tensors` (names as in the model) converted to `dtype` on `device`.
pub fn varmap_of(tensors: &TensorMap, dtype: DType, device: &Device) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow!("VarMap lock poisoned"))?;
        for (k, t) in tensors {
            data.insert(
                k.clone(),
                Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?,
            );
        }
    }
    Ok(varmap)
}

/// The named variables of a `VarMap`.
pub fn vars_of(vm: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = vm
        .data()
        .lock()
        .map_err(|_| anyhow!("VarMap lock poisoned"))?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Rows `rows` of `x` along dim 0 (a copy), or `None` when there are none.
pub fn select_rows(x: &Tensor, rows: &[u32]) -> Result<Option<Tensor>> {
    if rows.is_empty() {
        return Ok(None);
    }
    let idx = Tensor::from_slice(rows, rows.len(), x.device())?;
    Ok(Some(x.index_select(&idx, 0)?))
}

/// Mean binary cross-entropy of `logits` against soft `targets` in `[0, 1]`, stable form
/// `max(x, 0) − x·y + log(1 + exp(−|x|))`.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F32)?;
    let relu = x.relu()?;
    let xy = (&x * targets)?;
    let soft = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    Ok(((relu - xy)? + soft)?.mean_all()?)
}

/// Soft Dice loss `1 − 2Σpy / (Σp + Σy)` per sample of `[B, …]` logits, averaged over the
/// batch: unlike the pixel-mean cross-entropy it does not reward calling everything
/// background when the cavity is a small part of the image.
pub fn soft_dice_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let b = logits.dim(0)?;
    let p = candle_nn::ops::sigmoid(&logits.to_dtype(DType::F32)?)?.reshape((b, ()))?;
    let y = targets.reshape((b, ()))?;
    let inter = (&p * &y)?.sum(1)?;
    let denom = ((p.sum(1)? + y.sum(1)?)? + 1.0)?;
    let dice = ((inter * 2.0)? + 1.0)?.div(&denom)?;
    Ok((1.0 - dice)?.mean_all()?)
}

/// Binary cross-entropy as [`bce_with_logits`], each element weighted by `weights` (same
/// shape) and the sum divided by the total weight: elements of weight 0 (frames without a
/// tracing) contribute nothing.
pub fn weighted_bce_with_logits(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F32)?;
    let relu = x.relu()?;
    let xy = (&x * targets)?;
    let soft = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    let per = ((relu - xy)? + soft)?;
    let total = weights.sum_all()?.to_scalar::<f32>()?.max(1e-6) as f64;
    Ok(((per * weights)?.sum_all()? / total)?)
}

/// Soft Dice loss as [`soft_dice_loss`] over the weighted pixels only (`p·w`, `y·w`).
pub fn weighted_soft_dice_loss(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let b = logits.dim(0)?;
    let w = weights.reshape((b, ()))?;
    let p = (candle_nn::ops::sigmoid(&logits.to_dtype(DType::F32)?)?.reshape((b, ()))? * &w)?;
    let y = (targets.reshape((b, ()))? * &w)?;
    let inter = (&p * &y)?.sum(1)?;
    let denom = ((p.sum(1)? + y.sum(1)?)? + 1.0)?;
    let dice = ((inter * 2.0)? + 1.0)?.div(&denom)?;
    Ok((1.0 - dice)?.mean_all()?)
}

/// Cross-entropy of logits `[B, C]` against class indices.
pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let t = Tensor::from_slice(labels, labels.len(), logits.device())?;
    Ok(candle_nn::loss::cross_entropy(
        &logits.to_dtype(DType::F32)?,
        &t,
    )?)
}

/// Softmax of `logits / temperature` per row.
pub fn softmax_rows(logits: &[f32], classes: usize, temperature: f64) -> Vec<Vec<f64>> {
    logits
        .chunks(classes)
        .map(|row| {
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let e: Vec<f64> = row
                .iter()
                .map(|&v| ((v as f64 - m) / temperature).exp())
                .collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        })
        .collect()
}

/// The current value of every variable, f32 on the CPU.
pub fn snapshot(vm: &VarMap) -> Result<TensorMap> {
    let mut out = HashMap::new();
    for (k, v) in vars_of(vm)? {
        out.insert(
            k,
            v.as_tensor()
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?,
        );
    }
    Ok(out)
}

/// Argmax per row of `[B, C]` floats.
pub fn argmax_rows(x: &[f32], classes: usize) -> Vec<usize> {
    x.chunks(classes)
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        })
        .collect()
}

/// Sanity check of a head list against the encoder (names the bad head).
pub fn check_heads(heads: &[HeadCfg]) -> Result<()> {
    let n_lv = heads
        .iter()
        .filter(|h| h.task == HeadTask::LvSegmentation)
        .count();
    if n_lv > 1 {
        bail!("finetune.heads: at most one lv_segmentation head");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_decay_and_freezing_by_name() {
        let s = |n| lr_scale(n, 4, 1e-3, 1e-4, 0.5);
        assert_eq!(s("heads.view.linear.weight"), 1.0);
        assert!((s("encoder.blocks.3.attn.qkv.weight") - 0.1).abs() < 1e-12);
        assert!((s("encoder.blocks.0.attn.qkv.weight") - 0.1 * 0.125).abs() < 1e-12);
        assert!((s("encoder.patch_embed.proj.weight") - 0.1 * 0.0625).abs() < 1e-12);
        assert!(!is_trainable("encoder.patch_embed.proj.weight", 1));
        assert!(!is_trainable("encoder.blocks.0.mlp.fc1.weight", 1));
        assert!(is_trainable("encoder.blocks.1.mlp.fc1.weight", 1));
        assert!(is_trainable("heads.ef.regressor.weight", 4));
    }

    #[test]
    fn bce_matches_its_definition() {
        let x = Tensor::new(&[-2.0f32, 0.0, 3.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0.0f32, 0.5, 1.0], &Device::Cpu).unwrap();
        let got = bce_with_logits(&x, &y).unwrap().to_scalar::<f32>().unwrap() as f64;
        let want: f64 = [(-2.0f64, 0.0f64), (0.0, 0.5), (3.0, 1.0)]
            .iter()
            .map(|&(x, y)| {
                let s = 1.0 / (1.0 + (-x).exp());
                -(y * s.ln() + (1.0 - y) * (1.0 - s).ln())
            })
            .sum::<f64>()
            / 3.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn zero_weights_silence_their_elements() {
        let x = Tensor::new(&[[-2.0f32, 0.0, 3.0, 5.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[0.0f32, 0.5, 1.0, 0.0]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[[1.0f32, 1.0, 1.0, 0.0]], &Device::Cpu).unwrap();
        let f = |t: Tensor| t.to_scalar::<f32>().unwrap();
        let three = |t: &Tensor| t.narrow(1, 0, 3).unwrap();
        let a = f(weighted_bce_with_logits(&x, &y, &w).unwrap());
        let b = f(bce_with_logits(&three(&x), &three(&y)).unwrap());
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        let a = f(weighted_soft_dice_loss(&x, &y, &w).unwrap());
        let b = f(soft_dice_loss(&three(&x), &three(&y)).unwrap());
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    #[test]
    fn stochastic_depth_zeroes_whole_samples() {
        let x = Tensor::ones((64, 3, 2), DType::F32, &Device::Cpu).unwrap();
        let mut rng = crate::rng::rng_for(&[1]);
        let y = drop_path(&x, 0.5, 64, 0, 64, &mut rng).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let dropped = v.chunks(6).filter(|c| c.iter().all(|&a| a == 0.0)).count();
        assert!(v.chunks(6).all(|c| c.iter().all(|&a| a == 0.0 || a == 2.0)));
        assert!((16..=48).contains(&dropped), "{dropped} of 64 dropped");
    }

    #[test]
    fn ranks_drop_the_rows_one_process_drops() {
        let x = Tensor::ones((8, 3, 2), DType::F32, &Device::Cpu).unwrap();
        let mut rng = crate::rng::rng_for(&[9]);
        let whole = drop_path(&x, 0.5, 8, 0, 8, &mut rng).unwrap();
        // a second block draws after the first: the stream must have advanced alike on every rank
        let whole =
            Tensor::cat(&[whole, drop_path(&x, 0.5, 8, 0, 8, &mut rng).unwrap()], 0).unwrap();
        let halves: Vec<Tensor> = (0..2)
            .flat_map(|r| {
                let half = x.narrow(0, 4 * r, 4).unwrap();
                let mut rng = crate::rng::rng_for(&[9]);
                let a = drop_path(&half, 0.5, 4, 4 * r, 8, &mut rng).unwrap();
                let b = drop_path(&half, 0.5, 4, 4 * r, 8, &mut rng).unwrap();
                [a, b]
            })
            .collect();
        // in the order of `whole`: the first block (rank 0 rows, then rank 1), then the second
        let halves = vec![
            halves[0].clone(),
            halves[2].clone(),
            halves[1].clone(),
            halves[3].clone(),
        ];
        let joined = Tensor::cat(&halves, 0).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            whole.flatten_all().unwrap().to_vec1().unwrap(),
            joined.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, b);
        assert!(a.contains(&0.0) && a.contains(&2.0), "{a:?}");
    }
}
