//! `trainer finetune`: the encoder trained end to end together with its heads (view
//! classifier, EF regressor, LV cavity decoder) on clips streamed from the phantom or read from
//! a dataset in EchoNet-Dynamic's layout ([`echonet`]), starting from a pretrained checkpoint or
//! from random weights.
//!
//! The output is a native checkpoint holding the tuned encoder (`target_encoder`) and the
//! attentive heads as probes, so `quantize build` and the edge runtime take it unchanged; the
//! LV decoder rides along as `lv_head`. After training, the view head's temperature is fitted
//! on the validation split and stored with it, together with the view confidence below which
//! EF should not be shown (the smallest threshold that keeps misread views among shown EF
//! values at `ef_misread_target`). Resume is exact: every random draw is a function of the
//! run seed and the step.

pub mod config;
pub mod echonet;
pub mod eval;
pub mod model;
pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use echojepa::checkpoint::{
    InputSpec, LvHeadEntry, NativeCheckpoint, NativeConfig, ProbeEntry, Scaler,
};
use echojepa_phantom::View;
use serde::{Deserialize, Serialize};

use crate::config::{Loaded, load};
use crate::device::DeviceSpec;
use crate::dist::collective::average_grads;
use crate::dist::{Collective, EnvMap, World};
use crate::optim::AdamW;
use crate::phantom_stream::Split;
use crate::schedule::{LrSchedule, WdSchedule};
use config::{DataKind, FinetuneConfig, HeadTask, Init};
use eval::{Calibration, EvalReport, Evaluated};
use model::FtModel;
use source::Source;

/// Fine-tune an encoder with its heads end to end (view, EF, LV cavity) on streamed phantom clips
/// or an EchoNet-Dynamic-layout dataset.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fine-tuning config: the frozen-evaluation schema plus a `finetune:` block
    /// (see configs/quickstart/finetune-tiny.yaml).
    #[arg(long, short, visible_alias = "fname")]
    pub config: PathBuf,
    /// Device: `cpu` or `cuda:N`.
    #[arg(long, num_args = 1.., default_value = "cpu")]
    pub devices: Vec<String>,
    /// Override the output directory (default: `folder/<eval_name>/<tag>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start again even when the output directory holds a run to resume.
    #[arg(long)]
    pub restart: bool,
    /// Stop after this many optimizer steps in this invocation (the run resumes from there).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Check the config and print what the run would do, without reading checkpoints, videos or
    /// rendering clips.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary (or the plan with --dry-run) as JSON.
    #[arg(long)]
    pub json: bool,
    /// With several ranks: seconds one all-reduce may wait for the other ranks before this rank
    /// stops the job with an error (a rank that hangs would otherwise hold the others forever).
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub collective_timeout: u64,
}

/// What a run would do (`--dry-run`).
#[derive(Debug, Serialize)]
struct Plan {
    encoder: String,
    embed_dim: usize,
    depth: usize,
    init: String,
    heads: Vec<config::HeadCfg>,
    clip: String,
    /// Clips per rank and step (`experiment.optimization.batch_size`).
    batch_size: usize,
    /// Ranks (`nodes` x `tasks_per_node`), global batch and how this build runs them (`lr` is
    /// the heads').
    distributed: crate::plan::DistPlan,
    /// Notes on the plan (a launch that does not match the config).
    notes: Vec<String>,
    steps: usize,
    warmup_steps: usize,
    head_lr: f64,
    /// Peak learning rate per encoder part (patch embedding, then blocks 0..depth).
    encoder_lr: Vec<(String, f64)>,
    frozen: Vec<String>,
    drop_path: Vec<f64>,
    ema: Option<f64>,
    /// Where the clips come from, in words.
    data: String,
    /// With `PhantomStream`.
    phantom: Option<crate::phantom_stream::StreamSpec>,
    /// With `EchoNet`.
    echonet: Option<EchoNetPlan>,
    output_dir: PathBuf,
}

/// What a dry run says about an EchoNet-layout dataset (without reading it).
#[derive(Debug, Serialize)]
struct EchoNetPlan {
    root: PathBuf,
    filelist_present: bool,
    tracings_present: bool,
    videos_dir_present: bool,
    max_videos_per_split: Option<usize>,
    cache_mb: usize,
}

fn plan(
    cfg: &FinetuneConfig,
    enc_cfg: &echojepa::EncoderConfig,
    out_dir: &Path,
    world: &World,
) -> Result<Plan> {
    let mut notes = Vec::new();
    let distributed = crate::plan::dist_plan(
        cfg.topology()?,
        cfg.experiment.optimization.batch_size,
        cfg.finetune.lr,
        world,
        &mut notes,
    );
    let f = &cfg.finetune;
    let d = &cfg.experiment.data;
    let depth = enc_cfg.depth;
    let mut parts = vec!["encoder.patch_embed.proj.weight".to_string()];
    parts.extend((0..depth).map(|i| format!("encoder.blocks.{i}.attn.qkv.weight")));
    let encoder_lr = parts
        .iter()
        .map(|n| {
            let label = n
                .trim_start_matches("encoder.")
                .split('.')
                .take(if n.contains("blocks") { 2 } else { 1 })
                .collect::<Vec<_>>()
                .join(".");
            (
                label,
                f.lr * model::lr_scale(n, depth, f.lr, f.encoder_lr, f.layer_decay),
            )
        })
        .collect();
    let frozen = parts
        .iter()
        .filter(|n| !model::is_trainable(n, f.freeze_blocks))
        .map(|n| {
            n.trim_start_matches("encoder.")
                .split('.')
                .take(2)
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    let kind = cfg.data_kind()?;
    let source = match kind {
        DataKind::Phantom => format!(
            "from a {}x{} capture at {} fps",
            f.phantom.width, f.phantom.height, f.phantom.fps
        ),
        DataKind::EchoNet => "from each video at its own size and frame rate".into(),
    };
    let echonet = (kind == DataKind::EchoNet).then(|| {
        let root = d.root.clone().unwrap_or_default();
        EchoNetPlan {
            filelist_present: root.join("FileList.csv").is_file(),
            tracings_present: root.join("VolumeTracings.csv").is_file(),
            videos_dir_present: root.join("Videos").is_dir(),
            root,
            max_videos_per_split: d.max_videos_per_split,
            cache_mb: d.cache_mb,
        }
    });
    Ok(Plan {
        encoder: enc_cfg.name.clone(),
        embed_dim: enc_cfg.embed_dim,
        depth,
        init: match f.init {
            Init::Random => "random".into(),
            Init::Pretrained => cfg
                .model_kwargs
                .checkpoint
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
        },
        heads: f.heads.clone(),
        clip: format!(
            "{} frames every {} at {} px, {source}",
            d.frames_per_clip, d.frame_step, d.resolution,
        ),
        batch_size: cfg.experiment.optimization.batch_size,
        distributed,
        notes,
        steps: f.steps_per_epoch * cfg.experiment.optimization.num_epochs,
        warmup_steps: (f.warmup_epochs * f.steps_per_epoch as f64).round() as usize,
        head_lr: f.lr,
        encoder_lr,
        frozen,
        drop_path: model::drop_rates(depth, f.drop_path),
        ema: f.ema,
        data: match kind {
            DataKind::Phantom => "SYNTHETIC phantom stream".into(),
            DataKind::EchoNet => format!(
                "EchoNet-layout dataset {}",
                d.root.as_deref().unwrap_or(Path::new("")).display()
            ),
        },
        phantom: (kind == DataKind::Phantom).then(|| f.phantom.clone()),
        echonet,
        output_dir: out_dir.to_path_buf(),
    })
}

/// What `latest.train.json` records besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    step: usize,
    /// Clips per step over all ranks; a resume must keep it (`None` in states written before
    /// data-parallel runs: one process).
    #[serde(default)]
    global_batch: Option<usize>,
    adam_steps: HashMap<String, u64>,
    ef_scaler: Scaler,
    history: Vec<EpochRow>,
}

/// One line of `metrics.csv`: the training losses of an epoch and the validation metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub head_losses: Vec<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub clips_per_s: f64,
    /// Share of the epoch's wall time the training loop waited for rendered clips.
    pub data_wait_share: f64,
    pub val: EvalReport,
}

/// A training batch: inputs and the labels every head needs.
struct Batch {
    input: Vec<f32>,
    views: Vec<View>,
    ef: Vec<f64>,
    lv_tokens: Vec<f32>,
    /// Per-pixel weight of the LV target in the token layout of `lv_tokens` (1 on traced
    /// frames, 0 elsewhere); `None`: every pixel has its truth (the phantom).
    lv_weight: Option<Vec<f32>>,
}

pub(crate) struct Setup {
    cfg: FinetuneConfig,
    out_dir: PathBuf,
    device: Device,
    dtype: DType,
    source: Source,
    enc_cfg: echojepa::EncoderConfig,
    /// The ranks this run averages over (one process: the identity).
    coll: Rc<dyn Collective>,
}

impl Setup {
    /// Clips per optimiser step over all ranks.
    fn global_batch(&self) -> usize {
        self.cfg.experiment.optimization.batch_size * self.coll.world()
    }

    /// Rank 0 validates, writes every file and prints the summary.
    fn main_rank(&self) -> bool {
        self.coll.rank() == 0
    }
}

fn stem(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The initial tensors: encoder from the checkpoint or random, heads from their seeded init.
fn initial_tensors(s: &Setup) -> Result<(echojepa::checkpoint::TensorMap, String)> {
    let f = &s.cfg.finetune;
    let seed = s.cfg.experiment.optimization.seed;
    let mut out = HashMap::new();
    let note = match f.init {
        Init::Pretrained => {
            let path = s
                .cfg
                .model_kwargs
                .checkpoint
                .as_ref()
                .context("model_kwargs.checkpoint is not set")?;
            let init = crate::jepa::read_init(path)?;
            let key = &s.cfg.model_kwargs.pretrain_kwargs.encoder.checkpoint_key;
            let enc = if key == "encoder" {
                init.encoder
            } else {
                init.target
            };
            let expected = crate::jepa::expected_encoder(&s.enc_cfg)?;
            for (name, shape) in &expected {
                let t = enc
                    .get(name)
                    .with_context(|| format!("{}: no encoder tensor `{name}`", path.display()))?;
                if t.dims() != shape.as_slice() {
                    bail!(
                        "{}: encoder tensor `{name}` has shape {:?}, the config's encoder needs {shape:?}",
                        path.display(),
                        t.dims()
                    );
                }
                out.insert(format!("encoder.{name}"), t.clone());
            }
            format!("{} ({key})", path.display())
        }
        Init::Random => {
            let expected = crate::jepa::expected_encoder(&s.enc_cfg)?;
            for (k, t) in crate::jepa::reference_init(&expected, seed, true)? {
                out.insert(format!("encoder.{k}"), t);
            }
            format!("random (reference initialisation, seed {seed})")
        }
    };
    let c = &s.cfg.experiment.classifier;
    for (i, h) in f.heads.iter().enumerate() {
        let hseed = seed.wrapping_add(101 + i as u64);
        match model::probe_config(h.task, s.enc_cfg.embed_dim, c.num_heads, c.num_probe_blocks) {
            Some(pc) => {
                for (k, t) in crate::probe::heads::probe_init(&pc, hseed)? {
                    out.insert(format!("heads.{}.{k}", h.name), t);
                }
            }
            None => {
                let (d, w) = (s.enc_cfg.embed_dim, model::lv_width(&s.enc_cfg));
                let mut rng = crate::rng::rng_for(&[hseed, 0x1f]);
                let b = 1.0 / (d as f64).sqrt();
                let wv: Vec<f32> = (0..d * w)
                    .map(|_| rand::Rng::random_range(&mut rng, -b..b) as f32)
                    .collect();
                out.insert(
                    format!("heads.{}.weight", h.name),
                    Tensor::from_vec(wv, (w, d), &Device::Cpu)?,
                );
                // start from the cavity's prior share of the image (mostly background)
                out.insert(
                    format!("heads.{}.bias", h.name),
                    Tensor::full(-2.0f32, w, &Device::Cpu)?,
                );
            }
        }
    }
    Ok((out, note))
}

/// The checked config, its encoder and the output directory.
fn load_config(args: &Args) -> Result<(FinetuneConfig, echojepa::EncoderConfig, PathBuf)> {
    let loaded: Loaded<FinetuneConfig> = load(&args.config)?;
    let cfg = loaded.config;
    cfg.validate()
        .with_context(|| format!("{}", args.config.display()))?;
    model::check_heads(&cfg.finetune.heads)?;
    let out_dir = args.out.clone().unwrap_or_else(|| cfg.output_dir());
    let enc_cfg = cfg.encoder_config()?;
    Ok((cfg, enc_cfg, out_dir))
}

/// Everything a run needs, the data opened (a dataset is read and decoded here).
fn setup(args: &Args, env: &EnvMap) -> Result<Setup> {
    let (cfg, enc_cfg, out_dir) = load_config(args)?;
    let world = World::from_env(env)?;
    // plain `cuda` under a launcher is the local rank's GPU
    let dev = crate::dist::device_for(&world, DeviceSpec::from_list(&args.devices)?);
    let timeout = std::time::Duration::from_secs(args.collective_timeout.max(1));
    let coll = crate::dist::open(&world, cfg.topology()?, &args.config, dev, timeout)?;
    let device = dev.open()?;
    let dtype = dev.compute_dtype(false);
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let source = Source::open(&cfg)?;
    Ok(Setup {
        cfg,
        out_dir,
        device,
        dtype,
        source,
        enc_cfg,
        coll,
    })
}

/// Which clips of each step's global batch this process reads: `b` clips per rank, rank `rank`
/// of `world`. Global batch `k` is clips `k·b·world ..` of the training stream, and rank `r`
/// holds the `r`-th run of `b`, so the ranks' shares, in rank order, are the batch one process
/// with `b·world` clips reads.
#[derive(Debug, Clone, Copy)]
struct Share {
    b: usize,
    rank: usize,
    world: usize,
}

impl Share {
    /// Index in the training stream of clip `i` of this rank's share of step `step`.
    fn clip(self, step: usize, i: usize) -> u64 {
        ((step * self.world + self.rank) * self.b + i) as u64
    }
}

/// Draws this rank's share of the batch of `step` (a pure function of the run seed, the step and
/// the share).
fn make_batch(
    source: &Source,
    enc: &echojepa::EncoderConfig,
    with_lv: bool,
    share: Share,
    step: usize,
) -> Result<Batch> {
    let b = share.b;
    let stream = match source {
        Source::Phantom(p) => p,
        Source::EchoNet(e) => return dataset_batch(e, enc, with_lv, share, step),
    };
    let mut batch = Batch {
        input: Vec::new(),
        views: Vec::with_capacity(b),
        ef: Vec::with_capacity(b),
        lv_tokens: Vec::new(),
        lv_weight: None,
    };
    for i in 0..b {
        let c = stream.clip(Split::Train, share.clip(step, i))?;
        batch.input.extend_from_slice(&c.input);
        batch.views.push(c.view);
        batch.ef.push(c.ef_percent);
        if with_lv {
            let layout = echojepa::lv::TokenLayout {
                frames: stream.frames,
                resolution: stream.resolution,
                tubelet: enc.tubelet_size,
                patch: enc.patch_size,
            };
            batch.lv_tokens.extend(layout.to_tokens(&c.lv));
        }
    }
    Ok(batch)
}

/// A training batch from an EchoNet-layout dataset: the LV target and its weight (traced
/// frames only) in the decoder's token layout.
fn dataset_batch(
    data: &echonet::EchoNet,
    enc: &echojepa::EncoderConfig,
    with_lv: bool,
    share: Share,
    step: usize,
) -> Result<Batch> {
    let b = share.b;
    let (t, r) = (data.spec.frames, data.spec.resolution);
    let layout = echojepa::lv::TokenLayout {
        frames: t,
        resolution: r,
        tubelet: enc.tubelet_size,
        patch: enc.patch_size,
    };
    let mut batch = Batch {
        input: Vec::with_capacity(b * 3 * t * r * r),
        views: Vec::with_capacity(b),
        ef: Vec::with_capacity(b),
        lv_tokens: Vec::new(),
        lv_weight: with_lv.then(Vec::new),
    };
    for i in 0..b {
        let c = data.train_clip(share.clip(step, i), with_lv)?;
        c.input.extend_normalised(&mut batch.input, t);
        batch.views.push(c.view);
        batch.ef.push(c.ef);
        if let Some(w) = batch.lv_weight.as_mut() {
            let lv: Vec<f32> = c.lv.iter().map(|&v| v as f32 / 255.0).collect();
            batch.lv_tokens.extend(layout.to_tokens(&lv));
            let per_pixel: Vec<f32> = c
                .lv_weight
                .iter()
                .flat_map(|&x| std::iter::repeat_n(x, r * r))
                .collect();
            w.extend(layout.to_tokens(&per_pixel));
        }
    }
    Ok(batch)
}

/// Draws batches ahead of the training loop on a worker thread.
fn prefetch(
    source: Source,
    enc: echojepa::EncoderConfig,
    with_lv: bool,
    share: Share,
    steps: std::ops::Range<usize>,
) -> mpsc::Receiver<Result<Batch>> {
    let (tx, rx) = mpsc::sync_channel(2);
    std::thread::spawn(move || {
        for step in steps {
            if tx
                .send(make_batch(&source, &enc, with_lv, share, step))
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// The loss of this rank's share of one batch and each head's part of it.
///
/// Every head's loss is a sum over its samples divided by a count over the batch (samples, or
/// the traced pixels' weight). With several ranks each rank divides its own sum by the count over
/// the whole global batch (one small all-reduce before the forward pass) and multiplies by the
/// number of ranks, so that the mean over ranks of the losses, and of their gradients, is exactly
/// the one-process loss of the global batch, also when the ranks hold different numbers of a
/// head's samples (views are drawn at random) or none. With one rank nothing is rescaled.
fn batch_loss(
    s: &Setup,
    m: &FtModel,
    batch: &Batch,
    step: usize,
    scaler: Scaler,
) -> Result<(Tensor, Vec<f64>)> {
    let f = &s.cfg.finetune;
    let d = &s.cfg.experiment.data;
    let b = batch.views.len();
    let (t, r) = (d.frames_per_clip, d.resolution);
    let per = batch.lv_tokens.len() / b.max(1);
    // a clip without a traced frame gives the LV head nothing to learn
    let traced = |i: usize| {
        batch
            .lv_weight
            .as_ref()
            .is_none_or(|w| w[i * per..(i + 1) * per].iter().any(|&x| x > 0.0))
    };
    let head_rows: Vec<Vec<u32>> = f
        .heads
        .iter()
        .map(|h| {
            (0..b as u32)
                .filter(|&i| h.views.is_empty() || h.views.contains(&batch.views[i as usize]))
                .filter(|&i| h.task != HeadTask::LvSegmentation || traced(i as usize))
                .collect()
        })
        .collect();
    let shares = rank_shares(s.coll.as_ref(), &f.heads, &head_rows, batch, per)?;
    let x = Tensor::from_slice(&batch.input, (b, 3, t, r, r), &s.device)?.to_dtype(s.dtype)?;
    let rates = model::drop_rates(s.enc_cfg.depth, f.drop_path);
    let mut rng = crate::rng::rng_for(&[s.cfg.experiment.optimization.seed, 0xd509, step as u64]);
    let drop = model::DropPath {
        rates: &rates,
        rng: &mut rng,
        offset: s.coll.rank() * b,
        global: s.global_batch(),
    };
    let tokens = m.encode(&x, Some(drop), f.freeze_blocks)?;
    let outs = m.heads_forward(&tokens)?;
    let mut total: Option<Tensor> = None;
    let mut parts = Vec::with_capacity(f.heads.len());
    for (k, (h, out)) in f.heads.iter().zip(&outs).enumerate() {
        let rows = &head_rows[k];
        // this rank's share of the head's sample count and of its traced weight
        let (by_rows, by_weight) = shares.as_ref().map_or((1.0, 1.0), |sh| sh[k]);
        let Some(sel) = model::select_rows(out, rows)? else {
            // no sample here; with several ranks the head may have some elsewhere (then this
            // rank's part is 0), and has none anywhere when its share is NaN
            parts.push(if shares.is_some() && !by_rows.is_nan() {
                0.0
            } else {
                f64::NAN
            });
            continue;
        };
        let loss = match h.task {
            HeadTask::View => {
                let labels: Vec<u32> = rows
                    .iter()
                    .map(|&i| batch.views[i as usize].index() as u32)
                    .collect();
                scaled(model::cross_entropy(&sel, &labels)?, by_rows)?
            }
            HeadTask::Ef => {
                let z: Vec<f32> = rows
                    .iter()
                    .map(|&i| ((batch.ef[i as usize] - scaler.mean) / scaler.std) as f32)
                    .collect();
                let z = Tensor::from_vec(z, (rows.len(), 1), &s.device)?;
                let l = crate::probe::heads::smooth_l1(&(sel.to_dtype(DType::F32)? - z)?)?;
                scaled(l, by_rows)?
            }
            HeadTask::LvSegmentation => {
                let pick = |v: &[f32]| -> Vec<f32> {
                    rows.iter()
                        .flat_map(|&i| &v[i as usize * per..(i as usize + 1) * per])
                        .copied()
                        .collect()
                };
                let tgt = Tensor::from_vec(pick(&batch.lv_tokens), sel.dims(), &s.device)?;
                match &batch.lv_weight {
                    // both terms are means over samples of equal size
                    None => scaled(
                        (model::bce_with_logits(&sel, &tgt)? + model::soft_dice_loss(&sel, &tgt)?)?,
                        by_rows,
                    )?,
                    // the cross-entropy is a sum over traced pixels divided by their weight,
                    // the Dice a mean over samples
                    Some(w) => {
                        let w = Tensor::from_vec(pick(w), sel.dims(), &s.device)?;
                        (scaled(model::weighted_bce_with_logits(&sel, &tgt, &w)?, by_weight)?
                            + scaled(model::weighted_soft_dice_loss(&sel, &tgt, &w)?, by_rows)?)?
                    }
                }
            }
        };
        parts.push(loss.to_scalar::<f32>()? as f64);
        let weighted = (loss * h.loss_weight)?;
        total = Some(match total {
            Some(t) => (t + weighted)?,
            None => weighted,
        });
    }
    let anywhere = shares
        .as_ref()
        .is_some_and(|sh| sh.iter().any(|(rows, _)| !rows.is_nan()));
    let total = match (total, &batch.lv_weight) {
        (Some(t), _) => t,
        // a dataset batch whose clips are all untraced, with only an LV head, or a rank whose
        // share holds no sample of any head while other ranks' do: a step that contributes
        // nothing but the weight decay
        (None, Some(_)) => (outs[0].to_dtype(DType::F32)?.sum_all()? * 0.0)?,
        (None, None) if anywhere => (outs[0].to_dtype(DType::F32)?.sum_all()? * 0.0)?,
        (None, None) => bail!("no head had a sample in this batch"),
    };
    Ok((total, parts))
}

/// `loss` times `share` (exactly `loss` for a share of 1).
fn scaled(loss: Tensor, share: f64) -> Result<Tensor> {
    Ok(if share == 1.0 { loss } else { (loss * share)? })
}

/// With several ranks: for each head, this rank's share of the head's sample count and of its
/// traced weight over the global batch, times the number of ranks (NaN where the global batch has
/// no sample of the head). `None` with one rank.
fn rank_shares(
    coll: &dyn Collective,
    heads: &[config::HeadCfg],
    head_rows: &[Vec<u32>],
    batch: &Batch,
    per: usize,
) -> Result<Option<Vec<(f64, f64)>>> {
    if coll.world() == 1 {
        return Ok(None);
    }
    let mut local: Vec<f32> = Vec::with_capacity(2 * heads.len());
    for (h, rows) in heads.iter().zip(head_rows) {
        local.push(rows.len() as f32);
        let weight: f64 = match (&batch.lv_weight, h.task) {
            (Some(w), HeadTask::LvSegmentation) => rows
                .iter()
                .map(|&i| {
                    let i = i as usize;
                    w[i * per..(i + 1) * per]
                        .iter()
                        .map(|&x| x as f64)
                        .sum::<f64>()
                })
                .sum(),
            _ => rows.len() as f64,
        };
        local.push(weight as f32);
    }
    let mut global = local.clone();
    coll.all_reduce_sum(&mut global)
        .with_context(|| format!("counting the batch's samples on rank {}", coll.rank()))?;
    let n = coll.world() as f64;
    let share = |l: f32, g: f32| {
        if g > 0.0 {
            n * l as f64 / g as f64
        } else {
            f64::NAN
        }
    };
    Ok(Some(
        local
            .chunks(2)
            .zip(global.chunks(2))
            .map(|(l, g)| (share(l[0], g[0]), share(l[1], g[1])))
            .collect(),
    ))
}

/// The views EF is measured in: the EF head's, else the apical A4C and A2C (where the
/// area–length rule holds); A4C alone on EchoNet.
fn ef_measure_views(s: &Setup) -> Vec<View> {
    let default = match s.source {
        Source::Phantom(_) => vec![View::A4c, View::A2c],
        Source::EchoNet(_) => vec![View::A4c],
    };
    s.cfg
        .finetune
        .heads
        .iter()
        .find(|h| h.task == HeadTask::Ef && !h.views.is_empty())
        .map_or(default, |h| h.views.clone())
}

/// What the checkpoint records about the LV head, when there is one.
fn lv_entry(
    s: &Setup,
    ef_fit: Option<[f64; 2]>,
    val_dice: Option<f64>,
    measures_ef: bool,
) -> Option<LvHeadEntry> {
    s.cfg
        .finetune
        .heads
        .iter()
        .any(|h| h.task == HeadTask::LvSegmentation)
        .then(|| LvHeadEntry {
            valid_views: ef_measure_views(s)
                .iter()
                .map(|v| v.name().to_string())
                .collect(),
            ef_fit,
            val_dice,
            measures_ef,
        })
}

/// What a fine-tuned head predicts: the view classifier over every phantom view, or LVEF in
/// percent (the only regression target fine-tuning trains).
fn head_task(task: HeadTask, views: &[View]) -> echojepa::bundle::HeadTask {
    let t = match task {
        HeadTask::View => echojepa::bundle::HeadTask::view_classifier(
            View::ALL.iter().map(|v| v.name().to_string()).collect(),
        ),
        _ => echojepa::bundle::HeadTask::regressor(vec![echojepa::bundle::Measure::lvef()]),
    };
    t.on_views(views.iter().map(|v| v.name().to_string()).collect())
}

/// The model's provenance: the clips', after the starting checkpoint's (none when the encoder
/// starts from random weights).
fn run_provenance(s: &Setup) -> Result<echojepa::bundle::Provenance> {
    let data = s.source.provenance();
    match (&s.cfg.finetune.init, &s.cfg.model_kwargs.checkpoint) {
        (Init::Pretrained, Some(path)) => {
            Ok(crate::provenance::of_checkpoint(path)?.then_trained_on(&data))
        }
        _ => Ok(data),
    }
}

/// Saves the model (EMA when enabled) as a native checkpoint with its probes.
#[allow(clippy::too_many_arguments)]
fn save_model(
    s: &Setup,
    weights: &echojepa::checkpoint::TensorMap,
    scaler: Scaler,
    cal: Option<&Calibration>,
    lv_head: Option<LvHeadEntry>,
    notes: BTreeMap<String, String>,
    path: &Path,
) -> Result<()> {
    let c = &s.cfg.experiment.classifier;
    let d = &s.cfg.experiment.data;
    let mut nc = NativeConfig::new(s.enc_cfg.clone());
    nc.model_id = format!("{}-finetune-{}", s.enc_cfg.name, s.cfg.tag);
    nc.encoders = vec!["target_encoder".into()];
    // Fine-tuning clips are uniformly spaced, as the edge runtime samples them.
    use echojepa_input::FrameSpacing;
    let mut input = InputSpec::reference(d.frames_per_clip, d.frame_step, d.resolution);
    input.spacing = FrameSpacing::Uniform;
    input.channels = s.enc_cfg.in_chans;
    nc.input = Some(input);
    let mut ck_parts: Vec<(String, echojepa::checkpoint::TensorMap)> = Vec::new();
    let part = |prefix: &str| -> echojepa::checkpoint::TensorMap {
        weights
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(prefix)
                    .map(|rest| (rest.to_string(), v.clone()))
            })
            .collect()
    };
    ck_parts.push(("target_encoder".into(), part("encoder.")));
    for h in &s.cfg.finetune.heads {
        let tensors = part(&format!("heads.{}.", h.name));
        match model::probe_config(h.task, s.enc_cfg.embed_dim, c.num_heads, c.num_probe_blocks) {
            Some(pc) => {
                let view = h.task == HeadTask::View;
                nc.probes.insert(
                    h.name.clone(),
                    ProbeEntry {
                        config: pc,
                        classes: if view {
                            View::ALL.iter().map(|v| v.name().to_string()).collect()
                        } else {
                            vec![]
                        },
                        targets: if view {
                            vec![]
                        } else {
                            vec!["ef_percent (%)".into()]
                        },
                        scaler: (!view).then_some(scaler),
                        temperature: if view {
                            cal.map(|c| c.temperature)
                        } else {
                            None
                        },
                        min_confidence: if view {
                            cal.and_then(|c| c.ef_min_confidence)
                        } else {
                            None
                        },
                        valid_views: h.views.iter().map(|v| v.name().to_string()).collect(),
                        task: Some(head_task(h.task, &h.views)),
                    },
                );
                ck_parts.push((format!("probes.{}", h.name), tensors));
            }
            None => ck_parts.push(("lv_head".into(), tensors)),
        }
    }
    nc.provenance = Some(run_provenance(s)?);
    nc.notes = notes;
    nc.lv_head = lv_head;
    let mut ck = NativeCheckpoint::new(nc);
    for (prefix, t) in ck_parts {
        ck.insert_part(&prefix, t);
    }
    ck.save(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn save_train_state(
    dir: &Path,
    opt: &AdamW,
    ema: Option<&echojepa::checkpoint::TensorMap>,
    state: &TrainState,
) -> Result<()> {
    let (mut tensors, steps) = opt.state("optim.");
    if let Some(e) = ema {
        for (k, v) in e {
            tensors.insert(format!("ema.{k}"), v.clone());
        }
    }
    let st = dir.join("latest.train.safetensors");
    candle_core::safetensors::save(&tensors, &st)
        .with_context(|| format!("cannot write {}", st.display()))?;
    let mut state = state.clone();
    state.adam_steps = steps;
    let js = dir.join("latest.train.json");
    fs::write(&js, serde_json::to_string_pretty(&state)?)
        .with_context(|| format!("cannot write {}", js.display()))?;
    Ok(())
}

/// Notes stored in the checkpoint: provenance (the synthetic-data flag the quantizer and the
/// runtime read), the recipe and the seeds.
fn notes(s: &Setup, init_note: &str, step: usize) -> BTreeMap<String, String> {
    let mut n = BTreeMap::new();
    n.insert("training_data".into(), s.source.training_note());
    n.insert("finetune_init".into(), init_note.to_string());
    n.insert("finetune_seeds".into(), s.source.seeds_note());
    n.insert("finetune_steps".into(), step.to_string());
    n
}

/// Runs the fine-tuning.
fn print_plan(p: &Plan, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "fine-tuning plan ({})", p.data)?;
    writeln!(
        out,
        "  encoder      {} (dim {}, {} blocks) from {}",
        p.encoder, p.embed_dim, p.depth, p.init
    )?;
    for h in &p.heads {
        let views: Vec<&str> = h.views.iter().map(|v| v.name()).collect();
        writeln!(
            out,
            "  head         {} ({:?}) on {}; loss weight {}",
            h.name,
            h.task,
            if views.is_empty() {
                "every view".to_string()
            } else {
                views.join(",")
            },
            h.loss_weight
        )?;
    }
    writeln!(out, "  clips        {}; batch {}", p.clip, p.batch_size)?;
    crate::plan::print_ranks(&p.distributed, out, false)?;
    for n in &p.notes {
        writeln!(out, "  note: {n}")?;
    }
    writeln!(
        out,
        "  steps        {} (warmup {})",
        p.steps, p.warmup_steps
    )?;
    writeln!(out, "  lr           heads {:.2e}", p.head_lr)?;
    for (part, lr) in &p.encoder_lr {
        writeln!(out, "               {part} {lr:.2e}")?;
    }
    if !p.frozen.is_empty() {
        writeln!(out, "  frozen       {}", p.frozen.join(", "))?;
    }
    writeln!(out, "  drop path    {:?}; EMA {:?}", p.drop_path, p.ema)?;
    if let Some(ph) = &p.phantom {
        writeln!(
            out,
            "  patients     train [{}, +{}), val [{}, +{}), test [{}, +{})",
            ph.train_seeds.start,
            ph.train_seeds.count,
            ph.val_seeds.start,
            ph.val_seeds.count,
            ph.test_seeds.start,
            ph.test_seeds.count
        )?;
    }
    if let Some(e) = &p.echonet {
        let yes = |b: bool| if b { "found" } else { "NOT FOUND" };
        writeln!(
            out,
            "  dataset      {}: FileList.csv {}, VolumeTracings.csv {}, Videos/ {}",
            e.root.display(),
            yes(e.filelist_present),
            yes(e.tracings_present),
            yes(e.videos_dir_present)
        )?;
        writeln!(
            out,
            "               splits from FileList.csv's Split column ({}); every video decoded once at the start, prepared frames cached up to {} MB",
            e.max_videos_per_split
                .map_or("every row".to_string(), |n| format!(
                    "first {n} rows of each"
                )),
            e.cache_mb
        )?;
        writeln!(
            out,
            "               evaluation: per traced video one clip on the ED and one on the ES frame, else one clip; EF per video from the regressor and from the traced LV (line fitted on VAL)"
        )?;
    }
    writeln!(out, "  output       {}", p.output_dir.display())?;
    writeln!(out, "dry run: no data or checkpoint was read")?;
    Ok(())
}

/// What a resumed run continues from.
struct Resumed {
    state: TrainState,
    /// The live weights (the saved model may be the EMA).
    weights: echojepa::checkpoint::TensorMap,
    ema: Option<echojepa::checkpoint::TensorMap>,
    optim: HashMap<String, Tensor>,
}

/// Reads `latest.train.*` and `latest.live.safetensors` of the output directory.
fn restore(dir: &Path) -> Result<Resumed> {
    let state_json = dir.join("latest.train.json");
    let text = fs::read_to_string(&state_json)
        .with_context(|| format!("cannot read {}", state_json.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a fine-tuning state", state_json.display()))?;
    let st = dir.join("latest.train.safetensors");
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu)
        .with_context(|| format!("cannot read {}", st.display()))?;
    let mut optim = HashMap::new();
    let mut ema = HashMap::new();
    for (k, v) in tensors {
        match k.strip_prefix("ema.") {
            Some(rest) => {
                ema.insert(rest.to_string(), v);
            }
            None => {
                optim.insert(k, v);
            }
        }
    }
    let live = dir.join("latest.live.safetensors");
    let weights = candle_core::safetensors::load(&live, &Device::Cpu)
        .with_context(|| format!("cannot read {}", live.display()))?;
    Ok(Resumed {
        state,
        weights,
        ema: (!ema.is_empty()).then_some(ema),
        optim,
    })
}

/// The optimizer over the trainable variables, with layer-wise learning rates.
fn optimizer(s: &Setup, varmap: &candle_nn::VarMap) -> Result<AdamW> {
    let f = &s.cfg.finetune;
    let trainable: Vec<_> = model::vars_of(varmap)?
        .into_iter()
        .filter(|(n, _)| model::is_trainable(n, f.freeze_blocks))
        .collect();
    let mut opt = AdamW::new(trainable, [0.9, 0.999], 1e-8)?;
    let depth = s.enc_cfg.depth;
    opt.set_lr_scales(|n| model::lr_scale(n, depth, f.lr, f.encoder_lr, f.layer_decay));
    Ok(opt)
}

/// The learning-rate and weight-decay schedules of the run.
fn schedules(s: &Setup) -> (LrSchedule, WdSchedule) {
    let f = &s.cfg.finetune;
    let total = f.steps_per_epoch * s.cfg.experiment.optimization.num_epochs;
    let warmup = (f.warmup_epochs * f.steps_per_epoch as f64).round() as usize;
    (
        LrSchedule::WarmupCosine {
            warmup_steps: warmup,
            start_lr: f.lr * f.start_lr_ratio,
            ref_lr: f.lr,
            final_lr: f.lr * f.final_lr_ratio,
            t_max: total.saturating_sub(warmup),
        },
        WdSchedule {
            ref_wd: f.weight_decay,
            final_wd: f.weight_decay,
            t_max: total,
        },
    )
}

/// What an epoch accumulates between validations.
struct EpochAcc {
    losses: Vec<f64>,
    parts: Vec<Vec<f64>>,
    clips: usize,
    wait: f64,
    t0: Instant,
    grad_norm: f64,
}

impl EpochAcc {
    fn new() -> Self {
        Self {
            losses: Vec::new(),
            parts: Vec::new(),
            clips: 0,
            wait: 0.0,
            t0: Instant::now(),
            grad_norm: 0.0,
        }
    }

    /// The epoch's line of `metrics.csv`.
    fn row(&self, step: usize, steps_per_epoch: usize, lr: f64, val: EvalReport) -> EpochRow {
        let nh = self.parts.first().map_or(0, Vec::len);
        let head_losses = (0..nh)
            .map(|h| {
                let v: Vec<f64> = self
                    .parts
                    .iter()
                    .map(|p| p[h])
                    .filter(|x| x.is_finite())
                    .collect();
                v.iter().sum::<f64>() / v.len().max(1) as f64
            })
            .collect();
        let secs = self.t0.elapsed().as_secs_f64().max(1e-9);
        EpochRow {
            epoch: step.div_ceil(steps_per_epoch),
            step,
            train_loss: self.losses.iter().sum::<f64>() / self.losses.len().max(1) as f64,
            head_losses,
            lr,
            grad_norm: self.grad_norm,
            clips_per_s: self.clips as f64 / secs,
            data_wait_share: self.wait / secs,
            val,
        }
    }
}

/// The model being trained and everything that changes with it.
struct Training<'a> {
    s: &'a Setup,
    varmap: candle_nn::VarMap,
    model: FtModel,
    opt: AdamW,
    ema: Option<echojepa::checkpoint::TensorMap>,
    state: TrainState,
    lr: LrSchedule,
    wd: WdSchedule,
    init_note: String,
}

impl Training<'_> {
    /// One optimizer step on `batch`; returns the loss and each head's part.
    fn step(&mut self, batch: &Batch) -> Result<(f64, Vec<f64>, f64)> {
        let f = &self.s.cfg.finetune;
        let (loss, parts) = batch_loss(
            self.s,
            &self.model,
            batch,
            self.state.step,
            self.state.ef_scaler,
        )?;
        let mut lv = loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            bail!(
                "loss is {lv} at step {} (rank {} of {})",
                self.state.step,
                self.s.coll.rank(),
                self.s.coll.world()
            );
        }
        let mut grads = loss.backward()?;
        average_grads(self.s.coll.as_ref(), self.opt.params(), &mut grads)?;
        let mut parts = parts;
        if self.s.coll.world() > 1 {
            // the logged losses are the global batch's: the mean of the ranks' scaled parts
            let mut row: Vec<f32> = std::iter::once(lv as f32)
                .chain(parts.iter().map(|&p| p as f32))
                .collect();
            self.s.coll.all_reduce_mean(&mut row)?;
            lv = row[0] as f64;
            parts = row[1..].iter().map(|&p| p as f64).collect();
        }
        let next = self.state.step + 1;
        let stats = self.opt.step(
            &grads,
            self.lr.lr_at(next),
            self.wd.wd_at(next),
            f.clip_grad,
        )?;
        if let (Some(mom), Some(e)) = (f.ema, self.ema.as_mut()) {
            eval::ema_update(e, &self.varmap, mom)?;
        }
        self.state.step = next;
        Ok((lv, parts, stats.grad_norm))
    }

    /// Validation, the epoch's metrics line and every file a resume needs.
    fn end_epoch(&mut self, acc: &EpochAcc, val: &[eval::Rendered]) -> Result<String> {
        let s = self.s;
        let live = model::snapshot(&self.varmap)?;
        let eval_weights = self.ema.as_ref().unwrap_or(&live);
        let report = eval::evaluate(s, eval_weights, val, self.state.ef_scaler)?.report(None);
        let row = acc.row(
            self.state.step,
            s.cfg.finetune.steps_per_epoch,
            self.lr.lr_at(self.state.step),
            report,
        );
        let line = eval::describe_row(&row);
        self.state.history.push(row);
        candle_core::safetensors::save(&live, s.out_dir.join("latest.live.safetensors"))
            .context("cannot write the live weights")?;
        save_model(
            s,
            eval_weights,
            self.state.ef_scaler,
            None,
            lv_entry(s, None, None, false),
            notes(s, &self.init_note, self.state.step),
            &stem(&s.out_dir, "latest"),
        )?;
        save_train_state(&s.out_dir, &self.opt, self.ema.as_ref(), &self.state)?;
        let title = if s.source.synthetic() {
            "fine-tuning (SYNTHETIC phantom)"
        } else {
            "fine-tuning (EchoNet-layout dataset)"
        };
        eval::write_metrics(
            &s.out_dir,
            &s.cfg.finetune.heads,
            &self.state.history,
            title,
        )?;
        Ok(line)
    }
}

/// Builds the model from the initial weights or the resumed run.
fn start<'a>(s: &'a Setup, args: &Args, out: &mut dyn Write) -> Result<Training<'a>> {
    let (init, init_note) = initial_tensors(s)?;
    let resumed = if !args.restart && s.out_dir.join("latest.train.json").exists() {
        let r = restore(&s.out_dir)?;
        writeln!(
            out,
            "resuming {} at step {}",
            s.out_dir.display(),
            r.state.step
        )?;
        Some(r)
    } else {
        None
    };
    let weights = resumed.as_ref().map_or(&init, |r| &r.weights);
    let varmap = model::varmap_of(weights, s.dtype, &s.device)?;
    let vb = VarBuilder::from_varmap(&varmap, s.dtype, &s.device);
    let c = &s.cfg.experiment.classifier;
    let f = &s.cfg.finetune;
    let model = FtModel::new(&s.enc_cfg, &f.heads, c.num_heads, c.num_probe_blocks, vb)?;
    let mut opt = optimizer(s, &varmap)?;
    let (state, mut ema) = match resumed {
        Some(r) => {
            let now = s.global_batch();
            if let Some(was) = r.state.global_batch
                && was != now
            {
                bail!(
                    "{}: the run was trained with {was} clips per step and would continue with \
                     {now} (batch_size {} x {} rank(s)); keep batch_size x ranks equal to resume, \
                     or pass --restart",
                    s.out_dir.display(),
                    s.cfg.experiment.optimization.batch_size,
                    s.coll.world()
                );
            }
            opt.load_state("optim.", &r.optim, &r.state.adam_steps)?;
            let mut state = r.state;
            state.global_batch = Some(now);
            (state, r.ema)
        }
        None => {
            let (mean, std) = s.source.ef_stats();
            let state = TrainState {
                step: 0,
                global_batch: Some(s.global_batch()),
                adam_steps: HashMap::new(),
                ef_scaler: Scaler { mean, std },
                history: Vec::new(),
            };
            (state, None)
        }
    };
    if f.ema.is_some() && ema.is_none() {
        ema = Some(model::snapshot(&varmap)?);
    }
    let (lr, wd) = schedules(s);
    Ok(Training {
        s,
        varmap,
        model,
        opt,
        ema,
        state,
        lr,
        wd,
        init_note,
    })
}

/// Runs the fine-tuning. `env` holds the launcher's variables (the binary reads the environment
/// once): under mpirun every rank trains on its share of each global batch and rank 0 writes.
pub fn run(args: Args, env: &EnvMap, out: &mut dyn Write) -> Result<()> {
    DeviceSpec::from_list(&args.devices)?;
    if args.dry_run {
        let (cfg, enc_cfg, out_dir) = load_config(&args)?;
        if cfg.data_kind()? == DataKind::Phantom {
            source::phantom_stream(&cfg)?;
        }
        let p = plan(&cfg, &enc_cfg, &out_dir, &World::from_env(env)?)?;
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&p)?)?;
        } else {
            print_plan(&p, out)?;
        }
        return Ok(());
    }
    let s = setup(&args, env)?;
    let f = &s.cfg.finetune;
    let o = &s.cfg.experiment.optimization;
    let total_steps = f.steps_per_epoch * o.num_epochs;
    let mut t = start(&s, &args, out)?;
    writeln!(
        out,
        "fine-tuning {} ({} blocks, dim {}) from {}: heads {}; {} epochs x {} steps x {} clips; {}",
        s.enc_cfg.name,
        s.enc_cfg.depth,
        s.enc_cfg.embed_dim,
        t.init_note,
        f.heads
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        o.num_epochs,
        f.steps_per_epoch,
        o.batch_size,
        s.source.describe()
    )?;
    if s.coll.world() > 1 {
        writeln!(
            out,
            "rank {} of {}: {} clips per rank, {} per step; gradients averaged by {}",
            s.coll.rank(),
            s.coll.world(),
            o.batch_size,
            s.global_batch(),
            s.coll.engine()
        )?;
    }
    // rank 0 alone validates
    let val = if s.main_rank() {
        s.source.eval_clips(Split::Val, f.val_clips)?
    } else {
        Vec::new()
    };
    let stop_at = args
        .max_steps
        .map_or(total_steps, |n| (t.state.step + n).min(total_steps));
    let rx = prefetch(
        s.source.clone(),
        s.enc_cfg.clone(),
        f.heads.iter().any(|h| h.task == HeadTask::LvSegmentation),
        Share {
            b: o.batch_size,
            rank: s.coll.rank(),
            world: s.coll.world(),
        },
        t.state.step..stop_at,
    );
    let pb = indicatif::ProgressBar::new(total_steps as u64);
    pb.set_position(t.state.step as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "finetune [{bar:30}] {pos}/{len} steps {msg} ({elapsed}, eta {eta})",
        )?
        .progress_chars("=> "),
    );
    let mut acc = EpochAcc::new();
    while t.state.step < stop_at {
        let wait0 = Instant::now();
        let batch = rx
            .recv()
            .context("the clip loader stopped")?
            .with_context(|| format!("making the batch of step {}", t.state.step))?;
        acc.wait += wait0.elapsed().as_secs_f64();
        let (loss, parts, norm) = t.step(&batch)?;
        acc.losses.push(loss);
        acc.parts.push(parts);
        // clips of the global batch (every rank reads as many)
        acc.clips += batch.views.len() * s.coll.world();
        acc.grad_norm = norm;
        pb.set_position(t.state.step as u64);
        pb.set_message(format!("loss {loss:.3}"));
        if t.state.step.is_multiple_of(f.steps_per_epoch) || t.state.step == stop_at {
            if s.main_rank() {
                let line = t.end_epoch(&acc, &val)?;
                pb.suspend(|| writeln!(out, "{line}"))?;
            }
            acc = EpochAcc::new();
        }
    }
    pb.finish_and_clear();
    if !s.main_rank() {
        writeln!(
            out,
            "rank {} of {}: stopped at step {} of {total_steps}; rank 0 wrote the outputs",
            s.coll.rank(),
            s.coll.world(),
            t.state.step
        )?;
        return Ok(());
    }
    if t.state.step < total_steps {
        writeln!(
            out,
            "stopped at step {} of {total_steps}; run the same command again to continue",
            t.state.step
        )?;
        return Ok(());
    }
    finish(
        &s,
        &t.varmap,
        t.ema.as_ref(),
        &val,
        &t.state,
        &t.init_note,
        &args,
        out,
    )
}

/// After the last step: calibration on validation, the test evaluation, the final checkpoint
/// and `summary.json`.
#[allow(clippy::too_many_arguments)]
fn finish(
    s: &Setup,
    varmap: &candle_nn::VarMap,
    ema: Option<&echojepa::checkpoint::TensorMap>,
    val: &[eval::Rendered],
    state: &TrainState,
    init_note: &str,
    args: &Args,
    out: &mut dyn Write,
) -> Result<()> {
    let f = &s.cfg.finetune;
    let live = model::snapshot(varmap)?;
    let weights = ema.unwrap_or(&live);
    let val_ev: Evaluated = eval::evaluate(s, weights, val, state.ef_scaler)?;
    let mut cal = match (s.source.phantom(), f.calibration_clips) {
        (Some(stream), Some(n)) if n > val.len() => {
            // the further validation clips, rendered and evaluated 512 at a time
            let pb = indicatif::ProgressBar::new(n as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "calibrating on validation clips [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})",
                )?
                .progress_chars("=> "),
            );
            let mut all = val_ev.clone();
            let mut at = val.len();
            pb.set_position(at as u64);
            while at < n {
                let k = (n - at).min(512);
                let clips = eval::render_range(stream, Split::Val, at, k)?;
                all.extend(eval::evaluate(s, weights, &clips, state.ef_scaler)?);
                at += k;
                pb.set_position(at as u64);
            }
            pb.finish_and_clear();
            all.calibrate(f)
        }
        _ => val_ev.calibrate(f),
    };
    let test = s.source.eval_clips(Split::Test, f.test_clips)?;
    let test_ev = eval::evaluate(s, weights, &test, state.ef_scaler)?;
    let (scans, videos) = traced_ef(
        s,
        weights,
        state,
        &mut cal,
        (&val_ev, val),
        (&test_ev, &test),
    )?;
    let test_report = test_ev.report(Some(&cal));
    let val_report = val_ev.report(Some(&cal));
    let mut n = notes(s, init_note, state.step);
    n.insert("finetune_test".into(), serde_json::to_string(&test_report)?);
    if let Some(sc) = &scans {
        n.insert("finetune_test_scans".into(), serde_json::to_string(sc)?);
    }
    if let Some(v) = &videos {
        n.insert("finetune_test_videos".into(), serde_json::to_string(v)?);
    }
    // the cart reports EF from the tracing when it measured better on validation
    let measures_ef = match (cal.ef_traced_val_mae, val_report.ef_mae) {
        (Some(traced), Some(regressor)) => traced < regressor,
        (Some(_), None) => true,
        _ => false,
    };
    let lv = lv_entry(s, cal.ef_beat_fit, val_report.lv_dice, measures_ef);
    let latest = stem(&s.out_dir, "latest");
    save_model(s, weights, state.ef_scaler, Some(&cal), lv, n, &latest)?;
    let summary = serde_json::json!({
        "synthetic_training_data": s.source.synthetic(),
        "training_data": s.source.training_note(),
        "data": s.source.counts(),
        "init": init_note,
        "steps": state.step,
        "ef_scaler": state.ef_scaler,
        "calibration": cal,
        "val": val_report,
        "test": test_report,
        "test_scans": scans,
        "test_videos": videos,
        "checkpoint": latest.display().to_string(),
        "seeds": notes(s, init_note, state.step).get("finetune_seeds"),
    });
    fs::write(
        s.out_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        writeln!(
            out,
            "{}",
            eval::describe_final(
                &cal,
                &test_report,
                scans.as_ref(),
                videos.as_ref(),
                s.source.test_clips_name()
            )
        )?;
        writeln!(
            out,
            "wrote {} (+ .json), metrics.csv, curves.png and summary.json in {} ({})",
            latest.with_extension("safetensors").display(),
            s.out_dir.display(),
            if s.source.synthetic() {
                "SYNTHETIC training data"
            } else {
                "training data: EchoNet-layout dataset"
            }
        )?;
    }
    Ok(())
}

/// EF from the traced LV, with its calibration line fitted on validation (stored in `cal`): on
/// the phantom beat by beat over continuous scans, as the cart measures it; on a dataset per
/// video from the traced ED and ES frames. Nothing without an LV head (the dataset's report
/// then holds the regressor's EF per video).
fn traced_ef(
    s: &Setup,
    weights: &echojepa::checkpoint::TensorMap,
    state: &TrainState,
    cal: &mut Calibration,
    (val_ev, val): (&Evaluated, &[eval::Rendered]),
    (test_ev, test): (&Evaluated, &[eval::Rendered]),
) -> Result<(Option<eval::ScanReport>, Option<eval::VideoReport>)> {
    let f = &s.cfg.finetune;
    let mean = state.ef_scaler.mean;
    match &s.source {
        Source::Phantom(_) => {
            if val_ev.lv.is_none() {
                return Ok((None, None));
            }
            let views = ef_measure_views(s);
            let v = eval::evaluate_scans(s, weights, Split::Val, f.lv_scans, f.scan_clips, &views)?;
            cal.ef_beat_fit = eval::fit_scans(&v);
            // the cart decides EF clip by clip, from the beats seen so far: so is the comparison
            cal.ef_traced_val_mae = eval::report_scans(&v, cal.ef_beat_fit, mean).ef_clipwise_mae;
            let t =
                eval::evaluate_scans(s, weights, Split::Test, f.lv_scans, f.scan_clips, &views)?;
            Ok((Some(eval::report_scans(&t, cal.ef_beat_fit, mean)), None))
        }
        Source::EchoNet(_) => {
            let v = eval::per_video(val_ev, val);
            cal.ef_beat_fit = eval::fit_videos(&v);
            cal.ef_traced_val_mae = eval::report_videos(&v, cal.ef_beat_fit, mean).ef_traced_mae;
            let t = eval::per_video(test_ev, test);
            Ok((None, Some(eval::report_videos(&t, cal.ef_beat_fit, mean))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Share;

    /// Over any number of ranks, the ranks' shares of each step, in rank order, are the clips one
    /// process with the whole global batch reads at that step: every stream clip once, none twice.
    #[test]
    fn rank_shares_are_the_one_process_batches() {
        for world in [1, 2, 3, 4, 8] {
            let b = 3;
            let one = Share {
                b: b * world,
                rank: 0,
                world: 1,
            };
            let mut seen = std::collections::HashSet::new();
            for step in 0..5 {
                let whole: Vec<u64> = (0..b * world).map(|i| one.clip(step, i)).collect();
                let ranks: Vec<u64> = (0..world)
                    .flat_map(|rank| {
                        let s = Share { b, rank, world };
                        (0..b).map(move |i| s.clip(step, i))
                    })
                    .collect();
                assert_eq!(ranks, whole, "world {world}, step {step}");
                assert!(ranks.iter().all(|c| seen.insert(*c)), "a clip read twice");
            }
            assert_eq!(seen.len(), 5 * b * world);
            assert_eq!(seen.iter().max(), Some(&((5 * b * world) as u64 - 1)));
        }
    }
}
