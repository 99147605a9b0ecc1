//! The V-JEPA predictor (`predictor.py`): embeds context tokens into a narrow ViT, appends mask
//! tokens for the targets, runs RoPE blocks on the construction grid, and projects the target
//! tokens back to the encoder width, in `masks_tgt` order.
//!
//! The reference sorts tokens by position before the blocks and un-sorts after; attention with
//! RoPE is permutation-equivariant, so the sort has no effect on the result and is skipped.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::PredictorConfig;
use crate::encoder::{Block, token_ids};
use crate::nn::{LayerNorm, Linear};
use crate::rope::{Grid, RopeTables};

#[derive(Debug, Clone)]
pub struct Predictor {
    cfg: PredictorConfig,
    predictor_embed: Linear,
    mask_tokens: Vec<Tensor>,
    predictor_blocks: Vec<Block>,
    predictor_norm: LayerNorm,
    predictor_proj: Linear,
}

impl Predictor {
    pub fn new(cfg: &PredictorConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let p = cfg.predictor_embed_dim;
        let mask_tokens = (0..cfg.num_mask_tokens)
            .map(|i| {
                vb.pp("mask_tokens")
                    .get_with_hints((1, 1, p), &i.to_string(), Init::Const(0.))
            })
            .collect::<Result<Vec<_>>>()?;
        let predictor_blocks = (0..cfg.depth)
            .map(|i| {
                Block::new(
                    p,
                    cfg.num_heads,
                    cfg.mlp_hidden,
                    cfg.norm_eps,
                    vb.pp(format!("predictor_blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            predictor_embed: Linear::new(cfg.embed_dim, p, vb.pp("predictor_embed"))?,
            mask_tokens,
            predictor_blocks,
            predictor_norm: LayerNorm::new(p, cfg.norm_eps, vb.pp("predictor_norm"))?,
            predictor_proj: Linear::new(p, cfg.embed_dim, vb.pp("predictor_proj"))?,
        })
    }

    pub fn config(&self) -> &PredictorConfig {
        &self.cfg
    }

    /// Predicts target tokens.
    ///
    /// * `ctx` — encoder outputs on the kept tokens `[B, Kc, D]` (already final-normed);
    /// * `masks_ctx` — their token ids `[B, Kc]`; `masks_tgt` — target token ids `[B, Kt]`;
    /// * `mask_index` — which mask token to use (`mask_index % num_mask_tokens`).
    ///
    /// Returns `[B, Kt, D]` in `masks_tgt` order.
    pub fn forward(
        &self,
        ctx: &Tensor,
        masks_ctx: &Tensor,
        masks_tgt: &Tensor,
        mask_index: usize,
    ) -> Result<Tensor> {
        let (b, kc, _) = ctx.dims3()?;
        let (tb, kt) = masks_tgt.dims2()?;
        if masks_ctx.dims2()? != (b, kc) || tb != b {
            candle_core::bail!(
                "predictor: context {:?}, masks_ctx {:?} and masks_tgt {:?} disagree",
                ctx.dims(),
                masks_ctx.dims(),
                masks_tgt.dims()
            );
        }
        let (t, h, w) = self.cfg.grid();
        let grid = Grid { t, h, w };
        let n = grid.tokens();
        let ids_ctx = token_ids(masks_ctx, n)?;
        let ids_tgt = token_ids(masks_tgt, n)?;
        let ids: Vec<Vec<usize>> = ids_ctx
            .into_iter()
            .zip(ids_tgt)
            .map(|(mut c, t)| {
                c.extend(t);
                c
            })
            .collect();

        let x = self.predictor_embed.forward(ctx)?;
        let p = self.cfg.predictor_embed_dim;
        let token = &self.mask_tokens[mask_index % self.mask_tokens.len()];
        let tgt = token.broadcast_as((b, kt, p))?.to_dtype(x.dtype())?;
        let mut x = Tensor::cat(&[&x, &tgt], 1)?;
        let head_dim = p / self.cfg.num_heads;
        let rope = RopeTables::new(head_dim, grid, &ids, x.dtype(), x.device())?;
        for blk in &self.predictor_blocks {
            x = blk.forward(&x, Some(&rope), None)?;
        }
        let x = self.predictor_norm.forward(&x)?;
        let x = x.narrow(1, kc, kt)?;
        self.predictor_proj.forward(&x)
    }
}
