//! Rasterising a scene into an ultrasound-looking sector image.
//!
//! Per pixel inside the fan: echogenicity from the scene (soft-edged primitives, painted back
//! to front) × spatially correlated multiplicative speckle (a Rayleigh field that moves with the
//! tissue) × depth gain (attenuation, time-gain compensation, overall gain) × dropout, plus an
//! electronic-noise floor, then log compression to 8 bits. Primitives are culled per 16×16 tile,
//! which keeps a 112×112 frame well under a millisecond.

use super::dmath::{self, Rng};
use super::scene::{Prim, Scene};
use super::{Acquisition, Label};

/// Speckle texture side (cells); a power of two so wrapping is a mask.
const TEX: usize = 256;
const TEX_MASK: i32 = (TEX - 1) as i32;
/// Speckle cell size in cm.
const CELL_CM: f32 = 0.06;
/// Coarse heterogeneity texture side and cell size.
const COARSE: usize = 32;
const COARSE_MASK: i32 = (COARSE - 1) as i32;
const COARSE_CELL_CM: f32 = 0.9;
const TILE: usize = 16;
/// Largest border displacement (cm) of the rough cavity borders; tile culling allows for it.
pub(crate) const MAX_JITTER: f32 = 0.12;

/// The per-phantom random fields: speckle and tissue heterogeneity.
pub(crate) struct Textures {
    speckle: Vec<f32>,
    coarse: Vec<f32>,
}

impl Textures {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            speckle: speckle_field(seed),
            coarse: coarse_field(seed),
        }
    }
}

/// Rayleigh-distributed speckle with mean 1: the magnitude of a complex Gaussian field that is
/// correlated over ~2 cells axially and ~6 laterally (the beam is wider than the pulse is long).
fn speckle_field(seed: u64) -> Vec<f32> {
    let mut rng = Rng::stream(seed, 0x5350_4543);
    let n = TEX * TEX;
    let mut re = vec![0f32; n];
    let mut im = vec![0f32; n];
    for i in 0..n {
        let v = rng.next_u64();
        re[i] = ((v & 0xffff_ffff) as f32 / 4_294_967_296.0) * 2.0 - 1.0;
        im[i] = ((v >> 32) as f32 / 4_294_967_296.0) * 2.0 - 1.0;
    }
    let lateral = [1.0f32, 4.0, 6.0, 4.0, 1.0];
    let axial = [1.0f32, 2.0, 1.0];
    let re = blur(&blur(&blur_y(&re, &axial), &lateral), &lateral);
    let im = blur(&blur(&blur_y(&im, &axial), &lateral), &lateral);
    let mut mag: Vec<f32> = re
        .iter()
        .zip(&im)
        .map(|(r, i)| (r * r + i * i).sqrt())
        .collect();
    let mean = mag.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let inv = (1.0 / mean) as f32;
    for v in &mut mag {
        *v *= inv;
    }
    mag
}

/// Smooth positive field (0.55..1.45) for tissue heterogeneity.
fn coarse_field(seed: u64) -> Vec<f32> {
    let mut rng = Rng::stream(seed, 0x434f_4152);
    let mut f: Vec<f32> = (0..COARSE * COARSE)
        .map(|_| rng.uniform() as f32 - 0.5)
        .collect();
    for _ in 0..2 {
        f = blur_wrap(&f, COARSE);
    }
    let max = f.iter().fold(0f32, |m, &v| m.max(v.abs())).max(1e-6);
    f.iter().map(|&v| 1.0 + 0.45 * v / max).collect()
}

/// Horizontal periodic blur of a TEX×TEX field.
fn blur(src: &[f32], k: &[f32]) -> Vec<f32> {
    let half = (k.len() / 2) as i32;
    let norm: f32 = k.iter().sum();
    let mut out = vec![0f32; src.len()];
    for y in 0..TEX {
        for x in 0..TEX {
            let mut acc = 0.0;
            for (j, &w) in k.iter().enumerate() {
                let xx = ((x as i32 + j as i32 - half) & TEX_MASK) as usize;
                acc += w * src[y * TEX + xx];
            }
            out[y * TEX + x] = acc / norm;
        }
    }
    out
}

/// Vertical periodic blur of a TEX×TEX field.
fn blur_y(src: &[f32], k: &[f32]) -> Vec<f32> {
    let half = (k.len() / 2) as i32;
    let norm: f32 = k.iter().sum();
    let mut out = vec![0f32; src.len()];
    for y in 0..TEX {
        for (j, &w) in k.iter().enumerate() {
            let yy = ((y as i32 + j as i32 - half) & TEX_MASK) as usize;
            for x in 0..TEX {
                out[y * TEX + x] += w * src[yy * TEX + x] / norm;
            }
        }
    }
    out
}

/// 3×3 box blur of an n×n periodic field.
fn blur_wrap(src: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            let mut acc = 0.0;
            for dy in [n - 1, 0, 1] {
                for dx in [n - 1, 0, 1] {
                    acc += src[((y + dy) % n) * n + (x + dx) % n];
                }
            }
            out[y * n + x] = acc / 9.0;
        }
    }
    out
}

#[inline]
fn sample_speckle(tex: &[f32], x: f32, y: f32) -> f32 {
    let fx = x * (1.0 / CELL_CM);
    let fy = y * (1.0 / CELL_CM);
    let x0 = fx.floor();
    let y0 = fy.floor();
    let tx = fx - x0;
    let ty = fy - y0;
    let xi = x0 as i32;
    let yi = y0 as i32;
    let i00 = ((yi & TEX_MASK) as usize) * TEX + (xi & TEX_MASK) as usize;
    let i01 = ((yi & TEX_MASK) as usize) * TEX + ((xi + 1) & TEX_MASK) as usize;
    let i10 = (((yi + 1) & TEX_MASK) as usize) * TEX + (xi & TEX_MASK) as usize;
    let i11 = (((yi + 1) & TEX_MASK) as usize) * TEX + ((xi + 1) & TEX_MASK) as usize;
    let top = tex[i00] + (tex[i01] - tex[i00]) * tx;
    let bot = tex[i10] + (tex[i11] - tex[i10]) * tx;
    top + (bot - top) * ty
}

#[inline]
fn sample_coarse(tex: &[f32], x: f32, y: f32) -> f32 {
    let fx = x * (1.0 / COARSE_CELL_CM);
    let fy = y * (1.0 / COARSE_CELL_CM);
    let x0 = fx.floor();
    let y0 = fy.floor();
    let tx = fx - x0;
    let ty = fy - y0;
    let xi = x0 as i32;
    let yi = y0 as i32;
    let at = |xx: i32, yy: i32| {
        tex[((yy & COARSE_MASK) as usize) * COARSE + (xx & COARSE_MASK) as usize]
    };
    let top = at(xi, yi) + (at(xi + 1, yi) - at(xi, yi)) * tx;
    let bot = at(xi, yi + 1) + (at(xi + 1, yi + 1) - at(xi, yi + 1)) * tx;
    top + (bot - top) * ty
}

/// Where the fan sits in an image of a given size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SectorGeometry {
    pub width: usize,
    pub height: usize,
    pub apex_x: f32,
    pub apex_y: f32,
    pub radius: f32,
    pub tan_half: f32,
    pub cm_per_px: f32,
}

impl SectorGeometry {
    pub(crate) fn new(acq: &Acquisition, width: usize, height: usize) -> Self {
        let half = acq.sector_angle_deg.to_radians() * 0.5;
        let (s, c) = dmath::sin_cos(half);
        let (w, h) = (width as f64, height as f64);
        let apex_y = 0.05 * h;
        let radius = (0.80 * h).min(0.49 * w / s);
        Self {
            width,
            height,
            apex_x: (0.5 * w) as f32,
            apex_y: apex_y as f32,
            radius: radius as f32,
            tan_half: (s / c) as f32,
            cm_per_px: (acq.depth_cm / radius) as f32,
        }
    }

    /// The half-open range of columns of row `y` that lie inside the fan (maybe empty).
    pub(crate) fn row_span(&self, y: usize) -> (usize, usize) {
        let dy = y as f32 + 0.5 - self.apex_y;
        if dy <= 0.0 || dy >= self.radius {
            return (0, 0);
        }
        let half = (dy * self.tan_half).min((self.radius * self.radius - dy * dy).sqrt());
        let x0 = (self.apex_x - half - 0.5).ceil().max(0.0) as usize;
        let x1 = ((self.apex_x + half - 0.5).floor() + 1.0).clamp(0.0, self.width as f32) as usize;
        (x0.min(x1), x1)
    }

    pub(crate) fn inside(&self, x: usize, y: usize) -> bool {
        let (a, b) = self.row_span(y);
        x >= a && x < b
    }
}

/// Maps a pixel offset from the apex (in pixels) to heart-frame cm: `p = M d + t`.
#[derive(Debug, Clone, Copy)]
struct Affine {
    m: [f32; 4],
    t: [f32; 2],
}

impl Affine {
    fn new(geo: &SectorGeometry, acq: &Acquisition) -> Self {
        // sector frame (cm) -> heart frame: rotate by -probe angle, then undo the lateral shift
        let (s, c) = dmath::sin_cos(-acq.probe_angle_deg.to_radians());
        let k = geo.cm_per_px as f64;
        Self {
            m: [
                (c * k) as f32,
                (-s * k) as f32,
                (s * k) as f32,
                (c * k) as f32,
            ],
            t: [-acq.lateral_shift_cm as f32, 0.0],
        }
    }

    /// Inverse: heart-frame cm -> pixel offset from the apex.
    fn inverse_point(&self, x: f32, y: f32) -> (f32, f32) {
        let (x, y) = (x - self.t[0], y - self.t[1]);
        let det = self.m[0] * self.m[3] - self.m[1] * self.m[2];
        (
            (self.m[3] * x - self.m[1] * y) / det,
            (-self.m[2] * x + self.m[0] * y) / det,
        )
    }
}

/// Depth gain (linear) for each integer pixel radius, from attenuation, TGC and overall gain.
fn depth_gain_lut(acq: &Acquisition, geo: &SectorGeometry) -> Vec<f32> {
    let n = geo.radius.ceil() as usize + 2;
    (0..n)
        .map(|r| {
            let depth = r as f64 * geo.cm_per_px as f64;
            let frac = (depth / acq.depth_cm).clamp(0.0, 1.0) * (acq.tgc_db.len() - 1) as f64;
            let i = (frac.floor() as usize).min(acq.tgc_db.len() - 2);
            let f = frac - i as f64;
            let tgc = acq.tgc_db[i] * (1.0 - f) + acq.tgc_db[i + 1] * f;
            let db = acq.gain_db + tgc - acq.attenuation_db_per_cm * depth;
            dmath::db_to_amp(db) as f32
        })
        .collect()
}

/// Near-field clutter (reverberation haze) added to the echogenicity, per pixel radius.
fn clutter_lut(acq: &Acquisition, geo: &SectorGeometry) -> Vec<f32> {
    let n = geo.radius.ceil() as usize + 2;
    (0..n)
        .map(|r| (acq.clutter * dmath::exp(-(r as f64 * geo.cm_per_px as f64) / 1.8)) as f32)
        .collect()
}

const DROP_BINS: usize = 128;

/// Dropout factor per lateral bin (tan of the beam angle mapped to `0..DROP_BINS`).
fn dropout_lut(acq: &Acquisition, geo: &SectorGeometry) -> Option<Vec<f32>> {
    if acq.dropouts.iter().all(|d| d.strength <= 0.0) {
        return None;
    }
    let half = acq.sector_angle_deg.to_radians() * 0.5;
    Some(
        (0..DROP_BINS)
            .map(|i| {
                let tan = ((i as f64 + 0.5) / DROP_BINS as f64 * 2.0 - 1.0) * geo.tan_half as f64;
                // angle from tan without libm: atan via a few Newton steps on sin/cos
                let ang = atan_det(tan).clamp(-half, half);
                let mut f = 1.0;
                for d in &acq.dropouts {
                    if d.strength <= 0.0 {
                        continue;
                    }
                    let z = (ang - d.angle_deg.to_radians())
                        / (0.5 * d.width_deg.to_radians()).max(1e-3);
                    if z.abs() < 3.0 {
                        f *= 1.0 - d.strength * dmath::exp(-0.5 * z * z * 2.0);
                    }
                }
                f as f32
            })
            .collect(),
    )
}

/// `atan` from the deterministic `sin_cos` by Newton's method (|x| < 4 here).
fn atan_det(x: f64) -> f64 {
    let mut a = x / (1.0 + 0.28 * x * x); // rough start
    for _ in 0..6 {
        let (s, c) = dmath::sin_cos(a);
        // f(a) = sin a - x cos a; f'(a) = cos a + x sin a
        a -= (s - x * c) / (c + x * s);
    }
    a
}

/// Per-tile lists of primitive indices whose bounds reach into the tile.
struct Tiles {
    cols: usize,
    start: Vec<u32>,
    items: Vec<u16>,
}

impl Tiles {
    fn new(prims: &[Prim], geo: &SectorGeometry, aff: &Affine) -> Self {
        let cols = geo.width.div_ceil(TILE);
        let rows = geo.height.div_ceil(TILE);
        let mut lists: Vec<Vec<u16>> = vec![Vec::new(); cols * rows];
        for (i, p) in prims.iter().enumerate() {
            let [x0, y0, x1, y1] = p.bounds();
            let mut lo = (f32::INFINITY, f32::INFINITY);
            let mut hi = (f32::NEG_INFINITY, f32::NEG_INFINITY);
            for (cx, cy) in [(x0, y0), (x1, y0), (x0, y1), (x1, y1)] {
                let (dx, dy) = aff.inverse_point(cx, cy);
                let (px, py) = (dx + geo.apex_x, dy + geo.apex_y);
                lo = (lo.0.min(px), lo.1.min(py));
                hi = (hi.0.max(px), hi.1.max(py));
            }
            if hi.0 < 0.0 || hi.1 < 0.0 || lo.0 >= geo.width as f32 || lo.1 >= geo.height as f32 {
                continue;
            }
            let tx0 = (lo.0.max(0.0) as usize / TILE).min(cols - 1);
            let tx1 = (hi.0.min(geo.width as f32 - 1.0) as usize / TILE).min(cols - 1);
            let ty0 = (lo.1.max(0.0) as usize / TILE).min(rows - 1);
            let ty1 = (hi.1.min(geo.height as f32 - 1.0) as usize / TILE).min(rows - 1);
            for ty in ty0..=ty1 {
                for tx in tx0..=tx1 {
                    lists[ty * cols + tx].push(i as u16);
                }
            }
        }
        let mut start = Vec::with_capacity(lists.len() + 1);
        let mut items = Vec::new();
        start.push(0);
        for l in lists {
            items.extend_from_slice(&l);
            start.push(items.len() as u32);
        }
        Self { cols, start, items }
    }

    #[inline]
    fn get(&self, tx: usize, ty: usize) -> &[u16] {
        let i = ty * self.cols + tx;
        &self.items[self.start[i] as usize..self.start[i + 1] as usize]
    }
}

/// What to write for each pixel.
pub(crate) enum Target<'a> {
    /// Log-compressed 8-bit B-mode.
    Image {
        out: &'a mut [u8],
        textures: &'a Textures,
        noise_key: u32,
    },
    /// Structure labels ([`Label`] as `u8`); 0 outside the fan.
    Labels { out: &'a mut [u8] },
}

/// Renders the fan of `scene` into `target` (pixels outside the fan are set to 0).
pub(crate) fn render(scene: &Scene, acq: &Acquisition, geo: &SectorGeometry, target: Target<'_>) {
    let aff = Affine::new(geo, acq);
    let tiles = Tiles::new(&scene.prims, geo, &aff);
    let (w, h) = (geo.width, geo.height);
    match target {
        Target::Labels { out } => {
            out.fill(0);
            for y in 0..h {
                let (x0, x1) = geo.row_span(y);
                let dy = y as f32 + 0.5 - geo.apex_y;
                for x in x0..x1 {
                    let dx = x as f32 + 0.5 - geo.apex_x;
                    let hx = aff.m[0] * dx + aff.m[1] * dy + aff.t[0];
                    let hy = aff.m[2] * dx + aff.m[3] * dy + aff.t[1];
                    let mut label = Label::Tissue as u8;
                    if scene.background <= super::scene::LUNG {
                        label = Label::Lung as u8;
                    }
                    for &i in tiles.get(x / TILE, y / TILE) {
                        let p = &scene.prims[i as usize];
                        if p.distance(hx, hy) < 0.0 {
                            label = p.label as u8;
                        }
                    }
                    out[y * w + x] = label;
                }
            }
        }
        Target::Image {
            out,
            textures,
            noise_key,
        } => {
            out.fill(0);
            let gain = depth_gain_lut(acq, geo);
            let clutter = clutter_lut(acq, geo);
            let drop = dropout_lut(acq, geo);
            let dr = acq.dynamic_range_db as f32;
            let reject = 0.22f32;
            let scale_out = 255.0 / (1.0 - reject);
            let noise = acq.noise as f32 * (1.0 / 4_294_967_296.0);
            let (lcx, lcy) = scene.lv_centre;
            let warp = scene.warp;
            let drop_scale = DROP_BINS as f32 * 0.5 / geo.tan_half;
            let drop_start = (1.5 / geo.cm_per_px).max(1.0);
            for y in 0..h {
                let (x0, x1) = geo.row_span(y);
                let dy = y as f32 + 0.5 - geo.apex_y;
                let row = &mut out[y * w..(y + 1) * w];
                for (x, px) in row.iter_mut().enumerate().take(x1).skip(x0) {
                    let dx = x as f32 + 0.5 - geo.apex_x;
                    let hx = aff.m[0] * dx + aff.m[1] * dy + aff.t[0];
                    let hy = aff.m[2] * dx + aff.m[3] * dy + aff.t[1];
                    // speckle in material coordinates: warp about the LV with the contraction;
                    // the lateral grain widens with depth like a diverging beam
                    let (ex, ey) = (hx - lcx, hy - lcy);
                    let k = 1.0 + warp / (1.0 + (ex * ex + ey * ey) * (1.0 / 12.0));
                    let (mx, my) = (lcx + ex * k, lcy + ey * k);
                    let sp = sample_speckle(&textures.speckle, mx / (1.0 + 0.05 * my.max(0.0)), my);
                    // irregular (trabeculated) cavity borders that move with the tissue
                    let jitter = ((sample_speckle(&textures.speckle, 0.35 * mx + 41.0, 0.35 * my)
                        - 1.0)
                        * 0.2)
                        .clamp(-MAX_JITTER, MAX_JITTER);
                    let mut level = scene.background;
                    for &i in tiles.get(x / TILE, y / TILE) {
                        let p = &scene.prims[i as usize];
                        let a = p.alpha_rough(hx, hy, jitter);
                        if a > 0.0 {
                            level += (p.level - level) * a;
                        }
                    }
                    let het = sample_coarse(&textures.coarse, hx, hy);
                    let r = (dx * dx + dy * dy).sqrt();
                    let mut amp = (level + clutter[r as usize]) * het * sp * gain[r as usize];
                    if let Some(d) = &drop
                        && r > drop_start
                    {
                        let bin = ((dx / dy + geo.tan_half) * drop_scale) as usize;
                        amp *= d[bin.min(DROP_BINS - 1)];
                    }
                    let hsh = dmath::hash_pixel(noise_key, x as u32, y as u32);
                    amp += noise * hsh as f32;
                    let v = (20.0 * dmath::log10_f32(amp) + dr) / dr;
                    let v = ((v - reject) * scale_out).clamp(0.0, 255.0);
                    *px = (v + 0.5) as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speckle_has_unit_mean_and_rayleigh_spread() {
        let s = speckle_field(3);
        let n = s.len() as f64;
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        // Rayleigh: std/mean = sqrt(4/pi - 1) = 0.523
        assert!((mean - 1.0).abs() < 1e-4);
        let cv = var.sqrt() / mean;
        assert!((cv - 0.523).abs() < 0.06, "speckle contrast {cv}");
    }

    #[test]
    fn atan_det_matches_libm() {
        for i in -40..=40 {
            let x = i as f64 * 0.05;
            assert!((atan_det(x) - x.atan()).abs() < 1e-12, "atan({x})");
        }
    }
}
