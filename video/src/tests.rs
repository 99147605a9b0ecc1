//! Tests of video writing and reading with real files: H.264 MP4 round trips through our
//! encoder and decoder, random access, truncated and corrupt files, an independent decoder
//! (FFmpeg, when installed) and DICOM (feature `dicom`).

use super::*;
use echojepa_phantom::{Phantom, PhantomParams, View};

fn phantom_clip(seed: u64, frames: usize, w: usize, h: usize) -> Clip {
    Phantom::new(PhantomParams::sample(seed, View::A4c))
        .unwrap()
        .render_clip(frames, 30.0, 0.0, w, h)
        .unwrap()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
}

fn write(dir: &Path, name: &str, clip: &Clip, settings: EncoderSettings) -> PathBuf {
    write_mp4(dir.join(name), clip, settings).unwrap()
}

#[test]
fn mp4_round_trip_gray_and_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let clip = phantom_clip(1, 40, 112, 96);
    let path = write(
        dir.path(),
        "a.mp4",
        &clip,
        EncoderSettings {
            fps: 25.0,
            ..Default::default()
        },
    );
    let mut r = open(&path).unwrap();
    let info = r.info().clone();
    assert_eq!((info.frame_count, info.width, info.height), (40, 112, 96));
    assert!(
        (info.fps.unwrap() - 25.0).abs() < 1e-9,
        "fps {:?}",
        info.fps
    );
    assert_eq!(info.codec, "h264");
    let gray = r.read_all(ColorMode::Gray).unwrap();
    assert_eq!(
        (gray.frames, gray.height, gray.width, gray.channels),
        (40, 96, 112, 1)
    );
    let p = psnr(&gray.data, &clip.data);
    assert!(p > 33.0, "round-trip PSNR {p:.1} dB");
    let rgb = r.read_frames(&[5], ColorMode::Rgb).unwrap();
    assert_eq!(rgb.channels, 3);
    let g5 = gray.frame(5).unwrap();
    for (i, px) in rgb.data.chunks_exact(3).enumerate() {
        // neutral chroma: R = G = B = gray (within rounding)
        assert!(
            px.iter().all(|&v| (v as i32 - g5[i] as i32).abs() <= 2),
            "pixel {i}: {px:?} vs {}",
            g5[i]
        );
    }
}

#[test]
fn random_access_matches_sequential_decode() {
    let dir = tempfile::tempdir().unwrap();
    let clip = phantom_clip(2, 70, 64, 64);
    let path = write(
        dir.path(),
        "b.mp4",
        &clip,
        EncoderSettings {
            keyframe_interval: 16,
            ..Default::default()
        },
    );
    let mut r = open(&path).unwrap();
    let all = r.read_all(ColorMode::Gray).unwrap();
    let idx = [69, 3, 3, 40, 17, 0, 64, 33];
    let some = r.read_frames(&idx, ColorMode::Gray).unwrap();
    for (k, &i) in idx.iter().enumerate() {
        assert_eq!(some.frame(k).unwrap(), all.frame(i).unwrap(), "frame {i}");
    }
    // keyframes every 16 frames are marked for seeking
    let m = mp4::Mp4Reader::open(&path).unwrap();
    let syncs: Vec<usize> = m
        .track()
        .samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.sync)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(syncs, vec![0, 16, 32, 48, 64]);
    let err = r.read_frames(&[70], ColorMode::Gray).unwrap_err();
    assert!(
        matches!(
            err,
            VideoError::OutOfRange {
                frame: 70,
                count: 70,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_and_corrupt_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let clip = phantom_clip(3, 20, 64, 48);
    let path = write(dir.path(), "c.mp4", &clip, EncoderSettings::default());
    let bytes = std::fs::read(&path).unwrap();

    // cut anywhere: never a panic, always an error that names the file
    for cut in [
        0,
        7,
        100,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 40,
        bytes.len() - 1,
    ] {
        let p = dir.path().join(format!("cut{cut}.mp4"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        match open(&p).and_then(|mut r| r.read_all(ColorMode::Gray)) {
            Ok(_) => panic!("cut at {cut} of {} decoded", bytes.len()),
            Err(e) => assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}"),
        }
    }

    // moov intact but the media data is cut: the index points past the end
    let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap() - 4;
    let moov = bytes.windows(4).position(|w| w == b"moov").unwrap() - 4;
    assert!(mdat < moov, "the writer puts moov last");
    let mut reordered = bytes[..mdat].to_vec();
    // move moov before mdat and shorten mdat: offsets now point past the end of the file
    reordered.extend_from_slice(&bytes[moov..]);
    reordered.extend_from_slice(&bytes[mdat..mdat + 200]);
    let p = dir.path().join("short_mdat.mp4");
    std::fs::write(&p, &reordered).unwrap();
    let err = open(&p).err().expect("must fail");
    assert!(
        err.to_string().contains("short_mdat.mp4") && err.to_string().contains("past the end"),
        "{err}"
    );

    // garbage in the media data: decode errors name the frame, or the decoder conceals; no panic
    let mut garbled = bytes.clone();
    let start = mdat + 8 + 400;
    for (k, b) in garbled[start..moov].iter_mut().enumerate() {
        if k % 7 == 0 {
            *b ^= 0x5a;
        }
    }
    let p = dir.path().join("garbled.mp4");
    std::fs::write(&p, &garbled).unwrap();
    if let Err(e) = open(&p).and_then(|mut r| r.read_all(ColorMode::Gray)) {
        let s = e.to_string();
        assert!(s.contains("garbled.mp4"), "{s}");
        if let VideoError::Frame { frame, .. } = e {
            assert!(frame < 20);
        }
    }

    // not a video at all, an empty file, a missing file
    let p = dir.path().join("text.mp4");
    std::fs::write(
        &p,
        b"this is not a video, just some text that is long enough",
    )
    .unwrap();
    assert!(open(&p).err().unwrap().to_string().contains("text.mp4"));
    let p = dir.path().join("empty.mp4");
    std::fs::write(&p, b"").unwrap();
    assert!(open(&p).err().unwrap().to_string().contains("empty.mp4"));
    let err = open(dir.path().join("missing.mp4")).err().unwrap();
    assert!(matches!(err, VideoError::Io { .. }) && err.to_string().contains("missing.mp4"));
}

#[test]
fn writer_rejects_bad_input_and_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.mp4");
    assert!(Mp4Writer::create(&p, 33, 32, EncoderSettings::default()).is_err());
    assert!(
        Mp4Writer::create(
            &p,
            32,
            32,
            EncoderSettings {
                fps: 0.0,
                ..Default::default()
            }
        )
        .is_err()
    );
    let mut w = Mp4Writer::create(&p, 32, 32, EncoderSettings::default()).unwrap();
    assert!(w.push_gray(&[0; 10]).is_err());
    w.push_gray(&[100; 32 * 32]).unwrap();
    drop(w); // not finished
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no partial files left behind"
    );
    let w = Mp4Writer::create(&p, 32, 32, EncoderSettings::default()).unwrap();
    assert!(w.finish().is_err(), "a video without frames is an error");
}

#[test]
fn rgb_frames_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (48, 32);
    let mut data = Vec::new();
    for t in 0..6 {
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[(x * 5) as u8, (y * 7) as u8, (100 + t * 10) as u8]);
            }
        }
    }
    let clip = Clip {
        frames: 6,
        height: h,
        width: w,
        channels: 3,
        data,
    };
    let p = write(
        dir.path(),
        "rgb.mp4",
        &clip,
        EncoderSettings {
            qp: 12,
            ..Default::default()
        },
    );
    let back = open(&p).unwrap().read_all(ColorMode::Rgb).unwrap();
    let ps = psnr(&back.data, &clip.data);
    assert!(ps > 35.0, "RGB round trip PSNR {ps:.1}");
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Files we write must decode with an independent decoder. Skips (with a note) when FFmpeg is
/// not installed; `.ci/run` installs it.
#[test]
fn ffmpeg_decodes_our_files_identically() {
    let (Some(ffprobe), Some(ffmpeg)) = (which("ffprobe"), which("ffmpeg")) else {
        eprintln!(
            "note: ffprobe/ffmpeg not found; skipping the independent-decoder check (apt-get install ffmpeg)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clip = phantom_clip(4, 24, 112, 112);
    let path = write(
        dir.path(),
        "ff.mp4",
        &clip,
        EncoderSettings {
            fps: 30.0,
            ..Default::default()
        },
    );
    let out = std::process::Command::new(ffprobe)
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames,avg_frame_rate",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "h264,112,112,30/1,24", "ffprobe says {text}");
    let out = std::process::Command::new(ffmpeg)
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = open(&path).unwrap().read_all(ColorMode::Gray).unwrap();
    assert_eq!(out.stdout.len(), ours.data.len());
    let max = out
        .stdout
        .iter()
        .zip(&ours.data)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .unwrap();
    assert!(
        max <= 2,
        "FFmpeg and OpenH264 decodes differ by up to {max} levels"
    );
}

/// The OpenH264 fallback (used when rusty_h264 meets a tool it lacks) reorders B-frames and
/// drains its delayed pictures: on a libx264 Main-profile file with B-frames it returns every
/// frame, in presentation order, within a few levels of rusty_h264's bit-exact decode (OpenH264
/// is not bit-exact on some B-pictures; see BENCHMARKS.md).
#[test]
fn openh264_fallback_reorders_and_drains_b_frames() {
    let Some(ffmpeg) = which("ffmpeg") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs ffmpeg"
        );
        eprintln!("note: ffmpeg not found; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.mp4");
    let ok = std::process::Command::new(ffmpeg)
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=96x64:rate=25:duration=1.2",
        ])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "main",
            "-bf",
            "3",
            "-g",
            "12",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg failed");
    let exact = open(&path).unwrap().read_all(ColorMode::Gray).unwrap();
    let mut fallback = mp4::Mp4Reader::open(&path).unwrap().with_openh264();
    let all = fallback.read_all(ColorMode::Gray).unwrap();
    assert_eq!(all.frames, 30);
    assert_eq!(all.frames, exact.frames);
    let mean = all
        .data
        .iter()
        .zip(&exact.data)
        .map(|(&a, &b)| a.abs_diff(b) as f64)
        .sum::<f64>()
        / all.data.len() as f64;
    assert!(
        mean < 0.5,
        "OpenH264 and rusty_h264 differ by {mean:.3} on average"
    );
    // a frame read on its own (a session that starts at the keyframe before it)
    let one = fallback.read_frames(&[17], ColorMode::Gray).unwrap();
    assert_eq!(one.frame(0), all.frame(17));
}

#[test]
fn sniffing() {
    let mut dicm = vec![0u8; 132];
    dicm[128..132].copy_from_slice(b"DICM");
    assert_eq!(sniff(&dicm), Format::Dicom);
    assert_eq!(sniff(b"RIFF\0\0\0\0AVI LIST"), Format::Avi);
    assert_eq!(sniff(b"\0\0\0\x20ftypisom"), Format::Mp4);
    assert_eq!(sniff(b"hello"), Format::Other);
}

#[test]
fn broken_avi_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("echo.avi");
    std::fs::write(&p, b"RIFF\x10\0\0\0AVI LIST\0\0\0\0").unwrap();
    let err = open(&p).err().unwrap().to_string();
    assert!(err.contains("echo.avi") && err.contains("AVI"), "{err}");
    // a header list cut off by the RIFF chunk's declared size, two bytes into the list
    std::fs::write(&p, b"RIFF\x0e\0\0\0AVI LIST\x64\0\0\0hdrlavih\0\0\0\0").unwrap();
    let err = open(&p).err().unwrap().to_string();
    assert!(
        err.contains("echo.avi") && err.contains("no video stream"),
        "{err}"
    );
}

#[cfg(feature = "dicom")]
mod dicom_files {
    use super::*;
    use crate::dicom::write::{Pixels, us_multiframe};

    fn gray_clip() -> Clip {
        phantom_clip(5, 6, 80, 64)
    }

    #[test]
    fn monochrome2_native() {
        let dir = tempfile::tempdir().unwrap();
        let clip = gray_clip();
        let p = dir.path().join("mono.dcm");
        us_multiframe(
            &p,
            64,
            80,
            6,
            1,
            "MONOCHROME2",
            33.333,
            Pixels::Native(&clip.data),
        )
        .unwrap();
        let mut r = open(&p).unwrap();
        let info = r.info().clone();
        assert_eq!((info.frame_count, info.width, info.height), (6, 80, 64));
        assert!((info.fps.unwrap() - 30.0).abs() < 0.01);
        assert_eq!(
            r.read_all(ColorMode::Gray).unwrap().data,
            clip.data,
            "lossless"
        );
        let rgb = r.read_frames(&[2, 2], ColorMode::Rgb).unwrap();
        assert_eq!(rgb.frames, 2);
        assert_eq!(rgb.data[3 * 100], clip.frame(2).unwrap()[100]);
    }

    #[test]
    fn rgb_and_ybr_native() {
        let dir = tempfile::tempdir().unwrap();
        let clip = echojepa_input::preprocess::gray_to_rgb(&gray_clip());
        let p = dir.path().join("rgb.dcm");
        us_multiframe(&p, 64, 80, 6, 3, "RGB", 20.0, Pixels::Native(&clip.data)).unwrap();
        assert_eq!(
            open(&p).unwrap().read_all(ColorMode::Rgb).unwrap().data,
            clip.data
        );
        // YBR_FULL of a gray image is (Y, 128, 128)
        let ybr: Vec<u8> = gray_clip()
            .data
            .iter()
            .flat_map(|&v| [v, 128, 128])
            .collect();
        let p = dir.path().join("ybr.dcm");
        us_multiframe(&p, 64, 80, 6, 3, "YBR_FULL", 20.0, Pixels::Native(&ybr)).unwrap();
        assert_eq!(
            open(&p).unwrap().read_all(ColorMode::Rgb).unwrap().data,
            clip.data
        );
    }

    #[test]
    fn jpeg_baseline_ybr_full_422() {
        let dir = tempfile::tempdir().unwrap();
        let gray = gray_clip();
        let rgb = echojepa_input::preprocess::gray_to_rgb(&gray);
        let mut jpegs = Vec::new();
        for t in 0..6 {
            let mut buf = Vec::new();
            let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95);
            enc.encode(
                rgb.frame(t).unwrap(),
                80,
                64,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
            jpegs.push(buf);
        }
        let p = dir.path().join("jpeg.dcm");
        us_multiframe(&p, 64, 80, 6, 3, "YBR_FULL_422", 33.3, Pixels::Jpeg(jpegs)).unwrap();
        let mut r = open(&p).unwrap();
        assert_eq!(r.info().codec, "dicom-jpeg-baseline");
        let back = r.read_frames(&[4, 1], ColorMode::Gray).unwrap();
        let p4 = psnr(back.frame(0).unwrap(), gray.frame(4).unwrap());
        assert!(p4 > 30.0, "JPEG frame PSNR {p4:.1}");
    }

    #[test]
    fn broken_dicom_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let clip = gray_clip();
        let p = dir.path().join("cut.dcm");
        us_multiframe(
            &p,
            64,
            80,
            6,
            1,
            "MONOCHROME2",
            33.3,
            Pixels::Native(&clip.data),
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let res = open(&p).and_then(|mut r| r.read_all(ColorMode::Gray));
        let err = res.expect_err("truncated DICOM must fail").to_string();
        assert!(err.contains("cut.dcm"), "{err}");
    }
}
