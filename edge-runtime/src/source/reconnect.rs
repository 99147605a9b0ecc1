//! Reopens a source that vanished (a grabber unplugged, a driver reset), waiting with exponential
//! backoff between attempts, and reports each step through a callback so the outputs can tell the
//! user. Frames resume from the reopened source; the pipeline sees only a gap in timestamps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{FrameSource, SourceError};
use crate::clock::SharedClock;
use crate::frame::Frame;

/// Opens (or reopens) the underlying source.
pub type SourceOpener = Box<dyn FnMut() -> Result<Box<dyn FrameSource>, SourceError> + Send>;

/// Delays between reconnect attempts: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

/// What the wrapper tells its observer.
#[derive(Debug, Clone, PartialEq)]
pub enum ReconnectEvent {
    /// The source went away.
    Lost { reason: String },
    /// An attempt to reopen failed; the next comes after `retry_in`.
    RetryFailed {
        attempt: u32,
        reason: String,
        retry_in: Duration,
    },
    /// The source is back.
    Reopened { attempts: u32, description: String },
}

/// A source that reopens itself after [`SourceError::Disconnected`].
pub struct Reconnecting {
    open: SourceOpener,
    current: Option<Box<dyn FrameSource>>,
    backoff: Backoff,
    clock: SharedClock,
    stop: Arc<AtomicBool>,
    observer: Box<dyn FnMut(ReconnectEvent) + Send>,
    name: String,
}

impl Reconnecting {
    /// Opens the source now; if that fails with `Disconnected` (device not there yet), the first
    /// `next_frame` keeps trying. `stop` ends the retry loop (the source then reports its end).
    pub fn new(
        name: impl Into<String>,
        mut open: SourceOpener,
        backoff: Backoff,
        clock: SharedClock,
        stop: Arc<AtomicBool>,
        observer: Box<dyn FnMut(ReconnectEvent) + Send>,
    ) -> Result<Self, SourceError> {
        let current = match open() {
            Ok(s) => Some(s),
            Err(SourceError::Disconnected { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(Self {
            open,
            current,
            backoff,
            clock,
            stop,
            observer,
            name: name.into(),
        })
    }

    /// Retries until the source opens, a non-recoverable error, or stop. `Ok(false)` on stop.
    fn reopen(&mut self) -> Result<bool, SourceError> {
        let mut delay = self.backoff.initial;
        let mut attempt = 0u32;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            self.clock.sleep(delay);
            if self.stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            attempt += 1;
            match (self.open)() {
                Ok(s) => {
                    (self.observer)(ReconnectEvent::Reopened {
                        attempts: attempt,
                        description: s.describe(),
                    });
                    self.current = Some(s);
                    return Ok(true);
                }
                Err(SourceError::Disconnected { reason, .. }) => {
                    delay = (delay * 2).min(self.backoff.max);
                    (self.observer)(ReconnectEvent::RetryFailed {
                        attempt,
                        reason,
                        retry_in: delay,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl FrameSource for Reconnecting {
    fn describe(&self) -> String {
        match &self.current {
            Some(s) => s.describe(),
            None => format!("{} (waiting for the device)", self.name),
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if self.current.is_none() && !self.reopen()? {
                return Ok(None);
            }
            let Some(src) = self.current.as_mut() else {
                continue;
            };
            match src.next_frame() {
                Err(SourceError::Disconnected { reason, .. }) => {
                    self.current = None;
                    (self.observer)(ReconnectEvent::Lost { reason });
                }
                other => return other,
            }
        }
    }

    fn nominal_fps(&self) -> Option<f64> {
        self.current.as_ref().and_then(|s| s.nominal_fps())
    }
}
