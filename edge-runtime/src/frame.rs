//! Frames as they come out of a source (any pixel format, with timestamps and, for the phantom,
//! the ground truth it was rendered from) and the grey image every later stage works on.

use std::time::Duration;

pub use boards::PixelFormatName as PixelFormat;

/// What a synthetic source knows about the frame it rendered; used to score the runtime live.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroundTruth {
    /// View name as the model's classes spell it (e.g. `A4C`).
    pub view: String,
    /// Ejection fraction in percent.
    pub ef: f32,
}

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Sequence number given by the source (gaps mean frames lost before the runtime saw them,
    /// e.g. in the driver).
    pub seq: u64,
    /// Source timestamp: media time for files and the phantom, the driver's capture time for
    /// devices, arrival time for stdin. Only differences matter.
    pub ts: Duration,
    /// When the runtime received the frame, on the pipeline clock (set by the capture stage;
    /// sources leave it zero).
    pub arrived: Duration,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Bytes per row for packed formats (0 for MJPEG).
    pub stride: usize,
    pub data: Vec<u8>,
    pub truth: Option<GroundTruth>,
}

impl Frame {
    /// A frame of 8-bit grey pixels, tightly packed.
    pub fn gray(seq: u64, ts: Duration, width: u32, height: u32, data: Vec<u8>) -> Self {
        Self {
            seq,
            ts,
            arrived: Duration::ZERO,
            width,
            height,
            format: PixelFormat::Grey,
            stride: width as usize,
            data,
            truth: None,
        }
    }
}

/// Bytes per pixel of the packed formats; `None` for compressed ones.
pub fn bytes_per_pixel(format: PixelFormat) -> Option<usize> {
    match format {
        PixelFormat::Grey => Some(1),
        PixelFormat::Yuyv => Some(2),
        PixelFormat::Rgb3 => Some(3),
        PixelFormat::Mjpg => None,
    }
}

// The grey image and rectangle live with the rest of the model-input preparation.
pub use echojepa_input::{GrayImage, Rect};
