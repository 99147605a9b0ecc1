//! What every subcommand needs: the board profile, the bundle and its model, the frame source and
//! the pipeline options, each failing with a message that says what to do.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use boards::{BoardProfile, SectorMode, SourceKind};
use edge_runtime::bundle_engine::BundleEngine;
use edge_runtime::clock::SharedClock;
use edge_runtime::engine::{InferenceEngine, ModelInfo};
use edge_runtime::frame::Rect;
use edge_runtime::model::{check_fits, model_info, trusted_keys, verify};
use edge_runtime::pipeline::{ClinicalThresholds, PipelineOptions, SectorConfig, StatusReporter};
use edge_runtime::source::file::FileSource;
use edge_runtime::source::phantom::{PhantomSchedule, PhantomSource};
use edge_runtime::source::{FrameSource, Paced, RawFormat, RawSource, RawTiming};

use super::{ModelArgs, SourceArgs};

pub fn load_board(name: &str) -> Result<BoardProfile> {
    Ok(BoardProfile::resolve(name)?)
}

/// Where the demo bundle is looked for, in order.
pub fn demo_bundle_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("ECHOJEPA_DEMO_BUNDLE") {
        v.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        v.push(dir.join("../share/echojepa/demo/bundle"));
    }
    v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/bundle"));
    v
}

/// The bundle to run: `--bundle`, else the board's current slot, else (generic-cpu) the demo.
pub fn resolve_bundle(args: &ModelArgs, board: &BoardProfile) -> Result<PathBuf> {
    if let Some(b) = &args.bundle {
        return Ok(b.clone());
    }
    let current = board.resolve_path(&board.bundles.slots_dir).join("current");
    if current.exists() {
        return Ok(current);
    }
    if board.name == boards::DEFAULT_BOARD {
        let candidates = demo_bundle_candidates();
        if let Some(found) = candidates
            .iter()
            .find(|p| p.join("manifest.json").is_file())
        {
            return Ok(found.clone());
        }
        bail!(
            "no model bundle: the demo bundle was not found (looked in {}) and {} does not exist.\n\
             Pass --bundle DIR, or build the demo bundle (see edge-runtime/demo/README.md).",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            current.display()
        );
    }
    bail!(
        "no model bundle: {} does not exist. Install one with `firmware-host flash` or pass --bundle DIR.",
        current.display()
    )
}

/// Installs the kernels' settings before the first model is loaded: the `ECHOJEPA_*` variables
/// (read here, at the binary's edge; see `edge-runtime --help`), then the thread count from
/// `--threads`, else from the environment, else from the board profile (`0`: every CPU).
pub fn configure_kernels(threads_flag: Option<usize>, board_threads: u32) -> Result<()> {
    echojepa_kernels::settings::configure_from_env(threads_flag, board_threads as usize)
        .context("kernel settings")?;
    Ok(())
}

/// A loaded model and where it came from.
pub struct LoadedModel {
    pub engine: Box<dyn InferenceEngine>,
    pub info: ModelInfo,
    pub dir: PathBuf,
    pub signer: String,
}

/// Verifies the bundle with the board's keys, checks it fits the board, loads the model.
pub fn load_model(args: &ModelArgs, board: &BoardProfile) -> Result<LoadedModel> {
    let dir = resolve_bundle(args, board)?;
    let keys = trusted_keys(board)?;
    if keys.is_empty() {
        bail!(
            "board profile {} trusts no signing key (trust.keys is empty), so it runs no bundle",
            board.origin
        );
    }
    let verified = verify(&dir, &keys)?;
    check_policy(args, board, &dir, verified.manifest())?;
    let (info, plan) = model_info(&dir, verified.manifest(), args.reference_fps)?;
    check_fits(&dir, &info, board)?;
    let mut compute = board.compute.clone();
    if let Some(t) = args.threads {
        compute.threads = t as u32;
    }
    configure_kernels(args.threads, compute.threads)?;
    let mut engine = BundleEngine::load(&verified, info, plan, &compute)?;
    engine.dump_inputs(args.dump_inputs.clone());
    let info = engine.info().clone();
    tracing::info!(
        bundle = %dir.display(),
        model = %format!("{} {}", info.model_id, info.model_version),
        signer = %verified.signer(),
        "model loaded"
    );
    Ok(LoadedModel {
        engine: Box::new(engine),
        info,
        dir,
        signer: verified.signer().to_string(),
    })
}

/// Anti-rollback and expiry: the bundle must not be below the floor the cart's slots recorded,
/// nor past its not-after date, unless the operator overrides it (logged).
fn check_policy(
    args: &ModelArgs,
    board: &BoardProfile,
    dir: &std::path::Path,
    manifest: &echojepa::bundle::Manifest,
) -> Result<()> {
    use echojepa::bundle::rollback;
    let slots_dir = board.resolve_path(&board.bundles.slots_dir);
    let floor = rollback::SecurityFloor::load(&slots_dir)
        .with_context(|| format!("board {}: the anti-rollback floor", board.name))?;
    let overrides = rollback::Overrides {
        allow_rollback: args.allow_rollback,
        allow_expired: args.allow_expired,
    };
    let overridden = rollback::check(manifest, floor.as_ref(), rollback::now_unix(), overrides)
        .with_context(|| format!("bundle {} refused", dir.display()))?;
    for v in overridden.0 {
        tracing::warn!(bundle = %dir.display(), "anti-rollback policy overridden by the operator: {v}");
    }
    Ok(())
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| anyhow!("--size {s:?}: expected WIDTHxHEIGHT, e.g. 320x240"))?;
    Ok((
        w.parse().with_context(|| format!("--size {s:?}: width"))?,
        h.parse().with_context(|| format!("--size {s:?}: height"))?,
    ))
}

/// The frame source named by `--source` (or the profile), ready to read.
pub fn build_source(
    args: &SourceArgs,
    board: &BoardProfile,
    clock: SharedClock,
    stop: Arc<AtomicBool>,
    reporter: StatusReporter,
) -> Result<Box<dyn FrameSource>> {
    let cap = &board.capture;
    let (kind, arg): (SourceKind, Option<String>) = match args.source.as_deref() {
        None => (cap.source, cap.device.clone()),
        Some("phantom") => (SourceKind::Phantom, None),
        Some("stdin") | Some("-") => (SourceKind::Stdin, None),
        Some(s) if s == "v4l2" || s.starts_with("v4l2:") => (
            SourceKind::V4l2,
            s.strip_prefix("v4l2:")
                .map(str::to_string)
                .or(cap.device.clone()),
        ),
        Some(s) if s.starts_with("file:") => (
            SourceKind::File,
            s.strip_prefix("file:").map(str::to_string),
        ),
        Some(other) => {
            bail!("--source {other:?}: expected phantom, v4l2[:DEVICE], file:PATH or stdin")
        }
    };
    let fps = args.fps.unwrap_or(cap.fps);
    let (width, height) = match &args.size {
        Some(s) => parse_size(s)?,
        None => (cap.width as usize, cap.height as usize),
    };
    let _ = (&stop, &reporter);
    match kind {
        SourceKind::Phantom => {
            let schedule = PhantomSchedule {
                views: PhantomSchedule::parse_views(&args.phantom_views)
                    .map_err(|e| anyhow!("--phantom-views: {e}"))?,
                seconds_per_view: args.phantom_seconds,
                seed: args.phantom_seed,
            };
            let src = PhantomSource::new(schedule, width, height, fps)?;
            Ok(if args.fast {
                Box::new(src)
            } else {
                Box::new(Paced::new(src, clock))
            })
        }
        SourceKind::Stdin => {
            let spec = args.stdin_format.as_deref().ok_or_else(|| {
                anyhow!(
                    "--source stdin needs --stdin-format WIDTHxHEIGHT:FORMAT, e.g. 640x480:GREY"
                )
            })?;
            let format = RawFormat::parse(spec).map_err(|e| anyhow!("--stdin-format: {e}"))?;
            let timing = match args.stdin_fps {
                Some(f) if f > 0.0 && f.is_finite() => RawTiming::Fps(f),
                Some(f) => bail!("--stdin-fps {f}: must be positive"),
                None => RawTiming::Arrival(clock),
            };
            Ok(Box::new(RawSource::new(
                std::io::stdin(),
                "stdin",
                format,
                timing,
            )?))
        }
        SourceKind::File => {
            let path = arg.ok_or_else(|| anyhow!("file source without a path: use file:PATH"))?;
            let src = FileSource::open(Path::new(&path), fps, args.looping)?;
            Ok(if args.fast {
                Box::new(src)
            } else {
                Box::new(Paced::new(src, clock))
            })
        }
        SourceKind::V4l2 => {
            let device = arg.ok_or_else(|| anyhow!("v4l2 source without a device"))?;
            v4l2_source(&device, board, width, height, fps, clock, stop, reporter)
        }
    }
}

#[cfg(feature = "v4l")]
#[allow(clippy::too_many_arguments)]
fn v4l2_source(
    device: &str,
    board: &BoardProfile,
    width: usize,
    height: usize,
    fps: f64,
    clock: SharedClock,
    stop: Arc<AtomicBool>,
    reporter: StatusReporter,
) -> Result<Box<dyn FrameSource>> {
    use edge_runtime::source::v4l2::{V4l2Request, V4l2Source};
    use edge_runtime::source::{Backoff, Reconnecting};
    let cap = &board.capture;
    let req = V4l2Request {
        device: device.to_string(),
        width: width as u32,
        height: height as u32,
        fps,
        formats: cap.pixel_formats.clone(),
        buffers: cap.buffers,
        controls: cap.controls.clone(),
    };
    let opener =
        Box::new(move || V4l2Source::open(&req).map(|s| Box::new(s) as Box<dyn FrameSource>));
    let backoff = Backoff {
        initial: Duration::from_millis(cap.reconnect_initial_ms),
        max: Duration::from_millis(cap.reconnect_max_ms),
    };
    let src = Reconnecting::new(
        device,
        opener,
        backoff,
        clock,
        stop,
        Box::new(move |ev| reporter.reconnect_event(ev)),
    )?;
    Ok(Box::new(src))
}

#[cfg(not(feature = "v4l"))]
#[allow(clippy::too_many_arguments)]
fn v4l2_source(
    device: &str,
    _board: &BoardProfile,
    _width: usize,
    _height: usize,
    _fps: f64,
    _clock: SharedClock,
    _stop: Arc<AtomicBool>,
    _reporter: StatusReporter,
) -> Result<Box<dyn FrameSource>> {
    bail!(
        "{device}: this build has no V4L2 capture; rebuild with `cargo build --release -p \
         edge-runtime --features v4l` (needs libclang: apt-get install libclang-dev)"
    )
}

/// Pipeline options from the board profile.
pub fn pipeline_options(board: &BoardProfile, max_frames: Option<u64>) -> PipelineOptions {
    let s = &board.sector;
    let sector = match s.mode {
        SectorMode::Fixed => SectorConfig::Fixed(Rect {
            x: s.x.unwrap_or(0) as usize,
            y: s.y.unwrap_or(0) as usize,
            width: s.width.unwrap_or(0) as usize,
            height: s.height.unwrap_or(0) as usize,
        }),
        SectorMode::Detect => SectorConfig::Detect {
            threshold: s.detect_threshold,
            redetect_every: s.redetect_every,
        },
        SectorMode::None => SectorConfig::Whole,
    };
    let k = &board.clinical;
    PipelineOptions {
        board: board.name.clone(),
        clip_every: board.model.clip_every as usize,
        inference_queue: board.model.inference_queue as usize,
        frame_queue: (board.capture.fps.ceil() as usize).clamp(8, 256),
        sector,
        mask_outside: s.mask_outside,
        luma_range: board.capture.luma_range,
        clinical: ClinicalThresholds {
            ef_min_confidence: k.ef_min_confidence,
            min_cycle: Duration::from_secs_f64(k.min_cycle_seconds),
            ef_window: Duration::from_secs_f64(k.ef_window_seconds),
        },
        max_frames,
    }
}

/// Sets `stop` on Ctrl-C or SIGTERM (systemd stop).
pub fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        s.store(true, std::sync::atomic::Ordering::Relaxed);
    }) {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    stop
}

/// The model slot a bundle directory is, if it is one of the board's slots.
pub fn active_slot(board: &BoardProfile, dir: &Path) -> Option<cart_protocol::Slot> {
    let slots = board.resolve_path(&board.bundles.slots_dir);
    let real = std::fs::canonicalize(dir).ok()?;
    for (name, slot) in [("a", cart_protocol::Slot::A), ("b", cart_protocol::Slot::B)] {
        if std::fs::canonicalize(slots.join(name)).ok().as_ref() == Some(&real) {
            return Some(slot);
        }
    }
    None
}
