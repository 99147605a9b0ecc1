//! The attentive probe (`AttentiveClassifier` / `AttentiveRegressor`): `depth - 1` plain
//! self-attention blocks FIRST, then one learned query cross-attends to `norm1(x)` (no output
//! projection, no norm on the query), residual + MLP(norm2), and a `linear` (classes) or
//! `regressor` (targets) head. Probe LayerNorms use eps 1e-5. The multi-view variant adds slot
//! embeddings (factorized view + clip, or one per slot) and honours key-padding masks.
//!
//! Also here: the reference's aggregation of several temporal segments (token concatenation)
//! and spatial views (mean of softmax for classes, raw mean for regression).

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::{PROBE_LN_EPS, ProbeConfig, ProbeKind, SlotConfig};
use crate::encoder::Block;
use crate::nn::{LayerNorm, Linear, Mlp, attention, key_padding_bias, merge_heads, softmax_last};

/// Cross-attention of the queries onto the tokens, without output projection.
#[derive(Debug, Clone)]
struct CrossAttention {
    q: Linear,
    kv: Linear,
    num_heads: usize,
}

impl CrossAttention {
    fn new(dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: Linear::new(dim, dim, vb.pp("q"))?,
            kv: Linear::new(dim, 2 * dim, vb.pp("kv"))?,
            num_heads,
        })
    }

    fn forward(&self, q: &Tensor, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, nq, c) = q.dims3()?;
        let (_, n, _) = x.dims3()?;
        let h = self.num_heads;
        let hd = c / h;
        let q = self
            .q
            .forward(q)?
            .reshape((b, nq, h, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let kv = self
            .kv
            .forward(x)?
            .reshape((b, n, 2, h, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let k = kv.get(0)?.contiguous()?;
        let v = kv.get(1)?.contiguous()?;
        merge_heads(&attention(&q, &k, &v, bias)?)
    }
}

#[derive(Debug, Clone)]
struct CrossAttentionBlock {
    norm1: LayerNorm,
    xattn: CrossAttention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl CrossAttentionBlock {
    fn new(cfg: &ProbeConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        Ok(Self {
            norm1: LayerNorm::new(d, PROBE_LN_EPS, vb.pp("norm1"))?,
            xattn: CrossAttention::new(d, cfg.num_heads, vb.pp("xattn"))?,
            norm2: LayerNorm::new(d, PROBE_LN_EPS, vb.pp("norm2"))?,
            mlp: Mlp::new(d, cfg.mlp_hidden(), vb.pp("mlp"))?,
        })
    }

    fn forward(&self, q: &Tensor, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = self.xattn.forward(q, &self.norm1.forward(x)?, bias)?;
        let q = (q + y)?;
        &q + self.mlp.forward(&self.norm2.forward(&q)?)?
    }
}

/// `AttentivePooler` with one query.
#[derive(Debug, Clone)]
struct Pooler {
    query_tokens: Tensor,
    blocks: Vec<Block>,
    cross_attention_block: CrossAttentionBlock,
}

impl Pooler {
    fn new(cfg: &ProbeConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        let query_tokens =
            vb.get_with_hints((1, 1, d), "query_tokens", crate::nn::trunc_normal_init())?;
        let blocks = (0..cfg.depth - 1)
            .map(|i| {
                Block::new(
                    d,
                    cfg.num_heads,
                    cfg.mlp_hidden(),
                    PROBE_LN_EPS,
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            query_tokens,
            blocks,
            cross_attention_block: CrossAttentionBlock::new(cfg, vb.pp("cross_attention_block"))?,
        })
    }
}

/// Slot embeddings of the multi-view probe.
#[derive(Debug, Clone)]
enum Slots {
    Factorized {
        view_embed: Tensor,
        clip_embed: Tensor,
        clips_per_view: usize,
    },
    PerSlot {
        slot_embed: Tensor,
    },
}

impl Slots {
    fn new(s: &SlotConfig, d: usize, vb: VarBuilder) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.,
            stdev: 1.,
        };
        Ok(if s.use_factorized {
            Slots::Factorized {
                view_embed: vb
                    .pp("view_embed")
                    .get_with_hints((s.num_views, d), "weight", init)?,
                clip_embed: vb.pp("clip_embed").get_with_hints(
                    (s.clips_per_view, d),
                    "weight",
                    init,
                )?,
                clips_per_view: s.clips_per_view,
            }
        } else {
            Slots::PerSlot {
                slot_embed: vb.pp("slot_embed").get_with_hints(
                    (s.num_views * s.clips_per_view, d),
                    "weight",
                    init,
                )?,
            }
        })
    }

    /// `[L, D]` embedding per slot, slot `l = view · clips_per_view + clip`.
    fn per_slot(&self) -> Result<Tensor> {
        match self {
            Slots::PerSlot { slot_embed } => Ok(slot_embed.clone()),
            Slots::Factorized {
                view_embed,
                clip_embed,
                clips_per_view,
            } => {
                let (v, d) = view_embed.dims2()?;
                let c = *clips_per_view;
                view_embed
                    .reshape((v, 1, d))?
                    .broadcast_add(&clip_embed.reshape((1, c, d))?)?
                    .reshape((v * c, d))
            }
        }
    }
}

/// The attentive probe.
#[derive(Debug, Clone)]
pub struct AttentiveProbe {
    cfg: ProbeConfig,
    pooler: Pooler,
    slots: Option<Slots>,
    head: Linear,
}

impl AttentiveProbe {
    pub fn new(cfg: &ProbeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let d = cfg.embed_dim;
        let head_name = match cfg.kind {
            ProbeKind::Classifier => "linear",
            ProbeKind::Regressor => "regressor",
        };
        Ok(Self {
            cfg: cfg.clone(),
            pooler: Pooler::new(cfg, vb.pp("pooler"))?,
            slots: cfg
                .slots
                .as_ref()
                .map(|s| Slots::new(s, d, vb.clone()))
                .transpose()?,
            head: Linear::new_default_init(d, cfg.num_outputs, vb.pp(head_name))?,
        })
    }

    pub fn config(&self) -> &ProbeConfig {
        &self.cfg
    }

    /// `features [B, N, D]` (for multi-view: `L` slots of `N/L` tokens each, slot-major),
    /// optional `key_padding_mask [B, N]` (non-zero = ignore) → `[B, classes or targets]`.
    pub fn forward(&self, features: &Tensor, key_padding_mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, d) = features.dims3()?;
        if d != self.cfg.embed_dim {
            candle_core::bail!(
                "probe expects features of width {}, got [B={b}, N={n}, D={d}]",
                self.cfg.embed_dim
            );
        }
        let mut x = features.clone();
        if let Some(slots) = &self.slots {
            let emb = slots.per_slot()?;
            let l = emb.dim(0)?;
            if n % l != 0 {
                candle_core::bail!("multi-view probe: {n} tokens do not split into {l} slots");
            }
            x = x
                .reshape((b, l, n / l, d))?
                .broadcast_add(&emb.reshape((1, l, 1, d))?.to_dtype(x.dtype())?)?
                .reshape((b, n, d))?;
        }
        let bias = match key_padding_mask {
            Some(m) => {
                if m.dims2()? != (b, n) {
                    candle_core::bail!(
                        "key_padding_mask {:?} does not match features [B={b}, N={n}]",
                        m.dims()
                    );
                }
                Some(key_padding_bias(m)?.to_dtype(x.dtype())?)
            }
            None => None,
        };
        for blk in &self.pooler.blocks {
            x = blk.forward(&x, None, bias.as_ref())?;
        }
        let q = self
            .pooler
            .query_tokens
            .broadcast_as((b, 1, d))?
            .to_dtype(x.dtype())?;
        let q = self
            .pooler
            .cross_attention_block
            .forward(&q, &x, bias.as_ref())?;
        self.head.forward(&q.squeeze(1)?)
    }
}

/// Several temporal segments of one spatial view: tokens concatenated segment-major.
pub fn concat_segments(segments: &[Tensor]) -> Result<Tensor> {
    Tensor::cat(segments, 1)
}

/// Combines per-spatial-view probe outputs as the reference does: the mean of the softmax for
/// classification, the raw mean for regression.
pub fn aggregate_views(outputs: &[Tensor], kind: ProbeKind) -> Result<Tensor> {
    if outputs.is_empty() {
        candle_core::bail!("aggregate_views: no outputs");
    }
    let stacked = Tensor::stack(outputs, 0)?;
    match kind {
        ProbeKind::Classifier => softmax_last(&stacked)?.mean(0),
        ProbeKind::Regressor => stacked.mean(0),
    }
}

/// Class probabilities from logits.
pub fn probabilities(logits: &Tensor) -> Result<Tensor> {
    softmax_last(logits)
}

/// `argmax` over the last dimension.
pub fn argmax(x: &Tensor) -> Result<Vec<u32>> {
    x.argmax(D::Minus1)?.to_vec1::<u32>()
}
