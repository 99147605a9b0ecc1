//! `trainer pretrain`: V-JEPA pretraining (and cooldown) from a reference pretraining config —
//! multi-block masks, L1 to the layer-normed EMA target, AdamW with the reference groups and
//! schedules, periodic checkpoints with exact resume, metrics CSV and a loss-curve PNG.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use echojepa::bundle::Provenance;
use echojepa::checkpoint::{InputSpec, NativeCheckpoint, NativeConfig, native_paths};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::config::pretrain::PretrainConfig;
use crate::config::{Loaded, load};
use crate::device::{DeviceSpec, dtype_name, wants_bf16};
use crate::dist::collective::average_grads;
use crate::dist::{Collective, EnvMap, World};
use crate::jepa::{InitSource, Jepa};
use crate::masks::{BatchMasks, Grid, MultiBlockMasker};
use crate::optim::AdamW;
use crate::plot::{Series, line_chart};
use crate::pretrain_data::{ClipSource, LoaderPos};
use crate::schedule::Schedules;

/// Run V-JEPA pretraining (or a cooldown) from a reference pretraining config.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pretraining config in the reference YAML schema (app, data, data_aug, loss, mask, meta,
    /// model, optimization).
    #[arg(long, short, visible_alias = "fname")]
    pub config: PathBuf,
    /// Device: `cpu` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, num_args = 1.., default_value = "cpu")]
    pub devices: Vec<String>,
    /// Resume from `<folder>/latest` when it exists (as `meta.load_checkpoint: true`).
    #[arg(long)]
    pub resume: bool,
    /// Resolve and print the plan (model, data, masks, schedules) without reading data.
    #[arg(long)]
    pub dry_run: bool,
    /// With `--dry-run`: print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Output folder (checkpoints, logs, curves) instead of the config's `folder`.
    #[arg(long = "out", visible_alias = "folder", value_name = "DIR")]
    pub folder: Option<PathBuf>,
    /// Stop after this global step (the schedules still span the whole run); for smoke tests.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// With several ranks: seconds one all-reduce may wait for the other ranks before this rank
    /// stops the job with an error (a rank that hangs would otherwise hold the others forever).
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub collective_timeout: u64,
}

/// Training progress saved next to the weights; with the optimizer state it makes a resumed
/// run continue exactly where the checkpoint was taken.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Steps completed (the next step to run).
    pub step: usize,
    pub epoch: usize,
    pub ipe: usize,
    pub seed: u64,
    /// Seconds of training before this checkpoint (for the metrics' `seconds` column).
    pub elapsed_s: f64,
    /// Optimizer step count per parameter.
    pub adam_steps: HashMap<String, u64>,
    /// Architecture, batch, masks and schedules the run was started with; a resume with a
    /// different fingerprint is refused.
    pub fingerprint: String,
    /// Clips that could not be decoded so far.
    #[serde(default)]
    pub skipped_clips: u64,
    /// Where the data loader stands.
    #[serde(default)]
    pub loader: LoaderPos,
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub wd: f64,
    pub momentum: f64,
    pub grad_norm: f64,
    pub clips_per_s: f64,
    pub seconds: f64,
}

pub const METRICS_HEADER: &str = "step,epoch,loss,lr,wd,momentum,grad_norm,clips_per_s,seconds";

impl MetricsRow {
    fn csv(&self) -> String {
        format!(
            "{},{},{:.8},{:.6e},{:.6},{:.8},{:.6},{:.3},{:.3}",
            self.step,
            self.epoch,
            self.loss,
            self.lr,
            self.wd,
            self.momentum,
            self.grad_norm,
            self.clips_per_s,
            self.seconds
        )
    }
}

/// Reads `metrics.csv` (step and loss columns and the rest).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 9 {
            bail!(
                "{} line {}: expected 9 columns, got {}",
                path.display(),
                i + 1,
                f.len()
            );
        }
        let p = |j: usize| -> Result<f64> {
            f[j].parse::<f64>().with_context(|| {
                format!(
                    "{} line {} column {}: `{}`",
                    path.display(),
                    i + 1,
                    j + 1,
                    f[j]
                )
            })
        };
        rows.push(MetricsRow {
            step: p(0)? as usize,
            epoch: p(1)? as usize,
            loss: p(2)?,
            lr: p(3)?,
            wd: p(4)?,
            momentum: p(5)?,
            grad_norm: p(6)?,
            clips_per_s: p(7)?,
            seconds: p(8)?,
        });
    }
    Ok(rows)
}

/// Everything a run needs, resolved from the config.
pub struct Run {
    pub cfg: PretrainConfig,
    pub device: Device,
    pub dtype: DType,
    pub jepa: Jepa,
    pub opt: AdamW,
    pub sched: Schedules,
    pub maskers: Vec<MultiBlockMasker>,
    pub state: TrainState,
    /// The ranks this run averages its gradients over (one process alone by default).
    pub collective: Rc<dyn Collective>,
}

/// What a resumed run must share with the checkpoint. The batch is the global one (per-rank batch
/// x ranks; with one rank the same value as before there were ranks), so a run may resume with
/// another world size as long as the global batch stays.
fn fingerprint(cfg: &PretrainConfig, world: usize) -> Result<String> {
    let v = serde_json::json!({
        "encoder": cfg.encoder_config()?,
        "predictor": cfg.predictor_config()?,
        "batch_size": cfg.data.batch_size * world,
        "mask": cfg.mask,
        "seed": cfg.meta.seed,
        "optimization": {
            "epochs": cfg.optimization.epochs, "ipe_scale": cfg.optimization.ipe_scale,
            "warmup": cfg.optimization.warmup, "lr": cfg.optimization.lr,
            "start_lr": cfg.optimization.start_lr, "final_lr": cfg.optimization.final_lr,
            "weight_decay": cfg.optimization.weight_decay, "ema": cfg.optimization.ema,
            "is_anneal": cfg.optimization.is_anneal,
        },
    });
    Ok(v.to_string())
}

/// Paths of the four files of a training checkpoint `stem`.
pub struct CkptPaths {
    pub model_st: PathBuf,
    pub model_json: PathBuf,
    pub train_st: PathBuf,
    pub train_json: PathBuf,
}

pub fn ckpt_paths(stem: &Path) -> CkptPaths {
    let (model_st, model_json) = native_paths(stem);
    let s = stem.to_string_lossy();
    CkptPaths {
        model_st,
        model_json,
        train_st: PathBuf::from(format!("{s}.train.safetensors")),
        train_json: PathBuf::from(format!("{s}.train.json")),
    }
}

impl Run {
    /// Builds the model (fresh, from `anneal_ckpt`, or resumed) and the optimizer.
    pub fn new(
        cfg: PretrainConfig,
        folder: PathBuf,
        dev: DeviceSpec,
        ipe: usize,
        resume: bool,
        collective: Rc<dyn Collective>,
    ) -> Result<Self> {
        let device = dev.open()?;
        let dtype = dev.compute_dtype(wants_bf16(&cfg.meta.dtype));
        let enc_cfg = cfg.encoder_config()?;
        let pred_cfg = cfg.predictor_config()?;
        let sched = Schedules::from_config(&cfg.optimization, ipe);
        let grid = Grid::new(
            cfg.frames_per_clip(),
            cfg.data.crop_size,
            cfg.data.tubelet_size,
            cfg.data.patch_size,
        );
        let maskers = cfg
            .mask
            .iter()
            .enumerate()
            .map(|(i, m)| MultiBlockMasker::new(m.clone(), grid, i))
            .collect();
        let fp = fingerprint(&cfg, collective.world())?;

        let resume_stem = match (
            &cfg.meta.read_checkpoint,
            resume || cfg.meta.load_checkpoint,
        ) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => {
                let latest = folder.join("latest");
                ckpt_paths(&latest).train_json.exists().then_some(latest)
            }
            _ => None,
        };
        if let Some(stem) = resume_stem {
            return Self::resume(
                cfg, folder, device, dtype, sched, maskers, fp, &stem, collective,
            );
        }
        if resume || cfg.meta.load_checkpoint {
            tracing::info!(
                "no checkpoint in {} to resume from; starting fresh",
                folder.display()
            );
        }
        let o = &cfg.optimization;
        let init = if o.is_anneal || o.force_load_pretrain {
            let p = o.anneal_ckpt.clone().context(
                "optimization.anneal_ckpt is required with is_anneal/force_load_pretrain",
            )?;
            InitSource::Checkpoint(p)
        } else {
            InitSource::Random {
                seed: cfg.meta.seed,
                zero_mask_tokens: cfg.model.zero_init_mask_tokens,
            }
        };
        let jepa = Jepa::new(&enc_cfg, &pred_cfg, &init, dtype, &device)?;
        let opt = AdamW::new(jepa.named_vars()?, o.betas, o.eps)?;
        let state = TrainState {
            step: 0,
            epoch: 0,
            ipe,
            seed: cfg.meta.seed,
            elapsed_s: 0.0,
            adam_steps: HashMap::new(),
            fingerprint: fp,
            skipped_clips: 0,
            loader: LoaderPos::default(),
        };
        Ok(Self {
            cfg,
            device,
            dtype,
            jepa,
            opt,
            sched,
            maskers,
            state,
            collective: collective.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn resume(
        cfg: PretrainConfig,
        _folder: PathBuf,
        device: Device,
        dtype: DType,
        sched: Schedules,
        maskers: Vec<MultiBlockMasker>,
        fp: String,
        stem: &Path,
        collective: Rc<dyn Collective>,
    ) -> Result<Self> {
        let p = ckpt_paths(stem);
        let text = fs::read_to_string(&p.train_json)
            .with_context(|| format!("cannot read {}", p.train_json.display()))?;
        let state: TrainState = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a training state", p.train_json.display()))?;
        if state.fingerprint != fp {
            bail!(
                "{}: the checkpoint was written by a run with a different architecture, batch size, \
                 masks, seed or schedule; refusing to resume (start a new folder instead)",
                p.train_json.display()
            );
        }
        if state.ipe != sched.ipe {
            bail!(
                "{}: iterations per epoch changed ({} then, {} now); set optimization.ipe to {}",
                p.train_json.display(),
                state.ipe,
                sched.ipe,
                state.ipe
            );
        }
        let ck = NativeCheckpoint::load(stem, &Device::Cpu)?;
        let train = candle_core::safetensors::load(&p.train_st, &Device::Cpu)
            .with_context(|| format!("cannot read {}", p.train_st.display()))?;
        let check = |t: Option<&Tensor>, file: &Path| -> Result<()> {
            let s = t
                .with_context(|| format!("{}: no `train.step` tensor", file.display()))?
                // the model file may store it as a float (native checkpoints load as f32)
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?[0] as usize;
            if s != state.step {
                bail!(
                    "{} is at step {s} but {} at step {} (interrupted while saving?); resume from a \
                     numbered checkpoint with meta.read_checkpoint",
                    file.display(),
                    p.train_json.display(),
                    state.step
                );
            }
            Ok(())
        };
        check(train.get("train.step"), &p.train_st)?;
        check(ck.tensors.get("train.step"), &p.model_st)?;
        let jepa = Jepa::from_parts(
            &cfg.encoder_config()?,
            &cfg.predictor_config()?,
            ck.part("encoder"),
            ck.part("target_encoder"),
            ck.part("predictor"),
            dtype,
            &device,
            format!("resumed from {}", p.model_st.display()),
        )?;
        // the run's own checkpoint: its provenance already holds the data and the start
        let mut jepa = jepa;
        jepa.init_provenance = Some(ck.config.provenance());
        let mut opt = AdamW::new(
            jepa.named_vars()?,
            cfg.optimization.betas,
            cfg.optimization.eps,
        )?;
        let opt_tensors: HashMap<String, Tensor> = train
            .into_iter()
            .filter(|(k, _)| k.starts_with("optim."))
            .collect();
        opt.load_state("optim.", &opt_tensors, &state.adam_steps)
            .with_context(|| format!("optimizer state in {}", p.train_st.display()))?;
        tracing::info!("resuming at step {} from {}", state.step, stem.display());
        Ok(Self {
            cfg,
            device,
            dtype,
            jepa,
            opt,
            sched,
            maskers,
            state,
            collective: collective.clone(),
        })
    }

    /// One optimisation step on a batch; returns the metrics row (without timing).
    pub fn step(&mut self, clips: &Tensor) -> Result<MetricsRow> {
        let i = self.state.step;
        let (lr, wd, momentum) = self.sched.at(i);
        let clips = clips.to_device(&self.device)?.to_dtype(self.dtype)?;
        let b = clips.dim(0)?;
        let (rank, world) = (self.collective.rank(), self.collective.world());
        let masks = self
            .maskers
            .iter()
            .map(|m| {
                if world == 1 {
                    return m.sample(b, self.state.seed, i as u64);
                }
                // the masks of the global batch, and this rank's rows of them, so that N ranks
                // mask exactly as one process with the whole batch
                let all = m.sample(b * world, self.state.seed, i as u64)?;
                let rows = rank * b..(rank + 1) * b;
                Ok(BatchMasks {
                    enc: all.enc[rows.clone()].to_vec(),
                    pred: all.pred[rows].to_vec(),
                    block: all.block,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let h = self.jepa.targets(&clips)?;
        let out = self.jepa.loss(&clips, &h, &masks, self.cfg.loss.loss_exp)?;
        let mut loss = out.loss.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            bail!(
                "loss is {loss} at step {i} (per mask config: {:?})",
                out.per_mask
            );
        }
        let mut grads = out.loss.backward()?;
        if self.collective.world() > 1 {
            // every rank logs the loss of the global batch, and steps with its mean gradient
            let mut l = [loss as f32];
            self.collective.all_reduce_mean(&mut l)?;
            loss = l[0] as f64;
            average_grads(self.collective.as_ref(), self.opt.params(), &mut grads)?;
        }
        let stats = self
            .opt
            .step(&grads, lr, wd, self.cfg.optimization.clip_grad)?;
        drop(grads);
        let opt = &self.opt;
        self.jepa.ema_update(momentum, |name| opt.master(name))?;
        self.state.step += 1;
        self.state.epoch = self.state.step / self.sched.ipe;
        Ok(MetricsRow {
            step: i,
            epoch: i / self.sched.ipe,
            loss,
            lr,
            wd,
            momentum,
            grad_norm: stats.grad_norm,
            clips_per_s: 0.0,
            seconds: 0.0,
        })
    }

    /// Writes a checkpoint `stem` (model as a native checkpoint; optimizer and progress next to
    /// it). Files are written under temporary names and renamed, training state first.
    pub fn save(&mut self, stem: &Path, provenance: &Provenance) -> Result<()> {
        let p = ckpt_paths(stem);
        if let Some(dir) = p.model_st.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let step_t = Tensor::new(&[self.state.step as u32], &Device::Cpu)?;
        let (opt_t, steps) = self.opt.state("optim.");
        self.state.adam_steps = steps;
        let mut train: HashMap<String, Tensor> = opt_t
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        train.insert("train.step".into(), step_t.clone());
        let tmp = |q: &Path| PathBuf::from(format!("{}.tmp", q.display()));
        candle_core::safetensors::save(&train, tmp(&p.train_st))
            .with_context(|| format!("cannot write {}", p.train_st.display()))?;
        fs::write(tmp(&p.train_json), serde_json::to_vec_pretty(&self.state)?)
            .with_context(|| format!("cannot write {}", p.train_json.display()))?;

        let mut nc = NativeConfig::new(self.jepa.enc_cfg.clone());
        nc.model_id = format!("vjepa-{}-step{}", self.jepa.enc_cfg.name, self.state.step);
        nc.encoders = vec!["encoder".into(), "target_encoder".into()];
        nc.predictor = Some(self.jepa.pred_cfg.clone());
        let d = &self.cfg.data;
        let mut input = InputSpec::reference(
            self.cfg.frames_per_clip(),
            d.frame_step.unwrap_or(1),
            d.crop_size,
        );
        input.frame_step = d.frame_step;
        input.fps = d.fps;
        input.channels = self.jepa.enc_cfg.in_chans;
        nc.input = Some(input);
        nc.notes.insert(
            "trained_by".into(),
            "trainer pretrain (V-JEPA objective)".into(),
        );
        nc.notes.insert("step".into(), self.state.step.to_string());
        nc.notes.insert("init".into(), self.jepa.init_note.clone());
        nc.provenance = Some(provenance.clone());
        nc.notes
            .insert("training_data".into(), provenance.description.clone());
        nc.notes.insert(
            "intended_use".into(),
            "research only; not a medical device; no clinical claims".into(),
        );
        let mut ck = NativeCheckpoint::new(nc);
        let mut enc = HashMap::new();
        let mut pred = HashMap::new();
        for par in self.opt.params() {
            let t = self
                .opt
                .master(&par.name)
                .context("parameter vanished")?
                .to_device(&Device::Cpu)?;
            if let Some(k) = par.name.strip_prefix("encoder.") {
                enc.insert(k.to_string(), t);
            } else if let Some(k) = par.name.strip_prefix("predictor.") {
                pred.insert(k.to_string(), t);
            }
        }
        let tgt = self
            .jepa
            .target
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        ck.insert_part("encoder", enc);
        ck.insert_part("target_encoder", tgt);
        ck.insert_part("predictor", pred);
        ck.tensors.insert("train.step".into(), step_t);
        let tmp_stem = PathBuf::from(format!("{}.tmp", stem.display()));
        ck.save(&tmp_stem)?;
        let tp = ckpt_paths(&tmp_stem);
        for (from, to) in [
            (tmp(&p.train_st), &p.train_st),
            (tmp(&p.train_json), &p.train_json),
            (tp.model_st, &p.model_st),
            (tp.model_json, &p.model_json),
        ] {
            fs::rename(&from, to)
                .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    }
}

/// Appends metrics rows; on resume, keeps only the rows before the resumed step.
pub struct MetricsWriter {
    path: PathBuf,
    file: fs::File,
}

impl MetricsWriter {
    pub fn open(path: &Path, resume_step: usize) -> Result<Self> {
        let mut keep = Vec::new();
        if resume_step > 0 && path.exists() {
            keep = read_metrics(path)?
                .into_iter()
                .filter(|r| r.step < resume_step)
                .collect();
        }
        let mut file =
            fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(file, "{METRICS_HEADER}")?;
        for r in &keep {
            writeln!(file, "{}", r.csv())?;
        }
        file.flush()?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn push(&mut self, r: &MetricsRow) -> Result<()> {
        writeln!(self.file, "{}", r.csv())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }
}

/// Draws `loss.png` from `metrics.csv`.
pub fn plot_loss(metrics: &Path, out: &Path, title: &str) -> Result<()> {
    let rows = read_metrics(metrics)?;
    let raw: Vec<(f64, f64)> = rows.iter().map(|r| (r.step as f64, r.loss)).collect();
    let mut series = vec![Series {
        name: "loss".into(),
        points: raw.clone(),
    }];
    if raw.len() >= 20 {
        let w = (raw.len() / 20).max(2);
        let smooth: Vec<(f64, f64)> = raw
            .windows(w)
            .map(|win| {
                (
                    win[win.len() - 1].0,
                    win.iter().map(|p| p.1).sum::<f64>() / w as f64,
                )
            })
            .collect();
        series.push(Series {
            name: format!("mean of {w}"),
            points: smooth,
        });
    }
    line_chart(out, title, "step", "loss", &series, false)
}

/// Dry-run or train, as the arguments say. `env` holds the launcher's variables (the binary reads
/// the environment once).
pub fn run(args: Args, env: &EnvMap, out: &mut dyn Write) -> Result<()> {
    let dev = DeviceSpec::from_list(&args.devices)?;
    let loaded: Loaded<PretrainConfig> = load(&args.config)?;
    let world = World::from_env(env)?;
    // `cuda` under a launcher: this rank's GPU, cuda:LOCAL_RANK
    let dev = crate::dist::device_for(&world, dev);
    if args.dry_run {
        let mut plan = crate::plan::pretrain_plan(&loaded, dev, args.resume, &world)?;
        if let Some(f) = &args.folder {
            plan.outputs = plan
                .outputs
                .iter()
                .map(|o| f.join(o.file_name().unwrap_or_default()))
                .collect();
        }
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?;
        } else {
            crate::plan::print_pretrain(&plan, out)?;
        }
        return Ok(());
    }
    let mut cfg = loaded.config;
    let notes = cfg.validate()?;
    for n in notes {
        tracing::info!("{n}");
    }
    let timeout = std::time::Duration::from_secs(args.collective_timeout.max(1));
    let collective = crate::dist::open(&world, cfg.topology()?, &args.config, dev, timeout)?;
    if let Some(f) = args.folder {
        cfg.folder = f;
    }
    let mut source = crate::pretrain_data::open(&cfg, collective.rank(), collective.world())?;
    let ipe = cfg
        .optimization
        .ipe
        .unwrap_or_else(|| source.iterations_per_epoch());
    if ipe == 0 {
        bail!(
            "the datasets hold fewer clips than one batch of {}; lower data.batch_size",
            cfg.data.batch_size
        );
    }
    train(
        cfg,
        dev,
        ipe,
        args.resume,
        args.max_steps,
        source.as_mut(),
        collective,
        out,
    )
}

/// The training loop. With several ranks, every rank steps in lockstep and rank 0 alone writes
/// checkpoints, metrics and the plot.
#[allow(clippy::too_many_arguments)]
pub fn train(
    cfg: PretrainConfig,
    dev: DeviceSpec,
    ipe: usize,
    resume: bool,
    max_steps: Option<usize>,
    source: &mut dyn ClipSource,
    collective: Rc<dyn Collective>,
    out: &mut dyn Write,
) -> Result<()> {
    let folder = cfg.folder.clone();
    fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
    let data = data_provenance(&cfg);
    let mut run = Run::new(cfg, folder.clone(), dev, ipe, resume, collective)?;
    let (rank, world) = (run.collective.rank(), run.collective.world());
    let main = rank == 0;
    let provenance = match &run.jepa.init_provenance {
        // resumed: the checkpoint's provenance already describes this run
        Some(own) if run.state.step > 0 => Provenance {
            synthetic: own.synthetic || data.synthetic,
            description: own.description.clone(),
        },
        Some(start) => start.then_trained_on(&data),
        None => data,
    };
    if run.state.step > 0 {
        source.seek(run.state.loader)?;
    }
    let total = run.sched.steps;
    let stop = max_steps.map_or(total, |m| m.min(total));
    let start = run.state.step;
    writeln!(
        out,
        "pretraining {} ({:.2} M params) on {} in {}: steps {start}..{stop} of {total}, batch {}, {}",
        run.jepa.enc_cfg.name,
        run.jepa.enc_cfg.num_params() as f64 / 1e6,
        dev.label(),
        dtype_name(run.dtype),
        run.cfg.data.batch_size,
        run.jepa.init_note
    )?;
    if run.collective.world() > 1 {
        writeln!(
            out,
            "rank {} of {}: gradients averaged by {}",
            run.collective.rank(),
            run.collective.world(),
            run.collective.engine()
        )?;
    }
    let metrics_path = folder.join("metrics.csv");
    let mut metrics = if main {
        Some(MetricsWriter::open(&metrics_path, start)?)
    } else {
        None
    };
    let pb = ProgressBar::new(stop as u64);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})")?
            .progress_chars("=> "),
    );
    pb.set_position(start as u64);
    if !main {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let save_every_steps = run.cfg.meta.save_every_steps;
    let save_every_epochs = run.cfg.meta.save_every_freq;
    let mut elapsed = run.state.elapsed_s;
    for i in start..stop {
        let t0 = Instant::now();
        let batch = source.next_batch()?;
        let b = batch.dim(0)?;
        let mut row = run.step(&batch)?;
        let dt = t0.elapsed().as_secs_f64();
        elapsed += dt;
        row.clips_per_s = (b * world) as f64 / dt.max(1e-9);
        row.seconds = elapsed;
        if let Some(m) = metrics.as_mut() {
            m.push(&row)?;
        }
        pb.set_message(format!(
            "loss {:.4} lr {:.2e} {:.1} clips/s",
            row.loss, row.lr, row.clips_per_s
        ));
        pb.inc(1);
        run.state.elapsed_s = elapsed;
        run.state.skipped_clips = source.skipped();
        run.state.loader = source.position();
        let done = i + 1;
        let end_of_epoch = done % ipe == 0;
        let by_steps = save_every_steps.is_some_and(|n| n > 0 && done % n == 0);
        if !main {
            continue;
        }
        if end_of_epoch || by_steps || done == stop {
            run.save(&folder.join("latest"), &provenance)?;
        }
        if end_of_epoch
            && save_every_epochs > 0
            && (done / ipe).is_multiple_of(save_every_epochs as usize)
        {
            run.save(&folder.join(format!("e{}", done / ipe)), &provenance)?;
        }
    }
    pb.finish_and_clear();
    // every rank has stepped to the end before the final files are written
    run.collective.barrier()?;
    if !main {
        writeln!(
            out,
            "rank {rank} of {world}: steps {start}..{stop} done; rank 0 writes the outputs"
        )?;
        return Ok(());
    }
    if start == stop && !ckpt_paths(&folder.join("latest")).train_json.exists() {
        // `--max-steps 0`: write the initial weights (e.g. a random-encoder baseline)
        run.save(&folder.join("latest"), &provenance)?;
    }
    let png = folder.join("loss.png");
    if metrics_path.exists() && read_metrics(&metrics_path)?.len() > 1 {
        plot_loss(&metrics_path, &png, "V-JEPA pretraining loss")?;
    }
    let rows = read_metrics(&metrics_path)?;
    if let Some(last) = rows.last() {
        let n = rows.len().min(10);
        let recent = rows[rows.len() - n..]
            .iter()
            .map(|r| r.clips_per_s)
            .sum::<f64>()
            / n as f64;
        writeln!(
            out,
            "step {}: loss {:.4}; {:.2} clips/s (last {n} steps); {:.1} s in total; {} clips skipped",
            last.step + 1,
            last.loss,
            recent,
            last.seconds,
            run.state.skipped_clips
        )?;
    }
    if provenance.synthetic {
        writeln!(
            out,
            "note: trained on SYNTHETIC phantom data; the model has no clinical meaning"
        )?;
    }
    writeln!(
        out,
        "wrote {} (+ .json, .train.*), {} and {}",
        folder.join("latest.safetensors").display(),
        metrics_path.display(),
        png.display()
    )?;
    Ok(())
}

/// Where the pretraining clips come from: the phantom stream (synthetic), or the datasets
/// (as the config's `data.synthetic` says, else by who wrote the lists).
fn data_provenance(cfg: &PretrainConfig) -> Provenance {
    if cfg.data.dataset_type == "PhantomStream" {
        let p = cfg.data.phantom.clone().unwrap_or_default();
        return Provenance::synthetic(format!(
            "SYNTHETIC phantom stream (no patients, no clinical meaning): patients [{}, +{}), \
             run seed {}; validation and test patient ranges excluded",
            p.train_seeds.start, p.train_seeds.count, cfg.meta.seed
        ));
    }
    crate::provenance::of_lists(&cfg.data.datasets, cfg.data.synthetic)
}
