//! From a dataset list entry to ready clip tensors: open the video (MP4/H.264 built in, DICOM,
//! FFmpeg formats when enabled), pick clip frames with the reference's rules, decode only those
//! frames, optionally blank/crop to the echo sector, optionally perturb (robustness
//! evaluation), then the eval or train transform.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use echojepa::bundle::SectorHandling;
use echojepa_input::preprocess::{ClipTensor, IMAGENET_MEAN, IMAGENET_STD, eval_transform};
use echojepa_phantom::perturb::Perturbation;
use echojepa_video::{self as video, Clip, ColorMode};
use rand_chacha::ChaCha8Rng;

use super::augment::RandomResizedCrop;
use super::csv::{MultiViewEntry, VideoEntry};
use super::sampling::{ClipSampling, StepRule, contiguous_windows};

/// The spatial transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// Short side → `crop·256/224`, centre crop, normalise.
    Eval { crop_size: usize },
    /// Random resized crop, normalise.
    Train(RandomResizedCrop),
}

impl Transform {
    pub fn crop_size(&self) -> usize {
        match self {
            Transform::Eval { crop_size } => *crop_size,
            Transform::Train(r) => r.size,
        }
    }
}

/// Everything that turns a video file into clip tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPipeline {
    pub sampling: ClipSampling,
    pub transform: Transform,
    /// Sector handling before the transform (EchoJEPA blanks the ECG and text).
    pub sector: SectorHandling,
    /// Decode as RGB (as the reference) or gray (replicated to 3 channels at the end; faster).
    pub color: ColorMode,
    /// A robustness perturbation applied to every frame before the transform.
    pub perturbation: Option<Perturbation>,
    /// Write each prepared clip here (`echojepa_input::dump`), for comparing input paths.
    pub dump: Option<PathBuf>,
}

impl ClipPipeline {
    /// An evaluation pipeline: `frames` frames every `step`, `segments` clips, centre crop.
    pub fn eval(frames: usize, step: usize, segments: usize, crop_size: usize) -> Self {
        Self {
            sampling: ClipSampling {
                frames_per_clip: frames,
                step: StepRule::FrameStep(step),
                num_clips: segments,
                random_clip_sampling: false,
                allow_clip_overlap: true,
                filter_short_videos: false,
            },
            transform: Transform::Eval { crop_size },
            sector: SectorHandling::FullFrame,
            // Grey, like the cart: echo is grey, and the encoder's three channels are the grey
            // replicated (for neutral-chroma H.264 the RGB decode is the same bytes three times).
            color: ColorMode::Gray,
            perturbation: None,
            dump: None,
        }
    }

    /// Decodes `clips` (frame index lists) of the video at `path` in one pass.
    fn decode(
        &self,
        clips: &[Vec<usize>],
        reader: &mut dyn video::VideoReader,
    ) -> Result<Vec<Clip>> {
        let all: Vec<usize> = clips.iter().flatten().copied().collect();
        let decoded = reader.read_frames(&all, self.color)?;
        let n = decoded.frame_len();
        let mut out = Vec::with_capacity(clips.len());
        let mut k = 0;
        for c in clips {
            let data = decoded.data[k * n..(k + c.len()) * n].to_vec();
            out.push(Clip {
                frames: c.len(),
                height: decoded.height,
                width: decoded.width,
                channels: decoded.channels,
                data,
            });
            k += c.len();
        }
        Ok(out)
    }

    /// Sector handling, perturbation and transform of decoded clips.
    fn finish(&self, mut clips: Vec<Clip>, rng: &mut ChaCha8Rng) -> Result<Vec<ClipTensor>> {
        echojepa_input::preprocess::apply_sector(&mut clips, self.sector)
            .context("cropping to the echo sector")?;
        if let Some(p) = &self.perturbation {
            clips.iter_mut().for_each(|c| p.apply(c));
        }
        clips
            .iter()
            .map(|c| match &self.transform {
                Transform::Eval { crop_size } => Ok(eval_transform(c, *crop_size)?),
                Transform::Train(rrc) => Ok(rrc.apply(c, rng)),
            })
            .collect()
    }

    /// Loads the clips of one video with the reference's sampling rules.
    pub fn load(&self, path: &Path, rng: &mut ChaCha8Rng) -> Result<Vec<ClipTensor>> {
        let mut reader = video::open(path)?;
        let info = reader.info().clone();
        let clips = self
            .sampling
            .clip_indices(info.frame_count, info.fps, rng)
            .with_context(|| format!("{}: sampling clips", path.display()))?;
        let decoded = self.decode(&clips, reader.as_mut())?;
        let out = self
            .finish(decoded, rng)
            .with_context(|| format!("{}: preprocessing", path.display()))?;
        if let Some(dir) = &self.dump {
            for (k, (c, idx)) in out.iter().zip(&clips).enumerate() {
                let idx: Vec<u64> = idx.iter().map(|&i| i as u64).collect();
                echojepa_input::dump::write(
                    dir,
                    &format!("{}-{k}", echojepa_input::dump::stem_of(path)),
                    &c.data,
                    [c.channels, c.frames, c.height, c.width],
                    &idx,
                    "trainer",
                )
                .with_context(|| format!("dumping inputs into {}", dir.display()))?;
            }
        }
        Ok(out)
    }

    /// Loads `num_clips` contiguous windows (the EchoJEPA multi-view rule).
    pub fn load_contiguous(&self, path: &Path, rng: &mut ChaCha8Rng) -> Result<Vec<ClipTensor>> {
        let mut reader = video::open(path)?;
        let info = reader.info().clone();
        let step = self
            .sampling
            .frame_step(info.fps)
            .with_context(|| format!("{}: frame step", path.display()))?;
        let clips = contiguous_windows(
            info.frame_count,
            self.sampling.frames_per_clip,
            step,
            self.sampling.num_clips,
        )
        .with_context(|| format!("{}: sampling clips", path.display()))?;
        let decoded = self.decode(&clips, reader.as_mut())?;
        self.finish(decoded, rng)
            .with_context(|| format!("{}: preprocessing", path.display()))
    }

    /// A normalised all-black clip (what a missing view becomes).
    pub fn black_clip(&self) -> ClipTensor {
        let s = self.transform.crop_size();
        let t = self.sampling.frames_per_clip;
        let plane = t * s * s;
        let mut data = Vec::with_capacity(3 * plane);
        for ch in 0..3 {
            data.extend(std::iter::repeat_n(
                -IMAGENET_MEAN[ch] / IMAGENET_STD[ch],
                plane,
            ));
        }
        ClipTensor {
            channels: 3,
            frames: t,
            height: s,
            width: s,
            data,
        }
    }
}

/// One loaded sample: a clip tensor per slot (`view · clips_per_view + clip`), a presence flag
/// per slot and the label.
#[derive(Debug, Clone)]
pub struct Sample {
    pub slots: Vec<ClipTensor>,
    pub present: Vec<bool>,
    pub label: f64,
}

/// Something the loader can draw samples from.
#[allow(dead_code)] // `is_empty` and `slots` complete the interface; not every binary path uses them
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Slots per sample (clips, or views × clips).
    fn slots(&self) -> usize;
    /// Loads sample `index`; `rng` is seeded per (seed, epoch, index).
    fn load(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Sample>;
    /// The file(s) of sample `index`, for error reports.
    fn describe(&self, index: usize) -> String;
    /// The list files the samples come from (for messages that point at them).
    fn lists(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
}

/// `VideoDataset`: one video per sample, `num_clips` clips per video.
#[derive(Debug, Clone)]
pub struct VideoDataset {
    pub entries: Vec<VideoEntry>,
    pub pipeline: ClipPipeline,
    /// The list the entries were read from, if any.
    pub list: Option<std::path::PathBuf>,
}

impl VideoDataset {
    pub fn from_csv(csv: &Path, pipeline: ClipPipeline) -> Result<Self> {
        Ok(Self {
            entries: super::csv::read_video_csv(csv)?,
            pipeline,
            list: Some(csv.to_path_buf()),
        })
    }
}

impl Dataset for VideoDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn slots(&self) -> usize {
        self.pipeline.sampling.num_clips
    }
    fn load(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Sample> {
        let e = &self.entries[index];
        let slots = self.pipeline.load(&e.path, rng)?;
        Ok(Sample {
            present: vec![true; slots.len()],
            slots,
            label: e.label,
        })
    }
    fn describe(&self, index: usize) -> String {
        self.entries
            .get(index)
            .map(|e| e.path.display().to_string())
            .unwrap_or_default()
    }
    fn lists(&self) -> Vec<std::path::PathBuf> {
        self.list.iter().cloned().collect()
    }
}

/// `VideoGroupDataset`: several views per sample (missing views are black and flagged absent),
/// contiguous windows per view.
#[derive(Debug, Clone)]
pub struct MultiViewDataset {
    pub entries: Vec<MultiViewEntry>,
    pub pipeline: ClipPipeline,
    /// The list the entries were read from, if any.
    pub list: Option<std::path::PathBuf>,
}

impl MultiViewDataset {
    pub fn from_csv(csv: &Path, pipeline: ClipPipeline) -> Result<Self> {
        let entries = super::csv::read_multiview_csv(csv)?;
        Ok(Self {
            entries,
            pipeline,
            list: Some(csv.to_path_buf()),
        })
    }

    pub fn num_views(&self) -> usize {
        self.entries.first().map(|e| e.views.len()).unwrap_or(0)
    }
}

impl Dataset for MultiViewDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn slots(&self) -> usize {
        self.num_views() * self.pipeline.sampling.num_clips
    }
    fn load(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Sample> {
        let e = &self.entries[index];
        let per = self.pipeline.sampling.num_clips;
        let mut slots = Vec::with_capacity(e.views.len() * per);
        let mut present = Vec::with_capacity(e.views.len() * per);
        for v in &e.views {
            match v {
                Some(p) => {
                    let clips = self.pipeline.load_contiguous(p, rng)?;
                    present.extend(std::iter::repeat_n(true, clips.len()));
                    slots.extend(clips);
                }
                None => {
                    for _ in 0..per {
                        slots.push(self.pipeline.black_clip());
                        present.push(false);
                    }
                }
            }
        }
        if !present.iter().any(|&p| p) {
            bail!("every view is missing");
        }
        Ok(Sample {
            slots,
            present,
            label: e.label,
        })
    }
    fn describe(&self, index: usize) -> String {
        self.entries
            .get(index)
            .map(|e| {
                e.views
                    .iter()
                    .map(|v| {
                        v.as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "MISS".into())
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    }
    fn lists(&self) -> Vec<std::path::PathBuf> {
        self.list.iter().cloned().collect()
    }
}
