//! `trainer probe` and `trainer evaluate`: frozen-encoder attentive probes from a reference
//! frozen-evaluation config — several heads over the config's lr × wd grid trained together on
//! cached features, classification or regression (real-unit MAE), multi-view early fusion,
//! label fractions, per-epoch metrics, the best head saved as a native checkpoint; inference
//! with the reference's prediction CSV columns; the robustness evaluation of the EchoJEPA paper.

pub mod features;
pub mod heads;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use echojepa::bundle::{HeadTask, Measure, Provenance};
use echojepa::checkpoint::{
    InputSpec, NativeCheckpoint, NativeConfig, PtFile, Scaler, TensorMap, native_paths,
};
use echojepa::config::SlotConfig;
use echojepa::probe::AttentiveProbe;
use echojepa::{ProbeConfig, ProbeKind};
use echojepa_phantom::perturb::Perturbation;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::config::eval::{EvalConfig, TaskType};
use crate::config::{Loaded, load};
use crate::device::DeviceSpec;
use crate::dist::{Collective, EnvMap, SingleProcess, World};
use crate::metrics::{ClassMetrics, RegMetrics, classification, regression, write_confusion_csv};
use crate::plot::{Series, confusion_chart, line_chart};
use features::{FrozenEncoder, load_encoder, split_features, split_features_on};
use heads::{Eval, HeadSpec, MultiView, ProbeTrainer, Sample, eval_probe, probe_from_tensors};

/// Train attentive probes on a frozen encoder (reference frozen-evaluation config).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Frozen-evaluation config (eval_name, folder, tag, experiment.*, model_kwargs.*).
    #[arg(long, short, visible_alias = "fname")]
    pub config: PathBuf,
    /// Device: `cpu` or `cuda:N`.
    #[arg(long, num_args = 1.., default_value = "cpu")]
    pub devices: Vec<String>,
    /// Resolve and print the plan without reading data or checkpoints.
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output (the plan with --dry-run, the summary otherwise).
    #[arg(long)]
    pub json: bool,
    /// Override `model_kwargs.checkpoint` (e.g. a different pretraining run).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Override the output directory (default: `folder/<eval_name>/<tag>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of the probe inside the saved checkpoint (default: the config's `tag`).
    #[arg(long)]
    pub name: Option<String>,
    /// Decode/encode threads for feature extraction.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Override `experiment.data.label_fraction` (e.g. 0.01, 0.1).
    #[arg(long)]
    pub label_fraction: Option<f64>,
    /// Write every prepared model input under this folder (for comparing input paths; see
    /// `echojepa_input::dump`). Bypasses the feature cache.
    #[arg(long, hide = true)]
    pub dump_inputs: Option<PathBuf>,
    /// With several ranks: seconds one all-reduce may wait for the other ranks before this rank
    /// stops the job with an error (a rank that hangs would otherwise hold the others forever).
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub collective_timeout: u64,
}

/// Evaluate a trained probe: predictions, metrics and optionally robustness to the acoustic
/// perturbations of the EchoJEPA paper.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Frozen-evaluation config; `dataset_val` (or `--split`) is evaluated.
    #[arg(long, short, visible_alias = "fname")]
    pub config: PathBuf,
    /// Probe checkpoint: native (`probe.safetensors` + `.json`, from `trainer probe`) or an
    /// official `.pt` with `classifiers` (head 0). Default: `probe_checkpoint` of the config,
    /// else `<output dir>/probe`.
    #[arg(long)]
    pub probe: Option<PathBuf>,
    /// Which list to evaluate: `val` (dataset_val, as the reference) or `test` (dataset_test).
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Also evaluate under depth attenuation (0.3, 0.5, 0.7) and acoustic shadows (σ 0.1, 0.2,
    /// 0.3 of the width) and report the degradation.
    #[arg(long)]
    pub robustness: bool,
    /// Where to write predictions (default: `predictions_save_path`, else the output dir).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Device: `cpu` or `cuda:N`.
    #[arg(long, num_args = 1.., default_value = "cpu")]
    pub devices: Vec<String>,
    /// Override `model_kwargs.checkpoint` (the encoder the probe was trained on).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Override the output directory (default: `folder/<eval_name>/<tag>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of the probe inside the checkpoint (default: the config's `tag`).
    #[arg(long)]
    pub name: Option<String>,
    /// Decode/encode threads for feature extraction.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write every prepared model input under this folder (for comparing input paths; see
    /// `echojepa_input::dump`). Bypasses the feature cache.
    #[arg(long, hide = true)]
    pub dump_inputs: Option<PathBuf>,
}

/// What a probe predicts and how to show it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskInfo {
    pub task: TaskType,
    pub classes: Vec<String>,
    pub scaler: Option<Scaler>,
    pub target_name: String,
}

/// Class names: `classes.txt` (`index name` lines, as `trainer synth` writes) next to the
/// training list, else `0..C-1`.
pub fn class_names(train_csv: &Path, n: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    if let Some(dir) = train_csv.parent()
        && let Ok(text) = fs::read_to_string(dir.join("classes.txt"))
    {
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if let (Some(i), Some(name)) = (it.next(), it.next())
                && let Ok(i) = i.parse::<usize>()
                && i < n
            {
                names[i] = name.to_string();
            }
        }
    }
    names
}

/// The scaler: the config's `target_mean/target_std`, else `scaler.json` next to the training
/// list (as `trainer synth` writes it). A disagreement between the two is reported.
pub fn scaler_for(cfg: &EvalConfig) -> Result<(Option<Scaler>, String)> {
    let d = &cfg.experiment.data;
    let file = d.dataset_train.parent().map(|p| p.join("scaler.json"));
    let from_file = file
        .as_ref()
        .filter(|f| f.exists())
        .map(|f| -> Result<(Scaler, String)> {
            let v: serde_json::Value = serde_json::from_slice(&fs::read(f)?)
                .with_context(|| format!("{}", f.display()))?;
            let mean = v["mean"]
                .as_f64()
                .with_context(|| format!("{}: no `mean`", f.display()))?;
            let std = v["std"]
                .as_f64()
                .with_context(|| format!("{}: no `std`", f.display()))?;
            let name = match (v["target"].as_str(), v["units"].as_str()) {
                (Some(t), Some(u)) => format!("{t} ({u})"),
                (Some(t), None) => t.to_string(),
                _ => "target".into(),
            };
            Ok((Scaler { mean, std }, name))
        });
    let from_file = from_file.transpose()?;
    match (d.target_mean, d.target_std, from_file) {
        (Some(mean), Some(std), f) => {
            if let Some((s, _)) = &f
                && ((s.mean - mean).abs() > 1e-3 * s.std.abs().max(1.0)
                    || (s.std - std).abs() > 1e-3 * s.std.abs().max(1.0))
            {
                tracing::warn!(
                    "experiment.data.target_mean/std ({mean}, {std}) differ from {} ({}, {}); using the config's",
                    file.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    s.mean,
                    s.std
                );
            }
            let name = f.map(|x| x.1).unwrap_or_else(|| "target".into());
            Ok((Some(Scaler { mean, std }), name))
        }
        (_, _, Some((s, name))) => Ok((Some(s), name)),
        _ => Ok((None, "target (z-score)".into())),
    }
}

/// The probe architecture of a config.
pub fn probe_config(cfg: &EvalConfig, embed_dim: usize) -> Result<ProbeConfig> {
    let c = &cfg.experiment.classifier;
    let slots = (cfg.is_multi() && c.use_slot_embeddings).then_some(SlotConfig {
        num_views: c.num_views,
        clips_per_view: c.clips_per_view,
        use_factorized: c.use_factorized,
    });
    let pc = ProbeConfig {
        kind: match cfg.task() {
            TaskType::Classification => ProbeKind::Classifier,
            TaskType::Regression => ProbeKind::Regressor,
        },
        embed_dim,
        num_heads: c.num_heads,
        depth: c.num_probe_blocks,
        num_outputs: cfg.num_outputs()?,
        mlp_ratio: 4.0,
        slots,
    };
    pc.validate()?;
    Ok(pc)
}

fn multi_view(cfg: &EvalConfig, train: bool) -> Option<MultiView> {
    cfg.is_multi().then_some(MultiView {
        views: cfg.experiment.classifier.num_views,
        clips_per_view: cfg.experiment.classifier.clips_per_view,
        miss_prob: if train {
            cfg.experiment.data.miss_augment_prob
        } else {
            0.0
        },
        min_present: cfg.experiment.data.min_present,
    })
}

/// Keeps `fraction` of the samples, stratified by class (classification) or by label quintile
/// (regression), at least one per stratum, seeded.
pub fn label_fraction(
    samples: Vec<Sample>,
    fraction: f64,
    task: TaskType,
    seed: u64,
) -> Vec<Sample> {
    if fraction >= 1.0 {
        return samples;
    }
    let mut strata: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    match task {
        TaskType::Classification => {
            for (i, s) in samples.iter().enumerate() {
                strata.entry(s.label as i64).or_default().push(i);
            }
        }
        TaskType::Regression => {
            let mut order: Vec<usize> = (0..samples.len()).collect();
            order.sort_by(|&a, &b| samples[a].label.total_cmp(&samples[b].label));
            for (rank, i) in order.into_iter().enumerate() {
                strata
                    .entry((rank * 5 / samples.len().max(1)) as i64)
                    .or_default()
                    .push(i);
            }
        }
    }
    let mut keep = Vec::new();
    for (k, mut idx) in strata {
        idx.shuffle(&mut crate::rng::rng_for(&[seed, 0x1abe1, k as u64]));
        let n = ((idx.len() as f64 * fraction).round() as usize)
            .max(1)
            .min(idx.len());
        keep.extend_from_slice(&idx[..n]);
    }
    keep.sort_unstable();
    let mut samples: Vec<Option<Sample>> = samples.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| samples[i].take()).collect()
}

/// Metrics of one evaluation in display units.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Metrics {
    Class(ClassMetrics),
    Reg(RegMetrics),
}

impl Metrics {
    /// The selection score (higher is better): accuracy, or −MAE.
    pub fn score(&self) -> f64 {
        match self {
            Metrics::Class(m) => m.accuracy,
            Metrics::Reg(m) => -m.mae,
        }
    }
    pub fn line(&self) -> String {
        match self {
            Metrics::Class(m) => format!(
                "accuracy {:.1} %, balanced accuracy {:.1} % (n={})",
                100.0 * m.accuracy,
                100.0 * m.balanced_accuracy,
                m.n
            ),
            Metrics::Reg(m) => format!(
                "MAE {:.3}, RMSE {:.3}, R² {:.3} (n={})",
                m.mae, m.rmse, m.r2, m.n
            ),
        }
    }
}

/// Metrics of predictions against the samples' labels (real units when a scaler is known).
pub fn metrics_of(info: &TaskInfo, samples: &[Sample], ev: &Eval) -> Metrics {
    match info.task {
        TaskType::Classification => {
            let t: Vec<usize> = samples.iter().map(|s| s.label as usize).collect();
            let p: Vec<usize> = ev.pred.iter().map(|p| *p as usize).collect();
            Metrics::Class(classification(&t, &p, info.classes.len()))
        }
        TaskType::Regression => {
            let de = |z: f64| info.scaler.map_or(z, |s| s.denormalize(z));
            let t: Vec<f64> = samples.iter().map(|s| de(s.label)).collect();
            let p: Vec<f64> = ev.pred.iter().map(|&z| de(z)).collect();
            Metrics::Reg(regression(&t, &p))
        }
    }
}

/// Writes predictions with the reference's columns.
pub fn write_predictions(
    path: &Path,
    info: &TaskInfo,
    samples: &[Sample],
    ev: &Eval,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut f =
        fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    match info.task {
        TaskType::Classification => {
            writeln!(
                f,
                "video_path,true_label,predicted_class,prediction_confidence"
            )?;
            for (s, (p, c)) in samples.iter().zip(ev.pred.iter().zip(&ev.confidence)) {
                writeln!(f, "{},{},{},{:.6}", s.id, s.label as usize, *p as usize, c)?;
            }
        }
        TaskType::Regression => {
            writeln!(f, "video_path,label_real,pred_real,abs_error")?;
            let de = |z: f64| info.scaler.map_or(z, |s| s.denormalize(z));
            for (s, p) in samples.iter().zip(&ev.pred) {
                let (t, p) = (de(s.label), de(*p));
                writeln!(f, "{},{:.6},{:.6},{:.6}", s.id, t, p, (t - p).abs())?;
            }
        }
    }
    Ok(())
}

fn head_specs(cfg: &EvalConfig) -> Vec<HeadSpec> {
    cfg.experiment
        .optimization
        .multihead_kwargs
        .iter()
        .map(|h| HeadSpec {
            lr: h.lr,
            start_lr: h.start_lr.unwrap_or(h.lr),
            final_lr: h.final_lr.unwrap_or(0.0),
            warmup_epochs: h.warmup,
            weight_decay: h.weight_decay,
            final_weight_decay: h.final_weight_decay.unwrap_or(h.weight_decay),
        })
        .collect()
}

/// Resolves output directory, device and frozen encoder for either subcommand.
struct Setup {
    cfg: EvalConfig,
    out_dir: PathBuf,
    device: Device,
    dtype: DType,
    enc: FrozenEncoder,
    info: TaskInfo,
    probe_cfg: ProbeConfig,
    cache_dir: Option<PathBuf>,
    name: String,
    /// The ranks that share feature extraction and training (one process: the identity).
    coll: Rc<dyn Collective>,
}

fn setup(
    loaded: Loaded<EvalConfig>,
    dev: DeviceSpec,
    checkpoint: Option<PathBuf>,
    out: Option<PathBuf>,
    name: Option<String>,
) -> Result<Setup> {
    let mut cfg = loaded.config;
    if let Some(c) = checkpoint {
        cfg.model_kwargs.checkpoint = c;
    }
    for n in cfg.validate()? {
        tracing::info!("{n}");
    }
    let device = dev.open()?;
    let dtype = dev.compute_dtype(cfg.experiment.optimization.use_bfloat16);
    let out_dir = out.unwrap_or_else(|| cfg.output_dir());
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let enc_cfg = cfg.encoder_config()?;
    let key = cfg
        .model_kwargs
        .pretrain_kwargs
        .encoder
        .checkpoint_key
        .clone();
    let enc = load_encoder(&cfg.model_kwargs.checkpoint, &key, &enc_cfg, dtype, &device)?;
    let (scaler, target_name) = match cfg.task() {
        TaskType::Regression => scaler_for(&cfg)?,
        TaskType::Classification => (None, String::new()),
    };
    let classes = match cfg.task() {
        TaskType::Classification => {
            class_names(&cfg.experiment.data.dataset_train, cfg.num_outputs()?)
        }
        TaskType::Regression => vec![],
    };
    let info = TaskInfo {
        task: cfg.task(),
        classes,
        scaler,
        target_name,
    };
    let probe_cfg = probe_config(&cfg, enc_cfg.embed_dim)?;
    let o = &cfg.experiment.optimization;
    let cache_dir = o.cache_features.then(|| {
        o.feature_cache
            .clone()
            .unwrap_or_else(|| out_dir.join("features"))
    });
    let name = name.unwrap_or_else(|| cfg.tag.clone());
    Ok(Setup {
        cfg,
        out_dir,
        device,
        dtype,
        enc,
        info,
        probe_cfg,
        cache_dir,
        name,
        coll: Rc::new(SingleProcess),
    })
}

impl Setup {
    /// The probe's predictions on `samples`, batched as every evaluation here is.
    fn eval(
        &self,
        probe: &AttentiveProbe,
        multi: Option<MultiView>,
        samples: &[Sample],
    ) -> Result<Eval> {
        eval_probe(
            probe,
            &self.probe_cfg,
            multi,
            samples,
            16,
            &self.device,
            self.dtype,
        )
    }
}

/// Summary of a probe run (`summary.json`).
#[derive(Debug, Serialize)]
pub struct ProbeSummary {
    pub config: PathBuf,
    pub task: TaskInfo,
    pub train_samples: usize,
    pub val_samples: usize,
    pub test_samples: Option<usize>,
    pub skipped: usize,
    pub label_fraction: f64,
    pub best_head: usize,
    pub best_epoch: usize,
    pub best_head_settings: HeadSpec,
    pub val: Metrics,
    pub test: Option<Metrics>,
    /// Predicting the training mean (regression) or the majority class, on the same split as
    /// `test` (else `val`): the floor every probe must beat.
    pub baseline: Metrics,
    pub per_head_best: Vec<(usize, f64)>,
    pub seconds_features: f64,
    /// Feature-cache files used (`true` = read from the cache, `false` = encoded now).
    pub feature_cache: Vec<(PathBuf, bool)>,
    pub seconds_training: f64,
    pub checkpoint: PathBuf,
    pub synthetic_data: bool,
}

/// The trivial predictor: the training mean (regression) or majority class.
pub fn baseline(info: &TaskInfo, train: &[Sample], eval_on: &[Sample]) -> Metrics {
    let pred: Vec<f64> = match info.task {
        TaskType::Regression => {
            let m = train.iter().map(|s| s.label).sum::<f64>() / train.len().max(1) as f64;
            vec![m; eval_on.len()]
        }
        TaskType::Classification => {
            let mut counts = vec![0usize; info.classes.len().max(1)];
            for s in train {
                if let Some(c) = counts.get_mut(s.label as usize) {
                    *c += 1;
                }
            }
            let maj = counts
                .iter()
                .enumerate()
                .max_by_key(|(_, c)| **c)
                .map_or(0, |(i, _)| i);
            vec![maj as f64; eval_on.len()]
        }
    };
    let ev = Eval {
        confidence: vec![1.0; pred.len()],
        pred,
        loss: 0.0,
    };
    metrics_of(info, eval_on, &ev)
}

/// What a probe predicts: a classifier over the standard echo views is the view classifier;
/// a regressor's target (`name (unit)` as `scaler.json` gives it) becomes its measure.
fn probe_task(info: &TaskInfo) -> HeadTask {
    match info.task {
        TaskType::Classification => {
            let views = !info.classes.is_empty()
                && info
                    .classes
                    .iter()
                    .all(|c| c.parse::<echojepa_phantom::View>().is_ok());
            if views {
                HeadTask::view_classifier(info.classes.clone())
            } else {
                HeadTask::classifier(info.classes.clone())
            }
        }
        TaskType::Regression => {
            let t = info.target_name.as_str();
            let (name, unit) = t
                .strip_suffix(')')
                .and_then(|x| x.rsplit_once(" ("))
                .unwrap_or((t, ""));
            HeadTask::regressor(vec![Measure::from_label(name, unit)])
        }
    }
}

fn save_probe(
    s: &Setup,
    probe: &TensorMap,
    notes: BTreeMap<String, String>,
    provenance: &Provenance,
    stem: &Path,
) -> Result<()> {
    let mut nc = NativeConfig::new(s.enc.cfg.clone());
    let key = s
        .cfg
        .model_kwargs
        .pretrain_kwargs
        .encoder
        .checkpoint_key
        .clone();
    nc.model_id = format!("{}-{}", s.enc.cfg.name, s.name);
    nc.encoders = vec![key.clone()];
    let d = &s.cfg.experiment.data;
    // The probes' evaluation reads clips with the reference loader's frame rule (linspace).
    let mut input = InputSpec::reference(d.frames_per_clip, d.frame_step, d.resolution);
    input.channels = s.enc.cfg.in_chans;
    nc.input = Some(input);
    nc.probes.insert(
        s.name.clone(),
        echojepa::checkpoint::ProbeEntry {
            config: s.probe_cfg.clone(),
            classes: s.info.classes.clone(),
            targets: if s.info.task == TaskType::Regression {
                vec![s.info.target_name.clone()]
            } else {
                vec![]
            },
            scaler: s.info.scaler,
            temperature: None,
            min_confidence: None,
            valid_views: vec![],
            task: Some(probe_task(&s.info)),
        },
    );
    nc.provenance = Some(provenance.clone());
    nc.notes = notes;
    let mut ck = NativeCheckpoint::new(nc);
    // the frozen encoder's weights, so the file alone runs the model
    let enc_tensors = encoder_tensors(&s.cfg.model_kwargs.checkpoint, &key)?;
    ck.insert_part(&key, enc_tensors);
    ck.insert_part(&format!("probes.{}", s.name), probe.clone());
    ck.save(stem)?;
    Ok(())
}

fn encoder_tensors(path: &Path, key: &str) -> Result<TensorMap> {
    if features::is_native(path) {
        let ck = NativeCheckpoint::load(path, &Device::Cpu)?;
        Ok(ck.part(key))
    } else {
        Ok(PtFile::open(path)?.state_dict(&[key], &Device::Cpu)?)
    }
}

/// Trains the probes (or, with `val_only`, runs inference like `trainer evaluate`). `env` holds
/// the launcher's variables: under mpirun the ranks share the feature extraction and the
/// training steps, and rank 0 validates and writes.
pub fn run(args: Args, env: &EnvMap, out: &mut dyn Write) -> Result<()> {
    let dev = DeviceSpec::from_list(&args.devices)?;
    let mut loaded: Loaded<EvalConfig> = load(&args.config)?;
    loaded.config.dump_inputs = args.dump_inputs.clone();
    let world = World::from_env(env)?;
    if args.dry_run {
        return print_plan(&loaded, dev, &world, &args, out);
    }
    let timeout = std::time::Duration::from_secs(args.collective_timeout.max(1));
    let coll = crate::dist::open(
        &world,
        loaded.config.topology()?,
        &args.config,
        dev,
        timeout,
    )?;
    if loaded.config.val_only {
        if coll.world() > 1 {
            bail!(
                "{}: val_only inference runs as one process (launched as rank {} of {})",
                args.config.display(),
                coll.rank(),
                coll.world()
            );
        }
        let e = EvalArgs {
            config: args.config,
            probe: None,
            split: "val".into(),
            robustness: false,
            predictions: None,
            devices: args.devices,
            checkpoint: args.checkpoint,
            out: args.out,
            name: args.name,
            workers: args.workers,
            json: args.json,
            dump_inputs: args.dump_inputs,
        };
        return evaluate_loaded(loaded, e, out);
    }
    let config_path = args.config.clone();
    // plain `cuda` under a launcher is the local rank's GPU
    let dev = crate::dist::device_for(&world, dev);
    let mut s = setup(loaded, dev, args.checkpoint, args.out, args.name)?;
    s.coll = coll;
    if let Some(f) = args.label_fraction {
        s.cfg.experiment.data.label_fraction = Some(f);
    }
    let splits = Splits::load(&s, args.workers)?;
    splits.check_labels(&s.info)?;
    print_start(out, &s, &splits)?;

    let specs = head_specs(&s.cfg);
    let t1 = Instant::now();
    let sweep = train_heads(&s, &specs, &splits)?;
    let seconds_training = t1.elapsed().as_secs_f64();
    if s.coll.rank() != 0 {
        writeln!(
            out,
            "rank {} of {}: {} epochs trained; rank 0 validated and wrote the outputs",
            s.coll.rank(),
            s.coll.world(),
            s.cfg.experiment.optimization.num_epochs
        )?;
        return Ok(());
    }
    let (best_head, (_, best_epoch, best_tensors)) = sweep
        .best
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.0.total_cmp(&b.1.0).then(b.0.cmp(&a.0)))
        .map(|(i, b)| (i, b.clone()))
        .context("no heads")?;
    let best_tensors = best_tensors.context("no evaluated epoch")?;
    let (val_m, test_m, base) = evaluate_best(&s, &splits, &best_tensors)?;
    for (split, m) in [("val", Some(&val_m)), ("test", test_m.as_ref())] {
        if let Some(m) = m {
            write_confusion(&s, split, m)?;
        }
    }
    plot_curves(&s, &specs, &sweep.curves)?;

    let d = &s.cfg.experiment.data;
    let data = crate::provenance::of_lists(std::slice::from_ref(&d.dataset_train), d.synthetic);
    let provenance = s.enc.provenance.then_trained_on(&data);
    let synthetic = provenance.synthetic;
    let notes = probe_notes(&s, best_head, best_epoch, &val_m, synthetic);
    let stem = s.out_dir.join("probe");
    save_probe(&s, &best_tensors, notes, &provenance, &stem)?;
    let summary = ProbeSummary {
        config: config_path,
        task: s.info.clone(),
        train_samples: splits.train.len(),
        val_samples: splits.val.len(),
        test_samples: splits.test.as_ref().map(Vec::len),
        skipped: splits.skipped,
        label_fraction: splits.label_fraction,
        best_head,
        best_epoch,
        best_head_settings: specs[best_head].clone(),
        val: val_m,
        test: test_m,
        baseline: base,
        per_head_best: sweep.best.iter().map(|b| (b.1, b.0.abs())).collect(),
        seconds_features: splits.seconds_features,
        feature_cache: splits.feature_cache,
        seconds_training,
        checkpoint: native_paths(&stem).0,
        synthetic_data: synthetic,
    };
    fs::write(
        s.out_dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(());
    }
    print_probe_summary(out, &s, &summary)
}

/// `--dry-run`: the resolved plan, with the command line's overrides, and nothing read.
fn print_plan(
    loaded: &Loaded<EvalConfig>,
    dev: DeviceSpec,
    world: &World,
    args: &Args,
    out: &mut dyn Write,
) -> Result<()> {
    let mut plan = crate::plan::probe_plan(loaded, dev, world)?;
    if let Some(c) = &args.checkpoint {
        plan.checkpoint = c.clone();
    }
    if let Some(o) = &args.out {
        plan.output_dir = o.clone();
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?;
    } else {
        crate::plan::print_probe(&plan, out)?;
    }
    Ok(())
}

/// The cached or freshly encoded features of the three lists, the training list cut to the
/// label fraction.
struct Splits {
    train: Vec<Sample>,
    val: Vec<Sample>,
    test: Option<Vec<Sample>>,
    skipped: usize,
    label_fraction: f64,
    seconds_features: f64,
    /// Feature-cache files used (`true` = read from the cache, `false` = encoded now).
    feature_cache: Vec<(PathBuf, bool)>,
}

impl Splits {
    fn load(s: &Setup, workers: usize) -> Result<Self> {
        let d = &s.cfg.experiment.data;
        let t0 = Instant::now();
        let cache = s.cache_dir.as_deref();
        let coll = s.coll.as_ref();
        let (cfg, enc) = (&s.cfg, &s.enc);
        let train = split_features_on(
            coll,
            cfg,
            enc,
            &d.dataset_train,
            "train",
            None,
            cache,
            workers,
        )?;
        let val = split_features_on(coll, cfg, enc, &d.dataset_val, "val", None, cache, workers)?;
        let test = d
            .dataset_test
            .as_ref()
            .map(|t| split_features_on(coll, cfg, enc, t, "test", None, cache, workers))
            .transpose()?;
        let seconds_features = t0.elapsed().as_secs_f64();
        let feature_cache: Vec<(PathBuf, bool)> = [Some(&train), Some(&val), test.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|f| f.cache_file.clone().map(|c| (c, f.from_cache)))
            .collect();
        let skipped =
            train.skipped.len() + val.skipped.len() + test.as_ref().map_or(0, |t| t.skipped.len());
        let frac = d.label_fraction.unwrap_or(1.0);
        Ok(Self {
            train: label_fraction(train.samples, frac, s.info.task, d.label_seed),
            val: val.samples,
            test: test.map(|t| t.samples),
            skipped,
            label_fraction: frac,
            seconds_features,
            feature_cache,
        })
    }

    /// A classification label must be a class index: anything else would index out of the
    /// probe's outputs during training.
    fn check_labels(&self, info: &TaskInfo) -> Result<()> {
        if let TaskType::Classification = info.task
            && let Some(bad) = self.train.iter().chain(&self.val).find(|x| {
                x.label < 0.0 || x.label as usize >= info.classes.len() || x.label.fract() != 0.0
            })
        {
            bail!(
                "{}: label {} is not a class index below num_classes = {}",
                bad.id,
                bad.label,
                info.classes.len()
            );
        }
        Ok(())
    }
}

fn print_start(out: &mut dyn Write, s: &Setup, splits: &Splits) -> Result<()> {
    let o = &s.cfg.experiment.optimization;
    let frac = splits.label_fraction;
    writeln!(
        out,
        "probing {} ({}) on {} train / {} val{} samples{}; {} heads x {} epochs; features in {:.1} s",
        s.name,
        match s.info.task {
            TaskType::Classification => format!("{} classes", s.info.classes.len()),
            TaskType::Regression => s.info.target_name.clone(),
        },
        splits.train.len(),
        splits.val.len(),
        splits
            .test
            .as_ref()
            .map(|t| format!(" / {} test", t.len()))
            .unwrap_or_default(),
        if frac < 1.0 {
            format!(" (label fraction {frac})")
        } else {
            String::new()
        },
        o.multihead_kwargs.len(),
        o.num_epochs,
        splits.seconds_features
    )?;
    Ok(())
}

/// Per head: the best validation score with its epoch and tensors, and the score per epoch.
struct Sweep {
    best: Vec<(f64, usize, Option<TensorMap>)>,
    curves: Vec<Vec<(f64, f64)>>,
}

/// Trains every head of the grid together, validating each after every epoch (`log.csv`).
fn train_heads(s: &Setup, specs: &[HeadSpec], splits: &Splits) -> Result<Sweep> {
    let o = &s.cfg.experiment.optimization;
    let main = s.coll.rank() == 0;
    let mut trainer = ProbeTrainer::new_on(
        s.coll.clone(),
        s.probe_cfg.clone(),
        specs.to_vec(),
        multi_view(&s.cfg, true),
        splits.train.len(),
        o.batch_size,
        o.num_epochs,
        o.seed,
        s.dtype,
        &s.device,
    )?;
    // rank 0 alone validates and logs
    let mut log = if main {
        let log_path = s.out_dir.join("log.csv");
        let mut log = fs::File::create(&log_path)
            .with_context(|| format!("cannot write {}", log_path.display()))?;
        match s.info.task {
            TaskType::Classification => writeln!(
                log,
                "epoch,head,lr,wd,train_loss,val_loss,val_accuracy,val_balanced_accuracy"
            )?,
            TaskType::Regression => writeln!(
                log,
                "epoch,head,lr,wd,train_loss,val_loss,val_mae,val_rmse,val_r2"
            )?,
        }
        Some(log)
    } else {
        None
    };
    let nh = trainer.num_heads();
    let mut sweep = Sweep {
        best: vec![(f64::NEG_INFINITY, 0, None); nh],
        curves: vec![Vec::new(); nh],
    };
    let pb = indicatif::ProgressBar::new(o.num_epochs as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("probe epochs [{bar:30}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    for epoch in 0..o.num_epochs {
        let losses = trainer.train_epoch(&splits.train, epoch)?;
        let Some(log) = log.as_mut() else {
            pb.inc(1);
            continue;
        };
        let best_line = sweep.validate_epoch(&trainer, s, &splits.val, epoch, &losses, log)?;
        log.flush()?;
        pb.set_message(best_line);
        pb.inc(1);
        tracing::debug!(epoch, "probe epoch done");
    }
    pb.finish_and_clear();
    Ok(sweep)
}

impl Sweep {
    /// Validates every head after `epoch`, logs it, keeps each head's best tensors; returns
    /// the line of the epoch's best head for the progress bar.
    fn validate_epoch(
        &mut self,
        trainer: &ProbeTrainer,
        s: &Setup,
        val: &[Sample],
        epoch: usize,
        losses: &[f64],
        log: &mut fs::File,
    ) -> Result<String> {
        let mut best_line = String::new();
        let mut best_epoch_score = f64::NEG_INFINITY;
        for hi in 0..trainer.num_heads() {
            let ev = trainer.evaluate(hi, val)?;
            let m = metrics_of(&s.info, val, &ev);
            let (lr, wd) = trainer.current_lr_wd(hi);
            match &m {
                Metrics::Class(c) => writeln!(
                    log,
                    "{epoch},{hi},{lr:.3e},{wd:.4},{:.6},{:.6},{:.6},{:.6}",
                    losses[hi], ev.loss, c.accuracy, c.balanced_accuracy
                )?,
                Metrics::Reg(r) => writeln!(
                    log,
                    "{epoch},{hi},{lr:.3e},{wd:.4},{:.6},{:.6},{:.6},{:.6},{:.6}",
                    losses[hi], ev.loss, r.mae, r.rmse, r.r2
                )?,
            }
            let score = m.score();
            self.curves[hi].push((epoch as f64 + 1.0, score.abs()));
            if score > self.best[hi].0 {
                self.best[hi] = (score, epoch, Some(trainer.head_tensors(hi)?));
            }
            if score > best_epoch_score {
                best_epoch_score = score;
                best_line = format!("best head {hi}: {}", m.line());
            }
        }
        Ok(best_line)
    }
}

/// The best head on val and test (predictions written next to the summary), and the trivial
/// predictor on test (else val).
fn evaluate_best(
    s: &Setup,
    splits: &Splits,
    best_tensors: &TensorMap,
) -> Result<(Metrics, Option<Metrics>, Metrics)> {
    let probe = probe_from_tensors(&s.probe_cfg, best_tensors.clone(), s.dtype, &s.device)?;
    let multi = multi_view(&s.cfg, false);
    let val_ev = s.eval(&probe, multi, &splits.val)?;
    let val_m = metrics_of(&s.info, &splits.val, &val_ev);
    write_predictions(
        &s.out_dir.join("predictions_val.csv"),
        &s.info,
        &splits.val,
        &val_ev,
    )?;
    let mut test_m = None;
    if let Some(ts) = &splits.test {
        let ev = s.eval(&probe, multi, ts)?;
        test_m = Some(metrics_of(&s.info, ts, &ev));
        write_predictions(&s.out_dir.join("predictions_test.csv"), &s.info, ts, &ev)?;
    }
    let base = baseline(
        &s.info,
        &splits.train,
        splits.test.as_deref().unwrap_or(&splits.val),
    );
    Ok((val_m, test_m, base))
}

/// `confusion_<split>.csv` and `.png` of a classifier's metrics; nothing for a regressor.
fn write_confusion(s: &Setup, split: &str, m: &Metrics) -> Result<()> {
    if let Metrics::Class(c) = m {
        write_confusion_csv(
            &s.out_dir.join(format!("confusion_{split}.csv")),
            &c.confusion,
            &s.info.classes,
        )?;
        confusion_chart(
            &s.out_dir.join(format!("confusion_{split}.png")),
            &format!("{} {split} confusion", s.name),
            &c.confusion,
            &s.info.classes,
        )?;
    }
    Ok(())
}

/// `curves.png`: each head's validation score per epoch.
fn plot_curves(s: &Setup, specs: &[HeadSpec], curves: &[Vec<(f64, f64)>]) -> Result<()> {
    let series: Vec<Series> = curves
        .iter()
        .enumerate()
        .map(|(i, pts)| Series {
            name: format!(
                "head {i} lr {:.0e} wd {}",
                specs[i].lr, specs[i].weight_decay
            ),
            points: pts.clone(),
        })
        .collect();
    let ylabel = match s.info.task {
        TaskType::Classification => "val accuracy",
        TaskType::Regression => "val MAE",
    };
    line_chart(
        &s.out_dir.join("curves.png"),
        &format!("{} probe heads", s.name),
        "epoch",
        ylabel,
        &series,
        false,
    )?;
    Ok(())
}

/// The notes saved in the probe checkpoint: provenance, the chosen head, intended use.
fn probe_notes(
    s: &Setup,
    best_head: usize,
    best_epoch: usize,
    val_m: &Metrics,
    synthetic: bool,
) -> BTreeMap<String, String> {
    let mut notes = BTreeMap::new();
    notes.insert(
        "trained_by".into(),
        "trainer probe (frozen encoder, attentive probe)".into(),
    );
    notes.insert(
        "encoder_checkpoint".into(),
        s.cfg.model_kwargs.checkpoint.display().to_string(),
    );
    notes.insert(
        "best_head".into(),
        format!("{best_head} (epoch {best_epoch})"),
    );
    notes.insert("val_metrics".into(), val_m.line());
    notes.insert(
        "intended_use".into(),
        "research only; not a medical device; no clinical claims".into(),
    );
    if synthetic {
        notes.insert(
            "training_data".into(),
            "SYNTHETIC phantom videos (no patients); outputs have no clinical meaning".into(),
        );
    }
    notes
}

fn print_probe_summary(out: &mut dyn Write, s: &Setup, summary: &ProbeSummary) -> Result<()> {
    let spec = &summary.best_head_settings;
    writeln!(
        out,
        "best head {} (lr {:.1e}, wd {}) at epoch {}",
        summary.best_head,
        spec.lr,
        spec.weight_decay,
        summary.best_epoch + 1
    )?;
    writeln!(out, "  val:  {}", summary.val.line())?;
    if let Some(t) = &summary.test {
        writeln!(out, "  test: {}", t.line())?;
    }
    writeln!(
        out,
        "  baseline ({}): {}",
        match s.info.task {
            TaskType::Regression => "predict the training mean",
            TaskType::Classification => "predict the majority class",
        },
        summary.baseline.line()
    )?;
    if summary.skipped > 0 {
        writeln!(
            out,
            "  {} unreadable samples skipped (see the log)",
            summary.skipped
        )?;
    }
    if summary.synthetic_data {
        writeln!(
            out,
            "  note: SYNTHETIC phantom data; these numbers say nothing about patients"
        )?;
    }
    writeln!(
        out,
        "wrote {} (+ .json), summary.json, log.csv, curves.png, predictions_*.csv{} in {}",
        summary.checkpoint.display(),
        if s.info.task == TaskType::Classification {
            ", confusion_*.csv/png"
        } else {
            ""
        },
        s.out_dir.display()
    )?;
    Ok(())
}

/// Loads a trained probe: native (`probes.<name>`, or the only probe) or official `.pt`
/// (`classifiers[0]`).
pub fn load_probe(
    path: &Path,
    name: &str,
    cfg: &ProbeConfig,
    dtype: DType,
    device: &Device,
) -> Result<AttentiveProbe> {
    if features::is_native(path) {
        let ck = NativeCheckpoint::load(path, &Device::Cpu)?;
        let key = if ck.config.probes.contains_key(name) {
            name.to_string()
        } else if ck.config.probes.len() == 1 {
            ck.config.probes.keys().next().cloned().unwrap_or_default()
        } else {
            bail!(
                "{}: no probe `{name}` (has: {})",
                path.display(),
                ck.config
                    .probes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let entry = &ck.config.probes[&key];
        if entry.config != *cfg {
            bail!(
                "{}: probe `{key}` was trained as {:?}, the config describes {:?}",
                path.display(),
                entry.config,
                cfg
            );
        }
        let (st, _) = native_paths(path);
        return Ok(echojepa::checkpoint::load_strict(
            &st,
            ck.part(&format!("probes.{key}")),
            dtype,
            device,
            |vb| AttentiveProbe::new(cfg, vb),
        )?);
    }
    let pt = PtFile::open(path)?;
    let t = pt.state_dict(&["classifiers", "0"], &Device::Cpu)?;
    Ok(echojepa::checkpoint::load_strict(
        pt.path(),
        t,
        dtype,
        device,
        |vb| AttentiveProbe::new(cfg, vb),
    )?)
}

/// `trainer evaluate`.
pub fn evaluate(args: EvalArgs, out: &mut dyn Write) -> Result<()> {
    DeviceSpec::from_list(&args.devices)?;
    let loaded: Loaded<EvalConfig> = load(&args.config)?;
    evaluate_loaded(loaded, args, out)
}

#[derive(Debug, Serialize)]
struct RobustRow {
    perturbation: String,
    metrics: Metrics,
    /// Relative change of the error (MAE, or 1 − accuracy) against clean input.
    relative_degradation: f64,
}

#[derive(Debug, Serialize)]
struct EvalSummary {
    split: String,
    samples: usize,
    skipped: usize,
    metrics: Metrics,
    predictions: PathBuf,
    robustness: Vec<RobustRow>,
    synthetic_data: bool,
}

fn error_of(m: &Metrics) -> f64 {
    match m {
        Metrics::Class(c) => 1.0 - c.accuracy,
        Metrics::Reg(r) => r.mae,
    }
}

fn evaluate_loaded(
    mut loaded: Loaded<EvalConfig>,
    args: EvalArgs,
    out: &mut dyn Write,
) -> Result<()> {
    if args.dump_inputs.is_some() {
        loaded.config.dump_inputs = args.dump_inputs.clone();
    }
    let s = setup(
        loaded,
        DeviceSpec::from_list(&args.devices)?,
        args.checkpoint.clone(),
        args.out.clone(),
        args.name.clone(),
    )?;
    let csv = split_list(&s.cfg, &args.split)?;
    let probe_path = args
        .probe
        .clone()
        .or_else(|| s.cfg.probe_checkpoint.clone())
        .unwrap_or_else(|| s.out_dir.join("probe"));
    let probe = load_probe(&probe_path, &s.name, &s.probe_cfg, s.dtype, &s.device)
        .with_context(|| format!("loading probe {}", probe_path.display()))?;
    let multi = multi_view(&s.cfg, false);
    let cache = s.cache_dir.as_deref();
    let clean = split_features(&s.cfg, &s.enc, &csv, &args.split, None, cache, args.workers)?;
    let ev = s.eval(&probe, multi, &clean.samples)?;
    let m = metrics_of(&s.info, &clean.samples, &ev);
    let pred_path = args
        .predictions
        .clone()
        .or_else(|| s.cfg.predictions_save_path.clone())
        .unwrap_or_else(|| s.out_dir.join(format!("predictions_{}.csv", args.split)));
    write_predictions(&pred_path, &s.info, &clean.samples, &ev)?;
    write_confusion(&s, &args.split, &m)?;
    let rows = if args.robustness {
        robustness(&s, &probe, &csv, &args, &m)?
    } else {
        Vec::new()
    };
    let list =
        crate::provenance::of_lists(std::slice::from_ref(&csv), s.cfg.experiment.data.synthetic);
    let synthetic = s.enc.provenance.synthetic || list.synthetic;
    let summary = EvalSummary {
        split: args.split.clone(),
        samples: clean.samples.len(),
        skipped: clean.skipped.len(),
        metrics: m,
        predictions: pred_path,
        robustness: rows,
        synthetic_data: synthetic,
    };
    fs::write(
        s.out_dir.join(format!("evaluation_{}.json", args.split)),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(());
    }
    print_evaluation(out, &s, &csv, &summary)
}

/// The list `--split` names in the config.
fn split_list(cfg: &EvalConfig, split: &str) -> Result<PathBuf> {
    let d = &cfg.experiment.data;
    Ok(match split {
        "val" => d.dataset_val.clone(),
        "test" => d
            .dataset_test
            .clone()
            .context("--split test needs experiment.data.dataset_test in the config")?,
        "train" => d.dataset_train.clone(),
        other => bail!("--split {other}: use val, test or train"),
    })
}

/// The probe on each perturbation of the paper's set, against the clean metrics `clean`
/// (also written to `robustness.csv`).
fn robustness(
    s: &Setup,
    probe: &AttentiveProbe,
    csv: &Path,
    args: &EvalArgs,
    clean: &Metrics,
) -> Result<Vec<RobustRow>> {
    let multi = multi_view(&s.cfg, false);
    let cache = s.cache_dir.as_deref();
    let base_err = error_of(clean);
    let mut rows = Vec::new();
    for p in Perturbation::paper_set() {
        let f = split_features(
            &s.cfg,
            &s.enc,
            csv,
            &args.split,
            Some(p),
            cache,
            args.workers,
        )?;
        let ev = s.eval(probe, multi, &f.samples)?;
        let pm = metrics_of(&s.info, &f.samples, &ev);
        let rel = if base_err > 0.0 {
            (error_of(&pm) - base_err) / base_err
        } else {
            0.0
        };
        rows.push(RobustRow {
            perturbation: p.name(),
            metrics: pm,
            relative_degradation: rel,
        });
    }
    let mut f = fs::File::create(s.out_dir.join("robustness.csv"))?;
    writeln!(f, "perturbation,error,relative_degradation")?;
    writeln!(f, "clean,{:.6},0", base_err)?;
    for r in &rows {
        writeln!(
            f,
            "{},{:.6},{:.6}",
            r.perturbation,
            error_of(&r.metrics),
            r.relative_degradation
        )?;
    }
    Ok(rows)
}

fn print_evaluation(
    out: &mut dyn Write,
    s: &Setup,
    csv: &Path,
    summary: &EvalSummary,
) -> Result<()> {
    let m = &summary.metrics;
    writeln!(
        out,
        "{} on {} ({} samples): {}",
        s.name,
        csv.display(),
        summary.samples,
        m.line()
    )?;
    if !summary.robustness.is_empty() {
        let unit = match s.info.task {
            TaskType::Classification => "error rate",
            TaskType::Regression => "MAE",
        };
        writeln!(
            out,
            "robustness ({unit}; relative change vs clean {:.3}):",
            error_of(m)
        )?;
        for r in &summary.robustness {
            writeln!(
                out,
                "  {:<22} {:.3}  ({:+.1} %)",
                r.perturbation,
                error_of(&r.metrics),
                100.0 * r.relative_degradation
            )?;
        }
        let mean = summary
            .robustness
            .iter()
            .map(|r| r.relative_degradation)
            .sum::<f64>()
            / summary.robustness.len() as f64;
        writeln!(out, "  mean degradation {:+.1} %", 100.0 * mean)?;
    }
    if summary.skipped > 0 {
        writeln!(out, "{} unreadable samples skipped", summary.skipped)?;
    }
    if summary.synthetic_data {
        writeln!(
            out,
            "note: SYNTHETIC phantom data; these numbers say nothing about patients"
        )?;
    }
    writeln!(out, "wrote {}", summary.predictions.display())?;
    Ok(())
}
