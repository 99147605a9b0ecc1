//! Frozen-encoder features for probing: the encoder loaded from the config's checkpoint
//! (`checkpoint_key`, default `target_encoder`; official `.pt` or native), clips prepared with
//! the reference evaluation pipeline (deterministic placement so features can be cached), token
//! concatenation over segments / slots, and an on-disk cache keyed by everything that affects
//! the features so a grid of probes never re-encodes a clip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use echojepa::EncoderConfig;
use echojepa::bundle::Provenance;
use echojepa::checkpoint::{NativeCheckpoint, PtFile, load_strict, native_paths};
use echojepa::encoder::VisionTransformer;
use echojepa_phantom::perturb::Perturbation;
use indicatif::{ProgressBar, ProgressStyle};

use super::heads::Sample;
use crate::config::eval::EvalConfig;
use crate::data::dataset::{ClipPipeline, Dataset, MultiViewDataset, VideoDataset};
use crate::data::loader::{Loader, LoaderConfig};
use crate::dist::{Collective, SingleProcess};

/// The frozen encoder and a description of where it came from.
pub struct FrozenEncoder {
    pub model: VisionTransformer,
    pub cfg: EncoderConfig,
    /// `path#key` plus size and mtime: part of the feature-cache key.
    pub identity: String,
    pub dtype: DType,
    pub device: Device,
    /// Where the encoder's training data came from.
    pub provenance: Provenance,
}

fn same_arch(a: &EncoderConfig, b: &EncoderConfig) -> bool {
    (
        a.embed_dim,
        a.depth,
        a.num_heads,
        a.mlp_hidden,
        a.patch_size,
        a.tubelet_size,
        a.in_chans,
    ) == (
        b.embed_dim,
        b.depth,
        b.num_heads,
        b.mlp_hidden,
        b.patch_size,
        b.tubelet_size,
        b.in_chans,
    )
}

fn describe_arch(e: &EncoderConfig) -> String {
    format!(
        "{} (dim {}, depth {}, heads {}, mlp {})",
        e.name, e.embed_dim, e.depth, e.num_heads, e.mlp_hidden
    )
}

/// Whether `path` names a native checkpoint (`x.safetensors` + `x.json`).
pub fn is_native(path: &Path) -> bool {
    let (st, js) = native_paths(path);
    !path.to_string_lossy().ends_with(".pt") && st.exists() && js.exists()
}

fn file_identity(path: &Path) -> String {
    let meta = std::fs::metadata(path);
    let (len, mtime) = match meta {
        Ok(m) => (
            m.len(),
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos()),
        ),
        Err(_) => (0, 0),
    };
    format!("{}:{len}:{mtime}", path.display())
}

/// Loads the encoder `key` of `path` with architecture `cfg` (strict: every tensor, right
/// shapes). A native checkpoint must hold the same architecture.
pub fn load_encoder(
    path: &Path,
    key: &str,
    cfg: &EncoderConfig,
    dtype: DType,
    device: &Device,
) -> Result<FrozenEncoder> {
    if is_native(path) {
        let ck = NativeCheckpoint::load(path, &Device::Cpu)
            .with_context(|| format!("cannot load native checkpoint {}", path.display()))?;
        if !same_arch(&ck.config.encoder, cfg) {
            bail!(
                "{}: holds encoder {}, but the config asks for {}",
                path.display(),
                describe_arch(&ck.config.encoder),
                describe_arch(cfg)
            );
        }
        let mut part = ck.part(key);
        if part.is_empty() {
            bail!(
                "{}: no `{key}` tensors (it stores: {})",
                path.display(),
                ck.config.encoders.join(", ")
            );
        }
        part.retain(|k, _| !k.starts_with("train."));
        let (st, _) = native_paths(path);
        let model = load_strict(&st, part, dtype, device, |vb| {
            VisionTransformer::new(cfg, vb)
        })?;
        let provenance = ck.config.provenance();
        return Ok(FrozenEncoder {
            model,
            cfg: cfg.clone(),
            identity: format!("{}#{key}", file_identity(&st)),
            dtype,
            device: device.clone(),
            provenance,
        });
    }
    let pt =
        PtFile::open(path).with_context(|| format!("cannot open checkpoint {}", path.display()))?;
    let tensors = pt
        .state_dict(&[key], &Device::Cpu)
        .with_context(|| format!("reading `{key}` of {}", path.display()))?;
    let model = load_strict(pt.path(), tensors, dtype, device, |vb| {
        VisionTransformer::new(cfg, vb)
    })?;
    Ok(FrozenEncoder {
        model,
        cfg: cfg.clone(),
        identity: format!("{}#{key}", file_identity(path)),
        dtype,
        device: device.clone(),
        provenance: crate::provenance::official(path),
    })
}

/// The evaluation clip pipeline of a config (deterministic placement; optional perturbation).
pub fn eval_pipeline(cfg: &EvalConfig, perturbation: Option<Perturbation>) -> ClipPipeline {
    let d = &cfg.experiment.data;
    let clips = if cfg.is_multi() {
        d.num_clips_per_video
    } else {
        d.num_segments
    };
    let mut p = ClipPipeline::eval(d.frames_per_clip, d.frame_step, clips, d.resolution);
    p.perturbation = perturbation;
    p
}

/// A split's dataset as the loader sees it.
pub fn dataset(
    cfg: &EvalConfig,
    csv: &Path,
    perturbation: Option<Perturbation>,
) -> Result<Arc<dyn Dataset>> {
    let mut pipe = eval_pipeline(cfg, perturbation);
    pipe.dump = cfg
        .dump_inputs
        .as_ref()
        .map(|d| d.join(echojepa_input::dump::stem_of(csv)));
    Ok(if cfg.is_multi() {
        let ds = MultiViewDataset::from_csv(csv, pipe)?;
        let want = cfg.experiment.classifier.num_views;
        if !ds.entries.is_empty() && ds.num_views() != want {
            bail!(
                "{}: {} views per line, but experiment.classifier.num_views is {want}",
                csv.display(),
                ds.num_views()
            );
        }
        Arc::new(ds)
    } else {
        Arc::new(VideoDataset::from_csv(csv, pipe)?)
    })
}

/// FNV-1a 64 of a string (cache keys; not cryptographic).
pub fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Features of one split, plus how many samples could not be read.
pub struct SplitFeatures {
    pub samples: Vec<Sample>,
    pub skipped: Vec<String>,
    pub cache_file: Option<PathBuf>,
    pub from_cache: bool,
}

/// Encodes every sample of `csv` (or reads the cache). Returns features `[1, slots·N, D]` per
/// sample (one spatial view), labels, presence per study view (multi-view) and ids.
pub fn split_features(
    cfg: &EvalConfig,
    enc: &FrozenEncoder,
    csv: &Path,
    split: &str,
    perturbation: Option<Perturbation>,
    cache_dir: Option<&Path>,
    workers: usize,
) -> Result<SplitFeatures> {
    split_features_on(
        &SingleProcess,
        cfg,
        enc,
        csv,
        split,
        perturbation,
        cache_dir,
        workers,
    )
}

/// [`split_features`] with the encoding shared among the ranks of `coll`: rank `r` of `N`
/// encodes samples `r, r+N, r+2N, ...`, and the features are then gathered so that every rank
/// holds every sample, in the list's order, as one process would (rank 0 writes the cache).
/// Every rank must call it with the same arguments.
#[allow(clippy::too_many_arguments)]
pub fn split_features_on(
    coll: &dyn Collective,
    cfg: &EvalConfig,
    enc: &FrozenEncoder,
    csv: &Path,
    split: &str,
    perturbation: Option<Perturbation>,
    cache_dir: Option<&Path>,
    workers: usize,
) -> Result<SplitFeatures> {
    if cfg.experiment.data.num_views_per_segment != 1 {
        bail!(
            "experiment.data.num_views_per_segment = {}: several spatial crops per segment are not \
             supported (EchoJEPA uses 1)",
            cfg.experiment.data.num_views_per_segment
        );
    }
    let d = &cfg.experiment.data;
    let csv_text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let key = cache_key(cfg, enc, csv, &csv_text, perturbation);
    let cache_file =
        cache_dir.map(|dir| dir.join(format!("{split}-{:016x}.safetensors", fnv64(&key))));
    if let Some(f) = &cache_file
        && f.exists()
        && cfg.dump_inputs.is_none()
    {
        match read_cache(f) {
            Ok(samples) => {
                tracing::info!(
                    "{split}: {} samples from the feature cache {}",
                    samples.len(),
                    f.display()
                );
                return Ok(SplitFeatures {
                    samples,
                    skipped: vec![],
                    cache_file: cache_file.clone(),
                    from_cache: true,
                });
            }
            Err(e) => tracing::warn!("ignoring unreadable feature cache {}: {e:#}", f.display()),
        }
    }
    let ds = dataset(cfg, csv, perturbation)?;
    let n = ds.len();
    if n == 0 {
        bail!("{}: no samples", csv.display());
    }
    let views = if cfg.is_multi() {
        cfg.experiment.classifier.num_views
    } else {
        0
    };
    let per_view = if cfg.is_multi() {
        d.num_clips_per_video
    } else {
        1
    };
    let lc = LoaderConfig {
        batch_size: 4,
        workers: workers.max(1),
        prefetch: 2 * workers.max(1),
        shuffle: false,
        drop_last: false,
        seed: 0,
    };
    let loader = Loader::new(ds.clone(), lc);
    let (rank, world) = (coll.rank(), coll.world());
    // this rank's samples, in batches of the loader's size
    let mine: Vec<usize> = (rank..n).step_by(world).collect();
    let pb = ProgressBar::new(mine.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} clips encoded (eta {eta})")?
            .progress_chars("=> "),
    );
    pb.set_prefix(format!(
        "{split}{}",
        perturbation
            .map(|p| format!(" {}", p.name()))
            .unwrap_or_default()
    ));
    let mut samples = Vec::with_capacity(mine.len());
    let mut indices = Vec::with_capacity(mine.len());
    let mut epoch = loader.epoch_of(0, mine.chunks(4).map(<[usize]>::to_vec).collect());
    for batch in epoch.by_ref() {
        let batch = batch?;
        let b = batch.len();
        let slots = batch.clips.len();
        let mut per_slot = Vec::with_capacity(slots);
        for clip in &batch.clips {
            let x = clip.to_device(&enc.device)?.to_dtype(enc.dtype)?;
            per_slot.push(
                enc.model
                    .forward(&x)?
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?,
            );
        }
        // [B, slots·N, D], slot-major (segments or view × clip)
        let feats = Tensor::cat(&per_slot, 1)?;
        let labels = batch.labels.to_vec1::<f32>()?;
        let present = batch.present.to_vec2::<u8>()?;
        for i in 0..b {
            let f = feats.get(i)?.unsqueeze(0)?;
            let pres = (views > 0).then(|| {
                (0..views)
                    .map(|v| present[i][v * per_view] != 0)
                    .collect::<Vec<_>>()
            });
            samples.push(Sample {
                feats: f,
                label: labels[i] as f64,
                present: pres,
                id: ds.describe(batch.indices[i]),
            });
            indices.push(batch.indices[i]);
        }
        pb.inc(b as u64);
    }
    pb.finish_and_clear();
    let skipped: Vec<String> = epoch
        .stats()
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.file, s.error))
        .collect();
    for s in &skipped {
        tracing::warn!("{split}: skipped unreadable sample {s}");
    }
    let (samples, skipped) = if world > 1 {
        gather_split(coll, ds.as_ref(), n, views, indices, samples)
            .with_context(|| format!("gathering the {split} features of {}", csv.display()))?
    } else {
        (samples, skipped)
    };
    if samples.is_empty() {
        bail!("{}: none of the {n} samples could be read", csv.display());
    }
    if let Some(f) = &cache_file
        && rank == 0
    {
        write_cache(f, &samples)
            .with_context(|| format!("writing feature cache {}", f.display()))?;
    }
    Ok(SplitFeatures {
        samples,
        skipped,
        cache_file,
        from_cache: false,
    })
}

/// What the features of a split depend on: the input preparation, the encoder and its weights,
/// the list's text and path, the clip settings, the perturbation and the precision.
fn cache_key(
    cfg: &EvalConfig,
    enc: &FrozenEncoder,
    csv: &Path,
    csv_text: &str,
    perturbation: Option<Perturbation>,
) -> String {
    let d = &cfg.experiment.data;
    format!(
        "v1|{}|{}|{:?}|{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}",
        echojepa_input::PREP_ID,
        enc.identity,
        enc.cfg,
        fnv64(csv_text),
        csv.display(),
        d.frames_per_clip,
        d.frame_step,
        d.num_segments,
        d.resolution,
        (
            cfg.is_multi(),
            d.num_clips_per_video,
            cfg.experiment.classifier.num_views
        ),
        perturbation.map(|p| p.name()),
        crate::device::dtype_name(enc.dtype),
    )
}

/// Every rank's samples on every rank ([`gather_samples`]), and every rank's unreadable
/// samples by name (each rank logged its own errors).
fn gather_split(
    coll: &dyn Collective,
    ds: &dyn Dataset,
    n: usize,
    views: usize,
    indices: Vec<usize>,
    samples: Vec<Sample>,
) -> Result<(Vec<Sample>, Vec<String>)> {
    let all = gather_samples(coll, ds, n, views, indices, samples)?;
    let read: std::collections::HashSet<usize> = all.iter().map(|(i, _)| *i).collect();
    let gone: Vec<String> = (0..n)
        .filter(|i| !read.contains(i))
        .map(|i| {
            format!(
                "{}: unreadable (sample {i}; rank {} logged why)",
                ds.describe(i),
                i % coll.world()
            )
        })
        .collect();
    Ok((all.into_iter().map(|(_, s)| s).collect(), gone))
}

/// Every rank's encoded samples, on every rank, in index order: one all-reduce per chunk of
/// samples, where each sample's owner contributes `[read, label, presence..., features...]` and
/// the others zeros, so the sum is the owner's values exactly.
fn gather_samples(
    coll: &dyn Collective,
    ds: &dyn Dataset,
    n: usize,
    views: usize,
    indices: Vec<usize>,
    samples: Vec<Sample>,
) -> Result<Vec<(usize, Sample)>> {
    // the feature shape, from any rank that read a sample
    let mut shape = vec![0f32; 3];
    if let Some(s) = samples.first() {
        let (_, t, d) = s.feats.dims3()?;
        shape = vec![t as f32, d as f32, 1.0];
    }
    coll.all_reduce_sum(&mut shape)?;
    if shape[2] == 0.0 {
        return Ok(Vec::new());
    }
    let (t, d) = (
        (shape[0] / shape[2]).round() as usize,
        (shape[1] / shape[2]).round() as usize,
    );
    let width = 2 + views + t * d;
    let mine: HashMap<usize, Sample> = indices.into_iter().zip(samples).collect();
    // about 64 MB of f32 per all-reduce
    let chunk = (16 << 20) / width.max(1);
    let chunk = chunk.max(1);
    let mut out = Vec::with_capacity(n);
    let mut buf = Vec::new();
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        buf.clear();
        buf.resize((end - start) * width, 0f32);
        for i in start..end {
            if let Some(s) = mine.get(&i) {
                let row = &mut buf[(i - start) * width..(i - start + 1) * width];
                row[0] = 1.0;
                row[1] = s.label as f32;
                if let Some(p) = &s.present {
                    for (v, &x) in p.iter().enumerate().take(views) {
                        row[2 + v] = f32::from(u8::from(x));
                    }
                }
                let f = s.feats.flatten_all()?.to_vec1::<f32>()?;
                if f.len() != t * d {
                    bail!(
                        "{}: {} feature values, other samples have {t} x {d}",
                        s.id,
                        f.len()
                    );
                }
                row[2 + views..].copy_from_slice(&f);
            }
        }
        coll.all_reduce_sum(&mut buf)?;
        for i in start..end {
            let row = &buf[(i - start) * width..(i - start + 1) * width];
            if row[0] < 0.5 {
                continue;
            }
            let sample = Sample {
                feats: Tensor::from_slice(&row[2 + views..], (1, t, d), &Device::Cpu)?,
                label: row[1] as f64,
                present: (views > 0).then(|| row[2..2 + views].iter().map(|&x| x > 0.5).collect()),
                id: ds.describe(i),
            };
            out.push((i, sample));
        }
    }
    Ok(out)
}

fn write_cache(path: &Path, samples: &[Sample]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let feats: Vec<Tensor> = samples.iter().map(|s| s.feats.clone()).collect();
    let feats = Tensor::stack(&feats, 0)?;
    let labels = Tensor::from_vec(
        samples.iter().map(|s| s.label).collect::<Vec<f64>>(),
        samples.len(),
        &Device::Cpu,
    )?;
    let mut map = std::collections::HashMap::new();
    map.insert("feats".to_string(), feats);
    map.insert("labels".to_string(), labels);
    if let Some(v) = samples[0].present.as_ref().map(Vec::len) {
        let p: Vec<u8> = samples
            .iter()
            .flat_map(|s| {
                s.present
                    .clone()
                    .unwrap_or_else(|| vec![true; v])
                    .into_iter()
                    .map(u8::from)
            })
            .collect();
        map.insert(
            "present".to_string(),
            Tensor::from_vec(p, (samples.len(), v), &Device::Cpu)?,
        );
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    candle_core::safetensors::save(&map, &tmp)?;
    let ids: Vec<&str> = samples.iter().map(|s| s.id.as_str()).collect();
    std::fs::write(
        PathBuf::from(format!("{}.ids.json", path.display())),
        serde_json::to_vec(&ids)?,
    )?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn read_cache(path: &Path) -> Result<Vec<Sample>> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)?;
    let feats = map.get("feats").context("no `feats`")?;
    let labels = map.get("labels").context("no `labels`")?.to_vec1::<f64>()?;
    let present = map.get("present").map(|p| p.to_vec2::<u8>()).transpose()?;
    let ids: Vec<String> =
        serde_json::from_slice(&std::fs::read(format!("{}.ids.json", path.display()))?)?;
    let n = feats.dim(0)?;
    if labels.len() != n || ids.len() != n {
        bail!(
            "inconsistent cache: {n} features, {} labels, {} ids",
            labels.len(),
            ids.len()
        );
    }
    (0..n)
        .map(|i| {
            Ok(Sample {
                feats: feats.get(i)?,
                label: labels[i],
                present: present
                    .as_ref()
                    .map(|p| p[i].iter().map(|&x| x != 0).collect()),
                id: ids[i].clone(),
            })
        })
        .collect()
}
