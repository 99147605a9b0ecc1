//! Small PNG charts for training outputs (loss curves, confusion matrices, embedding scatter
//! plots), drawn with the `image` crate and a built-in 5×7 bitmap font, so the default build
//! needs no font files or system libraries.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([20, 20, 20]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const GREY: Rgb<u8> = Rgb([110, 110, 110]);

/// Distinct colours for series and classes (cycled).
pub const PALETTE: [Rgb<u8>; 12] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
    Rgb([188, 189, 34]),
    Rgb([23, 190, 207]),
    Rgb([0, 0, 128]),
    Rgb([128, 128, 0]),
];

pub fn color(i: usize) -> Rgb<u8> {
    PALETTE[i % PALETTE.len()]
}

/// 5×7 glyph rows, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' | '×' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        '-' | '−' => [0, 0, 0, 31, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '[' => [14, 8, 8, 8, 8, 8, 14],
        ']' => [14, 2, 2, 2, 2, 2, 14],
        '\'' => [4, 4, 8, 0, 0, 0, 0],
        '#' => [10, 10, 31, 10, 31, 10, 10],
        '*' => [0, 4, 21, 14, 21, 4, 0],
        '<' => [2, 4, 8, 16, 8, 4, 2],
        '>' => [8, 4, 2, 1, 2, 4, 8],
        '?' => [14, 17, 1, 2, 4, 0, 4],
        ' ' => [0; 7],
        _ => [31, 17, 17, 17, 17, 17, 31],
    }
}

/// Width in pixels of `text` at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 6 * scale
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Draws `text` with its top-left corner at `(x, y)`.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, c: Rgb<u8>) {
    let s = scale as i64;
    for (i, ch) in text.chars().enumerate() {
        let g = glyph(ch);
        let ox = x + i as i64 * 6 * s;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (1 << (4 - col)) != 0 {
                    for dy in 0..s {
                        for dx in 0..s {
                            put(img, ox + col * s + dx, y + row as i64 * s + dy, c);
                        }
                    }
                }
            }
        }
    }
}

/// Draws text rotated 90° counter-clockwise (for y-axis labels), reading bottom to top.
fn draw_text_vertical(
    img: &mut RgbImage,
    x: i64,
    y_bottom: i64,
    text: &str,
    scale: u32,
    c: Rgb<u8>,
) {
    let s = scale as i64;
    for (i, ch) in text.chars().enumerate() {
        let g = glyph(ch);
        let oy = y_bottom - i as i64 * 6 * s;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (1 << (4 - col)) != 0 {
                    for dy in 0..s {
                        for dx in 0..s {
                            put(img, x + row as i64 * s + dx, oy - col * s - dy, c);
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>, width: i64) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let x = (x0 + t * (x1 - x0)).round() as i64;
        let y = (y0 + t * (y1 - y0)).round() as i64;
        for d in 0..width {
            put(img, x, y + d - width / 2, c);
            put(img, x + d - width / 2, y, c);
        }
    }
}

fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, w: i64, h: i64, c: Rgb<u8>) {
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            put(img, x, y, c);
        }
    }
}

/// "Nice" tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= target as f64)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = first;
    while v <= hi + step * 1e-9 && out.len() < 50 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One named series of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Plot area and axes shared by line and scatter charts.
struct Frame {
    img: RgbImage,
    left: f64,
    top: f64,
    w: f64,
    h: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn new(title: &str, xlabel: &str, ylabel: &str, x: (f64, f64), y: (f64, f64)) -> Self {
        let (width, height) = (900u32, 600u32);
        let mut img = RgbImage::from_pixel(width, height, WHITE);
        let (left, top, right, bottom) = (90.0, 50.0, 30.0, 70.0);
        let w = width as f64 - left - right;
        let h = height as f64 - top - bottom;
        let pad = |(a, b): (f64, f64)| {
            if (b - a).abs() < 1e-12 {
                (a - 0.5, b + 0.5)
            } else {
                (a, b)
            }
        };
        let (x, y) = (pad(x), pad(y));
        let tw = text_width(title, 2) as i64;
        draw_text(&mut img, (width as i64 - tw) / 2, 14, title, 2, BLACK);
        let mut f = Self {
            img,
            left,
            top,
            w,
            h,
            x,
            y,
        };
        for t in ticks(y.0, y.1, 6) {
            let py = f.py(t);
            line(&mut f.img, (left, py), (left + w, py), GRID, 1);
            let s = fmt_tick(t);
            draw_text(
                &mut f.img,
                left as i64 - 8 - text_width(&s, 1) as i64,
                py as i64 - 3,
                &s,
                1,
                BLACK,
            );
        }
        for t in ticks(x.0, x.1, 8) {
            let px = f.px(t);
            line(&mut f.img, (px, top), (px, top + h), GRID, 1);
            let s = fmt_tick(t);
            draw_text(
                &mut f.img,
                px as i64 - text_width(&s, 1) as i64 / 2,
                (top + h) as i64 + 8,
                &s,
                1,
                BLACK,
            );
        }
        line(&mut f.img, (left, top + h), (left + w, top + h), BLACK, 1);
        line(&mut f.img, (left, top), (left, top + h), BLACK, 1);
        let xw = text_width(xlabel, 2) as i64;
        draw_text(
            &mut f.img,
            (left + w / 2.0) as i64 - xw / 2,
            height as i64 - 30,
            xlabel,
            2,
            BLACK,
        );
        let yw = text_width(ylabel, 2) as i64;
        draw_text_vertical(
            &mut f.img,
            14,
            (top + h / 2.0) as i64 + yw / 2,
            ylabel,
            2,
            BLACK,
        );
        f
    }
    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.0) / (self.x.1 - self.x.0) * self.w
    }
    fn py(&self, y: f64) -> f64 {
        self.top + self.h - (y - self.y.0) / (self.y.1 - self.y.0) * self.h
    }
    fn legend(&mut self, names: &[String]) {
        let x = self.left as i64 + self.w as i64 - 10;
        for (i, n) in names.iter().enumerate() {
            let tw = text_width(n, 1) as i64;
            let y = self.top as i64 + 10 + i as i64 * 14;
            fill_rect(&mut self.img, x - tw - 22, y - 2, tw + 26, 13, WHITE);
            fill_rect(&mut self.img, x - tw - 18, y, 12, 8, color(i));
            draw_text(&mut self.img, x - tw, y, n, 1, BLACK);
        }
    }
}

fn bounds(points: impl Iterator<Item = (f64, f64)>) -> ((f64, f64), (f64, f64)) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    ((x0, x1), (y0, y1))
}

/// A line chart of one or more series; `y_from_zero` anchors the y axis at 0.
pub fn line_chart(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
    y_from_zero: bool,
) -> Result<()> {
    let ((x0, x1), (mut y0, mut y1)) = bounds(series.iter().flat_map(|s| s.points.iter().copied()));
    if y_from_zero {
        y0 = y0.min(0.0);
    }
    let pad = (y1 - y0) * 0.05;
    y1 += pad;
    if !y_from_zero {
        y0 -= pad;
    }
    let mut f = Frame::new(title, xlabel, ylabel, (x0, x1), (y0, y1));
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| (f.px(x), f.py(y)))
            .collect();
        for w in pts.windows(2) {
            line(&mut f.img, w[0], w[1], color(i), 2);
        }
        if pts.len() == 1 {
            fill_rect(
                &mut f.img,
                pts[0].0 as i64 - 2,
                pts[0].1 as i64 - 2,
                5,
                5,
                color(i),
            );
        }
    }
    if series.len() > 1 || series.first().is_some_and(|s| !s.name.is_empty()) {
        f.legend(&series.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    }
    save(&f.img, path)
}

/// A scatter plot of points coloured by class index, with a legend of class names.
pub fn scatter_chart(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    points: &[(f64, f64, usize)],
    classes: &[String],
) -> Result<()> {
    let ((x0, x1), (y0, y1)) = bounds(points.iter().map(|p| (p.0, p.1)));
    let (px, py) = ((x1 - x0) * 0.05, (y1 - y0) * 0.05);
    let mut f = Frame::new(
        title,
        xlabel,
        ylabel,
        (x0 - px, x1 + px),
        (y0 - py, y1 + py),
    );
    for &(x, y, c) in points {
        if x.is_finite() && y.is_finite() {
            let (cx, cy) = (f.px(x) as i64, f.py(y) as i64);
            for dy in -3i64..=3 {
                for dx in -3i64..=3 {
                    if dx * dx + dy * dy <= 9 {
                        put(&mut f.img, cx + dx, cy + dy, color(c));
                    }
                }
            }
        }
    }
    f.legend(classes);
    save(&f.img, path)
}

/// A confusion matrix heat map (rows = true class, columns = predicted), counts in the cells.
pub fn confusion_chart(
    path: &Path,
    title: &str,
    matrix: &[Vec<u64>],
    classes: &[String],
) -> Result<()> {
    let n = matrix.len().max(1);
    let cell = (480 / n).clamp(24, 80) as i64;
    let label_w = classes.iter().map(|c| text_width(c, 1)).max().unwrap_or(0) as i64 + 16;
    let left = label_w.max(60) + 20;
    let top = 60i64;
    let width = (left + cell * n as i64 + 30) as u32;
    let height = (top + cell * n as i64 + label_w.max(40) + 40) as u32;
    let mut img = RgbImage::from_pixel(width.max(420), height, WHITE);
    let tw = text_width(title, 2) as i64;
    let iw = img.width() as i64;
    draw_text(&mut img, (iw - tw) / 2, 14, title, 2, BLACK);
    for (r, row) in matrix.iter().enumerate() {
        let total: u64 = row.iter().sum::<u64>().max(1);
        for (c, &v) in row.iter().enumerate() {
            let frac = v as f64 / total as f64;
            let shade = (255.0 - frac * 200.0) as u8;
            let col = Rgb([shade, shade, 255]);
            let (x, y) = (left + c as i64 * cell, top + r as i64 * cell);
            fill_rect(&mut img, x, y, cell - 1, cell - 1, col);
            let s = v.to_string();
            let fg = if frac > 0.6 { WHITE } else { BLACK };
            draw_text(
                &mut img,
                x + (cell - text_width(&s, 1) as i64) / 2,
                y + cell / 2 - 3,
                &s,
                1,
                fg,
            );
        }
        let name = classes.get(r).cloned().unwrap_or_else(|| r.to_string());
        draw_text(
            &mut img,
            left - 8 - text_width(&name, 1) as i64,
            top + r as i64 * cell + cell / 2 - 3,
            &name,
            1,
            BLACK,
        );
    }
    for c in 0..n {
        let name = classes.get(c).cloned().unwrap_or_else(|| c.to_string());
        let x = left + c as i64 * cell + cell / 2 - 4;
        draw_text_vertical(
            &mut img,
            x,
            top + n as i64 * cell + 8 + text_width(&name, 1) as i64,
            &name,
            1,
            BLACK,
        );
    }
    draw_text(&mut img, 6, top - 18, "ROWS TRUE, COLS PREDICTED", 1, GREY);
    save(&img, path)
}

fn save(img: &RgbImage, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    img.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(0.0, 1.0, 5);
        assert_eq!(t, vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let t = ticks(13.0, 97.0, 8);
        assert!(t.first().unwrap() >= &13.0 && t.last().unwrap() <= &97.0);
        assert!(t.len() >= 4);
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(1500.0), "1500");
        assert_eq!(fmt_tick(2.5e-5), "2.5e-5");
    }

    #[test]
    fn charts_are_written_and_contain_ink() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let s = Series {
            name: "loss".into(),
            points: (0..50)
                .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                .collect(),
        };
        line_chart(&p, "Loss", "step", "L1", &[s], true).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        let blue = img.pixels().filter(|px| **px == color(0)).count();
        assert!(blue > 100, "the series is drawn ({blue} px)");
        let c = dir.path().join("cm.png");
        confusion_chart(
            &c,
            "Confusion",
            &[vec![5, 1], vec![0, 7]],
            &["A4C".into(), "PLAX".into()],
        )
        .unwrap();
        assert!(image::open(&c).is_ok());
        let s = dir.path().join("pca.png");
        scatter_chart(
            &s,
            "PCA",
            "PC1",
            "PC2",
            &[(0.0, 1.0, 0), (1.0, 0.0, 1)],
            &["a".into(), "b".into()],
        )
        .unwrap();
        let img = image::open(&s).unwrap().to_rgb8();
        assert!(img.pixels().any(|px| *px == color(1)));
    }
}
