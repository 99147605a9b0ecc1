//! The pretraining YAML schema of the reference (`configs/train/**`: `app`, `data`, `data_aug`,
//! `loss`, `mask`, `meta`, `model`, `optimization`), with the reference defaults, and its
//! resolution into the encoder/predictor architectures the trainer builds.

use std::path::PathBuf;

use anyhow::{Result, bail};
use echojepa::{EncoderConfig, PredictorConfig};
use serde::{Deserialize, Serialize};

use super::Opaque;

/// A whole pretraining (or cooldown) config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainConfig {
    #[serde(default = "default_app")]
    pub app: String,
    #[serde(default)]
    pub nodes: Opaque,
    #[serde(default)]
    pub tasks_per_node: Opaque,
    #[serde(default)]
    pub cpus_per_task: Opaque,
    #[serde(default)]
    pub mem_per_gpu: Opaque,
    /// Output directory: checkpoints (`latest`, `e{N}`), metrics CSV, loss curve.
    pub folder: PathBuf,
    pub data: PretrainData,
    #[serde(default)]
    pub data_aug: DataAug,
    #[serde(default)]
    pub loss: LossCfg,
    /// One entry per mask configuration (each is a separate encoder + predictor pass).
    pub mask: Vec<MaskCfg>,
    #[serde(default)]
    pub meta: Meta,
    pub model: ModelCfg,
    pub optimization: PretrainOpt,
}

fn default_app() -> String {
    "vjepa".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainData {
    #[serde(default = "default_dataset_type")]
    pub dataset_type: String,
    /// CSV files (`path label`, space-delimited) of the datasets mixed in pretraining.
    #[serde(default)]
    pub datasets: Vec<PathBuf>,
    /// Extension: with `dataset_type: PhantomStream`, clips are rendered on the fly from the
    /// phantom (views, capture size, patient seed ranges); `optimization.ipe` sets the epoch.
    #[serde(default)]
    pub phantom: Option<crate::phantom_stream::StreamSpec>,
    /// Extension: whether the datasets are synthetic, recorded in the checkpoint's provenance.
    /// Unset: lists written by `trainer synth` are, other lists are not; the phantom stream
    /// always is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<bool>,
    /// Sampling weight per dataset (default: proportional to size).
    #[serde(default)]
    pub datasets_weights: Option<Vec<f64>>,
    /// Frames per clip per dataset.
    #[serde(default = "default_fpcs")]
    pub dataset_fpcs: Vec<usize>,
    /// Clips per step (per GPU in the reference).
    pub batch_size: usize,
    pub crop_size: usize,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_tubelet")]
    pub tubelet_size: usize,
    /// Target frame rate (exclusive with `frame_step` and `duration`).
    #[serde(default)]
    pub fps: Option<f64>,
    #[serde(default)]
    pub frame_step: Option<usize>,
    /// Clip duration in seconds.
    #[serde(default)]
    pub duration: Option<f64>,
    #[serde(default = "one")]
    pub num_clips: usize,
    #[serde(default = "default_workers")]
    pub num_workers: usize,
    #[serde(default)]
    pub persistent_workers: bool,
    #[serde(default)]
    pub pin_mem: bool,
}

fn default_dataset_type() -> String {
    "VideoDataset".into()
}
fn default_fpcs() -> Vec<usize> {
    vec![16]
}
fn default_patch() -> usize {
    16
}
fn default_tubelet() -> usize {
    2
}
fn one() -> usize {
    1
}
fn default_workers() -> usize {
    2
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataAug {
    #[serde(default)]
    pub auto_augment: bool,
    #[serde(default)]
    pub motion_shift: bool,
    #[serde(default = "default_rr_aspect")]
    pub random_resize_aspect_ratio: [f64; 2],
    #[serde(default = "default_rr_scale")]
    pub random_resize_scale: [f64; 2],
    #[serde(default)]
    pub reprob: f64,
    /// Horizontal flip with p = 0.5. EchoJEPA hard-codes it off for echo (left/right anatomy
    /// matters), so the default here is off; V-JEPA 2 on natural video had it on.
    #[serde(default)]
    pub horizontal_flip: bool,
}

fn default_rr_aspect() -> [f64; 2] {
    [0.75, 1.35]
}
fn default_rr_scale() -> [f64; 2] {
    [0.3, 1.0]
}

impl Default for DataAug {
    fn default() -> Self {
        Self {
            auto_augment: false,
            motion_shift: false,
            random_resize_aspect_ratio: default_rr_aspect(),
            random_resize_scale: default_rr_scale(),
            reprob: 0.0,
            horizontal_flip: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossCfg {
    #[serde(default = "default_loss_exp")]
    pub loss_exp: f64,
}

fn default_loss_exp() -> f64 {
    1.0
}

impl Default for LossCfg {
    fn default() -> Self {
        Self { loss_exp: 1.0 }
    }
}

/// One multi-block 3-D mask configuration (reference `MaskCollator` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskCfg {
    #[serde(default = "default_aspect")]
    pub aspect_ratio: [f64; 2],
    #[serde(default)]
    pub full_complement: bool,
    #[serde(default)]
    pub pred_full_complement: bool,
    #[serde(default)]
    pub inv_block: bool,
    #[serde(default)]
    pub max_keep: Option<usize>,
    #[serde(default = "one_f")]
    pub max_temporal_keep: f64,
    #[serde(default = "one")]
    pub num_blocks: usize,
    #[serde(default = "default_spatial")]
    pub spatial_scale: [f64; 2],
    #[serde(default = "default_temporal")]
    pub temporal_scale: [f64; 2],
}

fn default_aspect() -> [f64; 2] {
    [0.3, 3.0]
}
fn one_f() -> f64 {
    1.0
}
fn default_spatial() -> [f64; 2] {
    [0.2, 0.8]
}
fn default_temporal() -> [f64; 2] {
    [1.0, 1.0]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// `bfloat16` / `float16` / anything else = float32. bf16 is used on CUDA; CPU runs f32.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default)]
    pub eval_freq: Option<usize>,
    /// Resume from `folder/latest` when it exists.
    #[serde(default)]
    pub load_checkpoint: bool,
    /// Resume from this checkpoint instead of `latest`.
    #[serde(default)]
    pub read_checkpoint: Option<PathBuf>,
    /// Keep a numbered checkpoint every this many epochs (`latest` is written every epoch).
    #[serde(default = "default_save_every")]
    pub save_every_freq: i64,
    /// Also write `latest` every this many steps (EchoJEPA's per-iteration resume).
    #[serde(default)]
    pub save_every_steps: Option<usize>,
    #[serde(default)]
    pub checkpoints_to_keep: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "yes")]
    pub use_sdpa: bool,
    #[serde(default)]
    pub sync_gc: bool,
    #[serde(default)]
    pub skip_batches: Option<usize>,
    #[serde(default)]
    pub s3_checkpoint_uri: Option<String>,
}

fn default_dtype() -> String {
    "float32".into()
}
fn default_save_every() -> i64 {
    1
}
fn yes() -> bool {
    true
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            dtype: default_dtype(),
            eval_freq: None,
            load_checkpoint: false,
            read_checkpoint: None,
            save_every_freq: 1,
            save_every_steps: None,
            checkpoints_to_keep: None,
            seed: 0,
            use_sdpa: true,
            sync_gc: false,
            skip_batches: None,
            s3_checkpoint_uri: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCfg {
    /// Reference factory name (`vit_tiny` … `vit_giant_xformers`).
    pub model_name: String,
    #[serde(default = "default_pred_depth")]
    pub pred_depth: usize,
    #[serde(default = "default_pred_dim")]
    pub pred_embed_dim: usize,
    #[serde(default = "default_pred_heads")]
    pub pred_num_heads: usize,
    #[serde(default = "yes")]
    pub use_rope: bool,
    #[serde(default = "yes")]
    pub uniform_power: bool,
    #[serde(default)]
    pub use_activation_checkpointing: bool,
    #[serde(default = "yes")]
    pub use_mask_tokens: bool,
    #[serde(default = "default_mask_tokens")]
    pub num_mask_tokens: usize,
    #[serde(default = "yes")]
    pub zero_init_mask_tokens: bool,
    #[serde(default)]
    pub use_silu: bool,
    #[serde(default)]
    pub use_pred_silu: bool,
    #[serde(default)]
    pub wide_silu: bool,
    #[serde(default)]
    pub compile_model: bool,
    /// Extension: override the preset's width/depth/heads/MLP ratio for small custom encoders.
    #[serde(default)]
    pub embed_dim: Option<usize>,
    #[serde(default)]
    pub depth: Option<usize>,
    #[serde(default)]
    pub num_heads: Option<usize>,
    #[serde(default)]
    pub mlp_ratio: Option<f64>,
    /// Extension: MLP ratio of the predictor (reference: 4).
    #[serde(default)]
    pub pred_mlp_ratio: Option<f64>,
}

fn default_pred_depth() -> usize {
    12
}
fn default_pred_dim() -> usize {
    384
}
fn default_pred_heads() -> usize {
    12
}
fn default_mask_tokens() -> usize {
    10
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainOpt {
    #[serde(default)]
    pub is_anneal: bool,
    #[serde(default)]
    pub resume_anneal: bool,
    #[serde(default)]
    pub force_load_pretrain: bool,
    /// Checkpoint (official `.pt` or native) the run starts from when `is_anneal` or
    /// `force_load_pretrain` is set.
    #[serde(default)]
    pub anneal_ckpt: Option<PathBuf>,
    #[serde(default = "default_ema")]
    pub ema: [f64; 2],
    pub epochs: usize,
    /// Iterations per epoch (default: dataset size / batch size).
    #[serde(default)]
    pub ipe: Option<usize>,
    #[serde(default = "one_f")]
    pub ipe_scale: f64,
    /// Warmup length in epochs.
    #[serde(default)]
    pub warmup: f64,
    #[serde(default)]
    pub start_lr: Option<f64>,
    pub lr: f64,
    #[serde(default)]
    pub final_lr: Option<f64>,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default)]
    pub final_weight_decay: Option<f64>,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip gradients to this global L2 norm (none by default, as in the reference).
    #[serde(default)]
    pub clip_grad: Option<f64>,
}

fn default_ema() -> [f64; 2] {
    [0.996, 1.0]
}
fn default_wd() -> f64 {
    0.04
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}

impl PretrainConfig {
    /// The encoder architecture: the preset, with the extension overrides applied.
    pub fn encoder_config(&self) -> Result<EncoderConfig> {
        let m = &self.model;
        let mut enc = resolve_encoder(
            &m.model_name,
            m.embed_dim,
            m.depth,
            m.num_heads,
            m.mlp_ratio,
        )?;
        enc.patch_size = self.data.patch_size;
        enc.tubelet_size = self.data.tubelet_size;
        enc.validate()?;
        Ok(enc)
    }

    /// The predictor architecture, built on the pretraining crop and the first frames-per-clip.
    pub fn predictor_config(&self) -> Result<PredictorConfig> {
        let enc = self.encoder_config()?;
        let m = &self.model;
        let ratio = m.pred_mlp_ratio.unwrap_or(4.0);
        let cfg = PredictorConfig {
            embed_dim: enc.embed_dim,
            predictor_embed_dim: m.pred_embed_dim,
            depth: m.pred_depth,
            num_heads: m.pred_num_heads,
            mlp_hidden: (m.pred_embed_dim as f64 * ratio) as usize,
            patch_size: self.data.patch_size,
            tubelet_size: self.data.tubelet_size,
            num_mask_tokens: m.num_mask_tokens.max(1),
            img_size: [self.data.crop_size, self.data.crop_size],
            num_frames: self.frames_per_clip(),
            norm_eps: echojepa::config::VIT_LN_EPS,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The job shape the config asks for (`nodes` x `tasks_per_node`).
    pub fn topology(&self) -> Result<crate::dist::Topology> {
        super::topology(&self.nodes, &self.tasks_per_node)
    }

    pub fn frames_per_clip(&self) -> usize {
        self.data.dataset_fpcs.first().copied().unwrap_or(16)
    }

    /// Checks the settings the trainer relies on; returns notes on reference settings that have
    /// no effect here (shown by `--dry-run`).
    pub fn validate(&self) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        if !matches!(self.app.as_str(), "vjepa") {
            bail!(
                "app `{}` is not supported (only `vjepa` pretraining; `vjepa_droid` is action-conditioned)",
                self.app
            );
        }
        self.validate_datasets()?;
        self.validate_clip_shape()?;
        self.validate_timing(&mut notes)?;
        self.validate_augmentation()?;
        if !(self.loss.loss_exp > 0.0) {
            bail!("loss.loss_exp must be positive, got {}", self.loss.loss_exp);
        }
        self.validate_masks()?;
        self.validate_model(&mut notes)?;
        self.validate_optimization()?;
        if !self.model.zero_init_mask_tokens {
            notes.push("model.zero_init_mask_tokens: false; mask tokens start trunc-normal".into());
        }
        if self.data.num_clips != 1 {
            bail!(
                "data.num_clips {} is not supported for pretraining (1 clip per video)",
                self.data.num_clips
            );
        }
        self.encoder_config()?;
        self.predictor_config()?;
        Ok(notes)
    }

    /// A supported dataset type with its lists, and sampling weights that fit them.
    fn validate_datasets(&self) -> Result<()> {
        if self.data.dataset_type == "PhantomStream" {
            if self.optimization.ipe.is_none() {
                bail!(
                    "data.dataset_type PhantomStream is endless: set optimization.ipe (steps per epoch)"
                );
            }
        } else if self.data.dataset_type != "VideoDataset" {
            bail!(
                "data.dataset_type `{}` is not supported for pretraining (VideoDataset or PhantomStream)",
                self.data.dataset_type
            );
        } else if self.data.datasets.is_empty() {
            bail!("data.datasets is empty: list at least one CSV");
        }
        if let Some(w) = &self.data.datasets_weights {
            if w.len() != self.data.datasets.len() {
                bail!(
                    "data.datasets_weights has {} entries but data.datasets has {}",
                    w.len(),
                    self.data.datasets.len()
                );
            }
            if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
                bail!("data.datasets_weights must be non-negative with a positive sum");
            }
        }
        Ok(())
    }

    /// Frames per clip (one count for all datasets) divide into tubelets, the crop into
    /// patches; a batch holds at least one clip.
    fn validate_clip_shape(&self) -> Result<()> {
        let fpcs = &self.data.dataset_fpcs;
        if fpcs.is_empty()
            || fpcs
                .iter()
                .any(|&f| f == 0 || f % self.data.tubelet_size != 0)
        {
            bail!(
                "data.dataset_fpcs {fpcs:?}: each must be a positive multiple of tubelet_size {}",
                self.data.tubelet_size
            );
        }
        if fpcs.len() != 1 && fpcs.len() != self.data.datasets.len() {
            bail!(
                "data.dataset_fpcs has {} entries; give one, or one per dataset ({})",
                fpcs.len(),
                self.data.datasets.len()
            );
        }
        if fpcs.iter().any(|&f| f != fpcs[0]) {
            bail!("data.dataset_fpcs {fpcs:?}: mixed frame counts are not supported yet");
        }
        if self.data.batch_size == 0 {
            bail!("data.batch_size must be >= 1");
        }
        if self.data.crop_size == 0 || !self.data.crop_size.is_multiple_of(self.data.patch_size) {
            bail!(
                "data.crop_size {} must be a positive multiple of data.patch_size {}",
                self.data.crop_size,
                self.data.patch_size
            );
        }
        Ok(())
    }

    /// At most one of fps, frame_step and duration says how frames are sampled.
    fn validate_timing(&self, notes: &mut Vec<String>) -> Result<()> {
        let timing = [
            self.data.fps.is_some(),
            self.data.frame_step.is_some(),
            self.data.duration.is_some(),
        ];
        match timing.iter().filter(|x| **x).count() {
            0 => notes.push("data: no fps/frame_step/duration given; using frame_step 4".into()),
            1 => {}
            _ => bail!("data: give only one of fps, frame_step and duration"),
        }
        if let Some(fps) = self.data.fps
            && !(fps > 0.0)
        {
            bail!("data.fps must be positive, got {fps}");
        }
        if self.data.frame_step == Some(0) {
            bail!("data.frame_step must be >= 1");
        }
        Ok(())
    }

    fn validate_augmentation(&self) -> Result<()> {
        let a = &self.data_aug;
        check_range(
            "data_aug.random_resize_scale",
            a.random_resize_scale,
            0.0,
            1.0,
        )?;
        check_range(
            "data_aug.random_resize_aspect_ratio",
            a.random_resize_aspect_ratio,
            0.0,
            f64::INFINITY,
        )?;
        if a.auto_augment || a.motion_shift || a.reprob > 0.0 {
            bail!(
                "data_aug: auto_augment, motion_shift and reprob are not supported (all reference \
                 V-JEPA 2 / EchoJEPA recipes keep them off)"
            );
        }
        Ok(())
    }

    fn validate_masks(&self) -> Result<()> {
        if self.mask.is_empty() {
            bail!("mask: give at least one mask configuration");
        }
        for (i, m) in self.mask.iter().enumerate() {
            let k = format!("mask[{i}]");
            check_range(&format!("{k}.spatial_scale"), m.spatial_scale, 0.0, 1.0)?;
            check_range(&format!("{k}.temporal_scale"), m.temporal_scale, 0.0, 1.0)?;
            check_range(
                &format!("{k}.aspect_ratio"),
                m.aspect_ratio,
                0.0,
                f64::INFINITY,
            )?;
            if m.num_blocks == 0 {
                bail!("{k}.num_blocks must be >= 1");
            }
            if !(m.max_temporal_keep > 0.0 && m.max_temporal_keep <= 1.0) {
                bail!(
                    "{k}.max_temporal_keep must be in (0, 1], got {}",
                    m.max_temporal_keep
                );
            }
        }
        Ok(())
    }

    /// The released models' architecture: 3-D RoPE, GELU, mask tokens.
    fn validate_model(&self, notes: &mut Vec<String>) -> Result<()> {
        let m = &self.model;
        if !m.use_rope {
            bail!(
                "model.use_rope: false (absolute sin-cos position embeddings, V-JEPA 1) is not \
                 supported; every V-JEPA 2 / EchoJEPA checkpoint uses 3-D RoPE"
            );
        }
        if m.use_silu || m.use_pred_silu || m.wide_silu {
            bail!(
                "model.use_silu / use_pred_silu / wide_silu are not supported (released models use GELU)"
            );
        }
        if !m.use_mask_tokens {
            bail!("model.use_mask_tokens: false is not supported");
        }
        if m.use_activation_checkpointing {
            notes.push(
                "model.use_activation_checkpointing has no effect (candle keeps activations)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Schedules and optimizer settings in range; annealing names its checkpoint.
    fn validate_optimization(&self) -> Result<()> {
        let o = &self.optimization;
        if o.epochs == 0 {
            bail!("optimization.epochs must be >= 1");
        }
        if o.ipe == Some(0) {
            bail!("optimization.ipe must be >= 1");
        }
        if !(o.ipe_scale > 0.0) {
            bail!("optimization.ipe_scale must be positive");
        }
        if !(o.lr >= 0.0)
            || o.start_lr.is_some_and(|x| !(x >= 0.0))
            || o.final_lr.is_some_and(|x| !(x >= 0.0))
        {
            bail!("optimization: learning rates must be >= 0");
        }
        if !(o.warmup >= 0.0) {
            bail!("optimization.warmup must be >= 0 epochs");
        }
        for (i, e) in o.ema.iter().enumerate() {
            if !(0.0..=1.0).contains(e) {
                bail!("optimization.ema[{i}] = {e} must be in [0, 1]");
            }
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            bail!("optimization.betas {:?} must be in [0, 1)", o.betas);
        }
        if o.clip_grad.is_some_and(|c| !(c > 0.0)) {
            bail!("optimization.clip_grad must be positive");
        }
        if (o.is_anneal || o.force_load_pretrain) && o.anneal_ckpt.is_none() {
            bail!("optimization.is_anneal/force_load_pretrain need optimization.anneal_ckpt");
        }
        Ok(())
    }
}

/// Preset lookup with the extension overrides (`embed_dim`, `depth`, `num_heads`, `mlp_ratio`).
pub fn resolve_encoder(
    name: &str,
    embed_dim: Option<usize>,
    depth: Option<usize>,
    num_heads: Option<usize>,
    mlp_ratio: Option<f64>,
) -> Result<EncoderConfig> {
    let mut enc = EncoderConfig::preset(name)?;
    let overridden =
        embed_dim.is_some() || depth.is_some() || num_heads.is_some() || mlp_ratio.is_some();
    if let Some(d) = embed_dim {
        enc.embed_dim = d;
        // Keep the preset's MLP ratio unless one is given.
        enc.mlp_hidden = d * 4;
    }
    if let Some(d) = depth {
        enc.depth = d;
    }
    if let Some(h) = num_heads {
        enc.num_heads = h;
    }
    if let Some(r) = mlp_ratio {
        enc.mlp_hidden = (enc.embed_dim as f64 * r) as usize;
    }
    if overridden {
        enc.name = "custom".into();
    }
    Ok(enc)
}

fn check_range(key: &str, r: [f64; 2], lo: f64, hi: f64) -> Result<()> {
    if !(r[0].is_finite() && r[1].is_finite())
        || r[0] > r[1]
        || r[0] < lo
        || r[1] > hi
        || r[1] <= 0.0
    {
        bail!("{key} = {r:?} must be an ordered pair within [{lo}, {hi}]");
    }
    Ok(())
}
