//! Building blocks shared by the encoder, predictor and probes: Linear, LayerNorm, MLP and
//! multi-head attention.
//!
//! candle 0.11's fused LayerNorm and `softmax_last_dim` carry no gradient (DESIGN.md, pitfalls).
//! Every block here picks the fused kernel only when its input tracks no gradient; when the input
//! is (or derives from) a `Var`, it takes the differentiable path. Training code therefore needs
//! no separate model: the same structs train and infer.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// `x @ Wᵀ + b` with the weight stored `[out, in]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// Loads `weight [out, in]` and `bias [out]`. New (trainable) weights get the reference
    /// initialisation: truncated normal, std 0.02, zero bias.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", trunc_normal_init())?;
        let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.))?;
        Ok(Self {
            inner: candle_nn::Linear::new(weight, Some(bias)),
        })
    }

    /// A linear layer whose fresh weights use PyTorch's default (Kaiming-uniform) init, as the
    /// reference probe heads do.
    pub fn new_default_init(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let bound = 1. / (in_dim as f64).sqrt();
        let weight = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let bias = vb.get_with_hints(
            out_dim,
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            inner: candle_nn::Linear::new(weight, Some(bias)),
        })
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}

/// The reference's weight init: `trunc_normal_(std=0.02)` (bounds ±2 absolute, i.e. no
/// truncation in practice at this std).
pub fn trunc_normal_init() -> Init {
    Init::Randn {
        mean: 0.,
        stdev: 0.02,
    }
}

/// LayerNorm over the last dimension with affine weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.))?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if needs_grad(x) || needs_grad(&self.weight) {
            candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)
        } else {
            let x = x.contiguous()?;
            candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps as f32)
        }
    }
}

/// LayerNorm without affine parameters (the pretraining target normalisation, eps 1e-5).
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Softmax over the last dimension, differentiable when it has to be.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if needs_grad(x) {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(&x.contiguous()?)
    }
}

/// Whether gradients must flow through an op on this tensor.
pub fn needs_grad(x: &Tensor) -> bool {
    x.track_op()
}

/// `fc1 -> GELU (exact, erf) -> fc2`.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(dim, hidden, vb.pp("fc1"))?,
            fc2: Linear::new(hidden, dim, vb.pp("fc2"))?,
        })
    }

    pub fn fc1(&self) -> &Linear {
        &self.fc1
    }

    pub fn fc2(&self) -> &Linear {
        &self.fc2
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu_erf()?)
    }
}

/// Splits `[B, N, 3·D]` qkv into three `[B, H, N, hd]` tensors (rows of `qkv.weight` are
/// `[q(h0..), k(..), v(..)]`, head-major inside each, as in the reference).
pub fn split_qkv(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, n, three_d) = qkv.dims3()?;
    let hd = three_d / 3 / heads;
    let qkv = qkv
        .reshape((b, n, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?;
    Ok((
        qkv.get(0)?.contiguous()?,
        qkv.get(1)?.contiguous()?,
        qkv.get(2)?.contiguous()?,
    ))
}

/// Scaled dot-product attention on `[B, H, Nq, hd]` × `[B, H, Nk, hd]`, scale `1/sqrt(hd)`.
///
/// `bias`, when given, is added to the logits and broadcasts to `[B, H, Nq, Nk]` (use
/// [`key_padding_bias`] for key-padding masks).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let hd = q.dim(D::Minus1)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let logits = (q.matmul(&k.t()?)? * scale)?;
    let logits = match bias {
        Some(b) => logits.broadcast_add(b)?,
        None => logits,
    };
    softmax_last(&logits)?.matmul(v)
}

/// Additive attention bias `[B, 1, 1, N]` from a key-padding mask `[B, N]` (non-zero = ignore
/// that key): 0 where kept, the most negative finite f32 where ignored (as the reference's
/// `finfo.min`).
pub fn key_padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, n) = mask.dims2()?;
    let ignore = mask.to_dtype(DType::F32)?.ne(0f64)?.to_dtype(DType::F32)?;
    (ignore * f32::MIN as f64)?.reshape((b, 1, 1, n))
}

/// Merges heads back: `[B, H, N, hd]` → `[B, N, H·hd]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, hd) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, h * hd))
}
