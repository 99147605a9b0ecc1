//! The frozen-evaluation YAML schema of the reference (`configs/eval/**`, `configs/inference/**`:
//! `eval_name`, `folder`, `tag`, `experiment.{classifier,data,optimization}`, `model_kwargs`),
//! with EchoJEPA's regression and multi-view keys, and a few documented extensions.

use std::path::PathBuf;

use anyhow::{Result, bail};
use echojepa::EncoderConfig;
use serde::{Deserialize, Serialize};

use super::Opaque;
use super::pretrain::resolve_encoder;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalConfig {
    #[serde(default)]
    pub app: Opaque,
    #[serde(default)]
    pub nodes: Opaque,
    #[serde(default)]
    pub tasks_per_node: Opaque,
    #[serde(default)]
    pub cpus_per_task: Opaque,
    #[serde(default)]
    pub mem_per_gpu: Opaque,
    #[serde(default)]
    pub num_workers: Option<usize>,
    /// Misspelling in some upstream configs; accepted and ignored like the reference does.
    #[serde(default)]
    pub max_workers: Opaque,
    /// `video_classification_frozen` or `video_classification_frozen_multi`.
    pub eval_name: String,
    /// Not a YAML key: the hidden `--dump-inputs DIR` flag, which writes every prepared clip
    /// under `DIR/<list stem>/` (see `echojepa_input::dump`) and bypasses the feature cache.
    #[serde(skip)]
    pub dump_inputs: Option<PathBuf>,
    /// Output root: results go to `folder/<eval_name>/<tag>/`.
    pub folder: PathBuf,
    pub tag: String,
    /// Resume the probe (`probe_checkpoint`, else `latest` in the output dir).
    #[serde(default)]
    pub resume_checkpoint: bool,
    /// Inference only: evaluate `dataset_val` with a trained probe and write predictions.
    #[serde(default)]
    pub val_only: bool,
    #[serde(default)]
    pub predictions_save_path: Option<PathBuf>,
    #[serde(default)]
    pub probe_checkpoint: Option<PathBuf>,
    pub experiment: Experiment,
    pub model_kwargs: ModelKwargs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Experiment {
    #[serde(default)]
    pub classifier: ClassifierCfg,
    pub data: EvalData,
    pub optimization: EvalOpt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    Classification,
    Regression,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierCfg {
    #[serde(default = "default_probe_heads")]
    pub num_heads: usize,
    #[serde(default = "one")]
    pub num_probe_blocks: usize,
    #[serde(default = "default_task")]
    pub task_type: TaskType,
    #[serde(default = "one")]
    pub num_targets: usize,
    #[serde(default = "default_probe_type")]
    pub probe_type: String,
    #[serde(default)]
    pub use_layernorm: Option<bool>,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub use_slot_embeddings: bool,
    #[serde(default = "one")]
    pub num_views: usize,
    #[serde(default = "one")]
    pub clips_per_view: usize,
    #[serde(default)]
    pub use_factorized: bool,
    #[serde(default)]
    pub use_late_fusion: bool,
}

fn default_probe_heads() -> usize {
    16
}
fn one() -> usize {
    1
}
fn default_task() -> TaskType {
    TaskType::Classification
}
fn default_probe_type() -> String {
    "attentive".into()
}

impl Default for ClassifierCfg {
    fn default() -> Self {
        Self {
            num_heads: 16,
            num_probe_blocks: 1,
            task_type: TaskType::Classification,
            num_targets: 1,
            probe_type: default_probe_type(),
            use_layernorm: None,
            dropout: 0.0,
            use_slot_embeddings: false,
            num_views: 1,
            clips_per_view: 1,
            use_factorized: false,
            use_late_fusion: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalData {
    #[serde(default = "default_dataset_type")]
    pub dataset_type: String,
    pub dataset_train: PathBuf,
    pub dataset_val: PathBuf,
    /// Extension: a held-out test CSV evaluated with the best head after training.
    #[serde(default)]
    pub dataset_test: Option<PathBuf>,
    #[serde(default)]
    pub num_classes: Option<usize>,
    pub resolution: usize,
    #[serde(default = "default_fpc")]
    pub frames_per_clip: usize,
    #[serde(default = "default_frame_step")]
    pub frame_step: usize,
    #[serde(default = "one")]
    pub num_segments: usize,
    #[serde(default = "one")]
    pub num_views_per_segment: usize,
    #[serde(default)]
    pub clip_duration: Option<f64>,
    #[serde(default)]
    pub normalization: Opaque,
    /// Regression: the training-split mean/std the CSV labels were z-scored with.
    #[serde(default)]
    pub target_mean: Option<f64>,
    #[serde(default)]
    pub target_std: Option<f64>,
    /// Multi-view: contiguous clips taken from each video.
    #[serde(default = "one")]
    pub num_clips_per_video: usize,
    /// Multi-view: probability of turning a present view into MISS at train time (view dropout).
    #[serde(default)]
    pub miss_augment_prob: f64,
    #[serde(default = "one")]
    pub min_present: usize,
    /// Extension: whether the lists are synthetic, recorded in the probe's provenance. Unset:
    /// lists written by `trainer synth` are, other lists are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<bool>,
    /// Extension: train on this fraction of the training set, stratified by class, seeded.
    #[serde(default)]
    pub label_fraction: Option<f64>,
    #[serde(default)]
    pub label_seed: u64,
}

fn default_dataset_type() -> String {
    "VideoDataset".into()
}
fn default_fpc() -> usize {
    16
}
fn default_frame_step() -> usize {
    4
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadOpt {
    pub lr: f64,
    #[serde(default)]
    pub start_lr: Option<f64>,
    #[serde(default)]
    pub final_lr: Option<f64>,
    /// Warmup in epochs.
    #[serde(default)]
    pub warmup: f64,
    #[serde(default = "default_head_wd")]
    pub weight_decay: f64,
    #[serde(default)]
    pub final_weight_decay: Option<f64>,
}

fn default_head_wd() -> f64 {
    0.01
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalOpt {
    #[serde(default = "default_probe_batch")]
    pub batch_size: usize,
    #[serde(default = "default_epochs")]
    pub num_epochs: usize,
    #[serde(default)]
    pub use_bfloat16: bool,
    /// One probe head per entry, all trained in the same pass over the data.
    pub multihead_kwargs: Vec<HeadOpt>,
    #[serde(default)]
    pub use_pos_embed: bool,
    #[serde(default)]
    pub use_focal_loss: bool,
    /// Extension: directory for cached frozen-encoder features (default: `<output>/features`).
    #[serde(default)]
    pub feature_cache: Option<PathBuf>,
    /// Extension: disable the feature cache (re-encode every epoch with random clip placement).
    #[serde(default = "yes")]
    pub cache_features: bool,
    /// Extension: probe seed (head init, shuffling, view dropout).
    #[serde(default)]
    pub seed: u64,
}

fn default_probe_batch() -> usize {
    1
}
fn default_epochs() -> usize {
    20
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelKwargs {
    /// Pretrained checkpoint: official `.pt` or native (`.safetensors` + `.json`).
    pub checkpoint: PathBuf,
    #[serde(default)]
    pub module_name: Option<String>,
    pub pretrain_kwargs: PretrainKwargs,
    #[serde(default)]
    pub wrapper_kwargs: WrapperKwargs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainKwargs {
    pub encoder: EncoderKwargs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncoderKwargs {
    #[serde(default = "default_ckpt_key")]
    pub checkpoint_key: String,
    pub model_name: String,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_tubelet")]
    pub tubelet_size: usize,
    #[serde(default = "yes")]
    pub use_rope: bool,
    #[serde(default = "yes")]
    pub uniform_power: bool,
    #[serde(default)]
    pub img_temporal_dim_size: Opaque,
    #[serde(default)]
    pub use_sdpa: Option<bool>,
    #[serde(default)]
    pub use_silu: bool,
    #[serde(default)]
    pub wide_silu: bool,
    #[serde(default)]
    pub use_activation_checkpointing: bool,
    /// Extension overrides for small custom encoders (as in the pretraining schema).
    #[serde(default)]
    pub embed_dim: Option<usize>,
    #[serde(default)]
    pub depth: Option<usize>,
    #[serde(default)]
    pub num_heads: Option<usize>,
    #[serde(default)]
    pub mlp_ratio: Option<f64>,
}

impl EncoderKwargs {
    /// The encoder these keys describe: the preset with its overrides, patch and tubelet.
    pub fn encoder_config(&self) -> Result<EncoderConfig> {
        let mut enc = resolve_encoder(
            &self.model_name,
            self.embed_dim,
            self.depth,
            self.num_heads,
            self.mlp_ratio,
        )?;
        enc.patch_size = self.patch_size;
        enc.tubelet_size = self.tubelet_size;
        enc.validate()?;
        Ok(enc)
    }
}

fn default_ckpt_key() -> String {
    "target_encoder".into()
}
fn default_patch() -> usize {
    16
}
fn default_tubelet() -> usize {
    2
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WrapperKwargs {
    #[serde(default)]
    pub max_frames: Option<usize>,
    #[serde(default)]
    pub use_pos_embed: bool,
    #[serde(default)]
    pub out_layers: Option<Vec<usize>>,
    #[serde(default)]
    pub return_per_clip: bool,
}

impl EvalConfig {
    pub fn is_multi(&self) -> bool {
        self.eval_name == "video_classification_frozen_multi"
    }

    pub fn task(&self) -> TaskType {
        self.experiment.classifier.task_type
    }

    /// Output directory of this evaluation: `folder/<eval_name>/<tag>`.
    /// The job shape the config asks for (`nodes` x `tasks_per_node`).
    pub fn topology(&self) -> Result<crate::dist::Topology> {
        super::topology(&self.nodes, &self.tasks_per_node)
    }

    pub fn output_dir(&self) -> PathBuf {
        self.folder.join(&self.eval_name).join(&self.tag)
    }

    pub fn encoder_config(&self) -> Result<EncoderConfig> {
        self.model_kwargs.pretrain_kwargs.encoder.encoder_config()
    }

    /// Number of probe outputs: classes or regression targets.
    pub fn num_outputs(&self) -> Result<usize> {
        match self.task() {
            TaskType::Classification => match self.experiment.data.num_classes {
                Some(n) if n >= 2 => Ok(n),
                Some(n) => {
                    bail!("experiment.data.num_classes = {n}: classification needs >= 2 classes")
                }
                None => bail!("experiment.data.num_classes is required for classification"),
            },
            TaskType::Regression => Ok(self.experiment.classifier.num_targets),
        }
    }

    /// Slots (study views × clips per view) of the multi-view probe; 1 for single-view.
    pub fn num_slots(&self) -> usize {
        if self.is_multi() {
            self.experiment.classifier.num_views * self.experiment.classifier.clips_per_view
        } else {
            1
        }
    }

    /// Validates the settings; returns notes about reference settings that have no effect here.
    pub fn validate(&self) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        match self.eval_name.as_str() {
            "video_classification_frozen" | "video_classification_frozen_multi" => {}
            other => bail!(
                "eval_name `{other}` is not supported (video_classification_frozen or \
                 video_classification_frozen_multi)"
            ),
        }
        let enc = self.encoder_config()?;
        self.validate_encoder()?;
        self.validate_classifier(&enc, &mut notes)?;
        self.num_outputs()?;
        self.validate_targets(&mut notes)?;
        self.validate_views(&mut notes)?;
        self.validate_clips(&enc)?;
        self.validate_optimization()?;
        if self.val_only && self.probe_checkpoint.is_none() && !self.resume_checkpoint {
            notes.push(
                "val_only without probe_checkpoint/resume_checkpoint: the reference would evaluate a \
                 random probe; `trainer evaluate` needs --probe or probe_checkpoint"
                    .into(),
            );
        }
        self.validate_wrapper(&mut notes)?;
        Ok(notes)
    }

    /// The released encoders' architecture: 3-D RoPE, no SiLU, a known checkpoint key.
    fn validate_encoder(&self) -> Result<()> {
        let e = &self.model_kwargs.pretrain_kwargs.encoder;
        if !e.use_rope {
            bail!(
                "model_kwargs.pretrain_kwargs.encoder.use_rope: false is not supported (released models use 3-D RoPE)"
            );
        }
        if e.use_silu || e.wide_silu {
            bail!("model_kwargs.pretrain_kwargs.encoder.use_silu/wide_silu are not supported");
        }
        match e.checkpoint_key.as_str() {
            "target_encoder" | "encoder" => {}
            other => bail!(
                "model_kwargs.pretrain_kwargs.encoder.checkpoint_key `{other}`: use target_encoder or encoder"
            ),
        }
        Ok(())
    }

    /// An attentive, early-fusion probe whose heads divide the encoder width.
    fn validate_classifier(&self, enc: &EncoderConfig, notes: &mut Vec<String>) -> Result<()> {
        let c = &self.experiment.classifier;
        if c.probe_type != "attentive" {
            bail!(
                "experiment.classifier.probe_type `{}` is not supported (attentive only)",
                c.probe_type
            );
        }
        if c.use_late_fusion {
            bail!("experiment.classifier.use_late_fusion is not supported (early fusion only)");
        }
        if c.num_probe_blocks == 0 {
            bail!("experiment.classifier.num_probe_blocks must be >= 1");
        }
        if c.num_heads == 0 || !enc.embed_dim.is_multiple_of(c.num_heads) {
            bail!(
                "experiment.classifier.num_heads {} must divide the encoder width {}",
                c.num_heads,
                enc.embed_dim
            );
        }
        if c.dropout != 0.0 {
            notes.push(
                "experiment.classifier.dropout only applies to linear/mlp probes; ignored".into(),
            );
        }
        Ok(())
    }

    /// A regressor's targets and their scaling.
    fn validate_targets(&self, notes: &mut Vec<String>) -> Result<()> {
        if self.task() != TaskType::Regression {
            return Ok(());
        }
        if self.experiment.classifier.num_targets == 0 {
            bail!("experiment.classifier.num_targets must be >= 1");
        }
        let d = &self.experiment.data;
        match (d.target_mean, d.target_std) {
            (Some(_), Some(s)) if s > 0.0 => {}
            (Some(_), Some(s)) => bail!("experiment.data.target_std must be positive, got {s}"),
            _ => notes.push(
                "experiment.data.target_mean/target_std not set: MAE is reported in z-score units"
                    .into(),
            ),
        }
        Ok(())
    }

    /// The dataset type fits single- or multi-view, and a multi-view probe's slots fit the
    /// data's videos per study and clips per video.
    fn validate_views(&self, notes: &mut Vec<String>) -> Result<()> {
        let c = &self.experiment.classifier;
        let d = &self.experiment.data;
        let multi = self.is_multi();
        match (multi, d.dataset_type.as_str()) {
            (false, "VideoDataset") | (true, "VideoGroupDataset") => {}
            (m, t) => bail!(
                "experiment.data.dataset_type `{t}` does not fit eval_name `{}` (expected {})",
                self.eval_name,
                if m {
                    "VideoGroupDataset"
                } else {
                    "VideoDataset"
                }
            ),
        }
        if !multi {
            return Ok(());
        }
        if c.num_views != d.num_segments {
            bail!(
                "experiment.classifier.num_views ({}) must equal experiment.data.num_segments ({}), \
                 the number of videos per study",
                c.num_views,
                d.num_segments
            );
        }
        if c.clips_per_view != d.num_clips_per_video {
            bail!(
                "experiment.classifier.clips_per_view ({}) must equal experiment.data.num_clips_per_video ({})",
                c.clips_per_view,
                d.num_clips_per_video
            );
        }
        if !(0.0..1.0).contains(&d.miss_augment_prob) {
            bail!("experiment.data.miss_augment_prob must be in [0, 1)");
        }
        if d.min_present == 0 || d.min_present > c.num_views {
            bail!(
                "experiment.data.min_present {} must be in 1..={}",
                d.min_present,
                c.num_views
            );
        }
        if !c.use_slot_embeddings {
            notes.push(
                "multi-view without slot embeddings: slots are indistinguishable to the probe"
                    .into(),
            );
        }
        Ok(())
    }

    /// Clips divide into the encoder's patches and tubelets; counts and fractions in range.
    fn validate_clips(&self, enc: &EncoderConfig) -> Result<()> {
        let d = &self.experiment.data;
        if d.resolution == 0 || !d.resolution.is_multiple_of(enc.patch_size) {
            bail!(
                "experiment.data.resolution {} must be a positive multiple of the patch size {}",
                d.resolution,
                enc.patch_size
            );
        }
        if d.frames_per_clip == 0 || !d.frames_per_clip.is_multiple_of(enc.tubelet_size) {
            bail!(
                "experiment.data.frames_per_clip {} must be a positive multiple of the tubelet size {}",
                d.frames_per_clip,
                enc.tubelet_size
            );
        }
        if d.frame_step == 0
            || d.num_segments == 0
            || d.num_views_per_segment == 0
            || d.num_clips_per_video == 0
        {
            bail!(
                "experiment.data: frame_step, num_segments, num_views_per_segment, num_clips_per_video must be >= 1"
            );
        }
        if let Some(f) = d.label_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            bail!("experiment.data.label_fraction must be in (0, 1], got {f}");
        }
        Ok(())
    }

    fn validate_optimization(&self) -> Result<()> {
        let o = &self.experiment.optimization;
        if o.batch_size == 0 || o.num_epochs == 0 {
            bail!("experiment.optimization.batch_size and num_epochs must be >= 1");
        }
        if o.multihead_kwargs.is_empty() {
            bail!("experiment.optimization.multihead_kwargs: give at least one head");
        }
        for (i, h) in o.multihead_kwargs.iter().enumerate() {
            if !(h.lr >= 0.0 && h.weight_decay >= 0.0 && h.warmup >= 0.0) {
                bail!(
                    "experiment.optimization.multihead_kwargs[{i}]: lr, weight_decay, warmup must be >= 0"
                );
            }
        }
        if o.use_focal_loss {
            bail!("experiment.optimization.use_focal_loss is not supported");
        }
        Ok(())
    }

    /// The reference wrapper's feature options: single-level features without a temporal
    /// embedding across segments.
    fn validate_wrapper(&self, notes: &mut Vec<String>) -> Result<()> {
        let d = &self.experiment.data;
        let w = &self.model_kwargs.wrapper_kwargs;
        if let Some(layers) = &w.out_layers {
            bail!(
                "model_kwargs.wrapper_kwargs.out_layers {layers:?} (multi-level features) is not supported"
            );
        }
        if w.use_pos_embed || self.experiment.optimization.use_pos_embed {
            bail!(
                "use_pos_embed: true (temporal sin-cos embedding across segments) is not supported"
            );
        }
        if let Some(mf) = w.max_frames
            && d.frames_per_clip * d.num_segments > mf
            && !self.is_multi()
        {
            notes.push(format!(
                "frames_per_clip × num_segments = {} exceeds wrapper max_frames {mf}",
                d.frames_per_clip * d.num_segments
            ));
        }
        if d.num_views_per_segment > 1 {
            notes.push(format!(
                "{} spatial views per segment: the probe runs per view and outputs are averaged",
                d.num_views_per_segment
            ));
        }
        Ok(())
    }
}
