//! End-to-end tests of the `quantize` binary on a tiny native checkpoint with a view classifier
//! and an EF regressor (deterministic weights, synthetic phantom clips): keygen, build, verify
//! (good, tampered, untrusted), report, and the fail-before-work paths.

// A test reads best as one story, so test functions may run past the line limit.
#![allow(clippy::too_many_lines)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use echojepa::checkpoint::{
    InputSpec, NativeCheckpoint, NativeConfig, ProbeEntry, Scaler, expected_tensors,
};
use echojepa::config::{EncoderConfig, ProbeConfig, ProbeKind};
use echojepa::encoder::VisionTransformer;
use echojepa::probe::AttentiveProbe;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quantize"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run quantize")
}

/// A bundle's manifest as JSON.
fn manifest_of(bundle: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn det(
    build: impl FnOnce(candle_nn::VarBuilder) -> candle_core::Result<()>,
    seed: u64,
) -> HashMap<String, Tensor> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    expected_tensors(build)
        .unwrap()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> =
                if shape.len() == 1 && name.contains("norm") && name.ends_with("weight") {
                    (0..n).map(|_| 1.0 + 0.1 * next()).collect()
                } else if shape.len() == 1 {
                    (0..n).map(|_| 0.05 * next()).collect()
                } else {
                    let fan: usize = shape[1..].iter().product();
                    let sc = 3f32.sqrt() / (fan as f32).sqrt();
                    (0..n).map(|_| sc * next()).collect()
                };
            (name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
        })
        .collect()
}

fn probe(kind: ProbeKind, n: usize) -> ProbeConfig {
    ProbeConfig {
        kind,
        embed_dim: 64,
        num_heads: 4,
        depth: 1,
        num_outputs: n,
        mlp_ratio: 4.0,
        slots: None,
    }
}

/// Writes `dir/tiny.safetensors` + `dir/tiny.json`; returns the stem.
fn tiny_checkpoint(dir: &Path) -> PathBuf {
    checkpoint_with_heads(dir, "tiny", ["view", "ef"], "LVEF (%)", false)
}

/// A tiny checkpoint whose heads are named `names` (view classifier, then regressor) with the
/// regressor's target labelled `target`, and with their tasks recorded when `tasks`.
fn checkpoint_with_heads(
    dir: &Path,
    file: &str,
    names: [&str; 2],
    target: &str,
    tasks: bool,
) -> PathBuf {
    use echojepa::bundle::{HeadTask, Measure};
    let enc = EncoderConfig::custom(64, 2, 4, 4.0);
    let mut cfg = NativeConfig::new(enc.clone());
    cfg.model_id = "tiny-phantom".into();
    cfg.encoders = vec!["target_encoder".into()];
    cfg.input = Some(InputSpec::reference(4, 2, 48));
    cfg.notes
        .insert("training_data".into(), "synthetic phantom".into());
    let view = probe(ProbeKind::Classifier, 3);
    let ef = probe(ProbeKind::Regressor, 1);
    let classes: Vec<String> = vec!["a4c".into(), "a2c".into(), "plax".into()];
    let view_task = tasks.then(|| HeadTask::view_classifier(classes.clone()));
    let ef_task = tasks.then(|| HeadTask::regressor(vec![Measure::lvef()]));
    cfg.probes = BTreeMap::from([
        (
            names[0].to_string(),
            ProbeEntry {
                config: view.clone(),
                classes,
                targets: vec![],
                scaler: None,
                temperature: None,
                min_confidence: None,
                valid_views: vec![],
                task: view_task,
            },
        ),
        (
            names[1].to_string(),
            ProbeEntry {
                config: ef.clone(),
                classes: vec![],
                targets: vec![target.into()],
                scaler: Some(Scaler {
                    mean: 55.0,
                    std: 10.0,
                }),
                temperature: None,
                min_confidence: None,
                valid_views: vec![],
                task: ef_task,
            },
        ),
    ]);
    let mut ck = NativeCheckpoint::new(cfg);
    ck.insert_part(
        "target_encoder",
        det(|vb| VisionTransformer::new(&enc, vb).map(|_| ()), 1),
    );
    ck.insert_part(
        &format!("probes.{}", names[0]),
        det(|vb| AttentiveProbe::new(&view, vb).map(|_| ()), 2),
    );
    ck.insert_part(
        &format!("probes.{}", names[1]),
        det(|vb| AttentiveProbe::new(&ef, vb).map(|_| ()), 3),
    );
    let stem = dir.join(file);
    ck.save(&stem).unwrap();
    stem
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    stem: PathBuf,
    bundle: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let stem = tiny_checkpoint(&root);
    let o = run(&[
        "keygen",
        "--name",
        "maker",
        "--out-dir",
        root.join("keys").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let bundle = root.join("bundle");
    let o = run(&[
        "build",
        "--checkpoint",
        stem.to_str().unwrap(),
        "--model-version",
        "1",
        "--key",
        root.join("keys/maker.secret").to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
        "--valid-views",
        "ef=a4c,a2c",
        "--calibration-clips",
        "2",
        "--reps",
        "1",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["model_id"], "tiny-phantom");
    assert!(v["size_ratio"].as_f64().unwrap() < 0.6, "{v}");
    Fixture {
        _tmp: tmp,
        root,
        stem,
        bundle,
    }
}

#[test]
fn build_verify_report_and_refusals() {
    let f = fixture();
    let pubkey = f.root.join("keys/maker.pub");
    let b = f.bundle.to_str().unwrap();

    // The manifest records a precision and a reason for every layer, and the synthetic origin.
    let m = manifest_of(&f.bundle);
    assert_eq!(m["synthetic_training_data"], true);
    // an older checkpoint: its provenance is read from its notes (legacy)
    assert_eq!(m["provenance"]["synthetic"], true, "{}", m["provenance"]);
    assert_eq!(m["heads"][1]["task"]["kind"], "view_classifier");
    assert_eq!(m["heads"][0]["task"]["targets"][0]["name"], "lvef");
    let layers = m["quantization"]["layers"].as_array().unwrap();
    assert_eq!(
        layers
            .iter()
            .filter(|l| l["tensor"].as_str().unwrap().starts_with("encoder."))
            .count(),
        1 + 4 * 2
    );
    for l in layers {
        assert!(!l["reason"].as_str().unwrap().is_empty(), "{l}");
    }
    // The worst-token search ran on the default 64 clips (the 2 per-layer clips among them),
    // within its byte budget, and every layer it widened says so; the end-to-end summary is
    // measured on the same 64 clips and agrees with the search's result.
    let t = &m["quantization"]["tail_search"];
    assert_eq!(t["clips"], 64, "{t}");
    assert_eq!(t["target"], 0.9995, "{t}");
    assert!(
        t["bytes_spent"].as_u64().unwrap() <= t["byte_budget"].as_u64().unwrap(),
        "{t}"
    );
    assert!(!t["stopped"].as_str().unwrap().is_empty(), "{t}");
    let after = t["token_cosine_min_after"].as_f64().unwrap();
    assert!(
        after >= t["token_cosine_min_before"].as_f64().unwrap(),
        "{t}"
    );
    let cal = &m["quantization"]["calibration"];
    assert_eq!(cal["clips"], 64, "{cal}");
    assert!(
        (cal["token_cosine_min"].as_f64().unwrap() - after).abs() < 1e-9,
        "{cal} {t}"
    );
    for w in t["widened"].as_array().unwrap() {
        let l = layers.iter().find(|l| l["tensor"] == *w).unwrap();
        assert_eq!(l["precision"], "f16", "{l}");
        assert!(
            l["reason"]
                .as_str()
                .unwrap()
                .starts_with("kept f16 by the worst-token search"),
            "{l}"
        );
    }
    assert_eq!(m["heads"][0]["name"], "ef");
    assert_eq!(m["heads"][0]["valid_views"][0], "a4c");
    assert_eq!(m["heads"][0]["targets"][0]["unit"], "%");

    // verify: good.
    let o = run(&["verify", b, "--key", pubkey.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.starts_with("OK: tiny-phantom 1 signed by `maker`"),
        "{out}"
    );

    // report on phantom clips, JSON to stdout.
    let o = run(&[
        "report",
        b,
        "--key",
        pubkey.to_str().unwrap(),
        "--checkpoint",
        f.stem.to_str().unwrap(),
        "--phantom",
        "3",
        "--layer-clips",
        "1",
        "--reps",
        "1",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["clips"], 3);
    assert!(r["data"].as_str().unwrap().contains("SYNTHETIC"));
    assert!(r["token_cosine_min"].as_f64().unwrap() > 0.99, "{r}");
    assert_eq!(r["layers"].as_array().unwrap().len(), 9);
    assert_eq!(r["classifiers"][0]["head"], "view");
    assert!(r["classifiers"][0]["accuracy_f32"].is_number());
    assert_eq!(r["regressors"][0]["unit"], "%");
    assert!(r["regressors"][0]["mae_int8"].is_number());
    assert!(!r["checks"].as_array().unwrap().is_empty());
    // Per layer, the worst token's error bounds the layer's (a weighted mean of the rows'), and
    // the input's largest channel is at least its median one.
    for l in r["layers"].as_array().unwrap() {
        let (rel, worst) = (
            l["rel_error"].as_f64().unwrap(),
            l["max_row_rel_error"].as_f64().unwrap(),
        );
        assert!(worst >= rel - 1e-12 && worst.is_finite(), "{l}");
        assert!(l["input_outlier_ratio"].as_f64().unwrap() >= 1.0, "{l}");
    }
    // The worst tokens are followed through both blocks of the tiny encoder.
    let worst = r["token_tail"]["worst"].as_array().unwrap();
    assert!(!worst.is_empty(), "{r}");
    for w in worst {
        let errs = w["block_errors"].as_array().unwrap();
        assert_eq!(errs.len(), 2, "{w}");
        assert!(
            errs.iter()
                .all(|e| e.as_f64().is_some_and(|e| e.is_finite() && e >= 0.0)),
            "{w}"
        );
        let spread = w["final_spread"].as_f64().unwrap();
        assert!(spread > 0.0 && spread <= 1.0 + 1e-9, "{w}");
    }

    // Markdown to a file.
    let md = f.root.join("r.md");
    let o = run(&[
        "report",
        b,
        "--key",
        pubkey.to_str().unwrap(),
        "--checkpoint",
        f.stem.to_str().unwrap(),
        "--phantom",
        "1",
        "--layer-clips",
        "1",
        "--reps",
        "1",
        "--markdown",
        md.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let md = std::fs::read_to_string(md).unwrap();
    assert!(
        md.contains("Synthetic data") && md.contains("| encoder.blocks.1.mlp.fc2.weight |"),
        "{md}"
    );

    // An untrusted key is named.
    let o = run(&[
        "keygen",
        "--name",
        "stranger",
        "--out-dir",
        f.root.join("k2").to_str().unwrap(),
        "--json",
    ]);
    let stranger: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
    let o = run(&[
        "verify",
        b,
        "--key",
        f.root.join("k2/stranger.pub").to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("not trusted") && err.contains("`stranger`"),
        "{err}"
    );
    let _ = stranger;

    // One flipped byte in the weights is named, also in JSON.
    let w = f.bundle.join("model.gguf");
    let mut bytes = std::fs::read(&w).unwrap();
    let i = bytes.len() - 3;
    bytes[i] ^= 0x10;
    std::fs::write(&w, &bytes).unwrap();
    let o = run(&["verify", b, "--key", pubkey.to_str().unwrap(), "--json"]);
    let (out, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("`model.gguf` is corrupt or tampered"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], false);
    bytes[i] ^= 0x10;
    std::fs::write(&w, &bytes).unwrap();

    // A manifest edited after signing.
    let mp = f.bundle.join("manifest.json");
    let t = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(
        &mp,
        t.replace("\"model_version\": \"1\"", "\"model_version\": \"2\""),
    )
    .unwrap();
    let o = run(&["verify", b, "--key", pubkey.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(
        err.contains("manifest.json does not match the signature"),
        "{err}"
    );
    std::fs::write(&mp, t).unwrap();

    // build fails before the work: existing output, and a missing key leaves nothing behind.
    let o = run(&[
        "build",
        "--checkpoint",
        f.stem.to_str().unwrap(),
        "--model-version",
        "1",
        "--key",
        f.root.join("keys/maker.secret").to_str().unwrap(),
        "--out",
        b,
    ]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("already exists"),
        "{err}"
    );
    let out2 = f.root.join("b2");
    let o = run(&[
        "build",
        "--checkpoint",
        f.stem.to_str().unwrap(),
        "--model-version",
        "1",
        "--key",
        f.root.join("keys/nope.secret").to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("nope.secret"), "{err}");
    assert!(!out2.exists());

    // keygen refuses to overwrite.
    let o = run(&[
        "keygen",
        "--name",
        "maker",
        "--out-dir",
        f.root.join("keys").to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("already exists"),
        "{err}"
    );
}

/// Writes a phantom video as a real H.264 MP4 (64×48: `report` must resize and crop it to the
/// bundle's 48×48 the way the probes' evaluation does).
fn phantom_mp4(path: &Path, view: echojepa_phantom::View, seed: u64) {
    use echojepa_phantom::{Phantom, PhantomParams};
    let ph = Phantom::new(PhantomParams::sample(seed, view)).unwrap();
    let clip = ph.render_clip(12, 30.0, 0.0, 64, 48).unwrap();
    echojepa_video::write_mp4(path, &clip, echojepa_video::EncoderSettings::default()).unwrap();
}

#[test]
fn report_on_a_video_list_skips_unreadable_videos() {
    use echojepa_phantom::View;
    let f = fixture();
    let pubkey = f.root.join("keys/maker.pub");
    let vids = f.root.join("videos");
    std::fs::create_dir_all(&vids).unwrap();
    let mut lines = String::new();
    for (i, (view, class)) in [(View::A4c, 0), (View::A2c, 1), (View::Plax, 2)]
        .into_iter()
        .enumerate()
    {
        let p = vids.join(format!("v{i}.mp4"));
        phantom_mp4(&p, view, 700 + i as u64);
        lines += &format!("{} {class}\n", p.display());
    }
    // Not a video: skipped, counted and named, not fatal.
    let broken = vids.join("broken.mp4");
    std::fs::write(&broken, b"\x00\x00\x00\x18ftypmp42 this is not a video").unwrap();
    lines += &format!("{} 0\n", broken.display());
    let list = f.root.join("view.csv");
    std::fs::write(&list, &lines).unwrap();

    let report = |extra: &[&str]| {
        let mut args = vec![
            "report",
            f.bundle.to_str().unwrap(),
            "--key",
            pubkey.to_str().unwrap(),
            "--checkpoint",
            f.stem.to_str().unwrap(),
            "--layer-clips",
            "1",
            "--reps",
            "1",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = report(&["--csv", list.to_str().unwrap(), "--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["clips"], 3, "{r}");
    assert_eq!(r["skipped"].as_array().unwrap().len(), 1, "{r}");
    assert!(
        r["skipped"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("broken.mp4")
    );
    assert!(r["data"].as_str().unwrap().contains("view.csv"), "{r}");
    assert!(r["note"].as_str().unwrap().contains("SYNTHETIC"), "{r}");
    assert!(r["token_cosine_min"].as_f64().unwrap() > 0.99, "{r}");
    // Labels are class indices of the view head: accuracy is measured against them.
    let acc = r["classifiers"][0]["accuracy_f32"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&acc) && (acc * 3.0).fract().abs() < 1e-9,
        "{r}"
    );
    // The EF head ran on the a4c/a2c clips (its valid views); no EF truth in a view list.
    assert_eq!(r["regressors"][0]["clips"], 2, "{r}");
    assert!(r["regressors"][0]["mae_f32"].is_null(), "{r}");
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["what"].as_str().unwrap().contains("mean |int8 - f32|")),
        "{r}"
    );

    // An EF list (z-scored labels) for the `ef` head: MAE in real units against the labels.
    let ef_list = f.root.join("ef.csv");
    std::fs::write(&ef_list, format!("{} 0.5\n", vids.join("v0.mp4").display())).unwrap();
    let o = report(&[
        "--csv",
        ef_list.to_str().unwrap(),
        "--csv-head",
        "ef",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["regressors"][0]["clips"], 1, "{r}");
    assert!(r["regressors"][0]["mae_f32"].is_number(), "{r}");
    assert!(r["classifiers"][0]["accuracy_f32"].is_null(), "{r}");

    // A label that is not a class of the head is an error naming the list and the video.
    std::fs::write(&list, format!("{} 7\n", vids.join("v1.mp4").display())).unwrap();
    let o = report(&["--csv", list.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("view.csv") && err.contains("v1.mp4") && err.contains("not a class index"),
        "{err}"
    );
    // Only unreadable videos: an error, not an empty report.
    std::fs::write(&list, format!("{} 0\n", broken.display())).unwrap();
    let o = report(&["--csv", list.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("no usable video") && err.contains("1 skipped"),
        "{err}"
    );
    // An unknown head is named with the ones the bundle has.
    let o = report(&["--csv", ef_list.to_str().unwrap(), "--csv-head", "rvsp"]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("`rvsp`") && err.contains("view"),
        "{err}"
    );
}

fn tool(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (openssl and ssh-keygen come from .ci/run)"));
    assert!(o.status.success(), "{cmd:?}: {:?}", text(&o));
    o
}

/// The device maker's signing path with tools this project did not write: an Ed25519 key made by
/// openssl, an unsigned build, the manifest signed by `openssl pkeyutl`, attached by `quantize
/// sign` and verified with the PEM public key as openssl wrote it. And the other way: a key from
/// `quantize keygen` is read by openssl, and a bundle signature we made verifies with openssl.
#[test]
fn openssl_signs_bundles_and_verifies_ours() {
    let f = fixture();
    let dir = f.root.join("openssl");
    std::fs::create_dir_all(&dir).unwrap();
    let (sk, pk) = (dir.join("maker.pem"), dir.join("maker.pub.pem"));
    tool(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&sk),
    );
    tool(
        Command::new("openssl")
            .arg("pkey")
            .arg("-in")
            .arg(&sk)
            .arg("-pubout")
            .arg("-out")
            .arg(&pk),
    );

    let unsigned = f.root.join("unsigned");
    let o = run(&[
        "build",
        "--checkpoint",
        f.stem.to_str().unwrap(),
        "--model-version",
        "2",
        "--unsigned",
        "--out",
        unsigned.to_str().unwrap(),
        "--calibration-clips",
        "2",
        "--reps",
        "1",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["unsigned"], true);
    assert!(!unsigned.join("manifest.sig").exists());
    let o = run(&[
        "verify",
        unsigned.to_str().unwrap(),
        "--key",
        pk.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("unsigned"), "{:?}", text(&o));

    let sig = dir.join("manifest.sig.bin");
    tool(
        Command::new("openssl")
            .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
            .arg(&sk)
            .arg("-in")
            .arg(unsigned.join("manifest.json"))
            .arg("-out")
            .arg(&sig),
    );
    assert_eq!(std::fs::metadata(&sig).unwrap().len(), 64);

    // A damaged signature is refused and nothing is attached.
    let mut bad = std::fs::read(&sig).unwrap();
    bad[10] ^= 1;
    let bad_path = dir.join("bad.sig.bin");
    std::fs::write(&bad_path, bad).unwrap();
    let o = run(&[
        "sign",
        unsigned.to_str().unwrap(),
        "--signature",
        bad_path.to_str().unwrap(),
        "--public-key",
        pk.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("does not match the signature"),
        "{:?}",
        text(&o)
    );
    assert!(!unsigned.join("manifest.sig").exists());

    let o = run(&[
        "sign",
        unsigned.to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
        "--public-key",
        pk.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = run(&[
        "verify",
        unsigned.to_str().unwrap(),
        "--key",
        pk.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
    assert_eq!(
        v["signer"], "maker.pub",
        "a PEM key is named after its file"
    );

    // Our keygen writes keys openssl reads: the public half openssl derives from our secret file
    // is our public file's key.
    let ours = f.root.join("keys");
    let derived = tool(
        Command::new("openssl")
            .arg("pkey")
            .arg("-in")
            .arg(ours.join("maker.secret"))
            .arg("-pubout"),
    );
    let derived = String::from_utf8(derived.stdout).unwrap();
    let written = std::fs::read_to_string(ours.join("maker.pub")).unwrap();
    assert!(written.ends_with(&derived), "{written}\nvs\n{derived}");

    // openssl verifies the signature our build made (fixture bundle, keygen key).
    let sig_text = std::fs::read_to_string(f.bundle.join("manifest.sig")).unwrap();
    let hex_sig = sig_text
        .lines()
        .find_map(|l| l.strip_prefix("signature: "))
        .unwrap();
    let ours_sig = dir.join("ours.sig.bin");
    std::fs::write(&ours_sig, hex::decode(hex_sig).unwrap()).unwrap();
    let o = tool(
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(ours.join("maker.pub"))
            .arg("-rawin")
            .arg("-in")
            .arg(f.bundle.join("manifest.json"))
            .arg("-sigfile")
            .arg(&ours_sig),
    );
    assert!(
        text(&o).0.contains("Signature Verified Successfully"),
        "{:?}",
        text(&o)
    );
}

/// An OpenSSH `ssh-ed25519` public key made by ssh-keygen is read as the same key ssh-keygen
/// fingerprints (SHA256 of the key blob rebuilt from the bytes we parsed).
#[test]
fn openssh_public_keys_are_accepted() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let tmp = tempfile::tempdir().unwrap();
    let k = tmp.path().join("id_ed25519");
    tool(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "cart-signer", "-f"])
            .arg(&k),
    );
    let fp = tool(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(k.with_extension("pub")),
    );
    let fp = text(&fp).0;
    let ssh_fp = fp
        .split_whitespace()
        .find_map(|w| w.strip_prefix("SHA256:"))
        .unwrap_or_else(|| panic!("no SHA256 fingerprint in {fp}"))
        .to_string();
    let a = echojepa::bundle::PublicKey::load(&k.with_extension("pub")).unwrap();
    assert_eq!(a.name(), "cart-signer", "the OpenSSH comment names the key");
    let mut blob = Vec::new();
    for part in [&b"ssh-ed25519"[..], &hex::decode(a.hex()).unwrap()] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    let ours = base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(&blob));
    assert_eq!(ours, ssh_fp);
    // The private half is not a public key, and the error names the file.
    let e = echojepa::bundle::PublicKey::load(&k)
        .unwrap_err()
        .to_string();
    assert!(e.contains("id_ed25519"), "{e}");
}

/// `report` finds the LVEF head by its task: heads named `foo` and `bar`, whose target label
/// (`score`) says nothing about EF, are still scored against the phantom's EF and checked.
#[test]
fn report_finds_the_ef_head_by_its_task_not_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let stem = checkpoint_with_heads(root, "named", ["bar", "foo"], "score (%)", true);
    let keys = root.join("keys");
    let o = run(&[
        "keygen",
        "--name",
        "maker",
        "--out-dir",
        keys.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let bundle = root.join("bundle");
    let (b, s) = (bundle.to_str().unwrap(), stem.to_str().unwrap());
    let key = keys.join("maker.secret");
    let o = run(&[
        "build",
        "--checkpoint",
        s,
        "--model-version",
        "1",
        "--key",
        key.to_str().unwrap(),
        "--out",
        b,
        "--calibration-clips",
        "1",
        "--reps",
        "1",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let pubkey = keys.join("maker.pub");
    let o = run(&[
        "report",
        b,
        "--key",
        pubkey.to_str().unwrap(),
        "--checkpoint",
        s,
        "--phantom",
        "2",
        "--layer-clips",
        "1",
        "--reps",
        "1",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let foo = &r["regressors"][0];
    assert_eq!(foo["head"], "foo", "{r}");
    assert_eq!(foo["lvef"], true, "{r}");
    assert!(foo["mae_int8"].is_number(), "{r}");
    let checks = r["checks"].as_array().unwrap();
    assert!(
        checks.iter().any(|c| c["what"]
            .as_str()
            .unwrap()
            .contains("`score` mean |int8 - f32|")),
        "{r}"
    );
}

/// The worst-token search through the CLI: with a target int8 cannot reach and room in the size
/// budget, `build` keeps layers f16 one at a time, prints what it did, records each reason, and
/// the bundle's own report measures a worst token no lower than the search started from.
#[test]
fn build_widens_layers_for_the_worst_tokens_within_the_size_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let stem = tiny_checkpoint(root);
    let bundle = root.join("bundle");
    let build = |dir: &Path, ratio: &str| {
        let o = run(&[
            "build",
            "--checkpoint",
            stem.to_str().unwrap(),
            "--model-version",
            "1",
            "--unsigned",
            "--out",
            dir.to_str().unwrap(),
            "--calibration-clips",
            "1",
            "--tail-clips",
            "8",
            "--tail-target",
            "0.99999999",
            "--max-size-ratio",
            ratio,
            "--max-time-ratio",
            "1000",
            "--reps",
            "1",
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}\n{err}");
        (out, manifest_of(dir))
    };
    let (out, m) = build(&bundle, "1.0");
    let t = &m["quantization"]["tail_search"];
    let widened = t["widened"].as_array().unwrap();
    assert!(!widened.is_empty(), "{t}");
    assert!(
        t["token_cosine_min_after"].as_f64().unwrap()
            > t["token_cosine_min_before"].as_f64().unwrap(),
        "{t}"
    );
    let layers = m["quantization"]["layers"].as_array().unwrap();
    for w in widened {
        let l = layers.iter().find(|l| l["tensor"] == *w).unwrap();
        assert_eq!(l["precision"], "f16", "{l}");
        assert!(
            l["reason"].as_str().unwrap().contains("searched clips"),
            "{l}"
        );
    }
    assert!(
        out.contains("worst tokens on 8 clips") && out.contains("layer(s) widened"),
        "{out}"
    );
    // With no room left above the per-layer choice it widens nothing and says why.
    let (_, m) = build(&root.join("tight"), "0.01");
    let t = &m["quantization"]["tail_search"];
    assert_eq!(t["widened"].as_array().unwrap().len(), 0, "{t}");
    assert_eq!(t["byte_budget"], 0, "{t}");
    assert!(t["stopped"].as_str().unwrap().contains("fits"), "{t}");
}
