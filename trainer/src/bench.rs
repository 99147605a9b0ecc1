//! `trainer bench-pretrain`: pretraining throughput (clips/s) of the real training step —
//! target encoder, two mask configs through encoder and predictor, backward, AdamW, EMA — on
//! in-memory random clips, so the number measures the model and optimiser, not the decoder.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::config::parse_str;
use crate::config::pretrain::PretrainConfig;
use crate::device::{DeviceSpec, dtype_name};
use crate::pretrain::Run;

/// Measure pretraining throughput of one model on random clips (no data needed).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Encoder preset (vit_tiny, vit_small, vit_base, vit_large, ...).
    #[arg(long, default_value = "vit_tiny")]
    pub model: String,
    /// Frames per clip.
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// Spatial crop (pixels, square).
    #[arg(long, default_value_t = 112)]
    pub crop: usize,
    /// Clips per training step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed steps (after `--warmup` untimed ones).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first (compilation, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Predictor depth (the released predictor has 12 layers, width 384, 12 heads).
    #[arg(long, default_value_t = 12)]
    pub pred_depth: usize,
    /// `bfloat16` (used on CUDA) or `float32`.
    #[arg(long, default_value = "bfloat16")]
    pub dtype: String,
    /// Device: `cpu` or `cuda:N`.
    #[arg(long, num_args = 1.., default_value = "cpu")]
    pub devices: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub device: String,
    pub dtype: &'static str,
    pub frames: usize,
    pub crop: usize,
    pub batch: usize,
    pub steps: usize,
    pub median_step_s: f64,
    pub min_step_s: f64,
    pub clips_per_s: f64,
    pub threads: usize,
}

/// A pretraining config with the reference masks and optimiser for a benchmark.
pub fn bench_config(a: &Args) -> Result<PretrainConfig> {
    let yaml = format!(
        "folder: /nonexistent\n\
         data: {{datasets: [unused.csv], batch_size: {b}, crop_size: {c}, dataset_fpcs: [{f}], frame_step: 2}}\n\
         mask:\n\
         - {{aspect_ratio: [0.75, 1.5], num_blocks: 8, spatial_scale: [0.15, 0.15]}}\n\
         - {{aspect_ratio: [0.75, 1.5], num_blocks: 2, spatial_scale: [0.7, 0.7]}}\n\
         meta: {{dtype: {dt}, seed: 0}}\n\
         model: {{model_name: {m}, pred_depth: {pd}, pred_embed_dim: 384, pred_num_heads: 12}}\n\
         optimization: {{ema: [0.99925, 0.99925], epochs: 1, ipe: 1000, lr: 1.75e-4, start_lr: 3.33e-5, warmup: 0.1, weight_decay: 0.04}}\n",
        b = a.batch,
        c = a.crop,
        f = a.frames,
        dt = a.dtype,
        m = a.model,
        pd = a.pred_depth,
    );
    let cfg = parse_str::<PretrainConfig>(&yaml, Path::new("bench"))?.config;
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(a: Args, out: &mut dyn Write) -> Result<()> {
    let dev = DeviceSpec::from_list(&a.devices)?;
    let cfg = bench_config(&a)?;
    let mut run = Run::new(
        cfg,
        std::env::temp_dir(),
        dev,
        1000,
        false,
        std::rc::Rc::new(crate::dist::SingleProcess),
    )?;
    let clips = Tensor::randn(
        0f32,
        1.0,
        (a.batch, 3, a.frames, a.crop, a.crop),
        &Device::Cpu,
    )?;
    let mut times = Vec::with_capacity(a.steps);
    for i in 0..a.warmup + a.steps {
        let t0 = Instant::now();
        let row = run.step(&clips)?;
        run.device.synchronize()?;
        let dt = t0.elapsed().as_secs_f64();
        tracing::info!(step = i, loss = row.loss, seconds = dt, "bench step");
        if i >= a.warmup {
            times.push(dt);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let r = BenchResult {
        model: a.model.clone(),
        device: dev.label(),
        dtype: dtype_name(run.dtype),
        frames: a.frames,
        crop: a.crop,
        batch: a.batch,
        steps: a.steps,
        median_step_s: median,
        min_step_s: times[0],
        clips_per_s: a.batch as f64 / median,
        threads: candle_core::utils::get_num_threads(),
    };
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
    } else {
        writeln!(
            out,
            "{} {}x{}x{} batch {} on {} ({}, {} threads): median step {:.3} s (min {:.3}), {:.2} clips/s",
            r.model,
            r.frames,
            r.crop,
            r.crop,
            r.batch,
            r.device,
            r.dtype,
            r.threads,
            r.median_step_s,
            r.min_step_s,
            r.clips_per_s
        )?;
    }
    Ok(())
}
