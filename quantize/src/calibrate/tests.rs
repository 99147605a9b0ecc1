//! Calibration and the weights-file writer on a tiny random encoder: every layer gets a choice
//! with its numbers and reason, and what the writer stores is what the model crate's reader
//! loads.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use echojepa::bundle::{LayerPrecision, Precision};
use echojepa::config::{EncoderConfig, ProbeConfig, ProbeKind};
use echojepa::encoder::VisionTransformer;
use echojepa::probe::AttentiveProbe;
use echojepa::quantized::encoder::{GgufSource, QuantizedEncoder, TensorSource, flatten_patch};
use echojepa::quantized::gguf::{GgufWeights, precision_of, write_gguf};
use echojepa::quantized::model::{ENCODER_PREFIX, probe_prefix};

use super::{
    CalibrationOptions, Clip, TailOptions, choose_encoder_precisions, encoder_bytes,
    encoder_tensors, probe_tensors, rel_error, search_tail, summarize, token_cosine, weight_bytes,
};

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
/// matrices uniform with std 1/sqrt(fan_in) (as the model crate's own tests make them).
fn det_tensors<T>(
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
    seed: u64,
) -> HashMap<String, Tensor> {
    let expected = echojepa::checkpoint::expected_tensors(build).unwrap();
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

fn clip(seed: u64) -> Clip {
    let flat: Vec<f32> = uniform(3 * 4 * 48 * 48, seed)
        .iter()
        .map(|x| 2.0 * x)
        .collect();
    (flat, (4, 48, 48))
}

#[test]
fn calibration_records_a_choice_and_reason_for_every_layer() {
    let cfg = tiny();
    let t = random_encoder(&cfg, 7);
    let clips: Vec<Clip> = (0..2).map(|s| clip(10 + s)).collect();
    let opts = CalibrationOptions {
        reps: 1,
        ..CalibrationOptions::default()
    };
    let mut calls = 0;
    let layers =
        choose_encoder_precisions(&cfg, &t, "t", &clips, &opts, &mut |_, _| calls += 1).unwrap();
    assert_eq!(calls, 2);
    assert_eq!(layers.len(), 1 + 4 * cfg.depth);
    for l in &layers {
        assert!(l.rel_error.is_some_and(|e| e > 0.0 && e < 0.05), "{l:?}");
        assert!(l.int8_ms.is_some() && l.full_ms.is_some(), "{l:?}");
        match l.precision {
            Precision::Q8_0 => assert!(l.reason.contains("faster"), "{l:?}"),
            _ => assert!(l.reason.contains("not faster"), "{l:?}"),
        }
    }
    // A zero error budget keeps every layer full precision, saying why.
    let strict = CalibrationOptions {
        error_budget: 0.0,
        ..opts
    };
    let layers = choose_encoder_precisions(&cfg, &t, "t", &clips, &strict, &mut |_, _| {}).unwrap();
    for l in &layers {
        assert_eq!(l.precision, Precision::F16);
        assert!(l.reason.contains("exceeds the budget"), "{l:?}");
    }
    // No clips is refused rather than recorded as unmeasured.
    assert!(choose_encoder_precisions(&cfg, &t, "t", &[], &opts, &mut |_, _| {}).is_err());
}

/// Every layer int8, as a per-layer choice with no time limit makes them.
fn all_int8(
    cfg: &EncoderConfig,
    t: &HashMap<String, Tensor>,
    clips: &[Clip],
) -> Vec<LayerPrecision> {
    let opts = CalibrationOptions {
        reps: 1,
        max_time_ratio: 1e6,
        ..CalibrationOptions::default()
    };
    let layers = choose_encoder_precisions(cfg, t, "t", clips, &opts, &mut |_, _| {}).unwrap();
    assert!(layers.iter().all(|l| l.precision == Precision::Q8_0));
    layers
}

#[test]
fn tail_search_widens_the_layers_that_lift_the_worst_token() {
    let cfg = tiny();
    let t = random_encoder(&cfg, 7);
    let clips: Vec<Clip> = (0..6).map(|s| clip(30 + s)).collect();
    let start = all_int8(&cfg, &t, &clips[..2]);
    let opts = TailOptions {
        target: 0.999_999,
        byte_budget: u64::MAX,
        clips_per_round: 2,
        fallback: Precision::F32,
    };
    let mut layers = start.clone();
    let mut lines = Vec::new();
    let s = search_tail(&cfg, &t, "t", &mut layers, &clips, &opts, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(s.clips, 6);
    assert!(s.token_cosine_min_before < opts.target, "{s:?}");
    assert!(!s.widened.is_empty(), "{s:?}");
    assert_eq!(lines.len(), s.widened.len());
    assert!(
        s.token_cosine_min_after > s.token_cosine_min_before,
        "{s:?}"
    );
    // What it reports is what the chosen encoder measures on the same clips.
    let check = summarize(&cfg, &t, "t", &layers, &clips, "six clips", 1).unwrap();
    assert!(
        (check.token_cosine_min - s.token_cosine_min_after).abs() < 1e-12,
        "{check:?} {s:?}"
    );
    // Exactly the widened layers changed, each saying why, and the bytes add up.
    let mut spent = 0;
    for (before, after) in start.iter().zip(&layers) {
        if s.widened.contains(&after.tensor) {
            assert_eq!(after.precision, Precision::F32);
            assert!(
                after
                    .reason
                    .starts_with("kept f32 by the worst-token search"),
                "{after:?}"
            );
            spent += weight_bytes(&after.shape, Precision::F32)
                - weight_bytes(&after.shape, Precision::Q8_0);
        } else {
            assert_eq!(after, before);
        }
    }
    assert_eq!(spent, s.bytes_spent);
    // The encoder's byte count, widened layers included, is what the writer stores, and the
    // search spent the difference.
    let stored = |layers: &[LayerPrecision]| -> u64 {
        encoder_tensors(&cfg, &t, layers)
            .unwrap()
            .iter()
            .map(|(_, q)| q.storage_size_in_bytes() as u64)
            .sum()
    };
    assert_eq!(encoder_bytes(&cfg, &t, &layers).unwrap(), stored(&layers));
    assert_eq!(encoder_bytes(&cfg, &t, &start).unwrap(), stored(&start));
    assert_eq!(stored(&layers) - stored(&start), s.bytes_spent);

    // A budget smaller than any layer's widening leaves the choice alone, and says so.
    let mut layers = start.clone();
    let tight = TailOptions {
        byte_budget: 100,
        ..opts
    };
    let s = search_tail(&cfg, &t, "t", &mut layers, &clips, &tight, &mut |_| {}).unwrap();
    assert!(s.widened.is_empty() && s.bytes_spent == 0, "{s:?}");
    assert!(s.stopped.contains("no int8 layer fits"), "{s:?}");
    assert_eq!(layers, start);
    assert_eq!(s.token_cosine_min_before, s.token_cosine_min_after);

    // A target already met changes nothing.
    let mut layers = start.clone();
    let easy = TailOptions {
        target: 0.5,
        ..opts
    };
    let s = search_tail(&cfg, &t, "t", &mut layers, &clips, &easy, &mut |_| {}).unwrap();
    assert!(
        s.widened.is_empty() && s.stopped.contains("reached"),
        "{s:?}"
    );
    assert_eq!(layers, start);

    // The byte sizes are the storage's: q8_0 is 34 bytes a block of 32.
    assert_eq!(weight_bytes(&[64, 32], Precision::Q8_0), 64 * 34);
    assert_eq!(weight_bytes(&[64, 32], Precision::F16), 64 * 64);
    assert!(search_tail(&cfg, &t, "t", &mut layers, &[], &opts, &mut |_| {}).is_err());
}

#[test]
fn encoder_from_gguf_equals_encoder_from_tensors() {
    let cfg = tiny();
    let t = random_encoder(&cfg, 5);
    let mut layers = Vec::new();
    for (i, (name, shape)) in QuantizedEncoder::linear_shapes(&cfg)
        .into_iter()
        .enumerate()
    {
        layers.push(LayerPrecision {
            tensor: format!("{ENCODER_PREFIX}.{name}.weight"),
            shape: shape.to_vec(),
            precision: if i % 2 == 0 {
                Precision::Q8_0
            } else {
                Precision::F16
            },
            reason: "test".into(),
            rel_error: None,
            int8_ms: None,
            full_ms: None,
        });
    }
    let tensors = encoder_tensors(&cfg, &t, &layers).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    write_gguf(&path, &[], &tensors).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let w = GgufWeights::read(&bytes, "w.gguf").unwrap();
    // The patch weight is stored 2-D.
    assert_eq!(
        w.get("encoder.patch_embed.proj.weight")
            .unwrap()
            .shape()
            .dims(),
        &[64, 1536]
    );
    let from_file = QuantizedEncoder::load(
        &cfg,
        &GgufSource {
            weights: &w,
            prefix: ENCODER_PREFIX,
        },
    )
    .unwrap();
    let prec: HashMap<String, Precision> = layers
        .iter()
        .map(|l| {
            let n = l
                .tensor
                .strip_prefix("encoder.")
                .unwrap()
                .strip_suffix(".weight")
                .unwrap();
            (n.to_string(), l.precision)
        })
        .collect();
    let flat = flatten_patch(&cfg, &t);
    let from_tensors = QuantizedEncoder::load(
        &cfg,
        &TensorSource {
            tensors: &flat,
            origin: "t",
            precision: &prec,
        },
    )
    .unwrap();
    let (c, thw) = clip(6);
    assert_eq!(
        from_file.forward_clip(&c, thw).unwrap(),
        from_tensors.forward_clip(&c, thw).unwrap()
    );
    let got: Vec<Precision> = from_file.linears().iter().map(|l| l.precision()).collect();
    let want: Vec<Precision> = layers.iter().map(|l| l.precision).collect();
    assert_eq!(got, want);
    // A missing tensor is named.
    let msg = w
        .get("encoder.blocks.9.attn.qkv.weight")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("encoder.blocks.9.attn.qkv.weight") && msg.contains("w.gguf"),
        "{msg}"
    );
}

#[test]
fn probe_weights_are_stored_q8_0_only_within_the_weight_budget() {
    let cfg = ProbeConfig {
        kind: ProbeKind::Regressor,
        embed_dim: 64,
        num_heads: 4,
        depth: 2,
        num_outputs: 1,
        mlp_ratio: 4.0,
        slots: None,
    };
    let p = det_tensors(|vb| AttentiveProbe::new(&cfg, vb), 23);
    let prefix = probe_prefix("ef");
    let opts = CalibrationOptions::default();
    let (tensors, layers) = probe_tensors(&p, &prefix, &opts).unwrap();
    // Every tensor is written, under the head's prefix; every listed layer says why.
    assert_eq!(tensors.len(), p.len());
    assert!(tensors.iter().all(|(n, _)| n.starts_with("probe.ef.")));
    assert!(!layers.is_empty());
    let stored: HashMap<&str, Precision> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), precision_of(t).unwrap()))
        .collect();
    for l in &layers {
        assert_eq!(stored[l.tensor.as_str()], l.precision, "{l:?}");
        assert!(l.reason.starts_with("probe layer"), "{l:?}");
    }
    assert!(layers.iter().any(|l| l.precision == Precision::Q8_0));
    // With no room for weight error nothing is stored q8_0.
    let strict = CalibrationOptions {
        probe_weight_budget: 0.0,
        ..opts
    };
    let (_, layers) = probe_tensors(&p, &prefix, &strict).unwrap();
    assert!(layers.iter().all(|l| l.precision == Precision::F16));
}

#[test]
fn error_measures_treat_zero_references_sensibly() {
    assert_eq!(rel_error(&[3.0, 4.0], &[0.0, 0.0]), 5.0);
    assert!((rel_error(&[1.1, 0.0], &[1.0, 0.0]) - 0.1).abs() < 1e-6);
    // Two zero tokens agree; a zero token against a non-zero one does not.
    assert_eq!(token_cosine(&[0.0, 0.0], &[0.0, 0.0], 2), (1.0, 1.0));
    let (min, mean) = token_cosine(&[1.0, 0.0, 0.0, 0.0], &[2.0, 0.0, 1.0, 0.0], 2);
    assert_eq!((min, mean), (0.0, 0.5));
}
