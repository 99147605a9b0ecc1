//! Video containers and the H.264 path. The readers take a path, so the bytes go to a scratch
//! file first.

use std::io::BufWriter;
use std::path::Path;

use echojepa_video::avi::AviReader;
use echojepa_video::mp4::Mp4Reader;
use echojepa_video::{ColorMode, MAX_PIXELS, VideoReader, h264, sniff};

use super::{outcome, scratch_file, with_file};

pub(crate) static MP4_DICT: &[&[u8]] = &[
    b"ftyp",
    b"moov",
    b"mvhd",
    b"trak",
    b"tkhd",
    b"mdia",
    b"mdhd",
    b"hdlr",
    b"minf",
    b"vmhd",
    b"stbl",
    b"stsd",
    b"avc1",
    b"avcC",
    b"stts",
    b"ctts",
    b"stss",
    b"stsc",
    b"stsz",
    b"stco",
    b"co64",
    b"mdat",
    b"edts",
    b"elst",
    b"moof",
    b"mvex",
    b"free",
    b"hvc1",
    b"vide",
    b"soun",
    b"\0\0\0\x01",
    b"\xff\xff\xff\xff",
];

pub(crate) static AVI_DICT: &[&[u8]] = &[
    b"RIFF",
    b"AVI ",
    b"AVIX",
    b"LIST",
    b"hdrl",
    b"avih",
    b"strl",
    b"strh",
    b"strf",
    b"movi",
    b"idx1",
    b"indx",
    b"odml",
    b"00dc",
    b"00db",
    b"01wb",
    b"vids",
    b"auds",
    b"MJPG",
    b"DIB ",
    b"JUNK",
    b"rec ",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd9",
    b"\xff\xc0",
    b"\xff\xc4",
    b"\xff\xda",
];

pub(crate) static H264_DICT: &[&[u8]] = &[
    b"\0\0\0\x01",
    b"\0\0\x01",
    b"\0\0\x03",
    b"\0\0\0\x01\x67",
    b"\0\0\0\x01\x68",
    b"\0\0\0\x01\x65",
    b"\0\0\0\x01\x41",
    b"\0\0\0\x01\x06",
    b"\0\0\0\x01\x09",
];

/// Decodes a few frames (first, middle, last; gray and RGB) and checks the clip is consistent.
fn decode_some(r: &mut dyn VideoReader) -> String {
    let info = r.info().clone();
    assert!(
        info.width * info.height <= MAX_PIXELS,
        "a reader accepted {}x{} pixels, above MAX_PIXELS",
        info.width,
        info.height
    );
    let n = info.frame_count;
    if n == 0 {
        return "ok: no frames".into();
    }
    let mut idx = vec![0, n / 2, n - 1];
    idx.dedup();
    let mut last = String::from("ok");
    for (indices, color) in [(&idx[..], ColorMode::Gray), (&[0][..], ColorMode::Rgb)] {
        match r.read_frames(indices, color) {
            Ok(clip) => {
                assert!(clip.validate().is_ok(), "inconsistent clip {clip:?}");
                assert_eq!(clip.frames, indices.len(), "wrong frame count");
                assert_eq!(clip.channels, color.channels(), "wrong channel count");
            }
            Err(e) => last = outcome("frame error:", &e.to_string()),
        }
    }
    // An index past the end must be an error, not a panic.
    assert!(
        r.read_frames(&[n], ColorMode::Gray).is_err(),
        "frame {n} of {n} read without error"
    );
    format!("{last} ({})", info.codec)
}

pub(crate) fn mp4(data: &[u8]) -> String {
    let _ = sniff(data);
    with_file("in.mp4", data, |path| match Mp4Reader::open(path) {
        Ok(mut r) => decode_some(&mut r),
        Err(e) => outcome("open error:", &e.to_string()),
    })
}

pub(crate) fn avi(data: &[u8]) -> String {
    let _ = sniff(data);
    with_file("in.avi", data, |path| match AviReader::open(path) {
        Ok(mut r) => decode_some(&mut r),
        Err(e) => outcome("open error:", &e.to_string()),
    })
}

/// The stream's NAL units grouped into samples: non-VCL units join the next slice.
fn samples(nals: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for nal in nals {
        let t = h264::nal_type(nal);
        if t == h264::NAL_SPS || t == h264::NAL_PPS {
            continue;
        }
        pending.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        pending.extend_from_slice(nal);
        if (1..=5).contains(&t) {
            out.push((std::mem::take(&mut pending), t == 5));
            if out.len() == 32 {
                break;
            }
        }
    }
    out
}

/// Writes an MP4 holding the stream (first SPS and PPS in `avcC`, one sample per slice).
fn mux(path: &Path, sps: &[u8], pps: &[u8], samples: Vec<(Vec<u8>, bool)>) -> Result<(), String> {
    let (w, h) = h264::parse_sps(sps)
        .map(|s| {
            (
                s.width.clamp(2, 4096) as u16,
                s.height.clamp(2, 4096) as u16,
            )
        })
        .unwrap_or((32, 32));
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let brand = |s: &str| str::parse::<mp4::FourCC>(s).map_err(|e| format!("{e:?}"));
    let config = mp4::Mp4Config {
        major_brand: brand("isom")?,
        minor_version: 512,
        compatible_brands: vec![brand("isom")?, brand("avc1")?],
        timescale: 1000,
    };
    let mut m =
        mp4::Mp4Writer::write_start(BufWriter::new(file), &config).map_err(|e| e.to_string())?;
    m.add_track(&mp4::TrackConfig {
        track_type: mp4::TrackType::Video,
        timescale: 1000,
        language: "und".into(),
        media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
            width: w,
            height: h,
            seq_param_set: sps.to_vec(),
            pic_param_set: pps.to_vec(),
        }),
    })
    .map_err(|e| e.to_string())?;
    for (i, (bytes, sync)) in samples.into_iter().enumerate() {
        m.write_sample(
            1,
            &mp4::Mp4Sample {
                start_time: i as u64 * 40,
                duration: 40,
                rendering_offset: 0,
                is_sync: sync,
                bytes: bytes.into(),
            },
        )
        .map_err(|e| e.to_string())?;
    }
    m.write_end().map_err(|e| e.to_string())
}

pub(crate) fn h264(data: &[u8]) -> String {
    let nals = h264::split_annexb(data);
    for nal in &nals {
        if h264::nal_type(nal) == h264::NAL_SPS {
            let _ = h264::profile_name(nal);
            if let Ok(s) = h264::parse_sps(nal) {
                let _ = h264::luma_lut(s.color);
            }
        }
    }
    let mut out = Vec::new();
    for length_size in 1..=4 {
        out.clear();
        let _ = h264::avcc_to_annexb(data, length_size, &mut out);
    }
    let find = |t| nals.iter().find(|n| h264::nal_type(n) == t);
    let (Some(sps), Some(pps)) = (find(h264::NAL_SPS), find(h264::NAL_PPS)) else {
        return "no SPS/PPS".into();
    };
    // The mp4 crate reads the profile bytes of the SPS when writing `avcC`.
    if sps.len() < 4 {
        return "short SPS".into();
    }
    let samples = samples(&nals);
    if samples.is_empty() {
        return "no slices".into();
    }
    let path = match scratch_file("h264.mp4", b"") {
        Ok(p) => p,
        Err(e) => panic!("fuzz harness: {e}"),
    };
    if let Err(e) = mux(&path, sps, pps, samples) {
        return outcome("mux error:", &e);
    }
    match Mp4Reader::open(&path) {
        Ok(mut r) => decode_some(&mut r),
        Err(e) => outcome("open error:", &e.to_string()),
    }
}
