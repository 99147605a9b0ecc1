//! Bundles on a board: keys from the profile (inline or file), verification before use, the model
//! facts read from the signed manifest, and refusals that name the file, the key or the limit.

use std::path::Path;
use std::time::Duration;

use boards::BoardProfile;
use echojepa::bundle::{BundleBuilder, FORMAT, FORMAT_VERSION, InputSpec, Manifest, SecretKey};
use echojepa::config::EncoderConfig;
use edge_runtime::engine::SectorUse;
use edge_runtime::model::{check_fits, model_info, trusted_keys, verify};
use serde_json::json;

/// A manifest for a small model. Built from JSON with only the fields a manifest must have, so
/// the test follows the schema rather than every optional field of the struct.
pub fn manifest(resolution: usize) -> Manifest {
    let probe = |kind: &str, n: usize| json!({"kind": kind, "embed_dim": 192, "num_heads": 3, "depth": 1, "num_outputs": n});
    let mut input = serde_json::to_value(InputSpec::reference(16, 2, resolution)).unwrap();
    input["sector"] = json!("crop_and_mask_outside");
    serde_json::from_value(json!({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": "bundle-test",
        "model_version": "7",
        "synthetic_training_data": true,
        "notice": "Trained on synthetic data. Not for diagnostic use.",
        "created_unix": 0,
        "tool": {"name": "edge-runtime tests", "version": "0"},
        "encoder": EncoderConfig::preset("vit_tiny").unwrap(),
        "input": input,
        "heads": [
            {"name": "view", "probe": probe("classifier", 3), "tensor_prefix": "probe.view",
             "classes": ["a4c", "a2c", "plax"]},
            {"name": "lvef", "probe": probe("regressor", 1), "tensor_prefix": "probe.lvef",
             "targets": [{"name": "lvef", "unit": "%", "scaler": {"mean": 55.0, "std": 10.0}}],
             "valid_views": ["a4c", "a2c"]},
        ],
        "weights": "model.gguf",
        "source": {"checkpoint": "ckpt.safetensors", "checkpoint_sha256": "00".repeat(32)},
        "quantization": {"container": "gguf", "linear_weights": "q8_0",
                         "other_tensors": "f32", "layers": []},
    }))
    .expect("the test manifest matches the bundle schema")
}

/// Writes a signed bundle (the weights file is filler: these tests stop before the model).
pub fn write_bundle(dir: &Path, key: &SecretKey, resolution: usize) {
    let b = BundleBuilder::create(dir).unwrap();
    std::fs::write(b.file_path("model.gguf").unwrap(), vec![7u8; 4096]).unwrap();
    b.finish(manifest(resolution), key).unwrap();
}

pub fn profile_trusting(hex: &str, max_resolution: u32) -> BoardProfile {
    let text = format!(
        r#"
name = "bundle-test-board"
description = "test"
[capture]
source = "phantom"
width = 320
height = 240
fps = 30.0
[model]
max_resolution = {max_resolution}
[compute]
device = "cpu"
precision = "int8"
[trust]
keys = [{{ name = "maker", ed25519 = "{hex}" }}]
"#
    );
    BoardProfile::from_toml_str(&text, "test.toml".into(), Some(".".into())).unwrap()
}

#[test]
fn absurd_rates_are_errors_naming_the_field_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed("maker", &[1; 32]);
    write_bundle(&tmp.path().join("b"), &key, 112);
    let board = profile_trusting(&key.public().hex(), 224);
    let keys = trusted_keys(&board).unwrap();
    let v = verify(&tmp.path().join("b"), &keys).unwrap();
    // the bundle gives a frame step: the reference rate turns it into an interval
    for bad in [0.0, -30.0, f64::NAN, f64::INFINITY, 1e-300] {
        let err = model_info(v.dir(), v.manifest(), bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--reference-fps"), "{bad}: {err}");
    }
    // a manifest whose own fps is absurd
    for bad in [1e-300, 0.0, -1.0, f64::NAN, 1e300] {
        let mut m = v.manifest().clone();
        m.input.fps = Some(bad);
        let err = model_info(v.dir(), &m, 30.0).unwrap_err().to_string();
        assert!(err.contains("input.fps"), "{bad}: {err}");
    }
}

#[test]
fn a_bundle_signed_by_a_trusted_key_gives_the_model_facts() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed("maker", &[1; 32]);
    write_bundle(&tmp.path().join("b"), &key, 112);
    let board = profile_trusting(&key.public().hex(), 224);
    let keys = trusted_keys(&board).unwrap();
    let v = verify(&tmp.path().join("b"), &keys).unwrap();
    let (info, plan) = model_info(v.dir(), v.manifest(), 30.0).unwrap();
    assert_eq!(info.model_id, "bundle-test");
    assert_eq!(info.model_version, "7");
    assert!(info.synthetic_training_data);
    assert_eq!(info.clip.frames, 16);
    // frame_step 2 at 30 fps.
    assert!((info.clip.interval.as_secs_f64() - 2.0 / 30.0).abs() < 1e-9);
    assert_eq!(info.clip.resolution, 112);
    assert_eq!(info.sector, SectorUse::CropAndMask);
    assert_eq!(info.view_classes, vec!["a4c", "a2c", "plax"]);
    let ef = info.ef.as_ref().unwrap();
    assert_eq!((ef.name.as_str(), ef.unit.as_str()), ("lvef", "%"));
    assert_eq!(ef.valid_views, vec!["a4c", "a2c"]);
    assert_eq!((plan.view_head, plan.ef_head), (0, Some((1, 0))));
    check_fits(v.dir(), &info, &board).unwrap();
    assert!(info.clip.span() > Duration::from_millis(900));
}

#[test]
fn a_tampered_bundle_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let key = SecretKey::from_seed("maker", &[1; 32]);
    write_bundle(&dir, &key, 112);
    let mut w = std::fs::read(dir.join("model.gguf")).unwrap();
    w[100] ^= 0x01;
    std::fs::write(dir.join("model.gguf"), w).unwrap();
    let keys = trusted_keys(&profile_trusting(&key.public().hex(), 224)).unwrap();
    let e = verify(&dir, &keys).unwrap_err().to_string();
    assert!(e.contains("model bundle refused"), "{e}");
    assert!(e.contains("model.gguf"), "{e}");
}

#[test]
fn a_bundle_signed_by_another_key_is_refused_naming_both_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let stranger = SecretKey::from_seed("stranger", &[9; 32]);
    write_bundle(&dir, &stranger, 112);
    let trusted = SecretKey::from_seed("maker", &[1; 32]);
    let keys = trusted_keys(&profile_trusting(&trusted.public().hex(), 224)).unwrap();
    let e = verify(&dir, &keys).unwrap_err().to_string();
    assert!(e.contains("not trusted"), "{e}");
    assert!(e.contains(&stranger.public().id()), "{e}");
    assert!(e.contains("maker"), "{e}");
}

#[test]
fn a_bundle_larger_than_the_board_allows_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed("maker", &[1; 32]);
    write_bundle(&tmp.path().join("b"), &key, 224);
    let board = profile_trusting(&key.public().hex(), 112);
    let keys = trusted_keys(&board).unwrap();
    let v = verify(&tmp.path().join("b"), &keys).unwrap();
    let (info, _) = model_info(v.dir(), v.manifest(), 30.0).unwrap();
    let e = check_fits(v.dir(), &info, &board).unwrap_err().to_string();
    assert!(e.contains("224") && e.contains("max_resolution 112"), "{e}");
    assert!(e.contains("bundle-test-board"), "{e}");
}

#[test]
fn key_files_are_read_relative_to_the_profile_and_bad_ones_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed("maker", &[1; 32]);
    std::fs::create_dir(tmp.path().join("keys")).unwrap();
    std::fs::write(
        tmp.path().join("keys/maker.pub"),
        key.public().to_file_text(),
    )
    .unwrap();
    std::fs::write(tmp.path().join("keys/broken.pub"), "not a key\n").unwrap();
    let write_profile = |file: &str| {
        let p = tmp.path().join("cart.toml");
        std::fs::write(
            &p,
            format!(
                "name = \"cart\"\ndescription = \"d\"\n[capture]\nsource = \"phantom\"\nwidth = 64\nheight = 64\nfps = 30.0\n[compute]\ndevice = \"cpu\"\nprecision = \"int8\"\n[trust]\nkeys = [{{ name = \"maker\", file = \"{file}\" }}]\n"
            ),
        )
        .unwrap();
        BoardProfile::from_file(&p).unwrap()
    };
    let keys = trusted_keys(&write_profile("keys/maker.pub")).unwrap();
    assert_eq!(keys[0].hex(), key.public().hex());
    let e = trusted_keys(&write_profile("keys/broken.pub"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("trust.keys[0]") && e.contains("maker"), "{e}");
    let e = trusted_keys(&write_profile("keys/missing.pub"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pub"), "{e}");
}
