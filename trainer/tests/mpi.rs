//! Pretraining on two CPU ranks under `mpirun -np 2` (the `mpi` feature): with batch 2 per rank
//! it follows one process with batch 4 (same loss curve, same final weights within float
//! rounding of the split mean), rank 0 alone writes, and a run stopped on two ranks resumes on
//! one. Needs Open MPI (`openmpi-bin`, `libopenmpi-dev`); run with
//! `cargo test -p trainer --features mpi --test mpi`.
#![cfg(feature = "mpi")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Loss and gradient norm of one process and of two ranks agree to this relative tolerance
/// (observed: 1e-7; the two differ only in the rounding of a mean taken in two halves).
const CURVE_TOL: f64 = 1e-5;
/// Largest absolute difference of any final weight (observed: ~1e-7 after 6 AdamW steps).
const WEIGHT_TOL: f32 = 1e-4;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpi-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 2-block 32-wide encoder on 4 frames of 64 px from the phantom stream, 2 epochs of 3 steps.
fn config(dir: &Path, name: &str, tasks: usize, batch: usize) -> PathBuf {
    let data = "  dataset_type: PhantomStream\n  frame_step: 4\n  phantom:\n    width: 160\n    \
                height: 120\n    fps: 30\n";
    config_with(dir, name, tasks, batch, data, "  ipe: 3\n  epochs: 2\n")
}

fn config_with(
    dir: &Path,
    name: &str,
    tasks: usize,
    batch: usize,
    data: &str,
    length: &str,
) -> PathBuf {
    let folder = dir.join(name);
    let text = format!(
        "app: vjepa\nnodes: 1\ntasks_per_node: {tasks}\nfolder: {}\n\
         data:\n{data}  batch_size: {batch}\n  crop_size: 64\n  patch_size: 16\n  \
         dataset_fpcs: [4]\n  tubelet_size: 2\n\
         mask:\n- aspect_ratio: [0.75, 1.5]\n  num_blocks: 2\n  spatial_scale: [0.15, 0.15]\n\
         - aspect_ratio: [0.75, 1.5]\n  num_blocks: 1\n  spatial_scale: [0.5, 0.5]\n\
         meta:\n  save_every_freq: 0\n  seed: 3\n\
         model:\n  model_name: vit_tiny\n  embed_dim: 32\n  depth: 2\n  num_heads: 2\n  pred_depth: 1\n  \
         pred_embed_dim: 32\n  pred_num_heads: 2\n\
         optimization:\n  ema: [0.99, 0.999]\n{length}  start_lr: 1.0e-4\n  lr: 1.0e-3\n  \
         final_lr: 1.0e-4\n  warmup: 1\n",
        folder.display()
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn check(cmd: &mut Command) -> String {
    let out = cmd
        .env("RUST_LOG", "warn")
        .output()
        .expect("start the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn one_process(args: &[&str]) -> String {
    check(Command::new(env!("CARGO_BIN_EXE_trainer")).args(args))
}

/// `mpirun -np 2 trainer` on this machine's cores. Containers and CI run as root, which Open
/// MPI refuses unless told (the variables are ignored for other users).
fn mpirun_trainer() -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-np", "2", "--mca", "btl", "self,vader"])
        .arg(env!("CARGO_BIN_EXE_trainer"));
    cmd
}

fn two_ranks(args: &[&str]) -> String {
    let mut cmd = mpirun_trainer();
    cmd.args(args);
    check(&mut cmd)
}

/// `(step, loss, grad_norm)` per row of `metrics.csv`.
fn curve(folder: &Path) -> Vec<(usize, f64, f64)> {
    let text = std::fs::read_to_string(folder.join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[2].parse().unwrap(),
                f[6].parse().unwrap(),
            )
        })
        .collect()
}

/// Every f32 tensor of a safetensors file.
fn weight_file(path: &Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, t)| t.dtype() == safetensors::Dtype::F32)
        .map(|(k, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (k, v)
        })
        .collect()
}

fn assert_same_run(a: &Path, b: &Path) {
    let (ca, cb) = (curve(a), curve(b));
    assert_eq!(ca.len(), 6, "{ca:?}");
    assert_eq!(ca.len(), cb.len());
    for (x, y) in ca.iter().zip(&cb) {
        assert_eq!(x.0, y.0);
        assert!(
            (x.1 - y.1).abs() <= CURVE_TOL * x.1.abs(),
            "loss {x:?} vs {y:?}"
        );
        assert!(
            (x.2 - y.2).abs() <= CURVE_TOL * x.2.abs(),
            "grad norm {x:?} vs {y:?}"
        );
    }
    let file = "latest.safetensors";
    let worst = worst_difference(&a.join(file), &b.join(file));
    assert!(worst <= WEIGHT_TOL, "largest weight difference {worst}");
    eprintln!("largest weight difference {worst:e}");
}

#[test]
fn two_ranks_follow_one_process_and_resume_on_one() {
    let dir = tmp("equiv");
    let one = config(&dir, "one", 1, 4);
    let two = config(&dir, "two", 2, 2);
    one_process(&["pretrain", "--config", one.to_str().unwrap()]);
    let out = two_ranks(&["pretrain", "--config", two.to_str().unwrap()]);
    assert!(out.contains("rank 1 of 2: steps 0..6 done"), "{out}");
    assert_same_run(&dir.join("one"), &dir.join("two"));

    // three steps on two ranks, the rest on one process with the same global batch
    let split = dir.join("split");
    let split_s = split.to_str().unwrap();
    two_ranks(&[
        "pretrain",
        "--config",
        two.to_str().unwrap(),
        "--out",
        split_s,
        "--max-steps",
        "3",
    ]);
    assert_eq!(curve(&split).len(), 3);
    one_process(&[
        "pretrain",
        "--config",
        one.to_str().unwrap(),
        "--out",
        split_s,
        "--resume",
    ]);
    assert_same_run(&dir.join("one"), &split);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The video-list loader: 8 synthetic training clips, global batch 4 (2 steps an epoch), 3 epochs;
/// each rank reads its share of the one-process order.
#[test]
fn two_ranks_on_video_lists_follow_one_process() {
    let dir = tmp("lists");
    let syn = dir.join("syn");
    one_process(&[
        "synth",
        "--out",
        syn.to_str().unwrap(),
        "--patients",
        "6",
        "--views",
        "a4c,a2c",
        "--frames",
        "24",
        "--width",
        "64",
        "--height",
        "64",
    ]);
    let data = format!(
        "  dataset_type: VideoDataset\n  datasets: [{}]\n  frame_step: 2\n",
        syn.join("view/train.csv").display()
    );
    let one = config_with(&dir, "one", 1, 4, &data, "  epochs: 3\n");
    let two = config_with(&dir, "two", 2, 2, &data, "  epochs: 3\n");
    one_process(&["pretrain", "--config", one.to_str().unwrap()]);
    two_ranks(&["pretrain", "--config", two.to_str().unwrap()]);
    assert_same_run(&dir.join("one"), &dir.join("two"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Largest absolute difference between the same tensors of two files.
fn worst_difference(a: &Path, b: &Path) -> f32 {
    let (wa, wb) = (weight_file(a), weight_file(b));
    assert!(wa.len() > 10, "{}: {} tensors", a.display(), wa.len());
    assert_eq!(wa.len(), wb.len(), "{} vs {}", a.display(), b.display());
    let mut worst = 0f32;
    for (k, va) in &wa {
        let vb = &wb[k];
        assert_eq!(va.len(), vb.len(), "{k}");
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

/// Fine-tuning config: a 2-block 32-wide encoder on 4 frames of 32 px from the phantom, with the
/// view, EF and LV heads, stochastic depth and an EMA; 2 epochs of 2 steps.
fn finetune_config(dir: &Path, name: &str, tasks: usize, batch: usize) -> PathBuf {
    let text = format!(
        "app: vjepa\neval_name: finetune\nnodes: 1\ntasks_per_node: {tasks}\nfolder: {}\ntag: t\n\
         model_kwargs:\n  pretrain_kwargs:\n    encoder:\n      checkpoint_key: target_encoder\n      \
         model_name: vit_tiny\n      embed_dim: 32\n      depth: 2\n      num_heads: 2\n      patch_size: 16\n      tubelet_size: 2\n\
         experiment:\n  classifier: {{num_heads: 2, num_probe_blocks: 1}}\n  \
         data: {{dataset_type: PhantomStream, resolution: 32, frames_per_clip: 4, frame_step: 2}}\n  \
         optimization: {{batch_size: {batch}, num_epochs: 2, seed: 5}}\n\
         finetune:\n  init: random\n  steps_per_epoch: 2\n  lr: 1.0e-3\n  encoder_lr: 5.0e-4\n  layer_decay: 0.7\n  \
         warmup_epochs: 0.5\n  drop_path: 0.2\n  clip_grad: 1.0\n  ema: 0.9\n  val_clips: 6\n  test_clips: 6\n  heads:\n  \
         - {{name: view, task: view}}\n  - {{name: ef, task: ef, views: [a4c, a2c]}}\n  \
         - {{name: lv, task: lv_segmentation, views: [a4c, a2c]}}\n  \
         phantom: {{width: 64, height: 48, fps: 30, perturb_prob: 0.5}}\n",
        dir.join(name).display()
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The loss columns (`train_loss` and one per head) and `grad_norm` of a fine-tuning
/// `metrics.csv`, per epoch row.
fn finetune_curve(run: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep: Vec<usize> = head
        .iter()
        .enumerate()
        .filter(|(_, h)| h.contains("loss") || **h == "grad_norm")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(keep.len(), 5, "{head:?}");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            keep.iter().map(|&i| f[i].parse().unwrap()).collect()
        })
        .collect()
}

fn assert_same_finetune(a: &Path, b: &Path) {
    let (ca, cb) = (finetune_curve(a), finetune_curve(b));
    assert_eq!(ca.len(), 2, "{ca:?}");
    assert_eq!(ca.len(), cb.len());
    for (x, y) in ca.iter().zip(&cb) {
        for (u, v) in x.iter().zip(y) {
            // metrics.csv keeps 5 decimals of the losses, 4 of the gradient norm
            assert!((u - v).abs() <= 2e-4, "{x:?} vs {y:?}");
        }
    }
    for file in ["latest.live.safetensors", "latest.safetensors"] {
        let worst = worst_difference(&a.join(file), &b.join(file));
        assert!(worst <= WEIGHT_TOL, "{file}: largest difference {worst}");
        eprintln!("{file}: largest weight difference {worst:e}");
    }
}

/// Fine-tuning on two ranks with 2 clips each follows one process with 4: the ranks hold
/// different numbers of each head's samples (views are drawn at random), which the loss
/// rescaling accounts for; stochastic depth, the EMA and the schedule are per global step. A run
/// stopped on two ranks continues on one process; another global batch is refused.
#[test]
fn two_ranks_fine_tune_as_one_process_and_resume_on_one() {
    let dir = tmp("finetune");
    let one = finetune_config(&dir, "one", 1, 4);
    let two = finetune_config(&dir, "two", 2, 2);
    one_process(&["finetune", "--config", one.to_str().unwrap()]);
    let out = two_ranks(&["finetune", "--config", two.to_str().unwrap()]);
    assert!(out.contains("rank 1 of 2: stopped at step 4 of 4"), "{out}");
    let run = |name: &str| dir.join(name).join("finetune/t");
    assert!(run("two").join("summary.json").is_file());
    assert_same_finetune(&run("one"), &run("two"));

    // two steps (one epoch) on two ranks, the rest on one process
    let split = dir.join("split");
    let split_s = split.to_str().unwrap();
    two_ranks(&[
        "finetune",
        "--config",
        two.to_str().unwrap(),
        "--out",
        split_s,
        "--max-steps",
        "2",
    ]);
    assert_eq!(finetune_curve(&split).len(), 1);
    // a resume with another global batch is refused, naming both
    let half = finetune_config(&dir, "half", 1, 2);
    let bad = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "finetune",
            "--config",
            half.to_str().unwrap(),
            "--out",
            split_s,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("4 clips per step") && err.contains("with 2"),
        "{err}"
    );
    one_process(&[
        "finetune",
        "--config",
        one.to_str().unwrap(),
        "--out",
        split_s,
    ]);
    assert_same_finetune(&run("one"), &split);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An EF probe config (`video_classification_frozen`, two heads) on the encoder at `checkpoint`,
/// over the synthetic lists in `syn`, cached features in `cache`.
fn probe_config(
    dir: &Path,
    name: &str,
    tasks: usize,
    batch: usize,
    syn: &Path,
    checkpoint: &Path,
) -> PathBuf {
    let text = format!(
        "eval_name: video_classification_frozen\nnodes: 1\ntasks_per_node: {tasks}\nfolder: {dir}\ntag: {name}\n\
         experiment:\n  classifier:\n    num_heads: 2\n    num_probe_blocks: 1\n    task_type: regression\n    num_targets: 1\n\
         \x20 data:\n    dataset_type: VideoDataset\n    dataset_train: {s}/ef/train.csv\n    \
         dataset_val: {s}/ef/val.csv\n    dataset_test: {s}/ef/test.csv\n    num_segments: 2\n    \
         resolution: 64\n    frames_per_clip: 4\n    frame_step: 2\n\
         \x20 optimization:\n    batch_size: {batch}\n    num_epochs: 3\n    seed: 1\n    cache_features: true\n    \
         feature_cache: {dir}/features-{name}\n    multihead_kwargs:\n\
         \x20   - {{lr: 3.0e-3, start_lr: 3.0e-3, final_lr: 0.0, weight_decay: 0.01}}\n\
         \x20   - {{lr: 1.0e-3, start_lr: 1.0e-3, final_lr: 0.0, weight_decay: 0.1}}\n\
         model_kwargs:\n  checkpoint: {c}\n  pretrain_kwargs:\n    encoder:\n      \
         checkpoint_key: target_encoder\n      model_name: vit_tiny\n      embed_dim: 32\n      \
         depth: 2\n      num_heads: 2\n      patch_size: 16\n      tubelet_size: 2\n",
        dir = dir.display(),
        s = syn.display(),
        c = checkpoint.display()
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The numbers of a probe's `log.csv` (epoch, head, lr, wd, losses and validation metrics).
fn probe_log(out: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(out.join("log.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect()
}

fn assert_same_probe(a: &Path, b: &Path) {
    let (la, lb) = (probe_log(a), probe_log(b));
    assert_eq!(la.len(), 6, "{la:?}");
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        for (u, v) in x.iter().zip(y) {
            assert!((u - v).abs() <= 1e-4 * u.abs().max(1.0), "{x:?} vs {y:?}");
        }
    }
    let worst = worst_difference(&a.join("probe.safetensors"), &b.join("probe.safetensors"));
    assert!(
        worst <= WEIGHT_TOL,
        "probe weights: largest difference {worst}"
    );
    eprintln!("probe weights: largest difference {worst:e}");
    let (sa, sb) = (
        std::fs::read_to_string(a.join("summary.json")).unwrap(),
        std::fs::read_to_string(b.join("summary.json")).unwrap(),
    );
    let (sa, sb): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&sa).unwrap(),
        serde_json::from_str(&sb).unwrap(),
    );
    for k in [
        "train_samples",
        "val_samples",
        "test_samples",
        "best_head",
        "best_epoch",
    ] {
        assert_eq!(sa[k], sb[k], "{k}");
    }
}

/// A frozen EF probe on two ranks with 4 clips each follows one process with 8: the ranks encode
/// alternate clips and gather the features (rank 0 writes the cache), then share each step's
/// batch, the short last one included; a second run reads the cache and ends the same.
#[test]
fn two_ranks_probe_as_one_process() {
    let dir = tmp("probe");
    let syn = dir.join("syn");
    one_process(&[
        "synth",
        "--out",
        syn.to_str().unwrap(),
        "--patients",
        "25",
        "--views",
        "a4c,a2c",
        "--frames",
        "24",
        "--width",
        "64",
        "--height",
        "64",
    ]);
    let data = format!(
        "  dataset_type: VideoDataset\n  datasets: [{}]\n  frame_step: 2\n",
        syn.join("view/train.csv").display()
    );
    let enc = config_with(&dir, "enc", 1, 4, &data, "  epochs: 1\n");
    one_process(&["pretrain", "--config", enc.to_str().unwrap()]);
    let ck = dir.join("enc/latest");
    // 18 training clips: global batches of 8, 8 and a short 2 (1 + 1 on two ranks)
    let one = probe_config(&dir, "one", 1, 8, &syn, &ck);
    let two = probe_config(&dir, "two", 2, 4, &syn, &ck);
    let out = |n: &str| dir.join(n);
    one_process(&[
        "probe",
        "--config",
        one.to_str().unwrap(),
        "--name",
        "ef",
        "--out",
        out("p1").to_str().unwrap(),
    ]);
    let said = two_ranks(&[
        "probe",
        "--config",
        two.to_str().unwrap(),
        "--name",
        "ef",
        "--out",
        out("p2").to_str().unwrap(),
    ]);
    assert!(said.contains("rank 1 of 2: 3 epochs trained"), "{said}");
    assert_same_probe(&out("p1"), &out("p2"));
    // the cache rank 0 wrote, read by both ranks
    two_ranks(&[
        "probe",
        "--config",
        two.to_str().unwrap(),
        "--name",
        "ef",
        "--out",
        out("p3").to_str().unwrap(),
    ]);
    let s3: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out("p3").join("summary.json")).unwrap())
            .unwrap();
    assert!(
        s3["feature_cache"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c[1] == true),
        "{}",
        s3["feature_cache"]
    );
    assert_same_probe(&out("p1"), &out("p3"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The process of `rank` among the children of a running `mpirun` (Linux: read from /proc).
fn rank_pid(config: &Path, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let conf = config.to_str()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let has = |bytes: &[u8], s: &str| bytes.split(|&b| b == 0).any(|w| w == s.as_bytes());
        if has(&cmdline, conf) && has(&cmdline, "pretrain") && has(&environ, &want) {
            return Some(pid);
        }
    }
    None
}

/// A rank that dies ends the job within seconds with a message naming it (Open MPI's default:
/// one rank failing aborts the others), and the run resumes from its last checkpoint.
#[test]
fn a_killed_rank_stops_the_job_and_the_run_resumes() {
    let dir = tmp("kill");
    let long = config_with(
        &dir,
        "long",
        2,
        2,
        "  dataset_type: PhantomStream\n  frame_step: 4\n  phantom:\n    width: 160\n    \
         height: 120\n    fps: 30\n",
        "  ipe: 3\n  epochs: 2000\n",
    );
    let folder = dir.join("long");
    let mut cmd = mpirun_trainer();
    let child = cmd
        .args(["pretrain", "--config", long.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait for a checkpoint (every epoch of 3 steps) and a few more steps
    let t0 = std::time::Instant::now();
    let rows = || {
        std::fs::read_to_string(folder.join("metrics.csv"))
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0)
    };
    while rows() < 8 {
        assert!(t0.elapsed().as_secs() < 120, "no progress in 120 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = rank_pid(&long, 1).expect("rank 1 is running");
    let killed = std::time::Instant::now();
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(status.unwrap().success());
    let out = child.wait_with_output().unwrap();
    let waited = killed.elapsed().as_secs_f64();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(waited < 20.0, "the job took {waited:.1} s to stop");
    assert!(
        text.contains("process rank 1") && text.contains("signal 9"),
        "{text}"
    );

    // the restarted job continues from the last checkpoint
    let state = std::fs::read_to_string(folder.join("latest.train.json")).unwrap();
    let step = serde_json::from_str::<serde_json::Value>(&state).unwrap()["step"]
        .as_u64()
        .unwrap();
    assert!(
        step >= 3 && step.is_multiple_of(3),
        "checkpoint at step {step}"
    );
    let until = (step + 3).to_string();
    let out = two_ranks(&[
        "pretrain",
        "--config",
        long.to_str().unwrap(),
        "--resume",
        "--max-steps",
        &until,
    ]);
    assert!(out.contains(&format!("steps {step}..{until}")), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rank that hangs without exiting (SIGSTOP) makes the others stop with an error after the
/// collective timeout, instead of waiting forever.
#[test]
fn a_stalled_rank_stops_the_job_after_the_timeout() {
    let dir = tmp("stall");
    let long = config_with(
        &dir,
        "long",
        2,
        2,
        "  dataset_type: PhantomStream\n  frame_step: 4\n  phantom:\n    width: 160\n    \
         height: 120\n    fps: 30\n",
        "  ipe: 3\n  epochs: 2000\n",
    );
    let folder = dir.join("long");
    let mut cmd = mpirun_trainer();
    let child = cmd
        .args(["pretrain", "--config", long.to_str().unwrap()])
        .args(["--collective-timeout", "3"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(folder.join("metrics.csv"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 6
    {
        assert!(t0.elapsed().as_secs() < 120, "no progress in 120 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = rank_pid(&long, 1).expect("rank 1 is running").to_string();
    let stopped = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let waited = stopped.elapsed().as_secs_f64();
    // whatever mpirun did with the stopped rank, leave nothing behind
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(waited < 60.0, "the job took {waited:.1} s to stop");
    assert!(
        text.contains("rank 0 of 2 waited") && text.contains("collective timeout"),
        "{text}"
    );
    eprintln!("stopped {waited:.1} s after rank 1 hung");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_launch_that_does_not_match_the_config_says_which() {
    let dir = tmp("mismatch");
    let one = config(&dir, "one", 1, 4);
    let mut cmd = mpirun_trainer();
    let out = cmd
        .args(["pretrain", "--config", one.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("1 node(s) x 1 task(s) per node = 1 rank(s), but mpirun (Open MPI) started 2"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `trainer collective-check` on two MPI ranks: every element of every all-reduce is the exact
/// sum, rank 0 alone reports, and the JSON report says the same.
#[test]
fn the_collective_check_passes_on_two_mpi_ranks() {
    let text = two_ranks(&["collective-check", "--floats", "100000", "--repeats", "2"]);
    assert!(
        text.contains("collective-check: MPI over 2 rank(s) (mpirun (Open MPI))")
            && text.contains("100000 float(s)")
            && text.contains("bus bandwidth")
            && text.contains("verdict: PASS"),
        "{text}"
    );
    assert_eq!(text.matches("verdict:").count(), 1, "{text}");
    let json = two_ranks(&["collective-check", "--floats", "5000", "--json"]);
    let start = json.find('{').expect("a JSON report");
    let end = json.rfind('}').expect("a JSON report");
    let v: serde_json::Value = serde_json::from_str(&json[start..=end]).unwrap();
    assert_eq!(v["engine"], "MPI", "{json}");
    assert_eq!(v["world"], 2, "{json}");
    assert_eq!(v["pass"], true, "{json}");
    let sizes = v["sizes"].as_array().unwrap();
    assert_eq!(
        sizes
            .iter()
            .map(|s| s["floats"].clone())
            .collect::<Vec<_>>(),
        [1, 1000, 5000]
    );
    assert!(sizes.iter().all(|s| s["mismatches"] == 0), "{json}");
}
