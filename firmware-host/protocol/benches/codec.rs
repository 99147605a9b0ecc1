//! Encode/decode cost of one prediction frame, side by side with postcard's own COBS framing
//! (`to_slice_cobs` + `CobsAccumulator`, no CRC) as the reference, in one run.
//!
//! `cargo bench -p cart-protocol --bench codec`

use std::hint::black_box;
use std::time::Instant;

use cart_protocol::{
    EfStatus, Envelope, Feed, FrameDecoder, HostMsg, MAX_FRAME, Prediction, encode,
};
use postcard::accumulator::{CobsAccumulator, FeedResult};

fn prediction(i: u32) -> Envelope<HostMsg> {
    Envelope {
        seq: i,
        msg: HostMsg::Prediction(Prediction {
            seq: i,
            timestamp_us: u64::from(i) * 33_333,
            view_index: 0,
            view: heapless::String::try_from("A4C").unwrap(),
            confidence: 0.93,
            ef_percent: Some(57.5),
            ef_status: EfStatus::Valid,
            synthetic: true,
        }),
    }
}

/// Median ns per iteration over `rounds` rounds of `n` iterations.
fn measure(rounds: usize, n: u32, mut f: impl FnMut(u32)) -> f64 {
    let mut per = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for i in 0..n {
            f(i);
        }
        per.push(t.elapsed().as_nanos() as f64 / f64::from(n));
    }
    per.sort_by(f64::total_cmp);
    per[rounds / 2]
}

fn main() {
    const N: u32 = 20_000;
    const ROUNDS: usize = 15;
    let msgs: Vec<_> = (0..1024).map(prediction).collect();
    let mut buf = [0u8; MAX_FRAME];

    let ours_enc = measure(ROUNDS, N, |i| {
        let n = encode(&msgs[i as usize % 1024], &mut buf).unwrap();
        black_box(&buf[..n]);
    });
    let ref_enc = measure(ROUNDS, N, |i| {
        let out = postcard::to_slice_cobs(&msgs[i as usize % 1024], &mut buf).unwrap();
        black_box(out);
    });

    // Streams of 1024 frames, decoded in 64-byte reads like a UART driver would hand them over.
    let mut ours_stream = Vec::new();
    let mut ref_stream = Vec::new();
    for m in &msgs {
        let n = encode(m, &mut buf).unwrap();
        ours_stream.extend_from_slice(&buf[..n]);
        ref_stream.extend_from_slice(postcard::to_slice_cobs(m, &mut buf).unwrap());
    }
    let ours_dec = measure(ROUNDS, 20, |_| {
        let mut dec: FrameDecoder = FrameDecoder::new();
        let mut got = 0;
        for chunk in ours_stream.chunks(64) {
            let mut input = chunk;
            loop {
                match dec.feed::<HostMsg>(input) {
                    Feed::Consumed => break,
                    Feed::Frame { envelope, rest } => {
                        black_box(envelope);
                        got += 1;
                        input = rest;
                    }
                    Feed::Dropped { rest, .. } => input = rest,
                }
            }
        }
        assert_eq!(got, 1024);
    }) / 1024.0;
    let ref_dec = measure(ROUNDS, 20, |_| {
        let mut acc = CobsAccumulator::<{ MAX_FRAME }>::new();
        let mut got = 0;
        for chunk in ref_stream.chunks(64) {
            let mut input = chunk;
            while !input.is_empty() {
                input = match acc.feed::<Envelope<HostMsg>>(input) {
                    FeedResult::Consumed => break,
                    FeedResult::OverFull(r) | FeedResult::DeserError(r) => r,
                    FeedResult::Success { data, remaining } => {
                        black_box(data);
                        got += 1;
                        remaining
                    }
                };
            }
        }
        assert_eq!(got, 1024);
    }) / 1024.0;
    let n = encode(&msgs[0], &mut buf).unwrap();
    println!(
        "prediction frame: {n} bytes on the wire (postcard COBS alone: {})",
        postcard::to_slice_cobs(&msgs[0], &mut [0u8; MAX_FRAME])
            .unwrap()
            .len()
    );
    println!("| step | cart-protocol (COBS + CRC-32C) | postcard COBS, no CRC | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| encode | {ours_enc:.0} ns | {ref_enc:.0} ns | {:.2} |",
        ours_enc / ref_enc
    );
    println!(
        "| decode (64-byte reads) | {ours_dec:.0} ns | {ref_dec:.0} ns | {:.2} |",
        ours_dec / ref_dec
    );
}
