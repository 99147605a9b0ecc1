//! Helpers shared by the integration tests: waiting on channels with deadlines (never sleeping),
//! and a simulator + link pair.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use firmware_host::link::{HostLink, LinkConfig, LinkEvent};
use firmware_host::sim::{SimConfig, SimMcu};

/// Generous: the test machine is shared; a healthy run takes milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Receives until `pred` matches or the deadline passes; returns the match and what came before.
pub fn wait_for<T: std::fmt::Debug>(
    rx: &Receiver<T>,
    within: Duration,
    mut pred: impl FnMut(&T) -> bool,
) -> (Option<T>, Vec<T>) {
    let end = Instant::now() + within;
    let mut before = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(item) if pred(&item) => return (Some(item), before),
            Ok(item) => before.push(item),
            Err(_) => return (None, before),
        }
    }
}

/// Waits for `LinkEvent::Up`, panicking with what was seen instead.
pub fn wait_up(link: &HostLink) {
    let (up, seen) = wait_for(link.events(), DEADLINE, |e| matches!(e, LinkEvent::Up(_)));
    assert!(up.is_some(), "link did not come up; events: {seen:?}");
}

/// A link config for tests: fast timers, the given port.
pub fn fast_config(port: &std::path::Path) -> LinkConfig {
    let mut c = LinkConfig::new(port.to_string_lossy(), 115_200);
    c.host_name = "test-host".into();
    c.heartbeat_interval = Duration::from_millis(50);
    c.watchdog_timeout = Duration::from_millis(1500);
    c.handshake_retry = Duration::from_millis(100);
    c.backoff_initial = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(200);
    c.io_timeout = Duration::from_millis(20);
    c
}

/// Starts a simulator and a link to it, and waits until the link is up.
pub fn pair(sim: SimConfig, tweak: impl FnOnce(&mut LinkConfig)) -> (SimMcu, HostLink) {
    let sim = SimMcu::spawn(sim).expect("pty available");
    let mut cfg = fast_config(sim.port_path());
    tweak(&mut cfg);
    let link = HostLink::spawn(cfg).expect("link starts");
    wait_up(&link);
    (sim, link)
}

/// Pings until a pong comes back (frames can be lost on a noisy line). When it returns, every
/// frame the link wrote before has been processed by the MCU, and everything the MCU sent before
/// the pong has been received. Returns the other events received meanwhile.
pub fn ping_through(link: &HostLink) -> Vec<LinkEvent> {
    let end = Instant::now() + DEADLINE;
    let mut events = Vec::new();
    while Instant::now() < end {
        let nonce = link.ping().expect("ping queued");
        let (pong, before) = wait_for(
            link.events(),
            Duration::from_millis(500),
            |e| matches!(e, LinkEvent::Pong { nonce: n, .. } if *n == nonce),
        );
        events.extend(before);
        if pong.is_some() {
            return events;
        }
    }
    panic!("no pong within {DEADLINE:?}");
}
