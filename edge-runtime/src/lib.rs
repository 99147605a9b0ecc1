//! The EchoJEPA edge runtime: live ultrasound frames in, a view label with confidence and an
//! ejection fraction (or the reason it is withheld) out, in real time, on a cart computer.
//!
//! ```text
//! source ─▶ capture ─▶ convert ─▶ sector ─▶ resize ─▶ ring ─▶ clip every k ─▶ inference
//!  (V4L2, file,                                                                  │
//!   phantom, stdin)        outputs: JSONL stdout │ web live view │ serial ◀─ clinical logic
//! ```
//!
//! Module map: [`source`] (frame sources and the paced/reconnecting wrappers), [`convert`],
//! [`sector`], [`resize`], [`clip`] (ring and clip scheduler), [`queue`] (the drop-oldest inference
//! queue), [`engine`] (the inference trait), [`clinical`] (EF gating and smoothing),
//! [`pipeline`] (threads and back-pressure), [`events`] (what is emitted; `SCHEMA.md`),
//! [`output`] (sinks), [`stats`], [`clock`].

pub mod bundle_engine;
pub mod clinical;
pub mod clip;
pub mod clock;
pub mod convert;
pub mod engine;
pub mod events;
pub mod frame;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod queue;
/// The model-input resize (shared with the trainer and `quantize`).
pub use echojepa_input::prepare as resize;
pub mod sector;
pub mod source;
pub mod stats;
