//! What the encoder expects of a clip, stored in checkpoints and bundle manifests.

use serde::{Deserialize, Serialize};

/// ImageNet channel means (RGB): the reference normalises every clip with them. The one
/// definition; trainer, quantize and the runtime use these constants.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The clip the encoder expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Frames per clip (`frames_per_clip` in the reference).
    pub frames: usize,
    /// Take every `frame_step`-th source frame (reference `frame_step`), used when `fps` is None.
    pub frame_step: Option<usize>,
    /// Resample to this frame rate (reference `fps`), takes precedence over `frame_step`.
    pub fps: Option<f64>,
    /// Crop size `[height, width]` in pixels.
    pub resolution: [usize; 2],
    /// Colour channels the encoder takes (3: grayscale echo is replicated to RGB).
    pub channels: usize,
    /// Per-channel mean subtracted after scaling pixels to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel std divided after subtracting the mean.
    pub std: [f32; 3],
    /// How the ultrasound sector was handled when the model was trained.
    pub sector: SectorHandling,
    /// How the frames of a clip are spaced (absent in manifests written before it existed:
    /// uniform, what the edge runtime has always done).
    #[serde(default, skip_serializing_if = "FrameSpacing::is_uniform")]
    pub spacing: FrameSpacing,
}

/// How the `frames` of a clip are placed within `frames × step` source frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameSpacing {
    /// Exactly `step` source frames apart: offsets `0, step, 2·step, …`.
    #[default]
    Uniform,
    /// The reference loader's rule: `int(linspace(0, frames·step, frames))`, the last clipped
    /// to `frames·step − 1` (step 4 × 8 frames: 0, 4, 9, 13, 18, 22, 27, 31).
    ReferenceLinspace,
}

impl FrameSpacing {
    pub fn is_uniform(&self) -> bool {
        *self == FrameSpacing::Uniform
    }

    /// Source-frame offsets of a clip's `frames` frames for a frame step `step`.
    pub fn offsets(self, frames: usize, step: usize) -> Vec<usize> {
        let step = step.max(1);
        match self {
            FrameSpacing::Uniform => (0..frames).map(|k| k * step).collect(),
            FrameSpacing::ReferenceLinspace => {
                crate::sampling::reference_offsets(frames, frames * step)
            }
        }
    }
}

/// Largest frame rate a bundle may declare (frames per second).
pub const MAX_INPUT_FPS: f64 = 1000.0;

impl InputSpec {
    /// Checks that every number can be used as it is: the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.frames == 0 || self.frames > 1024 {
            return Err(format!("input.frames {} is not in 1..=1024", self.frames));
        }
        if let Some(step) = self.frame_step
            && (step == 0 || step > 1024)
        {
            return Err(format!("input.frame_step {step} is not in 1..=1024"));
        }
        if let Some(fps) = self.fps
            && !(fps.is_finite() && (0.1..=MAX_INPUT_FPS).contains(&fps))
        {
            return Err(format!(
                "input.fps {fps} is not a frame rate between 0.1 and {MAX_INPUT_FPS}"
            ));
        }
        if self.fps.is_none() && self.frame_step.is_none() {
            return Err("input: neither fps nor frame_step is given".into());
        }
        for (i, r) in self.resolution.iter().enumerate() {
            if *r == 0 || *r > 4096 {
                return Err(format!("input.resolution[{i}] {r} is not in 1..=4096"));
            }
        }
        if !matches!(self.channels, 1 | 3) {
            return Err(format!("input.channels {} is not 1 or 3", self.channels));
        }
        for c in 0..3 {
            if !self.mean[c].is_finite() {
                return Err(format!("input.mean[{c}] {} is not finite", self.mean[c]));
            }
            if !(self.std[c].is_finite() && self.std[c] > 0.0) {
                return Err(format!(
                    "input.std[{c}] {} is not a positive number",
                    self.std[c]
                ));
            }
        }
        Ok(())
    }

    /// The frame step for a source video at `source_fps`: `frame_step`, or with a rate
    /// `ceil(source_fps) // fps` as the reference computes it; at least 1.
    pub fn frame_step_at(&self, source_fps: f64) -> usize {
        match (self.fps, self.frame_step) {
            (Some(f), _) => ((source_fps.ceil() / f).floor() as usize).max(1),
            (None, step) => step.unwrap_or(1).max(1),
        }
    }

    /// Source-frame offsets of a clip from a video at `source_fps` (see [`FrameSpacing`]).
    pub fn clip_offsets(&self, source_fps: f64) -> Vec<usize> {
        self.spacing
            .offsets(self.frames, self.frame_step_at(source_fps))
    }

    /// The reference evaluation pipeline: ImageNet mean/std, RGB, every `frame_step` frames.
    pub fn reference(frames: usize, frame_step: usize, crop: usize) -> Self {
        Self {
            frames,
            frame_step: Some(frame_step),
            fps: None,
            resolution: [crop, crop],
            channels: 3,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            sector: SectorHandling::FullFrame,
            spacing: FrameSpacing::ReferenceLinspace,
        }
    }
}

/// Sector handling of the training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SectorHandling {
    /// The whole frame was resized (no sector crop).
    FullFrame,
    /// Frames were cropped to the sector's bounding box, then resized.
    CropToSector,
    /// Cropped to the sector's bounding box and pixels outside the sector set to zero.
    CropAndMaskOutside,
}
