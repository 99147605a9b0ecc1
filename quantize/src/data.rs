//! Clips for calibration and for the accuracy report: the synthetic echo phantom rendered at a
//! cart's capture size (320×240) with the bundle's frames and frame rate, or the videos of a
//! reference `path label` list (e.g. the probes' validation list). Both go through the input
//! path the trainer and the edge runtime share (`echojepa_input::prepare`: short side →
//! `res·256/224`, centre crop, the manifest's mean/std, grey replicated to the input channels).

use std::path::Path;

use anyhow::{Context, Result, bail};
use echojepa::bundle::{HeadSpec, InputSpec};
use echojepa::config::ProbeKind;
use echojepa::datalist::VideoEntry;
use echojepa_input::Normaliser;
use echojepa_input::preprocess::{apply_sector, eval_resize_crop};
use echojepa_input::sampling::{ClipSampling, StepRule};
use echojepa_phantom::{Phantom, PhantomParams, View};
use echojepa_video::{self as video, Clip, ColorMode};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One model-ready clip with its ground truth.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `[C, T, H, W]` row-major, normalised.
    pub clip: Vec<f32>,
    /// `(T, H, W)`.
    pub thw: (usize, usize, usize),
    /// The view: the phantom's, or the class of a classifier list's label.
    pub view: Option<String>,
    /// The phantom's ejection fraction in percent.
    pub ef: Option<f64>,
    /// A regressor list's label in real units: `(head, value of its first target)`.
    pub target: Option<(String, f64)>,
}

/// Frame rate the clip is sampled at: `fps` of the spec, else `source_fps / frame_step`.
pub fn clip_fps(input: &InputSpec, source_fps: f64) -> f64 {
    match (input.fps, input.frame_step) {
        (Some(f), _) => f,
        (None, Some(step)) => source_fps / step.max(1) as f64,
        (None, None) => source_fps,
    }
}

/// Converts a grey `[T, H, W]` u8 clip into the normalised `[C, T, H, W]` model input.
pub fn normalise(grey: &[u8], input: &InputSpec) -> Vec<f32> {
    let hw = input.resolution[0] * input.resolution[1];
    let frames: Vec<&[u8]> = grey.chunks(hw.max(1)).collect();
    Normaliser::for_spec(input).run(&frames)
}

/// Size the phantom is rendered at: a cart's capture size, so the report's clips are
/// downscaled to the model's input as the cart's and the trainer's streamed phantom are.
pub const PHANTOM_CAPTURE: (usize, usize) = (320, 240);

/// The model input of a grey clip: the evaluation transform the trainer's probes and the edge
/// runtime apply (short side → `res·256/224`, centre `res × res` crop), then [`normalise`].
fn model_input(clip: &Clip, input: &InputSpec) -> Result<(Vec<f32>, (usize, usize, usize))> {
    let [h, w] = input.resolution;
    if h != w {
        bail!("input resolution {h}x{w}: the evaluation crop is square");
    }
    let c = eval_resize_crop(clip, h)?;
    Ok((normalise(&c.data, input), (c.frames, h, w)))
}

/// `n` phantom clips, views in turn from `views`, seeds `seed, seed+1, …`, rendered at
/// [`PHANTOM_CAPTURE`] and preprocessed as the training clips were.
pub fn phantom_samples(
    n: usize,
    seed: u64,
    input: &InputSpec,
    source_fps: f64,
    views: &[View],
    mut progress: impl FnMut(),
) -> Result<Vec<Sample>> {
    if views.is_empty() {
        bail!("no phantom views to render");
    }
    let (w, h) = PHANTOM_CAPTURE;
    let t = input.frames;
    let fps = clip_fps(input, source_fps);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = seed + i as u64;
        let view = views[i % views.len()];
        let ph = Phantom::new(PhantomParams::sample(s, view))
            .with_context(|| format!("phantom seed {s} view {view}"))?;
        // Start somewhere in the first second so clips do not all begin at end-diastole.
        let start = (i as f64 * 0.377) % 1.0;
        let clip = ph
            .render_clip(t, fps, start, w, h)
            .with_context(|| format!("rendering phantom seed {s}"))?;
        let (clip, thw) = model_input(&clip, input).with_context(|| format!("phantom seed {s}"))?;
        out.push(Sample {
            clip,
            thw,
            view: Some(view.name().to_string()),
            ef: Some(ph.ground_truth().ef_percent),
            target: None,
        });
        progress();
    }
    Ok(out)
}

/// A video of a list that could not be used, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    pub path: String,
    pub error: String,
}

/// The clips of the `entries` of a reference `path label` list (`list` names it in messages),
/// labelled for `head`: class indices become the head's class names, z-scored values the
/// head's first target in real units (its scaler). Each video gives one clip, sampled as the
/// reference evaluates (`frames` every `frame_step`, or at `fps`; first window), cropped to the
/// sector when the training data was, and preprocessed like [`phantom_samples`]. Videos that
/// cannot be read are skipped and returned with the reason; a label that does not fit the head
/// is an error.
pub fn list_samples(
    list: &Path,
    entries: &[VideoEntry],
    head: &HeadSpec,
    input: &InputSpec,
    mut progress: impl FnMut(),
) -> Result<(Vec<Sample>, Vec<Skipped>)> {
    let sampling = ClipSampling {
        frames_per_clip: input.frames,
        step: match (input.fps, input.frame_step) {
            (Some(f), _) => StepRule::Fps(f),
            (None, step) => StepRule::FrameStep(step.unwrap_or(1).max(1)),
        },
        num_clips: 1,
        random_clip_sampling: false,
        allow_clip_overlap: true,
        filter_short_videos: false,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for e in entries {
        let (view, target) = match head.probe.kind {
            ProbeKind::Classifier => {
                let k = e.label;
                if k.fract() != 0.0 || k < 0.0 || k as usize >= head.classes.len() {
                    bail!(
                        "{}: label {k} of {} is not a class index of head `{}` (0..{})",
                        list.display(),
                        e.path.display(),
                        head.name,
                        head.classes.len()
                    );
                }
                (Some(head.classes[k as usize].clone()), None)
            }
            ProbeKind::Regressor => {
                let Some(t) = head.targets.first() else {
                    bail!("head `{}` has no regression target", head.name);
                };
                (
                    None,
                    Some((head.name.clone(), t.scaler.denormalize(e.label))),
                )
            }
        };
        let loaded = (|| -> Result<_> {
            let mut reader = video::open(&e.path)?;
            let info = reader.info().clone();
            let idx = sampling.clip_indices(info.frame_count, info.fps, &mut rng)?;
            let mut clips = vec![reader.read_frames(&idx[0], ColorMode::Gray)?];
            apply_sector(&mut clips, input.sector)?;
            model_input(&clips[0], input)
        })();
        match loaded {
            Ok((clip, thw)) => out.push(Sample {
                clip,
                thw,
                view,
                ef: None,
                target,
            }),
            Err(err) => {
                tracing::warn!("skipping {}: {err:#}", e.path.display());
                skipped.push(Skipped {
                    path: e.path.display().to_string(),
                    error: format!("{err:#}"),
                });
            }
        }
        progress();
    }
    Ok((out, skipped))
}

/// Parses a comma-separated view list (`a4c,a2c`) or `all`.
pub fn parse_views(s: &str) -> Result<Vec<View>> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(View::ALL.to_vec());
    }
    s.split(',')
        .map(|v| v.parse::<View>().map_err(anyhow::Error::from))
        .collect()
}
