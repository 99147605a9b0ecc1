//! The provenance the trainer records in every checkpoint it writes: of its training data, and
//! of the checkpoint it starts from. Pretraining records it, probes and fine-tuning combine the
//! encoder's with their own data's, so "trained on synthetic data" can never be lost on the
//! way to a bundle.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use echojepa::bundle::Provenance;
use echojepa::checkpoint::{NativeConfig, native_paths};

/// First words of the `README.txt` that `trainer synth` writes beside its lists.
const SYNTH_README_MARK: &str = "SYNTHETIC DATA";

/// Whether `trainer synth` made the list (its `README.txt`, beside the list or one folder up,
/// starts with [`SYNTH_README_MARK`]).
fn made_by_synth(csv: &Path) -> bool {
    csv.ancestors().skip(1).take(2).any(|d| {
        fs::read_to_string(d.join("README.txt")).is_ok_and(|t| t.starts_with(SYNTH_README_MARK))
    })
}

/// Provenance of video lists: `stated` (the config's `synthetic` key) when given, else
/// synthetic when `trainer synth` made any of them, else recorded data.
pub fn of_lists(csvs: &[PathBuf], stated: Option<bool>) -> Provenance {
    let names = csvs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let by_synth = csvs.iter().any(|c| made_by_synth(c));
    match stated {
        Some(true) => Provenance::synthetic(format!("{names} (synthetic, as the config says)")),
        Some(false) => Provenance::recorded(format!("{names} (not synthetic, as the config says)")),
        None if by_synth => Provenance::synthetic(format!(
            "SYNTHETIC phantom videos from `trainer synth` (no patients): {names}"
        )),
        None => Provenance::recorded(names),
    }
}

/// Provenance of the model a checkpoint holds: recorded in a native checkpoint (or read from
/// the notes of an older one); an official `.pt` was pretrained on recorded echocardiograms.
pub fn of_checkpoint(path: &Path) -> Result<Provenance> {
    let (st, js) = native_paths(path);
    let native = st.exists() && js.exists() && !path.to_string_lossy().ends_with(".pt");
    if native {
        // the JSON half alone: the tensors are not needed to know where they came from
        let bytes = fs::read(&js).with_context(|| format!("cannot read {}", js.display()))?;
        let cfg: NativeConfig = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a native checkpoint config", js.display()))?;
        return Ok(cfg.provenance());
    }
    Ok(official(path))
}

/// An official `.pt` checkpoint.
pub fn official(path: &Path) -> Provenance {
    Provenance::official(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_by_marker_or_config() {
        let tmp = tempfile::tempdir().unwrap();
        let synth = tmp.path().join("synth");
        fs::create_dir_all(synth.join("ef")).unwrap();
        fs::write(synth.join("README.txt"), "SYNTHETIC DATA: phantom\n").unwrap();
        let csv = synth.join("ef/train.csv");
        assert!(of_lists(std::slice::from_ref(&csv), None).synthetic);
        assert!(!of_lists(std::slice::from_ref(&csv), Some(false)).synthetic);
        let real = tmp.path().join("echonet/train.csv");
        assert!(!of_lists(std::slice::from_ref(&real), None).synthetic);
        assert!(of_lists(std::slice::from_ref(&real), Some(true)).synthetic);
    }
}
