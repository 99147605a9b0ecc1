//! Where the ultrasound image (the fan) sits in a frame: one estimator for the trainer, `quantize`
//! (offline, over a clip's frames) and the edge runtime (online, over the frames since its last
//! detection).
//!
//! Exported echo frames carry more than the image: an ECG trace, text, scale marks. The fan is
//! the largest connected region of pixels that are ever brighter than a low threshold; its convex
//! hull closes dark blood pools and dropouts inside it. The steps:
//! 1. per pixel, the temporal maximum of the frames seen ([`SectorEstimator::accumulate`]: one
//!    `max` per pixel and frame);
//! 2. the pixels above the threshold, reduced to a grid of `b × b` blocks (a block is on when any
//!    of its pixels is; `b = max(w, h) / 160`, at least 1) and the largest 8-connected region of
//!    that grid (text and the ECG trace are separate regions; below 5 % of the frame, nothing);
//! 3. in every pixel row of that region, its leftmost and rightmost bright pixel, and the convex
//!    hull of those pixels' corners;
//! 4. the pixels whose centres lie in the hull: per row one interval, the crop rectangle and the
//!    mask ([`Sector`]).
//!
//! Labelling on blocks keeps the connected-component pass at about 160 × 120 cells whatever the
//! capture size; the hull is then fitted to full-resolution pixels, so the crop is pixel-exact
//! (a block-aligned box would be up to `b − 1` pixels off, 12 px at 1080p) and the mask is the
//! smooth fan that training saw, not a staircase.

use crate::prepare::Sector;
use crate::{GrayImage, Rect};

/// Grey level above which a pixel counts as image, as training data was prepared.
pub const DEFAULT_THRESHOLD: u8 = 10;

/// Regions smaller than this fraction of the frame are never the sector.
pub const MIN_AREA_FRACTION: f64 = 0.05;

/// Accumulates frames and estimates the sector from them.
#[derive(Debug, Clone)]
pub struct SectorEstimator {
    /// Grey level above which a pixel counts as image.
    pub threshold: u8,
    /// Regions smaller than this fraction of the frame are never the sector.
    pub min_area_fraction: f64,
    peak: Option<GrayImage>,
}

impl Default for SectorEstimator {
    fn default() -> Self {
        Self::new(DEFAULT_THRESHOLD)
    }
}

impl SectorEstimator {
    pub fn new(threshold: u8) -> Self {
        Self {
            threshold,
            min_area_fraction: MIN_AREA_FRACTION,
            peak: None,
        }
    }

    /// Adds a grey frame to the temporal maximum (a frame of another size starts afresh).
    pub fn accumulate(&mut self, img: &GrayImage) {
        match &mut self.peak {
            Some(p) if p.width == img.width && p.height == img.height => {
                for (a, &v) in p.data.iter_mut().zip(&img.data) {
                    *a = (*a).max(v);
                }
            }
            _ => self.peak = Some(img.clone()),
        }
    }

    /// Adds an interleaved frame of `channels` values per pixel (the brightest channel counts).
    pub fn accumulate_interleaved(
        &mut self,
        data: &[u8],
        width: usize,
        height: usize,
        channels: usize,
    ) {
        if channels <= 1 {
            self.accumulate(&GrayImage {
                width,
                height,
                data: data.to_vec(),
            });
            return;
        }
        let grey = data
            .chunks_exact(channels)
            .map(|px| px.iter().copied().max().unwrap_or(0))
            .collect();
        self.accumulate(&GrayImage {
            width,
            height,
            data: grey,
        });
    }

    /// Whether any frame has been accumulated since the last [`SectorEstimator::reset`].
    pub fn has_frames(&self) -> bool {
        self.peak.is_some()
    }

    /// Forgets the accumulated frames.
    pub fn reset(&mut self) {
        self.peak = None;
    }

    /// The sector of what was accumulated; `None` when nothing bright enough and large enough
    /// was seen.
    pub fn estimate(&self) -> Option<Sector> {
        estimate(self.peak.as_ref()?, self.threshold, self.min_area_fraction)
    }

    /// [`SectorEstimator::estimate`], then [`SectorEstimator::reset`] (the online use).
    pub fn take(&mut self) -> Option<Sector> {
        let s = self.estimate();
        self.reset();
        s
    }
}

/// Side of the blocks the components are labelled on: at most ~160 along the longer side.
pub fn block_size(width: usize, height: usize) -> usize {
    (width.max(height) / 160).max(1)
}

fn estimate(peak: &GrayImage, threshold: u8, min_area_fraction: f64) -> Option<Sector> {
    let (w, h) = (peak.width, peak.height);
    if w == 0 || h == 0 {
        return None;
    }
    let b = block_size(w, h);
    let (gw, gh) = (w.div_ceil(b), h.div_ceil(b));
    // Block grid: on when any pixel of the block is above the threshold.
    let mut grid = vec![false; gw * gh];
    for y in 0..h {
        let row = &peak.data[y * w..(y + 1) * w];
        let g = &mut grid[(y / b) * gw..(y / b + 1) * gw];
        for (x, &v) in row.iter().enumerate() {
            if v > threshold {
                g[x / b] = true;
            }
        }
    }
    let (labels, label) = largest_component(&grid, gw, gh)?;
    // Per pixel row: the extreme bright pixels inside the component's blocks.
    let mut pts: Vec<(i64, i64)> = Vec::new();
    let mut bright = 0usize;
    for y in 0..h {
        let gy = y / b;
        let row = &peak.data[y * w..(y + 1) * w];
        let in_comp = |x: usize| labels[gy * gw + x / b] == label;
        let mut first = None;
        let mut last = None;
        for (x, &v) in row.iter().enumerate() {
            if v > threshold && in_comp(x) {
                first.get_or_insert(x);
                last = Some(x);
                bright += 1;
            }
        }
        if let (Some(a), Some(e)) = (first, last) {
            for (px, py) in [(a, y), (a, y + 1), (e + 1, y), (e + 1, y + 1)] {
                pts.push((px as i64, py as i64));
            }
        }
    }
    if (bright as f64) < min_area_fraction * (w * h) as f64 {
        return None;
    }
    let hull = convex_hull(pts);
    sector_of_hull(&hull, w, h)
}

/// The pixels whose centres lie in `hull` (inside or on it): one interval per row.
fn sector_of_hull(hull: &[(i64, i64)], w: usize, h: usize) -> Option<Sector> {
    if hull.len() < 3 {
        return None;
    }
    let rows: Vec<Option<(usize, usize)>> = (0..h).map(|y| row_interval(hull, y, w)).collect();
    let y0 = rows.iter().position(Option::is_some)?;
    let y1 = rows.iter().rposition(Option::is_some)? + 1;
    let x0 = rows.iter().flatten().map(|r| r.0).min()?;
    let x1 = rows.iter().flatten().map(|r| r.1).max()?;
    let rect = Rect {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    };
    let row_spans = rows[y0..y1]
        .iter()
        .map(|r| r.map_or((0, 0), |(a, e)| (a - x0, e - x0)))
        .collect();
    Some(Sector {
        rect,
        row_spans: Some(row_spans),
    })
}

/// The pixels `[a, e)` of row `y` whose centres satisfy every edge's half-plane of the
/// counter-clockwise `hull`: the same integer test as [`inside_hull`], solved for `x` per edge
/// (a lower or upper bound), so a row costs one pass over the hull, not one per pixel.
fn row_interval(hull: &[(i64, i64)], y: usize, w: usize) -> Option<(usize, usize)> {
    let py2 = 2 * y as i64 + 1;
    let (mut lo, mut hi) = (0i64, w as i64 - 1);
    for i in 0..hull.len() {
        let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
        let d = b.1 - a.1;
        // inside_hull's test: 2(bx − ax)(py2 − 2ay) − 2d(px2 − 2ax) ≥ 0, i.e. k − 2d·px2 ≥ 0.
        let k = 2 * (b.0 - a.0) * (py2 - 2 * a.1) + 4 * d * a.0;
        match d.signum() {
            0 if k < 0 => return None,
            0 => {}
            1 => {
                // px2 ≤ ⌊k / 2d⌋, px2 = 2x + 1
                let m = k.div_euclid(2 * d);
                hi = hi.min((m - 1).div_euclid(2));
            }
            _ => {
                // −2d·px2 ≥ −k with −2d > 0: px2 ≥ c = ⌈−k / −2d⌉ = −⌊k / −2d⌋, then
                // x ≥ ⌈(c − 1) / 2⌉
                let c = -(k.div_euclid(-2 * d));
                lo = lo.max(-((1 - c).div_euclid(2)));
            }
        }
    }
    (lo <= hi).then(|| (lo as usize, hi as usize + 1))
}

/// Labels 8-connected regions of `grid`; returns the labels (0 = off) and the largest's label.
fn largest_component(grid: &[bool], w: usize, h: usize) -> Option<(Vec<u32>, u32)> {
    let mut labels = vec![0u32; w * h];
    let mut best: Option<(u32, usize)> = None;
    let mut next = 1u32;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !grid[start] || labels[start] != 0 {
            continue;
        }
        let label = next;
        next += 1;
        let mut area = 0usize;
        labels[start] = label;
        stack.push(start);
        while let Some(i) = stack.pop() {
            area += 1;
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if grid[j] && labels[j] == 0 {
                        labels[j] = label;
                        stack.push(j);
                    }
                }
            }
        }
        if best.is_none_or(|(_, a)| area > a) {
            best = Some((label, area));
        }
    }
    best.map(|(l, _)| (labels, l))
}

fn cross(o: (i64, i64), a: (i64, i64), b: (i64, i64)) -> i64 {
    (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
}

/// Andrew's monotone chain; counter-clockwise in a y-down frame's mathematical orientation.
fn convex_hull(mut pts: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    pts.sort_unstable();
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let mut lower: Vec<(i64, i64)> = Vec::new();
    for &p in &pts {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], p) <= 0 {
            lower.pop();
        }
        lower.push(p);
    }
    let mut upper: Vec<(i64, i64)> = Vec::new();
    for &p in pts.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], p) <= 0 {
            upper.pop();
        }
        upper.push(p);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    lower
}

/// Point (in doubled coordinates) inside or on a convex hull given in single coordinates.
#[cfg(test)]
fn inside_hull(hull: &[(i64, i64)], px2: i64, py2: i64) -> bool {
    if hull.len() < 3 {
        return false;
    }
    for i in 0..hull.len() {
        let a = hull[i];
        let b = hull[(i + 1) % hull.len()];
        let c = (2 * (b.0 - a.0)) * (py2 - 2 * a.1) - (2 * (b.1 - a.1)) * (px2 - 2 * a.0);
        if c < 0 {
            return false;
        }
    }
    true
}

/// Keeps the current sector unless a new detection moved it noticeably (intersection over union
/// of the boxes below `min_iou`), so the crop does not jitter.
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
        img.data.fill(5); // a haze below the threshold (noise floor)
        for y in 20..200 {
            let half = (y - 20) * 100 / 180;
            for x in (160 - half)..(160 + half) {
                img.data[y * w + x] = 120;
            }
        }
        for y in 100..130 {
            for x in 150..170 {
                img.data[y * w + x] = 2; // a blood pool inside the fan
            }
        }
        for x in 20..300 {
            img.data[225 * w + x] = 200; // ECG trace below the fan
        }
        for y in 5..15 {
            for x in 5..40 {
                img.data[y * w + x] = 255; // text
            }
        }
        img
    }

    #[test]
    fn finds_the_fan_to_the_pixel_and_leaves_ecg_and_text_out() {
        let img = synthetic_frame();
        let mut d = SectorEstimator::new(10);
        d.accumulate(&img);
        let s = d.take().unwrap();
        let r = s.rect;
        // Rows 22..200 have bright pixels (rows 20 and 21 have half-width 0); the widest row
        // (199) spans 61..259. Pixel-exact, not block-aligned.
        assert_eq!((r.y, r.y + r.height), (22, 200), "{r:?}");
        assert_eq!((r.x, r.x + r.width), (61, 259), "{r:?}");
        let crop = s.apply(&img, true);
        assert_eq!(crop.get(160 - r.x, 115 - r.y), 2, "the blood pool is kept");
        assert_eq!(crop.get(0, 30 - r.y), 0, "outside the fan is blanked");
        assert_eq!(crop.get(160 - r.x, 190 - r.y), 120, "the fan survives");
        assert!(!d.has_frames(), "take() starts afresh");
    }

    #[test]
    fn black_or_tiny_regions_are_no_sector() {
        let mut d = SectorEstimator::new(10);
        d.accumulate(&GrayImage::new(64, 64));
        assert!(d.take().is_none());
        assert!(d.take().is_none(), "nothing accumulated");
        let mut dot = GrayImage::new(64, 64);
        dot.data[64 * 10 + 10] = 200;
        d.accumulate(&dot);
        assert!(d.estimate().is_none(), "one pixel is not 5 % of the frame");
    }

    #[test]
    fn the_temporal_maximum_joins_frames() {
        // Left half bright in one frame, right half in the other: one rectangle over both.
        let mut a = GrayImage::new(40, 20);
        let mut b = GrayImage::new(40, 20);
        for y in 0..20 {
            for x in 0..20 {
                a.data[y * 40 + x] = 90;
                b.data[y * 40 + 20 + x] = 90;
            }
        }
        let mut d = SectorEstimator::default();
        d.accumulate(&a);
        d.accumulate(&b);
        let s = d.estimate().unwrap();
        assert_eq!(s.rect, Rect::full(40, 20));
    }

    #[test]
    fn row_intervals_are_the_pixels_inside_the_hull() {
        // Hulls of pseudo-random point sets against the per-pixel test.
        let mut state = 12345u64;
        let mut rnd = |n: i64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % n as u64) as i64
        };
        for _ in 0..200 {
            let (w, h) = (1 + rnd(40) as usize, 1 + rnd(30) as usize);
            let pts = (0..3 + rnd(8))
                .map(|_| (rnd(w as i64 + 1), rnd(h as i64 + 1)))
                .collect();
            let hull = convex_hull(pts);
            if hull.len() < 3 {
                continue;
            }
            for y in 0..h {
                let want: Vec<usize> = (0..w)
                    .filter(|&x| inside_hull(&hull, 2 * x as i64 + 1, 2 * y as i64 + 1))
                    .collect();
                let got = row_interval(&hull, y, w).map_or(vec![], |(a, e)| (a..e).collect());
                assert_eq!(got, want, "hull {hull:?} row {y} width {w}");
            }
        }
    }

    #[test]
    fn replacement_needs_a_real_move() {
        let a = Rect {
            x: 10,
            y: 10,
            width: 100,
            height: 100,
        };
        assert!(!should_replace(&a, &Rect { x: 12, ..a }, 0.9));
        assert!(should_replace(&a, &Rect { x: 60, ..a }, 0.9));
    }
}
