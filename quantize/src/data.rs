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
use echojepa_input::preprocess::{apply_sector, eval_resize_crop};
use echojepa_input::sampling::{ClipSampling, StepRule};
use echojepa_input::{FrameSpacing, Normaliser};
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
    /// Where the clip came from (`<video file stem>-0` or `phantom-<seed>`) and its frames
    /// (source frame indices), for `--dump-inputs`.
    pub name: String,
    pub frames: Vec<u64>,
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
    let offsets = input.clip_offsets(source_fps);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = seed + i as u64;
        let view = views[i % views.len()];
        let ph = Phantom::new(PhantomParams::sample(s, view))
            .with_context(|| format!("phantom seed {s} view {view}"))?;
        // Start somewhere in the first second so clips do not all begin at end-diastole.
        let start = (i as f64 * 0.377) % 1.0;
        let mut clip = Clip::zeros(0, h, w, 1);
        for &o in &offsets {
            let f = ph
                .render_frame(start + o as f64 / source_fps, w, h)
                .with_context(|| format!("rendering phantom seed {s}"))?;
            clip.data.extend_from_slice(&f.data);
            clip.frames += 1;
        }
        let (clip, thw) = model_input(&clip, input).with_context(|| format!("phantom seed {s}"))?;
        out.push(Sample {
            clip,
            thw,
            view: Some(view.name().to_string()),
            ef: Some(ph.ground_truth().ef_percent),
            target: None,
            name: format!("phantom-{s}"),
            frames: offsets.iter().map(|&o| o as u64).collect(),
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
            let idx = match input.spacing {
                FrameSpacing::ReferenceLinspace => sampling
                    .clip_indices(info.frame_count, info.fps, &mut rng)?
                    .swap_remove(0),
                // The first window, exactly `step` frames apart (the last frame repeats when
                // the video is shorter than the clip).
                FrameSpacing::Uniform => {
                    // Only a spec with a rate needs the video's (a frame step does not).
                    let fps = match (input.fps, info.fps) {
                        (Some(_), None) => bail!(
                            "the video's frame rate is unknown, needed for the bundle's input.fps"
                        ),
                        (_, f) => f.unwrap_or(1.0),
                    };
                    let last = info.frame_count.saturating_sub(1);
                    input
                        .clip_offsets(fps)
                        .into_iter()
                        .map(|o| o.min(last))
                        .collect()
                }
            };
            let mut clips = vec![reader.read_frames(&idx, ColorMode::Gray)?];
            apply_sector(&mut clips, input.sector)?;
            let (clip, thw) = model_input(&clips[0], input)?;
            Ok((clip, thw, idx))
        })();
        match loaded {
            Ok((clip, thw, idx)) => out.push(Sample {
                clip,
                thw,
                view,
                ef: None,
                target,
                // one clip per video: clip 0, as the trainer's dumps name it
                name: format!("{}-0", echojepa_input::dump::stem_of(&e.path)),
                frames: idx.iter().map(|&i| i as u64).collect(),
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

/// Writes each sample's model input under `dir` (`echojepa_input::dump`).
pub fn dump_samples(dir: &Path, samples: &[Sample], input: &InputSpec) -> Result<()> {
    for smp in samples {
        let (t, h, w) = smp.thw;
        echojepa_input::dump::write(
            dir,
            &smp.name,
            &smp.clip,
            [input.channels, t, h, w],
            &smp.frames,
            "quantize",
        )
        .with_context(|| format!("dumping inputs into {}", dir.display()))?;
    }
    Ok(())
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
