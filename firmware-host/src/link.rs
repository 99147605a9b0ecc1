//! The host side of the cart MCU link, as a library for the edge runtime and the CLI.
//!
//! [`HostLink::spawn`] starts a thread that owns the serial port. Nothing the caller does on a
//! [`HostLink`] blocks (except the explicit [`HostLink::flush`]): outgoing data goes into bounded
//! queues with a named policy, incoming events come out of a bounded queue.
//!
//! | queue | capacity (default) | when full |
//! |---|---|---|
//! | predictions ([`HostLink::send_prediction`]) | 8 | drop oldest ([`Pushed::ReplacedOldest`]) |
//! | runtime status ([`HostLink::send_status`]) | 1 | drop oldest: latest wins |
//! | commands (display, ping, status request, privileged) | 32 | reject newest ([`LinkError::QueueFull`]) |
//! | events ([`HostLink::events`]) | 256 | drop oldest (counted in [`LinkStats::events_dropped`]) |
//!
//! While the link is not up, predictions and status are discarded as they arrive (counted in
//! [`LinkStats::predictions_dropped_down`]): the display must show the current result, never a
//! backlog. Commands wait in their queue until the handshake completes.
//!
//! The link thread opens the port, handshakes (`Hello`/`HelloAck`, retried every
//! [`LinkConfig::handshake_retry`]), sends heartbeats, and watches the MCU's: silence longer than
//! [`LinkConfig::watchdog_timeout`] reports [`LinkEvent::Down`] and handshakes again; a port error
//! (cable pulled) or a handshake that does not complete within [`LinkConfig::reopen_after`] closes
//! the port and reopens it with exponential backoff ([`LinkConfig::backoff_initial`] doubling up to
//! [`LinkConfig::backoff_max`]). A reader thread per open port decodes frames; garbled frames are
//! dropped and counted, duplicates (by sequence number) are dropped, gaps are counted.
//!
//! **Authentication** (with [`LinkConfig::cart_key`]): privileged commands are signed with a
//! counter that only moves forward, and the MCU's replies that the host acts on — `HelloAck`,
//! `Status`, `CommandResult` — must carry a valid tag for this session (see
//! [`cart_protocol::auth`]); one that does not is dropped, counted in [`LinkStats`], logged and
//! reported as [`LinkEvent::ReplyRejected`]. So [`LinkEvent::CommandResult`] only ever reports a
//! result the MCU really sent for a command this link sent, and the command counter is only ever
//! raised to a `last_counter` the MCU authenticated. The host keeps no counter on disk: the MCU's
//! non-volatile counter is the authority, and the host only moves forward on authenticated
//! evidence of it (or its own signatures), so nothing on the wire can push the host's counter
//! up, and a genuine counter at the top of its range is a typed error
//! ([`LinkError::CounterExhausted`]: re-key the cart), never a wrap. Without a key the link still
//! comes up (ping, status, monitoring), but [`PeerInfo::authenticated`] is false: nothing the MCU
//! said was verified, and privileged commands are refused ([`LinkError::NoKey`]).
//!
//! ```no_run
//! use firmware_host::link::{HostLink, LinkConfig, LinkEvent};
//! use cart_protocol::{EfStatus, Prediction};
//!
//! let link = HostLink::spawn(LinkConfig::new("/dev/echojepa-mcu", 115_200))?;
//! // In the frame loop: never blocks.
//! link.send_prediction(Prediction {
//!     seq: 1,
//!     timestamp_us: 33_000,
//!     view_index: 0,
//!     view: heapless::String::try_from("A4C").unwrap(),
//!     confidence: 0.93,
//!     ef_percent: Some(57.0),
//!     ef_status: EfStatus::Valid,
//!     synthetic: true,
//! });
//! // Elsewhere (or with try_iter in the same loop): buttons, faults, link state.
//! for event in link.events().try_iter() {
//!     if let LinkEvent::Button(b) = event {
//!         println!("{:?} {:?}", b.button, b.action);
//!     }
//! }
//! # Ok::<(), firmware_host::link::LinkError>(())
//! ```

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cart_protocol::auth::{self, CartKey, Reply, ReplyVerifier};
use cart_protocol::{
    BootInfo, ButtonEvent, CommandResult, DisplayCommand, Envelope, FaultReport, Feed,
    FrameDecoder, Heartbeat, Hello, HelloAck, HelloReject, HostMsg, Liveness, LogRecord, McuMsg,
    McuStatus, PROTOCOL_VERSION, Ping, Prediction, PrivilegedCommand, ProtocolVersion, ReplyAuth,
    RuntimeStatus, SeqCheck, SeqTracker, Slot,
};
use crossbeam_channel::{Receiver, Sender, TrySendError, never, select};
use serialport::SerialPort;

pub use crate::queue::Pushed;
use crate::queue::{DropOldest, RejectNewest};

/// How to reach the MCU and how patient to be.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Serial device, e.g. `/dev/echojepa-mcu` (board profile `serial.port`).
    pub port: String,
    /// Baud rate (board profile `serial.baud`).
    pub baud: u32,
    /// Sent in `Hello` for the MCU's service log.
    pub host_name: String,
    /// Heartbeat period, both directions. Default 200 ms.
    pub heartbeat_interval: Duration,
    /// Peer silence that counts as gone, both directions. Default 1 s.
    pub watchdog_timeout: Duration,
    /// `Hello` is repeated this often until answered. Default 300 ms.
    pub handshake_retry: Duration,
    /// A port on which no handshake completes for this long is closed and reopened. Default 5 s.
    pub reopen_after: Duration,
    /// Read poll and write timeout on the port. Default 50 ms.
    pub io_timeout: Duration,
    /// First wait before reopening a port. Default 100 ms.
    pub backoff_initial: Duration,
    /// Longest wait before reopening a port. Default 5 s.
    pub backoff_max: Duration,
    /// Prediction queue capacity (drop oldest). Default 8.
    pub prediction_capacity: usize,
    /// Command queue capacity (reject newest). Default 32.
    pub command_capacity: usize,
    /// Event queue capacity (drop oldest). Default 256.
    pub event_capacity: usize,
    /// Per-cart key: signs privileged commands and verifies the MCU's replies. Without it
    /// privileged commands are refused with [`LinkError::NoKey`] and replies are taken
    /// unverified ([`PeerInfo::authenticated`] is false).
    pub cart_key: Option<CartKey>,
    /// Also emit [`LinkEvent::Trace`] for every frame sent, received or dropped (monitoring).
    pub trace: bool,
}

impl LinkConfig {
    /// Defaults (see each field) for `port` at `baud`.
    pub fn new(port: impl Into<String>, baud: u32) -> Self {
        Self {
            port: port.into(),
            baud,
            host_name: "edge-runtime".into(),
            heartbeat_interval: Duration::from_millis(u64::from(
                cart_protocol::DEFAULT_HEARTBEAT_INTERVAL_MS,
            )),
            watchdog_timeout: Duration::from_millis(u64::from(
                cart_protocol::DEFAULT_WATCHDOG_TIMEOUT_MS,
            )),
            handshake_retry: Duration::from_millis(300),
            reopen_after: Duration::from_secs(5),
            io_timeout: Duration::from_millis(50),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            prediction_capacity: 8,
            command_capacity: 32,
            event_capacity: 256,
            cart_key: None,
            trace: false,
        }
    }

    /// Defaults for the port named in a board profile's `[serial]` table.
    pub fn from_board(serial: &boards::SerialSettings) -> Self {
        Self::new(serial.port.clone(), serial.baud)
    }

    fn validate(&self) -> Result<(), LinkError> {
        let ms = |d: Duration| d.as_millis();
        if self.heartbeat_interval.is_zero()
            || ms(self.watchdog_timeout) > u128::from(u16::MAX)
            || self.watchdog_timeout <= self.heartbeat_interval
        {
            return Err(LinkError::Config(format!(
                "heartbeat interval ({} ms) must be > 0 and below the watchdog timeout ({} ms), \
                 which must be at most {} ms",
                ms(self.heartbeat_interval),
                ms(self.watchdog_timeout),
                u16::MAX
            )));
        }
        if self.io_timeout.is_zero() || self.backoff_initial.is_zero() {
            return Err(LinkError::Config(
                "io_timeout and backoff_initial must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// Errors of the link API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// invalid link configuration: {0}
    #[error("invalid link configuration: {0}")]
    Config(String),
    /// the command queue is full; the command was not queued
    #[error("the command queue is full; the command was not queued")]
    QueueFull,
    /// no per-cart key configured, privileged commands cannot be signed
    #[error("no per-cart key configured, privileged commands cannot be signed")]
    NoKey,
    /// the privileged-command counter is used up for this cart key
    #[error(
        "the privileged-command counter is used up for this cart key (last used {last_used}, \
         the highest possible); re-key the cart: provisioning a new key resets the MCU's counter"
    )]
    CounterExhausted {
        /// The highest counter known to be used (`u64::MAX`).
        last_used: u64,
    },
    /// the link thread has stopped
    #[error("the link thread has stopped")]
    Stopped,
    /// timed out waiting for the link
    #[error("timed out waiting for the link")]
    Timeout,
    /// could not start the link thread
    #[error("could not start the link thread: {0}")]
    Spawn(#[source] io::Error),
}

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Opening the port (or waiting to retry).
    Connecting,
    /// Port open, waiting for `HelloAck`.
    Handshaking,
    /// Session up.
    Up,
    /// Link thread ended.
    Stopped,
}

impl LinkState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => LinkState::Connecting,
            1 => LinkState::Handshaking,
            2 => LinkState::Up,
            _ => LinkState::Stopped,
        }
    }
}

/// What the MCU told us in the handshake.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerInfo {
    /// MCU protocol version.
    pub version: ProtocolVersion,
    /// Cart identity.
    pub cart_id: String,
    /// Firmware version.
    pub firmware: String,
    /// Firmware build id (selects the ELF for defmt logs).
    pub build_id: [u8; 8],
    /// Highest privileged counter the MCU had accepted (as claimed; trusted, and adopted for
    /// the next command, only when `authenticated`).
    pub last_counter: u64,
    /// Slot the MCU tracks as active.
    pub active_slot: Option<Slot>,
    /// The handshake answer verified with the cart key, and so will every status report and
    /// command result of this session. False when the link has no key.
    pub authenticated: bool,
}

/// Why the link went down.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownReason {
    /// The port could not be opened (reported once per outage).
    OpenFailed(String),
    /// Reading or writing the port failed (e.g. cable pulled).
    PortError(String),
    /// No frame from the MCU for longer than the watchdog timeout.
    PeerSilent {
        /// How long it was silent.
        #[serde(rename = "silence_ms", serialize_with = "millis")]
        silence: Duration,
    },
    /// The MCU rebooted.
    McuRebooted(BootInfo),
    /// No handshake completed within `reopen_after`; the port is being reopened.
    HandshakeTimeout,
    /// A `HelloAck` answering our `Hello` did not verify with the configured cart key (a wrong
    /// key file, or a forged answer): the link stays down and keeps handshaking. Reported once
    /// per port opening.
    HandshakeAuthFailed {
        /// What was wrong with the answer.
        problem: ReplyProblem,
    },
}

/// Which MCU reply was dropped (see [`LinkEvent::ReplyRejected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    /// Handshake answer.
    HelloAck,
    /// Status report.
    Status,
    /// Privileged command result.
    CommandResult,
}

/// Why an MCU reply was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyProblem {
    /// Its tag did not verify (forged, altered, wrong key, or from another session).
    BadTag,
    /// Its reply counter was not above the last accepted one: a replayed reply.
    Replayed,
    /// A command result for no command this link has pending (already answered, never sent,
    /// or forgotten).
    Unsolicited,
}

impl ReplyProblem {
    fn from_error(e: cart_protocol::Error) -> Self {
        match e {
            cart_protocol::Error::Replayed => ReplyProblem::Replayed,
            _ => ReplyProblem::BadTag,
        }
    }
}

/// Why a queued privileged command was not sent (see [`LinkEvent::CommandRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandRefusal {
    /// No counter is left for this key (see [`LinkError::CounterExhausted`]).
    CounterExhausted {
        /// The highest counter known to be used.
        last_used: u64,
    },
}

/// Direction-tagged frame record for monitoring (only with [`LinkConfig::trace`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trace {
    /// A frame we sent.
    Sent(Envelope<HostMsg>),
    /// A frame we accepted.
    Received(Envelope<McuMsg>),
    /// Bytes the decoder threw away.
    Dropped {
        /// Why.
        #[serde(serialize_with = "display")]
        error: cart_protocol::Error,
        /// How many bytes.
        lost_bytes: usize,
    },
    /// A duplicate or stale frame that was ignored.
    Stale(Envelope<McuMsg>),
}

/// Something the caller should know about.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkEvent {
    /// Handshake completed.
    Up(PeerInfo),
    /// The session ended.
    Down(DownReason),
    /// A cart button.
    Button(ButtonEvent),
    /// Answer to [`HostLink::request_status`].
    McuStatus(McuStatus),
    /// A fault on the MCU.
    Fault(FaultReport),
    /// An MCU log record (decode defmt payloads with [`crate::defmt_log`]).
    Log(LogRecord),
    /// Answer to [`HostLink::ping`].
    Pong {
        /// The nonce returned by `ping`.
        nonce: u32,
        /// Round-trip time.
        #[serde(rename = "rtt_ms", serialize_with = "millis")]
        rtt: Duration,
    },
    /// Answer to [`HostLink::send_privileged`]: only for a result whose tag verified and
    /// that answers a command this link sent and had not yet seen answered.
    CommandResult {
        /// The command answered (always `Some` since protocol 2).
        command: Option<PrivilegedCommand>,
        /// Counter and outcome.
        result: CommandResult,
    },
    /// A queued privileged command was not sent.
    CommandRefused {
        /// The command.
        command: PrivilegedCommand,
        /// Why.
        reason: CommandRefusal,
    },
    /// An MCU reply was dropped because it failed authentication or answers nothing pending.
    ReplyRejected {
        /// What it claimed to be.
        kind: ReplyKind,
        /// Why it was dropped.
        problem: ReplyProblem,
    },
    /// The MCU (re)booted.
    McuBooted(BootInfo),
    /// The MCU refused our handshake.
    Rejected(HelloReject),
    /// A frame record (only with [`LinkConfig::trace`]).
    Trace(Trace),
}

/// Counters since the link was spawned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    /// Port opens that succeeded.
    pub connects: u64,
    /// Port opens that failed.
    pub open_failures: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Frames written.
    pub frames_sent: u64,
    /// Frames accepted.
    pub frames_received: u64,
    /// Frames the decoder dropped (CRC, COBS, overflow, undecodable).
    pub rx_dropped_frames: u64,
    /// Bytes thrown away with them.
    pub rx_bytes_lost: u64,
    /// Frames missing according to the MCU's sequence numbers.
    pub rx_lost_by_seq: u64,
    /// Duplicate or stale frames ignored.
    pub rx_stale: u64,
    /// Predictions written.
    pub predictions_sent: u64,
    /// Predictions evicted from a full queue (drop oldest).
    pub predictions_dropped_queue: u64,
    /// Predictions discarded because the link was not up.
    pub predictions_dropped_down: u64,
    /// Commands refused because their queue was full.
    pub commands_rejected: u64,
    /// Events evicted from a full event queue.
    pub events_dropped: u64,
    /// Writes that timed out (the frame may be cut; the next frame's delimiter recovers).
    pub write_timeouts: u64,
    /// Times the MCU was silent longer than the watchdog timeout.
    pub watchdog_trips: u64,
    /// MCU replies dropped because their tag did not verify.
    pub rx_auth_failed: u64,
    /// MCU replies dropped because their reply counter was not fresh (replays).
    pub rx_auth_replayed: u64,
    /// Command results dropped because they answer no pending command.
    pub rx_unsolicited: u64,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    open_failures: AtomicU64,
    handshakes: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    rx_dropped_frames: AtomicU64,
    rx_bytes_lost: AtomicU64,
    rx_lost_by_seq: AtomicU64,
    rx_stale: AtomicU64,
    predictions_sent: AtomicU64,
    predictions_dropped_down: AtomicU64,
    write_timeouts: AtomicU64,
    watchdog_trips: AtomicU64,
    rx_auth_failed: AtomicU64,
    rx_auth_replayed: AtomicU64,
    rx_unsolicited: AtomicU64,
}

fn inc(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

struct Shared {
    state: AtomicU8,
    stopped: AtomicBool,
    counters: Counters,
    peer: Mutex<Option<PeerInfo>>,
    /// Highest privileged counter known to be used (own signatures, authenticated `HelloAck`).
    last_counter: AtomicU64,
}

impl Shared {
    fn set_state(&self, s: LinkState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
}

enum Command {
    Display(DisplayCommand),
    Ping(u32),
    RequestStatus,
    Privileged(PrivilegedCommand),
    Flush(Sender<()>),
}

/// Handle to a running link. Dropping it stops the link thread.
pub struct HostLink {
    predictions: DropOldest<Prediction>,
    status: DropOldest<RuntimeStatus>,
    commands: RejectNewest<Command>,
    events_tx: DropOldest<LinkEvent>,
    events: Receiver<LinkEvent>,
    has_key: bool,
    next_nonce: AtomicU64,
    shared: Arc<Shared>,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl HostLink {
    /// Starts the link thread. Returns at once; the port is opened in the background (watch
    /// [`HostLink::events`] for [`LinkEvent::Up`]). Fails only on a bad configuration or when no
    /// thread can be started.
    pub fn spawn(config: LinkConfig) -> Result<HostLink, LinkError> {
        config.validate()?;
        let (predictions, predictions_rx) = DropOldest::new(config.prediction_capacity);
        let (status, status_rx) = DropOldest::new(1);
        let (commands, commands_rx) = RejectNewest::new(config.command_capacity);
        let (events_tx, events) = DropOldest::new(config.event_capacity);
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let shared = Arc::new(Shared {
            state: AtomicU8::new(LinkState::Connecting as u8),
            stopped: AtomicBool::new(false),
            counters: Counters::default(),
            peer: Mutex::new(None),
            last_counter: AtomicU64::new(0),
        });
        let has_key = config.cart_key.is_some();
        let mut worker = Worker {
            cfg: config,
            shared: shared.clone(),
            predictions: predictions_rx,
            status: status_rx,
            commands: commands_rx,
            stop: stop_rx,
            events: events_tx.clone(),
            start: Instant::now(),
            last_counter: 0,
            privileged: VecDeque::new(),
            pings: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("cart-link".into())
            .spawn(move || {
                worker.run();
                worker.shared.set_state(LinkState::Stopped);
                worker.shared.stopped.store(true, Ordering::Relaxed);
            })
            .map_err(LinkError::Spawn)?;
        Ok(HostLink {
            predictions,
            status,
            commands,
            events_tx,
            events,
            has_key,
            next_nonce: AtomicU64::new(1),
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Queues a prediction for the cart display. Never blocks; a full queue drops its oldest.
    pub fn send_prediction(&self, prediction: Prediction) -> Pushed {
        self.predictions.push(prediction)
    }

    /// Queues runtime status. Never blocks; only the newest status is kept.
    pub fn send_status(&self, status: RuntimeStatus) -> Pushed {
        self.status.push(status)
    }

    fn command(&self, c: Command) -> Result<(), LinkError> {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(LinkError::Stopped);
        }
        self.commands.push(c).map_err(|e| match e {
            TrySendError::Full(_) => LinkError::QueueFull,
            TrySendError::Disconnected(_) => LinkError::Stopped,
        })
    }

    /// Queues a display or LED command. Never blocks; fails when the command queue is full.
    pub fn send_display(&self, command: DisplayCommand) -> Result<(), LinkError> {
        self.command(Command::Display(command))
    }

    /// Queues a ping; the answer is [`LinkEvent::Pong`] with the returned nonce.
    pub fn ping(&self) -> Result<u32, LinkError> {
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed) as u32;
        self.command(Command::Ping(nonce)).map(|()| nonce)
    }

    /// Asks the MCU for its status; the answer is [`LinkEvent::McuStatus`].
    pub fn request_status(&self) -> Result<(), LinkError> {
        self.command(Command::RequestStatus)
    }

    /// Queues a privileged command; the link signs it with the next counter when it is sent.
    /// The answer is [`LinkEvent::CommandResult`] (authenticated). Commands are not
    /// retransmitted: if no result arrives (frame lost on the wire), send it again (it gets a
    /// fresh counter). Fails with [`LinkError::CounterExhausted`] once the counter reached
    /// `u64::MAX` (a command queued before that became known is reported as
    /// [`LinkEvent::CommandRefused`] instead).
    pub fn send_privileged(&self, command: PrivilegedCommand) -> Result<(), LinkError> {
        if !self.has_key {
            return Err(LinkError::NoKey);
        }
        let last_used = self.shared.last_counter.load(Ordering::Relaxed);
        if auth::next_counter(last_used).is_err() {
            return Err(LinkError::CounterExhausted { last_used });
        }
        self.command(Command::Privileged(command))
    }

    /// Highest privileged-command counter this link knows to be used: its own last command, or
    /// the `last_counter` of an authenticated `HelloAck`, whichever is higher.
    pub fn last_counter(&self) -> u64 {
        self.shared.last_counter.load(Ordering::Relaxed)
    }

    /// Waits until everything queued before this call has been written to the port (or
    /// discarded because the link is down), at most `timeout`. The only blocking call: for
    /// tools and tests, not for the frame loop.
    pub fn flush(&self, timeout: Duration) -> Result<(), LinkError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.command(Command::Flush(tx))?;
        rx.recv_timeout(timeout).map_err(|_| LinkError::Timeout)
    }

    /// Incoming events. Poll with `try_iter()` in a loop, or block on `recv_timeout` in a
    /// thread of your own.
    pub fn events(&self) -> &Receiver<LinkEvent> {
        &self.events
    }

    /// Current state.
    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.shared.state.load(Ordering::Relaxed))
    }

    /// The MCU's handshake information, while the link is up.
    pub fn peer(&self) -> Option<PeerInfo> {
        self.shared
            .peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            connects: g(&c.connects),
            open_failures: g(&c.open_failures),
            handshakes: g(&c.handshakes),
            frames_sent: g(&c.frames_sent),
            frames_received: g(&c.frames_received),
            rx_dropped_frames: g(&c.rx_dropped_frames),
            rx_bytes_lost: g(&c.rx_bytes_lost),
            rx_lost_by_seq: g(&c.rx_lost_by_seq),
            rx_stale: g(&c.rx_stale),
            predictions_sent: g(&c.predictions_sent),
            predictions_dropped_queue: self.predictions.dropped(),
            predictions_dropped_down: g(&c.predictions_dropped_down),
            commands_rejected: self.commands.rejected(),
            events_dropped: self.events_tx.dropped(),
            write_timeouts: g(&c.write_timeouts),
            watchdog_trips: g(&c.watchdog_trips),
            rx_auth_failed: g(&c.rx_auth_failed),
            rx_auth_replayed: g(&c.rx_auth_replayed),
            rx_unsolicited: g(&c.rx_unsolicited),
        }
    }

    /// Stops the link thread (closing the port) and returns the final counters.
    pub fn shutdown(mut self) -> LinkStats {
        self.stop_thread();
        self.stats()
    }

    fn stop_thread(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

enum RxItem {
    Frame(Envelope<McuMsg>),
    Dropped {
        error: cart_protocol::Error,
        lost_bytes: usize,
    },
    PortError(String),
}

enum SessionEnd {
    Stop,
    PortError(String),
    Reopen,
}

/// Remembered privileged commands and pings awaiting an answer (oldest forgotten first).
const PENDING_LIMIT: usize = 32;

struct Worker {
    cfg: LinkConfig,
    shared: Arc<Shared>,
    predictions: Receiver<Prediction>,
    status: Receiver<RuntimeStatus>,
    commands: Receiver<Command>,
    stop: Receiver<()>,
    events: DropOldest<LinkEvent>,
    start: Instant,
    /// Highest privileged counter known to be used (mirrored in `Shared::last_counter`).
    last_counter: u64,
    /// Commands awaiting a result: counter, command, and the command's tag (results are bound
    /// to it).
    privileged: VecDeque<(u64, PrivilegedCommand, [u8; 32])>,
    pings: VecDeque<(u32, Instant)>,
}

struct Session {
    port: Box<dyn SerialPort>,
    tx_seq: u32,
    nonce: u32,
    up: Option<Liveness>,
    last_hello: Instant,
    handshake_started: Instant,
    hello_every: Duration,
    rx_seq: SeqTracker,
    /// Verifies the MCU's replies for the latest `Hello`.
    verifier: ReplyVerifier,
    /// A `HandshakeAuthFailed` was reported on this port opening.
    auth_failure_reported: bool,
}

impl Worker {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn emit(&self, e: LinkEvent) {
        self.events.push(e);
    }

    /// Drops an MCU reply: counted, logged, reported.
    fn reject(&self, kind: ReplyKind, problem: ReplyProblem) {
        let c = &self.shared.counters;
        inc(
            match problem {
                ReplyProblem::BadTag => &c.rx_auth_failed,
                ReplyProblem::Replayed => &c.rx_auth_replayed,
                ReplyProblem::Unsolicited => &c.rx_unsolicited,
            },
            1,
        );
        tracing::warn!(?kind, ?problem, "dropped a reply from the cart MCU");
        self.emit(LinkEvent::ReplyRejected { kind, problem });
    }

    /// Moves the command counter forward (never back) to `used`.
    fn counter_used(&mut self, used: u64) {
        if used > self.last_counter {
            self.last_counter = used;
            self.shared.last_counter.store(used, Ordering::Relaxed);
        }
        if auth::next_counter(self.last_counter).is_err() {
            tracing::error!(
                "the privileged-command counter of this cart key is used up ({}); \
                 privileged commands are refused until the cart is re-keyed",
                self.last_counter
            );
        }
    }

    fn run(&mut self) {
        let mut backoff = self.cfg.backoff_initial;
        let mut outage_reported = false;
        loop {
            self.shared.set_state(LinkState::Connecting);
            let opened = serialport::new(&self.cfg.port, self.cfg.baud)
                .timeout(self.cfg.io_timeout)
                .open();
            match opened {
                Ok(port) => {
                    inc(&self.shared.counters.connects, 1);
                    // Whatever arrived before we opened belongs to no session of ours.
                    if let Err(e) = port.clear(serialport::ClearBuffer::Input) {
                        tracing::debug!("cannot clear input of {}: {e}", self.cfg.port);
                    }
                    let handshakes_before = self.shared.counters.handshakes.load(Ordering::Relaxed);
                    let end = self.session(port);
                    if self.shared.counters.handshakes.load(Ordering::Relaxed) > handshakes_before {
                        backoff = self.cfg.backoff_initial;
                        outage_reported = false;
                    }
                    match end {
                        SessionEnd::Stop => return,
                        SessionEnd::PortError(e) => {
                            tracing::warn!(port = %self.cfg.port, "cart link port error: {e}");
                            self.emit(LinkEvent::Down(DownReason::PortError(e)));
                        }
                        SessionEnd::Reopen => {
                            self.emit(LinkEvent::Down(DownReason::HandshakeTimeout));
                        }
                    }
                }
                Err(e) => {
                    inc(&self.shared.counters.open_failures, 1);
                    if !outage_reported {
                        outage_reported = true;
                        tracing::warn!(port = %self.cfg.port, "cannot open cart link port: {e}");
                        self.emit(LinkEvent::Down(DownReason::OpenFailed(format!(
                            "{}: {e}",
                            self.cfg.port
                        ))));
                    }
                }
            }
            self.shared.set_state(LinkState::Connecting);
            if self.wait_backoff(backoff) {
                return;
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
    }

    /// Waits `d` while discarding predictions/status; returns true when asked to stop.
    fn wait_backoff(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            select! {
                recv(self.stop) -> _ => return true,
                recv(self.predictions) -> p => if p.is_ok() {
                    inc(&self.shared.counters.predictions_dropped_down, 1);
                },
                recv(self.status) -> _ => {},
                default(left) => return false,
            }
        }
    }

    fn session(&mut self, port: Box<dyn SerialPort>) -> SessionEnd {
        let reader_port = match port.try_clone() {
            Ok(p) => p,
            Err(e) => return SessionEnd::PortError(format!("cannot clone port handle: {e}")),
        };
        let alive = Arc::new(AtomicBool::new(true));
        let (rx_tx, rx_rx) = crossbeam_channel::bounded::<RxItem>(1024);
        let reader = {
            let alive = alive.clone();
            std::thread::Builder::new()
                .name("cart-link-rx".into())
                .spawn(move || reader_loop(reader_port, &alive, &rx_tx))
        };
        let reader = match reader {
            Ok(r) => r,
            Err(e) => return SessionEnd::PortError(format!("cannot start reader thread: {e}")),
        };
        let now = Instant::now();
        let mut s = Session {
            port,
            tx_seq: 0,
            nonce: 0,
            up: None,
            last_hello: now,
            handshake_started: now,
            hello_every: self.cfg.handshake_retry,
            rx_seq: SeqTracker::new(),
            verifier: ReplyVerifier::new(0),
            auth_failure_reported: false,
        };
        let end = match self.start_handshake(&mut s) {
            Ok(()) => self.session_loop(&mut s, &rx_rx),
            Err(end) => end,
        };
        // Stop the reader: it sees `alive` within one read timeout, and a send blocked on a
        // full channel fails once the receiving end is gone.
        alive.store(false, Ordering::Relaxed);
        drop(s);
        drop(rx_rx);
        let _ = reader.join();
        if let Ok(mut p) = self.shared.peer.lock() {
            *p = None;
        }
        end
    }

    fn start_handshake(&mut self, s: &mut Session) -> Result<(), SessionEnd> {
        self.shared.set_state(LinkState::Handshaking);
        s.up = None;
        s.handshake_started = Instant::now();
        s.hello_every = self.cfg.handshake_retry;
        self.send_hello(s)
    }

    fn send_hello(&mut self, s: &mut Session) -> Result<(), SessionEnd> {
        s.tx_seq = 0;
        s.nonce = rand::random();
        s.verifier = ReplyVerifier::new(s.nonce);
        s.last_hello = Instant::now();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            nonce: s.nonce,
            heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u16,
            watchdog_timeout_ms: self.cfg.watchdog_timeout.as_millis() as u16,
            host_name: crate::sim::truncate(&self.cfg.host_name),
        };
        self.write(s, HostMsg::Hello(hello))
    }

    fn write(&mut self, s: &mut Session, msg: HostMsg) -> Result<(), SessionEnd> {
        let env = Envelope { seq: s.tx_seq, msg };
        s.tx_seq = s.tx_seq.wrapping_add(1);
        let frame = match cart_protocol::encode_vec(&env) {
            Ok(f) => f,
            Err(e) => {
                // Cannot happen for well-formed messages (sizes are bounded by type).
                tracing::error!("cannot encode {:?}: {e}", env.msg);
                return Ok(());
            }
        };
        match s.port.write_all(&frame) {
            Ok(()) => {
                inc(&self.shared.counters.frames_sent, 1);
                if self.cfg.trace {
                    self.emit(LinkEvent::Trace(Trace::Sent(env)));
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                inc(&self.shared.counters.write_timeouts, 1);
                Ok(())
            }
            Err(e) => Err(SessionEnd::PortError(format!("write: {e}"))),
        }
    }

    fn session_loop(&mut self, s: &mut Session, rx: &Receiver<RxItem>) -> SessionEnd {
        let no_predictions = never::<Prediction>();
        let no_commands = never::<Command>();
        loop {
            if let Err(end) = self.timers(s) {
                return end;
            }
            let timeout = self.next_timeout(s);
            let up = s.up.is_some();
            let commands = if up { &self.commands } else { &no_commands };
            let predictions = if up {
                &self.predictions
            } else {
                &no_predictions
            };
            let result = select! {
                recv(self.stop) -> _ => return SessionEnd::Stop,
                recv(rx) -> item => match item {
                    Ok(item) => self.on_rx(s, item),
                    Err(_) => Err(SessionEnd::PortError("reader thread ended".into())),
                },
                recv(predictions) -> p => match p {
                    Ok(p) => self.write_prediction(s, p),
                    Err(_) => Ok(()),
                },
                recv(self.status) -> st => match st {
                    Ok(st) if up => self.write(s, HostMsg::Status(st)),
                    _ => Ok(()),
                },
                recv(commands) -> c => match c {
                    Ok(c) => self.on_command(s, c),
                    Err(_) => Ok(()),
                },
                default(timeout) => Ok(()),
            };
            if let Err(end) = result {
                return end;
            }
            // `up` may have changed during the select (a HelloAck): look again, or predictions
            // queued right after the `Up` event would be dropped.
            if s.up.is_none() {
                // Predictions never wait for a link that is down.
                let dropped = self.predictions.try_iter().count() as u64;
                inc(&self.shared.counters.predictions_dropped_down, dropped);
            }
        }
    }

    fn write_prediction(&mut self, s: &mut Session, p: Prediction) -> Result<(), SessionEnd> {
        self.write(s, HostMsg::Prediction(p))?;
        inc(&self.shared.counters.predictions_sent, 1);
        Ok(())
    }

    fn next_timeout(&self, s: &Session) -> Duration {
        let ms = match &s.up {
            Some(l) => l.next_deadline_in(self.now_ms()),
            None => s
                .hello_every
                .saturating_sub(s.last_hello.elapsed())
                .as_millis() as u64,
        };
        Duration::from_millis(ms.max(1))
    }

    fn timers(&mut self, s: &mut Session) -> Result<(), SessionEnd> {
        let now_ms = self.now_ms();
        match s.up {
            Some(ref mut l) => {
                if l.peer_lost(now_ms) {
                    let silence = Duration::from_millis(l.silence_ms(now_ms));
                    inc(&self.shared.counters.watchdog_trips, 1);
                    tracing::warn!("cart MCU silent for {silence:?}; handshaking again");
                    self.emit(LinkEvent::Down(DownReason::PeerSilent { silence }));
                    return self.start_handshake(s);
                }
                if l.heartbeat_due(now_ms) {
                    l.sent(now_ms);
                    let hb = Heartbeat {
                        uptime_ms: now_ms as u32,
                        rx_dropped: self
                            .shared
                            .counters
                            .rx_dropped_frames
                            .load(Ordering::Relaxed) as u32,
                    };
                    return self.write(s, HostMsg::Heartbeat(hb));
                }
                Ok(())
            }
            None => {
                if s.handshake_started.elapsed() >= self.cfg.reopen_after {
                    return Err(SessionEnd::Reopen);
                }
                if s.last_hello.elapsed() >= s.hello_every {
                    return self.send_hello(s);
                }
                Ok(())
            }
        }
    }

    fn on_command(&mut self, s: &mut Session, c: Command) -> Result<(), SessionEnd> {
        match c {
            Command::Display(d) => self.write(s, HostMsg::Display(d)),
            Command::Ping(nonce) => {
                if self.pings.len() >= PENDING_LIMIT {
                    self.pings.pop_front();
                }
                self.pings.push_back((nonce, Instant::now()));
                self.write(s, HostMsg::Ping(Ping { nonce }))
            }
            Command::RequestStatus => self.write(s, HostMsg::RequestStatus),
            Command::Privileged(command) => {
                let Some(key) = self.cfg.cart_key.clone() else {
                    return Ok(());
                };
                let Ok(counter) = auth::next_counter(self.last_counter) else {
                    let last_used = self.last_counter;
                    tracing::error!(
                        "not sending {command:?}: the privileged-command counter is used up \
                         ({last_used}); re-key the cart"
                    );
                    self.emit(LinkEvent::CommandRefused {
                        command,
                        reason: CommandRefusal::CounterExhausted { last_used },
                    });
                    return Ok(());
                };
                match auth::sign(&key, counter, command) {
                    Ok(signed) => {
                        self.counter_used(counter);
                        if self.privileged.len() >= PENDING_LIMIT {
                            self.privileged.pop_front();
                        }
                        self.privileged.push_back((counter, command, signed.tag));
                        self.write(s, HostMsg::Privileged(signed))
                    }
                    Err(e) => {
                        tracing::error!("cannot sign {command:?}: {e}");
                        Ok(())
                    }
                }
            }
            Command::Flush(reply) => {
                while let Ok(p) = self.predictions.try_recv() {
                    self.write_prediction(s, p)?;
                }
                while let Ok(st) = self.status.try_recv() {
                    self.write(s, HostMsg::Status(st))?;
                }
                if let Err(e) = s.port.flush() {
                    tracing::debug!("port flush: {e}");
                }
                let _ = reply.try_send(());
                Ok(())
            }
        }
    }

    fn on_rx(&mut self, s: &mut Session, item: RxItem) -> Result<(), SessionEnd> {
        let env = match item {
            RxItem::PortError(e) => return Err(SessionEnd::PortError(e)),
            RxItem::Dropped { error, lost_bytes } => {
                inc(&self.shared.counters.rx_dropped_frames, 1);
                inc(&self.shared.counters.rx_bytes_lost, lost_bytes as u64);
                tracing::debug!("dropped {lost_bytes} bytes from the MCU: {error}");
                if self.cfg.trace {
                    self.emit(LinkEvent::Trace(Trace::Dropped { error, lost_bytes }));
                }
                return Ok(());
            }
            RxItem::Frame(env) => env,
        };
        let Some(env) = self.admit(s, env) else {
            return Ok(());
        };
        inc(&self.shared.counters.frames_received, 1);
        let now_ms = self.now_ms();
        if let Some(l) = s.up.as_mut() {
            l.heard(now_ms);
        }
        if self.cfg.trace {
            self.emit(LinkEvent::Trace(Trace::Received(env.clone())));
        }
        match env.msg {
            McuMsg::HelloAck(ack, reply_auth) => self.on_hello_ack(s, ack, &reply_auth, now_ms),
            McuMsg::HelloReject(r) => {
                if r.nonce == s.nonce {
                    tracing::error!("cart MCU refused the handshake: {:?}", r.reason);
                    // Retrying fast cannot help; keep trying slowly (firmware may be updated).
                    s.hello_every = self.cfg.backoff_max;
                    self.emit(LinkEvent::Rejected(r));
                }
            }
            McuMsg::Boot(info) => {
                self.emit(LinkEvent::McuBooted(info));
                if s.up.is_some() {
                    self.emit(LinkEvent::Down(DownReason::McuRebooted(info)));
                }
                if let Ok(mut p) = self.shared.peer.lock() {
                    *p = None;
                }
                return self.start_handshake(s);
            }
            McuMsg::Heartbeat(_) => {}
            McuMsg::Pong(p) => {
                if let Some(i) = self.pings.iter().position(|(n, _)| *n == p.nonce) {
                    let (nonce, sent) = self.pings.remove(i).unwrap_or((p.nonce, Instant::now()));
                    self.emit(LinkEvent::Pong {
                        nonce,
                        rtt: sent.elapsed(),
                    });
                }
            }
            McuMsg::Button(b) => self.emit(LinkEvent::Button(b)),
            McuMsg::Status(st, reply_auth) => {
                if let Some(key) = &self.cfg.cart_key
                    && let Err(e) = s.verifier.accept(key, &Reply::Status(&st), &reply_auth)
                {
                    self.reject(ReplyKind::Status, ReplyProblem::from_error(e));
                    return Ok(());
                }
                self.emit(LinkEvent::McuStatus(st));
            }
            McuMsg::Fault(f) => self.emit(LinkEvent::Fault(f)),
            McuMsg::Log(l) => self.emit(LinkEvent::Log(l)),
            McuMsg::CommandResult(result, reply_auth) => {
                self.on_command_result(s, result, &reply_auth);
            }
        }
        Ok(())
    }

    /// Checks a frame's sequence number (a (re)boot or handshake answer starts a new
    /// sequence); a stale frame is counted and dropped, a gap counted as lost frames.
    fn admit(&mut self, s: &mut Session, env: Envelope<McuMsg>) -> Option<Envelope<McuMsg>> {
        if matches!(env.msg, McuMsg::Boot(_) | McuMsg::HelloAck(..)) {
            s.rx_seq.reset();
        }
        match s.rx_seq.observe(env.seq) {
            SeqCheck::Stale => {
                inc(&self.shared.counters.rx_stale, 1);
                if self.cfg.trace {
                    self.emit(LinkEvent::Trace(Trace::Stale(env)));
                }
                return None;
            }
            SeqCheck::Gap { missing } => {
                inc(&self.shared.counters.rx_lost_by_seq, u64::from(missing));
            }
            SeqCheck::First | SeqCheck::InOrder => {}
        }
        Some(env)
    }

    /// The MCU's answer to our Hello: with a cart key it must verify, else the link stays
    /// down; then the session is up and the peer known.
    fn on_hello_ack(
        &mut self,
        s: &mut Session,
        ack: HelloAck,
        reply_auth: &ReplyAuth,
        now_ms: u64,
    ) {
        if s.up.is_some() || ack.nonce != s.nonce {
            return; // an answer to an earlier Hello
        }
        let authenticated = match &self.cfg.cart_key {
            Some(key) => {
                if let Err(e) = s.verifier.accept(key, &Reply::HelloAck(&ack), reply_auth) {
                    let problem = ReplyProblem::from_error(e);
                    self.reject(ReplyKind::HelloAck, problem);
                    if !s.auth_failure_reported {
                        s.auth_failure_reported = true;
                        tracing::error!(
                            port = %self.cfg.port,
                            "the cart MCU's handshake answer does not verify with the \
                             configured cart key (wrong key file, or a forged answer); \
                             the link stays down"
                        );
                        self.emit(LinkEvent::Down(DownReason::HandshakeAuthFailed { problem }));
                    }
                    return;
                }
                true
            }
            None => false,
        };
        let interval = self.cfg.heartbeat_interval.as_millis() as u16;
        let timeout = self.cfg.watchdog_timeout.as_millis() as u16;
        let mut l = Liveness::new(interval, timeout, now_ms);
        l.sent(now_ms);
        s.up = Some(l);
        if authenticated {
            // Only authenticated evidence moves the counter; never backwards.
            self.counter_used(ack.last_counter);
        }
        let peer = PeerInfo {
            version: ack.version,
            cart_id: ack.cart_id.as_str().to_owned(),
            firmware: ack.firmware.as_str().to_owned(),
            build_id: ack.build_id,
            last_counter: ack.last_counter,
            active_slot: ack.active_slot,
            authenticated,
        };
        if let Ok(mut p) = self.shared.peer.lock() {
            *p = Some(peer.clone());
        }
        inc(&self.shared.counters.handshakes, 1);
        self.shared.set_state(LinkState::Up);
        tracing::info!(
            cart = %peer.cart_id,
            firmware = %peer.firmware,
            authenticated,
            "cart link up"
        );
        self.emit(LinkEvent::Up(peer));
    }

    /// The outcome of a privileged command we signed: it must answer a pending command and
    /// verify against that command's tag; an unsolicited or forged one is rejected.
    fn on_command_result(
        &mut self,
        s: &mut Session,
        result: CommandResult,
        reply_auth: &ReplyAuth,
    ) {
        // Pending entries exist only when the link has a key (it signed them).
        let pending = self
            .privileged
            .iter()
            .position(|(c, _, _)| *c == result.counter);
        let (Some(i), Some(key)) = (pending, &self.cfg.cart_key) else {
            self.reject(ReplyKind::CommandResult, ReplyProblem::Unsolicited);
            return;
        };
        let (_, command, request_tag) = self.privileged[i];
        let reply = Reply::CommandResult {
            result: &result,
            request_tag: &request_tag,
        };
        if let Err(e) = s.verifier.accept(key, &reply, reply_auth) {
            // The command stays pending: the genuine answer may still come.
            self.reject(ReplyKind::CommandResult, ReplyProblem::from_error(e));
            return;
        }
        self.privileged.remove(i);
        self.emit(LinkEvent::CommandResult {
            command: Some(command),
            result,
        });
    }
}

fn reader_loop(mut port: Box<dyn SerialPort>, alive: &AtomicBool, out: &Sender<RxItem>) {
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut buf = [0u8; 1024];
    while alive.load(Ordering::Relaxed) {
        let n = match port.read(&mut buf) {
            Ok(0) => {
                let _ = out.send(RxItem::PortError("port closed (end of file)".into()));
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                let _ = out.send(RxItem::PortError(format!("read: {e}")));
                return;
            }
        };
        let mut input = &buf[..n];
        loop {
            let item = match decoder.feed::<McuMsg>(input) {
                Feed::Consumed => break,
                Feed::Frame { envelope, rest } => {
                    input = rest;
                    RxItem::Frame(envelope)
                }
                Feed::Dropped {
                    error,
                    lost_bytes,
                    rest,
                } => {
                    input = rest;
                    RxItem::Dropped { error, lost_bytes }
                }
            };
            // Blocks only if the link thread is 1024 items behind; it drains continuously.
            if out.send(item).is_err() {
                return;
            }
        }
    }
}
