//! Every message the cart computer and its microcontroller exchange, one type per direction.
//!
//! [`HostMsg`] flows from the cart computer (the "host") to the MCU; [`McuMsg`] flows back. Keeping
//! the directions apart means a decoder can only ever produce messages its side is meant to see.
//! The enum variant order is the wire discriminant: append new variants at the end and bump
//! [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION)'s minor number; an older peer then drops the
//! unknown variant as a [`Error::Deserialize`](crate::Error::Deserialize) frame and carries on.

use heapless::{String, Vec};
use postcard::experimental::max_size::MaxSize;
use serde::{Deserialize, Serialize};

/// Length bound of the view label carried in a [`Prediction`] (e.g. `"A4C"`, `"PLAX"`).
pub const VIEW_LABEL_LEN: usize = 12;
/// Length bound of identifiers: model id, cart id, firmware version, host name.
pub const ID_LEN: usize = 24;
/// Length bound of one display line.
pub const DISPLAY_TEXT_LEN: usize = 32;
/// Length bound of one MCU log record's payload (text or raw defmt frame).
pub const LOG_PAYLOAD_LEN: usize = 64;

/// Protocol version. Peers with different `major` refuse each other in the handshake; a different
/// `minor` is compatible (only appended variants/messages differ).
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ProtocolVersion {
    /// Incompatible changes.
    pub major: u8,
    /// Compatible additions.
    pub minor: u8,
}

/// One frame's content: a per-sender sequence number and the message.
///
/// `seq` starts at 0 after every handshake (host) or boot (MCU) and increases by one per frame,
/// wrapping at `u32::MAX`. Receivers use it to count lost frames and to drop duplicates
/// (see [`SeqTracker`](crate::SeqTracker)).
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Envelope<M> {
    /// Sender's frame counter.
    pub seq: u32,
    /// The message.
    pub msg: M,
}

/// Messages from the cart computer to the MCU.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HostMsg {
    /// Opens a session; the MCU answers [`McuMsg::HelloAck`] or [`McuMsg::HelloReject`].
    Hello(Hello),
    /// Host is alive; sent every `heartbeat_interval_ms` agreed in the handshake.
    Heartbeat(Heartbeat),
    /// Round-trip probe; the MCU answers [`McuMsg::Pong`] with the same nonce.
    Ping(Ping),
    /// The newest model output for the cart display.
    Prediction(Prediction),
    /// Runtime health for the cart display / service menu.
    Status(RuntimeStatus),
    /// Drive the small display or the LEDs.
    Display(DisplayCommand),
    /// A command that changes the cart's state; authenticated (HMAC) and replay-protected.
    Privileged(SignedCommand),
    /// Ask the MCU for a [`McuMsg::Status`].
    RequestStatus,
}

/// Messages from the MCU to the cart computer.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum McuMsg {
    /// Handshake accepted; the session is up. Authenticated (see [`ReplyAuth`]).
    HelloAck(HelloAck, ReplyAuth),
    /// Handshake refused (e.g. incompatible major version).
    HelloReject(HelloReject),
    /// MCU is alive.
    Heartbeat(Heartbeat),
    /// Answer to [`HostMsg::Ping`].
    Pong(Ping),
    /// A cart button changed state.
    Button(ButtonEvent),
    /// Answer to [`HostMsg::RequestStatus`]. Authenticated (see [`ReplyAuth`]).
    Status(McuStatus, ReplyAuth),
    /// Something went wrong on the MCU side.
    Fault(FaultReport),
    /// A log record from the MCU firmware (plain text or a raw defmt frame).
    Log(LogRecord),
    /// Outcome of a [`HostMsg::Privileged`] command. Authenticated and bound to the command it
    /// answers (see [`ReplyAuth`]).
    CommandResult(CommandResult, ReplyAuth),
    /// Sent once after every MCU (re)boot; the host must redo the handshake.
    Boot(BootInfo),
}

/// Handshake request.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Hello {
    /// Host's protocol version.
    pub version: ProtocolVersion,
    /// Echoed in the answer so a stale answer cannot be taken for a fresh one.
    pub nonce: u32,
    /// How often each side sends a heartbeat.
    pub heartbeat_interval_ms: u16,
    /// Silence longer than this means the peer is gone (both sides apply it).
    pub watchdog_timeout_ms: u16,
    /// Free-form host name for the MCU's service log.
    pub host_name: String<ID_LEN>,
}

/// Handshake answer.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HelloAck {
    /// MCU's protocol version.
    pub version: ProtocolVersion,
    /// The nonce of the [`Hello`] being answered.
    pub nonce: u32,
    /// The cart's identity (selects the per-cart HMAC key on the host).
    pub cart_id: String<ID_LEN>,
    /// MCU firmware version string.
    pub firmware: String<ID_LEN>,
    /// Build id of the running firmware ELF, to pick the ELF that decodes its defmt logs.
    pub build_id: [u8; 8],
    /// Highest privileged-command counter the MCU has accepted; the next must be larger.
    pub last_counter: u64,
    /// Model slot the MCU believes is active, if it tracks one.
    pub active_slot: Option<Slot>,
}

/// Handshake refusal.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HelloReject {
    /// The nonce of the [`Hello`] being refused.
    pub nonce: u32,
    /// What the MCU speaks.
    pub supported: ProtocolVersion,
    /// Why.
    pub reason: RejectReason,
}

/// Why a handshake was refused.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RejectReason {
    /// Major versions differ.
    IncompatibleVersion,
    /// Heartbeat/watchdog parameters outside what the MCU supports.
    BadTiming,
}

/// Liveness signal, both directions.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Heartbeat {
    /// Sender's uptime in milliseconds (wraps after ~49 days).
    pub uptime_ms: u32,
    /// Frames the sender's decoder has dropped since boot (CRC, COBS, overflow, unknown).
    pub rx_dropped: u32,
}

/// Round-trip probe payload.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ping {
    /// Echoed unchanged.
    pub nonce: u32,
}

/// One model output, as shown on the cart display.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Prediction {
    /// Runtime's prediction counter (independent of the frame `seq`).
    pub seq: u32,
    /// Capture time of the clip's last frame, microseconds since the runtime started.
    pub timestamp_us: u64,
    /// Class index of the predicted view.
    pub view_index: u8,
    /// Label of the predicted view, e.g. `"A4C"`.
    pub view: String<VIEW_LABEL_LEN>,
    /// Probability of the predicted view, 0..=1.
    pub confidence: f32,
    /// Ejection fraction in percent; `None` unless `ef_status` is [`EfStatus::Valid`].
    pub ef_percent: Option<f32>,
    /// Whether EF is shown, and if not, why it is withheld.
    pub ef_status: EfStatus,
    /// The model was trained on synthetic data; the display must say so next to the numbers.
    pub synthetic: bool,
}

/// Whether an ejection fraction is shown, and if not, why.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EfStatus {
    /// EF is valid and may be displayed.
    Valid,
    /// The view classifier is not confident enough.
    LowConfidence,
    /// The current view is not one EF is estimated from.
    WrongView,
    /// Image quality too poor (e.g. dropout, off-axis).
    PoorImage,
    /// Not enough frames yet since the probe moved.
    WarmingUp,
    /// The loaded model has no EF head.
    NotAvailable,
}

/// Runtime health, host to MCU.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RuntimeStatus {
    /// Frames per second processed.
    pub fps: f32,
    /// Frames dropped since the runtime started.
    pub frames_dropped: u32,
    /// Compute module temperature in °C, when known.
    pub temperature_c: Option<f32>,
    /// Id of the loaded model bundle.
    pub model_id: String<ID_LEN>,
    /// Slot the model was loaded from.
    pub active_slot: Option<Slot>,
}

/// Display and LED control.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DisplayCommand {
    /// Write one line of text.
    Text {
        /// Line number, 0 = top.
        line: u8,
        /// The text (truncated by the sender to fit).
        text: String<DISPLAY_TEXT_LEN>,
    },
    /// Clear the display.
    Clear,
    /// Set an LED.
    Led {
        /// Which LED.
        led: Led,
        /// What it does.
        mode: LedMode,
    },
    /// Backlight brightness, 0..=100.
    Brightness {
        /// Percent.
        percent: u8,
    },
}

/// Cart LEDs.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Led {
    /// Power.
    Power,
    /// Model running / link state.
    Status,
    /// Recording.
    Recording,
    /// Fault.
    Fault,
}

/// LED behaviour.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LedMode {
    /// Off.
    Off,
    /// On.
    On,
    /// Blinking.
    Blink {
        /// Full period in milliseconds.
        period_ms: u16,
    },
}

/// One of the two model slots of the A/B scheme.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub const fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// Commands that need authentication.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PrivilegedCommand {
    /// Make `slot` the active model slot at the next runtime start.
    SwitchModelSlot {
        /// Target slot.
        slot: Slot,
    },
    /// Reboot the MCU (and with it the cart's power sequencing).
    Reboot,
}

/// A [`PrivilegedCommand`] with its replay counter and HMAC-SHA256 tag
/// (see [`auth`](crate::auth) for what is authenticated).
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SignedCommand {
    /// Strictly increasing per cart; the MCU refuses a counter it has already seen.
    pub counter: u64,
    /// The command.
    pub command: PrivilegedCommand,
    /// HMAC-SHA256 over domain tag, counter and command.
    pub tag: [u8; 32],
}

/// Authentication of an MCU reply ([`McuMsg::HelloAck`], [`McuMsg::Status`],
/// [`McuMsg::CommandResult`]); see [`auth`](crate::auth) for what the tag covers.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReplyAuth {
    /// The MCU's reply counter in this session: 0 for the `HelloAck`, then strictly increasing
    /// per authenticated reply. The host refuses one that is not above the last it accepted.
    pub counter: u64,
    /// HMAC-SHA256 over the reply domain, direction, message kind, the session's `Hello` nonce,
    /// `counter`, the message and (for a command result) the answered command's tag.
    pub tag: [u8; 32],
}

/// Outcome of a privileged command.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CommandResult {
    /// Counter of the command being answered.
    pub counter: u64,
    /// What happened.
    pub outcome: CommandOutcome,
}

/// What the MCU did with a privileged command.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CommandOutcome {
    /// Authenticated and carried out.
    Accepted,
    /// HMAC did not verify; nothing done.
    BadTag,
    /// Counter not larger than the last accepted one; nothing done.
    Replayed,
    /// Authenticated but the MCU cannot do it now.
    Failed,
}

/// Cart buttons.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Button {
    /// Freeze the live view.
    Freeze,
    /// Start/stop recording.
    Record,
    /// Next page / view.
    Next,
}

/// What a button did.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ButtonAction {
    /// Pressed down.
    Press,
    /// Released.
    Release,
    /// Held longer than the MCU's long-press time.
    LongPress,
}

/// A button event.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ButtonEvent {
    /// Which button.
    pub button: Button,
    /// What happened.
    pub action: ButtonAction,
    /// MCU uptime at the event, milliseconds.
    pub at_ms: u32,
}

/// MCU status report.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct McuStatus {
    /// Uptime, milliseconds.
    pub uptime_ms: u32,
    /// Boots since manufacture.
    pub boot_count: u32,
    /// Power source.
    pub power: PowerSource,
    /// Board temperature in °C, when known.
    pub temperature_c: Option<f32>,
    /// Model slot the MCU tracks as active.
    pub active_slot: Option<Slot>,
    /// Highest accepted privileged-command counter.
    pub last_counter: u64,
    /// Frames the MCU's decoder dropped since boot.
    pub rx_dropped: u32,
    /// Times the host went silent longer than the watchdog timeout since boot.
    pub host_watchdog_trips: u32,
}

/// Where the cart's power comes from.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PowerSource {
    /// Mains.
    Mains,
    /// Battery with charge in percent.
    Battery {
        /// 0..=100.
        percent: u8,
    },
}

/// A fault seen by the MCU.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FaultReport {
    /// What kind of fault.
    pub code: FaultCode,
    /// Code-specific detail (e.g. a count or a sensor reading).
    pub detail: u32,
    /// MCU uptime at the fault, milliseconds.
    pub at_ms: u32,
}

/// Fault kinds.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FaultCode {
    /// The host was silent longer than the watchdog timeout (`detail`: silence in ms).
    HostWatchdog,
    /// Many frames from the host failed to decode (`detail`: dropped count).
    LinkErrors,
    /// A privileged command failed authentication (`detail`: low 32 bits of its counter).
    AuthFailure,
    /// Supply voltage dipped (`detail`: millivolts).
    BrownOut,
    /// Board too hot (`detail`: temperature in deci-°C).
    OverTemperature,
    /// A button reads pressed for too long (`detail`: button index).
    ButtonStuck,
}

/// A log record from the MCU firmware.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// MCU uptime, milliseconds.
    pub at_ms: u32,
    /// The record.
    pub payload: LogPayload,
}

/// Log severities.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LogLevel {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

/// Log record body.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LogPayload {
    /// Already-formatted UTF-8 text.
    Text(String<LOG_PAYLOAD_LEN>),
    /// One raw defmt frame (as the firmware's defmt encoder wrote it); decode it on the host
    /// with the firmware ELF whose build id was reported in [`HelloAck::build_id`].
    Defmt(Vec<u8, LOG_PAYLOAD_LEN>),
}

/// Sent by the MCU after every boot.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BootInfo {
    /// Why the MCU (re)started.
    pub reset_cause: ResetCause,
    /// Boots since manufacture.
    pub boot_count: u32,
}

/// Why the MCU (re)started.
#[derive(Serialize, Deserialize, MaxSize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ResetCause {
    /// Power applied.
    PowerOn,
    /// Its own hardware watchdog fired.
    Watchdog,
    /// A [`PrivilegedCommand::Reboot`].
    Commanded,
    /// Supply voltage dipped.
    BrownOut,
    /// Not known.
    Unknown,
}
