//! The fuzz targets. Each takes arbitrary bytes and returns a short outcome description; see
//! the module of each for how the bytes are interpreted.

pub mod bundle;
mod checkpoint;
mod http;
mod profile;
mod serial;
mod video;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    /// One line: what the bytes are fed to.
    pub about: &'static str,
    /// Runs one input; returns the outcome (used as feedback, see [`crate::runner`]).
    pub run: fn(&[u8]) -> String,
    /// Tokens the mutator inserts (box names, keywords, ...).
    pub dict: &'static [&'static [u8]],
    /// Longest input the mutator produces.
    pub max_len: usize,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("name", &self.name).finish()
    }
}

/// Every target, in the order CI runs them.
pub static TARGETS: &[Target] = &[
    Target {
        name: "mp4",
        about: "echojepa_video::mp4::Mp4Reader::open + decoding a few frames (H.264 in MP4)",
        run: video::mp4,
        dict: video::MP4_DICT,
        max_len: 64 * 1024,
    },
    Target {
        name: "avi",
        about: "echojepa_video::avi::AviReader::open + decoding a few frames (MJPEG/raw AVI)",
        run: video::avi,
        dict: video::AVI_DICT,
        max_len: 64 * 1024,
    },
    Target {
        name: "h264",
        about: "an Annex-B H.264 stream: h264 helpers, then muxed into MP4 and decoded by Mp4Reader",
        run: video::h264,
        dict: video::H264_DICT,
        max_len: 32 * 1024,
    },
    Target {
        name: "pt",
        about: "echojepa::checkpoint::PtFile::open + keys/number/state_dict (PyTorch zip + pickle)",
        run: checkpoint::pt,
        dict: checkpoint::DICT,
        max_len: 16 * 1024,
    },
    Target {
        name: "bundle",
        about: "verify_bundle with a fuzzed (signed) manifest.json or manifest.sig; key file parsing",
        run: bundle::bundle,
        dict: bundle::DICT,
        max_len: 32 * 1024,
    },
    Target {
        name: "board",
        about: "boards::BoardProfile::from_toml_str (TOML parse + validate)",
        run: profile::board,
        dict: profile::DICT,
        max_len: 8 * 1024,
    },
    Target {
        name: "serial",
        about: "cart_protocol::FrameDecoder::feed (COBS, CRC, postcard) as the host and the MCU use it",
        run: serial::serial,
        dict: serial::DICT,
        max_len: 4 * 1024,
    },
    Target {
        name: "http",
        about: "the live view server (edge_runtime::output::web::WebServer) over a loopback socket",
        run: http::http,
        dict: http::DICT,
        max_len: 16 * 1024,
    },
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The outcome of an error, normalised so that the same code path tends to give the same
/// string: the scratch directory, quoted or back-ticked spans (input echoed back), words with
/// digits, hex strings and caret markers removed, and only the first 3 and last 8 words kept
/// (the start names the stage, the end the reason).
pub(crate) fn outcome(prefix: &str, msg: &str) -> String {
    let scratch = scratch_dir().map(|p| p.display().to_string());
    let msg = match &scratch {
        Some(s) if !s.is_empty() => msg.replace(s.as_str(), ""),
        _ => msg.to_string(),
    };
    let mut unquoted = String::with_capacity(msg.len());
    let mut quote = None;
    for c in msg.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '`' | '"' | '\'') => quote = Some(c),
            None => unquoted.push(c),
        }
    }
    let words: Vec<&str> = unquoted
        .split_whitespace()
        .filter(|w| {
            let hex = w.len() >= 8 && w.chars().all(|c| c.is_ascii_hexdigit());
            !hex && !w.contains(|c: char| c.is_ascii_digit() || c == '^')
        })
        .collect();
    let kept: Vec<&str> = if words.len() > 11 {
        words[..3]
            .iter()
            .chain(&words[words.len() - 8..])
            .copied()
            .collect()
    } else {
        words
    };
    format!("{prefix} {}", kept.join(" "))
}

static SCRATCH: Mutex<Option<tempfile::TempDir>> = Mutex::new(None);

/// A directory for the inputs of targets whose API takes a path (created on first use).
pub(crate) fn scratch_dir() -> Option<PathBuf> {
    let mut s = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    if s.is_none() {
        *s = tempfile::Builder::new()
            .prefix("echojepa-fuzz-")
            .tempdir()
            .ok();
    }
    s.as_ref().map(|d| d.path().to_path_buf())
}

/// Removes the scratch directory (call at the end of a run).
pub fn remove_scratch() {
    let mut s = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    s.take();
}

/// Writes `data` to `name` in the scratch directory (one name per target and thread).
pub(crate) fn scratch_file(name: &str, data: &[u8]) -> Result<PathBuf, String> {
    let dir = scratch_dir().ok_or("no scratch directory")?;
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let path = dir.join(format!("t{thread}-{name}"));
    std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Runs `f` on a scratch file holding `data`; an I/O failure of the scratch file itself is a
/// panic (the harness is broken, not the input).
pub(crate) fn with_file(name: &str, data: &[u8], f: impl FnOnce(&Path) -> String) -> String {
    match scratch_file(name, data) {
        Ok(path) => f(&path),
        Err(e) => panic!("fuzz harness: cannot write its scratch file: {e}"),
    }
}
