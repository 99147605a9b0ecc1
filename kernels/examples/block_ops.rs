//! Time of each operation of one int8 ViT block at 392 tokens (a 16×112² clip), minimum and
//! median of 200 runs: thread CPU time with `ECHOJEPA_THREADS=1`, wall time otherwise. It
//! shows which operation a kernel change moves, where the `bench_encoder` example only sees the sum:
//!
//! `ECHOJEPA_THREADS=1 ECHOJEPA_INT8_ACTIVATIONS=u7 ECHOJEPA_INT8_ATTENTION=u7 \
//!  cargo run --release -p echojepa-kernels --example block_ops -- 384`
//!
//! The argument is the embedding width (192, 384, 768: vit_tiny, vit_small, vit_base; heads of
//! 64). Weights are roughly Gaussian, activations uniform.
use echojepa_kernels::rope::{RopeTables, apply_rope_qk};
use echojepa_kernels::{ActivationRange, Epilogue, PackedInt8Linear, attention, norm, pool};

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

/// Milliseconds on a clock that only moves forward: this thread's CPU time when the kernels run
/// on the calling thread alone (Linux), wall time otherwise.
fn clock_ms() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    #[cfg(target_os = "linux")]
    if pool::num_threads() == 1 {
        // SAFETY: clock_gettime writes into the timespec we pass.
        unsafe {
            let mut ts: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
            return ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6;
        }
    }
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
        * 1e3
}

fn main() {
    // The kernels never read the environment; this program does, at its edge.
    if let Err(e) = echojepa_kernels::settings::configure_from_env(None, 0) {
        panic!("{e}");
    }
    let d: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(384);
    let heads = d / 64;
    let m = 392;
    let lin = |n: usize, k: usize, s: u32| {
        // Roughly Gaussian weights (sum of four uniforms), like trained or initialised layers.
        let u: Vec<Vec<f32>> = (0..4).map(|i| data(n * k, s * 10 + i)).collect();
        let w: Vec<f32> = (0..n * k)
            .map(|j| 0.02 * (u[0][j] + u[1][j] + u[2][j] + u[3][j]))
            .collect();
        PackedInt8Linear::from_f32(&w, n, k, Some(&data(n, s + 1))).unwrap()
    };
    let (qkv, proj, fc1, fc2) = (
        lin(3 * d, d, 2),
        lin(d, d, 4),
        lin(4 * d, d, 6),
        lin(d, 4 * d, 8),
    );
    let g = vec![1f32; d];
    let b = vec![0f32; d];
    let mut x = data(m * d, 1);
    let mut h = vec![0f32; m * d];
    let mut q = vec![0f32; m * 3 * d];
    let mut att = vec![0f32; m * d];
    let mut mid = vec![0f32; m * 4 * d];
    let rope = RopeTables::grid(8, 7, 7, 64).unwrap();
    let reps = 200;
    let names = ["ln1", "qkv", "rope", "attn", "proj", "ln2", "fc1", "fc2"];
    let mut t = vec![vec![]; names.len()];
    for _ in 0..reps {
        let mut k = 0;
        let mut step = |f: &mut dyn FnMut()| {
            let s = clock_ms();
            f();
            t[k].push(clock_ms() - s);
            k += 1;
        };
        step(&mut || norm::layer_norm(&x, m, d, &g, &b, 1e-6, &mut h).unwrap());
        step(&mut || qkv.forward(&h, m, &mut q, Epilogue::None).unwrap());
        step(&mut || apply_rope_qk(&mut q, m, heads, 64, &rope).unwrap());
        step(&mut || match ActivationRange::attention_configured() {
            Some(r) => attention::attention_int8(&q, m, heads, 64, r, &mut att).unwrap(),
            None => attention::attention(&q, m, heads, 64, &mut att).unwrap(),
        });
        step(&mut || proj.forward(&att, m, &mut x, Epilogue::Accumulate).unwrap());
        step(&mut || norm::layer_norm(&x, m, d, &g, &b, 1e-6, &mut h).unwrap());
        step(&mut || fc1.forward(&h, m, &mut mid, Epilogue::Gelu).unwrap());
        step(&mut || fc2.forward(&mid, m, &mut x, Epilogue::Accumulate).unwrap());
        for v in x.iter_mut() {
            *v *= 0.5;
        }
    }
    let mut tot_min = 0.0;
    let mut tot_med = 0.0;
    print!("threads {} d {d}:", pool::num_threads());
    for (n, mut v) in names.iter().zip(t) {
        v.sort_by(|a, b| a.total_cmp(b));
        tot_min += v[0];
        tot_med += v[v.len() / 2];
        print!(" {n} {:.3}/{:.3}", v[0], v[v.len() / 2]);
    }
    println!(" | total min {tot_min:.2} med {tot_med:.2}");
}
