//! Typed errors of board-profile loading. Each one names the profile (its built-in name or its
//! file) and, for content errors, the dotted field path at fault.

use std::path::PathBuf;

/// Everything that can go wrong loading a board profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoardError {
    /// The name is neither a built-in profile nor an existing file.
    #[error(
        "unknown board `{name}`: not a built-in profile ({known}) and no such file; pass a built-in name or the path of a .toml profile"
    )]
    Unknown { name: String, known: String },

    /// The profile file could not be read.
    #[error("board profile {path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The TOML is malformed, has an unknown field or a value of the wrong type.
    #[error("board profile {origin}: {message}")]
    Parse { origin: String, message: String },

    /// A field has a value outside what the runtime can use.
    #[error("board profile {origin}: {field}: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, BoardError>;
