//! `trainer embed`: per-clip embeddings of a frozen encoder (mean of the output tokens over the
//! present slots) for one split of a frozen-evaluation config, written as CSV, with a 2-D PCA
//! projection plotted and coloured by label — the picture of the view manifold.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::DType;
use serde::Serialize;

use crate::config::eval::{EvalConfig, TaskType};
use crate::config::{Loaded, load};
use crate::plot::scatter_chart;
use crate::probe::features::split_features;
use crate::probe::heads::Sample;

/// Export per-clip embeddings and a 2-D PCA plot coloured by label.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Frozen-evaluation config (its data lists and `model_kwargs.checkpoint` are used).
    #[arg(long, short, visible_alias = "fname")]
    pub config: PathBuf,
    /// Which list: train, val or test.
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Output directory (default: `<output dir of the config>/embeddings`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override `model_kwargs.checkpoint`.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Device: `cpu` or `cuda:N`.
    #[arg(long, num_args = 1.., default_value = "cpu")]
    pub devices: Vec<String>,
    /// Decode/encode threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The top `k` principal axes of the rows of `x` (power iteration with deflation), with the
/// fraction of variance each explains.
pub fn pca(x: &[Vec<f64>], k: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let n = x.len();
    let d = x.first().map_or(0, Vec::len);
    if n < 2 || d == 0 {
        return (vec![vec![0.0; d]; k], vec![0.0; k]);
    }
    let mean: Vec<f64> = (0..d)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let xc: Vec<Vec<f64>> = x
        .iter()
        .map(|r| r.iter().zip(&mean).map(|(a, m)| a - m).collect())
        .collect();
    let mut cov = vec![vec![0.0; d]; d];
    for r in &xc {
        for i in 0..d {
            let ri = r[i];
            if ri == 0.0 {
                continue;
            }
            for j in i..d {
                cov[i][j] += ri * r[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            cov[i][j] /= (n - 1) as f64;
            cov[j][i] = cov[i][j];
        }
    }
    let total: f64 = (0..d).map(|i| cov[i][i]).sum();
    let mut axes = Vec::with_capacity(k);
    let mut explained = Vec::with_capacity(k);
    for a in 0..k {
        let mut v: Vec<f64> = (0..d)
            .map(|i| 1.0 + ((i * 7919 + a * 104_729) % 97) as f64 / 97.0)
            .collect();
        let mut lambda = 0.0;
        for _ in 0..300 {
            let mut w: Vec<f64> = cov
                .iter()
                .map(|row| row.iter().zip(&v).map(|(c, x)| c * x).sum())
                .collect();
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            w.iter_mut().for_each(|x| *x /= norm);
            let delta: f64 = w.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
            v = w;
            lambda = norm;
            if delta < 1e-10 {
                break;
            }
        }
        for i in 0..d {
            for j in 0..d {
                cov[i][j] -= lambda * v[i] * v[j];
            }
        }
        explained.push(if total > 0.0 { lambda / total } else { 0.0 });
        axes.push(v);
    }
    (axes, explained)
}

#[derive(Debug, Serialize)]
struct Summary {
    split: String,
    samples: usize,
    dim: usize,
    explained_variance: Vec<f64>,
    /// Leave-one-out nearest-centroid accuracy of the labels in embedding space
    /// (classification only): how separable the classes are without any probe.
    nearest_centroid_accuracy: Option<f64>,
    embeddings: PathBuf,
    plot: PathBuf,
}

pub fn run(args: Args, out: &mut dyn Write) -> Result<()> {
    let dev = crate::device::DeviceSpec::from_list(&args.devices)?;
    let loaded: Loaded<EvalConfig> = load(&args.config)?;
    let mut cfg = loaded.config;
    if let Some(c) = &args.checkpoint {
        cfg.model_kwargs.checkpoint = c.clone();
    }
    cfg.validate()?;
    let csv = split_list(&cfg, &args.split)?;
    let device = dev.open()?;
    let dtype = dev.compute_dtype(cfg.experiment.optimization.use_bfloat16);
    let enc_cfg = cfg.encoder_config()?;
    let key = cfg
        .model_kwargs
        .pretrain_kwargs
        .encoder
        .checkpoint_key
        .clone();
    let enc = crate::probe::features::load_encoder(
        &cfg.model_kwargs.checkpoint,
        &key,
        &enc_cfg,
        dtype,
        &device,
    )?;
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| cfg.output_dir().join("embeddings"));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let o = &cfg.experiment.optimization;
    let cache = o.cache_features.then(|| {
        o.feature_cache
            .clone()
            .unwrap_or_else(|| cfg.output_dir().join("features"))
    });
    let feats = split_features(
        &cfg,
        &enc,
        &csv,
        &args.split,
        None,
        cache.as_deref(),
        args.workers,
    )?;
    let samples = feats.samples;
    let rows = mean_embeddings(&samples)?;
    let dim = rows.first().map_or(0, Vec::len);
    let (axes, explained) = pca(&rows, 2);
    let proj: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            let p = |a: &Vec<f64>| r.iter().zip(a).map(|(x, y)| x * y).sum::<f64>();
            (p(&axes[0]), p(&axes[1]))
        })
        .collect();
    let (colour, legend) = colours(&cfg, &samples)?;
    let emb_path = out_dir.join(format!("embeddings_{}.csv", args.split));
    write_embeddings(&emb_path, &samples, &rows, &proj)?;
    let plot = out_dir.join(format!("pca_{}.png", args.split));
    let pts: Vec<(f64, f64, usize)> = proj
        .iter()
        .zip(&colour)
        .map(|(p, &c)| (p.0, p.1, c))
        .collect();
    let list =
        crate::provenance::of_lists(std::slice::from_ref(&csv), cfg.experiment.data.synthetic);
    let synthetic = enc.provenance.synthetic || list.synthetic;
    let title = format!(
        "PCA of {} embeddings ({}){}",
        args.split,
        enc_cfg.name,
        if synthetic { " - synthetic data" } else { "" }
    );
    scatter_chart(
        &plot,
        &title,
        &format!("PC1 ({:.0} %)", 100.0 * explained[0]),
        &format!("PC2 ({:.0} %)", 100.0 * explained[1]),
        &pts,
        &legend,
    )?;
    let nca =
        (cfg.task() == TaskType::Classification).then(|| nearest_centroid_loo(&rows, &colour));
    let summary = Summary {
        split: args.split.clone(),
        samples: samples.len(),
        dim,
        explained_variance: explained,
        nearest_centroid_accuracy: nca,
        embeddings: emb_path,
        plot,
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        print_summary(out, &summary, synthetic)?;
    }
    Ok(())
}

/// The list `--split` names in the config.
fn split_list(cfg: &EvalConfig, split: &str) -> Result<PathBuf> {
    let d = &cfg.experiment.data;
    Ok(match split {
        "train" => d.dataset_train.clone(),
        "val" => d.dataset_val.clone(),
        "test" => d
            .dataset_test
            .clone()
            .context("--split test needs experiment.data.dataset_test")?,
        other => bail!("--split {other}: use train, val or test"),
    })
}

/// Per sample, the mean of the output tokens of the present slots (a missing view's slots are
/// padding, so they would pull every study towards the same point).
fn mean_embeddings(samples: &[Sample]) -> Result<Vec<Vec<f64>>> {
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(samples.len());
    for s in samples {
        let f = s.feats.get(0)?; // [N, D]
        let e = match &s.present {
            Some(p) if p.iter().any(|x| !x) => {
                let views = p.len();
                let n = f.dim(0)?;
                let per = n / views;
                let kept: Vec<_> = (0..views)
                    .filter(|&v| p[v])
                    .map(|v| f.narrow(0, v * per, per))
                    .collect::<candle_core::Result<_>>()?;
                candle_core::Tensor::cat(&kept, 0)?.mean(0)?
            }
            _ => f.mean(0)?,
        };
        rows.push(e.to_dtype(DType::F64)?.to_vec1::<f64>()?);
    }
    Ok(rows)
}

/// The plot's colour of each sample and the legend: classes, or label quintiles for
/// regression.
fn colours(cfg: &EvalConfig, samples: &[Sample]) -> Result<(Vec<usize>, Vec<String>)> {
    Ok(match cfg.task() {
        TaskType::Classification => {
            let names =
                crate::probe::class_names(&cfg.experiment.data.dataset_train, cfg.num_outputs()?);
            (samples.iter().map(|s| s.label as usize).collect(), names)
        }
        TaskType::Regression => {
            let (scaler, name) = crate::probe::scaler_for(cfg)?;
            let real: Vec<f64> = samples
                .iter()
                .map(|s| scaler.map_or(s.label, |c| c.denormalize(s.label)))
                .collect();
            let mut sorted = real.clone();
            sorted.sort_by(f64::total_cmp);
            let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f) as usize];
            let edges: Vec<f64> = (0..=5).map(|i| q(i as f64 / 5.0)).collect();
            let bin = |v: f64| (0..5).find(|&i| v <= edges[i + 1]).unwrap_or(4);
            let legend = (0..5)
                .map(|i| format!("{name} {:.1}-{:.1}", edges[i], edges[i + 1]))
                .collect();
            (real.iter().map(|&v| bin(v)).collect(), legend)
        }
    })
}

/// `id,label,pc1,pc2,e0,e1,…` per sample.
fn write_embeddings(
    path: &Path,
    samples: &[Sample],
    rows: &[Vec<f64>],
    proj: &[(f64, f64)],
) -> Result<()> {
    let dim = rows.first().map_or(0, Vec::len);
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let header: Vec<String> = (0..dim).map(|i| format!("e{i}")).collect();
    writeln!(f, "id,label,pc1,pc2,{}", header.join(","))?;
    for ((s, r), (p1, p2)) in samples.iter().zip(rows).zip(proj) {
        let vals: Vec<String> = r.iter().map(|v| format!("{v:.6}")).collect();
        writeln!(f, "{},{},{p1:.6},{p2:.6},{}", s.id, s.label, vals.join(","))?;
    }
    Ok(())
}

fn print_summary(out: &mut dyn Write, summary: &Summary, synthetic: bool) -> Result<()> {
    let explained = &summary.explained_variance;
    writeln!(
        out,
        "{} embeddings of dim {}; PC1 {:.1} %, PC2 {:.1} % of the variance{}",
        summary.samples,
        summary.dim,
        100.0 * explained[0],
        100.0 * explained[1],
        summary
            .nearest_centroid_accuracy
            .map(|a| format!("; nearest-centroid accuracy {:.1} %", 100.0 * a))
            .unwrap_or_default()
    )?;
    if synthetic {
        writeln!(out, "note: SYNTHETIC phantom data")?;
    }
    writeln!(
        out,
        "wrote {} and {}",
        summary.embeddings.display(),
        summary.plot.display()
    )?;
    Ok(())
}

/// Leave-one-out nearest-centroid classification accuracy.
pub fn nearest_centroid_loo(rows: &[Vec<f64>], labels: &[usize]) -> f64 {
    let k = labels.iter().copied().max().map_or(0, |m| m + 1);
    let d = rows.first().map_or(0, Vec::len);
    let mut sums = vec![vec![0.0; d]; k];
    let mut counts = vec![0usize; k];
    for (r, &l) in rows.iter().zip(labels) {
        counts[l] += 1;
        for (s, v) in sums[l].iter_mut().zip(r) {
            *s += v;
        }
    }
    let mut correct = 0;
    for (r, &l) in rows.iter().zip(labels) {
        let mut best = (f64::MAX, usize::MAX);
        for c in 0..k {
            let n = counts[c] - usize::from(c == l);
            if n == 0 {
                continue;
            }
            let dist: f64 = (0..d)
                .map(|j| {
                    let s = sums[c][j] - if c == l { r[j] } else { 0.0 };
                    (r[j] - s / n as f64).powi(2)
                })
                .sum();
            if dist < best.0 {
                best = (dist, c);
            }
        }
        if best.1 == l {
            correct += 1;
        }
    }
    correct as f64 / rows.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_dominant_axes() {
        // points along (1, 1, 0) with spread 10, along (1, -1, 0) with spread 1
        let mut rows = Vec::new();
        for i in -10..=10 {
            for j in -1..=1 {
                let (a, b) = (i as f64, j as f64);
                rows.push(vec![a + b, a - b, 0.0]);
            }
        }
        let (axes, ex) = pca(&rows, 2);
        let s = 1.0 / 2f64.sqrt();
        assert!((axes[0][0].abs() - s).abs() < 1e-6 && (axes[0][1].abs() - s).abs() < 1e-6);
        assert!(axes[0][0] * axes[0][1] > 0.0);
        assert!(axes[1][0] * axes[1][1] < 0.0);
        assert!(ex[0] > 0.9 && ex[0] + ex[1] > 0.999, "{ex:?}");
    }

    #[test]
    fn nearest_centroid_separates_clusters() {
        let rows = vec![
            vec![0.0, 0.0],
            vec![0.1, 0.0],
            vec![0.0, 0.1],
            vec![5.0, 5.0],
            vec![5.1, 5.0],
            vec![5.0, 5.1],
        ];
        assert_eq!(nearest_centroid_loo(&rows, &[0, 0, 0, 1, 1, 1]), 1.0);
        assert!(
            nearest_centroid_loo(&rows, &[0, 1, 0, 1, 0, 1]) < 1.0,
            "labels that cut across the clusters"
        );
    }
}
