//! What real echo exports burn into the pixels outside the sector: a sweeping ECG trace, a few
//! lines of text and depth markers. They are drawn only outside the fan, so sector masking can
//! remove them, and they never spell out a label (no view name, no EF).

use super::Acquisition;
use super::heart::{self, HeartParams};
use super::raster::SectorGeometry;

/// 5×7 glyphs, one `u8` per row, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        _ => [0; 7],
    }
}

struct Canvas<'a> {
    out: &'a mut [u8],
    geo: &'a SectorGeometry,
}

impl Canvas<'_> {
    /// Sets a pixel if it is inside the image and outside the fan.
    fn put(&mut self, x: i64, y: i64, v: u8) {
        if x < 0 || y < 0 || x >= self.geo.width as i64 || y >= self.geo.height as i64 {
            return;
        }
        let (x, y) = (x as usize, y as usize);
        if self.geo.inside(x, y) {
            return;
        }
        let i = y * self.geo.width + x;
        self.out[i] = self.out[i].max(v);
    }

    fn text(&mut self, x: i64, y: i64, scale: i64, s: &str, v: u8) {
        for (k, c) in s.chars().enumerate() {
            let g = glyph(c);
            let gx = x + k as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for sy in 0..scale {
                            for sx in 0..scale {
                                self.put(gx + col * scale + sx, y + row as i64 * scale + sy, v);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Width in pixels of `s` at `scale`.
fn text_width(s: &str, scale: i64) -> i64 {
    (s.chars().count() as i64 * 6 - 1).max(0) * scale
}

/// Draws text, depth markers and the ECG for time `t` onto a rendered frame.
pub(crate) fn draw(
    out: &mut [u8],
    geo: &SectorGeometry,
    heart: &HeartParams,
    acq: &Acquisition,
    t: f64,
) {
    let (w, h) = (geo.width as i64, geo.height as i64);
    let scale = (h / 224).max(1);
    let mut cv = Canvas { out, geo };
    let margin = 2 * scale;
    let line = 9 * scale;
    let left = ["PHANTOM", "SYNTH"];
    for (i, s) in left.iter().enumerate() {
        cv.text(margin, margin + i as i64 * line, scale, s, 225);
    }
    let right = [
        format!("HR {:.0}", heart.heart_rate_bpm),
        format!("{:.0}CM", acq.depth_cm),
    ];
    for (i, s) in right.iter().enumerate() {
        cv.text(
            w - margin - text_width(s, scale),
            margin + i as i64 * line,
            scale,
            s,
            225,
        );
    }

    // depth markers along the right edge of the fan, every cm (bigger every 5 cm)
    let half = acq.sector_angle_deg.to_radians() * 0.5;
    let (s, c) = super::dmath::sin_cos(half);
    let cm = 1.0 / geo.cm_per_px as f64;
    let mut k = 1;
    while (k as f64) < acq.depth_cm {
        let r = k as f64 * cm;
        let x = geo.apex_x as f64 + r * s + (2 * scale) as f64 * c;
        let y = geo.apex_y as f64 + r * c - (2 * scale) as f64 * s;
        let size = if k % 5 == 0 { 2 * scale } else { scale };
        for dy in 0..size {
            for dx in 0..size {
                cv.put(x as i64 + dx, y as i64 + dy, 200);
            }
        }
        k += 1;
    }

    // ECG: a 3 s sweep across the bottom strip with an erase gap after the cursor
    let sweep = 3.0;
    let x0 = (0.04 * w as f64) as i64;
    let x1 = (0.96 * w as f64) as i64;
    let span = (x1 - x0).max(1) as f64;
    let base = 0.955 * h as f64;
    let amp = 0.04 * h as f64;
    let cursor = {
        let p = t / sweep;
        p - p.floor()
    };
    let mut prev: Option<i64> = None;
    for x in x0..x1 {
        let f = (x - x0) as f64 / span;
        let ago = if f <= cursor {
            cursor - f
        } else {
            cursor - f + 1.0
        };
        if ago > 0.97 {
            prev = None;
            continue; // erase gap just ahead of the cursor
        }
        let tau = t - ago * sweep;
        let beats = tau * heart.heart_rate_bpm / 60.0 + heart.start_phase;
        let phase = beats - beats.floor();
        let y = (base - amp * heart::ecg(heart, phase)).round() as i64;
        let (a, b) = match prev {
            Some(py) => (py.min(y), py.max(y)),
            None => (y, y),
        };
        for yy in a..=b {
            for sx in 0..scale {
                cv.put(x, yy + sx, 200);
            }
        }
        prev = Some(y);
    }
}
