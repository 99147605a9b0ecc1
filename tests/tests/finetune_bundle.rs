//! A fine-tuned model goes to the cart unchanged: `trainer finetune` (test-sized, on the
//! streamed phantom) → `quantize build` → `quantize verify` → `edge-runtime bench`. The view
//! head's fitted temperature and EF confidence threshold, and the EF head's views, must reach
//! the signed manifest, and the runtime must apply the stricter of the bundle's and the board
//! profile's EF thresholds. The LV decoder reaches the bundle, and the runtime measures EF from
//! the traced LV.

use std::process::Command;

use e2e_tests::{bin, repo, run};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const CONFIG: &str = "app: vjepa
eval_name: finetune
folder: runs
tag: cart
model_kwargs:
  pretrain_kwargs:
    encoder: {checkpoint_key: target_encoder, model_name: vit_tiny, embed_dim: 32, depth: 2, num_heads: 2, patch_size: 16, tubelet_size: 2}
experiment:
  classifier: {num_heads: 2, num_probe_blocks: 1}
  data: {dataset_type: PhantomStream, resolution: 32, frames_per_clip: 4, frame_step: 2}
  optimization: {batch_size: 3, num_epochs: 1, seed: 9}
finetune:
  init: random
  steps_per_epoch: 2
  lr: 1.0e-3
  encoder_lr: 1.0e-3
  val_clips: 12
  test_clips: 6
  lv_scans: 6
  scan_clips: 3
  heads:
  - {name: view, task: view}
  - {name: ef, task: ef, views: [a4c, a2c]}
  - {name: lv, task: lv_segmentation}
  phantom: {width: 64, height: 48, fps: 30}
";

#[test]
fn a_fine_tuned_checkpoint_becomes_a_bundle_the_cart_runs_with_its_calibration() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("ft.yaml"), CONFIG).unwrap();
    run(Command::new(bin("trainer"))
        .args(["finetune", "--config", "ft.yaml"])
        .current_dir(w));
    let ck = json(&std::fs::read_to_string(w.join("runs/finetune/cart/latest.json")).unwrap());
    let temperature = ck["probes"]["view"]["temperature"].as_f64();
    let min_conf = ck["probes"]["view"]["min_confidence"].as_f64();
    assert!(temperature.is_some() && min_conf.is_some(), "{ck}");

    let keys = repo().join("edge-runtime/demo/keys");
    run(Command::new(bin("quantize"))
        .args([
            "build",
            "--checkpoint",
            "runs/finetune/cart/latest",
            "--model-id",
            "finetune-test",
            "--model-version",
            "2026.12.6",
            "--synthetic",
            "--calibration-clips",
            "2",
            "--ef-from",
            "traced-lv",
            "--key",
        ])
        .arg(keys.join("echojepa-demo.secret"))
        .args(["--out", "bundle"])
        .current_dir(w));
    run(Command::new(bin("quantize"))
        .args(["verify", "bundle", "--key"])
        .arg(keys.join("echojepa-demo.pub"))
        .current_dir(w));
    let manifest = json(&std::fs::read_to_string(w.join("bundle/manifest.json")).unwrap());
    let head = |name: &str| {
        manifest["heads"]
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no head `{name}` in {manifest}"))
    };
    assert_eq!(head("view")["temperature"].as_f64(), temperature);
    assert_eq!(head("view")["min_confidence"].as_f64(), min_conf);
    assert_eq!(head("ef")["valid_views"], serde_json::json!(["a4c", "a2c"]));
    assert_eq!(manifest["synthetic_training_data"], true);
    // The LV decoder travels with its views and the calibration line fitted on validation scans.
    let lv = &manifest["lv_segmentation"];
    assert_eq!(lv["tensor_prefix"], "lv_head", "{manifest}");
    assert_eq!(lv["valid_views"], serde_json::json!(["a4c", "a2c"]));
    assert_eq!(lv["ef_fit"], ck["lv_head"]["ef_fit"], "{ck}");

    // The generic board profile with its EF threshold at 0.05 and at 0.95: the runtime must
    // take the bundle's when that is stricter, the board's otherwise.
    let profile = std::fs::read_to_string(repo().join("boards/profiles/generic-cpu.toml")).unwrap();
    let bundle_th = min_conf.unwrap();
    assert!(
        bundle_th > 0.05 && bundle_th < 0.95,
        "the test needs a bundle threshold between the two board values, got {bundle_th}"
    );
    for board_th in [0.05f64, 0.95] {
        let text = profile.replace(
            "ef_min_confidence = 0.6",
            &format!("ef_min_confidence = {board_th}"),
        );
        assert_ne!(
            text, profile,
            "the generic profile no longer sets ef_min_confidence = 0.6"
        );
        let board = w.join(format!("board-{board_th}.toml"));
        std::fs::write(&board, text).unwrap();
        let out = run(Command::new(bin("edge-runtime"))
            .args([
                "bench",
                "--fast",
                "--seconds",
                "2",
                "--size",
                "64x48",
                "--json",
                "--board",
            ])
            .arg(&board)
            .arg("--bundle")
            .arg(w.join("bundle"))
            .current_dir(w));
        let report = json(&out);
        // EF comes from the traced LV, beat by beat (`--ef-from traced-lv`)
        assert!(
            report["ef"]["method"].get("traced_lv").is_some(),
            "{report}"
        );
        let used = report["ef_min_confidence"].as_f64().unwrap();
        let want = board_th.max(bundle_th);
        assert!(
            (used - want).abs() < 1e-6,
            "board {board_th}, bundle {bundle_th}: the runtime used {used}, expected {want}"
        );
    }
}
