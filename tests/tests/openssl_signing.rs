//! A bundle signed with `openssl pkeyutl` on an OpenSSL-generated Ed25519 key is accepted by
//! every place that checks bundles: `quantize verify`, `edge-runtime check` (the key trusted by
//! its PEM file in a board profile) and `firmware-host flash` (with its default health check,
//! which is `edge-runtime check` on the same board).

use std::path::Path;
use std::process::Command;

use e2e_tests::{bin, repo, run};

fn openssl(args: &[&str], paths: &[&Path]) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).args(paths);
    run(&mut cmd);
}

#[test]
fn a_bundle_signed_by_openssl_is_accepted_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (sk, pk) = (t.join("maker.pem"), t.join("maker-pub.pem"));
    openssl(&["genpkey", "-algorithm", "ed25519", "-out"], &[&sk]);
    let mut c = Command::new("openssl");
    c.arg("pkey")
        .arg("-in")
        .arg(&sk)
        .arg("-pubout")
        .arg("-out")
        .arg(&pk);
    run(&mut c);

    // The demo model's files with its manifest, unsigned, then signed by openssl.
    let bundle = t.join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    for f in ["manifest.json", "model.gguf"] {
        std::fs::copy(
            repo().join("edge-runtime/demo/bundle").join(f),
            bundle.join(f),
        )
        .unwrap();
    }
    let sig = t.join("manifest.sig.bin");
    let mut c = Command::new("openssl");
    c.args(["pkeyutl", "-sign", "-rawin", "-inkey"])
        .arg(&sk)
        .arg("-in")
        .arg(bundle.join("manifest.json"))
        .arg("-out")
        .arg(&sig);
    run(&mut c);
    run(Command::new(bin("quantize"))
        .arg("sign")
        .arg(&bundle)
        .arg("--signature")
        .arg(&sig)
        .arg("--public-key")
        .arg(&pk));

    run(Command::new(bin("quantize"))
        .arg("verify")
        .arg(&bundle)
        .arg("--key")
        .arg(&pk));

    // A board that trusts only the openssl key, by its PEM file.
    let slots = t.join("slots");
    let generic = std::fs::read_to_string(repo().join("boards/profiles/generic-cpu.toml")).unwrap();
    let start = generic.find("[trust]").unwrap();
    let end = start + generic[start..].find("[bundles]").unwrap();
    let profile = format!(
        "{}[trust]\nkeys = [ {{ name = \"maker\", file = \"maker-pub.pem\" }} ]\n\n{}",
        &generic[..start],
        &generic[end..]
    )
    .replace("name = \"generic-cpu\"", "name = \"openssl-cart\"")
    .replace(
        "slots_dir = \"/var/lib/echojepa/bundles\"",
        &format!("slots_dir = {:?}", slots.display().to_string()),
    );
    let board = t.join("cart.toml");
    std::fs::write(&board, profile).unwrap();

    let out = run(Command::new(bin("edge-runtime"))
        .arg("check")
        .arg("--board")
        .arg(&board)
        .arg("--bundle")
        .arg(&bundle)
        .arg("--json"));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["healthy"], true, "{v}");

    let out = run(Command::new(bin("firmware-host"))
        .arg("flash")
        .arg(&bundle)
        .arg("--board")
        .arg(&board)
        .arg("--json")
        .env_remove("ECHOJEPA_BOARD"));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["installed"]["health_checked"], true, "{v}");
    assert_eq!(v["installed"]["slot"], "a");

    // The demo key does not sign for this board: the demo bundle as shipped is refused.
    let out = Command::new(bin("edge-runtime"))
        .arg("check")
        .arg("--board")
        .arg(&board)
        .arg("--bundle")
        .arg(repo().join("edge-runtime/demo/bundle"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not trusted"));
}
