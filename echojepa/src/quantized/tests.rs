//! The int8 model against the f32 one, q8_0 storage, and bundle loading. Calibration and the
//! weights-file writer are the quantize tool's and are tested there; the test bundles here are
//! written by [`stored`], laid out as the model reads them.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use candle_core::quantized::QTensor;

use super::encoder::flatten_patch;
use super::gguf::{QK8_0, quantize_q8_0_rows, store, write_gguf};
use super::model::{ENCODER_PREFIX, probe_prefix};
use super::*;
use crate::bundle::*;
use crate::config::{EncoderConfig, ProbeConfig, ProbeKind};
use crate::encoder::VisionTransformer;
use crate::probe::AttentiveProbe;

/// Largest |f32 kernels − f32 candle| per token value (different summation orders only).
const F32_TOL: f32 = 2e-4;
/// Smallest per-token cosine of the all-int8 encoder vs f32 on random weights.
const INT8_COSINE: f64 = 0.995;

fn tiny() -> EncoderConfig {
    EncoderConfig::custom(64, 2, 4, 4.0)
}

/// Deterministic values in [-1, 1).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1f32..1f32)).collect()
}

/// Deterministic weights for every tensor `build` asks for: norms near 1, small biases,
/// matrices uniform with std 1/sqrt(fan_in).
fn det_tensors<T>(
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
    seed: u64,
) -> HashMap<String, Tensor> {
    let expected = crate::checkpoint::expected_tensors(build).unwrap();
    expected
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let u = uniform(n, seed * 1000 + i as u64);
            let v: Vec<f32> =
                if shape.len() == 1 && name.contains("norm") && name.ends_with("weight") {
                    u.iter().map(|x| 1.0 + 0.1 * x).collect()
                } else if shape.len() == 1 {
                    u.iter().map(|x| 0.05 * x).collect()
                } else {
                    let fan_in: usize = shape[1..].iter().product();
                    let sc = 3f32.sqrt() / (fan_in as f32).sqrt();
                    u.iter().map(|x| sc * x).collect()
                };
            (name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
        })
        .collect()
}

fn random_encoder(cfg: &EncoderConfig, seed: u64) -> HashMap<String, Tensor> {
    det_tensors(|vb| VisionTransformer::new(cfg, vb), seed)
}

fn probe_cfg(kind: ProbeKind, n: usize) -> ProbeConfig {
    ProbeConfig {
        kind,
        embed_dim: 64,
        num_heads: 4,
        depth: 2,
        num_outputs: n,
        mlp_ratio: 4.0,
        slots: None,
    }
}

fn random_probe(cfg: &ProbeConfig, seed: u64) -> HashMap<String, Tensor> {
    det_tensors(|vb| AttentiveProbe::new(cfg, vb), seed)
}

/// A clip `[C, T, H, W]` as a flat slice with its `(T, H, W)`.
type Clip = (Vec<f32>, (usize, usize, usize));

fn clip(seed: u64) -> (Tensor, Clip) {
    let flat: Vec<f32> = uniform(3 * 4 * 48 * 48, seed)
        .iter()
        .map(|x| 2.0 * x)
        .collect();
    let v = Tensor::from_slice(&flat, (1, 3, 4, 48, 48), &Device::Cpu).unwrap();
    (v, (flat, (4, 48, 48)))
}

fn f32_model(cfg: &EncoderConfig, t: &HashMap<String, Tensor>) -> VisionTransformer {
    VisionTransformer::new(
        cfg,
        VarBuilder::from_tensors(t.clone(), DType::F32, &Device::Cpu),
    )
    .unwrap()
}

fn kernels_encoder(
    cfg: &EncoderConfig,
    t: &HashMap<String, Tensor>,
    p: Precision,
) -> QuantizedEncoder {
    let flat = flatten_patch(cfg, t);
    let prec: HashMap<String, Precision> = QuantizedEncoder::linear_shapes(cfg)
        .into_iter()
        .map(|(n, _)| (n, p))
        .collect();
    QuantizedEncoder::load(
        cfg,
        &TensorSource {
            tensors: &flat,
            origin: "test",
            precision: &prec,
        },
    )
    .unwrap()
}

#[test]
fn f32_kernel_encoder_matches_the_candle_encoder() {
    let cfg = tiny();
    let t = random_encoder(&cfg, 1);
    let (video, _) = clip(2);
    let want = f32_model(&cfg, &t).forward(&video).unwrap();
    let got = kernels_encoder(&cfg, &t, Precision::F32)
        .forward(&video)
        .unwrap();
    assert_eq!(got.dims(), want.dims());
    let diff = (got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < F32_TOL, "max |diff| {diff}");
}

#[test]
fn int8_encoder_follows_f32() {
    let cfg = tiny();
    let t = random_encoder(&cfg, 3);
    let (video, _) = clip(4);
    let want = f32_model(&cfg, &t).forward(&video).unwrap();
    let got = kernels_encoder(&cfg, &t, Precision::Q8_0)
        .forward(&video)
        .unwrap();
    let min = min_token_cosine(
        &got.flatten_all().unwrap().to_vec1().unwrap(),
        &want.flatten_all().unwrap().to_vec1().unwrap(),
        64,
    );
    assert!(min >= INT8_COSINE, "min cosine {min}");
    // And int8 is not silently f32: outputs differ.
    let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() > 0.0);
}

/// The encoder keeps its activation buffers between clips: clips of another size in between,
/// or the same encoder used from two threads at once, change no bit of a clip's tokens.
#[test]
fn reused_buffers_change_no_token() {
    let cfg = tiny();
    let t = random_encoder(&cfg, 5);
    let enc = kernels_encoder(&cfg, &t, Precision::Q8_0);
    let (_, (a, thw_a)) = clip(6);
    let b: Vec<f32> = uniform(3 * 8 * 64 * 32, 7);
    let thw_b = (8, 64, 32);
    let first = enc.forward_clip(&a, thw_a).unwrap();
    let other = enc.forward_clip(&b, thw_b).unwrap();
    assert_eq!(other.len(), 4 * 4 * 2 * 64);
    let again = enc.forward_clip(&a, thw_a).unwrap();
    assert!(
        first
            .iter()
            .zip(&again)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    );
    let fresh_b = kernels_encoder(&cfg, &t, Precision::Q8_0)
        .forward_clip(&b, thw_b)
        .unwrap();
    assert!(
        other
            .iter()
            .zip(&fresh_b)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    );
    std::thread::scope(|s| {
        let ha = s.spawn(|| enc.forward_clip(&a, thw_a).unwrap());
        let hb = s.spawn(|| enc.forward_clip(&b, thw_b).unwrap());
        assert_eq!(ha.join().unwrap(), first);
        assert_eq!(hb.join().unwrap(), other);
    });
}

#[test]
fn q8_0_rows_share_one_scale_and_round_trip() {
    let w: Vec<f32> = (0..2 * 64)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
        .collect();
    let q = quantize_q8_0_rows(&w, 2, 64).unwrap();
    let bytes = q.data().unwrap();
    assert_eq!(bytes.len(), 4 * 34);
    // All blocks of a row carry the same scale.
    assert_eq!(bytes[0..2], bytes[34..36]);
    assert_eq!(bytes[68..70], bytes[102..104]);
    let back = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in w.iter().zip(&back) {
        assert!((a - b).abs() <= amax / 127.0 * 0.51, "{a} vs {b}");
    }
    assert!(quantize_q8_0_rows(&w, 4, 32).is_ok());
    assert!(quantize_q8_0_rows(&w[..100], 2, 50).is_err());
}

/// Smallest per-token cosine similarity of two `N × d` token sets.
fn min_token_cosine(a: &[f32], b: &[f32], d: usize) -> f64 {
    a.chunks_exact(d)
        .zip(b.chunks_exact(d))
        .map(|(x, y)| {
            let dot = |u: &[f32], v: &[f32]| -> f64 {
                u.iter().zip(v).map(|(p, q)| *p as f64 * *q as f64).sum()
            };
            dot(x, y) / (dot(x, x).sqrt() * dot(y, y).sqrt())
        })
        .fold(f64::INFINITY, f64::min)
}

/// `names` of `tensors` stored under `prefix.` at the precision `precision` picks (f32 when it
/// picks none), with a manifest entry for each weight not stored f32. The quantize tool's writer
/// cannot be used here (it depends on this crate), and the model must load any file laid out
/// this way whatever chose the precisions.
fn stored(
    prefix: &str,
    tensors: &HashMap<String, Tensor>,
    names: &[String],
    precision: impl Fn(&str, &Tensor) -> Option<Precision>,
) -> (Vec<(String, QTensor)>, Vec<LayerPrecision>) {
    let mut out = Vec::new();
    let mut layers = Vec::new();
    for name in names {
        let t = &tensors[name];
        let name_in_file = format!("{prefix}.{name}");
        let p = precision(name, t).unwrap_or(Precision::F32);
        if p != Precision::F32 {
            layers.push(LayerPrecision {
                tensor: name_in_file.clone(),
                shape: t.dims().to_vec(),
                precision: p,
                reason: "test".into(),
                rel_error: None,
                int8_ms: None,
                full_ms: None,
            });
        }
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        out.push((name_in_file, store(&v, t.dims(), p).unwrap()));
    }
    (out, layers)
}

/// A signed bundle of the tiny encoder with a view classifier and an EF regressor.
fn tiny_bundle(
    dir: &std::path::Path,
    key: &SecretKey,
) -> (HashMap<String, Tensor>, Vec<HashMap<String, Tensor>>) {
    let cfg = tiny();
    let enc = random_encoder(&cfg, 21);
    let view = random_probe(&probe_cfg(ProbeKind::Classifier, 3), 22);
    let ef = random_probe(&probe_cfg(ProbeKind::Regressor, 1), 23);
    // Every encoder linear layer int8 with the patch weight 2-D, listed in the encoder's order
    // (patch weight first: the tampering test edits the first entry).
    let linears: Vec<String> = QuantizedEncoder::linear_shapes(&cfg)
        .into_iter()
        .map(|(n, _)| format!("{n}.weight"))
        .collect();
    let (mut tensors, mut layers) = stored(
        ENCODER_PREFIX,
        &flatten_patch(&cfg, &enc),
        &QuantizedEncoder::tensor_names(&cfg),
        |n, _| linears.iter().any(|l| l == n).then_some(Precision::Q8_0),
    );
    // Probe attention and MLP weights stored q8_0 (computed in f32 after dequantisation), as
    // the quantize tool stores them when their weight error is small.
    for (name, p) in [("view", &view), ("ef", &ef)] {
        let mut names: Vec<String> = p.keys().cloned().collect();
        names.sort();
        let (t, l) = stored(&probe_prefix(name), p, &names, |n, t| {
            let q8 = t.rank() == 2
                && t.dims()[1].is_multiple_of(QK8_0)
                && n.ends_with(".weight")
                && !n.contains("_embed")
                && !n.starts_with("linear.")
                && !n.starts_with("regressor.");
            q8.then_some(Precision::Q8_0)
        });
        tensors.extend(t);
        layers.extend(l);
    }
    let b = BundleBuilder::create(dir).unwrap();
    write_gguf(&b.file_path("model.gguf").unwrap(), &[], &tensors).unwrap();
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        model_id: "tiny".into(),
        model_version: "1".into(),
        security_version: 0,
        not_after_unix: None,
        description: String::new(),
        synthetic_training_data: true,
        notice: "synthetic".into(),
        provenance: None,
        created_unix: 0,
        tool: ToolInfo {
            name: "test".into(),
            version: "0".into(),
        },
        encoder: cfg,
        input: InputSpec::reference(4, 2, 48),
        heads: vec![
            HeadSpec {
                name: "view".into(),
                task: None,
                probe: probe_cfg(ProbeKind::Classifier, 3),
                tensor_prefix: probe_prefix("view"),
                classes: vec!["a4c".into(), "a2c".into(), "plax".into()],
                targets: vec![],
                valid_views: vec![],
                temperature: None,
                min_confidence: None,
            },
            HeadSpec {
                name: "ef".into(),
                task: None,
                probe: probe_cfg(ProbeKind::Regressor, 1),
                tensor_prefix: probe_prefix("ef"),
                classes: vec![],
                targets: vec![TargetSpec {
                    name: "LVEF".into(),
                    unit: "%".into(),
                    scaler: Scaler {
                        mean: 55.0,
                        std: 10.0,
                    },
                }],
                valid_views: vec!["a4c".into(), "a2c".into()],
                temperature: None,
                min_confidence: None,
            },
        ],
        lv_segmentation: None,
        notes: Default::default(),
        weights: "model.gguf".into(),
        source: SourceInfo {
            checkpoint: "random".into(),
            checkpoint_sha256: "0".repeat(64),
            other_files: vec![],
        },
        quantization: QuantizationInfo {
            container: "gguf".into(),
            linear_weights: Precision::Q8_0,
            other_tensors: Precision::F32,
            measured_on: String::new(),
            error_budget: None,
            calibration: None,
            tail_search: None,
            layers,
        },
        files: Default::default(),
    };
    b.finish(manifest, key).unwrap();
    (enc, vec![view, ef])
}

#[test]
fn edge_model_loads_a_verified_bundle_and_predicts_like_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let key = SecretKey::from_seed("maker", &[4; 32]);
    let (enc, probes) = tiny_bundle(&dir, &key);
    let m = EdgeModel::open(&dir, &[key.public()]).unwrap();
    assert_eq!(m.manifest().model_id, "tiny");
    let (video, _) = clip(30);
    let out = m.predict(&video).unwrap();
    assert_eq!(out.len(), 1);
    let HeadOutput::Class {
        probabilities,
        label,
        ..
    } = &out[0][0]
    else {
        panic!("{:?}", out[0][0])
    };
    assert_eq!(probabilities.len(), 3);
    assert!(["a4c", "a2c", "plax"].contains(&label.as_str()));
    let HeadOutput::Targets { values, .. } = &out[0][1] else {
        panic!("{:?}", out[0][1])
    };
    assert_eq!(values[0].unit, "%");
    // The f32 model on the same clip: same EF within a small tolerance.
    let cfg = tiny();
    let tokens = f32_model(&cfg, &enc).forward(&video).unwrap();
    let p = AttentiveProbe::new(
        &probe_cfg(ProbeKind::Regressor, 1),
        VarBuilder::from_tensors(probes[1].clone(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    let z = p
        .forward(&tokens, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let ef_f32 = z as f64 * 10.0 + 55.0;
    // Random weights: allow |Δz| of 0.03 (0.3 EF points at std 10).
    assert!(
        (values[0].value - ef_f32).abs() < 0.3,
        "{} vs {ef_f32}",
        values[0].value
    );
}

#[test]
fn edge_model_refuses_tampered_and_inconsistent_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed("maker", &[4; 32]);
    let dir = tmp.path().join("b");
    tiny_bundle(&dir, &key);
    // Untrusted key.
    let other = SecretKey::from_seed("other", &[5; 32]);
    let msg = EdgeModel::open(&dir, &[other.public()])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not trusted"), "{msg}");
    // One flipped byte in the weights.
    let w = dir.join("model.gguf");
    let mut bytes = std::fs::read(&w).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&w, &bytes).unwrap();
    let msg = EdgeModel::open(&dir, &[key.public()])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`model.gguf` is corrupt or tampered"), "{msg}");
    bytes[mid] ^= 1;
    std::fs::write(&w, &bytes).unwrap();
    EdgeModel::open(&dir, &[key.public()]).unwrap();

    // A manifest (properly signed) whose precision disagrees with the file.
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"precision\": \"q8_0\"", "\"precision\": \"f16\"", 1);
    std::fs::write(&path, edited).unwrap();
    resign_bundle(&dir, &key).unwrap();
    let msg = EdgeModel::open(&dir, &[key.public()])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("encoder.patch_embed.proj.weight") && msg.contains("stored as q8_0"),
        "{msg}"
    );
}
