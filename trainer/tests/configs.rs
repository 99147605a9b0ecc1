//! `--dry-run` on configs: the EchoJEPA recipes and the shipped examples must resolve cleanly,
//! and so must variants of the same schemas (other model sizes, resolutions, tasks, multi-view
//! settings); wrong types must fail naming the key, unknown keys must be reported.
//!
//! The recipes are read from `configs/` (the repository's mirrors of the reference project's
//! configs, with phantom paths and names) or, when `ECHOJEPA_REFERENCE_CONFIGS` names a folder
//! laid out like the reference project's `configs/`, from there under their original names.

use std::path::{Path, PathBuf};
use std::process::Command;

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

fn repo_configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn external_reference() -> Option<PathBuf> {
    std::env::var_os("ECHOJEPA_REFERENCE_CONFIGS").map(PathBuf::from)
}

/// A reference config by its name in the reference project (e.g.
/// `eval/vitl/echojepa_lvef.yaml`): that file under `ECHOJEPA_REFERENCE_CONFIGS`, else its
/// mirror in `configs/`.
fn reference(rel: &str) -> PathBuf {
    if let Some(d) = external_reference() {
        return d.join(rel);
    }
    let mirrored = rel
        .replace("-mimic-", "-phantom-")
        .replace("/echojepa_", "/phantom_");
    repo_configs().join(mirrored)
}

/// Every ViT-L recipe: the external reference folder, or the mirrors in `configs/`.
fn reference_files() -> Vec<PathBuf> {
    match external_reference() {
        Some(d) => yaml_files(&d),
        None => ["train/vitl16", "eval/vitl", "inference/vitl"]
            .iter()
            .flat_map(|sub| yaml_files(&repo_configs().join(sub)))
            .collect(),
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn is_eval(path: &Path) -> bool {
    std::fs::read_to_string(path).unwrap().contains("eval_name")
}

/// Runs the dry run of the right subcommand; returns (success, stdout, stderr).
fn dry_run(path: &Path, json: bool) -> (bool, String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let sub = if text.contains("\nfinetune:") {
        "finetune"
    } else if is_eval(path) {
        "probe"
    } else {
        "pretrain"
    };
    let mut cmd = trainer();
    cmd.args([sub, "--dry-run", "--config"]).arg(path);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_reference_config_dry_runs() {
    let files = reference_files();
    assert!(
        files.len() >= 6,
        "expected the reference configs, found {files:?}"
    );
    for f in files {
        let (ok, out, err) = dry_run(&f, false);
        assert!(ok, "{}: dry run failed:\n{err}\n{out}", f.display());
        assert!(
            out.contains("dry run: no data or checkpoint was read"),
            "{out}"
        );
        let (ok, out, err) = dry_run(&f, true);
        assert!(ok, "{} --json failed: {err}", f.display());
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}\n{out}", f.display()));
        match v["schema"].as_str() {
            Some("pretrain") => {
                assert_eq!(v["model"]["encoder"]["name"], "vit_large");
                assert_eq!(v["model"]["encoder"]["embed_dim"], 1024);
                assert_eq!(v["masks"].as_array().unwrap().len(), 2);
                assert_eq!(v["model"]["tokens_per_clip"], 8 * 14 * 14);
                assert_eq!(v["optimization"]["ipe"], 300);
            }
            Some("eval") => {
                assert_eq!(v["model"]["encoder"]["name"], "vit_large");
                assert_eq!(v["checkpoint_key"], "target_encoder");
                assert_eq!(v["probe_depth"], 4);
                assert!(!v["heads"].as_array().unwrap().is_empty());
            }
            other => panic!("{}: schema {other:?}", f.display()),
        }
    }
}

#[test]
fn reference_pretrain_plan_has_the_recipe_numbers() {
    let (ok, out, err) = dry_run(
        &reference("train/vitl16/pretrain-mimic-224px-16f.yaml"),
        true,
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let o = &v["optimization"];
    assert_eq!(o["steps"], 240 * 300);
    assert_eq!(o["schedules"]["horizon"], 90_000, "int(1.25 * 240 * 300)");
    assert_eq!(o["schedules"]["lr"]["kind"], "warmup_cosine");
    assert_eq!(o["schedules"]["lr"]["warmup_steps"], 12_000);
    // the last milestone: constant LR after warmup (final_lr == lr)
    let last = o["milestones"].as_array().unwrap().last().unwrap();
    assert!((last[1].as_f64().unwrap() - 1.75e-4).abs() < 1e-12);
    assert!((last[3].as_f64().unwrap() - 0.99925).abs() < 1e-12);
    assert_eq!(
        v["dtype"], "float32",
        "CPU runs in f32 even when the config says bfloat16"
    );
    // mask 1 (8 x 0.15) hides less than mask 2 (2 x 0.7)
    let m = v["masks"].as_array().unwrap();
    assert!(
        m[0]["mean_target_tokens"].as_f64().unwrap() < m[1]["mean_target_tokens"].as_f64().unwrap()
    );
    assert!(
        v["init"].as_str().unwrap().contains("random init"),
        "{}",
        v["init"]
    );

    let (ok, out, _) = dry_run(
        &reference("train/vitl16/cooldown-mimic-224px-16f.yaml"),
        true,
    );
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["optimization"]["schedules"]["lr"]["kind"], "linear_decay");
    assert!(
        v["init"].as_str().unwrap().contains("e210"),
        "{}",
        v["init"]
    );
}

/// Writes `text` to a temp file and dry-runs it.
fn dry_run_text(text: &str, eval: bool) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir
        .path()
        .join(if eval { "eval.yaml" } else { "train.yaml" });
    std::fs::write(&p, text).unwrap();
    dry_run(&p, true)
}

fn reference_text(rel: &str) -> Option<String> {
    let p = reference(rel);
    Some(std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

#[test]
fn variants_of_the_pretraining_schema_dry_run() {
    let Some(base) = reference_text("train/vitl16/pretrain-mimic-224px-16f.yaml") else {
        return;
    };
    for (model, dim) in [
        ("vit_tiny", 192),
        ("vit_small", 384),
        ("vit_base", 768),
        ("vit_huge", 1280),
        ("vit_giant_xformers", 1408),
        ("vit_giant", 1408),
    ] {
        for crop in [112, 256, 336] {
            let t = base
                .replace("model_name: vit_large", &format!("model_name: {model}"))
                .replace("crop_size: 224", &format!("crop_size: {crop}"));
            let (ok, out, err) = dry_run_text(&t, false);
            assert!(ok, "{model} @ {crop}: {err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["model"]["encoder"]["embed_dim"], dim);
            let g = crop / 16;
            assert_eq!(v["model"]["tokens_per_clip"], 8 * g * g);
        }
    }
    // 64 frames, fps 4, one dataset with a weight list, and a custom small encoder
    let t = base.replace("  - 16 # same as vitg", "  - 64").replace(
        "model_name: vit_large",
        "model_name: vit_tiny\n  embed_dim: 96\n  depth: 4\n  num_heads: 4",
    );
    let (ok, out, err) = dry_run_text(&t, false);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model"]["encoder"]["name"], "custom");
    assert_eq!(v["model"]["encoder"]["depth"], 4);
    assert_eq!(v["model"]["tokens_per_clip"], 32 * 14 * 14);
}

#[test]
fn variants_of_the_eval_schema_dry_run() {
    let Some(lvef) = reference_text("eval/vitl/echojepa_lvef.yaml") else {
        return;
    };
    let Some(rvsp) = reference_text("eval/vitl/echojepa_rvsp.yaml") else {
        return;
    };
    let Some(view) = reference_text("eval/vitl/echojepa_view.yaml") else {
        return;
    };
    // other sizes and resolutions (heads must divide the width: 16 | 1408 works, 16 | 1280)
    for (model, res) in [
        ("vit_giant_xformers", 336),
        ("vit_huge", 224),
        ("vit_small", 112),
        ("vit_base", 256),
    ] {
        for text in [&lvef, &view, &rvsp] {
            let t = text
                .replace("model_name: vit_large", &format!("model_name: {model}"))
                .replace("resolution: 224", &format!("resolution: {res}"));
            let (ok, _, err) = dry_run_text(&t, true);
            assert!(ok, "{model} @ {res}: {err}");
        }
    }
    // multi-view with 3 views x 1 clip, per-slot embeddings
    let t = rvsp
        .replace("num_views: 2", "num_views: 3")
        .replace(
            "num_segments: 2          # Number of videos per group",
            "num_segments: 3",
        )
        .replace("clips_per_view: 2", "clips_per_view: 1")
        .replace("num_clips_per_video: 2", "num_clips_per_video: 1")
        .replace("use_factorized: true", "use_factorized: false");
    let (ok, out, err) = dry_run_text(&t, true);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["multi_view"][0], 3);
    assert_eq!(v["tokens_per_sample"], 3 * 8 * 14 * 14);
    // a 3-view study with a 2-view probe is refused, naming both keys
    let bad = rvsp.replace("num_views: 2", "num_views: 3");
    let (ok, _, err) = dry_run_text(&bad, true);
    assert!(!ok);
    assert!(
        err.contains("num_views") && err.contains("num_segments"),
        "{err}"
    );
    // classification with 6 classes, depth-1 probe, label fraction extension
    let t: String = view
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("num_classes:") {
                "    num_classes: 6\n    label_fraction: 0.1".to_string()
            } else {
                l.replace("num_probe_blocks: 4", "num_probe_blocks: 1")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (ok, out, err) = dry_run_text(&t, true);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outputs"], 6);
    assert_eq!(v["probe_depth"], 1);
    assert_eq!(v["label_fraction"], 0.1);
}

#[test]
fn wrong_types_name_the_key_and_unknown_keys_are_reported() {
    let Some(base) = reference_text("train/vitl16/pretrain-mimic-224px-16f.yaml") else {
        return;
    };
    let bad = base.replace("batch_size: 128", "batch_size: lots");
    let (ok, _, err) = dry_run_text(&bad, false);
    assert!(!ok);
    assert!(err.contains("data.batch_size"), "{err}");
    let bad = base.replace("  - 0.15\n  - 0.15", "  - 0.15\n  - wide");
    let (ok, _, err) = dry_run_text(&bad, false);
    assert!(!ok);
    assert!(
        err.contains("mask[0].spatial_scale") || err.contains("mask.0.spatial_scale"),
        "{err}"
    );
    let extra = base.replace("loss_exp: 1.0", "loss_exp: 1.0\n  colour: blue");
    let (ok, out, _) = dry_run_text(&extra, false);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["unknown_keys"][0], "loss.colour");
    let Some(lvef) = reference_text("eval/vitl/echojepa_lvef.yaml") else {
        return;
    };
    let bad = lvef.replace("num_epochs: 20", "num_epochs: [20]");
    let (ok, _, err) = dry_run_text(&bad, true);
    assert!(!ok);
    assert!(err.contains("experiment.optimization.num_epochs"), "{err}");
}

#[test]
fn shipped_example_configs_dry_run() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let files = yaml_files(&dir);
    assert!(files.len() >= 8, "shipped configs: {files:?}");
    for f in files {
        let (ok, out, err) = dry_run(&f, false);
        assert!(ok, "{}: {err}\n{out}", f.display());
    }
}

/// The reference's habit `--fname config.yaml` is accepted, and a config that asks for several
/// processes (`tasks_per_node: 8`) says that this trainer runs one.
#[test]
fn fname_is_accepted_and_several_processes_are_said() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/train/vitl16/pretrain-phantom-224px-16f.yaml");
    let out = trainer()
        .args(["pretrain", "--dry-run", "--fname"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("8 processes") && err.contains("ONE process"),
        "{err}"
    );
}
