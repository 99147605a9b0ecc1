//! `--dry-run`: resolves a config into the plan a run would follow (architectures, data,
//! masks, schedules, precision, outputs) without reading any data or checkpoint, and prints it
//! for a person or, with `--json`, for a program.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use echojepa::{EncoderConfig, PredictorConfig};
use serde::Serialize;

use crate::config::eval::{EvalConfig, TaskType};
use crate::config::pretrain::{MaskCfg, PretrainConfig};
use crate::config::{Loaded, eval::HeadOpt};
use crate::device::{DeviceSpec, dtype_name, wants_bf16};
use crate::masks::{Grid, MultiBlockMasker, estimate};
use crate::schedule::Schedules;

#[derive(Debug, Serialize)]
pub struct ModelPlan {
    pub encoder: EncoderConfig,
    pub encoder_params: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictor: Option<PredictorConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictor_params: Option<usize>,
    /// Token grid `[T', Hp, Wp]` of one clip.
    pub grid: [usize; 3],
    pub tokens_per_clip: usize,
}

#[derive(Debug, Serialize)]
pub struct MaskPlan {
    pub index: usize,
    pub num_blocks: usize,
    pub spatial_scale: [f64; 2],
    pub temporal_scale: [f64; 2],
    pub aspect_ratio: [f64; 2],
    /// Block size `(t, h, w)` of the first batch (the size is redrawn every batch).
    pub first_block: [usize; 3],
    /// Mean context / target tokens per clip over 32 sampled batches.
    pub mean_context_tokens: f64,
    pub mean_target_tokens: f64,
}

#[derive(Debug, Serialize)]
pub struct OptimPlan {
    pub epochs: usize,
    /// `None` when the config leaves it to the dataset size (known only at run time).
    pub ipe: Option<usize>,
    pub steps: Option<usize>,
    pub schedules: Option<Schedules>,
    /// `(step, lr, wd, ema momentum)` at the first, end-of-warmup, middle and last steps.
    pub milestones: Vec<(usize, f64, f64, f64)>,
    pub betas: [f64; 2],
    pub eps: f64,
    pub clip_grad: Option<f64>,
    pub loss: String,
}

/// How the run spreads over processes: the config's job shape, the batch per rank and in total,
/// and the learning rate against the reference's scaling rule.
#[derive(Debug, Serialize)]
pub struct DistPlan {
    pub nodes: usize,
    pub tasks_per_node: usize,
    pub ranks: usize,
    /// `data.batch_size`: per GPU in the reference.
    pub per_rank_batch: usize,
    pub global_batch: usize,
    /// The configured peak learning rate, used as is (the reference does not rescale it).
    pub lr: f64,
    /// EchoJEPA's linear rule `5.25e-4 x global_batch / 3072`, for comparison.
    pub lr_by_rule: f64,
    /// The launcher's world when the dry run itself was launched (torchrun, SLURM, mpirun).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launched: Option<crate::dist::World>,
    /// What this build does with the shape.
    pub runs_as: String,
}

/// EchoJEPA's learning-rate scaling: the V-JEPA 2 peak rate 5.25e-4 at global batch 3072, linear
/// in the global batch (applied by hand in its configs, e.g. 1.75e-4 at 128 x 8 = 1024).
pub const REFERENCE_LR: f64 = 5.25e-4;
pub const REFERENCE_GLOBAL_BATCH: usize = 3072;

pub fn lr_by_rule(global_batch: usize) -> f64 {
    REFERENCE_LR * global_batch as f64 / REFERENCE_GLOBAL_BATCH as f64
}

/// The distributed part of a plan; a launched world that disagrees with the config is a note
/// here (the run itself refuses it).
pub fn dist_plan(
    topo: crate::dist::Topology,
    per_rank_batch: usize,
    lr: f64,
    world: &crate::dist::World,
    notes: &mut Vec<String>,
) -> DistPlan {
    let launched = (world.launcher != crate::dist::Launcher::None).then(|| world.clone());
    if let Err(e) = world.check(topo) {
        notes.push(format!("launch does not match the config: {e}"));
    }
    let n = topo.ranks();
    let mut engines = Vec::new();
    if cfg!(feature = "nccl") {
        engines.push(format!(
            "{n} GPU ranks, one per GPU, under torchrun or SLURM (gradients averaged by NCCL)"
        ));
    }
    if cfg!(feature = "mpi") {
        engines.push(format!(
            "{n} CPU ranks under `mpirun -np {n}` (gradients averaged by MPI)"
        ));
    }
    let runs_as = if n == 1 {
        "one process".to_string()
    } else if !engines.is_empty() {
        format!(
            "{}; run without a launcher, one process with batch {per_rank_batch}",
            engines.join(", or ")
        )
    } else {
        format!(
            "one process: {n} ranks are refused, as this build has no engine for them \
             (`--features cuda` runs GPU ranks through NCCL, `--features mpi` CPU ranks under \
             mpirun); run without a launcher it trains with batch {per_rank_batch}"
        )
    };
    let global = per_rank_batch * topo.ranks();
    DistPlan {
        nodes: topo.nodes,
        tasks_per_node: topo.tasks_per_node,
        ranks: topo.ranks(),
        per_rank_batch,
        global_batch: global,
        lr,
        lr_by_rule: lr_by_rule(global),
        launched,
        runs_as,
    }
}

fn print_dist(d: &DistPlan, w: &mut dyn Write) -> Result<()> {
    print_ranks(d, w, true)
}

/// The job shape, the batches, where launched and how this build runs it; with `lr`, the
/// configured rate against EchoJEPA's pretraining rule.
pub(crate) fn print_ranks(d: &DistPlan, w: &mut dyn Write, lr: bool) -> Result<()> {
    writeln!(
        w,
        "  ranks: {} node(s) x {} task(s) per node = {}; batch {} per rank, {} global",
        d.nodes, d.tasks_per_node, d.ranks, d.per_rank_batch, d.global_batch
    )?;
    if lr {
        writeln!(
            w,
            "  lr {:.3e} as configured (not rescaled at run time); EchoJEPA's rule {:.2e} x global / {} gives {:.3e}",
            d.lr, REFERENCE_LR, REFERENCE_GLOBAL_BATCH, d.lr_by_rule
        )?;
    }
    if let Some(l) = &d.launched {
        writeln!(
            w,
            "  launched by {}: rank {} of {}, local rank {}",
            l.launcher, l.rank, l.size, l.local_rank
        )?;
    }
    writeln!(w, "  runs as {}", d.runs_as)?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct PretrainPlan {
    pub schema: &'static str,
    pub config: PathBuf,
    pub device: String,
    pub dtype: &'static str,
    pub model: ModelPlan,
    pub init: String,
    pub datasets: Vec<(PathBuf, f64)>,
    pub batch_size: usize,
    pub distributed: DistPlan,
    pub frames_per_clip: usize,
    pub crop_size: usize,
    pub sampling: String,
    pub augmentation: String,
    pub masks: Vec<MaskPlan>,
    pub optimization: OptimPlan,
    pub outputs: Vec<PathBuf>,
    pub unknown_keys: Vec<String>,
    pub notes: Vec<String>,
}

pub fn pretrain_plan(
    loaded: &Loaded<PretrainConfig>,
    dev: DeviceSpec,
    resume_flag: bool,
    world: &crate::dist::World,
) -> Result<PretrainPlan> {
    let c = &loaded.config;
    let mut notes = c.validate()?;
    let distributed = dist_plan(
        c.topology()?,
        c.data.batch_size,
        c.optimization.lr,
        world,
        &mut notes,
    );
    let enc = c.encoder_config()?;
    let pred = c.predictor_config()?;
    let grid = Grid::new(
        c.frames_per_clip(),
        c.data.crop_size,
        c.data.tubelet_size,
        c.data.patch_size,
    );
    let bf16 = wants_bf16(&c.meta.dtype);
    let dtype = dev.compute_dtype(bf16);
    if bf16 && !dev.is_cuda() {
        notes.push(format!("meta.dtype {}: CPU runs in float32", c.meta.dtype));
    }
    let masks = c
        .mask
        .iter()
        .enumerate()
        .map(|(i, m)| mask_plan(m, grid, i, c.data.batch_size, c.meta.seed))
        .collect::<Result<Vec<_>>>()?;
    let o = &c.optimization;
    let (steps, schedules, milestones) = match o.ipe {
        Some(ipe) => {
            let s = Schedules::from_config(o, ipe);
            let warm = (o.warmup * ipe as f64) as usize;
            let mut at: Vec<usize> = vec![0, warm.saturating_sub(1), s.steps / 2, s.steps - 1];
            at.sort_unstable();
            at.dedup();
            let ms = at
                .into_iter()
                .map(|i| {
                    let (lr, wd, m) = s.at(i);
                    (i, lr, wd, m)
                })
                .collect();
            (Some(s.steps), Some(s), ms)
        }
        None => {
            notes.push(
                "optimization.ipe not set: iterations per epoch = dataset size / batch size".into(),
            );
            (None, None, Vec::new())
        }
    };
    let init = init_description(c, resume_flag);
    let weights = c
        .data
        .datasets_weights
        .clone()
        .unwrap_or_else(|| vec![1.0; c.data.datasets.len()]);
    let sampling = match (c.data.fps, c.data.frame_step, c.data.duration) {
        (Some(fps), _, _) => format!(
            "{} frames at {fps} fps (step = ceil(video fps) / {fps})",
            c.frames_per_clip()
        ),
        (_, Some(step), _) => format!("{} frames, frame_step {step}", c.frames_per_clip()),
        (_, _, Some(d)) => format!("{} frames spread over {d} s", c.frames_per_clip()),
        _ => format!("{} frames, frame_step 4", c.frames_per_clip()),
    };
    let a = &c.data_aug;
    let augmentation = format!(
        "random resized crop to {}px (scale {:?}, aspect {:?}), horizontal flip {}",
        c.data.crop_size,
        a.random_resize_scale,
        a.random_resize_aspect_ratio,
        if a.horizontal_flip { "p=0.5" } else { "off" }
    );
    let loss = format!(
        "mean |pred - LN(target)|^{} / {} over target tokens, averaged over {} mask configs",
        c.loss.loss_exp,
        c.loss.loss_exp,
        c.mask.len()
    );
    let f = &c.folder;
    let outputs = vec![
        f.join("latest.safetensors"),
        f.join("latest.json"),
        f.join("e{N}.safetensors (every save_every_freq epochs)"),
        f.join("metrics.csv"),
        f.join("loss.png"),
    ];
    Ok(PretrainPlan {
        schema: "pretrain",
        config: loaded.path.clone(),
        device: dev.label(),
        dtype: dtype_name(dtype),
        model: ModelPlan {
            encoder_params: enc.num_params(),
            predictor_params: Some(predictor_params(&pred)),
            grid: [grid.t, grid.h, grid.w],
            tokens_per_clip: grid.tokens(),
            encoder: enc,
            predictor: Some(pred),
        },
        init,
        datasets: c.data.datasets.iter().cloned().zip(weights).collect(),
        batch_size: c.data.batch_size,
        distributed,
        frames_per_clip: c.frames_per_clip(),
        crop_size: c.data.crop_size,
        sampling,
        augmentation,
        masks,
        optimization: OptimPlan {
            epochs: o.epochs,
            ipe: o.ipe,
            steps,
            schedules,
            milestones,
            betas: o.betas,
            eps: o.eps,
            clip_grad: o.clip_grad,
            loss,
        },
        outputs,
        unknown_keys: loaded.unknown_keys.clone(),
        notes,
    })
}

/// Where the weights of a pretraining run come from.
pub fn init_description(c: &PretrainConfig, resume_flag: bool) -> String {
    let o = &c.optimization;
    let mut parts = Vec::new();
    if let Some(r) = &c.meta.read_checkpoint {
        parts.push(format!("resume from {}", r.display()));
    } else if resume_flag || c.meta.load_checkpoint {
        parts.push(format!(
            "resume from {} if present",
            c.folder.join("latest.json").display()
        ));
    }
    if o.is_anneal || o.force_load_pretrain {
        if let Some(a) = &o.anneal_ckpt {
            parts.push(format!(
                "{}weights (encoder, target_encoder, predictor) from {}, fresh optimizer",
                if parts.is_empty() { "" } else { "otherwise " },
                a.display()
            ));
        }
    } else if parts.is_empty() {
        parts.push(format!("random init (seed {})", c.meta.seed));
    } else {
        parts.push(format!("otherwise random init (seed {})", c.meta.seed));
    }
    parts.join("; ")
}

fn mask_plan(m: &MaskCfg, grid: Grid, index: usize, batch: usize, seed: u64) -> Result<MaskPlan> {
    let masker = MultiBlockMasker::new(m.clone(), grid, index);
    let first = masker.sample(batch.min(8), seed, 0)?;
    let (ctx, tgt) = estimate(&masker, batch.min(8), seed, 32)?;
    Ok(MaskPlan {
        index,
        num_blocks: m.num_blocks,
        spatial_scale: m.spatial_scale,
        temporal_scale: m.temporal_scale,
        aspect_ratio: m.aspect_ratio,
        first_block: [first.block.0, first.block.1, first.block.2],
        mean_context_tokens: ctx,
        mean_target_tokens: tgt,
    })
}

fn block_params(d: usize, hidden: usize) -> usize {
    4 * d + (3 * d * d + 3 * d) + (d * d + d) + (hidden * d + hidden) + (d * hidden + d)
}

pub fn predictor_params(p: &PredictorConfig) -> usize {
    let d = p.predictor_embed_dim;
    let e = p.embed_dim;
    (e * d + d)
        + p.num_mask_tokens * d
        + p.depth * block_params(d, p.mlp_hidden)
        + 2 * d
        + (d * e + e)
}

/// Parameters of an attentive probe (depth-1 self-attention blocks + cross-attention block +
/// head + slot embeddings).
pub fn probe_params(
    d: usize,
    depth: usize,
    outputs: usize,
    slots: Option<(usize, usize, bool)>,
) -> usize {
    let hidden = 4 * d;
    let cross = 2 * d
        + (d * d + d)
        + (2 * d * d + 2 * d)
        + 2 * d
        + (hidden * d + hidden)
        + (d * hidden + d);
    let slot = match slots {
        Some((v, c, true)) => (v + c) * d,
        Some((v, c, false)) => v * c * d,
        None => 0,
    };
    d + depth.saturating_sub(1) * block_params(d, hidden) + cross + d * outputs + outputs + slot
}

#[derive(Debug, Serialize)]
pub struct HeadPlan {
    pub lr: f64,
    pub start_lr: f64,
    pub final_lr: f64,
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub final_weight_decay: f64,
}

impl From<&HeadOpt> for HeadPlan {
    fn from(h: &HeadOpt) -> Self {
        Self {
            lr: h.lr,
            start_lr: h.start_lr.unwrap_or(h.lr),
            final_lr: h.final_lr.unwrap_or(0.0),
            warmup_epochs: h.warmup,
            weight_decay: h.weight_decay,
            final_weight_decay: h.final_weight_decay.unwrap_or(h.weight_decay),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProbePlan {
    pub schema: &'static str,
    pub config: PathBuf,
    pub eval_name: String,
    pub mode: &'static str,
    pub device: String,
    pub dtype: &'static str,
    pub task: TaskType,
    pub outputs: usize,
    pub model: ModelPlan,
    pub checkpoint: PathBuf,
    pub checkpoint_key: String,
    pub probe_depth: usize,
    pub probe_heads: usize,
    pub probe_params: usize,
    pub heads: Vec<HeadPlan>,
    pub epochs: usize,
    /// Per rank, as in the reference (per GPU).
    pub batch_size: usize,
    /// Ranks, global batch and how this build runs them (`lr` is the first head's).
    pub distributed: DistPlan,
    pub train_csv: PathBuf,
    pub val_csv: PathBuf,
    pub test_csv: Option<PathBuf>,
    pub resolution: usize,
    pub frames_per_clip: usize,
    pub frame_step: usize,
    pub segments: usize,
    pub spatial_views: usize,
    /// Multi-view: `(views, clips per view, factorized slot embeddings, view dropout p, min present)`.
    pub multi_view: Option<(usize, usize, bool, f64, usize)>,
    pub tokens_per_sample: usize,
    pub scaler: Option<(f64, f64)>,
    pub label_fraction: Option<f64>,
    pub feature_cache: Option<PathBuf>,
    pub output_dir: PathBuf,
    pub predictions: Option<PathBuf>,
    pub probe_checkpoint: Option<PathBuf>,
    pub unknown_keys: Vec<String>,
    pub notes: Vec<String>,
}

pub fn probe_plan(
    loaded: &Loaded<EvalConfig>,
    dev: DeviceSpec,
    world: &crate::dist::World,
) -> Result<ProbePlan> {
    let c = &loaded.config;
    let mut notes = c.validate()?;
    let distributed = dist_plan(
        c.topology()?,
        c.experiment.optimization.batch_size,
        c.experiment
            .optimization
            .multihead_kwargs
            .first()
            .map_or(0.0, |h| h.lr),
        world,
        &mut notes,
    );
    let enc = c.encoder_config()?;
    let d = &c.experiment.data;
    let cl = &c.experiment.classifier;
    let o = &c.experiment.optimization;
    let grid = Grid::new(
        d.frames_per_clip,
        d.resolution,
        enc.tubelet_size,
        enc.patch_size,
    );
    let outputs = c.num_outputs()?;
    let multi = c.is_multi();
    let tokens_per_sample = if multi {
        grid.tokens() * c.num_slots()
    } else {
        grid.tokens() * d.num_segments
    };
    let dtype = dev.compute_dtype(o.use_bfloat16);
    if o.use_bfloat16 && !dev.is_cuda() {
        notes.push("use_bfloat16: CPU runs in float32".into());
    }
    let slots = multi.then_some((cl.num_views, cl.clips_per_view, cl.use_factorized));
    let scaler = match (d.target_mean, d.target_std) {
        (Some(m), Some(s)) if c.task() == TaskType::Regression => Some((m, s)),
        _ => None,
    };
    let out = c.output_dir();
    let feature_cache = o.cache_features.then(|| {
        o.feature_cache
            .clone()
            .unwrap_or_else(|| out.join("features"))
    });
    Ok(ProbePlan {
        schema: "eval",
        config: loaded.path.clone(),
        eval_name: c.eval_name.clone(),
        mode: if c.val_only {
            "inference (val_only)"
        } else {
            "train probes"
        },
        device: dev.label(),
        dtype: dtype_name(dtype),
        task: c.task(),
        outputs,
        model: ModelPlan {
            encoder_params: enc.num_params(),
            predictor: None,
            predictor_params: None,
            grid: [grid.t, grid.h, grid.w],
            tokens_per_clip: grid.tokens(),
            encoder: enc.clone(),
        },
        checkpoint: c.model_kwargs.checkpoint.clone(),
        checkpoint_key: c
            .model_kwargs
            .pretrain_kwargs
            .encoder
            .checkpoint_key
            .clone(),
        probe_depth: cl.num_probe_blocks,
        probe_heads: cl.num_heads,
        probe_params: probe_params(enc.embed_dim, cl.num_probe_blocks, outputs, slots),
        heads: o.multihead_kwargs.iter().map(HeadPlan::from).collect(),
        epochs: o.num_epochs,
        batch_size: o.batch_size,
        distributed,
        train_csv: d.dataset_train.clone(),
        val_csv: d.dataset_val.clone(),
        test_csv: d.dataset_test.clone(),
        resolution: d.resolution,
        frames_per_clip: d.frames_per_clip,
        frame_step: d.frame_step,
        segments: d.num_segments,
        spatial_views: d.num_views_per_segment,
        multi_view: multi.then_some((
            cl.num_views,
            cl.clips_per_view,
            cl.use_factorized,
            d.miss_augment_prob,
            d.min_present,
        )),
        tokens_per_sample,
        scaler,
        label_fraction: d.label_fraction,
        feature_cache,
        output_dir: out,
        predictions: c.predictions_save_path.clone(),
        probe_checkpoint: c.probe_checkpoint.clone(),
        unknown_keys: loaded.unknown_keys.clone(),
        notes,
    })
}

fn millions(n: usize) -> String {
    format!("{:.2} M", n as f64 / 1e6)
}

fn enc_line(e: &EncoderConfig) -> String {
    format!(
        "{} (dim {}, depth {}, heads {}, mlp {}, patch {}, tubelet {})",
        e.name, e.embed_dim, e.depth, e.num_heads, e.mlp_hidden, e.patch_size, e.tubelet_size
    )
}

fn common_tail(w: &mut dyn Write, unknown: &[String], notes: &[String]) -> Result<()> {
    if !unknown.is_empty() {
        writeln!(w, "unknown keys (ignored): {}", unknown.join(", "))?;
    }
    for n in notes {
        writeln!(w, "note: {n}")?;
    }
    writeln!(w, "dry run: no data or checkpoint was read")?;
    Ok(())
}

pub fn print_pretrain(p: &PretrainPlan, w: &mut dyn Write) -> Result<()> {
    writeln!(w, "pretraining plan for {}", p.config.display())?;
    writeln!(w, "  device {} ({})", p.device, p.dtype)?;
    writeln!(
        w,
        "  encoder  {}: {}",
        enc_line(&p.model.encoder),
        millions(p.model.encoder_params)
    )?;
    if let (Some(pr), Some(n)) = (&p.model.predictor, p.model.predictor_params) {
        writeln!(
            w,
            "  predictor dim {}, depth {}, heads {}, {} mask tokens, grid {:?}: {}",
            pr.predictor_embed_dim,
            pr.depth,
            pr.num_heads,
            pr.num_mask_tokens,
            pr.grid(),
            millions(n)
        )?;
    }
    writeln!(
        w,
        "  clip {} frames x {}px -> {} tokens (grid {:?})",
        p.frames_per_clip, p.crop_size, p.model.tokens_per_clip, p.model.grid
    )?;
    writeln!(w, "  init: {}", p.init)?;
    for (csv, wt) in &p.datasets {
        writeln!(w, "  data {} (weight {wt})", csv.display())?;
    }
    writeln!(
        w,
        "  batch {} clips; sampling: {}",
        p.batch_size, p.sampling
    )?;
    print_dist(&p.distributed, w)?;
    writeln!(w, "  augmentation: {}", p.augmentation)?;
    for m in &p.masks {
        writeln!(
            w,
            "  mask[{}]: {} blocks, spatial {:?}, temporal {:?}, aspect {:?}; first block {:?}; \
             ~{:.0} context / {:.0} target tokens",
            m.index,
            m.num_blocks,
            m.spatial_scale,
            m.temporal_scale,
            m.aspect_ratio,
            m.first_block,
            m.mean_context_tokens,
            m.mean_target_tokens
        )?;
    }
    let o = &p.optimization;
    writeln!(w, "  loss: {}", o.loss)?;
    match (o.ipe, o.steps) {
        (Some(ipe), Some(steps)) => writeln!(
            w,
            "  {} epochs x {ipe} iterations = {steps} steps",
            o.epochs
        )?,
        _ => writeln!(
            w,
            "  {} epochs x (dataset size / batch) iterations",
            o.epochs
        )?,
    }
    if let Some(s) = &o.schedules {
        writeln!(w, "  lr schedule: {}", serde_json::to_string(&s.lr)?)?;
        writeln!(w, "  wd schedule: {}", serde_json::to_string(&s.wd)?)?;
        writeln!(w, "  ema schedule: {}", serde_json::to_string(&s.ema)?)?;
    }
    for (i, lr, wd, m) in &o.milestones {
        writeln!(w, "    step {i:>7}: lr {lr:.3e}  wd {wd:.4}  ema {m:.5}")?;
    }
    writeln!(
        w,
        "  AdamW betas {:?} eps {:e}; no decay on biases / 1-D params; clip_grad {}",
        o.betas,
        o.eps,
        o.clip_grad.map_or("off".into(), |c| c.to_string())
    )?;
    for out in &p.outputs {
        writeln!(w, "  writes {}", out.display())?;
    }
    common_tail(w, &p.unknown_keys, &p.notes)
}

pub fn print_probe(p: &ProbePlan, w: &mut dyn Write) -> Result<()> {
    writeln!(
        w,
        "frozen evaluation plan for {} ({})",
        p.config.display(),
        p.eval_name
    )?;
    writeln!(w, "  mode: {}; device {} ({})", p.mode, p.device, p.dtype)?;
    writeln!(
        w,
        "  encoder {}: {}",
        enc_line(&p.model.encoder),
        millions(p.model.encoder_params)
    )?;
    writeln!(
        w,
        "  weights: `{}` of {}",
        p.checkpoint_key,
        p.checkpoint.display()
    )?;
    let task = match p.task {
        TaskType::Classification => {
            format!("classification, {} classes (cross entropy)", p.outputs)
        }
        TaskType::Regression => {
            format!("regression, {} target(s) (SmoothL1 on z-scores)", p.outputs)
        }
    };
    writeln!(w, "  task: {task}")?;
    if let Some((m, s)) = p.scaler {
        writeln!(
            w,
            "  target scaler: mean {m}, std {s} (MAE reported in real units)"
        )?;
    }
    writeln!(
        w,
        "  clips: {} frames, step {}, {} segment(s), {} spatial view(s), {}px -> {} tokens per sample",
        p.frames_per_clip,
        p.frame_step,
        p.segments,
        p.spatial_views,
        p.resolution,
        p.tokens_per_sample
    )?;
    if let Some((v, c, f, miss, minp)) = p.multi_view {
        writeln!(
            w,
            "  multi-view early fusion: {v} views x {c} clips, {} slot embeddings, view dropout p={miss}, \
             min present {minp}",
            if f { "factorized" } else { "per-slot" }
        )?;
    }
    writeln!(
        w,
        "  probe: depth {}, {} heads, {} per head; {} heads trained together, {} epochs, batch {}",
        p.probe_depth,
        p.probe_heads,
        millions(p.probe_params),
        p.heads.len(),
        p.epochs,
        p.batch_size
    )?;
    for (i, h) in p.heads.iter().enumerate() {
        writeln!(
            w,
            "    head {i}: lr {:.2e} (start {:.2e}, final {:.2e}, warmup {} ep), wd {} -> {}",
            h.lr, h.start_lr, h.final_lr, h.warmup_epochs, h.weight_decay, h.final_weight_decay
        )?;
    }
    print_ranks(&p.distributed, w, false)?;
    writeln!(w, "  train {}", p.train_csv.display())?;
    writeln!(w, "  val   {}", p.val_csv.display())?;
    if let Some(t) = &p.test_csv {
        writeln!(w, "  test  {}", t.display())?;
    }
    if let Some(f) = p.label_fraction {
        writeln!(w, "  label fraction {f} (stratified, seeded)")?;
    }
    if let Some(fc) = &p.feature_cache {
        writeln!(w, "  feature cache {}", fc.display())?;
    }
    writeln!(w, "  output {}", p.output_dir.display())?;
    if let Some(pc) = &p.probe_checkpoint {
        writeln!(w, "  probe checkpoint {}", pc.display())?;
    }
    if let Some(pr) = &p.predictions {
        writeln!(w, "  predictions {}", pr.display())?;
    }
    common_tail(w, &p.unknown_keys, &p.notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_parameter_counts_match_the_reference_notes() {
        // depth-4 probe: ~49.3 M at D = 1024, ~93.3 M at D = 1408; depth 1: ~11.5 M / ~21.8 M.
        for (d, depth, want) in [
            (1024, 4, 49.3),
            (1408, 4, 93.3),
            (1024, 1, 11.5),
            (1408, 1, 21.8),
        ] {
            let got = probe_params(d, depth, 1, None) as f64 / 1e6;
            assert!(
                (got - want).abs() / want < 0.01,
                "D={d} depth={depth}: {got}"
            );
        }
    }

    #[test]
    fn the_lr_rule_gives_echojepas_configured_rates() {
        // EchoJEPA: 128 x 8 = 1024 clips at 1.75e-4; 80 x 8 = 640 at 1.09375e-4
        assert!((lr_by_rule(1024) - 1.75e-4).abs() < 1e-12);
        assert!((lr_by_rule(640) - 1.09375e-4).abs() < 1e-12);
    }

    #[test]
    fn the_distributed_plan_shows_the_shape_and_a_mismatched_launch() {
        use crate::dist::{EnvMap, Topology, World};
        let topo = Topology {
            nodes: 2,
            tasks_per_node: 8,
        };
        let mut notes = Vec::new();
        let d = dist_plan(topo, 128, 1.75e-4, &World::single(), &mut notes);
        assert_eq!((d.ranks, d.per_rank_batch, d.global_batch), (16, 128, 2048));
        assert!(notes.is_empty(), "{notes:?}");
        let mut text = Vec::new();
        print_dist(&d, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("2 node(s) x 8 task(s) per node = 16; batch 128 per rank, 2048 global"),
            "{text}"
        );
        let env: EnvMap = [("RANK", "0"), ("WORLD_SIZE", "4")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let launched = World::from_env(&env).unwrap();
        let d = dist_plan(topo, 128, 1.75e-4, &launched, &mut notes);
        assert!(d.launched.is_some());
        assert!(
            notes.len() == 1 && notes[0].contains("16 rank(s), but torchrun started 4"),
            "{notes:?}"
        );
    }

    #[test]
    fn predictor_parameter_count_matches_the_reference_notes() {
        // ~22.1-22.4 M for the released predictor.
        let p = PredictorConfig::reference(1024, 224, 16);
        let got = predictor_params(&p) as f64 / 1e6;
        assert!((22.0..22.5).contains(&got), "{got}");
    }
}
