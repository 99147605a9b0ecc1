//! `flash` and `slots` with real signed bundles (`echojepa_bundle::BundleBuilder`, ed25519):
//! install through the CLI, refuse tampered and foreign-signed bundles before writing anything,
//! power loss at every step with the real verifier, and telling the (simulated) MCU about the
//! new slot with an authenticated command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cart_protocol::Slot;
use echojepa_bundle::config::{EncoderConfig, ProbeConfig, ProbeKind};
use echojepa_bundle::{
    BundleBuilder, FORMAT, FORMAT_VERSION, HeadSpec, InputSpec, Manifest, Precision,
    QuantizationInfo, Scaler, SecretKey, SourceInfo, TargetSpec, ToolInfo,
};
use firmware_host::sim::{McuConfig, SimConfig, SimMcu};
use firmware_host::verify::SignedBundleVerifier;

use crate::slots::{power_loss_at_every_step, tree};
use crate::support::DEADLINE;

fn manifest(version: &str) -> Manifest {
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
        model_id: "test-view-ef".into(),
        model_version: version.into(),
        security_version: 0,
        not_after_unix: None,
        description: String::new(),
        synthetic_training_data: true,
        notice: "Trained on synthetic data. Not for diagnostic use.".into(),
        provenance: None,
        created_unix: 0,
        tool: ToolInfo {
            name: "firmware-host tests".into(),
            version: "0".into(),
        },
        encoder: EncoderConfig::preset("vit_tiny").unwrap(),
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

fn maker() -> SecretKey {
    SecretKey::from_seed("device-maker", &[7; 32])
}

/// A signed bundle `dir/version` (the weights are stand-in bytes: flashing only moves files).
fn signed_bundle(dir: &Path, version: &str, key: &SecretKey) -> PathBuf {
    signed_bundle_with(dir, version, key, 0)
}

/// A signed bundle with an anti-rollback security version.
fn signed_bundle_with(dir: &Path, version: &str, key: &SecretKey, security: u64) -> PathBuf {
    let path = dir.join(version);
    let b = BundleBuilder::create(&path).unwrap();
    let weights: Vec<u8> = version.bytes().cycle().take(20_000).collect();
    std::fs::write(b.file_path("model.gguf").unwrap(), weights).unwrap();
    let mut m = manifest(version);
    m.security_version = security;
    b.finish(m, key).unwrap();
    path
}

fn public_key_file(dir: &Path, key: &SecretKey) -> PathBuf {
    let p = dir.join(format!("{}.pub", key.name()));
    std::fs::write(&p, key.public().to_file_text()).unwrap();
    p
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firmware-host"))
}

#[test]
fn flash_installs_signed_bundles_and_refuses_tampered_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let key = maker();
    let pubkey = public_key_file(tmp.path(), &key);
    let v1 = signed_bundle(tmp.path(), "1", &key);
    let v2 = signed_bundle(tmp.path(), "2", &key);
    let slots = tmp.path().join("slots");
    let flash = |bundle: &Path| {
        bin()
            .arg("flash")
            .arg(bundle)
            .arg("--slots-dir")
            .arg(&slots)
            .arg("--trusted-key")
            .arg(&pubkey)
            .args([
                "--json",
                "--health-check",
                "test -s \"$ECHOJEPA_BUNDLE/model.gguf\"",
            ])
            .output()
            .unwrap()
    };
    for (b, slot) in [(&v1, "a"), (&v2, "b")] {
        let out = flash(b);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["installed"]["slot"], slot);
        assert_eq!(v["installed"]["health_checked"], true);
        assert!(
            v["installed"]["bundle"]["label"]
                .as_str()
                .unwrap()
                .contains("synthetic"),
            "the synthetic-data notice travels with the bundle"
        );
    }
    let before = tree(&slots);

    // One flipped byte in the weights: refused, naming the file; nothing written.
    let evil = signed_bundle(tmp.path(), "3", &key);
    let w = evil.join("model.gguf");
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[1234] ^= 0x40;
    std::fs::write(&w, bytes).unwrap();
    let out = flash(&evil);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("model.gguf"),
        "{err}"
    );
    assert_eq!(tree(&slots), before);

    // A bundle signed by a key the cart does not trust: refused, naming the key.
    let stranger = SecretKey::from_seed("stranger", &[9; 32]);
    let foreign = signed_bundle(tmp.path(), "4", &stranger);
    let out = flash(&foreign);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // the signature carries the key id, not the signer's chosen name
    let id = stranger.public().id();
    assert!(
        err.contains("refused") && err.contains("not trusted") && err.contains(&id),
        "{err}"
    );
    assert_eq!(tree(&slots), before);

    // `slots status` shows both, b current; `slots rollback` goes back to a.
    let out = bin()
        .args(["slots", "status", "--json", "--slots-dir"])
        .arg(&slots)
        .arg("--trusted-key")
        .arg(&pubkey)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["slots"][0]["current"], false);
    assert_eq!(st["slots"][1]["current"], true);
    assert!(
        st["slots"][0]["bundle"]["label"]
            .as_str()
            .unwrap()
            .contains("test-view-ef 1")
    );
    let out = bin()
        .args(["slots", "rollback", "--slots-dir"])
        .arg(&slots)
        .arg("--trusted-key")
        .arg(&pubkey)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("current: slot a"));
    let out = bin()
        .args(["slots", "recover", "--slots-dir"])
        .arg(&slots)
        .arg("--trusted-key")
        .arg(&pubkey)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn power_loss_at_every_step_with_signed_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let key = maker();
    let v = [
        signed_bundle(tmp.path(), "1", &key),
        signed_bundle(tmp.path(), "2", &key),
        signed_bundle(tmp.path(), "3", &key),
    ];
    let verifier = SignedBundleVerifier::new(vec![key.public()]);
    let scratch = tmp.path().join("carts");
    std::fs::create_dir(&scratch).unwrap();
    let (total, outcomes) = power_loss_at_every_step(&verifier, &v, &scratch);
    eprintln!("signed bundles: {total} write steps, booted {outcomes:?}");
}

#[test]
fn flash_tells_the_mcu_which_slot_is_active() {
    let tmp = tempfile::tempdir().unwrap();
    let key = maker();
    let pubkey = public_key_file(tmp.path(), &key);
    let cart_key = [0x33u8; 32];
    let key_file = tmp.path().join("cart.key");
    std::fs::write(&key_file, hex::encode(cart_key)).unwrap();
    let sim = SimMcu::spawn(SimConfig {
        mcu: McuConfig {
            key: cart_protocol::auth::CartKey::new(cart_key),
            active_slot: None,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let slots = tmp.path().join("slots");
    for (version, slot) in [("1", Slot::A), ("2", Slot::B)] {
        let b = signed_bundle(tmp.path(), version, &key);
        let out = bin()
            .arg("flash")
            .arg(&b)
            .arg("--slots-dir")
            .arg(&slots)
            .arg("--trusted-key")
            .arg(&pubkey)
            .arg("--no-health-check")
            .arg("--notify-mcu")
            .arg("--port")
            .arg(sim.port_path())
            .arg("--link-key")
            .arg(&key_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("MCU confirmed"));
        let snap = sim.snapshot(DEADLINE).unwrap();
        assert_eq!(snap.persistent.active_slot, Some(slot));
    }

    // With the wrong cart key the MCU refuses; flash says so (the bundle itself is installed).
    let wrong = tmp.path().join("wrong.key");
    std::fs::write(&wrong, hex::encode([0x44u8; 32])).unwrap();
    let b = signed_bundle(tmp.path(), "3", &key);
    let out = bin()
        .arg("flash")
        .arg(&b)
        .arg("--slots-dir")
        .arg(&slots)
        .arg("--trusted-key")
        .arg(&pubkey)
        .arg("--no-health-check")
        .arg("--notify-mcu")
        .arg("--port")
        .arg(sim.port_path())
        .arg("--link-key")
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not confirm") && err.contains("BadTag"),
        "{err}"
    );
    assert_eq!(
        sim.snapshot(DEADLINE).unwrap().persistent.active_slot,
        Some(Slot::B)
    );
}

/// The case: a correctly signed older bundle (2020.1.1) flashed over a newer one
/// (2026.11.28) was installed and committed. Now the older security version is refused before
/// anything is written, unless the operator forces it (logged in `audit.log`).
#[test]
fn flash_refuses_an_older_signed_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let key = maker();
    let pubkey = public_key_file(tmp.path(), &key);
    let new = signed_bundle_with(tmp.path(), "2026.11.28", &key, 4);
    let old = signed_bundle_with(tmp.path(), "2020.1.1", &key, 1);
    let slots = tmp.path().join("slots");
    let flash = |bundle: &Path, extra: &[&str]| {
        bin()
            .arg("flash")
            .arg(bundle)
            .arg("--slots-dir")
            .arg(&slots)
            .arg("--trusted-key")
            .arg(&pubkey)
            .args(["--health-check", "test -s \"$ECHOJEPA_BUNDLE/model.gguf\""])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = flash(&new, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = tree(&slots);
    let out = flash(&old, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("security version 1 is below 4") && err.contains("--allow-rollback"),
        "{err}"
    );
    assert_eq!(tree(&slots), before, "nothing written");

    // `slots status` shows the floor and which slot the policy would refuse.
    let out = bin()
        .args(["slots", "status", "--slots-dir"])
        .arg(&slots)
        .arg("--trusted-key")
        .arg(&pubkey)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("security floor 4 (set by test-view-ef 2026.11.28"),
        "{text}"
    );

    let out = flash(&old, &["--allow-rollback"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = std::fs::read_to_string(slots.join("audit.log")).unwrap();
    assert!(
        audit.contains("2020.1.1") && audit.contains("below 4"),
        "{audit}"
    );

    // Bad numbers are refused with the flag's name, not a panic.
    for bad in ["nan", "-3", "0", "1e300"] {
        let arg = format!("--health-timeout={bad}");
        let out = flash(&new, &[&arg]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--health-timeout"), "{bad}: {err}");
    }
}
