//! `trainer finetune` through the real binary on a test-sized encoder and the streamed
//! phantom: the run writes a checkpoint whose probes carry their calibration and whose notes say
//! the data is synthetic; a run stopped half-way and resumed ends with bit-identical weights;
//! a fine-tuned checkpoint is a valid starting point for another run; bad settings are refused
//! with the key at fault.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn trainer(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .env("RUST_LOG", "warn")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run trainer")
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let o = trainer(args, cwd);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "trainer {args:?} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ft-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 2-block 32-wide encoder on 4 frames of 32 px (2 x 2 x 2 tokens), clips rendered at 64x48.
fn yaml(folder: &str, init: &str, checkpoint: Option<&str>, extra: &str) -> String {
    let ck = checkpoint.map_or(String::new(), |c| format!("  checkpoint: {c}\n"));
    format!(
        "app: vjepa\neval_name: finetune\nfolder: {folder}\ntag: t\n\
         model_kwargs:\n{ck}  pretrain_kwargs:\n    encoder:\n      checkpoint_key: target_encoder\n      \
         model_name: vit_tiny\n      embed_dim: 32\n      depth: 2\n      num_heads: 2\n      patch_size: 16\n      tubelet_size: 2\n\
         experiment:\n  classifier: {{num_heads: 2, num_probe_blocks: 1}}\n  \
         data: {{dataset_type: PhantomStream, resolution: 32, frames_per_clip: 4, frame_step: 2}}\n  \
         optimization: {{batch_size: 3, num_epochs: 2, seed: 5}}\n\
         finetune:\n  init: {init}\n  steps_per_epoch: 2\n  lr: 1.0e-3\n  encoder_lr: 5.0e-4\n  layer_decay: 0.7\n  \
         warmup_epochs: 0.5\n  drop_path: 0.2\n  clip_grad: 1.0\n  ema: 0.9\n  val_clips: 6\n  test_clips: 6\n  heads:\n  \
         - {{name: view, task: view}}\n  - {{name: ef, task: ef, views: [a4c, a2c]}}\n  \
         - {{name: lv, task: lv_segmentation, views: [a4c, a2c]}}\n  \
         phantom: {{width: 64, height: 48, fps: 30, perturb_prob: 0.5}}\n{extra}"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_run_writes_a_calibrated_synthetic_checkpoint_and_resumes_exactly() {
    let dir = tmp("run");
    let cfg = write(&dir, "ft.yaml", &yaml("runs", "random", None, ""));
    let cfg = cfg.to_str().unwrap();
    let out = ok(&["finetune", "--config", cfg], &dir);
    assert!(out.contains("SYNTHETIC"), "{out}");
    let run = dir.join("runs/finetune/t");
    for f in [
        "latest.safetensors",
        "latest.json",
        "metrics.csv",
        "curves.png",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let ck = json(&run.join("latest.json"));
    let view = &ck["probes"]["view"];
    let t = view["temperature"].as_f64().expect("view temperature");
    assert!(t > 0.0 && t.is_finite(), "{t}");
    let th = view["min_confidence"].as_f64().expect("EF threshold");
    assert!((0.0..1.0).contains(&th), "{th}");
    assert_eq!(view["classes"].as_array().unwrap().len(), 6);
    assert_eq!(
        ck["probes"]["ef"]["valid_views"],
        serde_json::json!(["a4c", "a2c"])
    );
    assert!(ck["probes"]["ef"]["scaler"]["std"].as_f64().unwrap() > 1.0);
    assert!(
        ck["notes"]["training_data"]
            .as_str()
            .unwrap()
            .contains("SYNTHETIC")
    );
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["synthetic_training_data"], true);
    assert_eq!(summary["steps"], 4);
    assert!(summary["test"]["ef_mean_predictor_mae"].as_f64().is_some());
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");

    // the same run in two invocations: bit-identical weights and optimizer state
    let cfg2 = write(&dir, "ft2.yaml", &yaml("runs2", "random", None, ""));
    let cfg2 = cfg2.to_str().unwrap();
    let first = ok(&["finetune", "--config", cfg2, "--max-steps", "3"], &dir);
    assert!(first.contains("stopped at step 3"), "{first}");
    let second = ok(&["finetune", "--config", cfg2], &dir);
    assert!(second.contains("resuming"), "{second}");
    let run2 = dir.join("runs2/finetune/t");
    for f in [
        "latest.live.safetensors",
        "latest.safetensors",
        "latest.train.safetensors",
    ] {
        assert!(
            std::fs::read(run.join(f)).unwrap() == std::fs::read(run2.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
    let a = json(&run.join("summary.json"));
    let b = json(&run2.join("summary.json"));
    assert_eq!(a["test"], b["test"]);

    // a damaged resume state is named, not trusted
    std::fs::write(run2.join("latest.train.json"), "{ not json").unwrap();
    let o = trainer(&["finetune", "--config", cfg2], &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("latest.train.json"),
        "{err}"
    );
    std::fs::write(
        run2.join("latest.train.json"),
        serde_json::to_string(&json(&run.join("latest.train.json"))).unwrap(),
    )
    .unwrap();
    std::fs::write(run2.join("latest.train.safetensors"), b"garbage").unwrap();
    let o = trainer(&["finetune", "--config", cfg2], &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("latest.train.safetensors")
            && !err.contains("panicked"),
        "{err}"
    );

    // a fine-tuned checkpoint starts another run
    let ck_path = run.join("latest");
    let cfg3 = write(
        &dir,
        "ft3.yaml",
        &yaml("runs3", "pretrained", Some(ck_path.to_str().unwrap()), ""),
    );
    let out = ok(&["finetune", "--config", cfg3.to_str().unwrap()], &dir);
    assert!(out.contains("latest (target_encoder)"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_settings_name_the_key() {
    let dir = tmp("bad");
    let cases = [
        (
            yaml("r", "random", None, "").replace(
                "phantom: {",
                "phantom: {val_seeds: {start: 4294967300, count: 10}, ",
            ),
            "overlaps",
        ),
        (
            yaml("r", "random", None, "").replace("drop_path: 0.2", "drop_path: 1.5"),
            "finetune.drop_path",
        ),
        (yaml("r", "pretrained", None, ""), "model_kwargs.checkpoint"),
        (
            yaml("r", "random", None, "").replace("task: ef,", "task: volume,"),
            "finetune.heads",
        ),
        (
            yaml("r", "random", None, "").replace("steps_per_epoch: 2", "steps_per_epoch: 0"),
            "steps_per_epoch",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let cfg = write(&dir, &format!("bad{i}.yaml"), text);
        let o = trainer(&["finetune", "--config", cfg.to_str().unwrap()], &dir);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "case {i} was accepted");
        assert!(err.contains(want), "case {i}: wanted `{want}` in:\n{err}");
        assert!(!err.contains("panicked"), "case {i} panicked:\n{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pretraining_reads_the_phantom_stream_and_resumes_on_the_same_clips() {
    let dir = tmp("pre");
    let yaml = |folder: &str| {
        format!(
            "app: vjepa\nfolder: {folder}\n\
             data:\n  dataset_type: PhantomStream\n  batch_size: 2\n  crop_size: 32\n  dataset_fpcs: [4]\n  frame_step: 2\n  \
             phantom: {{width: 64, height: 48, fps: 30}}\n\
             data_aug: {{random_resize_aspect_ratio: [0.9, 1.1], random_resize_scale: [0.7, 1.0]}}\n\
             loss: {{loss_exp: 1.0}}\n\
             mask:\n- {{aspect_ratio: [0.75, 1.5], num_blocks: 2, spatial_scale: [0.3, 0.3], temporal_scale: [1.0, 1.0]}}\n\
             meta: {{seed: 3, save_every_freq: 0, dtype: float32}}\n\
             model: {{model_name: vit_tiny, embed_dim: 32, depth: 2, num_heads: 2, pred_depth: 1, pred_embed_dim: 32, pred_num_heads: 2}}\n\
             optimization: {{ema: [0.99, 0.999], epochs: 2, ipe: 2, ipe_scale: 1.0, warmup: 0, start_lr: 1.0e-4, lr: 1.0e-3, final_lr: 1.0e-4, weight_decay: 0.04}}\n"
        )
    };
    let a = write(&dir, "a.yaml", &yaml("a"));
    ok(&["pretrain", "--config", a.to_str().unwrap()], &dir);
    let b = write(&dir, "b.yaml", &yaml("b"));
    ok(
        &[
            "pretrain",
            "--config",
            b.to_str().unwrap(),
            "--max-steps",
            "2",
        ],
        &dir,
    );
    ok(&["pretrain", "--config", b.to_str().unwrap()], &dir);
    let ma = std::fs::read_to_string(dir.join("a/metrics.csv")).unwrap();
    let mb = std::fs::read_to_string(dir.join("b/metrics.csv")).unwrap();
    let losses = |m: &str| -> Vec<String> {
        m.lines()
            .skip(1)
            .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(losses(&ma).len(), 4, "{ma}");
    assert_eq!(losses(&ma), losses(&mb), "resumed run drew other clips");
    let ck = json(&dir.join("a/latest.json"));
    assert!(
        ck.to_string().contains("SYNTHETIC"),
        "checkpoint notes do not say synthetic: {ck}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
