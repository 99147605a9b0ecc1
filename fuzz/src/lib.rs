//! Fuzz targets for the project's parsers of untrusted bytes, and a small deterministic
//! mutational fuzzer that runs them on stable Rust (see docs/FUZZING.md).
//!
//! Each [`Target`] is a `fn(&[u8]) -> String`: it feeds the bytes to one parser of the project
//! and returns a short description of the outcome (the error class, or what was decoded). A
//! target must not panic, hang or allocate absurdly on any input; the [`runner`] reports any of
//! the three as a crash and keeps the input.

pub mod alloc;
pub mod mutate;
pub mod runner;
pub mod targets;

pub use targets::{TARGETS, Target, find};
