//! The workspace's layering: each crate depends only on crates in lower layers; the cart's
//! link tool (`firmware-host`) carries no tensor library and no video decoder; the model crate
//! carries no video decoder; the input path carries neither. Read from `cargo metadata` and
//! `cargo tree`, so a new dependency that breaks it fails here.

use std::collections::BTreeMap;
use std::process::Command;

use e2e_tests::repo;

/// Bottom to top. A crate may use crates of lower layers only.
const LAYERS: [&[&str]; 5] = [
    &[
        "echojepa-kernels",
        "echojepa-input",
        "cli-log",
        "cart-protocol",
    ],
    &[
        "echojepa-bundle",
        "echojepa-video",
        "echojepa-phantom",
        "boards",
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

/// The normal (non-dev) dependency tree of `package`, one crate per line.
fn tree(package: &str) -> String {
    let out = cargo()
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const VIDEO_DECODERS: [&str; 6] = [
    "openh264",
    "rusty_h264",
    "mp4 ",
    "zune-jpeg",
    "ffmpeg",
    "dicom",
];

fn assert_links_none(package: &str, tree: &str, banned: &[&str]) {
    for b in banned {
        assert!(
            !tree.lines().any(|l| l.starts_with(b)),
            "{package} links {b}:\n{tree}"
        );
    }
}

#[test]
fn firmware_host_links_no_tensor_library_and_no_video_decoder() {
    let t = tree("firmware-host");
    assert!(t.contains("echojepa-bundle"), "{t}");
    assert_links_none("firmware-host", &t, &["candle", "echojepa v"]);
    assert_links_none("firmware-host", &t, &VIDEO_DECODERS);
}

#[test]
fn the_model_crate_links_no_video_decoder_and_the_input_path_no_tensors() {
    let t = tree("echojepa");
    assert!(t.contains("echojepa-input"), "{t}");
    assert_links_none("echojepa", &t, &VIDEO_DECODERS);
    assert_links_none("echojepa", &t, &["echojepa-video", "echojepa-phantom"]);
    let t = tree("echojepa-input");
    assert_links_none("echojepa-input", &t, &["candle", "echojepa-video"]);
    assert_links_none("echojepa-input", &t, &VIDEO_DECODERS);
}
