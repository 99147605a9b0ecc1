//! Every container and codec of the system FFmpeg (AVI as in EchoNet-Dynamic, MJPEG, HEVC,
//! fragmented MP4, ...), through ffmpeg-next. Feature `ffmpeg`; needs the FFmpeg development
//! packages (`libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev`)
//! and libclang at build time.

use std::path::{Path, PathBuf};

use ffmpeg_next as ff;

use super::{Clip, ColorMode, VideoError, VideoInfo, VideoReader};

/// A video opened through FFmpeg. Frames are decoded sequentially from the start on each
/// request (echo loops are short), stopping after the last frame asked for.
pub struct FfmpegReader {
    path: PathBuf,
    info: VideoInfo,
}

impl std::fmt::Debug for FfmpegReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfmpegReader")
            .field("info", &self.info)
            .finish()
    }
}

fn container(path: &Path, reason: impl std::fmt::Display) -> VideoError {
    VideoError::Container {
        path: path.to_path_buf(),
        format: "FFmpeg-readable video",
        reason: reason.to_string(),
    }
}

struct Session {
    input: ff::format::context::Input,
    stream: usize,
    decoder: ff::decoder::Video,
}

fn session(path: &Path) -> Result<Session, VideoError> {
    ff::init().map_err(|e| container(path, e))?;
    let input = ff::format::input(&path).map_err(|e| container(path, e))?;
    let stream = input
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| container(path, "no video stream"))?;
    let index = stream.index();
    let ctx = ff::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| container(path, e))?;
    let decoder = ctx.decoder().video().map_err(|e| VideoError::Unsupported {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    Ok(Session {
        input,
        stream: index,
        decoder,
    })
}

/// Decodes frames in order, calling `f(index, frame)`; `f` returns `false` to stop.
fn decode_each(
    path: &Path,
    mut f: impl FnMut(usize, &ff::frame::Video) -> Result<bool, VideoError>,
) -> Result<usize, VideoError> {
    let mut s = session(path)?;
    let mut index = 0usize;
    let mut frame = ff::frame::Video::empty();
    let mut keep_going = true;
    for (stream, packet) in s.input.packets() {
        if stream.index() != s.stream {
            continue;
        }
        s.decoder
            .send_packet(&packet)
            .map_err(|e| VideoError::Frame {
                path: path.to_path_buf(),
                frame: index,
                reason: e.to_string(),
            })?;
        while s.decoder.receive_frame(&mut frame).is_ok() {
            keep_going = f(index, &frame)?;
            index += 1;
            if !keep_going {
                break;
            }
        }
        if !keep_going {
            return Ok(index);
        }
    }
    let _ = s.decoder.send_eof();
    while s.decoder.receive_frame(&mut frame).is_ok() {
        if !f(index, &frame)? {
            return Ok(index + 1);
        }
        index += 1;
    }
    Ok(index)
}

impl FfmpegReader {
    /// Opens the file; counts frames by decoding when the container does not record them.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VideoError> {
        let path = path.as_ref();
        let s = session(path)?;
        let stream = s
            .input
            .stream(s.stream)
            .ok_or_else(|| container(path, "video stream vanished"))?;
        let rate = stream.avg_frame_rate();
        let fps = (rate.denominator() != 0 && rate.numerator() > 0)
            .then(|| rate.numerator() as f64 / rate.denominator() as f64);
        let (width, height) = (s.decoder.width() as usize, s.decoder.height() as usize);
        let codec = s.decoder.id().name().to_string();
        let container_name = s.input.format().name().to_string();
        let recorded = stream.frames();
        drop(s);
        let frame_count = if recorded > 0 {
            recorded as usize
        } else {
            decode_each(path, |_, _| Ok(true))?
        };
        if width == 0 || height == 0 {
            return Err(container(path, "video stream has no size"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            info: VideoInfo {
                path: path.to_path_buf(),
                frame_count,
                fps,
                width,
                height,
                codec,
                container: container_name,
                profile: None,
            },
        })
    }
}

impl VideoReader for FfmpegReader {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn read_frames(&mut self, indices: &[usize], color: ColorMode) -> Result<Clip, VideoError> {
        super::distinct_indices(&self.path, indices, self.info.frame_count)?;
        let (w, h) = (self.info.width, self.info.height);
        let last = indices.iter().copied().max().unwrap_or(0);
        let pix = match color {
            ColorMode::Gray => ff::format::Pixel::GRAY8,
            ColorMode::Rgb => ff::format::Pixel::RGB24,
        };
        let ch = color.channels();
        let mut frames = std::collections::HashMap::new();
        let mut scaler: Option<ff::software::scaling::Context> = None;
        let path = self.path.clone();
        decode_each(&self.path, |i, frame| {
            if indices.contains(&i) {
                let err = |e: ff::Error| VideoError::Frame {
                    path: path.clone(),
                    frame: i,
                    reason: e.to_string(),
                };
                if scaler.is_none() {
                    scaler = Some(
                        ff::software::scaling::Context::get(
                            frame.format(),
                            frame.width(),
                            frame.height(),
                            pix,
                            w as u32,
                            h as u32,
                            ff::software::scaling::Flags::BILINEAR,
                        )
                        .map_err(err)?,
                    );
                }
                let mut out = ff::frame::Video::empty();
                if let Some(sc) = scaler.as_mut() {
                    sc.run(frame, &mut out).map_err(err)?;
                }
                let stride = out.stride(0);
                let plane = out.data(0);
                let mut px = Vec::with_capacity(w * h * ch);
                for row in 0..h {
                    px.extend_from_slice(&plane[row * stride..row * stride + w * ch]);
                }
                frames.insert(i, px);
            }
            Ok(i < last)
        })?;
        super::gather(&self.path, indices, h, w, ch, |i| {
            frames.get(&i).map(|v| v.as_slice())
        })
    }
}
