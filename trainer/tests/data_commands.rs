//! `trainer import echonet` and `trainer check-data` through the real binary, on tiny videos
//! written by FFmpeg (required in CI; skipped with a note elsewhere when it is not installed).
//!
//! The EchoNet-shaped folder holds MJPEG AVI files as EchoNet-Dynamic distributes them, a
//! FileList.csv row whose video is missing, one whose file is garbage, rows without EF, with a
//! bad split, and tracings that are fine, broken or orphaned. `check-data` is tested on H.264
//! MP4 files and on the imported AVI lists.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// FFmpeg, or `None` (with a note) outside CI; CI must have it.
fn ffmpeg() -> Option<PathBuf> {
    let found = which("ffmpeg");
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must have ffmpeg (.ci/run installs it)"
        );
        eprintln!("note: ffmpeg not found; skipping this test (apt-get install ffmpeg)");
    }
    found
}

fn run_ffmpeg(ffmpeg: &Path, args: &[&str], out: &Path) {
    let o = Command::new(ffmpeg)
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(out)
        .output()
        .expect("run ffmpeg");
    assert!(
        o.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn trainer(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run trainer")
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `path rest…` rows of a space-delimited list, paths reduced to their file names.
fn rows(p: &Path) -> Vec<(String, Vec<String>)> {
    read(p)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split(' ');
            let path = PathBuf::from(cols.next().unwrap_or_default());
            assert!(
                path.is_absolute(),
                "{}: relative path in `{l}`",
                p.display()
            );
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, cols.map(str::to_string).collect())
        })
        .collect()
}

fn names(p: &Path) -> Vec<String> {
    rows(p).into_iter().map(|(n, _)| n).collect()
}

// ---------------------------------------------------------------------------------------------
// The EchoNet-shaped folder

/// `(FileName as written in FileList.csv, EF cell, Split cell, video file)`; `None` = no file,
/// `Some(false)` = garbage bytes.
const FILELIST: &[(&str, &str, &str, Option<bool>)] = &[
    ("0XA", "55", "TRAIN", Some(true)),
    ("0XB.avi", "62", "TRAIN", Some(true)),
    ("0XC", "70.5", "train", Some(true)),
    ("0XD", "40", "Val", Some(true)),
    ("0XE", "65", "VAL", Some(false)),
    ("0XF", "58", "TEST", Some(true)),
    ("0XG", "15", "TRAIN", None),
    ("0XH", "", "TEST", Some(true)),
    ("0XI", "50", "EXTERNAL", Some(true)),
];
const TRAIN_EF: [f64; 3] = [55.0, 62.0, 70.5];
const FRAMES: usize = 20;

/// Traced frames per video: `(frame, half-width of the rectangular LV outline)`, in file order.
const TRACED: &[(&str, &[(usize, f64)])] = &[
    ("0XA.avi", &[(3, 20.0), (12, 12.0)]),
    ("0XB.avi", &[(5, 10.0), (15, 18.0)]), // ES first
    ("0XD.avi", &[(0, 16.0), (9, 11.0)]),
    ("0XF.avi", &[(2, 15.0), (40, 9.0)]), // frame 40 is past the 20 frames
    ("0XH.avi", &[(4, 17.0), (14, 13.0)]),
    ("0XZ.avi", &[(1, 17.0), (8, 13.0)]), // no FileList row
];
/// Chords per traced frame (plus one long-axis row), 2 px apart from y = 30.
const CHORDS: usize = 20;

/// The outline area of a rectangle of half-width `w`: `2w` wide, `2·(CHORDS−1)` high.
fn area(w: f64) -> f64 {
    2.0 * w * 2.0 * (CHORDS - 1) as f64
}

fn make_echonet(dir: &Path, ffmpeg: &Path) -> PathBuf {
    let root = dir.join("EchoNet-Dynamic");
    let videos = root.join("Videos");
    std::fs::create_dir_all(&videos).unwrap();
    let base = dir.join("base.avi");
    run_ffmpeg(
        ffmpeg,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=112x112:rate=50",
            "-frames:v",
            &FRAMES.to_string(),
            "-c:v",
            "mjpeg",
            "-pix_fmt",
            "yuvj420p",
        ],
        &base,
    );
    let mut list =
        String::from("FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n");
    for (name, ef, split, file) in FILELIST {
        list.push_str(&format!("{name},{ef},30,70,112,112,50,{FRAMES},{split}\n"));
        let stem = name.trim_end_matches(".avi");
        let path = videos.join(format!("{stem}.avi"));
        match file {
            Some(true) => {
                std::fs::copy(&base, &path).unwrap();
            }
            Some(false) => {
                std::fs::write(&path, b"this is not a video at all, just bytes").unwrap()
            }
            None => {}
        }
    }
    std::fs::copy(&base, videos.join("stray.avi")).unwrap();
    std::fs::write(root.join("FileList.csv"), list).unwrap();
    let mut tr = String::from("FileName,X1,Y1,X2,Y2,Frame\n");
    for (name, frames) in TRACED {
        for (frame, w) in *frames {
            tr.push_str(&format!("{name},56.0,25.0,56.0,75.0,{frame}\n"));
            for k in 0..CHORDS {
                let y = 30.0 + 2.0 * k as f64;
                tr.push_str(&format!(
                    "{name},{:.1},{y:.1},{:.1},{y:.1},{frame}\n",
                    56.0 - w,
                    56.0 + w
                ));
            }
        }
    }
    std::fs::write(root.join("VolumeTracings.csv"), tr).unwrap();
    root
}

fn ef_of(name: &str) -> f64 {
    let stem = name.trim_end_matches(".avi");
    FILELIST
        .iter()
        .find(|r| r.0.trim_end_matches(".avi") == stem)
        .and_then(|r| r.1.parse().ok())
        .unwrap_or_else(|| panic!("no EF for {name}"))
}

/// Report rows as `(file_name, reason, dropped_from, detail)`.
fn report(out: &Path) -> Vec<(String, String, String, String)> {
    let t = read(&out.join("import-report.csv"));
    let mut lines = t.lines();
    assert_eq!(
        lines.next(),
        Some("source,file_name,split,reason,dropped_from,detail")
    );
    lines
        .map(|l| {
            // the detail is last and may be quoted; the other cells have no commas
            let cells: Vec<&str> = l.splitn(6, ',').collect();
            assert_eq!(cells.len(), 6, "{l}");
            (
                cells[1].to_string(),
                cells[3].to_string(),
                cells[4].to_string(),
                cells[5].to_string(),
            )
        })
        .collect()
}

fn reason_of(rep: &[(String, String, String, String)], file: &str) -> Vec<String> {
    rep.iter()
        .filter(|r| r.0 == file)
        .map(|r| r.1.clone())
        .collect()
}

/// What both import modes agree on: the EF z-scores, the scaler, the LV lists and outlines and
/// the report rows that do not depend on decoding.
fn check_common_outputs(out: &Path) {
    // EF: z-scores with the mean and population std of the TRAIN rows written
    let mean = TRAIN_EF.iter().sum::<f64>() / 3.0;
    let std = (TRAIN_EF.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
    let scaler: serde_json::Value =
        serde_json::from_str(&read(&out.join("ef/scaler.json"))).expect("scaler.json is JSON");
    assert!((scaler["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!((scaler["std"].as_f64().unwrap() - std).abs() < 1e-12);
    assert_eq!(scaler["units"], "%");
    assert_eq!(scaler["fitted_on"], "train");
    assert_eq!(scaler["count"], 3);
    assert_eq!(
        names(&out.join("ef/train.csv")),
        ["0XA.avi", "0XB.avi", "0XC.avi"]
    );
    assert_eq!(names(&out.join("ef/test.csv")), ["0XF.avi"]);
    for split in ["train", "val", "test"] {
        for (name, cols) in rows(&out.join(format!("ef/{split}.csv"))) {
            assert_eq!(cols.len(), 1, "{split}: {name} {cols:?}");
            let z: f64 = cols[0].parse().unwrap();
            let want = (ef_of(&name) - mean) / std;
            assert!(
                (z - want).abs() < 1e-9,
                "{split} {name}: z {z}, want {want}"
            );
        }
    }

    // LV: ED = the larger outline, whatever the order in the file
    let lv = |s: &str| -> Vec<(String, Vec<String>)> { rows(&out.join(format!("lv/{s}.csv"))) };
    let frames = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        lv("train"),
        [
            ("0XA.avi".to_string(), frames(&["3", "12"])),
            ("0XB.avi".to_string(), frames(&["15", "5"])),
        ]
    );
    assert_eq!(lv("val"), [("0XD.avi".to_string(), frames(&["0", "9"]))]);
    assert_eq!(lv("test"), [("0XH.avi".to_string(), frames(&["4", "14"]))]);
    let tj: serde_json::Value =
        serde_json::from_str(&read(&out.join("lv/tracings.json"))).expect("tracings.json is JSON");
    let videos = tj["videos"].as_array().expect("videos array");
    assert_eq!(videos.len(), 4);
    let b = videos
        .iter()
        .find(|v| v["file_name"] == "0XB.avi")
        .expect("0XB in tracings.json");
    assert_eq!(b["split"], "train");
    assert_eq!(b["ed"]["frame"], 15);
    assert_eq!(b["es"]["frame"], 5);
    assert!((b["ed"]["area_px"].as_f64().unwrap() - area(18.0)).abs() < 1e-9);
    assert!((b["es"]["area_px"].as_f64().unwrap() - area(10.0)).abs() < 1e-9);
    let poly = b["ed"]["polygon"].as_array().unwrap();
    assert_eq!(poly.len(), 2 * CHORDS);
    assert_eq!(poly[0], serde_json::json!([38.0, 30.0]));
    assert_eq!(poly[CHORDS], serde_json::json!([74.0, 68.0]));
    assert_eq!(
        b["ed"]["long_axis"],
        serde_json::json!([56.0, 25.0, 56.0, 75.0])
    );
    assert!(Path::new(b["path"].as_str().unwrap()).is_absolute());

    // the report: nothing dropped silently
    let rep = report(out);
    assert_eq!(reason_of(&rep, "0XG"), ["video_missing"]);
    assert_eq!(reason_of(&rep, "0XH"), ["no_ef"]);
    assert_eq!(reason_of(&rep, "0XI"), ["bad_split"]);
    assert_eq!(reason_of(&rep, "0XC"), ["no_tracings"]);
    assert_eq!(reason_of(&rep, "0XF"), ["bad_tracings"]);
    assert_eq!(reason_of(&rep, "0XZ"), ["tracings_without_row"]);
    assert_eq!(reason_of(&rep, "stray.avi"), ["not_in_filelist"]);
    let find = |f: &str| rep.iter().find(|r| r.0 == f).unwrap().clone();
    assert_eq!(find("0XG").2, "all");
    assert_eq!(find("0XI").2, "ef+lv");
    assert!(find("0XF").3.contains("past the end"), "{:?}", find("0XF"));
    assert!(read(&out.join("README.txt")).contains("lv/tracings.json"));
}

#[test]
fn import_echonet_without_decoding() {
    let Some(ff) = ffmpeg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = make_echonet(dir.path(), &ff);
    let out = dir.path().join("imported");
    let o = trainer(
        &[
            "import",
            "echonet",
            "--root",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--no-check",
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    assert_eq!(s["decoded"], false);
    assert_eq!(s["filelist_rows"], FILELIST.len());
    assert_eq!(s["dropped"]["video_missing"], 1);
    assert_eq!(s["ef"]["train"], 3);
    check_common_outputs(&out);
    // without decoding the garbage file is not found out: it stays in the lists
    assert_eq!(names(&out.join("ef/val.csv")), ["0XD.avi", "0XE.avi"]);
    assert_eq!(names(&out.join("pretrain.csv")).len(), 8);
    let rep = report(&out);
    assert_eq!(reason_of(&rep, "0XE"), ["no_tracings"]);
}

/// Waits on the default build's AVI (MJPEG) reader.
#[test]
fn import_echonet_decodes_every_video() {
    let Some(ff) = ffmpeg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = make_echonet(dir.path(), &ff);
    let out = dir.path().join("imported");
    let o = trainer(
        &[
            "import",
            "echonet",
            "--root",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--jobs",
            "2",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(screen.contains("train 3 / val 1 / test 1"), "{screen}");
    assert!(screen.contains("missing 1"), "{screen}");
    assert!(screen.contains("7 readable, 1 unreadable"), "{screen}");
    check_common_outputs(&out);
    assert_eq!(names(&out.join("ef/val.csv")), ["0XD.avi"]);
    let pretrain = names(&out.join("pretrain.csv"));
    assert_eq!(
        pretrain,
        [
            "0XA.avi", "0XB.avi", "0XC.avi", "0XD.avi", "0XF.avi", "0XH.avi", "0XI.avi"
        ]
    );
    for (_, cols) in rows(&out.join("pretrain.csv")) {
        assert_eq!(cols, ["0"]);
    }
    let rep = report(&out);
    assert_eq!(reason_of(&rep, "0XE"), ["unreadable"]);
    let e = rep.iter().find(|r| r.0 == "0XE").unwrap();
    assert_eq!(e.2, "all");
    assert!(
        e.3.contains("0XE.avi"),
        "the decoder's message names the file: {e:?}"
    );

    // every imported list decodes
    let o = trainer(
        &[
            "check-data",
            out.join("pretrain.csv").to_str().unwrap(),
            out.join("ef/val.csv").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("7 distinct videos: 7 readable, 0 failed"), "{t}");
    let row = t
        .lines()
        .find(|l| l.contains("112x112"))
        .unwrap_or_else(|| panic!("no 112x112 group:\n{t}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.contains(&"avi") && cells.contains(&"mjpeg") && cells.contains(&"50"),
        "{row}"
    );
    assert_eq!(cells[cells.len() - 2..], ["7", "0"], "{row}");
}

// ---------------------------------------------------------------------------------------------
// check-data on H.264 MP4

#[test]
fn check_data_names_bad_files_and_groups_the_rest() {
    let Some(ff) = ffmpeg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ffmpeg(
        &ff,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=25",
            "-frames:v",
            "10",
            "-c:v",
            "libx264",
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p",
        ],
        &d.join("good.mp4"),
    );
    std::fs::copy(d.join("good.mp4"), d.join("good2.mp4")).unwrap();
    std::fs::write(d.join("bad.mp4"), b"\0\0\0\x18ftypisom but nothing else").unwrap();
    // relative paths resolve against the working directory, as in the data loader
    std::fs::write(
        d.join("single.csv"),
        "good.mp4 0\nbad.mp4 1\nmissing.mp4 2\ngood.mp4 3\n",
    )
    .unwrap();
    std::fs::write(
        d.join("multi.csv"),
        "good.mp4 MISS 0.5\nMISS good2.mp4 1.5\n",
    )
    .unwrap();
    std::fs::write(d.join("good.csv"), "good.mp4 0\ngood2.mp4 1\n").unwrap();

    let o = trainer(&["check-data", "single.csv", "multi.csv", "--jobs", "2"], d);
    assert!(!o.status.success(), "a bad file must fail: {}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    let failed: Vec<&str> = t.lines().filter(|l| l.starts_with("FAILED")).collect();
    assert_eq!(failed.len(), 2, "{t}");
    assert!(
        failed[0].starts_with("FAILED bad.mp4 (listed in single.csv)"),
        "{t}"
    );
    assert!(
        failed[0].matches("bad.mp4").count() >= 2,
        "the error names the file: {t}"
    );
    assert!(failed[1].starts_with("FAILED missing.mp4"), "{t}");
    assert!(t.contains("4 distinct videos: 2 readable, 2 failed"), "{t}");
    assert!(t.contains("2 MISS views not checked"), "{t}");
    let header = t
        .lines()
        .find(|l| l.starts_with("container"))
        .unwrap_or_else(|| panic!("no summary table:\n{t}"));
    assert!(header.contains("codec") && header.contains("profile") && header.contains("fps"));
    let good = t
        .lines()
        .find(|l| l.contains("64x48"))
        .unwrap_or_else(|| panic!("no 64x48 group:\n{t}"));
    let cells: Vec<&str> = good.split_whitespace().collect();
    assert!(
        cells.contains(&"mp4") && cells.contains(&"h264") && cells.contains(&"25"),
        "{good}"
    );
    assert_eq!(cells[cells.len() - 2..], ["2", "0"], "{good}");

    let o = trainer(&["check-data", "single.csv", "multi.csv", "--json"], d);
    assert!(!o.status.success());
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    assert_eq!(s["videos"], 4, "good, bad, missing, good2 once each");
    assert_eq!(s["ok"], 2);
    assert_eq!(s["failed"], 2);
    let groups = s["groups"].as_array().unwrap();
    let g = groups
        .iter()
        .find(|g| g["size"] == "64x48")
        .expect("64x48 group");
    assert_eq!(
        (g["container"].as_str(), g["codec"].as_str()),
        (Some("mp4"), Some("h264"))
    );
    assert_eq!(
        (g["fps"].as_str(), g["ok"].as_u64(), g["failed"].as_u64()),
        (Some("25"), Some(2), Some(0))
    );
    let failed: u64 = groups.iter().filter_map(|g| g["failed"].as_u64()).sum();
    assert_eq!(failed, 2);
    let missing = s["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "missing.mp4")
        .expect("missing.mp4 reported");
    assert_eq!(missing["stage"], "open");

    for list in ["good.csv", "multi.csv"] {
        let o = trainer(&["check-data", list], d);
        assert!(o.status.success(), "{list}: {}", text(&o));
    }
}
