//! `quantize report`: what int8 costs. The bundle (verified like a cart verifies it) runs next
//! to the full-precision checkpoint it was built from, on the same clips (synthetic phantom
//! clips, or the videos of a reference `path label` list): per-layer relative error, token
//! cosine similarity, view top-1 agreement and accuracy, EF error both ways, bundle size and
//! encoder time both ways. Markdown for people, JSON for programs. The report says when the
//! clips or the model's training data are synthetic.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use echojepa::bundle::{HeadSpec, Manifest, PublicKey, VerifiedBundle, verify_bundle};
use echojepa::config::ProbeKind;
use echojepa::quantized::encoder::flatten_patch;
use echojepa::quantized::model::lv_head_probabilities;
use echojepa::quantized::{EdgeModel, QuantizedEncoder, Tap, TensorSource};
use echojepa_kernels::Epilogue;
use echojepa_phantom::View;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::calibrate::token_cosines;
use crate::data::{self, Sample};
use crate::source::{self, SourceArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bundle directory.
    bundle: PathBuf,
    /// Trusted public key file(s): PEM, OpenSSH, minisign or `quantize keygen`'s NAME.pub;
    /// repeat for several.
    #[arg(long = "trusted-key", visible_alias = "key", required = true)]
    keys: Vec<PathBuf>,
    /// The full-precision checkpoint the bundle was built from (native stem or `.pt`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Architecture of a `.pt` checkpoint.
    #[arg(long)]
    arch: Option<String>,
    /// Encoder of a pretraining checkpoint.
    #[arg(long)]
    encoder_key: Option<String>,
    /// Probe files, class names and targets as given to `build`.
    #[arg(long = "probe")]
    probes: Vec<String>,
    /// Attention heads of `.pt` probes (default: the encoder's), as given to `build`.
    #[arg(long)]
    probe_heads: Option<usize>,
    /// Class names of a classifier probe, NAME=A4C,A2C,..., as given to `build`.
    #[arg(long = "classes")]
    classes: Vec<String>,
    /// A regression target of a probe, NAME=TARGET:UNIT:MEAN:STD, as given to `build`.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Compare even if the checkpoint's sha256 differs from the one in the manifest.
    #[arg(long)]
    allow_other_source: bool,

    /// Number of phantom validation clips.
    #[arg(long, default_value_t = 60, conflicts_with = "csv")]
    phantom: usize,
    /// Compare on the videos of a reference `path label` list (e.g. the probes' validation or
    /// test list) instead of phantom clips; one clip per video, sampled and preprocessed as
    /// the probes' evaluation does. Unreadable videos are skipped and listed.
    #[arg(long, value_name = "LIST")]
    csv: Option<PathBuf>,
    /// The head whose labels the list holds (class indices or z-scored values); default: the
    /// first classifier head.
    #[arg(long, requires = "csv")]
    csv_head: Option<String>,
    /// Use only the first N videos of the list.
    #[arg(long, requires = "csv")]
    csv_limit: Option<usize>,
    /// Seed of the first validation clip (keep it away from training and calibration seeds).
    #[arg(long, default_value_t = 2_000_000)]
    seed: u64,
    /// Views to render (`all` or e.g. `a4c,a2c,plax`); default: the view head's classes.
    #[arg(long)]
    views: Option<String>,
    /// Frame rate of the phantom source video the frame step applies to: that of the training
    /// videos (30 is what `trainer synth` writes), so the heart moves as fast as in training.
    #[arg(long, default_value_t = 30.0)]
    source_fps: f64,
    /// Clips used for the per-layer error table (the slowest part).
    #[arg(long, default_value_t = 4)]
    layer_clips: usize,
    /// Timed repetitions for the encoder times.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Write the markdown report here (default: stdout).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the JSON report to stdout instead of markdown.
    #[arg(long)]
    json: bool,
    /// Write every prepared model input under this folder (for comparing input paths; see
    /// `echojepa_input::dump`).
    #[arg(long, hide = true)]
    dump_inputs: Option<PathBuf>,
}

/// The report (also the JSON schema).
#[derive(Debug, Serialize)]
pub struct Report {
    pub model_id: String,
    pub model_version: String,
    pub manifest_sha256: String,
    pub data: String,
    /// What the numbers mean and do not mean (synthetic data, no clinical claim).
    pub note: String,
    pub clips: usize,
    /// Videos of a `--csv` list that could not be read, with the reason.
    pub skipped: Vec<data::Skipped>,
    pub bundle_bytes: u64,
    pub f32_bytes: u64,
    pub size_ratio: f64,
    pub token_cosine_min: f64,
    pub token_cosine_mean: f64,
    /// Where the lowest token cosines are: the low tail and the worst tokens.
    pub token_tail: TokenTail,
    pub encoder_ms: Timing,
    pub layers: Vec<LayerError>,
    pub blocks: Vec<BlockError>,
    pub classifiers: Vec<ClassifierResult>,
    pub regressors: Vec<RegressorResult>,
    /// The traced LV both ways, on the clips of the views EF is measured in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lv: Option<LvResult>,
    pub checks: Vec<Check>,
    pub machine: String,
}

/// The low tail of the per-token cosine, to find what limits its minimum.
#[derive(Debug, Serialize)]
pub struct TokenTail {
    /// Tokens compared (clips × tokens per clip).
    pub tokens: usize,
    /// Tokens whose cosine is below 0.999 (the check's limit).
    pub below_limit: usize,
    /// `(q, cosine)`: the cosine below which a share `q` of the tokens lies.
    pub quantiles: Vec<(f64, f64)>,
    /// The lowest tokens, worst first.
    pub worst: Vec<WorstToken>,
}

/// One token of the low tail: where it is and how large it is.
#[derive(Debug, Clone, Serialize)]
pub struct WorstToken {
    pub cosine: f64,
    /// The clip (`phantom-<seed>` or `<video>-<n>`) and its view, where known.
    pub clip: String,
    pub view: Option<String>,
    /// Token index, and its place: tubelet (time), row and column of the patch grid.
    pub token: usize,
    pub t: usize,
    pub row: usize,
    pub col: usize,
    /// Norm of the f32 token over the median norm of its clip's tokens.
    pub norm_ratio: f64,
    /// The token's relative error in the residual stream after each block (bundle vs the f32
    /// kernels), so the block where it goes wrong can be read off.
    pub block_errors: Vec<f64>,
    /// The f32 token entering the final layer norm: its spread about its own mean over its
    /// norm. The norm divides by that spread, so a small value amplifies the error.
    pub final_spread: Option<f64>,
    /// Index into the report's samples.
    #[serde(skip)]
    sample: usize,
}

const WORST_TOKENS: usize = 8;

/// The token cosine check's limit (min over tokens and clips).
const COSINE_LIMIT: f64 = 0.999;

/// The tail of `cos` (`[clip][token]`), tokens on a `grid × grid` patch grid per tubelet;
/// `norms` are the f32 tokens' norms, same layout.
fn token_tail(grid: usize, samples: &[Sample], cos: &[Vec<f64>], norms: &[Vec<f64>]) -> TokenTail {
    let grid = grid.max(1);
    let mut all: Vec<(f64, usize, usize)> = cos
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| c.iter().enumerate().map(move |(ti, &v)| (v, ci, ti)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let quantiles = [1e-4, 1e-3, 1e-2]
        .iter()
        .filter(|_| !all.is_empty())
        .map(|&q| {
            let i = ((q * all.len() as f64).floor() as usize).min(all.len() - 1);
            (q, all[i].0)
        })
        .collect();
    let worst = all
        .iter()
        .take(WORST_TOKENS)
        .map(|&(cosine, ci, ti)| {
            let norms = &norms[ci];
            let mut sorted = norms.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
            WorstToken {
                cosine,
                clip: samples[ci].name.clone(),
                view: samples[ci].view.clone(),
                token: ti,
                t: ti / (grid * grid),
                row: (ti / grid) % grid,
                col: ti % grid,
                norm_ratio: if median > 0.0 {
                    norms[ti] / median
                } else {
                    0.0
                },
                block_errors: Vec::new(),
                final_spread: None,
                sample: ci,
            }
        })
        .collect();
    TokenTail {
        tokens: all.len(),
        below_limit: all.iter().take_while(|t| t.0 < COSINE_LIMIT).count(),
        quantiles,
        worst,
    }
}

#[derive(Debug, Serialize)]
pub struct Timing {
    /// f32 candle model (the reference implementation).
    pub f32_reference: f64,
    /// f32 on the packed kernels.
    pub f32_kernels: f64,
    /// The bundle's mixed int8 encoder.
    pub bundle: f64,
}

#[derive(Debug, Serialize)]
pub struct LayerError {
    pub tensor: String,
    pub precision: String,
    pub rel_error: f64,
    /// The largest relative error of one output row (token).
    pub max_row_rel_error: f64,
    /// The layer's input: largest per-channel absolute maximum over the median channel's. Large
    /// values are outlier channels, which a per-row activation scale spends its range on.
    pub input_outlier_ratio: f64,
}

/// Error sums of one layer over the clips.
#[derive(Default)]
struct LayerAcc {
    /// `Σ(q − f)²` and `Σf²`.
    err2: f64,
    ref2: f64,
    max_row_rel: f64,
    /// Per input channel, the largest `|x|` seen.
    chan_absmax: Vec<f32>,
}

impl LayerAcc {
    fn add(&mut self, x: &[f32], rows: usize, yq: &[f32], yf: &[f32]) {
        let n = yf.len() / rows.max(1);
        for (q, f) in yq.chunks_exact(n.max(1)).zip(yf.chunks_exact(n.max(1))) {
            let (e, r) = sq_err(q, f);
            self.err2 += e;
            self.ref2 += r;
            if r > 0.0 {
                self.max_row_rel = self.max_row_rel.max((e / r).sqrt());
            }
        }
        let k = x.len() / rows.max(1);
        if self.chan_absmax.len() != k {
            self.chan_absmax = vec![0.0; k];
        }
        for row in x.chunks_exact(k.max(1)) {
            for (m, v) in self.chan_absmax.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }

    fn outlier_ratio(&self) -> f64 {
        let mut v = self.chan_absmax.clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let median = v[v.len() / 2] as f64;
        let max = v[v.len() - 1] as f64;
        if median > 0.0 { max / median } else { 0.0 }
    }
}

#[derive(Debug, Serialize)]
pub struct BlockError {
    pub block: usize,
    pub rel_error: f64,
}

#[derive(Debug, Serialize)]
pub struct ClassifierResult {
    pub head: String,
    pub agreement: f64,
    /// Accuracy against the phantom's view (when the classes are phantom views).
    pub accuracy_f32: Option<f64>,
    pub accuracy_int8: Option<f64>,
    pub max_prob_diff: f64,
}

#[derive(Debug, Serialize)]
pub struct RegressorResult {
    pub head: String,
    pub target: String,
    pub unit: String,
    /// The target is LVEF in percent (by the head's task): checked against the phantom's EF.
    pub lvef: bool,
    pub clips: usize,
    /// Mean |int8 − f32|.
    pub mean_abs_diff: f64,
    pub max_abs_diff: f64,
    /// MAE against the phantom's ground-truth EF (EF targets only).
    pub mae_f32: Option<f64>,
    pub mae_int8: Option<f64>,
}

/// int8 vs f32 traced LV.
#[derive(Debug, Serialize)]
pub struct LvResult {
    pub clips: usize,
    /// Dice between the cavity traced from int8 tokens and from f32 tokens (above 0.5), per
    /// clip: mean and smallest.
    pub mask_dice_mean: f64,
    pub mask_dice_min: f64,
    /// |int8 − f32| of the clip's traced EF (area–length volumes, largest vs smallest), points.
    pub ef_mean_abs_diff: f64,
    pub ef_max_abs_diff: f64,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub what: String,
    pub value: f64,
    pub limit: String,
    pub pass: bool,
}

/// Dice of the two traced cavities over the clip, and |int8 − f32| of the clip's traced EF
/// (None when either traced no cavity).
fn compare_traced(layout: &echojepa::lv::TokenLayout, f: &[f32], q: &[f32]) -> (f64, Option<f64>) {
    let (mut inter, mut sum) = (0.0f64, 0.0f64);
    for (a, b) in f.iter().zip(q) {
        let (a, b) = (*a > 0.5, *b > 0.5);
        inter += (a && b) as u8 as f64;
        sum += a as u8 as f64 + b as u8 as f64;
    }
    let dice = if sum > 0.0 { 2.0 * inter / sum } else { 1.0 };
    let ef = |p: &[f32]| {
        let v: Vec<f64> = layout
            .to_frames(p)
            .iter()
            .map(|fr| echojepa::lv::measure(fr, layout.resolution).volume)
            .collect();
        echojepa::lv::ef_of_extremes(&v)
    };
    let diff = match (ef(f), ef(q)) {
        (Some(a), Some(b)) => Some((a - b).abs()),
        _ => None,
    };
    (dice, diff)
}

fn summarize_traced(pairs: &[(f64, Option<f64>)]) -> Option<LvResult> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let diffs: Vec<f64> = pairs.iter().filter_map(|p| p.1).collect();
    Some(LvResult {
        clips: pairs.len(),
        mask_dice_mean: pairs.iter().map(|p| p.0).sum::<f64>() / n,
        mask_dice_min: pairs.iter().map(|p| p.0).fold(1.0, f64::min),
        ef_mean_abs_diff: if diffs.is_empty() {
            f64::NAN
        } else {
            diffs.iter().sum::<f64>() / diffs.len() as f64
        },
        ef_max_abs_diff: diffs.iter().copied().fold(0.0, f64::max),
    })
}

fn bar(len: u64, msg: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

fn median_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        v.push(s.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

pub fn run(a: Args, out: &mut impl Write) -> Result<()> {
    let quiet = a.json;
    let inputs = Inputs::load(&a)?;
    let m = &inputs.m;
    let views = phantom_views(&a, m)?;
    let clips = load_clips(&a, m, &views, quiet)?;
    let samples = &clips.samples;
    let f32k = f32_kernel_encoder(&inputs)?;

    let outputs = compare_clips(&inputs, samples, quiet)?;
    let (classifiers, regressors) = score_heads(m, samples, &outputs);
    // The per-layer table is the slowest part, so it runs on the first clips only.
    let nl = a.layer_clips.clamp(1, samples.len());
    let (layers, blocks) = layer_errors(&inputs, &f32k, &samples[..nl], quiet)?;
    let encoder_ms = time_encoders(&inputs, &f32k, &samples[0], a.reps, quiet)?;

    let bundle_bytes: u64 = m.files.values().map(|f| f.bytes).sum();
    let f32_bytes = crate::build::f32_bytes(&inputs.src);
    let size_ratio = bundle_bytes as f64 / f32_bytes as f64;
    let token_cosine_mean = outputs.cosine_sum / samples.len() as f64;
    let cmin = outputs.cosine_min;

    let mut tail = token_tail(
        m.input.resolution[0] / m.encoder.patch_size.max(1),
        samples,
        &outputs.token_cos,
        &outputs.token_norms,
    );
    trace_worst_tokens(&inputs, &f32k, samples, &mut tail)?;

    let lv = summarize_traced(&outputs.lv_pairs);
    let checks = checks(cmin, size_ratio, &classifiers, &regressors, lv.as_ref());
    let report = Report {
        model_id: m.model_id.clone(),
        model_version: m.model_version.clone(),
        manifest_sha256: inputs.bundle.manifest_sha256().to_string(),
        data: format!(
            "{}, {} frames {}x{}",
            clips.desc, m.input.frames, m.input.resolution[0], m.input.resolution[1]
        ),
        note: note(a.csv.is_some(), m.synthetic_training_data),
        clips: samples.len(),
        skipped: clips.skipped,
        bundle_bytes,
        f32_bytes,
        size_ratio,
        token_cosine_min: cmin,
        token_cosine_mean,
        token_tail: tail,
        encoder_ms,
        layers,
        blocks,
        classifiers,
        regressors,
        lv,
        checks,
        machine: echojepa_kernels::cpu::describe(),
    };
    write_outputs(&a, &report, out)
}

/// The verified bundle next to the full-precision model it was built from.
struct Inputs {
    bundle: VerifiedBundle,
    m: Manifest,
    edge: EdgeModel,
    src: source::Source,
    reference: source::Reference,
}

impl Inputs {
    /// Verifies the bundle, loads the checkpoint and refuses a checkpoint that is not the
    /// bundle's source (unless asked) or lacks one of its heads: the comparison would be
    /// meaningless.
    fn load(a: &Args) -> Result<Self> {
        let keys = a
            .keys
            .iter()
            .map(|p| PublicKey::load(p).with_context(|| format!("trusted key {}", p.display())))
            .collect::<Result<Vec<_>>>()?;
        let bundle = verify_bundle(&a.bundle, &keys)?;
        let m = bundle.manifest().clone();
        let edge = EdgeModel::load(&bundle)?;
        let src = source::load(&SourceArgs {
            checkpoint: a.checkpoint.clone(),
            arch: a.arch.clone(),
            encoder_key: a.encoder_key.clone(),
            probes: a.probes.clone(),
            probe_heads: a.probe_heads,
            classes: a.classes.clone(),
            targets: a.targets.clone(),
        })?;
        if src.checkpoint_sha256 != m.source.checkpoint_sha256 && !a.allow_other_source {
            bail!(
                "{} (sha256 {}) is not the checkpoint the bundle was built from ({} sha256 {}); pass --allow-other-source to compare anyway",
                src.checkpoint.display(),
                src.checkpoint_sha256,
                m.source.checkpoint,
                m.source.checkpoint_sha256
            );
        }
        let reference = source::reference(&src)?;
        for h in &m.heads {
            if !reference.probes.iter().any(|(n, _)| *n == h.name) {
                bail!(
                    "the checkpoint has no probe `{}` that the bundle has",
                    h.name
                );
            }
        }
        Ok(Self {
            bundle,
            m,
            edge,
            src,
            reference,
        })
    }

    /// The reference probes by head name (every bundle head has one: checked in `load`).
    fn ref_probes(&self) -> HashMap<&str, &echojepa::probe::AttentiveProbe> {
        self.reference
            .probes
            .iter()
            .map(|(n, p)| (n.as_str(), p))
            .collect()
    }
}

/// Which phantom views to render: those asked for, else the view head's classes, else all.
fn phantom_views(a: &Args, m: &Manifest) -> Result<Vec<View>> {
    let view_head = m.heads.iter().find(|h| {
        h.probe.kind == ProbeKind::Classifier && h.classes.iter().all(|c| c.parse::<View>().is_ok())
    });
    Ok(match (&a.views, view_head) {
        (Some(v), _) => data::parse_views(v)?,
        (None, Some(h)) => h.classes.iter().filter_map(|c| c.parse().ok()).collect(),
        (None, None) => View::ALL.to_vec(),
    })
}

/// The clips compared, the list's videos that could not be read, and a description of both.
struct Clips {
    samples: Vec<Sample>,
    skipped: Vec<data::Skipped>,
    desc: String,
}

fn load_clips(a: &Args, m: &Manifest, views: &[View], quiet: bool) -> Result<Clips> {
    let clips = match &a.csv {
        None => phantom_clips(a, m, views, quiet)?,
        Some(list) => list_clips(a, list, m, quiet)?,
    };
    if clips.samples.is_empty() {
        match &a.csv {
            None => bail!("--phantom must be at least 1"),
            Some(l) => bail!(
                "no usable video in {} ({} skipped)",
                l.display(),
                clips.skipped.len()
            ),
        }
    }
    Ok(clips)
}

fn phantom_clips(a: &Args, m: &Manifest, views: &[View], quiet: bool) -> Result<Clips> {
    let pb = bar(a.phantom as u64, "rendering phantom", quiet);
    let samples = data::phantom_samples(a.phantom, a.seed, &m.input, a.source_fps, views, || {
        pb.inc(1)
    })?;
    pb.finish_and_clear();
    if let Some(dir) = &a.dump_inputs {
        data::dump_samples(dir, &samples, &m.input)?;
    }
    let desc = format!(
        "{} SYNTHETIC phantom clips (seeds {}..{}, views {}, {} fps source)",
        samples.len(),
        a.seed,
        (a.seed + samples.len() as u64).saturating_sub(1),
        views.iter().map(|v| v.name()).collect::<Vec<_>>().join(","),
        a.source_fps
    );
    Ok(Clips {
        samples,
        skipped: Vec::new(),
        desc,
    })
}

fn list_clips(a: &Args, list: &std::path::Path, m: &Manifest, quiet: bool) -> Result<Clips> {
    let head = list_head(a, m)?;
    let mut entries = echojepa::datalist::read_video_csv(list)?;
    entries.truncate(a.csv_limit.unwrap_or(entries.len()));
    let pb = bar(entries.len() as u64, "reading videos", quiet);
    let (samples, skipped) = data::list_samples(list, &entries, head, &m.input, || pb.inc(1))?;
    pb.finish_and_clear();
    if let Some(dir) = &a.dump_inputs {
        data::dump_samples(dir, &samples, &m.input)?;
    }
    let desc = format!(
        "{} clips from {} (labels of head `{}`), {} unreadable video(s) skipped",
        samples.len(),
        list.display(),
        head.name,
        skipped.len()
    );
    Ok(Clips {
        samples,
        skipped,
        desc,
    })
}

/// The head whose labels a `--csv` list holds: `--csv-head`, else the first classifier.
fn list_head<'m>(a: &Args, m: &'m Manifest) -> Result<&'m HeadSpec> {
    match &a.csv_head {
        Some(n) => m.heads.iter().find(|h| &h.name == n).with_context(|| {
            format!(
                "--csv-head `{n}`: the bundle's heads are {}",
                m.heads
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }),
        None => m
            .heads
            .iter()
            .find(|h| h.probe.kind == ProbeKind::Classifier)
            .context("the bundle has no classifier head; name the list's head with --csv-head"),
    }
}

/// The checkpoint's encoder at f32 on the packed kernels: separates the kernels' own error
/// from int8's in the per-layer table and the timings.
fn f32_kernel_encoder(inputs: &Inputs) -> Result<QuantizedEncoder> {
    let cfg = &inputs.m.encoder;
    let flat = flatten_patch(cfg, &inputs.src.encoder);
    let none = HashMap::new();
    let origin = inputs.src.checkpoint.display().to_string();
    Ok(QuantizedEncoder::load(
        cfg,
        &TensorSource {
            tensors: &flat,
            origin: &origin,
            precision: &none,
        },
    )?)
}

/// Per clip, both ways: token cosine, head outputs (probabilities of classifiers, raw values
/// of regressors) and the traced LV.
struct ClipOutputs {
    cosine_min: f64,
    cosine_sum: f64,
    /// `[clip][token]` cosine int8 vs f32, and the f32 token's norm.
    token_cos: Vec<Vec<f64>>,
    token_norms: Vec<Vec<f64>>,
    /// `[head][clip]` rows of the f32 reference and of the bundle.
    head_f: Vec<Vec<Vec<f32>>>,
    head_q: Vec<Vec<Vec<f32>>>,
    lv_pairs: Vec<(f64, Option<f64>)>,
}

fn compare_clips(inputs: &Inputs, samples: &[Sample], quiet: bool) -> Result<ClipOutputs> {
    let m = &inputs.m;
    let ref_probes = inputs.ref_probes();
    let mut o = ClipOutputs {
        cosine_min: f64::INFINITY,
        cosine_sum: 0.0,
        token_cos: Vec::with_capacity(samples.len()),
        token_norms: Vec::with_capacity(samples.len()),
        head_f: vec![vec![]; m.heads.len()],
        head_q: vec![vec![]; m.heads.len()],
        lv_pairs: Vec::new(),
    };
    let lv_views: Vec<String> = m
        .lv_segmentation
        .as_ref()
        .map(|l| l.valid_views.clone())
        .unwrap_or_default();
    let pb = bar(samples.len() as u64, "comparing", quiet);
    for s in samples {
        let video = to_video(s)?;
        let tf = inputs.reference.encoder.forward(&video)?;
        let tq = inputs.edge.encode(&video)?;
        let (q, f) = (
            tq.flatten_all()?.to_vec1::<f32>()?,
            tf.flatten_all()?.to_vec1::<f32>()?,
        );
        let d = m.encoder.embed_dim;
        let c = token_cosines(&q, &f, d);
        let mn = c.iter().copied().fold(f64::INFINITY, f64::min);
        o.cosine_min = o.cosine_min.min(mn);
        o.cosine_sum += c.iter().sum::<f64>() / c.len().max(1) as f64;
        o.token_cos.push(c);
        o.token_norms.push(
            f.chunks_exact(d)
                .map(|t| t.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt())
                .collect(),
        );
        if s.view
            .as_deref()
            .is_none_or(|v| lv_views.iter().any(|w| w.eq_ignore_ascii_case(v)))
            && let Some(pair) = compare_lv(inputs, &tf, &tq)?
        {
            o.lv_pairs.push(pair);
        }
        let q_raw = inputs.edge.head_logits(&tq)?;
        for (i, h) in m.heads.iter().enumerate() {
            let f_raw = ref_probes[h.name.as_str()].forward(&tf, None)?;
            let (f_row, q_row) = match h.probe.kind {
                ProbeKind::Classifier => (
                    echojepa::probe::probabilities(&f_raw)?,
                    echojepa::probe::probabilities(&q_raw[i])?,
                ),
                ProbeKind::Regressor => (f_raw, q_raw[i].clone()),
            };
            o.head_f[i].push(f_row.flatten_all()?.to_vec1::<f32>()?);
            o.head_q[i].push(q_row.flatten_all()?.to_vec1::<f32>()?);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(o)
}

/// The LV traced from the f32 tokens `tf` and from the bundle's tokens `tq`, compared (None
/// when the checkpoint or the bundle has no LV decoder).
fn compare_lv(inputs: &Inputs, tf: &Tensor, tq: &Tensor) -> Result<Option<(f64, Option<f64>)>> {
    let Some((_, t)) = &inputs.src.lv else {
        return Ok(None);
    };
    let Some(q) = inputs.edge.lv_probabilities(tq)? else {
        return Ok(None);
    };
    let (w, b) = (
        t.get("weight").context("lv_head.weight")?,
        t.get("bias").context("lv_head.bias")?,
    );
    let f = lv_head_probabilities(tf, w, b)?;
    let m = &inputs.m;
    let layout = echojepa::lv::TokenLayout {
        frames: m.input.frames,
        resolution: m.input.resolution[0],
        tubelet: m.encoder.tubelet_size,
        patch: m.encoder.patch_size,
    };
    Ok(Some(compare_traced(&layout, &f[0], &q[0])))
}

fn score_heads(
    m: &Manifest,
    samples: &[Sample],
    o: &ClipOutputs,
) -> (Vec<ClassifierResult>, Vec<RegressorResult>) {
    let mut classifiers = Vec::new();
    let mut regressors = Vec::new();
    let tasks = m.head_tasks();
    for (i, h) in m.heads.iter().enumerate() {
        match h.probe.kind {
            ProbeKind::Classifier => {
                classifiers.push(score_classifier(h, samples, &o.head_f[i], &o.head_q[i]));
            }
            ProbeKind::Regressor => {
                let lvef = tasks[i].lvef_output();
                regressors.extend(score_regressor(
                    h,
                    lvef,
                    samples,
                    &o.head_f[i],
                    &o.head_q[i],
                ));
            }
        }
    }
    (classifiers, regressors)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (j, &p)| if p > b.1 { (j, p) } else { b },
        )
        .0
}

/// Top-1 agreement, the largest probability difference, and accuracy both ways when every
/// clip's view is one of the head's classes.
fn score_classifier(
    h: &HeadSpec,
    samples: &[Sample],
    head_f: &[Vec<f32>],
    head_q: &[Vec<f32>],
) -> ClassifierResult {
    let n = samples.len() as f64;
    let agree = head_f
        .iter()
        .zip(head_q)
        .filter(|(f, q)| argmax(f) == argmax(q))
        .count() as f64
        / n;
    let maxdiff = head_f
        .iter()
        .zip(head_q)
        .flat_map(|(f, q)| f.iter().zip(q).map(|(a, b)| (a - b).abs() as f64))
        .fold(0.0, f64::max);
    let truth: Option<Vec<usize>> = samples
        .iter()
        .map(|s| {
            let v = s.view.as_deref()?;
            h.classes.iter().position(|c| c.eq_ignore_ascii_case(v))
        })
        .collect();
    let acc = |preds: &[Vec<f32>]| {
        truth.as_ref().map(|t| {
            preds
                .iter()
                .zip(t)
                .filter(|(p, t)| argmax(p) == **t)
                .count() as f64
                / n
        })
    };
    ClassifierResult {
        head: h.name.clone(),
        agreement: agree,
        accuracy_f32: acc(head_f),
        accuracy_int8: acc(head_q),
        max_prob_diff: maxdiff,
    }
}

fn mean_or_nan(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Per target, on the clips of the head's valid views: |int8 − f32| in real units, and the
/// error against the truth both ways where a clip has one (the list's label, or the
/// phantom's EF for the LVEF target, output `lvef` by the head's task).
fn score_regressor(
    h: &HeadSpec,
    lvef: Option<usize>,
    samples: &[Sample],
    head_f: &[Vec<f32>],
    head_q: &[Vec<f32>],
) -> Vec<RegressorResult> {
    let mut results = Vec::new();
    for (j, t) in h.targets.iter().enumerate() {
        let ef = lvef == Some(j);
        let mut diffs = Vec::new();
        let (mut err_f, mut err_q) = (Vec::new(), Vec::new());
        for (k, s) in samples.iter().enumerate() {
            if let Some(v) = &s.view
                && !h.valid_views.is_empty()
                && !h.valid_views.iter().any(|w| w.eq_ignore_ascii_case(v))
            {
                continue;
            }
            let vf = t.scaler.denormalize(head_f[k][j] as f64);
            let vq = t.scaler.denormalize(head_q[k][j] as f64);
            diffs.push((vq - vf).abs());
            let truth = match &s.target {
                Some((head, v)) if *head == h.name && j == 0 => Some(*v),
                _ if ef => s.ef,
                _ => None,
            };
            if let Some(y) = truth {
                err_f.push((vf - y).abs());
                err_q.push((vq - y).abs());
            }
        }
        results.push(RegressorResult {
            head: h.name.clone(),
            target: t.name.clone(),
            unit: t.unit.clone(),
            lvef: ef,
            clips: diffs.len(),
            mean_abs_diff: mean_or_nan(&diffs),
            max_abs_diff: diffs.iter().copied().fold(0.0, f64::max),
            mae_f32: (!err_f.is_empty()).then(|| mean_or_nan(&err_f)),
            mae_int8: (!err_q.is_empty()).then(|| mean_or_nan(&err_q)),
        });
    }
    results
}

/// Follows each worst token through the encoder: its residual stream after every block, in the
/// bundle and in the f32 kernels, and how flat it is before the final norm.
fn trace_worst_tokens(
    inputs: &Inputs,
    f32k: &QuantizedEncoder,
    samples: &[Sample],
    tail: &mut TokenTail,
) -> Result<()> {
    let d = inputs.m.encoder.embed_dim;
    let token_rows = |enc: &QuantizedEncoder, s: &Sample, ti: usize| -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::new();
        enc.forward_clip_tapped(&s.clip, s.thw, &mut |t| {
            if let Tap::Block { x, .. } = t {
                rows.push(x.get(ti * d..(ti + 1) * d).unwrap_or_default().to_vec());
            }
        })?;
        Ok(rows)
    };
    for w in &mut tail.worst {
        let Some(s) = samples.get(w.sample) else {
            continue;
        };
        let f = token_rows(f32k, s, w.token)?;
        let q = token_rows(inputs.edge.encoder(), s, w.token)?;
        w.block_errors = f
            .iter()
            .zip(&q)
            .map(|(f, q)| {
                let (e, r) = sq_err(q, f);
                (e / r.max(f64::MIN_POSITIVE)).sqrt()
            })
            .collect();
        w.final_spread = f.last().filter(|x| !x.is_empty()).map(|x| spread(x));
    }
    Ok(())
}

/// `(Σ(q − f)², Σf²)`: the squared error of `q` against the reference `f`, and the reference's
/// squared norm.
fn sq_err(q: &[f32], f: &[f32]) -> (f64, f64) {
    q.iter().zip(f).fold((0.0, 0.0), |(e, r), (a, b)| {
        let (a, b) = (*a as f64, *b as f64);
        (e + (a - b).powi(2), r + b * b)
    })
}

/// `‖x − mean(x)‖ / ‖x‖` (0 for a zero vector).
fn spread(x: &[f32]) -> f64 {
    let mean = x.iter().map(|v| *v as f64).sum::<f64>() / x.len().max(1) as f64;
    let centred: f64 = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum();
    let all: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
    if all > 0.0 {
        (centred / all).sqrt()
    } else {
        0.0
    }
}

/// Per-layer errors on `samples`: the bundle's layer vs the f32 layer on the f32 model's own
/// input (so errors do not compound), and the residual stream error after each block.
fn layer_errors(
    inputs: &Inputs,
    f32k: &QuantizedEncoder,
    samples: &[Sample],
    quiet: bool,
) -> Result<(Vec<LayerError>, Vec<BlockError>)> {
    let m = &inputs.m;
    let cfg = &m.encoder;
    let qlayers: HashMap<String, &echojepa::quantized::QLinear> = inputs
        .edge
        .encoder()
        .linears()
        .into_iter()
        .map(|l| (l.name().to_string(), l))
        .collect();
    let mut lerr: HashMap<String, LayerAcc> = HashMap::new();
    let mut berr: Vec<(f64, f64)> = vec![(0.0, 0.0); cfg.depth];
    let pb = bar(samples.len() as u64, "per-layer errors", quiet);
    for s in samples {
        let fblocks = accumulate_linear_errors(f32k, &qlayers, s, &mut lerr)?;
        inputs
            .edge
            .encoder()
            .forward_clip_tapped(&s.clip, s.thw, &mut |t| {
                if let Tap::Block { index, x } = t {
                    let (e, r) = sq_err(x, &fblocks[index]);
                    berr[index].0 += e;
                    berr[index].1 += r;
                }
            })?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let precision_of: HashMap<String, String> = m
        .quantization
        .layers
        .iter()
        .map(|l| (l.tensor.clone(), l.precision.to_string()))
        .collect();
    let layers: Vec<LayerError> = QuantizedEncoder::linear_shapes(cfg)
        .into_iter()
        .map(|(name, _)| {
            let acc = lerr.remove(&name).unwrap_or_default();
            let (e, r) = (acc.err2, acc.ref2);
            LayerError {
                max_row_rel_error: acc.max_row_rel,
                input_outlier_ratio: acc.outlier_ratio(),
                precision: precision_of
                    .get(&format!("encoder.{name}.weight"))
                    .cloned()
                    .unwrap_or_else(|| "f32".into()),
                tensor: format!("encoder.{name}.weight"),
                rel_error: (e / r.max(f64::MIN_POSITIVE)).sqrt(),
            }
        })
        .collect();
    let blocks: Vec<BlockError> = berr
        .iter()
        .enumerate()
        .map(|(i, (e, r))| BlockError {
            block: i,
            rel_error: (e / r.max(f64::MIN_POSITIVE)).sqrt(),
        })
        .collect();
    Ok((layers, blocks))
}

/// Runs the f32 kernels on one clip, adding each linear layer's error (the bundle's layer on
/// the same input) to `lerr`; returns the f32 residual stream after each block.
fn accumulate_linear_errors(
    f32k: &QuantizedEncoder,
    qlayers: &HashMap<String, &echojepa::quantized::QLinear>,
    s: &Sample,
    lerr: &mut HashMap<String, LayerAcc>,
) -> Result<Vec<Vec<f32>>> {
    let mut failure = None;
    let mut fblocks: Vec<Vec<f32>> = Vec::new();
    f32k.forward_clip_tapped(&s.clip, s.thw, &mut |t| match t {
        Tap::LinearInput { layer, x, rows } => {
            let Some(q) = qlayers.get(layer.name()) else {
                return;
            };
            let n = layer.out_features();
            let (mut yf, mut yq) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            if let Err(e) = layer
                .forward(x, rows, &mut yf, Epilogue::None)
                .and_then(|_| q.forward(x, rows, &mut yq, Epilogue::None))
            {
                failure = Some(e);
                return;
            }
            lerr.entry(layer.name().to_string())
                .or_default()
                .add(x, rows, &yq, &yf);
        }
        Tap::Block { x, .. } => fblocks.push(x.to_vec()),
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(fblocks)
}

/// Median encoder times on one clip: candle f32, f32 kernels, the bundle.
fn time_encoders(
    inputs: &Inputs,
    f32k: &QuantizedEncoder,
    s0: &Sample,
    reps: usize,
    quiet: bool,
) -> Result<Timing> {
    let video = to_video(s0)?;
    let pb = bar(3, "timing encoders", quiet);
    let t_ref = median_ms(reps, || {
        Ok(inputs.reference.encoder.forward(&video).map(|_| ())?)
    })?;
    pb.inc(1);
    let t_f32k = median_ms(reps, || {
        Ok(f32k.forward_clip(&s0.clip, s0.thw).map(|_| ())?)
    })?;
    pb.inc(1);
    let t_q = median_ms(reps, || {
        Ok(inputs
            .edge
            .encoder()
            .forward_clip(&s0.clip, s0.thw)
            .map(|_| ())?)
    })?;
    pb.finish_and_clear();
    Ok(Timing {
        f32_reference: t_ref,
        f32_kernels: t_f32k,
        bundle: t_q,
    })
}

fn write_token_tail(w: &mut String, t: &TokenTail) {
    use std::fmt::Write as _;
    let q: Vec<String> = t
        .quantiles
        .iter()
        .map(|(q, c)| format!("{} %: {c:.6}", q * 100.0))
        .collect();
    let _ = writeln!(
        w,
        "Low tail: {} of {} tokens below {COSINE_LIMIT}; cosine quantiles {}.\n",
        t.below_limit,
        t.tokens,
        q.join(", ")
    );
    if t.worst.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "| worst tokens | clip | view | token (t, row, col) | f32 norm / clip median | its residual's rel. error after each block | spread / norm before the final norm |\n|---|---|---|---|---|---|---|"
    );
    for x in &t.worst {
        let blocks = if x.block_errors.is_empty() {
            "-".to_string()
        } else {
            let e: Vec<String> = x.block_errors.iter().map(|e| format!("{e:.4}")).collect();
            e.join(", ")
        };
        let _ = writeln!(
            w,
            "| {:.6} | {} | {} | {} ({}, {}, {}) | {:.2} | {} | {} |",
            x.cosine,
            x.clip,
            x.view.as_deref().unwrap_or("-"),
            x.token,
            x.t,
            x.row,
            x.col,
            x.norm_ratio,
            blocks,
            x.final_spread
                .map_or("-".to_string(), |v| format!("{v:.3}"))
        );
    }
    let _ = writeln!(w);
}

/// The pass/fail lines: token cosine, size, classifier agreement, EF difference, LV Dice.
fn checks(
    cmin: f64,
    size_ratio: f64,
    classifiers: &[ClassifierResult],
    regressors: &[RegressorResult],
    lv: Option<&LvResult>,
) -> Vec<Check> {
    let mut checks = vec![
        Check {
            what: "token cosine (min over tokens and clips)".into(),
            value: cmin,
            limit: format!(">= {COSINE_LIMIT}"),
            pass: cmin >= COSINE_LIMIT,
        },
        Check {
            what: "bundle size / f32 size".into(),
            value: size_ratio,
            limit: "<= 0.30 (about a quarter)".into(),
            pass: size_ratio <= 0.30,
        },
    ];
    for c in classifiers {
        checks.push(Check {
            what: format!("`{}` top-1 agreement int8 vs f32", c.head),
            value: c.agreement,
            limit: ">= 0.99".into(),
            pass: c.agreement >= 0.99,
        });
    }
    for r in regressors.iter().filter(|r| r.clips > 0 && r.lvef) {
        checks.push(Check {
            what: format!("`{}` mean |int8 - f32| ({})", r.target, r.unit),
            value: r.mean_abs_diff,
            limit: "<= 0.3".into(),
            pass: r.mean_abs_diff <= 0.3,
        });
    }
    if let Some(l) = lv {
        checks.push(Check {
            what: "traced LV: mask Dice int8 vs f32 (mean over clips)".into(),
            value: l.mask_dice_mean,
            limit: ">= 0.95".into(),
            pass: l.mask_dice_mean >= 0.95,
        });
    }
    checks
}

/// What the numbers do not mean, by where the clips and the model's training data came from.
fn note(from_list: bool, synthetic_training_data: bool) -> String {
    match (from_list, synthetic_training_data) {
        (false, _) => "Synthetic data: these numbers say how closely int8 follows full precision on the phantom, not how the model performs on patients.".into(),
        (true, true) => "The model was trained on SYNTHETIC data: these numbers say how closely int8 follows full precision on this list, not how the model performs on patients.".into(),
        (true, false) => "These numbers say how closely int8 follows full precision on this list; they are not a clinical validation.".into(),
    }
}

/// The JSON file if asked; then JSON or markdown to stdout, or the markdown to its file and
/// the check lines to stdout.
fn write_outputs(a: &Args, report: &Report, out: &mut impl Write) -> Result<()> {
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if a.json {
        writeln!(out, "{}", serde_json::to_string(report)?)?;
    } else {
        let md = markdown(report);
        match &a.markdown {
            Some(p) => {
                std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
                write_checks(out, report)?;
            }
            None => out.write_all(md.as_bytes())?,
        }
    }
    Ok(())
}

fn to_video(s: &Sample) -> Result<Tensor> {
    let (t, h, w) = s.thw;
    let c = s.clip.len() / (t * h * w);
    Ok(Tensor::from_slice(&s.clip, (1, c, t, h, w), &Device::Cpu)?)
}

fn write_checks(out: &mut impl Write, r: &Report) -> Result<()> {
    for c in &r.checks {
        writeln!(
            out,
            "{} {}: {:.5} (limit {})",
            if c.pass { "PASS" } else { "FAIL" },
            c.what,
            c.value,
            c.limit
        )?;
    }
    Ok(())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// The markdown report.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let w = &mut s;
    use std::fmt::Write as _;
    let _ = writeln!(w, "# int8 report: {} {}\n", r.model_id, r.model_version);
    let _ = writeln!(w, "Data: {}. **{}**\n", r.data, r.note);
    for k in &r.skipped {
        let _ = writeln!(w, "- skipped `{}`: {}", k.path, k.error);
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(w);
    }
    let _ = writeln!(
        w,
        "Bundle manifest sha256 `{}`; machine: {}.\n",
        r.manifest_sha256, r.machine
    );
    let _ = writeln!(
        w,
        "## Checks\n\n| check | value | limit | |\n|---|---|---|---|"
    );
    for c in &r.checks {
        let _ = writeln!(
            w,
            "| {} | {:.5} | {} | {} |",
            c.what,
            c.value,
            c.limit,
            if c.pass { "pass" } else { "**FAIL**" }
        );
    }
    let _ = writeln!(w, "\n## Size and speed\n");
    let _ = writeln!(
        w,
        "| bundle | f32 weights | ratio |\n|---|---|---|\n| {:.2} MB | {:.2} MB | {:.3} |\n",
        r.bundle_bytes as f64 / 1e6,
        r.f32_bytes as f64 / 1e6,
        r.size_ratio
    );
    let e = &r.encoder_ms;
    let _ = writeln!(
        w,
        "Encoder time per clip (median): f32 reference (candle) {:.1} ms, f32 kernels {:.1} ms, bundle {:.1} ms (bundle / f32 kernels = {:.2}, bundle / f32 reference = {:.2}).\n",
        e.f32_reference,
        e.f32_kernels,
        e.bundle,
        e.bundle / e.f32_kernels,
        e.bundle / e.f32_reference
    );
    let _ = writeln!(
        w,
        "Token cosine int8 vs f32 reference: min {:.6}, mean {:.6}.\n",
        r.token_cosine_min, r.token_cosine_mean
    );
    write_token_tail(w, &r.token_tail);
    let _ = writeln!(w, "## Heads\n");
    if !r.classifiers.is_empty() {
        let _ = writeln!(
            w,
            "| classifier | top-1 agreement | accuracy f32 | accuracy int8 | max |Δp| |\n|---|---|---|---|---|"
        );
        for c in &r.classifiers {
            let _ = writeln!(
                w,
                "| {} | {:.4} | {} | {} | {:.5} |",
                c.head,
                c.agreement,
                opt(c.accuracy_f32, 4),
                opt(c.accuracy_int8, 4),
                c.max_prob_diff
            );
        }
        let _ = writeln!(w);
    }
    if !r.regressors.is_empty() {
        let _ = writeln!(
            w,
            "| regressor | target | clips | mean |int8−f32| | max |int8−f32| | MAE f32 vs truth | MAE int8 vs truth |\n|---|---|---|---|---|---|---|"
        );
        for g in &r.regressors {
            let _ = writeln!(
                w,
                "| {} | {} ({}) | {} | {:.4} | {:.4} | {} | {} |",
                g.head,
                g.target,
                g.unit,
                g.clips,
                g.mean_abs_diff,
                g.max_abs_diff,
                opt(g.mae_f32, 3),
                opt(g.mae_int8, 3)
            );
        }
        let _ = writeln!(w);
    }
    if let Some(l) = &r.lv {
        let _ = writeln!(
            w,
            "Traced LV on {} clips of the EF views: mask Dice int8 vs f32 mean {:.4} (smallest {:.4}); the clip's traced EF differs by {:.3} points on average (at most {:.3}).\n",
            l.clips, l.mask_dice_mean, l.mask_dice_min, l.ef_mean_abs_diff, l.ef_max_abs_diff
        );
    }
    let _ = writeln!(
        w,
        "## Per layer\n\nRelative L2 error of each encoder linear layer (bundle layer vs f32 layer on the f32 model's input), and of the residual stream after each block (bundle encoder vs f32 kernels).\n"
    );
    let _ = writeln!(
        w,
        "| tensor | precision | rel. error | worst token's rel. error | input outlier ratio (max / median channel) |\n|---|---|---|---|---|"
    );
    for l in &r.layers {
        let _ = writeln!(
            w,
            "| {} | {} | {:.5} | {:.5} | {:.1} |",
            l.tensor, l.precision, l.rel_error, l.max_row_rel_error, l.input_outlier_ratio
        );
    }
    let _ = writeln!(w, "\n| block | residual rel. error |\n|---|---|");
    for b in &r.blocks {
        let _ = writeln!(w, "| {} | {:.5} |", b.block, b.rel_error);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, view: &str) -> Sample {
        Sample {
            clip: Vec::new(),
            thw: (2, 32, 32),
            view: Some(view.into()),
            ef: None,
            target: None,
            name: name.into(),
            frames: Vec::new(),
        }
    }

    #[test]
    fn the_token_tail_names_the_worst_tokens_and_where_they_are() {
        // two clips of one tubelet on a 2 × 2 grid
        let samples = [sample("phantom-1", "a4c"), sample("phantom-2", "a3c")];
        let cos = vec![vec![1.0, 0.9995, 0.99, 1.0], vec![0.998, 1.0, 1.0, 1.0]];
        let norms = vec![vec![1.0, 1.0, 4.0, 1.0], vec![0.5, 1.0, 1.0, 1.0]];
        let t = token_tail(2, &samples, &cos, &norms);
        assert_eq!(t.tokens, 8);
        assert_eq!(t.below_limit, 2);
        let w = &t.worst;
        assert_eq!(w.len(), 8);
        assert_eq!((w[0].cosine, w[0].clip.as_str()), (0.99, "phantom-1"));
        assert_eq!((w[0].token, w[0].t, w[0].row, w[0].col), (2, 0, 1, 0));
        assert_eq!(w[0].norm_ratio, 4.0);
        assert_eq!(
            (w[1].clip.as_str(), w[1].view.as_deref()),
            ("phantom-2", Some("a3c"))
        );
        assert_eq!(w[1].norm_ratio, 0.5);
        assert_eq!(w[2].cosine, 0.9995);
        // the lowest share of 1e-2 of 8 tokens is the worst token itself
        assert_eq!(t.quantiles[2], (1e-2, 0.99));
        let md = {
            let mut s = String::new();
            write_token_tail(&mut s, &t);
            s
        };
        assert!(md.contains("2 of 8 tokens below 0.999"), "{md}");
        assert!(
            md.contains("| 0.990000 | phantom-1 | a4c | 2 (0, 1, 0) | 4.00 | - | - |"),
            "{md}"
        );
    }

    #[test]
    fn layer_sums_find_the_worst_row_and_outlier_channels() {
        let mut acc = LayerAcc::default();
        // two rows of three input channels; channel 2 carries an outlier
        let x = [1.0, -2.0, 40.0, 0.5, 1.0, -3.0];
        // row 0 exact, row 1 off by 10 % of its norm
        let yf = [3.0, 4.0, 0.0, 6.0];
        let yq = [3.0, 4.0, 0.0, 5.4];
        acc.add(&x, 2, &yq, &yf);
        assert!((acc.max_row_rel - 0.1).abs() < 1e-6, "{}", acc.max_row_rel);
        assert!((acc.err2 - 0.36).abs() < 1e-6, "{}", acc.err2);
        assert_eq!(acc.ref2, 61.0);
        // channel maxima 1, 2, 40: max over median = 20
        assert_eq!(acc.outlier_ratio(), 20.0);
        // a second clip with a larger error in row 0 raises the worst row
        acc.add(&x, 2, &[3.0, 2.0, 0.0, 6.0], &yf);
        assert!((acc.max_row_rel - 0.4).abs() < 1e-9, "{}", acc.max_row_rel);
        assert_eq!(LayerAcc::default().outlier_ratio(), 0.0);
    }

    #[test]
    fn spread_is_small_for_a_flat_token() {
        assert!((spread(&[1.0, -1.0, 1.0, -1.0]) - 1.0).abs() < 1e-12);
        let flat = spread(&[10.0, 10.1, 9.9, 10.0]);
        assert!(flat > 0.0 && flat < 0.01, "{flat}");
        assert_eq!(spread(&[0.0, 0.0]), 0.0);
    }
}
