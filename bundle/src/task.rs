//! What each head predicts, as a type: a view classifier with its class names, another
//! classifier, or a regressor with the quantity and unit of every output, plus the views the
//! head was trained on. Tools find the view head and the LVEF target by their task, never by the
//! head's name. Heads recorded before tasks existed get theirs from [`HeadTask::legacy`], the one
//! place that still reads meaning from names.

use serde::{Deserialize, Serialize};

use crate::config::ProbeKind;

/// Name of the left-ventricular ejection fraction in [`Measure::name`].
pub const LVEF: &str = "lvef";
/// Unit of [`LVEF`].
pub const PERCENT: &str = "%";

/// A measured quantity and its unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measure {
    /// Quantity (`lvef`, `rvsp`, …).
    pub name: String,
    /// Unit (`%`, `mmHg`, …).
    pub unit: String,
}

impl Measure {
    pub fn new(name: impl Into<String>, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
        }
    }

    /// Left-ventricular ejection fraction in percent.
    pub fn lvef() -> Self {
        Self::new(LVEF, PERCENT)
    }

    /// Whether this is LVEF in percent.
    pub fn is_lvef(&self) -> bool {
        self.name == LVEF && self.unit == PERCENT
    }

    /// The quantity a free-text target label names (a dataset's `scaler.json`, a CLI flag, a
    /// manifest written before tasks): the spellings of EF (`LVEF`, `ef`, `ef_percent`,
    /// `LVEF (%)`) in percent, or without a unit, become [`Measure::lvef`]; any other label is
    /// kept as it is.
    pub fn from_label(label: &str, unit: &str) -> Self {
        let l = label.to_ascii_lowercase();
        let first = l.split(|c: char| !c.is_ascii_alphanumeric()).next();
        let ef_name = matches!(first, Some("lvef" | "ef")) || l.contains("ejection");
        if ef_name && matches!(unit.trim(), PERCENT | "") {
            return Self::lvef();
        }
        Self::new(label, unit)
    }
}

/// The kind of output of a head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskKind {
    /// The echo view a clip shows; class names in logit order. The runtime gates the other
    /// heads on it.
    ViewClassifier { classes: Vec<String> },
    /// Any other classifier; class names in logit order.
    Classifier { classes: Vec<String> },
    /// One measured quantity per output, in output order.
    Regressor { targets: Vec<Measure> },
}

/// What a head predicts and on which views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadTask {
    #[serde(flatten)]
    pub kind: TaskKind,
    /// Views the head was trained on (e.g. `["a4c", "a2c"]` for EF); empty: any view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid_views: Vec<String>,
}

impl HeadTask {
    /// The view classifier over `classes`.
    pub fn view_classifier(classes: Vec<String>) -> Self {
        Self {
            kind: TaskKind::ViewClassifier { classes },
            valid_views: vec![],
        }
    }

    /// Another classifier over `classes`.
    pub fn classifier(classes: Vec<String>) -> Self {
        Self {
            kind: TaskKind::Classifier { classes },
            valid_views: vec![],
        }
    }

    /// A regressor of `targets`.
    pub fn regressor(targets: Vec<Measure>) -> Self {
        Self {
            kind: TaskKind::Regressor { targets },
            valid_views: vec![],
        }
    }

    /// The same task, valid on `views` only (empty: any view).
    pub fn on_views(mut self, views: Vec<String>) -> Self {
        self.valid_views = views;
        self
    }

    /// Whether this is the view classifier.
    pub fn is_view_classifier(&self) -> bool {
        matches!(self.kind, TaskKind::ViewClassifier { .. })
    }

    /// Class names (classifiers), else empty.
    pub fn classes(&self) -> &[String] {
        match &self.kind {
            TaskKind::ViewClassifier { classes } | TaskKind::Classifier { classes } => classes,
            TaskKind::Regressor { .. } => &[],
        }
    }

    /// Measured quantities (regressors), else empty.
    pub fn targets(&self) -> &[Measure] {
        match &self.kind {
            TaskKind::Regressor { targets } => targets,
            _ => &[],
        }
    }

    /// Output index of LVEF in percent, if this head measures it.
    pub fn lvef_output(&self) -> Option<usize> {
        self.targets().iter().position(Measure::is_lvef)
    }

    /// The probe kind this task needs.
    pub fn probe_kind(&self) -> ProbeKind {
        match self.kind {
            TaskKind::Regressor { .. } => ProbeKind::Regressor,
            _ => ProbeKind::Classifier,
        }
    }

    /// Legacy path, for heads recorded before tasks existed: the task read from what was
    /// recorded then. `view_head` says whether this head is the view classifier
    /// ([`legacy_view_head`]); a regressor's targets become [`Measure::from_label`] of their
    /// labels.
    pub fn legacy(
        kind: ProbeKind,
        classes: &[String],
        targets: &[(String, String)],
        valid_views: &[String],
        view_head: bool,
    ) -> Self {
        let task = match kind {
            ProbeKind::Classifier if view_head => Self::view_classifier(classes.to_vec()),
            ProbeKind::Classifier => Self::classifier(classes.to_vec()),
            ProbeKind::Regressor => Self::regressor(
                targets
                    .iter()
                    .map(|(n, u)| Measure::from_label(n, u))
                    .collect(),
            ),
        };
        task.on_views(valid_views.to_vec())
    }
}

/// Legacy path: which of a model's heads (name and probe kind, in order), recorded before tasks
/// existed, is the view classifier: the classifier named `view`, else the first classifier (as
/// runtimes chose it then). The one place that reads a head's meaning from its name.
pub fn legacy_view_head<'a>(
    heads: impl IntoIterator<Item = (&'a str, ProbeKind)>,
) -> Option<usize> {
    let classifiers: Vec<(usize, &str)> = heads
        .into_iter()
        .enumerate()
        .filter(|(_, (_, k))| *k == ProbeKind::Classifier)
        .map(|(i, (n, _))| (i, n))
        .collect();
    classifiers
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case("view"))
        .or(classifiers.first())
        .map(|(i, _)| *i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ef_labels() {
        for l in ["LVEF", "ef", "ef_percent", "lvef", "Ejection fraction"] {
            assert!(Measure::from_label(l, "%").is_lvef(), "{l}");
        }
        assert!(Measure::from_label("ef", "").is_lvef());
        assert!(!Measure::from_label("ef", "fraction").is_lvef());
        assert!(!Measure::from_label("rvsp", "mmHg").is_lvef());
        assert!(!Measure::from_label("refill", "%").is_lvef());
    }

    #[test]
    fn serde_shape() {
        let t = HeadTask::regressor(vec![Measure::lvef()]).on_views(vec!["a4c".into()]);
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(
            s,
            r#"{"kind":"regressor","targets":[{"name":"lvef","unit":"%"}],"valid_views":["a4c"]}"#
        );
        assert_eq!(serde_json::from_str::<HeadTask>(&s).unwrap(), t);
        let v: HeadTask =
            serde_json::from_str(r#"{"kind":"view_classifier","classes":["a4c"]}"#).unwrap();
        assert!(v.is_view_classifier());
        assert_eq!(v.classes(), ["a4c"]);
        assert_eq!(v.lvef_output(), None);
    }

    #[test]
    fn legacy_view_head_by_name_then_first_classifier() {
        use ProbeKind::{Classifier as C, Regressor as R};
        assert_eq!(
            legacy_view_head([("ef", R), ("a", C), ("view", C)]),
            Some(2)
        );
        assert_eq!(legacy_view_head([("ef", R), ("rhythm", C)]), Some(1));
        assert_eq!(legacy_view_head([("ef", R)]), None);
        let r = HeadTask::legacy(
            ProbeKind::Regressor,
            &[],
            &[
                ("rvsp".into(), "mmHg".into()),
                ("ef_percent".into(), "%".into()),
            ],
            &[],
            false,
        );
        assert_eq!(r.lvef_output(), Some(1));
        assert!(HeadTask::legacy(C, &[], &[], &[], true).is_view_classifier());
        assert!(!HeadTask::legacy(C, &[], &[], &[], false).is_view_classifier());
    }
}
