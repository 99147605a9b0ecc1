//! The deployment path as a device maker runs it, across the real binaries: a plain
//! `firmware-host flash` runs `edge-runtime check` on the new slot and rolls back a signed bundle
//! the runtime cannot run; an older security version is refused by `flash` and by the runtime
//! itself (the floor the slots recorded), unless the operator overrides it.
//!
//! The bundles are the committed demo bundle (signed with the demo key, which the default board
//! `generic-cpu` trusts) and copies of it changed and re-signed with the demo key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e_tests::{bin, repo, run};
use echojepa::bundle::{SecretKey, resign_bundle, sha256_file};

fn demo_key() -> SecretKey {
    SecretKey::load(&repo().join("edge-runtime/demo/keys/echojepa-demo.secret")).unwrap()
}

/// A copy of the demo bundle in `dir/name`, with `edit` applied to its manifest (as JSON) and
/// to its files, re-hashed and re-signed with the demo key.
fn demo_copy(dir: &Path, name: &str, edit: impl FnOnce(&Path, &mut serde_json::Value)) -> PathBuf {
    let src = repo().join("edge-runtime/demo/bundle");
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let mpath = dst.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    edit(&dst, &mut m);
    let names: Vec<String> = m["files"].as_object().unwrap().keys().cloned().collect();
    for f in names {
        let (sha, bytes) = sha256_file(&dst.join(&f)).unwrap();
        m["files"][&f] = serde_json::json!({"sha256": sha, "bytes": bytes});
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    resign_bundle(&dst, &demo_key()).unwrap();
    dst
}

fn flash(bundle: &Path, slots: &Path, extra: &[&str]) -> Output {
    Command::new(bin("firmware-host"))
        .arg("flash")
        .arg(bundle)
        .arg("--slots-dir")
        .arg(slots)
        .arg("--trusted-key")
        .arg(repo().join("edge-runtime/demo/keys/echojepa-demo.pub"))
        .arg("--json")
        .args(extra)
        .env_remove("ECHOJEPA_BOARD")
        .env_remove("ECHOJEPA_BUNDLE")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_plain_flash_rolls_back_a_bundle_the_runtime_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let slots = tmp.path().join("slots");
    let good = demo_copy(tmp.path(), "good", |_, m| {
        m["model_version"] = "good".into();
    });
    // Authentic (signed, every hash right) but not a model: the weights are cut short.
    let broken = demo_copy(tmp.path(), "broken", |dir, m| {
        m["model_version"] = "broken".into();
        let w = dir.join("model.gguf");
        let bytes = std::fs::read(&w).unwrap();
        std::fs::write(&w, &bytes[..bytes.len() / 3]).unwrap();
    });

    let out = flash(&good, &slots, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["installed"]["health_checked"], true,
        "the default check ran"
    );

    let out = flash(&broken, &slots, &[]);
    assert!(!out.status.success(), "a broken bundle was committed");
    let err = text(&out.stderr);
    assert!(
        err.contains("health check") && err.contains("rolled back to a"),
        "{err}"
    );
    let current = std::fs::read_link(slots.join("current")).unwrap();
    assert_eq!(current, Path::new("a"));
    let m = std::fs::read_to_string(slots.join("current/manifest.json")).unwrap();
    assert!(m.contains("\"good\""), "the good bundle runs: {m}");
}

#[test]
fn the_runtime_and_flash_refuse_an_older_security_version() {
    let tmp = tempfile::tempdir().unwrap();
    let slots = tmp.path().join("slots");
    let new = demo_copy(tmp.path(), "new", |_, m| {
        m["model_version"] = "2026.11.28".into();
        m["security_version"] = 5.into();
    });
    let old = demo_copy(tmp.path(), "old", |_, m| {
        m["model_version"] = "2020.1.1".into();
        m["security_version"] = 2.into();
    });
    let out = flash(&new, &slots, &["--no-health-check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = flash(&old, &slots, &["--no-health-check"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("security version 2 is below 5"));

    // The runtime, on a board whose slots directory holds the floor, refuses the old bundle
    // wherever it is loaded from, and runs it when the operator overrides.
    let board = tmp.path().join("cart.toml");
    let generic = std::fs::read_to_string(repo().join("boards/profiles/generic-cpu.toml")).unwrap();
    let profile = generic
        .replace("name = \"generic-cpu\"", "name = \"test-cart\"")
        .replace(
            "slots_dir = \"/var/lib/echojepa/bundles\"",
            &format!("slots_dir = {:?}", slots.display().to_string()),
        );
    assert_ne!(profile, generic);
    std::fs::write(&board, profile).unwrap();
    let check = |bundle: &Path, extra: &[&str]| {
        Command::new(bin("edge-runtime"))
            .arg("check")
            .arg("--board")
            .arg(&board)
            .arg("--bundle")
            .arg(bundle)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = check(&old, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("below 5") && err.contains("--allow-rollback"),
        "{err}"
    );
    run(Command::new(bin("edge-runtime"))
        .arg("check")
        .arg("--board")
        .arg(&board)
        .arg("--bundle")
        .arg(&new));
    let out = check(&old, &["--allow-rollback"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // An expired bundle is refused by quantize verify's report and by the runtime.
    let expired = demo_copy(tmp.path(), "expired", |_, m| {
        m["security_version"] = 5.into();
        m["not_after_unix"] = 86_399.into();
    });
    let out = check(&expired, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("expired at 1970-01-01 23:59:59 UTC"));
    let v = run(Command::new(bin("quantize"))
        .arg("verify")
        .arg(&old)
        .arg("--key")
        .arg(repo().join("edge-runtime/demo/keys/echojepa-demo.pub"))
        .arg("--slots-dir")
        .arg(&slots)
        .arg("--json"));
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["ok"], true, "old bundles still verify, for audits");
    assert_eq!(v["security_version"], 2);
    assert_eq!(v["security_floor"], 5);
    assert!(
        v["floor_relation"]
            .as_str()
            .unwrap()
            .contains("below the floor")
    );
}
