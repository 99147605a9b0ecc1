//! The wire protocol between the cart computer and the cart's microcontroller (MCU).
//!
//! This crate is shared, unchanged, by the MCU firmware and the host (`firmware-host`), so it is
//! `no_std` and never allocates: messages use `heapless` strings/vectors with fixed bounds, frames
//! are encoded into caller buffers, and the decoder keeps one frame in a const-generic array.
//!
//! * [`messages`]: every message, one enum per direction ([`HostMsg`], [`McuMsg`]).
//! * [`frame`]: `0x00 ‖ COBS(postcard(Envelope) ‖ CRC-32C) ‖ 0x00` encoding and the streaming
//!   [`FrameDecoder`] that resynchronises after garbage and says what it dropped.
//! * [`auth`]: HMAC-SHA256 and replay counters for privileged commands (host → MCU) and for the
//!   MCU's replies (handshake answer, status, command results).
//! * [`SeqTracker`] and [`Liveness`]: lost/duplicate frame detection and heartbeat/watchdog timing,
//!   driven by a caller-supplied millisecond clock so both sides can be tested deterministically.
//!
//! The byte-level specification is `WIRE.md` in this crate's directory; golden-byte tests keep the
//! two in step. Enable the `defmt` feature (firmware only) for `defmt::Format` on every type.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod auth;
mod cobs;
pub mod frame;
pub mod messages;

pub use auth::{CartKey, ReplayGuard, ReplySigner, ReplyVerifier};
pub use frame::{
    DecoderStats, Feed, FrameDecoder, MAX_BODY, MAX_ENCODED, MAX_FRAME, decode_frame, encode,
    encode_vec,
};
pub use messages::*;

/// The version this build speaks. 2.0: MCU replies carry a [`ReplyAuth`] (incompatible with 1.x).
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 2, minor: 0 };

/// Default heartbeat period, both directions.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u16 = 200;
/// Default silence after which a peer counts as gone (several missed heartbeats).
pub const DEFAULT_WATCHDOG_TIMEOUT_MS: u16 = 1000;

/// Everything that can go wrong in this crate. Flat, so firmware can log it cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// frame longer than the decoder buffer; bytes discarded up to the next delimiter
    Overflow,
    /// malformed COBS encoding
    Cobs,
    /// frame too short to hold a CRC and a message
    Truncated,
    /// CRC mismatch: the frame was corrupted on the wire
    Crc,
    /// CRC matched but the bytes are not a message of this direction and protocol version
    Deserialize,
    /// CRC matched but bytes follow the message
    TrailingBytes,
    /// message could not be serialized
    Serialize,
    /// output buffer too small for the frame
    BufferFull,
    /// HMAC tag did not verify (privileged command or MCU reply)
    BadTag,
    /// counter was not above the last accepted one (replay)
    Replayed,
    /// counter space exhausted (no value after `u64::MAX`); re-key the cart
    CounterExhausted,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::Overflow => {
                "frame longer than the decoder buffer; bytes discarded up to the next delimiter"
            }
            Error::Cobs => "malformed COBS encoding",
            Error::Truncated => "frame too short to hold a CRC and a message",
            Error::Crc => "CRC mismatch: the frame was corrupted on the wire",
            Error::Deserialize => {
                "CRC matched but the bytes are not a message of this direction and protocol version"
            }
            Error::TrailingBytes => "CRC matched but bytes follow the message",
            Error::Serialize => "message could not be serialized",
            Error::BufferFull => "output buffer too small for the frame",
            Error::BadTag => "HMAC tag did not verify (privileged command or MCU reply)",
            Error::Replayed => "counter was not above the last accepted one (replay)",
            Error::CounterExhausted => {
                "counter space exhausted (no value after u64::MAX); re-key the cart"
            }
        })
    }
}

impl core::error::Error for Error {}

/// Result of [`SeqTracker::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SeqCheck {
    /// First frame since the tracker was reset.
    First,
    /// The expected next frame.
    InOrder,
    /// Newer than expected: `missing` frames were lost in between.
    Gap {
        /// Frames lost.
        missing: u32,
    },
    /// Not newer than the last accepted frame: a duplicate or a stale frame; drop it.
    Stale,
}

/// Tracks the peer's envelope sequence numbers: counts lost frames and flags duplicates.
///
/// Reset it when the peer starts a new sequence: on [`HostMsg::Hello`] (MCU side) or
/// [`McuMsg::Boot`] / [`McuMsg::HelloAck`] (host side).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SeqTracker {
    next: Option<u32>,
    lost: u32,
    stale: u32,
}

impl SeqTracker {
    /// A tracker expecting any first sequence number.
    pub const fn new() -> Self {
        Self {
            next: None,
            lost: 0,
            stale: 0,
        }
    }

    /// Forgets the expected number (counters are kept).
    pub fn reset(&mut self) {
        self.next = None;
    }

    /// Classifies `seq` and, unless it is stale, advances the expected number past it.
    pub fn observe(&mut self, seq: u32) -> SeqCheck {
        let Some(next) = self.next else {
            self.next = Some(seq.wrapping_add(1));
            return SeqCheck::First;
        };
        let ahead = seq.wrapping_sub(next);
        if ahead == 0 {
            self.next = Some(seq.wrapping_add(1));
            SeqCheck::InOrder
        } else if ahead < 1 << 31 {
            self.next = Some(seq.wrapping_add(1));
            self.lost = self.lost.saturating_add(ahead);
            SeqCheck::Gap { missing: ahead }
        } else {
            self.stale = self.stale.saturating_add(1);
            SeqCheck::Stale
        }
    }

    /// Frames known lost (sum of gaps).
    pub const fn lost(&self) -> u32 {
        self.lost
    }

    /// Stale or duplicate frames seen.
    pub const fn stale(&self) -> u32 {
        self.stale
    }
}

/// Heartbeat and watchdog timing for one side of the link, on a caller-supplied clock in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Liveness {
    interval_ms: u64,
    timeout_ms: u64,
    last_rx_ms: u64,
    last_tx_ms: Option<u64>,
}

impl Liveness {
    /// Starts counting at `now_ms` as if the peer had just been heard.
    pub const fn new(interval_ms: u16, timeout_ms: u16, now_ms: u64) -> Self {
        Self {
            interval_ms: interval_ms as u64,
            timeout_ms: timeout_ms as u64,
            last_rx_ms: now_ms,
            last_tx_ms: None,
        }
    }

    /// Any valid frame from the peer counts as a sign of life.
    pub fn heard(&mut self, now_ms: u64) {
        self.last_rx_ms = self.last_rx_ms.max(now_ms);
    }

    /// Record that a heartbeat was sent.
    pub fn sent(&mut self, now_ms: u64) {
        self.last_tx_ms = Some(now_ms);
    }

    /// Whether our heartbeat is due.
    pub fn heartbeat_due(&self, now_ms: u64) -> bool {
        match self.last_tx_ms {
            None => true,
            Some(t) => now_ms.saturating_sub(t) >= self.interval_ms,
        }
    }

    /// Milliseconds since the peer was last heard.
    pub fn silence_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_rx_ms)
    }

    /// The watchdog verdict: silent longer than the timeout.
    pub fn peer_lost(&self, now_ms: u64) -> bool {
        self.silence_ms(now_ms) > self.timeout_ms
    }

    /// Milliseconds until the next heartbeat is due or the watchdog fires, whichever is first.
    pub fn next_deadline_in(&self, now_ms: u64) -> u64 {
        let hb = match self.last_tx_ms {
            None => 0,
            Some(t) => (t + self.interval_ms).saturating_sub(now_ms),
        };
        let wd = (self.last_rx_ms + self.timeout_ms + 1).saturating_sub(now_ms);
        hb.min(wd)
    }
}
