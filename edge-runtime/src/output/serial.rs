//! The serial link to the cart microcontroller, through `firmware-host`'s [`HostLink`]: every
//! prediction goes out (view, confidence, EF and its status, the synthetic-data flag), runtime
//! health once a second, and what the MCU says (link up/down, buttons, faults) comes back into the
//! event stream as `status` records (`serial`, `button`).
//!
//! The link never blocks the runtime: it has its own thread and drop-oldest queues, and while the
//! MCU is not connected predictions are discarded (the display must show the present, not a
//! backlog).

use std::time::{Duration, Instant};

use cart_protocol::{EfStatus as WireEf, Prediction as WirePrediction, RuntimeStatus, Slot};
use firmware_host::link::{HostLink, LinkConfig, LinkError, LinkEvent};
use firmware_host::sim::truncate;

use crate::clinical::EfStatus;
use crate::events::{Event, Level};
use crate::pipeline::{Sink, StatusReporter};

/// Sends predictions to the cart MCU.
pub struct SerialSink {
    link: HostLink,
    seq: u32,
    model_id: String,
    active_slot: Option<Slot>,
    last_status: Option<(Instant, u64)>,
    name: String,
}

impl SerialSink {
    /// Starts the link and a thread that turns link events into status records.
    pub fn start(
        config: LinkConfig,
        model_id: &str,
        active_slot: Option<Slot>,
        reporter: StatusReporter,
    ) -> Result<Self, LinkError> {
        let name = format!("serial {}", config.port);
        let link = HostLink::spawn(config)?;
        let events = link.events().clone();
        std::thread::Builder::new()
            .name("serial-events".into())
            .spawn(move || {
                for ev in events.iter() {
                    forward(&reporter, ev);
                }
            })
            .map_err(LinkError::Spawn)?;
        Ok(Self {
            link,
            seq: 0,
            model_id: model_id.to_string(),
            active_slot,
            last_status: None,
            name,
        })
    }
}

fn forward(reporter: &StatusReporter, ev: LinkEvent) {
    match ev {
        LinkEvent::Up(peer) => reporter.report(
            Level::Info,
            "serial",
            format!(
                "cart MCU connected: {} firmware {}",
                peer.cart_id, peer.firmware
            ),
        ),
        LinkEvent::Down(reason) => reporter.report(
            Level::Warn,
            "serial",
            format!("cart MCU link down: {reason:?}; reconnecting"),
        ),
        LinkEvent::Button(b) => reporter.report(
            Level::Info,
            "button",
            format!("{:?} {:?}", b.button, b.action).to_ascii_lowercase(),
        ),
        LinkEvent::Fault(f) => {
            reporter.report(Level::Error, "serial", format!("cart MCU fault: {f:?}"))
        }
        LinkEvent::McuBooted(b) => {
            reporter.report(Level::Info, "serial", format!("cart MCU booted: {b:?}"))
        }
        LinkEvent::Rejected(r) => reporter.report(
            Level::Error,
            "serial",
            format!("cart MCU refused the handshake: {r:?}"),
        ),
        _ => {}
    }
}

fn wire_ef(s: EfStatus) -> WireEf {
    match s {
        EfStatus::Ok => WireEf::Valid,
        EfStatus::WarmingUp => WireEf::WarmingUp,
        EfStatus::WrongView => WireEf::WrongView,
        EfStatus::LowConfidence => WireEf::LowConfidence,
        EfStatus::NoEfHead => WireEf::NotAvailable,
    }
}

impl Sink for SerialSink {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::Prediction(p) => {
                self.seq = self.seq.wrapping_add(1);
                let view_index = p
                    .view
                    .probs
                    .keys()
                    .position(|k| *k == p.view.label)
                    .unwrap_or(0) as u8;
                self.link.send_prediction(WirePrediction {
                    seq: self.seq,
                    timestamp_us: (p.time_s * 1e6) as u64,
                    view_index,
                    view: truncate(&p.view.label),
                    confidence: p.view.confidence,
                    ef_percent: p.ef.value,
                    ef_status: wire_ef(p.ef.status),
                    synthetic: p.synthetic_training_data,
                });
                let now = Instant::now();
                let due = self
                    .last_status
                    .is_none_or(|(t, _)| now.duration_since(t) >= Duration::from_secs(1));
                if due {
                    let captured = p.counters.captured;
                    let fps = match self.last_status {
                        Some((t, n)) => {
                            captured.saturating_sub(n) as f32
                                / now.duration_since(t).as_secs_f32().max(1e-3)
                        }
                        None => 0.0,
                    };
                    self.link.send_status(RuntimeStatus {
                        fps,
                        frames_dropped: (p.counters.frame_overruns + p.counters.corrupt)
                            .min(u32::MAX as u64) as u32,
                        temperature_c: None,
                        model_id: truncate(&self.model_id),
                        active_slot: self.active_slot,
                    });
                    self.last_status = Some((now, captured));
                }
            }
            Event::Summary(_) => {
                // Let the last prediction reach the MCU before the process exits.
                let _ = self.link.flush(Duration::from_millis(500));
            }
            _ => {}
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}
