//! The trainable V-JEPA model: online encoder and predictor as `Var`s in one `VarMap`
//! (`encoder.*`, `predictor.*`), the EMA target encoder as plain f32 tensors, the seeded
//! reference initialisation, loading from official `.pt` or native checkpoints, and the
//! objective (L1 between predictions and the layer-normed target at the masked tokens).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use echojepa::bundle::Provenance;
use echojepa::checkpoint::{
    NativeCheckpoint, PtFile, TensorMap, check_tensors, expected_tensors, native_paths,
};
use echojepa::config::PROBE_LN_EPS;
use echojepa::encoder::{VisionTransformer, gather_tokens};
use echojepa::nn::layer_norm_no_affine;
use echojepa::predictor::Predictor;
use echojepa::{EncoderConfig, PredictorConfig};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::masks::BatchMasks;

/// Where initial weights come from.
#[derive(Debug, Clone)]
pub enum InitSource {
    /// The reference initialisation, seeded.
    Random { seed: u64, zero_mask_tokens: bool },
    /// An official `.pt` or a native checkpoint (`encoder`, `target_encoder`, `predictor`).
    Checkpoint(PathBuf),
}

/// The reference initialisation of a freshly built model: trunc-normal(0.02) weights, zero
/// biases, unit LayerNorm weights, zero mask tokens; then `attn.proj.weight` and
/// `mlp.fc2.weight` of block `l` (1-based) divided by `sqrt(2 l)`.
pub fn reference_init(
    expected: &[(String, Vec<usize>)],
    seed: u64,
    zero_mask_tokens: bool,
) -> Result<TensorMap> {
    let mut rng = crate::rng::rng_for(&[seed, 0x1417]);
    let mut out = HashMap::new();
    for (name, shape) in expected {
        let n: usize = shape.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let is_norm = name.contains("norm") && leaf == "weight";
        let values: Vec<f32> = if leaf == "bias" {
            vec![0.0; n]
        } else if is_norm {
            vec![1.0; n]
        } else if name.contains("mask_tokens") && zero_mask_tokens {
            vec![0.0; n]
        } else {
            let mut scale = 0.02f64;
            if let Some(l) = block_index(name)
                && (name.ends_with("attn.proj.weight") || name.ends_with("mlp.fc2.weight"))
            {
                scale /= (2.0 * (l + 1) as f64).sqrt();
            }
            (0..n)
                .map(|_| {
                    // truncated at ±2 (absolute), as trunc_normal_(std=0.02, a=-2, b=2)
                    let v: f64 = rng.sample::<f64, _>(StandardNormal) * scale;
                    v.clamp(-2.0, 2.0) as f32
                })
                .collect()
        };
        out.insert(
            name.clone(),
            Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?,
        );
    }
    Ok(out)
}

/// Block index of `blocks.{i}.` / `predictor_blocks.{i}.` names.
fn block_index(name: &str) -> Option<usize> {
    let rest = name
        .strip_prefix("blocks.")
        .or_else(|| name.strip_prefix("predictor_blocks."))?;
    rest.split('.').next()?.parse().ok()
}

/// Encoder / target / predictor tensors read from a checkpoint file.
pub struct InitTensors {
    pub encoder: TensorMap,
    pub target: TensorMap,
    pub predictor: Option<TensorMap>,
    pub source: PathBuf,
    /// Where the checkpoint's training data came from.
    pub provenance: Provenance,
}

/// Reads the three parts from an official `.pt` (keys `encoder`, `target_encoder`,
/// `predictor`) or a native checkpoint (`x.safetensors` + `x.json`).
pub fn read_init(path: &Path) -> Result<InitTensors> {
    let (st, js) = native_paths(path);
    let is_native = st.exists() && js.exists() && !path.to_string_lossy().ends_with(".pt");
    if is_native {
        let ck = NativeCheckpoint::load(path, &Device::Cpu)
            .with_context(|| format!("cannot load native checkpoint {}", path.display()))?;
        let enc = ck.part("encoder");
        let tgt = ck.part("target_encoder");
        let (encoder, target) = match (enc.is_empty(), tgt.is_empty()) {
            (false, false) => (enc, tgt),
            (false, true) => (enc.clone(), enc),
            (true, false) => (tgt.clone(), tgt),
            (true, true) => bail!("{}: no encoder or target_encoder tensors", st.display()),
        };
        let pred = ck.part("predictor");
        return Ok(InitTensors {
            encoder,
            target,
            predictor: (!pred.is_empty()).then_some(pred),
            source: st,
            provenance: ck.config.provenance(),
        });
    }
    let pt =
        PtFile::open(path).with_context(|| format!("cannot open checkpoint {}", path.display()))?;
    let keys = pt.keys();
    let has = |k: &str| keys.iter().any(|x| x == k);
    let encoder = if has("encoder") {
        pt.state_dict(&["encoder"], &Device::Cpu)?
    } else if has("target_encoder") {
        pt.state_dict(&["target_encoder"], &Device::Cpu)?
    } else {
        bail!(
            "{}: no `encoder` or `target_encoder` entry (found: {})",
            path.display(),
            keys.join(", ")
        );
    };
    let target = if has("target_encoder") {
        pt.state_dict(&["target_encoder"], &Device::Cpu)?
    } else {
        encoder.clone()
    };
    let predictor = if has("predictor") {
        Some(pt.state_dict(&["predictor"], &Device::Cpu)?)
    } else {
        None
    };
    Ok(InitTensors {
        encoder,
        target,
        predictor,
        source: path.to_path_buf(),
        provenance: crate::provenance::official(path),
    })
}

/// The names and shapes the encoder and predictor need.
pub fn expected_encoder(cfg: &EncoderConfig) -> Result<Vec<(String, Vec<usize>)>> {
    Ok(expected_tensors(|vb| VisionTransformer::new(cfg, vb))?)
}

pub fn expected_predictor(cfg: &PredictorConfig) -> Result<Vec<(String, Vec<usize>)>> {
    Ok(expected_tensors(|vb| Predictor::new(cfg, vb))?)
}

/// Online encoder + predictor (trainable), target encoder (EMA).
pub struct Jepa {
    pub varmap: VarMap,
    pub encoder: VisionTransformer,
    pub predictor: Predictor,
    pub enc_cfg: EncoderConfig,
    pub pred_cfg: PredictorConfig,
    /// EMA target encoder weights, f32, names without prefix.
    pub target: TensorMap,
    pub dtype: DType,
    pub device: Device,
    /// What the weights were initialised from (for checkpoint notes).
    pub init_note: String,
    /// Provenance of the checkpoint the weights started from (none: random initialisation).
    pub init_provenance: Option<Provenance>,
}

/// One step's loss terms.
#[derive(Debug)]
pub struct LossOut {
    /// Mean over mask configs (the optimised scalar, with graph).
    pub loss: Tensor,
    pub per_mask: Vec<f32>,
}

impl Jepa {
    pub fn new(
        enc_cfg: &EncoderConfig,
        pred_cfg: &PredictorConfig,
        init: &InitSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let exp_enc = expected_encoder(enc_cfg)?;
        let exp_pred = expected_predictor(pred_cfg)?;
        let mut init_provenance = None;
        let (enc, target, pred, note) = match init {
            InitSource::Random {
                seed,
                zero_mask_tokens,
            } => {
                let enc = reference_init(&exp_enc, *seed, *zero_mask_tokens)?;
                let pred = reference_init(&exp_pred, seed.wrapping_add(1), *zero_mask_tokens)?;
                (enc.clone(), enc, pred, format!("random init (seed {seed})"))
            }
            InitSource::Checkpoint(path) => {
                let t = read_init(path)?;
                check_tensors(&t.source, &t.encoder, &exp_enc)
                    .with_context(|| format!("encoder of {}", t.source.display()))?;
                check_tensors(&t.source, &t.target, &exp_enc)
                    .with_context(|| format!("target_encoder of {}", t.source.display()))?;
                let (pred, pnote) = match t.predictor {
                    Some(p) => {
                        check_tensors(&t.source, &p, &exp_pred)
                            .with_context(|| format!("predictor of {}", t.source.display()))?;
                        (p, "")
                    }
                    None => (
                        reference_init(&exp_pred, 1, true)?,
                        " (no predictor in it: predictor randomly initialised)",
                    ),
                };
                init_provenance = Some(t.provenance);
                (
                    t.encoder,
                    t.target,
                    pred,
                    format!("{}{pnote}", t.source.display()),
                )
            }
        };
        let mut jepa = Self::from_parts(enc_cfg, pred_cfg, enc, target, pred, dtype, device, note)?;
        jepa.init_provenance = init_provenance;
        Ok(jepa)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        enc_cfg: &EncoderConfig,
        pred_cfg: &PredictorConfig,
        enc: TensorMap,
        target: TensorMap,
        pred: TensorMap,
        dtype: DType,
        device: &Device,
        init_note: String,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| anyhow!("VarMap lock poisoned"))?;
            for (prefix, map) in [("encoder", &enc), ("predictor", &pred)] {
                for (k, t) in map {
                    let t = t.to_dtype(dtype)?.to_device(device)?;
                    data.insert(format!("{prefix}.{k}"), Var::from_tensor(&t)?);
                }
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, dtype, device);
        let encoder = VisionTransformer::new(enc_cfg, vb.pp("encoder"))?;
        let predictor = Predictor::new(pred_cfg, vb.pp("predictor"))?;
        let n_expected = expected_encoder(enc_cfg)?.len() + expected_predictor(pred_cfg)?.len();
        let n_vars = varmap.all_vars().len();
        if n_vars != n_expected {
            bail!("internal: {n_vars} trainable tensors but the model needs {n_expected}");
        }
        let target = target
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?)))
            .collect::<Result<TensorMap>>()?;
        Ok(Self {
            varmap,
            encoder,
            predictor,
            enc_cfg: enc_cfg.clone(),
            pred_cfg: pred_cfg.clone(),
            target,
            dtype,
            device: device.clone(),
            init_note,
            init_provenance: None,
        })
    }

    /// Trainable variables by name (`encoder.…`, `predictor.…`).
    pub fn named_vars(&self) -> Result<Vec<(String, Var)>> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| anyhow!("VarMap lock poisoned"))?;
        Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// The target encoder as a model (compute dtype; no gradient tracking).
    pub fn target_model(&self) -> Result<VisionTransformer> {
        let tensors: HashMap<String, Tensor> = self
            .target
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(self.dtype)?)))
            .collect::<Result<_>>()?;
        let vb = VarBuilder::from_tensors(tensors, self.dtype, &self.device);
        Ok(VisionTransformer::new(&self.enc_cfg, vb)?)
    }

    /// Layer-normed (no affine, eps 1e-5) target-encoder tokens of the full clip, detached.
    pub fn targets(&self, clips: &Tensor) -> Result<Tensor> {
        let h = self.target_model()?.forward(clips)?;
        Ok(layer_norm_no_affine(&h, PROBE_LN_EPS)?.detach())
    }

    /// The objective: per mask config, encode the context, predict the targets, and take
    /// `mean(|pred - h|^p) / p` at the target tokens; average over configs.
    pub fn loss(
        &self,
        clips: &Tensor,
        h: &Tensor,
        masks: &[BatchMasks],
        loss_exp: f64,
    ) -> Result<LossOut> {
        let mut terms = Vec::with_capacity(masks.len());
        let mut per_mask = Vec::with_capacity(masks.len());
        for m in masks {
            let me = m.enc_tensor(&self.device)?;
            let mp = m.pred_tensor(&self.device)?;
            let z = self.encoder.forward_masked(clips, &me)?;
            // mask_index = frames-per-clip group (one group here), as in the reference
            let p = self
                .predictor
                .forward(&z, &me, &mp, 0)?
                .to_dtype(DType::F32)?;
            let tgt = gather_tokens(h, &mp)?;
            let diff = (p - tgt)?.abs()?;
            let diff = if loss_exp == 1.0 {
                diff
            } else {
                diff.powf(loss_exp)?
            };
            let l = (diff.mean_all()? / loss_exp)?;
            per_mask.push(l.to_scalar::<f32>()?);
            terms.push(l);
        }
        let n = terms.len() as f64;
        let loss = (Tensor::stack(&terms, 0)?.sum_all()? / n)?;
        Ok(LossOut { loss, per_mask })
    }

    /// EMA update `θ_tgt ← m θ_tgt + (1 − m) θ_enc` from the f32 online weights.
    pub fn ema_update(
        &mut self,
        momentum: f64,
        online: impl Fn(&str) -> Option<Tensor>,
    ) -> Result<()> {
        for (k, t) in self.target.iter_mut() {
            let o = online(&format!("encoder.{k}"))
                .with_context(|| format!("EMA: no online tensor for `encoder.{k}`"))?;
            *t = ((&*t * momentum)? + (o.to_dtype(DType::F32)? * (1.0 - momentum))?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pretrain::MaskCfg;
    use crate::masks::{Grid, MultiBlockMasker};

    fn tiny() -> (EncoderConfig, PredictorConfig) {
        let mut enc = EncoderConfig::custom(48, 2, 4, 2.0);
        enc.name = "custom".into();
        let mut pred = PredictorConfig::reference(48, 32, 4);
        pred.predictor_embed_dim = 24;
        pred.depth = 1;
        pred.num_heads = 4;
        pred.mlp_hidden = 48;
        (enc, pred)
    }

    fn mask_cfg(ss: f64, blocks: usize) -> MaskCfg {
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

    #[test]
    fn reference_init_statistics_and_rescaling() {
        let (enc, _) = tiny();
        let exp = expected_encoder(&enc).unwrap();
        let t = reference_init(&exp, 3, true).unwrap();
        let std = |name: &str| {
            let v = t[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let m = v.iter().sum::<f32>() / v.len() as f32;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
        };
        assert!((std("blocks.0.attn.qkv.weight") - 0.02).abs() < 0.002);
        // block 2 (1-based): /sqrt(4)
        assert!((std("blocks.1.mlp.fc2.weight") - 0.01).abs() < 0.0015);
        assert_eq!(t["norm.weight"].to_vec1::<f32>().unwrap(), vec![1.0; 48]);
        assert_eq!(
            t["blocks.0.attn.qkv.bias"]
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let again = reference_init(&exp, 3, true).unwrap();
        assert_eq!(
            again["patch_embed.proj.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            t["patch_embed.proj.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            "seeded"
        );
    }

    /// The pitfall of DESIGN.md: fused candle ops drop gradients. Every trainable tensor must
    /// receive a non-zero gradient (except the mask tokens the reference never uses).
    #[test]
    fn every_parameter_gets_a_gradient() {
        let (enc, pred) = tiny();
        let init = InitSource::Random {
            seed: 0,
            zero_mask_tokens: false,
        };
        let j = Jepa::new(&enc, &pred, &init, DType::F32, &Device::Cpu).unwrap();
        let clips = Tensor::randn(0f32, 1.0, (2, 3, 4, 32, 32), &Device::Cpu).unwrap();
        let grid = Grid::new(4, 32, 2, 16);
        let maskers = [
            MultiBlockMasker::new(mask_cfg(0.25, 2), grid, 0),
            MultiBlockMasker::new(mask_cfg(0.5, 1), grid, 1),
        ];
        let masks: Vec<_> = maskers.iter().map(|m| m.sample(2, 0, 0).unwrap()).collect();
        let h = j.targets(&clips).unwrap();
        let out = j.loss(&clips, &h, &masks, 1.0).unwrap();
        assert!(out.loss.to_scalar::<f32>().unwrap() > 0.0);
        let grads = out.loss.backward().unwrap();
        let mut checked = 0;
        for (name, var) in j.named_vars().unwrap() {
            let unused_token = name.starts_with("predictor.mask_tokens.") && !name.ends_with(".0");
            let g = grads.get(var.as_tensor());
            if unused_token {
                assert!(g.is_none(), "{name} should not be used");
                continue;
            }
            let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
            checked += 1;
        }
        assert!(checked > 30, "{checked}");
    }

    #[test]
    fn ema_moves_the_target_towards_the_online_encoder() {
        let (enc, pred) = tiny();
        let init = InitSource::Random {
            seed: 1,
            zero_mask_tokens: true,
        };
        let mut j = Jepa::new(&enc, &pred, &init, DType::F32, &Device::Cpu).unwrap();
        let before = j.target["norm.bias"].to_vec1::<f32>().unwrap();
        assert_eq!(before, vec![0.0; 48]);
        j.ema_update(0.75, |_| None).unwrap_err();
        let ones = |_: &str| Some(Tensor::ones(48, DType::F32, &Device::Cpu).unwrap());
        // only 1-D tensors in this closure; norm.bias becomes 0.75*0 + 0.25*1
        let mut t = j.target.clone();
        t.retain(|k, _| k == "norm.bias");
        j.target = t;
        j.ema_update(0.75, ones).unwrap();
        assert_eq!(
            j.target["norm.bias"].to_vec1::<f32>().unwrap(),
            vec![0.25; 48]
        );
    }
}
