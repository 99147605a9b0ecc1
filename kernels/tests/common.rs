//! Shared helpers for the kernel tests: seeded random data and f64 references.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn uniform(r: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// erf in f64 by its Taylor series (exact to ~1e-12 for |x| ≤ 5; ±1 beyond, where
/// 1 − erf(5) ≈ 1.5e-12).
pub fn erf64(x: f64) -> f64 {
    if x.abs() > 5.0 {
        return x.signum();
    }
    let mut sum = 0.0;
    let mut term = x; // x^(2n+1) (-1)^n / n!
    let mut n = 0.0;
    loop {
        let t = term / (2.0 * n + 1.0);
        sum += t;
        if t.abs() < 1e-17 {
            break;
        }
        n += 1.0;
        term *= -x * x / n;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

pub fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2))
}

/// `y = x · Wᵀ + b` in f64, plus `Σ_k |x·w|` per element (scale for rounding tolerances).
pub fn linear_ref(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut s = 0f64;
            let mut a = 0f64;
            for kk in 0..k {
                let p = x[r * k + kk] as f64 * w[c * k + kk] as f64;
                s += p;
                a += p.abs();
            }
            y[r * n + c] = s + b.map_or(0.0, |b| b[c] as f64);
            mag[r * n + c] = a;
        }
    }
    (y, mag)
}

/// Shapes that exercise every ragged edge: m, k and n below, at and past tile/block sizes.
pub fn ragged_shapes() -> Vec<(usize, usize, usize)> {
    vec![
        (1, 1, 1),
        (1, 7, 5),
        (3, 5, 17),
        (5, 16, 16),
        (6, 33, 31),
        (7, 64, 48),
        (13, 100, 15),
        (12, 3, 33),
        (37, 257, 50),
        (25, 384, 97),
        (100, 300, 64),
        (73, 600, 40),
        (130, 96, 130),
        // Enough rows for the int8 layers to split rows between threads.
        (203, 72, 45),
        (392, 96, 64),
    ]
}
