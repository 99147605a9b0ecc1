//! `trainer synth` through the real binary: the same seed writes byte-identical videos, the files
//! decode with an independent decoder (ffprobe, required in CI), the lists parse in the reference
//! formats, and the ground-truth EF agrees with the volumes it came from.

use std::path::{Path, PathBuf};
use std::process::Command;

const FRAMES: usize = 12;

fn synth(out: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "synth",
            "--patients",
            "4",
            "--views",
            "a4c,psax",
            "--frames",
        ])
        .arg(FRAMES.to_string())
        .args(["--width", "64", "--height", "48", "--seed", "11", "--out"])
        .arg(out)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run trainer synth");
    assert!(
        status.status.success(),
        "trainer synth failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

fn lines(p: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

fn videos(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("videos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn ffprobe() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ffprobe"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must have ffprobe (.ci/run installs ffmpeg)"
        );
        eprintln!("note: ffprobe not found; skipping the independent-decoder check");
    }
    found
}

#[test]
fn synth_is_reproducible_decodable_and_in_reference_format() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    synth(&a);
    synth(&b);

    // same seed, same bytes
    let (va, vb) = (videos(&a), videos(&b));
    assert_eq!(va.len(), 8, "4 patients x 2 views");
    for (x, y) in va.iter().zip(&vb) {
        assert_eq!(x.file_name(), y.file_name());
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} differs between two runs with the same seed",
            x.display()
        );
    }

    // an independent decoder reads every file: H.264, the size and frame count written
    if let Some(ffprobe) = ffprobe() {
        for v in &va {
            let out = Command::new(&ffprobe)
                .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
                .args([
                    "-show_entries",
                    "stream=codec_name,width,height,nb_read_frames",
                ])
                .args(["-of", "csv=p=0"])
                .arg(v)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(
                out.status.success(),
                "{}: {}",
                v.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(text, format!("h264,64,48,{FRAMES}"), "{}", v.display());
        }
    }

    // view lists: `path class`, classes.txt names every index
    let classes = std::fs::read_to_string(a.join("view/classes.txt")).unwrap();
    let n_classes = classes.lines().filter(|l| !l.trim().is_empty()).count();
    let mut listed = 0;
    for split in ["train", "val", "test"] {
        for row in lines(&a.join(format!("view/{split}.csv"))) {
            assert_eq!(row.len(), 2, "{row:?}");
            assert!(Path::new(&row[0]).is_file(), "{}", row[0]);
            let c: usize = row[1].parse().unwrap();
            assert!(c < n_classes);
            listed += 1;
        }
    }
    assert_eq!(listed, 8, "every video is in exactly one view split");

    // EF lists: z-scores whose scaler was fitted on train only
    let scaler: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("ef/scaler.json")).unwrap()).unwrap();
    assert_eq!(scaler["fitted_on"], "train");
    let (mean, std) = (
        scaler["mean"].as_f64().unwrap(),
        scaler["std"].as_f64().unwrap(),
    );
    let truth = std::fs::read_to_string(a.join("ground_truth.csv")).unwrap();
    let mut rows = truth.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (path_c, ef_c, edv_c, esv_c, split_c) = (
        col("path"),
        col("ef_percent"),
        col("edv_ml"),
        col("esv_ml"),
        col("split"),
    );
    let truth: Vec<Vec<String>> = rows
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(truth.len(), 8);
    let mut train_ef = Vec::new();
    for r in &truth {
        let (ef, edv, esv): (f64, f64, f64) = (
            r[ef_c].parse().unwrap(),
            r[edv_c].parse().unwrap(),
            r[esv_c].parse().unwrap(),
        );
        // the table rounds to 4 / 3 decimals
        assert!((ef - 100.0 * (edv - esv) / edv).abs() < 0.01, "{r:?}");
        assert!((10.0..=85.0).contains(&ef), "{r:?}");
        if r[split_c] == "train" && r[path_c].ends_with("_a4c.mp4") {
            train_ef.push(ef);
        }
    }
    let m = train_ef.iter().sum::<f64>() / train_ef.len() as f64;
    assert!(
        (m - mean).abs() < 1e-3,
        "scaler mean {mean} vs train EF mean {m}"
    );
    for split in ["train", "val", "test"] {
        for row in lines(&a.join(format!("ef/{split}.csv"))) {
            assert_eq!(row.len(), 2, "{row:?}");
            let z: f64 = row[1].parse().unwrap();
            let r = truth
                .iter()
                .find(|r| r[path_c] == row[0])
                .expect("listed video has truth");
            let ef: f64 = r[ef_c].parse().unwrap();
            assert!((z * std + mean - ef).abs() < 1e-3, "{row:?} vs EF {ef}");
        }
    }

    // multi-view list: `view_0 view_1 label`, a missing view written as MISS
    for split in ["train", "val", "test"] {
        for row in lines(&a.join(format!("rvsp/{split}.csv"))) {
            assert_eq!(row.len(), 3, "{row:?}");
            assert!(row[..2].iter().any(|p| p != "MISS"), "{row:?}");
            for p in &row[..2] {
                assert!(p == "MISS" || Path::new(p).is_file(), "{p}");
            }
            row[2].parse::<f64>().unwrap();
        }
    }
}
