//! Plays a source "live": each frame is released when the clock reaches its timestamp (relative to
//! the first frame). Files play at their own frame rate this way and the phantom behaves like a
//! scanner. When the consumer falls more than `max_lag` behind, or timestamps jump back (a looped
//! file), the schedule is re-anchored instead of rushing to catch up.

use std::time::Duration;

use super::{FrameSource, SourceError};
use crate::clock::SharedClock;
use crate::frame::Frame;

/// A source released in real time.
pub struct Paced<S> {
    inner: S,
    clock: SharedClock,
    anchor: Option<(Duration, Duration)>,
    max_lag: Duration,
}

impl<S: FrameSource> Paced<S> {
    pub fn new(inner: S, clock: SharedClock) -> Self {
        Self {
            inner,
            clock,
            anchor: None,
            max_lag: Duration::from_secs(1),
        }
    }
}

impl<S: FrameSource> FrameSource for Paced<S> {
    fn describe(&self) -> String {
        format!("{} (real time)", self.inner.describe())
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let Some(frame) = self.inner.next_frame()? else {
            return Ok(None);
        };
        let now = self.clock.now();
        let (clock0, ts0) = *self.anchor.get_or_insert((now, frame.ts));
        let due = if frame.ts >= ts0 {
            clock0 + (frame.ts - ts0)
        } else {
            now
        };
        if frame.ts < ts0 || now > due + self.max_lag {
            self.anchor = Some((now, frame.ts));
        } else {
            self.clock.sleep_until(due);
        }
        Ok(Some(frame))
    }

    fn nominal_fps(&self) -> Option<f64> {
        self.inner.nominal_fps()
    }
}
