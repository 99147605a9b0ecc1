//! Authentication of the link in both directions, attacked from the MCU's side of a real
//! pseudo-terminal: a scripted peer answers the host's frames with whatever the test wants
//! (forged, altered, replayed or genuine replies), and the tests check what the host accepts.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cart_protocol::auth::{self, CartKey, Reply, ReplySigner};
use cart_protocol::{
    BootInfo, CommandOutcome, CommandResult, Envelope, Feed, FrameDecoder, HelloAck, HostMsg,
    McuMsg, McuStatus, PROTOCOL_VERSION, PowerSource, PrivilegedCommand, ReplayGuard, ReplyAuth,
    ResetCause, SignedCommand, Slot,
};
use firmware_host::link::{
    DownReason, HostLink, LinkConfig, LinkError, LinkEvent, LinkState, ReplyKind, ReplyProblem,
};
use serialport::{SerialPort, TTYPort};

use crate::support::{DEADLINE, fast_config, wait_for};

const KEY: [u8; 32] = [0x42; 32];

/// The MCU end of a pty, driven by the test.
struct Peer {
    master: TTYPort,
    // Held open so the master never sees a hang-up while the host reopens the slave.
    _slave: TTYPort,
    path: PathBuf,
    decoder: FrameDecoder,
    /// Frames read but not asked for yet.
    queued: VecDeque<HostMsg>,
    key: CartKey,
    tx_seq: u32,
    /// Nonce of the latest `Hello` and the signer for its session.
    signer: Option<ReplySigner>,
    guard: ReplayGuard,
}

impl Peer {
    fn new() -> Peer {
        let (mut master, slave) = TTYPort::pair().expect("pty available");
        master
            .set_timeout(Duration::from_millis(20))
            .expect("pty timeout");
        let path = PathBuf::from(slave.name().expect("pty slave name"));
        Peer {
            master,
            _slave: slave,
            path,
            decoder: FrameDecoder::new(),
            queued: VecDeque::new(),
            key: CartKey::new(KEY),
            tx_seq: 0,
            signer: None,
            guard: ReplayGuard::new(0),
        }
    }

    /// A host link to this peer with the given key; slow handshake retries so a `Hello` is
    /// answered before the next one replaces it, and a long watchdog (the peer sends no
    /// heartbeats).
    fn config(&self, key: Option<CartKey>) -> LinkConfig {
        let mut c = fast_config(&self.path);
        c.cart_key = key;
        c.handshake_retry = Duration::from_secs(5);
        c.reopen_after = Duration::from_secs(60);
        c.watchdog_timeout = Duration::from_secs(30);
        c.heartbeat_interval = Duration::from_secs(10);
        c
    }

    /// Reads host frames until `pred` matches one (heartbeats and others are skipped).
    fn recv(&mut self, mut pred: impl FnMut(&HostMsg) -> bool) -> HostMsg {
        let end = Instant::now() + DEADLINE;
        let mut buf = [0u8; 256];
        let mut seen = Vec::new();
        while let Some(m) = self.queued.pop_front() {
            if pred(&m) {
                return m;
            }
            seen.push(m);
        }
        while Instant::now() < end {
            let n = match std::io::Read::read(&mut self.master, &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(e) => panic!("pty read: {e}"),
            };
            let mut input = &buf[..n];
            let mut found = None;
            loop {
                match self.decoder.feed::<HostMsg>(input) {
                    Feed::Consumed => break,
                    Feed::Frame { envelope, rest } => {
                        input = rest;
                        if let HostMsg::Hello(h) = &envelope.msg {
                            self.signer = Some(ReplySigner::new(h.nonce));
                        }
                        if found.is_some() {
                            self.queued.push_back(envelope.msg);
                        } else if pred(&envelope.msg) {
                            found = Some(envelope.msg);
                        } else {
                            seen.push(envelope.msg);
                        }
                    }
                    Feed::Dropped { rest, .. } => input = rest,
                }
            }
            if let Some(m) = found {
                return m;
            }
        }
        panic!("the host did not send the expected frame; it sent {seen:?}");
    }

    fn hello_nonce(&mut self) -> u32 {
        match self.recv(|m| matches!(m, HostMsg::Hello(_))) {
            HostMsg::Hello(h) => h.nonce,
            _ => unreachable!(),
        }
    }

    fn privileged(&mut self) -> SignedCommand {
        match self.recv(|m| matches!(m, HostMsg::Privileged(_))) {
            HostMsg::Privileged(s) => s,
            _ => unreachable!(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self.master, bytes).expect("pty write");
    }

    fn send(&mut self, msg: McuMsg) {
        let env = Envelope {
            seq: self.tx_seq,
            msg,
        };
        self.tx_seq += 1;
        let frame = cart_protocol::encode_vec(&env).expect("encodes");
        self.write(&frame);
    }

    fn sign(&mut self, reply: &Reply<'_>) -> ReplyAuth {
        self.signer
            .as_mut()
            .expect("a Hello was seen")
            .sign(&self.key, reply)
            .expect("signs")
    }

    fn ack(nonce: u32, last_counter: u64) -> HelloAck {
        HelloAck {
            version: PROTOCOL_VERSION,
            nonce,
            cart_id: heapless::String::try_from("scripted-cart").unwrap(),
            firmware: heapless::String::try_from("script-2.0").unwrap(),
            build_id: *b"SCRIPTED",
            last_counter,
            active_slot: Some(Slot::A),
        }
    }

    /// Answers the latest `Hello` genuinely, claiming `last_counter`.
    fn genuine_ack(&mut self, nonce: u32, last_counter: u64) {
        let ack = Self::ack(nonce, last_counter);
        let auth = self.sign(&Reply::HelloAck(&ack));
        self.send(McuMsg::HelloAck(ack, auth));
    }

    /// Checks a command like the firmware would and answers it genuinely with `outcome`
    /// (`None`: the outcome the replay guard decides).
    fn answer(&mut self, cmd: &SignedCommand, outcome: Option<CommandOutcome>) -> McuMsg {
        let checked = match self.guard.accept(&self.key, cmd) {
            Ok(_) => CommandOutcome::Accepted,
            Err(cart_protocol::Error::Replayed) => CommandOutcome::Replayed,
            Err(_) => CommandOutcome::BadTag,
        };
        let result = CommandResult {
            counter: cmd.counter,
            outcome: outcome.unwrap_or(checked),
        };
        let auth = self.sign(&Reply::CommandResult {
            result: &result,
            request_tag: &cmd.tag,
        });
        let msg = McuMsg::CommandResult(result, auth);
        self.send(msg.clone());
        msg
    }
}

fn status(last_counter: u64) -> McuStatus {
    McuStatus {
        uptime_ms: 1234,
        boot_count: 7,
        power: PowerSource::Mains,
        temperature_c: Some(30.0),
        active_slot: Some(Slot::A),
        last_counter,
        rx_dropped: 0,
        host_watchdog_trips: 0,
    }
}

fn next_result(link: &HostLink) -> (CommandResult, Vec<LinkEvent>) {
    let (r, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::CommandResult { .. })
    });
    match r {
        Some(LinkEvent::CommandResult { result, .. }) => (result, seen),
        _ => panic!("no command result; saw {seen:?}"),
    }
}

fn rejections(events: &[LinkEvent]) -> Vec<(ReplyKind, ReplyProblem)> {
    events
        .iter()
        .filter_map(|e| match e {
            LinkEvent::ReplyRejected { kind, problem } => Some((*kind, *problem)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_hostile_hello_ack_is_not_adopted_and_the_host_is_not_locked_out() {
    let mut peer = Peer::new();
    let link = HostLink::spawn(peer.config(Some(CartKey::new(KEY)))).unwrap();
    let nonce = peer.hello_nonce();

    // An attacker on the wire answers with a counter two below the top: once without a tag,
    // once with the tag of a genuine answer that claimed a different counter.
    let lie = Peer::ack(nonce, u64::MAX - 1);
    peer.send(McuMsg::HelloAck(
        lie.clone(),
        ReplyAuth {
            counter: 0,
            tag: [0; 32],
        },
    ));
    let honest_tag =
        auth::sign_reply(&peer.key, nonce, 0, &Reply::HelloAck(&Peer::ack(nonce, 3))).unwrap();
    peer.send(McuMsg::HelloAck(lie, honest_tag));
    let (down, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::Down(DownReason::HandshakeAuthFailed { .. }))
    });
    assert!(down.is_some(), "no auth failure reported; saw {seen:?}");
    let (second, seen2) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::ReplyRejected { .. })
    });
    assert!(
        second.is_some(),
        "second forgery not rejected; saw {seen2:?}"
    );
    let mut all = seen;
    all.extend(second);
    assert_eq!(
        rejections(&all),
        vec![
            (ReplyKind::HelloAck, ReplyProblem::BadTag),
            (ReplyKind::HelloAck, ReplyProblem::BadTag)
        ]
    );
    assert_ne!(
        link.state(),
        LinkState::Up,
        "a forged answer opened the link"
    );
    assert_eq!(link.last_counter(), 0, "a forged counter was adopted");
    assert_eq!(link.stats().rx_auth_failed, 2);
    assert_eq!(link.stats().handshakes, 0);

    // The genuine MCU answers: the link comes up and commands go out with the next counter.
    peer.genuine_ack(nonce, 10);
    let (up, seen) = wait_for(link.events(), DEADLINE, |e| matches!(e, LinkEvent::Up(_)));
    match up {
        Some(LinkEvent::Up(peer_info)) => {
            assert!(peer_info.authenticated);
            assert_eq!(peer_info.last_counter, 10);
        }
        _ => panic!("link did not come up; saw {seen:?}"),
    }
    assert_eq!(link.last_counter(), 10);
    link.send_privileged(PrivilegedCommand::SwitchModelSlot { slot: Slot::B })
        .unwrap();
    let cmd = peer.privileged();
    assert_eq!(cmd.counter, 11, "not locked out, not wrapped");
    peer.answer(&cmd, None);
    let (result, _) = next_result(&link);
    assert_eq!(
        (result.counter, result.outcome),
        (11, CommandOutcome::Accepted)
    );
}

#[test]
fn a_genuine_counter_at_the_top_is_a_typed_error_not_a_wrap() {
    let mut peer = Peer::new();
    let link = HostLink::spawn(peer.config(Some(CartKey::new(KEY)))).unwrap();
    let nonce = peer.hello_nonce();
    // A key holder (or a confused MCU) really is two below the top.
    peer.guard = ReplayGuard::new(u64::MAX - 1);
    peer.genuine_ack(nonce, u64::MAX - 1);
    let (up, seen) = wait_for(link.events(), DEADLINE, |e| matches!(e, LinkEvent::Up(_)));
    assert!(up.is_some(), "{seen:?}");

    // The last counter there is still works ...
    link.send_privileged(PrivilegedCommand::SwitchModelSlot { slot: Slot::B })
        .unwrap();
    let cmd = peer.privileged();
    assert_eq!(cmd.counter, u64::MAX);
    peer.answer(&cmd, None);
    let (result, _) = next_result(&link);
    assert_eq!(result.outcome, CommandOutcome::Accepted);
    assert_eq!(link.last_counter(), u64::MAX);

    // ... and then there is none: a typed error telling the operator to re-key, no wrap to 0.
    match link.send_privileged(PrivilegedCommand::Reboot) {
        Err(LinkError::CounterExhausted { last_used }) => assert_eq!(last_used, u64::MAX),
        other => panic!("expected CounterExhausted, got {other:?}"),
    }
    let msg = LinkError::CounterExhausted {
        last_used: u64::MAX,
    }
    .to_string();
    assert!(msg.contains("re-key"), "{msg}");
    // The link itself is unharmed: status still flows and verifies.
    let st = status(u64::MAX);
    let auth = peer.sign(&Reply::Status(&st));
    peer.send(McuMsg::Status(st.clone(), auth));
    let (got, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::McuStatus(_))
    });
    assert_eq!(got, Some(LinkEvent::McuStatus(st)), "{seen:?}");
    assert_eq!(link.state(), LinkState::Up);
    drop(link);

    // A host that starts against an MCU already at the top refuses at once.
    let mut peer2 = Peer::new();
    let link = HostLink::spawn(peer2.config(Some(CartKey::new(KEY)))).unwrap();
    let nonce = peer2.hello_nonce();
    peer2.genuine_ack(nonce, u64::MAX);
    let (up, seen) = wait_for(link.events(), DEADLINE, |e| matches!(e, LinkEvent::Up(_)));
    assert!(up.is_some(), "{seen:?}");
    assert!(matches!(
        link.send_privileged(PrivilegedCommand::Reboot),
        Err(LinkError::CounterExhausted { .. })
    ));
}

#[test]
fn forged_command_results_never_confirm_and_the_genuine_one_still_does() {
    let mut peer = Peer::new();
    let link = HostLink::spawn(peer.config(Some(CartKey::new(KEY)))).unwrap();
    let nonce = peer.hello_nonce();
    peer.genuine_ack(nonce, 0);
    let (up, seen) = wait_for(link.events(), DEADLINE, |e| matches!(e, LinkEvent::Up(_)));
    assert!(up.is_some(), "{seen:?}");

    link.send_privileged(PrivilegedCommand::SwitchModelSlot { slot: Slot::B })
        .unwrap();
    let cmd = peer.privileged();
    let claim = CommandResult {
        counter: cmd.counter,
        outcome: CommandOutcome::Accepted,
    };
    // 1. No valid tag at all.
    peer.send(McuMsg::CommandResult(
        claim,
        ReplyAuth {
            counter: 1,
            tag: [0; 32],
        },
    ));
    // 2. Signed with another key.
    let wrong = auth::sign_reply(
        &CartKey::new([1; 32]),
        nonce,
        1,
        &Reply::CommandResult {
            result: &claim,
            request_tag: &cmd.tag,
        },
    )
    .unwrap();
    peer.send(McuMsg::CommandResult(claim, wrong));
    // 3. Signed with the right key and session, but for another command.
    let other = [0x77; 32];
    let rebound = auth::sign_reply(
        &peer.key,
        nonce,
        1,
        &Reply::CommandResult {
            result: &claim,
            request_tag: &other,
        },
    )
    .unwrap();
    peer.send(McuMsg::CommandResult(claim, rebound));
    // Line garbage and a cut frame, then the MCU's genuine answer: it refused.
    peer.write(&[0x00, 0x13, 0x37, 0x00, 0x05, 0x09]);
    peer.answer(&cmd, Some(CommandOutcome::Failed));

    let (result, before) = next_result(&link);
    assert_eq!(
        (result.counter, result.outcome),
        (cmd.counter, CommandOutcome::Failed),
        "the first result the host reports is the genuine one"
    );
    assert_eq!(
        rejections(&before),
        vec![(ReplyKind::CommandResult, ReplyProblem::BadTag); 3]
    );
    let stats = link.stats();
    assert_eq!(stats.rx_auth_failed, 3);
    assert!(stats.rx_dropped_frames >= 1, "the garbage was dropped");
    // Nothing more: no "Accepted" slipped through afterwards.
    let (late, _) = wait_for(link.events(), Duration::from_millis(300), |e| {
        matches!(e, LinkEvent::CommandResult { .. })
    });
    assert!(late.is_none(), "{late:?}");
}

#[test]
fn replayed_replies_are_refused() {
    let mut peer = Peer::new();
    let link = HostLink::spawn(peer.config(Some(CartKey::new(KEY)))).unwrap();
    let nonce = peer.hello_nonce();
    peer.genuine_ack(nonce, 0);
    let (up, seen) = wait_for(link.events(), DEADLINE, |e| matches!(e, LinkEvent::Up(_)));
    assert!(up.is_some(), "{seen:?}");

    // Command 1, answered genuinely; the attacker records the answer and a status report.
    link.send_privileged(PrivilegedCommand::SwitchModelSlot { slot: Slot::B })
        .unwrap();
    let cmd1 = peer.privileged();
    let recorded = peer.answer(&cmd1, None);
    let (r1, _) = next_result(&link);
    assert_eq!(r1.outcome, CommandOutcome::Accepted);
    let st = status(cmd1.counter);
    let st_auth = peer.sign(&Reply::Status(&st));
    let recorded_status = McuMsg::Status(st.clone(), st_auth);
    peer.send(recorded_status.clone());
    let (s1, _) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::McuStatus(_))
    });
    assert!(s1.is_some());

    // Command 2 is answered by replays (in fresh envelopes, so the sequence check cannot be
    // what stops them): the recorded answer as is, and with its counter edited to command 2.
    link.send_privileged(PrivilegedCommand::Reboot).unwrap();
    let cmd2 = peer.privileged();
    assert_eq!(cmd2.counter, cmd1.counter + 1);
    peer.send(recorded.clone());
    let McuMsg::CommandResult(mut edited, auth1) = recorded else {
        unreachable!()
    };
    edited.counter = cmd2.counter;
    peer.send(McuMsg::CommandResult(edited, auth1));
    peer.send(recorded_status.clone());
    peer.answer(&cmd2, None);
    let (r2, before) = next_result(&link);
    assert_eq!(
        (r2.counter, r2.outcome),
        (cmd2.counter, CommandOutcome::Accepted)
    );
    assert_eq!(
        rejections(&before),
        vec![
            (ReplyKind::CommandResult, ReplyProblem::Unsolicited),
            (ReplyKind::CommandResult, ReplyProblem::BadTag),
            (ReplyKind::Status, ReplyProblem::Replayed),
        ]
    );
    assert!(
        !before.iter().any(|e| matches!(e, LinkEvent::McuStatus(_))),
        "the replayed status was reported: {before:?}"
    );

    // The MCU reboots; in the new session (new Hello nonce) the old status does not verify.
    peer.send(McuMsg::Boot(BootInfo {
        reset_cause: ResetCause::Watchdog,
        boot_count: 8,
    }));
    let nonce2 = peer.hello_nonce();
    assert_ne!(nonce2, nonce);
    peer.genuine_ack(nonce2, cmd2.counter);
    let (up, seen) = wait_for(link.events(), DEADLINE, |e| matches!(e, LinkEvent::Up(_)));
    assert!(up.is_some(), "{seen:?}");
    peer.send(recorded_status);
    let (rej, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::ReplyRejected { .. })
    });
    assert_eq!(
        rej,
        Some(LinkEvent::ReplyRejected {
            kind: ReplyKind::Status,
            problem: ReplyProblem::BadTag
        }),
        "{seen:?}"
    );
    let stats = link.stats();
    assert_eq!(
        (
            stats.rx_unsolicited,
            stats.rx_auth_failed,
            stats.rx_auth_replayed
        ),
        (1, 2, 1)
    );
}

#[test]
fn without_a_key_the_link_works_but_says_it_is_unauthenticated() {
    let mut peer = Peer::new();
    let link = HostLink::spawn(peer.config(None)).unwrap();
    let nonce = peer.hello_nonce();
    // Even a lying counter is harmless here: it is reported as claimed, never used.
    peer.genuine_ack(nonce, u64::MAX - 1);
    let (up, seen) = wait_for(link.events(), DEADLINE, |e| matches!(e, LinkEvent::Up(_)));
    match up {
        Some(LinkEvent::Up(p)) => assert!(!p.authenticated),
        _ => panic!("{seen:?}"),
    }
    assert_eq!(link.last_counter(), 0);
    assert!(matches!(
        link.send_privileged(PrivilegedCommand::Reboot),
        Err(LinkError::NoKey)
    ));
}
