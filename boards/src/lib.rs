//! Board profiles for the cart computers the edge runtime supports: what camera to open, where the
//! ultrasound sector sits, what model input the board can afford, which compute device and
//! precision to use, where the cart microcontroller's serial port is, which keys a bundle must be
//! signed with and where the A/B bundle slots live.
//!
//! A profile is a TOML file. The ones shipped with the project are compiled in
//! ([`BoardProfile::builtin`], names in [`BUILTIN_NAMES`]); a device maker can write their own and
//! pass its path instead ([`BoardProfile::resolve`] takes either). Every profile is validated when
//! loaded, and every error names the profile and the field at fault, e.g.
//! `board profile jetson-orin-nano: capture.fps: must be between 1 and 240, got 0`.
//!
//! The crate only parses and checks; it opens no device and reads no key file. The runtime does
//! that, so this crate stays free of system dependencies.

mod error;
mod profile;

pub use error::{BoardError, Result};
pub use profile::{
    BoardProfile, BundleSettings, CaptureSettings, ClinicalSettings, ComputeDevice,
    ComputeSettings, LiveViewFieldError, LiveViewSettings, LumaRange, ModelSettings,
    PixelFormatName, Precision, SectorMode, SectorSettings, SerialSettings, SourceKind,
    TrustSettings, TrustedKey,
};

/// Names of the profiles compiled into the crate, the default first.
pub const BUILTIN_NAMES: &[&str] = &[
    "generic-cpu",
    "jetson-orin-nano",
    "jetson-orin-nx",
    "jetson-agx-orin",
    "x86-cuda-workstation",
];

/// The profile used when none is named.
pub const DEFAULT_BOARD: &str = "generic-cpu";

/// The TOML text of a built-in profile.
pub fn builtin_toml(name: &str) -> Option<&'static str> {
    Some(match name {
        "generic-cpu" => include_str!("../profiles/generic-cpu.toml"),
        "jetson-orin-nano" => include_str!("../profiles/jetson-orin-nano.toml"),
        "jetson-orin-nx" => include_str!("../profiles/jetson-orin-nx.toml"),
        "jetson-agx-orin" => include_str!("../profiles/jetson-agx-orin.toml"),
        "x86-cuda-workstation" => include_str!("../profiles/x86-cuda-workstation.toml"),
        _ => return None,
    })
}
