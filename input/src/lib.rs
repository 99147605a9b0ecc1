//! The model's input, prepared one way wherever a clip meets the encoder: the input
//! specification stored in checkpoints and bundles ([`InputSpec`]), decoded clips ([`Clip`]),
//! which frames make a clip ([`sampling`]), the sector ([`preprocess::SectorMask`],
//! [`prepare::Sector`]), the antialiased resize and centre crop to the model's square and the
//! normalisation to the encoder's channels ([`prepare`]).
//!
//! Plain Rust with no tensor library and no video decoder, so the trainer's loader, the probes'
//! evaluation, `quantize` and the cart's runtime all link it and compute the same bytes.

pub mod dump;
pub mod prepare;
pub mod preprocess;
pub mod sampling;
pub mod sector;
pub mod spec;

pub use spec::{
    FrameSpacing, IMAGENET_MEAN, IMAGENET_STD, InputSpec, MAX_INPUT_FPS, SectorHandling,
};

pub use preprocess::PreprocessError;

pub use prepare::{
    FramePrep, Geometry, Normaliser, PREP_ID, Resizer, Sector, eval_geometry, prepare_clip, resize,
};

/// A decoded clip: `frames × height × width × channels` bytes, row-major, channels interleaved
/// (`channels` is 1 for grayscale or 3 for RGB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Clip {
    /// An all-black clip.
    pub fn zeros(frames: usize, height: usize, width: usize, channels: usize) -> Self {
        Self {
            frames,
            height,
            width,
            channels,
            data: vec![0; frames * height * width * channels],
        }
    }

    /// Bytes of one frame.
    pub fn frame_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Frame `i` as a slice (`None` past the end).
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        let n = self.frame_len();
        self.data.get(i * n..(i + 1) * n)
    }

    /// Checks that `data` holds exactly `frames × height × width × channels` bytes.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let expected = self.frames * self.height * self.width * self.channels;
        if !(self.channels == 1 || self.channels == 3) || self.data.len() != expected {
            return Err(PreprocessError::InvalidClip(format!(
                "{} bytes for {} frames of {}x{}x{} (channels must be 1 or 3)",
                self.data.len(),
                self.frames,
                self.height,
                self.width,
                self.channels
            )));
        }
        Ok(())
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

/// Limited-range (studio, 16–235) luma to full-range grey, rounded and clamped: the table
/// video files are decoded with when they signal limited range, and the cart's YUYV capture
/// when its board says so.
pub fn limited_range_lut() -> [u8; 256] {
    std::array::from_fn(|y| {
        ((y as f32 - 16.0) * (255.0 / 219.0))
            .round()
            .clamp(0.0, 255.0) as u8
    })
}

/// BT.601 luma of an RGB pixel, rounded: `(299 R + 587 G + 114 B) / 1000`. The one RGB → grey
/// conversion of the project (video files decoded to grey, RGB capture devices on the cart).
#[inline]
pub fn rgb_to_gray(r: u8, g: u8, b: u8) -> u8 {
    ((299 * r as u32 + 587 * g as u32 + 114 * b as u32 + 500) / 1000) as u8
}

/// Scales 8-bit frames to `[0, 1]`, subtracts `mean` and divides by `std` per channel, and
/// replicates grey to `channels` planes: `[C, T, H, W]` floats, the encoder's input layout.
pub fn normalise_frames(
    frames: &[&[u8]],
    channels: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    Normaliser::new(channels, mean, std).run(frames)
}

/// The reference evaluation transform's spatial part on one grey image: short side to
/// `resolution·256/224`, the centred `resolution × resolution` square.
pub fn resize_short_side_and_center_crop(img: &GrayImage, resolution: usize) -> GrayImage {
    Resizer::eval(img.width, img.height, resolution).run(img)
}
