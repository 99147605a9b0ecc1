//! Integration tests of `firmware-host`, built as one test binary: the host link against the
//! simulated MCU over real pseudo-terminals, and the CLI.

mod link;
mod support;
