//! Writing H.264 MP4 files: OpenH264 encodes (bundled C++ source, no system packages) and the
//! `mp4` crate muxes. Used by `trainer synth` and by tests that need real video files.
//!
//! Grayscale frames are written as 4:2:0 with neutral chroma and BT.601 limited-range luma
//! (`Y = 16 + 219·g/255`), signalled in the SPS VUI, so any standard decoder (FFmpeg, decord,
//! browsers) shows the intended gray levels. The file is written to a temporary name and renamed
//! on [`Mp4Writer::finish`], so an interrupted run never leaves a half-written `.mp4`.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use openh264::OpenH264API;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Profile, QpRange,
    RateControlMode, SpsPpsStrategy, UsageType, VuiConfig,
};
use openh264::formats::YUVBuffer;

use super::h264::{self, NAL_IDR, NAL_PPS, NAL_SPS};
use super::{Clip, VideoError};

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderSettings {
    /// Frame rate written into the file.
    pub fps: f64,
    /// Quantiser (0 = best, 51 = worst); 20–26 is visually near-lossless for echo.
    pub qp: u8,
    /// A keyframe (IDR) every this many frames, for random access (0 = only the first).
    pub keyframe_interval: u32,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        Self {
            fps: 30.0,
            qp: 22,
            keyframe_interval: 32,
        }
    }
}

/// Streams frames into an H.264 `.mp4` file.
pub struct Mp4Writer {
    path: PathBuf,
    tmp: PathBuf,
    width: usize,
    height: usize,
    settings: EncoderSettings,
    encoder: Encoder,
    mux: Option<mp4::Mp4Writer<BufWriter<File>>>,
    timescale: u32,
    frame_duration: u32,
    frames: u64,
    yuv: Vec<u8>,
}

impl std::fmt::Debug for Mp4Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mp4Writer")
            .field("path", &self.path)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl Mp4Writer {
    /// Prepares to write a `width × height` video to `path` (both even, at least 16).
    pub fn create(
        path: impl AsRef<Path>,
        width: usize,
        height: usize,
        settings: EncoderSettings,
    ) -> Result<Self, VideoError> {
        let path = path.as_ref().to_path_buf();
        let bad = |reason: String| VideoError::Encode {
            path: path.clone(),
            reason,
        };
        if !width.is_multiple_of(2)
            || !height.is_multiple_of(2)
            || width < 16
            || height < 16
            || width > 4096
            || height > 4096
        {
            return Err(bad(format!(
                "frame size {width}x{height}: H.264 4:2:0 needs even sides in 16..=4096"
            )));
        }
        if !(settings.fps.is_finite() && settings.fps > 0.0 && settings.fps <= 1000.0) {
            return Err(bad(format!(
                "fps {} (expected 0 < fps <= 1000)",
                settings.fps
            )));
        }
        if settings.qp > 51 {
            return Err(bad(format!("qp {} (expected 0..=51)", settings.qp)));
        }
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            .rate_control_mode(RateControlMode::Off)
            .qp(QpRange::new(settings.qp, settings.qp))
            .bitrate(BitRate::from_bps(20_000_000))
            .max_frame_rate(FrameRate::from_hz(settings.fps as f32))
            .skip_frames(false)
            .scene_change_detect(false)
            .background_detection(false)
            .adaptive_quantization(false)
            .complexity(Complexity::Medium)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .intra_frame_period(IntraFramePeriod::from_num_frames(
                settings.keyframe_interval,
            ))
            .num_threads(1)
            .vui(VuiConfig::bt601());
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| bad(format!("cannot create the H.264 encoder: {e}")))?;
        // exact timing for integer and common NTSC rates: timescale = fps * 1000
        let timescale = (settings.fps * 1000.0).round().clamp(1.0, u32::MAX as f64) as u32;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.partial"));
        Ok(Self {
            tmp,
            path,
            width,
            height,
            settings,
            encoder,
            mux: None,
            timescale,
            frame_duration: 1000,
            frames: 0,
            yuv: vec![128u8; width * height * 3 / 2],
        })
    }

    /// Appends a grayscale frame (`width * height` bytes).
    pub fn push_gray(&mut self, frame: &[u8]) -> Result<(), VideoError> {
        let n = self.width * self.height;
        if frame.len() != n {
            return Err(VideoError::InvalidClip(format!(
                "gray frame of {} bytes for {}x{}",
                frame.len(),
                self.width,
                self.height
            )));
        }
        for (dst, &g) in self.yuv[..n].iter_mut().zip(frame) {
            *dst = ((g as u32 * 219 + 127) / 255 + 16) as u8;
        }
        self.yuv[n..].fill(128);
        self.encode_current()
    }

    /// Appends an RGB frame (`width * height * 3` bytes, interleaved), BT.601 limited range.
    pub fn push_rgb(&mut self, frame: &[u8]) -> Result<(), VideoError> {
        let (w, h) = (self.width, self.height);
        if frame.len() != w * h * 3 {
            return Err(VideoError::InvalidClip(format!(
                "RGB frame of {} bytes for {w}x{h}",
                frame.len()
            )));
        }
        let (ys, uvs) = self.yuv.split_at_mut(w * h);
        let (us, vs) = uvs.split_at_mut(w * h / 4);
        for y in 0..h {
            for x in 0..w {
                let p = &frame[(y * w + x) * 3..];
                let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
                ys[y * w + x] =
                    (16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0).round() as u8;
            }
        }
        for y in 0..h / 2 {
            for x in 0..w / 2 {
                let mut acc = [0f32; 3];
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let p = &frame[((2 * y + dy) * w + 2 * x + dx) * 3..];
                    for c in 0..3 {
                        acc[c] += p[c] as f32 * 0.25;
                    }
                }
                let [r, g, b] = acc;
                us[y * (w / 2) + x] = (128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0)
                    .round()
                    .clamp(0.0, 255.0) as u8;
                vs[y * (w / 2) + x] = (128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
        self.encode_current()
    }

    fn err(&self, reason: String) -> VideoError {
        VideoError::Encode {
            path: self.path.clone(),
            reason,
        }
    }

    fn encode_current(&mut self) -> Result<(), VideoError> {
        let src = YUVBuffer::from_vec(self.yuv.clone(), self.width, self.height);
        let bits = self
            .encoder
            .encode(&src)
            .map_err(|e| VideoError::Encode {
                path: self.path.clone(),
                reason: format!("frame {}: {e}", self.frames),
            })?
            .to_vec();
        let nals = h264::split_annexb(&bits);
        if nals.is_empty() {
            return Err(self.err(format!(
                "frame {}: the encoder produced no data",
                self.frames
            )));
        }
        let mut sample = Vec::with_capacity(bits.len() + 16);
        let mut sync = false;
        let mut sps = None;
        let mut pps = None;
        for nal in &nals {
            match h264::nal_type(nal) {
                NAL_SPS => sps = Some(nal.to_vec()),
                NAL_PPS => pps = Some(nal.to_vec()),
                t => {
                    sync |= t == NAL_IDR;
                    sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    sample.extend_from_slice(nal);
                }
            }
        }
        if self.mux.is_none() {
            let (Some(sps), Some(pps)) = (sps, pps) else {
                return Err(self.err("the first encoded frame carries no SPS/PPS".into()));
            };
            let file = File::create(&self.tmp).map_err(|e| VideoError::io(&self.tmp, e))?;
            let config = mp4::Mp4Config {
                major_brand: str::parse("isom").map_err(|e| self.err(format!("{e:?}")))?,
                minor_version: 512,
                compatible_brands: ["isom", "iso2", "avc1", "mp41"]
                    .iter()
                    .map(|b| str::parse(b))
                    .collect::<Result<_, _>>()
                    .map_err(|e| self.err(format!("{e:?}")))?,
                timescale: self.timescale,
            };
            let mut mux = mp4::Mp4Writer::write_start(BufWriter::new(file), &config)
                .map_err(|e| self.err(e.to_string()))?;
            mux.add_track(&mp4::TrackConfig {
                track_type: mp4::TrackType::Video,
                timescale: self.timescale,
                language: "und".into(),
                media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                    width: self.width as u16,
                    height: self.height as u16,
                    seq_param_set: sps,
                    pic_param_set: pps,
                }),
            })
            .map_err(|e| self.err(e.to_string()))?;
            self.mux = Some(mux);
        }
        let start = self.frames * self.frame_duration as u64;
        let frame_index = self.frames;
        let duration = self.frame_duration;
        let path = self.path.clone();
        if let Some(mux) = self.mux.as_mut() {
            mux.write_sample(
                1,
                &mp4::Mp4Sample {
                    start_time: start,
                    duration,
                    rendering_offset: 0,
                    is_sync: sync,
                    bytes: sample.into(),
                },
            )
            .map_err(|e| VideoError::Encode {
                path,
                reason: format!("frame {frame_index}: {e}"),
            })?;
        }
        self.frames += 1;
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes the index and moves the file into place.
    pub fn finish(mut self) -> Result<PathBuf, VideoError> {
        let Some(mut mux) = self.mux.take() else {
            return Err(self.err("no frames were written".into()));
        };
        mux.write_end().map_err(|e| self.err(e.to_string()))?;
        let mut w = mux.into_writer();
        std::io::Write::flush(&mut w).map_err(|e| VideoError::io(&self.tmp, e))?;
        drop(w);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| VideoError::io(&self.path, e))?;
        Ok(self.path.clone())
    }

    /// The settings this writer encodes with.
    pub fn settings(&self) -> &EncoderSettings {
        &self.settings
    }
}

impl Drop for Mp4Writer {
    fn drop(&mut self) {
        if self.mux.is_some() {
            // not finished: remove the partial file
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Encodes a whole clip (1 or 3 channels) into an H.264 `.mp4` file.
pub fn write_mp4(
    path: impl AsRef<Path>,
    clip: &Clip,
    settings: EncoderSettings,
) -> Result<PathBuf, VideoError> {
    clip.validate()
        .map_err(|e| VideoError::InvalidClip(e.to_string()))?;
    let mut w = Mp4Writer::create(path, clip.width, clip.height, settings)?;
    for i in 0..clip.frames {
        let f = clip.frame(i).unwrap_or(&[]);
        if clip.channels == 1 {
            w.push_gray(f)?
        } else {
            w.push_rgb(f)?
        }
    }
    w.finish()
}
