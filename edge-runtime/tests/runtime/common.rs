//! Test helpers: a deterministic inference engine (tests only; the runtime ships none), scripted
//! frame sources, and sinks that collect events.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use edge_runtime::clip::{Clip, ClipSpec};
use edge_runtime::clock::{SharedClock, TestClock};
use edge_runtime::engine::{
    EfHeadInfo, EfMethod, EngineError, EngineOutput, InferenceEngine, ModelInfo, SectorUse,
};
use edge_runtime::events::Event;
use edge_runtime::frame::{Frame, GroundTruth};
use edge_runtime::pipeline::{ClinicalThresholds, PipelineOptions, SectorConfig, Sink};
use edge_runtime::source::{FrameSource, SourceError};

/// The stand-in model: 4-frame clips 40 ms apart at 16 px, two views, EF for A4C.
pub fn test_model_info() -> ModelInfo {
    ModelInfo {
        model_id: "test-engine".into(),
        model_version: "0.0-test".into(),
        synthetic_training_data: true,
        provenance: None,
        notice: String::new(),
        clip: ClipSpec {
            frames: 4,
            interval: Duration::from_millis(40),
            resolution: 16,
            linspace_step: None,
        },
        sector: SectorUse::FullFrame,
        view_classes: vec!["A4C".into(), "PLAX".into()],
        view_calibrated: false,
        ef: Some(EfHeadInfo {
            method: EfMethod::Regressor,
            name: "lvef".into(),
            unit: "%".into(),
            valid_views: vec!["A4C".into()],
            min_view_confidence: None,
            training_mean: Some(50.0),
        }),
        runs_on: "test".into(),
    }
}

/// A deterministic engine: the view is A4C when the newest frame is bright (mean >= 128), PLAX
/// otherwise, with confidence 0.9; EF is `20 + mean / 4` of the newest frame. With a gate, each
/// clip waits for a token (or for the gate to be dropped) before it returns.
pub struct TestEngine {
    info: ModelInfo,
    gate: Option<Receiver<()>>,
    /// Clips seen, in order (their newest frame's sequence number).
    pub seen: Arc<Mutex<Vec<u64>>>,
    /// Fail on these clip ids.
    pub fail_on: Vec<u64>,
    /// Told the newest frame of each clip as the engine starts on it.
    pub entered: Option<Sender<u64>>,
}

impl TestEngine {
    pub fn new() -> Self {
        Self {
            info: test_model_info(),
            gate: None,
            seen: Arc::default(),
            fail_on: Vec::new(),
            entered: None,
        }
    }

    /// Each clip waits for one token on the returned sender; dropping it opens the gate.
    pub fn gated() -> (Self, Sender<()>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut e = Self::new();
        e.gate = Some(rx);
        (e, tx)
    }
}

impl InferenceEngine for TestEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn infer(&mut self, clip: &Clip) -> Result<EngineOutput, EngineError> {
        if let Some(e) = &self.entered {
            let _ = e.send(*clip.seqs.last().unwrap());
        }
        if let Some(g) = &self.gate {
            let _ = g.recv();
        }
        self.seen.lock().unwrap().push(*clip.seqs.last().unwrap());
        if self.fail_on.contains(&clip.id) {
            return Err(EngineError {
                clip: clip.id,
                reason: "injected failure".into(),
            });
        }
        let last = clip.frames.last().unwrap();
        let mean = last.data.iter().map(|&v| v as f32).sum::<f32>() / last.data.len() as f32;
        let view_probs = if mean >= 128.0 {
            vec![0.9, 0.1]
        } else {
            vec![0.1, 0.9]
        };
        Ok(EngineOutput {
            view_probs,
            ef: Some(20.0 + mean / 4.0),
            lv_volumes: None,
            lv_outline: None,
            stages: vec![("test_engine", Duration::ZERO)],
        })
    }
}

/// Pipeline options for the stand-in model: a clip every 4 frames, a queue that never evicts
/// unless a test says otherwise.
pub fn options(queue: usize) -> PipelineOptions {
    PipelineOptions {
        board: "test-board".into(),
        clip_every: 4,
        inference_queue: queue,
        frame_queue: 1024,
        sector: SectorConfig::Whole,
        mask_outside: false,
        luma_range: boards::LumaRange::Full,
        clinical: ClinicalThresholds {
            ef_min_confidence: 0.6,
            min_cycle: Duration::from_millis(300),
            ef_window: Duration::from_secs(2),
        },
        max_frames: None,
    }
}

/// A 32x24 grey frame of one value at 50 fps.
pub fn flat_frame(seq: u64, value: u8) -> Frame {
    let mut f = Frame::gray(
        seq,
        Duration::from_millis(seq * 20),
        32,
        24,
        vec![value; 32 * 24],
    );
    f.truth = Some(GroundTruth {
        view: if value >= 128 { "A4C" } else { "PLAX" }.into(),
        ef: 20.0 + value as f32 / 4.0,
    });
    f
}

/// Plays a script of source results, then ends. Optionally advances a test clock by 20 ms per
/// frame (the time the frame took to arrive) and tells a channel when it is exhausted.
pub struct ScriptSource {
    pub items: VecDeque<Result<Option<Frame>, SourceError>>,
    pub clock: Option<Arc<TestClock>>,
    pub done: Option<Sender<()>>,
    /// Before item `.0`, wait for a message on `.1`.
    pub hold: Option<(usize, Receiver<u64>)>,
    pub index: usize,
}

impl ScriptSource {
    pub fn frames(frames: impl IntoIterator<Item = Frame>) -> Self {
        Self {
            items: frames.into_iter().map(|f| Ok(Some(f))).collect(),
            clock: None,
            done: None,
            hold: None,
            index: 0,
        }
    }
}

impl FrameSource for ScriptSource {
    fn describe(&self) -> String {
        "script".into()
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if let Some(c) = &self.clock {
            c.advance(Duration::from_millis(20));
        }
        if let Some((at, rx)) = &self.hold
            && *at == self.index
        {
            let _ = rx.recv();
        }
        self.index += 1;
        match self.items.pop_front() {
            Some(item) => item,
            None => {
                if let Some(d) = self.done.take() {
                    let _ = d.send(());
                }
                Ok(None)
            }
        }
    }

    fn nominal_fps(&self) -> Option<f64> {
        Some(50.0)
    }
}

/// Endless bright frames until `stop` (for tests that run until something external happens).
pub struct EndlessSource {
    pub seq: u64,
    pub value: u8,
}

impl FrameSource for EndlessSource {
    fn describe(&self) -> String {
        "endless".into()
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let f = flat_frame(self.seq, self.value);
        self.seq += 1;
        Ok(Some(f))
    }

    fn nominal_fps(&self) -> Option<f64> {
        Some(50.0)
    }
}

/// Collects events.
#[derive(Clone, Default)]
pub struct Collect(pub Arc<Mutex<Vec<Event>>>);

impl Collect {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

impl Sink for Collect {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }

    fn name(&self) -> &str {
        "collect"
    }
}

/// Forwards events to a channel (so a test can wait for one).
pub struct ChannelSink(pub Sender<Event>);

impl Sink for ChannelSink {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        let _ = self.0.send(event.clone());
        Ok(())
    }

    fn name(&self) -> &str {
        "channel"
    }
}

/// Sets `stop` once `n` predictions were emitted.
pub struct StopAfter {
    pub n: u64,
    pub seen: AtomicU64,
    pub stop: Arc<AtomicBool>,
}

impl Sink for StopAfter {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        if matches!(event, Event::Prediction(_))
            && self.seen.fetch_add(1, Ordering::Relaxed) + 1 >= self.n
        {
            self.stop.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "stop-after"
    }
}

/// A `Write` into a shared buffer.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn test_clock() -> (Arc<TestClock>, SharedClock) {
    let c = TestClock::new();
    let shared: SharedClock = c.clone();
    (c, shared)
}

pub fn predictions(events: &[Event]) -> Vec<&edge_runtime::events::Prediction> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Prediction(p) => Some(p.as_ref()),
            _ => None,
        })
        .collect()
}

pub fn statuses<'a>(events: &'a [Event], code: &str) -> Vec<&'a edge_runtime::events::Status> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Status(s) if s.code == code => Some(s),
            _ => None,
        })
        .collect()
}
