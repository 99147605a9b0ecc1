//! Integration tests of `firmware-host`, built as one test binary: the host link against the
//! simulated MCU over real pseudo-terminals, defmt log decoding, and the CLI.

mod auth;
mod cli;
#[cfg(feature = "defmt-elf")]
mod defmt;
#[cfg(feature = "flash")]
mod flash;
mod link;
#[cfg(feature = "flash")]
mod slots;
mod support;
