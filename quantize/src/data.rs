//! Clips for calibration and for the accuracy report: the synthetic echo phantom rendered at the
//! bundle's input spec (frames, frame step or fps, resolution) and normalised the way the
//! manifest says (pixels / 255, per-channel mean/std, grey replicated to the input channels).
//!
//! Everything here is synthetic: reports built on it say so.

use anyhow::{Context, Result, bail};
use echojepa::bundle::InputSpec;
use echojepa::phantom::{Phantom, PhantomParams, View};

/// One model-ready clip with its ground truth.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `[C, T, H, W]` row-major, normalised.
    pub clip: Vec<f32>,
    /// `(T, H, W)`.
    pub thw: (usize, usize, usize),
    /// Phantom view name (`a4c`, …).
    pub view: String,
    /// Ground-truth ejection fraction in percent.
    pub ef: f64,
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
    let c = input.channels;
    let mut out = Vec::with_capacity(grey.len() * c);
    for ch in 0..c {
        let (m, s) = (input.mean[ch.min(2)], input.std[ch.min(2)]);
        out.extend(grey.iter().map(|&p| (p as f32 / 255.0 - m) / s));
    }
    out
}

/// `n` phantom clips, views in turn from `views`, seeds `seed, seed+1, …`.
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
    let [h, w] = input.resolution;
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
        out.push(Sample {
            clip: normalise(&clip.data, input),
            thw: (t, h, w),
            view: view.name().to_string(),
            ef: ph.ground_truth().ef_percent,
        });
        progress();
    }
    Ok(out)
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
