//! The reference data pipeline for training and evaluation: dataset lists in the reference CSV
//! formats ([`csv`]), the reference's clip-sampling rules ([`sampling`]), training augmentation
//! ([`augment`]), video → clip tensors ([`dataset`]) and a multi-threaded, bounded, deterministic
//! loader that skips and counts unreadable files ([`loader`]).
//!
//! Loading and augmentation live in the trainer. The pieces other tools share are in `echojepa`:
//! decoding, eval preprocessing, sector masking and perturbations (`video`, `preprocess`,
//! `perturb`, also used by the edge runtime), and the `path label` list format and the clip
//! sampling rules (`datalist`, `sampling`, also used by `quantize report --csv`).

pub mod augment;
pub mod csv;
pub mod dataset;
pub mod loader;
/// The reference's clip-sampling rules (in `echojepa`, shared with `quantize report`).
pub use echojepa_input::sampling;

#[cfg(test)]
mod tests;
