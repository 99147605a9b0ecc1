//! The left ventricle from a segmentation, as a sonographer measures it: the cavity's area and
//! long-axis length in each frame, its single-plane area–length volume `8 A² / (3 π L)`, the
//! beats in the volume curve (end-diastole at the peaks, end-systole at the trough between), and
//! EF per beat `100 (EDV − ESV) / EDV`.
//!
//! Everything here is plain arithmetic on per-pixel probabilities, so the trainer's evaluation,
//! `quantize report` and the cart compute EF with the same code. Pixel units cancel in EF, so no
//! physical scale is needed.
//!
//! On the phantom's true masks (112 × 112, apical views, 4 s at 30 fps) EF from these beats is
//! within about 1 EF point of the truth; within one 8-frame clip, where the extremes are often
//! missed, about 3 points (`BENCHMARKS.md`).

use serde::{Deserialize, Serialize};

/// How the LV decoder's per-token output maps to pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLayout {
    /// Frames of the clip.
    pub frames: usize,
    /// Square crop size in pixels.
    pub resolution: usize,
    /// Frames per token.
    pub tubelet: usize,
    /// Pixels per token side.
    pub patch: usize,
}

impl TokenLayout {
    /// Tokens of one clip.
    pub fn tokens(&self) -> usize {
        (self.frames / self.tubelet) * (self.resolution / self.patch).pow(2)
    }

    /// Values per token (`tubelet · patch²`).
    pub fn width(&self) -> usize {
        self.tubelet * self.patch * self.patch
    }

    /// Per-token values `[tokens, tubelet · p²]` (token order time, row, column; each token's
    /// pixels frame, row, column) laid out as per-frame images `[frames][res · res]`. Tokens
    /// beyond the clip are ignored; missing ones leave zeros.
    pub fn to_frames(&self, tok: &[f32]) -> Vec<Vec<f32>> {
        let (r, p, tub) = (self.resolution, self.patch, self.tubelet);
        let g = r / p;
        let mut out = vec![vec![0f32; r * r]; self.frames];
        for (n, chunk) in tok.chunks(self.width()).enumerate() {
            let (tt, gy, gx) = (n / (g * g), (n / g) % g, n % g);
            for dt in 0..tub {
                let Some(frame) = out.get_mut(tt * tub + dt) else {
                    continue;
                };
                for py in 0..p {
                    let src = &chunk[(dt * p + py) * p..(dt * p + py + 1) * p];
                    let row = (gy * p + py) * r + gx * p;
                    frame[row..row + p].copy_from_slice(src);
                }
            }
        }
        out
    }

    /// The inverse of [`TokenLayout::to_frames`]: per-frame images to per-token values.
    pub fn to_tokens(&self, frames: &[f32]) -> Vec<f32> {
        let (r, p, tub) = (self.resolution, self.patch, self.tubelet);
        let g = r / p;
        let mut out = Vec::with_capacity(frames.len());
        for tt in 0..self.frames / tub {
            for gy in 0..g {
                for gx in 0..g {
                    for dt in 0..tub {
                        let f = tt * tub + dt;
                        for py in 0..p {
                            let row = (f * r + gy * p + py) * r + gx * p;
                            out.extend_from_slice(&frames[row..row + p]);
                        }
                    }
                }
            }
        }
        out
    }
}

/// The cavity in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrameLv {
    /// Cavity area (sum of probabilities), pixels.
    pub area: f64,
    /// Long-axis length: extent of the pixels above 0.5 along the cavity's principal axis, pixels.
    pub length: f64,
    /// Area–length volume `8 A² / (3 π L)` in pixel³ (0 when there is no cavity).
    pub volume: f64,
}

/// Measures the cavity in a probability image `width · height` (row-major, values in [0, 1]).
pub fn measure(prob: &[f32], width: usize) -> FrameLv {
    let (mut n, mut sx, mut sy, mut area) = (0f64, 0f64, 0f64, 0f64);
    for (i, &v) in prob.iter().enumerate() {
        area += v.clamp(0.0, 1.0) as f64;
        if v > 0.5 {
            n += 1.0;
            sx += (i % width) as f64;
            sy += (i / width) as f64;
        }
    }
    if n < 3.0 {
        return FrameLv {
            area,
            length: 0.0,
            volume: 0.0,
        };
    }
    let (cx, cy) = (sx / n, sy / n);
    let (mut xx, mut yy, mut xy) = (0f64, 0f64, 0f64);
    for (i, &v) in prob.iter().enumerate() {
        if v > 0.5 {
            let (dx, dy) = ((i % width) as f64 - cx, (i / width) as f64 - cy);
            xx += dx * dx;
            yy += dy * dy;
            xy += dx * dy;
        }
    }
    let th = 0.5 * (2.0 * xy).atan2(xx - yy);
    let (c, s) = (th.cos(), th.sin());
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for (i, &v) in prob.iter().enumerate() {
        if v > 0.5 {
            let q = ((i % width) as f64 - cx) * c + ((i / width) as f64 - cy) * s;
            lo = lo.min(q);
            hi = hi.max(q);
        }
    }
    let length = hi - lo + 1.0;
    FrameLv {
        area,
        length,
        volume: 8.0 * area * area / (3.0 * std::f64::consts::PI * length),
    }
}

/// One beat of the volume curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// Time of end-diastole (the peak that opens the beat), seconds.
    pub ed_s: f64,
    /// Time of end-systole (the trough before the next peak), seconds.
    pub es_s: f64,
    /// `100 (EDV − ESV) / EDV`.
    pub ef_percent: f64,
}

/// Shortest beat accepted: 130 bpm, the fastest rate the phantom and the clinic's resting
/// echo cover, with a margin.
pub const MIN_BEAT_S: f64 = 0.35;
/// Longest beat accepted (40 bpm).
pub const MAX_BEAT_S: f64 = 1.5;

/// The beats of a volume curve `(time s, volume)` sorted by time: end-diastoles are points
/// that are the largest volume within ±`MIN_BEAT_S`/2 of themselves (so noise between two
/// peaks does not open a beat); a beat runs from one to the next when they are
/// `MIN_BEAT_S..=MAX_BEAT_S` apart, and its end-systole is the smallest volume in between.
pub fn beats(series: &[(f64, f64)]) -> Vec<Beat> {
    let half = MIN_BEAT_S / 2.0;
    let peaks: Vec<usize> = (0..series.len())
        .filter(|&i| {
            let (t, v) = series[i];
            v > 0.0
                && series
                    .iter()
                    .filter(|(u, _)| (u - t).abs() <= half)
                    .all(|&(u, w)| w < v || (w == v && u >= t))
                // a peak must have samples on both sides within the window, else it may be
                // the rising or falling edge cut off by the start or end of the series
                && series.first().is_some_and(|f| f.0 <= t - half)
                && series.last().is_some_and(|l| l.0 >= t + half)
        })
        .collect();
    let mut out = Vec::new();
    for w in peaks.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (ta, va) = series[a];
        let dt = series[b].0 - ta;
        if !(MIN_BEAT_S..=MAX_BEAT_S).contains(&dt) {
            continue;
        }
        let Some(&(es_s, esv)) = series[a..=b].iter().min_by(|x, y| x.1.total_cmp(&y.1)) else {
            continue;
        };
        out.push(Beat {
            ed_s: ta,
            es_s,
            ef_percent: 100.0 * (1.0 - esv / va),
        });
    }
    out
}

/// EF of a stretch of the volume curve too short for a whole beat: `100 (1 − min / max)`.
pub fn ef_of_extremes(volumes: &[f64]) -> Option<f64> {
    let max = volumes.iter().copied().fold(f64::MIN, f64::max);
    let min = volumes.iter().copied().fold(f64::MAX, f64::min);
    (max > 0.0 && min >= 0.0).then(|| 100.0 * (1.0 - min / max))
}

/// The median of some values (`None` when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

/// EF of a volume curve: the median over its beats, or from its extremes when it holds no whole
/// beat. Returns the estimate and the beats behind it.
pub fn ef_of_series(series: &[(f64, f64)]) -> Option<(f64, Vec<Beat>)> {
    let b = beats(series);
    if b.is_empty() {
        let v: Vec<f64> = series.iter().map(|p| p.1).collect();
        return ef_of_extremes(&v).map(|e| (e, b));
    }
    let efs: Vec<f64> = b.iter().map(|x| x.ef_percent).collect();
    median(&efs).map(|e| (e, b))
}

/// The outline of the cavity (pixels above 0.5 with a neighbour at or below it), as
/// `(x, y)` pixel coordinates, for drawing the traced LV over the echo.
pub fn outline(prob: &[f32], width: usize) -> Vec<(u16, u16)> {
    let height = prob.len() / width.max(1);
    let inside = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < width
            && (y as usize) < height
            && prob[y as usize * width + x as usize] > 0.5
    };
    let mut out = Vec::new();
    for y in 0..height as isize {
        for x in 0..width as isize {
            if inside(x, y)
                && !(inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1))
            {
                out.push((x as u16, y as u16));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ellipse(w: usize, cx: f64, cy: f64, a: f64, b: f64) -> Vec<f32> {
        (0..w * w)
            .map(|i| {
                let (x, y) = ((i % w) as f64 - cx, (i / w) as f64 - cy);
                if (x / a).powi(2) + (y / b).powi(2) <= 1.0 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn layout_round_trips() {
        let l = TokenLayout {
            frames: 4,
            resolution: 8,
            tubelet: 2,
            patch: 4,
        };
        let img: Vec<f32> = (0..4 * 64).map(|i| i as f32).collect();
        let tok = l.to_tokens(&img);
        assert_eq!(tok.len(), l.tokens() * l.width());
        let back: Vec<f32> = l.to_frames(&tok).concat();
        assert_eq!(back, img);
    }

    #[test]
    fn measures_an_ellipse_along_its_long_axis() {
        // long axis vertical: 2 · 20 = 40 px long, area π · 20 · 10
        let m = measure(&ellipse(64, 32.0, 32.0, 10.0, 20.0), 64);
        assert!((m.length - 41.0).abs() <= 1.0, "{m:?}");
        assert!(
            (m.area - std::f64::consts::PI * 200.0).abs() < 15.0,
            "{m:?}"
        );
        let empty = measure(&[0.0; 64], 8);
        assert_eq!(empty.volume, 0.0);
    }

    #[test]
    fn finds_beats_and_their_ef() {
        // 75 bpm, EDV 100, ESV 40 (EF 60), sampled at 7.5 Hz for 4 s, with a little noise
        let rr = 0.8;
        let series: Vec<(f64, f64)> = (0..30)
            .map(|k| {
                let t = k as f64 / 7.5;
                let ph = (t / rr).fract();
                let v = 70.0 + 30.0 * (2.0 * std::f64::consts::PI * ph).cos();
                (t, v + if k % 3 == 0 { 0.5 } else { -0.5 })
            })
            .collect();
        let b = beats(&series);
        assert!(b.len() >= 3, "{b:?}");
        for beat in &b {
            assert!((beat.ef_percent - 60.0).abs() < 6.0, "{beat:?}");
            assert!(beat.es_s > beat.ed_s);
        }
        let (ef, _) = ef_of_series(&series).unwrap();
        assert!((ef - 60.0).abs() < 5.0, "{ef}");
        // too short for a beat: the extremes
        let (ef, b) = ef_of_series(&series[..3]).unwrap();
        assert!(b.is_empty() && ef > 0.0);
        assert!(ef_of_series(&[]).is_none());
    }

    #[test]
    fn beats_of_the_phantoms_true_cavity_give_its_ef() {
        use echojepa_phantom::{Label, Phantom, PhantomParams, View};
        // 4 s at 15 fps of two apical patients, labels at the model's 112 px crop
        for (seed, view) in [(3u64, View::A4c), (8, View::A2c)] {
            let ph = Phantom::new(PhantomParams::sample(seed, view)).unwrap();
            let truth = ph.ground_truth().ef_percent;
            let (w, h) = (149usize, 112usize);
            let series: Vec<(f64, f64)> = (0..60)
                .map(|k| {
                    let t = k as f64 / 15.0;
                    let l = ph.render_labels(t, w, h).unwrap();
                    let crop: Vec<f32> = (0..112 * 112)
                        .map(|i| {
                            let (x, y) = (i % 112 + (w - 112) / 2, i / 112);
                            (l[y * w + x] == Label::LvCavity as u8) as u8 as f32
                        })
                        .collect();
                    (t, measure(&crop, 112).volume)
                })
                .collect();
            let (ef, beats) = ef_of_series(&series).unwrap();
            assert!(!beats.is_empty(), "seed {seed}: no beat in 4 s");
            assert!(
                (ef - truth).abs() < 4.0,
                "seed {seed} {view:?}: EF from the true cavity {ef:.1}, truth {truth:.1}"
            );
        }
    }

    #[test]
    fn outline_is_the_rim() {
        let img = ellipse(32, 16.0, 16.0, 6.0, 9.0);
        let o = outline(&img, 32);
        assert!(!o.is_empty());
        assert!(!o.contains(&(16, 16)));
        assert!(o.len() < img.iter().filter(|&&v| v > 0.5).count());
    }
}
