//! The wire format pinned in bytes (golden frames computed independently from WIRE.md), the
//! maximum frame size, the streaming decoder's recovery behaviour, and property tests over
//! arbitrary and corrupted input.

use cart_protocol::auth::{self, CartKey, ReplayGuard, Reply};
use cart_protocol::*;
use heapless::String;
use proptest::prelude::*;

fn s<const N: usize>(text: &str) -> String<N> {
    String::try_from(text).expect("fits")
}

/// Decodes a byte stream completely, returning frames and (error, lost bytes) in order.
fn decode_all<M: serde::de::DeserializeOwned>(
    dec: &mut FrameDecoder,
    mut input: &[u8],
) -> (Vec<Envelope<M>>, Vec<(Error, usize)>) {
    let mut frames = Vec::new();
    let mut errors = Vec::new();
    loop {
        match dec.feed::<M>(input) {
            Feed::Consumed => return (frames, errors),
            Feed::Frame { envelope, rest } => {
                frames.push(envelope);
                input = rest;
            }
            Feed::Dropped {
                error,
                lost_bytes,
                rest,
            } => {
                errors.push((error, lost_bytes));
                input = rest;
            }
        }
    }
}

// Golden frames. They were computed with an independent Python implementation of WIRE.md
// (varint postcard fields, CRC-32C, COBS), not by running this crate.
const PING_FRAME: [u8; 13] = [
    0x00, 0x0b, 0x01, 0x02, 0x84, 0x86, 0x88, 0x08, 0xdd, 0xd0, 0x22, 0x57, 0x00,
];
const BUTTON_FRAME: [u8; 13] = [
    0x00, 0x01, 0x03, 0x04, 0x01, 0x07, 0xe8, 0x07, 0x2e, 0x10, 0xab, 0x58, 0x00,
];
const PREDICTION_FRAME: [u8; 30] = [
    0x00, 0x08, 0xac, 0x02, 0x03, 0x07, 0xc0, 0x84, 0x3d, 0x05, 0x03, 0x41, 0x34, 0x43, 0x01, 0x04,
    0x40, 0x3f, 0x01, 0x01, 0x03, 0x5e, 0x42, 0x06, 0x01, 0x93, 0xce, 0x6f, 0x4e, 0x00,
];
const WITHHELD_FRAME: [u8; 24] = [
    0x00, 0x0b, 0x02, 0x03, 0x08, 0x05, 0x01, 0x04, 0x50, 0x4c, 0x41, 0x58, 0x01, 0x01, 0x02, 0x3f,
    0x02, 0x02, 0x05, 0x7f, 0x64, 0x0b, 0xc9, 0x00,
];

fn ping() -> Envelope<HostMsg> {
    Envelope {
        seq: 1,
        msg: HostMsg::Ping(Ping { nonce: 0x0102_0304 }),
    }
}

fn button() -> Envelope<McuMsg> {
    Envelope {
        seq: 0,
        msg: McuMsg::Button(ButtonEvent {
            button: Button::Record,
            action: ButtonAction::Press,
            at_ms: 1000,
        }),
    }
}

fn prediction() -> Envelope<HostMsg> {
    Envelope {
        seq: 300,
        msg: HostMsg::Prediction(Prediction {
            seq: 7,
            timestamp_us: 1_000_000,
            view_index: 0,
            view: s("A4C"),
            confidence: 0.75,
            ef_percent: Some(55.5),
            ef_status: EfStatus::Valid,
            synthetic: true,
        }),
    }
}

fn withheld() -> Envelope<HostMsg> {
    Envelope {
        seq: 2,
        msg: HostMsg::Prediction(Prediction {
            seq: 8,
            timestamp_us: 5,
            view_index: 1,
            view: s("PLAX"),
            confidence: 0.5,
            ef_percent: None,
            ef_status: EfStatus::WrongView,
            synthetic: false,
        }),
    }
}

#[test]
fn golden_frames_encode_exactly() {
    assert_eq!(encode_vec(&ping()).unwrap().as_slice(), &PING_FRAME);
    assert_eq!(encode_vec(&button()).unwrap().as_slice(), &BUTTON_FRAME);
    assert_eq!(
        encode_vec(&prediction()).unwrap().as_slice(),
        &PREDICTION_FRAME
    );
    assert_eq!(encode_vec(&withheld()).unwrap().as_slice(), &WITHHELD_FRAME);
}

#[test]
fn golden_frames_decode_exactly() {
    let mut dec: FrameDecoder = FrameDecoder::new();
    let mut stream = Vec::new();
    stream.extend_from_slice(&PING_FRAME);
    stream.extend_from_slice(&PREDICTION_FRAME);
    stream.extend_from_slice(&WITHHELD_FRAME);
    let (frames, errors) = decode_all::<HostMsg>(&mut dec, &stream);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(frames, vec![ping(), prediction(), withheld()]);
    let (frames, errors) = decode_all::<McuMsg>(&mut dec, &BUTTON_FRAME);
    assert!(errors.is_empty());
    assert_eq!(frames, vec![button()]);
}

#[test]
fn a_host_frame_is_not_an_mcu_frame() {
    // HostMsg variant 2 (Ping) decodes as McuMsg variant 2 (Heartbeat) only if the fields fit;
    // a Prediction (variant 3) must not silently become an McuMsg::Pong.
    let mut dec: FrameDecoder = FrameDecoder::new();
    let (frames, errors) = decode_all::<McuMsg>(&mut dec, &PREDICTION_FRAME);
    assert!(frames.is_empty());
    assert_eq!(errors.len(), 1);
    assert!(matches!(
        errors[0].0,
        Error::Deserialize | Error::TrailingBytes
    ));
}

/// The largest message of each direction, every bounded field full.
fn biggest() -> (Envelope<HostMsg>, Envelope<McuMsg>) {
    let host = Envelope {
        seq: u32::MAX,
        msg: HostMsg::Privileged(SignedCommand {
            counter: u64::MAX,
            command: PrivilegedCommand::SwitchModelSlot { slot: Slot::B },
            tag: [0xFF; 32],
        }),
    };
    let host_status = Envelope {
        seq: u32::MAX,
        msg: HostMsg::Status(RuntimeStatus {
            fps: 30.0,
            frames_dropped: u32::MAX,
            temperature_c: Some(71.5),
            model_id: s(&"m".repeat(messages::ID_LEN)),
            active_slot: Some(Slot::A),
        }),
    };
    let a = encode_vec(&host).unwrap().len();
    let b = encode_vec(&host_status).unwrap().len();
    let host = if a >= b { host } else { host_status };
    let mcu = Envelope {
        seq: u32::MAX,
        msg: McuMsg::HelloAck(
            HelloAck {
                version: PROTOCOL_VERSION,
                nonce: u32::MAX,
                cart_id: s(&"c".repeat(messages::ID_LEN)),
                firmware: s(&"f".repeat(messages::ID_LEN)),
                build_id: [0xFF; 8],
                last_counter: u64::MAX,
                active_slot: Some(Slot::B),
            },
            ReplyAuth {
                counter: u64::MAX,
                tag: [0xFF; 32],
            },
        ),
    };
    (host, mcu)
}

#[test]
fn maximum_frame_size_is_asserted() {
    // The bound every MCU buffer is sized with. Changing a message changes this number; update
    // WIRE.md ("Sizes") and the firmware's UART buffers together with it.
    assert_eq!(MAX_BODY, 125);
    assert_eq!(MAX_ENCODED, 130);
    assert_eq!(MAX_FRAME, 132);
    let (host, mcu) = biggest();
    let h = encode_vec(&host).unwrap();
    let m = encode_vec(&mcu).unwrap();
    assert!(h.len() <= MAX_FRAME);
    assert_eq!(
        m.len(),
        MAX_FRAME,
        "a full HelloAck is the largest frame: the bound is tight"
    );
    // A full log record of 0xFF bytes must fit too.
    let log = Envelope {
        seq: u32::MAX,
        msg: McuMsg::Log(LogRecord {
            level: LogLevel::Error,
            at_ms: u32::MAX,
            payload: LogPayload::Defmt(
                heapless::Vec::from_slice(&[0xFF; messages::LOG_PAYLOAD_LEN]).unwrap(),
            ),
        }),
    };
    assert!(encode_vec(&log).unwrap().len() <= MAX_FRAME);
    // A buffer one byte short is refused, not overrun.
    let mut short = [0u8; 12];
    assert_eq!(encode(&ping(), &mut short), Err(Error::BufferFull));
}

#[test]
fn garbage_before_a_frame_is_dropped_and_reported() {
    let mut dec: FrameDecoder = FrameDecoder::new();
    let mut stream = vec![0x13, 0x37, 0x42];
    stream.extend_from_slice(&PING_FRAME);
    let (frames, errors) = decode_all::<HostMsg>(&mut dec, &stream);
    assert_eq!(frames, vec![ping()]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].1, 3, "the three garbage bytes are reported lost");
    assert_eq!(dec.stats().frames, 1);
    assert_eq!(dec.stats().dropped, 1);
    assert_eq!(dec.stats().bytes_lost, 3);
}

#[test]
fn feed_returns_at_each_frame_with_the_rest() {
    let mut dec: FrameDecoder = FrameDecoder::new();
    let mut stream = Vec::new();
    stream.extend_from_slice(&PING_FRAME);
    stream.extend_from_slice(&WITHHELD_FRAME);
    match dec.feed::<HostMsg>(&stream) {
        Feed::Frame { envelope, rest } => {
            assert_eq!(envelope, ping());
            assert_eq!(rest, &WITHHELD_FRAME[..]);
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn byte_at_a_time_feeding_works() {
    let mut dec: FrameDecoder = FrameDecoder::new();
    let mut got = Vec::new();
    for b in PREDICTION_FRAME.iter().chain(BUTTON_FRAME.iter()) {
        match dec.feed::<HostMsg>(std::slice::from_ref(b)) {
            Feed::Frame { envelope, rest } => {
                assert!(rest.is_empty());
                got.push(envelope);
            }
            Feed::Consumed => {}
            Feed::Dropped { error, .. } => got.push(Envelope {
                seq: 999,
                msg: HostMsg::Ping(Ping {
                    nonce: error as u32,
                }),
            }),
        }
    }
    // The button frame is an McuMsg, so as a HostMsg it is dropped (the 999 marker).
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], prediction());
    assert_eq!(got[1].seq, 999);
}

#[test]
fn overlong_input_overflows_then_resyncs() {
    let mut dec: FrameDecoder<32> = FrameDecoder::new();
    let mut stream = vec![0x55; 100];
    stream.extend_from_slice(&PING_FRAME);
    let mut input = &stream[..];
    let mut seen = Vec::new();
    loop {
        match dec.feed::<HostMsg>(input) {
            Feed::Consumed => break,
            Feed::Frame { envelope, rest } => {
                seen.push(format!("frame {}", envelope.seq));
                input = rest;
            }
            Feed::Dropped {
                error,
                lost_bytes,
                rest,
            } => {
                seen.push(format!("{error:?} {lost_bytes}"));
                input = rest;
            }
        }
    }
    assert_eq!(seen, vec!["Overflow 100", "frame 1"]);
    assert_eq!(dec.stats().overflow, 1);
}

#[test]
fn corrupted_byte_is_a_crc_error_and_next_frame_survives() {
    for i in 1..PREDICTION_FRAME.len() - 1 {
        let mut bad = PREDICTION_FRAME;
        bad[i] ^= 0x10;
        let mut stream = bad.to_vec();
        stream.extend_from_slice(&PING_FRAME);
        let mut dec: FrameDecoder = FrameDecoder::new();
        let (frames, errors) = decode_all::<HostMsg>(&mut dec, &stream);
        assert_eq!(frames, vec![ping()], "flip at byte {i}");
        assert!(!errors.is_empty());
    }
}

#[test]
fn reset_forgets_a_partial_frame() {
    let mut dec: FrameDecoder = FrameDecoder::new();
    assert_eq!(
        dec.feed::<HostMsg>(&PING_FRAME[..6]),
        Feed::Consumed::<HostMsg>
    );
    assert_eq!(dec.pending(), 5);
    assert_eq!(dec.reset(), 5);
    let (frames, _) = decode_all::<HostMsg>(&mut dec, &PING_FRAME);
    assert_eq!(frames, vec![ping()]);
}

#[test]
fn hmac_tag_matches_independent_computation() {
    // Python: hmac.new(bytes(range(32)), DOMAIN + (5).to_bytes(8,'little') + b'\x00\x01', sha256)
    let key = CartKey::new(core::array::from_fn(|i| i as u8));
    let signed = auth::sign(
        &key,
        5,
        PrivilegedCommand::SwitchModelSlot { slot: Slot::B },
    )
    .unwrap();
    let expected = "0df846fa3162a695d555273d9964c13a662b51c46b22804dfc2ed4b111884d0c";
    let hex: std::string::String = signed.tag.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, expected);
    assert_eq!(auth::verify(&key, &signed), Ok(()));
}

#[test]
fn privileged_commands_refuse_forgery_and_replay() {
    let key = CartKey::new([7; 32]);
    let other = CartKey::new([8; 32]);
    let mut guard = ReplayGuard::new(10);
    let stale = auth::sign(&key, 10, PrivilegedCommand::Reboot).unwrap();
    assert_eq!(guard.accept(&key, &stale), Err(Error::Replayed));
    let good = auth::sign(&key, 11, PrivilegedCommand::Reboot).unwrap();
    assert_eq!(guard.accept(&key, &good), Ok(PrivilegedCommand::Reboot));
    assert_eq!(guard.accept(&key, &good), Err(Error::Replayed), "replay");
    let foreign = auth::sign(&other, 50, PrivilegedCommand::Reboot).unwrap();
    assert_eq!(guard.accept(&key, &foreign), Err(Error::BadTag));
    let mut altered = auth::sign(&key, 12, PrivilegedCommand::Reboot).unwrap();
    altered.command = PrivilegedCommand::SwitchModelSlot { slot: Slot::A };
    assert_eq!(guard.accept(&key, &altered), Err(Error::BadTag));
    let mut bumped = auth::sign(&key, 12, PrivilegedCommand::Reboot).unwrap();
    bumped.counter = 1_000;
    assert_eq!(guard.accept(&key, &bumped), Err(Error::BadTag));
    assert_eq!(
        guard.last_accepted(),
        11,
        "failed checks do not move the counter"
    );
}

// Protocol 2 reply authentication, computed by tests/golden_replies.py (Python's hmac/hashlib
// and a hand-written CRC-32C and COBS), not by this crate.
const GOLDEN_COMMAND_TAG: &str = "0df846fa3162a695d555273d9964c13a662b51c46b22804dfc2ed4b111884d0c";
const GOLDEN_NONCE: u32 = 0x0102_0304;
const RESULT_TAG: &str = "9758d58022ad07c18859078a60d725b8b322e72385b1eab49926dfc2e4b6ad96";
const RESULT_FRAME: [u8; 44] = [
    0x00, 0x04, 0x03, 0x08, 0x05, 0x26, 0x07, 0x97, 0x58, 0xd5, 0x80, 0x22, 0xad, 0x07, 0xc1, 0x88,
    0x59, 0x07, 0x8a, 0x60, 0xd7, 0x25, 0xb8, 0xb3, 0x22, 0xe7, 0x23, 0x85, 0xb1, 0xea, 0xb4, 0x99,
    0x26, 0xdf, 0xc2, 0xe4, 0xb6, 0xad, 0x96, 0xc1, 0xc9, 0x47, 0xd7, 0x00,
];
const ACK_TAG: &str = "c1d5fc74338c14b558b8ff604a141cd8c3cc248b534bd29f1447f15eef22cfc4";
const ACK_FRAME: [u8; 73] = [
    0x00, 0x01, 0x01, 0x02, 0x02, 0x1e, 0x84, 0x86, 0x88, 0x08, 0x06, 0x63, 0x61, 0x72, 0x74, 0x2d,
    0x31, 0x06, 0x66, 0x77, 0x2d, 0x32, 0x2e, 0x30, 0x42, 0x55, 0x49, 0x4c, 0x44, 0x30, 0x30, 0x31,
    0x29, 0x01, 0x01, 0x25, 0xc1, 0xd5, 0xfc, 0x74, 0x33, 0x8c, 0x14, 0xb5, 0x58, 0xb8, 0xff, 0x60,
    0x4a, 0x14, 0x1c, 0xd8, 0xc3, 0xcc, 0x24, 0x8b, 0x53, 0x4b, 0xd2, 0x9f, 0x14, 0x47, 0xf1, 0x5e,
    0xef, 0x22, 0xcf, 0xc4, 0x2a, 0x45, 0xe5, 0x71, 0x00,
];
const STATUS_TAG: &str = "33d38e2f38f3ab03c49a4e3bf3195d9775a2ae802e314e8190a4d000d9979b7e";

fn hex(bytes: &[u8]) -> std::string::String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn golden_key() -> CartKey {
    CartKey::new(core::array::from_fn(|i| i as u8))
}

fn golden_command_tag() -> [u8; 32] {
    auth::sign(
        &golden_key(),
        5,
        PrivilegedCommand::SwitchModelSlot { slot: Slot::B },
    )
    .unwrap()
    .tag
}

fn golden_result() -> CommandResult {
    CommandResult {
        counter: 5,
        outcome: CommandOutcome::Accepted,
    }
}

fn golden_ack() -> HelloAck {
    HelloAck {
        version: PROTOCOL_VERSION,
        nonce: GOLDEN_NONCE,
        cart_id: s("cart-1"),
        firmware: s("fw-2.0"),
        build_id: *b"BUILD001",
        last_counter: 41,
        active_slot: Some(Slot::B),
    }
}

fn golden_status() -> McuStatus {
    McuStatus {
        uptime_ms: 1000,
        boot_count: 3,
        power: PowerSource::Mains,
        temperature_c: None,
        active_slot: Some(Slot::A),
        last_counter: 41,
        rx_dropped: 0,
        host_watchdog_trips: 0,
    }
}

#[test]
fn reply_tags_and_frames_match_independent_computation() {
    let key = golden_key();
    let request_tag = golden_command_tag();
    assert_eq!(hex(&request_tag), GOLDEN_COMMAND_TAG);
    let result = golden_result();
    let reply = Reply::CommandResult {
        result: &result,
        request_tag: &request_tag,
    };
    let auth = auth::sign_reply(&key, GOLDEN_NONCE, 7, &reply).unwrap();
    assert_eq!((auth.counter, hex(&auth.tag)), (7, RESULT_TAG.into()));
    let env = Envelope {
        seq: 3,
        msg: McuMsg::CommandResult(result, auth),
    };
    assert_eq!(encode_vec(&env).unwrap().as_slice(), &RESULT_FRAME);
    let mut dec: FrameDecoder = FrameDecoder::new();
    let (frames, errors) = decode_all::<McuMsg>(&mut dec, &RESULT_FRAME);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(frames, vec![env]);

    let ack = golden_ack();
    let mut signer = ReplySigner::new(GOLDEN_NONCE);
    let auth = signer.sign(&key, &Reply::HelloAck(&ack)).unwrap();
    assert_eq!((auth.counter, hex(&auth.tag)), (0, ACK_TAG.into()));
    let env = Envelope {
        seq: 0,
        msg: McuMsg::HelloAck(ack, auth),
    };
    assert_eq!(encode_vec(&env).unwrap().as_slice(), &ACK_FRAME);

    let status = golden_status();
    let auth = signer.sign(&key, &Reply::Status(&status)).unwrap();
    assert_eq!((auth.counter, hex(&auth.tag)), (1, STATUS_TAG.into()));
}

#[test]
fn replies_refuse_forgery_replay_and_rebinding() {
    let key = golden_key();
    let other = CartKey::new([8; 32]);
    let ack = golden_ack();
    let status = golden_status();
    let mut signer = ReplySigner::new(GOLDEN_NONCE);
    let ack_auth = signer.sign(&key, &Reply::HelloAck(&ack)).unwrap();
    let st_auth = signer.sign(&key, &Reply::Status(&status)).unwrap();

    let mut v = ReplyVerifier::new(GOLDEN_NONCE);
    // Forged: altered content, wrong key, another session's nonce, a tag for another kind.
    let mut lying = ack.clone();
    lying.last_counter = u64::MAX - 1;
    assert_eq!(
        v.accept(&key, &Reply::HelloAck(&lying), &ack_auth),
        Err(Error::BadTag)
    );
    let foreign = ReplySigner::new(GOLDEN_NONCE)
        .sign(&other, &Reply::HelloAck(&ack))
        .unwrap();
    assert_eq!(
        v.accept(&key, &Reply::HelloAck(&ack), &foreign),
        Err(Error::BadTag)
    );
    assert_eq!(
        ReplyVerifier::new(GOLDEN_NONCE ^ 1).accept(&key, &Reply::HelloAck(&ack), &ack_auth),
        Err(Error::BadTag),
        "a reply recorded in another session does not verify"
    );
    assert_eq!(v.last_accepted(), None, "failed checks change nothing");
    assert_eq!(v.accept(&key, &Reply::HelloAck(&ack), &ack_auth), Ok(()));
    assert_eq!(v.accept(&key, &Reply::Status(&status), &st_auth), Ok(()));
    assert_eq!(
        v.accept(&key, &Reply::Status(&status), &st_auth),
        Err(Error::Replayed),
        "the same status again is a replay"
    );
    assert_eq!(
        v.accept(&key, &Reply::HelloAck(&ack), &ack_auth),
        Err(Error::Replayed)
    );

    // A command result is bound to the command it answers.
    let tag_a = golden_command_tag();
    let tag_b = auth::sign(&key, 6, PrivilegedCommand::Reboot).unwrap().tag;
    let result = golden_result();
    let for_a = signer
        .sign(
            &key,
            &Reply::CommandResult {
                result: &result,
                request_tag: &tag_a,
            },
        )
        .unwrap();
    let as_b = Reply::CommandResult {
        result: &result,
        request_tag: &tag_b,
    };
    assert_eq!(v.accept(&key, &as_b, &for_a), Err(Error::BadTag));
    let mut failed = result;
    failed.outcome = CommandOutcome::Failed;
    let altered = Reply::CommandResult {
        result: &failed,
        request_tag: &tag_a,
    };
    assert_eq!(v.accept(&key, &altered, &for_a), Err(Error::BadTag));
    let genuine = Reply::CommandResult {
        result: &result,
        request_tag: &tag_a,
    };
    assert_eq!(v.accept(&key, &genuine, &for_a), Ok(()));
    assert_eq!(v.last_accepted(), Some(2));
}

#[test]
fn counters_stop_at_the_top_instead_of_wrapping() {
    assert_eq!(auth::next_counter(0), Ok(1));
    assert_eq!(auth::next_counter(u64::MAX - 1), Ok(u64::MAX));
    assert_eq!(auth::next_counter(u64::MAX), Err(Error::CounterExhausted));
    // An MCU at the top refuses everything as a replay (it cannot be moved past it).
    let key = CartKey::new([7; 32]);
    let mut guard = ReplayGuard::new(u64::MAX);
    let top = auth::sign(&key, u64::MAX, PrivilegedCommand::Reboot).unwrap();
    assert_eq!(guard.accept(&key, &top), Err(Error::Replayed));
    // The MCU's reply counter: the last value is usable, then the signer refuses.
    let status = golden_status();
    let mut v = ReplyVerifier::new(1);
    let near_top = auth::sign_reply(&key, 1, u64::MAX - 1, &Reply::Status(&status)).unwrap();
    assert_eq!(v.accept(&key, &Reply::Status(&status), &near_top), Ok(()));
    let top = auth::sign_reply(&key, 1, u64::MAX, &Reply::Status(&status)).unwrap();
    assert_eq!(v.accept(&key, &Reply::Status(&status), &top), Ok(()));
    assert_eq!(
        v.accept(&key, &Reply::Status(&status), &top),
        Err(Error::Replayed)
    );
}

#[test]
fn seq_tracker_counts_gaps_and_flags_duplicates() {
    let mut t = SeqTracker::new();
    assert_eq!(t.observe(5), SeqCheck::First);
    assert_eq!(t.observe(6), SeqCheck::InOrder);
    assert_eq!(t.observe(9), SeqCheck::Gap { missing: 2 });
    assert_eq!(t.observe(9), SeqCheck::Stale);
    assert_eq!(t.observe(3), SeqCheck::Stale);
    assert_eq!(t.observe(10), SeqCheck::InOrder);
    assert_eq!((t.lost(), t.stale()), (2, 2));
    let mut w = SeqTracker::new();
    w.observe(u32::MAX);
    assert_eq!(w.observe(0), SeqCheck::InOrder, "wraps");
    t.reset();
    assert_eq!(t.observe(0), SeqCheck::First);
}

#[test]
fn liveness_on_a_test_clock() {
    let mut l = Liveness::new(200, 1000, 0);
    assert!(l.heartbeat_due(0));
    l.sent(0);
    assert!(!l.heartbeat_due(199));
    assert!(l.heartbeat_due(200));
    assert_eq!(l.next_deadline_in(50), 150);
    assert!(!l.peer_lost(1000));
    assert!(l.peer_lost(1001));
    l.heard(900);
    assert!(!l.peer_lost(1500));
    assert_eq!(l.silence_ms(1500), 600);
}

fn arb_host_msg() -> impl Strategy<Value = Envelope<HostMsg>> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<f32>(),
        "[A-Z0-9]{0,12}",
        0u8..4,
    )
        .prop_map(|(seq, a, b, f, label, kind)| {
            let msg = match kind {
                0 => HostMsg::Ping(Ping { nonce: a }),
                1 => HostMsg::Heartbeat(Heartbeat {
                    uptime_ms: a,
                    rx_dropped: seq,
                }),
                2 => HostMsg::Prediction(Prediction {
                    seq: a,
                    timestamp_us: b,
                    view_index: (a % 7) as u8,
                    view: s(&label),
                    confidence: f,
                    ef_percent: Some(f),
                    ef_status: EfStatus::Valid,
                    synthetic: a % 2 == 0,
                }),
                _ => HostMsg::Display(DisplayCommand::Text {
                    line: (a % 4) as u8,
                    text: s(&label),
                }),
            };
            Envelope { seq, msg }
        })
}

/// Compares messages bitwise where floats are concerned (NaN != NaN under PartialEq).
fn same(a: &Envelope<HostMsg>, b: &Envelope<HostMsg>) -> bool {
    encode_vec(a).unwrap() == encode_vec(b).unwrap()
}

proptest! {
    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
    ) {
        let mut dec: FrameDecoder = FrameDecoder::new();
        let mut total_lost = 0usize;
        for piece in bytes.chunks(chunk) {
            let mut input = piece;
            loop {
                match dec.feed::<HostMsg>(input) {
                    Feed::Consumed => break,
                    Feed::Frame { rest, .. } => input = rest,
                    Feed::Dropped { lost_bytes, rest, .. } => {
                        total_lost += lost_bytes;
                        input = rest;
                    }
                }
            }
        }
        let nonzero = bytes.iter().filter(|&&b| b != 0).count();
        prop_assert!(total_lost + dec.pending() <= nonzero);
        // Whatever came before, a valid frame afterwards is decoded: the decoder resyncs.
        let (frames, _) = decode_all::<HostMsg>(&mut dec, &PING_FRAME);
        prop_assert_eq!(frames, vec![ping()]);
    }

    #[test]
    fn messages_roundtrip(msgs in proptest::collection::vec(arb_host_msg(), 1..20)) {
        let mut stream = Vec::new();
        for m in &msgs {
            let f = encode_vec(m).unwrap();
            prop_assert!(f.len() <= MAX_FRAME);
            stream.extend_from_slice(&f);
        }
        let mut dec: FrameDecoder = FrameDecoder::new();
        let (frames, errors) = decode_all::<HostMsg>(&mut dec, &stream);
        prop_assert!(errors.is_empty());
        prop_assert_eq!(frames.len(), msgs.len());
        for (a, b) in frames.iter().zip(&msgs) {
            prop_assert!(same(a, b));
        }
    }

    #[test]
    fn corruption_never_yields_a_wrong_frame(
        msgs in proptest::collection::vec(arb_host_msg(), 1..20),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..8),
    ) {
        let mut stream = Vec::new();
        let mut spans = Vec::new();
        for m in &msgs {
            let f = encode_vec(m).unwrap();
            spans.push(stream.len()..stream.len() + f.len());
            stream.extend_from_slice(&f);
        }
        let mut touched = vec![false; msgs.len()];
        for (at, x) in &flips {
            let i = at % stream.len();
            stream[i] ^= x;
            for (k, span) in spans.iter().enumerate() {
                if span.contains(&i) {
                    touched[k] = true;
                }
            }
        }
        let mut dec: FrameDecoder = FrameDecoder::new();
        let (frames, _) = decode_all::<HostMsg>(&mut dec, &stream);
        // Every untouched frame comes through, in order, and nothing else does.
        let expected: Vec<_> = msgs.iter().zip(&touched).filter(|(_, t)| !**t).map(|(m, _)| m).collect();
        prop_assert_eq!(frames.len(), expected.len());
        for (a, b) in frames.iter().zip(expected) {
            prop_assert!(same(a, b));
        }
    }
}
