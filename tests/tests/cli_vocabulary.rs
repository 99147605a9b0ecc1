//! One command-line vocabulary across the four binaries: `--log LEVEL`, `-v` and `-q` are
//! accepted by each, and logs written to a pipe (journald, a file) carry no colour codes.

use std::process::Command;

use e2e_tests::{bin, repo};

#[test]
fn every_binary_takes_the_same_logging_flags() {
    for name in ["trainer", "quantize", "edge-runtime", "firmware-host"] {
        for flags in [
            &["--log", "warn"][..],
            &["-q"],
            &["-vv"],
            &["--log", "trainer=debug"],
        ] {
            let out = Command::new(bin(name))
                .args(flags)
                .arg("--version")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name} {flags:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = Command::new(bin(name)).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--log <LEVEL>")
                && help.contains("--quiet")
                && help.contains("--verbose"),
            "{name} --help: {help}"
        );
    }
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    // A config with an unknown key makes the trainer log a warning.
    let tmp = tempfile::tempdir().unwrap();
    let src =
        std::fs::read_to_string(repo().join("configs/quickstart/pretrain-tiny.yaml")).unwrap();
    let cfg = tmp.path().join("p.yaml");
    std::fs::write(&cfg, format!("{src}\nnot_a_reference_key: 1\n")).unwrap();
    let out = Command::new(bin("trainer"))
        .args(["pretrain", "--dry-run", "--config"])
        .arg(&cfg)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not_a_reference_key"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
    // -q hides the warning.
    let out = Command::new(bin("trainer"))
        .args(["-qq", "pretrain", "--dry-run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not_a_reference_key"));
}

/// A device the build cannot drive is refused before anything is read: the config named here
/// does not exist, and the error is about the device, not the file. (Set ECHOJEPA_TEST_CUDA on
/// a machine whose trainer is built with `--features cuda`, where cuda:0 is accepted.)
#[test]
fn a_device_the_build_cannot_use_is_refused_before_any_work() {
    if std::env::var_os("ECHOJEPA_TEST_CUDA").is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-config.yaml");
    for sub in ["pretrain", "probe", "evaluate", "finetune", "embed"] {
        let out = Command::new(bin("trainer"))
            .args([sub, "--devices", "cuda:0", "--config"])
            .arg(&missing)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "trainer {sub} accepted cuda:0");
        assert!(
            err.contains("--devices cuda:0") && err.contains("built without CUDA"),
            "trainer {sub}: {err}"
        );
        assert!(
            !err.contains("no-such-config"),
            "trainer {sub} read the config first: {err}"
        );
    }
}

/// Folders are written with `--out` in every binary (older names stay as aliases), and the
/// cart link's HMAC key is `--link-key`.
#[test]
fn folders_are_written_with_out_and_the_link_key_has_one_name() {
    for (name, sub) in [
        ("trainer", "pretrain"),
        ("trainer", "probe"),
        ("trainer", "finetune"),
        ("trainer", "embed"),
        ("trainer", "synth"),
        ("quantize", "keygen"),
        ("quantize", "build"),
    ] {
        let out = Command::new(bin(name))
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--out "),
            "{name} {sub} --help lacks --out:\n{help}"
        );
    }
    for sub in ["monitor", "status", "flash", "simulate"] {
        let out = Command::new(bin("firmware-host"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--link-key <FILE>"),
            "firmware-host {sub}:\n{help}"
        );
    }
}

/// The kernels' environment variables are read at each binary's edge: a value that means
/// nothing stops the binary with the variable named, instead of being ignored.
#[test]
fn a_bad_kernel_setting_in_the_environment_is_named() {
    let out = Command::new(bin("edge-runtime"))
        .args(["check", "--json"])
        .env("ECHOJEPA_INT8_ACTIVATIONS", "u6")
        .output()
        .unwrap();
    // `check --json` reports its verdict, the error included, as JSON on stdout.
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success());
    assert_eq!(verdict["healthy"], false);
    let err = verdict["error"].as_str().unwrap();
    assert!(
        err.contains("ECHOJEPA_INT8_ACTIVATIONS=\"u6\"") && err.contains("u8 or u7"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin("quantize"))
        .args(["keygen", "--name", "k", "--out"])
        .arg(tmp.path())
        .env("ECHOJEPA_THREADS", "many")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ECHOJEPA_THREADS=\"many\""), "{err}");
    let out = Command::new(bin("edge-runtime"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("ECHOJEPA_INT8_ATTENTION"), "{help}");
}
