//! Evaluation of a fine-tuned model on fixed clips: view accuracy and calibration, EF from the
//! regressor and from the traced LV cavity (area–length volumes, [`echojepa::lv`]) over the clip
//! and, on the phantom as the cart measures it, beat by beat over a continuous scan of several
//! clips; on a dataset with tracings (EchoNet), per video from the traced ED and ES frames; the
//! mean predictor on the same clips, LV Dice (on traced frames only); the temperature fit, the EF
//! confidence threshold and the line that calibrates the traced EF; metric files.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use echojepa::checkpoint::{Scaler, TensorMap};
use echojepa::lv::{self, TokenLayout};
use echojepa_input::normalise_frames;
use echojepa_phantom::View;
use serde::{Deserialize, Serialize};

use super::Setup;
use super::config::{FinetuneBlock, HeadCfg, HeadTask};
use super::model::{self, FtModel};
use crate::phantom_stream::{PhantomStream, Split};
use crate::plot::{Series, line_chart};
use echojepa_input::{IMAGENET_MEAN, IMAGENET_STD};

/// The pixels of an evaluation clip.
pub enum Pixels {
    /// `[3, T, R, R]`, normalised (the phantom stream's output).
    Normalised(Vec<f32>),
    /// `[T, R, R]` prepared grey frames, normalised when the clip meets the model (a twelfth of
    /// the memory, for datasets with many evaluation clips).
    Gray(Vec<u8>),
}

impl Pixels {
    /// Appends the normalised `[3, T, R, R]` input to `out`.
    pub fn extend_normalised(&self, out: &mut Vec<f32>, frames: usize) {
        match self {
            Pixels::Normalised(v) => out.extend_from_slice(v),
            Pixels::Gray(g) => {
                let planes: Vec<&[u8]> = g.chunks(g.len() / frames.max(1)).collect();
                out.extend(normalise_frames(&planes, 3, IMAGENET_MEAN, IMAGENET_STD));
            }
        }
    }
}

/// Which traced frame of a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Ed,
    Es,
}

/// An evaluation (or, for datasets on disk, training) clip with its labels.
pub struct Rendered {
    pub input: Pixels,
    pub view: View,
    pub ef: f64,
    /// `[T, R, R]` true cavity, `255` inside (soft edges where a traced outline was resampled).
    pub lv: Vec<u8>,
    /// `[T]`: 1 where `lv` is the truth of the frame, 0 where the frame has no tracing.
    pub lv_weight: Vec<f32>,
    /// The video the clip comes from (clips of one video are measured together).
    pub video: usize,
    /// Frames of the clip that are the video's traced end-diastole or end-systole.
    pub traced: Vec<(usize, Phase)>,
}

/// Renders clips `0..n` of a split (two threads).
pub fn render_split(stream: &PhantomStream, split: Split, n: usize) -> Result<Vec<Rendered>> {
    render_range(stream, split, 0, n)
}

/// Renders clips `start..start + n` of a split (two threads).
pub fn render_range(
    stream: &PhantomStream,
    split: Split,
    start: usize,
    n: usize,
) -> Result<Vec<Rendered>> {
    render_jobs(stream, split, n, &|i| ((start + i) as u64, 0.0))
}

/// Renders `n` clips, clip `i` being `job(i) = (index, offset s)` of the split.
fn render_jobs(
    stream: &PhantomStream,
    split: Split,
    n: usize,
    job: &(dyn Fn(usize) -> (u64, f64) + Sync),
) -> Result<Vec<Rendered>> {
    let threads = 2usize;
    let chunks: Vec<Vec<usize>> = (0..threads)
        .map(|t| (t..n).step_by(threads).collect())
        .collect();
    let mut parts: Vec<Vec<(usize, Rendered)>> = Vec::new();
    std::thread::scope(|sc| -> Result<()> {
        let handles: Vec<_> = chunks
            .iter()
            .map(|idx| {
                sc.spawn(move || -> Result<Vec<(usize, Rendered)>> {
                    idx.iter()
                        .map(|&i| {
                            let (index, offset) = job(i);
                            let c = stream.clip_at(split, index, offset)?;
                            Ok((
                                i,
                                Rendered {
                                    input: Pixels::Normalised(c.input),
                                    view: c.view,
                                    ef: c.ef_percent,
                                    lv: c.lv.iter().map(|&v| (v * 255.0).round() as u8).collect(),
                                    lv_weight: vec![1.0; stream.frames],
                                    video: i,
                                    traced: Vec::new(),
                                },
                            ))
                        })
                        .collect()
                })
            })
            .collect();
        for h in handles {
            parts.push(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a phantom render thread panicked"))??,
            );
        }
        Ok(())
    })?;
    let mut all: Vec<(usize, Rendered)> = parts.into_iter().flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// Raw model outputs on a set of clips.
#[derive(Clone)]
pub struct Evaluated {
    pub views: Vec<View>,
    pub ef_true: Vec<f64>,
    pub view_logits: Option<Vec<Vec<f32>>>,
    pub ef_pred: Option<Vec<f64>>,
    pub ef_views: Vec<View>,
    /// Per clip: the cavity traced by the model and the true one.
    pub lv: Option<Vec<LvClip>>,
    pub lv_views: Vec<View>,
    pub scaler: Scaler,
}

/// The LV cavity of one clip, frame by frame.
#[derive(Clone)]
pub struct LvClip {
    /// Predicted and true cavity in each frame.
    pub pred: Vec<lv::FrameLv>,
    pub truth: Vec<lv::FrameLv>,
    /// Dice of the cavity above 0.5 over the clip's traced frames (`None` without any).
    pub dice: Option<f64>,
    /// Every frame has its truth (the phantom), so measures over the whole clip hold.
    pub full: bool,
}

/// Volume curve `(s, volume)` of frames `dt` seconds apart starting at `t0`.
fn series(frames: &[lv::FrameLv], t0: f64, dt: f64) -> Vec<(f64, f64)> {
    frames
        .iter()
        .enumerate()
        .map(|(k, f)| (t0 + k as f64 * dt, f.volume))
        .collect()
}

/// What calibration on the validation split fixed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    /// Validation clips the calibration was fitted on.
    #[serde(default)]
    pub clips: usize,
    pub temperature: f64,
    pub view_nll_before: f64,
    pub view_nll_after: f64,
    pub view_ece_before: f64,
    pub view_ece_after: f64,
    /// Smallest calibrated view confidence at which, on validation, misread views make up at
    /// most the target share of shown EF values (None without a view head).
    pub ef_min_confidence: Option<f64>,
    /// `EF = a + b · EF_traced`, fitted on validation scans (several clips in a row) of the EF
    /// views, EF measured beat by beat as the cart does; on a dataset (EchoNet), fitted on the
    /// validation videos' EF from the traced LV at their ED and ES frames.
    pub ef_beat_fit: Option<[f64; 2]>,
    /// MAE of the calibrated traced EF on the validation scans (or videos) it was fitted on,
    /// on the phantom decided clip by clip as the cart does (`ef_clipwise_mae`): what decides,
    /// against the regressor's per-clip validation MAE, where the cart's EF comes from.
    #[serde(default)]
    pub ef_traced_val_mae: Option<f64>,
    /// One-sided 95 % upper bound (Wilson) of the misread share among shown EF values on
    /// validation at `ef_min_confidence`.
    #[serde(default)]
    pub ef_misread_upper_bound: Option<f64>,
}

/// Metrics of one evaluation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvalReport {
    pub clips: usize,
    pub view_accuracy: Option<f64>,
    pub view_nll: Option<f64>,
    /// EF metrics are over clips whose true view is one the EF (or LV) head trains on.
    pub ef_clips: usize,
    pub ef_mae: Option<f64>,
    /// Always answering the training mean, on the same clips.
    pub ef_mean_predictor_mae: Option<f64>,
    pub lv_dice: Option<f64>,
    /// EF from the traced cavity within each clip (area–length, largest and smallest volume of
    /// the clip), uncalibrated.
    pub ef_area_raw_mae: Option<f64>,
    /// The same rule on the true cavity (the rule's own error within one clip).
    pub ef_true_area_raw_mae: Option<f64>,
    /// With the calibrated threshold: share of EF values shown on a clip whose true view is not
    /// an EF view, and share of EF-view clips on which EF is shown.
    pub ef_shown_misread_share: Option<f64>,
    pub ef_shown_share: Option<f64>,
    /// View accuracy per true view, with what the misses were read as.
    #[serde(default)]
    pub per_view: Vec<ViewScore>,
}

/// How the clips of one true view were read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewScore {
    pub view: String,
    pub clips: usize,
    pub correct: usize,
    /// Other views the misses were read as, with their counts, most frequent first.
    pub read_as: Vec<(String, usize)>,
}

/// Per true view (in `View::ALL` order, views without clips left out): clips, hits and misses.
pub fn view_scores(truth: &[usize], pred: &[usize]) -> Vec<ViewScore> {
    let name = |i: usize| {
        View::ALL
            .get(i)
            .map_or_else(|| format!("class {i}"), |v| v.name().to_string())
    };
    let mut out = Vec::new();
    for (vi, v) in View::ALL.iter().enumerate() {
        let mut score = ViewScore {
            view: v.name().to_string(),
            ..ViewScore::default()
        };
        let mut other = std::collections::BTreeMap::<usize, usize>::new();
        for (&t, &p) in truth.iter().zip(pred) {
            if t != vi {
                continue;
            }
            score.clips += 1;
            if p == t {
                score.correct += 1;
            } else {
                *other.entry(p).or_default() += 1;
            }
        }
        if score.clips == 0 {
            continue;
        }
        let mut read_as: Vec<(String, usize)> =
            other.into_iter().map(|(p, n)| (name(p), n)).collect();
        read_as.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        score.read_as = read_as;
        out.push(score);
    }
    out
}

/// `a4c 38/40 (2 as a2c)`-style text of the per-view scores.
pub fn describe_view_scores(scores: &[ViewScore]) -> String {
    scores
        .iter()
        .map(|s| {
            let misses: Vec<String> = s
                .read_as
                .iter()
                .map(|(v, n)| format!("{n} as {v}"))
                .collect();
            if misses.is_empty() {
                format!("{} {}/{}", s.view, s.correct, s.clips)
            } else {
                format!(
                    "{} {}/{} ({})",
                    s.view,
                    s.correct,
                    s.clips,
                    misses.join(", ")
                )
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs the model over the clips in batches of 8.
pub fn evaluate(
    s: &Setup,
    weights: &TensorMap,
    clips: &[Rendered],
    scaler: Scaler,
) -> Result<Evaluated> {
    let f = &s.cfg.finetune;
    let c = &s.cfg.experiment.classifier;
    let d = &s.cfg.experiment.data;
    let tensors = weights
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(s.dtype)?.to_device(&s.device)?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    let vb = VarBuilder::from_tensors(tensors, s.dtype, &s.device);
    let m = FtModel::new(&s.enc_cfg, &f.heads, c.num_heads, c.num_probe_blocks, vb)?;
    let (t, r) = (d.frames_per_clip, d.resolution);
    let layout = TokenLayout {
        frames: t,
        resolution: r,
        tubelet: s.enc_cfg.tubelet_size,
        patch: s.enc_cfg.patch_size,
    };
    let head_of = |task: HeadTask| f.heads.iter().position(|h| h.task == task);
    let (vi, ei, li) = (
        head_of(HeadTask::View),
        head_of(HeadTask::Ef),
        head_of(HeadTask::LvSegmentation),
    );
    let mut ev = Evaluated {
        views: clips.iter().map(|c| c.view).collect(),
        ef_true: clips.iter().map(|c| c.ef).collect(),
        view_logits: vi.map(|_| Vec::new()),
        ef_pred: ei.map(|_| Vec::new()),
        ef_views: ei.map(|i| f.heads[i].views.clone()).unwrap_or_default(),
        lv: li.map(|_| Vec::new()),
        lv_views: li.map(|i| f.heads[i].views.clone()).unwrap_or_default(),
        scaler,
    };
    for chunk in clips.chunks(8) {
        let b = chunk.len();
        let mut input = Vec::with_capacity(b * 3 * t * r * r);
        for c in chunk {
            c.input.extend_normalised(&mut input, t);
        }
        let x = Tensor::from_vec(input, (b, 3, t, r, r), &s.device)?.to_dtype(s.dtype)?;
        let tokens = m.encode(&x, None, 0)?;
        let outs = m.heads_forward(&tokens)?;
        if let (Some(i), Some(v)) = (vi, ev.view_logits.as_mut()) {
            let rows: Vec<Vec<f32>> = outs[i].to_dtype(DType::F32)?.to_vec2()?;
            v.extend(rows);
        }
        if let (Some(i), Some(v)) = (ei, ev.ef_pred.as_mut()) {
            let rows: Vec<Vec<f32>> = outs[i].to_dtype(DType::F32)?.to_vec2()?;
            v.extend(rows.iter().map(|r| r[0] as f64 * scaler.std + scaler.mean));
        }
        if let (Some(i), Some(v)) = (li, ev.lv.as_mut()) {
            let probs = candle_nn::ops::sigmoid(&outs[i].to_dtype(DType::F32)?)?;
            let probs: Vec<Vec<Vec<f32>>> = probs.to_device(&Device::Cpu)?.to_vec3()?;
            for (clip, p) in chunk.iter().zip(probs) {
                let flat: Vec<f32> = p.into_iter().flatten().collect();
                v.push(lv_clip(&layout.to_frames(&flat), clip, r));
            }
        }
    }
    Ok(ev)
}

/// Measures the predicted frames against the clip's true cavity `[T, R, R]`; Dice only on the
/// frames that have a truth.
fn lv_clip(pred: &[Vec<f32>], clip: &Rendered, r: usize) -> LvClip {
    let (mut inter, mut sum, mut any) = (0.0f64, 0.0f64, false);
    for ((p, y), w) in pred.iter().zip(clip.lv.chunks(r * r)).zip(&clip.lv_weight) {
        if *w <= 0.0 {
            continue;
        }
        any = true;
        for (a, b) in p.iter().zip(y) {
            let (a, b) = (*a > 0.5, *b > 127);
            inter += (a && b) as u8 as f64;
            sum += a as u8 as f64 + b as u8 as f64;
        }
    }
    let truth = clip
        .lv
        .chunks(r * r)
        .map(|f| {
            let p: Vec<f32> = f.iter().map(|&v| v as f32 / 255.0).collect();
            lv::measure(&p, r)
        })
        .collect();
    LvClip {
        pred: pred.iter().map(|f| lv::measure(f, r)).collect(),
        truth,
        dice: any.then(|| if sum > 0.0 { 2.0 * inter / sum } else { 1.0 }),
        full: clip.lv_weight.iter().all(|w| *w > 0.0),
    }
}

/// A continuous scan of one patient: several clips in a row, traced and measured as the cart
/// does it.
#[derive(Debug, Clone)]
pub struct Scan {
    pub ef: f64,
    /// Volume curves `(s, volume)` of the traced and the true cavity.
    pub pred: Vec<(f64, f64)>,
    pub truth: Vec<(f64, f64)>,
    /// Points of `pred` each clip added, in order.
    pub clip_points: usize,
}

/// Renders `n` scans of `clips` consecutive clips each from the split's patients in the EF views
/// and traces them with the model.
pub fn evaluate_scans(
    s: &Setup,
    weights: &TensorMap,
    split: Split,
    n: usize,
    clips: usize,
    ef_views: &[View],
) -> Result<Vec<Scan>> {
    let stream = s
        .source
        .phantom()
        .context("continuous scans are rendered from the phantom stream only")?;
    let nv = stream.spec.views.len().max(1);
    let indices: Vec<u64> = (0..(n * nv * 4) as u64)
        .filter(|&i| in_views(ef_views, stream.placement(split, i).1))
        .take(n)
        .collect();
    let span = stream.clip_span_s();
    let rendered = render_jobs(stream, split, indices.len() * clips, &|j| {
        (indices[j / clips], (j % clips) as f64 * span)
    })?;
    let ev = evaluate(
        s,
        weights,
        &rendered,
        Scaler {
            mean: 0.0,
            std: 1.0,
        },
    )?;
    let lvs = ev
        .lv
        .context("the model has no LV head to trace scans with")?;
    let dt = span / stream.frames.max(1) as f64;
    Ok(lvs
        .chunks(clips)
        .zip(rendered.chunks(clips))
        .map(|(l, r)| {
            let mut scan = Scan {
                ef: r[0].ef,
                pred: Vec::new(),
                truth: Vec::new(),
                clip_points: l.first().map_or(0, |c| c.pred.len()),
            };
            for (j, c) in l.iter().enumerate() {
                scan.pred.extend(series(&c.pred, j as f64 * span, dt));
                scan.truth.extend(series(&c.truth, j as f64 * span, dt));
            }
            scan
        })
        .collect())
}

/// EF measured beat by beat over scans, against the truth and the mean predictor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScanReport {
    pub scans: usize,
    pub seconds_per_scan: f64,
    /// Mean number of whole beats found per scan in the traced cavity.
    pub beats_per_scan: f64,
    pub ef_beats_raw_mae: Option<f64>,
    /// With the validation line.
    pub ef_beats_mae: Option<f64>,
    /// With the validation line, decided clip by clip as the cart does: after each clip of a
    /// scan, EF from the beats seen so far (the extremes while they hold no whole beat), the
    /// error averaged over every clip of every scan.
    #[serde(default)]
    pub ef_clipwise_mae: Option<f64>,
    /// The same measurement on the true cavity (the method's own error).
    pub ef_true_beats_mae: Option<f64>,
    pub ef_mean_predictor_mae: Option<f64>,
}

/// `EF = a + b · EF_traced` over scans (validation).
pub fn fit_scans(scans: &[Scan]) -> Option<[f64; 2]> {
    let pts: Vec<(f64, f64)> = scans
        .iter()
        .filter_map(|sc| lv::ef_of_series(&sc.pred).map(|(e, _)| (e, sc.ef)))
        .collect();
    fit_line(&pts).filter(|[a, b]| a.is_finite() && b.is_finite() && *b > 0.0)
}

/// Metrics over scans; `fit` calibrates, `mean` is the training mean of EF.
pub fn report_scans(scans: &[Scan], fit: Option<[f64; 2]>, mean_ef: f64) -> ScanReport {
    let traced: Vec<Option<(f64, Vec<lv::Beat>)>> =
        scans.iter().map(|sc| lv::ef_of_series(&sc.pred)).collect();
    let err = |f: &dyn Fn(f64) -> f64| {
        mean(
            scans
                .iter()
                .zip(&traced)
                .filter_map(|(sc, t)| t.as_ref().map(|(e, _)| (f(*e) - sc.ef).abs())),
        )
    };
    ScanReport {
        scans: scans.len(),
        seconds_per_scan: scans
            .first()
            .and_then(|s| s.pred.last())
            .map_or(0.0, |p| p.0),
        beats_per_scan: mean(
            traced
                .iter()
                .map(|t| t.as_ref().map_or(0.0, |(_, b)| b.len() as f64)),
        )
        .unwrap_or(0.0),
        ef_beats_raw_mae: err(&|e| e),
        ef_beats_mae: fit.and_then(|[a, b]| err(&|e| a + b * e)),
        ef_clipwise_mae: fit.and_then(|[a, b]| {
            mean(scans.iter().flat_map(|sc| {
                let step = sc.clip_points.max(1);
                (step..=sc.pred.len()).step_by(step).filter_map(move |end| {
                    lv::ef_of_series(&sc.pred[..end]).map(|(e, _)| (a + b * e - sc.ef).abs())
                })
            }))
        }),
        ef_true_beats_mae: mean(
            scans
                .iter()
                .filter_map(|sc| lv::ef_of_series(&sc.truth).map(|(e, _)| (e - sc.ef).abs())),
        ),
        ef_mean_predictor_mae: mean(scans.iter().map(|sc| (sc.ef - mean_ef).abs())),
    }
}

/// EF of one video of a dataset, from all its evaluation clips.
#[derive(Debug, Clone)]
pub struct VideoEf {
    /// The label (`FileList.csv`).
    pub ef: f64,
    /// The regressor, averaged over the video's clips.
    pub regressor: Option<f64>,
    /// `100 (1 − V_ES / V_ED)` with area–length volumes of the traced LV on the video's traced
    /// ED and ES frames: from the model's cavity and from the true (rasterised) outline.
    pub traced: Option<f64>,
    pub true_traced: Option<f64>,
    /// The video's clips hold its traced ED and ES frames.
    pub has_ed_es: bool,
}

/// Groups the clips by video and measures EF per video; the ED and ES volumes come from the
/// first clip that holds each traced frame.
pub fn per_video(ev: &Evaluated, clips: &[Rendered]) -> Vec<VideoEf> {
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, c) in clips.iter().enumerate() {
        groups.entry(c.video).or_default().push(i);
    }
    let ef_of = |ed: f64, es: f64| (ed > 0.0).then(|| 100.0 * (1.0 - es / ed));
    groups
        .into_values()
        .map(|idx| {
            let regressor = ev
                .ef_pred
                .as_ref()
                .and_then(|p| mean(idx.iter().map(|&i| p[i])));
            let volume = |phase: Phase, truth: bool| -> Option<f64> {
                let lv = ev.lv.as_ref()?;
                idx.iter().find_map(|&i| {
                    let (k, _) = clips[i].traced.iter().find(|(_, p)| *p == phase)?;
                    let frames = if truth { &lv[i].truth } else { &lv[i].pred };
                    frames.get(*k).map(|f| f.volume)
                })
            };
            let both = |truth: bool| ef_of(volume(Phase::Ed, truth)?, volume(Phase::Es, truth)?);
            let has = |phase: Phase| {
                idx.iter()
                    .any(|&i| clips[i].traced.iter().any(|t| t.1 == phase))
            };
            VideoEf {
                ef: ev.ef_true[idx[0]],
                regressor,
                traced: both(false),
                true_traced: both(true),
                has_ed_es: has(Phase::Ed) && has(Phase::Es),
            }
        })
        .collect()
}

/// EF per video of a dataset split, against the label and the training mean.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VideoReport {
    pub videos: usize,
    /// Regressor (mean over the video's clips).
    pub ef_mae: Option<f64>,
    pub ef_mean_predictor_mae: Option<f64>,
    /// Videos with traced ED and ES frames, where EF from the traced LV is measured.
    pub traced_videos: usize,
    /// Of those, the videos where the model traced a cavity in the ED frame (EF needs a
    /// volume to divide by); the traced MAEs are over these.
    pub traced_measured: usize,
    pub ef_traced_raw_mae: Option<f64>,
    /// With the line fitted on the validation videos.
    pub ef_traced_mae: Option<f64>,
    /// The same rule on the true outlines (the rule's own error against the label).
    pub ef_true_traced_mae: Option<f64>,
    /// The mean predictor on the videos of `traced_measured`.
    pub ef_mean_predictor_traced_mae: Option<f64>,
}

/// `EF = a + b · EF_traced` over validation videos.
pub fn fit_videos(v: &[VideoEf]) -> Option<[f64; 2]> {
    let pts: Vec<(f64, f64)> = v
        .iter()
        .filter_map(|x| x.traced.map(|e| (e, x.ef)))
        .collect();
    fit_line(&pts).filter(|[a, b]| a.is_finite() && b.is_finite() && *b > 0.0)
}

/// Metrics over videos; `fit` calibrates the traced EF, `mean_ef` is the training mean.
pub fn report_videos(v: &[VideoEf], fit: Option<[f64; 2]>, mean_ef: f64) -> VideoReport {
    let traced: Vec<&VideoEf> = v.iter().filter(|x| x.traced.is_some()).collect();
    let err = |f: &dyn Fn(f64) -> f64| {
        mean(
            traced
                .iter()
                .filter_map(|x| x.traced.map(|e| (f(e) - x.ef).abs())),
        )
    };
    VideoReport {
        videos: v.len(),
        ef_mae: mean(
            v.iter()
                .filter_map(|x| x.regressor.map(|p| (p - x.ef).abs())),
        ),
        ef_mean_predictor_mae: mean(v.iter().map(|x| (x.ef - mean_ef).abs())),
        traced_videos: v.iter().filter(|x| x.has_ed_es).count(),
        traced_measured: traced.len(),
        ef_traced_raw_mae: err(&|e| e),
        ef_traced_mae: fit.and_then(|[a, b]| err(&|e| a + b * e)),
        ef_true_traced_mae: mean(
            v.iter()
                .filter_map(|x| x.true_traced.map(|e| (e - x.ef).abs())),
        ),
        ef_mean_predictor_traced_mae: mean(traced.iter().map(|x| (x.ef - mean_ef).abs())),
    }
}

fn nll_and_ece(logits: &[Vec<f32>], labels: &[usize], temp: f64) -> (f64, f64) {
    let k = logits.first().map_or(0, |r| r.len());
    let flat: Vec<f32> = logits.iter().flatten().copied().collect();
    let probs = model::softmax_rows(&flat, k, temp);
    let n = labels.len().max(1) as f64;
    let nll = probs
        .iter()
        .zip(labels)
        .map(|(p, &y)| -(p[y].max(1e-12)).ln())
        .sum::<f64>()
        / n;
    // expected calibration error over 10 equal-width confidence bins
    let mut bins = [(0.0f64, 0.0f64, 0usize); 10];
    for (p, &y) in probs.iter().zip(labels) {
        let (arg, conf) = p
            .iter()
            .enumerate()
            .fold((0, 0.0), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        let b = ((conf * 10.0) as usize).min(9);
        bins[b].0 += conf;
        bins[b].1 += (arg == y) as u8 as f64;
        bins[b].2 += 1;
    }
    let ece = bins
        .iter()
        .filter(|b| b.2 > 0)
        .map(|b| (b.0 - b.1).abs())
        .sum::<f64>()
        / n;
    (nll, ece)
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

fn in_views(views: &[View], v: View) -> bool {
    views.is_empty() || views.contains(&v)
}

impl Evaluated {
    /// Fits the temperature (NLL, golden-section search over log T), the EF confidence
    /// threshold and the EF-from-areas line on this (validation) split.
    pub fn calibrate(&self, f: &FinetuneBlock) -> Calibration {
        let labels: Vec<usize> = self.views.iter().map(|v| v.index()).collect();
        let mut cal = Calibration {
            clips: self.views.len(),
            temperature: 1.0,
            view_nll_before: f64::NAN,
            view_nll_after: f64::NAN,
            view_ece_before: f64::NAN,
            view_ece_after: f64::NAN,
            ef_min_confidence: None,
            ef_beat_fit: None,
            ef_traced_val_mae: None,
            ef_misread_upper_bound: None,
        };
        if let Some(logits) = &self.view_logits {
            let nll = |lt: f64| nll_and_ece(logits, &labels, lt.exp()).0;
            let (mut a, mut b) = ((0.05f64).ln(), (20.0f64).ln());
            let g = (5f64.sqrt() - 1.0) / 2.0;
            for _ in 0..60 {
                let (c, d) = (b - g * (b - a), a + g * (b - a));
                if nll(c) < nll(d) {
                    b = d;
                } else {
                    a = c;
                }
            }
            let t = ((a + b) / 2.0).exp();
            let (n0, e0) = nll_and_ece(logits, &labels, 1.0);
            let (n1, e1) = nll_and_ece(logits, &labels, t);
            cal.temperature = t;
            cal.view_nll_before = n0;
            cal.view_nll_after = n1;
            cal.view_ece_before = e0;
            cal.view_ece_after = e1;
            let (th, bound) = self.ef_threshold(t, f.ef_misread_target);
            cal.ef_min_confidence = Some(th);
            cal.ef_misread_upper_bound = bound;
        }
        cal
    }

    /// Appends the outputs on more clips of the same model and heads.
    pub fn extend(&mut self, o: Evaluated) {
        self.views.extend(o.views);
        self.ef_true.extend(o.ef_true);
        if let (Some(a), Some(b)) = (self.view_logits.as_mut(), o.view_logits) {
            a.extend(b);
        }
        if let (Some(a), Some(b)) = (self.ef_pred.as_mut(), o.ef_pred) {
            a.extend(b);
        }
        if let (Some(a), Some(b)) = (self.lv.as_mut(), o.lv) {
            a.extend(b);
        }
    }

    /// EF views: the EF head's, else A4C and A2C (where the area rule holds).
    fn ef_views(&self) -> &[View] {
        if self.ef_pred.is_some() {
            &self.ef_views
        } else {
            &[View::A4c, View::A2c]
        }
    }

    fn shown(&self, temp: f64, threshold: f64) -> Vec<bool> {
        let Some(logits) = &self.view_logits else {
            return vec![true; self.views.len()];
        };
        let k = logits.first().map_or(0, |r| r.len());
        let flat: Vec<f32> = logits.iter().flatten().copied().collect();
        let ef_views = self.ef_views();
        model::softmax_rows(&flat, k, temp)
            .iter()
            .map(|p| {
                let (arg, conf) = p
                    .iter()
                    .enumerate()
                    .fold((0, 0.0), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
                in_views(ef_views, View::ALL[arg]) && conf >= threshold
            })
            .collect()
    }

    /// How many EF values are shown, and how many of those on a clip of another view.
    fn shown_and_misread(&self, shown: &[bool], ef_views: &[View]) -> (usize, usize) {
        let n = shown.iter().filter(|s| **s).count();
        let bad = shown
            .iter()
            .zip(&self.views)
            .filter(|(s, v)| **s && !in_views(ef_views, **v))
            .count();
        (n, bad)
    }

    /// The EF confidence threshold, the first of:
    /// 1. the lowest at which the one-sided 95 % upper bound (Wilson) of the misread share among
    ///    the EF values shown on validation is at most `target`: a clean but small validation
    ///    set does not pass a low threshold (zero misreads among 80 shown bound it at 3.3 %);
    /// 2. too few clips for that: the lowest at which no shown value is misread;
    /// 3. misreads at every threshold that shows anything: the lowest that shows nothing;
    /// 4. the highest candidate.
    ///
    /// Candidates run in steps of 0.01 to 0.99, then 0.001 to 0.999, then 0.9995 and 0.9999:
    /// with a sharp view head the confident misreads sit above 0.98. Returns the threshold and
    /// its bound (`None` where validation shows nothing at it).
    fn ef_threshold(&self, temp: f64, target: f64) -> (f64, Option<f64>) {
        let ef_views = self.ef_views().to_vec();
        let candidates = (0..=99)
            .map(|i| i as f64 / 100.0)
            .chain((991..=999).map(|i| i as f64 / 1000.0))
            .chain([0.9995, 0.9999]);
        let mut clean: Option<(f64, f64)> = None;
        let mut last = (0.0, None);
        for th in candidates {
            let shown = self.shown(temp, th);
            let (n, bad) = self.shown_and_misread(&shown, &ef_views);
            if n == 0 {
                return clean.map_or((th, None), |(t, ub)| (t, Some(ub)));
            }
            let ub = wilson_upper(bad, n);
            if ub <= target {
                return (th, Some(ub));
            }
            if bad == 0 && clean.is_none() {
                clean = Some((th, ub));
            }
            last = (th, Some(ub));
        }
        clean.map_or(last, |(t, ub)| (t, Some(ub)))
    }

    /// The metrics; EF-from-areas calibrated with `cal` when given.
    pub fn report(&self, cal: Option<&Calibration>) -> EvalReport {
        let mut r = EvalReport {
            clips: self.views.len(),
            ..EvalReport::default()
        };
        if let Some(logits) = &self.view_logits {
            let labels: Vec<usize> = self.views.iter().map(|v| v.index()).collect();
            let k = logits.first().map_or(0, |r| r.len());
            let flat: Vec<f32> = logits.iter().flatten().copied().collect();
            let pred = model::argmax_rows(&flat, k);
            r.view_accuracy = mean(pred.iter().zip(&labels).map(|(p, y)| (p == y) as u8 as f64));
            r.per_view = view_scores(&labels, &pred);
            r.view_nll = Some(nll_and_ece(logits, &labels, cal.map_or(1.0, |c| c.temperature)).0);
        }
        let ef_views = self.ef_views().to_vec();
        let idx: Vec<usize> = (0..self.views.len())
            .filter(|&i| in_views(&ef_views, self.views[i]))
            .collect();
        r.ef_clips = idx.len();
        if !idx.is_empty() {
            r.ef_mean_predictor_mae = mean(
                idx.iter()
                    .map(|&i| (self.ef_true[i] - self.scaler.mean).abs()),
            );
        }
        if let Some(p) = &self.ef_pred {
            r.ef_mae = mean(idx.iter().map(|&i| (p[i] - self.ef_true[i]).abs()));
        }
        if let Some(lv) = &self.lv {
            let lv_idx: Vec<usize> = (0..self.views.len())
                .filter(|&i| in_views(&self.lv_views, self.views[i]))
                .collect();
            r.lv_dice = mean(lv_idx.iter().filter_map(|&i| lv[i].dice));
            // EF from the cavity only where EF is measured (apical views), and only on clips
            // whose every frame has its truth (the phantom; a dataset traces two frames)
            let raw = |f: &[lv::FrameLv]| {
                let v: Vec<f64> = f.iter().map(|x| x.volume).collect();
                lv::ef_of_extremes(&v)
            };
            let full: Vec<usize> = idx.iter().copied().filter(|&i| lv[i].full).collect();
            r.ef_area_raw_mae = mean(
                full.iter()
                    .filter_map(|&i| raw(&lv[i].pred).map(|e| (e - self.ef_true[i]).abs())),
            );
            r.ef_true_area_raw_mae = mean(
                full.iter()
                    .filter_map(|&i| raw(&lv[i].truth).map(|e| (e - self.ef_true[i]).abs())),
            );
        }
        if let Some(c) = cal
            && let Some(th) = c.ef_min_confidence
        {
            let shown = self.shown(c.temperature, th);
            let (n, bad) = self.shown_and_misread(&shown, &ef_views);
            r.ef_shown_misread_share = (n > 0).then(|| bad as f64 / n as f64);
            r.ef_shown_share = (!idx.is_empty())
                .then(|| idx.iter().filter(|&&i| shown[i]).count() as f64 / idx.len() as f64);
        }
        r
    }
}

/// One-sided 95 % Wilson upper bound of a proportion `k / n` (`n > 0`).
fn wilson_upper(k: usize, n: usize) -> f64 {
    let z = 1.644_853_6_f64;
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + half) / (1.0 + z2 / n)).min(1.0)
}

/// Least-squares line `y = a + b x`.
fn fit_line(pts: &[(f64, f64)]) -> Option<[f64; 2]> {
    let n = pts.len() as f64;
    if pts.len() < 3 {
        return None;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx <= 1e-12 {
        return Some([my, 0.0]);
    }
    let b = sxy / sxx;
    Some([my - b * mx, b])
}

/// `ema ← m · ema + (1 − m) · w` for every variable.
pub fn ema_update(ema: &mut TensorMap, vm: &VarMap, m: f64) -> Result<()> {
    for (k, v) in model::vars_of(vm)? {
        let w = v
            .as_tensor()
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let e = ema
            .get_mut(&k)
            .with_context(|| format!("EMA has no tensor `{k}`"))?;
        *e = ((&*e * m)? + (w * (1.0 - m))?)?;
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(String::new, |x| format!("{x:.5}"))
}

/// Writes `metrics.csv` and `curves.png` (training losses; validation metrics); `title` heads
/// the plot.
pub fn write_metrics(
    dir: &Path,
    heads: &[HeadCfg],
    rows: &[super::EpochRow],
    title: &str,
) -> Result<()> {
    let mut csv = String::from("epoch,step,train_loss,");
    for h in heads {
        let _ = write!(csv, "loss_{},", h.name);
    }
    csv.push_str("lr,grad_norm,clips_per_s,data_wait_share,val_view_accuracy,val_ef_mae,val_ef_mean_predictor_mae,val_lv_dice,val_ef_area_raw_mae\n");
    for r in rows {
        let _ = write!(csv, "{},{},{:.5},", r.epoch, r.step, r.train_loss);
        for l in &r.head_losses {
            let _ = write!(csv, "{l:.5},");
        }
        let v = &r.val;
        let _ = writeln!(
            csv,
            "{:.3e},{:.4},{:.3},{:.3},{},{},{},{},{}",
            r.lr,
            r.grad_norm,
            r.clips_per_s,
            r.data_wait_share,
            opt(v.view_accuracy),
            opt(v.ef_mae),
            opt(v.ef_mean_predictor_mae),
            opt(v.lv_dice),
            opt(v.ef_area_raw_mae)
        );
    }
    let path = dir.join("metrics.csv");
    std::fs::write(&path, csv).with_context(|| format!("cannot write {}", path.display()))?;
    let mut series = vec![Series {
        name: "train loss".into(),
        points: rows.iter().map(|r| (r.step as f64, r.train_loss)).collect(),
    }];
    let mut add = |name: &str, get: &dyn Fn(&EvalReport) -> Option<f64>| {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| get(&r.val).map(|v| (r.step as f64, v)))
            .collect();
        if !points.is_empty() {
            series.push(Series {
                name: name.into(),
                points,
            });
        }
    };
    add("val view error", &|v| v.view_accuracy.map(|a| 1.0 - a));
    add("val EF MAE / mean predictor", &|v| {
        Some(v.ef_mae? / v.ef_mean_predictor_mae?)
    });
    add("val EF(areas) MAE / mean predictor", &|v| {
        Some(v.ef_area_raw_mae? / v.ef_mean_predictor_mae?)
    });
    add("val LV 1 - Dice", &|v| v.lv_dice.map(|d| 1.0 - d));
    line_chart(
        &dir.join("curves.png"),
        title,
        "step",
        "loss / error",
        &series,
        true,
    )
}

/// One progress line per epoch.
pub fn describe_row(r: &super::EpochRow) -> String {
    let v = &r.val;
    let mut s = format!(
        "epoch {} (step {}): loss {:.4}, {:.2} clips/s ({:.0} % waiting for clips)",
        r.epoch,
        r.step,
        r.train_loss,
        r.clips_per_s,
        100.0 * r.data_wait_share
    );
    if let Some(a) = v.view_accuracy {
        let _ = write!(s, "; val view acc {a:.3}");
    }
    if let (Some(e), Some(m)) = (v.ef_mae, v.ef_mean_predictor_mae) {
        let _ = write!(
            s,
            "; EF MAE {e:.2} (mean predictor {m:.2}, ratio {:.2})",
            e / m
        );
    }
    if let Some(d) = v.lv_dice {
        let _ = write!(s, "; LV Dice {d:.3}");
    }
    if let (Some(e), Some(m)) = (v.ef_area_raw_mae, v.ef_mean_predictor_mae) {
        let _ = write!(s, "; EF(areas, raw) MAE {e:.2} ({:.2})", e / m);
    }
    s
}

/// The closing summary; `what` names the test clips (`unseen phantom clips`).
pub fn describe_final(
    cal: &Calibration,
    t: &EvalReport,
    scans: Option<&ScanReport>,
    videos: Option<&VideoReport>,
    what: &str,
) -> String {
    let mut s = format!("test on {} {what}:", t.clips);
    if let Some(a) = t.view_accuracy {
        let _ = write!(
            s,
            "\n  view accuracy {a:.3}; temperature {:.3} (validation NLL {:.3} -> {:.3}, ECE {:.3} -> {:.3})",
            cal.temperature,
            cal.view_nll_before,
            cal.view_nll_after,
            cal.view_ece_before,
            cal.view_ece_after
        );
        if !t.per_view.is_empty() {
            let _ = write!(s, "\n  per view: {}", describe_view_scores(&t.per_view));
        }
    }
    if let Some(m) = t.ef_mean_predictor_mae {
        let _ = write!(
            s,
            "\n  EF on {} clips: mean predictor MAE {m:.2}",
            t.ef_clips
        );
        if let Some(e) = t.ef_mae {
            let _ = write!(s, "; regressor {e:.2} ({:.2} x)", e / m);
        }
        if let Some(e) = t.ef_area_raw_mae {
            let _ = write!(s, "; traced LV within the clip {e:.2} ({:.2} x)", e / m);
        }
        if let Some(e) = t.ef_true_area_raw_mae {
            let _ = write!(s, "; the same rule on true masks {e:.2}");
        }
    }
    if let Some(sc) = scans
        && let Some(m) = sc.ef_mean_predictor_mae
    {
        let _ = write!(
            s,
            "\n  EF beat by beat over {} scans of {:.1} s ({:.1} beats each): mean predictor {m:.2}",
            sc.scans, sc.seconds_per_scan, sc.beats_per_scan
        );
        if let Some(e) = sc.ef_beats_raw_mae {
            let _ = write!(s, "; traced LV {e:.2} ({:.2} x)", e / m);
        }
        if let Some(e) = sc.ef_beats_mae {
            let _ = write!(s, ", calibrated {e:.2} ({:.2} x)", e / m);
        }
        if let Some(e) = sc.ef_clipwise_mae {
            let _ = write!(
                s,
                ", decided clip by clip as the cart does {e:.2} ({:.2} x)",
                e / m
            );
        }
        if let Some(e) = sc.ef_true_beats_mae {
            let _ = write!(s, "; on true masks {e:.2} ({:.2} x)", e / m);
        }
    }
    if let Some(v) = videos {
        describe_videos(&mut s, v);
    }
    if let Some(d) = t.lv_dice {
        let _ = write!(s, "\n  LV Dice {d:.3}");
    }
    if let (Some(th), Some(b), Some(sh)) = (
        cal.ef_min_confidence,
        t.ef_shown_misread_share,
        t.ef_shown_share,
    ) {
        let _ = write!(
            s,
            "\n  EF shown at view confidence >= {th}: {:.1} % of EF-view clips, {:.1} % of shown values on a misread view",
            100.0 * sh,
            100.0 * b
        );
        if let Some(ub) = cal.ef_misread_upper_bound {
            let _ = write!(
                s,
                " (threshold fitted on {} validation clips: misread share at most {:.2} %, 95 % bound)",
                cal.clips,
                100.0 * ub
            );
        }
    }
    s
}

/// The per-video EF lines of the closing summary.
fn describe_videos(s: &mut String, v: &VideoReport) {
    if let Some(m) = v.ef_mean_predictor_mae {
        let _ = write!(
            s,
            "\n  EF per video ({} videos): mean predictor MAE {m:.2}",
            v.videos
        );
        if let Some(e) = v.ef_mae {
            let _ = write!(s, "; regressor {e:.2} ({:.2} x)", e / m);
        }
    }
    if let Some(m) = v.ef_mean_predictor_traced_mae {
        let _ = write!(
            s,
            "\n  EF from the traced LV at the ED and ES frames ({} of {} traced videos have a traced cavity at ED): mean predictor {m:.2}",
            v.traced_measured, v.traced_videos
        );
        if let Some(e) = v.ef_traced_raw_mae {
            let _ = write!(s, "; traced LV {e:.2} ({:.2} x)", e / m);
        }
        if let Some(e) = v.ef_traced_mae {
            let _ = write!(s, ", calibrated on VAL {e:.2} ({:.2} x)", e / m);
        }
        if let Some(e) = v.ef_true_traced_mae {
            let _ = write!(s, "; on the true outlines {e:.2}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clips of `truth` read as `read` with calibrated confidence `conf` (temperature 1).
    fn clips(n: usize, truth: View, read: View, conf: f32) -> Vec<(View, Vec<f32>)> {
        let mut logits = vec![((1.0 - conf) / 5.0).ln(); View::ALL.len()];
        logits[read.index()] = conf.ln();
        vec![(truth, logits); n]
    }

    fn evaluated(rows: Vec<(View, Vec<f32>)>) -> Evaluated {
        Evaluated {
            views: rows.iter().map(|r| r.0).collect(),
            ef_true: vec![50.0; rows.len()],
            view_logits: Some(rows.into_iter().map(|r| r.1).collect()),
            ef_pred: None,
            ef_views: vec![],
            lv: None,
            lv_views: vec![],
            scaler: Scaler {
                mean: 50.0,
                std: 10.0,
            },
        }
    }

    #[test]
    fn wilson_bound_of_zero_misreads_needs_hundreds_of_clips() {
        // k = 0: z² / (n + z²)
        let z2 = 1.644_853_6f64.powi(2);
        assert!((wilson_upper(0, 80) - z2 / (80.0 + z2)).abs() < 1e-12);
        assert!(wilson_upper(0, 80) > 0.03);
        assert!(wilson_upper(0, 268) <= 0.01 && wilson_upper(0, 267) > 0.01);
        // above the point estimate, below one
        assert!(wilson_upper(20, 2000) > 0.01 && wilson_upper(20, 2000) < 0.02);
        assert_eq!(wilson_upper(5, 5), 1.0);
    }

    /// 1 % of the shown values misread at confidence 0.97: the point estimate would pass every
    /// threshold, its upper bound does not, so the threshold rises above the misreads.
    #[test]
    fn the_ef_threshold_rises_above_confident_misreads_until_the_bound_holds() {
        let mut rows = clips(1980, View::A4c, View::A4c, 0.999);
        rows.extend(clips(20, View::A3c, View::A2c, 0.97));
        rows.extend(clips(500, View::Plax, View::Plax, 0.99));
        let ev = evaluated(rows);
        let (th, bound) = ev.ef_threshold(1.0, 0.01);
        assert!(th > 0.97 && th <= 0.99, "threshold {th}");
        assert_eq!(bound, Some(wilson_upper(0, 1980)));
        // the old rule (misread share <= target) stopped at 0
        let (n, bad) = ev.shown_and_misread(&ev.shown(1.0, 0.0), ev.ef_views());
        assert_eq!((n, bad), (2000, 20));
        assert!(bad as f64 <= 0.01 * n as f64);
    }

    /// Too few clips for the bound to reach the target: the lowest threshold at which nothing
    /// shown is misread (here the lowest, every clip clean), not the highest candidate.
    #[test]
    fn a_small_clean_validation_keeps_a_low_threshold() {
        let mut rows = clips(40, View::A4c, View::A4c, 0.9);
        rows.extend(clips(40, View::Psax, View::Psax, 0.9));
        let (th, bound) = evaluated(rows).ef_threshold(1.0, 0.01);
        assert_eq!(th, 0.0);
        assert_eq!(bound, Some(wilson_upper(0, 40)));
        // a few clips misread at 0.455: the lowest clean threshold lies above them
        let mut rows = clips(40, View::A4c, View::A4c, 0.9);
        rows.extend(clips(3, View::A3c, View::A2c, 0.455));
        let (th, bound) = evaluated(rows).ef_threshold(1.0, 0.01);
        assert_eq!(th, 0.46);
        assert_eq!(bound, Some(wilson_upper(0, 40)));
    }

    /// A head that reads every view as A4C: no threshold that shows anything is clean, so EF
    /// is never shown on validation (a threshold above every confidence), not shown everywhere.
    /// Misreads even above the highest candidate: that candidate, with its bound.
    #[test]
    fn a_head_that_misreads_everything_shows_nothing() {
        let mut rows = clips(2, View::A4c, View::A4c, 0.305);
        for v in [View::A3c, View::Plax, View::Psax, View::Subcostal] {
            rows.extend(clips(2, v, View::A4c, 0.305));
        }
        let (th, bound) = evaluated(rows).ef_threshold(1.0, 0.01);
        assert_eq!((th, bound), (0.31, None));
        let mut rows = clips(2, View::A4c, View::A4c, 0.999_99);
        rows.extend(clips(2, View::Psax, View::A4c, 0.999_99));
        let (th, bound) = evaluated(rows).ef_threshold(1.0, 0.01);
        assert_eq!((th, bound), (0.9999, Some(wilson_upper(2, 4))));
    }

    #[test]
    fn view_scores_count_hits_and_name_the_misreads() {
        let (a4c, a2c, a3c) = (View::A4c.index(), View::A2c.index(), View::A3c.index());
        let truth = [a4c, a4c, a3c, a3c, a3c, a3c, a2c];
        let pred = [a4c, a4c, a2c, a2c, a4c, a3c, a2c];
        let s = view_scores(&truth, &pred);
        assert_eq!(s.len(), 3, "views without clips are left out: {s:?}");
        let by = |v: View| s.iter().find(|x| x.view == v.name()).unwrap();
        assert_eq!((by(View::A4c).clips, by(View::A4c).correct), (2, 2));
        let a3 = by(View::A3c);
        assert_eq!((a3.clips, a3.correct), (4, 1));
        assert_eq!(
            a3.read_as,
            vec![("a2c".to_string(), 2), ("a4c".to_string(), 1)]
        );
        let text = describe_view_scores(&s);
        assert!(text.contains("a3c 1/4 (2 as a2c, 1 as a4c)"), "{text}");
        assert!(text.contains("a4c 2/2"), "{text}");
    }

    /// A volume curve sampled every `dt` s: a beat of `period` s, volume 100 at end-diastole
    /// and `100 (1 - ef/100)` at end-systole.
    fn curve(n: usize, dt: f64, period: f64, ef: f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|k| {
                let t = k as f64 * dt;
                let phase = (t / period).fract();
                let squeeze = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * phase).cos();
                (t, 100.0 - ef * squeeze)
            })
            .collect()
    }

    #[test]
    fn traced_ef_clip_by_clip_scores_every_prefix_of_a_scan() {
        let dt = 1.0 / 7.5;
        let long = Scan {
            ef: 55.0,
            pred: curve(32, dt, 0.9, 55.0),
            truth: curve(32, dt, 0.9, 55.0),
            clip_points: 8,
        };
        let fit = Some([0.0, 1.0]);
        let r = report_scans(std::slice::from_ref(&long), fit, 50.0);
        // every clip of the scan is scored from the points up to its end: 8, 16, 24, 32
        let by_prefix: Vec<f64> = [8, 16, 24, 32]
            .iter()
            .filter_map(|&n| lv::ef_of_series(&long.pred[..n]).map(|(e, _)| (e - 55.0).abs()))
            .collect();
        assert_eq!(by_prefix.len(), 4);
        let want = by_prefix.iter().sum::<f64>() / 4.0;
        assert!((r.ef_clipwise_mae.unwrap() - want).abs() < 1e-12, "{r:?}");
        // the whole scan is the last prefix only, and the prefixes differ from it here
        assert!(
            (r.ef_beats_mae.unwrap() - by_prefix[3]).abs() < 1e-12,
            "{r:?}"
        );
        assert!((want - by_prefix[3]).abs() > 1e-3, "{by_prefix:?}");
        // a one-clip scan is scored the same either way; without a line, not at all
        let short = Scan {
            clip_points: 32,
            ..long.clone()
        };
        let r1 = report_scans(std::slice::from_ref(&short), fit, 50.0);
        assert_eq!(r1.ef_clipwise_mae, r1.ef_beats_mae);
        assert!(report_scans(&[long], None, 50.0).ef_clipwise_mae.is_none());
    }
}
