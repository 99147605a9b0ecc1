//! Output sinks: JSON lines (or a human-readable line) on stdout, the web live view, and the
//! serial link to the cart microcontroller.

pub mod serial;
mod text;
pub mod web;

pub use text::{HumanLines, JsonLines};
