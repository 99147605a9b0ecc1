//! The default build's readers against files FFmpeg writes and FFmpeg's own decode of them.
//!
//! A corpus is made at test time by the system `ffmpeg` (libx264 and its MJPEG encoder; never
//! committed): H.264 Constrained Baseline, and Main and High each without B-frames and with 2
//! or 3 (with and without B-pyramid), CABAC and CAVLC, each at 112×112, 160×120 and 636×476
//! (not a multiple of 16: a cropping window), at 25 / 30 / 50 fps and in yuv420p or full-range
//! yuvj420p (rotating); plus a variable-frame-rate file, a trimmed file with an edit list, a
//! multi-slice file, a QuickTime `.mov`, and EchoNet-Dynamic-style Motion JPEG AVI. For each
//! file:
//!
//! * the frame count equals what `ffprobe -count_frames` reads;
//! * every frame, in presentation order, equals FFmpeg's decode: H.264 luma bit for bit (our
//!   gray output is the luma through the range look-up table of `video::h264::luma_lut`, so
//!   FFmpeg's luma goes through the same table); MJPEG luma within 1 level on every pixel
//!   (JPEG does not specify the inverse DCT bit-exactly: zune-jpeg and FFmpeg round
//!   differently, measured max 1, on about 3 % of pixels), with a mean difference under 0.1;
//! * random access (a few scattered frames, in any order) returns the same frames as reading
//!   the whole file.
//!
//! Without ffmpeg the test prints a note and passes, except under CI (`CI=true`), where a
//! missing ffmpeg is a failure (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use echojepa_video::{self as video, ColorMode, h264};

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

fn tools() -> Option<(PathBuf, PathBuf)> {
    match (which("ffmpeg"), which("ffprobe")) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI: ffmpeg/ffprobe are required for the corpus test (see .ci/run)"
            );
            eprintln!("note: ffmpeg/ffprobe not found; skipping the FFmpeg corpus test");
            None
        }
    }
}

/// One file of the corpus: the ffmpeg arguments that make it from a test source.
struct Case {
    name: String,
    /// `lavfi` source expression.
    source: String,
    /// output options (codec, profile, ...)
    options: Vec<String>,
    width: usize,
    height: usize,
    full_range: bool,
    mjpeg: bool,
    /// input options applied to a previously written file instead of the lavfi source
    /// (name of that file, options before `-i`, options after)
    remux_of: Option<(String, Vec<String>)>,
}

fn lavfi(size: &str, fps: u32, seconds: f32) -> String {
    // moving test pattern plus temporal noise: real motion and texture for every coding tool
    format!("testsrc2=size={size}:rate={fps}:duration={seconds},noise=alls=12:allf=t")
}

fn h264_case(
    name: &str,
    size: (usize, usize),
    fps: u32,
    profile: &str,
    x264: &str,
    full_range: bool,
) -> Case {
    let mut options: Vec<String> = [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        profile,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !x264.is_empty() {
        options.extend(["-x264-params".into(), x264.into()]);
    }
    options.extend([
        "-pix_fmt".into(),
        if full_range { "yuvj420p" } else { "yuv420p" }.into(),
    ]);
    Case {
        name: name.into(),
        source: lavfi(&format!("{}x{}", size.0, size.1), fps, 1.0),
        options,
        width: size.0,
        height: size.1,
        full_range,
        mjpeg: false,
        remux_of: None,
    }
}

fn corpus() -> Vec<Case> {
    // (profile, x264 params, label): every profile without and with B-frames
    let configs = [
        ("baseline", "bframes=0", "cbp"),
        ("main", "bframes=0", "main-b0"),
        ("main", "bframes=2:b-pyramid=none", "main-b2"),
        ("main", "bframes=3:b-pyramid=none", "main-b3"),
        (
            "main",
            "bframes=3:b-pyramid=normal:weightb=1:direct=temporal",
            "main-b3pyr",
        ),
        ("high", "bframes=0:cabac=0", "high-b0-cavlc"),
        ("high", "bframes=2:b-pyramid=none", "high-b2"),
        ("high", "bframes=3:b-pyramid=none", "high-b3"),
        ("high", "bframes=3:b-pyramid=normal", "high-b3pyr"),
    ];
    let sizes = [(112, 112), (160, 120), (636, 476)];
    let rates = [25, 30, 50];
    let mut cases = Vec::new();
    for (k, (profile, x264, label)) in configs.iter().enumerate() {
        for (j, &size) in sizes.iter().enumerate() {
            let fps = rates[(k + j) % rates.len()];
            let full = (k + j) % 2 == 1;
            cases.push(h264_case(
                &format!(
                    "{label}-{}x{}-{fps}{}",
                    size.0,
                    size.1,
                    if full { "-j" } else { "" }
                ),
                size,
                fps,
                profile,
                x264,
                full,
            ));
        }
    }
    // QuickTime container (`ftyp qt`), as cameras and some converters write it
    cases.push(h264_case(
        "main-b2-mov",
        (160, 120),
        25,
        "main",
        "bframes=2",
        false,
    ));
    let mut slices = h264_case(
        "high-slices4",
        (160, 120),
        30,
        "high",
        "bframes=3:slices=4",
        false,
    );
    slices.source = lavfi("160x120", 30, 1.0);
    cases.push(slices);
    // variable frame rate: 30 fps, then 15 fps, then 30 fps again
    let mut vfr = h264_case("high-vfr", (160, 120), 30, "high", "bframes=2", false);
    vfr.source = format!(
        "{},setpts='if(lt(N,15),N/30,if(lt(N,30),0.5+(N-15)/15,1.5+(N-30)/30))/TB'",
        lavfi("160x120", 30, 1.5)
    );
    vfr.options.extend(["-fps_mode".into(), "vfr".into()]);
    cases.push(vfr);
    // an edit list: a stream copy cut inside a group of pictures
    let mut base = h264_case(
        "edit-src",
        (160, 120),
        30,
        "high",
        "bframes=3:keyint=30",
        false,
    );
    base.source = lavfi("160x120", 30, 3.0);
    cases.push(base);
    cases.push(Case {
        name: "high-editlist".into(),
        source: String::new(),
        options: ["-c", "copy", "-t", "1.2"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        width: 160,
        height: 120,
        full_range: false,
        mjpeg: false,
        remux_of: Some(("edit-src".into(), vec!["-ss".into(), "1.3".into()])),
    });
    // EchoNet-Dynamic-style Motion JPEG AVI
    for (name, size, fps) in [
        ("mjpeg-112x112-50", (112, 112), 50),
        ("mjpeg-160x120-30", (160, 120), 30),
    ] {
        cases.push(Case {
            name: name.into(),
            source: lavfi(&format!("{}x{}", size.0, size.1), fps, 1.0),
            options: ["-c:v", "mjpeg", "-q:v", "4", "-pix_fmt", "yuvj420p"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            width: size.0,
            height: size.1,
            full_range: true,
            mjpeg: true,
            remux_of: None,
        });
    }
    cases
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("running ffmpeg/ffprobe");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn make(ffmpeg: &Path, dir: &Path, case: &Case) -> PathBuf {
    let ext = if case.mjpeg {
        "avi"
    } else if case.name.ends_with("-mov") {
        "mov"
    } else {
        "mp4"
    };
    let path = dir.join(format!("{}.{ext}", case.name));
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-v", "error", "-y"]);
    match &case.remux_of {
        Some((src, pre)) => {
            cmd.args(pre).arg("-i").arg(dir.join(format!("{src}.mp4")));
        }
        None => {
            cmd.args(["-f", "lavfi", "-i", &case.source]);
        }
    }
    cmd.args(&case.options).arg(&path);
    run(&mut cmd);
    path
}

/// FFmpeg's frame count and its decoded luma planes, in presentation order.
fn reference(
    ffmpeg: &Path,
    ffprobe: &Path,
    path: &Path,
    w: usize,
    h: usize,
) -> (usize, Vec<Vec<u8>>) {
    let count = run(Command::new(ffprobe)
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path));
    let count: usize = String::from_utf8_lossy(&count)
        .trim()
        .parse()
        .expect("ffprobe frame count");
    // native 4:2:0 planes, one output frame per decoded frame (no duplication or dropping)
    let raw = run(Command::new(ffmpeg)
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:v:0",
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-",
        ]));
    let frame = w * h + 2 * w.div_ceil(2) * h.div_ceil(2);
    assert_eq!(
        raw.len() % frame,
        0,
        "{}: raw output is not whole frames",
        path.display()
    );
    let planes = raw
        .chunks_exact(frame)
        .map(|f| f[..w * h].to_vec())
        .collect();
    (count, planes)
}

#[test]
fn ffmpeg_written_corpus_decodes_like_ffmpeg() {
    let Some((ffmpeg, ffprobe)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in corpus() {
        let path = make(&ffmpeg, dir.path(), &case);
        if case.name == "edit-src" {
            continue; // only the source of the edit-list file
        }
        let (w, h) = (case.width, case.height);
        let (count, planes) = reference(&ffmpeg, &ffprobe, &path, w, h);
        assert_eq!(
            planes.len(),
            count,
            "{}: ffmpeg decoded {} of {count} frames",
            case.name,
            planes.len()
        );
        let mut reader = video::open(&path).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let info = reader.info().clone();
        assert_eq!(info.frame_count, count, "{}: frame count", case.name);
        assert_eq!((info.width, info.height), (w, h), "{}: size", case.name);
        let clip = reader
            .read_all(ColorMode::Gray)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(clip.frames, count);
        let lut = h264::luma_lut(h264::ColorInfo {
            full_range: case.full_range,
            matrix: 2,
        });
        for (i, plane) in planes.iter().enumerate() {
            let ours = clip.frame(i).unwrap();
            if case.mjpeg {
                let diffs: Vec<u8> = plane
                    .iter()
                    .zip(ours)
                    .map(|(&a, &b)| a.abs_diff(b))
                    .collect();
                let max = diffs.iter().copied().max().unwrap_or(0);
                let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
                assert!(
                    max <= 1 && mean < 0.1,
                    "{} frame {i}: MJPEG luma differs from FFmpeg's by up to {max} (mean {mean:.3})",
                    case.name
                );
            } else {
                let expected: Vec<u8> = plane.iter().map(|&y| lut[y as usize]).collect();
                if expected != ours {
                    let bad = expected.iter().zip(ours).filter(|(a, b)| a != b).count();
                    panic!(
                        "{} frame {i} of {count}: {bad} of {} luma samples differ from FFmpeg's decode",
                        case.name,
                        w * h
                    );
                }
            }
        }
        // random access: scattered frames, out of order and repeated
        let picks: Vec<usize> = [count - 1, count / 2, 1, count / 3, count / 2, count - 2]
            .into_iter()
            .filter(|&i| i < count)
            .collect();
        let mut fresh = video::open(&path).unwrap();
        let part = fresh.read_frames(&picks, ColorMode::Gray).unwrap();
        for (k, &i) in picks.iter().enumerate() {
            assert!(
                part.frame(k) == clip.frame(i),
                "{}: frame {i} read on its own differs from the sequential read",
                case.name
            );
        }
        assert!(!info.codec.is_empty() && !info.container.is_empty());
        if !case.mjpeg {
            let profile = info.profile.clone().unwrap_or_default();
            let container = if case.name.ends_with("-mov") {
                "mov"
            } else {
                "mp4"
            };
            assert_eq!(info.container, container, "{}: container", case.name);
            let want = if case.name.starts_with("cbp") {
                "Constrained Baseline"
            } else if case.name.starts_with("main") {
                "Main"
            } else {
                "High"
            };
            assert_eq!(profile, want, "{}: profile", case.name);
        }
        checked += 1;
    }
    // 9 profile and B-frame configurations x 3 sizes, .mov, slices, VFR, edit list, 2 AVI
    assert_eq!(checked, 9 * 3 + 6, "files checked");
}

/// Codecs the default build does not decode are one clear error naming the codec and the
/// `ffmpeg` feature; a build with that feature reads them through FFmpeg instead.
#[test]
fn other_codecs_name_the_codec_and_the_ffmpeg_feature() {
    let Some((ffmpeg, _)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ffmpeg_build = cfg!(feature = "ffmpeg");
    for (name, codec, what) in [
        ("part2.avi", "mpeg4", "MPEG-4 Part 2"),
        ("hevc.mp4", "libx265", "hev1"),
        ("part2.mp4", "mpeg4", "mp4v"),
    ] {
        let path = dir.path().join(name);
        let out = Command::new(&ffmpeg)
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                &lavfi("64x64", 25, 0.4),
            ])
            .args(["-c:v", codec, "-pix_fmt", "yuv420p"])
            .arg(&path)
            .output()
            .unwrap();
        if !out.status.success() {
            // an FFmpeg build without that encoder
            eprintln!(
                "note: ffmpeg cannot write {codec}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        match video::open(&path) {
            Err(e) => {
                assert!(!ffmpeg_build, "{name}: the ffmpeg build must read it: {e}");
                let msg = e.to_string();
                assert!(
                    msg.contains(name) && msg.contains(what) && msg.contains("`ffmpeg` feature"),
                    "{name}: {msg}"
                );
            }
            Ok(mut r) => {
                assert!(
                    ffmpeg_build,
                    "{name}: the default build cannot decode {codec}"
                );
                assert!(r.read_all(ColorMode::Gray).is_ok());
            }
        }
    }
}

/// Uncompressed AVI as ffmpeg writes it (BI_RGB 24-bit bottom-up BGR, and 8-bit `Y800`), at a
/// width whose rows need padding: every frame equals FFmpeg's decode exactly (RGB for BGR,
/// gray for Y800).
#[test]
fn uncompressed_avi_matches_ffmpeg() {
    let Some((ffmpeg, _)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (90usize, 66usize);
    for (name, pix, mode, out_pix) in [
        ("bgr.avi", "bgr24", ColorMode::Rgb, "rgb24"),
        ("gray.avi", "gray", ColorMode::Gray, "gray"),
    ] {
        let path = dir.path().join(name);
        run(Command::new(&ffmpeg)
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                &lavfi("90x66", 25, 0.4),
            ])
            .args(["-c:v", "rawvideo", "-pix_fmt", pix])
            .arg(&path));
        let expected = run(Command::new(&ffmpeg)
            .args(["-v", "error", "-i"])
            .arg(&path)
            .args([
                "-fps_mode",
                "passthrough",
                "-f",
                "rawvideo",
                "-pix_fmt",
                out_pix,
                "-",
            ]));
        let clip = video::open(&path)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .read_all(mode)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(clip.frames, 10, "{name}");
        assert_eq!(clip.data.len(), 10 * w * h * mode.channels(), "{name}");
        assert!(
            clip.data == expected,
            "{name}: frames differ from FFmpeg's decode"
        );
    }
}
