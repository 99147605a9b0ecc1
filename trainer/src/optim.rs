//! AdamW with the reference parameter groups and global-norm gradient clipping, with state that
//! can be saved and restored bit-exactly (moments, per-parameter step counts, f32 master
//! weights when the model runs in bf16).
//!
//! candle's own `AdamW` decays every variable and keeps its moments private; the reference
//! excludes biases and 1-D parameters from weight decay and a resumed run needs the moments.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// One trainable parameter and its optimizer state.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub var: Var,
    /// In the decayed group (weights with ≥ 2 dims and no `bias` in the name).
    pub decay: bool,
    /// f32 master copy when the variable itself is lower precision.
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
    /// Steps this parameter took (it skips steps where it got no gradient, as in PyTorch).
    steps: u64,
    /// Multiplies the step's learning rate (layer-wise decay in fine-tuning; 1 elsewhere).
    pub lr_scale: f64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// Whether the gradients were scaled down.
    pub clipped: bool,
    /// Parameters that received a gradient.
    pub updated: usize,
}

#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// The reference rule: `('bias' not in name) and (len(shape) != 1)` is decayed.
pub fn is_decayed(name: &str, rank: usize) -> bool {
    !name.contains("bias") && rank != 1
}

impl AdamW {
    /// Parameters sorted by name (a stable order for checkpoints).
    pub fn new(mut vars: Vec<(String, Var)>, betas: [f64; 2], eps: f64) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut params = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let t = var.as_tensor();
            let master = if t.dtype() == DType::F32 {
                None
            } else {
                Some(t.to_dtype(DType::F32)?.detach())
            };
            let m = t.zeros_like()?.to_dtype(DType::F32)?;
            let v = m.clone();
            params.push(Param {
                decay: is_decayed(&name, t.rank()),
                name,
                var,
                master,
                m,
                v,
                steps: 0,
                lr_scale: 1.0,
            });
        }
        Ok(Self {
            params,
            beta1: betas[0],
            beta2: betas[1],
            eps,
        })
    }

    /// Puts every parameter in the decayed group (the reference probes exclude nothing).
    pub fn decay_everything(&mut self) {
        for p in &mut self.params {
            p.decay = true;
        }
    }

    /// Sets each parameter's learning-rate multiplier from its name.
    pub fn set_lr_scales(&mut self, scale: impl Fn(&str) -> f64) {
        for p in &mut self.params {
            p.lr_scale = scale(&p.name);
        }
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Global L2 norm of the gradients present in `grads`.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                sq += g
                    .to_dtype(DType::F32)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f32>()? as f64;
            }
        }
        Ok(sq.sqrt())
    }

    /// One AdamW step (PyTorch semantics: decoupled decay `θ ← θ(1 − lr·wd)`, bias-corrected
    /// moments). Gradients are first scaled to at most `clip` global norm when given.
    pub fn step(
        &mut self,
        grads: &GradStore,
        lr: f64,
        wd: f64,
        clip: Option<f64>,
    ) -> Result<StepStats> {
        let grad_norm = self.grad_norm(grads)?;
        if !grad_norm.is_finite() {
            bail!("gradient norm is {grad_norm}; stopping before the weights are corrupted");
        }
        let scale = match clip {
            Some(c) if grad_norm > c => c / (grad_norm + 1e-6),
            _ => 1.0,
        };
        let (b1, b2) = (self.beta1, self.beta2);
        let mut updated = 0;
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let mut g = g.to_dtype(DType::F32)?;
            if scale != 1.0 {
                g = (g * scale)?;
            }
            p.steps += 1;
            let theta = match &p.master {
                Some(m) => m.clone(),
                None => p.var.as_tensor().detach(),
            };
            let lr = lr * p.lr_scale;
            let theta = if p.decay && wd != 0.0 {
                (theta * (1.0 - lr * wd))?
            } else {
                theta
            };
            p.m = ((&p.m * b1)? + (&g * (1.0 - b1))?)?;
            p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let bc1 = 1.0 - b1.powi(p.steps as i32);
            let bc2 = 1.0 - b2.powi(p.steps as i32);
            let denom = ((p.v.sqrt()? / bc2.sqrt())? + self.eps)?;
            let theta = (theta - ((&p.m / denom)? * (lr / bc1))?)?;
            match &mut p.master {
                Some(m) => {
                    p.var.set(&theta.to_dtype(p.var.dtype())?)?;
                    *m = theta;
                }
                None => p.var.set(&theta)?,
            }
            updated += 1;
        }
        Ok(StepStats {
            grad_norm,
            clipped: scale != 1.0,
            updated,
        })
    }

    /// The f32 value of a parameter (master copy when the variable is lower precision).
    pub fn master(&self, name: &str) -> Option<Tensor> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| match &p.master {
                Some(m) => m.clone(),
                None => p.var.as_tensor().detach(),
            })
    }

    /// Optimizer state as tensors (`{prefix}m.{name}`, `{prefix}v.{name}`, `{prefix}master.{name}`)
    /// and per-parameter step counts.
    pub fn state(&self, prefix: &str) -> (HashMap<String, Tensor>, HashMap<String, u64>) {
        let mut t = HashMap::new();
        let mut steps = HashMap::new();
        for p in &self.params {
            t.insert(format!("{prefix}m.{}", p.name), p.m.clone());
            t.insert(format!("{prefix}v.{}", p.name), p.v.clone());
            if let Some(m) = &p.master {
                t.insert(format!("{prefix}master.{}", p.name), m.clone());
            }
            steps.insert(p.name.clone(), p.steps);
        }
        (t, steps)
    }

    /// Restores what [`AdamW::state`] produced. Every parameter must be present with its shape.
    pub fn load_state(
        &mut self,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
        steps: &HashMap<String, u64>,
    ) -> Result<()> {
        for p in &mut self.params {
            let get = |kind: &str| -> Result<Tensor> {
                let key = format!("{prefix}{kind}.{}", p.name);
                let t = tensors
                    .get(&key)
                    .with_context(|| format!("optimizer state: missing tensor `{key}`"))?;
                if t.dims() != p.var.dims() {
                    bail!(
                        "optimizer state: tensor `{key}` has shape {:?}, the parameter has {:?}",
                        t.dims(),
                        p.var.dims()
                    );
                }
                Ok(t.to_dtype(DType::F32)?.to_device(p.var.device())?)
            };
            p.m = get("m")?;
            p.v = get("v")?;
            if p.master.is_some() {
                let m = get("master")?;
                p.var.set(&m.to_dtype(p.var.dtype())?)?;
                p.master = Some(m);
            }
            p.steps = *steps
                .get(&p.name)
                .with_context(|| format!("optimizer state: no step count for `{}`", p.name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(v: &[f32], shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::from_slice(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn groups_follow_the_reference_rule() {
        assert!(is_decayed("blocks.0.attn.qkv.weight", 2));
        assert!(is_decayed("mask_tokens.0", 3));
        assert!(is_decayed("patch_embed.proj.weight", 5));
        assert!(!is_decayed("blocks.0.attn.qkv.bias", 1));
        assert!(!is_decayed("norm.weight", 1));
    }

    /// Hand-computed PyTorch AdamW for two steps on a scalar-ish problem.
    #[test]
    fn matches_pytorch_adamw_formula() {
        let w = var(&[1.0, -2.0], &[1, 2]);
        let b = var(&[0.5], &[1]);
        let mut opt = AdamW::new(
            vec![
                ("lin.weight".into(), w.clone()),
                ("lin.bias".into(), b.clone()),
            ],
            [0.9, 0.999],
            1e-8,
        )
        .unwrap();
        let (lr, wd) = (0.1, 0.5);
        let mut ref_w = [1.0f64, -2.0];
        let mut ref_b = 0.5f64;
        let (mut m, mut v) = ([0f64; 3], [0f64; 3]);
        for t in 1..=2 {
            // loss = sum(w^2) + 3 b  -> grads 2w, 3
            let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap()
                + (b.as_tensor() * 3.0).unwrap().sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, lr, wd, None).unwrap();
            let g = [2.0 * ref_w[0], 2.0 * ref_w[1], 3.0];
            let bc1 = 1.0 - 0.9f64.powi(t);
            let bc2 = 1.0 - 0.999f64.powi(t);
            for i in 0..3 {
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let upd = lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + 1e-8);
                if i < 2 {
                    ref_w[i] = ref_w[i] * (1.0 - lr * wd) - upd;
                } else {
                    ref_b -= upd; // no decay on biases
                }
            }
        }
        let got_w = w
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got_b = b.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!(
                (got_w[i] as f64 - ref_w[i]).abs() < 1e-5,
                "{got_w:?} vs {ref_w:?}"
            );
        }
        assert!((got_b[0] as f64 - ref_b).abs() < 1e-5);
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let w = var(&[3.0, 4.0], &[2, 1]);
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], [0.9, 0.999], 1e-8).unwrap();
        // grad = w -> norm 5
        let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let grads = loss.backward().unwrap();
        assert!((opt.grad_norm(&grads).unwrap() - 5.0).abs() < 1e-6);
        let s = opt.step(&grads, 0.0, 0.0, Some(1.0)).unwrap();
        assert!(s.clipped);
        let (st, _) = opt.state("");
        // first moment = 0.1 * clipped grad = 0.1 * grad / 5
        let m = st["m.w"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((m[0] - 0.1 * 3.0 / 5.0).abs() < 1e-5 && (m[1] - 0.1 * 4.0 / 5.0).abs() < 1e-5);
        let s = opt.step(&grads, 0.0, 0.0, Some(10.0)).unwrap();
        assert!(!s.clipped);
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let run = |split: bool| -> Vec<f32> {
            let w = var(&[1.0, 2.0, 3.0], &[3, 1]);
            let mut opt = AdamW::new(vec![("w".into(), w.clone())], [0.9, 0.999], 1e-8).unwrap();
            for i in 0..6 {
                if split && i == 3 {
                    let (t, s) = opt.state("opt.");
                    let snapshot = w.as_tensor().copy().unwrap();
                    let w2 = Var::from_tensor(&snapshot).unwrap();
                    let mut fresh =
                        AdamW::new(vec![("w".into(), w2.clone())], [0.9, 0.999], 1e-8).unwrap();
                    fresh.load_state("opt.", &t, &s).unwrap();
                    opt = fresh;
                    // continue with the restored variable
                    return continue_from(opt, w2, 3);
                }
                let loss = w.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                opt.step(&g, 0.01, 0.1, None).unwrap();
            }
            w.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
        };
        fn continue_from(mut opt: AdamW, w: Var, from: usize) -> Vec<f32> {
            for _ in from..6 {
                let loss = w.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                opt.step(&g, 0.01, 0.1, None).unwrap();
            }
            w.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
        }
        assert_eq!(run(false), run(true));
    }

    #[test]
    fn bf16_parameters_keep_an_f32_master() {
        let w =
            Var::from_tensor(&Tensor::ones((4, 4), DType::BF16, &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], [0.9, 0.999], 1e-8).unwrap();
        // tiny updates (1e-5 relative) vanish in bf16 but must accumulate in the master
        for _ in 0..10 {
            let loss = w
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            opt.step(&g, 1e-5, 0.0, None).unwrap();
        }
        let master = opt
            .master("w")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((master[0] - (1.0 - 1e-4)).abs() < 1e-6, "{}", master[0]);
        assert_eq!(w.dtype(), DType::BF16);
    }

    #[test]
    fn missing_state_is_an_error_naming_the_tensor() {
        let w = var(&[1.0], &[1, 1]);
        let mut opt = AdamW::new(vec![("enc.w".into(), w)], [0.9, 0.999], 1e-8).unwrap();
        let e = opt
            .load_state("opt.", &HashMap::new(), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("opt.m.enc.w"), "{e}");
    }
}
