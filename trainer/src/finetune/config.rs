//! The fine-tuning config: the frozen-evaluation schema (`folder`, `tag`, `model_kwargs`,
//! `experiment.{classifier, data, optimization}`) plus a `finetune:` block that says how the
//! encoder trains with its heads.

use std::path::PathBuf;

use anyhow::{Result, bail};
use echojepa::EncoderConfig;
use echojepa_phantom::View;
use serde::{Deserialize, Serialize};

use crate::config::eval::EncoderKwargs;
use crate::phantom_stream::StreamSpec;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneConfig {
    #[serde(default)]
    pub app: Option<String>,
    /// The job shape (SLURM keys, as in the reference): data-parallel ranks =
    /// `nodes` x `tasks_per_node`; `experiment.optimization.batch_size` is per rank.
    #[serde(default)]
    pub nodes: crate::config::Opaque,
    #[serde(default)]
    pub tasks_per_node: crate::config::Opaque,
    /// SLURM resources per task, for `trainer slurm` (verbatim, as in the reference's configs).
    #[serde(default)]
    pub cpus_per_task: crate::config::Opaque,
    #[serde(default)]
    pub mem_per_gpu: crate::config::Opaque,
    #[serde(default = "default_eval_name")]
    pub eval_name: String,
    /// Outputs go to `folder/<eval_name>/<tag>/`.
    pub folder: PathBuf,
    pub tag: String,
    pub model_kwargs: FtModelKwargs,
    pub experiment: FtExperiment,
    pub finetune: FinetuneBlock,
}

fn default_eval_name() -> String {
    "finetune".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FtModelKwargs {
    /// Starting weights: an official `.pt` or a native checkpoint. Absent with
    /// `finetune.init: random`.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    #[serde(default)]
    pub module_name: Option<String>,
    pub pretrain_kwargs: FtPretrainKwargs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FtPretrainKwargs {
    pub encoder: EncoderKwargs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FtExperiment {
    /// Architecture of the attentive heads (`num_heads`, `num_probe_blocks`).
    #[serde(default)]
    pub classifier: FtClassifier,
    pub data: FtData,
    pub optimization: FtOptimization,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FtClassifier {
    #[serde(default = "default_heads")]
    pub num_heads: usize,
    #[serde(default = "one")]
    pub num_probe_blocks: usize,
}

impl Default for FtClassifier {
    fn default() -> Self {
        Self {
            num_heads: default_heads(),
            num_probe_blocks: 1,
        }
    }
}

fn default_heads() -> usize {
    4
}
fn one() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FtData {
    /// `PhantomStream` (clips rendered on the fly, see `finetune.phantom`) or `EchoNet` (a
    /// folder in EchoNet-Dynamic's layout at `root`).
    pub dataset_type: String,
    pub resolution: usize,
    pub frames_per_clip: usize,
    pub frame_step: usize,
    /// `EchoNet`: the folder holding `FileList.csv`, `VolumeTracings.csv` and `Videos/`.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// `EchoNet`: only the first N `FileList.csv` rows of each split (file order).
    #[serde(default)]
    pub max_videos_per_split: Option<usize>,
    /// `EchoNet`: memory for the decoded, prepared frames (MB); videos beyond it are decoded
    /// again for every clip.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: usize,
}

fn default_cache_mb() -> usize {
    4096
}

/// Where the fine-tuning clips come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// The synthetic phantom, rendered on the fly.
    Phantom,
    /// A folder in EchoNet-Dynamic's layout.
    EchoNet,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FtOptimization {
    pub batch_size: usize,
    pub num_epochs: usize,
    #[serde(default)]
    pub seed: u64,
}

/// Where the encoder's weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// `model_kwargs.checkpoint` (key `checkpoint_key`).
    Pretrained,
    /// The reference's random initialisation (seeded).
    Random,
}

/// What a head learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadTask {
    /// Attentive classifier of the echo view (the phantom's six views).
    View,
    /// Attentive regressor of the ejection fraction (percent, z-scored in training).
    Ef,
    /// Per-token linear decoder of the LV cavity in each tubelet's pixels.
    LvSegmentation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadCfg {
    /// Name in the checkpoint (`view`, `ef`, `lv`).
    pub name: String,
    pub task: HeadTask,
    /// Views whose clips train this head (empty: every view).
    #[serde(default)]
    pub views: Vec<View>,
    #[serde(default = "unit")]
    pub loss_weight: f64,
}

fn unit() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneBlock {
    #[serde(default = "default_init")]
    pub init: Init,
    /// Optimizer steps per epoch (the stream is endless; an epoch is a validation interval).
    pub steps_per_epoch: usize,
    /// Peak learning rate of the heads.
    pub lr: f64,
    /// Peak learning rate of the encoder's last block (earlier blocks get `layer_decay` less per
    /// block, the patch embedding as block −1).
    pub encoder_lr: f64,
    #[serde(default = "unit")]
    pub layer_decay: f64,
    /// Learning rate at the start of the warmup and at the end of the cosine, as a fraction of
    /// the peak.
    #[serde(default)]
    pub start_lr_ratio: f64,
    #[serde(default = "default_final_ratio")]
    pub final_lr_ratio: f64,
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Patch embedding and the first K blocks keep their weights.
    #[serde(default)]
    pub freeze_blocks: usize,
    /// Stochastic depth of the last block (linearly less for earlier blocks).
    #[serde(default)]
    pub drop_path: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Global gradient-norm clipping.
    #[serde(default)]
    pub clip_grad: Option<f64>,
    /// Exponential moving average of the weights; the EMA is what is evaluated and saved.
    #[serde(default)]
    pub ema: Option<f64>,
    pub heads: Vec<HeadCfg>,
    /// Rendering and patient seeds of the phantom stream.
    #[serde(default)]
    pub phantom: StreamSpec,
    /// Clips in the validation and test evaluations.
    #[serde(default = "default_val_clips")]
    pub val_clips: usize,
    #[serde(default = "default_test_clips")]
    pub test_clips: usize,
    /// Stop at this share of the misread views among shown EF values when deriving the EF
    /// confidence threshold from the validation split.
    #[serde(default = "default_misread")]
    pub ef_misread_target: f64,
    /// Phantom validation clips the view temperature and the EF confidence threshold are
    /// fitted on: the `val_clips` evaluated every epoch and more after them (default: the
    /// `val_clips` alone). Misreads come patient by patient and are rare, so a threshold that
    /// keeps them under `ef_misread_target` needs thousands of clips to show it.
    #[serde(default)]
    pub calibration_clips: Option<usize>,
    /// With an LV head: continuous scans (patients of the EF views, several clips in a row)
    /// on which EF is measured beat by beat from the traced cavity, as the cart does; the
    /// validation scans fit the calibration line, the test scans report it.
    #[serde(default = "default_scans")]
    pub lv_scans: usize,
    /// Clips in a row per scan.
    #[serde(default = "default_scan_clips")]
    pub scan_clips: usize,
}

fn default_scans() -> usize {
    40
}
fn default_scan_clips() -> usize {
    4
}

fn default_init() -> Init {
    Init::Pretrained
}
fn default_final_ratio() -> f64 {
    0.01
}
fn default_wd() -> f64 {
    0.05
}
fn default_val_clips() -> usize {
    120
}
fn default_test_clips() -> usize {
    240
}
fn default_misread() -> f64 {
    0.01
}

impl FinetuneConfig {
    /// The job shape the config asks for (`nodes` x `tasks_per_node`).
    pub fn topology(&self) -> Result<crate::dist::Topology> {
        crate::config::topology(&self.nodes, &self.tasks_per_node)
    }

    pub fn encoder_config(&self) -> Result<EncoderConfig> {
        self.model_kwargs.pretrain_kwargs.encoder.encoder_config()
    }

    pub fn output_dir(&self) -> PathBuf {
        self.folder.join(&self.eval_name).join(&self.tag)
    }

    /// Where the clips come from (`experiment.data.dataset_type`).
    pub fn data_kind(&self) -> Result<DataKind> {
        match self.experiment.data.dataset_type.as_str() {
            "PhantomStream" => Ok(DataKind::Phantom),
            "EchoNet" => Ok(DataKind::EchoNet),
            other => bail!(
                "experiment.data.dataset_type `{other}`: fine-tuning reads `PhantomStream` (clips rendered on the fly) or `EchoNet` (a folder in EchoNet-Dynamic's layout at experiment.data.root)"
            ),
        }
    }

    /// The settings an EchoNet-layout dataset needs.
    fn validate_echonet(&self) -> Result<()> {
        let d = &self.experiment.data;
        if d.root.is_none() {
            bail!(
                "experiment.data.root is not set: `EchoNet` reads FileList.csv, VolumeTracings.csv and Videos/ from it"
            );
        }
        if d.max_videos_per_split == Some(0) {
            bail!("experiment.data.max_videos_per_split = 0: expected at least 1 video");
        }
        for h in &self.finetune.heads {
            if h.task == HeadTask::View {
                bail!(
                    "finetune.heads: `{}` is a view head, but EchoNet has no view labels (every video is an apical 4-chamber view); remove it",
                    h.name
                );
            }
            if !h.views.is_empty() && !h.views.contains(&View::A4c) {
                bail!(
                    "finetune.heads: `{}` trains on views {:?}, but every EchoNet video is a4c; use `views: [a4c]` or leave it out",
                    h.name,
                    h.views
                );
            }
        }
        Ok(())
    }

    /// Settings that cannot train: named so the user can fix the config.
    pub fn validate(&self) -> Result<()> {
        let f = &self.finetune;
        let d = &self.experiment.data;
        if f.calibration_clips.is_some() && self.data_kind()? != DataKind::Phantom {
            bail!(
                "finetune.calibration_clips renders more phantom validation clips; a dataset calibrates on its whole validation split (remove the key)"
            );
        }
        if self.data_kind()? == DataKind::EchoNet {
            self.validate_echonet()?;
        }
        if f.heads.is_empty() {
            bail!("finetune.heads is empty: give at least one head (view, ef or lv_segmentation)");
        }
        let mut names: Vec<&str> = f.heads.iter().map(|h| h.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            bail!("finetune.heads: two heads share a name ({names:?})");
        }
        if f.init == Init::Pretrained && self.model_kwargs.checkpoint.is_none() {
            bail!("finetune.init is `pretrained` but model_kwargs.checkpoint is not set");
        }
        let enc = self.encoder_config()?;
        if f.freeze_blocks > enc.depth {
            bail!(
                "finetune.freeze_blocks = {} but the encoder has {} blocks",
                f.freeze_blocks,
                enc.depth
            );
        }
        for (key, v) in [
            ("finetune.lr", f.lr),
            ("finetune.encoder_lr", f.encoder_lr),
            ("finetune.layer_decay", f.layer_decay),
            ("finetune.weight_decay", f.weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{key} = {v}: expected a finite number >= 0");
            }
        }
        if !(0.0..1.0).contains(&f.drop_path) {
            bail!("finetune.drop_path = {}: expected 0 <= p < 1", f.drop_path);
        }
        if let Some(m) = f.ema
            && !(0.0..1.0).contains(&m)
        {
            bail!("finetune.ema = {m}: expected 0 <= momentum < 1");
        }
        if f.steps_per_epoch == 0 || self.experiment.optimization.num_epochs == 0 {
            bail!("finetune.steps_per_epoch and experiment.optimization.num_epochs must be > 0");
        }
        if self.experiment.optimization.batch_size == 0 {
            bail!("experiment.optimization.batch_size must be > 0");
        }
        if !d.frames_per_clip.is_multiple_of(enc.tubelet_size)
            || !d.resolution.is_multiple_of(enc.patch_size)
        {
            bail!(
                "{} frames at {} px do not tile into {}-frame, {}-px patches",
                d.frames_per_clip,
                d.resolution,
                enc.tubelet_size,
                enc.patch_size
            );
        }
        // the evaluation clips are held in memory (about 1 MB each at 16 x 112 x 112)
        for (key, n) in [("val_clips", f.val_clips), ("test_clips", f.test_clips)] {
            if !(1..=20_000).contains(&n) {
                bail!("finetune.{key} = {n}: expected 1 to 20000 clips");
            }
        }
        if let Some(n) = f.calibration_clips
            && !(f.val_clips..=100_000).contains(&n)
        {
            bail!(
                "finetune.calibration_clips = {n}: expected at least val_clips ({}) and at most 100000",
                f.val_clips
            );
        }
        if !(1..=2_000).contains(&f.lv_scans) || !(1..=64).contains(&f.scan_clips) {
            bail!(
                "finetune.lv_scans = {} and scan_clips = {}: expected 1 to 2000 scans of 1 to 64 clips",
                f.lv_scans,
                f.scan_clips
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> FinetuneConfig {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo/finetune.yaml");
        crate::config::load::<FinetuneConfig>(&path).unwrap().config
    }

    #[test]
    fn calibration_clips_are_phantom_clips_beyond_the_validation_set() {
        let mut c = demo();
        assert_eq!(c.finetune.calibration_clips, Some(4000));
        c.validate().unwrap();
        c.finetune.calibration_clips = Some(c.finetune.val_clips - 1);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("at least val_clips"), "{e}");
        c.finetune.calibration_clips = Some(4000);
        c.experiment.data.dataset_type = "EchoNet".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("finetune.calibration_clips renders more phantom"),
            "{e}"
        );
    }
}
