//! `quantize bench`: int8 vs f32 speed of every linear-layer shape of the ViT encoders
//! (vit_tiny, vit_small, vit_base widths) at the token counts of 16×112² and 16×224² clips, in
//! one run: the packed int8 and f32 kernels the bundle runs on, and candle's f32 matmul and Q8_0
//! `QMatMul` beside them. Medians of several repetitions; ratios in the same table.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use echojepa::config::EncoderConfig;
use echojepa_kernels::{Epilogue, PackedF32Linear, PackedInt8Linear};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Encoder presets whose widths to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "vit_tiny,vit_small,vit_base"
    )]
    presets: Vec<String>,
    /// Token counts (392 = 16×112², 1568 = 16×224²).
    #[arg(long, value_delimiter = ',', default_value = "392,1568")]
    tokens: Vec<usize>,
    /// Timed repetitions per measurement (median reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Skip candle's matmuls (faster run).
    #[arg(long)]
    no_candle: bool,
    /// Print JSON instead of markdown.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    preset: String,
    layer: String,
    m: usize,
    k: usize,
    n: usize,
    f32_kernel_ms: f64,
    int8_kernel_ms: f64,
    candle_f32_ms: Option<f64>,
    candle_q8_0_ms: Option<f64>,
    rel_error_int8: f64,
}

fn median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        v.push(s.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

/// Deterministic pseudo-random values in [-1, 1) (xorshift), scaled.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
        })
        .collect()
}

pub fn run(a: Args, out: &mut impl Write) -> Result<()> {
    let mut shapes = Vec::new();
    for p in &a.presets {
        let c = EncoderConfig::preset(p)?;
        let (d, h) = (c.embed_dim, c.mlp_hidden);
        let patch = c.in_chans * c.tubelet_size * c.patch_size * c.patch_size;
        for &m in &a.tokens {
            for (layer, k, n) in [
                ("patch_embed", patch, d),
                ("qkv", d, 3 * d),
                ("proj", d, d),
                ("fc1", d, h),
                ("fc2", h, d),
            ] {
                shapes.push((p.clone(), layer, m, k, n));
            }
        }
    }
    let pb = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(shapes.len() as u64)
    };
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message("layers");
    let mut rows = Vec::new();
    for (i, (preset, layer, m, k, n)) in shapes.into_iter().enumerate() {
        let w = values(n * k, 2 * i as u64 + 1, 0.05);
        let b = values(n, 7, 0.01);
        let x = values(m * k, 2 * i as u64 + 2, 1.0);
        let f = PackedF32Linear::from_f32(&w, n, k, Some(&b))?;
        let q = PackedInt8Linear::from_f32(&w, n, k, Some(&b))?;
        let mut yf = vec![0f32; m * n];
        let mut yq = vec![0f32; m * n];
        let f32_ms = median(a.reps, || Ok(f.forward(&x, m, &mut yf, Epilogue::None)?))?;
        let i8_ms = median(a.reps, || Ok(q.forward(&x, m, &mut yq, Epilogue::None)?))?;
        let err = crate::calibrate::rel_error(&yq, &yf);
        let (cf, cq) = if a.no_candle {
            (None, None)
        } else {
            let dev = Device::Cpu;
            let wt = Tensor::from_slice(&w, (n, k), &dev)?;
            let xt = Tensor::from_slice(&x, (m, k), &dev)?;
            let wtt = wt.t()?;
            let cf = median(a.reps, || Ok(xt.matmul(&wtt).map(|_| ())?))?;
            let qm = QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q8_0)?)?;
            let cq = median(a.reps, || Ok(qm.forward(&xt).map(|_| ())?))?;
            (Some(cf), Some(cq))
        };
        rows.push(Row {
            preset,
            layer: layer.to_string(),
            m,
            k,
            n,
            f32_kernel_ms: f32_ms,
            int8_kernel_ms: i8_ms,
            candle_f32_ms: cf,
            candle_q8_0_ms: cq,
            rel_error_int8: err,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    let machine = echojepa_kernels::cpu::describe();
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"machine": machine, "reps": a.reps, "rows": rows})
        )?;
        return Ok(());
    }
    writeln!(out, "Machine: {machine}; median of {} runs.\n", a.reps)?;
    writeln!(
        out,
        "| preset | layer | m | k | n | f32 kernel ms | int8 kernel ms | int8/f32 | candle f32 ms | candle Q8_0 ms | Q8_0/f32 (candle) | int8 rel. err |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in &rows {
        let o = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{x:.2}"));
        let cr = match (r.candle_q8_0_ms, r.candle_f32_ms) {
            (Some(q), Some(f)) => format!("{:.2}", q / f),
            _ => "–".into(),
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {:.4} |",
            r.preset,
            r.layer,
            r.m,
            r.k,
            r.n,
            r.f32_kernel_ms,
            r.int8_kernel_ms,
            r.int8_kernel_ms / r.f32_kernel_ms,
            o(r.candle_f32_ms),
            o(r.candle_q8_0_ms),
            cr,
            r.rel_error_int8
        )?;
    }
    Ok(())
}
