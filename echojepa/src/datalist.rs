//! The reference's single-view dataset list (`VideoDataset`): no header, space-delimited
//! `path label` per line, where the label is a class index, a z-scored float, or 0 for
//! pretraining. `::` is accepted as the delimiter when a line has no space (the reference's
//! fallback). Extra columns are ignored, as pandas would keep but not use them. Paths are used as
//! written (relative paths resolve against the working directory, as in the reference).
//!
//! The trainer reads its lists with this, and `quantize report --csv` evaluates int8 on the same
//! lists. Errors name the file and the line.

use std::path::{Path, PathBuf};

/// One line of a `path label` list.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoEntry {
    pub path: PathBuf,
    pub label: f64,
}

/// A list that cannot be read, with the file and (1-based) line at fault.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("reading dataset list {}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {what}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        what: String,
    },
}

/// Parses one label cell: a finite number.
pub fn parse_label(s: &str, file: &Path, line: usize) -> Result<f64, ListError> {
    let bad = |why: &str| ListError::Line {
        file: file.to_path_buf(),
        line,
        what: format!("label `{s}` {why}"),
    };
    let v: f64 = s.trim().parse().map_err(|_| bad("is not a number"))?;
    if !v.is_finite() {
        return Err(bad("is not finite"));
    }
    Ok(v)
}

/// Reads a `path label` list.
pub fn read_video_csv(file: &Path) -> Result<Vec<VideoEntry>, ListError> {
    let text = std::fs::read_to_string(file).map_err(|source| ListError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r');
        if l.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = if l.contains(' ') {
            l.split(' ').filter(|c| !c.is_empty()).collect()
        } else {
            l.split("::").collect()
        };
        if cols.len() < 2 {
            return Err(ListError::Line {
                file: file.to_path_buf(),
                line,
                what: format!("expected `path label`, got `{l}`"),
            });
        }
        out.push(VideoEntry {
            path: PathBuf::from(cols[0]),
            label: parse_label(cols[1], file, line)?,
        });
    }
    Ok(out)
}
