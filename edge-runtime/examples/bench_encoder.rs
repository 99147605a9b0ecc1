//! The Rust side of the peer benchmark (`bench/peer_bench.py`): times the runtime's own encoder
//! (the packed-kernel [`QuantizedEncoder`] a bundle runs on) on given f32 weights and one input
//! clip, in f32 and in int8, and writes each variant's tokens so another program can compare
//! them. An example target, not a subcommand, so the cart's binary does not carry it:
//!
//!   cargo run --release -p edge-runtime --example bench_encoder -- --weights W --input I
//!
//! Kernel settings come from the `ECHOJEPA_*` variables (`edge-runtime --help` lists them);
//! `--threads` overrides `ECHOJEPA_THREADS`.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use echojepa::bundle::Precision;
use echojepa::config::EncoderConfig;
use echojepa::quantized::encoder::{QuantizedEncoder, TensorSource, flatten_patch};
use echojepa_kernels::ActivationRange;
use edge_runtime::stats::percentiles;

use clap::Parser;

/// Times the edge runtime's encoder alone (f32 and int8 variants) on given f32 weights and one
/// clip, and writes its tokens: what `bench/peer_bench.py` compares with ONNX Runtime.
///
/// Example: cargo run --release -p edge-runtime --example bench_encoder -- --weights bench/out/vit_small_112.weights.safetensors
///            --input bench/out/vit_small_112.input.safetensors --reps 10
#[derive(Debug, Clone, Parser)]
#[command(name = "bench_encoder", verbatim_doc_comment)]
struct Args {
    /// f32 encoder weights (safetensors, reference tensor names: `patch_embed.proj.weight`,
    /// `blocks.{i}.attn.qkv.weight`, ...) with `embed_dim`, `depth`, `num_heads` (and optionally
    /// `mlp_ratio`, `patch_size`, `tubelet_size`) in the file's metadata.
    #[arg(long)]
    weights: PathBuf,
    /// Input clip: safetensors with `video` `[1, 3, T, H, W]` f32 (already normalised).
    #[arg(long)]
    input: PathBuf,
    /// Timed repetitions per variant, after one untimed warm-up run.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Variants to time, comma-separated: f32 (every linear f32), int8 (block linears int8,
    /// patch embedding f32, as bundles store them), int8-u7 (the same with 7-bit activations:
    /// ECHOJEPA_INT8_ACTIVATIONS=u7 at run time), int8-attn / int8-u7-attn (also attention's
    /// two products in int8: ECHOJEPA_INT8_ATTENTION=u8 / u7).
    #[arg(long, default_value = "f32,int8,int8-u7,int8-u7-attn")]
    precision: String,
    /// Write each variant's tokens to PREFIX.<label>.safetensors (`tokens` `[1, N, D]`).
    #[arg(long)]
    output_prefix: Option<PathBuf>,
    /// Kernel threads [default: ECHOJEPA_THREADS, else all CPUs].
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON line per variant: label, median_ms, times_ms, tokens, threads, output.
    #[arg(long)]
    json: bool,
    /// Let another program interleave its own timings with ours: after loading and one
    /// warm-up run per variant print `{"ready": [labels]}`, then for every line read on stdin
    /// time one run of each variant and print `{"round": i, "times_ms": {label: ms}}`; at the
    /// end of stdin print the usual summary (`--reps` is ignored). `bench/peer_bench.py` uses
    /// this so that ONNX Runtime and the edge runtime take turns on the same machine.
    #[arg(long)]
    interleave: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(
        args,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    ) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a safetensors file once: its tensors (on the CPU) and its `__metadata__` map.
fn read_safetensors(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .with_context(|| format!("{}: cannot load its tensors", path.display()))?;
    Ok((tensors, header.metadata().clone().unwrap_or_default()))
}

/// Encoder architecture from the weights file's metadata (`embed_dim`, `depth`, `num_heads`,
/// optional `mlp_ratio`, `patch_size`, `tubelet_size`).
fn config_from_metadata(path: &Path, meta: &HashMap<String, String>) -> Result<EncoderConfig> {
    let get = |key: &str| -> Result<Option<f64>> {
        meta.get(key)
            .map(|s| {
                s.parse::<f64>().with_context(|| {
                    format!(
                        "{}: metadata `{key}` = {s:?} is not a number",
                        path.display()
                    )
                })
            })
            .transpose()
    };
    let need = |key: &str| -> Result<usize> {
        get(key)?.map(|v| v as usize).with_context(|| {
            format!(
                "{}: metadata `{key}` is missing (needed: embed_dim, depth, num_heads)",
                path.display()
            )
        })
    };
    let mut cfg = EncoderConfig::custom(
        need("embed_dim")?,
        need("depth")?,
        need("num_heads")?,
        get("mlp_ratio")?.unwrap_or(4.0),
    );
    if let Some(p) = get("patch_size")? {
        cfg.patch_size = p as usize;
    }
    if let Some(t) = get("tubelet_size")? {
        cfg.tubelet_size = t as usize;
    }
    Ok(cfg)
}

/// One timed variant.
struct Variant {
    label: &'static str,
    /// Precision of the block linears (the patch embedding stays f32, as bundles keep it).
    blocks: Precision,
    /// Activation range of the int8 linears.
    activations: ActivationRange,
    /// Attention in int8 (activation range) or f32 (`None`).
    attention: Option<ActivationRange>,
}

/// One variant's encoder, its latest tokens and its timed runs.
struct Run {
    label: &'static str,
    enc: QuantizedEncoder,
    tokens: Vec<f32>,
    times: Vec<f32>,
}

impl Run {
    /// One timed forward pass; returns (and records) its milliseconds.
    fn time_once(&mut self, clip: &[f32], shape: (usize, usize, usize)) -> Result<f32> {
        let t0 = Instant::now();
        self.tokens = self.enc.forward_clip(clip, shape)?;
        let ms = t0.elapsed().as_secs_f32() * 1e3;
        self.times.push(ms);
        Ok(ms)
    }
}

/// `rounds` is read only with `--interleave` (one line per round).
fn run(args: Args, rounds: &mut impl BufRead, out: &mut impl Write) -> Result<ExitCode> {
    echojepa_kernels::settings::configure_from_env(args.threads, 0).context("kernel settings")?;
    let (tensors, meta) = read_safetensors(&args.weights)?;
    let cfg = config_from_metadata(&args.weights, &meta)?;
    let tensors = flatten_patch(&cfg, &tensors);
    let (clip, shape) = read_clip(&args.input, &cfg)?;
    let variants = parse_variants(&args.precision)?;
    let origin = args.weights.display().to_string();
    let mut runs = variants
        .into_iter()
        .map(|v| build_run(&cfg, &tensors, &origin, v, &clip, shape))
        .collect::<Result<Vec<_>>>()?;
    if args.interleave {
        interleave(&mut runs, &clip, shape, rounds, out)?;
    } else {
        for r in &mut runs {
            for _ in 0..args.reps {
                r.time_once(&clip, shape)?;
            }
        }
    }
    for r in runs {
        report(&r, &cfg, &args, out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The input clip as flat f32 and its `(T, H, W)`.
fn read_clip(path: &Path, cfg: &EncoderConfig) -> Result<(Vec<f32>, (usize, usize, usize))> {
    let (inputs, _) = read_safetensors(path)?;
    let video = inputs.get("video").with_context(|| {
        format!(
            "{}: no tensor `video` (expected [1, 3, T, H, W] f32)",
            path.display()
        )
    })?;
    let dims = video.dims().to_vec();
    if dims.len() != 5 || dims[0] != 1 || dims[1] != cfg.in_chans {
        bail!(
            "{}: `video` is {dims:?}, expected [1, {}, T, H, W]",
            path.display(),
            cfg.in_chans
        );
    }
    let clip = video
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((clip, (dims[2], dims[3], dims[4])))
}

/// `--precision`'s comma-separated list.
fn parse_variants(list: &str) -> Result<Vec<Variant>> {
    list.split(',')
        .map(str::trim)
        .map(|p| {
            let (label, blocks, activations, attention) = match p {
                "f32" => ("edge_f32", Precision::F32, ActivationRange::U8, None),
                "int8" => ("edge_int8", Precision::Q8_0, ActivationRange::U8, None),
                "int8-u7" => ("edge_int8_u7", Precision::Q8_0, ActivationRange::U7, None),
                "int8-u7-attn" => (
                    "edge_int8_u7_attn",
                    Precision::Q8_0,
                    ActivationRange::U7,
                    Some(ActivationRange::U7),
                ),
                "int8-attn" => (
                    "edge_int8_attn",
                    Precision::Q8_0,
                    ActivationRange::U8,
                    Some(ActivationRange::U8),
                ),
                other => bail!(
                    "--precision: unknown `{other}` (use f32, int8, int8-u7, int8-attn, \
                     int8-u7-attn, comma-separated)"
                ),
            };
            Ok(Variant {
                label,
                blocks,
                activations,
                attention,
            })
        })
        .collect()
}

/// Builds one variant's encoder and runs it once untimed (packing, RoPE tables).
fn build_run(
    cfg: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
    origin: &str,
    v: Variant,
    clip: &[f32],
    shape: (usize, usize, usize),
) -> Result<Run> {
    let precision: HashMap<String, Precision> = QuantizedEncoder::linear_shapes(cfg)
        .into_iter()
        .filter(|(name, _)| name != "patch_embed.proj")
        .map(|(name, _)| (name, v.blocks))
        .collect();
    let src = TensorSource {
        tensors,
        origin,
        precision: &precision,
    };
    let enc = QuantizedEncoder::load(cfg, &src)
        .with_context(|| format!("cannot build the {} encoder from {origin}", v.label))?
        .with_int8_activations(v.activations)
        .with_int8_attention(v.attention);
    let tokens = enc.forward_clip(clip, shape)?;
    Ok(Run {
        label: v.label,
        enc,
        tokens,
        times: Vec::new(),
    })
}

/// One line in, one timed run of every variant out, until the input ends: the caller times its
/// own engines between the lines, so all of them share the machine's moods.
fn interleave(
    runs: &mut [Run],
    clip: &[f32],
    shape: (usize, usize, usize),
    rounds: &mut impl BufRead,
    out: &mut impl Write,
) -> Result<()> {
    let labels: Vec<_> = runs.iter().map(|r| r.label).collect();
    writeln!(out, "{}", serde_json::json!({ "ready": labels }))?;
    out.flush()?;
    let mut line = String::new();
    let mut round = 0usize;
    while rounds
        .read_line(&mut line)
        .context("cannot read the next round from stdin")?
        > 0
    {
        line.clear();
        let mut times = serde_json::Map::new();
        for r in runs.iter_mut() {
            let ms = r.time_once(clip, shape)?;
            times.insert(r.label.to_string(), ms.into());
        }
        writeln!(
            out,
            "{}",
            serde_json::json!({ "round": round, "times_ms": times })
        )?;
        out.flush()?;
        round += 1;
    }
    Ok(())
}

/// One variant's summary line (text or JSON), after writing its tokens if asked.
fn report(r: &Run, cfg: &EncoderConfig, args: &Args, out: &mut impl Write) -> Result<()> {
    let n = r.tokens.len() / cfg.embed_dim;
    let output = args
        .output_prefix
        .as_ref()
        .map(|prefix| -> Result<PathBuf> {
            let path = PathBuf::from(format!("{}.{}.safetensors", prefix.display(), r.label));
            let t = Tensor::from_vec(r.tokens.clone(), (1, n, cfg.embed_dim), &Device::Cpu)?;
            candle_core::safetensors::save(&HashMap::from([("tokens", t)]), &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        })
        .transpose()?;
    let med = percentiles(&r.times).map_or(f32::NAN, |p| p.p50);
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "label": r.label,
                "median_ms": med,
                "times_ms": r.times,
                "tokens": n,
                "threads": echojepa_kernels::pool::num_threads(),
                "output": output.map(|p| p.display().to_string()),
            })
        )?;
    } else {
        writeln!(
            out,
            "{:<12} {n} tokens × {}: median {med:.1} ms over {} runs ({} threads)",
            r.label,
            cfg.embed_dim,
            r.times.len(),
            echojepa_kernels::pool::num_threads()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_name_the_architecture() {
        let p = Path::new("w.safetensors");
        let mut m = HashMap::from([
            ("embed_dim".to_string(), "64".to_string()),
            ("depth".to_string(), "2".to_string()),
        ]);
        let err = config_from_metadata(p, &m).unwrap_err().to_string();
        assert!(
            err.contains("num_heads") && err.contains("w.safetensors"),
            "{err}"
        );
        m.insert("num_heads".into(), "four".into());
        let err = config_from_metadata(p, &m).unwrap_err().to_string();
        assert!(err.contains("num_heads") && err.contains("four"), "{err}");
        m.insert("num_heads".into(), "4".into());
        let cfg = config_from_metadata(p, &m).unwrap();
        assert_eq!(
            (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden),
            (64, 2, 4, 256)
        );
    }
}
