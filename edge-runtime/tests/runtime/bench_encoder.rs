//! The `bench_encoder` example, the Rust side of `bench/peer_bench.py`: it must read the peer
//! benchmark's weight and input files, time both variants, and write tokens that are the
//! encoder's (f32 equal to the candle reference encoder, int8 close to it); a weights file that
//! does not say its architecture is refused by name.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use echojepa::config::EncoderConfig;
use echojepa::encoder::VisionTransformer;

/// The example's executable: `cargo test` builds the package's examples next to the test
/// binaries (`target/<profile>/examples/`).
fn example_exe() -> std::path::PathBuf {
    let test_exe = std::env::current_exe().unwrap();
    let profile_dir = test_exe.parent().and_then(Path::parent).unwrap();
    let exe = profile_dir.join("examples/bench_encoder");
    assert!(
        exe.is_file(),
        "{} not built (cargo test builds the examples; or `cargo build -p edge-runtime --examples`)",
        exe.display()
    );
    exe
}

fn bench_encoder(args: &[&str]) -> Output {
    Command::new(example_exe())
        .args(args)
        .env_remove("ECHOJEPA_THREADS")
        .output()
        .unwrap()
}

/// Deterministic values in [-1, 1) (64-bit LCG, top bits).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// State dict of a random encoder in the reference layout (patch weight 5-D).
fn state_dict(cfg: &EncoderConfig) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let names =
        echojepa::checkpoint::expected_tensors(|vb| VisionTransformer::new(cfg, vb)).unwrap();
    names
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let u = values(n, i as u64 + 1);
            let v = if shape.len() == 1 && name.contains("norm") && name.ends_with("weight") {
                u.iter().map(|x| 1.0 + 0.1 * x).collect()
            } else if shape.len() == 1 {
                u.iter().map(|x| 0.05 * x).collect()
            } else {
                let fan_in: usize = shape[1..].iter().product();
                let sc = 3f32.sqrt() / (fan_in as f32).sqrt();
                u.iter().map(|x| sc * x).collect()
            };
            (name, shape, v)
        })
        .collect()
}

fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    meta: Option<HashMap<String, String>>,
) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                n.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn tokens(path: &str) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()["tokens"].clone()
}

#[test]
fn times_both_precisions_and_writes_the_encoders_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EncoderConfig::custom(32, 2, 2, 4.0);
    let sd = state_dict(&cfg);
    let weights = dir.path().join("w.safetensors");
    let meta = HashMap::from([
        ("embed_dim".to_string(), "32".to_string()),
        ("depth".to_string(), "2".to_string()),
        ("num_heads".to_string(), "2".to_string()),
        ("mlp_ratio".to_string(), "4.0".to_string()),
    ]);
    write_safetensors(&weights, &sd, Some(meta));
    let (t, h, w) = (4, 32, 48);
    let video = values(3 * t * h * w, 99);
    let input = dir.path().join("in.safetensors");
    write_safetensors(
        &input,
        &[("video".into(), vec![1, 3, t, h, w], video.clone())],
        None,
    );
    let prefix = dir.path().join("out");
    let o = bench_encoder(&[
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--reps",
        "3",
        "--threads",
        "1",
        "--output-prefix",
        prefix.to_str().unwrap(),
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0]["label"], "edge_f32");
    assert_eq!(lines[1]["label"], "edge_int8");
    assert_eq!(lines[2]["label"], "edge_int8_u7");
    assert_eq!(lines[3]["label"], "edge_int8_u7_attn");
    let n_tokens = (t / 2) * (h / 16) * (w / 16);
    for l in &lines {
        assert_eq!(l["times_ms"].as_array().unwrap().len(), 3);
        assert!(l["median_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(l["tokens"].as_u64().unwrap() as usize, n_tokens);
        assert_eq!(l["threads"].as_u64().unwrap(), 1);
    }

    // The candle encoder (the trainer's model) on the same weights and input.
    let map: HashMap<String, Tensor> = sd
        .iter()
        .map(|(n, s, v)| {
            (
                n.clone(),
                Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let reference = VisionTransformer::new(
        &cfg,
        VarBuilder::from_tensors(map, DType::F32, &Device::Cpu),
    )
    .unwrap()
    .forward(&Tensor::from_vec(video, (1, 3, t, h, w), &Device::Cpu).unwrap())
    .unwrap();
    assert_eq!(reference.dims(), &[1, n_tokens, 32]);
    let f32_tokens = tokens(lines[0]["output"].as_str().unwrap());
    let max_abs = max_abs_diff(&f32_tokens, &reference);
    assert!(
        max_abs < 1e-3,
        "edge f32 vs candle encoder: max |diff| {max_abs}"
    );

    let smallest_cosine = |x: &Tensor| {
        let dot = (x * &reference).unwrap().sum(2).unwrap();
        let na = x.sqr().unwrap().sum(2).unwrap().sqrt().unwrap();
        let nb = reference.sqr().unwrap().sum(2).unwrap().sqrt().unwrap();
        (dot / (na * nb).unwrap())
            .unwrap()
            .min_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let i8_tokens = tokens(lines[1]["output"].as_str().unwrap());
    let cos = smallest_cosine(&i8_tokens);
    assert!(cos > 0.99, "edge int8 vs f32: smallest token cosine {cos}");
    assert!(cos < 1.0 - 1e-7, "the int8 variant really is quantized");
    // 7-bit activations: still close, but not the 8-bit variant's numbers.
    let u7_tokens = tokens(lines[2]["output"].as_str().unwrap());
    let cos7 = smallest_cosine(&u7_tokens);
    assert!(
        cos7 > 0.99,
        "edge int8 u7 vs f32: smallest token cosine {cos7}"
    );
    let diff = max_abs_diff(&u7_tokens, &i8_tokens);
    assert!(diff > 0.0, "u7 and u8 activations gave identical tokens");
    // Attention in int8 too: close, and not the f32-attention variant's numbers.
    let attn_tokens = tokens(lines[3]["output"].as_str().unwrap());
    let cos_attn = smallest_cosine(&attn_tokens);
    assert!(
        cos_attn > 0.99,
        "edge int8 u7 attn vs f32: smallest token cosine {cos_attn}"
    );
    let diff = max_abs_diff(&attn_tokens, &u7_tokens);
    assert!(diff > 0.0, "int8 and f32 attention gave identical tokens");
}

/// `--interleave`: a caller drives the rounds through stdin and reads one line per round, then
/// the summary once stdin closes.
#[test]
fn interleave_runs_one_round_per_input_line() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let cfg = EncoderConfig::custom(32, 1, 2, 4.0);
    let weights = dir.path().join("w.safetensors");
    let meta = HashMap::from([
        ("embed_dim".to_string(), "32".to_string()),
        ("depth".to_string(), "1".to_string()),
        ("num_heads".to_string(), "2".to_string()),
    ]);
    write_safetensors(&weights, &state_dict(&cfg), Some(meta));
    let input = dir.path().join("in.safetensors");
    write_safetensors(
        &input,
        &[(
            "video".into(),
            vec![1, 3, 2, 32, 32],
            values(3 * 2 * 32 * 32, 5),
        )],
        None,
    );
    let mut child = Command::new(example_exe())
        .args(["--weights", weights.to_str().unwrap()])
        .args(["--input", input.to_str().unwrap()])
        .args([
            "--precision",
            "int8,f32",
            "--threads",
            "1",
            "--json",
            "--interleave",
        ])
        .env_remove("ECHOJEPA_THREADS")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert_eq!(
        next()["ready"],
        serde_json::json!(["edge_int8", "edge_f32"])
    );
    let mut sent = Vec::new();
    for round in 0..3 {
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
        let r = next();
        assert_eq!(r["round"], round);
        let t = r["times_ms"].as_object().unwrap();
        assert_eq!(t.len(), 2, "{r}");
        sent.push(t["edge_int8"].as_f64().unwrap());
    }
    drop(stdin);
    let int8 = next();
    assert_eq!(int8["label"], "edge_int8");
    let times: Vec<f64> = int8["times_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    for (a, b) in times.iter().zip(&sent) {
        assert!((a - b).abs() < 1e-3, "summary {times:?} vs rounds {sent:?}");
    }
    assert_eq!(next()["label"], "edge_f32");
    assert!(child.wait().unwrap().success());
}

#[test]
fn weights_without_architecture_metadata_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EncoderConfig::custom(32, 1, 2, 4.0);
    let weights = dir.path().join("bare.safetensors");
    write_safetensors(&weights, &state_dict(&cfg), None);
    let input = dir.path().join("in.safetensors");
    write_safetensors(
        &input,
        &[(
            "video".into(),
            vec![1, 3, 2, 16, 16],
            values(3 * 2 * 16 * 16, 1),
        )],
        None,
    );
    let o = bench_encoder(&[
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bare.safetensors") && err.contains("embed_dim"),
        "{err}"
    );

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let o = bench_encoder(&[
        "--weights",
        junk.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("junk.safetensors"), "{err}");
}

#[test]
fn bench_on_the_demo_bundle_reports_the_encoder_alone_and_in_the_pipeline() {
    let o = Command::new(env!("CARGO_BIN_EXE_edge-runtime"))
        .args(["bench", "--seconds", "3", "--json"])
        .env_remove("ECHOJEPA_BOARD")
        .env_remove("ECHOJEPA_BUNDLE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let alone = &v["encoder_alone_ms"];
    let (median, min) = (
        alone["median"].as_f64().unwrap(),
        alone["min"].as_f64().unwrap(),
    );
    assert!(min > 0.0 && min <= median, "{alone}");
    assert_eq!(alone["runs"], 30);
    let stages = v["summary"]["latency_ms"].as_object().unwrap();
    assert!(stages["encoder"]["n"].as_u64().unwrap() > 0, "{stages:?}");
}
