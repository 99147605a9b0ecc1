//! The workspace's layering: each crate depends only on crates in lower layers, and the cart's
//! link tool (`firmware-host`) carries no tensor library and no video decoder. Read from
//! `cargo metadata` and `cargo tree`, so a new dependency that breaks it fails here.

use std::collections::BTreeMap;
use std::process::Command;

use e2e_tests::repo;

/// Bottom to top. A crate may use crates of lower layers only.
const LAYERS: [&[&str]; 4] = [
    &[
        "echojepa-kernels",
        "echojepa-bundle",
        "cli-log",
        "boards",
        "cart-protocol",
    ],
    &["echojepa", "firmware-host"],
    &["trainer", "quantize", "edge-runtime"],
    &["e2e-tests", "echojepa-fuzz"],
];

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(repo());
    c
}

#[test]
fn no_crate_uses_a_crate_above_it() {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layer: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (*n, i)))
        .collect();
    let packages = meta["packages"].as_array().unwrap();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let Some(&mine) = layer.get(name) else {
            panic!("workspace crate {name} has no layer in tests/tests/layering.rs");
        };
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            let dev = d["kind"].as_str() == Some("dev");
            if let Some(&theirs) = layer.get(dep)
                && !dev
            {
                assert!(
                    theirs < mine,
                    "{name} (layer {mine}) depends on {dep} (layer {theirs}): only lower layers"
                );
            }
        }
    }
}

#[test]
fn firmware_host_links_no_tensor_library_and_no_video_decoder() {
    let out = cargo()
        .args([
            "tree",
            "-p",
            "firmware-host",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("echojepa-bundle"), "{tree}");
    for banned in [
        "candle",
        "openh264",
        "rusty_h264",
        "mp4 ",
        "zune-jpeg",
        "ffmpeg",
        "dicom",
        "echojepa v",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(banned)),
            "firmware-host links {banned}:\n{tree}"
        );
    }
}
