//! The reference data pipeline for training and evaluation: dataset lists in the reference CSV
//! formats ([`csv`]), the reference's clip-sampling rules ([`sampling`]), training augmentation
//! ([`augment`]), video → clip tensors ([`dataset`]) and a multi-threaded, bounded, deterministic
//! loader that skips and counts unreadable files ([`loader`]).
//!
//! Lives in the trainer (not in `echojepa`) so the edge runtime never links dataset code; the
//! pieces the edge runtime shares (decoding, eval preprocessing, sector masking, perturbations)
//! are in `echojepa::{video, preprocess, perturb}`.

pub mod augment;
pub mod csv;
pub mod dataset;
pub mod loader;
pub mod sampling;

#[cfg(test)]
mod tests;
