//! Pieces shared by the subcommands: choosing the port (flag or board profile), reading the
//! per-cart key, waiting for the link with a deadline, and printing frames.

#[cfg(feature = "flash")]
pub mod flash;
pub mod monitor;
pub mod ping;
pub mod simulate;
pub mod status;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cart_protocol::auth::CartKey;
use firmware_host::link::{HostLink, LinkConfig, LinkEvent};

/// Where the MCU is.
#[derive(clap::Args, Debug, Clone)]
pub struct PortArgs {
    /// Serial device of the cart MCU, e.g. /dev/echojepa-mcu or the path `simulate` printed
    /// [default: the board profile's serial.port]
    #[arg(long, short)]
    pub port: Option<String>,
    /// Baud rate [default: the board profile's serial.baud, else 115200]
    #[arg(long)]
    pub baud: Option<u32>,
    /// Board profile (built-in name or TOML file) whose [serial] table names the port
    #[arg(long, env = "ECHOJEPA_BOARD")]
    pub board: Option<String>,
    /// File holding the per-cart link key (HMAC-SHA256, 64 hex digits) that authenticates the
    /// MCU's answers and privileged commands; a secret shared with this cart's MCU only
    #[arg(long, value_name = "FILE", visible_alias = "key-file")]
    pub link_key: Option<PathBuf>,
    /// Seconds to wait for the MCU to answer
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

impl PortArgs {
    /// The link configuration these flags describe.
    pub fn link_config(&self) -> Result<LinkConfig> {
        let serial = match &self.board {
            Some(b) => {
                boards::BoardProfile::resolve(b)
                    .with_context(|| format!("loading board profile {b}"))?
                    .serial
            }
            None => None,
        };
        let port = match (&self.port, &serial) {
            (Some(p), _) => p.clone(),
            (None, Some(s)) => s.port.clone(),
            (None, None) => match &self.board {
                Some(b) => bail!("board profile {b} has no [serial] table; pass --port"),
                None => bail!("no serial port: pass --port PATH or --board PROFILE"),
            },
        };
        let baud = self
            .baud
            .or(serial.as_ref().map(|s| s.baud))
            .unwrap_or(115_200);
        let mut cfg = LinkConfig::new(port, baud);
        cfg.host_name = "firmware-host".into();
        if let Some(path) = &self.link_key {
            cfg.cart_key = Some(read_key(path)?);
        }
        Ok(cfg)
    }

    /// `--timeout` as a duration.
    pub fn timeout(&self) -> Result<Duration> {
        Duration::try_from_secs_f64(self.timeout).with_context(|| {
            format!(
                "--timeout {} is not a valid number of seconds",
                self.timeout
            )
        })
    }
}

/// Reads a per-cart key: 64 hex digits, surrounding whitespace ignored.
pub fn read_key(path: &Path) -> Result<CartKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .with_context(|| format!("key file {} is not hex", path.display()))?;
    let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!(
            "key file {} holds {} bytes, expected 32 (64 hex digits)",
            path.display(),
            b.len()
        )
    })?;
    Ok(CartKey::new(key))
}

/// Starts a link and waits until the handshake completes, or fails naming what was seen.
pub fn connect(cfg: LinkConfig, timeout: Duration) -> Result<HostLink> {
    let port = cfg.port.clone();
    let link = HostLink::spawn(cfg)?;
    let end = Instant::now() + timeout;
    let mut last_problem = None;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match link.events().recv_timeout(left) {
            Ok(LinkEvent::Up(_)) => return Ok(link),
            Ok(LinkEvent::Down(reason)) => last_problem = Some(format!("{reason:?}")),
            Ok(LinkEvent::Rejected(r)) => bail!(
                "the MCU on {port} refused the handshake: {:?} (it speaks protocol {}.{})",
                r.reason,
                r.supported.major,
                r.supported.minor
            ),
            Ok(_) => {}
            Err(_) => bail!(
                "no answer from an MCU on {port} within {timeout:?}{}",
                last_problem
                    .map(|p| format!(" (last problem: {p})"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Lower-case hex.
pub fn hex8(b: &[u8]) -> String {
    hex::encode(b)
}
