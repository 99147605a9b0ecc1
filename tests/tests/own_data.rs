//! `docs/OWN_DATA.md`, run as printed: every `sh` block of the page, in order, in one shell, on a
//! folder of echo videos written by ffmpeg (H.264 High profile with B-frames in MP4, and Motion
//! JPEG in AVI, as EchoNet-Dynamic stores its videos), not by this project's own writer.
//!
//! The videos' content is the synthetic phantom (`trainer synth`, so that EF labels are known),
//! re-encoded by ffmpeg. The page's size variables are turned down (64 px, 8 frames, a few
//! steps) so that import, check-data, pretraining, the EF probe, the signed bundle and its
//! verification all run in about a minute.
//!
//! The binaries come from the same target directory as this test (`cargo test --workspace`
//! builds them); ffmpeg must be installed (`.ci/run` installs it; elsewhere the test is skipped
//! with a note).

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::{repo, run};

/// `target/<profile>`, where cargo put the workspace binaries.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    for b in ["trainer", "quantize"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: run the tests with `cargo test --workspace` (it builds the binaries)",
            dir.join(b).display()
        );
    }
    dir
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

/// The `sh` blocks of a Markdown page, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Builds `my-echo/` (FileList.csv + Videos/) from phantom A4C videos re-encoded by ffmpeg.
fn make_folder(work: &Path, bins: &Path, ffmpeg: &Path) -> usize {
    run(Command::new(bins.join("trainer"))
        .current_dir(work)
        .env("RUST_LOG", "warn")
        .args([
            "synth",
            "--out",
            "phantom",
            "--patients",
            "40",
            "--frames",
            "40",
        ])
        .args([
            "--width",
            "96",
            "--height",
            "96",
            "--seed",
            "11",
            "--ef-views",
            "a4c",
        ]));
    let truth = std::fs::read_to_string(work.join("phantom/ground_truth.csv")).unwrap();
    let mut lines = truth.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (c_path, c_split, c_view, c_ef) =
        (col("path"), col("split"), col("view"), col("ef_percent"));
    let videos = work.join("my-echo/Videos");
    std::fs::create_dir_all(&videos).unwrap();
    let mut list = String::from("FileName,EF,ESV,EDV,Split\n");
    let mut n = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if !f[c_view].eq_ignore_ascii_case("a4c") {
            continue;
        }
        let src = work.join("phantom").join(f[c_path]);
        let src = if src.is_file() {
            src
        } else {
            PathBuf::from(f[c_path])
        };
        let (name, codec): (String, &[&str]) = if n % 2 == 0 {
            (
                format!("echo{n:03}.mp4"),
                &[
                    "-c:v",
                    "libx264",
                    "-profile:v",
                    "high",
                    "-bf",
                    "3",
                    "-pix_fmt",
                    "yuv420p",
                ],
            )
        } else {
            (
                format!("echo{n:03}.avi"),
                &["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"],
            )
        };
        run(Command::new(ffmpeg)
            .args(["-v", "error", "-y", "-i"])
            .arg(&src)
            .args(codec)
            .arg(videos.join(&name)));
        list.push_str(&format!(
            "{name},{},0,0,{}\n",
            f[c_ef],
            f[c_split].to_uppercase()
        ));
        n += 1;
    }
    std::fs::write(work.join("my-echo/FileList.csv"), list).unwrap();
    n
}

#[test]
fn own_data_page_runs_as_printed() {
    let Some(ffmpeg) = which("ffmpeg") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs ffmpeg (.ci/run)"
        );
        eprintln!("note: ffmpeg not found; skipping the OWN_DATA.md run");
        return;
    };
    let bins = bin_dir();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    std::os::unix::fs::symlink(repo().join("configs"), work.join("configs")).unwrap();
    let videos = make_folder(work, &bins, &ffmpeg);
    assert!(videos >= 30, "only {videos} A4C videos");

    let page = std::fs::read_to_string(repo().join("docs/OWN_DATA.md")).unwrap();
    let blocks = sh_blocks(&page);
    assert!(blocks.len() >= 3, "the page has {} sh blocks", blocks.len());
    let script = format!("set -euo pipefail\n{}", blocks.join("\n"));
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work)
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .env("RES", "64")
        .env("FRAMES", "8")
        .env("STEP", "4")
        .env("PRETRAIN_STEPS", "8")
        .env("PROBE_EPOCHS", "2"));
    eprintln!("{out}");

    // the lists cover every video, split as FileList.csv says
    let rows = |p: &str| {
        std::fs::read_to_string(work.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .lines()
            .count()
    };
    assert_eq!(rows("my-echo/lists/pretrain.csv"), videos, "{out}");
    let ef_rows = rows("my-echo/lists/ef/train.csv")
        + rows("my-echo/lists/ef/val.csv")
        + rows("my-echo/lists/ef/test.csv");
    assert_eq!(ef_rows, videos);
    // the probe trained and was evaluated on the test split, in EF points
    let summary: String = std::fs::read_to_string(work.join("runs/my-echo/evals/ef/summary.json"))
        .expect("probe summary");
    assert!(summary.contains("\"test\""), "{summary}");
    // a signed bundle that verifies
    assert!(work.join("my-bundle/manifest.json").is_file());
    assert!(work.join("my-bundle/manifest.sig").is_file());
    // the bundle built unsigned and signed by openssl, attached by `quantize sign`
    assert!(work.join("my-bundle-unsigned/manifest.sig").is_file());
    assert!(work.join("keys/release.pub.pem").is_file());
}
