//! `edge-runtime check`: is this board's bundle healthy? Verifies the signature and every file,
//! loads the model, and runs clips of the synthetic phantom through the whole pipeline (no camera
//! needed). Exit status 0 means healthy; `firmware-host flash` runs it before committing a new
//! slot and the systemd unit before starting the runtime.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use edge_runtime::clock::SystemClock;
use edge_runtime::pipeline::Pipeline;
use edge_runtime::source::phantom::{PhantomSchedule, PhantomSource};

use super::CheckArgs;
use super::common::{load_board, load_model, pipeline_options};

pub fn run(args: CheckArgs, out: &mut impl Write) -> Result<ExitCode> {
    let board = load_board(&args.model.board)?;
    let model = match load_model(&args.model, &board) {
        Ok(m) => m,
        Err(e) => {
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"healthy": false, "board": board.name, "error": format!("{e:#}")})
                )?;
                return Ok(ExitCode::from(1));
            }
            return Err(e);
        }
    };
    // Two clips' worth of phantom frames at 30 fps, as fast as possible.
    let fps = 30.0;
    let spec = model.info.clip;
    let per_clip = (spec.span().as_secs_f64() * fps).ceil() as u64 + 1;
    let mut opts = pipeline_options(&board, Some(per_clip + 2 * board.model.clip_every as u64));
    opts.inference_queue = 8;
    let schedule = PhantomSchedule {
        views: vec![echojepa_phantom::View::A4c],
        seconds_per_view: 3600.0,
        seed: 1,
    };
    let source = PhantomSource::new(schedule, 320, 240, fps)?;
    let pipeline = Pipeline::new(model.info.clone(), opts, SystemClock::shared());
    let summary = pipeline.run(
        Box::new(source),
        model.engine,
        Vec::new(),
        Arc::new(AtomicBool::new(false)),
    );
    let c = summary.counters;
    let healthy = c.clips_inferred > 0 && c.engine_errors == 0;
    let inference = summary.latency_ms.get("inference").map(|p| p.p50);
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "healthy": healthy,
                "board": board.name,
                "bundle": model.dir,
                "model": {"id": model.info.model_id, "version": model.info.model_version},
                "signer": model.signer,
                "runs_on": model.info.runs_on,
                "ef": model.info.ef,
                "clips_inferred": c.clips_inferred,
                "engine_errors": c.engine_errors,
                "inference_ms_p50": inference,
            })
        )?;
    } else {
        writeln!(
            out,
            "{}: board {}, bundle {} ({} {}), signed by {}, runs on {}, EF {}: {} clip(s) run, {} error(s){}",
            if healthy { "healthy" } else { "NOT HEALTHY" },
            board.name,
            model.dir.display(),
            model.info.model_id,
            model.info.model_version,
            model.signer,
            model.info.runs_on,
            match &model.info.ef {
                None => "none".to_string(),
                Some(e) => format!(
                    "{} in {}",
                    match e.method {
                        edge_runtime::engine::EfMethod::Regressor => "from a regressor",
                        edge_runtime::engine::EfMethod::TracedLv { .. } =>
                            "per beat from the traced LV",
                    },
                    e.valid_views.join(", ")
                ),
            },
            c.clips_inferred,
            c.engine_errors,
            inference
                .map(|ms| format!(", inference {ms:.0} ms"))
                .unwrap_or_default()
        )?;
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
