//! The int8 model beside the f32 one: the encoder on packed int8/f32 GEMM kernels with the
//! precision of each layer chosen by measurement, probes built by the f32 probe code from the
//! stored weights, and [`EdgeModel`], which loads both from a verified bundle.
//!
//! * [`gguf`]: the weights file (Q8_0 with per-row scales, f16/f32 elsewhere).
//! * [`encoder`]: [`QuantizedEncoder`], same tensor names as [`crate::encoder`].
//! * [`model`]: [`EdgeModel`] = verified bundle → encoder + heads → predictions, and the tensor
//!   name prefixes of a bundle's weights file.
//!
//! Choosing each layer's precision (calibration clips, timings, error summaries) and writing a
//! new weights file are build steps of the `quantize` tool and live there, so the cart's binary
//! carries none of it. Kept here is what reader and writer must share: the tensor names and
//! prefixes ([`model::ENCODER_PREFIX`], [`model::probe_prefix`]), the 2-D patch-weight layout
//! ([`encoder::flatten_patch`], also used by the runtime's encoder benchmark) and how a
//! precision rounds ([`encoder::round_to`]) and stores ([`gguf::store`]) a weight.

pub mod encoder;
pub mod gguf;
pub mod model;

use std::path::PathBuf;

pub use encoder::{GgufSource, QLinear, QuantizedEncoder, Tap, TensorSource, WeightSource};
pub use gguf::GgufWeights;
pub use model::{EdgeModel, HeadOutput, TargetValue};

use crate::bundle::{BundleError, Precision};

/// Why an int8 model could not be built, loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The bundle was refused.
    #[error(transparent)]
    Bundle(#[from] BundleError),

    /// I/O failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The GGUF weights file is unreadable.
    #[error("{file}: {reason}")]
    Gguf { file: String, reason: String },

    /// A tensor the model needs is not in the weights.
    #[error("{file}: missing tensor `{tensor}`")]
    MissingTensor { file: String, tensor: String },

    /// A tensor has the wrong shape.
    #[error("{file}: tensor `{tensor}` has shape {found:?}, the architecture needs {expected:?}")]
    Shape {
        file: String,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// The weights file holds tensors the model does not use.
    #[error("{file}: tensor(s) not used by the model: {names}")]
    UnexpectedTensors { file: String, names: String },

    /// The stored precision of a tensor differs from the manifest.
    #[error("tensor `{tensor}` is stored as {stored} but manifest.json says {manifest}")]
    PrecisionMismatch {
        tensor: String,
        manifest: Precision,
        stored: Precision,
    },

    /// A kernel refused its operands.
    #[error("layer `{layer}`: {source}")]
    Kernel {
        layer: String,
        #[source]
        source: echojepa_kernels::KernelError,
    },

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The f32 model code refused the weights or configuration.
    #[error(transparent)]
    Model(#[from] crate::Error),

    /// The input has the wrong shape.
    #[error("bad input: {0}")]
    Input(String),

    /// Something the bundle asks for is not supported by this build.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

#[cfg(test)]
mod tests;
