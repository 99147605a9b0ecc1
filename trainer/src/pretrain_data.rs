//! Pretraining clips from the config's datasets: the reference clip sampling (`fps`,
//! `frame_step` or `duration`; one clip per video, random placement), random resized crop, the
//! weighted mixture of several CSVs, and a deterministic position `(epoch, batches consumed)`
//! so that a resumed run continues with exactly the batches it would have seen.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use echojepa::bundle::SectorHandling;
use echojepa_video::ColorMode;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::pretrain::PretrainConfig;
use crate::data::augment::RandomResizedCrop;
use crate::data::csv::{VideoEntry, read_video_csv};
use crate::data::dataset::{ClipPipeline, Dataset, Sample, Transform, VideoDataset};
use crate::data::loader::{Epoch, Loader, LoaderConfig};
use crate::data::sampling::{ClipSampling, StepRule};
use crate::dist::shard::ShardPlan;
use crate::phantom_stream::{PhantomStream, Split};

/// Where the loader stands: the epoch and how many of its batches were consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderPos {
    pub epoch: u64,
    pub consumed: usize,
}

/// A source of pretraining batches `[B, 3, T, H, W]` in a reproducible order.
pub trait ClipSource {
    /// The next batch (moving to the next epoch when one is exhausted).
    fn next_batch(&mut self) -> Result<Tensor>;
    fn position(&self) -> LoaderPos;
    /// Continues from `pos` (re-reads and discards the consumed batches of that epoch).
    fn seek(&mut self, pos: LoaderPos) -> Result<()>;
    /// Batches per epoch.
    fn iterations_per_epoch(&self) -> usize;
    /// Samples skipped because they could not be read (all epochs so far).
    fn skipped(&self) -> u64;
}

/// Several CSVs mixed with sampling weights: dataset `i` contributes
/// `round(w_i / Σw · N)` samples per epoch (`N` = total size), repeating or sub-sampling its
/// entries deterministically.
pub struct Mixture {
    parts: Vec<VideoDataset>,
    /// `(part, entry)` for each virtual index.
    index: Vec<(usize, usize)>,
}

impl Mixture {
    pub fn new(parts: Vec<VideoDataset>, weights: Option<&[f64]>, seed: u64) -> Result<Self> {
        let total: usize = parts.iter().map(|p| p.entries.len()).sum();
        if total == 0 {
            bail!("the pretraining datasets are empty");
        }
        let mut index = Vec::new();
        match weights {
            None => {
                for (pi, p) in parts.iter().enumerate() {
                    index.extend((0..p.entries.len()).map(|e| (pi, e)));
                }
            }
            Some(w) => {
                let sum: f64 = w.iter().sum();
                for (pi, p) in parts.iter().enumerate() {
                    let n = p.entries.len();
                    if n == 0 {
                        continue;
                    }
                    let want = (w[pi] / sum * total as f64).round() as usize;
                    let mut order: Vec<usize> = (0..n).collect();
                    use rand::seq::SliceRandom;
                    order.shuffle(&mut crate::rng::rng_for(&[seed, 0x3a7e, pi as u64]));
                    index.extend((0..want).map(|k| (pi, order[k % n])));
                }
            }
        }
        Ok(Self { parts, index })
    }
}

impl Dataset for Mixture {
    fn len(&self) -> usize {
        self.index.len()
    }
    fn slots(&self) -> usize {
        1
    }
    fn load(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Sample> {
        let (p, e) = self.index[index];
        self.parts[p].load(e, rng)
    }
    fn describe(&self, index: usize) -> String {
        self.index
            .get(index)
            .map(|&(p, e)| self.parts[p].describe(e))
            .unwrap_or_default()
    }
    fn lists(&self) -> Vec<std::path::PathBuf> {
        self.parts.iter().flat_map(|p| p.lists()).collect()
    }
}

/// The clip pipeline of a pretraining config.
pub fn pipeline(cfg: &PretrainConfig) -> ClipPipeline {
    let d = &cfg.data;
    let step = match (d.fps, d.frame_step, d.duration) {
        (Some(f), _, _) => StepRule::Fps(f),
        (_, Some(s), _) => StepRule::FrameStep(s),
        (_, _, Some(s)) => StepRule::Duration(s),
        _ => StepRule::FrameStep(4),
    };
    let a = &cfg.data_aug;
    ClipPipeline {
        sampling: ClipSampling {
            frames_per_clip: cfg.frames_per_clip(),
            step,
            num_clips: 1,
            random_clip_sampling: true,
            allow_clip_overlap: false,
            filter_short_videos: false,
        },
        transform: Transform::Train(RandomResizedCrop {
            size: d.crop_size,
            scale: (a.random_resize_scale[0], a.random_resize_scale[1]),
            ratio: (
                a.random_resize_aspect_ratio[0],
                a.random_resize_aspect_ratio[1],
            ),
            horizontal_flip: a.horizontal_flip,
        }),
        sector: SectorHandling::FullFrame,
        color: ColorMode::Rgb,
        perturbation: None,
        dump: None,
    }
}

/// The data loader wrapped as a [`ClipSource`].
pub struct LoaderSource {
    loader: Loader,
    epoch: Option<Epoch>,
    pos: LoaderPos,
    skipped_before: u64,
    per_epoch: usize,
    /// With several ranks: this rank's place and the sharding of each epoch's order.
    shard: Option<(usize, ShardPlan)>,
}

impl LoaderSource {
    pub fn new(dataset: Arc<dyn Dataset>, cfg: LoaderConfig) -> Self {
        let loader = Loader::new(dataset, cfg);
        let per_epoch = loader.batches_per_epoch();
        Self {
            loader,
            epoch: None,
            pos: LoaderPos::default(),
            skipped_before: 0,
            per_epoch,
            shard: None,
        }
    }

    /// Reads `rank`'s share of global batches of `batch_size x world` clips (`dist::shard`): the
    /// epoch's order is the one-process order, so N ranks read together what one process with
    /// the global batch reads. Short final global batches are dropped, as with one process, so
    /// every rank reads the same number of equal batches.
    pub fn sharded(mut self, rank: usize, world: usize) -> Result<Self> {
        if world == 1 {
            return Ok(self);
        }
        let b = self.loader.batch_size();
        let len = self.loader.order(0).len();
        let plan = ShardPlan::new(len, b * world, world, true)?;
        if plan.steps_per_epoch() == 0 {
            bail!(
                "{len} clips are fewer than one global batch of {} ({b} per rank x {world} ranks)",
                b * world
            );
        }
        self.per_epoch = plan.steps_per_epoch();
        self.shard = Some((rank, plan));
        Ok(self)
    }

    fn start(&self, epoch: u64) -> Epoch {
        match &self.shard {
            None => self.loader.epoch(epoch),
            Some((rank, plan)) => {
                let order = self.loader.order(epoch);
                let batches = (0..plan.steps_per_epoch())
                    .map(|k| order[plan.rank_range(k, *rank)].to_vec())
                    .collect();
                self.loader.epoch_of(epoch, batches)
            }
        }
    }

    fn finish_epoch(&mut self) {
        if let Some(e) = self.epoch.take() {
            self.skipped_before += e.stats().skipped.len() as u64;
        }
    }
}

impl ClipSource for LoaderSource {
    fn next_batch(&mut self) -> Result<Tensor> {
        for _ in 0..3 {
            if self.epoch.is_none() {
                self.epoch = Some(self.start(self.pos.epoch));
            }
            let ep = self.epoch.as_mut().context("loader epoch")?;
            match ep.next() {
                Some(b) => {
                    let b = b?;
                    self.pos.consumed += 1;
                    return b.clips.into_iter().next().context("a batch without clips");
                }
                None => {
                    self.finish_epoch();
                    self.pos = LoaderPos {
                        epoch: self.pos.epoch + 1,
                        consumed: 0,
                    };
                }
            }
        }
        bail!(
            "the loader produced no readable batch in two consecutive epochs (every video unreadable?)"
        )
    }

    fn position(&self) -> LoaderPos {
        self.pos
    }

    fn seek(&mut self, pos: LoaderPos) -> Result<()> {
        self.finish_epoch();
        self.pos = LoaderPos {
            epoch: pos.epoch,
            consumed: 0,
        };
        let mut ep = self.start(pos.epoch);
        for _ in 0..pos.consumed {
            if ep.next().transpose()?.is_none() {
                break;
            }
            self.pos.consumed += 1;
        }
        self.epoch = Some(ep);
        Ok(())
    }

    fn iterations_per_epoch(&self) -> usize {
        self.per_epoch
    }

    fn skipped(&self) -> u64 {
        self.skipped_before
            + self
                .epoch
                .as_ref()
                .map_or(0, |e| e.stats().skipped.len() as u64)
    }
}

/// Pretraining clips rendered on the fly from the phantom's training patients, prepared as the
/// edge runtime prepares its input. Batch `k` of epoch `e` is a pure function of the run seed
/// and `(e, k)`, so seeking is free and a resumed run sees the same clips.
pub struct PhantomSource {
    stream: PhantomStream,
    batch: usize,
    per_epoch: usize,
    pos: LoaderPos,
    ahead: Option<std::sync::mpsc::Receiver<Result<Tensor>>>,
    /// `(rank, world)`: this rank renders its share of each global batch.
    shard: (usize, usize),
}

impl PhantomSource {
    pub fn new(stream: PhantomStream, batch: usize, per_epoch: usize) -> Self {
        Self {
            stream,
            batch,
            per_epoch: per_epoch.max(1),
            pos: LoaderPos::default(),
            ahead: None,
            shard: (0, 1),
        }
    }

    /// Global batch `k` is clips `k·b·N .. (k+1)·b·N` of the stream, and rank `r` renders the
    /// r-th run of `b` of them (`dist::shard`'s contiguous split), so N ranks with batch `b`
    /// read exactly what one process with batch `b·N` reads.
    pub fn sharded(mut self, rank: usize, world: usize) -> Self {
        self.shard = (rank, world.max(1));
        self
    }

    fn global_batch(&self, pos: LoaderPos) -> usize {
        pos.epoch as usize * self.per_epoch + pos.consumed
    }

    /// Renders batches from `first` on, on a worker thread, two ahead of the trainer.
    fn start(&mut self, first: usize) {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let stream = self.stream.clone();
        let b = self.batch;
        let (rank, world) = self.shard;
        std::thread::spawn(move || {
            for k in first.. {
                let from = (k * world + rank) * b;
                if tx.send(render_batch(&stream, b, from)).is_err() {
                    break;
                }
            }
        });
        self.ahead = Some(rx);
    }
}

/// Clips `from .. from + b` of the training stream as one batch.
fn render_batch(stream: &PhantomStream, b: usize, from: usize) -> Result<Tensor> {
    let (t, r) = (stream.frames, stream.resolution);
    let mut data = Vec::with_capacity(b * 3 * t * r * r);
    for i in 0..b {
        let c = stream.clip(Split::Train, (from + i) as u64)?;
        data.extend_from_slice(&c.input);
    }
    Ok(Tensor::from_vec(
        data,
        (b, 3, t, r, r),
        &candle_core::Device::Cpu,
    )?)
}

impl ClipSource for PhantomSource {
    fn next_batch(&mut self) -> Result<Tensor> {
        if self.ahead.is_none() {
            self.start(self.global_batch(self.pos));
        }
        let rx = self.ahead.as_ref().context("phantom renderer")?;
        let batch = rx.recv().context("the phantom renderer stopped")??;
        self.pos.consumed += 1;
        if self.pos.consumed == self.per_epoch {
            self.pos = LoaderPos {
                epoch: self.pos.epoch + 1,
                consumed: 0,
            };
        }
        Ok(batch)
    }

    fn position(&self) -> LoaderPos {
        self.pos
    }

    fn seek(&mut self, pos: LoaderPos) -> Result<()> {
        self.pos = pos;
        self.ahead = None;
        Ok(())
    }

    fn iterations_per_epoch(&self) -> usize {
        self.per_epoch
    }

    fn skipped(&self) -> u64 {
        0
    }
}

/// Opens the config's datasets as a batch source for `rank` of `world` ranks (each reading
/// `data.batch_size` clips of a global batch `world` times larger).
pub fn open(cfg: &PretrainConfig, rank: usize, world: usize) -> Result<Box<dyn ClipSource>> {
    if cfg.data.dataset_type == "PhantomStream" {
        let d = &cfg.data;
        let step = d.frame_step.context(
            "data.dataset_type PhantomStream takes data.frame_step (frames of the capture between clip frames)",
        )?;
        let stream = PhantomStream::new(
            d.phantom.clone().unwrap_or_default(),
            cfg.frames_per_clip(),
            step,
            d.crop_size,
            cfg.meta.seed,
        )?;
        let ipe = cfg
            .optimization
            .ipe
            .context("PhantomStream needs optimization.ipe")?;
        return Ok(Box::new(
            PhantomSource::new(stream, d.batch_size, ipe).sharded(rank, world),
        ));
    }
    let pipe = pipeline(cfg);
    let mut parts = Vec::new();
    for csv in &cfg.data.datasets {
        let entries: Vec<VideoEntry> = read_video_csv(csv)
            .with_context(|| format!("pretraining dataset {}", csv.display()))?;
        parts.push(VideoDataset {
            entries,
            pipeline: pipe.clone(),
            list: Some(csv.clone()),
        });
    }
    let mixture = Mixture::new(parts, cfg.data.datasets_weights.as_deref(), cfg.meta.seed)?;
    if mixture.len() < cfg.data.batch_size {
        bail!(
            "{} clips in {} but data.batch_size is {}",
            mixture.len(),
            cfg.data
                .datasets
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            cfg.data.batch_size
        );
    }
    let workers = cfg.data.num_workers.max(1);
    let lc = LoaderConfig {
        batch_size: cfg.data.batch_size,
        workers,
        prefetch: 2 * workers,
        shuffle: true,
        drop_last: true,
        seed: cfg.meta.seed,
    };
    Ok(Box::new(
        LoaderSource::new(Arc::new(mixture), lc).sharded(rank, world)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use echojepa_input::preprocess::ClipTensor;

    /// Sample `i` is a 1x1x1x1 clip holding `i`, so a batch tells which samples it holds.
    struct Numbers(usize);

    impl Dataset for Numbers {
        fn len(&self) -> usize {
            self.0
        }
        fn slots(&self) -> usize {
            1
        }
        fn load(&self, index: usize, _rng: &mut ChaCha8Rng) -> Result<Sample> {
            Ok(Sample {
                slots: vec![ClipTensor {
                    channels: 1,
                    frames: 1,
                    height: 1,
                    width: 1,
                    data: vec![index as f32],
                }],
                present: vec![true],
                label: 0.0,
            })
        }
        fn describe(&self, index: usize) -> String {
            format!("sample {index}")
        }
    }

    fn source(len: usize, batch: usize, rank: usize, world: usize) -> LoaderSource {
        let cfg = LoaderConfig {
            batch_size: batch,
            workers: 1,
            prefetch: 2,
            shuffle: true,
            drop_last: true,
            seed: 9,
        };
        LoaderSource::new(Arc::new(Numbers(len)), cfg)
            .sharded(rank, world)
            .unwrap()
    }

    fn ids(src: &mut LoaderSource) -> Vec<usize> {
        let t = src.next_batch().unwrap();
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|x| x as usize)
            .collect()
    }

    #[test]
    fn ranks_together_read_the_one_process_batches() {
        // 2 epochs of 4 global batches of 6 (26 samples: 2 dropped per epoch, as with one process)
        let mut one = source(26, 6, 0, 1);
        let mut ranks: Vec<LoaderSource> = (0..3).map(|r| source(26, 2, r, 3)).collect();
        assert_eq!(one.iterations_per_epoch(), 4);
        assert!(ranks.iter().all(|s| s.iterations_per_epoch() == 4));
        for step in 0..8 {
            let want = ids(&mut one);
            let got: Vec<usize> = ranks.iter_mut().flat_map(ids).collect();
            assert_eq!(got, want, "step {step}");
        }
        // resumed at a global position with another world size: the same batches on
        let pos = LoaderPos {
            epoch: 1,
            consumed: 2,
        };
        let mut one = source(26, 6, 0, 1);
        one.seek(pos).unwrap();
        let mut two: Vec<LoaderSource> = (0..2).map(|r| source(26, 3, r, 2)).collect();
        for s in &mut two {
            s.seek(pos).unwrap();
        }
        for _ in 0..3 {
            let got: Vec<usize> = two.iter_mut().flat_map(ids).collect();
            assert_eq!(got, ids(&mut one));
        }
    }

    #[test]
    fn fewer_clips_than_a_global_batch_is_an_error() {
        let cfg = LoaderConfig {
            batch_size: 4,
            ..LoaderConfig::default()
        };
        let e = LoaderSource::new(Arc::new(Numbers(10)), cfg)
            .sharded(1, 4)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("one global batch of 16"), "{e}");
    }
}
