//! Resizing a grey image (a sector crop, a label mask) to the model's input size.
//!
//! Separable triangle (bilinear) filtering whose support widens with the scale factor when
//! shrinking, i.e. antialiased bilinear as PIL and torchvision (`antialias=True`) do it, so a
//! 1080p capture reduced to 112 px keeps the speckle statistics instead of aliasing. The model
//! input is square: the crop is first resized so its short side is `resolution * 256 / 224` (the
//! reference evaluation transform), then centre-cropped to `resolution`.

use super::GrayImage;

/// Weights of one output sample: first input index and the weights from there.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

fn taps(in_len: usize, out_len: usize) -> Vec<Taps> {
    let scale = in_len as f64 / out_len as f64;
    let support = scale.max(1.0);
    (0..out_len)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0)) as usize;
            let hi = ((center + support).ceil() as usize).min(in_len);
            let mut weights: Vec<f32> = (lo..hi)
                .map(|j| {
                    let d = ((j as f64 + 0.5 - center) / support).abs();
                    (1.0 - d).max(0.0) as f32
                })
                .collect();
            let sum: f32 = weights.iter().sum();
            if sum > 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            } else {
                // Degenerate (cannot happen for in_len >= 1): nearest sample.
                weights = vec![1.0];
            }
            Taps { start: lo, weights }
        })
        .collect()
}

/// Antialiased bilinear resize to `out_w` x `out_h`.
pub fn resize(img: &GrayImage, out_w: usize, out_h: usize) -> GrayImage {
    if img.width == out_w && img.height == out_h {
        return img.clone();
    }
    let tx = taps(img.width, out_w);
    let ty = taps(img.height, out_h);
    // Horizontal pass into f32 rows.
    let mut tmp = vec![0f32; out_w * img.height];
    for y in 0..img.height {
        let row = &img.data[y * img.width..(y + 1) * img.width];
        for (x, t) in tx.iter().enumerate() {
            let mut acc = 0f32;
            for (k, w) in t.weights.iter().enumerate() {
                acc += w * row[t.start + k] as f32;
            }
            tmp[y * out_w + x] = acc;
        }
    }
    // Vertical pass.
    let mut out = GrayImage::new(out_w, out_h);
    for (y, t) in ty.iter().enumerate() {
        for x in 0..out_w {
            let mut acc = 0f32;
            for (k, w) in t.weights.iter().enumerate() {
                acc += w * tmp[(t.start + k) * out_w + x];
            }
            out.data[y * out_w + x] = acc.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// The size an image of `width × height` has after its short side is resized to
/// `resolution * 256 / 224` (the reference evaluation transform), before the centre crop.
pub fn short_side_size(width: usize, height: usize, resolution: usize) -> (usize, usize) {
    let short_target = (resolution * 256).div_ceil(224).max(resolution);
    let (w, h) = (width.max(1), height.max(1));
    if w <= h {
        (
            short_target,
            ((h as f64 * short_target as f64 / w as f64).round() as usize).max(resolution),
        )
    } else {
        (
            ((w as f64 * short_target as f64 / h as f64).round() as usize).max(resolution),
            short_target,
        )
    }
}

/// Short side to `resolution * 256 / 224`, then the centred `resolution` x `resolution` square.
pub fn resize_short_side_and_center_crop(img: &GrayImage, resolution: usize) -> GrayImage {
    let (nw, nh) = short_side_size(img.width, img.height, resolution);
    let resized = resize(img, nw, nh);
    let x = (nw - resolution) / 2;
    let y = (nh - resolution) / 2;
    resized.crop(super::Rect {
        x,
        y,
        width: resolution,
        height: resolution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let img = GrayImage {
            width: 37,
            height: 23,
            data: vec![77; 37 * 23],
        };
        for (w, h) in [(10, 10), (100, 50), (37, 23), (1, 1)] {
            let r = resize(&img, w, h);
            assert!(r.data.iter().all(|&v| v == 77), "{w}x{h}");
        }
    }

    #[test]
    fn shrinking_averages_instead_of_aliasing() {
        // A one-pixel checkerboard shrunk 4x becomes mid-grey, not black or white.
        let (w, h) = (64, 64);
        let data = (0..w * h)
            .map(|i| if (i % w + i / w) % 2 == 0 { 0 } else { 255 })
            .collect();
        let img = GrayImage {
            width: w,
            height: h,
            data,
        };
        let r = resize(&img, 16, 16);
        for &v in &r.data {
            assert!((120..=135).contains(&v), "aliased value {v}");
        }
    }

    #[test]
    fn short_side_crop_is_square_and_centred() {
        // Left half dark, right half bright, 200x100: the crop keeps the middle.
        let (w, h) = (200, 100);
        let data = (0..w * h)
            .map(|i| if i % w < 100 { 0 } else { 200 })
            .collect();
        let img = GrayImage {
            width: w,
            height: h,
            data,
        };
        let c = resize_short_side_and_center_crop(&img, 32);
        assert_eq!((c.width, c.height), (32, 32));
        assert!(c.get(2, 16) < 10 && c.get(29, 16) > 190);
        // The edge (the image's middle column) lands in the middle of the crop.
        let edge = (0..32).find(|&x| c.get(x, 16) > 100).unwrap();
        assert!((14..=18).contains(&edge), "edge at {edge}");
    }
}
