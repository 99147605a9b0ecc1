//! The V-JEPA 2 video ViT encoder (`vision_transformer.py` of the reference): tubelet patch
//! embedding, pre-norm blocks with 3-D RoPE attention, final LayerNorm. No CLS token, no absolute
//! position embedding. Field and `vb.pp` names equal the checkpoint's tensor names.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::EncoderConfig;
use crate::nn::{LayerNorm, Linear, Mlp, attention, merge_heads, split_qkv};
use crate::rope::{Grid, RopeTables};

/// `Conv3d(C, D, kernel = stride = (tubelet, patch, patch))`, run as unfold + matmul.
#[derive(Debug, Clone)]
pub struct PatchEmbed3d {
    /// `[D, C, tubelet, patch, patch]` as in the checkpoint.
    weight: Tensor,
    bias: Tensor,
    patch: usize,
    tubelet: usize,
}

impl PatchEmbed3d {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("proj");
        let (c, p, t, d) = (
            cfg.in_chans,
            cfg.patch_size,
            cfg.tubelet_size,
            cfg.embed_dim,
        );
        let fan_in = (c * t * p * p) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let weight =
            vb.get_with_hints((d, c, t, p, p), "weight", crate::nn::trunc_normal_init())?;
        let bias = vb.get_with_hints(
            d,
            "bias",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            weight,
            bias,
            patch: p,
            tubelet: t,
        })
    }

    /// Token grid of a `[B, C, T, H, W]` input.
    pub fn grid(&self, video: &Tensor) -> Result<Grid> {
        let (_, _, t, h, w) = video.dims5()?;
        if t % self.tubelet != 0 || h % self.patch != 0 || w % self.patch != 0 {
            candle_core::bail!(
                "video [T={t}, H={h}, W={w}] is not divisible by tubelet {} and patch {}",
                self.tubelet,
                self.patch
            );
        }
        Ok(Grid {
            t: t / self.tubelet,
            h: h / self.patch,
            w: w / self.patch,
        })
    }

    /// `[B, C, T, H, W]` → `[B, N, D]`, token `n = t·Hp·Wp + h·Wp + w`.
    pub fn forward(&self, video: &Tensor) -> Result<Tensor> {
        let (b, c, _, _, _) = video.dims5()?;
        let g = self.grid(video)?;
        let (tu, p) = (self.tubelet, self.patch);
        let patches = video
            .reshape(vec![b, c, g.t, tu, g.h, p, g.w, p])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .reshape((b * g.tokens(), c * tu * p * p))?;
        let d = self.weight.dim(0)?;
        let w = self.weight.reshape((d, c * tu * p * p))?;
        patches
            .matmul(&w.t()?)?
            .broadcast_add(&self.bias)?
            .reshape((b, g.tokens(), d))
    }

    /// The weight as stored, `[D, C, tubelet, patch, patch]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

/// Multi-head self-attention with 3-D RoPE on q and k (`RoPEAttention`).
#[derive(Debug, Clone)]
pub struct RopeAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
}

impl RopeAttention {
    pub fn new(dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: Linear::new(dim, 3 * dim, vb.pp("qkv"))?,
            proj: Linear::new(dim, dim, vb.pp("proj"))?,
            num_heads,
        })
    }

    /// `rope: None` gives plain attention (the probe's self-attention blocks).
    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&RopeTables>,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (q, k, v) = split_qkv(&self.qkv.forward(x)?, self.num_heads)?;
        let (q, k) = match rope {
            Some(r) => (r.apply(&q)?, r.apply(&k)?),
            None => (q, k),
        };
        self.proj
            .forward(&merge_heads(&attention(&q, &k, &v, bias)?)?)
    }

    pub fn qkv(&self) -> &Linear {
        &self.qkv
    }

    pub fn proj(&self) -> &Linear {
        &self.proj
    }

    pub fn num_heads(&self) -> usize {
        self.num_heads
    }
}

/// Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug, Clone)]
pub struct Block {
    norm1: LayerNorm,
    attn: RopeAttention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub fn new(dim: usize, heads: usize, hidden: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(dim, eps, vb.pp("norm1"))?,
            attn: RopeAttention::new(dim, heads, vb.pp("attn"))?,
            norm2: LayerNorm::new(dim, eps, vb.pp("norm2"))?,
            mlp: Mlp::new(dim, hidden, vb.pp("mlp"))?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&RopeTables>,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?, rope, bias)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }

    pub fn norm1(&self) -> &LayerNorm {
        &self.norm1
    }
    pub fn attn(&self) -> &RopeAttention {
        &self.attn
    }
    pub fn norm2(&self) -> &LayerNorm {
        &self.norm2
    }
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }
}

/// Token ids `[B, K]` (i64/u32) to host rows; every id must be below `n`.
pub fn token_ids(masks: &Tensor, n: usize) -> Result<Vec<Vec<usize>>> {
    let rows = masks.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut r = Vec::with_capacity(row.len());
        for id in row {
            if id < 0 || id as usize >= n {
                candle_core::bail!("token index {id} outside 0..{n}");
            }
            r.push(id as usize);
        }
        out.push(r);
    }
    Ok(out)
}

/// Keeps tokens `ids` (`[B, K]`) of `x` (`[B, N, D]`).
pub fn gather_tokens(x: &Tensor, masks: &Tensor) -> Result<Tensor> {
    let (b, _, d) = x.dims3()?;
    let (mb, k) = masks.dims2()?;
    if mb != b {
        candle_core::bail!("mask batch {mb} differs from input batch {b}");
    }
    let idx = masks
        .to_dtype(DType::U32)?
        .reshape((b, k, 1))?
        .broadcast_as((b, k, d))?
        .contiguous()?;
    x.contiguous()?.gather(&idx, 1)
}

/// What [`VisionTransformer::forward_with`] returns.
#[derive(Debug, Clone, Default)]
pub struct EncodeOptions<'a> {
    /// Keep only these token ids (`[B, K]`), as in masked pretraining.
    pub masks: Option<&'a Tensor>,
    /// Return the final-normed outputs of these blocks (0-based) instead of the last one.
    pub out_layers: Option<&'a [usize]>,
}

/// The video ViT encoder.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    cfg: EncoderConfig,
    patch_embed: PatchEmbed3d,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl VisionTransformer {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let patch_embed = PatchEmbed3d::new(cfg, vb.pp("patch_embed"))?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                Block::new(
                    cfg.embed_dim,
                    cfg.num_heads,
                    cfg.mlp_hidden,
                    cfg.norm_eps,
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(cfg.embed_dim, cfg.norm_eps, vb.pp("norm"))?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            blocks,
            norm,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    pub fn patch_embed(&self) -> &PatchEmbed3d {
        &self.patch_embed
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn norm(&self) -> &LayerNorm {
        &self.norm
    }

    /// Encodes `[B, 3, T, H, W]` into `[B, N, D]` tokens.
    pub fn forward(&self, video: &Tensor) -> Result<Tensor> {
        let mut out = self.forward_with(video, &EncodeOptions::default())?;
        Ok(out.remove(0))
    }

    /// Encodes only the kept token ids `masks` `[B, K]` → `[B, K, D]`.
    pub fn forward_masked(&self, video: &Tensor, masks: &Tensor) -> Result<Tensor> {
        let opts = EncodeOptions {
            masks: Some(masks),
            out_layers: None,
        };
        Ok(self.forward_with(video, &opts)?.remove(0))
    }

    /// Full control: masks and per-layer outputs. Returns one tensor, or one per `out_layers`.
    pub fn forward_with(&self, video: &Tensor, opts: &EncodeOptions) -> Result<Vec<Tensor>> {
        let dims = video.dims();
        if dims.len() != 5 || dims[1] != self.cfg.in_chans {
            candle_core::bail!(
                "encoder input must be [B, {}, T, H, W], got {dims:?}",
                self.cfg.in_chans
            );
        }
        let grid = self.patch_embed.grid(video)?;
        let mut x = self.patch_embed.forward(video)?;
        let head_dim = self.cfg.head_dim();
        let rope = match opts.masks {
            Some(m) => {
                let ids = token_ids(m, grid.tokens())?;
                x = gather_tokens(&x, m)?;
                RopeTables::new(head_dim, grid, &ids, x.dtype(), x.device())?
            }
            None => RopeTables::full(head_dim, grid, x.dtype(), x.device())?,
        };
        if let Some(layers) = opts.out_layers
            && let Some(bad) = layers.iter().find(|&&l| l >= self.blocks.len())
        {
            candle_core::bail!("out_layers: block {bad} >= depth {}", self.blocks.len());
        }
        let mut outs = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x, Some(&rope), None)?;
            if opts.out_layers.is_some_and(|l| l.contains(&i)) {
                outs.push(self.norm.forward(&x)?);
            }
        }
        match opts.out_layers {
            Some(_) => Ok(outs),
            None => Ok(vec![self.norm.forward(&x)?]),
        }
    }
}

/// Random video input for tests and benchmarks.
pub fn random_video(b: usize, t: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    Tensor::randn(0f32, 1f32, (b, 3, t, h, w), dev)
}
