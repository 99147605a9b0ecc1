//! The inference stage behind a trait, so the pipeline does not care whether the model runs int8
//! on a CPU, on a GPU, or (in the pipeline's own tests) is a deterministic stand-in.
//!
//! The runtime ships exactly one engine, [`crate::bundle_engine`], which runs the int8 encoder and
//! probes of a verified bundle. There is no built-in fake: without a bundle the runtime refuses to
//! start.

use std::time::Duration;

use crate::clip::{Clip, ClipSpec};

/// How the model's training data handled the ultrasound sector (from the bundle manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SectorUse {
    /// The whole frame, resized.
    FullFrame,
    /// Cropped to the sector's bounding box.
    Crop,
    /// Cropped, and pixels outside the fan blanked.
    CropAndMask,
}

/// How a model measures EF.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EfMethod {
    /// A regressor reads EF from the clip's tokens.
    Regressor,
    /// The LV cavity is traced in every frame and EF measured beat by beat from the
    /// area–length volumes (end-diastole and end-systole of each beat), then calibrated with
    /// the bundle's line `EF = a + b · EF_traced`.
    TracedLv {
        #[serde(skip_serializing_if = "Option::is_none")]
        fit: Option<[f64; 2]>,
    },
}

/// The EF head of a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EfHeadInfo {
    /// How EF is measured.
    pub method: EfMethod,
    /// Output name (`lvef`).
    pub name: String,
    /// Unit of the de-normalised value (`%`).
    pub unit: String,
    /// Views the head was trained on; EF is withheld for any other view.
    pub valid_views: Vec<String>,
    /// Mean of the training labels (the label scaler's mean), in `unit`: what always guessing
    /// the training mean would say, the baseline a useful EF must beat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_mean: Option<f64>,
    /// The bundle's calibrated view confidence below which EF is withheld (fitted on
    /// validation data with the view head's temperature); the runtime applies the stricter of
    /// this and the board profile's `ef_min_confidence`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_view_confidence: Option<f32>,
}

/// What the rest of the runtime needs to know about a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    pub model_id: String,
    pub model_version: String,
    /// True when any part was trained on synthetic data; outputs then say so.
    pub synthetic_training_data: bool,
    /// Where the training data came from, as the bundle records it; `None` for bundles built
    /// before it was recorded (see [`crate::pipeline::compose_notice`]).
    pub provenance: Option<echojepa::bundle::Provenance>,
    /// The bundle's own notice text (the runtime adds what it must always say).
    pub notice: String,
    #[serde(skip)]
    pub clip: ClipSpec,
    pub sector: SectorUse,
    /// View class names in the view head's output order.
    pub view_classes: Vec<String>,
    /// Whether the view probabilities are calibrated (the bundle's view head has a softmax
    /// temperature fitted on validation data).
    pub view_calibrated: bool,
    pub ef: Option<EfHeadInfo>,
    /// Where and how it runs, for people (`cpu int8 (2 threads)`).
    pub runs_on: String,
}

impl ModelInfo {
    /// The view confidence below which EF is withheld: the stricter of the board profile's
    /// `ef_min_confidence` and the threshold the bundle derived on its validation data.
    pub fn ef_min_confidence(&self, board: f32) -> f32 {
        let bundle = self.ef.as_ref().and_then(|e| e.min_view_confidence);
        board.max(bundle.unwrap_or(0.0))
    }
}

/// One clip's raw model outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOutput {
    /// Probabilities over [`ModelInfo::view_classes`] (sum 1).
    pub view_probs: Vec<f32>,
    /// De-normalised EF estimate of this clip, when the model has an EF regressor.
    pub ef: Option<f32>,
    /// With an LV decoder: the traced cavity's area–length volume in each frame of the clip,
    /// oldest first (pixel units; only ratios matter).
    pub lv_volumes: Option<Vec<f64>>,
    /// With an LV decoder: the traced cavity's outline in the newest frame, in model-input
    /// pixels (`resolution × resolution`), for drawing.
    pub lv_outline: Option<Vec<(u16, u16)>>,
    /// Time spent per stage inside the engine (`normalise`, `encoder`, `probes`, ...).
    pub stages: Vec<(&'static str, Duration)>,
}

/// An inference failure on one clip.
#[derive(Debug, thiserror::Error)]
#[error("inference failed on clip {clip}: {reason}")]
pub struct EngineError {
    pub clip: u64,
    pub reason: String,
}

/// Runs the model on clips. Called from the inference thread only.
pub trait InferenceEngine: Send {
    fn info(&self) -> &ModelInfo;
    fn infer(&mut self, clip: &Clip) -> Result<EngineOutput, EngineError>;
}

/// Softmax of logits (numerically stable).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = super::softmax(&[1000.0, 1001.0, 999.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }
}
