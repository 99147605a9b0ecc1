//! `edge-runtime bench`: runs a bundle on a source and reports sustained frames/s, per-stage
//! latency p50/p99, frames and clips dropped, peak memory and, on the phantom, accuracy against
//! its ground truth. The numbers go to BENCHMARKS.md with the command, machine and date.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Result;
use edge_runtime::clip::Clip;
use edge_runtime::clock::SystemClock;
use edge_runtime::engine::InferenceEngine;
use edge_runtime::events::{Event, Summary};
use edge_runtime::frame::GrayImage;
use edge_runtime::pipeline::{Pipeline, Sink};
use indicatif::{ProgressBar, ProgressStyle};

use super::BenchArgs;
use super::common::{build_source, load_board, load_model, pipeline_options, stop_on_signal};

/// Shows progress on stderr while the bench runs.
struct Progress {
    bar: ProgressBar,
}

impl Sink for Progress {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::Prediction(p) => {
                self.bar.set_position(p.counters.captured);
                self.bar.set_message(format!(
                    "{} clips run, {} dropped, last {} {:.0}%",
                    p.counters.clips_inferred,
                    p.counters.clips_dropped,
                    p.view.label,
                    p.view.confidence * 100.0
                ));
            }
            Event::Status(s) => self.bar.println(format!("{}: {}", s.code, s.message)),
            Event::Summary(_) => self.bar.finish_and_clear(),
            Event::Started(_) => {}
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "progress"
    }
}

/// `YYYY-MM-DD` (UTC) of now.
fn today() -> String {
    use echojepa::bundle::rollback::{format_date, now_unix};
    format_date(now_unix())
}

/// CPU model and logical core count.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{model}, {cores} logical cores")
}

/// Untimed warm-up runs, then timed runs, of the model alone before the live run.
const ALONE_WARMUP: usize = 3;
const ALONE_RUNS: usize = 30;

/// Encoder time of `engine` with nothing else running: the model's own clip shape, filled with
/// seeded noise, [`ALONE_RUNS`] times after [`ALONE_WARMUP`] untimed runs. Median and minimum
/// in ms; `None` when the engine reports no `encoder` stage.
fn encoder_alone(engine: &mut dyn InferenceEngine) -> Result<Option<(f64, f64)>> {
    let spec = engine.info().clip;
    let r = spec.resolution;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 56) as u8
    };
    let frames = (0..spec.frames)
        .map(|_| {
            let mut img = GrayImage::new(r, r);
            img.data.iter_mut().for_each(|p| *p = noise());
            std::sync::Arc::new(img)
        })
        .collect::<Vec<_>>();
    let clip = Clip {
        id: 0,
        spec,
        seqs: (0..frames.len() as u64).collect(),
        frames,
        first_ts: std::time::Duration::ZERO,
        last_ts: spec.span(),
        arrived: std::time::Duration::ZERO,
        built_at: std::time::Duration::ZERO,
        truth: None,
        input_rect: [0.0, 0.0, 1.0, 1.0],
    };
    let mut times = Vec::with_capacity(ALONE_RUNS);
    for i in 0..ALONE_WARMUP + ALONE_RUNS {
        let out = engine
            .infer(&clip)
            .map_err(|e| anyhow::anyhow!("encoder-alone run {i}: {}", e.reason))?;
        let Some((_, d)) = out.stages.iter().find(|(name, _)| *name == "encoder") else {
            return Ok(None);
        };
        if i >= ALONE_WARMUP {
            times.push(d.as_secs_f32() * 1e3);
        }
    }
    let min = times.iter().copied().fold(f32::INFINITY, f32::min);
    Ok(edge_runtime::stats::percentiles(&times).map(|p| (p.p50 as f64, min as f64)))
}

pub fn run(args: BenchArgs, out: &mut impl Write) -> Result<ExitCode> {
    let board = load_board(&args.model.board)?;
    let mut model = load_model(&args.model, &board)?;
    let alone = encoder_alone(model.engine.as_mut())?;
    let clock = SystemClock::shared();
    let stop = stop_on_signal();
    let fps = args.source.fps.unwrap_or(board.capture.fps);
    let frames = (args.seconds * fps).ceil().max(1.0) as u64;
    let pipeline = Pipeline::new(
        model.info.clone(),
        pipeline_options(&board, Some(frames)),
        clock.clone(),
    );
    let source = build_source(
        &args.source,
        &board,
        clock,
        stop.clone(),
        pipeline.reporter(),
    )?;
    let source_name = source.describe();
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(frames)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} frames {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = pipeline.run(source, model.engine, vec![Box::new(Progress { bar })], stop);
    let date = today();
    let machine = machine();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "date": date,
                "machine": machine,
                "board": board.name,
                "bundle": model.dir,
                "model": {"id": model.info.model_id, "version": model.info.model_version},
                "runs_on": model.info.runs_on,
                "ef_min_confidence": model.info.ef_min_confidence(board.clinical.ef_min_confidence),
                "ef": model.info.ef,
                "source": source_name,
                "encoder_alone_ms": alone.map(|(median, min)| serde_json::json!({
                    "median": median, "min": min, "runs": ALONE_RUNS,
                })),
                "summary": summary,
            }))?
        )?;
    } else {
        report(
            out,
            &date,
            &machine,
            &board.name,
            &model.info,
            &source_name,
            &summary,
            alone,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)] // one line of the report per argument
fn report(
    out: &mut impl Write,
    date: &str,
    machine: &str,
    board: &str,
    info: &edge_runtime::engine::ModelInfo,
    source: &str,
    s: &Summary,
    alone: Option<(f64, f64)>,
) -> std::io::Result<()> {
    let c = &s.counters;
    writeln!(out, "edge-runtime bench, {date}, {machine}")?;
    writeln!(
        out,
        "board {board}; model {} {} on {}",
        info.model_id, info.model_version, info.runs_on
    )?;
    writeln!(out, "source {source}")?;
    writeln!(
        out,
        "clip: {} frames every {:.1} ms at {} px",
        info.clip.frames,
        info.clip.interval.as_secs_f64() * 1e3,
        info.clip.resolution
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "frames: {} captured in {:.1} s = {:.1} frames/s sustained; {} processed; lost inside the runtime: {} (overruns); corrupt: {}",
        c.captured, s.wall_s, s.capture_fps, c.processed, c.frame_overruns, c.corrupt
    )?;
    writeln!(
        out,
        "clips: {} built, {} run, {} dropped by the inference queue (drop-oldest), {} errors",
        c.clips_built, c.clips_inferred, c.clips_dropped, c.engine_errors
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<24} {:>8} {:>9} {:>9} {:>9}",
        "latency (ms)", "n", "p50", "p99", "max"
    )?;
    for (stage, p) in &s.latency_ms {
        writeln!(
            out,
            "{:<24} {:>8} {:>9.2} {:>9.2} {:>9.2}",
            stage, p.n, p.p50, p.p99, p.max
        )?;
    }
    if let Some((median, min)) = alone {
        writeln!(
            out,
            "encoder alone (before the run, nothing else running, {ALONE_RUNS} runs): median {median:.2} ms, min {min:.2} ms"
        )?;
        writeln!(
            out,
            "  (what the `bench_encoder` example and bench/peer_bench.py measure; the encoder row above shares the cores with capture and preprocessing)"
        )?;
    }
    writeln!(out)?;
    if let Some(mb) = s.peak_rss_mb {
        writeln!(out, "peak memory (RSS): {mb:.0} MiB")?;
    }
    let a = &s.accuracy;
    if let Some(acc) = a.view_accuracy {
        writeln!(
            out,
            "against the phantom's ground truth: view accuracy {:.1}% ({}/{} clips); EF MAE shown {} ({} predictions); EF MAE per clip on EF views {} ({} clips)",
            acc * 100.0,
            a.view_correct,
            a.clips,
            a.ef_mae
                .map(|m| format!("{m:.2} points"))
                .unwrap_or_else(|| "n/a".into()),
            a.ef_shown,
            a.ef_clip_mae
                .map(|m| format!("{m:.2} points"))
                .unwrap_or_else(|| "n/a".into()),
            a.ef_clips
        )?;
        if let Some(base) = a.ef_mean_predictor_mae {
            writeln!(
                out,
                "  always saying the model's training mean: EF MAE {base:.2} points on the same clips{}",
                a.ef_clip_mae
                    .map(|m| format!(
                        " (the model's per-clip MAE is {:.2} of it)",
                        m / base.max(1e-9)
                    ))
                    .unwrap_or_default()
            )?;
        }
        for (view, v) in &a.per_view {
            let misread: Vec<String> = v
                .predicted
                .iter()
                .filter(|(p, _)| *p != view)
                .map(|(p, n)| format!("{n} as {p}"))
                .collect();
            writeln!(
                out,
                "  {view}: {}/{} clips right{}",
                v.correct,
                v.clips,
                if misread.is_empty() {
                    String::new()
                } else {
                    format!(", read {}", misread.join(", "))
                }
            )?;
        }
        if a.ef_shown > 0 {
            writeln!(
                out,
                "  EF shown on a view the EF head is not valid for: {} of {} shown values",
                a.ef_shown_on_other_views, a.ef_shown
            )?;
        }
    }
    writeln!(out, "Not for diagnostic use.")?;
    Ok(())
}
