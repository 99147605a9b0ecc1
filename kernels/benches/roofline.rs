//! `cargo bench -p echojepa-kernels --bench roofline`: this machine's peak multiply-add rates with
//! our own GEMM microkernels' instruction mix, and how close the packed linear layers come to
//! them on the encoders' GEMM shapes.
//!
//! The peaks run the inner loop of each microkernel with its operands in L1 (the same loads,
//! broadcasts and arithmetic per step, nothing else), on one thread and then on every kernel
//! thread at once:
//! - f32, AVX2+FMA: the 6×16 tile's step, 6 broadcasts, 2 loads and 12 `vfmadd231ps`
//!   (192 flops);
//! - int8, AVX2, u8 activations (the default): per row 1 broadcast, 2 `vpmaddubsw`,
//!   2 `vpmaddwd`, 2 `vpaddd` against 2 loads of B, for 4 rows (256 multiply-adds);
//! - int8, AVX2, u7 activations (`pairs`, opt-in): two k-groups per step, per row 2 broadcasts,
//!   4 `vpmaddubsw`, 2 `vpaddw`, 2 `vpmaddwd`, 2 `vpaddd` against 4 loads (512 multiply-adds);
//! - f32, AVX-512F: the 12×32 tile's step, 12 broadcasts, 2 loads and 24 `vfmadd231ps`
//!   (768 flops);
//! - int8, AVX-512 VNNI: the 8×32 tile's step, 8 broadcasts and 16 `vpdpbusd` against 2 loads
//!   (1024 multiply-adds);
//! - int8, AMX: the 32×32 block's step, 2 `A` and 2 `B` tile loads (16 rows × 64 bytes each)
//!   and 4 `tdpbusd` (65,536 multiply-adds).
//!
//! A multiply-add counts as 2 operations, as GFLOP/s of a GEMM count `2·m·k·n`. Then the packed
//! int8 and f32 linear layers (`PackedInt8Linear`, `PackedF32Linear`, default settings) run the
//! qkv, proj, fc1 and fc2 shapes of vit_tiny, vit_small and vit_base at 392 and 1568 tokens, and
//! each is reported as a fraction of the all-thread peak of the loop that matches the kernel
//! this CPU selects. AVX-VNNI (256-bit) and NEON are named but not measured here.
//!
//! `--quick` for fewer repetitions, `--json` for one JSON object instead of tables (with
//! `int8_peak_gops` and `f32_peak_gflops`, the all-thread peaks of the selected kernels' loops,
//! null where there is none).

use std::time::Instant;

use echojepa_kernels::{Epilogue, PackedF32Linear, PackedInt8Linear, cpu, pool};

mod support;
use support::{data, median};

/// Loop steps per timed run of a peak loop.
const STEPS: usize = 20_000_000;

/// One peak loop: its name, operations per step, and the loop itself (returns a value that
/// depends on every accumulator, so nothing is optimised away).
struct PeakLoop {
    name: &'static str,
    ops_per_step: f64,
    run: fn(usize) -> f32,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// L1-resident operands: 64 floats / 256 bytes, read at a moving offset so the loads stay in
    /// the loop.
    #[repr(align(64))]
    struct Operands([f32; 64]);

    #[target_feature(enable = "avx2,fma")]
    unsafe fn f32_6x16_steps(steps: usize) -> f32 {
        let ops = Operands(std::array::from_fn(|i| 1.0 + i as f32 * 1e-7));
        let p = std::hint::black_box(ops.0.as_ptr());
        let mut t = [[_mm256_setzero_ps(); 2]; 6];
        for s in 0..steps {
            let o = (s & 3) * 8;
            // SAFETY: o + 31 < 64; AVX2 and FMA are enabled for this function.
            unsafe {
                let b0 = _mm256_loadu_ps(p.add(o));
                let b1 = _mm256_loadu_ps(p.add(o + 8));
                for (r, tr) in t.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*p.add(o + 16 + r));
                    tr[0] = _mm256_fmadd_ps(av, b0, tr[0]);
                    tr[1] = _mm256_fmadd_ps(av, b1, tr[1]);
                }
            }
        }
        let mut acc = _mm256_setzero_ps();
        for tr in t {
            acc = _mm256_add_ps(acc, _mm256_add_ps(tr[0], tr[1]));
        }
        let mut out = [0f32; 8];
        // SAFETY: out holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) };
        out.iter().sum()
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn i8_u8_4x16_steps(steps: usize) -> f32 {
        let ops = Operands(std::array::from_fn(|i| (i % 7) as f32));
        let p = std::hint::black_box(ops.0.as_ptr() as *const u8);
        let ones = _mm256_set1_epi16(1);
        let mut t = [[_mm256_setzero_si256(); 2]; 4];
        for s in 0..steps {
            let o = (s & 3) * 32;
            // SAFETY: o + 79 < 256 bytes; AVX2 is enabled for this function.
            unsafe {
                let b0 = _mm256_loadu_si256(p.add(o) as *const __m256i);
                let b1 = _mm256_loadu_si256(p.add(o + 32) as *const __m256i);
                for (r, tr) in t.iter_mut().enumerate() {
                    let av =
                        _mm256_set1_epi32((p.add(o + 64 + 4 * r) as *const i32).read_unaligned());
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones);
                    tr[0] = _mm256_add_epi32(tr[0], p0);
                    tr[1] = _mm256_add_epi32(tr[1], p1);
                }
            }
        }
        fold(t)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn i8_u7_pairs_4x16_steps(steps: usize) -> f32 {
        let ops = Operands(std::array::from_fn(|i| (i % 5) as f32));
        let p = std::hint::black_box(ops.0.as_ptr() as *const u8);
        let ones = _mm256_set1_epi16(1);
        let mut t = [[_mm256_setzero_si256(); 2]; 4];
        for s in 0..steps {
            let o = (s & 1) * 32;
            // SAFETY: o + 159 < 256 bytes; AVX2 is enabled for this function.
            unsafe {
                let b0 = _mm256_loadu_si256(p.add(o) as *const __m256i);
                let b1 = _mm256_loadu_si256(p.add(o + 32) as *const __m256i);
                let b2 = _mm256_loadu_si256(p.add(o + 64) as *const __m256i);
                let b3 = _mm256_loadu_si256(p.add(o + 96) as *const __m256i);
                for (r, tr) in t.iter_mut().enumerate() {
                    let q = p.add(o + 128 + 8 * r);
                    let a0 = _mm256_set1_epi32((q as *const i32).read_unaligned());
                    let a1 = _mm256_set1_epi32((q.add(4) as *const i32).read_unaligned());
                    let s0 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(a0, b0),
                        _mm256_maddubs_epi16(a1, b2),
                    );
                    let s1 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(a0, b1),
                        _mm256_maddubs_epi16(a1, b3),
                    );
                    tr[0] = _mm256_add_epi32(tr[0], _mm256_madd_epi16(s0, ones));
                    tr[1] = _mm256_add_epi32(tr[1], _mm256_madd_epi16(s1, ones));
                }
            }
        }
        fold(t)
    }

    #[target_feature(enable = "avx2")]
    fn fold(t: [[__m256i; 2]; 4]) -> f32 {
        let mut acc = _mm256_setzero_si256();
        for tr in t {
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(tr[0], tr[1]));
        }
        let mut out = [0i32; 8];
        // SAFETY: out holds 8 i32.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, acc) };
        out.iter().map(|&v| v as f32).sum()
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn f32_12x32_steps(steps: usize) -> f32 {
        let ops = Operands(std::array::from_fn(|i| 1.0 + i as f32 * 1e-7));
        let p = std::hint::black_box(ops.0.as_ptr());
        let mut t = [[_mm512_setzero_ps(); 2]; 12];
        for s in 0..steps {
            let o = (s & 1) * 16;
            // SAFETY: o + 32 + 11 < 64 floats; AVX-512F is enabled for this function.
            unsafe {
                let b0 = _mm512_loadu_ps(p.add(o));
                let b1 = _mm512_loadu_ps(p.add(o + 16));
                for (r, tr) in t.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*p.add(o + 32 + r));
                    tr[0] = _mm512_fmadd_ps(av, b0, tr[0]);
                    tr[1] = _mm512_fmadd_ps(av, b1, tr[1]);
                }
            }
        }
        let mut acc = _mm512_setzero_ps();
        for tr in t {
            acc = _mm512_add_ps(acc, _mm512_add_ps(tr[0], tr[1]));
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn i8_vnni_8x32_steps(steps: usize) -> f32 {
        let ops = Operands(std::array::from_fn(|i| (i % 7) as f32));
        let p = std::hint::black_box(ops.0.as_ptr() as *const u8);
        let mut t = [[_mm512_setzero_si512(); 2]; 8];
        for s in 0..steps {
            let o = (s & 1) * 64;
            // SAFETY: o + 128 + 4 * 7 + 4 <= 256 bytes; AVX-512 VNNI is enabled here.
            unsafe {
                let b0 = _mm512_loadu_si512(p.add(o) as *const __m512i);
                let b1 = _mm512_loadu_si512(p.add(o + 64) as *const __m512i);
                for (r, tr) in t.iter_mut().enumerate() {
                    let av =
                        _mm512_set1_epi32((p.add(o + 128 + 4 * r) as *const i32).read_unaligned());
                    tr[0] = _mm512_dpbusd_epi32(tr[0], av, b0);
                    tr[1] = _mm512_dpbusd_epi32(tr[1], av, b1);
                }
            }
        }
        let mut acc = _mm512_setzero_si512();
        for tr in t {
            acc = _mm512_add_epi32(acc, _mm512_add_epi32(tr[0], tr[1]));
        }
        _mm512_reduce_add_epi32(acc) as f32
    }

    /// Palette 1, all eight tiles 16 rows × 64 bytes (as the kernels configure them).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    /// L1-resident tile operands: 4 KiB (A0, A1, B0, B1 of 1 KiB each).
    #[repr(C, align(64))]
    struct TileOperands([u8; 4096]);

    fn amx_steps(steps: usize) -> f32 {
        use std::arch::asm;
        let mut cfg = TileConfig([0; 64]);
        cfg.0[0] = 1;
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64;
            cfg.0[48 + t] = 16;
        }
        let ops = TileOperands(std::array::from_fn(|i| (i % 5) as u8));
        let p = std::hint::black_box(ops.0.as_ptr());
        let mut out = [0i32; 256];
        // SAFETY: listed only where the kernels' AMX kernel is supported (CPU and OS
        // permission, `loops`); every tile load reads 1 KiB inside `ops`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for _ in 0..steps {
                asm!(
                    "tileloadd tmm4, [{p} + {s} * 1]",
                    "tileloadd tmm6, [{p2} + {s} * 1]",
                    "tdpbusd tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{p3} + {s} * 1]",
                    "tdpbusd tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{p1} + {s} * 1]",
                    "tdpbusd tmm2, tmm5, tmm6",
                    "tdpbusd tmm3, tmm5, tmm7",
                    p = in(reg) p, p1 = in(reg) p.add(1024), p2 = in(reg) p.add(2048),
                    p3 = in(reg) p.add(3072), s = in(reg) 64usize,
                    options(nostack, readonly)
                );
            }
            asm!("tilestored [{o} + {s} * 1], tmm0", o = in(reg) out.as_mut_ptr(), s = in(reg) 64usize, options(nostack));
            asm!("tilerelease", options(nostack, nomem));
        }
        out.iter().map(|&v| v as f32).sum()
    }

    /// One AMX step takes about as long as 8 VNNI steps: run `steps / 8` of them.
    pub fn i8_amx(steps: usize) -> f32 {
        amx_steps(steps / 8)
    }

    fn avx512() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    fn avx512_vnni() -> bool {
        avx512() && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
    }

    pub fn f32_12x32(steps: usize) -> f32 {
        // SAFETY: listed only when AVX-512F is present (`loops`).
        unsafe { f32_12x32_steps(steps) }
    }
    pub fn i8_vnni(steps: usize) -> f32 {
        // SAFETY: listed only when AVX-512F/BW/VNNI are present (`loops`).
        unsafe { i8_vnni_8x32_steps(steps) }
    }

    fn avx2() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    pub fn f32_6x16(steps: usize) -> f32 {
        // SAFETY: the loops are only listed when AVX2 and FMA are present (`loops`).
        unsafe { f32_6x16_steps(steps) }
    }
    pub fn i8_u8(steps: usize) -> f32 {
        // SAFETY: as above.
        unsafe { i8_u8_4x16_steps(steps) }
    }
    pub fn i8_u7(steps: usize) -> f32 {
        // SAFETY: as above.
        unsafe { i8_u7_pairs_4x16_steps(steps) }
    }

    pub fn loops() -> Vec<super::PeakLoop> {
        if !avx2() {
            return Vec::new();
        }
        let mut v = vec![
            super::PeakLoop {
                name: "f32 avx2+fma 6x16",
                ops_per_step: 192.0,
                run: f32_6x16,
            },
            super::PeakLoop {
                name: "int8 avx2 u8 4x16",
                ops_per_step: 512.0,
                run: i8_u8,
            },
            super::PeakLoop {
                name: "int8 avx2 u7 pairs 4x16",
                ops_per_step: 1024.0,
                run: i8_u7,
            },
        ];
        if avx512() {
            v.push(super::PeakLoop {
                name: "f32 avx512 12x32",
                ops_per_step: 768.0,
                run: f32_12x32,
            });
        }
        if avx512_vnni() {
            v.push(super::PeakLoop {
                name: "int8 avx512vnni 8x32",
                ops_per_step: 2048.0,
                run: i8_vnni,
            });
        }
        if echojepa_kernels::Int8Kernel::Amx.is_supported() {
            v.push(super::PeakLoop {
                name: "int8 amx 32x32",
                // 4 tdpbusd of 16·16·64 multiply-adds per AMX step, one AMX step per 8 steps
                ops_per_step: 4.0 * 16.0 * 16.0 * 64.0 * 2.0 / 8.0,
                run: i8_amx,
            });
        }
        v
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub fn loops() -> Vec<super::PeakLoop> {
        Vec::new()
    }
}

/// GOP/s of `l` on `threads` threads at once (each running the whole loop), median of `reps`.
fn peak(l: &PeakLoop, threads: usize, reps: usize) -> f64 {
    let times: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| std::hint::black_box((l.run)(STEPS)));
                }
            });
            t0.elapsed().as_secs_f64()
        })
        .collect();
    l.ops_per_step * STEPS as f64 * threads as f64 / median(times) / 1e9
}

/// GOP/s of the packed int8 and f32 layers on `m × k → n`.
fn layer(m: usize, k: usize, n: usize, reps: usize) -> (f64, f64) {
    let x = data(m * k, 1);
    let w: Vec<f32> = data(n * k, 2).iter().map(|v| v * 0.05).collect();
    let b = data(n, 3);
    let mut out = vec![0f32; m * n];
    let l8 = PackedInt8Linear::from_f32(&w, n, k, Some(&b)).expect("pack int8");
    let l32 = PackedF32Linear::from_f32(&w, n, k, Some(&b)).expect("pack f32");
    let time = |f: &mut dyn FnMut()| {
        f();
        median(
            (0..reps)
                .map(|_| {
                    let t0 = Instant::now();
                    f();
                    t0.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let t8 = time(&mut || l8.forward(&x, m, &mut out, Epilogue::None).expect("int8"));
    let t32 = time(&mut || l32.forward(&x, m, &mut out, Epilogue::None).expect("f32"));
    let ops = 2.0 * (m * k * n) as f64;
    (ops / t8 / 1e9, ops / t32 / 1e9)
}

fn main() {
    // The kernels never read the environment; this program does, at its edge.
    if let Err(e) = echojepa_kernels::settings::configure_from_env(None, 0) {
        panic!("{e}");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let json = std::env::args().any(|a| a == "--json");
    let reps = if quick { 3 } else { 7 };
    let threads = pool::num_threads();
    let int8_kernel = cpu::Int8Kernel::best();
    let f32_kernel = cpu::F32Kernel::best();

    let loops = x86::loops();
    let peaks: Vec<(&str, f64, f64)> = loops
        .iter()
        .map(|l| (l.name, peak(l, 1, reps), peak(l, threads, reps)))
        .collect();
    let peak_of = |prefix: &str| peaks.iter().find(|p| p.0.starts_with(prefix)).map(|p| p.2);
    // the peak of the loop that is the selected kernel's inner step, where there is one
    let f32_peak = match f32_kernel {
        cpu::F32Kernel::Avx2Fma => peak_of("f32 avx2"),
        cpu::F32Kernel::Avx512 => peak_of("f32 avx512"),
        cpu::F32Kernel::Scalar => None,
    };
    let i8_peak = match int8_kernel {
        cpu::Int8Kernel::Avx2 => peak_of("int8 avx2 u8"),
        cpu::Int8Kernel::Avx512Vnni => peak_of("int8 avx512vnni"),
        cpu::Int8Kernel::Amx => peak_of("int8 amx"),
        _ => None,
    };

    let encoders = [
        ("vit_tiny", 192usize),
        ("vit_small", 384),
        ("vit_base", 768),
    ];
    let mut rows = Vec::new();
    for &(name, d) in &encoders {
        for m in [392usize, 1568] {
            if quick && (m == 1568 && d == 768) {
                continue;
            }
            let shapes = [
                ("qkv", d, 3 * d),
                ("proj", d, d),
                ("fc1", d, 4 * d),
                ("fc2", 4 * d, d),
            ];
            // the encoder's GEMM time, layer by layer, and its rate over all four
            let (mut ops, mut t8, mut t32) = (0.0, 0.0, 0.0);
            for (_, k, n) in shapes {
                let (g8, g32) = layer(m, k, n, reps);
                let o = 2.0 * (m * k * n) as f64;
                ops += o;
                t8 += o / g8;
                t32 += o / g32;
            }
            rows.push((name, m, ops / t8, ops / t32));
        }
    }

    if json {
        let opt = |p: Option<f64>| p.map_or("null".to_string(), |p| format!("{p:.2}"));
        let peaks_json: Vec<String> = peaks
            .iter()
            .map(|(n, one, all)| {
                format!("{{\"loop\":\"{n}\",\"one_thread_gops\":{one:.2},\"all_threads_gops\":{all:.2}}}")
            })
            .collect();
        let rows_json: Vec<String> = rows
            .iter()
            .map(|(n, m, g8, g32)| {
                let frac = |g: f64, p: Option<f64>| {
                    p.map_or("null".to_string(), |p| format!("{:.3}", g / p))
                };
                format!(
                    "{{\"encoder\":\"{n}\",\"tokens\":{m},\"int8_gops\":{g8:.2},\"f32_gflops\":{g32:.2},\"int8_of_peak\":{},\"f32_of_peak\":{}}}",
                    frac(*g8, i8_peak),
                    frac(*g32, f32_peak)
                )
            })
            .collect();
        println!(
            "{{\"cpu\":{:?},\"threads\":{threads},\"int8_kernel\":\"{}\",\"f32_kernel\":\"{}\",\"int8_peak_gops\":{},\"f32_peak_gflops\":{},\"peaks\":[{}],\"gemms\":[{}]}}",
            cpu::describe(),
            int8_kernel.name(),
            f32_kernel.name(),
            opt(i8_peak),
            opt(f32_peak),
            peaks_json.join(","),
            rows_json.join(",")
        );
        return;
    }

    println!("# echojepa-kernels roofline");
    println!("{}", cpu::describe());
    println!(
        "kernel threads: {threads}; selected kernels: int8 {}, f32 {}\n",
        int8_kernel.name(),
        f32_kernel.name()
    );
    if peaks.is_empty() {
        println!("no peak loop for this CPU (they are written for x86-64 AVX2 + FMA and AVX-512)");
    }
    println!("Peak of each microkernel's inner loop, operands in L1 (GOP/s; a multiply-add is 2):");
    println!("| loop | 1 thread | {threads} threads |");
    println!("|---|---|---|");
    for (n, one, all) in &peaks {
        println!("| {n} | {one:.1} | {all:.1} |");
    }
    println!(
        "\nThe packed layers on the encoders' GEMMs (qkv, proj, fc1, fc2 together; default settings):"
    );
    println!("| encoder | tokens | int8 GOP/s | of int8 peak | f32 GFLOP/s | of f32 peak |");
    println!("|---|---|---|---|---|---|");
    for (n, m, g8, g32) in &rows {
        let frac = |g: f64, p: Option<f64>| {
            p.map_or("not measured".to_string(), |p| {
                format!("{:.0} %", 100.0 * g / p)
            })
        };
        println!(
            "| {n} | {m} | {g8:.1} | {} | {g32:.1} | {} |",
            frac(*g8, i8_peak),
            frac(*g32, f32_peak)
        );
    }
    if i8_peak.is_none() || f32_peak.is_none() {
        println!(
            "\n(\"not measured\": the selected kernel's instruction set has no peak loop here yet)"
        );
    }
}
