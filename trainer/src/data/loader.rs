//! The multi-threaded data loader: worker threads decode and transform samples in parallel and
//! hand out batches in order, as candle tensors `[B, 3, T, H, W]` per slot.
//!
//! Back-pressure: bounded and lossless. Workers claim whole batches and block while `prefetch`
//! batches are already ready or being built ahead of the consumer, so memory stays bounded and
//! nothing is dropped. Determinism: the order of batches, their contents and every random choice
//! (clip placement, crops) depend only on `(seed, epoch, index)`, not on thread timing.
//! Unreadable samples (corrupt or missing files, videos too short) are skipped and counted; the
//! batch is delivered without them, and an epoch never fails because of one bad file. The first
//! unreadable sample of a loader is a warning that points to `trainer check-data`; the others
//! are logged at debug level, and an epoch that skipped samples ends with a warning that
//! gives the count ([`Epoch::stats`] has every file and error).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::dataset::{Dataset, Sample};

/// Loader settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Worker threads (each decodes whole batches).
    pub workers: usize,
    /// Batches ready or in flight ahead of the consumer.
    pub prefetch: usize,
    pub shuffle: bool,
    /// Drop a final partial batch (counted before skipping unreadable samples).
    pub drop_last: bool,
    pub seed: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            batch_size: 8,
            workers: cores,
            prefetch: 2 * cores,
            shuffle: true,
            drop_last: false,
            seed: 0,
        }
    }
}

/// One batch: per slot a `[B, 3, T, H, W]` f32 tensor, which slots are present `[B, slots]`
/// (u8, 0 = missing view), the labels `[B]` (f32; class indices are whole numbers) and the
/// dataset indices of its samples.
#[derive(Debug, Clone)]
pub struct Batch {
    pub clips: Vec<Tensor>,
    pub present: Tensor,
    pub labels: Tensor,
    pub indices: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    #[allow(dead_code)] // pairs with `len`
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// A sample the loader skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub index: usize,
    pub file: String,
    pub error: String,
}

/// Counters of one epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderStats {
    pub loaded: usize,
    pub skipped: Vec<Skipped>,
}

struct State {
    next_claim: usize,
    next_deliver: usize,
    /// Finished batches by number: `Ok(None)` when every sample was unreadable.
    ready: BTreeMap<usize, Result<Option<Batch>, String>>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    stop: AtomicBool,
    stats: Mutex<LoaderStats>,
    /// Set once the loader has warned about an unreadable sample (shared by its epochs).
    warned: Arc<AtomicBool>,
    /// The command that shows why the dataset's unreadable videos fail.
    check_command: String,
}

/// `trainer check-data` with the dataset's list files (or `LIST` when it has none).
fn check_command(dataset: &dyn Dataset) -> String {
    let lists = dataset.lists();
    if lists.is_empty() {
        return "trainer check-data LIST".into();
    }
    let mut cmd = String::from("trainer check-data");
    for l in lists {
        cmd.push(' ');
        cmd.push_str(&l.display().to_string());
    }
    cmd
}

/// Draws batches from a dataset; call [`Loader::epoch`] for each pass.
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    cfg: LoaderConfig,
    warned: Arc<AtomicBool>,
}

impl Loader {
    pub fn new(dataset: Arc<dyn Dataset>, cfg: LoaderConfig) -> Self {
        Self {
            dataset,
            cfg,
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.cfg.batch_size.max(1)
    }

    /// Number of batches an epoch yields at most.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        let b = self.cfg.batch_size.max(1);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.cfg.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.cfg.seed, epoch, u64::MAX));
            order.shuffle(&mut rng);
        }
        order
    }

    /// Starts the workers for one pass over the data.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let b = self.cfg.batch_size.max(1);
        let order = self.order(epoch);
        let batches: Vec<Vec<usize>> = order
            .chunks(b)
            .take(self.batches_per_epoch())
            .map(|c| c.to_vec())
            .collect();
        self.epoch_of(epoch, batches)
    }

    /// Starts the workers for one pass over the given batches of sample indices (a rank's share
    /// of each global batch, in data-parallel training); sample `i` is drawn with the random
    /// stream of `(seed, epoch, i)` as in [`Self::epoch`].
    pub fn epoch_of(&self, epoch: u64, batches: Vec<Vec<usize>>) -> Epoch {
        let batches = Arc::new(batches);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_claim: 0,
                next_deliver: 0,
                ready: BTreeMap::new(),
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            stats: Mutex::new(LoaderStats::default()),
            warned: self.warned.clone(),
            check_command: check_command(self.dataset.as_ref()),
        });
        let prefetch = self.cfg.prefetch.max(1);
        let workers = self.cfg.workers.max(1).min(batches.len().max(1));
        let handles = (0..workers)
            .map(|_| {
                let (shared, batches, dataset) =
                    (shared.clone(), batches.clone(), self.dataset.clone());
                let seed = self.cfg.seed;
                std::thread::spawn(move || {
                    worker(&shared, &batches, dataset.as_ref(), seed, epoch, prefetch)
                })
            })
            .collect();
        Epoch {
            shared,
            handles,
            total: batches.len(),
            epoch,
            samples: batches.iter().map(Vec::len).sum(),
            summarized: false,
        }
    }
}

fn mix(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn worker(
    shared: &Shared,
    batches: &[Vec<usize>],
    dataset: &dyn Dataset,
    seed: u64,
    epoch: u64,
    prefetch: usize,
) {
    loop {
        // claim the next batch once it is within the prefetch window
        let b = {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if shared.stop.load(Ordering::Relaxed) || st.next_claim >= batches.len() {
                    return;
                }
                if st.next_claim < st.next_deliver + prefetch {
                    break;
                }
                st = shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.next_claim += 1;
            st.next_claim - 1
        };
        let mut samples: Vec<(usize, Sample)> = Vec::with_capacity(batches[b].len());
        for &index in &batches[b] {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch, index as u64));
            match dataset.load(index, &mut rng) {
                Ok(s) => samples.push((index, s)),
                Err(e) => {
                    let file = dataset.describe(index);
                    let error = format!("{e:#}");
                    let so_far = {
                        let mut stats = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
                        stats.skipped.push(Skipped {
                            index,
                            file: file.clone(),
                            error: error.clone(),
                        });
                        stats.skipped.len()
                    };
                    if shared.warned.swap(true, Ordering::Relaxed) {
                        tracing::debug!(index, file = %file, "skipping unreadable sample: {error}");
                    } else {
                        tracing::warn!(
                            "{so_far} video(s) of this dataset could not be read so far and are \
                             skipped (first: {error}); further ones are logged at debug level. \
                             Run `{}` to see why.",
                            shared.check_command
                        );
                    }
                }
            }
        }
        let loaded = samples.len();
        let result = if samples.is_empty() {
            Ok(None)
        } else {
            collate(samples).map(Some)
        };
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if result.is_ok() {
            shared
                .stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .loaded += loaded;
        }
        st.ready
            .insert(b, result.map_err(|e| format!("batch {b}: {e:#}")));
        shared.cv.notify_all();
    }
}

/// Stacks samples into a batch. All samples must have the same slot count and clip shape.
pub fn collate(samples: Vec<(usize, Sample)>) -> Result<Batch> {
    let n = samples.len();
    let slots = samples[0].1.slots.len();
    let first = &samples[0].1.slots;
    let mut clips = Vec::with_capacity(slots);
    for s in 0..slots {
        let c = &first[s];
        let shape = (n, c.channels, c.frames, c.height, c.width);
        let mut data = Vec::with_capacity(n * c.data.len());
        for (index, smp) in &samples {
            let t = smp.slots.get(s).ok_or_else(|| {
                anyhow::anyhow!(
                    "sample {index} has {} slots, expected {slots}",
                    smp.slots.len()
                )
            })?;
            if (t.channels, t.frames, t.height, t.width)
                != (c.channels, c.frames, c.height, c.width)
            {
                anyhow::bail!(
                    "sample {index} slot {s} is [{}, {}, {}, {}], expected [{}, {}, {}, {}]",
                    t.channels,
                    t.frames,
                    t.height,
                    t.width,
                    c.channels,
                    c.frames,
                    c.height,
                    c.width
                );
            }
            data.extend_from_slice(&t.data);
        }
        clips.push(Tensor::from_vec(data, shape, &Device::Cpu)?);
    }
    let present: Vec<u8> = samples
        .iter()
        .flat_map(|(_, s)| s.present.iter().map(|&p| p as u8))
        .collect();
    let labels: Vec<f32> = samples.iter().map(|(_, s)| s.label as f32).collect();
    Ok(Batch {
        clips,
        present: Tensor::from_vec(present, (n, slots), &Device::Cpu)?,
        labels: Tensor::from_vec(labels, n, &Device::Cpu)?,
        indices: samples.iter().map(|(i, _)| *i).collect(),
    })
}

/// One pass over the data: an iterator of batches, in order.
pub struct Epoch {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    total: usize,
    epoch: u64,
    /// Samples in this epoch's batches.
    samples: usize,
    /// Whether the end-of-epoch count has been logged.
    summarized: bool,
}

impl Epoch {
    /// Samples loaded and skipped so far.
    pub fn stats(&self) -> LoaderStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// At the end of the pass: one warning with the number of samples skipped.
    fn summarize(&mut self) {
        if std::mem::replace(&mut self.summarized, true) {
            return;
        }
        let skipped = self.stats().skipped.len();
        if skipped > 0 {
            tracing::warn!(
                "epoch {}: {skipped} of {} samples could not be read and were skipped; run `{}` \
                 to see why",
                self.epoch,
                self.samples,
                self.shared.check_command
            );
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.next_deliver >= self.total {
                drop(st);
                self.summarize();
                return None;
            }
            let k = st.next_deliver;
            if let Some(entry) = st.ready.remove(&k) {
                st.next_deliver += 1;
                self.shared.cv.notify_all();
                match entry {
                    Ok(Some(b)) => return Some(Ok(b)),
                    Ok(None) => continue, // every sample of this batch was unreadable
                    Err(e) => return Some(Err(anyhow::anyhow!(e))),
                }
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.cv.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
