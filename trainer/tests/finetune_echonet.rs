//! `trainer finetune` on a dataset in EchoNet-Dynamic's layout, made here with FFmpeg (not with
//! our own writer): short 112 × 112 videos of a dark ellipse (the "LV") that contracts and
//! relaxes on a brighter speckled background with a bright rim, each video with its own EF,
//! heart rate and phase, half of them Motion JPEG AVI (EchoNet's format) and half H.264 MP4
//! (libx264). `FileList.csv` holds the EF of the ellipse (area–length volume, which for an
//! ellipse scaled by `s` goes as `s³`) and `VolumeTracings.csv` the long axis and 20 chords of
//! the ellipse at the ED and ES frames, as EchoNet's tracers draw them.
//!
//! The run must skip (and count) a corrupt and a missing video, train the EF and LV heads, and
//! write the checkpoint and a summary with per-video EF (regressor and traced LV) and LV Dice.
//! A malformed number or an unknown video in `VolumeTracings.csv` is an error naming the line.
//! Skips with a note when `ffmpeg` is not on PATH (CI installs it: `.ci/run`).

// A test reads best as one story, so test functions may run past the line limit.
#![allow(clippy::too_many_lines)]

use std::fmt::Write as _;
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

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// One synthetic video: the ellipse's scale is `1 − k (1 − cos 2π(f t + φ)) / 2`.
struct Heart {
    name: String,
    split: &'static str,
    mp4: bool,
    k: f64,
    hz: f64,
    phase: f64,
}

const FPS: f64 = 30.0;
const FRAMES: usize = 48;
const CX: f64 = 56.0;
const CY: f64 = 58.0;
const A: f64 = 20.0;
const B: f64 = 32.0;

impl Heart {
    fn new(i: usize, split: &'static str) -> Self {
        let frac = |x: f64| x - x.floor();
        // EF from 25 to 75 %, spread over the videos
        let ef = 25.0 + 50.0 * frac(0.37 + i as f64 * 0.618_034);
        Heart {
            name: format!("0XECHO{i:02}"),
            split,
            mp4: i % 2 == 1,
            k: 1.0 - (1.0 - ef / 100.0).cbrt(),
            hz: 1.0 + 0.5 * frac(i as f64 * 0.371),
            phase: frac(i as f64 * 0.293),
        }
    }

    fn scale(&self, t: f64) -> f64 {
        1.0 - self.k * (1.0 - (2.0 * std::f64::consts::PI * (self.hz * t + self.phase)).cos()) / 2.0
    }

    /// EF of the beat: area–length volume of the ellipse goes as the cube of its scale.
    fn ef(&self) -> f64 {
        100.0 * (1.0 - (1.0 - self.k).powi(3))
    }

    /// The first frame at the given phase of the cycle (0 = ED, 0.5 = ES).
    fn frame_at(&self, cycle: f64) -> usize {
        (0..4)
            .map(|m| ((m as f64 + cycle - self.phase) / self.hz * FPS).round())
            .find(|&n| n >= 0.0 && (n as usize) < FRAMES)
            .map(|n| n as usize)
            .unwrap_or(0)
    }

    fn ext(&self) -> &'static str {
        if self.mp4 { "mp4" } else { "avi" }
    }

    /// The ffmpeg command that draws the video.
    fn ffmpeg(&self, ffmpeg: &Path, dir: &Path) -> Command {
        let s = format!(
            "(1-{k}*(1-cos(2*PI*({f}*T+{p})))/2)",
            k = self.k,
            f = self.hz,
            p = self.phase
        );
        // cavity (dark) inside the scaled ellipse, a bright rim a fifth of its size wider,
        // grey tissue around; then speckle that changes every frame
        let lum = format!(
            "st(0,{s});st(1,pow((X-{CX})/{A},2)+pow((Y-{CY})/{B},2));\
             if(lte(ld(1),ld(0)*ld(0)),30,if(lte(ld(1),pow(ld(0)+0.2,2)),190,110))"
        );
        let src = format!(
            "nullsrc=s=112x112:r={FPS}:d={},format=gray,geq=lum='{lum}',noise=c0s=35:c0f=t+u",
            FRAMES as f64 / FPS
        );
        let mut c = Command::new(ffmpeg);
        c.args(["-v", "error", "-y", "-f", "lavfi", "-i", &src]);
        if self.mp4 {
            c.args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ]);
        } else {
            c.args(["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"]);
        }
        c.arg(dir.join(format!("{}.{}", self.name, self.ext())));
        c
    }

    /// `VolumeTracings.csv` rows of one frame: the long axis, then 20 chords across it.
    fn tracing(&self, out: &mut String, frame: usize, with_ext: bool) {
        let s = self.scale(frame as f64 / FPS);
        let (a, b) = (A * s, B * s);
        let name = if with_ext {
            format!("{}.{}", self.name, self.ext())
        } else {
            self.name.clone()
        };
        let _ = writeln!(
            out,
            "{name},{CX:.2},{:.2},{CX:.2},{:.2},{frame}",
            CY - b,
            CY + b
        );
        for i in 0..20 {
            let y = CY - b + 2.0 * b * (i as f64 + 0.5) / 20.0;
            let w = a * (1.0 - ((y - CY) / b).powi(2)).max(0.0).sqrt();
            let _ = writeln!(
                out,
                "{name},{:.2},{y:.2},{:.2},{y:.2},{frame}",
                CX - w,
                CX + w
            );
        }
    }
}

/// Writes the dataset; returns the videos. Ten TRAIN (one without tracings), four VAL, four
/// TEST, plus a corrupt and a missing TRAIN video.
fn make_dataset(ffmpeg: &Path, root: &Path) -> Vec<Heart> {
    let videos = root.join("Videos");
    std::fs::create_dir_all(&videos).unwrap();
    let hearts: Vec<Heart> = (0..18)
        .map(|i| {
            let split = match i {
                0..10 => "TRAIN",
                10..14 => "VAL",
                _ => "TEST",
            };
            Heart::new(i, split)
        })
        .collect();
    for chunk in hearts.chunks(6) {
        let mut running: Vec<_> = chunk
            .iter()
            .map(|h| h.ffmpeg(ffmpeg, &videos).spawn().expect("start ffmpeg"))
            .collect();
        for c in &mut running {
            assert!(c.wait().unwrap().success(), "ffmpeg failed");
        }
    }
    std::fs::write(
        videos.join("0XCORRUPT.mp4"),
        b"\0\0\0\x18ftypisom garbage, not a video",
    )
    .unwrap();
    let mut list =
        String::from("FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n");
    let edv = 4.0 / 3.0 * std::f64::consts::PI * A * A * B;
    for h in &hearts {
        let esv = edv * (1.0 - h.k).powi(3);
        let _ = writeln!(
            list,
            "{},{:.4},{esv:.1},{edv:.1},112,112,30,{FRAMES},{}",
            h.name,
            h.ef(),
            h.split
        );
    }
    list.push_str(
        "0XCORRUPT,55.0,30,70,112,112,30,48,TRAIN\n0XMISSING,60.0,30,75,112,112,30,48,TRAIN\n",
    );
    std::fs::write(root.join("FileList.csv"), list).unwrap();
    let mut tr = String::from("FileName,X1,Y1,X2,Y2,Frame\n");
    for (i, h) in hearts.iter().enumerate() {
        if i == 9 {
            continue; // a FileList row without tracings trains the EF head only
        }
        // EchoNet writes the extension; accept it either way
        h.tracing(&mut tr, h.frame_at(0.0), i % 3 != 0);
        h.tracing(&mut tr, h.frame_at(0.5), i % 3 != 0);
    }
    std::fs::write(root.join("VolumeTracings.csv"), tr).unwrap();
    hearts
}

fn yaml(root: &Path) -> String {
    format!(
        "app: vjepa\neval_name: finetune\nfolder: runs\ntag: echo\n\
         model_kwargs:\n  pretrain_kwargs:\n    encoder:\n      checkpoint_key: target_encoder\n      \
         model_name: vit_tiny\n      embed_dim: 32\n      depth: 2\n      num_heads: 2\n      patch_size: 16\n      tubelet_size: 2\n\
         experiment:\n  classifier: {{num_heads: 2, num_probe_blocks: 1}}\n  \
         data: {{dataset_type: EchoNet, root: {}, resolution: 64, frames_per_clip: 8, frame_step: 2}}\n  \
         optimization: {{batch_size: 4, num_epochs: 8, seed: 11}}\n\
         finetune:\n  init: random\n  steps_per_epoch: 10\n  lr: 3.0e-3\n  encoder_lr: 1.0e-3\n  layer_decay: 0.8\n  \
         warmup_epochs: 0.5\n  clip_grad: 1.0\n  heads:\n  \
         - {{name: ef, task: ef}}\n  - {{name: lv, task: lv_segmentation, loss_weight: 2.0}}\n",
        root.display()
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn finetunes_on_an_echonet_layout_dataset_made_by_ffmpeg() {
    let Some(ffmpeg) = which("ffmpeg") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs ffmpeg (.ci/run installs it)"
        );
        eprintln!("note: ffmpeg not found on PATH; skipping the EchoNet-layout fine-tuning test");
        return;
    };
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("EchoNet-Dynamic");
    let hearts = make_dataset(&ffmpeg, &root);
    eprintln!(
        "dataset written by ffmpeg in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let cfg = dir.path().join("ft.yaml");
    std::fs::write(&cfg, yaml(&root)).unwrap();
    let cfg = cfg.to_str().unwrap();

    let o = trainer(&["finetune", "--config", cfg], dir.path());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "finetune failed:\n{stderr}\n{stdout}");
    eprintln!("{stdout}");
    eprintln!(
        "fine-tuning finished {:.1} s after the start",
        t0.elapsed().as_secs_f64()
    );
    assert!(stdout.contains("EchoNet-layout dataset"), "{stdout}");
    // the corrupt and the missing video are named in warnings, skipped and counted
    assert!(
        stderr.contains("0XCORRUPT.mp4") && stderr.contains("unreadable"),
        "{stderr}"
    );
    assert!(
        stderr.contains("0XMISSING") && stderr.contains("missing"),
        "{stderr}"
    );

    let run = dir.path().join("runs/finetune/echo");
    for f in [
        "latest.safetensors",
        "latest.json",
        "metrics.csv",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let s = json(&run.join("summary.json"));
    let d = &s["data"];
    assert_eq!(d["skipped_unreadable"], 1, "{d}");
    assert_eq!(d["skipped_missing"], 1, "{d}");
    assert_eq!(d["without_tracings"], 1, "{d}");
    assert_eq!(
        d["videos"],
        serde_json::json!({"train": 10, "val": 4, "test": 4})
    );
    assert_eq!(
        d["traced_videos"],
        serde_json::json!({"train": 9, "val": 4, "test": 4})
    );
    assert_eq!(s["synthetic_training_data"], false);
    assert_eq!(s["steps"], 80);
    let v = &s["test_videos"];
    assert_eq!(v["videos"], 4, "{v}");
    assert_eq!(v["traced_videos"], 4, "{v}");
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}"));
    let (mae, mean_mae) = (num(&v["ef_mae"]), num(&v["ef_mean_predictor_mae"]));
    let traced = num(&v["ef_traced_raw_mae"]);
    let true_traced = num(&v["ef_true_traced_mae"]);
    let dice = num(&s["test"]["lv_dice"]);
    // masks that did not line up with the frames (or a loss on untraced frames) would leave
    // the decoder far below this on the contracting ellipse (0.82 when written)
    assert!(dice > 0.5 && dice <= 1.0, "test LV Dice {dice}");
    // the tracing rule on the true outlines recovers the label closely (the traced frames are
    // the sampled ED and ES, a little off the true extremes, and the outline is resampled)
    assert!(
        true_traced < 6.0,
        "EF from the true outlines is off by {true_traced}"
    );
    // the training mean is the mean of the TRAIN labels
    let train_mean = hearts[..10].iter().map(Heart::ef).sum::<f64>() / 10.0;
    assert!((num(&s["ef_scaler"]["mean"]) - train_mean).abs() < 1e-3);
    eprintln!(
        "test videos: EF regressor MAE {mae:.2} vs mean predictor {mean_mae:.2}; traced LV raw {traced:.2} (calibrated {}); true outlines {true_traced:.2}; LV Dice {dice:.3}",
        v["ef_traced_mae"]
    );
    // the recipe's bar on a dataset this project did not render: EF from the traced LV,
    // calibrated on VAL, within half the mean predictor's error on TEST (0.22 when written;
    // the run is seeded, so this is a fixed number per machine, not a flaky one)
    let calibrated = num(&v["ef_traced_mae"]);
    assert!(
        calibrated <= 0.5 * mean_mae,
        "EF from the traced LV {calibrated:.2} vs mean predictor {mean_mae:.2}"
    );
    let ck = json(&run.join("latest.json"));
    assert!(ck["probes"]["ef"].is_object(), "{ck}");
    assert!(
        ck.to_string().contains("lv_head"),
        "no LV head in the checkpoint"
    );

    // a malformed number and an unknown video in VolumeTracings.csv name the line
    let tracings = root.join("VolumeTracings.csv");
    let good = std::fs::read_to_string(&tracings).unwrap();
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    let bad_number = {
        let mut l = lines.clone();
        let cells: Vec<&str> = l[6].split(',').collect();
        l[6] = format!(
            "{},{},abc,{},{},{}",
            cells[0], cells[1], cells[3], cells[4], cells[5]
        );
        l
    };
    lines[9] = lines[9].replacen("0XECHO", "0XNOSUCH", 1);
    for (text, want) in [
        (
            bad_number.join("\n"),
            ["line 7", "Y1 `abc` is not a number"],
        ),
        (lines.join("\n"), ["line 10", "is not in FileList.csv"]),
    ] {
        std::fs::write(&tracings, text).unwrap();
        let o = trainer(&["finetune", "--config", cfg, "--restart"], dir.path());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "a bad VolumeTracings.csv was accepted");
        for w in want {
            assert!(
                err.contains(w) && err.contains("VolumeTracings.csv"),
                "wanted `{w}` in:\n{err}"
            );
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::write(&tracings, good).unwrap();

    // no cache: every clip is decoded from its file; the first 4 rows of each split
    let small = yaml(&root)
        .replace(
            "frame_step: 2}",
            "frame_step: 2, cache_mb: 0, max_videos_per_split: 4}",
        )
        .replace("num_epochs: 8", "num_epochs: 1")
        .replace("steps_per_epoch: 10", "steps_per_epoch: 2")
        .replace("tag: echo", "tag: uncached");
    let cfg2 = dir.path().join("uncached.yaml");
    std::fs::write(&cfg2, small).unwrap();
    let o = trainer(
        &["finetune", "--config", cfg2.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        o.status.success(),
        "uncached run failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = json(&dir.path().join("runs/finetune/uncached/summary.json"));
    let d = &s["data"];
    assert_eq!(d["cached_videos"], 0, "{d}");
    assert_eq!(d["selected_rows"], 12, "{d}");
    assert_eq!(
        d["videos"],
        serde_json::json!({"train": 4, "val": 4, "test": 4})
    );
    assert!(s["test_videos"]["ef_mean_predictor_mae"].is_number(), "{s}");
    eprintln!("test finished in {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn the_shipped_echonet_config_dry_runs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cfg = repo.join("configs/quickstart/finetune-echonet.yaml");
    let cfg = cfg.to_str().unwrap();
    let o = trainer(&["finetune", "--dry-run", "--config", cfg], &repo);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("EchoNet-layout dataset"), "{out}");
    assert!(out.contains("no data or checkpoint was read"), "{out}");
    let o = trainer(&["finetune", "--dry-run", "--json", "--config", cfg], &repo);
    assert!(o.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(plan["echonet"]["root"].is_string(), "{plan}");
    assert!(plan["phantom"].is_null(), "{plan}");
    let heads: Vec<&str> = plan["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["task"].as_str().unwrap())
        .collect();
    assert_eq!(heads, ["ef", "lv_segmentation"]);
}

#[test]
fn a_view_head_on_echonet_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(Path::new("nowhere")).replace(
        "  - {name: ef, task: ef}",
        "  - {name: view, task: view}\n  - {name: ef, task: ef}",
    );
    let cfg = dir.path().join("v.yaml");
    std::fs::write(&cfg, text).unwrap();
    let o = trainer(
        &["finetune", "--dry-run", "--config", cfg.to_str().unwrap()],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no view labels"),
        "{err}"
    );
}
