//! Framing: `0x00 ‖ COBS(postcard(envelope) ‖ CRC-32C) ‖ 0x00`, and a streaming decoder.
//!
//! The encoder writes into a caller's buffer; the decoder keeps one frame's worth of bytes in a
//! const-generic array. Neither allocates or panics. The decoder is fed whatever the serial port
//! returned; it hands back the unread rest of the input with every frame or error, skips idle
//! delimiters, resynchronises at the next 0x00 after garbage, and says how many bytes it threw
//! away and why. The full byte layout is in `WIRE.md` next to this crate's `Cargo.toml`.

use postcard::experimental::max_size::MaxSize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::messages::{Envelope, HostMsg, McuMsg};
use crate::{Error, cobs};

/// CRC-32C (Castagnoli, the iSCSI polynomial), appended little-endian after the postcard bytes.
pub const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Length of the CRC trailer.
pub const CRC_LEN: usize = 4;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Largest postcard encoding of an envelope in either direction.
pub const MAX_BODY: usize = max(
    <Envelope<HostMsg> as MaxSize>::POSTCARD_MAX_SIZE,
    <Envelope<McuMsg> as MaxSize>::POSTCARD_MAX_SIZE,
);

/// Largest frame between (not counting) the two delimiters: COBS of body plus CRC.
pub const MAX_ENCODED: usize = cobs::max_encoded_len(MAX_BODY + CRC_LEN);

/// Largest frame on the wire, both delimiters included. Size transmit buffers with this.
pub const MAX_FRAME: usize = MAX_ENCODED + 2;

/// Encodes one envelope as a complete wire frame into `out`, returning the number of bytes
/// written (at most [`MAX_FRAME`]).
pub fn encode<M: Serialize>(envelope: &Envelope<M>, out: &mut [u8]) -> Result<usize, Error> {
    let mut raw = [0u8; MAX_BODY + CRC_LEN];
    let used = postcard::to_slice(envelope, &mut raw[..MAX_BODY])
        .map_err(|_| Error::Serialize)?
        .len();
    let crc = CRC.checksum(&raw[..used]);
    raw[used..used + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let (first, rest) = out.split_first_mut().ok_or(Error::BufferFull)?;
    *first = 0;
    let n = cobs::encode(&raw[..used + CRC_LEN], rest).ok_or(Error::BufferFull)?;
    *rest.get_mut(n).ok_or(Error::BufferFull)? = 0;
    Ok(n + 2)
}

/// Encodes one envelope into a fixed-capacity vector (handy on the host and in tests).
pub fn encode_vec<M: Serialize>(
    envelope: &Envelope<M>,
) -> Result<heapless::Vec<u8, MAX_FRAME>, Error> {
    let mut buf = [0u8; MAX_FRAME];
    let n = encode(envelope, &mut buf)?;
    heapless::Vec::from_slice(&buf[..n]).map_err(|_| Error::BufferFull)
}

/// Decodes the bytes between two delimiters (COBS-encoded body and CRC) in place.
pub fn decode_frame<M: DeserializeOwned>(encoded: &mut [u8]) -> Result<Envelope<M>, Error> {
    let n = cobs::decode_in_place(encoded).ok_or(Error::Cobs)?;
    if n <= CRC_LEN {
        return Err(Error::Truncated);
    }
    let (body, trailer) = encoded[..n].split_at(n - CRC_LEN);
    let mut sent = [0u8; CRC_LEN];
    sent.copy_from_slice(trailer);
    if CRC.checksum(body) != u32::from_le_bytes(sent) {
        return Err(Error::Crc);
    }
    let (envelope, rest) =
        postcard::take_from_bytes::<Envelope<M>>(body).map_err(|_| Error::Deserialize)?;
    if !rest.is_empty() {
        return Err(Error::TrailingBytes);
    }
    Ok(envelope)
}

/// What [`FrameDecoder::feed`] found.
#[derive(Debug, PartialEq)]
pub enum Feed<'a, M> {
    /// All input was consumed without completing a frame (a partial frame may be buffered).
    Consumed,
    /// A frame decoded; `rest` is the input after its delimiter, to be fed next.
    Frame {
        /// The decoded envelope.
        envelope: Envelope<M>,
        /// Unread input.
        rest: &'a [u8],
    },
    /// A frame was dropped; decoding resumes at `rest`.
    Dropped {
        /// Why it was dropped.
        error: Error,
        /// Wire bytes thrown away (delimiter not counted).
        lost_bytes: usize,
        /// Unread input.
        rest: &'a [u8],
    },
}

/// Counters kept by a [`FrameDecoder`] since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DecoderStats {
    /// Frames decoded.
    pub frames: u32,
    /// Frames dropped for any reason.
    pub dropped: u32,
    /// Bytes thrown away with dropped frames.
    pub bytes_lost: u32,
    /// Of the dropped frames: longer than the buffer.
    pub overflow: u32,
    /// Of the dropped frames: bad COBS structure or shorter than a CRC.
    pub malformed: u32,
    /// Of the dropped frames: CRC mismatch.
    pub crc: u32,
    /// Of the dropped frames: CRC fine but not a message of this direction/version.
    pub undecodable: u32,
}

/// Streaming frame decoder with an `N`-byte frame buffer (default: the largest valid frame).
#[derive(Debug)]
pub struct FrameDecoder<const N: usize = MAX_ENCODED> {
    buf: [u8; N],
    len: usize,
    /// Bytes thrown away since the buffer overflowed; 0 when not overflowing.
    overflowed: usize,
    stats: DecoderStats,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            overflowed: 0,
            stats: DecoderStats {
                frames: 0,
                dropped: 0,
                bytes_lost: 0,
                overflow: 0,
                malformed: 0,
                crc: 0,
                undecodable: 0,
            },
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Bytes of an unfinished frame currently buffered.
    pub fn pending(&self) -> usize {
        self.len + self.overflowed
    }

    /// Forgets any unfinished frame (e.g. after the port was reopened) and returns how many
    /// bytes were thrown away. These are not counted as a dropped frame.
    pub fn reset(&mut self) -> usize {
        let lost = self.pending();
        self.len = 0;
        self.overflowed = 0;
        lost
    }

    /// Feeds bytes. Returns at the first complete frame or error, handing back the unread rest;
    /// call again with `rest` until [`Feed::Consumed`].
    pub fn feed<'a, M: DeserializeOwned>(&mut self, input: &'a [u8]) -> Feed<'a, M> {
        let mut input = input;
        loop {
            let Some(zero) = input.iter().position(|&b| b == 0) else {
                self.push(input);
                return Feed::Consumed;
            };
            self.push(&input[..zero]);
            input = &input[zero + 1..];
            if self.overflowed > 0 {
                let lost = self.overflowed;
                self.overflowed = 0;
                self.len = 0;
                self.stats.overflow = self.stats.overflow.saturating_add(1);
                return self.dropped(Error::Overflow, lost, input);
            }
            if self.len == 0 {
                // Idle or leading delimiter: nothing to decode.
                continue;
            }
            let n = self.len;
            self.len = 0;
            return match decode_frame::<M>(&mut self.buf[..n]) {
                Ok(envelope) => {
                    self.stats.frames = self.stats.frames.saturating_add(1);
                    Feed::Frame {
                        envelope,
                        rest: input,
                    }
                }
                Err(error) => {
                    let counter = match error {
                        Error::Crc => &mut self.stats.crc,
                        Error::Cobs | Error::Truncated => &mut self.stats.malformed,
                        _ => &mut self.stats.undecodable,
                    };
                    *counter = counter.saturating_add(1);
                    self.dropped(error, n, input)
                }
            };
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.overflowed > 0 {
            self.overflowed = self.overflowed.saturating_add(bytes.len());
        } else if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            self.overflowed = self.len.saturating_add(bytes.len());
            self.len = 0;
        }
    }

    fn dropped<'a, M>(&mut self, error: Error, lost: usize, rest: &'a [u8]) -> Feed<'a, M> {
        self.stats.dropped = self.stats.dropped.saturating_add(1);
        let lost32 = u32::try_from(lost).unwrap_or(u32::MAX);
        self.stats.bytes_lost = self.stats.bytes_lost.saturating_add(lost32);
        Feed::Dropped {
            error,
            lost_bytes: lost,
            rest,
        }
    }
}
