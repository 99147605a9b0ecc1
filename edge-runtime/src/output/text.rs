//! Text outputs on a stream (stdout): JSON lines for programs (schema in `SCHEMA.md`), and one
//! readable line per event for a person watching a terminal.

use std::io::Write;

use crate::clinical::EfStatus;
use crate::events::{Event, Level};
use crate::pipeline::Sink;

/// One JSON object per line, flushed per event.
pub struct JsonLines<W> {
    out: W,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write + Send> Sink for JsonLines<W> {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    fn name(&self) -> &str {
        "jsonl"
    }
}

/// A readable line per event.
pub struct HumanLines<W> {
    out: W,
}

impl<W: Write + Send> HumanLines<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write + Send> Sink for HumanLines<W> {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        let o = &mut self.out;
        match event {
            Event::Started(s) => {
                writeln!(
                    o,
                    "model {} {} on {} | board {} | source {}",
                    s.model.id, s.model.version, s.runs_on, s.board, s.source
                )?;
                writeln!(
                    o,
                    "clips of {} frames every {:.0} ms at {} px, one every {} frames; EF for {}",
                    s.clip_frames,
                    s.clip_interval_ms,
                    s.resolution,
                    s.clip_every,
                    if s.ef_views.is_empty() {
                        "no view (no EF head)".to_string()
                    } else {
                        s.ef_views.join("/")
                    }
                )?;
                writeln!(o, "*** {} ***", s.notice)?;
            }
            Event::Prediction(p) => {
                let ef = match p.ef.status {
                    EfStatus::Ok => format!(
                        "EF {:5.1}{} ±{:.1} ({} clips)",
                        p.ef.value.unwrap_or(f32::NAN),
                        p.ef.unit,
                        p.ef.spread.unwrap_or(0.0),
                        p.ef.clips.unwrap_or(0)
                    ),
                    EfStatus::WarmingUp => "EF -- warming up".into(),
                    EfStatus::WrongView => "EF -- not this view".into(),
                    EfStatus::LowConfidence => "EF -- low confidence".into(),
                    EfStatus::NoEfHead => "EF -- no EF model".into(),
                };
                let truth = p
                    .truth
                    .as_ref()
                    .map(|t| format!("  [phantom: {} EF {:.1}]", t.view, t.ef))
                    .unwrap_or_default();
                writeln!(
                    o,
                    "{:8.2}s  view {:<6} {:4.0}%  {:<30} latency {:5.0} ms  dropped {}{}",
                    p.time_s,
                    p.view.label,
                    p.view.confidence * 100.0,
                    ef,
                    p.latency_ms
                        .get("capture_to_prediction")
                        .copied()
                        .unwrap_or(f32::NAN),
                    p.counters.clips_dropped,
                    truth
                )?;
            }
            Event::Status(s) => {
                let tag = match s.level {
                    Level::Info => "info",
                    Level::Warn => "WARN",
                    Level::Error => "ERROR",
                };
                writeln!(o, "[{tag}] {}: {}", s.code, s.message)?;
            }
            Event::Summary(s) => {
                let c = &s.counters;
                writeln!(
                    o,
                    "end: {} | {:.1} s, {:.1} frames/s captured, {} frames, {} corrupt, {} overruns, {} clips ({} dropped, {} run)",
                    s.reason,
                    s.wall_s,
                    s.capture_fps,
                    c.captured,
                    c.corrupt,
                    c.frame_overruns,
                    c.clips_built,
                    c.clips_dropped,
                    c.clips_inferred
                )?;
                if let Some(l) = s.latency_ms.get("capture_to_prediction") {
                    writeln!(
                        o,
                        "capture-to-prediction latency: p50 {:.0} ms, p99 {:.0} ms",
                        l.p50, l.p99
                    )?;
                }
                let a = &s.accuracy;
                if let Some(acc) = a.view_accuracy {
                    write!(
                        o,
                        "against the phantom's ground truth: view accuracy {:.1}% ({} clips)",
                        acc * 100.0,
                        a.clips
                    )?;
                    if let Some(m) = a.ef_mae {
                        write!(o, ", EF MAE {m:.2} points ({} shown)", a.ef_shown)?;
                    }
                    writeln!(o)?;
                }
            }
        }
        o.flush()
    }

    fn name(&self) -> &str {
        "text"
    }
}
