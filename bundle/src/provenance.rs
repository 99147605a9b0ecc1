//! Where a model's training data came from. Whether any of it was synthetic decides what users
//! are told next to every prediction, so it is a typed field that travels with the weights: the
//! pretraining run records it, probes and fine-tuning inherit it from the encoder they start
//! from, `quantize build` copies it into the signed manifest and the runtime reads it from there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The training data of a model (encoder and heads together).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// True when any of the training data was synthetic (rendered by the echo phantom rather
    /// than recorded from patients). Runtimes say so wherever a user sees an output.
    pub synthetic: bool,
    /// One line for people: what the data was and where it came from.
    #[serde(default)]
    pub description: String,
}

/// What a checkpoint or bundle made before provenance was recorded says instead.
const NOT_RECORDED: &str = "not recorded (made before the provenance was recorded)";

impl Provenance {
    /// Synthetic training data described by `description`.
    pub fn synthetic(description: impl Into<String>) -> Self {
        Self {
            synthetic: true,
            description: description.into(),
        }
    }

    /// Recorded (not synthetic) training data described by `description`.
    pub fn recorded(description: impl Into<String>) -> Self {
        Self {
            synthetic: false,
            description: description.into(),
        }
    }

    /// An official EchoJEPA checkpoint (`.pt`): pretrained on recorded echocardiograms.
    pub fn official(file: &str) -> Self {
        Self::recorded(format!(
            "official EchoJEPA checkpoint {file} (pretrained on recorded echocardiograms)"
        ))
    }

    /// The provenance of a model trained on `data`, starting from a model of provenance
    /// `self`: synthetic when either is, both descriptions kept.
    pub fn then_trained_on(&self, data: &Provenance) -> Self {
        Self {
            synthetic: self.synthetic || data.synthetic,
            description: format!("{}; starting from: {}", data.description, self.description),
        }
    }

    /// Legacy path, for checkpoints written before the provenance was a field: a guess from
    /// their free-form notes, the only place that still reads provenance from text. Writers
    /// marked synthetic data with a `training_data` note naming the phantom or saying
    /// SYNTHETIC, or with a `synthetic*` key.
    pub fn from_legacy_notes(notes: &BTreeMap<String, String>) -> Self {
        let synthetic = notes.iter().any(|(k, v)| {
            let (k, v) = (k.to_lowercase(), v.to_lowercase());
            (k.contains("synthetic") && !matches!(v.trim(), "false" | "no" | "0"))
                || v.contains("synthetic")
                || v.contains("phantom")
        });
        let description = notes
            .get("training_data")
            .map_or_else(|| NOT_RECORDED.to_string(), |d| format!("{d} (from notes)"));
        Self {
            synthetic,
            description,
        }
    }

    /// Legacy path, for bundles built before the provenance was recorded: only the manifest's
    /// `synthetic_training_data` flag is known.
    pub fn from_legacy_flag(synthetic: bool) -> Self {
        Self {
            synthetic,
            description: NOT_RECORDED.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_when_either_part_is() {
        let enc = Provenance::synthetic("phantom stream");
        let data = Provenance::recorded("train.csv");
        let p = enc.then_trained_on(&data);
        assert!(p.synthetic);
        assert_eq!(p.description, "train.csv; starting from: phantom stream");
        assert!(
            !Provenance::official("a.pt")
                .then_trained_on(&data)
                .synthetic
        );
        assert!(Provenance::official("a.pt").then_trained_on(&enc).synthetic);
    }

    #[test]
    fn legacy_notes() {
        let notes = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(
            Provenance::from_legacy_notes(&notes("training_data", "SYNTHETIC phantom")).synthetic
        );
        assert!(Provenance::from_legacy_notes(&notes("synthetic_data", "yes")).synthetic);
        assert!(!Provenance::from_legacy_notes(&notes("synthetic_data", "no")).synthetic);
        let p = Provenance::from_legacy_notes(&notes("training_data", "echonet/ef/train.csv"));
        assert!(!p.synthetic);
        assert!(p.description.starts_with("echonet/ef/train.csv"));
        assert!(!Provenance::from_legacy_notes(&BTreeMap::new()).synthetic);
    }

    #[test]
    fn serde_shape() {
        let p: Provenance = serde_json::from_str(r#"{"synthetic": true}"#).unwrap();
        assert_eq!(p, Provenance::synthetic(""));
        let s = serde_json::to_string(&Provenance::recorded("x")).unwrap();
        assert_eq!(s, r#"{"synthetic":false,"description":"x"}"#);
    }
}
