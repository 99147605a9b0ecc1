//! From decoded grey frames to the encoder's input, one way for every caller: the training
//! loader, the probes' evaluation, `quantize build`/`report` and the edge runtime.
//!
//! Per frame ([`FramePrep`]): crop to the sector (blanking outside the fan when the model was
//! trained so), resize the short side to `resolution·256/224` and take the centred square (the
//! reference evaluation transform's geometry, [`eval_geometry`]), with an antialiased triangle
//! filter in fixed point ([`Resizer`]). Per clip ([`Normaliser`]): `/255`, mean and std per
//! channel through a 256-entry table, grey replicated to the encoder's channels, `[C, T, H, W]`.
//!
//! Why these choices (measured in BENCHMARKS.md, "one input path"):
//! - The triangle filter widens with the scale factor when shrinking, so a 320×240 or 1080p
//!   capture reduced to 128 px keeps its speckle statistics instead of aliasing; when enlarging
//!   (EchoNet's 112 px → 128) it is bilinear with half-pixel centres, the reference's
//!   `cv2.INTER_LINEAR`, within one grey level.
//! - Integer weights (14 fractional bits, each tap row summing to exactly 1) make the bytes the
//!   same on x86-64 and aarch64 whatever the summation order, so no .5 rounding can flip
//!   between the trainer and the cart. Only the kept (centre-cropped) columns and rows are
//!   computed.
//! - One rounding rule for sizes and offsets ([`eval_geometry`]): the cart's, which the demo
//!   model was trained with; it differs from the reference's by at most one pixel.

use crate::spec::{InputSpec, SectorHandling};
use crate::{GrayImage, Rect};

/// Fractional bits of the fixed-point filter weights.
const WEIGHT_BITS: u32 = 14;
const ONE: i32 = 1 << WEIGHT_BITS;

/// Identifies this preparation in caches of prepared inputs (e.g. the probes' feature cache):
/// change it whenever a byte of the output can change.
pub const PREP_ID: &str = "prep2-tri14-ref";

/// The fan inside a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sector {
    /// Bounding box in frame pixels.
    pub rect: Rect,
    /// For each row of `rect`, the columns `[start, end)` (relative to `rect.x`) inside the fan;
    /// `None` when the whole rectangle is image.
    pub row_spans: Option<Vec<(usize, usize)>>,
}

impl Sector {
    pub fn full(width: usize, height: usize) -> Self {
        Self {
            rect: Rect::full(width, height),
            row_spans: None,
        }
    }

    /// The crop of `img`, with pixels outside the fan set to 0 when `mask` is true.
    pub fn apply(&self, img: &GrayImage, mask: bool) -> GrayImage {
        let Some(rect) = self.rect.clamp_to(img.width, img.height) else {
            return img.clone();
        };
        let mut out = img.crop(rect);
        if mask && let Some(spans) = &self.row_spans {
            for (y, row) in out.data.chunks_exact_mut(rect.width).enumerate() {
                let (a, b) = spans.get(y).copied().unwrap_or((0, 0));
                let (a, b) = (a.min(rect.width), b.min(rect.width));
                row[..a].fill(0);
                if b > a {
                    row[b..].fill(0);
                } else {
                    row[a..].fill(0);
                }
            }
        }
        out
    }
}

/// Where the model's square comes from in an image of `width × height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Size after the short-side resize, `(width, height)`.
    pub resized: (usize, usize),
    /// The centred square, in resized pixels.
    pub crop: Rect,
}

/// The evaluation transform's geometry for crop size `resolution`: the short side becomes
/// `int(resolution·256/224)` (the reference's), the long side `long·short/short_side` rounded to
/// the nearest pixel, then the centred square at `⌊(W − res)/2⌋`.
///
/// The long side and the offset follow the cart's rule, the one the demo model was trained
/// with; the reference floors the long side and rounds the offset half to even, at most one
/// pixel apart (and the same for square frames). Switching the committed demo model to the
/// reference's long side and offset cost it about 10 points of view accuracy on the live
/// benchmark (BENCHMARKS.md, "One input path"), so they wait for a retrained demo.
pub fn eval_geometry(width: usize, height: usize, resolution: usize) -> Geometry {
    let short = (resolution * 256 / 224).max(resolution);
    let (w, h) = (width.max(1), height.max(1));
    let (rw, rh) = if w <= h {
        (
            short,
            ((h as f64 * short as f64 / w as f64).round() as usize).max(resolution),
        )
    } else {
        (
            ((w as f64 * short as f64 / h as f64).round() as usize).max(resolution),
            short,
        )
    };
    Geometry {
        resized: (rw, rh),
        crop: Rect {
            x: rw.saturating_sub(resolution) / 2,
            y: rh.saturating_sub(resolution) / 2,
            width: resolution.min(rw),
            height: resolution.min(rh),
        },
    }
}

/// Fixed-point weights of one output sample: the first input index and the weights from there,
/// summing to exactly [`ONE`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Triangle-filter taps for outputs `first..first + count` of an `in_len → out_len` resize.
fn taps(in_len: usize, out_len: usize, first: usize, count: usize) -> Vec<Taps> {
    let scale = in_len as f64 / out_len as f64;
    let support = scale.max(1.0);
    (first..first + count)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0)) as usize;
            let hi = ((center + support).ceil() as usize).min(in_len).max(lo + 1);
            let real: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 + 0.5 - center) / support).abs()).max(0.0))
                .collect();
            let sum: f64 = real.iter().sum();
            let mut weights: Vec<i32> = if sum > 0.0 {
                real.iter()
                    .map(|w| (w / sum * ONE as f64).round() as i32)
                    .collect()
            } else {
                // Unreachable for in_len >= 1; the nearest sample keeps the image defined.
                let mut w = vec![0; real.len()];
                w[0] = ONE;
                w
            };
            // Rounding each weight can leave the row a few units off 1: give the difference to
            // the largest weight, so a flat image stays exactly flat.
            let err = ONE - weights.iter().sum::<i32>();
            if let Some(big) = (0..weights.len()).max_by_key(|&k| weights[k]) {
                weights[big] += err;
            }
            // Trim zero weights at both ends (they only cost multiplications).
            let start_zeros = weights.iter().take_while(|&&w| w == 0).count();
            let end = weights.len() - weights.iter().rev().take_while(|&&w| w == 0).count();
            Taps {
                start: lo + start_zeros,
                weights: weights[start_zeros..end.max(start_zeros + 1)].to_vec(),
            }
        })
        .collect()
}

/// Resizes `src_w × src_h` grey images to `dst_w × dst_h` and keeps the rectangle `keep` of the
/// result, computing only that rectangle. The taps are computed once, so a stream of frames of
/// one size reuses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resizer {
    src: (usize, usize),
    keep: Rect,
    tx: Vec<Taps>,
    ty: Vec<Taps>,
    /// Source rows the kept output rows read.
    rows: (usize, usize),
}

impl Resizer {
    /// A resizer whose output is the `keep` rectangle of the full `dst_w × dst_h` resize
    /// (clamped to it).
    pub fn new(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize, keep: Rect) -> Self {
        let (src_w, src_h, dst_w, dst_h) = (src_w.max(1), src_h.max(1), dst_w.max(1), dst_h.max(1));
        let keep = keep
            .clamp_to(dst_w, dst_h)
            .unwrap_or(Rect::full(dst_w, dst_h));
        let tx = taps(src_w, dst_w, keep.x, keep.width);
        let ty = taps(src_h, dst_h, keep.y, keep.height);
        let first = ty.iter().map(|t| t.start).min().unwrap_or(0);
        let last = ty
            .iter()
            .map(|t| t.start + t.weights.len())
            .max()
            .unwrap_or(0);
        Self {
            src: (src_w, src_h),
            keep,
            tx,
            ty,
            rows: (first, last.min(src_h)),
        }
    }

    /// The input-to-model resizer for a `src_w × src_h` image (a sector crop or a whole frame).
    pub fn eval(src_w: usize, src_h: usize, resolution: usize) -> Self {
        let g = eval_geometry(src_w, src_h, resolution);
        Self::new(src_w, src_h, g.resized.0, g.resized.1, g.crop)
    }

    /// The source size this resizer takes.
    pub fn source_size(&self) -> (usize, usize) {
        self.src
    }

    /// The output size, `(width, height)`.
    pub fn output_size(&self) -> (usize, usize) {
        (self.keep.width, self.keep.height)
    }

    /// Resizes one image. Panics only if `img` is not `source_size()` (a programming error:
    /// callers build the resizer from the image's size).
    pub fn run(&self, img: &GrayImage) -> GrayImage {
        assert_eq!(
            (img.width, img.height),
            self.src,
            "Resizer built for another image size"
        );
        let (ow, oh) = self.output_size();
        let (r0, r1) = self.rows;
        // Horizontal pass over the source rows the vertical taps read; values keep the full
        // 14 fractional bits (255 · 2^14 fits easily in i32).
        let mut tmp = vec![0i32; ow * (r1 - r0)];
        for y in r0..r1 {
            let row = &img.data[y * img.width..(y + 1) * img.width];
            let dst = &mut tmp[(y - r0) * ow..(y - r0 + 1) * ow];
            for (d, t) in dst.iter_mut().zip(&self.tx) {
                let src = &row[t.start..t.start + t.weights.len()];
                *d = src
                    .iter()
                    .zip(&t.weights)
                    .map(|(&p, &w)| p as i32 * w)
                    .sum();
            }
        }
        // Vertical pass in i64 (2^28 scale), rounded half up and clamped.
        let mut out = GrayImage::new(ow, oh);
        let half = 1i64 << (2 * WEIGHT_BITS - 1);
        let mut acc = vec![0i64; ow];
        for (y, t) in self.ty.iter().enumerate() {
            acc.fill(0);
            for (k, &w) in t.weights.iter().enumerate() {
                let src = &tmp[(t.start + k - r0) * ow..(t.start + k - r0 + 1) * ow];
                for (a, &v) in acc.iter_mut().zip(src) {
                    *a += v as i64 * w as i64;
                }
            }
            for (o, &a) in out.data[y * ow..(y + 1) * ow].iter_mut().zip(&acc) {
                *o = ((a + half) >> (2 * WEIGHT_BITS)).clamp(0, 255) as u8;
            }
        }
        out
    }
}

/// Resizes a grey image to `width × height` (the whole image, no crop).
pub fn resize(img: &GrayImage, width: usize, height: usize) -> GrayImage {
    if img.width == width && img.height == height {
        return img.clone();
    }
    Resizer::new(
        img.width,
        img.height,
        width,
        height,
        Rect::full(width, height),
    )
    .run(img)
}

/// The per-frame part: sector crop (and mask), then the evaluation resize and centre crop.
/// Keeps its resizer while the cropped size stays the same.
#[derive(Debug, Clone)]
pub struct FramePrep {
    resolution: usize,
    crop: bool,
    mask: bool,
    resizer: Option<Resizer>,
}

impl FramePrep {
    /// For `spec`: whether to crop to a sector and blank outside it follows `spec.sector`.
    pub fn new(spec: &InputSpec) -> Self {
        Self::with_sector_use(spec.resolution[0], spec.sector)
    }

    /// For a square `resolution` and a sector handling.
    pub fn with_sector_use(resolution: usize, sector: SectorHandling) -> Self {
        Self {
            resolution,
            crop: sector != SectorHandling::FullFrame,
            mask: sector == SectorHandling::CropAndMaskOutside,
            resizer: None,
        }
    }

    /// Overrides the blanking outside the fan (a board may turn it off).
    pub fn set_mask(&mut self, mask: bool) {
        self.mask = mask && self.crop;
    }

    /// Whether frames are cropped to the sector at all.
    pub fn crops(&self) -> bool {
        self.crop
    }

    /// One frame, `resolution × resolution`. `sector` is ignored for full-frame models.
    pub fn run(&mut self, img: &GrayImage, sector: Option<&Sector>) -> GrayImage {
        let cropped;
        let src = match sector {
            Some(s) if self.crop => {
                cropped = s.apply(img, self.mask);
                &cropped
            }
            _ => img,
        };
        let fits = self
            .resizer
            .as_ref()
            .is_some_and(|r| r.source_size() == (src.width, src.height));
        if !fits {
            self.resizer = Some(Resizer::eval(src.width, src.height, self.resolution));
        }
        match &self.resizer {
            Some(r) => r.run(src),
            None => src.clone(),
        }
    }
}

/// `/255`, mean and std per channel through a lookup table: `[C, T, H, W]` floats.
#[derive(Debug, Clone, PartialEq)]
pub struct Normaliser {
    channels: usize,
    lut: Vec<[f32; 256]>,
}

impl Normaliser {
    pub fn new(channels: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        let lut = (0..channels)
            .map(|c| {
                let (m, s) = (mean[c.min(2)], std[c.min(2)]);
                let (scale, offset) = (1.0 / (255.0 * s), -m / s);
                std::array::from_fn(|v| v as f32 * scale + offset)
            })
            .collect();
        Self { channels, lut }
    }

    pub fn for_spec(spec: &InputSpec) -> Self {
        Self::new(spec.channels, spec.mean, spec.std)
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The value of grey level `v` in channel `c` (a black frame is `value(c, 0)`).
    pub fn value(&self, c: usize, v: u8) -> f32 {
        self.lut[c][v as usize]
    }

    /// Grey frames (all the same size) to `[C, T, H, W]`, grey replicated to every channel.
    pub fn run(&self, frames: &[&[u8]]) -> Vec<f32> {
        let t = frames.len();
        let hw = frames.first().map(|f| f.len()).unwrap_or(0);
        let mut out = vec![0f32; self.channels * t * hw];
        for (c, lut) in self.lut.iter().enumerate() {
            for (ti, frame) in frames.iter().enumerate() {
                let dst = &mut out[(c * t + ti) * hw..(c * t + ti + 1) * hw];
                for (d, &v) in dst.iter_mut().zip(frame.iter()) {
                    *d = lut[v as usize];
                }
            }
        }
        out
    }
}

/// A whole clip of grey frames through [`FramePrep`] and [`Normaliser`]: `[C, T, res, res]`.
pub fn prepare_clip(frames: &[GrayImage], sector: Option<&Sector>, spec: &InputSpec) -> Vec<f32> {
    let mut prep = FramePrep::new(spec);
    let small: Vec<GrayImage> = frames.iter().map(|f| prep.run(f, sector)).collect();
    let refs: Vec<&[u8]> = small.iter().map(|f| f.data.as_slice()).collect();
    Normaliser::for_spec(spec).run(&refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> GrayImage {
        let mut g = GrayImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                g.data[y * w + x] = f(x, y);
            }
        }
        g
    }

    #[test]
    fn geometry_floors_the_short_side_rounds_the_long_side_and_floors_the_offset() {
        // 320×240 at 112: short 128, long 128·320/240 = 170.67 → 171, offset ⌊59/2⌋ = 29.
        let g = eval_geometry(320, 240, 112);
        assert_eq!(g.resized, (171, 128));
        assert_eq!((g.crop.x, g.crop.y, g.crop.width), (29, 8, 112));
        // A frame whose short side already is 128 keeps its size.
        assert_eq!(eval_geometry(160, 128, 112).resized, (160, 128));
        // 224 → 256, portrait: 640·256/480 = 341.3 → 341.
        assert_eq!(eval_geometry(480, 640, 224).resized, (256, 341));
        // A resolution that is not a multiple of 7: int(100·256/224) = 114, as the reference.
        assert_eq!(eval_geometry(200, 150, 100).resized, (152, 114));
        // Square frames are the reference's exactly: 64 px → 73, offset ⌊9/2⌋ = 4 = round(4.5).
        let g = eval_geometry(64, 64, 64);
        assert_eq!((g.resized, g.crop.x, g.crop.y), ((73, 73), 4, 4));
        // Never smaller than the crop.
        assert_eq!(eval_geometry(1000, 10, 112).resized, (12800, 128));
    }

    #[test]
    fn flat_images_stay_flat_and_weights_sum_to_one() {
        for (sw, dw) in [(320, 170), (112, 128), (1920, 227), (7, 3), (1, 5)] {
            for t in taps(sw, dw, 0, dw) {
                assert_eq!(t.weights.iter().sum::<i32>(), ONE, "{sw}→{dw}");
                assert!(t.weights.iter().all(|&w| w >= 0));
                assert!(t.start + t.weights.len() <= sw);
            }
        }
        for v in [0u8, 1, 77, 128, 254, 255] {
            let out = resize(&img(97, 61, |_, _| v), 40, 23);
            assert!(out.data.iter().all(|&p| p == v), "{v}");
        }
    }

    #[test]
    fn enlarging_is_half_pixel_bilinear() {
        // 2 → 4: outputs sample 0.25, 0.75, 1.25, 1.75 source pixels (edge clamped).
        let out = resize(&img(2, 1, |x, _| [0, 200][x]), 4, 1);
        assert_eq!(out.data, vec![0, 50, 150, 200]);
    }

    #[test]
    fn shrinking_averages_instead_of_aliasing() {
        // A one-pixel checkerboard halved: bilinear 2-tap sampling would keep full contrast
        // somewhere; the widened triangle averages it to mid grey everywhere.
        let out = resize(
            &img(64, 64, |x, y| if (x + y) % 2 == 0 { 0 } else { 255 }),
            32,
            32,
        );
        for y in 1..31 {
            for x in 1..31 {
                let p = out.get(x, y);
                assert!((120..=135).contains(&p), "({x}, {y}) = {p}");
            }
        }
    }

    #[test]
    fn kept_rectangle_equals_the_crop_of_the_full_resize() {
        let src = img(320, 240, |x, y| ((x * 7 + y * 13) % 251) as u8);
        let g = eval_geometry(320, 240, 112);
        let full = resize(&src, g.resized.0, g.resized.1);
        let fused = Resizer::eval(320, 240, 112).run(&src);
        assert_eq!(fused, full.crop(g.crop));
        assert_eq!((fused.width, fused.height), (112, 112));
    }

    #[test]
    fn normaliser_matches_the_formula_and_replicates_grey() {
        let n = Normaliser::new(3, crate::IMAGENET_MEAN, crate::IMAGENET_STD);
        let out = n.run(&[&[0, 255]]);
        assert_eq!(out.len(), 6);
        for c in 0..3 {
            let (m, s) = (crate::IMAGENET_MEAN[c], crate::IMAGENET_STD[c]);
            assert_eq!(out[c * 2], -m / s);
            assert!((out[c * 2 + 1] - (1.0 - m) / s).abs() < 1e-6);
        }
    }

    #[test]
    fn sector_mask_blanks_outside_the_spans() {
        let s = Sector {
            rect: Rect {
                x: 1,
                y: 1,
                width: 4,
                height: 2,
            },
            row_spans: Some(vec![(1, 3), (0, 4)]),
        };
        let out = s.apply(&img(6, 4, |_, _| 9), true);
        assert_eq!(out.data, vec![0, 9, 9, 0, 9, 9, 9, 9]);
        assert_eq!(s.apply(&img(6, 4, |_, _| 9), false).data, vec![9; 8]);
    }
}
