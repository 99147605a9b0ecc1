//! f32 linear layers against an f64 reference on ragged shapes, for every kernel this CPU runs,
//! with every epilogue; plus the shape and value errors.

mod common;
use common::*;
use echojepa_kernels::{Epilogue, F32Kernel, KernelError, PackedF32Linear};

/// Allowed error relative to `Σ_k |x_k·w_k|` (f32 rounding of a length-k sum, k ≤ 600).
const F32_REL_TOL: f64 = 1e-5;
/// Absolute floor (for outputs that are nearly zero).
const F32_ABS_TOL: f64 = 1e-6;
/// GELU approximation error allowed on top (erf error ≤ 1.5e-7 times |x|/2, plus rounding).
const GELU_TOL: f64 = 1e-6;

fn check(kernel: F32Kernel, m: usize, k: usize, n: usize, seed: u64) {
    let mut r = rng(seed);
    let x = uniform(&mut r, m * k, -1.0, 1.0);
    let w = uniform(&mut r, n * k, -1.0, 1.0);
    let b = uniform(&mut r, n, -0.5, 0.5);
    let res = uniform(&mut r, m * n, -2.0, 2.0);
    let (yref, mag) = linear_ref(&x, &w, Some(&b), m, k, n);
    let lin = PackedF32Linear::from_f32(&w, n, k, Some(&b)).unwrap();
    let name = kernel.name();

    let mut out = vec![f32::NAN; m * n];
    lin.forward_with(kernel, &x, m, &mut out, Epilogue::None)
        .unwrap();
    for i in 0..m * n {
        let tol = F32_REL_TOL * mag[i] + F32_ABS_TOL;
        let e = (out[i] as f64 - yref[i]).abs();
        assert!(
            e <= tol,
            "{name} none ({m},{k},{n}) elem {i}: {} vs {} (err {e}, tol {tol})",
            out[i],
            yref[i]
        );
    }

    let mut out = vec![f32::NAN; m * n];
    lin.forward_with(kernel, &x, m, &mut out, Epilogue::Gelu)
        .unwrap();
    for i in 0..m * n {
        let tol = F32_REL_TOL * mag[i] + F32_ABS_TOL + GELU_TOL * (1.0 + yref[i].abs());
        let e = (out[i] as f64 - gelu64(yref[i])).abs();
        assert!(
            e <= tol,
            "{name} gelu ({m},{k},{n}) elem {i}: err {e}, tol {tol}"
        );
    }

    let mut out = vec![f32::NAN; m * n];
    lin.forward_with(kernel, &x, m, &mut out, Epilogue::AddResidual(&res))
        .unwrap();
    for i in 0..m * n {
        let tol = F32_REL_TOL * mag[i] + F32_ABS_TOL * 4.0;
        let e = (out[i] as f64 - (yref[i] + res[i] as f64)).abs();
        assert!(
            e <= tol,
            "{name} residual ({m},{k},{n}) elem {i}: err {e}, tol {tol}"
        );
    }

    let mut out = res.clone();
    lin.forward_with(kernel, &x, m, &mut out, Epilogue::Accumulate)
        .unwrap();
    for i in 0..m * n {
        let tol = F32_REL_TOL * mag[i] + F32_ABS_TOL * 4.0;
        let e = (out[i] as f64 - (yref[i] + res[i] as f64)).abs();
        assert!(
            e <= tol,
            "{name} accumulate ({m},{k},{n}) elem {i}: err {e}, tol {tol}"
        );
    }
}

#[test]
fn every_kernel_matches_f64_reference_on_ragged_shapes() {
    let kernels = F32Kernel::available();
    assert!(kernels.contains(&F32Kernel::Scalar));
    eprintln!("f32 kernels tested: {:?}", kernels);
    for (i, &(m, k, n)) in ragged_shapes().iter().enumerate() {
        for &kernel in &kernels {
            check(kernel, m, k, n, 100 + i as u64);
        }
    }
}

#[test]
fn no_bias_layer_and_default_forward() {
    let (m, k, n) = (9, 40, 21);
    let mut r = rng(7);
    let x = uniform(&mut r, m * k, -1.0, 1.0);
    let w = uniform(&mut r, n * k, -1.0, 1.0);
    let (yref, mag) = linear_ref(&x, &w, None, m, k, n);
    let lin = PackedF32Linear::from_f32(&w, n, k, None).unwrap();
    let mut out = vec![0f32; m * n];
    lin.forward(&x, m, &mut out, Epilogue::None).unwrap();
    for i in 0..m * n {
        assert!((out[i] as f64 - yref[i]).abs() <= F32_REL_TOL * mag[i] + F32_ABS_TOL);
    }
}

#[test]
fn shape_and_value_errors_name_the_operand() {
    let w = vec![0.5f32; 6];
    assert_eq!(
        PackedF32Linear::from_f32(&w, 2, 4, None).unwrap_err(),
        KernelError::Len {
            what: "weight",
            got: 6,
            expected: 8
        }
    );
    assert_eq!(
        PackedF32Linear::from_f32(&w, 2, 3, Some(&[0.0])).unwrap_err(),
        KernelError::Len {
            what: "bias",
            got: 1,
            expected: 2
        }
    );
    let mut bad = w.clone();
    bad[4] = f32::NAN;
    assert_eq!(
        PackedF32Linear::from_f32(&bad, 2, 3, None).unwrap_err(),
        KernelError::NonFinite {
            what: "weight",
            index: 4
        }
    );
    assert!(matches!(
        PackedF32Linear::from_f32(&[], 0, 3, None).unwrap_err(),
        KernelError::Dim {
            what: "out_features",
            ..
        }
    ));
    let lin = PackedF32Linear::from_f32(&w, 2, 3, None).unwrap();
    let mut out = vec![0f32; 4];
    assert_eq!(
        lin.forward(&[1.0; 5], 2, &mut out, Epilogue::None)
            .unwrap_err(),
        KernelError::Len {
            what: "x",
            got: 5,
            expected: 6
        }
    );
    assert_eq!(
        lin.forward(&[1.0; 6], 2, &mut out[..3], Epilogue::None)
            .unwrap_err(),
        KernelError::Len {
            what: "out",
            got: 3,
            expected: 4
        }
    );
    assert_eq!(
        lin.forward(&[1.0; 6], 2, &mut out, Epilogue::AddResidual(&[0.0; 3]))
            .unwrap_err(),
        KernelError::Len {
            what: "residual",
            got: 3,
            expected: 4
        }
    );
}
