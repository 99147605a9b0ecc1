//! The int8 encoder: the same architecture and tensor names as [`crate::encoder`], run on the
//! packed GEMM kernels of `echojepa-kernels` with per-layer precision (int8 or f32) as the
//! bundle's manifest chose it. Activations stay f32 row-major `tokens × width` slices; each
//! block is `LN → qkv → RoPE → attention → proj (+=) → LN → fc1+GELU → fc2 (+=)` with the bias,
//! GELU and residual adds fused into the GEMM stores.
//!
//! RoPE, attention and LayerNorm come from `echojepa-kernels` (the slice versions of the helpers
//! in [`crate::rope`] and [`crate::nn`]); a test checks the whole encoder against
//! [`crate::encoder::VisionTransformer`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use echojepa_kernels::{
    ActivationRange, Epilogue, PackedF32Linear, PackedInt8Linear, PackedLinear,
};

use super::QuantError;
use super::gguf::{GgufWeights, quantize_q8_0_rows};
use crate::bundle::Precision;
use crate::config::EncoderConfig;

/// Where the encoder's weights come from.
pub trait WeightSource {
    /// Weight `name` (`[out, in]`, the patch weight flattened to 2-D) as f32, with the precision
    /// the layer must run at. Q8_0 weights are returned dequantized (exact multiples of the
    /// per-row scale).
    fn weight(&self, name: &str, shape: [usize; 2]) -> Result<(Vec<f32>, Precision), QuantError>;
    /// A bias or norm vector in f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, QuantError>;
}

/// Weights from a bundle's GGUF file, under `prefix.` (e.g. `encoder`).
pub struct GgufSource<'a> {
    pub weights: &'a GgufWeights,
    pub prefix: &'a str,
}

impl WeightSource for GgufSource<'_> {
    fn weight(&self, name: &str, shape: [usize; 2]) -> Result<(Vec<f32>, Precision), QuantError> {
        self.weights.f32(&format!("{}.{name}", self.prefix), &shape)
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, QuantError> {
        Ok(self
            .weights
            .f32(&format!("{}.{name}", self.prefix), &[len])?
            .0)
    }
}

/// Weights from f32 tensors (a checkpoint's state dict) with a precision per weight name:
/// Q8_0 weights are rounded exactly as the bundle will store them, F16 through half precision.
/// The quantize tool uses it to measure candidates before it writes anything.
pub struct TensorSource<'a> {
    pub tensors: &'a HashMap<String, Tensor>,
    /// Names the checkpoint in errors.
    pub origin: &'a str,
    /// Precision of each weight by name (without `.weight`); absent = F32.
    pub precision: &'a HashMap<String, Precision>,
}

impl TensorSource<'_> {
    fn values(&self, name: &str, len: usize) -> Result<Vec<f32>, QuantError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| QuantError::MissingTensor {
                file: self.origin.to_string(),
                tensor: name.to_string(),
            })?;
        if t.elem_count() != len {
            return Err(QuantError::Shape {
                file: self.origin.to_string(),
                tensor: name.to_string(),
                expected: vec![len],
                found: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

impl WeightSource for TensorSource<'_> {
    fn weight(&self, name: &str, shape: [usize; 2]) -> Result<(Vec<f32>, Precision), QuantError> {
        let w = self.values(name, shape[0] * shape[1])?;
        let layer = name.strip_suffix(".weight").unwrap_or(name);
        let p = self.precision.get(layer).copied().unwrap_or(Precision::F32);
        Ok((round_to(&w, shape, p, name)?, p))
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, QuantError> {
        self.values(name, len)
    }
}

/// The state dict with `patch_embed.proj.weight` flattened to `[D, C·t·p·p]`, the layout
/// [`WeightSource::weight`] serves and a bundle stores. Checkpoints keep the 5-D convolution
/// weight; everything that loads this encoder from f32 tensors (the quantize tool, the runtime's
/// encoder benchmark) goes through here so there is one definition of the layout.
pub fn flatten_patch(
    cfg: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
) -> HashMap<String, Tensor> {
    let mut t = tensors.clone();
    let name = "patch_embed.proj.weight";
    if let Some(w) = t.get(name)
        && w.rank() != 2
    {
        let k = cfg.in_chans * cfg.tubelet_size * cfg.patch_size * cfg.patch_size;
        if let Ok(w2) = w.reshape((cfg.embed_dim, k)) {
            t.insert(name.to_string(), w2);
        }
    }
    t
}

/// `w` rounded exactly as it would be stored at precision `p`.
pub fn round_to(
    w: &[f32],
    shape: [usize; 2],
    p: Precision,
    name: &str,
) -> Result<Vec<f32>, QuantError> {
    Ok(match p {
        Precision::F32 => w.to_vec(),
        Precision::F16 => w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        Precision::Q8_0 => {
            let q = quantize_q8_0_rows(w, shape[0], shape[1]).map_err(|reason| {
                QuantError::Unsupported(format!("cannot store `{name}` as q8_0: {reason}"))
            })?;
            q.dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?
        }
    })
}

/// One linear layer on the packed kernels, in the precision it was given.
#[derive(Debug, Clone)]
pub struct QLinear {
    name: String,
    precision: Precision,
    packed: PackedLinear,
}

impl QLinear {
    /// Loads `{name}.weight` `[out, in]` and `{name}.bias` `[out]`.
    pub fn load(
        src: &dyn WeightSource,
        name: &str,
        out: usize,
        inp: usize,
    ) -> Result<Self, QuantError> {
        let (w, precision) = src.weight(&format!("{name}.weight"), [out, inp])?;
        let b = src.vector(&format!("{name}.bias"), out)?;
        Self::from_values(name, &w, &b, out, inp, precision)
    }

    /// Packs an `[out, in]` weight and bias for `precision` (Q8_0 → int8 kernels, else f32).
    pub fn from_values(
        name: &str,
        w: &[f32],
        b: &[f32],
        out: usize,
        inp: usize,
        precision: Precision,
    ) -> Result<Self, QuantError> {
        let kerr = |source| QuantError::Kernel {
            layer: name.to_string(),
            source,
        };
        let packed = match precision {
            Precision::Q8_0 => {
                PackedLinear::Int8(PackedInt8Linear::from_f32(w, out, inp, Some(b)).map_err(kerr)?)
            }
            Precision::F16 | Precision::F32 => {
                PackedLinear::F32(PackedF32Linear::from_f32(w, out, inp, Some(b)).map_err(kerr)?)
            }
        };
        Ok(Self {
            name: name.to_string(),
            precision,
            packed,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn in_features(&self) -> usize {
        self.packed.in_features()
    }

    pub fn out_features(&self) -> usize {
        self.packed.out_features()
    }

    /// `out[m × out] = epi(x[m × in] · Wᵀ + b)`.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        epi: Epilogue<'_>,
    ) -> Result<(), QuantError> {
        self.packed
            .forward(x, m, out, epi)
            .map_err(|source| QuantError::Kernel {
                layer: self.name.clone(),
                source,
            })
    }
}

#[derive(Debug, Clone)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn load(src: &dyn WeightSource, name: &str, d: usize, eps: f64) -> Result<Self, QuantError> {
        Ok(Self {
            gamma: src.vector(&format!("{name}.weight"), d)?,
            beta: src.vector(&format!("{name}.bias"), d)?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) -> Result<(), QuantError> {
        echojepa_kernels::norm::layer_norm(
            x,
            rows,
            self.gamma.len(),
            &self.gamma,
            &self.beta,
            self.eps,
            out,
        )
        .map_err(|source| QuantError::Kernel {
            layer: "layer_norm".into(),
            source,
        })
    }
}

#[derive(Debug, Clone)]
struct QBlock {
    norm1: Norm,
    qkv: QLinear,
    proj: QLinear,
    norm2: Norm,
    fc1: QLinear,
    fc2: QLinear,
}

/// What [`QuantizedEncoder::forward_clip_tapped`] shows its observer.
#[derive(Debug)]
pub enum Tap<'a> {
    /// The input of a linear layer, just before it runs (`rows × in`).
    LinearInput {
        layer: &'a QLinear,
        x: &'a [f32],
        rows: usize,
    },
    /// The residual stream after block `index` (`tokens × D`, before the final norm).
    Block { index: usize, x: &'a [f32] },
}

type RopeKey = (usize, usize, usize);

/// The encoder on the packed kernels (see the module docs).
pub struct QuantizedEncoder {
    cfg: EncoderConfig,
    patch: QLinear,
    blocks: Vec<QBlock>,
    norm: Norm,
    rope: Mutex<Option<(RopeKey, Arc<echojepa_kernels::rope::RopeTables>)>>,
    /// `Some(range)`: attention's two products in int8 with activations in `range`.
    int8_attention: Option<ActivationRange>,
    /// The activation buffers of the last finished forward pass, kept for the next one: at
    /// vit_base size they are about 14 MB, which the allocator would otherwise hand back to the
    /// kernel and fault in again, page by page, on every clip.
    scratch: Mutex<Option<Scratch>>,
}

/// One forward pass's activation buffers (contents are dead between passes).
#[derive(Default)]
struct Scratch {
    patches: Vec<f32>,
    x: Vec<f32>,
    hbuf: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    mid: Vec<f32>,
}

impl Scratch {
    /// Every buffer resized for `n` tokens (new space zeroed; old contents are overwritten
    /// before they are read).
    fn sized(mut self, n: usize, d: usize, hidden: usize, patch_in: usize) -> Self {
        self.patches.resize(n * patch_in, 0.0);
        self.x.resize(n * d, 0.0);
        self.hbuf.resize(n * d, 0.0);
        self.qkv.resize(n * 3 * d, 0.0);
        self.att.resize(n * d, 0.0);
        self.mid.resize(n * hidden, 0.0);
        self
    }
}

impl std::fmt::Debug for QuantizedEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedEncoder")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl QuantizedEncoder {
    /// Loads every tensor of the encoder from `src` (names as in the checkpoint, the patch
    /// weight 2-D).
    pub fn load(cfg: &EncoderConfig, src: &dyn WeightSource) -> Result<Self, QuantError> {
        cfg.validate().map_err(crate::Error::from)?;
        let d = cfg.embed_dim;
        let hid = cfg.mlp_hidden;
        let patch_in = cfg.in_chans * cfg.tubelet_size * cfg.patch_size * cfg.patch_size;
        let patch = QLinear::load(src, "patch_embed.proj", d, patch_in)?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let p = format!("blocks.{i}");
                Ok(QBlock {
                    norm1: Norm::load(src, &format!("{p}.norm1"), d, cfg.norm_eps)?,
                    qkv: QLinear::load(src, &format!("{p}.attn.qkv"), 3 * d, d)?,
                    proj: QLinear::load(src, &format!("{p}.attn.proj"), d, d)?,
                    norm2: Norm::load(src, &format!("{p}.norm2"), d, cfg.norm_eps)?,
                    fc1: QLinear::load(src, &format!("{p}.mlp.fc1"), hid, d)?,
                    fc2: QLinear::load(src, &format!("{p}.mlp.fc2"), d, hid)?,
                })
            })
            .collect::<Result<Vec<_>, QuantError>>()?;
        let norm = Norm::load(src, "norm", d, cfg.norm_eps)?;
        // An encoder without int8 layers is the full-precision side of a comparison: its
        // attention stays f32 whatever the environment says.
        let any_int8 = blocks.iter().any(|b: &QBlock| {
            [&b.qkv, &b.proj, &b.fc1, &b.fc2]
                .iter()
                .any(|l| matches!(l.packed, PackedLinear::Int8(_)))
        });
        let int8_attention = ActivationRange::attention_configured().filter(|_| any_int8);
        Ok(Self {
            cfg: cfg.clone(),
            patch,
            blocks,
            norm,
            rope: Mutex::new(None),
            int8_attention,
            scratch: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The same encoder with attention's two products (Q·Kᵀ and P·V) in int8, activations in
    /// `range` ([`echojepa_kernels::attention::attention_int8`]), or in f32 (`None`). The
    /// default comes from [`ActivationRange::attention_configured`] (f32 unless set) for encoders
    /// with int8 block linears, and is f32 for the others.
    pub fn with_int8_attention(mut self, range: Option<ActivationRange>) -> Self {
        self.int8_attention = range;
        self
    }

    /// The same encoder with every int8 linear quantizing its inputs to `range` (the default
    /// comes from [`ActivationRange::configured`]); f32 linears are unchanged.
    pub fn with_int8_activations(mut self, range: ActivationRange) -> Self {
        let all = std::iter::once(&mut self.patch).chain(
            self.blocks
                .iter_mut()
                .flat_map(|b| [&mut b.qkv, &mut b.proj, &mut b.fc1, &mut b.fc2]),
        );
        for l in all {
            if let PackedLinear::Int8(p) = &mut l.packed {
                p.set_activations(range);
            }
        }
        self
    }

    /// Every linear layer in execution order.
    pub fn linears(&self) -> Vec<&QLinear> {
        let mut v = vec![&self.patch];
        for b in &self.blocks {
            v.extend([&b.qkv, &b.proj, &b.fc1, &b.fc2]);
        }
        v
    }

    /// Names of every tensor the encoder reads (for checking a weights file has no extras).
    pub fn tensor_names(cfg: &EncoderConfig) -> Vec<String> {
        let mut v = vec![
            "patch_embed.proj.weight".to_string(),
            "patch_embed.proj.bias".to_string(),
        ];
        for i in 0..cfg.depth {
            for part in [
                "norm1",
                "attn.qkv",
                "attn.proj",
                "norm2",
                "mlp.fc1",
                "mlp.fc2",
            ] {
                v.push(format!("blocks.{i}.{part}.weight"));
                v.push(format!("blocks.{i}.{part}.bias"));
            }
        }
        v.push("norm.weight".into());
        v.push("norm.bias".into());
        v
    }

    /// Names (without `.weight`) and `[out, in]` shapes of every linear weight.
    pub fn linear_shapes(cfg: &EncoderConfig) -> Vec<(String, [usize; 2])> {
        let (d, h) = (cfg.embed_dim, cfg.mlp_hidden);
        let patch_in = cfg.in_chans * cfg.tubelet_size * cfg.patch_size * cfg.patch_size;
        let mut v = vec![("patch_embed.proj".to_string(), [d, patch_in])];
        for i in 0..cfg.depth {
            v.push((format!("blocks.{i}.attn.qkv"), [3 * d, d]));
            v.push((format!("blocks.{i}.attn.proj"), [d, d]));
            v.push((format!("blocks.{i}.mlp.fc1"), [h, d]));
            v.push((format!("blocks.{i}.mlp.fc2"), [d, h]));
        }
        v
    }

    /// Encodes `[B, C, T, H, W]` (f32, CPU) into `[B, N, D]` tokens.
    pub fn forward(&self, video: &Tensor) -> Result<Tensor, QuantError> {
        let dims = video.dims();
        if dims.len() != 5 || dims[1] != self.cfg.in_chans {
            return Err(QuantError::Input(format!(
                "encoder input must be [B, {}, T, H, W], got {dims:?}",
                self.cfg.in_chans
            )));
        }
        let (b, t, h, w) = (dims[0], dims[2], dims[3], dims[4]);
        let flat = video
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let per = flat.len() / b.max(1);
        let mut out = Vec::with_capacity(flat.len());
        let mut n = 0;
        for clip in flat.chunks_exact(per) {
            let tokens = self.forward_clip(clip, (t, h, w))?;
            n = tokens.len() / self.cfg.embed_dim;
            out.extend_from_slice(&tokens);
        }
        Ok(Tensor::from_vec(
            out,
            (b, n, self.cfg.embed_dim),
            video.device(),
        )?)
    }

    /// Encodes one clip `[C, T, H, W]` (row-major) into `N × D` tokens.
    pub fn forward_clip(
        &self,
        clip: &[f32],
        thw: (usize, usize, usize),
    ) -> Result<Vec<f32>, QuantError> {
        self.forward_clip_tapped(clip, thw, &mut |_| {})
    }

    /// [`forward_clip`](Self::forward_clip), showing `tap` every linear input and block output.
    pub fn forward_clip_tapped(
        &self,
        clip: &[f32],
        (t, h, w): (usize, usize, usize),
        tap: &mut dyn FnMut(Tap<'_>),
    ) -> Result<Vec<f32>, QuantError> {
        let cfg = &self.cfg;
        let (c, tu, p) = (cfg.in_chans, cfg.tubelet_size, cfg.patch_size);
        if clip.len() != c * t * h * w {
            return Err(QuantError::Input(format!(
                "clip has {} values, expected C×T×H×W = {c}×{t}×{h}×{w}",
                clip.len()
            )));
        }
        if t % tu != 0 || h % p != 0 || w % p != 0 || t == 0 || h == 0 || w == 0 {
            return Err(QuantError::Input(format!(
                "clip [T={t}, H={h}, W={w}] is not divisible by tubelet {tu} and patch {p}"
            )));
        }
        let (gt, gh, gw) = (t / tu, h / p, w / p);
        let n = gt * gh * gw;
        let d = cfg.embed_dim;
        let rope = self.rope_tables((gt, gh, gw))?;

        // The last pass's buffers, unless another thread is using them (then fresh ones).
        let kept = self
            .scratch
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .unwrap_or_default();
        let patch_in = c * tu * p * p;
        let mut sc = kept.sized(n, d, cfg.mlp_hidden, patch_in);
        let out = self.blocks_forward(clip, (t, h, w), n, rope.as_ref(), &mut sc, tap);
        if let Ok(mut s) = self.scratch.lock() {
            *s = Some(sc);
        }
        out
    }

    /// The body of [`forward_clip_tapped`](Self::forward_clip_tapped) on buffers sized for `n`
    /// tokens.
    fn blocks_forward(
        &self,
        clip: &[f32],
        (t, h, w): (usize, usize, usize),
        n: usize,
        rope: &echojepa_kernels::rope::RopeTables,
        sc: &mut Scratch,
        tap: &mut dyn FnMut(Tap<'_>),
    ) -> Result<Vec<f32>, QuantError> {
        let cfg = &self.cfg;
        let (c, tu, p) = (cfg.in_chans, cfg.tubelet_size, cfg.patch_size);
        let d = cfg.embed_dim;
        let (heads, hd) = (cfg.num_heads, cfg.head_dim());
        let Scratch {
            patches,
            x,
            hbuf,
            qkv,
            att,
            mid,
        } = sc;
        unfold_patches_into(clip, c, t, h, w, tu, p, patches);
        tap(Tap::LinearInput {
            layer: &self.patch,
            x: patches,
            rows: n,
        });
        self.patch.forward(patches, n, x, Epilogue::None)?;
        let kerr = |layer: &str| {
            let layer = layer.to_string();
            move |source| QuantError::Kernel { layer, source }
        };
        for (i, b) in self.blocks.iter().enumerate() {
            b.norm1.forward(x, n, hbuf)?;
            tap(Tap::LinearInput {
                layer: &b.qkv,
                x: hbuf,
                rows: n,
            });
            b.qkv.forward(hbuf, n, qkv, Epilogue::None)?;
            echojepa_kernels::rope::apply_rope_qk(qkv, n, heads, hd, rope).map_err(kerr("rope"))?;
            match self.int8_attention {
                None => echojepa_kernels::attention::attention(qkv, n, heads, hd, att),
                Some(range) => {
                    echojepa_kernels::attention::attention_int8(qkv, n, heads, hd, range, att)
                }
            }
            .map_err(kerr("attention"))?;
            tap(Tap::LinearInput {
                layer: &b.proj,
                x: att,
                rows: n,
            });
            b.proj.forward(att, n, x, Epilogue::Accumulate)?;
            b.norm2.forward(x, n, hbuf)?;
            tap(Tap::LinearInput {
                layer: &b.fc1,
                x: hbuf,
                rows: n,
            });
            b.fc1.forward(hbuf, n, mid, Epilogue::Gelu)?;
            tap(Tap::LinearInput {
                layer: &b.fc2,
                x: mid,
                rows: n,
            });
            b.fc2.forward(mid, n, x, Epilogue::Accumulate)?;
            tap(Tap::Block { index: i, x });
        }
        let mut tokens = vec![0f32; n * d];
        self.norm.forward(x, n, &mut tokens)?;
        Ok(tokens)
    }

    fn rope_tables(
        &self,
        key: RopeKey,
    ) -> Result<Arc<echojepa_kernels::rope::RopeTables>, QuantError> {
        let mut cache = self.rope.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, t)) = cache.as_ref()
            && *k == key
        {
            return Ok(t.clone());
        }
        let t = Arc::new(
            echojepa_kernels::rope::RopeTables::grid(key.0, key.1, key.2, self.cfg.head_dim())
                .map_err(|source| QuantError::Kernel {
                    layer: "rope".into(),
                    source,
                })?,
        );
        *cache = Some((key, t.clone()));
        Ok(t)
    }
}

/// `[C, T, H, W]` → `N × (C·tu·p·p)` rows, token `n = t·Hp·Wp + h·Wp + w`, columns ordered
/// `(c, dt, dy, dx)` like the flattened Conv3d weight.
pub fn unfold_patches(
    clip: &[f32],
    c: usize,
    t: usize,
    h: usize,
    w: usize,
    tu: usize,
    p: usize,
) -> Vec<f32> {
    let mut out = Vec::new();
    unfold_patches_into(clip, c, t, h, w, tu, p, &mut out);
    out
}

/// [`unfold_patches`] into `out` (resized; every value is written).
#[allow(clippy::too_many_arguments)]
fn unfold_patches_into(
    clip: &[f32],
    c: usize,
    t: usize,
    h: usize,
    w: usize,
    tu: usize,
    p: usize,
    out: &mut Vec<f32>,
) {
    let (gt, gh, gw) = (t / tu, h / p, w / p);
    let k = c * tu * p * p;
    out.resize(gt * gh * gw * k, 0.0);
    for it in 0..gt {
        for ih in 0..gh {
            for iw in 0..gw {
                let tok = (it * gh + ih) * gw + iw;
                let row = &mut out[tok * k..(tok + 1) * k];
                let mut o = 0;
                for ch in 0..c {
                    for dt in 0..tu {
                        let frame = (ch * t + it * tu + dt) * h;
                        for dy in 0..p {
                            let src = (frame + ih * p + dy) * w + iw * p;
                            row[o..o + p].copy_from_slice(&clip[src..src + p]);
                            o += p;
                        }
                    }
                }
            }
        }
    }
}
