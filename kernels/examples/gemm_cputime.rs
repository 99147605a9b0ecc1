//! Single-thread GEMM throughput measured in thread CPU time (`CLOCK_THREAD_CPUTIME_ID`), for
//! machines shared with other busy processes, where wall-clock timings mostly measure the
//! scheduler. Run with `ECHOJEPA_THREADS=1` so that all work happens on the calling thread:
//!
//! `ECHOJEPA_THREADS=1 cargo run --release -p echojepa-kernels --example gemm_cputime`
//!
//! CPU time still includes cache and TLB damage done by the other processes, so it is a lower
//! bound on what an idle core delivers, not a substitute for an idle-machine benchmark.

use echojepa_kernels::{Epilogue, PackedF32Linear, PackedInt8Linear, attention, cpu, pool};

#[cfg(target_os = "linux")]
fn cpu_ms() -> f64 {
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
    }
}

#[cfg(not(target_os = "linux"))]
fn cpu_ms() -> f64 {
    f64::NAN
}

fn median_cpu_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = cpu_ms();
            f();
            cpu_ms() - s
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn main() {
    // The kernels never read the environment; this program does, at its edge.
    if let Err(e) = echojepa_kernels::settings::configure_from_env(None, 0) {
        panic!("{e}");
    }
    println!("{}", cpu::describe());
    if pool::num_threads() != 1 {
        eprintln!("warning: set ECHOJEPA_THREADS=1, otherwise worker threads' time is not counted");
    }
    println!("| encoder | tokens | layer | k | n | int8 CPU ms (GFLOP/s) | f32 CPU ms (GFLOP/s) |");
    println!("|---|---|---|---|---|---|---|");
    let encoders = [
        ("vit_tiny", 192usize, 3usize, 392usize),
        ("vit_small", 384, 6, 392),
        ("vit_base", 768, 12, 392),
        ("vit_tiny", 192, 3, 1568),
        ("vit_small", 384, 6, 1568),
    ];
    let mut totals = vec![];
    for &(name, d, heads, m) in &encoders {
        let (mut t8, mut t32) = (0.0, 0.0);
        for (layer, k, n) in [
            ("qkv", d, 3 * d),
            ("proj", d, d),
            ("fc1", d, 4 * d),
            ("fc2", 4 * d, d),
        ] {
            let x = data(m * k, 1);
            let w: Vec<f32> = data(n * k, 2).iter().map(|v| v * 0.05).collect();
            let mut out = vec![0f32; m * n];
            let l8 = PackedInt8Linear::from_f32(&w, n, k, None).expect("pack");
            let l32 = PackedF32Linear::from_f32(&w, n, k, None).expect("pack");
            let a = median_cpu_ms(5, || {
                l8.forward(&x, m, &mut out, Epilogue::None).expect("i8")
            });
            let b = median_cpu_ms(5, || {
                l32.forward(&x, m, &mut out, Epilogue::None).expect("f32")
            });
            let gf = |ms: f64| 2.0 * (m * k * n) as f64 / ms / 1e6;
            println!(
                "| {name} | {m} | {layer} | {k} | {n} | {a:.2} ({:.1}) | {b:.2} ({:.1}) |",
                gf(a),
                gf(b)
            );
            t8 += a;
            t32 += b;
        }
        let qkv = data(m * 3 * d, 4);
        let mut o = vec![0f32; m * d];
        let at = median_cpu_ms(3, || {
            attention::attention(&qkv, m, heads, d / heads, &mut o).expect("attn")
        });
        totals.push((name, m, t8, t32, at));
    }
    println!(
        "\n| encoder | tokens | 4 GEMMs int8 CPU ms | 4 GEMMs f32 CPU ms | attention CPU ms | 12 blocks int8+attention, CPU ms (one core) |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, m, t8, t32, at) in totals {
        println!(
            "| {name} | {m} | {t8:.2} | {t32:.2} | {at:.2} | {:.0} |",
            12.0 * (t8 + at)
        );
    }
}
