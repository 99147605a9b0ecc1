//! Host side of the cart microcontroller link, as a library.
//!
//! The edge runtime links this crate to talk to the cart MCU; the `firmware-host` binary wraps
//! the same pieces in a CLI.
//!
//! * [`link`]: [`HostLink`](link::HostLink), the non-blocking serial link (own thread, bounded
//!   queues with named drop policies, reconnect with backoff, heartbeats and watchdog).
//! * [`sim`]: a simulated MCU speaking the same protocol over a real pseudo-terminal, with seeded
//!   fault injection ([`faults`]).
//! * [`queue`]: the bounded queues and their back-pressure policies.
//! * [`slots`]: A/B model slots: verified install, anti-rollback floor, atomic switch,
//!   health-check rollback, and recovery after power loss; [`verify`] checks signed bundles.
//!   Both need the feature `flash` (on by default), which links `echojepa-bundle`.
//! * `defmt_log` (feature `defmt-elf`, on by default): decoding the MCU's defmt log records with
//!   the firmware ELF.
//!
//! The wire protocol itself is the `no_std` crate `cart-protocol` (re-exported as [`protocol`]).

#[cfg(feature = "defmt-elf")]
pub mod defmt_log;
pub mod faults;
pub mod link;
pub mod queue;
pub mod sim;
#[cfg(feature = "flash")]
pub mod slots;
#[cfg(feature = "flash")]
pub mod verify;

pub use cart_protocol as protocol;
