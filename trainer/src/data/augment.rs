//! Training augmentation of the reference's `VideoTransform(training=True)`: one random
//! resized crop per clip (area `U(scale)·H·W`, log-uniform aspect ratio, 10 tries, then a
//! centre fallback, as torchvision's `RandomResizedCrop.get_params`), resized bilinearly with
//! `align_corners=False` in float, an optional horizontal flip (off for echo: EchoJEPA
//! hard-codes it off because flipping swaps the heart's left and right), and ImageNet
//! normalisation. Evaluation uses `echojepa_input::preprocess::eval_transform` instead.

use echojepa_input::preprocess::{ClipTensor, IMAGENET_MEAN, IMAGENET_STD, resize_region};
use echojepa_video::Clip;
use rand::Rng;

/// `RandomResizedCrop` settings (`data_aug.random_resize_scale`, `random_resize_aspect_ratio`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomResizedCrop {
    /// Output side in pixels (`crop_size`).
    pub size: usize,
    /// Fraction of the frame area, e.g. `[0.5, 1.0]` (EchoJEPA) or `[0.3, 1.0]` (V-JEPA 2).
    pub scale: (f64, f64),
    /// Aspect ratio range, e.g. `[0.9, 1.1]` (EchoJEPA) or `[0.75, 1.35]` (V-JEPA 2).
    pub ratio: (f64, f64),
    /// Horizontal flip with p = 0.5 (keep off for echo).
    pub horizontal_flip: bool,
}

impl RandomResizedCrop {
    /// EchoJEPA's pretraining settings at `size`.
    #[allow(dead_code)] // the configs give their own; kept as the documented default
    pub fn echojepa(size: usize) -> Self {
        Self {
            size,
            scale: (0.5, 1.0),
            ratio: (0.9, 1.1),
            horizontal_flip: false,
        }
    }

    /// The crop box `(x, y, w, h)` for a `width × height` frame.
    pub fn params(
        &self,
        width: usize,
        height: usize,
        rng: &mut impl Rng,
    ) -> (usize, usize, usize, usize) {
        let area = (width * height) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = (if lr1 > lr0 {
                rng.random_range(lr0..lr1)
            } else {
                lr0
            })
            .exp();
            let w = (target * aspect).sqrt().round_ties_even() as usize;
            let h = (target / aspect).sqrt().round_ties_even() as usize;
            if w > 0 && w <= width && h > 0 && h <= height {
                let y = rng.random_range(0..=height - h);
                let x = rng.random_range(0..=width - w);
                return (x, y, w, h);
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (min_r, max_r) = (
            self.ratio.0.min(self.ratio.1),
            self.ratio.0.max(self.ratio.1),
        );
        let (w, h) = if in_ratio < min_r {
            (
                width,
                ((width as f64 / min_r).round_ties_even() as usize).clamp(1, height),
            )
        } else if in_ratio > max_r {
            (
                ((height as f64 * max_r).round_ties_even() as usize).clamp(1, width),
                height,
            )
        } else {
            (width, height)
        };
        ((width - w) / 2, (height - h) / 2, w, h)
    }

    /// Crops every frame of `clip` with one random box, resizes to `size × size` and
    /// normalises into `[3, T, size, size]` (grayscale replicated).
    pub fn apply(&self, clip: &Clip, rng: &mut impl Rng) -> ClipTensor {
        let (x, y, w, h) = self.params(clip.width, clip.height, rng);
        let flip = self.horizontal_flip && rng.random_bool(0.5);
        crop_resize_normalize(clip, (x, y, w, h), self.size, flip)
    }
}

/// Crops `box_` out of every frame, resizes it bilinearly (float, no rounding) to
/// `size × size`, optionally flips, and normalises to `[3, T, size, size]`.
pub fn crop_resize_normalize(
    clip: &Clip,
    box_: (usize, usize, usize, usize),
    size: usize,
    flip: bool,
) -> ClipTensor {
    let (t, c) = (clip.frames, clip.channels);
    let plane = t * size * size;
    let mut data = vec![0f32; 3 * plane];
    let scale: [f32; 3] = std::array::from_fn(|ch| 1.0 / (255.0 * IMAGENET_STD[ch]));
    let bias: [f32; 3] = std::array::from_fn(|ch| -IMAGENET_MEAN[ch] / IMAGENET_STD[ch]);
    for f in 0..t {
        let src = clip.frame(f).unwrap_or(&[]);
        resize_region(src, clip.width, c, box_, size, size, |i, v| {
            let px = i / c;
            let (row, mut col) = (px / size, px % size);
            if flip {
                col = size - 1 - col;
            }
            let at = f * size * size + row * size + col;
            if c == 1 {
                for ch in 0..3 {
                    data[ch * plane + at] = v * scale[ch] + bias[ch];
                }
            } else {
                let ch = i % c;
                data[ch * plane + at] = v * scale[ch] + bias[ch];
            }
        });
    }
    ClipTensor {
        channels: 3,
        frames: t,
        height: size,
        width: size,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crop_boxes_respect_scale_and_ratio() {
        let rrc = RandomResizedCrop::echojepa(112);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let (x, y, w, h) = rrc.params(160, 120, &mut rng);
            assert!(x + w <= 160 && y + h <= 120);
            let frac = (w * h) as f64 / (160.0 * 120.0);
            let ratio = w as f64 / h as f64;
            assert!((0.47..=1.0).contains(&frac), "area fraction {frac}");
            assert!(
                (0.85..=1.16).contains(&ratio) || (w, h) == (160, 120),
                "ratio {ratio}"
            );
        }
    }

    #[test]
    fn fallback_is_a_centre_crop() {
        // impossible request: every try fails, the fallback clamps the aspect ratio
        let rrc = RandomResizedCrop {
            size: 8,
            scale: (5.0, 6.0),
            ratio: (1.0, 1.0),
            horizontal_flip: false,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        assert_eq!(rrc.params(100, 50, &mut rng), (25, 0, 50, 50));
    }

    #[test]
    fn full_box_resize_and_normalisation() {
        // a constant frame stays constant after crop/resize; values are ImageNet-normalised
        let clip = Clip {
            frames: 2,
            height: 20,
            width: 30,
            channels: 1,
            data: vec![255; 600 * 2],
        };
        let out = crop_resize_normalize(&clip, (5, 2, 20, 16), 8, false);
        assert_eq!(
            (out.channels, out.frames, out.height, out.width),
            (3, 2, 8, 8)
        );
        for ch in 0..3 {
            let want = (1.0 - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch];
            assert!(
                out.data[ch * 128..(ch + 1) * 128]
                    .iter()
                    .all(|&v| (v - want).abs() < 1e-5)
            );
        }
        // flip mirrors columns
        let ramp: Vec<u8> = (0..2 * 4 * 4).map(|i| ((i % 4) * 60) as u8).collect();
        let clip = Clip {
            frames: 2,
            height: 4,
            width: 4,
            channels: 1,
            data: ramp,
        };
        let a = crop_resize_normalize(&clip, (0, 0, 4, 4), 4, false);
        let b = crop_resize_normalize(&clip, (0, 0, 4, 4), 4, true);
        assert!((a.data[0] - b.data[3]).abs() < 1e-6 && (a.data[3] - b.data[0]).abs() < 1e-6);
    }
}
