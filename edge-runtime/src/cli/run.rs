//! `edge-runtime [run]`: the live pipeline with its outputs (stdout, web view, serial).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use edge_runtime::clock::SystemClock;
use edge_runtime::output::serial::SerialSink;
use edge_runtime::output::web::{WebConfig, WebServer, WebSink};
use edge_runtime::output::{HumanLines, JsonLines};
use edge_runtime::pipeline::{Pipeline, Sink};
use firmware_host::link::LinkConfig;

use super::RunArgs;
use super::common::{
    active_slot, build_source, load_board, load_model, pipeline_options, stop_on_signal,
};

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let board = load_board(&args.model.board)?;
    let model = load_model(&args.model, &board)?;
    let clock = SystemClock::shared();
    let stop = stop_on_signal();
    let fps = args.source.fps.unwrap_or(board.capture.fps);
    let max_frames = match (args.max_frames, args.seconds) {
        (Some(n), _) => Some(n),
        (None, Some(s)) => Some((s * fps).ceil().max(0.0) as u64),
        (None, None) => None,
    };
    let mut pipeline = Pipeline::new(
        model.info.clone(),
        pipeline_options(&board, max_frames),
        clock.clone(),
    );
    let reporter = pipeline.reporter();

    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if !args.no_stdout {
        let stdout = std::io::stdout();
        if args.json || !stdout.is_terminal() {
            sinks.push(Box::new(JsonLines::new(stdout)));
        } else {
            sinks.push(Box::new(HumanLines::new(stdout)));
        }
    }
    let server = match &args.serve {
        Some(addr) => {
            let config = WebConfig {
                max_fps: args.view_fps,
                limits: args.view.apply(&board.live_view),
                token: args.view.view_token.clone(),
            };
            let server = WebServer::start_with(addr, config).with_context(|| {
                format!(
                    "cannot serve the live view on {addr} (limits: board profile [live_view], \
                     --view-* flags)"
                )
            })?;
            eprintln!("live view: {}", server.url());
            pipeline = pipeline.with_display(server.hub.clone());
            sinks.push(Box::new(WebSink::new(server.hub.clone())));
            Some(server)
        }
        None => None,
    };
    let serial = if args.no_serial {
        None
    } else {
        match (&args.serial, &board.serial) {
            (Some(port), profile) => Some(LinkConfig::new(
                port.clone(),
                args.serial_baud
                    .or(profile.as_ref().map(|s| s.baud))
                    .unwrap_or(115_200),
            )),
            (None, Some(s)) => {
                let mut c = LinkConfig::from_board(s);
                if let Some(b) = args.serial_baud {
                    c.baud = b;
                }
                Some(c)
            }
            (None, None) => None,
        }
    };
    if let Some(cfg) = serial {
        let port = cfg.port.clone();
        let sink = SerialSink::start(
            cfg,
            &model.info.model_id,
            active_slot(&board, &model.dir),
            reporter.clone(),
        )
        .with_context(|| format!("cannot start the cart MCU link on {port}"))?;
        sinks.push(Box::new(sink));
    }
    if sinks.is_empty() {
        anyhow::bail!("--no-stdout without --serve or a serial link leaves no output");
    }

    let source = build_source(&args.source, &board, clock, stop.clone(), reporter)?;
    let summary = pipeline.run(source, model.engine, sinks, stop);
    if let Some(s) = server {
        s.hub.close();
    }
    let failed = summary.counters.clips_inferred == 0 && summary.counters.engine_errors > 0;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
