//! Video input and output for echo clips.
//!
//! * `.mp4`/`.mov` with H.264 video (Baseline, Main, High; B-frames, CABAC): demuxed here
//!   ([`mp4`]) and decoded by OpenH264, which cargo builds from bundled C++ source: no system
//!   packages. Frames come in presentation order.
//! * `.avi` with Motion JPEG (EchoNet-Dynamic's files) or uncompressed video: demuxed here
//!   ([`avi`]) and decoded by zune-jpeg (pure Rust).
//! * Multi-frame ultrasound DICOM (feature `dicom`, pure Rust dicom-rs): MONOCHROME1/2, RGB,
//!   YBR_FULL/YBR_FULL_422, uncompressed, RLE or JPEG baseline.
//! * Everything else FFmpeg reads, e.g. MPEG-4 Part 2 or HEVC (feature `ffmpeg`, needs the
//!   system FFmpeg development packages).
//! * Writing: [`Mp4Writer`] encodes H.264 (OpenH264) into an MP4 file.
//!
//! A file that cannot be read is a [`VideoError`] naming the file, and the frame where one is at
//! fault. Readers give the frame count and frame rate up front and decode only the frames asked
//! for (from the nearest preceding keyframe).

pub mod avi;
pub mod h264;
mod h264dec;
mod mjpeg;
pub mod mp4;
mod writer;

#[cfg(feature = "dicom")]
pub mod dicom;
#[cfg(feature = "ffmpeg")]
pub mod ffmpeg;

use std::path::{Path, PathBuf};

pub use echojepa_input::Clip;
pub use writer::{EncoderSettings, Mp4Writer, write_mp4};

/// Largest picture (width × height) the built-in readers accept: 8192 × 8192. Far above any
/// echo video; a header declaring more is refused before a frame buffer is allocated.
pub const MAX_PIXELS: usize = 8192 * 8192;

/// Which pixels a reader returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ColorMode {
    /// One channel: luma for YUV video, BT.601 luma for RGB sources, the value for monochrome.
    Gray,
    /// Three channels RGB (grayscale sources are replicated), as decord returns them.
    #[default]
    Rgb,
}

impl ColorMode {
    pub fn channels(self) -> usize {
        match self {
            ColorMode::Gray => 1,
            ColorMode::Rgb => 3,
        }
    }
}

/// What a reader knows about a video before decoding it.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub path: PathBuf,
    /// Number of frames (display order).
    pub frame_count: usize,
    /// Average frame rate (frames / duration); `None` if the file does not say.
    pub fps: Option<f64>,
    pub width: usize,
    pub height: usize,
    /// Codec or encoding, e.g. `h264`, `mjpeg`, `dicom-jpeg-baseline`, `dicom-native`.
    pub codec: String,
    /// Container, e.g. `mp4`, `avi`, `dicom` (what the FFmpeg reader's demuxer is called there).
    pub container: String,
    /// Codec profile where the stream says, e.g. `High` or `Constrained Baseline` for H.264.
    pub profile: Option<String>,
}

/// Errors of video reading and writing. Every message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VideoError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The container is malformed or truncated.
    #[error("{path}: not a readable {format} file: {reason}")]
    Container {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// The file is valid but uses something this build cannot decode.
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: PathBuf, what: String },
    /// A frame could not be decoded.
    #[error("{path}: frame {frame}: {reason}")]
    Frame {
        path: PathBuf,
        frame: usize,
        reason: String,
    },
    /// A requested frame index is past the end.
    #[error("{path}: frame {frame} requested but the video has {count} frames")]
    OutOfRange {
        path: PathBuf,
        frame: usize,
        count: usize,
    },
    /// Encoding or muxing failed.
    #[error("{path}: cannot write video: {reason}")]
    Encode { path: PathBuf, reason: String },
    /// An in-memory clip or frame has inconsistent dimensions.
    #[error("invalid clip: {0}")]
    InvalidClip(String),
}

impl VideoError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A video file opened for random access.
pub trait VideoReader: Send {
    /// Frame count, frame rate and size.
    fn info(&self) -> &VideoInfo;

    /// Decodes the frames at `indices` (display order; any order, repeats allowed) into a
    /// `[indices.len(), H, W, C]` clip.
    fn read_frames(&mut self, indices: &[usize], color: ColorMode) -> Result<Clip, VideoError>;

    /// Decodes every frame.
    fn read_all(&mut self, color: ColorMode) -> Result<Clip, VideoError> {
        let n = self.info().frame_count;
        let idx: Vec<usize> = (0..n).collect();
        self.read_frames(&idx, color)
    }
}

/// The container formats [`open`] recognises by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Mp4,
    Dicom,
    Avi,
    Other,
}

/// Sniffs the format from the first 132 bytes.
pub fn sniff(head: &[u8]) -> Format {
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Format::Dicom;
    }
    if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"AVI " {
        return Format::Avi;
    }
    if head.len() >= 8
        && matches!(
            &head[4..8],
            b"ftyp" | b"moov" | b"mdat" | b"free" | b"wide" | b"skip"
        )
    {
        return Format::Mp4;
    }
    Format::Other
}

/// Opens a video for random access, choosing the reader from the file's first bytes.
pub fn open(path: impl AsRef<Path>) -> Result<Box<dyn VideoReader>, VideoError> {
    use std::io::Read;
    let path = path.as_ref();
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(path)
        .and_then(|f| f.take(132).read_to_end(&mut head))
        .map_err(|e| VideoError::io(path, e))?;
    match sniff(&head) {
        Format::Mp4 => match mp4::Mp4Reader::open(path) {
            Ok(r) => Ok(Box::new(r)),
            Err(VideoError::Unsupported { .. }) if cfg!(feature = "ffmpeg") => open_ffmpeg(path),
            Err(e) => Err(e),
        },
        Format::Avi => match avi::AviReader::open(path) {
            Ok(r) => Ok(Box::new(r)),
            Err(VideoError::Unsupported { .. }) if cfg!(feature = "ffmpeg") => open_ffmpeg(path),
            Err(e) => Err(e),
        },
        Format::Dicom => open_dicom(path),
        Format::Other => open_ffmpeg(path),
    }
}

#[cfg(feature = "dicom")]
fn open_dicom(path: &Path) -> Result<Box<dyn VideoReader>, VideoError> {
    Ok(Box::new(dicom::DicomReader::open(path)?))
}

#[cfg(not(feature = "dicom"))]
fn open_dicom(path: &Path) -> Result<Box<dyn VideoReader>, VideoError> {
    Err(VideoError::Unsupported {
        path: path.to_path_buf(),
        what: "DICOM file, but this build has no DICOM support (enable the `dicom` feature of echojepa)".into(),
    })
}

#[cfg(feature = "ffmpeg")]
fn open_ffmpeg(path: &Path) -> Result<Box<dyn VideoReader>, VideoError> {
    Ok(Box::new(ffmpeg::FfmpegReader::open(path)?))
}

#[cfg(not(feature = "ffmpeg"))]
fn open_ffmpeg(path: &Path) -> Result<Box<dyn VideoReader>, VideoError> {
    Err(VideoError::Unsupported {
        path: path.to_path_buf(),
        what: "neither MP4, AVI nor DICOM; other containers need the `ffmpeg` feature".into(),
    })
}

/// Reads the frames at `indices` of the video at `path`.
pub fn read_frames(
    path: impl AsRef<Path>,
    indices: &[usize],
    color: ColorMode,
) -> Result<Clip, VideoError> {
    open(path)?.read_frames(indices, color)
}

/// Checks every requested index against the frame count (an index past the end is
/// [`VideoError::OutOfRange`]); returns the distinct indices in ascending order.
pub(crate) fn distinct_indices(
    path: &Path,
    indices: &[usize],
    count: usize,
) -> Result<Vec<usize>, VideoError> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= count) {
        return Err(VideoError::OutOfRange {
            path: path.to_path_buf(),
            frame: bad,
            count,
        });
    }
    let mut wanted = indices.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    Ok(wanted)
}

/// Assembles a clip from decoded unique frames: `lookup(i)` returns the bytes of frame `i`.
pub(crate) fn gather<'a>(
    path: &Path,
    indices: &[usize],
    height: usize,
    width: usize,
    channels: usize,
    mut lookup: impl FnMut(usize) -> Option<&'a [u8]>,
) -> Result<Clip, VideoError> {
    let n = height * width * channels;
    let mut data = Vec::with_capacity(indices.len() * n);
    for &i in indices {
        let f = lookup(i).ok_or_else(|| VideoError::Frame {
            path: path.to_path_buf(),
            frame: i,
            reason: "the decoder produced no picture for this frame".into(),
        })?;
        if f.len() != n {
            return Err(VideoError::Frame {
                path: path.to_path_buf(),
                frame: i,
                reason: format!("decoded {} bytes, expected {n}", f.len()),
            });
        }
        data.extend_from_slice(f);
    }
    Ok(Clip {
        frames: indices.len(),
        height,
        width,
        channels,
        data,
    })
}

pub(crate) use echojepa_input::rgb_to_gray;

/// Converts interleaved pixels between 1 and 3 channels.
pub(crate) fn convert_channels(src: &[u8], from: usize, to: ColorMode) -> Vec<u8> {
    match (from, to) {
        (1, ColorMode::Gray) | (3, ColorMode::Rgb) => src.to_vec(),
        (1, ColorMode::Rgb) => src.iter().flat_map(|&v| [v, v, v]).collect(),
        (_, ColorMode::Gray) => src
            .chunks_exact(3)
            .map(|p| rgb_to_gray(p[0], p[1], p[2]))
            .collect(),
        _ => src.to_vec(),
    }
}

#[cfg(test)]
mod tests;
