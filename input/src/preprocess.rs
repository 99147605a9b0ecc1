//! Clip preprocessing shared by the trainer and the edge runtime: the reference's evaluation
//! transform (short-side resize to `crop·256/224`, centre crop, `/255`, ImageNet mean/std),
//! bilinear resizing, grayscale → 3 channels, and sector masking/cropping of echo frames (the
//! ECG trace and burned-in text outside the fan are blanked, as EchoJEPA's data preparation does).
//!
//! Float clips are channel-first `[C, T, H, W]` ([`ClipTensor`]), the layout the encoder takes.

use crate::prepare::{Normaliser, Resizer, Sector};
use crate::sector::SectorEstimator;
use crate::spec::SectorHandling;
use crate::{Clip, GrayImage, Rect};

pub use crate::spec::{IMAGENET_MEAN, IMAGENET_STD};

/// Errors of preprocessing; each names the sizes involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    /// A crop does not fit in the frame.
    #[error("crop {crop_w}x{crop_h} at ({x}, {y}) does not fit in a {width}x{height} frame")]
    Crop {
        x: usize,
        y: usize,
        crop_w: usize,
        crop_h: usize,
        width: usize,
        height: usize,
    },
    /// The clip's buffer does not match its dimensions, or a size is zero.
    #[error("invalid clip: {0}")]
    InvalidClip(String),
}

fn check(clip: &Clip) -> Result<(), PreprocessError> {
    if clip.frames == 0 || clip.width == 0 || clip.height == 0 || clip.validate().is_err() {
        return Err(PreprocessError::InvalidClip(format!(
            "{} bytes for {} frames of {}x{}x{}",
            clip.data.len(),
            clip.frames,
            clip.height,
            clip.width,
            clip.channels
        )));
    }
    Ok(())
}

/// A float clip, channel-first `[C, T, H, W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTensor {
    pub channels: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// Source coordinate and weight tables for bilinear resampling with half-pixel centres
/// (`align_corners=False`, as `cv2.INTER_LINEAR` and `F.interpolate` use), clamped at the edges.
fn linear_taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let s = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(src - 1);
            let i1 = (i0 + 1).min(src - 1);
            let f = if i0 == src - 1 {
                0.0
            } else {
                (s - i0 as f64) as f32
            };
            (i0, i1, f)
        })
        .collect()
}

/// Bilinear resize of a region of one interleaved plane (`channels` values per pixel) into
/// `out` (`dst_w × dst_h × channels`), calling `emit(out_index, value)`.
#[allow(clippy::too_many_arguments)]
pub fn resize_region(
    src: &[u8],
    stride_px: usize,
    channels: usize,
    (x0, y0, w, h): (usize, usize, usize, usize),
    dst_w: usize,
    dst_h: usize,
    mut emit: impl FnMut(usize, f32),
) {
    let tx = linear_taps(w, dst_w);
    let ty = linear_taps(h, dst_h);
    let mut row0 = vec![0f32; dst_w * channels];
    let mut row1 = vec![0f32; dst_w * channels];
    let hpass = |y: usize, row: &mut [f32]| {
        let line = &src[(y0 + y) * stride_px * channels..];
        for (dx, &(a, b, f)) in tx.iter().enumerate() {
            for c in 0..channels {
                let va = line[(x0 + a) * channels + c] as f32;
                let vb = line[(x0 + b) * channels + c] as f32;
                row[dx * channels + c] = va + (vb - va) * f;
            }
        }
    };
    let mut cached = (usize::MAX, usize::MAX);
    for (dy, &(a, b, f)) in ty.iter().enumerate() {
        if cached.0 != a {
            if cached.1 == a {
                std::mem::swap(&mut row0, &mut row1);
            } else {
                hpass(a, &mut row0);
            }
            cached.0 = a;
            cached.1 = usize::MAX;
        }
        if cached.1 != b {
            hpass(b, &mut row1);
            cached.1 = b;
        }
        for i in 0..dst_w * channels {
            emit(dy * dst_w * channels + i, row0[i] + (row1[i] - row0[i]) * f);
        }
    }
}

/// Resizes every frame (and channel) to `width × height` with the input path's filter
/// ([`crate::prepare::Resizer`]: antialiased triangle, fixed point).
pub fn resize(clip: &Clip, width: usize, height: usize) -> Result<Clip, PreprocessError> {
    check(clip)?;
    if width == 0 || height == 0 {
        return Err(PreprocessError::InvalidClip(format!(
            "resize to {width}x{height}"
        )));
    }
    if width == clip.width && height == clip.height {
        return Ok(clip.clone());
    }
    let r = Resizer::new(
        clip.width,
        clip.height,
        width,
        height,
        Rect::full(width, height),
    );
    Ok(map_planes(clip, &r))
}

/// Runs `r` on every frame and channel of `clip`.
fn map_planes(clip: &Clip, r: &Resizer) -> Clip {
    let (ow, oh) = r.output_size();
    per_plane(clip, ow, oh, |plane| r.run(plane))
}

/// Applies `f` (which makes `out_w × out_h` images) to every frame and channel of `clip`, one
/// grey plane at a time, and interleaves the results again.
fn per_plane(clip: &Clip, out_w: usize, out_h: usize, f: impl Fn(&GrayImage) -> GrayImage) -> Clip {
    let c = clip.channels;
    let mut out = Clip::zeros(clip.frames, out_h, out_w, c);
    let n = out_w * out_h * c;
    for t in 0..clip.frames {
        let src = clip.frame(t).unwrap_or(&[]);
        for ch in 0..c {
            let plane = GrayImage {
                width: clip.width,
                height: clip.height,
                data: src.iter().skip(ch).step_by(c).copied().collect(),
            };
            let dst = &mut out.data[t * n..(t + 1) * n];
            for (i, v) in f(&plane).data.into_iter().enumerate() {
                dst[i * c + ch] = v;
            }
        }
    }
    out
}

/// Crops a rectangle out of every frame.
pub fn crop(clip: &Clip, x: usize, y: usize, w: usize, h: usize) -> Result<Clip, PreprocessError> {
    check(clip)?;
    if w == 0 || h == 0 || x + w > clip.width || y + h > clip.height {
        return Err(PreprocessError::Crop {
            x,
            y,
            crop_w: w,
            crop_h: h,
            width: clip.width,
            height: clip.height,
        });
    }
    let c = clip.channels;
    let mut out = Clip::zeros(clip.frames, h, w, c);
    for t in 0..clip.frames {
        let src = clip.frame(t).unwrap_or(&[]);
        for row in 0..h {
            let s = ((y + row) * clip.width + x) * c;
            let d = ((t * h) + row) * w * c;
            out.data[d..d + w * c].copy_from_slice(&src[s..s + w * c]);
        }
    }
    Ok(out)
}

/// Replicates a grayscale clip to three channels (RGB clips are returned unchanged).
pub fn gray_to_rgb(clip: &Clip) -> Clip {
    if clip.channels == 3 {
        return clip.clone();
    }
    Clip {
        frames: clip.frames,
        height: clip.height,
        width: clip.width,
        channels: 3,
        data: clip.data.iter().flat_map(|&v| [v, v, v]).collect(),
    }
}

/// `/255` and ImageNet mean/std into a `[3, T, H, W]` float clip (grayscale replicated).
pub fn normalize(clip: &Clip) -> Result<ClipTensor, PreprocessError> {
    check(clip)?;
    let (t, h, w, c) = (clip.frames, clip.height, clip.width, clip.channels);
    let plane = t * h * w;
    let norm = Normaliser::new(3, IMAGENET_MEAN, IMAGENET_STD);
    let mut data = vec![0f32; 3 * plane];
    for ch in 0..3 {
        let src_c = if c == 1 { 0 } else { ch };
        let dst = &mut data[ch * plane..(ch + 1) * plane];
        for (i, d) in dst.iter_mut().enumerate() {
            *d = norm.value(ch, clip.data[i * c + src_c]);
        }
    }
    Ok(ClipTensor {
        channels: 3,
        frames: t,
        height: h,
        width: w,
        data,
    })
}

/// The spatial part of the reference's evaluation transform: short side → `crop·256/224`, then
/// the centred `crop × crop` square (still bytes, any channel count).
pub fn eval_resize_crop(clip: &Clip, crop_size: usize) -> Result<Clip, PreprocessError> {
    check(clip)?;
    if crop_size == 0 {
        return Err(PreprocessError::InvalidClip("crop size 0".into()));
    }
    Ok(map_planes(
        clip,
        &Resizer::eval(clip.width, clip.height, crop_size),
    ))
}

/// The reference's evaluation transform for crop size `crop`: short side → `crop·256/224`,
/// centre crop, `/255`, ImageNet normalisation → `[3, T, crop, crop]`.
pub fn eval_transform(clip: &Clip, crop_size: usize) -> Result<ClipTensor, PreprocessError> {
    normalize(&eval_resize_crop(clip, crop_size)?)
}

/// Sector handling of one video's clips as the training data had it: one sector estimated from
/// every frame of every clip ([`crate::sector::SectorEstimator`]), then each clip cropped to the
/// sector's box (and blanked outside the fan for `CropAndMaskOutside`), as the edge runtime crops
/// each frame ([`Sector::apply`]). `FullFrame` leaves the clips as they are.
pub fn apply_sector(clips: &mut [Clip], how: SectorHandling) -> Result<(), PreprocessError> {
    if how == SectorHandling::FullFrame || clips.is_empty() {
        return Ok(());
    }
    let mut est = SectorEstimator::default();
    for c in clips.iter() {
        check(c)?;
        for t in 0..c.frames {
            est.accumulate_interleaved(c.frame(t).unwrap_or(&[]), c.width, c.height, c.channels);
        }
    }
    let sector = est.estimate().ok_or_else(|| {
        PreprocessError::InvalidClip(
            "no sector: nothing bright and large enough in the clip".into(),
        )
    })?;
    let mask = how == SectorHandling::CropAndMaskOutside;
    for c in clips.iter_mut() {
        *c = crop_to_sector(c, &sector, mask)?;
    }
    Ok(())
}

/// Every frame (and channel) of `clip` through [`Sector::apply`].
fn crop_to_sector(clip: &Clip, sector: &Sector, mask: bool) -> Result<Clip, PreprocessError> {
    let Some(r) = sector.rect.clamp_to(clip.width, clip.height) else {
        return Err(PreprocessError::InvalidClip(format!(
            "sector {:?} lies outside the {}x{} frame",
            sector.rect, clip.width, clip.height
        )));
    };
    Ok(per_plane(clip, r.width, r.height, |plane| {
        sector.apply(plane, mask)
    }))
}

/// The imaging sector of an echo video as a pixel mask: 1 inside the fan, 0 outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectorMask {
    pub width: usize,
    pub height: usize,
    pub mask: Vec<u8>,
    /// Bounding box `(x, y, w, h)` of the sector.
    pub bbox: (usize, usize, usize, usize),
    /// The same sector as a crop rectangle with per-row spans.
    pub sector: Sector,
}

impl SectorMask {
    /// Estimates the sector from every frame of a clip ([`crate::sector`]: the largest
    /// connected bright region, closed by its convex hull, so dark blood pools and dropouts
    /// inside are kept while ECG traces and text, separate regions, fall outside).
    pub fn estimate(clip: &Clip) -> Result<SectorMask, PreprocessError> {
        check(clip)?;
        let (w, h) = (clip.width, clip.height);
        let mut est = SectorEstimator::default();
        for t in 0..clip.frames {
            est.accumulate_interleaved(clip.frame(t).unwrap_or(&[]), w, h, clip.channels);
        }
        let sector = est.estimate().ok_or_else(|| {
            PreprocessError::InvalidClip("no bright region: the clip is black".into())
        })?;
        let mut mask = vec![0u8; w * h];
        let r = sector.rect;
        for (ry, &(a, e)) in sector.row_spans.iter().flatten().enumerate() {
            let row = (r.y + ry) * w + r.x;
            mask[row + a..row + e].fill(1);
        }
        Ok(SectorMask {
            width: w,
            height: h,
            mask,
            bbox: (r.x, r.y, r.width, r.height),
            sector,
        })
    }

    fn check_size(&self, clip: &Clip) -> Result<(), PreprocessError> {
        check(clip)?;
        if clip.width != self.width || clip.height != self.height {
            return Err(PreprocessError::InvalidClip(format!(
                "sector mask is {}x{} but the clip is {}x{}",
                self.width, self.height, clip.width, clip.height
            )));
        }
        Ok(())
    }

    /// Blanks every pixel outside the sector (in place).
    pub fn apply(&self, clip: &mut Clip) -> Result<(), PreprocessError> {
        self.check_size(clip)?;
        let c = clip.channels;
        let n = clip.frame_len();
        for t in 0..clip.frames {
            let f = &mut clip.data[t * n..(t + 1) * n];
            for (i, &m) in self.mask.iter().enumerate() {
                if m == 0 {
                    f[i * c..(i + 1) * c].fill(0);
                }
            }
        }
        Ok(())
    }

    /// Blanks outside the sector and crops to its bounding box.
    pub fn mask_and_crop(&self, clip: &Clip) -> Result<Clip, PreprocessError> {
        self.check_size(clip)?;
        crop_to_sector(clip, &self.sector, true)
    }

    /// Intersection over union with another mask of the same size.
    pub fn iou(&self, other: &[u8]) -> f64 {
        let (mut inter, mut uni) = (0usize, 0usize);
        for (&a, &b) in self.mask.iter().zip(other) {
            inter += (a != 0 && b != 0) as usize;
            uni += (a != 0 || b != 0) as usize;
        }
        if uni == 0 {
            1.0
        } else {
            inter as f64 / uni as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Clip {
        let data = (0..w * h)
            .map(|i| ((i % w) * 255 / (w - 1).max(1)) as u8)
            .collect();
        Clip {
            frames: 1,
            height: h,
            width: w,
            channels: 1,
            data,
        }
    }

    #[test]
    fn resize_is_antialiased_when_shrinking_and_bilinear_when_enlarging() {
        // 4 -> 2: the triangle widens to 2 source pixels, so dst 0 (centre 1.0) weighs src
        // 0, 1, 2 as 0.75, 0.75, 0.25 → 125/1.75 = 71.4; dst 1 (centre 3.0) weighs src 1, 2, 3
        // as 0.25, 0.75, 0.75 → 362.5/1.75 = 207.1 (edge taps renormalised).
        let c = Clip {
            frames: 1,
            height: 1,
            width: 4,
            channels: 1,
            data: vec![0, 100, 200, 250],
        };
        let r = resize(&c, 2, 1).unwrap();
        assert_eq!(r.data, vec![71, 207]);
        // 2 -> 4 upscale: src = (d+0.5)/2-0.5 = -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped)
        let c = Clip {
            frames: 1,
            height: 1,
            width: 2,
            channels: 1,
            data: vec![0, 200],
        };
        assert_eq!(resize(&c, 4, 1).unwrap().data, vec![0, 50, 150, 200]);
    }

    #[test]
    fn eval_transform_is_the_input_paths_resize_and_crop() {
        // 160x120 -> short side 128 -> 171x128 -> centre crop 112, as the cart prepares frames
        let c = ramp(160, 120);
        let t = eval_transform(&c, 112).unwrap();
        assert_eq!((t.channels, t.frames, t.height, t.width), (3, 1, 112, 112));
        let cropped = eval_resize_crop(&c, 112).unwrap();
        let plane = GrayImage::from_vec(160, 120, c.data.clone()).unwrap();
        assert_eq!(cropped.data, Resizer::eval(160, 120, 112).run(&plane).data);
    }

    #[test]
    fn normalisation_uses_imagenet_statistics() {
        let c = Clip {
            frames: 1,
            height: 1,
            width: 1,
            channels: 3,
            data: vec![255, 0, 128],
        };
        let t = normalize(&c).unwrap();
        assert!((t.data[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((t.data[1] - (0.0 - 0.456) / 0.224).abs() < 1e-5);
        assert!((t.data[2] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-5);
        let g = normalize(&Clip {
            frames: 1,
            height: 1,
            width: 1,
            channels: 1,
            data: vec![255],
        })
        .unwrap();
        assert!(
            (g.data[1] - (1.0 - 0.456) / 0.224).abs() < 1e-5,
            "gray replicated to 3 channels"
        );
        assert_eq!((g.channels, g.frames, g.height, g.width), (3, 1, 1, 1));
    }

    #[test]
    fn crops_check_bounds() {
        let c = ramp(20, 10);
        assert!(matches!(
            crop(&c, 15, 0, 10, 5),
            Err(PreprocessError::Crop { .. })
        ));
        let bad = Clip {
            frames: 1,
            height: 2,
            width: 2,
            channels: 1,
            data: vec![0; 3],
        };
        assert!(matches!(
            normalize(&bad),
            Err(PreprocessError::InvalidClip(_))
        ));
    }
}
