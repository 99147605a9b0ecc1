//! Where the fine-tuning clips come from: the synthetic phantom rendered on the fly
//! (`PhantomStream`) or a folder in EchoNet-Dynamic's layout (`EchoNet`).

use std::sync::Arc;

use anyhow::Result;

use super::config::{DataKind, FinetuneConfig, HeadTask};
use super::echonet::{DataCounts, EchoNet, EchoNetSpec};
use super::eval::{self, Rendered};
use crate::phantom_stream::{PhantomStream, Split};

/// The clips of a run.
#[derive(Debug, Clone)]
pub enum Source {
    Phantom(PhantomStream),
    EchoNet(Arc<EchoNet>),
}

/// The phantom stream a config describes (checks the seed ranges; renders nothing).
pub fn phantom_stream(cfg: &FinetuneConfig) -> Result<PhantomStream> {
    let d = &cfg.experiment.data;
    PhantomStream::new(
        cfg.finetune.phantom.clone(),
        d.frames_per_clip,
        d.frame_step,
        d.resolution,
        cfg.experiment.optimization.seed,
    )
}

/// The EchoNet settings of a config.
pub fn echonet_spec(cfg: &FinetuneConfig) -> EchoNetSpec {
    let d = &cfg.experiment.data;
    EchoNetSpec {
        root: d.root.clone().unwrap_or_default(),
        max_videos_per_split: d.max_videos_per_split,
        cache_mb: d.cache_mb,
        frames: d.frames_per_clip,
        frame_step: d.frame_step,
        resolution: d.resolution,
        seed: cfg.experiment.optimization.seed,
        need_tracings: cfg
            .finetune
            .heads
            .iter()
            .any(|h| h.task == HeadTask::LvSegmentation),
    }
}

impl Source {
    /// Opens the config's data: the phantom stream, or the dataset (read and decoded once;
    /// every video left out is logged as a warning naming its file).
    pub fn open(cfg: &FinetuneConfig) -> Result<Self> {
        Ok(match cfg.data_kind()? {
            DataKind::Phantom => Source::Phantom(phantom_stream(cfg)?),
            DataKind::EchoNet => {
                let (data, warnings) = EchoNet::open(echonet_spec(cfg))?;
                for w in &warnings {
                    tracing::warn!("{w}");
                }
                Source::EchoNet(Arc::new(data))
            }
        })
    }

    pub fn phantom(&self) -> Option<&PhantomStream> {
        match self {
            Source::Phantom(p) => Some(p),
            Source::EchoNet(_) => None,
        }
    }

    /// What opening a dataset found (`None` for the phantom).
    pub fn counts(&self) -> Option<&DataCounts> {
        match self {
            Source::Phantom(_) => None,
            Source::EchoNet(e) => Some(&e.counts),
        }
    }

    /// Whether the clips are synthetic.
    pub fn synthetic(&self) -> bool {
        matches!(self, Source::Phantom(_))
    }

    /// Mean and std of the training EF labels (the EF head's scaler).
    pub fn ef_stats(&self) -> (f64, f64) {
        match self {
            Source::Phantom(p) => p.ef_stats(4096),
            Source::EchoNet(e) => e.ef_stats(),
        }
    }

    /// The fixed validation or test clips: `n` phantom clips, or every video of the split.
    pub fn eval_clips(&self, split: Split, n: usize) -> Result<Vec<Rendered>> {
        match self {
            Source::Phantom(p) => eval::render_split(p, split, n),
            Source::EchoNet(e) => e.eval_clips(split),
        }
    }

    /// How the data is named in the log.
    pub fn describe(&self) -> String {
        match self {
            Source::Phantom(_) => "SYNTHETIC phantom stream".into(),
            Source::EchoNet(e) => e.describe(),
        }
    }

    /// What the test clips are, for the closing summary.
    pub fn test_clips_name(&self) -> &'static str {
        match self {
            Source::Phantom(_) => "unseen phantom clips",
            Source::EchoNet(_) => "TEST clips (one per traced ED and ES frame, else one per video)",
        }
    }

    /// Where the clips come from, for the checkpoint's provenance.
    pub fn provenance(&self) -> echojepa::bundle::Provenance {
        match self {
            Source::Phantom(_) => echojepa::bundle::Provenance::synthetic(self.training_note()),
            Source::EchoNet(_) => echojepa::bundle::Provenance::recorded(self.training_note()),
        }
    }

    /// The checkpoint's `training_data` note.
    pub fn training_note(&self) -> String {
        match self {
            Source::Phantom(p) => {
                let s = &p.spec;
                format!(
                    "SYNTHETIC echo phantom streamed by `trainer finetune` (views {}, {}x{} at {} fps); no patient data",
                    s.views
                        .iter()
                        .map(|v| v.name())
                        .collect::<Vec<_>>()
                        .join(","),
                    s.width,
                    s.height,
                    s.fps
                )
            }
            Source::EchoNet(e) => format!(
                "{}; patient data if this is EchoNet-Dynamic (Stanford research use agreement: no redistribution)",
                e.describe()
            ),
        }
    }

    /// The checkpoint's `finetune_seeds` note: what a run's clips are a function of.
    pub fn seeds_note(&self) -> String {
        match self {
            Source::Phantom(p) => {
                let s = &p.spec;
                format!(
                    "run seed {}; patients train [{}, +{}), val [{}, +{}), test [{}, +{})",
                    p.seed,
                    s.train_seeds.start,
                    s.train_seeds.count,
                    s.val_seeds.start,
                    s.val_seeds.count,
                    s.test_seeds.start,
                    s.test_seeds.count
                )
            }
            Source::EchoNet(e) => format!(
                "run seed {}; splits from the Split column of {}",
                e.spec.seed,
                e.spec.root.join("FileList.csv").display()
            ),
        }
    }
}
