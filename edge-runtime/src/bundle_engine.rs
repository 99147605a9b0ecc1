//! The runtime's one inference engine: the int8 encoder and probes of a verified bundle
//! (`echojepa::quantized`), fed with clips normalised as the bundle's input spec says.

use std::time::{Duration, Instant};

use boards::{ComputeDevice, ComputeSettings};
use candle_core::{Device, Tensor};
use echojepa::bundle::{Precision, VerifiedBundle};
use echojepa::quantized::{EdgeModel, HeadOutput};

use crate::clip::Clip;
use crate::engine::{EngineError, EngineOutput, InferenceEngine, ModelInfo};
use crate::model::HeadPlan;

/// Why a bundle's model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the model of bundle {dir}: {reason}")]
pub struct LoadError {
    pub dir: String,
    pub reason: String,
}

/// Normalises a grey clip into the encoder's `[1, C, T, H, W]` input: `v / 255`, replicated to
/// `C` channels, then `(x - mean[c]) / std[c]`.
pub fn normalise_clip(clip: &Clip, channels: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let frames: Vec<&[u8]> = clip.frames.iter().map(|f| f.data.as_slice()).collect();
    echojepa_input::normalise_frames(&frames, channels, mean, std)
}

/// A bundle's model, ready to run clips.
pub struct BundleEngine {
    info: ModelInfo,
    model: EdgeModel,
    plan: HeadPlan,
    channels: usize,
    mean: [f32; 3],
    std: [f32; 3],
    dump: Option<std::path::PathBuf>,
}

impl BundleEngine {
    /// Writes every clip's normalised input under `dir` (`echojepa_input::dump`, one file pair
    /// per clip, named by clip id, with the frames' source sequence numbers).
    pub fn dump_inputs(&mut self, dir: Option<std::path::PathBuf>) {
        self.dump = dir;
    }

    /// Loads the model of a verified bundle for the board's compute settings.
    ///
    /// The int8 encoder runs on the CPU kernels of `echojepa-kernels` with the per-layer
    /// precision the bundle chose; a profile asking for CUDA or another precision is told so in
    /// `runs_on` and the log, not silently obeyed.
    pub fn load(
        bundle: &VerifiedBundle,
        mut info: ModelInfo,
        plan: HeadPlan,
        compute: &ComputeSettings,
    ) -> Result<Self, LoadError> {
        let dir = bundle.dir().display().to_string();
        let m = bundle.manifest();
        let input = &m.input;
        if input.channels == 0 || input.channels > 3 {
            return Err(LoadError {
                dir,
                reason: format!("input.channels = {} (1 to 3 supported)", input.channels),
            });
        }
        let model = EdgeModel::load(bundle).map_err(|e| LoadError {
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
        let int8 = model
            .encoder()
            .linears()
            .iter()
            .filter(|l| l.precision() == Precision::Q8_0)
            .count();
        let total = model.encoder().linears().len();
        let mut notes = Vec::new();
        if compute.device == ComputeDevice::Cuda {
            notes.push("CUDA asked for by the board; this build runs on the CPU");
        }
        if compute.precision != boards::Precision::Int8 {
            notes.push("the bundle's per-layer precision is used, not the board's");
        }
        for n in &notes {
            tracing::warn!("{n}");
        }
        info.runs_on = format!(
            "cpu, {int8}/{total} encoder layers int8, {} kernel threads{}",
            echojepa_kernels::pool::num_threads(),
            if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            }
        );
        Ok(Self {
            info,
            model,
            plan,
            channels: input.channels,
            mean: input.mean,
            std: input.std,
            dump: None,
        })
    }
}

impl InferenceEngine for BundleEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn infer(&mut self, clip: &Clip) -> Result<EngineOutput, EngineError> {
        let fail = |reason: String| EngineError {
            clip: clip.id,
            reason,
        };
        let t0 = Instant::now();
        let (t, r) = (clip.frames.len(), clip.spec.resolution);
        let x = normalise_clip(clip, self.channels, self.mean, self.std);
        if let Some(dir) = &self.dump {
            echojepa_input::dump::write(
                dir,
                &format!("clip-{}", clip.id),
                &x,
                [self.channels, t, r, r],
                &clip.seqs,
                "edge-runtime",
            )
            .map_err(|e| fail(format!("dumping the input into {}: {e}", dir.display())))?;
        }
        let video = Tensor::from_vec(x, (1, self.channels, t, r, r), &Device::Cpu)
            .map_err(|e| fail(e.to_string()))?;
        let t1 = Instant::now();
        let tokens = self.model.encode(&video).map_err(|e| fail(e.to_string()))?;
        let t2 = Instant::now();
        let mut outs = self
            .model
            .run_heads(&tokens)
            .map_err(|e| fail(e.to_string()))?;
        let lv = if self.plan.lv {
            let probs = self
                .model
                .lv_probabilities(&tokens)
                .map_err(|e| fail(e.to_string()))?
                .and_then(|mut b| b.pop())
                .ok_or_else(|| fail("the LV decoder gave no output".into()))?;
            let e = &self.model.manifest().encoder;
            let layout = echojepa::lv::TokenLayout {
                frames: t,
                resolution: r,
                tubelet: e.tubelet_size,
                patch: e.patch_size,
            };
            if probs.len() != layout.tokens() * layout.width() {
                return Err(fail(format!(
                    "the LV decoder gave {} values for {} tokens of {}",
                    probs.len(),
                    layout.tokens(),
                    layout.width()
                )));
            }
            let frames = layout.to_frames(&probs);
            let volumes = frames
                .iter()
                .map(|f| echojepa::lv::measure(f, r).volume)
                .collect();
            let outline = frames.last().map(|f| echojepa::lv::outline(f, r));
            Some((volumes, outline))
        } else {
            None
        };
        let t3 = Instant::now();
        let heads = outs.pop().ok_or_else(|| fail("no output".into()))?;
        let view_probs = match heads.get(self.plan.view_head) {
            Some(HeadOutput::Class { probabilities, .. }) => probabilities.clone(),
            _ => return Err(fail("the view head gave no class probabilities".into())),
        };
        let ef = match self.plan.ef_head {
            Some((h, target)) => match heads.get(h) {
                Some(HeadOutput::Targets { values, .. }) => {
                    values.get(target).map(|v| v.value as f32)
                }
                _ => return Err(fail("the EF head gave no values".into())),
            },
            None => None,
        };
        let stages: Vec<(&'static str, Duration)> = vec![
            ("normalise", t1 - t0),
            ("encoder", t2 - t1),
            ("probes", t3 - t2),
        ];
        let (lv_volumes, lv_outline) = match lv {
            Some((v, o)) => (Some(v), o),
            None => (None, None),
        };
        Ok(EngineOutput {
            view_probs,
            ef,
            lv_volumes,
            lv_outline,
            stages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ClipSpec;
    use crate::frame::GrayImage;
    use std::sync::Arc;

    #[test]
    fn normalisation_replicates_grey_and_applies_mean_std() {
        let frame = |v: u8| Arc::new(GrayImage::from_vec(2, 1, vec![v, 255]).unwrap());
        let clip = Clip {
            id: 0,
            spec: ClipSpec {
                frames: 2,
                interval: Duration::from_millis(40),
                resolution: 2,
                linspace_step: None,
            },
            frames: vec![frame(0), frame(51)],
            seqs: vec![0, 1],
            first_ts: Duration::ZERO,
            last_ts: Duration::ZERO,
            arrived: Duration::ZERO,
            built_at: Duration::ZERO,
            truth: None,
            input_rect: [0.0, 0.0, 1.0, 1.0],
        };
        let x = normalise_clip(&clip, 3, [0.5, 0.0, 0.2], [0.5, 1.0, 0.1]);
        // Layout [C, T, H*W]: 3 channels x 2 frames x 2 pixels.
        assert_eq!(x.len(), 12);
        assert!((x[0] - -1.0).abs() < 1e-6); // c0 t0 p0: (0 - .5)/.5
        assert!((x[1] - 1.0).abs() < 1e-6); // c0 t0 p1: (1 - .5)/.5
        assert!((x[2] - (0.2 - 0.5) / 0.5).abs() < 1e-6); // c0 t1 p0
        assert!((x[4] - 0.0).abs() < 1e-6); // c1 t0 p0
        assert!((x[10] - (0.2 - 0.2) / 0.1).abs() < 1e-5); // c2 t1 p0
    }
}
