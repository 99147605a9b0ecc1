//! Tamper tests: every way a bundle can be damaged is refused with a message naming the file or
//! the key.

use super::*;
use crate::config::{EncoderConfig, ProbeConfig, ProbeKind};

fn key(name: &str, b: u8) -> SecretKey {
    SecretKey::from_seed(name, &[b; 32])
}

pub(super) fn manifest() -> Manifest {
    let enc = EncoderConfig::preset("vit_tiny").unwrap();
    let probe = |kind, n| ProbeConfig {
        kind,
        embed_dim: 192,
        num_heads: 3,
        depth: 1,
        num_outputs: n,
        mlp_ratio: 4.0,
        slots: None,
    };
    Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        model_id: "test-model".into(),
        model_version: "1".into(),
        security_version: 0,
        not_after_unix: None,
        description: String::new(),
        synthetic_training_data: true,
        notice: "Trained on synthetic data. Not for diagnostic use.".into(),
        provenance: None,
        created_unix: 0,
        tool: ToolInfo {
            name: "test".into(),
            version: "0".into(),
        },
        encoder: enc,
        input: InputSpec::reference(16, 2, 112),
        heads: vec![
            HeadSpec {
                name: "view".into(),
                task: None,
                probe: probe(ProbeKind::Classifier, 2),
                tensor_prefix: "probe.view".into(),
                classes: vec!["A4C".into(), "PLAX".into()],
                targets: vec![],
                valid_views: vec![],
                temperature: None,
                min_confidence: None,
            },
            HeadSpec {
                name: "lvef".into(),
                task: None,
                probe: probe(ProbeKind::Regressor, 1),
                tensor_prefix: "probe.lvef".into(),
                classes: vec![],
                targets: vec![TargetSpec {
                    name: "lvef".into(),
                    unit: "%".into(),
                    scaler: Scaler {
                        mean: 55.0,
                        std: 10.0,
                    },
                }],
                valid_views: vec!["A4C".into()],
                temperature: None,
                min_confidence: None,
            },
        ],
        lv_segmentation: None,
        notes: Default::default(),
        weights: "model.gguf".into(),
        source: SourceInfo {
            checkpoint: "ckpt.safetensors".into(),
            checkpoint_sha256: "00".repeat(32),
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
            layers: vec![],
        },
        files: BTreeMap::new(),
    }
}

/// A signed bundle with a weights file and an extra data file.
fn build(dir: &Path, k: &SecretKey) -> VerifiedBundle {
    let b = BundleBuilder::create(dir).unwrap();
    let w: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(b.file_path("model.gguf").unwrap(), &w).unwrap();
    std::fs::write(b.file_path("README.txt").unwrap(), b"synthetic demo\n").unwrap();
    b.finish(manifest(), k).unwrap()
}

fn err_text(r: Result<VerifiedBundle, BundleError>) -> String {
    r.expect_err("bundle must be refused").to_string()
}

#[test]
fn a_good_bundle_verifies_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let k = key("maker", 1);
    let v = build(&dir, &k);
    assert_eq!(v.manifest().files.len(), 2);
    let again = verify_bundle(&dir, &[key("other", 2).public(), k.public()]).unwrap();
    assert_eq!(again.signer().name(), "maker");
    assert_eq!(again.manifest(), v.manifest());
    assert_eq!(again.read_weights().unwrap().len(), 5000);
    assert_eq!(again.manifest_sha256().len(), 64);
}

#[test]
fn one_flipped_byte_in_any_file_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let k = key("maker", 1);
    build(&dir, &k);
    let trusted = [k.public()];
    for name in ["model.gguf", "README.txt", MANIFEST_FILE, SIGNATURE_FILE] {
        let path = dir.join(name);
        let orig = std::fs::read(&path).unwrap();
        // Every byte of the small files, a spread of the weights.
        let step = (orig.len() / 97).max(1);
        for pos in (0..orig.len()).step_by(step).chain([orig.len() - 1]) {
            for bit in [0x01u8, 0x80] {
                let mut bad = orig.clone();
                bad[pos] ^= bit;
                std::fs::write(&path, &bad).unwrap();
                let msg = err_text(verify_bundle(&dir, &trusted));
                let names_it =
                    msg.contains(name) || (name == MANIFEST_FILE && msg.contains(SIGNATURE_FILE));
                assert!(
                    names_it,
                    "{name} byte {pos}: `{msg}` does not name the file"
                );
            }
        }
        std::fs::write(&path, &orig).unwrap();
        verify_bundle(&dir, &trusted).unwrap();
    }
}

#[test]
fn manifest_edited_after_signing_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let k = key("maker", 1);
    build(&dir, &k);
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    // A semantically meaningful edit that keeps valid JSON and the same file hashes.
    let edited = text.replace("\"mean\": 55.0", "\"mean\": 65.0");
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    let msg = err_text(verify_bundle(&dir, &[k.public()]));
    assert!(
        msg.contains("manifest.json does not match the signature"),
        "{msg}"
    );
    assert!(msg.contains("`maker`"), "{msg}");
    // Re-signing with an untrusted key does not help.
    let mallory = key("mallory", 9);
    resign_bundle(&dir, &mallory).unwrap();
    let msg = err_text(verify_bundle(&dir, &[k.public()]));
    assert!(msg.contains(&mallory.public().id()), "{msg}");
    // Re-signing with the trusted key (a reviewed edit) is accepted.
    resign_bundle(&dir, &k).unwrap();
    let v = verify_bundle(&dir, &[k.public()]).unwrap();
    assert_eq!(v.manifest().heads[1].targets[0].scaler.mean, 65.0);
}

#[test]
fn untrusted_key_is_refused_naming_signer_and_trusted_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let signer = key("maker", 1);
    build(&dir, &signer);
    let cart_key = key("cart-fleet", 3);
    let msg = err_text(verify_bundle(&dir, &[cart_key.public()]));
    assert!(msg.contains("not trusted"), "{msg}");
    assert!(msg.contains(&signer.public().id()), "{msg}");
    assert!(msg.contains(&signer.public().hex()), "{msg}");
    assert!(msg.contains("`cart-fleet`"), "{msg}");
    let msg = err_text(verify_bundle(&dir, &[]));
    assert!(msg.contains("no trusted keys"), "{msg}");
}

#[test]
fn missing_extra_and_unsigned_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let k = key("maker", 1);
    build(&dir, &k);
    let trusted = [k.public()];

    std::fs::write(dir.join("extra.bin"), b"x").unwrap();
    let msg = err_text(verify_bundle(&dir, &trusted));
    assert!(
        msg.contains("`extra.bin`") && msg.contains("not in the signed manifest"),
        "{msg}"
    );
    std::fs::remove_file(dir.join("extra.bin")).unwrap();

    std::fs::create_dir(dir.join("sub")).unwrap();
    let msg = err_text(verify_bundle(&dir, &trusted));
    assert!(msg.contains("`sub`"), "{msg}");
    std::fs::remove_dir(dir.join("sub")).unwrap();

    std::fs::rename(dir.join("README.txt"), tmp.path().join("r")).unwrap();
    let msg = err_text(verify_bundle(&dir, &trusted));
    assert!(
        msg.contains("`README.txt`") && msg.contains("missing"),
        "{msg}"
    );
    std::fs::rename(tmp.path().join("r"), dir.join("README.txt")).unwrap();

    // Truncation is a size mismatch naming the file.
    let w = std::fs::read(dir.join("model.gguf")).unwrap();
    std::fs::write(dir.join("model.gguf"), &w[..w.len() - 1]).unwrap();
    let msg = err_text(verify_bundle(&dir, &trusted));
    assert!(msg.contains("`model.gguf` has 4999 bytes"), "{msg}");
    std::fs::write(dir.join("model.gguf"), &w).unwrap();

    std::fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap();
    let msg = err_text(verify_bundle(&dir, &trusted));
    assert!(msg.contains("manifest.sig is missing"), "{msg}");

    let msg = err_text(verify_bundle(tmp.path().join("nope"), &trusted));
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn a_file_swapped_after_verification_is_refused_on_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let k = key("maker", 1);
    let v = build(&dir, &k);
    let mut w = std::fs::read(dir.join("model.gguf")).unwrap();
    w[10] ^= 4;
    std::fs::write(dir.join("model.gguf"), &w).unwrap();
    let msg = v.read_weights().unwrap_err().to_string();
    assert!(msg.contains("`model.gguf` is corrupt or tampered"), "{msg}");
}

#[test]
fn key_files_round_trip_and_refuse_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let k = SecretKey::generate("release-2026").unwrap();
    let (s, p) = (tmp.path().join("k.secret"), tmp.path().join("k.pub"));
    k.write_new(&s, &p).unwrap();
    let k2 = SecretKey::load(&s).unwrap();
    let p2 = PublicKey::load(&p).unwrap();
    assert_eq!(k2.public(), k.public());
    assert_eq!(p2, k.public());
    assert_eq!(p2.name(), "release-2026");
    assert_eq!(PublicKey::from_hex("x", &p2.hex()).unwrap().id(), p2.id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let msg = k
        .write_new(&s, &tmp.path().join("other.pub"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("already exists"), "{msg}");
    // A secret key file is not a public key.
    let msg = PublicKey::load(&s).unwrap_err().to_string();
    assert!(
        msg.contains("k.secret") && msg.contains("secret-key"),
        "{msg}"
    );
    let msg = PublicKey::from_hex("bad", "zz").unwrap_err().to_string();
    assert!(msg.contains("`bad`"), "{msg}");
}

#[test]
fn builder_refuses_non_empty_output_and_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"x").unwrap();
    let msg = BundleBuilder::create(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("already exists"), "{msg}");
    let b = BundleBuilder::create(tmp.path().join("new")).unwrap();
    assert!(b.file_path("../evil").is_err());
    assert!(b.file_path(".hidden").is_err());
    assert!(b.file_path(MANIFEST_FILE).is_err());
    // The weights file must exist.
    let msg = b.finish(manifest(), &key("k", 1)).unwrap_err().to_string();
    assert!(msg.contains("model.gguf"), "{msg}");
}

/// A correctly signed manifest whose numbers cannot be used (a frame rate of 1e-300 would panic
/// as a duration) is refused at verification, naming the field.
#[test]
fn signed_manifest_with_absurd_input_numbers_is_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let k = key("maker", 1);
    type Edit = fn(&mut Manifest);
    let cases: [(&str, Edit); 6] = [
        ("input.fps", |m| m.input.fps = Some(1e-300)),
        ("input.fps", |m| m.input.fps = Some(1e300)),
        ("input.fps", |m| m.input.fps = Some(-30.0)),
        ("input.frames", |m| m.input.frames = 0),
        ("input.std[1]", |m| m.input.std[1] = 0.0),
        ("input.resolution[0]", |m| m.input.resolution[0] = 1 << 20),
    ];
    for (i, (field, edit)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("b{i}"));
        build(&dir, &k);
        let path = dir.join(MANIFEST_FILE);
        let mut m: Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut m);
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        resign_bundle(&dir, &k).unwrap();
        let msg = err_text(verify_bundle(&dir, &[k.public()]));
        assert!(msg.contains(field), "{field}: {msg}");
    }
}
