//! The host link against the simulated MCU over real pseudo-terminals: handshake, heartbeats,
//! predictions, buttons, a noisy line in each direction, watchdog, reboot, unplugging,
//! privileged commands, and a port that does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cart_protocol::auth::CartKey;
use cart_protocol::{
    Button, ButtonAction, CommandOutcome, EfStatus, HostMsg, McuMsg, Prediction, PrivilegedCommand,
    Slot, decode_frame,
};
use firmware_host::faults::ByteFaults;
use firmware_host::link::{DownReason, HostLink, LinkConfig, LinkEvent, LinkState, Trace};
use firmware_host::sim::{SimConfig, SimControl, SimFaults, SimMcu, SimReport};

use crate::support::{DEADLINE, fast_config, pair, ping_through, wait_for, wait_up};

fn prediction(i: u32) -> Prediction {
    Prediction {
        seq: i,
        timestamp_us: u64::from(i) * 33_333,
        view_index: (i % 5) as u8,
        view: heapless::String::try_from(["A4C", "A2C", "PLAX", "PSAX", "A3C"][i as usize % 5])
            .unwrap(),
        confidence: 0.5 + (i % 50) as f32 / 100.0,
        ef_percent: i.is_multiple_of(3).then_some(40.0 + (i % 30) as f32),
        ef_status: if i.is_multiple_of(3) {
            EfStatus::Valid
        } else {
            EfStatus::LowConfidence
        },
        synthetic: true,
    }
}

#[test]
fn handshake_heartbeats_and_predictions_flow() {
    let (sim, link) = pair(SimConfig::default(), |c| c.trace = true);
    assert_eq!(link.state(), LinkState::Up);
    let peer = link.peer().expect("peer info while up");
    assert_eq!(peer.cart_id, "sim-cart-0001");
    assert_eq!(peer.build_id, *b"SIMBUILD");

    // The MCU heard the handshake, then the host's heartbeats.
    let (up, _) = wait_for(
        sim.reports(),
        DEADLINE,
        |r| matches!(r, SimReport::HostUp { host_name } if host_name == "test-host"),
    );
    assert!(up.is_some());
    for _ in 0..2 {
        let (hb, _) = wait_for(
            sim.reports(),
            DEADLINE,
            |r| matches!(r, SimReport::Received(e) if matches!(e.msg, HostMsg::Heartbeat(_))),
        );
        assert!(hb.is_some(), "host heartbeat not seen by the MCU");
    }
    // The host heard the MCU's heartbeats.
    for _ in 0..2 {
        let (hb, _) = wait_for(
            link.events(),
            DEADLINE,
            |e| matches!(e, LinkEvent::Trace(Trace::Received(env)) if matches!(env.msg, McuMsg::Heartbeat(_))),
        );
        assert!(hb.is_some(), "MCU heartbeat not seen by the host");
    }

    for i in 0..5 {
        link.send_prediction(prediction(i));
    }
    link.flush(DEADLINE).expect("flushed");
    let mut got = Vec::new();
    while got.len() < 5 {
        let (p, _) = wait_for(
            sim.reports(),
            DEADLINE,
            |r| matches!(r, SimReport::Received(e) if matches!(e.msg, HostMsg::Prediction(_))),
        );
        match p {
            Some(SimReport::Received(e)) => match e.msg {
                HostMsg::Prediction(p) => got.push(p),
                _ => unreachable!(),
            },
            _ => panic!("only {} of 5 predictions reached the MCU", got.len()),
        }
    }
    assert_eq!(got, (0..5).map(prediction).collect::<Vec<_>>());
    let snap = sim.snapshot(DEADLINE).expect("snapshot");
    assert_eq!(snap.display.prediction, Some(prediction(4)));
    let stats = link.shutdown();
    assert_eq!(stats.predictions_sent, 5);
    assert_eq!(stats.rx_dropped_frames, 0);
}

#[test]
fn a_button_press_reaches_the_host() {
    let (sim, link) = pair(SimConfig::default(), |_| {});
    sim.button(Button::Freeze, ButtonAction::Press, None);
    let (b, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::Button(_))
    });
    match b {
        Some(LinkEvent::Button(b)) => {
            assert_eq!((b.button, b.action), (Button::Freeze, ButtonAction::Press));
        }
        _ => panic!("no button event; saw {seen:?}"),
    }
}

#[test]
fn noisy_line_to_the_mcu_delivers_every_surviving_frame_once() {
    const N: u32 = 400;
    let sim_cfg = SimConfig {
        faults: SimFaults {
            seed: 42,
            rx: ByteFaults::corrupt(0.01),
            ..Default::default()
        },
        journal: true,
        ..Default::default()
    };
    let (sim, link) = pair(sim_cfg, |c| c.prediction_capacity = N as usize);
    for i in 0..N {
        link.send_prediction(prediction(i));
    }
    link.flush(DEADLINE).expect("flushed");
    ping_through(&link);

    let mut delivered = BTreeMap::new();
    for r in sim.reports().try_iter() {
        if let SimReport::Received(e) = r
            && let HostMsg::Prediction(p) = e.msg
        {
            let seq = p.seq;
            assert!(delivered.insert(seq, p).is_none(), "prediction {seq} twice");
        }
    }
    let snap = sim.snapshot(DEADLINE).expect("snapshot");
    let mut intact = BTreeSet::new();
    let mut journalled = BTreeSet::new();
    for entry in &snap.rx_journal {
        let mut bytes = entry.frame.clone();
        if let Ok(env) = decode_frame::<HostMsg>(&mut bytes)
            && let HostMsg::Prediction(p) = env.msg
        {
            journalled.insert(p.seq);
            if entry.intact {
                intact.insert(p.seq);
            }
        }
    }
    assert_eq!(
        journalled.len(),
        N as usize,
        "every prediction was written; journal has {} frames, {} delivered, link {:?}",
        snap.rx_journal.len(),
        delivered.len(),
        link.stats()
    );
    for (seq, p) in &delivered {
        assert_eq!(
            p,
            &prediction(*seq),
            "delivered content differs from what was sent"
        );
    }
    let missing: Vec<_> = intact
        .iter()
        .filter(|s| !delivered.contains_key(s))
        .collect();
    assert!(
        missing.is_empty(),
        "frames that survived the line were not delivered: {missing:?}"
    );
    // The line really was noisy, and the losses were detected rather than passed on.
    assert!(
        intact.len() < N as usize,
        "no frame was hit: test is vacuous"
    );
    assert!(delivered.len() < N as usize);
    assert!(snap.rx_dropped > 0);
    assert!(snap.rx_injected.dropped + snap.rx_injected.flipped > 0);
    eprintln!(
        "host->MCU at 1% byte errors: {} of {N} predictions delivered, {} untouched",
        delivered.len(),
        intact.len()
    );
}

#[test]
fn noisy_line_from_the_mcu_delivers_every_surviving_frame_once() {
    const N: u32 = 300;
    let sim_cfg = SimConfig {
        faults: SimFaults {
            seed: 7,
            tx: ByteFaults::corrupt(0.01),
            duplicate_rate: 0.05,
            ..Default::default()
        },
        journal: true,
        ..Default::default()
    };
    let (sim, link) = pair(sim_cfg, |c| c.event_capacity = 4096);
    for i in 0..N {
        sim.button(Button::Next, ButtonAction::Press, Some(i));
    }
    let events = ping_through(&link);

    let mut delivered = BTreeSet::new();
    for e in events.into_iter().chain(link.events().try_iter()) {
        if let LinkEvent::Button(b) = e {
            assert_eq!((b.button, b.action), (Button::Next, ButtonAction::Press));
            assert!(
                delivered.insert(b.at_ms),
                "button {} delivered twice",
                b.at_ms
            );
        }
    }
    let snap = sim.snapshot(DEADLINE).expect("snapshot");
    let mut intact = BTreeSet::new();
    let mut journalled = BTreeSet::new();
    for entry in &snap.tx_journal {
        let mut bytes = entry.frame.clone();
        if let Ok(env) = decode_frame::<McuMsg>(&mut bytes)
            && let McuMsg::Button(b) = env.msg
        {
            journalled.insert(b.at_ms);
            if entry.intact {
                intact.insert(b.at_ms);
            }
        }
    }
    assert_eq!(journalled.len(), N as usize);
    assert!(delivered.iter().all(|id| *id < N));
    let missing: Vec<_> = intact.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "button frames that survived were not delivered: {missing:?}"
    );
    assert!(
        intact.len() < N as usize,
        "no frame was hit: test is vacuous"
    );
    let stats = link.stats();
    assert!(stats.rx_dropped_frames > 0);
    assert!(
        stats.rx_stale > 0,
        "duplicates were injected and must be dropped"
    );
    eprintln!(
        "MCU->host at 1% byte errors + 5% duplicated frames: {} of {N} delivered, {} untouched, {} duplicates dropped",
        delivered.len(),
        intact.len(),
        stats.rx_stale
    );
}

#[test]
fn a_stalled_mcu_trips_the_watchdog_and_the_link_recovers() {
    let (sim, link) = pair(SimConfig::default(), |c| {
        c.watchdog_timeout = Duration::from_millis(300);
    });
    sim.control(SimControl::Stall(Duration::from_millis(700)));
    let (down, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::Down(DownReason::PeerSilent { .. }))
    });
    assert!(down.is_some(), "no watchdog trip; saw {seen:?}");
    wait_up(&link);
    assert!(link.stats().watchdog_trips >= 1);
    // The MCU noticed the host's silence too (it heard nothing while stalled).
    let (lost, _) = wait_for(sim.reports(), DEADLINE, |r| {
        matches!(r, SimReport::HostLost { .. })
    });
    assert!(lost.is_some());
}

#[test]
fn an_mcu_reboot_is_reported_and_the_session_restarts() {
    let (sim, link) = pair(SimConfig::default(), |_| {});
    sim.control(SimControl::Reboot);
    let (booted, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::McuBooted(_))
    });
    assert!(booted.is_some(), "no boot event; saw {seen:?}");
    let (down, _) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::Down(DownReason::McuRebooted(_)))
    });
    assert!(down.is_some());
    wait_up(&link);
    assert_eq!(link.stats().handshakes, 2);
}

#[test]
fn an_unplugged_port_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let sim_cfg = SimConfig {
        link: Some(dir.path().join("cart-mcu")),
        ..Default::default()
    };
    let (sim, link) = pair(sim_cfg, |_| {});
    sim.control(SimControl::Replug);
    let (down, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::Down(DownReason::PortError(_)))
    });
    assert!(down.is_some(), "no port error; saw {seen:?}");
    wait_up(&link);
    assert!(link.stats().connects >= 2);
    sim.button(Button::Record, ButtonAction::LongPress, None);
    let (b, _) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::Button(_))
    });
    assert!(b.is_some(), "buttons flow after reconnecting");
}

#[test]
fn privileged_commands_are_authenticated_and_counters_survive_a_new_host() {
    let key = CartKey::new([9; 32]);
    let sim_cfg = SimConfig {
        mcu: firmware_host::sim::McuConfig {
            key: key.clone(),
            last_counter: 41,
            ..Default::default()
        },
        ..Default::default()
    };
    let sim = SimMcu::spawn(sim_cfg).unwrap();
    let mut cfg = fast_config(sim.port_path());
    cfg.cart_key = Some(key.clone());
    let link = HostLink::spawn(cfg.clone()).unwrap();
    wait_up(&link);
    let peer = link.peer().unwrap();
    assert_eq!((peer.last_counter, peer.authenticated), (41, true));
    link.send_privileged(PrivilegedCommand::SwitchModelSlot { slot: Slot::B })
        .unwrap();
    let (r, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::CommandResult { .. })
    });
    match r {
        Some(LinkEvent::CommandResult { command, result }) => {
            assert_eq!(result.outcome, CommandOutcome::Accepted);
            assert_eq!(result.counter, 42);
            assert_eq!(
                command,
                Some(PrivilegedCommand::SwitchModelSlot { slot: Slot::B })
            );
        }
        _ => panic!("no command result; saw {seen:?}"),
    }
    assert_eq!(
        sim.snapshot(DEADLINE).unwrap().persistent.active_slot,
        Some(Slot::B)
    );
    drop(link);

    // A new host process continues above the MCU's counter (learned in the handshake).
    let link = HostLink::spawn(cfg.clone()).unwrap();
    wait_up(&link);
    link.send_privileged(PrivilegedCommand::SwitchModelSlot { slot: Slot::A })
        .unwrap();
    let (r, _) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::CommandResult { .. })
    });
    match r {
        Some(LinkEvent::CommandResult { result, .. }) => {
            assert_eq!(result.outcome, CommandOutcome::Accepted);
            assert_eq!(result.counter, 43);
        }
        other => panic!("{other:?}"),
    }
    drop(link);

    // A host with the wrong key does not take the MCU's handshake answer (its tag does not
    // verify): the link stays down, says why, and nothing is sent or changed.
    cfg.cart_key = Some(CartKey::new([1; 32]));
    let link = HostLink::spawn(cfg).unwrap();
    let (down, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::Down(DownReason::HandshakeAuthFailed { .. }))
    });
    assert!(down.is_some(), "no handshake auth failure; saw {seen:?}");
    assert!(
        !seen.iter().any(|e| matches!(e, LinkEvent::Up(_))),
        "{seen:?}"
    );
    assert_ne!(link.state(), LinkState::Up);
    let stats = link.shutdown();
    assert_eq!(stats.handshakes, 0);
    assert!(stats.rx_auth_failed >= 1);
    let snap = sim.snapshot(DEADLINE).unwrap();
    assert_eq!(snap.persistent.active_slot, Some(Slot::A));
    assert_eq!(snap.persistent.last_counter, 43);
    assert_eq!(snap.persistent.boot_count, 1);
}

#[test]
fn a_missing_port_never_blocks_the_caller() {
    let mut cfg = LinkConfig::new("/dev/does-not-exist-echojepa", 115_200);
    cfg.backoff_initial = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(20);
    let link = HostLink::spawn(cfg).unwrap();
    let (down, seen) = wait_for(link.events(), DEADLINE, |e| {
        matches!(e, LinkEvent::Down(DownReason::OpenFailed(_)))
    });
    match down {
        Some(LinkEvent::Down(DownReason::OpenFailed(msg))) => {
            assert!(msg.contains("/dev/does-not-exist-echojepa"), "{msg}");
        }
        _ => panic!("no open failure; saw {seen:?}"),
    }
    // 10 000 predictions into a link that is down: each call returns at once, the queue stays
    // bounded, and every one is accounted for.
    for i in 0..10_000 {
        link.send_prediction(prediction(i));
    }
    let stats = link.shutdown();
    assert_eq!(stats.predictions_sent, 0);
    assert!(stats.open_failures >= 1);
    assert!(
        stats.predictions_dropped_queue + stats.predictions_dropped_down <= 10_000
            && stats.predictions_dropped_queue + stats.predictions_dropped_down >= 10_000 - 8,
        "{stats:?}"
    );
}
