//! Integration tests of the edge runtime, built as one test binary: the pipeline end to end with a
//! deterministic stand-in engine (defined here, in tests only), every source and its failure
//! paths, bundle verification, the web live view in headless Chromium, and the serial link to a
//! simulated cart MCU over a real pseudo-terminal.

mod bench_encoder;
mod bundle;
mod cli;
mod common;
mod pipeline;
mod serial;
mod sources;
mod web;
mod web_layout;
