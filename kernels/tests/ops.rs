//! GELU, layer norm, softmax, RoPE and the attention core against f64 references.

mod common;
use common::*;
use echojepa_kernels::rope::{RopeTables, apply_rope_qk};
use echojepa_kernels::{
    ActivationRange, F32Kernel, KernelError, activation, attention, norm, softmax,
};

/// GELU: A&S erf (≤ 1.5e-7) plus f32 rounding of `0.5·x·(1 + erf)`.
const GELU_ABS_TOL: f64 = 1e-6;
/// Largest error of an int8 attention context vector relative to its norm. Measured worst
/// cases on these shapes: 0.03 (u8) and 0.048 (u7, 300 tokens of nearly flat attention, where
/// the context vectors are short); a wrong scale or a lost row would be off by far more.
const INT8_ATTENTION_REL_TOL: f64 = 0.08;

/// Layer norm / softmax / attention / RoPE outputs: f32 rounding over short sums.
const OP_TOL: f64 = 2e-5;

#[test]
fn gelu_matches_exact_erf_form() {
    let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.005).collect();
    let mut v = xs.clone();
    activation::gelu_in_place(&mut v);
    for (x, y) in xs.iter().zip(&v) {
        let r = gelu64(*x as f64);
        let e = (*y as f64 - r).abs();
        assert!(
            e <= GELU_ABS_TOL * (1.0 + x.abs() as f64),
            "gelu({x}) = {y}, expected {r}"
        );
        let s = activation::gelu(*x) as f64;
        assert!(
            (s - r).abs() <= GELU_ABS_TOL * (1.0 + x.abs() as f64),
            "scalar gelu({x}) = {s}"
        );
    }
    // Saturation far out: exact 0 / identity.
    let mut far = vec![-30.0f32, 30.0];
    activation::gelu_in_place(&mut far);
    assert_eq!(far, vec![-0.0, 30.0]);
}

#[test]
fn layer_norm_matches_reference_and_checks_sizes() {
    for &(rows, d) in &[(1usize, 1usize), (3, 7), (5, 192), (70, 384), (2, 1000)] {
        let mut r = rng(rows as u64 * 31 + d as u64);
        let x: Vec<f32> = uniform(&mut r, rows * d, -3.0, 5.0);
        let g = uniform(&mut r, d, 0.5, 1.5);
        let b = uniform(&mut r, d, -0.5, 0.5);
        let mut out = vec![f32::NAN; rows * d];
        norm::layer_norm(&x, rows, d, &g, &b, 1e-6, &mut out).unwrap();
        for i in 0..rows {
            let xr = &x[i * d..(i + 1) * d];
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                let e = (xr[j] as f64 - mean) / (var + 1e-6).sqrt() * g[j] as f64 + b[j] as f64;
                let got = out[i * d + j] as f64;
                assert!(
                    (got - e).abs() <= OP_TOL * (1.0 + e.abs()),
                    "ln ({rows},{d}) [{i},{j}] {got} vs {e}"
                );
            }
        }
    }
    let mut out = vec![0f32; 4];
    assert_eq!(
        norm::layer_norm(&[0.0; 4], 2, 2, &[1.0; 3], &[0.0; 2], 1e-6, &mut out).unwrap_err(),
        KernelError::Len {
            what: "gamma",
            got: 3,
            expected: 2
        }
    );
}

#[test]
fn softmax_rows_match_reference() {
    for &(rows, n) in &[(1usize, 1usize), (2, 5), (3, 8), (4, 393), (2, 1568)] {
        let mut r = rng(n as u64);
        let x = uniform(&mut r, rows * n, -20.0, 20.0);
        let mut y = x.clone();
        softmax::softmax_rows(&mut y, rows, n).unwrap();
        for i in 0..rows {
            let xr = &x[i * n..(i + 1) * n];
            let mx = xr.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let s: f64 = xr.iter().map(|&v| (v as f64 - mx).exp()).sum();
            for j in 0..n {
                let e = (xr[j] as f64 - mx).exp() / s;
                let got = y[i * n + j] as f64;
                assert!(
                    (got - e).abs() <= OP_TOL * e + 1e-9,
                    "softmax ({rows},{n}) [{i},{j}] {got} vs {e}"
                );
            }
        }
    }
}

/// The RoPE of the reference, written from its description: segments of s dims for t/h/w with
/// TILED angles (ω index i mod s/2) and ADJACENT pair partners (y[2j] = −x[2j+1], y[2j+1] = x[2j]).
fn rope_ref(x: &[f64], pos: [usize; 3], hd: usize) -> Vec<f64> {
    let s = 2 * ((hd / 3) / 2);
    let m = s / 2;
    let mut out = x.to_vec();
    for (axis, &p) in pos.iter().enumerate() {
        let seg = &x[axis * s..(axis + 1) * s];
        for i in 0..s {
            let omega = 1.0 / 10000f64.powf((i % m) as f64 / m as f64);
            let theta = p as f64 * omega;
            let y = if i % 2 == 0 { -seg[i + 1] } else { seg[i - 1] };
            out[axis * s + i] = seg[i] * theta.cos() + y * theta.sin();
        }
    }
    out
}

/// Both paths: 60 tokens run on the calling thread, 392 (a 16×112² clip) on the pool.
#[test]
fn rope_reproduces_the_reference_quirk() {
    for (t, hp, wp) in [(3usize, 4usize, 5usize), (8, 7, 7)] {
        rope_matches_reference(t, hp, wp);
    }
}

fn rope_matches_reference(t: usize, hp: usize, wp: usize) {
    let (heads, hd) = (2usize, 64usize);
    let n = t * hp * wp;
    let d = heads * hd;
    let mut r = rng(5);
    let qkv = uniform(&mut r, n * 3 * d, -1.0, 1.0);
    let mut got = qkv.clone();
    let tables = RopeTables::grid(t, hp, wp, hd).unwrap();
    apply_rope_qk(&mut got, n, heads, hd, &tables).unwrap();
    for tok in 0..n {
        let pos = [tok / (hp * wp), (tok % (hp * wp)) / wp, tok % wp];
        for part in 0..3 {
            for h in 0..heads {
                let off = tok * 3 * d + part * d + h * hd;
                let x: Vec<f64> = qkv[off..off + hd].iter().map(|&v| v as f64).collect();
                let want = if part < 2 { rope_ref(&x, pos, hd) } else { x };
                for i in 0..hd {
                    let g = got[off + i] as f64;
                    assert!(
                        (g - want[i]).abs() <= OP_TOL,
                        "rope tok {tok} part {part} head {h} dim {i}: {g} vs {}",
                        want[i]
                    );
                }
            }
        }
    }
    // The 4-dim tail of hd = 64 (3 × 20 rotated) is untouched.
    assert_eq!(got[60..64], qkv[60..64]);
}

/// `concat_h softmax(q_h·k_hᵀ/√hd)·v_h` in f64.
fn attention_ref(qkv: &[f32], n: usize, heads: usize, hd: usize) -> Vec<f64> {
    let d = heads * hd;
    let mut want = vec![0f64; n * d];
    for h in 0..heads {
        for i in 0..n {
            let q = |j: usize| qkv[i * 3 * d + h * hd + j] as f64;
            let mut s: Vec<f64> = (0..n)
                .map(|t| {
                    (0..hd)
                        .map(|j| q(j) * qkv[t * 3 * d + d + h * hd + j] as f64)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s
                .iter_mut()
                .map(|v| {
                    *v = (*v - mx).exp();
                    *v
                })
                .sum();
            for j in 0..hd {
                want[i * d + h * hd + j] = (0..n)
                    .map(|t| s[t] / z * qkv[t * 3 * d + 2 * d + h * hd + j] as f64)
                    .sum();
            }
        }
    }
    want
}

/// int8 attention (both products int8, softmax f32) stays close to the f64 reference: every
/// context vector within a few per cent of its norm, for 8- and 7-bit activations, on ragged
/// token counts and head sizes; a non-finite key is refused by name.
#[test]
fn int8_attention_is_close_to_the_reference() {
    for &(n, heads, hd) in &[
        (1usize, 1usize, 8usize),
        (7, 2, 16),
        (50, 3, 64),
        (97, 2, 40),
        (300, 2, 64),
    ] {
        let d = heads * hd;
        let mut r = rng((n * 11 + heads) as u64);
        let qkv = uniform(&mut r, n * 3 * d, -2.0, 2.0);
        let want = attention_ref(&qkv, n, heads, hd);
        for act in [ActivationRange::U8, ActivationRange::U7] {
            let mut out = vec![f32::NAN; n * d];
            attention::attention_int8(&qkv, n, heads, hd, act, &mut out).unwrap();
            let mut worst = 0f64;
            for row in 0..n * heads {
                let (i, h) = (row / heads, row % heads);
                let at = |v: &dyn Fn(usize) -> f64| -> f64 {
                    (0..hd)
                        .map(|j| v(i * d + h * hd + j).powi(2))
                        .sum::<f64>()
                        .sqrt()
                };
                let err = at(&|k| out[k] as f64 - want[k]);
                let norm = at(&|k| want[k]);
                worst = worst.max(err / norm.max(1e-3));
            }
            eprintln!(
                "int8 attention {} ({n},{heads},{hd}): worst row rel. error {worst:.4}",
                act.name()
            );
            assert!(
                worst < INT8_ATTENTION_REL_TOL,
                "int8 attention {} ({n},{heads},{hd}): a context vector is off by {worst:.4} of its norm",
                act.name()
            );
            // (One token: the softmax is exactly 1 and each value is its channel's maximum.)
            assert!(n == 1 || worst > 0.0, "int8 attention is really quantized");
        }
    }
    let (n, heads, hd) = (20, 2, 16);
    let mut qkv = uniform(&mut rng(3), n * 3 * heads * hd, -1.0, 1.0);
    qkv[5 * 3 * heads * hd + heads * hd + 3] = f32::NAN; // token 5, head 0, key element 3
    let mut out = vec![0f32; n * heads * hd];
    let err =
        attention::attention_int8(&qkv, n, heads, hd, ActivationRange::U8, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::NonFinite {
                what: "attention keys",
                index: 83
            }
        ),
        "{err:?}"
    );
}

#[test]
fn attention_matches_reference_for_every_kernel() {
    for &(n, heads, hd) in &[
        (1usize, 1usize, 8usize),
        (7, 2, 16),
        (50, 3, 64),
        (97, 2, 40),
        (130, 1, 64),
    ] {
        let d = heads * hd;
        let mut r = rng((n * 7 + heads) as u64);
        let qkv = uniform(&mut r, n * 3 * d, -2.0, 2.0);
        let want = attention_ref(&qkv, n, heads, hd);
        for kernel in F32Kernel::available() {
            let mut out = vec![f32::NAN; n * d];
            attention::attention_with(kernel, &qkv, n, heads, hd, &mut out).unwrap();
            for i in 0..n * d {
                assert!(
                    (out[i] as f64 - want[i]).abs() <= OP_TOL * 4.0,
                    "{} attention ({n},{heads},{hd}) elem {i}: {} vs {}",
                    kernel.name(),
                    out[i],
                    want[i]
                );
            }
        }
    }
}
