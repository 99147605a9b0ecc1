//! [`EdgeModel`]: what a cart runs. It is built only from a [`VerifiedBundle`] and reads the
//! weights through [`VerifiedBundle::read_weights`], so no byte of an unsigned or tampered file
//! reaches the model. Every tensor's stored precision is checked against the manifest, every
//! tensor in the file must be used, and the heads report classes and de-normalised targets with
//! their units.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::QuantError;
use super::encoder::{GgufSource, QuantizedEncoder};
use super::gguf::{GgufWeights, precision_of};
use crate::bundle::{HeadSpec, Manifest, Precision, PublicKey, VerifiedBundle, verify_bundle};
use crate::config::ProbeKind;
use crate::probe::AttentiveProbe;

/// One head's output for one clip.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadOutput {
    /// A classifier: probabilities in class order, the top class and its probability.
    Class {
        head: String,
        probabilities: Vec<f32>,
        top: usize,
        label: String,
        confidence: f32,
    },
    /// A regressor: de-normalised values with units.
    Targets {
        head: String,
        values: Vec<TargetValue>,
    },
}

/// A de-normalised regression output.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TargetValue {
    pub name: String,
    pub unit: String,
    pub value: f64,
}

/// A loaded head.
#[derive(Debug, Clone)]
struct Head {
    spec: HeadSpec,
    probe: AttentiveProbe,
}

/// Encoder + heads of a verified bundle.
#[derive(Debug)]
pub struct EdgeModel {
    manifest: Manifest,
    bundle_id: String,
    signer: String,
    encoder: QuantizedEncoder,
    heads: Vec<Head>,
    /// LV decoder `(weight [W, D], bias [W])`, f32.
    lv: Option<(Tensor, Tensor)>,
}

/// The LV decoder's probabilities `[B][tokens · width]` for tokens `[B, N, D]`, weight
/// `[width, D]` and bias `[width]`.
pub fn lv_head_probabilities(
    tokens: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Vec<Vec<f32>>, QuantError> {
    let x = tokens.to_dtype(DType::F32)?;
    let w = weight.to_dtype(DType::F32)?;
    let b = bias.to_dtype(DType::F32)?;
    let logits = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
    Ok(candle_nn::ops::sigmoid(&logits)?
        .flatten_from(1)?
        .to_vec2::<f32>()?)
}

/// Prefix of the encoder's tensors in a bundle's weights file.
pub const ENCODER_PREFIX: &str = "encoder";

/// Prefix of head `name`'s tensors in a bundle's weights file.
pub fn probe_prefix(head: &str) -> String {
    format!("probe.{head}")
}

/// Tensor prefix of the LV cavity decoder in a bundle's weights.
pub const LV_PREFIX: &str = "lv_head";

impl EdgeModel {
    /// Verifies the bundle at `dir` against `trusted` keys, then loads it.
    pub fn open(dir: impl AsRef<Path>, trusted: &[PublicKey]) -> Result<Self, QuantError> {
        let b = verify_bundle(dir, trusted)?;
        Self::load(&b)
    }

    /// Loads a verified bundle.
    pub fn load(bundle: &VerifiedBundle) -> Result<Self, QuantError> {
        let m = bundle.manifest();
        let bytes = bundle.read_weights()?;
        let w = GgufWeights::read(&bytes, &m.weights)?;
        drop(bytes);

        // The manifest's per-layer precision must be what is stored.
        let listed: HashMap<&str, Precision> = m
            .quantization
            .layers
            .iter()
            .map(|l| (l.tensor.as_str(), l.precision))
            .collect();
        for (name, p) in &listed {
            let stored = precision_of(w.get(name)?).ok_or_else(|| QuantError::Gguf {
                file: m.weights.clone(),
                reason: format!("tensor `{name}` has an unsupported type"),
            })?;
            if stored != *p {
                return Err(QuantError::PrecisionMismatch {
                    tensor: name.to_string(),
                    manifest: *p,
                    stored,
                });
            }
        }
        let mut used: HashSet<String> = QuantizedEncoder::tensor_names(&m.encoder)
            .into_iter()
            .map(|n| format!("{ENCODER_PREFIX}.{n}"))
            .collect();
        let encoder = QuantizedEncoder::load(
            &m.encoder,
            &GgufSource {
                weights: &w,
                prefix: ENCODER_PREFIX,
            },
        )?;

        let mut heads = Vec::new();
        for spec in &m.heads {
            let prefix = probe_prefix(&spec.name);
            if spec.tensor_prefix != prefix {
                return Err(QuantError::Unsupported(format!(
                    "head `{}`: tensor prefix `{}` (this build reads `{prefix}`)",
                    spec.name, spec.tensor_prefix
                )));
            }
            let tensors = w.f32_tensors(&prefix)?;
            used.extend(tensors.keys().map(|k| format!("{prefix}.{k}")));
            let path = Path::new(&m.weights).join(&prefix);
            let cfg = spec.probe.clone();
            let probe =
                crate::checkpoint::load_strict(&path, tensors, DType::F32, &Device::Cpu, |vb| {
                    AttentiveProbe::new(&cfg, vb)
                })?;
            heads.push(Head {
                spec: spec.clone(),
                probe,
            });
        }
        let lv = match &m.lv_segmentation {
            Some(spec) => {
                if spec.tensor_prefix != LV_PREFIX {
                    return Err(QuantError::Unsupported(format!(
                        "lv_segmentation: tensor prefix `{}` (this build reads `{LV_PREFIX}`)",
                        spec.tensor_prefix
                    )));
                }
                let mut t = w.f32_tensors(LV_PREFIX)?;
                used.extend(t.keys().map(|k| format!("{LV_PREFIX}.{k}")));
                let (Some(weight), Some(bias)) = (t.remove("weight"), t.remove("bias")) else {
                    return Err(QuantError::Unsupported(format!(
                        "lv_segmentation: `{LV_PREFIX}.weight` and `{LV_PREFIX}.bias` are needed"
                    )));
                };
                let e = &m.encoder;
                let width = e.tubelet_size * e.patch_size * e.patch_size;
                if weight.dims() != [width, e.embed_dim] || bias.dims() != [width] {
                    return Err(QuantError::Unsupported(format!(
                        "lv_segmentation: weight {:?} and bias {:?}, expected [{width}, {}] and [{width}]",
                        weight.dims(),
                        bias.dims(),
                        e.embed_dim
                    )));
                }
                Some((weight, bias))
            }
            None => None,
        };
        let mut extra: Vec<&str> = w.names().filter(|n| !used.contains(*n)).collect();
        if !extra.is_empty() {
            extra.sort_unstable();
            return Err(QuantError::UnexpectedTensors {
                file: m.weights.clone(),
                names: extra.join(", "),
            });
        }
        tracing::info!(
            model = %m.model_id,
            version = %m.model_version,
            int8_layers = encoder.linears().iter().filter(|l| l.precision() == Precision::Q8_0).count(),
            "edge model loaded"
        );
        Ok(Self {
            manifest: m.clone(),
            bundle_id: bundle.manifest_sha256().to_string(),
            signer: bundle.signer().to_string(),
            encoder,
            heads,
            lv,
        })
    }

    /// LV cavity probabilities `[B][tokens · tubelet · patch²]` (sigmoid of the decoder's
    /// logits, laid out as [`crate::lv::TokenLayout`] reads them), when the bundle has the
    /// decoder.
    pub fn lv_probabilities(&self, tokens: &Tensor) -> Result<Option<Vec<Vec<f32>>>, QuantError> {
        let Some((w, b)) = &self.lv else {
            return Ok(None);
        };
        lv_head_probabilities(tokens, w, b).map(Some)
    }

    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// sha256 of the manifest: identifies exactly this bundle.
    pub fn bundle_id(&self) -> &str {
        &self.bundle_id
    }

    /// The trusted key that signed the bundle (`` `name` (id …) ``).
    pub fn signer(&self) -> &str {
        &self.signer
    }

    pub fn encoder(&self) -> &QuantizedEncoder {
        &self.encoder
    }

    /// Head specs in output order.
    pub fn head_specs(&self) -> impl Iterator<Item = &HeadSpec> {
        self.heads.iter().map(|h| &h.spec)
    }

    /// `[B, C, T, H, W]` → tokens `[B, N, D]`.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor, QuantError> {
        self.encoder.forward(video)
    }

    /// Raw head outputs `[B, outputs]` (logits, or z-scores for regressors), head by head.
    pub fn head_logits(&self, tokens: &Tensor) -> Result<Vec<Tensor>, QuantError> {
        self.heads
            .iter()
            .map(|h| Ok(h.probe.forward(tokens, None)?))
            .collect()
    }

    /// Per clip, per head: classes with probabilities, or de-normalised targets.
    pub fn run_heads(&self, tokens: &Tensor) -> Result<Vec<Vec<HeadOutput>>, QuantError> {
        let b = tokens.dim(0)?;
        let mut out = vec![Vec::with_capacity(self.heads.len()); b];
        for (h, raw) in self.heads.iter().zip(self.head_logits(tokens)?) {
            let rows = match h.spec.probe.kind {
                ProbeKind::Classifier => match h.spec.temperature {
                    Some(t) if t != 1.0 => crate::probe::probabilities(&(raw / t)?)?,
                    _ => crate::probe::probabilities(&raw)?,
                },
                ProbeKind::Regressor => raw,
            }
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
            for (i, row) in rows.into_iter().enumerate() {
                out[i].push(head_output(&h.spec, row));
            }
        }
        Ok(out)
    }

    /// Encoder + heads.
    pub fn predict(&self, video: &Tensor) -> Result<Vec<Vec<HeadOutput>>, QuantError> {
        self.run_heads(&self.encode(video)?)
    }
}

fn head_output(spec: &HeadSpec, row: Vec<f32>) -> HeadOutput {
    match spec.probe.kind {
        ProbeKind::Classifier => {
            let (top, confidence) =
                row.iter()
                    .copied()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (i, p)| if p > b.1 { (i, p) } else { b },
                    );
            HeadOutput::Class {
                head: spec.name.clone(),
                label: spec.classes.get(top).cloned().unwrap_or_default(),
                probabilities: row,
                top,
                confidence,
            }
        }
        ProbeKind::Regressor => HeadOutput::Targets {
            head: spec.name.clone(),
            values: spec
                .targets
                .iter()
                .zip(row)
                .map(|(t, z)| TargetValue {
                    name: t.name.clone(),
                    unit: t.unit.clone(),
                    value: t.scaler.denormalize(z as f64),
                })
                .collect(),
        },
    }
}
