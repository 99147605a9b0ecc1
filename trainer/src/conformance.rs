//! `trainer conformance`: recomputes every case of a conformance fixture (format
//! `echojepa-conformance/1`, see the fixture's README) from its checkpoint files and inputs only,
//! writes the outputs keyed by each case's `output` name, and — when `reference.safetensors` is
//! present — reports each case's max_abs and rel_l2 and fails if any is beyond tolerance.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use echojepa::checkpoint::{PtFile, load_pt_encoder, load_pt_predictor, load_pt_probe};
use echojepa::config::SlotConfig;
use echojepa::{EncoderConfig, PredictorConfig, ProbeConfig, ProbeKind};
use serde::Deserialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fixture directory: meta.json, inputs.safetensors, the checkpoint files and optionally
    /// reference.safetensors.
    #[arg(long)]
    pub fixture: PathBuf,
    /// Where to write the computed outputs (one safetensors file, a tensor per case `output`).
    #[arg(long, visible_alias = "out", value_name = "FILE")]
    pub output: PathBuf,
    /// Print the comparison as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Deserialize)]
struct Meta {
    format: String,
    checkpoint: String,
    encoder_arch: EncoderArch,
    #[serde(default)]
    predictor_arch: Option<PredictorArch>,
    tolerance: Tolerance,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct EncoderArch {
    embed_dim: usize,
    depth: usize,
    num_heads: usize,
    #[serde(default = "four")]
    mlp_ratio: f64,
    #[serde(default = "sixteen")]
    patch_size: usize,
    #[serde(default = "two")]
    tubelet_size: usize,
    #[serde(default = "yes")]
    use_rope: bool,
    /// LayerNorm eps (absent: the constructor default, PyTorch's 1e-5).
    #[serde(default = "torch_ln_eps")]
    norm_eps: f64,
}

#[derive(Debug, Deserialize)]
struct PredictorArch {
    embed_dim: usize,
    predictor_embed_dim: usize,
    depth: usize,
    num_heads: usize,
    #[serde(default = "four")]
    mlp_ratio: f64,
    #[serde(default = "sixteen")]
    patch_size: usize,
    #[serde(default = "two")]
    tubelet_size: usize,
    num_mask_tokens: usize,
    #[serde(default = "yes")]
    use_rope: bool,
    /// LayerNorm eps (absent: the constructor default, PyTorch's 1e-5).
    #[serde(default = "torch_ln_eps")]
    norm_eps: f64,
    img_size: ImgSize,
    num_frames: usize,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ImgSize {
    Square(usize),
    Rect([usize; 2]),
}

#[derive(Debug, Deserialize, Clone, Copy)]
pub(crate) struct Tolerance {
    max_abs: f64,
    rel_l2: f64,
}

#[derive(Debug, Deserialize)]
struct ProbeArch {
    embed_dim: usize,
    num_heads: usize,
    depth: usize,
    #[serde(default)]
    num_classes: Option<usize>,
    #[serde(default)]
    num_targets: Option<usize>,
    #[serde(default = "four")]
    mlp_ratio: f64,
    #[serde(default)]
    use_slot_embeddings: bool,
    #[serde(default)]
    num_views: Option<usize>,
    #[serde(default)]
    clips_per_view: Option<usize>,
    #[serde(default)]
    use_factorized: bool,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Encode {
        checkpoint_key: String,
        video: String,
    },
    EncodeMasked {
        checkpoint_key: String,
        video: String,
        masks: String,
    },
    Predict {
        #[serde(default = "predictor_key")]
        checkpoint_key: String,
        context: String,
        masks_ctx: String,
        masks_tgt: String,
        #[serde(default)]
        mask_index: usize,
    },
    Probe {
        probe_checkpoint: String,
        kind: ProbeKind,
        probe_arch: ProbeArch,
        features: String,
        #[serde(default)]
        key_padding_mask: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
struct Case {
    output: String,
    #[serde(flatten)]
    op: Op,
}

/// The arch blocks are the reference *constructor's* arguments; a constructor called without
/// `norm_layer` uses `nn.LayerNorm`'s default eps, so that is the default here too (the released
/// checkpoints come from the factories, which pass 1e-6: a fixture of those says `norm_eps`).
fn torch_ln_eps() -> f64 {
    echojepa::config::TORCH_LN_EPS
}

fn four() -> f64 {
    4.0
}
fn sixteen() -> usize {
    16
}
fn two() -> usize {
    2
}
fn yes() -> bool {
    true
}
fn predictor_key() -> String {
    "predictor".into()
}

/// Error of one case against the reference.
#[derive(Debug, serde::Serialize)]
pub struct CaseReport {
    pub output: String,
    pub shape: Vec<usize>,
    pub max_abs: Option<f64>,
    pub rel_l2: Option<f64>,
    pub pass: Option<bool>,
}

fn encoder_config(a: &EncoderArch) -> Result<EncoderConfig> {
    if !a.use_rope {
        bail!("encoder_arch.use_rope = false (absolute sin-cos embeddings) is not supported");
    }
    let mut cfg = EncoderConfig::custom(a.embed_dim, a.depth, a.num_heads, a.mlp_ratio);
    cfg.patch_size = a.patch_size;
    cfg.tubelet_size = a.tubelet_size;
    cfg.norm_eps = a.norm_eps;
    cfg.validate()?;
    Ok(cfg)
}

fn predictor_config(a: &PredictorArch) -> Result<PredictorConfig> {
    if !a.use_rope {
        bail!("predictor_arch.use_rope = false is not supported");
    }
    let img_size = match a.img_size {
        ImgSize::Square(s) => [s, s],
        ImgSize::Rect(r) => r,
    };
    let cfg = PredictorConfig {
        embed_dim: a.embed_dim,
        predictor_embed_dim: a.predictor_embed_dim,
        depth: a.depth,
        num_heads: a.num_heads,
        mlp_hidden: (a.predictor_embed_dim as f64 * a.mlp_ratio) as usize,
        patch_size: a.patch_size,
        tubelet_size: a.tubelet_size,
        num_mask_tokens: a.num_mask_tokens,
        img_size,
        num_frames: a.num_frames,
        norm_eps: a.norm_eps,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn probe_config(kind: ProbeKind, a: &ProbeArch) -> Result<ProbeConfig> {
    let num_outputs = match kind {
        ProbeKind::Classifier => a.num_classes.context("probe_arch.num_classes is missing")?,
        ProbeKind::Regressor => a.num_targets.context("probe_arch.num_targets is missing")?,
    };
    let slots = if a.use_slot_embeddings {
        Some(SlotConfig {
            num_views: a.num_views.context("probe_arch.num_views is missing")?,
            clips_per_view: a.clips_per_view.unwrap_or(1),
            use_factorized: a.use_factorized,
        })
    } else {
        None
    };
    let cfg = ProbeConfig {
        kind,
        embed_dim: a.embed_dim,
        num_heads: a.num_heads,
        depth: a.depth,
        num_outputs,
        mlp_ratio: a.mlp_ratio,
        slots,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Computes every case; returns the outputs by name in case order.
pub fn compute(fixture: &Path, dev: &Device) -> Result<(Vec<(String, Tensor)>, Tolerance)> {
    let meta_path = fixture.join("meta.json");
    let meta: Meta = serde_json::from_slice(
        &std::fs::read(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?,
    )
    .with_context(|| format!("parsing {}", meta_path.display()))?;
    if meta.format != "echojepa-conformance/1" {
        bail!("{}: unknown format `{}`", meta_path.display(), meta.format);
    }
    let inputs_path = fixture.join("inputs.safetensors");
    let inputs = candle_core::safetensors::load(&inputs_path, dev)
        .with_context(|| format!("reading {}", inputs_path.display()))?;
    let ckpt = fixture.join(&meta.checkpoint);
    // Open once up front so a broken checkpoint fails before any work.
    PtFile::open(&ckpt)?;
    let enc_cfg = encoder_config(&meta.encoder_arch)?;

    let mut outputs: Vec<(String, Tensor)> = Vec::new();
    let mut encoders = HashMap::new();
    let lookup = |outputs: &Vec<(String, Tensor)>, name: &str| -> Result<Tensor> {
        outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .or_else(|| inputs.get(name).cloned())
            .with_context(|| format!("tensor `{name}` is neither an earlier output nor an input"))
    };
    for case in &meta.cases {
        let out = match &case.op {
            Op::Encode {
                checkpoint_key,
                video,
            }
            | Op::EncodeMasked {
                checkpoint_key,
                video,
                ..
            } => {
                if !encoders.contains_key(checkpoint_key) {
                    let enc = load_pt_encoder(&ckpt, checkpoint_key, &enc_cfg, dev)?;
                    encoders.insert(checkpoint_key.clone(), enc);
                }
                let enc = &encoders[checkpoint_key];
                let video = lookup(&outputs, video)?.to_dtype(DType::F32)?;
                match &case.op {
                    Op::EncodeMasked { masks, .. } => {
                        enc.forward_masked(&video, &lookup(&outputs, masks)?)?
                    }
                    _ => enc.forward(&video)?,
                }
            }
            Op::Predict {
                checkpoint_key,
                context,
                masks_ctx,
                masks_tgt,
                mask_index,
            } => {
                if checkpoint_key != "predictor" {
                    bail!(
                        "case {}: predictor checkpoint_key `{checkpoint_key}`",
                        case.output
                    );
                }
                let arch = meta
                    .predictor_arch
                    .as_ref()
                    .context("meta.json has predict cases but no predictor_arch")?;
                let pred = load_pt_predictor(&ckpt, &predictor_config(arch)?, dev)?;
                pred.forward(
                    &lookup(&outputs, context)?,
                    &lookup(&outputs, masks_ctx)?,
                    &lookup(&outputs, masks_tgt)?,
                    *mask_index,
                )?
            }
            Op::Probe {
                probe_checkpoint,
                kind,
                probe_arch,
                features,
                key_padding_mask,
            } => {
                let cfg = probe_config(*kind, probe_arch)?;
                let probe = load_pt_probe(fixture.join(probe_checkpoint), 0, &cfg, dev)?;
                let kpm = key_padding_mask
                    .as_ref()
                    .map(|n| lookup(&outputs, n))
                    .transpose()?;
                probe.forward(&lookup(&outputs, features)?, kpm.as_ref())?
            }
        };
        tracing::debug!(case = %case.output, shape = ?out.dims(), "computed");
        outputs.push((case.output.clone(), out));
    }
    Ok((outputs, meta.tolerance))
}

fn errors(out: &Tensor, reference: &Tensor) -> Result<(f64, f64)> {
    let out = out.to_dtype(DType::F64)?.flatten_all()?;
    let reference = reference.to_dtype(DType::F64)?.flatten_all()?;
    let diff = (&out - &reference)?;
    let max_abs = diff.abs()?.max(0)?.to_scalar::<f64>()?;
    let num = diff.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let den = reference.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok((max_abs, if den > 0.0 { num / den } else { num }))
}

pub fn run(args: Args, out: &mut impl Write) -> Result<ExitCode> {
    let dev = Device::Cpu;
    let (outputs, tol) = compute(&args.fixture, &dev)?;
    let map: HashMap<String, Tensor> = outputs.iter().cloned().collect();
    candle_core::safetensors::save(&map, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;

    let ref_path = args.fixture.join("reference.safetensors");
    let reference = if ref_path.exists() {
        Some(
            candle_core::safetensors::load(&ref_path, &dev)
                .with_context(|| format!("reading {}", ref_path.display()))?,
        )
    } else {
        None
    };
    let mut reports = Vec::new();
    for (name, t) in &outputs {
        let mut r = CaseReport {
            output: name.clone(),
            shape: t.dims().to_vec(),
            max_abs: None,
            rel_l2: None,
            pass: None,
        };
        if let Some(reference) = &reference {
            let expected = reference
                .get(name)
                .with_context(|| format!("{}: no tensor `{name}`", ref_path.display()))?;
            if expected.dims() != t.dims() {
                bail!(
                    "case {name}: output shape {:?} but the reference is {:?}",
                    t.dims(),
                    expected.dims()
                );
            }
            let (max_abs, rel) = errors(t, expected)?;
            r.max_abs = Some(max_abs);
            r.rel_l2 = Some(rel);
            r.pass = Some(max_abs <= tol.max_abs && rel <= tol.rel_l2);
        }
        reports.push(r);
    }
    let failed = reports.iter().filter(|r| r.pass == Some(false)).count();
    if args.json {
        let doc = serde_json::json!({
            "output": args.output,
            "tolerance": {"max_abs": tol.max_abs, "rel_l2": tol.rel_l2},
            "cases": reports,
            "failed": failed,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(
            out,
            "{:<42} {:>18} {:>11} {:>11}  result",
            "case", "shape", "max_abs", "rel_l2"
        )?;
        for r in &reports {
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3e}"));
            let verdict = match r.pass {
                Some(true) => "ok",
                Some(false) => "FAIL",
                None => "(no reference)",
            };
            writeln!(
                out,
                "{:<42} {:>18} {:>11} {:>11}  {verdict}",
                r.output,
                format!("{:?}", r.shape),
                fmt(r.max_abs),
                fmt(r.rel_l2)
            )?;
        }
        match &reference {
            Some(_) => writeln!(
                out,
                "{} of {} cases within tolerance (max_abs <= {:e}, rel_l2 <= {:e}); outputs in {}",
                reports.len() - failed,
                reports.len(),
                tol.max_abs,
                tol.rel_l2,
                args.output.display()
            )?,
            None => writeln!(
                out,
                "no reference.safetensors in {}: outputs written to {}",
                args.fixture.display(),
                args.output.display()
            )?,
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
