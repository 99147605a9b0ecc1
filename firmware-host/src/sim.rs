//! A simulated cart MCU: the MCU side of the protocol, run over a real pseudo-terminal.
//!
//! [`McuCore`] is the MCU's logic with no I/O (bytes in, frames out, on a caller-supplied
//! millisecond clock), written against the same `cart-protocol` crate the firmware uses.
//! [`SimMcu`] runs a core on its own thread behind the master side of a pty pair; the host opens
//! the slave path (or a stable symlink to it) exactly like a real UART. Faults are injected with a
//! seeded random stream: dropped and bit-flipped bytes in each direction, duplicated frames,
//! stalls and reboots, plus "unplugging" (the pty disappears and comes back under a new name,
//! which the symlink follows, like a udev by-id link).
//!
//! This is what `firmware-host simulate` runs and what the link's tests talk to.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cart_protocol::auth::{CartKey, Reply, ReplySigner};
use cart_protocol::{
    BootInfo, ButtonAction, ButtonEvent, CommandOutcome, CommandResult, DisplayCommand, Envelope,
    FaultCode, FaultReport, Feed, FrameDecoder, Heartbeat, HelloAck, HelloReject, HostMsg,
    Liveness, LogLevel, LogPayload, LogRecord, McuMsg, McuStatus, PROTOCOL_VERSION, PowerSource,
    Prediction, PrivilegedCommand, RejectReason, ReplayGuard, ResetCause, SeqCheck, SeqTracker,
    Slot,
};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serialport::{SerialPort, TTYPort};

use crate::faults::{ByteFaults, FaultInjector, InjectorStats, JournalEntry};

/// Who the simulated MCU claims to be, and what it keeps in non-volatile memory.
#[derive(Debug, Clone)]
pub struct McuConfig {
    /// Reported in `HelloAck`.
    pub cart_id: String,
    /// Reported in `HelloAck`.
    pub firmware: String,
    /// Reported in `HelloAck`.
    pub build_id: [u8; 8],
    /// Per-cart HMAC key.
    pub key: CartKey,
    /// Highest privileged counter accepted before (non-volatile).
    pub last_counter: u64,
    /// Active model slot (non-volatile).
    pub active_slot: Option<Slot>,
    /// Boots so far (non-volatile).
    pub boot_count: u32,
}

impl Default for McuConfig {
    fn default() -> Self {
        Self {
            cart_id: "sim-cart-0001".into(),
            firmware: "sim-1.0.0".into(),
            build_id: *b"SIMBUILD",
            key: CartKey::new([0x5A; 32]),
            last_counter: 0,
            active_slot: Some(Slot::A),
            boot_count: 0,
        }
    }
}

/// Something the simulated MCU did or saw, reported to whoever drives it.
#[derive(Debug, Clone, PartialEq)]
pub enum SimReport {
    /// A host completed the handshake.
    HostUp {
        /// From the host's `Hello`.
        host_name: String,
    },
    /// A host message was accepted (not stale, not a duplicate).
    Received(Envelope<HostMsg>),
    /// A frame from the host was dropped by the decoder.
    RxDropped {
        /// Why.
        error: cart_protocol::Error,
        /// Bytes lost.
        lost_bytes: usize,
    },
    /// A frame from the host was a duplicate or stale and was ignored.
    RxStale {
        /// Its sequence number.
        seq: u32,
    },
    /// The host was silent longer than the watchdog timeout.
    HostLost {
        /// Silence in ms.
        silence_ms: u64,
    },
    /// A privileged command was checked.
    Command {
        /// The counter it carried.
        counter: u64,
        /// The command as sent (also when refused).
        command: PrivilegedCommand,
        /// What the MCU did.
        outcome: CommandOutcome,
    },
    /// The MCU (re)booted.
    Booted(BootInfo),
    /// A reply could not be authenticated and was not sent (no host `Hello` since boot, or the
    /// session's reply counters are used up, which ends the session).
    ReplyNotSigned {
        /// The reply's [`McuMsg`] variant index.
        kind: u8,
        /// Why: `None` when no host session was open to sign for, else the signer's error
        /// ([`cart_protocol::Error::CounterExhausted`]).
        error: Option<cart_protocol::Error>,
    },
    /// The MCU stopped responding for a while (injected).
    Stalled {
        /// Length of the stall.
        ms: u64,
    },
    /// The pty was torn down and recreated (injected); the host must reopen.
    Replugged {
        /// The new slave path.
        path: PathBuf,
    },
}

/// The display as the MCU would show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DisplayState {
    /// Text lines set by `Display::Text` (line 0..4).
    pub lines: [String; 4],
    /// Latest prediction shown.
    pub prediction: Option<Prediction>,
}

struct Session {
    liveness: Liveness,
}

/// The MCU's protocol logic, free of I/O and wall-clock time.
pub struct McuCore {
    config: McuConfig,
    guard: ReplayGuard,
    decoder: FrameDecoder,
    rx_seq: SeqTracker,
    tx_seq: u32,
    boot_ms: u64,
    session: Option<Session>,
    /// Signs replies for the host session opened by the latest `Hello` (kept across a host
    /// watchdog trip, so a late status answer still verifies; gone after a reboot).
    signer: Option<ReplySigner>,
    host_watchdog_trips: u32,
    outbox: Vec<Envelope<McuMsg>>,
    reports: Vec<SimReport>,
    reboot_requested: bool,
    display: DisplayState,
}

impl McuCore {
    /// Boots (power-on) at `now_ms`; the `Boot` message is waiting in the outbox.
    pub fn new(config: McuConfig, now_ms: u64) -> Self {
        let guard = ReplayGuard::new(config.last_counter);
        let mut core = Self {
            config,
            guard,
            decoder: FrameDecoder::new(),
            rx_seq: SeqTracker::new(),
            tx_seq: 0,
            boot_ms: now_ms,
            session: None,
            signer: None,
            host_watchdog_trips: 0,
            outbox: Vec::new(),
            reports: Vec::new(),
            reboot_requested: false,
            display: DisplayState::default(),
        };
        core.boot(ResetCause::PowerOn, now_ms);
        core
    }

    /// Reboots: volatile state is lost, non-volatile state (counter, slot, boot count) kept.
    pub fn boot(&mut self, cause: ResetCause, now_ms: u64) {
        self.config.boot_count = self.config.boot_count.wrapping_add(1);
        self.config.last_counter = self.guard.last_accepted();
        self.decoder = FrameDecoder::new();
        self.rx_seq = SeqTracker::new();
        self.tx_seq = 0;
        self.boot_ms = now_ms;
        self.session = None;
        self.signer = None;
        self.reboot_requested = false;
        self.display = DisplayState::default();
        self.outbox.clear();
        let info = BootInfo {
            reset_cause: cause,
            boot_count: self.config.boot_count,
        };
        self.send(McuMsg::Boot(info));
        self.reports.push(SimReport::Booted(info));
    }

    fn uptime(&self, now_ms: u64) -> u32 {
        // Wraps like the firmware's u32 millisecond counter.
        now_ms.saturating_sub(self.boot_ms) as u32
    }

    fn send(&mut self, msg: McuMsg) {
        let seq = self.tx_seq;
        self.tx_seq = self.tx_seq.wrapping_add(1);
        self.outbox.push(Envelope { seq, msg });
    }

    /// Authenticates a reply for the current host session; `None` (reported) when there is no
    /// session to sign for or its reply counters are exhausted (the session then ends, so the
    /// host's watchdog makes it handshake again under a new nonce).
    fn sign(&mut self, reply: &Reply<'_>) -> Option<cart_protocol::ReplyAuth> {
        let kind = reply.kind();
        let result = match self.signer.as_mut() {
            Some(signer) => signer.sign(&self.config.key, reply),
            None => {
                self.reports
                    .push(SimReport::ReplyNotSigned { kind, error: None });
                return None;
            }
        };
        match result {
            Ok(auth) => Some(auth),
            Err(error) => {
                self.signer = None;
                self.session = None;
                self.reports.push(SimReport::ReplyNotSigned {
                    kind,
                    error: Some(error),
                });
                None
            }
        }
    }

    /// Frames to transmit, in order.
    pub fn take_outbox(&mut self) -> Vec<Envelope<McuMsg>> {
        std::mem::take(&mut self.outbox)
    }

    /// Things that happened since the last call.
    pub fn take_reports(&mut self) -> Vec<SimReport> {
        std::mem::take(&mut self.reports)
    }

    /// A `PrivilegedCommand::Reboot` was accepted; the driver should call [`McuCore::boot`].
    pub fn reboot_requested(&self) -> bool {
        self.reboot_requested
    }

    /// Whether a host session is up.
    pub fn session_up(&self) -> bool {
        self.session.is_some()
    }

    /// What the display shows.
    pub fn display(&self) -> &DisplayState {
        &self.display
    }

    /// Non-volatile state as it stands.
    pub fn persistent(&self) -> McuConfig {
        let mut c = self.config.clone();
        c.last_counter = self.guard.last_accepted();
        c
    }

    /// Decoder counters.
    pub fn rx_stats(&self) -> cart_protocol::DecoderStats {
        self.decoder.stats()
    }

    /// Bytes received from the UART.
    pub fn on_bytes(&mut self, bytes: &[u8], now_ms: u64) {
        let mut input = bytes;
        loop {
            match self.decoder.feed::<HostMsg>(input) {
                Feed::Consumed => break,
                Feed::Frame { envelope, rest } => {
                    input = rest;
                    self.on_frame(envelope, now_ms);
                }
                Feed::Dropped {
                    error,
                    lost_bytes,
                    rest,
                } => {
                    input = rest;
                    self.reports
                        .push(SimReport::RxDropped { error, lost_bytes });
                    let dropped = self.decoder.stats().dropped;
                    if dropped.is_multiple_of(50) {
                        let at_ms = self.uptime(now_ms);
                        self.send(McuMsg::Fault(FaultReport {
                            code: FaultCode::LinkErrors,
                            detail: dropped,
                            at_ms,
                        }));
                    }
                }
            }
        }
    }

    fn on_frame(&mut self, envelope: Envelope<HostMsg>, now_ms: u64) {
        if matches!(envelope.msg, HostMsg::Hello(_)) {
            self.rx_seq.reset();
        }
        if self.rx_seq.observe(envelope.seq) == SeqCheck::Stale {
            self.reports.push(SimReport::RxStale { seq: envelope.seq });
            return;
        }
        if let Some(s) = self.session.as_mut() {
            s.liveness.heard(now_ms);
        }
        self.reports.push(SimReport::Received(envelope.clone()));
        let at_ms = self.uptime(now_ms);
        match envelope.msg {
            HostMsg::Hello(hello) => {
                if hello.version.major != PROTOCOL_VERSION.major {
                    self.send(McuMsg::HelloReject(HelloReject {
                        nonce: hello.nonce,
                        supported: PROTOCOL_VERSION,
                        reason: RejectReason::IncompatibleVersion,
                    }));
                    return;
                }
                if hello.heartbeat_interval_ms == 0
                    || hello.watchdog_timeout_ms <= hello.heartbeat_interval_ms
                {
                    self.send(McuMsg::HelloReject(HelloReject {
                        nonce: hello.nonce,
                        supported: PROTOCOL_VERSION,
                        reason: RejectReason::BadTiming,
                    }));
                    return;
                }
                let mut liveness = Liveness::new(
                    hello.heartbeat_interval_ms,
                    hello.watchdog_timeout_ms,
                    now_ms,
                );
                // The ack itself counts as the first heartbeat.
                liveness.sent(now_ms);
                self.session = Some(Session { liveness });
                self.signer = Some(ReplySigner::new(hello.nonce));
                self.reports.push(SimReport::HostUp {
                    host_name: hello.host_name.as_str().to_owned(),
                });
                let ack = HelloAck {
                    version: PROTOCOL_VERSION,
                    nonce: hello.nonce,
                    cart_id: truncate(&self.config.cart_id),
                    firmware: truncate(&self.config.firmware),
                    build_id: self.config.build_id,
                    last_counter: self.guard.last_accepted(),
                    active_slot: self.config.active_slot,
                };
                if let Some(auth) = self.sign(&Reply::HelloAck(&ack)) {
                    self.send(McuMsg::HelloAck(ack, auth));
                }
                self.log(LogLevel::Info, "host connected", now_ms);
            }
            HostMsg::Heartbeat(_) => {}
            HostMsg::Ping(p) => self.send(McuMsg::Pong(p)),
            HostMsg::Prediction(p) => self.display.prediction = Some(p),
            HostMsg::Status(_) => {}
            HostMsg::Display(cmd) => {
                if let DisplayCommand::Text { line, text } = cmd {
                    if let Some(l) = self.display.lines.get_mut(line as usize) {
                        *l = text.as_str().to_owned();
                    }
                } else if cmd == DisplayCommand::Clear {
                    self.display.lines = Default::default();
                }
            }
            HostMsg::RequestStatus => {
                let status = McuStatus {
                    uptime_ms: at_ms,
                    boot_count: self.config.boot_count,
                    power: PowerSource::Mains,
                    temperature_c: Some(36.5),
                    active_slot: self.config.active_slot,
                    last_counter: self.guard.last_accepted(),
                    rx_dropped: self.decoder.stats().dropped,
                    host_watchdog_trips: self.host_watchdog_trips,
                };
                if let Some(auth) = self.sign(&Reply::Status(&status)) {
                    self.send(McuMsg::Status(status, auth));
                }
            }
            HostMsg::Privileged(signed) => {
                let outcome = match self.guard.accept(&self.config.key, &signed) {
                    Ok(PrivilegedCommand::SwitchModelSlot { slot }) => {
                        self.config.active_slot = Some(slot);
                        CommandOutcome::Accepted
                    }
                    Ok(PrivilegedCommand::Reboot) => {
                        self.reboot_requested = true;
                        CommandOutcome::Accepted
                    }
                    Err(cart_protocol::Error::Replayed) => CommandOutcome::Replayed,
                    Err(_) => {
                        self.send(McuMsg::Fault(FaultReport {
                            code: FaultCode::AuthFailure,
                            detail: signed.counter as u32,
                            at_ms,
                        }));
                        CommandOutcome::BadTag
                    }
                };
                self.reports.push(SimReport::Command {
                    counter: signed.counter,
                    command: signed.command,
                    outcome,
                });
                let result = CommandResult {
                    counter: signed.counter,
                    outcome,
                };
                let reply = Reply::CommandResult {
                    result: &result,
                    request_tag: &signed.tag,
                };
                if let Some(auth) = self.sign(&reply) {
                    self.send(McuMsg::CommandResult(result, auth));
                }
            }
        }
    }

    /// Timers: heartbeats and the host watchdog.
    pub fn tick(&mut self, now_ms: u64) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if session.liveness.peer_lost(now_ms) {
            let silence_ms = session.liveness.silence_ms(now_ms);
            self.session = None;
            self.host_watchdog_trips += 1;
            self.reports.push(SimReport::HostLost { silence_ms });
            let at_ms = self.uptime(now_ms);
            self.send(McuMsg::Fault(FaultReport {
                code: FaultCode::HostWatchdog,
                detail: silence_ms as u32,
                at_ms,
            }));
            self.display.lines[0] = "HOST LOST".into();
            return;
        }
        if session.liveness.heartbeat_due(now_ms) {
            session.liveness.sent(now_ms);
            let hb = Heartbeat {
                uptime_ms: self.uptime(now_ms),
                rx_dropped: self.decoder.stats().dropped,
            };
            self.send(McuMsg::Heartbeat(hb));
        }
    }

    /// A button event; `at_ms` overrides the timestamp (tests use it as an id).
    pub fn button(&mut self, button: cart_protocol::Button, action: ButtonAction, at_ms: u32) {
        self.send(McuMsg::Button(ButtonEvent {
            button,
            action,
            at_ms,
        }));
    }

    /// A text log record.
    pub fn log(&mut self, level: LogLevel, text: &str, now_ms: u64) {
        let payload = LogPayload::Text(truncate(text));
        let at_ms = self.uptime(now_ms);
        self.send(McuMsg::Log(LogRecord {
            level,
            at_ms,
            payload,
        }));
    }

    /// A raw defmt frame as the firmware's global logger would wrap it.
    pub fn defmt_log(&mut self, level: LogLevel, frame: &[u8], now_ms: u64) {
        let mut v = heapless::Vec::new();
        let _ = v.extend_from_slice(&frame[..frame.len().min(v.capacity())]);
        let at_ms = self.uptime(now_ms);
        self.send(McuMsg::Log(LogRecord {
            level,
            at_ms,
            payload: LogPayload::Defmt(v),
        }));
    }

    /// A fault report.
    pub fn fault(&mut self, code: FaultCode, detail: u32, now_ms: u64) {
        let at_ms = self.uptime(now_ms);
        self.send(McuMsg::Fault(FaultReport {
            code,
            detail,
            at_ms,
        }));
    }
}

/// Cuts `s` to fit a bounded string (at a char boundary).
pub fn truncate<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// Fault injection settings of a simulated MCU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SimFaults {
    /// Seed of every random choice.
    pub seed: u64,
    /// Faults on bytes from the host.
    pub rx: ByteFaults,
    /// Faults on bytes to the host.
    pub tx: ByteFaults,
    /// Probability that a transmitted frame is sent twice.
    pub duplicate_rate: f64,
    /// Random stalls per second (the MCU neither reads nor writes for `stall_ms`).
    pub stall_rate: f64,
    /// Length of a random stall.
    pub stall_ms: u64,
    /// Random reboots per second.
    pub reboot_rate: f64,
}

/// Everything needed to start a [`SimMcu`].
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    /// Identity and non-volatile state.
    pub mcu: McuConfig,
    /// Fault injection.
    pub faults: SimFaults,
    /// Keep journals of which frames were hit (tests).
    pub journal: bool,
    /// Maintain a symlink here that always points at the current slave pty.
    pub link: Option<PathBuf>,
}

/// Commands to a running [`SimMcu`].
#[derive(Debug, Clone)]
pub enum SimControl {
    /// A button event (`at_ms: None` = MCU uptime).
    Button {
        /// Which.
        button: cart_protocol::Button,
        /// What.
        action: ButtonAction,
        /// Timestamp override.
        at_ms: Option<u32>,
    },
    /// A text log record.
    Log(LogLevel, String),
    /// A raw defmt frame wrapped in a log record.
    DefmtLog(LogLevel, Vec<u8>),
    /// A fault report.
    Fault(FaultCode, u32),
    /// Stop reading and writing for this long.
    Stall(Duration),
    /// Reboot now.
    Reboot,
    /// Tear the pty down and create a new one (needs [`SimConfig::link`] for the host to find it).
    Replug,
    /// New byte-fault rates.
    SetFaults {
        /// From the host.
        rx: ByteFaults,
        /// To the host.
        tx: ByteFaults,
    },
    /// Answer with the current state.
    Snapshot(Sender<SimSnapshot>),
}

/// Observable state of a running simulator.
#[derive(Debug, Clone, Default)]
pub struct SimSnapshot {
    /// Current slave path.
    pub slave_path: PathBuf,
    /// Journal of frames from the host.
    pub rx_journal: Vec<JournalEntry>,
    /// Journal of frames to the host.
    pub tx_journal: Vec<JournalEntry>,
    /// Injector counters, host to MCU.
    pub rx_injected: InjectorStats,
    /// Injector counters, MCU to host.
    pub tx_injected: InjectorStats,
    /// What the display shows.
    pub display: DisplayState,
    /// Non-volatile state.
    pub persistent: PersistentSummary,
    /// Frames the MCU's decoder dropped.
    pub rx_dropped: u32,
    /// Whether a host session is up.
    pub session_up: bool,
}

/// Non-volatile state summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistentSummary {
    /// Highest accepted counter.
    pub last_counter: u64,
    /// Active slot.
    pub active_slot: Option<Slot>,
    /// Boots.
    pub boot_count: u32,
}

/// A simulated MCU on its own thread behind a pseudo-terminal.
pub struct SimMcu {
    port_path: PathBuf,
    control: Sender<SimControl>,
    reports: Receiver<SimReport>,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

/// Capacity of the report channel; when full, newer reports are dropped.
pub const REPORT_CAPACITY: usize = 65_536;

struct Pty {
    master: TTYPort,
    // Held open so the master never sees a hang-up while no host has the slave open.
    _slave: TTYPort,
    path: PathBuf,
}

fn open_pty(link: Option<&Path>) -> io::Result<Pty> {
    let (mut master, slave) = TTYPort::pair().map_err(io::Error::other)?;
    master
        .set_timeout(Duration::from_millis(5))
        .map_err(io::Error::other)?;
    let path = PathBuf::from(
        slave
            .name()
            .ok_or_else(|| io::Error::other("pty slave has no name"))?,
    );
    if let Some(link) = link {
        // Replace the link atomically: make a new one beside it, then rename over.
        let tmp = link.with_extension("new-link");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&path, &tmp)?;
        std::fs::rename(&tmp, link)?;
    }
    Ok(Pty {
        master,
        _slave: slave,
        path,
    })
}

impl SimMcu {
    /// Creates the pty and starts the MCU thread. The MCU boots immediately.
    pub fn spawn(config: SimConfig) -> io::Result<SimMcu> {
        let pty = open_pty(config.link.as_deref())?;
        let port_path = config.link.clone().unwrap_or_else(|| pty.path.clone());
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let (report_tx, report_rx) = crossbeam_channel::bounded(REPORT_CAPACITY);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("sim-mcu".into())
            .spawn(move || {
                let mut driver = Driver::new(config, pty, report_tx);
                driver.run(&control_rx, &stop_rx);
            })?;
        Ok(SimMcu {
            port_path,
            control: control_tx,
            reports: report_rx,
            stop: stop_tx,
            thread: Some(thread),
        })
    }

    /// The path a host should open: the symlink if one was asked for, else the slave pty.
    pub fn port_path(&self) -> &Path {
        &self.port_path
    }

    /// Sends a command to the simulator.
    pub fn control(&self, c: SimControl) {
        // The thread only exits on `stop`, after which nobody calls this.
        let _ = self.control.send(c);
    }

    /// Presses (or releases) a button.
    pub fn button(&self, button: cart_protocol::Button, action: ButtonAction, at_ms: Option<u32>) {
        self.control(SimControl::Button {
            button,
            action,
            at_ms,
        });
    }

    /// What the MCU did and saw, in order.
    pub fn reports(&self) -> &Receiver<SimReport> {
        &self.reports
    }

    /// Current observable state, or `None` if the simulator did not answer within `timeout`.
    pub fn snapshot(&self, timeout: Duration) -> Option<SimSnapshot> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.control(SimControl::Snapshot(tx));
        rx.recv_timeout(timeout).ok()
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SimMcu {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Driver {
    config: SimConfig,
    pty: Pty,
    core: McuCore,
    rx_inject: FaultInjector,
    tx_inject: FaultInjector,
    rng: ChaCha8Rng,
    start: Instant,
    last_chaos_ms: u64,
    stalled_until: Option<u64>,
    reports: Sender<SimReport>,
}

impl Driver {
    fn new(config: SimConfig, pty: Pty, reports: Sender<SimReport>) -> Self {
        let f = config.faults;
        Self {
            core: McuCore::new(config.mcu.clone(), 0),
            rx_inject: FaultInjector::new(f.seed ^ 0x5258, f.rx, config.journal),
            tx_inject: FaultInjector::new(f.seed ^ 0x5458, f.tx, config.journal),
            rng: ChaCha8Rng::seed_from_u64(f.seed),
            start: Instant::now(),
            last_chaos_ms: 0,
            stalled_until: None,
            config,
            pty,
            reports,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn run(&mut self, control: &Receiver<SimControl>, stop: &Receiver<()>) {
        let mut buf = [0u8; 512];
        // The power-on `Boot` goes out before any control is answered.
        self.flush();
        loop {
            if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
                return;
            }
            let got = match self.pty.master.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    tracing::warn!("simulated MCU: pty read failed: {e}; recreating the pty");
                    self.replug();
                    0
                }
            };
            // Controls are applied after the read and before its bytes are processed, so a
            // control sent before some host bytes were written takes effect before them.
            while let Ok(c) = control.try_recv() {
                self.apply(c);
            }
            let now = self.now_ms();
            if let Some(until) = self.stalled_until {
                if now < until {
                    continue; // a hung MCU loses what arrives (UART overrun)
                }
                self.stalled_until = None;
            }
            // Timers first: an MCU resuming from a stall checks its watchdog before it looks
            // at what arrived meanwhile.
            self.core.tick(now);
            if got > 0 {
                let mut noisy = Vec::with_capacity(got);
                self.rx_inject.apply(&buf[..got], &mut noisy);
                self.core.on_bytes(&noisy, now);
            }
            self.core.tick(now);
            self.chaos(now);
            if self.core.reboot_requested() {
                self.flush();
                self.core.boot(ResetCause::Commanded, now);
            }
            self.flush();
        }
    }

    fn chaos(&mut self, now: u64) {
        let f = self.config.faults;
        let dt = now.saturating_sub(self.last_chaos_ms) as f64 / 1000.0;
        self.last_chaos_ms = now;
        if f.stall_rate > 0.0 && self.rng.random::<f64>() < f.stall_rate * dt {
            self.stall(Duration::from_millis(f.stall_ms));
        }
        if f.reboot_rate > 0.0 && self.rng.random::<f64>() < f.reboot_rate * dt {
            self.core.boot(ResetCause::Watchdog, now);
        }
    }

    fn stall(&mut self, d: Duration) {
        let ms = d.as_millis() as u64;
        self.stalled_until = Some(self.now_ms() + ms);
        let _ = self.reports.try_send(SimReport::Stalled { ms });
    }

    fn apply(&mut self, c: SimControl) {
        let now = self.now_ms();
        match c {
            SimControl::Button {
                button,
                action,
                at_ms,
            } => {
                let at = at_ms.unwrap_or(now as u32);
                self.core.button(button, action, at);
            }
            SimControl::Log(level, text) => self.core.log(level, &text, now),
            SimControl::DefmtLog(level, frame) => self.core.defmt_log(level, &frame, now),
            SimControl::Fault(code, detail) => self.core.fault(code, detail, now),
            SimControl::Stall(d) => self.stall(d),
            SimControl::Reboot => self.core.boot(ResetCause::Watchdog, now),
            SimControl::Replug => self.replug(),
            SimControl::SetFaults { rx, tx } => {
                self.rx_inject.set_faults(rx);
                self.tx_inject.set_faults(tx);
            }
            SimControl::Snapshot(reply) => {
                let _ = reply.try_send(self.snapshot());
            }
        }
    }

    fn replug(&mut self) {
        match open_pty(self.config.link.as_deref()) {
            Ok(pty) => {
                // The old pair is dropped here: the host's open slave sees a hang-up.
                self.pty = pty;
                let path = self.pty.path.clone();
                let _ = self.reports.try_send(SimReport::Replugged { path });
            }
            Err(e) => tracing::error!("simulated MCU: cannot recreate the pty: {e}"),
        }
    }

    fn flush(&mut self) {
        for r in self.core.take_reports() {
            let _ = self.reports.try_send(r);
        }
        let frames = self.core.take_outbox();
        if frames.is_empty() {
            return;
        }
        let mut wire = Vec::new();
        for env in &frames {
            let Ok(frame) = cart_protocol::encode_vec(env) else {
                continue;
            };
            self.tx_inject.apply(&frame, &mut wire);
            let dup = self.config.faults.duplicate_rate;
            if dup > 0.0 && self.rng.random::<f64>() < dup {
                wire.extend_from_slice(&frame);
            }
        }
        if let Err(e) = self.pty.master.write_all(&wire) {
            // Nobody is reading the slave (no host) and its buffer is full: the UART just
            // transmits into the void, as a real one would.
            tracing::debug!("simulated MCU: write failed: {e}");
        }
    }

    fn snapshot(&self) -> SimSnapshot {
        let p = self.core.persistent();
        SimSnapshot {
            slave_path: self.pty.path.clone(),
            rx_journal: self.rx_inject.journal().to_vec(),
            tx_journal: self.tx_inject.journal().to_vec(),
            rx_injected: self.rx_inject.stats(),
            tx_injected: self.tx_inject.stats(),
            display: self.core.display().clone(),
            persistent: PersistentSummary {
                last_counter: p.last_counter,
                active_slot: p.active_slot,
                boot_count: p.boot_count,
            },
            rx_dropped: self.core.rx_stats().dropped,
            session_up: self.core.session_up(),
        }
    }
}
