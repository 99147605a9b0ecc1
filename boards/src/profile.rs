//! The board profile schema (one struct per TOML table), loading from built-in names or files,
//! and the checks that turn a wrong value into an error naming its field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{BUILTIN_NAMES, BoardError, Result, builtin_toml};

/// One cart computer: everything the edge runtime needs to know about the hardware it runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Short identifier, e.g. `jetson-orin-nano`.
    pub name: String,
    /// One line for people.
    pub description: String,
    pub capture: CaptureSettings,
    #[serde(default)]
    pub sector: SectorSettings,
    #[serde(default)]
    pub model: ModelSettings,
    #[serde(default)]
    pub clinical: ClinicalSettings,
    pub compute: ComputeSettings,
    /// The cart microcontroller link; absent when the board has none.
    #[serde(default)]
    pub serial: Option<SerialSettings>,
    #[serde(default)]
    pub trust: TrustSettings,
    #[serde(default)]
    pub bundles: BundleSettings,
    /// The web live view's limits (`edge-runtime --serve`).
    #[serde(default)]
    pub live_view: LiveViewSettings,
    /// Where the profile came from (`built-in generic-cpu` or a file path); set by the loader.
    #[serde(skip)]
    pub origin: String,
    /// Directory that relative paths in the profile are resolved against (the file's directory);
    /// `None` for built-in profiles, which may only use absolute paths.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// Which kind of frame source the board captures from by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The synthetic echo phantom rendered live (demo, validation).
    Phantom,
    /// A V4L2 capture device (USB/HDMI grabber on the cart's video output).
    V4l2,
    /// A video file.
    File,
    /// Raw frames on standard input.
    Stdin,
}

/// A pixel format the capture may negotiate, by its V4L2 FourCC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PixelFormatName {
    /// Packed 4:2:2 YUV (Y0 U Y1 V).
    #[serde(rename = "YUYV")]
    Yuyv,
    /// Motion JPEG, one JPEG image per frame.
    #[serde(rename = "MJPG")]
    Mjpg,
    /// 8-bit grey.
    #[serde(rename = "GREY")]
    Grey,
    /// Packed 24-bit RGB.
    #[serde(rename = "RGB3")]
    Rgb3,
}

impl PixelFormatName {
    /// The four bytes of the V4L2 FourCC.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            Self::Yuyv => *b"YUYV",
            Self::Mjpg => *b"MJPG",
            Self::Grey => *b"GREY",
            Self::Rgb3 => *b"RGB3",
        }
    }

    /// Parses a FourCC or a common alias (`yuyv`, `mjpeg`, `gray`, `rgb24`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "YUYV" | "YUY2" => Self::Yuyv,
            "MJPG" | "MJPEG" => Self::Mjpg,
            "GREY" | "GRAY" | "GRAY8" | "Y8" => Self::Grey,
            "RGB3" | "RGB" | "RGB24" => Self::Rgb3,
            _ => return None,
        })
    }
}

impl fmt::Display for PixelFormatName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cc = self.fourcc();
        f.write_str(std::str::from_utf8(&cc).unwrap_or("????"))
    }
}

/// `[capture]`: the default frame source of the board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSettings {
    pub source: SourceKind,
    /// Device node (`v4l2`) or file path (`file`); unused for `phantom` and `stdin`.
    #[serde(default)]
    pub device: Option<String>,
    /// Requested frame width in pixels (the driver may pick another; the runtime reads it back).
    pub width: u32,
    pub height: u32,
    /// Requested frame rate.
    pub fps: f64,
    /// Pixel formats to negotiate, most preferred first.
    #[serde(default = "default_pixel_formats")]
    pub pixel_formats: Vec<PixelFormatName>,
    /// Number of mmap buffers (V4L2).
    #[serde(default = "default_buffers")]
    pub buffers: u32,
    /// Camera controls by V4L2 control name (`brightness`, `gain`, ...); applied best effort: a
    /// control the device rejects is logged and skipped.
    #[serde(default)]
    pub controls: BTreeMap<String, i64>,
    /// First reconnect delay after the device vanishes; doubles up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// The range of the luma a YUYV device sends: `full` (0–255, used as it comes) or `limited`
    /// (16–235, expanded to 0–255 as video files are when decoded, so the model sees the
    /// contrast it was trained on). Other pixel formats ignore it.
    #[serde(default)]
    pub luma_range: LumaRange,
}

/// The range of a capture device's luma values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LumaRange {
    /// 0–255: the bytes are the grey levels.
    #[default]
    Full,
    /// 16–235 (studio range), as most analogue-to-USB capture devices send.
    Limited,
}

fn default_pixel_formats() -> Vec<PixelFormatName> {
    vec![
        PixelFormatName::Yuyv,
        PixelFormatName::Mjpg,
        PixelFormatName::Grey,
    ]
}
fn default_buffers() -> u32 {
    4
}
fn default_reconnect_initial_ms() -> u64 {
    250
}
fn default_reconnect_max_ms() -> u64 {
    5_000
}

/// How the ultrasound sector is found in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SectorMode {
    /// Found from the image: the largest bright connected region (the fan), which leaves the ECG
    /// trace and burned-in text out.
    #[default]
    Detect,
    /// A fixed rectangle given by `x`, `y`, `width`, `height` in capture pixels.
    Fixed,
    /// The whole frame is the image.
    None,
}

/// `[sector]`: where the image sits inside the captured frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectorSettings {
    #[serde(default)]
    pub mode: SectorMode,
    #[serde(default)]
    pub x: Option<u32>,
    #[serde(default)]
    pub y: Option<u32>,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// Grey level (0-255) above which a pixel counts as image when detecting.
    #[serde(default = "default_detect_threshold")]
    pub detect_threshold: u8,
    /// Blank pixels outside the detected fan inside the crop (ECG trace, text).
    #[serde(default = "default_true")]
    pub mask_outside: bool,
    /// Frames between two sector detections (the probe or depth may change).
    #[serde(default = "default_redetect_every")]
    pub redetect_every: u32,
}

fn default_detect_threshold() -> u8 {
    10
}
fn default_true() -> bool {
    true
}
fn default_redetect_every() -> u32 {
    100
}

impl Default for SectorSettings {
    fn default() -> Self {
        Self {
            mode: SectorMode::Detect,
            x: None,
            y: None,
            width: None,
            height: None,
            detect_threshold: default_detect_threshold(),
            mask_outside: true,
            redetect_every: default_redetect_every(),
        }
    }
}

/// `[model]`: what model input the board can afford and how often it runs a clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Largest input resolution (pixels, square) a bundle may ask for on this board.
    #[serde(default = "default_max_resolution")]
    pub max_resolution: u32,
    /// Largest frames-per-clip a bundle may ask for on this board.
    #[serde(default = "default_max_frames")]
    pub max_frames: u32,
    /// A clip is started every `clip_every` captured frames (k).
    #[serde(default = "default_clip_every")]
    pub clip_every: u32,
    /// Capacity of the inference queue (clips waiting for the model; oldest dropped when full).
    #[serde(default = "default_inference_queue")]
    pub inference_queue: u32,
}

fn default_max_resolution() -> u32 {
    224
}
fn default_max_frames() -> u32 {
    16
}
fn default_clip_every() -> u32 {
    8
}
fn default_inference_queue() -> u32 {
    1
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            max_resolution: default_max_resolution(),
            max_frames: default_max_frames(),
            clip_every: default_clip_every(),
            inference_queue: default_inference_queue(),
        }
    }
}

/// `[clinical]`: when EF is shown and how it is smoothed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClinicalSettings {
    /// Below this view confidence the label is still shown but flagged low-confidence and EF is
    /// withheld.
    #[serde(default = "default_ef_min_confidence")]
    pub ef_min_confidence: f32,
    /// Seconds of continuous EF-capable view needed before EF is shown (one cardiac cycle at the
    /// slowest heart rate the runtime supports).
    #[serde(default = "default_min_cycle_seconds")]
    pub min_cycle_seconds: f64,
    /// EF is the median of the per-clip estimates of the last `ef_window_seconds`.
    #[serde(default = "default_ef_window_seconds")]
    pub ef_window_seconds: f64,
}

fn default_ef_min_confidence() -> f32 {
    0.6
}
fn default_min_cycle_seconds() -> f64 {
    1.5
}
fn default_ef_window_seconds() -> f64 {
    6.0
}

impl Default for ClinicalSettings {
    fn default() -> Self {
        Self {
            ef_min_confidence: default_ef_min_confidence(),
            min_cycle_seconds: default_min_cycle_seconds(),
            ef_window_seconds: default_ef_window_seconds(),
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    Cpu,
    /// An NVIDIA GPU. The edge runtime has no GPU code: it logs that CUDA is not used and runs
    /// the model on the CPU, as with `cpu`. No built-in profile asks for it.
    Cuda,
}

/// The numeric precision the model runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The bundle's int8 (Q8_0) layers as shipped.
    Int8,
    /// Weights dequantized to f16.
    F16,
    /// Weights dequantized to f32.
    F32,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Int8 => "int8",
            Self::F16 => "f16",
            Self::F32 => "f32",
        })
    }
}

/// `[compute]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSettings {
    pub device: ComputeDevice,
    /// CUDA ordinal when `device = "cuda"`.
    #[serde(default)]
    pub cuda_device: u32,
    /// CPU threads for the model; 0 = all cores.
    #[serde(default)]
    pub threads: u32,
    pub precision: Precision,
}

/// `[serial]`: the cart microcontroller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSettings {
    /// Device node, e.g. `/dev/echojepa-mcu` (the udev rules in `deploy/` create that name).
    pub port: String,
    pub baud: u32,
}

/// Baud rates the MCU link may use.
pub const STANDARD_BAUDS: &[u32] = &[
    9_600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600, 1_000_000, 2_000_000,
    3_000_000,
];

/// One public key a bundle may be signed with: inline hex or a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// Who holds the private half (shown when a bundle is accepted or refused).
    pub name: String,
    /// The 32-byte ed25519 public key as 64 hex digits.
    #[serde(default)]
    pub ed25519: Option<String>,
    /// A public key file as written by `quantize keygen`; relative paths are resolved against
    /// the profile's directory.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `[trust]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TrustSettings {
    /// Keys that bundles may be signed with. Empty: the board runs no bundle.
    #[serde(default)]
    pub keys: Vec<TrustedKey>,
}

/// `[bundles]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSettings {
    /// Directory holding the A/B model slots (`a/`, `b/` and the `current` link), managed by
    /// `firmware-host flash`.
    #[serde(default = "default_slots_dir")]
    pub slots_dir: PathBuf,
}

fn default_slots_dir() -> PathBuf {
    PathBuf::from("/var/lib/echojepa/bundles")
}

impl Default for BundleSettings {
    fn default() -> Self {
        Self {
            slots_dir: default_slots_dir(),
        }
    }
}

/// `[live_view]`: the limits of the web live view (`edge-runtime --serve`). Every field has a safe
/// default; `edge-runtime --view-*` flags override them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveViewSettings {
    /// Open connections at once (page loads, event streams, anything half-sent); more are
    /// answered `503` and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Event streams (`/events`) at once; more get `503`.
    #[serde(default = "default_max_viewers")]
    pub max_viewers: usize,
    /// Request line plus headers, in bytes; enforced while reading (`431` past it).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Headers per request (`431` past it).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// A request's line and headers must arrive within this many milliseconds of the connection
    /// (or of the previous response); otherwise the connection is closed.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// A connection on which no byte moves either way for this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A write that cannot proceed for this long closes the connection, and an event-stream
    /// viewer whose queue stays full this long is evicted.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Messages queued per event-stream viewer before it loses messages.
    #[serde(default = "default_viewer_queue")]
    pub viewer_queue: usize,
    /// Host names (besides loopback names and IP addresses) that the `Host` header may carry,
    /// e.g. the cart's DNS name. Anything else is refused (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

fn default_max_connections() -> usize {
    32
}
fn default_max_viewers() -> usize {
    16
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    64
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_write_timeout_ms() -> u64 {
    10_000
}
fn default_viewer_queue() -> usize {
    64
}

impl Default for LiveViewSettings {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_viewers: default_max_viewers(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_timeout_ms: default_header_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            write_timeout_ms: default_write_timeout_ms(),
            viewer_queue: default_viewer_queue(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// A `[live_view]` value out of range: the field (without the `live_view.` prefix) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveViewFieldError {
    pub field: String,
    pub reason: String,
}

impl LiveViewSettings {
    /// Checks every field; the first problem names its field. Used by the profile validator and
    /// by `edge-runtime` after its `--view-*` flags were applied.
    pub fn check(&self) -> std::result::Result<(), LiveViewFieldError> {
        let bad = |field: &str, reason: String| LiveViewFieldError {
            field: field.to_string(),
            reason,
        };
        let range = |field: &str, v: u64, lo: u64, hi: u64, unit: &str| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(bad(
                    field,
                    format!("must be between {lo} and {hi}{unit}, got {v}"),
                ))
            }
        };
        range("max_connections", self.max_connections as u64, 1, 4096, "")?;
        range("max_viewers", self.max_viewers as u64, 1, 1024, "")?;
        if self.max_viewers > self.max_connections {
            return Err(bad(
                "max_viewers",
                format!(
                    "must not exceed max_connections ({}), got {}",
                    self.max_connections, self.max_viewers
                ),
            ));
        }
        range(
            "max_header_bytes",
            self.max_header_bytes as u64,
            1024,
            1024 * 1024,
            " bytes",
        )?;
        range("max_headers", self.max_headers as u64, 4, 1024, "")?;
        range(
            "header_timeout_ms",
            self.header_timeout_ms,
            50,
            600_000,
            " ms",
        )?;
        range(
            "idle_timeout_ms",
            self.idle_timeout_ms,
            100,
            3_600_000,
            " ms",
        )?;
        range(
            "write_timeout_ms",
            self.write_timeout_ms,
            50,
            600_000,
            " ms",
        )?;
        range("viewer_queue", self.viewer_queue as u64, 1, 4096, "")?;
        for (i, h) in self.allowed_hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !ok {
                return Err(bad(
                    &format!("allowed_hosts[{i}]"),
                    format!(
                        "must be a host name (ASCII letters, digits, '-', '.'; no port), got {h:?}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl BoardProfile {
    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Result<Self> {
        let text = builtin_toml(name).ok_or_else(|| unknown(name))?;
        Self::from_toml_str(text, format!("built-in {name}"), None)
    }

    /// A profile file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_toml_str(&text, path.display().to_string(), Some(base))
    }

    /// `--board NAME|FILE`: an existing file (or anything ending in `.toml`) is read as a file,
    /// otherwise the name must be a built-in profile.
    pub fn resolve(name_or_file: &str) -> Result<Self> {
        let path = Path::new(name_or_file);
        if path.is_file() || name_or_file.ends_with(".toml") {
            Self::from_file(path)
        } else {
            Self::builtin(name_or_file)
        }
    }

    /// Parses and validates TOML text; `origin` names it in errors, `base_dir` resolves relative
    /// paths.
    pub fn from_toml_str(text: &str, origin: String, base_dir: Option<PathBuf>) -> Result<Self> {
        let mut profile: BoardProfile = toml::from_str(text).map_err(|e| BoardError::Parse {
            origin: origin.clone(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        profile.origin = origin;
        profile.base_dir = base_dir;
        profile.validate()?;
        Ok(profile)
    }

    /// A path from the profile, resolved against the profile's directory when relative.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        match &self.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Checks every field; the first problem is returned naming its field.
    pub fn validate(&self) -> Result<()> {
        self.validate_name()?;
        self.validate_capture()?;
        self.validate_sector()?;
        self.validate_model()?;
        self.validate_clinical()?;
        self.validate_compute()?;
        self.validate_serial()?;
        self.validate_trust()?;
        self.validate_bundles()?;
        Ok(())
    }

    fn invalid(&self, field: &str, reason: String) -> BoardError {
        BoardError::Invalid {
            origin: self.origin.clone(),
            field: field.to_string(),
            reason,
        }
    }

    /// The short identifier: ASCII letters, digits, '-' and '_'.
    fn validate_name(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.invalid(
                "name",
                format!(
                    "must be non-empty ASCII letters, digits, '-' or '_', got {:?}",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// The capture device, its frame geometry and rate, and the reconnect back-off.
    fn validate_capture(&self) -> Result<()> {
        let c = &self.capture;
        if !(16..=7680).contains(&c.width) {
            return Err(self.invalid(
                "capture.width",
                format!("must be between 16 and 7680 pixels, got {}", c.width),
            ));
        }
        if !(16..=4320).contains(&c.height) {
            return Err(self.invalid(
                "capture.height",
                format!("must be between 16 and 4320 pixels, got {}", c.height),
            ));
        }
        if !(c.fps.is_finite() && (1.0..=240.0).contains(&c.fps)) {
            return Err(self.invalid(
                "capture.fps",
                format!("must be between 1 and 240, got {}", c.fps),
            ));
        }
        if c.pixel_formats.is_empty() {
            return Err(self.invalid(
                "capture.pixel_formats",
                "must name at least one format (YUYV, MJPG, GREY, RGB3)".into(),
            ));
        }
        for (i, f) in c.pixel_formats.iter().enumerate() {
            if c.pixel_formats[..i].contains(f) {
                return Err(self.invalid(
                    &format!("capture.pixel_formats[{i}]"),
                    format!("{f} is listed twice"),
                ));
            }
        }
        if !(2..=32).contains(&c.buffers) {
            return Err(self.invalid(
                "capture.buffers",
                format!("must be between 2 and 32, got {}", c.buffers),
            ));
        }
        match c.source {
            SourceKind::V4l2 | SourceKind::File => match &c.device {
                None => {
                    return Err(self.invalid(
                        "capture.device",
                        format!(
                            "required when capture.source = \"{}\"",
                            match c.source {
                                SourceKind::V4l2 => "v4l2",
                                _ => "file",
                            }
                        ),
                    ));
                }
                Some(d) if d.is_empty() => {
                    return Err(self.invalid("capture.device", "must not be empty".into()));
                }
                Some(d) if self.base_dir.is_none() && Path::new(d).is_relative() => {
                    return Err(self.invalid(
                        "capture.device",
                        format!("built-in profiles need absolute paths, got {d:?}"),
                    ));
                }
                _ => {}
            },
            SourceKind::Phantom | SourceKind::Stdin => {}
        }
        if c.reconnect_initial_ms == 0 {
            return Err(self.invalid(
                "capture.reconnect_initial_ms",
                "must be at least 1 ms".into(),
            ));
        }
        if c.reconnect_max_ms < c.reconnect_initial_ms {
            return Err(self.invalid(
                "capture.reconnect_max_ms",
                format!(
                    "must be >= capture.reconnect_initial_ms ({}), got {}",
                    c.reconnect_initial_ms, c.reconnect_max_ms
                ),
            ));
        }
        Ok(())
    }

    /// A fixed sector lies inside the frame; only the fixed mode takes coordinates.
    fn validate_sector(&self) -> Result<()> {
        let (s, c) = (&self.sector, &self.capture);
        let fixed = [
            ("x", s.x),
            ("y", s.y),
            ("width", s.width),
            ("height", s.height),
        ];
        match s.mode {
            SectorMode::Fixed => {
                for (field, v) in fixed {
                    if v.is_none() {
                        return Err(self.invalid(
                            &format!("sector.{field}"),
                            "required when sector.mode = \"fixed\"".into(),
                        ));
                    }
                }
                let (x, y, w, h) = (
                    s.x.unwrap_or(0),
                    s.y.unwrap_or(0),
                    s.width.unwrap_or(0),
                    s.height.unwrap_or(0),
                );
                if w < 16 || h < 16 {
                    return Err(self.invalid(
                        if w < 16 {
                            "sector.width"
                        } else {
                            "sector.height"
                        },
                        format!("the sector must be at least 16x16 pixels, got {w}x{h}"),
                    ));
                }
                if x as u64 + w as u64 > c.width as u64 {
                    return Err(self.invalid(
                        "sector.width",
                        format!(
                            "x + width = {} exceeds capture.width {}",
                            x as u64 + w as u64,
                            c.width
                        ),
                    ));
                }
                if y as u64 + h as u64 > c.height as u64 {
                    return Err(self.invalid(
                        "sector.height",
                        format!(
                            "y + height = {} exceeds capture.height {}",
                            y as u64 + h as u64,
                            c.height
                        ),
                    ));
                }
            }
            SectorMode::Detect | SectorMode::None => {
                for (field, v) in fixed {
                    if v.is_some() {
                        return Err(self.invalid(
                            &format!("sector.{field}"),
                            "only used with sector.mode = \"fixed\"".into(),
                        ));
                    }
                }
            }
        }
        if s.redetect_every == 0 {
            return Err(self.invalid("sector.redetect_every", "must be at least 1".into()));
        }
        Ok(())
    }

    /// What a bundle may ask for on this board, the clip cadence and the inference queue.
    fn validate_model(&self) -> Result<()> {
        let m = &self.model;
        if !(32..=1024).contains(&m.max_resolution) || !m.max_resolution.is_multiple_of(16) {
            return Err(self.invalid(
                "model.max_resolution",
                format!(
                    "must be a multiple of 16 between 32 and 1024, got {}",
                    m.max_resolution
                ),
            ));
        }
        if !(2..=128).contains(&m.max_frames) || !m.max_frames.is_multiple_of(2) {
            return Err(self.invalid(
                "model.max_frames",
                format!(
                    "must be an even number between 2 and 128, got {}",
                    m.max_frames
                ),
            ));
        }
        if !(1..=1000).contains(&m.clip_every) {
            return Err(self.invalid(
                "model.clip_every",
                format!("must be between 1 and 1000 frames, got {}", m.clip_every),
            ));
        }
        if !(1..=8).contains(&m.inference_queue) {
            return Err(self.invalid(
                "model.inference_queue",
                format!(
                    "must be between 1 and 8 clips (a longer queue only adds latency), got {}",
                    m.inference_queue
                ),
            ));
        }
        Ok(())
    }

    /// The EF confidence threshold and the cycle and window lengths, in their ranges.
    fn validate_clinical(&self) -> Result<()> {
        let k = &self.clinical;
        if !(k.ef_min_confidence.is_finite() && (0.0..=1.0).contains(&k.ef_min_confidence)) {
            return Err(self.invalid(
                "clinical.ef_min_confidence",
                format!("must be between 0 and 1, got {}", k.ef_min_confidence),
            ));
        }
        if !(k.min_cycle_seconds.is_finite() && (0.2..=10.0).contains(&k.min_cycle_seconds)) {
            return Err(self.invalid(
                "clinical.min_cycle_seconds",
                format!(
                    "must be between 0.2 and 10 seconds, got {}",
                    k.min_cycle_seconds
                ),
            ));
        }
        if !(k.ef_window_seconds.is_finite() && (0.5..=120.0).contains(&k.ef_window_seconds)) {
            return Err(self.invalid(
                "clinical.ef_window_seconds",
                format!(
                    "must be between 0.5 and 120 seconds, got {}",
                    k.ef_window_seconds
                ),
            ));
        }
        Ok(())
    }

    fn validate_compute(&self) -> Result<()> {
        let cp = &self.compute;
        if cp.threads > 1024 {
            return Err(self.invalid(
                "compute.threads",
                format!("must be 0 (all cores) or at most 1024, got {}", cp.threads),
            ));
        }
        if cp.device == ComputeDevice::Cpu && cp.cuda_device != 0 {
            return Err(self.invalid(
                "compute.cuda_device",
                "only used with compute.device = \"cuda\"".into(),
            ));
        }
        Ok(())
    }

    /// The firmware link: a port (absolute in built-in profiles) at a standard rate.
    fn validate_serial(&self) -> Result<()> {
        if let Some(sr) = &self.serial {
            if sr.port.is_empty() {
                return Err(self.invalid("serial.port", "must not be empty".into()));
            }
            if self.base_dir.is_none() && Path::new(&sr.port).is_relative() {
                return Err(self.invalid(
                    "serial.port",
                    format!("built-in profiles need absolute paths, got {:?}", sr.port),
                ));
            }
            if !STANDARD_BAUDS.contains(&sr.baud) {
                return Err(self.invalid(
                    "serial.baud",
                    format!(
                        "{} is not a standard rate; use one of {}",
                        sr.baud,
                        STANDARD_BAUDS
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The trusted bundle keys: unique file-style names, each given inline or as a file.
    fn validate_trust(&self) -> Result<()> {
        for (i, key) in self.trust.keys.iter().enumerate() {
            let field = |f: &str| format!("trust.keys[{i}].{f}");
            if key.name.is_empty()
                || key.name.len() > 64
                || !key
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(self.invalid(
                    &field("name"),
                    format!(
                        "must be 1-64 characters of A-Z a-z 0-9 . _ - (as in key files), got {:?}",
                        key.name
                    ),
                ));
            }
            if self.trust.keys[..i].iter().any(|k| k.name == key.name) {
                return Err(self.invalid(
                    &field("name"),
                    format!("{:?} is used by an earlier key", key.name),
                ));
            }
            match (&key.ed25519, &key.file) {
                (Some(_), Some(_)) => {
                    return Err(self.invalid(
                        &field("file"),
                        "give either ed25519 (inline hex) or file, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(self.invalid(
                        &field("ed25519"),
                        "give the public key inline as 64 hex digits, or a file".into(),
                    ));
                }
                (Some(hex), None) => {
                    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(self.invalid(
                            &field("ed25519"),
                            format!(
                                "must be 64 hex digits (a 32-byte ed25519 public key), got {} characters",
                                hex.len()
                            ),
                        ));
                    }
                }
                (None, Some(p)) => {
                    if self.base_dir.is_none() && p.is_relative() {
                        return Err(self.invalid(
                            &field("file"),
                            format!("built-in profiles need absolute paths, got {p:?}"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The bundle slots directory and the live view settings.
    fn validate_bundles(&self) -> Result<()> {
        if self.bundles.slots_dir.as_os_str().is_empty() {
            return Err(self.invalid("bundles.slots_dir", "must not be empty".into()));
        }
        if self.base_dir.is_none() && self.bundles.slots_dir.is_relative() {
            return Err(self.invalid(
                "bundles.slots_dir",
                format!(
                    "built-in profiles need absolute paths, got {:?}",
                    self.bundles.slots_dir
                ),
            ));
        }
        if let Err(e) = self.live_view.check() {
            return Err(self.invalid(&format!("live_view.{}", e.field), e.reason));
        }
        Ok(())
    }
}

fn unknown(name: &str) -> BoardError {
    BoardError::Unknown {
        name: name.to_string(),
        known: BUILTIN_NAMES.join(", "),
    }
}
