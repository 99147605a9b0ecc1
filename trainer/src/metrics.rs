//! Evaluation metrics of the probes: accuracy, balanced accuracy and confusion matrices for
//! classification; MAE, RMSE and R² (in real units) for regression.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// Classification results over a set of samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub n: usize,
    pub accuracy: f64,
    /// Mean of per-class recall over the classes present in the labels.
    pub balanced_accuracy: f64,
    /// `confusion[true][pred]`.
    pub confusion: Vec<Vec<u64>>,
}

pub fn classification(truth: &[usize], pred: &[usize], classes: usize) -> ClassMetrics {
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut correct = 0usize;
    for (&t, &p) in truth.iter().zip(pred) {
        if t < classes && p < classes {
            confusion[t][p] += 1;
        }
        if t == p {
            correct += 1;
        }
    }
    let recalls: Vec<f64> = confusion
        .iter()
        .enumerate()
        .filter_map(|(c, row)| {
            let total: u64 = row.iter().sum();
            (total > 0).then(|| row[c] as f64 / total as f64)
        })
        .collect();
    let n = truth.len();
    ClassMetrics {
        n,
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        balanced_accuracy: if recalls.is_empty() {
            0.0
        } else {
            recalls.iter().sum::<f64>() / recalls.len() as f64
        },
        confusion,
    }
}

/// Regression results in real units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegMetrics {
    pub n: usize,
    pub mae: f64,
    pub rmse: f64,
    /// `1 - SS_res / SS_tot` (around the mean of the evaluated labels).
    pub r2: f64,
}

pub fn regression(truth: &[f64], pred: &[f64]) -> RegMetrics {
    let n = truth.len();
    if n == 0 {
        return RegMetrics {
            n,
            mae: 0.0,
            rmse: 0.0,
            r2: 0.0,
        };
    }
    let mae = truth
        .iter()
        .zip(pred)
        .map(|(t, p)| (t - p).abs())
        .sum::<f64>()
        / n as f64;
    let ss_res = truth
        .iter()
        .zip(pred)
        .map(|(t, p)| (t - p).powi(2))
        .sum::<f64>();
    let mean = truth.iter().sum::<f64>() / n as f64;
    let ss_tot = truth.iter().map(|t| (t - mean).powi(2)).sum::<f64>();
    RegMetrics {
        n,
        mae,
        rmse: (ss_res / n as f64).sqrt(),
        r2: if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            0.0
        },
    }
}

/// Writes a confusion matrix as CSV: header `true\pred,<classes>`, one row per true class.
pub fn write_confusion_csv(path: &Path, m: &[Vec<u64>], classes: &[String]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "true\\pred,{}", classes.join(","))?;
    for (i, row) in m.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(u64::to_string).collect();
        writeln!(
            f,
            "{},{}",
            classes.get(i).cloned().unwrap_or_else(|| i.to_string()),
            cells.join(",")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_accuracy_weights_classes_equally() {
        // 8 of class 0 all right, 2 of class 1 all wrong: accuracy 0.8, balanced 0.5
        let truth = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        let pred = [0; 10];
        let m = classification(&truth, &pred, 3);
        assert!((m.accuracy - 0.8).abs() < 1e-12);
        assert!(
            (m.balanced_accuracy - 0.5).abs() < 1e-12,
            "class 2 absent, not counted"
        );
        assert_eq!(m.confusion[1][0], 2);
        assert_eq!(m.confusion[0][0], 8);
    }

    #[test]
    fn regression_metrics() {
        let t = [50.0, 60.0, 70.0];
        let m = regression(&t, &[52.0, 58.0, 70.0]);
        assert!((m.mae - 4.0 / 3.0).abs() < 1e-12);
        assert!((m.rmse - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m.r2 - (1.0 - 8.0 / 200.0)).abs() < 1e-12);
        let mean_pred = regression(&t, &[60.0; 3]);
        assert!(mean_pred.r2.abs() < 1e-12);
    }
}
