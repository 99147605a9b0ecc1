//! Turns the MCU's defmt log records back into text, given the firmware ELF.
//!
//! defmt keeps format strings in the ELF and sends only their index and arguments. The MCU wraps
//! each defmt frame in a `Log` message (its own rzcobs framing would clash with ours on one UART),
//! so each payload is exactly one frame. The ELF must be the one the MCU runs: its build id is in
//! `HelloAck.build_id`.

use std::path::{Path, PathBuf};

use defmt_decoder::{DecodeError, Table};

/// Errors of defmt decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DefmtError {
    /// cannot read firmware ELF {path}: {source}
    #[error("cannot read firmware ELF {path}: {source}")]
    Read {
        /// The ELF.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// firmware ELF {path} is not a defmt ELF: {reason}
    #[error("firmware ELF {path} is not a usable defmt ELF: {reason}")]
    Table {
        /// The ELF.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// defmt frame of {len} bytes could not be decoded with this ELF's table (wrong ELF?)
    #[error("defmt frame of {len} bytes could not be decoded with this ELF's table (wrong ELF?)")]
    Frame {
        /// Payload length.
        len: usize,
    },
}

/// One decoded log line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DecodedLog {
    /// `trace` … `error`, or `println` for level-less frames.
    pub level: String,
    /// The firmware's own timestamp, if its defmt table defines one.
    pub timestamp: Option<String>,
    /// The formatted message.
    pub message: String,
}

/// The format-string table of one firmware ELF.
pub struct DefmtTable {
    table: Table,
}

impl DefmtTable {
    /// Reads the `.defmt` table from a firmware ELF.
    pub fn from_elf(path: &Path) -> Result<Self, DefmtError> {
        let bytes = std::fs::read(path).map_err(|source| DefmtError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_elf_bytes(&bytes, path)
    }

    /// Same, from bytes; `path` only names the file in errors.
    pub fn from_elf_bytes(bytes: &[u8], path: &Path) -> Result<Self, DefmtError> {
        let table = Table::parse(bytes)
            .map_err(|e| DefmtError::Table {
                path: path.to_path_buf(),
                reason: format!("{e:#}"),
            })?
            .ok_or_else(|| DefmtError::Table {
                path: path.to_path_buf(),
                reason: "it has no .defmt section".into(),
            })?;
        Ok(Self { table })
    }

    /// Decodes one frame (the payload of one `LogPayload::Defmt`).
    pub fn decode(&self, payload: &[u8]) -> Result<DecodedLog, DefmtError> {
        let mut stream = self.table.new_stream_decoder();
        stream.received(payload);
        match stream.decode() {
            Ok(frame) => Ok(DecodedLog {
                level: frame
                    .level()
                    .map(|l| l.as_str().to_owned())
                    .unwrap_or_else(|| "println".into()),
                timestamp: frame.display_timestamp().map(|t| t.to_string()),
                message: frame.display_message().to_string(),
            }),
            Err(DecodeError::UnexpectedEof | DecodeError::Malformed) => {
                Err(DefmtError::Frame { len: payload.len() })
            }
        }
    }
}
