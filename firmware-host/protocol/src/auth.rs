//! Authentication in both directions: HMAC-SHA256 with the per-cart key.
//!
//! **Host → MCU, privileged commands.** The tag covers
//! `DOMAIN ‖ counter (u64 little-endian) ‖ postcard(command)`. The MCU keeps the highest accepted
//! counter in non-volatile memory ([`ReplayGuard`]) and refuses anything not larger, so a recorded
//! "switch slot" or "reboot" frame cannot be played back. The tag is checked before the counter,
//! so a forged frame cannot move the counter. The counter never wraps: [`next_counter`] refuses
//! to go past `u64::MAX` with [`Error::CounterExhausted`] (the cart must be re-keyed, which resets
//! the MCU's stored counter together with the key).
//!
//! **MCU → host, replies** ([`McuMsg::HelloAck`](crate::McuMsg::HelloAck),
//! [`McuMsg::Status`](crate::McuMsg::Status),
//! [`McuMsg::CommandResult`](crate::McuMsg::CommandResult)). Each carries a [`ReplyAuth`]: a
//! reply counter and a tag over
//! `REPLY_DOMAIN ‖ DIR_MCU_TO_HOST ‖ kind ‖ nonce (u32 LE) ‖ counter (u64 LE) ‖ postcard(body)`
//! followed, for a command result, by the 32-byte tag of the command it answers. `nonce` is the
//! host's `Hello` nonce of the session, so a reply recorded in another session does not verify;
//! the reply counter starts at 0 with the `HelloAck` and the host refuses any counter not above
//! the last it accepted ([`ReplyVerifier`]), so a reply cannot be replayed within a session
//! either; the command binding means a result can only ever confirm the one command it answers.
//! The MCU side is [`ReplySigner`]. no_std, no allocation.

use hmac::{Hmac, KeyInit, Mac};
use postcard::experimental::max_size::MaxSize;
use sha2::Sha256;

use crate::Error;
use crate::messages::{
    CommandResult, HelloAck, McuStatus, PrivilegedCommand, ReplyAuth, SignedCommand,
};

/// Domain separation tag: a tag made for another purpose with the same key never verifies here.
pub const DOMAIN: &[u8] = b"echojepa-cart-privileged-v1";

/// Domain separation tag of MCU replies (protocol 2).
pub const REPLY_DOMAIN: &[u8] = b"echojepa-cart-reply-v2";

/// Direction byte in a reply tag's input: MCU to host (`'M'`).
pub const DIR_MCU_TO_HOST: u8 = 0x4D;

/// The per-cart secret shared by the cart computer and its MCU.
#[derive(Clone)]
pub struct CartKey([u8; 32]);

impl CartKey {
    /// Wraps 32 secret bytes.
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl core::fmt::Debug for CartKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CartKey(..)")
    }
}

fn mac(key: &CartKey, counter: u64, command: &PrivilegedCommand) -> Result<Hmac<Sha256>, Error> {
    let mut buf = [0u8; PrivilegedCommand::POSTCARD_MAX_SIZE];
    let body = postcard::to_slice(command, &mut buf).map_err(|_| Error::Serialize)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).map_err(|_| Error::BadTag)?;
    mac.update(DOMAIN);
    mac.update(&counter.to_le_bytes());
    mac.update(body);
    Ok(mac)
}

/// The counter to sign the next privileged command with, after `last_used` (the highest counter
/// the host knows to be used: its own last command or the MCU's authenticated `last_counter`).
/// Never wraps: after `u64::MAX` there is none, and the cart must be re-keyed.
pub const fn next_counter(last_used: u64) -> Result<u64, Error> {
    match last_used.checked_add(1) {
        Some(next) => Ok(next),
        None => Err(Error::CounterExhausted),
    }
}

/// Signs `command` with `counter` (which must exceed every counter used before for this cart).
pub fn sign(
    key: &CartKey,
    counter: u64,
    command: PrivilegedCommand,
) -> Result<SignedCommand, Error> {
    let tag = mac(key, counter, &command)?.finalize().into_bytes();
    let mut out = [0u8; 32];
    out.copy_from_slice(&tag);
    Ok(SignedCommand {
        counter,
        command,
        tag: out,
    })
}

/// Checks the tag (constant time). Does not look at the counter; see [`ReplayGuard`].
pub fn verify(key: &CartKey, signed: &SignedCommand) -> Result<(), Error> {
    mac(key, signed.counter, &signed.command)?
        .verify_slice(&signed.tag)
        .map_err(|_| Error::BadTag)
}

/// The MCU-side check: tag first, then counter strictly above the last accepted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayGuard {
    last: u64,
}

impl ReplayGuard {
    /// Starts from the last accepted counter restored from non-volatile memory (0 when new).
    pub const fn new(last_accepted: u64) -> Self {
        Self {
            last: last_accepted,
        }
    }

    /// Highest accepted counter (persist this after every accepted command).
    pub const fn last_accepted(&self) -> u64 {
        self.last
    }

    /// Returns the command when it is authentic and fresh, and records its counter.
    pub fn accept(
        &mut self,
        key: &CartKey,
        signed: &SignedCommand,
    ) -> Result<PrivilegedCommand, Error> {
        verify(key, signed)?;
        if signed.counter <= self.last {
            return Err(Error::Replayed);
        }
        self.last = signed.counter;
        Ok(signed.command)
    }
}

/// An MCU reply to be authenticated, with what it is bound to.
#[derive(Debug, Clone, Copy)]
pub enum Reply<'a> {
    /// The handshake answer.
    HelloAck(&'a HelloAck),
    /// A status report.
    Status(&'a McuStatus),
    /// A command result, bound to the tag of the command it answers.
    CommandResult {
        /// The result.
        result: &'a CommandResult,
        /// [`SignedCommand::tag`] of the answered command.
        request_tag: &'a [u8; 32],
    },
}

impl Reply<'_> {
    /// The message kind in the tag input: the reply's [`McuMsg`](crate::McuMsg) variant index.
    pub const fn kind(&self) -> u8 {
        match self {
            Reply::HelloAck(_) => 0,
            Reply::Status(_) => 5,
            Reply::CommandResult { .. } => 8,
        }
    }
}

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

const REPLY_BODY_MAX: usize = max(
    HelloAck::POSTCARD_MAX_SIZE,
    max(
        McuStatus::POSTCARD_MAX_SIZE,
        CommandResult::POSTCARD_MAX_SIZE,
    ),
);

fn reply_mac(
    key: &CartKey,
    nonce: u32,
    counter: u64,
    reply: &Reply<'_>,
) -> Result<Hmac<Sha256>, Error> {
    let mut buf = [0u8; REPLY_BODY_MAX];
    let body = match reply {
        Reply::HelloAck(m) => postcard::to_slice(m, &mut buf),
        Reply::Status(m) => postcard::to_slice(m, &mut buf),
        Reply::CommandResult { result, .. } => postcard::to_slice(result, &mut buf),
    }
    .map_err(|_| Error::Serialize)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).map_err(|_| Error::BadTag)?;
    mac.update(REPLY_DOMAIN);
    mac.update(&[DIR_MCU_TO_HOST, reply.kind()]);
    mac.update(&nonce.to_le_bytes());
    mac.update(&counter.to_le_bytes());
    mac.update(body);
    if let Reply::CommandResult { request_tag, .. } = reply {
        mac.update(&request_tag[..]);
    }
    Ok(mac)
}

/// Authenticates `reply` for the session opened by `Hello` nonce `nonce`, as reply `counter`.
/// Low level: the MCU uses [`ReplySigner`], which picks the counter.
pub fn sign_reply(
    key: &CartKey,
    nonce: u32,
    counter: u64,
    reply: &Reply<'_>,
) -> Result<ReplyAuth, Error> {
    let tag = reply_mac(key, nonce, counter, reply)?
        .finalize()
        .into_bytes();
    let mut out = [0u8; 32];
    out.copy_from_slice(&tag);
    Ok(ReplyAuth { counter, tag: out })
}

/// Checks a reply's tag (constant time). Does not look at the counter; see [`ReplyVerifier`].
pub fn verify_reply(
    key: &CartKey,
    nonce: u32,
    reply: &Reply<'_>,
    auth: &ReplyAuth,
) -> Result<(), Error> {
    reply_mac(key, nonce, auth.counter, reply)?
        .verify_slice(&auth.tag)
        .map_err(|_| Error::BadTag)
}

/// The MCU side of reply authentication for one session (one host `Hello`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplySigner {
    nonce: u32,
    next: Option<u64>,
}

impl ReplySigner {
    /// A session opened by a `Hello` with `nonce`; its first reply (the `HelloAck`) gets
    /// counter 0.
    pub const fn new(nonce: u32) -> Self {
        Self {
            nonce,
            next: Some(0),
        }
    }

    /// The session's `Hello` nonce.
    pub const fn nonce(&self) -> u32 {
        self.nonce
    }

    /// Signs `reply` with the next reply counter. After `u64::MAX` replies it refuses with
    /// [`Error::CounterExhausted`] (never wraps): the MCU must end the session so the host
    /// handshakes again, which starts a new counter under a new nonce.
    pub fn sign(&mut self, key: &CartKey, reply: &Reply<'_>) -> Result<ReplyAuth, Error> {
        let counter = self.next.ok_or(Error::CounterExhausted)?;
        let auth = sign_reply(key, self.nonce, counter, reply)?;
        self.next = counter.checked_add(1);
        Ok(auth)
    }
}

/// The host side of reply authentication for one session: tag first, then a reply counter
/// strictly above the last accepted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyVerifier {
    nonce: u32,
    last: Option<u64>,
}

impl ReplyVerifier {
    /// For the session opened by the `Hello` with `nonce`.
    pub const fn new(nonce: u32) -> Self {
        Self { nonce, last: None }
    }

    /// The session's `Hello` nonce.
    pub const fn nonce(&self) -> u32 {
        self.nonce
    }

    /// Highest reply counter accepted so far.
    pub const fn last_accepted(&self) -> Option<u64> {
        self.last
    }

    /// Accepts `reply` when its tag verifies and its counter is fresh, and records the counter.
    /// A reply that fails either check leaves the verifier unchanged.
    pub fn accept(
        &mut self,
        key: &CartKey,
        reply: &Reply<'_>,
        auth: &ReplyAuth,
    ) -> Result<(), Error> {
        verify_reply(key, self.nonce, reply, auth)?;
        if self.last.is_some_and(|last| auth.counter <= last) {
            return Err(Error::Replayed);
        }
        self.last = Some(auth.counter);
        Ok(())
    }
}
