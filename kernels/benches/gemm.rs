//! `cargo bench -p echojepa-kernels --bench gemm`: GFLOP/s of the int8 and f32 packed linear
//! layers next to candle's f32 matmul on the encoder's GEMM shapes (m = 392 or 1568 tokens;
//! qkv, proj, fc1, fc2 of vit_tiny/small/base), the attention core, and the per-encoder
//! estimate (12 blocks of GEMMs + attention, each layer at its faster precision). Medians of
//! repeated runs, all in one process. Pass `--quick` for fewer repetitions.

use std::time::Instant;

use candle_core::{Device, Tensor};
use echojepa_kernels::{Epilogue, PackedF32Linear, PackedInt8Linear, attention, cpu};

mod support;
use support::{data, median};

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

struct Row {
    i8_ms: f64,
    f32_ms: f64,
}

fn bench_linear(m: usize, k: usize, n: usize, reps: usize, label: &str) -> Row {
    let x = data(m * k, 1);
    let w: Vec<f32> = data(n * k, 2).iter().map(|v| v * 0.05).collect();
    let b = data(n, 3);
    let mut out = vec![0f32; m * n];
    let l8 = PackedInt8Linear::from_f32(&w, n, k, Some(&b)).expect("pack int8");
    let l32 = PackedF32Linear::from_f32(&w, n, k, Some(&b)).expect("pack f32");
    let i8_ms = median_ms(reps, || {
        l8.forward(&x, m, &mut out, Epilogue::None).expect("int8")
    });
    let f32_ms = median_ms(reps, || {
        l32.forward(&x, m, &mut out, Epilogue::None).expect("f32")
    });
    let dev = Device::Cpu;
    let xt = Tensor::from_vec(x.clone(), (m, k), &dev).expect("tensor");
    let wt = Tensor::from_vec(w.clone(), (n, k), &dev).expect("tensor");
    let bt = Tensor::from_vec(b.clone(), n, &dev).expect("tensor");
    let candle_ms = median_ms(reps, || {
        let y = xt.matmul(&wt.t().expect("t")).expect("matmul");
        let y = y.broadcast_add(&bt).expect("bias");
        std::hint::black_box(y);
    });
    let gf = |ms: f64| 2.0 * (m * k * n) as f64 / ms / 1e6;
    println!(
        "| {label:12} | {m:5} | {k:5} | {n:5} | {:7.3} ({:6.1}) | {:7.3} ({:6.1}) | {:7.3} ({:6.1}) | {:5.2} | {:5.2} |",
        i8_ms,
        gf(i8_ms),
        f32_ms,
        gf(f32_ms),
        candle_ms,
        gf(candle_ms),
        candle_ms / i8_ms,
        candle_ms / f32_ms,
    );
    Row { i8_ms, f32_ms }
}

fn main() {
    // The kernels never read the environment; this program does, at its edge.
    if let Err(e) = echojepa_kernels::settings::configure_from_env(None, 0) {
        panic!("{e}");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 5 } else { 21 };
    println!("# echojepa-kernels GEMM benchmark");
    println!("{}", cpu::describe());
    println!(
        "candle threads: {}\n",
        candle_core::utils::get_num_threads()
    );
    println!("time in ms (GFLOP/s); speed-up = candle time / ours");
    println!(
        "| layer        |     m |     k |     n | int8 ms (GFLOP/s) | f32 ms (GFLOP/s)  | candle f32 ms (GFLOP/s) | ×int8 | ×f32 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let encoders = [
        ("vit_tiny", 192usize, 3usize, 392usize),
        ("vit_small", 384, 6, 392),
        ("vit_base", 768, 12, 392),
        ("vit_tiny", 192, 3, 1568),
        ("vit_small", 384, 6, 1568),
    ];
    let mut estimates = vec![];
    for &(name, d, heads, m) in &encoders {
        let qkv = bench_linear(m, d, 3 * d, reps, &format!("{name} qkv"));
        let proj = bench_linear(m, d, d, reps, &format!("{name} proj"));
        let fc1 = bench_linear(m, d, 4 * d, reps, &format!("{name} fc1"));
        let fc2 = bench_linear(m, 4 * d, d, reps, &format!("{name} fc2"));
        let qkv_buf = data(m * 3 * d, 4);
        let mut out = vec![0f32; m * d];
        let attn_ms = median_ms(reps.min(11), || {
            attention::attention(&qkv_buf, m, heads, d / heads, &mut out).expect("attention")
        });
        let layers = [&qkv, &proj, &fc1, &fc2];
        let f32_sum: f64 = layers.iter().map(|r| r.f32_ms).sum();
        let best_sum: f64 = layers.iter().map(|r| r.i8_ms.min(r.f32_ms)).sum();
        let i8_sum: f64 = layers.iter().map(|r| r.i8_ms).sum();
        estimates.push((
            name,
            m,
            12.0 * (f32_sum + attn_ms),
            12.0 * (i8_sum + attn_ms),
            12.0 * (best_sum + attn_ms),
            12.0 * attn_ms,
        ));
    }
    println!(
        "\nPer-encoder estimate (12 blocks × (4 GEMMs + attention core); no patch embed, norms, RoPE):"
    );
    println!(
        "| encoder | tokens | all f32 ms | all int8 GEMMs ms | best per layer ms | of which attention ms |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, m, f, i, b, a) in estimates {
        println!("| {name} | {m} | {f:.1} | {i:.1} | {b:.1} | {a:.1} |");
    }
}
