//! f32 encoder throughput on CPU: per-clip time of a preset encoder (random weights) on one
//! 16-frame clip, median of several runs after a warm-up.
//!
//! `cargo bench -p echojepa --bench encoder [-- vit_small 112 224 --reps 5]`

use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use echojepa::EncoderConfig;
use echojepa::encoder::{VisionTransformer, random_video};

fn main() -> anyhow::Result<()> {
    let mut models = Vec::new();
    let mut sizes = Vec::new();
    let mut reps = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--reps" => reps = args.next().and_then(|r| r.parse().ok()).unwrap_or(reps),
            s if s.starts_with("vit_") => models.push(s.to_string()),
            s => {
                if let Ok(n) = s.parse::<usize>() {
                    sizes.push(n)
                }
            }
        }
    }
    if models.is_empty() {
        models.push("vit_small".into());
    }
    if sizes.is_empty() {
        sizes = vec![112, 224];
    }
    let dev = Device::Cpu;
    println!(
        "threads: {}  (candle CPU backend, f32, batch 1, 16 frames)",
        candle_core::utils::get_num_threads()
    );
    println!(
        "{:<12} {:>6} {:>7} {:>12} {:>12}",
        "model", "input", "tokens", "median ms", "min ms"
    );
    for name in &models {
        let cfg = EncoderConfig::preset(name)?;
        // random init through a VarMap, then plain tensors: variables would switch the model
        // to its differentiable (unfused) training path
        let vm = VarMap::new();
        VisionTransformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let weights = echojepa::checkpoint::varmap_tensors(&vm)?;
        let enc =
            VisionTransformer::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &dev))?;
        for &s in &sizes {
            let video = random_video(1, 16, s, s, &dev)?;
            let tokens = 8 * (s / 16) * (s / 16);
            enc.forward(&video)?; // warm-up
            let mut times = Vec::with_capacity(reps);
            for _ in 0..reps {
                let t0 = Instant::now();
                let out = enc.forward(&video)?;
                out.sum_all()?.to_scalar::<f32>()?;
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{:<12} {:>6} {:>7} {:>12.1} {:>12.1}",
                name,
                format!("{s}²"),
                tokens,
                times[times.len() / 2],
                times[0]
            );
        }
    }
    Ok(())
}
