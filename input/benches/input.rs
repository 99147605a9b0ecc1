//! The input path's two choices, measured side by side in one run on phantom frames at a cart's
//! capture sizes (320×240, 640×480, 1920×1080): speed and accuracy of
//!
//! - the resize to the model's 112 px square: ours (fixed-point antialiased triangle, only the
//!   kept square computed, taps cached across frames) against the two it replaced, the float
//!   antialiased resize of the whole frame then cropped (the old runtime) and bilinear 2-tap
//!   sampling (the old trainer, `preprocess::resize_region`). Accuracy: mean and max absolute
//!   difference to the exact triangle filter in f64;
//! - the sector estimate: ours (pixel maximum, blocks for the components, hull at pixels) against
//!   block means with a block-aligned box (the old runtime). Accuracy: IoU of the mask with the
//!   phantom's true sector; cost per frame (accumulate) and per detection.
//!
//! `cargo bench -p echojepa-input --bench input [-- --reps 20]`

use std::hint::black_box;
use std::time::Instant;

use echojepa_input::prepare::{Resizer, eval_geometry};
use echojepa_input::preprocess::resize_region;
use echojepa_input::sector::SectorEstimator;
use echojepa_input::{GrayImage, Rect, Sector};
use echojepa_phantom::{Phantom, PhantomParams, View};

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// The replaced implementations, kept here only to be measured against.
mod before {
    use super::*;

    /// Float antialiased triangle resize of the whole image (taps rebuilt per call), then crop.
    pub fn float_antialiased(img: &GrayImage, res: usize) -> GrayImage {
        let g = eval_geometry(img.width, img.height, res);
        let (ow, oh) = g.resized;
        let tx = taps(img.width, ow);
        let ty = taps(img.height, oh);
        let mut tmp = vec![0f32; ow * img.height];
        for y in 0..img.height {
            let row = &img.data[y * img.width..(y + 1) * img.width];
            for (x, (s, w)) in tx.iter().enumerate() {
                tmp[y * ow + x] = w
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * row[s + k] as f32)
                    .sum();
            }
        }
        let mut out = GrayImage::new(ow, oh);
        for (y, (s, w)) in ty.iter().enumerate() {
            for x in 0..ow {
                let acc: f32 = w
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * tmp[(s + k) * ow + x])
                    .sum();
                out.data[y * ow + x] = acc.round().clamp(0.0, 255.0) as u8;
            }
        }
        out.crop(g.crop)
    }

    fn taps(n: usize, m: usize) -> Vec<(usize, Vec<f32>)> {
        super::exact_taps(n, m)
            .into_iter()
            .map(|(s, w)| (s, w.into_iter().map(|w| w as f32).collect()))
            .collect()
    }

    /// Bilinear 2-tap sampling (half-pixel centres) to the resized size, then crop.
    pub fn bilinear(img: &GrayImage, res: usize) -> GrayImage {
        let g = eval_geometry(img.width, img.height, res);
        let (ow, oh) = g.resized;
        let mut out = GrayImage::new(ow, oh);
        resize_region(
            &img.data,
            img.width,
            1,
            (0, 0, img.width, img.height),
            ow,
            oh,
            |i, v| out.data[i] = v.round().clamp(0.0, 255.0) as u8,
        );
        out.crop(g.crop)
    }

    /// Block means over the frames' maximum, 4-connected, box aligned to blocks, mask = each
    /// block row's extent.
    pub struct BlockDetector {
        pub acc: Option<GrayImage>,
        b: usize,
    }

    impl BlockDetector {
        pub fn new() -> Self {
            Self { acc: None, b: 1 }
        }

        pub fn accumulate(&mut self, img: &GrayImage) {
            let b = echojepa_input::sector::block_size(img.width, img.height);
            let (sw, sh) = (img.width.div_ceil(b), img.height.div_ceil(b));
            let mut sums = vec![0u32; sw * sh];
            let mut counts = vec![0u32; sw * sh];
            for y in 0..img.height {
                let base = (y / b) * sw;
                for (x, &v) in img.data[y * img.width..(y + 1) * img.width]
                    .iter()
                    .enumerate()
                {
                    sums[base + x / b] += v as u32;
                    counts[base + x / b] += 1;
                }
            }
            let small: Vec<u8> = sums
                .iter()
                .zip(&counts)
                .map(|(&s, &c)| (s / c.max(1)) as u8)
                .collect();
            match &mut self.acc {
                Some(a) if a.data.len() == small.len() => {
                    for (a, s) in a.data.iter_mut().zip(&small) {
                        *a = (*a).max(*s);
                    }
                }
                _ => {
                    self.b = b;
                    self.acc = GrayImage::from_vec(sw, sh, small);
                }
            }
        }

        pub fn detect(&mut self, width: usize, height: usize) -> Option<Sector> {
            let acc = self.acc.take()?;
            let (b, sw, sh) = (self.b, acc.width, acc.height);
            let on: Vec<bool> = acc.data.iter().map(|&v| v > 10).collect();
            let mut label = vec![0u32; sw * sh];
            let (mut best, mut best_area, mut next) = (0u32, 0usize, 1u32);
            for s in 0..sw * sh {
                if !on[s] || label[s] != 0 {
                    continue;
                }
                let (mut stack, mut area) = (vec![s], 0usize);
                label[s] = next;
                while let Some(i) = stack.pop() {
                    area += 1;
                    let (x, y) = (i % sw, i / sw);
                    let mut n = vec![];
                    if x > 0 {
                        n.push(i - 1);
                    }
                    if x + 1 < sw {
                        n.push(i + 1);
                    }
                    if y > 0 {
                        n.push(i - sw);
                    }
                    if y + 1 < sh {
                        n.push(i + sw);
                    }
                    for j in n {
                        if on[j] && label[j] == 0 {
                            label[j] = next;
                            stack.push(j);
                        }
                    }
                }
                if area > best_area {
                    (best, best_area) = (next, area);
                }
                next += 1;
            }
            if best_area == 0 {
                return None;
            }
            let mut spans = vec![(usize::MAX, 0usize); sh];
            for y in 0..sh {
                for x in 0..sw {
                    if label[y * sw + x] == best {
                        spans[y].0 = spans[y].0.min(x);
                        spans[y].1 = spans[y].1.max(x + 1);
                    }
                }
            }
            let rows: Vec<usize> = (0..sh).filter(|&y| spans[y].0 != usize::MAX).collect();
            let (y0, y1) = (rows[0], rows[rows.len() - 1] + 1);
            let x0 = rows.iter().map(|&y| spans[y].0).min()?;
            let x1 = rows.iter().map(|&y| spans[y].1).max()?;
            let rect = Rect {
                x: x0 * b,
                y: y0 * b,
                width: (x1 * b).min(width) - x0 * b,
                height: (y1 * b).min(height) - y0 * b,
            };
            let row_spans = (0..rect.height)
                .map(|ry| match spans[(rect.y + ry) / b] {
                    (a, e) if a != usize::MAX => {
                        ((a * b).saturating_sub(rect.x), (e * b).min(width) - rect.x)
                    }
                    _ => (0, 0),
                })
                .collect();
            Some(Sector {
                rect,
                row_spans: Some(row_spans),
            })
        }
    }
}

/// Exact triangle-filter taps (f64), the accuracy reference.
fn exact_taps(n: usize, m: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = n as f64 / m as f64;
    let support = scale.max(1.0);
    (0..m)
        .map(|i| {
            let c = (i as f64 + 0.5) * scale;
            let lo = ((c - support).floor().max(0.0)) as usize;
            let hi = ((c + support).ceil() as usize).min(n).max(lo + 1);
            let w: Vec<f64> = (lo..hi)
                .map(|j| (1.0 - ((j as f64 + 0.5 - c) / support).abs()).max(0.0))
                .collect();
            let s: f64 = w.iter().sum();
            (lo, w.into_iter().map(|v| v / s).collect())
        })
        .collect()
}

/// The exact triangle resize in f64 (no rounding), cropped like the model input.
fn exact(img: &GrayImage, res: usize) -> Vec<f64> {
    let g = eval_geometry(img.width, img.height, res);
    let (ow, oh) = g.resized;
    let (tx, ty) = (exact_taps(img.width, ow), exact_taps(img.height, oh));
    let mut tmp = vec![0f64; ow * img.height];
    for y in 0..img.height {
        for (x, (s, w)) in tx.iter().enumerate() {
            tmp[y * ow + x] = w
                .iter()
                .enumerate()
                .map(|(k, w)| w * img.data[y * img.width + s + k] as f64)
                .sum();
        }
    }
    let mut out = Vec::with_capacity(res * res);
    for y in g.crop.y..g.crop.y + g.crop.height {
        let (s, w) = &ty[y];
        for x in g.crop.x..g.crop.x + g.crop.width {
            out.push(
                w.iter()
                    .enumerate()
                    .map(|(k, w)| w * tmp[(s + k) * ow + x])
                    .sum(),
            );
        }
    }
    out
}

fn error(img: &GrayImage, reference: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = img
        .data
        .iter()
        .zip(reference)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .collect();
    (
        d.iter().sum::<f64>() / d.len() as f64,
        d.iter().copied().fold(0.0, f64::max),
    )
}

fn mask_iou(s: &Sector, truth: &[u8], w: usize) -> f64 {
    let mut mask = vec![0u8; truth.len()];
    for (ry, &(a, e)) in s.row_spans.iter().flatten().enumerate() {
        let row = (s.rect.y + ry) * w + s.rect.x;
        mask[row + a..row + e].fill(1);
    }
    let inter = mask
        .iter()
        .zip(truth)
        .filter(|(a, b)| **a != 0 && **b != 0)
        .count();
    let union = mask
        .iter()
        .zip(truth)
        .filter(|(a, b)| **a != 0 || **b != 0)
        .count();
    inter as f64 / union.max(1) as f64
}

fn main() {
    let mut reps = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--reps" {
            reps = args.next().and_then(|r| r.parse().ok()).unwrap_or(reps);
        }
    }
    let res = 112;
    let phantom = Phantom::new(PhantomParams::sample(5, View::A4c)).expect("phantom");
    println!("| capture | resize | ms/frame | × ours | mean abs err | max abs err |");
    println!("|---|---|---|---|---|---|");
    let mut sector_rows = Vec::new();
    for (w, h) in [(320usize, 240usize), (640, 480), (1920, 1080)] {
        let frames: Vec<GrayImage> = (0..8)
            .map(|t| {
                let f = phantom.render_frame(t as f64 / 30.0, w, h).expect("frame");
                GrayImage::from_vec(w, h, f.data).expect("size")
            })
            .collect();
        let img = &frames[0];
        let reference = exact(img, res);
        let resizer = Resizer::eval(w, h, res);
        let ours = median_ms(reps, || {
            black_box(resizer.run(black_box(img)));
        });
        let float = median_ms(reps, || {
            black_box(before::float_antialiased(black_box(img), res));
        });
        let bilinear = median_ms(reps, || {
            black_box(before::bilinear(black_box(img), res));
        });
        for (name, ms, out) in [
            (
                "ours: fixed point, fused crop, cached taps",
                ours,
                resizer.run(img),
            ),
            (
                "float antialiased, whole frame (old runtime)",
                float,
                before::float_antialiased(img, res),
            ),
            (
                "bilinear 2-tap (old trainer)",
                bilinear,
                before::bilinear(img, res),
            ),
        ] {
            let (mean, max) = error(&out, &reference);
            println!(
                "| {w}×{h} | {name} | {ms:.3} | {:.2} | {mean:.3} | {max:.1} |",
                ms / ours
            );
        }

        // Sector: 8 frames accumulated, one detection.
        let truth = phantom.sector_mask(w, h).expect("truth");
        let mut est = SectorEstimator::default();
        let acc_new = median_ms(reps, || {
            est.reset();
            for f in &frames {
                est.accumulate(black_box(f));
            }
        }) / frames.len() as f64;
        let det_new = median_ms(reps, || {
            black_box(est.estimate());
        });
        let ours = est.estimate().expect("sector");
        let mut old = before::BlockDetector::new();
        let acc_old = median_ms(reps, || {
            old.acc = None;
            for f in &frames {
                old.accumulate(black_box(f));
            }
        }) / frames.len() as f64;
        let saved = old.acc.clone();
        let det_old = median_ms(reps, || {
            old.acc = saved.clone();
            black_box(old.detect(w, h));
        });
        old.acc = saved;
        let theirs = old.detect(w, h).expect("sector");
        sector_rows.push(format!(
            "| {w}×{h} | ours: pixel max, blocks, hull at pixels | {acc_new:.3} | {det_new:.2} | {:.4} | {:?} |\n\
             | {w}×{h} | block means, block box (old runtime) | {acc_old:.3} | {det_old:.2} | {:.4} | {:?} |",
            mask_iou(&ours, &truth, w),
            (ours.rect.x, ours.rect.y, ours.rect.width, ours.rect.height),
            mask_iou(&theirs, &truth, w),
            (theirs.rect.x, theirs.rect.y, theirs.rect.width, theirs.rect.height),
        ));
    }
    println!();
    println!(
        "| capture | sector | accumulate ms/frame | detect ms | mask IoU with truth | box (x, y, w, h) |"
    );
    println!("|---|---|---|---|---|---|");
    for r in sector_rows {
        println!("{r}");
    }
}
