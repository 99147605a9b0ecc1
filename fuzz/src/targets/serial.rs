//! The serial link's frame decoder: COBS framing, CRC-32C and postcard messages, fed in chunks
//! the way the host's reader thread (`firmware-host/src/link.rs`) and the MCU feed it.
//!
//! The first byte sets the chunk size (1 to 256 bytes); the rest is the byte stream. Both
//! directions are decoded: `McuMsg` (what the host reads) and `HostMsg` (what the MCU reads).
//! Every decoded envelope must encode again and decode back to the same bytes, and the decoder's
//! counters must agree with what it returned.

use cart_protocol::frame::{decode_frame, encode_vec};
use cart_protocol::{Envelope, Feed, FrameDecoder, HostMsg, McuMsg};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) static DICT: &[&[u8]] = &[
    b"\0",
    b"\0\0",
    b"\x01",
    b"\xff",
    b"\xff\xff\xff\xff\x0f",
    b"\x80\x80\x80\x80\x10",
];

fn decode_stream<M>(chunk: usize, stream: &[u8]) -> (u32, u32)
where
    M: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let (mut frames, mut dropped) = (0u32, 0u32);
    for piece in stream.chunks(chunk) {
        let mut input = piece;
        loop {
            let before = input.len();
            match decoder.feed::<M>(input) {
                Feed::Consumed => break,
                Feed::Frame { envelope, rest } => {
                    frames += 1;
                    roundtrip(&envelope);
                    input = rest;
                }
                Feed::Dropped { rest, .. } => {
                    dropped += 1;
                    input = rest;
                }
            }
            assert!(
                input.len() < before,
                "feed returned without consuming input"
            );
        }
    }
    let stats = decoder.stats();
    assert_eq!(stats.frames, frames, "stats.frames disagrees");
    assert_eq!(stats.dropped, dropped, "stats.dropped disagrees");
    (frames, dropped)
}

fn roundtrip<M>(envelope: &Envelope<M>)
where
    M: DeserializeOwned + Serialize + std::fmt::Debug,
{
    let encoded = match encode_vec(envelope) {
        Ok(e) => e,
        Err(e) => panic!("a decoded envelope does not encode again: {e:?}: {envelope:?}"),
    };
    // `encoded` is delimiter, COBS body, delimiter.
    let mut inner = encoded.to_vec();
    let body = inner
        .get_mut(1..encoded.len().saturating_sub(1))
        .unwrap_or_default();
    match decode_frame::<M>(body) {
        // Compared as bytes: a float field may be NaN, which is not equal to itself.
        Ok(again) => match encode_vec(&again) {
            Ok(twice) => assert_eq!(twice, encoded, "re-encoded envelope decodes differently"),
            Err(e) => panic!("a decoded envelope does not encode again: {e:?}: {again:?}"),
        },
        Err(e) => panic!("a re-encoded envelope does not decode: {e:?}: {envelope:?}"),
    }
}

pub(crate) fn serial(data: &[u8]) -> String {
    let Some((&c, stream)) = data.split_first() else {
        return "empty".into();
    };
    let chunk = c as usize + 1;
    let (mf, md) = decode_stream::<McuMsg>(chunk, stream);
    let (hf, hd) = decode_stream::<HostMsg>(chunk, stream);
    // Frame counts are feedback enough; cap them so the outcome set stays small.
    format!(
        "mcu {}/{} host {}/{}",
        mf.min(3),
        md.min(3),
        hf.min(3),
        hd.min(3)
    )
}
