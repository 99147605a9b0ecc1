//! Whether a model was trained on synthetic data travels as a typed field from the pretraining
//! run to what the cart shows: `trainer pretrain` (on the streamed phantom) records it,
//! `trainer finetune` inherits it, `quantize build` copies it into the signed manifest, and
//! `edge-runtime` says "Trained on synthetic data." with every prediction. A checkpoint marked
//! not synthetic gives a bundle whose predictions do not say it; a pretraining run on a list
//! the config marks not synthetic records that.

use std::path::Path;
use std::process::Command;

use e2e_tests::{bin, repo, run};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A tiny pretraining run; `data` is the YAML of its `data:` section.
fn pretrain_yaml(folder: &str, data: &str) -> String {
    format!(
        "app: vjepa
folder: {folder}
data:
{data}
  batch_size: 2
  crop_size: 32
  patch_size: 16
  dataset_fpcs: [4]
  frame_step: 2
  tubelet_size: 2
  num_workers: 1
loss: {{loss_exp: 1.0}}
mask:
- {{aspect_ratio: [0.75, 1.5], num_blocks: 2, spatial_scale: [0.5, 0.5], temporal_scale: [1.0, 1.0]}}
meta: {{seed: 0, save_every_freq: 0}}
model: {{model_name: vit_tiny, embed_dim: 32, depth: 2, num_heads: 2, pred_depth: 1, pred_embed_dim: 32, pred_num_heads: 2, num_mask_tokens: 1}}
optimization: {{ipe: 1, epochs: 1, start_lr: 1.0e-4, lr: 1.0e-4, final_lr: 1.0e-4, warmup: 0, weight_decay: 0.04, final_weight_decay: 0.04, ema: [0.99, 0.999]}}
"
    )
}

const FINETUNE: &str = "app: vjepa
eval_name: finetune
folder: runs
tag: prov
model_kwargs:
  checkpoint: runs/pretrain/latest
  pretrain_kwargs:
    encoder: {checkpoint_key: target_encoder, model_name: vit_tiny, embed_dim: 32, depth: 2, num_heads: 2, patch_size: 16, tubelet_size: 2}
experiment:
  classifier: {num_heads: 2, num_probe_blocks: 1}
  data: {dataset_type: PhantomStream, resolution: 32, frames_per_clip: 4, frame_step: 2}
  optimization: {batch_size: 2, num_epochs: 1, seed: 9}
finetune:
  init: pretrained
  steps_per_epoch: 1
  lr: 1.0e-3
  encoder_lr: 1.0e-3
  val_clips: 4
  test_clips: 2
  heads:
  - {name: view, task: view}
  - {name: ef, task: ef, views: [a4c, a2c]}
  phantom: {width: 64, height: 48, fps: 30}
";

fn build_bundle(w: &Path, checkpoint: &str, out: &str) -> serde_json::Value {
    let keys = repo().join("edge-runtime/demo/keys");
    run(Command::new(bin("quantize"))
        .args(["build", "--checkpoint", checkpoint])
        .args(["--model-id", "prov-test", "--model-version", "1"])
        .args(["--calibration-clips", "1", "--key"])
        .arg(keys.join("echojepa-demo.secret"))
        .args(["--out", out])
        .current_dir(w));
    json(&std::fs::read_to_string(w.join(out).join("manifest.json")).unwrap())
}

/// The notices of the predictions the runtime makes with the bundle on phantom frames.
fn notices(w: &Path, bundle: &str) -> Vec<String> {
    let out = run(Command::new(bin("edge-runtime"))
        .args(["--json", "--max-frames", "24", "--bundle"])
        .arg(w.join(bundle))
        .env_remove("ECHOJEPA_BUNDLE")
        .env_remove("ECHOJEPA_BOARD")
        .current_dir(w));
    let notices: Vec<String> = out
        .lines()
        .map(json)
        .filter(|l| l["type"] == "prediction" || l["type"] == "started")
        .map(|l| l["notice"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(notices.len() >= 2, "no predictions: {out}");
    notices
}

#[test]
fn synthetic_training_data_reaches_the_cart_notice_and_its_absence_too() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(
        w.join("pre.yaml"),
        pretrain_yaml(
            "runs/pretrain",
            "  dataset_type: PhantomStream\n  phantom: {width: 64, height: 48, fps: 30}",
        ),
    )
    .unwrap();
    run(Command::new(bin("trainer"))
        .args(["pretrain", "--config", "pre.yaml", "--max-steps", "0"])
        .current_dir(w));
    let pre = json(&std::fs::read_to_string(w.join("runs/pretrain/latest.json")).unwrap());
    assert_eq!(
        pre["provenance"]["synthetic"], true,
        "{}",
        pre["provenance"]
    );

    std::fs::write(w.join("ft.yaml"), FINETUNE).unwrap();
    run(Command::new(bin("trainer"))
        .args(["finetune", "--config", "ft.yaml"])
        .current_dir(w));
    let ft_json = w.join("runs/finetune/prov/latest.json");
    let ft = json(&std::fs::read_to_string(&ft_json).unwrap());
    let p = &ft["provenance"];
    assert_eq!(p["synthetic"], true, "{p}");
    // both the fine-tuning clips and the pretraining checkpoint it started from
    let d = p["description"].as_str().unwrap();
    assert!(
        d.contains("finetune") && d.contains("phantom stream"),
        "{d}"
    );
    assert_eq!(ft["probes"]["ef"]["task"]["targets"][0]["name"], "lvef");
    assert_eq!(ft["probes"]["view"]["task"]["kind"], "view_classifier");

    // no --synthetic flag: the bundle says what the checkpoint records
    let m = build_bundle(w, "runs/finetune/prov/latest", "synthetic");
    assert_eq!(m["synthetic_training_data"], true);
    assert_eq!(m["provenance"], *p);
    for n in notices(w, "synthetic") {
        assert!(n.contains("Trained on synthetic data."), "{n}");
        assert!(n.contains("Not for diagnostic use."), "{n}");
    }

    // the same weights in a checkpoint marked as trained on recorded data
    let mut marked = ft.clone();
    marked["provenance"] =
        serde_json::json!({"synthetic": false, "description": "recorded test data"});
    std::fs::copy(
        w.join("runs/finetune/prov/latest.safetensors"),
        w.join("recorded.safetensors"),
    )
    .unwrap();
    std::fs::write(w.join("recorded.json"), marked.to_string()).unwrap();
    let m = build_bundle(w, "recorded", "recorded");
    assert_eq!(m["synthetic_training_data"], false);
    assert_eq!(m["provenance"]["description"], "recorded test data");
    for n in notices(w, "recorded") {
        assert!(!n.to_lowercase().contains("synthetic"), "{n}");
        assert!(n.contains("Not for diagnostic use."), "{n}");
    }
}

#[test]
fn a_pretraining_list_the_config_marks_not_synthetic_is_recorded_so() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // `trainer synth` marks its lists synthetic; the config's `synthetic: false` says otherwise
    std::fs::create_dir_all(w.join("data/view")).unwrap();
    std::fs::write(w.join("data/README.txt"), "SYNTHETIC DATA\n").unwrap();
    std::fs::write(w.join("data/view/train.csv"), "a.mp4 0\nb.mp4 0\n").unwrap();
    for (name, stated, want) in [
        ("marked", "\n  synthetic: false", false),
        ("unmarked", "", true),
    ] {
        let data =
            format!("  dataset_type: VideoDataset\n  datasets: [data/view/train.csv]{stated}");
        let folder = format!("runs/{name}");
        std::fs::write(w.join("pre.yaml"), pretrain_yaml(&folder, &data)).unwrap();
        run(Command::new(bin("trainer"))
            .args(["pretrain", "--config", "pre.yaml", "--max-steps", "0"])
            .current_dir(w));
        let ck = json(&std::fs::read_to_string(w.join(&folder).join("latest.json")).unwrap());
        assert_eq!(
            ck["provenance"]["synthetic"], want,
            "{name}: {}",
            ck["provenance"]
        );
    }
}
