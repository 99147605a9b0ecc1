//! Training several attentive-probe heads at once on frozen features, as the reference does
//! with `multihead_kwargs`: one AdamW per head with its own warmup-cosine LR and cosine WD,
//! cross-entropy (classification) or SmoothL1 on z-scores (regression), multi-view early fusion
//! with view dropout and key-padding masks, multi-spatial-view averaging, and selection of the
//! best head/epoch on validation.

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{Result, anyhow, bail};
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use echojepa::checkpoint::{TensorMap, expected_tensors};
use echojepa::probe::AttentiveProbe;
use echojepa::{ProbeConfig, ProbeKind};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::StandardNormal;

use crate::dist::Collective;
use crate::dist::collective::average_grads;
use crate::optim::AdamW;
use crate::schedule::{LrSchedule, WdSchedule};

/// One labelled sample of frozen features.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `[V, N, D]`: V spatial views, N tokens (segments or slots concatenated), f32 on CPU.
    pub feats: Tensor,
    /// Class index, or z-scored target.
    pub label: f64,
    /// Multi-view: which study views are present (slot-major features, `clips_per_view` slots
    /// per view).
    pub present: Option<Vec<bool>>,
    /// Identifies the sample in prediction files (video path or the study's paths).
    pub id: String,
}

/// Optimisation settings of one head.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeadSpec {
    pub lr: f64,
    pub start_lr: f64,
    pub final_lr: f64,
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub final_weight_decay: f64,
}

/// Multi-view layout and view dropout.
#[derive(Debug, Clone, Copy)]
pub struct MultiView {
    pub views: usize,
    pub clips_per_view: usize,
    pub miss_prob: f64,
    pub min_present: usize,
}

/// Seeded reference initialisation of a probe: trunc-normal(0.02) weights, zero biases, unit
/// LayerNorms, rescaled residual projections; PyTorch-default (Kaiming-uniform) head and N(0,1)
/// slot embeddings.
pub fn probe_init(cfg: &ProbeConfig, seed: u64) -> Result<TensorMap> {
    let expected = expected_tensors(|vb| AttentiveProbe::new(cfg, vb))?;
    let mut rng = crate::rng::rng_for(&[seed, 0x9e0b]);
    let d = cfg.embed_dim as f64;
    let self_blocks = cfg.depth.saturating_sub(1);
    let mut out = HashMap::new();
    for (name, shape) in &expected {
        let n: usize = shape.iter().product();
        let is_head = name.starts_with("linear.") || name.starts_with("regressor.");
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let values: Vec<f32> = if is_head {
            let b = 1.0 / d.sqrt();
            (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
        } else if name.ends_with("_embed.weight") {
            (0..n)
                .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
                .collect()
        } else if leaf == "bias" {
            vec![0.0; n]
        } else if name.contains("norm") && leaf == "weight" {
            vec![1.0; n]
        } else {
            let mut std = 0.02;
            if let Some(rest) = name.strip_prefix("pooler.blocks.") {
                let i: usize = rest
                    .split('.')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if name.ends_with("attn.proj.weight") || name.ends_with("mlp.fc2.weight") {
                    std /= (2.0 * (i + 1) as f64).sqrt();
                }
            } else if name == "pooler.cross_attention_block.mlp.fc2.weight" {
                std /= (2.0 * self_blocks.max(1) as f64).sqrt();
            }
            (0..n)
                .map(|_| (rng.sample::<f64, _>(StandardNormal) * std).clamp(-2.0, 2.0) as f32)
                .collect()
        };
        out.insert(
            name.clone(),
            Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?,
        );
    }
    Ok(out)
}

struct Head {
    probe: AttentiveProbe,
    opt: AdamW,
    lr: LrSchedule,
    wd: WdSchedule,
}

/// Result of evaluating one head on a set of samples.
#[derive(Debug, Clone)]
pub struct Eval {
    /// Per sample: predicted class index (as f64), or the z-scored prediction of target 0.
    pub pred: Vec<f64>,
    /// Classification: probability of the predicted class; regression: unused (1.0).
    pub confidence: Vec<f64>,
    /// Mean loss.
    pub loss: f64,
}

pub struct ProbeTrainer {
    pub cfg: ProbeConfig,
    heads: Vec<Head>,
    device: Device,
    dtype: DType,
    multi: Option<MultiView>,
    seed: u64,
    /// Samples per rank and step.
    batch_size: usize,
    step: usize,
    /// The ranks the heads train over (one process: the identity).
    coll: Rc<dyn Collective>,
}

fn vars_of(vm: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = vm
        .data()
        .lock()
        .map_err(|_| anyhow!("VarMap lock poisoned"))?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

impl ProbeTrainer {
    /// A trainer whose steps are shared by the ranks of `coll`: each step's global batch is
    /// `batch_size` x ranks samples of the epoch's order, rank `r` takes the `r`-th part, and the
    /// heads' gradients are averaged before every step, so the heads follow one process with the
    /// global batch (every rank must hold every training sample: see `split_features_on`).
    #[allow(clippy::too_many_arguments)]
    pub fn new_on(
        coll: Rc<dyn Collective>,
        cfg: ProbeConfig,
        specs: Vec<HeadSpec>,
        multi: Option<MultiView>,
        n_train: usize,
        batch_size: usize,
        epochs: usize,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if n_train == 0 {
            bail!("no training samples");
        }
        let ipe = n_train.div_ceil(batch_size * coll.world());
        let total = ipe * epochs;
        let mut heads = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let init = probe_init(&cfg, seed.wrapping_add(i as u64))?;
            let varmap = VarMap::new();
            {
                let mut data = varmap
                    .data()
                    .lock()
                    .map_err(|_| anyhow!("VarMap lock poisoned"))?;
                for (k, t) in init {
                    data.insert(k, Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?);
                }
            }
            let probe = AttentiveProbe::new(&cfg, VarBuilder::from_varmap(&varmap, dtype, device))?;
            let mut opt = AdamW::new(vars_of(&varmap)?, [0.9, 0.999], 1e-8)?;
            opt.decay_everything();
            let warm = (s.warmup_epochs * ipe as f64) as usize;
            heads.push(Head {
                probe,
                opt,
                lr: LrSchedule::pretrain(false, warm, s.start_lr, s.lr, s.final_lr, total),
                wd: WdSchedule {
                    ref_wd: s.weight_decay,
                    final_wd: s.final_weight_decay,
                    t_max: total,
                },
            });
        }
        Ok(Self {
            cfg,
            heads,
            device: device.clone(),
            dtype,
            multi,
            seed,
            batch_size,
            step: 0,
            coll,
        })
    }

    pub fn num_heads(&self) -> usize {
        self.heads.len()
    }

    /// Present views after view dropout (train) for one sample.
    fn dropout_views(&self, present: &[bool], rng: &mut impl Rng) -> Vec<bool> {
        let Some(mv) = self.multi else {
            return present.to_vec();
        };
        let mut out = present.to_vec();
        if mv.miss_prob <= 0.0 {
            return out;
        }
        let mut idx: Vec<usize> = (0..out.len()).filter(|&i| out[i]).collect();
        idx.shuffle(rng);
        for i in idx {
            let n_present = out.iter().filter(|p| **p).count();
            if n_present <= mv.min_present {
                break;
            }
            if rng.random::<f64>() < mv.miss_prob {
                out[i] = false;
            }
        }
        out
    }

    fn assemble(
        &self,
        batch: &[&Sample],
        present: &[Option<Vec<bool>>],
    ) -> Result<(Tensor, Option<Tensor>, usize)> {
        assemble(self.multi, &self.device, self.dtype, batch, present)
    }

    fn loss(&self, out: &Tensor, labels: &[f64], views: usize) -> Result<Tensor> {
        let out = out.to_dtype(DType::F32)?;
        let rep: Vec<f64> = labels
            .iter()
            .flat_map(|l| std::iter::repeat_n(*l, views))
            .collect();
        match self.cfg.kind {
            ProbeKind::Classifier => {
                let t: Vec<u32> = rep.iter().map(|l| *l as u32).collect();
                let t = Tensor::from_vec(t, rep.len(), &self.device)?;
                Ok(candle_nn::loss::cross_entropy(&out, &t)?)
            }
            ProbeKind::Regressor => {
                let k = out.dim(1)?;
                let t = Tensor::from_vec(
                    rep.iter().map(|x| *x as f32).collect::<Vec<_>>(),
                    (rep.len(), 1),
                    &self.device,
                )?
                .broadcast_as((rep.len(), k))?;
                smooth_l1(&(out - t)?)
            }
        }
    }

    /// One epoch over `train` for every head; returns each head's mean training loss.
    ///
    /// With several ranks each global batch of `n` samples is split at `floor(r·n/N)` (the last,
    /// short batch too), each rank's mean loss is weighted by its share `N·n_r/n`, and the
    /// gradients are averaged: the mean over ranks is the global batch's mean loss and gradient.
    pub fn train_epoch(&mut self, train: &[Sample], epoch: usize) -> Result<Vec<f64>> {
        let (rank, world) = (self.coll.rank(), self.coll.world());
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut crate::rng::rng_for(&[self.seed, 0x0de7, epoch as u64]));
        let mut sums = vec![0.0; self.heads.len()];
        let mut count = 0usize;
        for (bi, chunk) in order.chunks(self.batch_size * world).enumerate() {
            let n = chunk.len();
            let mut rng = crate::rng::rng_for(&[self.seed, 0x7a1e, epoch as u64, bi as u64]);
            // view dropout is drawn for the whole global batch, in order, so every rank's
            // samples get the draws one process would give them
            let present: Vec<Option<Vec<bool>>> = chunk
                .iter()
                .map(|&i| {
                    train[i]
                        .present
                        .as_ref()
                        .map(|p| self.dropout_views(p, &mut rng))
                })
                .collect();
            let mine = (rank * n / world)..((rank + 1) * n / world);
            let batch: Vec<&Sample> = chunk[mine.clone()].iter().map(|&i| &train[i]).collect();
            let present = &present[mine];
            let share = world as f64 * batch.len() as f64 / n as f64;
            let step = self.step + 1;
            // fewer samples than ranks in the last batch: this rank adds nothing
            let inputs = if batch.is_empty() {
                None
            } else {
                Some(self.assemble(&batch, present)?)
            };
            let labels: Vec<f64> = batch.iter().map(|s| s.label).collect();
            for hi in 0..self.heads.len() {
                let mut grads = if let Some((x, kpm, views)) = &inputs {
                    let (x, kpm, views) = (x, kpm, *views);
                    let out = self.heads[hi].probe.forward(x, kpm.as_ref())?;
                    let loss = self.loss(&out, &labels, views)?;
                    let lv = loss.to_scalar::<f32>()? as f64;
                    if !lv.is_finite() {
                        bail!(
                            "probe head {hi}: loss is {lv} at epoch {epoch} (rank {rank} of {world})"
                        );
                    }
                    sums[hi] += lv * batch.len() as f64;
                    if world == 1 {
                        loss.backward()?
                    } else {
                        (loss * share)?.backward()?
                    }
                } else {
                    no_gradients(&self.device)?
                };
                let h = &mut self.heads[hi];
                average_grads(self.coll.as_ref(), h.opt.params(), &mut grads)?;
                let (lr, wd) = (h.lr.lr_at(step), h.wd.wd_at(step));
                h.opt.step(&grads, lr, wd, None)?;
            }
            count += n;
            self.step += 1;
        }
        if world > 1 {
            // the epoch's loss over all ranks' samples
            let mut all: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
            self.coll.all_reduce_sum(&mut all)?;
            sums = all.into_iter().map(f64::from).collect();
        }
        Ok(sums.into_iter().map(|s| s / count.max(1) as f64).collect())
    }

    /// Evaluates head `hi` (no view dropout; spatial views aggregated as the reference does).
    pub fn evaluate(&self, hi: usize, samples: &[Sample]) -> Result<Eval> {
        eval_probe(
            &self.heads[hi].probe,
            &self.cfg,
            self.multi,
            samples,
            self.batch_size.max(8),
            &self.device,
            self.dtype,
        )
    }

    /// Current weights of head `hi` (f32, CPU).
    pub fn head_tensors(&self, hi: usize) -> Result<TensorMap> {
        let mut out = HashMap::new();
        for p in self.heads[hi].opt.params() {
            let t = self.heads[hi]
                .opt
                .master(&p.name)
                .ok_or_else(|| anyhow!("no parameter {}", p.name))?;
            out.insert(p.name.clone(), t.to_device(&Device::Cpu)?);
        }
        Ok(out)
    }

    /// `(lr, wd)` head `hi` used at its last step.
    pub fn current_lr_wd(&self, hi: usize) -> (f64, f64) {
        let h = &self.heads[hi];
        (h.lr.lr_at(self.step.max(1)), h.wd.wd_at(self.step.max(1)))
    }
}

/// SmoothL1 (Huber, beta 1) averaged over all elements, with gradient.
/// A gradient store that holds no parameter's gradient (a rank with no sample in a step).
fn no_gradients(device: &Device) -> Result<candle_core::backprop::GradStore> {
    Ok(Tensor::zeros((), DType::F32, device)?.backward()?)
}

pub fn smooth_l1(diff: &Tensor) -> Result<Tensor> {
    let a = diff.abs()?;
    let q = a.minimum(1.0)?;
    let l = ((q.sqr()? * 0.5)? + (a - q)?)?;
    Ok(l.mean_all()?)
}

/// Runs a probe over samples without dropout: returns predictions (class index or z-score of
/// target 0), confidences and the mean loss.
pub fn eval_probe(
    probe: &AttentiveProbe,
    cfg: &ProbeConfig,
    multi: Option<MultiView>,
    samples: &[Sample],
    batch_size: usize,
    device: &Device,
    dtype: DType,
) -> Result<Eval> {
    let mut pred = Vec::with_capacity(samples.len());
    let mut confidence = Vec::with_capacity(samples.len());
    let mut loss_sum = 0.0;
    for chunk in samples.chunks(batch_size.max(1)) {
        let batch: Vec<&Sample> = chunk.iter().collect();
        let present: Vec<Option<Vec<bool>>> = batch.iter().map(|s| s.present.clone()).collect();
        let (x, kpm, v) = assemble(multi, device, dtype, &batch, &present)?;
        let out = probe.forward(&x, kpm.as_ref())?.to_dtype(DType::F32)?;
        let b = batch.len();
        let k = out.dim(1)?;
        let out = out.reshape((b, v, k))?;
        match cfg.kind {
            ProbeKind::Classifier => {
                let prob = candle_nn::ops::softmax(&out, D::Minus1)?.mean(1)?; // [B, C]
                let rows = prob.to_vec2::<f32>()?;
                for (s, row) in batch.iter().zip(rows) {
                    let (arg, p) = row.iter().enumerate().fold((0, f32::MIN), |acc, (i, &p)| {
                        if p > acc.1 { (i, p) } else { acc }
                    });
                    pred.push(arg as f64);
                    confidence.push(p as f64);
                    loss_sum += -(row
                        .get(s.label as usize)
                        .copied()
                        .unwrap_or(1e-12)
                        .max(1e-12) as f64)
                        .ln();
                }
            }
            ProbeKind::Regressor => {
                let mean = out.mean(1)?.to_vec2::<f32>()?;
                for (s, row) in batch.iter().zip(mean) {
                    let z = row[0] as f64;
                    pred.push(z);
                    confidence.push(1.0);
                    let d = (z - s.label).abs();
                    loss_sum += if d < 1.0 { 0.5 * d * d } else { d - 0.5 };
                }
            }
        }
    }
    Ok(Eval {
        pred,
        confidence,
        loss: loss_sum / samples.len().max(1) as f64,
    })
}

/// Stacks samples into `[B·V, N, D]` features and, for multi-view, a `[B·V, N]` key-padding
/// mask (1 = ignore) with the missing views' features zeroed. Returns V as well.
fn assemble(
    multi: Option<MultiView>,
    device: &Device,
    dtype: DType,
    batch: &[&Sample],
    present: &[Option<Vec<bool>>],
) -> Result<(Tensor, Option<Tensor>, usize)> {
    let feats: Vec<Tensor> = batch.iter().map(|s| s.feats.clone()).collect();
    let x = Tensor::stack(&feats, 0)?; // [B, V, N, D]
    let (b, v, n, d) = x.dims4()?;
    let mut x = x.reshape((b * v, n, d))?;
    let mut kpm = None;
    if let Some(mv) = multi {
        let slots = mv.views * mv.clips_per_view;
        if slots == 0 || n % slots != 0 {
            bail!("multi-view features with {n} tokens do not split into {slots} slots");
        }
        let per = n / slots;
        let mut mask = Vec::with_capacity(b * v * n);
        for p in present {
            let p = p
                .as_ref()
                .ok_or_else(|| anyhow!("multi-view sample without presence flags"))?;
            for _ in 0..v {
                for view in 0..mv.views {
                    let ignore = if p.get(view).copied().unwrap_or(false) {
                        0u8
                    } else {
                        1u8
                    };
                    mask.extend(std::iter::repeat_n(ignore, mv.clips_per_view * per));
                }
            }
        }
        let m = Tensor::from_vec(mask, (b * v, n), &Device::Cpu)?;
        let keep = (1.0 - m.to_dtype(DType::F32)?)?;
        x = x.broadcast_mul(&keep.unsqueeze(2)?)?;
        kpm = Some(m.to_device(device)?);
    }
    Ok((x.to_device(device)?.to_dtype(dtype)?, kpm, v))
}

/// Builds a probe from saved tensors (e.g. the best head) for inference.
pub fn probe_from_tensors(
    cfg: &ProbeConfig,
    tensors: TensorMap,
    dtype: DType,
    device: &Device,
) -> Result<AttentiveProbe> {
    let t: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?.to_device(device)?)))
        .collect::<Result<_>>()?;
    Ok(AttentiveProbe::new(
        cfg,
        VarBuilder::from_tensors(t, dtype, device),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use echojepa::config::SlotConfig;

    fn cfg(kind: ProbeKind, outputs: usize, slots: Option<SlotConfig>) -> ProbeConfig {
        ProbeConfig {
            kind,
            embed_dim: 16,
            num_heads: 2,
            depth: 2,
            num_outputs: outputs,
            mlp_ratio: 4.0,
            slots,
        }
    }

    fn spec(lr: f64) -> HeadSpec {
        HeadSpec {
            lr,
            start_lr: lr,
            final_lr: 0.0,
            warmup_epochs: 0.0,
            weight_decay: 0.01,
            final_weight_decay: 0.01,
        }
    }

    /// A two-view regressor (one clip per view, factorized slots) and its view dropout `p`.
    fn two_views(miss_prob: f64) -> (ProbeConfig, MultiView) {
        let c = cfg(
            ProbeKind::Regressor,
            1,
            Some(SlotConfig {
                num_views: 2,
                clips_per_view: 1,
                use_factorized: true,
            }),
        );
        let mv = MultiView {
            views: 2,
            clips_per_view: 1,
            miss_prob,
            min_present: 1,
        };
        (c, mv)
    }

    /// Features whose class is written in a few token directions: a probe must learn it.
    fn toy(n: usize, classes: usize, seed: u64) -> Vec<Sample> {
        let mut rng = crate::rng::rng_for(&[seed]);
        (0..n)
            .map(|i| {
                let c = i % classes;
                let mut v: Vec<f32> = (0..8 * 16)
                    .map(|_| rng.sample::<f32, _>(StandardNormal) * 0.5)
                    .collect();
                for t in 0..8 {
                    v[t * 16 + c] += 2.0;
                }
                Sample {
                    feats: Tensor::from_vec(v, (1, 8, 16), &Device::Cpu).unwrap(),
                    label: c as f64,
                    present: None,
                    id: format!("s{i}"),
                }
            })
            .collect()
    }

    #[test]
    fn heads_learn_a_separable_task_and_lr_matters() {
        let train = toy(60, 3, 1);
        let val = toy(30, 3, 2);
        let c = cfg(ProbeKind::Classifier, 3, None);
        let mut t = ProbeTrainer::new_on(
            Rc::new(crate::dist::SingleProcess),
            c,
            vec![spec(3e-3), spec(0.0)],
            None,
            train.len(),
            8,
            4,
            0,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        for e in 0..4 {
            t.train_epoch(&train, e).unwrap();
        }
        let acc = |hi| {
            let ev = t.evaluate(hi, &val).unwrap();
            ev.pred
                .iter()
                .zip(&val)
                .filter(|(p, s)| **p == s.label)
                .count() as f64
                / val.len() as f64
        };
        let (good, frozen) = (acc(0), acc(1));
        assert!(good > 0.9, "trained head accuracy {good}");
        assert!(frozen < 0.7, "lr 0 head stays near chance: {frozen}");
    }

    /// Three thread-ranks with 4 samples each follow one process with 12, over 25 samples: the
    /// last global batch holds one sample, so two ranks have none in that step.
    fn assert_ranks_follow_one_process(
        c: ProbeConfig,
        multi: Option<MultiView>,
        train: Vec<Sample>,
    ) {
        use crate::dist::collective::LocalGroup;
        assert_eq!(train.len(), 25);
        let run = move |coll: Rc<dyn Collective>, batch: usize| {
            let mut t = ProbeTrainer::new_on(
                coll,
                c.clone(),
                vec![spec(3e-3), spec(1e-3)],
                multi,
                train.len(),
                batch,
                3,
                0,
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
            let losses: Vec<Vec<f64>> = (0..3).map(|e| t.train_epoch(&train, e).unwrap()).collect();
            let w: Vec<f32> = (0..2)
                .flat_map(|hi| {
                    let mut m: Vec<_> = t.head_tensors(hi).unwrap().into_iter().collect();
                    m.sort_by(|a, b| a.0.cmp(&b.0));
                    m.into_iter()
                        .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                })
                .collect();
            (losses, w)
        };
        let (one_losses, one_w) = run(Rc::new(crate::dist::SingleProcess), 12);
        let handles: Vec<_> = LocalGroup::new(3)
            .into_iter()
            .map(|g| {
                let run = run.clone();
                std::thread::spawn(move || run(Rc::new(g), 4))
            })
            .collect();
        let ranks: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (losses, w) in &ranks {
            assert_eq!(w, &ranks[0].1, "ranks hold different weights");
            for (a, b) in losses.iter().flatten().zip(one_losses.iter().flatten()) {
                assert!(
                    (a - b).abs() < 1e-5 * b.abs().max(1.0),
                    "{losses:?} vs {one_losses:?}"
                );
            }
            let worst = w
                .iter()
                .zip(&one_w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "largest weight difference {worst}");
        }
        assert!(one_w.len() > 100);
        assert!(one_w.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn ranks_sharing_each_batch_follow_one_process() {
        assert_ranks_follow_one_process(cfg(ProbeKind::Classifier, 3, None), None, toy(25, 3, 1));
    }

    /// Multi-view: the view dropout drawn for the global batch gives every rank's samples the
    /// draws one process gives them.
    #[test]
    fn ranks_with_view_dropout_follow_one_process() {
        let (c, mv) = two_views(0.5);
        let train: Vec<Sample> = toy(25, 3, 4)
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s.feats = s.feats.reshape((1, 8, 16)).unwrap();
                s.label = (i as f64 * 0.37).sin();
                s.present = Some(vec![true, i % 4 != 1]);
                s
            })
            .collect();
        assert_ranks_follow_one_process(c, Some(mv), train);
    }

    #[test]
    fn init_is_seeded_and_follows_reference_rules() {
        let c = cfg(
            ProbeKind::Regressor,
            1,
            Some(SlotConfig {
                num_views: 2,
                clips_per_view: 2,
                use_factorized: true,
            }),
        );
        let a = probe_init(&c, 5).unwrap();
        let b = probe_init(&c, 5).unwrap();
        let v = |m: &TensorMap, k: &str| m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&a, "pooler.query_tokens"), v(&b, "pooler.query_tokens"));
        assert!(
            v(&a, "regressor.bias")
                .iter()
                .all(|x| x.abs() <= 0.25 + 1e-6),
            "U(+-1/sqrt(16))"
        );
        assert!(
            v(&a, "pooler.cross_attention_block.norm1.weight")
                .iter()
                .all(|x| *x == 1.0)
        );
        assert!(
            v(&a, "view_embed.weight").iter().any(|x| x.abs() > 0.5),
            "N(0,1)"
        );
    }

    #[test]
    fn view_dropout_keeps_min_present_and_masks_missing_views() {
        let (c, mv) = two_views(0.9);
        let t = ProbeTrainer::new_on(
            Rc::new(crate::dist::SingleProcess),
            c,
            vec![spec(1e-3)],
            Some(mv),
            4,
            2,
            1,
            0,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let mut rng = crate::rng::rng_for(&[1]);
        let mut dropped = 0;
        for _ in 0..200 {
            let p = t.dropout_views(&[true, true], &mut rng);
            assert!(p.iter().filter(|x| **x).count() >= 1);
            dropped += p.iter().filter(|x| !**x).count();
        }
        assert!(dropped > 100, "views are dropped at p=0.9: {dropped}");
        let s = Sample {
            feats: Tensor::ones((1, 6, 16), DType::F32, &Device::Cpu).unwrap(),
            label: 0.0,
            present: Some(vec![true, false]),
            id: "x".into(),
        };
        let (x, kpm, _) = t.assemble(&[&s], std::slice::from_ref(&s.present)).unwrap();
        let kpm = kpm.unwrap().to_vec2::<u8>().unwrap();
        assert_eq!(kpm[0], vec![0, 0, 0, 1, 1, 1]);
        let x = x.sum(2).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(x[0][3], 0.0, "missing view features are zeroed");
        // a missing view's features cannot change the output
        let mut s2 = s.clone();
        let mut v = vec![1f32; 96];
        for x in v.iter_mut().skip(48) {
            *x = 7.0;
        }
        s2.feats = Tensor::from_vec(v, (1, 6, 16), &Device::Cpu).unwrap();
        let e1 = t.evaluate(0, &[s]).unwrap();
        let e2 = t.evaluate(0, &[s2]).unwrap();
        assert!((e1.pred[0] - e2.pred[0]).abs() < 1e-5);
    }

    #[test]
    fn smooth_l1_matches_huber() {
        let d = Tensor::new(&[0.5f32, -2.0], &Device::Cpu).unwrap();
        let l = smooth_l1(&d).unwrap().to_scalar::<f32>().unwrap();
        assert!((l - (0.125 + 1.5) / 2.0).abs() < 1e-6);
    }
}
