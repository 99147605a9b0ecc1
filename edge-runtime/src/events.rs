//! What the runtime tells the world: one [`Event`] enum, serialised as one JSON object per line on
//! stdout (schema in `SCHEMA.md`), streamed to the web view and mapped onto the serial protocol.
//! Every event names the model (id and version) it comes from.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clinical::{EfDecision, EfStatus};
use crate::frame::GroundTruth;
use crate::stats::{CounterSnapshot, Percentiles};

/// Version of the JSON lines schema (`SCHEMA.md`).
pub const SCHEMA_VERSION: u32 = 1;

/// The text every output carries.
pub const NOT_FOR_DIAGNOSTIC_USE: &str = "Not for diagnostic use.";
/// Added when the bundle says it was trained on synthetic data.
pub const TRAINED_ON_SYNTHETIC: &str = "Trained on synthetic data.";

/// Model identity carried by every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelRef {
    pub id: String,
    pub version: String,
}

/// One output record.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Started(Started),
    Prediction(Box<Prediction>),
    Status(Status),
    Summary(Box<Summary>),
}

impl Event {
    pub fn model(&self) -> &ModelRef {
        match self {
            Event::Started(e) => &e.model,
            Event::Prediction(e) => &e.model,
            Event::Status(e) => &e.model,
            Event::Summary(e) => &e.model,
        }
    }
}

/// First record of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Started {
    pub schema: u32,
    pub model: ModelRef,
    pub board: String,
    pub source: String,
    pub runs_on: String,
    pub view_classes: Vec<String>,
    /// Views EF is shown for (empty: the model has no EF head).
    pub ef_views: Vec<String>,
    /// View confidence below which EF is withheld (the stricter of the board's and the
    /// bundle's threshold); null without an EF head.
    pub ef_min_confidence: Option<f32>,
    /// How long an EF view must be held before EF is shown (one cardiac cycle), seconds.
    pub ef_min_cycle_s: f64,
    /// Whether the view confidence is calibrated (the bundle's view head has a softmax
    /// temperature fitted on validation data).
    pub view_confidence_calibrated: bool,
    pub clip_frames: usize,
    pub clip_interval_ms: f64,
    pub resolution: usize,
    pub clip_every: usize,
    pub synthetic_training_data: bool,
    pub notice: String,
}

/// The view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewOut {
    pub label: String,
    pub confidence: f32,
    pub probs: BTreeMap<String, f32>,
    /// The [`TOP_VIEWS`] most probable views, most probable first (`top[0]` is `label`).
    pub top: Vec<ViewProb>,
}

/// How many alternatives [`ViewOut::top`] lists.
pub const TOP_VIEWS: usize = 3;

/// One view class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewProb {
    pub label: String,
    pub p: f32,
}

/// The [`TOP_VIEWS`] most probable views of a clip, most probable first, from the class names
/// and probabilities (same order). Ties rank the later class first, as [`crate::clinical::top1`]
/// picks it, so `top[0]` is always the label.
pub fn top_views(classes: &[String], probs: &[f32]) -> Vec<ViewProb> {
    let mut ranked: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    ranked
        .into_iter()
        .take(TOP_VIEWS)
        .map(|(i, p)| ViewProb {
            label: classes
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class_{i}")),
            p,
        })
        .collect()
}

/// EF with its status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EfOut {
    pub status: EfStatus,
    /// Smoothed EF (null unless status is `ok`).
    pub value: Option<f32>,
    /// Standard deviation of the per-clip estimates in the window.
    pub spread: Option<f32>,
    /// Clips in the window.
    pub clips: Option<usize>,
    pub window_s: Option<f32>,
    /// With a traced LV: whole beats behind the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beats: Option<usize>,
    pub unit: String,
    /// The model's EF at this clip whether shown or not (null without an EF head), for logging
    /// and scoring: the regressor's value for the clip, or with a traced LV the beats of the
    /// current view's window including this clip.
    pub clip_estimate: Option<f32>,
    /// `warming_up` only: seconds the view must still be held before EF is shown.
    pub warmup_remaining_s: Option<f32>,
}

impl EfOut {
    pub fn new(d: &EfDecision, unit: &str) -> Self {
        let est = d.estimate;
        Self {
            status: d.status,
            value: est.map(|e| e.value),
            spread: est.map(|e| e.spread),
            clips: est.map(|e| e.clips),
            window_s: est.map(|e| e.window_s),
            beats: est.and_then(|e| e.beats),
            unit: unit.to_string(),
            clip_estimate: d.clip_estimate,
            warmup_remaining_s: d.warmup_remaining.map(|r| r.as_secs_f32()),
        }
    }
}

/// One clip's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub model: ModelRef,
    /// Clip number (counts dropped clips too).
    pub clip: u64,
    /// Source time of the newest frame of the clip, seconds.
    pub time_s: f64,
    /// Source sequence numbers of the first and newest frame.
    pub frames: [u64; 2],
    pub view: ViewOut,
    pub ef: EfOut,
    /// With an LV decoder: the traced LV cavity's rim in the clip's newest frame, `[x, y]` as
    /// fractions of the source frame's width and height, so a viewer can show what EF was
    /// measured from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lv_outline: Option<Vec<[f32; 2]>>,
    /// Milliseconds from the newest frame's arrival to this prediction, and per stage.
    pub latency_ms: BTreeMap<String, f32>,
    pub counters: CounterSnapshot,
    pub synthetic_training_data: bool,
    pub notice: String,
    /// Ground truth of synthetic sources (the phantom), for scoring; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth: Option<GroundTruth>,
}

/// Severity of a status record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Something happened that is not a prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub model: ModelRef,
    pub level: Level,
    /// Machine-readable code (see SCHEMA.md).
    pub code: String,
    pub message: String,
    pub counters: CounterSnapshot,
}

/// Scores against a synthetic source's ground truth.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Accuracy {
    /// Clips with ground truth.
    pub clips: u64,
    pub view_correct: u64,
    pub view_accuracy: Option<f64>,
    /// Predictions with EF shown (status ok) and ground truth.
    pub ef_shown: u64,
    /// Mean absolute error of the shown (smoothed) EF, points.
    pub ef_mae: Option<f64>,
    /// Clips of an EF view with ground truth (every clip's own estimate, shown or not).
    pub ef_clips: u64,
    /// Mean absolute error of the per-clip estimates on EF views, points.
    pub ef_clip_mae: Option<f64>,
    /// Mean absolute error, on the same clips as `ef_clip_mae`, of always saying the model's
    /// training mean: the baseline `ef_clip_mae` must beat to mean anything.
    pub ef_mean_predictor_mae: Option<f64>,
    /// Shown EF values whose true view is not one the EF head is valid for.
    pub ef_shown_on_other_views: u64,
    /// `ef_shown_on_other_views / ef_shown`.
    pub ef_shown_on_other_views_share: Option<f64>,
    /// Per true view: its clips, how many were read right, and what they were read as (a row of
    /// the confusion matrix), so an overall accuracy can be traced to the views it misses.
    pub per_view: BTreeMap<String, ViewScore>,
}

/// One true view's clips in [`Accuracy`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ViewScore {
    pub clips: u64,
    pub correct: u64,
    pub accuracy: Option<f64>,
    /// Predicted label -> clips.
    pub predicted: BTreeMap<String, u64>,
}

/// Last record of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub model: ModelRef,
    /// Why the run ended.
    pub reason: String,
    pub wall_s: f64,
    /// Frames captured per wall-clock second.
    pub capture_fps: f64,
    pub counters: CounterSnapshot,
    pub latency_ms: BTreeMap<String, Percentiles>,
    pub peak_rss_mb: Option<f64>,
    pub accuracy: Accuracy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_views_rank_by_probability_and_agree_with_top1_on_ties() {
        let classes: Vec<String> = ["A4C", "A2C", "PLAX", "PSAX"].map(String::from).to_vec();
        let top = top_views(&classes, &[0.1, 0.6, 0.05, 0.25]);
        let labels: Vec<&str> = top.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(labels, ["A2C", "PSAX", "A4C"]);
        assert_eq!(top[0].p, 0.6);
        let tie = [0.4, 0.4, 0.2];
        let (i, _) = crate::clinical::top1(&tie).unwrap();
        assert_eq!(top_views(&classes, &tie)[0].label, classes[i]);
        // fewer classes than TOP_VIEWS; an unnamed class keeps its index
        assert_eq!(top_views(&classes[..1], &[0.3, 0.7])[0].label, "class_1");
    }
}
