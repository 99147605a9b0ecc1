//! From a board profile and a bundle directory to a model the pipeline can run: the profile's
//! trusted keys are loaded, the bundle is verified (signature, then every file's hash) before any
//! of it is used, and the facts the pipeline needs (clip spec, classes, EF head, sector handling)
//! are read from the signed manifest and checked against what the board can afford.

use std::path::{Path, PathBuf};
use std::time::Duration;

use boards::BoardProfile;
use echojepa::bundle::{
    BundleError, Manifest, PublicKey, SectorHandling, VerifiedBundle, verify_bundle,
};

use crate::clip::ClipSpec;
use crate::engine::{EfHeadInfo, EfMethod, ModelInfo, SectorUse};
use echojepa_input::FrameSpacing;

/// Frame rate of the training videos assumed when a bundle gives `frame_step` but no `fps`
/// (the reference exports echo at 30 fps).
pub const DEFAULT_REFERENCE_FPS: f64 = 30.0;

/// Why a model cannot be used on this board.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A trusted key named in the board profile cannot be loaded.
    #[error("board profile {profile}: trust.keys[{index}] (`{name}`): {source}")]
    Key {
        profile: String,
        index: usize,
        name: String,
        #[source]
        source: BundleError,
    },
    /// The bundle failed verification.
    #[error("model bundle refused: {0}")]
    Refused(#[source] BundleError),
    /// The manifest describes something this runtime cannot run.
    #[error("model bundle {dir}: {reason}")]
    Unsupported { dir: PathBuf, reason: String },
    /// The bundle needs more than the board profile allows.
    #[error("model bundle {dir} does not fit board {board}: {reason}")]
    TooLarge {
        dir: PathBuf,
        board: String,
        reason: String,
    },
}

/// The public keys a board trusts, in profile order.
pub fn trusted_keys(profile: &BoardProfile) -> Result<Vec<PublicKey>, ModelError> {
    profile
        .trust
        .keys
        .iter()
        .enumerate()
        .map(|(index, k)| {
            let key = match (&k.ed25519, &k.file) {
                (Some(hex), _) => PublicKey::from_hex(&k.name, hex),
                (None, Some(file)) => PublicKey::load(&profile.resolve_path(file)),
                (None, None) => unreachable!("validated by the boards crate"),
            };
            key.map_err(|source| ModelError::Key {
                profile: profile.origin.clone(),
                index,
                name: k.name.clone(),
                source,
            })
        })
        .collect()
}

/// Verifies a bundle against the board's trusted keys.
pub fn verify(dir: &Path, keys: &[PublicKey]) -> Result<VerifiedBundle, ModelError> {
    verify_bundle(dir, keys).map_err(ModelError::Refused)
}

/// Where the view and EF heads are in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadPlan {
    pub view_head: usize,
    /// (head index, target index) of EF.
    pub ef_head: Option<(usize, usize)>,
    /// Whether the bundle has an LV decoder (EF is then measured from the traced cavity).
    pub lv: bool,
}

/// Reads what the pipeline needs from a verified manifest. `runs_on` is filled in by the engine.
pub fn model_info(
    dir: &Path,
    m: &Manifest,
    reference_fps: f64,
) -> Result<(ModelInfo, HeadPlan), ModelError> {
    let unsupported = |reason: String| ModelError::Unsupported {
        dir: dir.to_path_buf(),
        reason,
    };
    // by each head's task (derived for manifests written before tasks were recorded)
    let tasks = m.head_tasks();
    let view_head = tasks
        .iter()
        .position(|t| t.is_view_classifier())
        .ok_or_else(|| unsupported("the manifest has no view classifier head".into()))?;
    let ef_head = tasks
        .iter()
        .enumerate()
        .find_map(|(hi, t)| t.lvef_output().map(|ti| (hi, ti)));
    let input = &m.input;
    if input.resolution[0] != input.resolution[1] {
        return Err(unsupported(format!(
            "input resolution {}x{} is not square",
            input.resolution[0], input.resolution[1]
        )));
    }
    if input.frames == 0 {
        return Err(unsupported("input.frames is 0".into()));
    }
    // A rate becomes a duration only when the result is a sane frame interval (1 µs .. 1 h):
    // `Duration::from_secs_f64` panics on infinite, negative or NaN seconds.
    let interval_of = |secs: f64, what: &str| -> Result<Duration, ModelError> {
        if !(1e-6..=3600.0).contains(&secs) {
            return Err(unsupported(format!(
                "{what} gives a frame interval of {secs} s (it must be a positive, finite rate)"
            )));
        }
        Duration::try_from_secs_f64(secs).map_err(|e| unsupported(format!("{what}: {e}")))
    };
    let interval = match (input.fps, input.frame_step) {
        (Some(fps), _) => interval_of(1.0 / fps, &format!("manifest input.fps = {fps}"))?,
        (None, Some(step)) if step > 0 => interval_of(
            step as f64 / reference_fps,
            &format!("input.frame_step {step} at --reference-fps {reference_fps}"),
        )?,
        _ => {
            return Err(unsupported(
                "input gives neither a positive fps nor a positive frame_step".into(),
            ));
        }
    };
    let view = &m.heads[view_head];
    let mut ef = ef_head.map(|(hi, ti)| {
        let h = &m.heads[hi];
        let valid_views = if h.valid_views.is_empty() {
            // A head trained on any view: EF may be shown for every view class.
            view.classes.clone()
        } else {
            h.valid_views.clone()
        };
        EfHeadInfo {
            method: EfMethod::Regressor,
            name: h.targets[ti].name.clone(),
            unit: h.targets[ti].unit.clone(),
            valid_views,
            training_mean: Some(h.targets[ti].scaler.mean).filter(|m| m.is_finite()),
            min_view_confidence: view.min_confidence.map(|c| c as f32),
        }
    });
    if let Some(lv) = m
        .lv_segmentation
        .as_ref()
        .filter(|l| l.measures_ef || ef.is_none())
    {
        // The traced cavity measures EF as a sonographer does; it replaces a regressor. The
        // regressor's training mean stays the baseline to beat.
        for v in &lv.valid_views {
            if !view.classes.contains(v) {
                return Err(unsupported(format!(
                    "lv_segmentation.valid_views names `{v}`, which is not a view class ({})",
                    view.classes.join(", ")
                )));
            }
        }
        ef = Some(EfHeadInfo {
            method: EfMethod::TracedLv { fit: lv.ef_fit },
            name: "lvef".into(),
            unit: "%".into(),
            valid_views: lv.valid_views.clone(),
            training_mean: ef.as_ref().and_then(|e| e.training_mean),
            min_view_confidence: view.min_confidence.map(|c| c as f32),
        });
    }
    let info = ModelInfo {
        model_id: m.model_id.clone(),
        model_version: m.model_version.clone(),
        synthetic_training_data: m.provenance().synthetic,
        provenance: m.provenance.clone(),
        notice: m.notice.clone(),
        clip: ClipSpec {
            frames: input.frames,
            interval,
            resolution: input.resolution[0],
            linspace_step: match input.spacing {
                FrameSpacing::Uniform => None,
                // The reference rule spreads the frames over `frames × step` source frames.
                FrameSpacing::ReferenceLinspace => Some(input.frame_step_at(reference_fps) as u32),
            },
        },
        sector: match input.sector {
            SectorHandling::FullFrame => SectorUse::FullFrame,
            SectorHandling::CropToSector => SectorUse::Crop,
            SectorHandling::CropAndMaskOutside => SectorUse::CropAndMask,
        },
        view_classes: view.classes.clone(),
        view_calibrated: view.temperature.is_some(),
        ef,
        runs_on: String::new(),
    };
    Ok((
        info,
        HeadPlan {
            view_head,
            ef_head,
            lv: m.lv_segmentation.is_some(),
        },
    ))
}

/// Refuses a model that needs more than the board allows.
pub fn check_fits(dir: &Path, info: &ModelInfo, board: &BoardProfile) -> Result<(), ModelError> {
    let too_large = |reason: String| ModelError::TooLarge {
        dir: dir.to_path_buf(),
        board: board.name.clone(),
        reason,
    };
    if info.clip.resolution > board.model.max_resolution as usize {
        return Err(too_large(format!(
            "input resolution {} exceeds model.max_resolution {}",
            info.clip.resolution, board.model.max_resolution
        )));
    }
    if info.clip.frames > board.model.max_frames as usize {
        return Err(too_large(format!(
            "{} frames per clip exceed model.max_frames {}",
            info.clip.frames, board.model.max_frames
        )));
    }
    Ok(())
}
