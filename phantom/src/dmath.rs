//! Deterministic maths and random numbers for the phantom.
//!
//! The phantom promises byte-identical frames for a seed on every platform (a cart's aarch64
//! computer and an x86-64 workstation render the same bytes). Platform `libm` functions (`sin`,
//! `ln`, `exp`) may differ in the last bit between targets, so everything that feeds a pixel uses
//! only IEEE-754 basic operations (`+ - * /`, `sqrt`, `floor`, comparisons), which are exactly
//! rounded everywhere. The approximations below are accurate to about 1e-13 (f64) and 1e-6 (f32),
//! far below what an 8-bit pixel can show.

use std::f64::consts::{LN_2, PI};

const PIO2_HI: f64 = 1.570_796_326_734_125_6;
const PIO2_LO: f64 = 6.077_100_506_506_192e-11;

/// `(sin x, cos x)` from a Cody–Waite reduction and Taylor polynomials on `[-pi/4, pi/4]`.
pub(crate) fn sin_cos(x: f64) -> (f64, f64) {
    if !x.is_finite() {
        return (f64::NAN, f64::NAN);
    }
    let k = (x / (PI / 2.0) + 0.5).floor();
    let r = (x - k * PIO2_HI) - k * PIO2_LO;
    let r2 = r * r;
    // sin r = r - r^3/3! + ... (to r^15), cos r = 1 - r^2/2! + ... (to r^16)
    let s = r
        * (1.0
            + r2 * (-1.0 / 6.0
                + r2 * (1.0 / 120.0
                    + r2 * (-1.0 / 5040.0
                        + r2 * (1.0 / 362_880.0
                            + r2 * (-1.0 / 39_916_800.0
                                + r2 * (1.0 / 6_227_020_800.0
                                    + r2 * (-1.0 / 1_307_674_368_000.0))))))));
    let c = 1.0
        + r2 * (-0.5
            + r2 * (1.0 / 24.0
                + r2 * (-1.0 / 720.0
                    + r2 * (1.0 / 40_320.0
                        + r2 * (-1.0 / 3_628_800.0
                            + r2 * (1.0 / 479_001_600.0
                                + r2 * (-1.0 / 87_178_291_200.0
                                    + r2 * (1.0 / 20_922_789_888_000.0))))))));
    // k mod 4 picks the quadrant; k fits easily in i64 for any angle the phantom uses.
    match (k as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

pub(crate) fn cos(x: f64) -> f64 {
    sin_cos(x).1
}

/// Natural logarithm; `x <= 0` gives `-inf`.
pub(crate) fn ln(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let (mut m, mut e) = frexp(x);
    // m in [0.5, 1): move to [sqrt(1/2), sqrt(2))
    if m < std::f64::consts::FRAC_1_SQRT_2 {
        m *= 2.0;
        e -= 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 2.0
        * s
        * (1.0
            + s2 * (1.0 / 3.0
                + s2 * (1.0 / 5.0
                    + s2 * (1.0 / 7.0
                        + s2 * (1.0 / 9.0
                            + s2 * (1.0 / 11.0
                                + s2 * (1.0 / 13.0 + s2 * (1.0 / 15.0 + s2 * (1.0 / 17.0)))))))));
    e as f64 * LN_2 + series
}

/// `x = m * 2^e` with `m` in `[0.5, 1)` for positive normal and subnormal `x`.
fn frexp(x: f64) -> (f64, i32) {
    let mut x = x;
    let mut adjust = 0;
    if x < f64::MIN_POSITIVE {
        x *= f64::from_bits((1023u64 + 64) << 52); // 2^64, exact
        adjust = -64;
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1022;
    let m = f64::from_bits((bits & !(0x7ff << 52)) | (1022u64 << 52));
    (m, exp + adjust)
}

/// `e^x`, saturating to 0 / +inf outside the f64 range.
pub(crate) fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -745.0 {
        return 0.0;
    }
    let k = (x / LN_2 + 0.5).floor();
    let r = x - k * LN_2;
    // Taylor to r^13 on |r| <= ln2/2.
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 1..=13 {
        term *= r / n as f64;
        sum += term;
    }
    ldexp(sum, k as i32)
}

/// `x * 2^k` by exponent arithmetic (exact while the result is normal).
fn ldexp(x: f64, k: i32) -> f64 {
    let mut x = x;
    let mut k = k;
    while k > 1000 {
        x *= f64::from_bits(2023u64 << 52); // 2^1000
        k -= 1000;
    }
    while k < -1000 {
        x *= f64::from_bits(23u64 << 52); // 2^-1000
        k += 1000;
    }
    x * f64::from_bits(((k + 1023) as u64) << 52)
}

/// `10^(db/20)`: an amplitude ratio from decibels.
pub(crate) fn db_to_amp(db: f64) -> f64 {
    exp(db * (std::f64::consts::LN_10 / 20.0))
}

/// Fast f32 `log10` for the per-pixel log compression (absolute error < 1e-6 for x > 1e-30).
#[inline]
pub(crate) fn log10_f32(x: f32) -> f32 {
    let x = x.max(1e-30);
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000); // [1, 2)
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let ln_m = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 / 9.0))));
    (e as f32 * std::f32::consts::LN_2 + ln_m) * std::f32::consts::LOG10_E
}

/// SplitMix64: a tiny, well-mixed 64-bit generator; streams are cheap to derive from a seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// An independent stream for a named purpose, so adding draws to one part of the phantom
    /// does not change another.
    pub(crate) fn stream(seed: u64, purpose: u64) -> Self {
        Self::new(mix64(
            seed ^ mix64(purpose.wrapping_add(0x9E37_79B9_7F4A_7C15)),
        ))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller with the deterministic `ln`/`cos`).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * ln(u1)).sqrt() * cos(2.0 * PI * u2)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

/// The SplitMix64 finaliser.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 32-bit hash of a pixel position and a frame key: per-frame noise without any state.
#[inline]
pub(crate) fn hash_pixel(key: u32, x: u32, y: u32) -> u32 {
    let mut h = key ^ x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB_352D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846C_A68B);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trig_matches_libm() {
        let mut x = -40.0;
        while x < 40.0 {
            let (s, c) = sin_cos(x);
            assert!((s - x.sin()).abs() < 1e-12, "sin({x})");
            assert!((c - x.cos()).abs() < 1e-12, "cos({x})");
            x += 0.0137;
        }
    }

    #[test]
    fn ln_exp_match_libm() {
        for &x in &[
            1e-300, 1e-10, 0.1, 0.5, 0.7, 1.0, 1.5, 2.0, 10.0, 12345.678, 1e200,
        ] {
            let rel = (ln(x) - x.ln()).abs() / x.ln().abs().max(1.0);
            assert!(rel < 1e-13, "ln({x}) = {} vs {}", ln(x), x.ln());
        }
        for &x in &[-700.0, -20.0, -1.0, -0.3, 0.0, 0.3, 1.0, 5.5, 50.0, 700.0] {
            let rel = (exp(x) - x.exp()).abs() / x.exp();
            assert!(rel < 1e-13, "exp({x}) = {} vs {}", exp(x), x.exp());
        }
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!((db_to_amp(20.0) - 10.0).abs() < 1e-12);
    }

    #[test]
    fn log10_f32_accuracy() {
        let mut x = 1e-6f32;
        while x < 1e4 {
            assert!((log10_f32(x) - x.log10()).abs() < 2e-6, "log10({x})");
            x *= 1.37;
        }
    }

    #[test]
    fn rng_streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.iter().all(|&v| v == a[0]));
        let mut s1 = Rng::stream(7, 1);
        let mut s2 = Rng::stream(7, 2);
        assert_ne!(s1.next_u64(), s2.next_u64());
        let mut r = Rng::new(3);
        let n = 20_000;
        let (mut m, mut v) = (0.0, 0.0);
        for _ in 0..n {
            let z = r.normal();
            m += z;
            v += z * z;
        }
        m /= n as f64;
        v = v / n as f64 - m * m;
        assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.05, "mean {m} var {v}");
    }
}
