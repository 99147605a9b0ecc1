//! int8 linear layers: every kernel this CPU runs against (a) the exact integer result of the
//! portable kernel with the same packing and (b) the f64 reference within a worst-case
//! quantization bound, on ragged shapes, with every epilogue.

mod common;
use common::*;
use echojepa_kernels::{ActivationRange, Epilogue, Int8Kernel, KernelError, PackedInt8Linear};

/// Rounding slack relative to `Σ_k |x_k·w_k|` on top of the quantization bound.
const I8_REL_TOL: f64 = 1e-5;
/// Absolute floor.
const I8_ABS_TOL: f64 = 1e-5;
/// Largest relative RMS error (‖y − ref‖₂ / ‖ref‖₂) for k ≥ 64 on uniform data.
const I8_REL_RMS_TOL: f64 = 0.02;

/// Worst-case error of per-row u8 activations × per-channel int8 weights:
/// `s_x/2·Σ|w| + s_w/2·Σ|x| + k·s_x·s_w/4` (s_x from the row range widened to 0, over
/// `amax` levels).
fn quant_bound(
    x: &[f32],
    w: &[f32],
    k: usize,
    (r, c): (usize, usize),
    (wmax, amax): (f64, f64),
) -> f64 {
    let xr = &x[r * k..(r + 1) * k];
    let wc = &w[c * k..(c + 1) * k];
    let lo = xr.iter().fold(0f32, |a, &b| a.min(b)) as f64;
    let hi = xr.iter().fold(0f32, |a, &b| a.max(b)) as f64;
    let sx = (hi - lo) / amax;
    let sw = wc.iter().fold(0f32, |a, &b| a.max(b.abs())) as f64 / wmax;
    let sw_abs: f64 = wc.iter().map(|v| v.abs() as f64).sum();
    let sx_abs: f64 = xr.iter().map(|v| v.abs() as f64).sum();
    sx / 2.0 * sw_abs + sw / 2.0 * sx_abs + k as f64 * sx * sw / 4.0
}

fn check(kernel: Int8Kernel, act: ActivationRange, (m, k, n): (usize, usize, usize), seed: u64) {
    let mut r = rng(seed);
    let x = uniform(&mut r, m * k, -1.0, 1.5);
    let w = uniform(&mut r, n * k, -1.0, 1.0);
    let b = uniform(&mut r, n, -0.5, 0.5);
    let res = uniform(&mut r, m * n, -2.0, 2.0);
    let (yref, mag) = linear_ref(&x, &w, Some(&b), m, k, n);
    let lin = PackedInt8Linear::from_f32_with(kernel, &w, n, k, Some(&b))
        .unwrap()
        .with_activations(act);
    assert_eq!((lin.kernel(), lin.activations()), (kernel, act));
    let wmax = kernel.weight_max() as f64;
    let amax = act.max() as f64;
    let name = format!("{} {}", kernel.name(), act.name());
    let tol = |i: usize| {
        quant_bound(&x, &w, k, (i / n, i % n), (wmax, amax)) * 1.001
            + I8_REL_TOL * mag[i]
            + I8_ABS_TOL
    };

    let mut plain = vec![f32::NAN; m * n];
    lin.forward(&x, m, &mut plain, Epilogue::None).unwrap();
    let (mut se, mut sr) = (0f64, 0f64);
    for i in 0..m * n {
        let e = (plain[i] as f64 - yref[i]).abs();
        assert!(
            e <= tol(i),
            "{name} none ({m},{k},{n}) elem {i}: {} vs {} err {e} tol {}",
            plain[i],
            yref[i],
            tol(i)
        );
        se += e * e;
        sr += yref[i] * yref[i];
    }
    if k >= 64 {
        let rel = (se / sr).sqrt();
        assert!(
            rel < I8_REL_RMS_TOL,
            "{name} ({m},{k},{n}) relative RMS error {rel}"
        );
    }

    // The same integer weights through the portable kernel give bit-identical outputs.
    let scal = lin.retarget(Int8Kernel::Scalar).unwrap();
    let mut out = vec![f32::NAN; m * n];
    scal.forward(&x, m, &mut out, Epilogue::None).unwrap();
    for i in 0..m * n {
        assert_eq!(
            out[i].to_bits(),
            plain[i].to_bits(),
            "{name} vs scalar ({m},{k},{n}) elem {i}"
        );
    }

    // A layer without bias, accumulating into `out`: also bit-identical to the portable kernel.
    let nb = PackedInt8Linear::from_f32_with(kernel, &w, n, k, None).unwrap();
    let nb_scal = nb.retarget(Int8Kernel::Scalar).unwrap();
    let (mut got, mut want) = (res.clone(), res.clone());
    nb.forward(&x, m, &mut got, Epilogue::Accumulate).unwrap();
    nb_scal
        .forward(&x, m, &mut want, Epilogue::Accumulate)
        .unwrap();
    for i in 0..m * n {
        assert_eq!(
            got[i].to_bits(),
            want[i].to_bits(),
            "{name} vs scalar, no bias, accumulate ({m},{k},{n}) elem {i}"
        );
    }
    assert!(
        got.iter().zip(&res).any(|(g, r)| g != r),
        "{name} ({m},{k},{n}): accumulate changed nothing"
    );

    let mut out = vec![f32::NAN; m * n];
    lin.forward(&x, m, &mut out, Epilogue::Gelu).unwrap();
    for i in 0..m * n {
        // GELU is 1.13-Lipschitz, so the bound carries over (plus the GELU approximation).
        let t = 1.13 * tol(i) + 1e-6 * (1.0 + yref[i].abs());
        let e = (out[i] as f64 - gelu64(yref[i])).abs();
        assert!(
            e <= t,
            "{name} gelu ({m},{k},{n}) elem {i}: err {e} tol {t}"
        );
    }

    let mut out = vec![f32::NAN; m * n];
    lin.forward(&x, m, &mut out, Epilogue::AddResidual(&res))
        .unwrap();
    for i in 0..m * n {
        assert_eq!(
            out[i],
            plain[i] + res[i],
            "{name} residual ({m},{k},{n}) elem {i}"
        );
    }

    let mut out = res.clone();
    lin.forward(&x, m, &mut out, Epilogue::Accumulate).unwrap();
    for i in 0..m * n {
        assert_eq!(
            out[i],
            res[i] + plain[i],
            "{name} accumulate ({m},{k},{n}) elem {i}"
        );
    }
}

#[test]
fn every_kernel_matches_f64_reference_within_quantization_bound() {
    let kernels = Int8Kernel::available();
    assert!(kernels.contains(&Int8Kernel::Scalar));
    eprintln!("int8 kernels tested: {:?}", kernels);
    for (i, &(m, k, n)) in ragged_shapes().iter().enumerate() {
        for &kernel in &kernels {
            for act in [ActivationRange::U8, ActivationRange::U7] {
                check(kernel, act, (m, k, n), 200 + i as u64);
            }
        }
    }
}

/// Every activation and weight at the end of its range: single `vpmaddubsw` lanes reach
/// ±32640 (2·255·64) with U8 and the AVX2 tile's i16 pair sums ±32512 (two lanes of 2·127·64)
/// with U7, the most they can; neither may saturate.
#[test]
fn extreme_values_do_not_saturate() {
    let (m, k, n) = (5, 4 * 67, 19);
    // Rows of +1 quantize to the top of the range (zero point 0), rows of −1 to data 0 and the
    // zero point at the top.
    let x: Vec<f32> = (0..m * k)
        .map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    // Columns of ±1 with alternating sign per column: every quantized weight is ±weight_max.
    let w: Vec<f32> = (0..n * k)
        .map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    for (kernel, act) in Int8Kernel::available()
        .into_iter()
        .flat_map(|k| [(k, ActivationRange::U8), (k, ActivationRange::U7)])
    {
        let lin = PackedInt8Linear::from_f32_with(kernel, &w, n, k, None)
            .unwrap()
            .with_activations(act);
        let mut out = vec![f32::NAN; m * n];
        lin.forward(&x, m, &mut out, Epilogue::None).unwrap();
        for r in 0..m {
            for c in 0..n {
                let want = k as f32 * x[r * k] * w[c * k];
                let got = out[r * n + c];
                assert!(
                    (got - want).abs() <= 1e-3 * want.abs(),
                    "{} {} ({r}, {c}): {got} vs {want}",
                    kernel.name(),
                    act.name()
                );
            }
        }
    }
}

/// The GELU epilogue of every SIMD kernel (fused into the AVX2 and AVX-512 tiles, or on the
/// row) gives exactly the bits of the plain output passed through the AVX2 GELU afterwards, on
/// full and ragged panels, with rows split between threads and not.
#[test]
fn fused_gelu_matches_gelu_after_the_gemm_bit_for_bit() {
    if echojepa_kernels::F32Kernel::best() == echojepa_kernels::F32Kernel::Scalar {
        return; // the slice GELU below would be the scalar one
    }
    for (i, &(m, k, n)) in [(9, 40, 32), (203, 72, 48), (392, 128, 96), (17, 64, 40)]
        .iter()
        .enumerate()
    {
        let mut r = rng(900 + i as u64);
        let x = uniform(&mut r, m * k, -1.0, 1.5);
        let w = uniform(&mut r, n * k, -1.0, 1.0);
        let b = uniform(&mut r, n, -0.5, 0.5);
        for kernel in Int8Kernel::available() {
            if kernel == Int8Kernel::Scalar {
                continue;
            }
            let lin = PackedInt8Linear::from_f32_with(kernel, &w, n, k, Some(&b)).unwrap();
            let mut want = vec![f32::NAN; m * n];
            lin.forward(&x, m, &mut want, Epilogue::None).unwrap();
            // n is a multiple of 8, so every value goes through the SIMD GELU.
            echojepa_kernels::activation::gelu_in_place(&mut want);
            let mut got = vec![f32::NAN; m * n];
            lin.forward(&x, m, &mut got, Epilogue::Gelu).unwrap();
            for j in 0..m * n {
                assert_eq!(
                    got[j].to_bits(),
                    want[j].to_bits(),
                    "{} ({m},{k},{n}) elem {j}: {} vs {}",
                    kernel.name(),
                    got[j],
                    want[j]
                );
            }
        }
    }
}

#[test]
fn retarget_refuses_a_narrower_weight_range() {
    let w = vec![0.5f32; 16];
    let lin = PackedInt8Linear::from_f32_with(Int8Kernel::Scalar, &w, 4, 4, None).unwrap();
    if Int8Kernel::Avx2.is_supported() {
        assert_eq!(
            lin.retarget(Int8Kernel::Avx2).unwrap_err(),
            KernelError::Unsupported("avx2")
        );
    }
    assert!(lin.retarget(Int8Kernel::Scalar).is_ok());
}

#[test]
fn errors_name_the_operand() {
    let w = vec![0.25f32; 12];
    assert_eq!(
        PackedInt8Linear::from_f32(&w, 3, 5, None).unwrap_err(),
        KernelError::Len {
            what: "weight",
            got: 12,
            expected: 15
        }
    );
    let mut bad = w.clone();
    bad[7] = f32::INFINITY;
    assert_eq!(
        PackedInt8Linear::from_f32(&bad, 3, 4, None).unwrap_err(),
        KernelError::NonFinite {
            what: "weight",
            index: 7
        }
    );
    let lin = PackedInt8Linear::from_f32(&w, 3, 4, Some(&[1.0, 2.0, 3.0])).unwrap();
    let mut out = vec![0f32; 6];
    assert_eq!(
        lin.forward(&[0.0; 7], 2, &mut out, Epilogue::None)
            .unwrap_err(),
        KernelError::Len {
            what: "x",
            got: 7,
            expected: 8
        }
    );
    // All-zero input rows and all-zero weight rows are exact.
    lin.forward(&[0.0; 8], 2, &mut out, Epilogue::None).unwrap();
    assert_eq!(out, vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    let z = PackedInt8Linear::from_f32(&[0.0; 8], 2, 4, None).unwrap();
    let mut o = vec![9f32; 2];
    z.forward(&[1.0, -2.0, 3.0, 4.0], 1, &mut o, Epilogue::None)
        .unwrap();
    assert_eq!(o, vec![0.0, 0.0]);
}

/// AMX multiplies the AVX-512 VNNI packing into the same exact i32 sums and finishes them with
/// the same epilogue, so a layer gives the same bits on either kernel: rows that are not whole
/// 16- or 32-row tiles, k that is not whole 64-byte tile rows (the tile reads past a panel's
/// last k-group), a ragged last panel, every epilogue, both activation ranges, rows split
/// between threads (392 rows) and not. Skipped where the CPU or OS has no AMX.
#[test]
fn amx_gives_the_bits_of_avx512_vnni() {
    if !Int8Kernel::Amx.is_supported() {
        eprintln!("AMX not available here: nothing to compare");
        return;
    }
    let shapes = [
        (1, 4, 16),
        (5, 13, 17),
        (16, 64, 32),
        (17, 68, 32),
        (33, 96, 48),
        (71, 200, 40),
        (392, 384, 96),
        (100, 1540, 70),
    ];
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        let mut r = rng(1300 + i as u64);
        let x = uniform(&mut r, m * k, -1.0, 1.5);
        let w = uniform(&mut r, n * k, -1.0, 1.0);
        let b = uniform(&mut r, n, -0.5, 0.5);
        let res = uniform(&mut r, m * n, -2.0, 2.0);
        for act in [ActivationRange::U8, ActivationRange::U7] {
            let vnni = PackedInt8Linear::from_f32_with(Int8Kernel::Avx512Vnni, &w, n, k, Some(&b))
                .unwrap()
                .with_activations(act);
            let amx = vnni.retarget(Int8Kernel::Amx).unwrap();
            let epilogues = [
                ("none", Epilogue::None),
                ("gelu", Epilogue::Gelu),
                ("residual", Epilogue::AddResidual(&res)),
                ("accumulate", Epilogue::Accumulate),
            ];
            for (name, epi) in epilogues {
                let mut want = res.clone();
                vnni.forward(&x, m, &mut want, epi).unwrap();
                let mut got = res.clone();
                amx.forward(&x, m, &mut got, epi).unwrap();
                for j in 0..m * n {
                    assert_eq!(
                        got[j].to_bits(),
                        want[j].to_bits(),
                        "({m},{k},{n}) {} {name} elem {j}: {} vs {}",
                        act.name(),
                        got[j],
                        want[j]
                    );
                }
            }
        }
    }
}
