//! Video decoding speed of the default build, side by side with `ffmpeg -threads 1` on the same
//! files, in one run: frames per second of each and their ratio.
//!
//! `cargo bench -p echojepa-video --bench decode [-- --reps 5 --seconds 4]`
//!
//! The files are made here by the system `ffmpeg` (libx264 defaults: High profile, CABAC,
//! B-frames; and Motion JPEG AVI as EchoNet-Dynamic stores its videos) at 112×112 and 640×480.
//! Each engine decodes every frame of each file `reps` times, alternating, and the median is
//! reported. Ours converts to gray as the data loader asks; `ffmpeg -f null` decodes only.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use echojepa_video::{self as video, ColorMode};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut reps = 5usize;
    let mut seconds = 4u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().and_then(|r| r.parse().ok()).unwrap_or(reps),
            "--seconds" => seconds = args.next().and_then(|r| r.parse().ok()).unwrap_or(seconds),
            _ => {}
        }
    }
    let dir = tempfile::tempdir()?;
    let cases = [
        (
            "h264 High B-frames 112x112",
            "112x112",
            "x.mp4",
            "-c:v libx264 -pix_fmt yuv420p",
        ),
        (
            "h264 High B-frames 640x480",
            "640x480",
            "y.mp4",
            "-c:v libx264 -pix_fmt yuv420p",
        ),
        (
            "MJPEG AVI 112x112",
            "112x112",
            "x.avi",
            "-c:v mjpeg -q:v 3 -pix_fmt yuvj420p",
        ),
        (
            "MJPEG AVI 640x480",
            "640x480",
            "y.avi",
            "-c:v mjpeg -q:v 3 -pix_fmt yuvj420p",
        ),
    ];
    println!("| file | frames | ffmpeg -threads 1 (fps) | ours (fps) | ours / ffmpeg |");
    println!("|---|---|---|---|---|");
    for (label, size, name, codec) in cases {
        let path = dir.path().join(name);
        let src = format!("testsrc2=size={size}:rate=50:duration={seconds},noise=alls=12:allf=t");
        let ok = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", &src])
            .args(codec.split(' '))
            .arg(&path)
            .status()?
            .success();
        anyhow::ensure!(ok, "ffmpeg could not write {name}");
        let frames = video::open(&path)?.info().frame_count;
        let (mut ff, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            ff.push(time_ffmpeg(&path)?);
            let t = Instant::now();
            let clip = video::open(&path)?.read_all(ColorMode::Gray)?;
            ours.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(clip.frames == frames, "decoded {} of {frames}", clip.frames);
        }
        let (f, o) = (frames as f64 / median(ff), frames as f64 / median(ours));
        println!("| {label} | {frames} | {f:.0} | {o:.0} | {:.2} |", o / f);
    }
    Ok(())
}

/// Decode time of `ffmpeg -threads 1 -i FILE -f null -`: the real time FFmpeg's `-benchmark`
/// reports for its processing loop (`rtime`), so process start-up is not counted against it.
fn time_ffmpeg(path: &Path) -> anyhow::Result<f64> {
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostats",
            "-benchmark",
            "-threads",
            "1",
            "-i",
        ])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()?;
    anyhow::ensure!(out.status.success(), "ffmpeg failed on {}", path.display());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let rtime = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rtime="))
        .and_then(|v| v.trim_end_matches('s').parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no rtime in ffmpeg -benchmark output: {text}"))?;
    Ok(rtime)
}
