//! Authentication of privileged commands: HMAC-SHA256 with a per-cart key, plus a replay counter.
//!
//! The tag covers `DOMAIN ‖ counter (u64 little-endian) ‖ postcard(command)`. The MCU keeps the
//! highest accepted counter in non-volatile memory ([`ReplayGuard`]) and refuses anything not
//! larger, so a recorded "switch slot" or "reboot" frame cannot be played back. The tag is checked
//! before the counter, so a forged frame cannot move the counter. no_std, no allocation.

use hmac::{Hmac, KeyInit, Mac};
use postcard::experimental::max_size::MaxSize;
use sha2::Sha256;

use crate::Error;
use crate::messages::{PrivilegedCommand, SignedCommand};

/// Domain separation tag: a tag made for another purpose with the same key never verifies here.
pub const DOMAIN: &[u8] = b"echojepa-cart-privileged-v1";

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
