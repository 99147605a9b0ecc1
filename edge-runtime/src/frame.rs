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

/// An 8-bit grey image, row-major, tightly packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl GrayImage {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; width * height],
        }
    }

    pub fn from_vec(width: usize, height: usize, data: Vec<u8>) -> Option<Self> {
        (data.len() == width * height).then_some(Self {
            width,
            height,
            data,
        })
    }

    #[inline]
    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.data[y * self.width + x]
    }

    /// The pixels of a rectangle, copied.
    pub fn crop(&self, r: Rect) -> GrayImage {
        let mut out = GrayImage::new(r.width, r.height);
        for row in 0..r.height {
            let src = (r.y + row) * self.width + r.x;
            out.data[row * r.width..(row + 1) * r.width]
                .copy_from_slice(&self.data[src..src + r.width]);
        }
        out
    }
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

impl Rect {
    pub fn full(width: usize, height: usize) -> Self {
        Self {
            x: 0,
            y: 0,
            width,
            height,
        }
    }

    /// The part of `self` inside a `width` x `height` image.
    pub fn clamp_to(self, width: usize, height: usize) -> Option<Rect> {
        let x = self.x.min(width);
        let y = self.y.min(height);
        let w = self.width.min(width - x);
        let h = self.height.min(height - y);
        (w > 0 && h > 0).then_some(Rect {
            x,
            y,
            width: w,
            height: h,
        })
    }
}
