//! Frame sources behind one trait: a V4L2 device (feature `v4l`), video files, the synthetic
//! phantom rendered live, and raw frames on standard input. Every frame carries a timestamp.
//!
//! Two wrappers add behaviour any source can use: [`Paced`] releases frames at their timestamps
//! (files and the phantom played "live"), and [`Reconnecting`] reopens a source that vanished,
//! with exponential backoff. Both take a [`Clock`](crate::clock::Clock), so tests drive them with
//! a test clock and never sleep.

pub mod file;
mod paced;
pub mod phantom;
mod raw;
mod reconnect;
#[cfg(feature = "v4l")]
pub mod v4l2;

pub use paced::Paced;
pub use raw::{RawFormat, RawSource, RawTiming};
pub use reconnect::{Backoff, ReconnectEvent, Reconnecting, SourceOpener};

use crate::frame::Frame;

/// Why a source could not deliver a frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device or stream went away; reopening it may help.
    #[error("{source_name}: disconnected: {reason}")]
    Disconnected { source_name: String, reason: String },
    /// One frame is unusable; the next one may be fine.
    #[error("{source_name}: frame {seq} is corrupt: {reason}")]
    Corrupt {
        source_name: String,
        seq: u64,
        reason: String,
    },
    /// The source cannot be opened or cannot continue.
    #[error("{source_name}: {reason}")]
    Fatal { source_name: String, reason: String },
}

/// A stream of frames.
pub trait FrameSource: Send {
    /// Names the source in messages (`/dev/video0 (YUYV 1280x720 @ 30 fps)`, `stdin`, ...).
    fn describe(&self) -> String;

    /// The next frame. `Ok(None)` means the source has ended for good (end of file, stdin
    /// closed); errors say whether a retry or reconnect can help.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;

    /// Frame rate the source aims for, if it has one.
    fn nominal_fps(&self) -> Option<f64> {
        None
    }
}

impl FrameSource for Box<dyn FrameSource> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        (**self).next_frame()
    }
    fn nominal_fps(&self) -> Option<f64> {
        (**self).nominal_fps()
    }
}
