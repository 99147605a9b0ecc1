//! Choosing each layer's precision by measurement, and the tensors of a new weights file.
//!
//! For every linear layer of the encoder, calibration clips run through the f32 encoder; at
//! each layer the int8 candidate (weights rounded exactly as the bundle stores them) and the f32
//! layer run on the same input. A layer becomes int8 only if its relative output error is
//! within the budget AND int8 is faster than f32 on this CPU by the required margin; otherwise
//! it stays full precision (f16 storage, f32 compute, by default). Every choice carries its
//! numbers and a reason, which land in the manifest.
//!
//! Probe layers run in the f32 probe code from the stored weights, so for them int8 is a
//! storage choice only: a probe weight is stored q8_0 when its weight error is within budget.
//!
//! This is build-time work, so it lives here and not in the model crate the cart links: the
//! cart only reads what is decided here. What both sides must agree on stays in
//! `echojepa::quantized` (tensor names and prefixes, the patch-weight layout, how a precision
//! rounds and stores a weight), so the writer here and the reader there cannot drift apart.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;
use candle_core::quantized::QTensor;
use echojepa::bundle::{CalibrationSummary, LayerPrecision, Precision, TailSearch};
use echojepa::config::EncoderConfig;
use echojepa::quantized::QuantError;
use echojepa::quantized::encoder::{
    QLinear, QuantizedEncoder, Tap, TensorSource, flatten_patch, round_to,
};
use echojepa::quantized::gguf::{QK8_0, store};
use echojepa::quantized::model::ENCODER_PREFIX;
use echojepa_kernels::Epilogue;
use serde::{Deserialize, Serialize};

/// A named tensor of a weights file.
pub type NamedTensor = (String, QTensor);

/// Knobs of the precision choice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationOptions {
    /// Largest relative L2 error of a layer's int8 output against f32.
    pub error_budget: f64,
    /// int8 must take at most this fraction of the f32 time (1.0 = merely not slower).
    pub max_time_ratio: f64,
    /// Precision of layers that stay full precision (`f16` halves their size, computed in f32).
    pub fallback: Precision,
    /// Timed repetitions per layer and precision (the median is used).
    pub reps: usize,
    /// Largest relative weight error of a probe layer stored as q8_0.
    pub probe_weight_budget: f64,
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        Self {
            error_budget: 0.05,
            max_time_ratio: 0.95,
            fallback: Precision::F16,
            reps: 5,
            probe_weight_budget: 0.02,
        }
    }
}

#[derive(Default)]
struct Acc {
    cand: Option<QLinear>,
    skip: Option<String>,
    err2: f64,
    ref2: f64,
    int8_ms: Option<f64>,
    full_ms: Option<f64>,
    shape: [usize; 2],
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time_ms(reps: usize, mut f: impl FnMut() -> Result<(), QuantError>) -> Result<f64, QuantError> {
    f()?; // warm-up
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

/// A clip `[C, T, H, W]` as a flat slice with its `(T, H, W)`.
pub type Clip = (Vec<f32>, (usize, usize, usize));

/// Measures every encoder linear layer on `clips` and chooses its precision (see the module
/// docs). `tensors` is the f32 state dict (checkpoint names, patch weight 5-D or 2-D);
/// `progress(done, total)` is called after each clip.
pub fn choose_encoder_precisions(
    cfg: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
    origin: &str,
    clips: &[Clip],
    opts: &CalibrationOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LayerPrecision>, QuantError> {
    if clips.is_empty() {
        return Err(QuantError::Input("no calibration clips".into()));
    }
    let tensors = flatten_patch(cfg, tensors);
    let none = HashMap::new();
    let src = TensorSource {
        tensors: &tensors,
        origin,
        precision: &none,
    };
    let f32_enc = QuantizedEncoder::load(cfg, &src)?;
    let mut acc: HashMap<String, Acc> = HashMap::new();
    for (ci, (clip, thw)) in clips.iter().enumerate() {
        let mut failure: Option<QuantError> = None;
        let mut tap = |t: Tap<'_>| {
            let Tap::LinearInput { layer, x, rows } = t else {
                return;
            };
            if failure.is_some() {
                return;
            }
            if let Err(e) = measure(layer, x, rows, &tensors, &mut acc, opts, ci == 0) {
                failure = Some(e);
            }
        };
        f32_enc.forward_clip_tapped(clip, *thw, &mut tap)?;
        if let Some(e) = failure {
            return Err(e);
        }
        progress(ci + 1, clips.len());
    }
    let mut out = Vec::new();
    for (name, shape) in QuantizedEncoder::linear_shapes(cfg) {
        let a = acc.remove(&name).unwrap_or_default();
        let tensor = format!("{ENCODER_PREFIX}.{name}.weight");
        let rel = (a.ref2 > 0.0).then(|| (a.err2 / a.ref2).sqrt());
        let fb = opts.fallback;
        let (precision, reason) = if let Some(why) = a.skip {
            (fb, why)
        } else {
            let (r, i8ms, fms) = (
                rel.unwrap_or(f64::INFINITY),
                a.int8_ms.unwrap_or(f64::INFINITY),
                a.full_ms.unwrap_or(0.0),
            );
            if r > opts.error_budget {
                (
                    fb,
                    format!(
                        "int8 rel. error {r:.4} exceeds the budget {}; kept {fb}",
                        opts.error_budget
                    ),
                )
            } else if i8ms > fms * opts.max_time_ratio {
                (
                    fb,
                    format!(
                        "int8 {i8ms:.3} ms is not faster than f32 {fms:.3} ms (needs <= {:.2}x) on this CPU; kept {fb}",
                        opts.max_time_ratio
                    ),
                )
            } else {
                (
                    Precision::Q8_0,
                    format!(
                        "int8 {i8ms:.3} ms vs f32 {fms:.3} ms ({:.2}x faster), rel. error {r:.4} within {}",
                        fms / i8ms,
                        opts.error_budget
                    ),
                )
            }
        };
        out.push(LayerPrecision {
            tensor,
            shape: shape.to_vec(),
            precision,
            reason,
            rel_error: rel,
            int8_ms: a.int8_ms,
            full_ms: a.full_ms,
        });
        let _ = a.shape;
    }
    Ok(out)
}

fn measure(
    layer: &QLinear,
    x: &[f32],
    rows: usize,
    tensors: &HashMap<String, Tensor>,
    acc: &mut HashMap<String, Acc>,
    opts: &CalibrationOptions,
    first: bool,
) -> Result<(), QuantError> {
    let name = layer.name().to_string();
    let (n, k) = (layer.out_features(), layer.in_features());
    let a = acc.entry(name.clone()).or_default();
    a.shape = [n, k];
    if a.skip.is_some() {
        return Ok(());
    }
    if a.cand.is_none() {
        if !k.is_multiple_of(QK8_0) {
            a.skip = Some(format!(
                "input width {k} is not a multiple of {QK8_0} (q8_0 blocks); kept {}",
                opts.fallback
            ));
            return Ok(());
        }
        let get = |t: &str| -> Result<Vec<f32>, QuantError> {
            let v = tensors.get(t).ok_or_else(|| QuantError::MissingTensor {
                file: "checkpoint".into(),
                tensor: t.into(),
            })?;
            Ok(v.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let w = get(&format!("{name}.weight"))?;
        let b = get(&format!("{name}.bias"))?;
        let wq = round_to(&w, [n, k], Precision::Q8_0, &name)?;
        a.cand = Some(QLinear::from_values(&name, &wq, &b, n, k, Precision::Q8_0)?);
    }
    let cand = a.cand.as_ref().expect("candidate built above");
    let mut yf = vec![0f32; rows * n];
    let mut yq = vec![0f32; rows * n];
    layer.forward(x, rows, &mut yf, Epilogue::None)?;
    cand.forward(x, rows, &mut yq, Epilogue::None)?;
    for (f, q) in yf.iter().zip(&yq) {
        let (f, q) = (*f as f64, *q as f64);
        a.err2 += (f - q) * (f - q);
        a.ref2 += f * f;
    }
    if first {
        a.full_ms = Some(time_ms(opts.reps, || {
            layer.forward(x, rows, &mut yf, Epilogue::None)
        })?);
        a.int8_ms = Some(time_ms(opts.reps, || {
            cand.forward(x, rows, &mut yq, Epilogue::None)
        })?);
    }
    Ok(())
}

/// Per-token cosine similarity of two `N × D` token sets: (min, mean).
pub fn token_cosine(a: &[f32], b: &[f32], d: usize) -> (f64, f64) {
    let c = token_cosines(a, b, d);
    let min = c.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = if c.is_empty() {
        1.0
    } else {
        c.iter().sum::<f64>() / c.len() as f64
    };
    (min, mean)
}

/// Cosine similarity of every `d`-wide token of `a` with the same token of `b`, in token order.
/// Two zero tokens agree (1); a zero token against a non-zero one does not (0).
pub fn token_cosines(a: &[f32], b: &[f32], d: usize) -> Vec<f64> {
    a.chunks_exact(d)
        .zip(b.chunks_exact(d))
        .map(|(x, y)| {
            let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
            for (&p, &q) in x.iter().zip(y) {
                xy += p as f64 * q as f64;
                xx += p as f64 * p as f64;
                yy += q as f64 * q as f64;
            }
            if xx == 0.0 || yy == 0.0 {
                if xx == yy { 1.0 } else { 0.0 }
            } else {
                xy / (xx.sqrt() * yy.sqrt())
            }
        })
        .collect()
}

/// Relative L2 error `|a - b| / |b|`.
pub fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut e, mut r) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        e += (x as f64 - y as f64).powi(2);
        r += (y as f64).powi(2);
    }
    if r == 0.0 { e.sqrt() } else { (e / r).sqrt() }
}

/// A stored encoder weight's name as [`TensorSource`] takes it (no prefix, no `.weight`).
fn layer_key(tensor: &str) -> String {
    let n = tensor.strip_suffix(".weight").unwrap_or(tensor);
    n.strip_prefix(&format!("{ENCODER_PREFIX}."))
        .unwrap_or(n)
        .to_string()
}

/// The encoder layers' precisions by the names [`TensorSource`] takes.
fn precision_map(layers: &[LayerPrecision]) -> HashMap<String, Precision> {
    layers
        .iter()
        .map(|l| (layer_key(&l.tensor), l.precision))
        .collect()
}

/// Stored bytes of the encoder's tensors at the chosen precisions: what
/// [`encoder_tensors`] would write, counted without quantizing anything.
pub fn encoder_bytes(
    cfg: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
    layers: &[LayerPrecision],
) -> Result<u64, QuantError> {
    Ok(encoder_plan(cfg, tensors, layers)?
        .iter()
        .map(|e| weight_bytes(e.tensor.dims(), e.precision))
        .sum())
}

/// One encoder tensor as the bundle stores it.
struct PlannedTensor {
    /// The checkpoint name (`blocks.0.attn.qkv.weight`).
    name: String,
    /// The bundle name (`encoder.<name>`).
    stored: String,
    /// The tensor, the patch weight 2-D.
    tensor: Tensor,
    /// The chosen precision; f32 for every tensor no layer choice names.
    precision: Precision,
}

/// Every encoder tensor with its stored name and precision, in [`QuantizedEncoder::tensor_names`]
/// order: the one plan that [`encoder_bytes`] counts and [`encoder_tensors`] writes.
fn encoder_plan(
    cfg: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
    layers: &[LayerPrecision],
) -> Result<Vec<PlannedTensor>, QuantError> {
    let tensors = flatten_patch(cfg, tensors);
    let chosen: HashMap<&str, Precision> = layers
        .iter()
        .map(|l| (l.tensor.as_str(), l.precision))
        .collect();
    QuantizedEncoder::tensor_names(cfg)
        .into_iter()
        .map(|name| {
            let tensor = tensors
                .get(&name)
                .ok_or_else(|| QuantError::MissingTensor {
                    file: "checkpoint".into(),
                    tensor: name.clone(),
                })?
                .clone();
            let stored = format!("{ENCODER_PREFIX}.{name}");
            let precision = chosen
                .get(stored.as_str())
                .copied()
                .unwrap_or(Precision::F32);
            Ok(PlannedTensor {
                name,
                stored,
                tensor,
                precision,
            })
        })
        .collect()
}

/// Bytes of a tensor of `shape` stored at `p` (q8_0: 32 int8 values and one f16 scale a block).
pub fn weight_bytes(shape: &[usize], p: Precision) -> u64 {
    let n: u64 = shape.iter().map(|&d| d as u64).product();
    match p {
        Precision::Q8_0 => n / QK8_0 as u64 * (QK8_0 as u64 + 2),
        Precision::F16 => n * 2,
        Precision::F32 => n * 4,
    }
}

/// Knobs of the end-to-end search for the worst tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TailOptions {
    /// The smallest per-token cosine (against f32) to reach on the clips.
    pub target: f64,
    /// Weight bytes the widened layers may add in all.
    pub byte_budget: u64,
    /// Clips with the worst tokens added to the searched set each round.
    pub clips_per_round: usize,
    /// Precision of a widened layer.
    pub fallback: Precision,
}

/// Keeps int8 layers full precision, one at a time, where a few tokens amplify their error.
///
/// A per-layer error budget cannot see this: every layer may add under 1 % to every token's
/// error, and still a handful of tokens come out of the encoder with a cosine of 0.98 because
/// later blocks multiply what earlier ones added. So this runs the whole encoder with the
/// current choice on `clips` against f32, takes the clips holding the worst tokens, and tries
/// widening each remaining int8 layer on them; the layer that raises their worst token most is
/// kept full precision, and the whole set is measured again. It stops when the smallest cosine
/// on all clips reaches the target, when no layer that fits the byte budget is left, or when no
/// single layer raises the worst token. The f32 outputs of all clips are held in memory.
///
/// `layers` is updated in place (precision and reason of each widened layer); `progress` gets a
/// line per widened layer. The result's `source` is left for the caller to describe the clips.
pub fn search_tail(
    cfg: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
    origin: &str,
    layers: &mut [LayerPrecision],
    clips: &[Clip],
    opts: &TailOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<TailSearch, QuantError> {
    if clips.is_empty() {
        return Err(QuantError::Input("no clips for the tail search".into()));
    }
    let tensors = flatten_patch(cfg, tensors);
    let load = |precision: &HashMap<String, Precision>| {
        QuantizedEncoder::load(
            cfg,
            &TensorSource {
                tensors: &tensors,
                origin,
                precision,
            },
        )
    };
    let reference = load(&HashMap::new())?;
    let refs = clips
        .iter()
        .map(|(c, thw)| reference.forward_clip(c, *thw))
        .collect::<Result<Vec<_>, _>>()?;
    drop(reference);
    let d = cfg.embed_dim;
    // the smallest token cosine of each listed clip
    let worst = |enc: &QuantizedEncoder, which: &[usize]| -> Result<Vec<f64>, QuantError> {
        which
            .iter()
            .map(|&i| {
                let (c, thw) = &clips[i];
                Ok(token_cosine(&enc.forward_clip(c, *thw)?, &refs[i], d).0)
            })
            .collect()
    };
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let all: Vec<usize> = (0..clips.len()).collect();
    let mut searched: Vec<usize> = Vec::new();
    let mut widened = Vec::new();
    let mut spent = 0u64;
    let mut before = None;
    let (after, stopped) = loop {
        let chosen = precision_map(layers);
        let per_clip = worst(&load(&chosen)?, &all)?;
        let now = min(&per_clip);
        before.get_or_insert(now);
        if now >= opts.target {
            break (
                now,
                format!("the smallest token cosine {now:.5} reached the target"),
            );
        }
        // the clips holding the worst tokens join the searched set
        let mut order = all.clone();
        order.sort_by(|&a, &b| per_clip[a].total_cmp(&per_clip[b]));
        let new: Vec<usize> = order
            .into_iter()
            .filter(|i| !searched.contains(i))
            .take(opts.clips_per_round.max(1))
            .collect();
        searched.extend(new);
        let base = min(&searched.iter().map(|&i| per_clip[i]).collect::<Vec<_>>());
        let mut best: Option<(usize, f64, u64)> = None;
        for (li, l) in layers.iter().enumerate() {
            if l.precision != Precision::Q8_0 {
                continue;
            }
            let extra = weight_bytes(&l.shape, opts.fallback)
                .saturating_sub(weight_bytes(&l.shape, Precision::Q8_0));
            if spent + extra > opts.byte_budget {
                continue;
            }
            let mut trial = chosen.clone();
            trial.insert(layer_key(&l.tensor), opts.fallback);
            let m = min(&worst(&load(&trial)?, &searched)?);
            if best.is_none_or(|(_, b, _)| m > b) {
                best = Some((li, m, extra));
            }
        }
        let Some((li, m, extra)) = best else {
            break (
                now,
                format!(
                    "no int8 layer fits the remaining {} bytes of the budget",
                    opts.byte_budget - spent
                ),
            );
        };
        if m <= base {
            break (
                now,
                format!("no single layer raises the worst searched token above {base:.5}"),
            );
        }
        let l = &mut layers[li];
        l.reason = format!(
            "kept {} by the worst-token search: on {} searched clips the worst token's cosine rose from {base:.5} to {m:.5} with this layer full precision (per layer: {})",
            opts.fallback,
            searched.len(),
            l.reason
        );
        l.precision = opts.fallback;
        spent += extra;
        widened.push(l.tensor.clone());
        progress(&format!(
            "kept {} {}: worst searched token {base:.5} -> {m:.5}",
            l.tensor, opts.fallback
        ));
    };
    Ok(TailSearch {
        clips: clips.len(),
        source: String::new(),
        target: opts.target,
        token_cosine_min_before: before.unwrap_or(after),
        token_cosine_min_after: after,
        byte_budget: opts.byte_budget,
        bytes_spent: spent,
        widened,
        stopped,
    })
}

/// Builds the encoder with the chosen precisions and compares it with the all-f32 kernel
/// encoder on the clips (token cosine, median times).
pub fn summarize(
    cfg: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
    origin: &str,
    layers: &[LayerPrecision],
    clips: &[Clip],
    source: &str,
    reps: usize,
) -> Result<CalibrationSummary, QuantError> {
    let tensors = flatten_patch(cfg, tensors);
    let chosen = precision_map(layers);
    let none = HashMap::new();
    let q = QuantizedEncoder::load(
        cfg,
        &TensorSource {
            tensors: &tensors,
            origin,
            precision: &chosen,
        },
    )?;
    let f = QuantizedEncoder::load(
        cfg,
        &TensorSource {
            tensors: &tensors,
            origin,
            precision: &none,
        },
    )?;
    let (mut cmin, mut csum) = (f64::INFINITY, 0.0);
    for (clip, thw) in clips {
        let a = q.forward_clip(clip, *thw)?;
        let b = f.forward_clip(clip, *thw)?;
        let (mn, mean) = token_cosine(&a, &b, cfg.embed_dim);
        cmin = cmin.min(mn);
        csum += mean;
    }
    let (clip, thw) = &clips[0];
    let chosen_ms = time_ms(reps, || q.forward_clip(clip, *thw).map(|_| ()))?;
    let f32_ms = time_ms(reps, || f.forward_clip(clip, *thw).map(|_| ()))?;
    Ok(CalibrationSummary {
        clips: clips.len(),
        source: source.to_string(),
        token_cosine_min: cmin,
        token_cosine_mean: csum / clips.len() as f64,
        chosen_ms,
        f32_ms,
    })
}

/// The GGUF tensors of the encoder, named `encoder.<checkpoint name>`: linear weights at their
/// chosen precision (patch weight 2-D), everything else f32.
pub fn encoder_tensors(
    cfg: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
    layers: &[LayerPrecision],
) -> Result<Vec<NamedTensor>, QuantError> {
    encoder_plan(cfg, tensors, layers)?
        .into_iter()
        .map(|e| Ok((e.stored, store_tensor(&e.name, &e.tensor, e.precision)?)))
        .collect()
}

/// The LV cavity decoder's tensors under `prefix`: the weight as q8_0 (computed in f32 after
/// dequantisation; `quantize report` measures the traced cavity both ways), the bias f32.
pub fn lv_tensors(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
) -> Result<(Vec<NamedTensor>, Vec<LayerPrecision>), QuantError> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut out = Vec::new();
    let mut layers = Vec::new();
    for name in names {
        let t = &tensors[name];
        let stored = format!("{prefix}.{name}");
        let p = match t.dims() {
            [n, k] if name == "weight" && k.is_multiple_of(QK8_0) => {
                let w = t
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let e = rel_error(&round_to(&w, [*n, *k], Precision::Q8_0, name)?, &w);
                layers.push(LayerPrecision {
                    tensor: stored.clone(),
                    shape: vec![*n, *k],
                    precision: Precision::Q8_0,
                    reason: format!(
                        "LV decoder: q8_0 storage (weight rel. error {e:.4}), computed in f32"
                    ),
                    rel_error: Some(e),
                    int8_ms: None,
                    full_ms: None,
                });
                Precision::Q8_0
            }
            _ => Precision::F32,
        };
        out.push((stored, store_tensor(name, t, p)?));
    }
    Ok((out, layers))
}

fn store_tensor(name: &str, t: &Tensor, p: Precision) -> Result<QTensor, QuantError> {
    let v = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    store(&v, t.dims(), p).map_err(|reason| {
        QuantError::Unsupported(format!("cannot store `{name}` as {p}: {reason}"))
    })
}

/// Precision choice and GGUF tensors for one probe (tensors named as the f32 probe expects,
/// stored under `prefix.`). See the module docs: q8_0 here is storage only.
pub fn probe_tensors(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    opts: &CalibrationOptions,
) -> Result<(Vec<NamedTensor>, Vec<LayerPrecision>), QuantError> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut out = Vec::new();
    let mut layers = Vec::new();
    for name in names {
        let t = &tensors[name];
        let is_linear = t.rank() == 2
            && name.ends_with(".weight")
            && !name.contains("_embed")
            && !name.starts_with("linear.")
            && !name.starts_with("regressor.");
        let p = if is_linear {
            let (n, k) = t.dims2()?;
            let w = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let stored = format!("{prefix}.{name}");
            let (p, reason, err) = if !k.is_multiple_of(QK8_0) {
                (
                    opts.fallback,
                    format!(
                        "input width {k} is not a multiple of {QK8_0}; kept {}",
                        opts.fallback
                    ),
                    None,
                )
            } else {
                let wq = round_to(&w, [n, k], Precision::Q8_0, name)?;
                let e = rel_error(&wq, &w);
                if e <= opts.probe_weight_budget {
                    (
                        Precision::Q8_0,
                        format!(
                            "probe layer: q8_0 storage (weight rel. error {e:.4} within {}), computed in f32",
                            opts.probe_weight_budget
                        ),
                        Some(e),
                    )
                } else {
                    (
                        opts.fallback,
                        format!(
                            "probe layer: q8_0 weight rel. error {e:.4} exceeds {}; kept {}",
                            opts.probe_weight_budget, opts.fallback
                        ),
                        Some(e),
                    )
                }
            };
            layers.push(LayerPrecision {
                tensor: stored,
                shape: vec![n, k],
                precision: p,
                reason,
                rel_error: err,
                int8_ms: None,
                full_ms: None,
            });
            p
        } else {
            Precision::F32
        };
        out.push((format!("{prefix}.{name}"), store_tensor(name, t, p)?));
    }
    Ok((out, layers))
}

#[cfg(test)]
mod tests;
