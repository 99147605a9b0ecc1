//! `edge-runtime bench-encoder`: times the runtime's own encoder (the packed-kernel
//! [`QuantizedEncoder`] a bundle runs on) on given f32 weights and one input clip, in f32 and in
//! int8, and writes each variant's tokens so another program can compare them. This is the
//! `--rust-cmd` interface of `bench/peer_bench.py`, which times ONNX Runtime on the same weights
//! and input in the same run.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use echojepa::bundle::Precision;
use echojepa::config::EncoderConfig;
use echojepa::quantized::calibrate::flatten_patch;
use echojepa::quantized::encoder::{QuantizedEncoder, TensorSource};
use echojepa_kernels::ActivationRange;
use edge_runtime::stats::percentiles;

use super::BenchEncoderArgs;

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
pub fn run(
    args: BenchEncoderArgs,
    rounds: &mut impl BufRead,
    out: &mut impl Write,
) -> Result<ExitCode> {
    if let Some(t) = args.threads
        && std::env::var_os("ECHOJEPA_THREADS").is_none()
    {
        // SAFETY: set before the kernel pool starts; no other thread reads the environment yet.
        unsafe { std::env::set_var("ECHOJEPA_THREADS", t.to_string()) };
    }
    let (tensors, meta) = read_safetensors(&args.weights)?;
    let cfg = config_from_metadata(&args.weights, &meta)?;
    let tensors = flatten_patch(&cfg, &tensors);
    let (inputs, _) = read_safetensors(&args.input)?;
    let video = inputs.get("video").with_context(|| {
        format!(
            "{}: no tensor `video` (expected [1, 3, T, H, W] f32)",
            args.input.display()
        )
    })?;
    let dims = video.dims().to_vec();
    if dims.len() != 5 || dims[0] != 1 || dims[1] != cfg.in_chans {
        bail!(
            "{}: `video` is {dims:?}, expected [1, {}, T, H, W]",
            args.input.display(),
            cfg.in_chans
        );
    }
    let (t, h, w) = (dims[2], dims[3], dims[4]);
    let clip = video
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;

    let mut variants = Vec::new();
    for p in args.precision.split(',').map(str::trim) {
        variants.push(match p {
            "f32" => Variant {
                label: "edge_f32",
                blocks: Precision::F32,
                activations: ActivationRange::U8,
                attention: None,
            },
            "int8" => Variant {
                label: "edge_int8",
                blocks: Precision::Q8_0,
                activations: ActivationRange::U8,
                attention: None,
            },
            "int8-u7" => Variant {
                label: "edge_int8_u7",
                blocks: Precision::Q8_0,
                activations: ActivationRange::U7,
                attention: None,
            },
            "int8-u7-attn" => Variant {
                label: "edge_int8_u7_attn",
                blocks: Precision::Q8_0,
                activations: ActivationRange::U7,
                attention: Some(ActivationRange::U7),
            },
            "int8-attn" => Variant {
                label: "edge_int8_attn",
                blocks: Precision::Q8_0,
                activations: ActivationRange::U8,
                attention: Some(ActivationRange::U8),
            },
            other => {
                bail!("--precision: unknown `{other}` (use f32, int8, int8-u7, int8-attn, int8-u7-attn, comma-separated)")
            }
        });
    }
    let origin = args.weights.display().to_string();
    let mut runs = Vec::new();
    for v in variants {
        let precision: HashMap<String, Precision> = QuantizedEncoder::linear_shapes(&cfg)
            .into_iter()
            .filter(|(name, _)| name != "patch_embed.proj")
            .map(|(name, _)| (name, v.blocks))
            .collect();
        let src = TensorSource {
            tensors: &tensors,
            origin: &origin,
            precision: &precision,
        };
        let enc = QuantizedEncoder::load(&cfg, &src)
            .with_context(|| format!("cannot build the {} encoder from {origin}", v.label))?
            .with_int8_activations(v.activations)
            .with_int8_attention(v.attention);
        let tokens = enc.forward_clip(&clip, (t, h, w))?; // warm-up (packing, RoPE tables)
        runs.push(Run {
            label: v.label,
            enc,
            tokens,
            times: Vec::new(),
        });
    }
    let shape = (t, h, w);
    if args.interleave {
        // One line in, one timed run of every variant out, until the input ends: the caller
        // times its own engines between the lines, so all of them share the machine's moods.
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
            for r in &mut runs {
                let ms = r.time_once(&clip, shape)?;
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
    } else {
        for r in &mut runs {
            for _ in 0..args.reps {
                r.time_once(&clip, shape)?;
            }
        }
    }
    for r in runs {
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
    }
    Ok(ExitCode::SUCCESS)
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
