//! `trainer synth`: writes a synthetic echo dataset in the reference formats from the phantom
//! (`echojepa_phantom`): H.264 `.mp4` videos, `path label` lists for view classification and
//! EF regression (EF z-scored with mean/std fitted on the training split, saved as
//! `scaler.json`), a multi-view list (`view_0 view_1 label`, some views `MISS`) for the RVSP
//! analogue, and a ground-truth table. Splits are by patient, so no heart appears in two splits.
//!
//! Everything is synthetic: the videos come from a phantom, not from patients.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use echojepa_phantom::{GroundTruth, Phantom, PhantomParams, View};
use echojepa_video::{self as video, ColorMode, EncoderSettings};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::data::csv::{
    MultiViewEntry, VideoEntry, fit_scaler, write_atomic, write_multiview_csv, write_video_csv,
};
use crate::data::dataset::{ClipPipeline, VideoDataset};
use crate::data::loader::{Loader, LoaderConfig};

/// Write a synthetic echocardiography dataset (phantom videos + reference-format lists).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Output directory (created; existing files with the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of synthetic patients; each gets one video per view.
    #[arg(long, default_value_t = 12)]
    pub patients: usize,
    /// Views to render, comma-separated (a4c, a2c, a3c, plax, psax, subcostal).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "a4c,a2c,a3c,plax,psax,subcostal"
    )]
    pub views: Vec<View>,
    /// Frames per video.
    #[arg(long, default_value_t = 48)]
    pub frames: usize,
    /// Frame rate of the videos.
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Frame width in pixels (even).
    #[arg(long, default_value_t = 112)]
    pub width: usize,
    /// Frame height in pixels (even).
    #[arg(long, default_value_t = 112)]
    pub height: usize,
    /// Master seed; the same seed writes the same dataset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train/val/test fractions of the patients.
    #[arg(long, value_delimiter = ',', default_value = "0.7,0.15,0.15")]
    pub split: Vec<f64>,
    /// Views whose videos go into the EF regression lists.
    #[arg(long, value_delimiter = ',', default_value = "a4c")]
    pub ef_views: Vec<View>,
    /// The two views of the multi-view (RVSP analogue) lists.
    #[arg(long, value_delimiter = ',', default_value = "a4c,psax")]
    pub multiview: Vec<View>,
    /// Probability that one view of a multi-view row is written as `MISS`.
    #[arg(long, default_value_t = 0.15)]
    pub missing_prob: f64,
    /// H.264 quantiser (0 best .. 51 worst).
    #[arg(long, default_value_t = 22)]
    pub qp: u8,
    /// Keyframe interval in frames (random access granularity).
    #[arg(long, default_value_t = 32)]
    pub keyframe_interval: u32,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Also write a PNG contact sheet of every view (end-diastole and end-systole) here.
    #[arg(long)]
    pub contact_sheet: Option<PathBuf>,
    /// After writing, measure phantom, encoder, decoder and loader speed on this dataset.
    #[arg(long)]
    pub bench: bool,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One written video and its ground truth.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub path: PathBuf,
    pub patient: usize,
    pub split: &'static str,
    pub view: View,
    pub patient_seed: u64,
    pub video_seed: u64,
    pub truth: GroundTruth,
    pub params: PhantomParams,
}

#[derive(Debug, Serialize)]
struct Summary {
    out: PathBuf,
    videos: usize,
    patients: usize,
    splits: [usize; 3],
    ef_scaler: echojepa::checkpoint::Scaler,
    rvsp_scaler: Option<echojepa::checkpoint::Scaler>,
    seconds: f64,
    bench: Option<Bench>,
    note: &'static str,
}

const NOTE: &str = "synthetic phantom data: not patients, no clinical meaning";

fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ c.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn split_of(patient_rank: usize, patients: usize, fractions: &[f64]) -> &'static str {
    let n_train = ((fractions[0] * patients as f64).round() as usize)
        .clamp(1, patients.saturating_sub(2).max(1));
    let n_val = ((fractions[1] * patients as f64).round() as usize)
        .clamp(1, (patients - n_train).saturating_sub(1).max(1));
    if patient_rank < n_train {
        "train"
    } else if patient_rank < n_train + n_val {
        "val"
    } else {
        "test"
    }
}

fn validate(args: &Args) -> Result<()> {
    if args.patients < 3 {
        bail!(
            "--patients {} : need at least 3 (one per split)",
            args.patients
        );
    }
    if args.views.is_empty() {
        bail!("--views is empty");
    }
    if args.frames == 0 || args.frames > 10_000 {
        bail!("--frames {} : expected 1..=10000", args.frames);
    }
    if !args.width.is_multiple_of(2)
        || !args.height.is_multiple_of(2)
        || args.width < 16
        || args.height < 16
    {
        bail!(
            "--width/--height {}x{} : H.264 needs even sizes of at least 16",
            args.width,
            args.height
        );
    }
    if args.split.len() != 3
        || args.split.iter().any(|f| !(0.0..=1.0).contains(f))
        || (args.split.iter().sum::<f64>() - 1.0).abs() > 1e-6
    {
        bail!(
            "--split {:?} : expected three fractions summing to 1",
            args.split
        );
    }
    if !(0.0..1.0).contains(&args.missing_prob) {
        bail!("--missing-prob {} : expected 0 <= p < 1", args.missing_prob);
    }
    if args.multiview.len() != 2 {
        bail!("--multiview needs exactly two views");
    }
    Ok(())
}

/// Renders and encodes every video; returns the records in a fixed order.
pub fn generate(args: &Args) -> Result<Vec<Record>> {
    validate(args)?;
    let videos_dir = args.out.join("videos");
    std::fs::create_dir_all(&videos_dir)
        .with_context(|| format!("creating {}", videos_dir.display()))?;
    let videos_dir = videos_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", videos_dir.display()))?;
    // patients shuffled deterministically into splits
    let mut ranks: Vec<usize> = (0..args.patients).collect();
    {
        use rand::seq::SliceRandom;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(args.seed, 1, 0));
        ranks.shuffle(&mut rng);
    }
    let mut rank_of = vec![0; args.patients];
    for (r, &p) in ranks.iter().enumerate() {
        rank_of[p] = r;
    }
    let jobs: Vec<(usize, View)> = (0..args.patients)
        .flat_map(|p| args.views.iter().map(move |&v| (p, v)))
        .collect();
    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} synth {bar:30} {pos}/{len} videos {elapsed} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let next = AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Record>>>> = (0..jobs.len())
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    let threads = args
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(1);
    let settings = EncoderSettings {
        fps: args.fps,
        qp: args.qp,
        keyframe_interval: args.keyframe_interval,
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs.len() {
                        break;
                    }
                    let (patient, view) = jobs[i];
                    let r = render_one(
                        args,
                        &videos_dir,
                        patient,
                        view,
                        split_of(rank_of[patient], args.patients, &args.split),
                        settings,
                    );
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(anyhow::anyhow!("a worker thread died")))
        })
        .collect()
}

fn render_one(
    args: &Args,
    dir: &Path,
    patient: usize,
    view: View,
    split: &'static str,
    settings: EncoderSettings,
) -> Result<Record> {
    let patient_seed = mix(args.seed, 2, patient as u64);
    let video_seed = mix(args.seed, 3, (patient * 16 + view.index()) as u64);
    let params = PhantomParams::for_patient(patient_seed, view, video_seed);
    let phantom = Phantom::new(params).with_context(|| format!("patient {patient} {view}"))?;
    let clip = phantom.render_clip(args.frames, args.fps, 0.0, args.width, args.height)?;
    let path = dir.join(format!("p{patient:04}_{}.mp4", view.name()));
    video::write_mp4(&path, &clip, settings)?;
    Ok(Record {
        path,
        patient,
        split,
        view,
        patient_seed,
        video_seed,
        truth: phantom.ground_truth(),
        params,
    })
}

/// Writes the lists, the scalers, the ground-truth table and a README next to the videos.
pub fn write_lists(
    args: &Args,
    records: &[Record],
) -> Result<(
    echojepa::checkpoint::Scaler,
    Option<echojepa::checkpoint::Scaler>,
)> {
    let out = &args.out;
    let splits = ["train", "val", "test"];
    // view classification: class = position in View::ALL
    std::fs::create_dir_all(out.join("view"))?;
    for s in splits {
        let e: Vec<VideoEntry> = records
            .iter()
            .filter(|r| r.split == s)
            .map(|r| VideoEntry {
                path: r.path.clone(),
                label: r.view.index() as f64,
            })
            .collect();
        write_video_csv(&out.join("view").join(format!("{s}.csv")), &e)?;
    }
    let classes: String = View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{i} {v}\n"))
        .collect();
    write_atomic(&out.join("view").join("classes.txt"), classes.as_bytes())?;

    // EF regression, z-scored with train statistics
    std::fs::create_dir_all(out.join("ef"))?;
    let ef_rec = |s: &str| {
        records
            .iter()
            .filter(move |r| r.split == s && args.ef_views.contains(&r.view))
            .collect::<Vec<_>>()
    };
    let train_ef: Vec<f64> = ef_rec("train").iter().map(|r| r.truth.ef_percent).collect();
    let ef_scaler =
        fit_scaler(&train_ef).context("fitting the EF scaler (is an EF view rendered?)")?;
    for s in splits {
        let e: Vec<VideoEntry> = ef_rec(s)
            .iter()
            .map(|r| VideoEntry {
                path: r.path.clone(),
                label: ef_scaler.normalize(r.truth.ef_percent),
            })
            .collect();
        write_video_csv(&out.join("ef").join(format!("{s}.csv")), &e)?;
    }
    write_scaler(
        &out.join("ef").join("scaler.json"),
        &ef_scaler,
        "ef_percent",
        "%",
        train_ef.len(),
    )?;

    // multi-view RVSP analogue
    let (v0, v1) = (args.multiview[0], args.multiview[1]);
    let mut rvsp_scaler = None;
    if args.views.contains(&v0) && args.views.contains(&v1) {
        std::fs::create_dir_all(out.join("rvsp"))?;
        let find = |p: usize, v: View| records.iter().find(|r| r.patient == p && r.view == v);
        let rows = |s: &str| -> Vec<(&Record, &Record)> {
            (0..args.patients)
                .filter_map(|p| Some((find(p, v0)?, find(p, v1)?)))
                .filter(|(a, _)| a.split == s)
                .collect()
        };
        let train: Vec<f64> = rows("train")
            .iter()
            .map(|(a, _)| a.truth.rvsp_mmhg)
            .collect();
        let scaler = fit_scaler(&train).context("fitting the RVSP scaler")?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(args.seed, 4, 0));
        for s in splits {
            let e: Vec<MultiViewEntry> = rows(s)
                .into_iter()
                .map(|(a, b)| {
                    let mut views = vec![Some(a.path.clone()), Some(b.path.clone())];
                    if rng.random_bool(args.missing_prob) {
                        let k = rng.random_range(0..2);
                        views[k] = None;
                    }
                    MultiViewEntry {
                        views,
                        label: scaler.normalize(a.truth.rvsp_mmhg),
                    }
                })
                .collect();
            write_multiview_csv(&out.join("rvsp").join(format!("{s}.csv")), &e)?;
        }
        write_scaler(
            &out.join("rvsp").join("scaler.json"),
            &scaler,
            "rvsp_mmhg",
            "mmHg",
            train.len(),
        )?;
        rvsp_scaler = Some(scaler);
    }

    // ground truth
    let mut gt = String::from(
        "path,patient,split,view,view_index,ef_percent,edv_ml,esv_ml,heart_rate_bpm,rvsp_mmhg,rv_dilation,septal_flattening,\
         patient_seed,video_seed,frames,fps,width,height,depth_cm,probe_angle_deg,gain_db\n",
    );
    for r in records {
        let t = &r.truth;
        let a = &r.params.acquisition;
        gt.push_str(&format!(
            "{},{},{},{},{},{:.4},{:.3},{:.3},{:.2},{:.2},{:.4},{:.4},{},{},{},{},{},{},{:.2},{:.2},{:.2}\n",
            r.path.display(),
            r.patient,
            r.split,
            r.view,
            r.view.index(),
            t.ef_percent,
            t.edv_ml,
            t.esv_ml,
            t.heart_rate_bpm,
            t.rvsp_mmhg,
            t.rv_dilation,
            t.septal_flattening,
            r.patient_seed,
            r.video_seed,
            args.frames,
            args.fps,
            args.width,
            args.height,
            a.depth_cm,
            a.probe_angle_deg,
            a.gain_db
        ));
    }
    write_atomic(&out.join("ground_truth.csv"), gt.as_bytes())?;
    let readme = format!(
        "SYNTHETIC DATA. Every video here was rendered by the EchoJEPA echo phantom (echojepa_phantom);\n\
         none comes from a patient and nothing here has clinical meaning.\n\n\
         videos/            H.264 MP4, {frames} frames at {fps} fps, {w}x{h}\n\
         view/{{train,val,test}}.csv   `path class` (classes.txt: index -> view)\n\
         ef/{{train,val,test}}.csv     `path z` with z = (EF - mean) / std, mean/std in ef/scaler.json (train only)\n\
         rvsp/{{train,val,test}}.csv   `view_0 view_1 z` ({v0}, {v1}; MISS = missing view), rvsp/scaler.json\n\
         ground_truth.csv   per video: EF, EDV, ESV (area-length), heart rate, RVSP analogue, seeds, scan settings\n\n\
         Re-create: trainer synth --out DIR --patients {p} --seed {seed} --frames {frames} --fps {fps} --width {w} --height {h}\n",
        frames = args.frames,
        fps = args.fps,
        w = args.width,
        h = args.height,
        p = args.patients,
        seed = args.seed,
    );
    write_atomic(&out.join("README.txt"), readme.as_bytes())?;
    Ok((ef_scaler, rvsp_scaler))
}

fn write_scaler(
    path: &Path,
    s: &echojepa::checkpoint::Scaler,
    target: &str,
    units: &str,
    n: usize,
) -> Result<()> {
    let json = serde_json::json!({
        "mean": s.mean,
        "std": s.std,
        "target": target,
        "units": units,
        "fitted_on": "train",
        "count": n,
        "ddof": 0,
        "note": NOTE,
    });
    write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
}

/// A PNG with one row per view: end-diastole and end-systole at 224×224.
pub fn contact_sheet(path: &Path, seed: u64) -> Result<()> {
    let tile = 224usize;
    let gap = 4usize;
    let cols = 2usize;
    let rows = View::ALL.len();
    let (w, h) = (
        cols * tile + (cols + 1) * gap,
        rows * tile + (rows + 1) * gap,
    );
    let mut img = image::GrayImage::from_pixel(w as u32, h as u32, image::Luma([40]));
    for (r, &view) in View::ALL.iter().enumerate() {
        let p = Phantom::new(PhantomParams::for_patient(
            mix(seed, 5, 0),
            view,
            mix(seed, 6, r as u64),
        ))?;
        for (c, t) in [p.end_diastole_time(0), p.end_systole_time(0)]
            .into_iter()
            .enumerate()
        {
            let f = p.render_frame(t, tile, tile)?;
            let (x0, y0) = (gap + c * (tile + gap), gap + r * (tile + gap));
            for y in 0..tile {
                for x in 0..tile {
                    img.put_pixel(
                        (x0 + x) as u32,
                        (y0 + y) as u32,
                        image::Luma([f.data[y * tile + x]]),
                    );
                }
            }
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Speed of the data path, measured in one run so the numbers compare side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Bench {
    pub threads: usize,
    /// Phantom: `Phantom::new` + 16 frames of 112×112 (median ms per clip).
    pub phantom_clip_ms: f64,
    /// Of which rendering only (median ms per clip).
    pub phantom_render_ms: f64,
    /// H.264 encode + mux of the same clip (median ms).
    pub encode_clip_ms: f64,
    /// Open + decode 16 frames (RGB) from one of the written files (median ms).
    pub decode_clip_ms: f64,
    /// Loader: clips/s of `[3, 16, 112, 112]` (eval transform, step 2) with all workers.
    pub loader_clips_per_s: f64,
    /// Loader with one worker.
    pub loader_clips_per_s_1: f64,
    pub loader_skipped: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures phantom, encoder, decoder and loader speed on the written dataset.
pub fn bench(args: &Args, records: &[Record]) -> Result<Bench> {
    let n = 15;
    let tmp = args.out.join(".bench");
    std::fs::create_dir_all(&tmp)?;
    let (mut total, mut render, mut enc) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let params = PhantomParams::sample(1000 + i as u64, View::ALL[i % 6]);
        let t0 = Instant::now();
        let p = Phantom::new(params)?;
        let t1 = Instant::now();
        let clip = p.render_clip(16, 30.0, 0.0, 112, 112)?;
        let t2 = Instant::now();
        video::write_mp4(
            tmp.join(format!("{i}.mp4")),
            &clip,
            EncoderSettings::default(),
        )?;
        let t3 = Instant::now();
        total.push((t2 - t0).as_secs_f64() * 1e3);
        render.push((t2 - t1).as_secs_f64() * 1e3);
        enc.push((t3 - t2).as_secs_f64() * 1e3);
    }
    let mut dec = Vec::new();
    let idx: Vec<usize> = (0..16).map(|i| (i * 2).min(args.frames - 1)).collect();
    for r in records.iter().take(n) {
        let t0 = Instant::now();
        let mut reader = video::open(&r.path)?;
        reader.read_frames(&idx, ColorMode::Rgb)?;
        dec.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    std::fs::remove_dir_all(&tmp).ok();
    let entries: Vec<VideoEntry> = records
        .iter()
        .map(|r| VideoEntry {
            path: r.path.clone(),
            label: 0.0,
        })
        .collect();
    let dataset = Arc::new(VideoDataset {
        entries,
        pipeline: ClipPipeline::eval(16, 2, 1, 112),
        list: None,
    });
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let run = |workers: usize| -> Result<(f64, usize)> {
        let cfg = LoaderConfig {
            batch_size: 8,
            workers,
            prefetch: 2 * workers,
            shuffle: true,
            drop_last: false,
            seed: 0,
        };
        let loader = Loader::new(dataset.clone(), cfg);
        let t0 = Instant::now();
        let mut clips = 0;
        let mut epoch = loader.epoch(0);
        for b in epoch.by_ref() {
            clips += b?.len();
        }
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        Ok((clips as f64 / secs, epoch.stats().skipped.len()))
    };
    let (all, skipped) = run(threads)?;
    let (one, _) = run(1)?;
    Ok(Bench {
        threads,
        phantom_clip_ms: median(total),
        phantom_render_ms: median(render),
        encode_clip_ms: median(enc),
        decode_clip_ms: median(dec),
        loader_clips_per_s: all,
        loader_clips_per_s_1: one,
        loader_skipped: skipped,
    })
}

/// Runs the subcommand, writing the human-readable report (or JSON) to `out`.
pub fn run(args: Args, out: &mut impl Write) -> Result<()> {
    let t0 = Instant::now();
    let records = generate(&args)?;
    let (ef_scaler, rvsp_scaler) = write_lists(&args, &records)?;
    if let Some(sheet) = &args.contact_sheet {
        contact_sheet(sheet, args.seed)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let bench = if args.bench {
        Some(bench(&args, &records)?)
    } else {
        None
    };
    let count = |s: &str| records.iter().filter(|r| r.split == s).count();
    let summary = Summary {
        out: args.out.clone(),
        videos: records.len(),
        patients: args.patients,
        splits: [count("train"), count("val"), count("test")],
        ef_scaler,
        rvsp_scaler,
        seconds: secs,
        bench,
        note: NOTE,
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "wrote {} synthetic videos ({} patients) to {} in {:.1} s",
        summary.videos,
        summary.patients,
        args.out.display(),
        secs
    )?;
    writeln!(
        out,
        "  videos per split: train {} / val {} / test {}",
        summary.splits[0], summary.splits[1], summary.splits[2]
    )?;
    writeln!(
        out,
        "  EF scaler (train): mean {:.2} %, std {:.2} %",
        ef_scaler.mean, ef_scaler.std
    )?;
    if let Some(s) = rvsp_scaler {
        writeln!(
            out,
            "  RVSP-analogue scaler (train): mean {:.2} mmHg, std {:.2} mmHg",
            s.mean, s.std
        )?;
    }
    if let Some(c) = &args.contact_sheet {
        writeln!(out, "  contact sheet: {}", c.display())?;
    }
    if let Some(b) = &summary.bench {
        writeln!(
            out,
            "\nbenchmark (16 frames of 112x112, medians; {} threads):",
            b.threads
        )?;
        writeln!(
            out,
            "  phantom clip (new + render)   {:>8.2} ms",
            b.phantom_clip_ms
        )?;
        writeln!(
            out,
            "  phantom render only           {:>8.2} ms",
            b.phantom_render_ms
        )?;
        writeln!(
            out,
            "  H.264 encode + mux            {:>8.2} ms   ({:.1}x the phantom)",
            b.encode_clip_ms,
            b.encode_clip_ms / b.phantom_clip_ms
        )?;
        writeln!(
            out,
            "  open + decode 16 frames (RGB) {:>8.2} ms",
            b.decode_clip_ms
        )?;
        writeln!(
            out,
            "  loader, {} workers            {:>8.1} clips/s",
            b.threads, b.loader_clips_per_s
        )?;
        writeln!(
            out,
            "  loader, 1 worker              {:>8.1} clips/s",
            b.loader_clips_per_s_1
        )?;
    }
    writeln!(out, "  note: {NOTE}")?;
    Ok(())
}
