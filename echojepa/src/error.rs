//! Typed errors of the `echojepa` library. Each message names the file, tensor or value at fault.

use std::path::PathBuf;

/// Everything that can go wrong in the model library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// I/O on a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint file could not be parsed (truncated, not a zip/pickle, unsupported storage).
    #[error("{path}: not a readable PyTorch checkpoint: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },

    /// A tensor the model needs is missing from the checkpoint.
    #[error("{path}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },

    /// A tensor in the checkpoint has a different shape than the architecture needs.
    #[error("{path}: tensor `{name}` has shape {found:?}, the architecture needs {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// The checkpoint holds tensors the architecture does not use.
    #[error("{path}: unexpected tensor(s) not used by the architecture: {names}")]
    UnexpectedTensors { path: PathBuf, names: String },

    /// A key (e.g. `target_encoder`, `classifiers`) is not in the checkpoint.
    #[error("{path}: no entry `{key}` in the checkpoint (found: {found})")]
    MissingKey {
        path: PathBuf,
        key: String,
        found: String,
    },

    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An input tensor has the wrong shape.
    #[error("{what}: expected {expected}, got shape {found:?}")]
    InputShape {
        what: &'static str,
        expected: String,
        found: Vec<usize>,
    },

    /// JSON (de)serialisation of a config failed.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<echojepa_bundle::config::ConfigError> for Error {
    fn from(e: echojepa_bundle::config::ConfigError) -> Self {
        Self::Config(e.0)
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
