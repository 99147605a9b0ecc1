//! The bundle manifest: what a cart needs to know about a model before it runs it (architecture,
//! input spec, heads with classes/targets/units/scalers, per-layer precision) and the sha256 of
//! every file, so that one ed25519 signature over `manifest.json` covers the whole bundle.

pub use echojepa_input::{IMAGENET_MEAN, IMAGENET_STD, InputSpec, SectorHandling};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{EncoderConfig, ProbeConfig, ProbeKind};
use crate::provenance::Provenance;
use crate::task::HeadTask;

/// Value of [`Manifest::format`].
pub const FORMAT: &str = "echojepa-bundle";
/// Version of the manifest schema this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// `manifest.json` of an edge bundle.
///
/// Everything a runtime needs to run the model correctly is here; the weights file holds only
/// tensors. The runtime must read this struct only from a [`super::VerifiedBundle`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Schema version, [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Stable model identifier, e.g. `echojepa-vit-small-view-ef`.
    pub model_id: String,
    /// Version of this model (free text, e.g. `2026.11.1`).
    pub model_version: String,
    /// Anti-rollback counter: a cart refuses a bundle whose security version is below the
    /// highest it has accepted (unless the operator overrides it, which is logged). Raise it
    /// whenever older bundles must no longer run (a fixed model or safety defect). Absent in
    /// bundles made before it existed: 0.
    #[serde(default)]
    pub security_version: u64,
    /// Seconds since the Unix epoch after which carts refuse the bundle (optional expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_unix: Option<u64>,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// How the model was made, for people and audits (recipe, seeds, timings, metrics), as
    /// the builder gave it (`quantize build --note KEY=VALUE`). Covered by the signature.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
    /// True when any part (encoder or probe) was trained on synthetic data (the phantom).
    /// Runtimes must say so wherever a user sees the model's output.
    pub synthetic_training_data: bool,
    /// Text a runtime shows next to predictions. With [`Manifest::provenance`] recorded it is
    /// only what the builder adds: runtimes say themselves that the data was synthetic and that
    /// the model is not for diagnostic use. Older bundles wrote those sentences here.
    pub notice: String,
    /// Where the training data came from. Absent in bundles built before it was recorded (and
    /// then left out when such a manifest is written again, so its bytes do not change):
    /// [`Manifest::provenance`] falls back to `synthetic_training_data`. When present, its
    /// `synthetic` equals `synthetic_training_data`, which older runtimes read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// Seconds since the Unix epoch when the bundle was built.
    pub created_unix: u64,
    /// Tool that wrote the bundle.
    pub tool: ToolInfo,
    /// The encoder architecture (same struct as the f32 model).
    pub encoder: EncoderConfig,
    /// What a clip must look like before it reaches the encoder.
    pub input: InputSpec,
    /// The probe heads, in the order the runtime should report them.
    pub heads: Vec<HeadSpec>,
    /// The LV cavity decoder, when the model has one: the runtime then measures EF beat by beat
    /// from the traced cavity instead of reading it from a regressor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lv_segmentation: Option<LvHeadSpec>,
    /// Name of the GGUF weights file (one of [`Manifest::files`]).
    pub weights: String,
    /// Where the weights came from.
    pub source: SourceInfo,
    /// How the weights were quantized, layer by layer.
    pub quantization: QuantizationInfo,
    /// Every file of the bundle except `manifest.json` and `manifest.sig`, by file name.
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// Where the training data came from: as recorded, or for bundles built before it was
    /// (legacy) from `synthetic_training_data` alone.
    pub fn provenance(&self) -> Provenance {
        self.provenance
            .clone()
            .unwrap_or_else(|| Provenance::from_legacy_flag(self.synthetic_training_data))
    }

    /// The task of every head, in head order: as recorded, or for heads recorded before tasks
    /// existed as [`HeadTask::legacy`] derives it (the first classifier is the view classifier
    /// when no head is named `view`, as earlier runtimes chose it).
    pub fn head_tasks(&self) -> Vec<HeadTask> {
        let view_head = crate::task::legacy_view_head(
            self.heads.iter().map(|h| (h.name.as_str(), h.probe.kind)),
        );
        self.heads
            .iter()
            .enumerate()
            .map(|(i, h)| {
                h.task.clone().unwrap_or_else(|| {
                    let targets: Vec<(String, String)> = h
                        .targets
                        .iter()
                        .map(|t| (t.name.clone(), t.unit.clone()))
                        .collect();
                    HeadTask::legacy(
                        h.probe.kind,
                        &h.classes,
                        &targets,
                        &h.valid_views,
                        view_head == Some(i),
                    )
                })
            })
            .collect()
    }

    /// Checks that the recorded provenance agrees with the flag older runtimes read.
    pub fn check_provenance(&self) -> Result<(), String> {
        match &self.provenance {
            Some(p) if p.synthetic != self.synthetic_training_data => Err(format!(
                "provenance.synthetic is {} but synthetic_training_data is {}",
                p.synthetic, self.synthetic_training_data
            )),
            _ => Ok(()),
        }
    }
}

/// Name and version of the writing tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

/// One probe head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadSpec {
    /// Short name used in outputs (`view`, `lvef`, …); it says nothing about the task.
    pub name: String,
    /// What the head predicts. Absent in manifests written before tasks existed:
    /// [`Manifest::head_tasks`] derives it from the fields below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<HeadTask>,
    /// Architecture of the attentive probe.
    pub probe: ProbeConfig,
    /// Prefix of this head's tensors in the weights file (e.g. `probe.view`).
    pub tensor_prefix: String,
    /// Class names in logit order (classifier heads).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Regression targets in output order (regressor heads).
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// Views this head was trained on (e.g. `["A4C", "A2C"]` for EF); empty = any view.
    #[serde(default)]
    pub valid_views: Vec<String>,
    /// Classifier: softmax temperature fitted on validation data (logits / T before the
    /// softmax), so the confidence means what it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Classifier: calibrated confidence below which heads that depend on this one (EF on the
    /// view) are withheld, derived on validation data. The runtime uses the stricter of this and
    /// the board profile's threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f64>,
}

impl HeadSpec {
    /// Checks that classes/targets match the probe's outputs.
    pub fn check(&self) -> Result<(), String> {
        if let Some(t) = self.temperature
            && !(t.is_finite() && t > 0.0)
        {
            return Err(format!(
                "head `{}`: temperature {t} is not a positive number",
                self.name
            ));
        }
        if let Some(c) = self.min_confidence
            && !(0.0..=1.0).contains(&c)
        {
            return Err(format!(
                "head `{}`: min_confidence {c} is not between 0 and 1",
                self.name
            ));
        }
        if let Some(task) = &self.task {
            self.check_task(task)?;
        }
        let n = self.probe.num_outputs;
        match self.probe.kind {
            ProbeKind::Classifier if self.classes.len() != n => Err(format!(
                "head `{}`: {} class names for {} outputs",
                self.name,
                self.classes.len(),
                n
            )),
            ProbeKind::Regressor if self.targets.len() != n => Err(format!(
                "head `{}`: {} targets for {} outputs",
                self.name,
                self.targets.len(),
                n
            )),
            _ => Ok(()),
        }
    }
}

impl HeadSpec {
    /// A recorded task must say what the other fields say: the probe kind, the class names,
    /// one quantity per target with the target's unit, and the valid views.
    fn check_task(&self, task: &HeadTask) -> Result<(), String> {
        let name = &self.name;
        if task.probe_kind() != self.probe.kind {
            return Err(format!(
                "head `{name}`: task `{:?}` does not fit a {:?} probe",
                task.kind, self.probe.kind
            ));
        }
        if task.classes() != self.classes.as_slice() {
            return Err(format!(
                "head `{name}`: the task's classes differ from `classes`"
            ));
        }
        let units_agree = task.targets().len() == self.targets.len()
            && task
                .targets()
                .iter()
                .zip(&self.targets)
                .all(|(m, t)| m.unit == t.unit);
        if !units_agree {
            return Err(format!(
                "head `{name}`: the task's targets differ from `targets` in number or units"
            ));
        }
        if task.valid_views != self.valid_views {
            return Err(format!(
                "head `{name}`: the task's valid_views differ from `valid_views`"
            ));
        }
        Ok(())
    }
}

/// A per-token linear decoder of the LV cavity: each encoder token (after the final norm) gives
/// the logits of its `tubelet · patch²` pixels (frame, row, column), and the cavity is where the
/// sigmoid exceeds 0.5. EF comes from the traced cavity with [`crate::lv`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LvHeadSpec {
    /// Prefix of the decoder's `weight` `[tubelet · patch², embed_dim]` and `bias` (f32).
    pub tensor_prefix: String,
    /// Views the decoder was trained on; EF is measured only there.
    pub valid_views: Vec<String>,
    /// `EF = a + b · EF_traced`, fitted on validation clips (absent: the traced EF as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef_fit: Option<[f64; 2]>,
    /// Dice of the decoder on validation clips, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_dice: Option<f64>,
    /// EF is reported from the traced LV (else from the EF regressor, the tracing only drawn).
    /// A bundle without an EF regressor always measures EF from the tracing.
    #[serde(default)]
    pub measures_ef: bool,
}

impl LvHeadSpec {
    /// Checks the calibration line.
    pub fn check(&self) -> Result<(), String> {
        if self.valid_views.is_empty() {
            return Err("lv_segmentation: valid_views is empty".into());
        }
        if let Some([a, b]) = self.ef_fit
            && !(a.is_finite() && b.is_finite() && b > 0.0)
        {
            return Err(format!(
                "lv_segmentation: ef_fit [{a}, {b}] must be finite with a positive slope"
            ));
        }
        Ok(())
    }

    /// The calibrated EF of a traced EF.
    pub fn calibrated(&self, traced: f64) -> f64 {
        match self.ef_fit {
            Some([a, b]) => a + b * traced,
            None => traced,
        }
    }
}

/// A regression target: the probe predicts z-scores, the runtime reports `z * std + mean`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// Target name (`lvef`, `rvsp`, …).
    pub name: String,
    /// Unit of the de-normalised value (`%`, `mmHg`, …).
    pub unit: String,
    /// Label scaler fitted on the training split.
    pub scaler: Scaler,
}

/// Provenance of the weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Encoder checkpoint file name (as given to the tool).
    pub checkpoint: String,
    /// sha256 (hex) of the encoder checkpoint file.
    pub checkpoint_sha256: String,
    /// Other source files (native JSON config, probe checkpoints) with their sha256.
    #[serde(default)]
    pub other_files: Vec<SourceFile>,
}

/// A source file and its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub file: String,
    pub sha256: String,
}

/// Weight precision of one tensor in the weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// GGUF Q8_0: int8 weights with one f16 scale per block of 32.
    Q8_0,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Q8_0 => "q8_0",
            Precision::F16 => "f16",
            Precision::F32 => "f32",
        })
    }
}

/// How the weights were quantized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationInfo {
    /// Weights file format (`gguf`).
    pub container: String,
    /// Precision tried for every linear weight (`q8_0`).
    pub linear_weights: Precision,
    /// Precision of norms, biases, query tokens and other small tensors.
    pub other_tensors: Precision,
    /// The machine the speed choices were measured on (CPU model, threads).
    #[serde(default)]
    pub measured_on: String,
    /// Relative-error budget a quantized layer had to meet.
    #[serde(default)]
    pub error_budget: Option<f64>,
    /// End-to-end check of the chosen precisions on calibration clips.
    #[serde(default)]
    pub calibration: Option<CalibrationSummary>,
    /// The search for the worst tokens end to end, and the layers it kept full precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_search: Option<TailSearch>,
    /// One entry per weight tensor of a linear (or patch) layer.
    pub layers: Vec<LayerPrecision>,
}

/// End-to-end agreement of the chosen encoder with f32 on the calibration clips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSummary {
    /// Number of clips.
    pub clips: usize,
    /// Where they came from (e.g. "phantom seed 7").
    pub source: String,
    /// Smallest and mean per-token cosine similarity, chosen encoder vs f32.
    pub token_cosine_min: f64,
    pub token_cosine_mean: f64,
    /// Encoder time per clip (ms, median) with the chosen precisions and all-f32 kernels.
    pub chosen_ms: f64,
    pub f32_ms: f64,
}

/// The end-to-end search for the encoder's worst tokens: int8 layers whose error a few tokens
/// amplify are kept full precision, one at a time, while the smallest per-token cosine against
/// f32 on the clips stays below the target and the size allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailSearch {
    /// Number of clips searched.
    pub clips: usize,
    /// Where they came from.
    pub source: String,
    /// The smallest per-token cosine aimed at.
    pub target: f64,
    /// Smallest per-token cosine on the clips with the per-layer choice, and after the search.
    pub token_cosine_min_before: f64,
    pub token_cosine_min_after: f64,
    /// Weight bytes the search could spend on wider layers, and spent.
    pub byte_budget: u64,
    pub bytes_spent: u64,
    /// The layers it kept full precision, in the order chosen.
    pub widened: Vec<String>,
    /// Why it stopped.
    pub stopped: String,
}

/// The precision chosen for one weight tensor and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerPrecision {
    /// Tensor name in the weights file.
    pub tensor: String,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Chosen precision.
    pub precision: Precision,
    /// Why (e.g. "q8_0 1.8x faster than f32, rel. error 0.004 within 0.02").
    pub reason: String,
    /// Relative output error of the int8 layer on calibration activations.
    #[serde(default)]
    pub rel_error: Option<f64>,
    /// Measured time of the int8 layer (ms) on calibration activations.
    #[serde(default)]
    pub int8_ms: Option<f64>,
    /// Measured time of the full-precision layer (ms).
    #[serde(default)]
    pub full_ms: Option<f64>,
}

/// A bundle file's size and sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// sha256 of the content, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Mean and standard deviation used to z-score a regression target (fitted on train only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: f64,
    pub std: f64,
}

impl Scaler {
    /// `pred · std + mean`.
    pub fn denormalize(&self, z: f64) -> f64 {
        z * self.std + self.mean
    }
    pub fn normalize(&self, x: f64) -> f64 {
        (x - self.mean) / self.std
    }
}
