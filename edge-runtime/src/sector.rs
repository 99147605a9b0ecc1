//! Sector stage: where the ultrasound image (the fan) sits in the captured frame.
//!
//! Exported echo frames carry more than the image: an ECG trace, text, scale marks. The model was
//! trained on the sector alone (or on the whole frame; the bundle says which), so the runtime
//! crops to the sector and, when asked, blanks what lies outside the fan inside the crop.
//!
//! The sector is either fixed by the board profile or detected: the frame is reduced to blocks,
//! blocks brighter than a threshold form a mask, and the largest 4-connected region of it (over a
//! short temporal maximum, so dark blood pools and dropouts don't split it) is the fan. Its
//! bounding box is the crop and its per-row extent is the mask (a fan is convex along rows, so
//! holes inside it are kept). Small regions (text, ECG trace) are ignored. Detection repeats every
//! `redetect_every` frames; a new box replaces the old one only when it moved noticeably, so the
//! crop does not jitter.

use crate::frame::{GrayImage, Rect};

pub use echojepa_input::Sector;

/// Detects the fan by thresholding block means and keeping the largest connected region.
#[derive(Debug, Clone)]
pub struct SectorDetector {
    /// Grey level above which a block counts as image.
    pub threshold: u8,
    /// Regions smaller than this fraction of the frame are never the sector.
    pub min_area_fraction: f64,
    /// Temporal maximum of the block image since the last detection.
    acc: Option<GrayImage>,
    block: usize,
}

impl SectorDetector {
    pub fn new(threshold: u8) -> Self {
        Self {
            threshold,
            min_area_fraction: 0.05,
            acc: None,
            block: 1,
        }
    }

    fn block_size(width: usize, height: usize) -> usize {
        // Work on at most ~160 blocks along the longer side.
        (width.max(height) / 160).max(1)
    }

    /// Adds a frame to the temporal maximum.
    pub fn accumulate(&mut self, img: &GrayImage) {
        let b = Self::block_size(img.width, img.height);
        let small = block_mean(img, b);
        match &mut self.acc {
            Some(acc)
                if self.block == b && acc.width == small.width && acc.height == small.height =>
            {
                for (a, s) in acc.data.iter_mut().zip(&small.data) {
                    *a = (*a).max(*s);
                }
            }
            _ => {
                self.block = b;
                self.acc = Some(small);
            }
        }
    }

    /// Finds the sector in what was accumulated since the last call (and starts afresh), in
    /// the coordinates of a `width` x `height` frame. `None` when no region is large enough.
    pub fn detect(&mut self, width: usize, height: usize) -> Option<Sector> {
        let acc = self.acc.take()?;
        let b = self.block;
        let (sw, sh) = (acc.width, acc.height);
        let mask: Vec<bool> = acc.data.iter().map(|&v| v > self.threshold).collect();
        let (labels, best) = largest_component(&mask, sw, sh)?;
        if (best.1 as f64) < self.min_area_fraction * (sw * sh) as f64 {
            return None;
        }
        let label = best.0;
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        let mut spans = vec![(usize::MAX, 0usize); sh];
        for y in 0..sh {
            for x in 0..sw {
                if labels[y * sw + x] == label {
                    x0 = x0.min(x);
                    x1 = x1.max(x);
                    y0 = y0.min(y);
                    y1 = y1.max(y);
                    spans[y].0 = spans[y].0.min(x);
                    spans[y].1 = spans[y].1.max(x + 1);
                }
            }
        }
        let rect = Rect {
            x: x0 * b,
            y: y0 * b,
            width: ((x1 + 1) * b).min(width) - x0 * b,
            height: ((y1 + 1) * b).min(height) - y0 * b,
        };
        let row_spans = (0..rect.height)
            .map(|ry| {
                let sy = (rect.y + ry) / b;
                match spans.get(sy) {
                    Some(&(a, e)) if a != usize::MAX => {
                        ((a * b).saturating_sub(rect.x), (e * b).min(width) - rect.x)
                    }
                    _ => (0, 0),
                }
            })
            .collect();
        Some(Sector {
            rect,
            row_spans: Some(row_spans),
        })
    }
}

/// Mean of each `b` x `b` block (edge blocks partial).
fn block_mean(img: &GrayImage, b: usize) -> GrayImage {
    let (sw, sh) = (img.width.div_ceil(b), img.height.div_ceil(b));
    let mut sums = vec![0u32; sw * sh];
    let mut counts = vec![0u32; sw * sh];
    for y in 0..img.height {
        let row = &img.data[y * img.width..(y + 1) * img.width];
        let base = (y / b) * sw;
        for (x, &v) in row.iter().enumerate() {
            sums[base + x / b] += v as u32;
            counts[base + x / b] += 1;
        }
    }
    let data = sums
        .iter()
        .zip(&counts)
        .map(|(&s, &c)| (s / c.max(1)) as u8)
        .collect();
    GrayImage {
        width: sw,
        height: sh,
        data,
    }
}

/// Labels 4-connected regions of `mask`; returns the labels and the (label, area) of the largest.
fn largest_component(mask: &[bool], w: usize, h: usize) -> Option<(Vec<u32>, (u32, usize))> {
    let mut labels = vec![0u32; w * h];
    let mut best: Option<(u32, usize)> = None;
    let mut next = 1u32;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let label = next;
        next += 1;
        let mut area = 0usize;
        labels[start] = label;
        stack.push(start);
        while let Some(i) = stack.pop() {
            area += 1;
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if mask[j] && labels[j] == 0 {
                    labels[j] = label;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if best.is_none_or(|(_, a)| area > a) {
            best = Some((label, area));
        }
    }
    best.map(|b| (labels, b))
}

/// Keeps the current sector unless a new detection moved it noticeably (intersection over union
/// below `min_iou`).
pub fn should_replace(current: &Rect, new: &Rect, min_iou: f64) -> bool {
    let ix0 = current.x.max(new.x);
    let iy0 = current.y.max(new.y);
    let ix1 = (current.x + current.width).min(new.x + new.width);
    let iy1 = (current.y + current.height).min(new.y + new.height);
    let inter = ix1.saturating_sub(ix0) * iy1.saturating_sub(iy0);
    let union = current.width * current.height + new.width * new.height - inter;
    union == 0 || (inter as f64 / union as f64) < min_iou
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 320x240 frame: a bright fan (triangle widening downwards) with a dark hole, a thin
    /// bright ECG line at the bottom and a bright text block in a corner.
    fn synthetic_frame() -> GrayImage {
        let (w, h) = (320, 240);
        let mut img = GrayImage::new(w, h);
        // A faint haze below the threshold everywhere (noise floor).
        img.data.fill(5);
        for y in 20..200 {
            let half = (y - 20) * 100 / 180;
            for x in (160 - half)..(160 + half) {
                img.data[y * w + x] = 120;
            }
        }
        // A blood pool inside the fan.
        for y in 100..130 {
            for x in 150..170 {
                img.data[y * w + x] = 2;
            }
        }
        // ECG trace: a bright line below the fan, separated by black.
        for x in 20..300 {
            img.data[225 * w + x] = 200;
        }
        // Text.
        for y in 5..15 {
            for x in 5..40 {
                img.data[y * w + x] = 255;
            }
        }
        img
    }

    #[test]
    fn detects_the_fan_and_leaves_ecg_and_text_out() {
        let img = synthetic_frame();
        let mut d = SectorDetector::new(10);
        d.accumulate(&img);
        let s = d.detect(img.width, img.height).unwrap();
        let r = s.rect;
        // The fan spans rows 20..200 and columns 60..260 (block size 2 here).
        assert!(r.y <= 22 && r.y >= 18, "{r:?}");
        assert!(r.y + r.height >= 198 && r.y + r.height <= 202, "{r:?}");
        assert!(r.x <= 62 && r.x + r.width >= 258, "{r:?}");
        assert!(r.y + r.height < 225, "ECG trace inside the crop: {r:?}");
        let crop = s.apply(&img, true);
        // The blood pool is inside the fan and is kept (not masked, still dark).
        assert_eq!(crop.get(160 - r.x, 115 - r.y), 2);
        // Inside the crop but outside the fan (near the apex, at the left edge) is blanked.
        assert_eq!(img.get(r.x, 30), 5);
        assert_eq!(crop.get(0, 30 - r.y), 0);
        // The fan itself survives the mask.
        assert_eq!(crop.get(160 - r.x, 190 - r.y), 120);
    }

    #[test]
    fn black_frame_has_no_sector() {
        let mut d = SectorDetector::new(10);
        d.accumulate(&GrayImage::new(64, 64));
        assert!(d.detect(64, 64).is_none());
        // Nothing accumulated: nothing detected.
        assert!(d.detect(64, 64).is_none());
    }

    #[test]
    fn replacement_needs_a_real_move() {
        let a = Rect {
            x: 10,
            y: 10,
            width: 100,
            height: 100,
        };
        let nudged = Rect { x: 12, ..a };
        let moved = Rect { x: 60, ..a };
        assert!(!should_replace(&a, &nudged, 0.9));
        assert!(should_replace(&a, &moved, 0.9));
    }
}
