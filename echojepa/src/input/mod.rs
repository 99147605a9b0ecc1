//! The model's input, prepared the same way wherever a clip meets the encoder: the grey image
//! every stage works on, the antialiased resize to the model's square input, and the
//! normalisation to the encoder's channels. Plain Rust (no tensors), so the cart, the trainer's
//! streamed phantom data and the quantizer's checks can share it byte for byte.

pub mod resize;

pub use resize::{resize, resize_short_side_and_center_crop, short_side_size};

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

/// Scales 8-bit frames to `[0, 1]`, subtracts `mean` and divides by `std` per channel, and
/// replicates grey to `channels` planes: `[C, T, H, W]` floats, the encoder's input layout.
pub fn normalise_frames(
    frames: &[&[u8]],
    channels: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    let t = frames.len();
    let hw = frames.first().map(|f| f.len()).unwrap_or(0);
    let mut out = vec![0f32; channels * t * hw];
    for c in 0..channels {
        let (m, s) = (mean[c.min(2)], std[c.min(2)]);
        let (scale, offset) = (1.0 / (255.0 * s), -m / s);
        for (ti, frame) in frames.iter().enumerate() {
            let dst = &mut out[(c * t + ti) * hw..(c * t + ti + 1) * hw];
            for (d, &v) in dst.iter_mut().zip(frame.iter()) {
                *d = v as f32 * scale + offset;
            }
        }
    }
    out
}
