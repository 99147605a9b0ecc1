//! The `edge-runtime` binary: help, board listing and validation, and refusals of a bundle that
//! fails verification, each with a message that names what is wrong and a non-zero exit.

use std::path::Path;
use std::process::{Command, Output};

use echojepa::bundle::SecretKey;

use crate::bundle::write_bundle;

fn edge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-runtime"))
        .args(args)
        .env_remove("ECHOJEPA_BOARD")
        .env_remove("ECHOJEPA_BUNDLE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Rates from the command line that would make absurd frame intervals are usage errors (exit
/// 2) naming the flag, not panics (exit 101).
#[test]
fn absurd_rates_on_the_command_line_are_usage_errors() {
    for (cmd, flag, value) in [
        ("check", "--reference-fps", "0"),
        ("check", "--reference-fps", "-30"),
        ("check", "--reference-fps", "nan"),
        ("check", "--reference-fps", "1e-300"),
        ("run", "--fps", "inf"),
        ("run", "--view-fps", "0"),
    ] {
        let o = edge(&[cmd, &format!("{flag}={value}")]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

#[test]
fn help_explains_the_default_run() {
    let o = edge(&["--help"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    assert!(out.contains("synthetic echo phantom"), "{out}");
    assert!(out.contains("--serve"), "{out}");
    assert!(out.contains("bench"), "{out}");
}

#[test]
fn boards_lists_and_validates_profiles() {
    let o = edge(&["boards"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    for name in boards::BUILTIN_NAMES {
        assert!(out.contains(name), "{out}");
    }
    let o = edge(&["boards", "jetson-orin-nano"]);
    assert!(o.status.success());
    assert!(text(&o).0.contains("/dev/echojepa-mcu"));

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\ndescription = \"d\"\n[capture]\nsource = \"phantom\"\nwidth = 64\nheight = 64\nfps = 0.0\n[compute]\ndevice = \"cpu\"\nprecision = \"int8\"\n",
    )
    .unwrap();
    let o = edge(&["boards", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let (_, err) = text(&o);
    assert!(
        err.contains("capture.fps") && err.contains("bad.toml"),
        "{err}"
    );

    let o = edge(&["--board", "jetson-tx1"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("unknown board `jetson-tx1`"));
}

fn profile_for(dir: &Path, key: &SecretKey) -> std::path::PathBuf {
    let p = dir.join("board.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"cli-test\"\ndescription = \"d\"\n[capture]\nsource = \"phantom\"\nwidth = 64\nheight = 64\nfps = 30.0\n[compute]\ndevice = \"cpu\"\nprecision = \"int8\"\n[trust]\nkeys = [{{ name = \"maker\", ed25519 = \"{}\" }}]\n[bundles]\nslots_dir = \"slots\"\n",
            key.public().hex()
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_tampered_bundle_stops_the_runtime_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed("maker", &[1; 32]);
    let board = profile_for(tmp.path(), &key);
    let bundle = tmp.path().join("bundle");
    write_bundle(&bundle, &key, 112);
    let manifest = bundle.join("manifest.json");
    let edited = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"model_version\": \"7\"", "\"model_version\": \"8\"");
    std::fs::write(&manifest, edited).unwrap();
    for sub in [vec![], vec!["check"], vec!["bench", "--seconds", "1"]] {
        let mut args: Vec<&str> = sub.clone();
        args.extend([
            "--board",
            board.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
        ]);
        let o = edge(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let (_, err) = text(&o);
        assert!(err.contains("model bundle refused"), "{args:?}: {err}");
        assert!(err.contains("changed after signing"), "{args:?}: {err}");
    }
    let o = edge(&[
        "check",
        "--json",
        "--board",
        board.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
    assert_eq!(v["healthy"], false);
    assert!(v["error"].as_str().unwrap().contains("manifest.json"));
}

#[test]
fn a_missing_bundle_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed("maker", &[1; 32]);
    let board = profile_for(tmp.path(), &key);
    let o = edge(&["--board", board.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(
        err.contains("slots/current") && err.contains("--bundle"),
        "{err}"
    );
}

/// The README's main job: no arguments but a frame limit runs the phantom through the committed
/// demo bundle (verified against the generic-cpu profile's demo key) and prints predictions that
/// say they come from synthetic training data.
#[test]
fn the_default_run_uses_the_demo_bundle_and_says_it_is_synthetic() {
    let o = Command::new(env!("CARGO_BIN_EXE_edge-runtime"))
        .args(["--json", "--max-frames", "120"])
        .env_remove("ECHOJEPA_BUNDLE")
        .env_remove("ECHOJEPA_BOARD")
        .env_remove("ECHOJEPA_DEMO_BUNDLE")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines[0]["type"], "started");
    assert_eq!(lines[0]["board"], "generic-cpu");
    assert_eq!(lines[0]["model"]["id"], "echojepa-demo-phantom");
    let preds: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["type"] == "prediction").collect();
    assert!(preds.len() >= 5, "{} predictions", preds.len());
    for p in &preds {
        assert_eq!(p["synthetic_training_data"], true);
        assert!(p["notice"].as_str().unwrap().contains("synthetic"));
        assert!(p["view"]["label"].is_string());
    }
    // the demo view head knows the phantom: most clips get the true view
    let right = preds
        .iter()
        .filter(|p| p["view"]["label"] == p["truth"]["view"])
        .count();
    assert!(
        right * 2 > preds.len(),
        "{right} of {} views right",
        preds.len()
    );
}
