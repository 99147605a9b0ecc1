//! One input path: the same H.264 file through the trainer's probe-training loader, the probes'
//! evaluation (`trainer evaluate`), `quantize report --csv` and the edge runtime's live pipeline
//! (`edge-runtime run --source file:`) must give the encoder bit-identical input tensors.
//!
//! The video is made by ffmpeg (libx264, B-frames) from a phantom clip at a cart's capture size
//! (320×240, downscaled to the model's 64 px), so decoding, frame choice (the reference's
//! linspace rule over 8 frames with step 4: 0, 4, 9, 13, 18, 22, 27, 31), resize, crop and
//! normalisation are all exercised. Each binary writes what it hands the encoder with its
//! hidden `--dump-inputs DIR` flag.
//!
//! Sector handling is not part of this file's comparison: the trainer's loader has no sector
//! option (its configs are the reference's full-frame ones), and a detected sector differs by
//! design between an offline estimate (a whole clip) and the cart's online one. Both crop and
//! blank through the same `echojepa_input::Sector`, tested in the input crate.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::{bin, repo, run};
use echojepa_phantom::{Phantom, PhantomParams, View};
use echojepa_video::{EncoderSettings, write_mp4};

const FRAMES: usize = 8;
const STEP: usize = 4;
const RES: usize = 64;
/// The reference's first-window frames for 8 frames, step 4.
const LINSPACE: [u64; 8] = [0, 4, 9, 13, 18, 22, 27, 31];

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|c| c.is_file())
    })
}

/// `a.mp4` and `b.mp4` (two phantom patients): our writer's file re-encoded by ffmpeg's libx264
/// with B-frames where ffmpeg is installed (CI installs it), our writer's file otherwise.
fn videos(dir: &Path) -> Vec<PathBuf> {
    let ffmpeg = which("ffmpeg");
    if ffmpeg.is_none() && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI needs ffmpeg for the parity video (see .ci/run)");
    }
    let mut out = Vec::new();
    for (name, seed) in [("a", 7u64), ("b", 8)] {
        let clip = Phantom::new(PhantomParams::sample(seed, View::A4c))
            .unwrap()
            .render_clip(48, 30.0, 0.0, 320, 240)
            .unwrap();
        let ours = dir.join(format!("{name}-ours.mp4"));
        write_mp4(&ours, &clip, EncoderSettings::default()).unwrap();
        let path = dir.join(format!("{name}.mp4"));
        match &ffmpeg {
            Some(ff) => {
                run(Command::new(ff)
                    .args(["-v", "error", "-y", "-i"])
                    .arg(&ours)
                    .args([
                        "-c:v", "libx264", "-bf", "2", "-g", "12", "-pix_fmt", "yuv420p", "-crf",
                        "18",
                    ])
                    .arg(&path));
            }
            None => std::fs::rename(&ours, &path).unwrap(),
        }
        out.push(path);
    }
    out
}

fn pretrain_yaml(list: &Path) -> String {
    format!(
        "app: vjepa\nfolder: enc\n\
         data:\n  dataset_type: VideoDataset\n  datasets: [{list}]\n  batch_size: 2\n  crop_size: {RES}\n  \
         dataset_fpcs: [{FRAMES}]\n  frame_step: {STEP}\n  num_workers: 1\n\
         data_aug:\n  random_resize_aspect_ratio: [0.9, 1.1]\n  random_resize_scale: [0.7, 1.0]\n\
         loss:\n  loss_exp: 1.0\n\
         mask:\n\
         - {{aspect_ratio: [0.75, 1.5], num_blocks: 1, spatial_scale: [0.5, 0.5], temporal_scale: [1.0, 1.0]}}\n\
         meta:\n  dtype: float32\n  seed: 7\n  save_every_freq: 0\n\
         model:\n  model_name: vit_tiny\n  embed_dim: 64\n  depth: 2\n  num_heads: 4\n  \
         pred_depth: 1\n  pred_embed_dim: 64\n  pred_num_heads: 4\n  num_mask_tokens: 1\n\
         optimization:\n  ema: [0.99, 0.999]\n  epochs: 1\n  ipe: 1\n  ipe_scale: 1.0\n  \
         warmup: 0.5\n  start_lr: 2.0e-4\n  lr: 2.0e-3\n  final_lr: 2.0e-4\n  weight_decay: 0.04\n",
        list = list.display()
    )
}

fn probe_yaml(dir: &Path) -> String {
    format!(
        "eval_name: video_classification_frozen\nfolder: evals\ntag: view\n\
         experiment:\n  classifier:\n    num_heads: 4\n    num_probe_blocks: 1\n\
         \x20 data:\n    dataset_type: VideoDataset\n    dataset_train: {d}/train.csv\n    \
         dataset_val: {d}/val.csv\n    dataset_test: {d}/test.csv\n    num_classes: 2\n    \
         num_segments: 1\n    resolution: {RES}\n    frames_per_clip: {FRAMES}\n    frame_step: {STEP}\n\
         \x20 optimization:\n    batch_size: 2\n    num_epochs: 1\n    seed: 1\n    multihead_kwargs:\n\
         \x20   - {{lr: 1.0e-3, start_lr: 1.0e-3, final_lr: 0.0, weight_decay: 0.01}}\n\
         model_kwargs:\n  checkpoint: enc/latest\n  pretrain_kwargs:\n    encoder:\n      \
         checkpoint_key: target_encoder\n      model_name: vit_tiny\n      embed_dim: 64\n      \
         depth: 2\n      num_heads: 4\n",
        d = dir.display()
    )
}

/// A dumped clip: its values' bytes and the frames it was made of.
#[derive(Debug)]
struct Dumped {
    file: PathBuf,
    bytes: Vec<u8>,
    shape: serde_json::Value,
    frames: Vec<u64>,
}

fn read_dump(dir: &Path, stem: &str) -> Dumped {
    let file = dir.join(format!("{stem}.f32"));
    let bytes =
        std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e} (was it dumped?)", file.display()));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap())
            .unwrap();
    let frames = json["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    Dumped {
        file,
        bytes,
        shape: json["shape"].clone(),
        frames,
    }
}

/// The runtime's dumped clip made of `frames`.
fn runtime_clip(dir: &Path, frames: &[u64]) -> Dumped {
    let mut seen = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let d = read_dump(dir, &stem);
            if d.frames == frames {
                return d;
            }
            seen.push(d.frames);
        }
    }
    panic!("the runtime ran no clip of frames {frames:?}; its clips: {seen:?}");
}

fn assert_same(what: &str, a: &Dumped, b: &Dumped) {
    assert_eq!(a.shape, b.shape, "{what}: shapes differ");
    assert_eq!(a.frames, b.frames, "{what}: frames differ");
    if a.bytes != b.bytes {
        let fa: Vec<f32> = a
            .bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let fb: Vec<f32> = b
            .bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let diff = fa.iter().zip(&fb).filter(|(x, y)| x != y).count();
        let max = fa
            .iter()
            .zip(&fb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        panic!(
            "{what}: {} and {} differ in {diff} of {} values (max |Δ| {max})",
            a.file.display(),
            b.file.display(),
            fa.len()
        );
    }
}

#[test]
fn trainer_probes_quantize_and_the_runtime_give_the_encoder_the_same_bytes() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let vids = videos(w);
    let lists = w.join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    let lines: String = vids
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{} {}\n", v.display(), i % 2))
        .collect();
    for split in ["train", "val", "test"] {
        std::fs::write(lists.join(format!("{split}.csv")), &lines).unwrap();
    }
    // View names (as `trainer synth` writes them) make the probe the bundle's view classifier.
    std::fs::write(lists.join("classes.txt"), "0 A4C\n1 A2C\n").unwrap();
    let dumps = w.join("dumps");

    // A random-init encoder (no pretraining step) and a one-epoch view probe on it: the
    // probe's training (train list) and evaluation (val, test) read clips through the loader.
    std::fs::write(w.join("pre.yaml"), pretrain_yaml(&lists.join("train.csv"))).unwrap();
    run(Command::new(bin("trainer"))
        .args(["pretrain", "--config", "pre.yaml", "--max-steps", "0"])
        .current_dir(w));
    std::fs::write(w.join("probe.yaml"), probe_yaml(&lists)).unwrap();
    run(Command::new(bin("trainer"))
        .args([
            "probe",
            "--config",
            "probe.yaml",
            "--out",
            "probe",
            "--dump-inputs",
        ])
        .arg(dumps.join("loader"))
        .current_dir(w));
    run(Command::new(bin("trainer"))
        .args([
            "evaluate",
            "--config",
            "probe.yaml",
            "--probe",
            "probe/probe",
        ])
        .args(["--split", "test", "--out", "eval", "--dump-inputs"])
        .arg(dumps.join("evaluate"))
        .current_dir(w));

    // The bundle, signed with the demo key the generic board profile trusts.
    let keys = repo().join("edge-runtime/demo/keys");
    run(Command::new(bin("quantize"))
        .args([
            "build",
            "--checkpoint",
            "enc/latest",
            "--probe",
            "view=probe/probe",
        ])
        .args([
            "--synthetic",
            "--model-version",
            "0.0.1",
            "--calibration-clips",
            "2",
        ])
        .arg("--secret-key")
        .arg(keys.join("echojepa-demo.secret"))
        .args(["--out", "bundle"])
        .current_dir(w));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("bundle/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["input"]["spacing"], "reference_linspace",
        "{manifest}"
    );
    run(Command::new(bin("quantize"))
        .args([
            "report",
            "bundle",
            "--checkpoint",
            "enc/latest",
            "--probe",
            "view=probe/probe",
        ])
        .arg("--trusted-key")
        .arg(keys.join("echojepa-demo.pub"))
        .arg("--csv")
        .arg(lists.join("test.csv"))
        .args([
            "--layer-clips",
            "1",
            "--reps",
            "1",
            "--json",
            "--dump-inputs",
        ])
        .arg(dumps.join("quantize"))
        .current_dir(w));

    // The edge runtime on the file, in real time (no clip is dropped), one clip per frame.
    let profile = std::fs::read_to_string(repo().join("boards/profiles/generic-cpu.toml")).unwrap();
    let board = profile.replace("clip_every = 8", "clip_every = 1");
    assert_ne!(
        board, profile,
        "generic-cpu.toml no longer sets clip_every = 8"
    );
    std::fs::write(w.join("board.toml"), board).unwrap();
    for v in &vids {
        let stem = v.file_stem().unwrap().to_string_lossy().into_owned();
        run(Command::new(bin("edge-runtime"))
            .args([
                "run",
                "--board",
                "board.toml",
                "--bundle",
                "bundle",
                "--no-serial",
            ])
            .arg("--source")
            .arg(format!("file:{}", v.display()))
            .args(["--max-frames", "40", "--json", "--dump-inputs"])
            .arg(dumps.join("runtime").join(&stem))
            .current_dir(w));
    }

    for v in &vids {
        let stem = v.file_stem().unwrap().to_string_lossy().into_owned();
        let clip = format!("{stem}-0");
        let loader = read_dump(&dumps.join("loader/train"), &clip);
        assert_eq!(loader.frames, LINSPACE, "the loader's frames");
        assert_eq!(
            loader.shape,
            serde_json::json!([3, FRAMES, RES, RES]),
            "the loader's shape"
        );
        assert_same(
            "probe training vs evaluation",
            &loader,
            &read_dump(&dumps.join("evaluate/test"), &clip),
        );
        assert_same(
            "loader vs quantize report",
            &loader,
            &read_dump(&dumps.join("quantize"), &clip),
        );
        assert_same(
            "loader vs edge runtime",
            &loader,
            &runtime_clip(&dumps.join("runtime").join(&stem), &LINSPACE),
        );
    }
}
