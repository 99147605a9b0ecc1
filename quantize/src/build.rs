//! `quantize build`: checkpoint (+ probes) → signed bundle. The output directory and the key are
//! opened first, so a bad path or key fails before any work; then calibration clips are
//! rendered, every encoder layer is measured int8 vs f32 (speed on this CPU and output error),
//! the weights file is written with the chosen precisions, and the manifest is hashed, signed and
//! verified. A failed build removes the directory it created.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::Value;
use echojepa::bundle::{
    BundleBuilder, CalibrationSummary, FORMAT, FORMAT_VERSION, HeadSpec, InputSpec, LayerPrecision,
    LvHeadSpec, Manifest, Precision, Provenance, QuantizationInfo, SecretKey, SectorHandling,
    SourceInfo, TailSearch, ToolInfo,
};
use echojepa::quantized::gguf::write_gguf;
use echojepa::quantized::model::{LV_PREFIX, probe_prefix};
use echojepa_input::FrameSpacing;
use echojepa_phantom::View;
use indicatif::{ProgressBar, ProgressStyle};

use crate::calibrate::{
    self, CalibrationOptions, Clip, NamedTensor, TailOptions, encoder_tensors, probe_tensors,
};
use crate::data;
use crate::source::{self, SourceArgs};

/// Name of the weights file inside a bundle.
pub const WEIGHTS_FILE: &str = "model.gguf";

/// Where a bundle with an LV decoder takes EF from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EfFrom {
    Auto,
    Regressor,
    TracedLv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sector {
    /// The whole frame was resized.
    Full,
    /// Cropped to the sector's bounding box.
    Crop,
    /// Cropped, and pixels outside the sector zeroed.
    CropMask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Spacing {
    /// Exactly `frame_step` source frames apart.
    Uniform,
    /// The reference loader's `linspace` rule (step 4 × 8 frames: 0, 4, 9, 13, …, 31).
    ReferenceLinspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fallback {
    F16,
    F32,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Native checkpoint stem (`run/model` for run/model.safetensors + run/model.json) or an
    /// official `.pt` pretraining checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Architecture preset of a `.pt` checkpoint (vit_tiny … vit_giant_xformers).
    #[arg(long)]
    pub arch: Option<String>,
    /// Encoder to export: `target_encoder` (default when present) or `encoder`.
    #[arg(long)]
    pub encoder_key: Option<String>,
    /// Add a probe: NAME=PATH[#INDEX], an official `.pt` probe file (INDEX into `classifiers`) or
    /// the native checkpoint stem `trainer probe` wrote (e.g. runs/phantom/evals/.../ef/probe),
    /// which must hold the same encoder.
    #[arg(long = "probe")]
    pub probes: Vec<String>,
    /// Attention heads of `.pt` probes (default: the encoder's).
    #[arg(long)]
    pub probe_heads: Option<usize>,
    /// Class names of a classifier probe, in logit order: NAME=A4C,A2C,...
    #[arg(long = "classes")]
    pub classes: Vec<String>,
    /// A regression target of a probe: NAME=TARGET:UNIT:MEAN:STD (label scaler of the training split).
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Views a head is valid for (e.g. ef=a4c,a2c); the runtime withholds it on other views.
    #[arg(long = "valid-views")]
    pub valid_views: Vec<String>,

    /// Model id written to the manifest (default: the checkpoint's).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Model version written to the manifest.
    #[arg(long)]
    pub model_version: String,
    /// Anti-rollback counter written to the signed manifest: carts refuse a bundle whose security
    /// version is below the highest they have accepted. Raise it when older bundles must no
    /// longer run (a fixed defect); keep it for ordinary updates.
    #[arg(long, default_value_t = 0)]
    pub security_version: u64,
    /// Carts refuse the bundle after this day: YYYY-MM-DD (end of that day, UTC) or seconds
    /// since the Unix epoch. Default: no expiry.
    #[arg(long, value_parser = parse_not_after)]
    pub not_after: Option<u64>,
    /// One line describing the model.
    #[arg(long, default_value = "")]
    pub description: String,
    /// With an LV decoder: where the cart's EF comes from. `auto` takes what the fine-tuning
    /// measured better on validation (recorded in the checkpoint), and the traced LV when there
    /// is no regressor.
    #[arg(long, value_enum, default_value_t = EfFrom::Auto)]
    pub ef_from: EfFrom,
    /// A note on how the model was made, KEY=VALUE (recipe, seeds, timings, metrics); repeat
    /// for more. Stored in the signed manifest.
    #[arg(long = "note")]
    pub notes: Vec<String>,
    /// Whether the model was trained on synthetic data. Default: what the checkpoints record
    /// (their provenance); `--synthetic` or `--synthetic=false` overrides it, with a warning
    /// when it differs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub synthetic: Option<bool>,
    /// Text a runtime shows beside predictions, besides what it always says (not for
    /// diagnostic use; trained on synthetic data when it was). Default: nothing more.
    #[arg(long)]
    pub notice: Option<String>,

    /// Frames per clip (default: the checkpoint's input spec).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Frame step (default: the checkpoint's).
    #[arg(long)]
    pub frame_step: Option<usize>,
    /// Resample clips to this frame rate instead of a frame step.
    #[arg(long)]
    pub fps: Option<f64>,
    /// Square input resolution in pixels (default: the checkpoint's).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// How the ultrasound sector was handled in training (default: what the checkpoint's input
    /// spec says, else `full`). Overriding the checkpoint is allowed, with a warning.
    #[arg(long, value_enum)]
    pub sector: Option<Sector>,
    /// How a clip's frames were spaced in training (default: the checkpoint's, else
    /// `uniform`). Overriding the checkpoint is allowed, with a warning.
    #[arg(long, value_enum)]
    pub spacing: Option<Spacing>,

    /// Secret signing key: `quantize keygen`'s NAME.secret, or an Ed25519 PEM private key as
    /// `openssl genpkey -algorithm ed25519` writes it.
    #[arg(
        long = "secret-key",
        visible_alias = "key",
        required_unless_present = "unsigned"
    )]
    pub key: Option<PathBuf>,
    /// Write the bundle without signing it: manifest.json holds the exact bytes to sign (Ed25519
    /// over the file as it is, e.g. `openssl pkeyutl -sign -rawin -inkey KEY.pem -in
    /// OUT/manifest.json -out manifest.sig.bin`, or an HSM); then `quantize sign OUT
    /// --signature manifest.sig.bin --public-key KEY.pub` completes it.
    #[arg(long, conflicts_with = "key")]
    pub unsigned: bool,
    /// Output bundle directory (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,

    /// Phantom clips used to measure each layer (speed and int8 error).
    #[arg(long, default_value_t = 4)]
    pub calibration_clips: usize,
    /// Seed of the first calibration clip.
    #[arg(long, default_value_t = 1_000_000)]
    pub calibration_seed: u64,
    /// Phantom clips the whole encoder runs on after the per-layer choice, looking for the
    /// worst tokens (the first --calibration-clips of them are the per-layer clips; 0 skips
    /// the search). A layer whose int8 error a few tokens amplify is kept full precision while
    /// the smallest token cosine on these clips is below --tail-target and the size allows.
    #[arg(long, default_value_t = 64)]
    pub tail_clips: usize,
    /// The smallest per-token cosine against f32 that the tail search aims at.
    #[arg(long, default_value_t = 0.9995)]
    pub tail_target: f64,
    /// Largest weights size, as a fraction of the f32 checkpoint's, that the tail search may
    /// grow the bundle to (the report's size check is 0.30; the manifest takes a little).
    #[arg(long, default_value_t = 0.29)]
    pub max_size_ratio: f64,
    /// Frame rate of the phantom source video the frame step applies to: that of the training
    /// videos (30 is what `trainer synth` writes), so the heart moves as fast as in training.
    #[arg(long, default_value_t = 30.0)]
    pub source_fps: f64,
    /// Largest relative output error of an int8 layer.
    #[arg(long, default_value_t = 0.05)]
    pub error_budget: f64,
    /// int8 must take at most this fraction of the f32 time to be chosen.
    #[arg(long, default_value_t = 0.95)]
    pub max_time_ratio: f64,
    /// Storage of layers that stay full precision.
    #[arg(long, value_enum, default_value = "f16")]
    pub fallback: Fallback,
    /// Timed repetitions per layer and precision.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn progress(len: u64, msg: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

pub fn run(a: Args, out: &mut impl Write) -> Result<()> {
    // Fail before the work: key, then output directory.
    let key = match &a.key {
        Some(k) => {
            Some(SecretKey::load(k).with_context(|| format!("signing key {}", k.display()))?)
        }
        None => None,
    };
    let existed = a.out.exists();
    let builder = BundleBuilder::create(&a.out).context("output bundle")?;
    let result = build(&a, builder, key.as_ref(), out);
    if result.is_err() && !existed {
        let _ = std::fs::remove_dir_all(&a.out);
    }
    result
}

fn build(
    a: &Args,
    builder: BundleBuilder,
    key: Option<&SecretKey>,
    out: &mut impl Write,
) -> Result<()> {
    let quiet = a.json;
    let spin = progress(1, "loading checkpoint", quiet);
    let src = source::load(&SourceArgs {
        checkpoint: a.checkpoint.clone(),
        arch: a.arch.clone(),
        encoder_key: a.encoder_key.clone(),
        probes: a.probes.clone(),
        probe_heads: a.probe_heads,
        classes: a.classes.clone(),
        targets: a.targets.clone(),
    })?;
    spin.finish_and_clear();
    let input = input_spec(a, &src)?;
    let cfg = &src.encoder_cfg;
    if input.resolution[0] % cfg.patch_size != 0 || input.frames % cfg.tubelet_size != 0 {
        bail!(
            "input {} frames at {}x{} does not divide into tubelets of {} and patches of {}",
            input.frames,
            input.resolution[0],
            input.resolution[1],
            cfg.tubelet_size,
            cfg.patch_size
        );
    }

    let clips = calibration_clips(a, &input, quiet)?;
    let opts = calibration_options(a);
    let mut w = Weights {
        tensors: Vec::new(),
        layers: Vec::new(),
    };
    let heads = w.add_probes(a, &src, &opts)?;
    let lv_segmentation = w.add_lv(a, &src)?;
    let other_bytes = tensor_bytes(&w.tensors);
    let (layers, summary, tail) =
        calibrate_encoder(a, &src, &input, &clips, &opts, other_bytes, quiet)?;
    // the encoder comes first in the weights file and the manifest
    let mut tensors = encoder_tensors(cfg, &src.encoder, &layers)?;
    tensors.append(&mut w.tensors);
    let mut all_layers = layers;
    all_layers.append(&mut w.layers);
    let w = Weights {
        tensors,
        layers: all_layers,
    };
    let model_id = a
        .model_id
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| (!src.model_id.is_empty()).then(|| src.model_id.clone()))
        .context("no model id: give --model-id (the checkpoint has none)")?;
    write_weights(&builder, &model_id, cfg, &w.tensors, quiet)?;

    let manifest = manifest(
        a,
        &src,
        ManifestParts {
            model_id,
            input,
            heads,
            lv_segmentation,
            summary: summary.clone(),
            tail: tail.clone(),
            layers: w.layers.clone(),
        },
    )?;
    let Some(key) = key else {
        let bytes = builder.finish_unsigned(manifest)?;
        return print_unsigned(out, a, &bytes, &summary, tail.as_ref(), &w.layers);
    };
    let bundle = builder.finish(manifest, key)?;
    let m = bundle.manifest();
    let size = m.files.values().map(|f| f.bytes).sum::<u64>();
    let f32_size = f32_bytes(&src);
    if a.json {
        let v = serde_json::json!({
            "bundle": a.out, "model_id": m.model_id, "model_version": m.model_version,
            "manifest_sha256": bundle.manifest_sha256(), "signer": bundle.signer().name(),
            "signer_id": bundle.signer().id(),
            "bytes": size, "f32_bytes": f32_size, "size_ratio": size as f64 / f32_size as f64,
            "calibration": summary, "tail_search": tail, "layers": w.layers,
        });
        writeln!(out, "{v}")?;
    } else {
        print_summary(out, a, &bundle, size, f32_size)?;
    }
    Ok(())
}

/// Synthetic phantom clips of every view, preprocessed as the model's input.
/// The per-layer clips come first, then the rest of the tail search's.
fn calibration_clips(a: &Args, input: &InputSpec, quiet: bool) -> Result<Vec<Clip>> {
    let n = a.calibration_clips.max(1).max(a.tail_clips);
    let pb = progress(n as u64, "rendering phantom", quiet);
    let samples = data::phantom_samples(
        n,
        a.calibration_seed,
        input,
        a.source_fps,
        &View::ALL,
        || pb.inc(1),
    )?;
    pb.finish_and_clear();
    Ok(samples.into_iter().map(|s| (s.clip, s.thw)).collect())
}

fn calibration_options(a: &Args) -> CalibrationOptions {
    CalibrationOptions {
        error_budget: a.error_budget,
        max_time_ratio: a.max_time_ratio,
        fallback: match a.fallback {
            Fallback::F16 => Precision::F16,
            Fallback::F32 => Precision::F32,
        },
        reps: a.reps.max(1),
        ..CalibrationOptions::default()
    }
}

/// Stored bytes of the tensors.
fn tensor_bytes(tensors: &[NamedTensor]) -> u64 {
    tensors
        .iter()
        .map(|(_, t)| t.storage_size_in_bytes() as u64)
        .sum()
}

fn clip_source(a: &Args, input: &InputSpec, n: usize) -> String {
    format!(
        "{n} synthetic phantom clips (seeds {}..{}), {} frames {}x{}",
        a.calibration_seed,
        a.calibration_seed + n as u64 - 1,
        input.frames,
        input.resolution[0],
        input.resolution[1]
    )
}

/// Chooses each encoder layer's precision on the first `--calibration-clips` clips, searches
/// all `clips` for the worst tokens (unless `--tail-clips 0`), then measures the chosen encoder
/// end to end against f32 on the clips searched. `other_bytes`: the probes' and LV decoder's
/// stored bytes, which count against `--max-size-ratio`.
fn calibrate_encoder(
    a: &Args,
    src: &source::Source,
    input: &InputSpec,
    clips: &[Clip],
    opts: &CalibrationOptions,
    other_bytes: u64,
    quiet: bool,
) -> Result<(Vec<LayerPrecision>, CalibrationSummary, Option<TailSearch>)> {
    let cfg = &src.encoder_cfg;
    let origin = src.checkpoint.display().to_string();
    let per_layer = &clips[..a.calibration_clips.max(1).min(clips.len())];
    let pb = progress(per_layer.len() as u64, "measuring layers", quiet);
    let mut layers = calibrate::choose_encoder_precisions(
        cfg,
        &src.encoder,
        &origin,
        per_layer,
        opts,
        &mut |d, _| pb.set_position(d as u64),
    )?;
    pb.finish_and_clear();
    let mut checked = per_layer;
    let mut tail = None;
    if a.tail_clips > 0 {
        let encoder_bytes = calibrate::encoder_bytes(cfg, &src.encoder, &layers)?;
        let limit = (a.max_size_ratio * f32_bytes(src) as f64).max(0.0) as u64;
        let byte_budget = limit.saturating_sub(encoder_bytes + other_bytes);
        let spin = progress(1, "searching worst tokens", quiet);
        let t = calibrate::search_tail(
            cfg,
            &src.encoder,
            &origin,
            &mut layers,
            clips,
            &TailOptions {
                target: a.tail_target,
                byte_budget,
                clips_per_round: 4,
                fallback: opts.fallback,
            },
            &mut |line| spin.println(format!("  {line}")),
        )?;
        spin.finish_and_clear();
        let t = TailSearch {
            source: clip_source(a, input, clips.len()),
            ..t
        };
        tracing::info!(
            "tail search on {} clips: worst token cosine {:.5} -> {:.5}, {} layer(s) kept full precision ({})",
            t.clips,
            t.token_cosine_min_before,
            t.token_cosine_min_after,
            t.widened.len(),
            t.stopped
        );
        checked = clips;
        tail = Some(t);
    }
    let spin = progress(1, "checking end to end", quiet);
    let summary = calibrate::summarize(
        cfg,
        &src.encoder,
        &origin,
        &layers,
        checked,
        &clip_source(a, input, checked.len()),
        opts.reps,
    )?;
    spin.finish_and_clear();
    Ok((layers, summary, tail))
}

/// The tensors of the weights file and the precision of each, encoder first.
struct Weights {
    tensors: Vec<NamedTensor>,
    layers: Vec<LayerPrecision>,
}

impl Weights {
    /// Adds every probe's tensors and returns the head specs (valid views from
    /// `--valid-views`, else as the checkpoint recorded them).
    fn add_probes(
        &mut self,
        a: &Args,
        src: &source::Source,
        opts: &CalibrationOptions,
    ) -> Result<Vec<HeadSpec>> {
        let valid = valid_views(a, src)?;
        // for heads recorded without a task (legacy)
        let view_head = echojepa::bundle::task::legacy_view_head(
            src.probes.iter().map(|p| (p.name.as_str(), p.cfg.kind)),
        );
        let mut heads = Vec::new();
        for (i, p) in src.probes.iter().enumerate() {
            let prefix = probe_prefix(&p.name);
            let (t, l) = probe_tensors(&p.tensors, &prefix, opts)?;
            self.tensors.extend(t);
            self.layers.extend(l);
            // --valid-views overrides what the checkpoint recorded
            let valid_views = valid
                .get(&p.name)
                .cloned()
                .unwrap_or_else(|| p.valid_views.clone());
            heads.push(HeadSpec {
                name: p.name.clone(),
                task: Some(p.task_for(&valid_views, view_head == Some(i))),
                probe: p.cfg.clone(),
                tensor_prefix: prefix,
                classes: p.classes.clone(),
                targets: p.targets.clone(),
                valid_views,
                temperature: p.temperature,
                min_confidence: p.min_confidence,
            });
        }
        Ok(heads)
    }

    /// Adds the LV decoder's tensors, if the checkpoint has one, and says where EF comes from.
    fn add_lv(&mut self, a: &Args, src: &source::Source) -> Result<Option<LvHeadSpec>> {
        let Some((entry, t)) = &src.lv else {
            return Ok(None);
        };
        let (t, l) = calibrate::lv_tensors(t, LV_PREFIX)?;
        self.tensors.extend(t);
        self.layers.extend(l);
        let has_regressor = src.probes.iter().any(|p| !p.targets.is_empty());
        Ok(Some(LvHeadSpec {
            tensor_prefix: LV_PREFIX.into(),
            valid_views: entry.valid_views.clone(),
            ef_fit: entry.ef_fit,
            val_dice: entry.val_dice,
            measures_ef: match a.ef_from {
                EfFrom::Auto => entry.measures_ef || !has_regressor,
                EfFrom::TracedLv => true,
                EfFrom::Regressor if !has_regressor => {
                    bail!("--ef-from regressor: the checkpoint has no regressor head")
                }
                EfFrom::Regressor => false,
            },
        }))
    }
}

/// `--valid-views NAME=a4c,a2c` by probe name; every name must be a probe of the checkpoint.
fn valid_views(a: &Args, src: &source::Source) -> Result<HashMap<String, Vec<String>>> {
    let valid: HashMap<String, Vec<String>> = a
        .valid_views
        .iter()
        .map(|s| {
            let (k, v) = s
                .split_once('=')
                .with_context(|| format!("--valid-views `{s}` must look like NAME=a4c,a2c"))?;
            Ok((
                k.to_string(),
                v.split(',').map(|x| x.trim().to_string()).collect(),
            ))
        })
        .collect::<Result<_>>()?;
    for name in valid.keys() {
        if !src.probes.iter().any(|p| &p.name == name) {
            bail!("--valid-views names probe `{name}`, which the checkpoint does not have");
        }
    }
    Ok(valid)
}

fn write_weights(
    builder: &BundleBuilder,
    model_id: &str,
    cfg: &echojepa::config::EncoderConfig,
    tensors: &[NamedTensor],
    quiet: bool,
) -> Result<()> {
    let weights_path = builder.file_path(WEIGHTS_FILE)?;
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("echojepa".into()),
        ),
        (
            "general.name".to_string(),
            Value::String(model_id.to_string()),
        ),
        (
            "echojepa.encoder".to_string(),
            Value::String(serde_json::to_string(cfg)?),
        ),
    ];
    let spin = progress(1, "writing weights", quiet);
    write_gguf(&weights_path, &metadata, tensors)?;
    spin.finish_and_clear();
    Ok(())
}

/// The manifest's provenance: the checkpoints', or `--synthetic` where it says otherwise.
fn provenance(stated: Option<bool>, recorded: &Provenance) -> Provenance {
    match stated {
        Some(s) if s != recorded.synthetic => {
            tracing::warn!(
                "--synthetic={s} overrides the checkpoints' provenance ({}: {})",
                if recorded.synthetic {
                    "synthetic"
                } else {
                    "not synthetic"
                },
                recorded.description
            );
            Provenance {
                synthetic: s,
                description: format!(
                    "{} (synthetic set to {s} by quantize build --synthetic)",
                    recorded.description
                ),
            }
        }
        _ => recorded.clone(),
    }
}

/// What the build produced that goes into the manifest.
struct ManifestParts {
    model_id: String,
    input: InputSpec,
    heads: Vec<HeadSpec>,
    lv_segmentation: Option<LvHeadSpec>,
    summary: CalibrationSummary,
    tail: Option<TailSearch>,
    layers: Vec<LayerPrecision>,
}

fn manifest(a: &Args, src: &source::Source, p: ManifestParts) -> Result<Manifest> {
    let provenance = provenance(a.synthetic, &src.provenance);
    let synthetic = provenance.synthetic;
    // runtimes add "trained on synthetic data" and "not for diagnostic use" from the typed
    // fields themselves; the notice is only what the builder adds
    let notice = a.notice.clone().unwrap_or_default();
    Ok(Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        model_id: p.model_id,
        model_version: a.model_version.clone(),
        security_version: a.security_version,
        not_after_unix: a.not_after,
        description: a.description.clone(),
        notes: a
            .notes
            .iter()
            .map(|n| {
                n.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                    .filter(|(k, _)| !k.is_empty())
                    .with_context(|| format!("--note `{n}` must look like KEY=VALUE"))
            })
            .collect::<Result<_>>()?,
        synthetic_training_data: synthetic,
        notice,
        provenance: Some(provenance),
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        tool: ToolInfo {
            name: "quantize".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        encoder: src.encoder_cfg.clone(),
        input: p.input,
        heads: p.heads,
        lv_segmentation: p.lv_segmentation,
        weights: WEIGHTS_FILE.into(),
        source: SourceInfo {
            checkpoint: file_name(&src.checkpoint),
            checkpoint_sha256: src.checkpoint_sha256.clone(),
            other_files: src.other_files.clone(),
        },
        quantization: QuantizationInfo {
            container: "gguf".into(),
            linear_weights: Precision::Q8_0,
            other_tensors: Precision::F32,
            measured_on: echojepa_kernels::cpu::describe(),
            error_budget: Some(a.error_budget),
            calibration: Some(p.summary),
            tail_search: p.tail,
            layers: p.layers,
        },
        files: Default::default(),
    })
}

/// An unsigned bundle: its manifest hash, and how to sign it outside this tool.
fn print_unsigned(
    out: &mut impl Write,
    a: &Args,
    bytes: &[u8],
    summary: &CalibrationSummary,
    tail: Option<&TailSearch>,
    layers: &[LayerPrecision],
) -> Result<()> {
    let manifest_path = a.out.join(echojepa::bundle::MANIFEST_FILE);
    let sha = echojepa::bundle::sha256_hex(bytes);
    if a.json {
        let v = serde_json::json!({
            "bundle": a.out, "unsigned": true, "manifest": manifest_path,
            "manifest_sha256": sha, "manifest_bytes": bytes.len(),
            "calibration": summary, "tail_search": tail, "layers": layers,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "unsigned bundle {} (manifest sha256 {sha}); sign the exact bytes of {} with Ed25519, e.g.\n  openssl pkeyutl -sign -rawin -inkey maker.pem -in {} -out manifest.sig.bin\nthen: quantize sign {} --signature manifest.sig.bin --public-key maker.pub",
            a.out.display(),
            manifest_path.display(),
            manifest_path.display(),
            a.out.display()
        )?;
        write_choices(out, layers, summary, tail)?;
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Size of every tensor of the source in f32.
pub fn f32_bytes(src: &source::Source) -> u64 {
    let enc: usize = src.encoder.values().map(|t| t.elem_count()).sum();
    let probes: usize = src
        .probes
        .iter()
        .flat_map(|p| p.tensors.values())
        .map(|t| t.elem_count())
        .sum();
    let lv: usize = src
        .lv
        .iter()
        .flat_map(|(_, t)| t.values())
        .map(|t| t.elem_count())
        .sum();
    4 * (enc + probes + lv) as u64
}

fn input_spec(a: &Args, src: &source::Source) -> Result<InputSpec> {
    let ck = src.input.as_ref();
    let need = |v: Option<usize>, ckv: Option<usize>, flag: &str| {
        v.or(ckv).with_context(|| {
            format!("{flag} is required: the checkpoint has no input spec (native checkpoints carry one)")
        })
    };
    let frames = need(a.frames, ck.map(|c| c.frames), "--frames")?;
    let res = need(a.resolution, ck.map(|c| c.resolution[0]), "--resolution")?;
    let fps = a.fps.or(ck.and_then(|c| c.fps));
    let frame_step = a.frame_step.or(ck.and_then(|c| c.frame_step));
    if fps.is_none() && frame_step.is_none() {
        bail!("give --frame-step or --fps: the checkpoint does not say how clips were sampled");
    }
    Ok(InputSpec {
        frames,
        frame_step,
        fps,
        resolution: [res, res],
        channels: src.encoder_cfg.in_chans,
        mean: ck.map_or(echojepa::bundle::IMAGENET_MEAN, |c| c.mean),
        std: ck.map_or(echojepa::bundle::IMAGENET_STD, |c| c.std),
        sector: chosen(
            a.sector.map(|s| match s {
                Sector::Full => SectorHandling::FullFrame,
                Sector::Crop => SectorHandling::CropToSector,
                Sector::CropMask => SectorHandling::CropAndMaskOutside,
            }),
            ck.map(|c| c.sector),
            SectorHandling::FullFrame,
            "--sector",
        ),
        spacing: chosen(
            a.spacing.map(|s| match s {
                Spacing::Uniform => FrameSpacing::Uniform,
                Spacing::ReferenceLinspace => FrameSpacing::ReferenceLinspace,
            }),
            ck.map(|c| c.spacing),
            FrameSpacing::Uniform,
            "--spacing",
        ),
    })
}

/// A flag's value, else the checkpoint's, else `default`; a flag that contradicts the
/// checkpoint is kept but warned about (the model was trained on the checkpoint's inputs).
fn chosen<T: PartialEq + std::fmt::Debug + Copy>(
    flag: Option<T>,
    checkpoint: Option<T>,
    default: T,
    name: &str,
) -> T {
    match (flag, checkpoint) {
        (Some(f), Some(c)) if f != c => {
            tracing::warn!(
                "{name} {f:?} overrides the checkpoint's {c:?}: the model was trained on {c:?} inputs"
            );
            f
        }
        (Some(f), _) => f,
        (None, Some(c)) => c,
        (None, None) => default,
    }
}

fn parse_not_after(s: &str) -> Result<u64, String> {
    echojepa::bundle::rollback::parse_not_after(s)
}

fn print_summary(
    out: &mut impl Write,
    a: &Args,
    bundle: &echojepa::bundle::VerifiedBundle,
    size: u64,
    f32_size: u64,
) -> Result<()> {
    let m = bundle.manifest();
    writeln!(
        out,
        "bundle {} ({} {})",
        a.out.display(),
        m.model_id,
        m.model_version
    )?;
    writeln!(
        out,
        "  signed by {}; manifest sha256 {}",
        bundle.signer(),
        bundle.manifest_sha256()
    )?;
    writeln!(
        out,
        "  size {:.2} MB = {:.3} of f32 ({:.2} MB)",
        size as f64 / 1e6,
        size as f64 / f32_size as f64,
        f32_size as f64 / 1e6
    )?;
    let q = &m.quantization;
    if let Some(s) = &q.calibration {
        write_choices(out, &q.layers, s, q.tail_search.as_ref())?;
    }
    let p = m.provenance();
    writeln!(out, "  training data: {}", p.description)?;
    if p.synthetic {
        writeln!(
            out,
            "  NOTE: trained on synthetic data; the manifest says so."
        )?;
    }
    Ok(())
}

/// The precision lines: layer counts, the end-to-end check, the tail search, each layer not int8.
fn write_choices(
    out: &mut impl Write,
    layers: &[LayerPrecision],
    s: &CalibrationSummary,
    tail: Option<&TailSearch>,
) -> Result<()> {
    let count = |p| layers.iter().filter(|l| l.precision == p).count();
    writeln!(
        out,
        "  layers: {} q8_0, {} f16, {} f32",
        count(Precision::Q8_0),
        count(Precision::F16),
        count(Precision::F32)
    )?;
    writeln!(
        out,
        "  calibration ({}): token cosine min {:.5} mean {:.5}; encoder {:.1} ms vs f32 kernels {:.1} ms",
        s.source, s.token_cosine_min, s.token_cosine_mean, s.chosen_ms, s.f32_ms
    )?;
    if let Some(t) = tail {
        writeln!(
            out,
            "  worst tokens on {} clips: token cosine min {:.5} before the search, {:.5} after (target {}); {} layer(s) widened, {} of {} bytes; {}",
            t.clips,
            t.token_cosine_min_before,
            t.token_cosine_min_after,
            t.target,
            t.widened.len(),
            t.bytes_spent,
            t.byte_budget,
            t.stopped
        )?;
    }
    for l in layers.iter().filter(|l| l.precision != Precision::Q8_0) {
        writeln!(out, "  kept {} at {}: {}", l.tensor, l.precision, l.reason)?;
    }
    Ok(())
}
