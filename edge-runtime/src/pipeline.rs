//! The pipeline: four threads joined by queues with named back-pressure policies.
//!
//! ```text
//!  capture ──frame queue──▶ preprocess ──inference queue──▶ inference ──events──▶ outputs
//!  (source)   bounded,       convert, sector,  bounded,        engine,     bounded,   JSONL, web,
//!             DROP NEWEST    resize, ring,     DROP OLDEST     clinical    BLOCKING   serial
//!             (counted as    clip every k      (counted as                 (outputs may
//!             overrun)                         clips_dropped)              slow inference,
//!                                                                          never capture)
//! ```
//!
//! - Capture never blocks on anything downstream: it hands each frame over with `try_send`. The
//!   frame queue holds `frame_queue` frames (about a second); it only fills if preprocessing is
//!   slower than the camera, and each frame lost there is counted as a `frame_overrun` (0 in a
//!   healthy run: the benchmark checks it).
//! - The inference queue is the one place where work is dropped by design: when the model is
//!   slower than the clip rate the oldest clip is evicted ([`crate::queue`]), so predictions are
//!   always about the newest video and latency stays bounded.
//! - Status events from capture and preprocessing are sent with `try_send` (dropped and counted
//!   if the outputs are stuck); predictions are sent blocking, so a stuck output stalls only the
//!   inference thread, whose queue then drops clips.
//!
//! The caller's thread runs the outputs and returns the run's [`Summary`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use crate::clinical::{ClinicalPolicy, ClinicalState, top1};
use crate::clip::{ClipBuilder, ClipSpec, ProcessedFrame};
use crate::clock::SharedClock;
use crate::convert::to_gray_with;
use crate::engine::{EfMethod, InferenceEngine, ModelInfo, SectorUse};
use crate::events::{
    Accuracy, EfOut, Event, Level, ModelRef, NOT_FOR_DIAGNOSTIC_USE, Prediction, SCHEMA_VERSION,
    Started, Status, Summary, TRAINED_ON_SYNTHETIC, ViewOut, top_views,
};
use crate::frame::{Frame, GrayImage, Rect};
use crate::queue::{DropOldestQueue, Pushed};
use crate::resize::{FramePrep, eval_geometry, resize};
use crate::sector::{Sector, SectorEstimator, should_replace};
use crate::source::{FrameSource, ReconnectEvent, SourceError};
use crate::stats::{Counters, Latencies, peak_rss_bytes};
use echojepa_input::SectorHandling;

/// Where the sector comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SectorConfig {
    /// A fixed rectangle from the board profile.
    Fixed(Rect),
    /// Detected from the image every `redetect_every` frames.
    Detect { threshold: u8, redetect_every: u32 },
    /// The whole frame.
    Whole,
}

/// Thresholds of the clinical logic (from the board profile).
#[derive(Debug, Clone, Copy)]
pub struct ClinicalThresholds {
    pub ef_min_confidence: f32,
    pub min_cycle: Duration,
    pub ef_window: Duration,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Board profile name, for the start record.
    pub board: String,
    /// A clip every `clip_every` frames.
    pub clip_every: usize,
    /// Inference queue capacity (clips).
    pub inference_queue: usize,
    /// Frame queue capacity between capture and preprocessing.
    pub frame_queue: usize,
    pub sector: SectorConfig,
    /// Blank pixels outside a detected fan (only when the model was trained that way).
    pub mask_outside: bool,
    /// The range of a YUYV device's luma (the board's `capture.luma_range`).
    pub luma_range: boards::LumaRange,
    pub clinical: ClinicalThresholds,
    /// Stop after this many captured frames.
    pub max_frames: Option<u64>,
}

/// A downscaled frame for the live view.
#[derive(Debug, Clone)]
pub struct DisplayFrame {
    /// Source time, seconds.
    pub time_s: f64,
    pub image: GrayImage,
    /// The sector crop, in the coordinates of `image`.
    pub sector: Option<Rect>,
}

/// Receives frames for display. Must not block: the preprocessing thread calls it.
pub trait DisplayTap: Send + Sync {
    /// Whether a frame at this source time is wanted (rate limiting), asked before any work.
    fn wants(&self, ts: Duration) -> bool;
    fn offer(&self, frame: DisplayFrame);
}

/// Receives every event on the output thread.
pub trait Sink: Send {
    /// Emits an event; an error removes the sink (e.g. stdout closed).
    fn emit(&mut self, event: &Event) -> std::io::Result<()>;
    /// Short name for messages.
    fn name(&self) -> &str;
}

enum Msg {
    Event(Event),
    InferenceDone,
}

/// Sends status records from any thread without blocking.
#[derive(Clone)]
pub struct StatusReporter {
    tx: Sender<Msg>,
    model: ModelRef,
    counters: Arc<Counters>,
    clock: SharedClock,
    last: Arc<Mutex<HashMap<String, (Duration, u64)>>>,
}

impl StatusReporter {
    /// Queues a status record (dropped and counted when the outputs are stuck).
    pub fn report(&self, level: Level, code: &str, message: String) {
        match level {
            Level::Error => tracing::error!(code, "{message}"),
            Level::Warn => tracing::warn!(code, "{message}"),
            Level::Info => tracing::info!(code, "{message}"),
        }
        let ev = Event::Status(Status {
            model: self.model.clone(),
            level,
            code: code.to_string(),
            message,
            counters: self.counters.snapshot(),
        });
        if self.tx.try_send(Msg::Event(ev)).is_err() {
            Counters::inc(&self.counters.events_dropped);
        }
    }

    /// Like [`report`](Self::report) but at most once a second per code; the message then says
    /// how many occurrences it stands for.
    pub fn report_limited(&self, level: Level, code: &str, message: String) {
        self.report_limited_as(code, level, code, message)
    }

    /// [`report_limited`](Self::report_limited) with its own rate limit under `key`, so that
    /// two stages reporting the same code do not hide each other's first record.
    pub fn report_limited_as(&self, key: &str, level: Level, code: &str, message: String) {
        let now = self.clock.now();
        let suppressed = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let entry = last.entry(key.to_string()).or_insert((Duration::ZERO, 0));
            if entry.1 > 0 && now.saturating_sub(entry.0) < Duration::from_secs(1) {
                entry.1 += 1;
                return;
            }
            let n = entry.1;
            *entry = (now, 1);
            n.saturating_sub(1)
        };
        let message = if suppressed > 0 {
            format!("{message} ({suppressed} more since the last report)")
        } else {
            message
        };
        self.report(level, code, message);
    }

    /// Maps reconnect progress onto status records.
    pub fn reconnect_event(&self, ev: ReconnectEvent) {
        match ev {
            ReconnectEvent::Lost { reason } => self.report(
                Level::Error,
                "source_lost",
                format!("capture source lost: {reason}; reconnecting"),
            ),
            ReconnectEvent::RetryFailed {
                attempt,
                reason,
                retry_in,
            } => self.report(
                Level::Warn,
                "source_reconnecting",
                format!(
                    "reconnect attempt {attempt} failed: {reason}; next in {} ms",
                    retry_in.as_millis()
                ),
            ),
            ReconnectEvent::Reopened {
                attempts,
                description,
            } => {
                Counters::inc(&self.counters.reconnects);
                self.report(
                    Level::Info,
                    "source_reopened",
                    format!("capture source back after {attempts} attempt(s): {description}"),
                )
            }
        }
    }
}

/// A pipeline ready to run one model.
pub struct Pipeline {
    info: ModelInfo,
    model: ModelRef,
    notice: String,
    opts: PipelineOptions,
    clock: SharedClock,
    counters: Arc<Counters>,
    latencies: Arc<Latencies>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    reporter: StatusReporter,
    display: Option<Arc<dyn DisplayTap>>,
}

/// The notice shown with every output, decided here and nowhere else: the bundle's own text,
/// then "trained on synthetic data" when its training data was synthetic, then "not for
/// diagnostic use", always. The synthetic sentence follows the manifest's typed provenance.
///
/// Legacy path: a bundle built before provenance was recorded (`info.provenance` is `None`)
/// has only its `synthetic_training_data` flag, and its builder wrote those sentences into the
/// notice itself, so each is added only when the text does not already say it.
pub fn compose_notice(info: &ModelInfo) -> String {
    let own = info.notice.trim();
    let (say_synthetic, say_not_diagnostic) = match &info.provenance {
        Some(p) => (p.synthetic, true),
        None => {
            let lower = own.to_ascii_lowercase();
            (
                info.synthetic_training_data && !lower.contains("synthetic"),
                !lower.contains("not for diagnostic use"),
            )
        }
    };
    let mut parts: Vec<&str> = Vec::new();
    if !own.is_empty() {
        parts.push(own);
    }
    if say_synthetic {
        parts.push(TRAINED_ON_SYNTHETIC);
    }
    if say_not_diagnostic {
        parts.push(NOT_FOR_DIAGNOSTIC_USE);
    }
    parts.join(" ")
}

impl Pipeline {
    pub fn new(info: ModelInfo, opts: PipelineOptions, clock: SharedClock) -> Self {
        let (tx, rx) = bounded(256);
        let model = ModelRef {
            id: info.model_id.clone(),
            version: info.model_version.clone(),
        };
        let counters = Arc::new(Counters::default());
        let reporter = StatusReporter {
            tx: tx.clone(),
            model: model.clone(),
            counters: counters.clone(),
            clock: clock.clone(),
            last: Arc::default(),
        };
        Self {
            notice: compose_notice(&info),
            info,
            model,
            opts,
            clock,
            counters,
            latencies: Arc::new(Latencies::default()),
            tx,
            rx,
            reporter,
            display: None,
        }
    }

    /// Status records from outside the pipeline (e.g. a reconnecting source) go through this.
    pub fn reporter(&self) -> StatusReporter {
        self.reporter.clone()
    }

    /// Frames for a live view.
    pub fn with_display(mut self, tap: Arc<dyn DisplayTap>) -> Self {
        self.display = Some(tap);
        self
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Runs until the source ends or `stop` is set; the outputs run on this thread.
    pub fn run(
        self,
        source: Box<dyn FrameSource>,
        engine: Box<dyn InferenceEngine>,
        mut sinks: Vec<Box<dyn Sink>>,
        stop: Arc<AtomicBool>,
    ) -> Summary {
        let start = self.clock.now();
        let ef_views = self
            .info
            .ef
            .as_ref()
            .map(|e| e.valid_views.clone())
            .unwrap_or_default();
        let started = Event::Started(Started {
            schema: SCHEMA_VERSION,
            model: self.model.clone(),
            board: self.opts.board.clone(),
            source: source.describe(),
            runs_on: self.info.runs_on.clone(),
            view_classes: self.info.view_classes.clone(),
            ef_views: ef_views.clone(),
            ef_min_confidence: self.info.ef.as_ref().map(|_| {
                self.info
                    .ef_min_confidence(self.opts.clinical.ef_min_confidence)
            }),
            ef_min_cycle_s: self.opts.clinical.min_cycle.as_secs_f64(),
            view_confidence_calibrated: self.info.view_calibrated,
            clip_frames: self.info.clip.frames,
            clip_interval_ms: self.info.clip.interval.as_secs_f64() * 1e3,
            resolution: self.info.clip.resolution,
            clip_every: self.opts.clip_every,
            synthetic_training_data: self.info.synthetic_training_data,
            notice: self.notice.clone(),
        });
        emit_all(&mut sinks, &started);

        let end_reason = Arc::new(Mutex::new(None::<String>));
        let (frame_tx, frame_rx) = bounded::<Frame>(self.opts.frame_queue.max(1));
        let queue = Arc::new(DropOldestQueue::new(self.opts.inference_queue));

        let capture = self.spawn_capture(source, frame_tx, stop.clone(), end_reason.clone());
        let preprocess = self.spawn_preprocess(frame_rx, queue.clone(), stop.clone());
        let inference = self.spawn_inference(engine, queue.clone());

        let Pipeline {
            model,
            clock,
            counters,
            latencies,
            tx,
            rx,
            reporter,
            ..
        } = self;
        drop(reporter);
        drop(tx);

        // Outputs.
        let mut acc = AccuracyAcc::new(
            &ef_views,
            self.info.ef.as_ref().and_then(|e| e.training_mean),
        );
        // until inference is done (`InferenceDone`) or every sender is gone
        while let Ok(Msg::Event(ev)) = rx.recv() {
            acc.observe(&ev);
            emit_all(&mut sinks, &ev);
            if sinks.is_empty() {
                stop.store(true, Ordering::Relaxed);
            }
        }
        // Status records sent after inference finished (source end, errors).
        while let Ok(Msg::Event(ev)) = rx.try_recv() {
            emit_all(&mut sinks, &ev);
        }
        let _ = preprocess.join();
        let _ = inference.join();
        if capture.is_finished() {
            let _ = capture.join();
        } else {
            tracing::warn!("the capture source is still blocked in a read; leaving it behind");
        }
        while let Ok(Msg::Event(ev)) = rx.try_recv() {
            emit_all(&mut sinks, &ev);
        }

        let wall = clock.now().saturating_sub(start);
        let snapshot = counters.snapshot();
        let reason = end_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "stopped".into());
        let summary = Summary {
            model,
            reason,
            wall_s: wall.as_secs_f64(),
            capture_fps: if wall.is_zero() {
                0.0
            } else {
                snapshot.captured as f64 / wall.as_secs_f64()
            },
            counters: snapshot,
            latency_ms: latencies.summary(),
            peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0)),
            accuracy: acc.finish(),
        };
        emit_all(&mut sinks, &Event::Summary(Box::new(summary.clone())));
        summary
    }

    fn spawn_capture(
        &self,
        mut source: Box<dyn FrameSource>,
        frame_tx: Sender<Frame>,
        stop: Arc<AtomicBool>,
        end_reason: Arc<Mutex<Option<String>>>,
    ) -> JoinHandle<()> {
        let counters = self.counters.clone();
        let reporter = self.reporter.clone();
        let clock = self.clock.clone();
        let max_frames = self.opts.max_frames;
        let spawn = std::thread::Builder::new().name("capture".into());
        let handle = spawn.spawn(move || {
            let set_reason = |r: String| {
                *end_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            };
            loop {
                if stop.load(Ordering::Relaxed) {
                    set_reason("stopped".into());
                    break;
                }
                if max_frames.is_some_and(|m| counters.captured.load(Ordering::Relaxed) >= m) {
                    set_reason("frame limit reached".into());
                    break;
                }
                match source.next_frame() {
                    Ok(Some(mut frame)) => {
                        frame.arrived = clock.now();
                        Counters::inc(&counters.captured);
                        match frame_tx.try_send(frame) {
                            Ok(()) => {}
                            Err(TrySendError::Full(f)) => {
                                Counters::inc(&counters.frame_overruns);
                                reporter.report_limited(
                                    Level::Warn,
                                    "frame_overrun",
                                    format!(
                                        "preprocessing is behind capture; frame {} not processed",
                                        f.seq
                                    ),
                                );
                            }
                            Err(TrySendError::Disconnected(_)) => {
                                set_reason("preprocessing stopped".into());
                                break;
                            }
                        }
                    }
                    Ok(None) => {
                        let msg = format!("{}: the source ended", source.describe());
                        reporter.report(Level::Info, "source_ended", msg.clone());
                        set_reason(msg);
                        break;
                    }
                    Err(e @ SourceError::Corrupt { .. }) => {
                        Counters::inc(&counters.corrupt);
                        reporter.report_limited_as(
                            "corrupt_frame/source",
                            Level::Warn,
                            "corrupt_frame",
                            format!("skipped: {e}"),
                        );
                    }
                    Err(e @ SourceError::Disconnected { .. }) => {
                        let msg = format!("{e}");
                        reporter.report(Level::Error, "source_lost", msg.clone());
                        set_reason(msg);
                        break;
                    }
                    Err(e @ SourceError::Fatal { .. }) => {
                        let msg = format!("{e}");
                        reporter.report(Level::Error, "source_failed", msg.clone());
                        set_reason(msg);
                        break;
                    }
                }
            }
        });
        handle.unwrap_or_else(|e| panic!("cannot start the capture thread: {e}"))
    }

    fn spawn_preprocess(
        &self,
        frame_rx: Receiver<Frame>,
        queue: Arc<DropOldestQueue<crate::clip::Clip>>,
        stop: Arc<AtomicBool>,
    ) -> JoinHandle<()> {
        let counters = self.counters.clone();
        let latencies = self.latencies.clone();
        let reporter = self.reporter.clone();
        let clock = self.clock.clone();
        let display = self.display.clone();
        let spec = self.info.clip;
        let mut stage = Preprocess::new(
            self.opts.sector,
            self.info.sector,
            self.opts.mask_outside,
            spec,
        );
        let mut builder = ClipBuilder::new(spec, self.opts.clip_every);
        let luma_range = self.opts.luma_range;
        let spawn = std::thread::Builder::new().name("preprocess".into());
        let handle = spawn.spawn(move || {
            loop {
                let frame = match frame_rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(f) => f,
                    Err(RecvTimeoutError::Timeout) => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let t0 = clock.now();
                let gray = match to_gray_with(&frame, luma_range) {
                    Ok(g) => g,
                    Err(e) => {
                        Counters::inc(&counters.corrupt);
                        reporter.report_limited_as(
                            "corrupt_frame/convert",
                            Level::Warn,
                            "corrupt_frame",
                            format!("skipped {e}"),
                        );
                        continue;
                    }
                };
                let image = stage.process(&gray);
                let input_rect = stage.input_rect(&gray);
                Counters::inc(&counters.processed);
                latencies.record("frame_preprocess", ms(clock.now().saturating_sub(t0)));
                if let Some(tap) = &display
                    && tap.wants(frame.ts)
                {
                    tap.offer(stage.display_frame(&gray, frame.ts));
                }
                let pf = ProcessedFrame {
                    seq: frame.seq,
                    ts: frame.ts,
                    arrived: frame.arrived,
                    image: Arc::new(image),
                    truth: frame.truth,
                    input_rect,
                };
                let (clip, disc) = builder.push(pf, clock.now());
                if let Some(d) = disc {
                    Counters::inc(&counters.discontinuities);
                    reporter.report(
                        Level::Info,
                        "discontinuity",
                        format!(
                            "timestamps {} at frame {}; the clip buffer starts afresh",
                            match d {
                                crate::clip::Discontinuity::Backwards => "went backwards",
                                crate::clip::Discontinuity::Gap => "jumped ahead",
                            },
                            frame.seq
                        ),
                    );
                }
                if let Some(clip) = clip {
                    Counters::inc(&counters.clips_built);
                    if let Pushed::Evicted(_) = queue.push(clip) {
                        Counters::inc(&counters.clips_dropped);
                    }
                }
            }
            queue.close();
        });
        handle.unwrap_or_else(|e| panic!("cannot start the preprocess thread: {e}"))
    }

    fn spawn_inference(
        &self,
        mut engine: Box<dyn InferenceEngine>,
        queue: Arc<DropOldestQueue<crate::clip::Clip>>,
    ) -> JoinHandle<()> {
        let counters = self.counters.clone();
        let latencies = self.latencies.clone();
        let reporter = self.reporter.clone();
        let clock = self.clock.clone();
        let tx = self.tx.clone();
        let info = self.info.clone();
        let model = self.model.clone();
        let notice = self.notice.clone();
        let t = self.opts.clinical;
        let mut clinical = ClinicalState::new(ClinicalPolicy {
            ef_min_confidence: info.ef_min_confidence(t.ef_min_confidence),
            min_cycle: t.min_cycle,
            ef_window: t.ef_window,
            ef_views: info.ef.as_ref().map(|e| e.valid_views.clone()),
            lv_fit: match info.ef.as_ref().map(|e| e.method) {
                Some(EfMethod::TracedLv { fit }) => fit,
                _ => None,
            },
        });
        // EF from the traced LV only when the bundle measures it so; otherwise the tracing is
        // only drawn
        let traced = matches!(
            info.ef.as_ref().map(|e| e.method),
            Some(EfMethod::TracedLv { .. })
        );
        let unit = info
            .ef
            .as_ref()
            .map(|e| e.unit.clone())
            .unwrap_or_else(|| "%".into());
        let spawn = std::thread::Builder::new().name("inference".into());
        let handle = spawn.spawn(move || {
            while let Some(clip) = queue.pop() {
                let begin = clock.now();
                let out = match engine.infer(&clip) {
                    Ok(o) => o,
                    Err(e) => {
                        Counters::inc(&counters.engine_errors);
                        reporter.report_limited(Level::Error, "engine_error", e.to_string());
                        continue;
                    }
                };
                Counters::inc(&counters.clips_inferred);
                let end = clock.now();
                let Some((idx, confidence)) = top1(&out.view_probs) else {
                    Counters::inc(&counters.engine_errors);
                    reporter.report_limited(
                        Level::Error,
                        "engine_error",
                        format!("clip {}: the model returned no view probabilities", clip.id),
                    );
                    continue;
                };
                let label = info
                    .view_classes
                    .get(idx)
                    .cloned()
                    .unwrap_or_else(|| format!("class_{idx}"));
                let decision = match out.lv_volumes.as_ref().filter(|_| traced) {
                    Some(v) => {
                        let samples = lv_samples(&clip, v);
                        clinical.update_traced(
                            clip.first_ts,
                            clip.last_ts,
                            &label,
                            confidence,
                            &samples,
                        )
                    }
                    None => {
                        clinical.update(clip.first_ts, clip.last_ts, &label, confidence, out.ef)
                    }
                };
                let mut lat = BTreeMap::new();
                let mut rec = |k: &'static str, v: f32| {
                    latencies.record(k, v);
                    lat.insert(k.to_string(), v);
                };
                rec(
                    "clip_assembly",
                    ms(clip.built_at.saturating_sub(clip.arrived)),
                );
                rec("queue_wait", ms(begin.saturating_sub(clip.built_at)));
                for (stage, d) in &out.stages {
                    rec(stage, ms(*d));
                }
                rec("inference", ms(end.saturating_sub(begin)));
                rec(
                    "capture_to_prediction",
                    ms(end.saturating_sub(clip.arrived)),
                );
                let probs = info
                    .view_classes
                    .iter()
                    .cloned()
                    .zip(out.view_probs.iter().copied())
                    .collect();
                let pred = Prediction {
                    model: model.clone(),
                    clip: clip.id,
                    time_s: clip.last_ts.as_secs_f64(),
                    frames: [
                        clip.seqs.first().copied().unwrap_or(0),
                        clip.seqs.last().copied().unwrap_or(0),
                    ],
                    view: ViewOut {
                        label,
                        confidence,
                        probs,
                        top: top_views(&info.view_classes, &out.view_probs),
                    },
                    ef: EfOut::new(&decision, &unit),
                    lv_outline: out
                        .lv_outline
                        .as_deref()
                        .map(|o| outline_in_frame(o, clip.spec.resolution, clip.input_rect)),
                    latency_ms: lat,
                    counters: counters.snapshot(),
                    synthetic_training_data: info.synthetic_training_data,
                    notice: notice.clone(),
                    truth: clip.truth.clone(),
                };
                if tx
                    .send(Msg::Event(Event::Prediction(Box::new(pred))))
                    .is_err()
                {
                    break;
                }
            }
            let _ = tx.send(Msg::InferenceDone);
        });
        handle.unwrap_or_else(|e| panic!("cannot start the inference thread: {e}"))
    }
}

/// The traced outline (model-input pixels) as fractions of the source frame, at most 400
/// points (every k-th rim pixel of a large cavity).
fn outline_in_frame(points: &[(u16, u16)], res: usize, rect: [f32; 4]) -> Vec<[f32; 2]> {
    let step = points.len().div_ceil(400).max(1);
    let r = res.max(1) as f32;
    points
        .iter()
        .step_by(step)
        .map(|&(x, y)| {
            [
                rect[0] + (x as f32 + 0.5) / r * rect[2],
                rect[1] + (y as f32 + 0.5) / r * rect[3],
            ]
        })
        .collect()
}

/// Each frame's traced volume with its source sequence number and time (frames are evenly
/// spaced between the clip's first and newest).
fn lv_samples(clip: &crate::clip::Clip, volumes: &[f64]) -> Vec<crate::clinical::LvSample> {
    let n = clip.seqs.len().min(volumes.len());
    let span = clip.last_ts.saturating_sub(clip.first_ts);
    (0..n)
        .map(|k| {
            let t = if n > 1 {
                clip.first_ts + span.mul_f64(k as f64 / (n - 1) as f64)
            } else {
                clip.last_ts
            };
            (clip.seqs[k], t, volumes[k])
        })
        .collect()
}

fn ms(d: Duration) -> f32 {
    d.as_secs_f32() * 1e3
}

fn emit_all(sinks: &mut Vec<Box<dyn Sink>>, ev: &Event) {
    sinks.retain_mut(|s| match s.emit(ev) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("output `{}` failed and is closed: {e}", s.name());
            false
        }
    });
}

/// Convert-to-model-input stage: sector (fixed, detected or none) then resize.
struct Preprocess {
    config: SectorConfig,
    /// Resize and centre crop, with the sector crop and mask (shared with training).
    prep: FramePrep,
    spec: ClipSpec,
    detector: Option<SectorEstimator>,
    current: Option<Sector>,
    since_detect: u32,
}

impl Preprocess {
    fn new(config: SectorConfig, model: SectorUse, mask_outside: bool, spec: ClipSpec) -> Self {
        let crop = model != SectorUse::FullFrame;
        let detector = match (crop, config) {
            (true, SectorConfig::Detect { threshold, .. }) => Some(SectorEstimator::new(threshold)),
            _ => None,
        };
        let mut prep = FramePrep::with_sector_use(
            spec.resolution,
            match model {
                SectorUse::FullFrame => SectorHandling::FullFrame,
                SectorUse::Crop => SectorHandling::CropToSector,
                SectorUse::CropAndMask => SectorHandling::CropAndMaskOutside,
            },
        );
        prep.set_mask(mask_outside);
        Self {
            config,
            prep,
            spec,
            detector,
            current: None,
            since_detect: 0,
        }
    }

    fn sector(&mut self, img: &GrayImage) -> Option<&Sector> {
        if !self.prep.crops() {
            return None;
        }
        match self.config {
            SectorConfig::Whole => None,
            SectorConfig::Fixed(r) => {
                if self.current.is_none() {
                    self.current = Some(Sector {
                        rect: r,
                        row_spans: None,
                    });
                }
                self.current.as_ref()
            }
            SectorConfig::Detect { redetect_every, .. } => {
                let det = self.detector.as_mut()?;
                det.accumulate(img);
                self.since_detect += 1;
                if self.current.is_none() || self.since_detect >= redetect_every {
                    self.since_detect = 0;
                    if let Some(new) = det.take() {
                        let replace = match &self.current {
                            None => true,
                            Some(cur) => should_replace(&cur.rect, &new.rect, 0.9),
                        };
                        if replace {
                            self.current = Some(new);
                        }
                    }
                }
                self.current.as_ref()
            }
        }
    }

    fn process(&mut self, img: &GrayImage) -> GrayImage {
        // The sector lives in `self.current`; borrowing it beside `self.prep` avoids copying its
        // row spans every frame.
        let cropped = self.sector(img).is_some();
        let sector = if cropped { self.current.as_ref() } else { None };
        self.prep.run(img, sector)
    }

    /// The part of `img` the model input shows (after [`Preprocess::process`]), as fractions
    /// of the frame: the sector box (or the whole frame), short side resized, centre cropped.
    fn input_rect(&self, img: &GrayImage) -> [f32; 4] {
        let (fw, fh) = (img.width.max(1) as f32, img.height.max(1) as f32);
        let r = match (&self.current, self.prep.crops()) {
            (Some(s), true) => s.rect,
            _ => Rect {
                x: 0,
                y: 0,
                width: img.width,
                height: img.height,
            },
        };
        let res = self.spec.resolution;
        let g = eval_geometry(r.width, r.height, res);
        let (sw, sh) = g.resized;
        let (sx, sy) = (
            sw as f32 / r.width.max(1) as f32,
            sh as f32 / r.height.max(1) as f32,
        );
        let x = r.x as f32 + g.crop.x as f32 / sx;
        let y = r.y as f32 + g.crop.y as f32 / sy;
        [x / fw, y / fh, res as f32 / sx / fw, res as f32 / sy / fh]
    }

    /// The full frame reduced to at most 480 pixels wide, with the sector box.
    fn display_frame(&self, img: &GrayImage, ts: Duration) -> DisplayFrame {
        let scale = (480.0 / img.width as f64).min(1.0);
        let w = ((img.width as f64 * scale).round() as usize).max(1);
        let h = ((img.height as f64 * scale).round() as usize).max(1);
        let image = resize(img, w, h);
        let sector = self.current.as_ref().map(|s| Rect {
            x: (s.rect.x as f64 * scale) as usize,
            y: (s.rect.y as f64 * scale) as usize,
            width: (s.rect.width as f64 * scale) as usize,
            height: (s.rect.height as f64 * scale) as usize,
        });
        DisplayFrame {
            time_s: ts.as_secs_f64(),
            image,
            sector: if self.prep.crops() { sector } else { None },
        }
    }
}

/// Scores predictions against ground truth as they stream past.
struct AccuracyAcc {
    ef_views: Vec<String>,
    /// The EF head's training mean (the baseline predictor), if the model says.
    ef_mean: Option<f64>,
    acc: Accuracy,
    ef_abs: f64,
    ef_clip_abs: f64,
    ef_mean_abs: f64,
}

impl AccuracyAcc {
    fn new(ef_views: &[String], ef_mean: Option<f64>) -> Self {
        Self {
            ef_views: ef_views.to_vec(),
            ef_mean,
            acc: Accuracy::default(),
            ef_abs: 0.0,
            ef_clip_abs: 0.0,
            ef_mean_abs: 0.0,
        }
    }

    fn observe(&mut self, ev: &Event) {
        let Event::Prediction(p) = ev else { return };
        let Some(truth) = &p.truth else { return };
        self.acc.clips += 1;
        let row = self.acc.per_view.entry(truth.view.clone()).or_default();
        row.clips += 1;
        *row.predicted.entry(p.view.label.clone()).or_default() += 1;
        if p.view.label == truth.view {
            self.acc.view_correct += 1;
            row.correct += 1;
        }
        let ef_view = self.ef_views.contains(&truth.view);
        if let Some(v) = p.ef.value {
            self.acc.ef_shown += 1;
            self.ef_abs += (v as f64 - truth.ef as f64).abs();
            if !ef_view {
                self.acc.ef_shown_on_other_views += 1;
            }
        }
        if ef_view && let Some(c) = p.ef.clip_estimate {
            self.acc.ef_clips += 1;
            self.ef_clip_abs += (c as f64 - truth.ef as f64).abs();
            if let Some(m) = self.ef_mean {
                self.ef_mean_abs += (m - truth.ef as f64).abs();
            }
        }
    }

    fn finish(mut self) -> Accuracy {
        let a = &mut self.acc;
        a.view_accuracy = (a.clips > 0).then(|| a.view_correct as f64 / a.clips as f64);
        a.ef_mae = (a.ef_shown > 0).then(|| self.ef_abs / a.ef_shown as f64);
        a.ef_clip_mae = (a.ef_clips > 0).then(|| self.ef_clip_abs / a.ef_clips as f64);
        a.ef_mean_predictor_mae = (a.ef_clips > 0 && self.ef_mean.is_some())
            .then(|| self.ef_mean_abs / a.ef_clips as f64);
        a.ef_shown_on_other_views_share =
            (a.ef_shown > 0).then(|| a.ef_shown_on_other_views as f64 / a.ef_shown as f64);
        for v in a.per_view.values_mut() {
            v.accuracy = (v.clips > 0).then(|| v.correct as f64 / v.clips as f64);
        }
        self.acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traced_outline_lands_where_the_model_looked() {
        let spec = ClipSpec {
            frames: 8,
            interval: Duration::from_millis(133),
            resolution: 112,
            linspace_step: None,
        };
        let stage = Preprocess::new(SectorConfig::Whole, SectorUse::FullFrame, false, spec);
        let frame = GrayImage::new(320, 240);
        let r = stage.input_rect(&frame);
        // 320x240 -> short side 128 -> 171x128 -> centre 112x112: a centred square of the
        // frame's height times 112/128
        let h = 112.0 / 128.0;
        assert!((r[3] - h).abs() < 1e-3, "{r:?}");
        assert!((r[2] - h * 240.0 / 320.0).abs() < 0.01, "{r:?}");
        assert!((r[0] + r[2] / 2.0 - 0.5).abs() < 0.01, "{r:?}");
        assert!((r[1] + r[3] / 2.0 - 0.5).abs() < 0.01, "{r:?}");
        // model pixels map into that rectangle; the centre maps to the frame's centre
        let pts = outline_in_frame(&[(0, 0), (56, 56), (111, 111)], 112, r);
        assert!((pts[1][0] - 0.5).abs() < 0.01 && (pts[1][1] - 0.5).abs() < 0.01);
        assert!(pts[0][0] > r[0] && pts[0][1] > r[1]);
        assert!(pts[2][0] < r[0] + r[2] && pts[2][1] < r[1] + r[3]);
        // a large rim is thinned to at most 400 points
        let many: Vec<(u16, u16)> = (0..1000).map(|i| (i % 112, i / 112)).collect();
        assert!(outline_in_frame(&many, 112, r).len() <= 400);
    }

    #[test]
    fn lv_samples_follow_the_clip_frames() {
        let spec = ClipSpec {
            frames: 3,
            interval: Duration::from_millis(100),
            resolution: 4,
            linspace_step: None,
        };
        let img = Arc::new(GrayImage::new(4, 4));
        let clip = crate::clip::Clip {
            id: 0,
            spec,
            frames: vec![img.clone(), img.clone(), img],
            seqs: vec![10, 13, 16],
            first_ts: Duration::from_millis(1000),
            last_ts: Duration::from_millis(1200),
            arrived: Duration::ZERO,
            built_at: Duration::ZERO,
            truth: None,
            input_rect: [0.0, 0.0, 1.0, 1.0],
        };
        let s = lv_samples(&clip, &[5.0, 6.0, 7.0]);
        assert_eq!(
            s,
            vec![
                (10, Duration::from_millis(1000), 5.0),
                (13, Duration::from_millis(1100), 6.0),
                (16, Duration::from_millis(1200), 7.0)
            ]
        );
    }
}
