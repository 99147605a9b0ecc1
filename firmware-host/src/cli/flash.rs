//! `firmware-host flash` and `firmware-host slots`: install a signed bundle into the cart's A/B
//! model slots, check and repair the slots at boot, roll back by hand.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cart_protocol::{CommandOutcome, PrivilegedCommand, Slot};
use echojepa_bundle::rollback::{Overrides, format_utc};
use firmware_host::link::LinkEvent;
use firmware_host::slots::{Failpoints, HealthCheck, Slots};
use firmware_host::verify::{SignedBundleVerifier, board_keys};

use super::{PortArgs, connect};

/// Where the slots are and which keys to trust.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The cart's model slots directory [default: the board profile's bundles.slots_dir]
    #[arg(long)]
    pub slots_dir: Option<PathBuf>,
    /// Public key file a bundle may be signed with (repeat for several)
    /// [default: the board profile's [trust] keys]
    #[arg(long = "trusted-key")]
    pub trusted_keys: Vec<PathBuf>,
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `flash`.
#[derive(clap::Args, Debug)]
pub struct FlashArgs {
    /// The signed bundle directory (manifest.json, manifest.sig and the files it lists)
    pub bundle: PathBuf,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Shell command that checks the runtime can use the new slot before the switch is
    /// committed; it sees ECHOJEPA_BUNDLE (the new slot) and ECHOJEPA_SLOT. Non-zero exit or
    /// timeout rolls back. Default: `edge-runtime check --bundle "$ECHOJEPA_BUNDLE"` with this
    /// --board (the edge-runtime next to this program, else the one on PATH, or
    /// $ECHOJEPA_EDGE_RUNTIME).
    #[arg(long, conflicts_with = "no_health_check")]
    pub health_check: Option<String>,
    /// Commit the switch without any health check (not recommended: a bundle the runtime cannot
    /// run would then be what the cart boots).
    #[arg(long)]
    pub no_health_check: bool,
    /// Seconds the health check may take
    #[arg(long, default_value_t = 120.0)]
    pub health_timeout: f64,
    /// After switching, tell the MCU which slot is active (a privileged command: needs
    /// --link-key and the MCU's port)
    #[arg(long)]
    pub notify_mcu: bool,
    #[command(flatten)]
    pub port: PortArgs,
}

/// Operator overrides of the anti-rollback policy; each use is written to the slots'
/// `audit.log` and logged as a warning.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct PolicyArgs {
    /// Accept a bundle whose security version is below the highest this cart has accepted (the
    /// floor then follows it)
    #[arg(long)]
    pub allow_rollback: bool,
    /// Accept a bundle past its not-after date
    #[arg(long)]
    pub allow_expired: bool,
}

impl PolicyArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            allow_rollback: self.allow_rollback,
            allow_expired: self.allow_expired,
        }
    }
}

/// `slots` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SlotsCommand {
    /// Show both slots, which one is current and whether each verifies.
    Status(SlotsArgs),
    /// Boot-time check: remove half-written leftovers, undo an unconfirmed switch, make sure
    /// `current` holds a bundle that verifies (switching to the other slot if not). Run it
    /// before the runtime starts.
    Recover(SlotsArgs),
    /// Switch back to the other slot (if its bundle verifies).
    Rollback(SlotsArgs),
}

/// Arguments of the `slots` subcommands.
#[derive(clap::Args, Debug)]
pub struct SlotsArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Board profile supplying slots directory and trusted keys
    #[arg(long, env = "ECHOJEPA_BOARD")]
    pub board: Option<String>,
}

fn resolve(target: &Target, board: Option<&str>) -> Result<(Slots, SignedBundleVerifier)> {
    let profile = match board {
        Some(b) => Some(
            boards::BoardProfile::resolve(b)
                .with_context(|| format!("loading board profile {b}"))?,
        ),
        None => None,
    };
    let dir = match (&target.slots_dir, &profile) {
        (Some(d), _) => d.clone(),
        (None, Some(p)) => p.resolve_path(&p.bundles.slots_dir),
        (None, None) => bail!("no slots directory: pass --slots-dir DIR or --board PROFILE"),
    };
    let keys = if !target.trusted_keys.is_empty() {
        target
            .trusted_keys
            .iter()
            .map(|p| echojepa_bundle::PublicKey::load(p).map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?
    } else if let Some(p) = &profile {
        board_keys(p).map_err(anyhow::Error::msg)?
    } else {
        bail!("no trusted keys: pass --trusted-key FILE or --board PROFILE")
    };
    if keys.is_empty() {
        bail!("the trusted key list is empty, so no bundle can be accepted");
    }
    Ok((Slots::new(dir), SignedBundleVerifier::new(keys)))
}

/// Runs `flash`.
pub fn flash(args: FlashArgs, out: &mut impl Write) -> Result<ExitCode> {
    let (slots, verifier) = resolve(&args.target, args.port.board.as_deref())?;
    let slots = slots.overrides(args.policy.overrides());
    let timeout = if args.health_timeout.is_finite() && args.health_timeout > 0.0 {
        Duration::try_from_secs_f64(args.health_timeout).context("--health-timeout")?
    } else {
        bail!(
            "--health-timeout {}: must be a positive number of seconds",
            args.health_timeout
        )
    };
    let health = if args.no_health_check {
        tracing::warn!(
            "--no-health-check: the switch is committed without checking the runtime can use the bundle"
        );
        None
    } else {
        Some(HealthCheck {
            command: match &args.health_check {
                Some(cmd) => cmd.clone(),
                None => default_health_check(args.port.board.as_deref()),
            },
            timeout,
        })
    };
    // Fail on a bad port/key before touching the slots.
    let link_cfg = if args.notify_mcu {
        let cfg = args.port.link_config()?;
        if cfg.cart_key.is_none() {
            bail!("--notify-mcu needs --link-key (the per-cart key)");
        }
        Some(cfg)
    } else {
        None
    };
    let report = slots
        .install(
            &args.bundle,
            &verifier,
            health.as_ref(),
            &mut Failpoints::none(),
        )
        .with_context(|| format!("flashing {}", args.bundle.display()))?;
    let mut mcu = None;
    if let Some(cfg) = link_cfg {
        let slot = if report.slot == "a" { Slot::A } else { Slot::B };
        let outcome = notify(cfg, args.port.timeout()?, slot).with_context(|| {
            format!(
                "bundle installed in slot {} but the MCU did not confirm the switch",
                report.slot
            )
        })?;
        mcu = Some(format!("{outcome:?}"));
    }
    if args.target.json {
        let v = serde_json::json!({"installed": report, "slots_dir": slots.dir(), "mcu": mcu});
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "installed {} into slot {} of {}{}",
            report.bundle.label,
            report.slot,
            slots.dir().display(),
            match &report.previous {
                Some(p) => format!(" (previous bundle kept in slot {p})"),
                None => String::new(),
            }
        )?;
        if report.health_checked {
            writeln!(out, "health check passed; switch committed")?;
        }
        if let Some(m) = mcu {
            writeln!(out, "MCU confirmed the active slot: {m}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `'…'` quoting for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `edge-runtime check` on the new slot, with the board profile the runtime will use.
fn default_health_check(board: Option<&str>) -> String {
    let exe = std::env::var_os("ECHOJEPA_EDGE_RUNTIME")
        .map(PathBuf::from)
        .or_else(|| {
            let sibling = std::env::current_exe().ok()?.parent()?.join("edge-runtime");
            sibling.is_file().then_some(sibling)
        })
        .unwrap_or_else(|| PathBuf::from("edge-runtime"));
    let mut cmd = format!(
        "{} check --bundle \"$ECHOJEPA_BUNDLE\"",
        shell_quote(&exe.to_string_lossy())
    );
    if let Some(b) = board {
        cmd.push_str(&format!(" --board {}", shell_quote(b)));
    }
    cmd
}

fn notify(
    cfg: firmware_host::link::LinkConfig,
    timeout: Duration,
    slot: Slot,
) -> Result<CommandOutcome> {
    let link = connect(cfg, timeout)?;
    let end = Instant::now() + timeout;
    // A command frame can be lost on the wire; resend (with a fresh counter) until answered.
    while Instant::now() < end {
        link.send_privileged(PrivilegedCommand::SwitchModelSlot { slot })?;
        let retry = (Instant::now() + Duration::from_millis(500)).min(end);
        while let Ok(e) = link
            .events()
            .recv_timeout(retry.saturating_duration_since(Instant::now()))
        {
            if let LinkEvent::CommandResult { result, .. } = e {
                return match result.outcome {
                    CommandOutcome::Accepted => Ok(result.outcome),
                    o => bail!("the MCU answered {o:?}"),
                };
            }
        }
    }
    bail!("no answer within {timeout:?}")
}

/// Runs a `slots` subcommand.
pub fn slots(cmd: SlotsCommand, out: &mut impl Write) -> Result<ExitCode> {
    let (c, args) = match cmd {
        SlotsCommand::Status(a) => ("status", a),
        SlotsCommand::Recover(a) => ("recover", a),
        SlotsCommand::Rollback(a) => ("rollback", a),
    };
    let (slots, verifier) = resolve(&args.target, args.board.as_deref())?;
    let slots = slots.overrides(args.policy.overrides());
    let json = args.target.json;
    if c == "status" {
        let st = slots.status(&verifier);
        let floor = slots.floor()?;
        if json {
            let v =
                serde_json::json!({"slots_dir": slots.dir(), "slots": st, "security_floor": floor});
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        } else {
            writeln!(out, "slots in {}", slots.dir().display())?;
            match &floor {
                Some(f) => writeln!(
                    out,
                    "security floor {} (set by {} at {})",
                    f.security_version,
                    f.bundle,
                    format_utc(f.since_unix)
                )?,
                None => writeln!(out, "no security floor recorded yet")?,
            }
            for s in &st {
                let mark = if s.current { "*" } else { " " };
                let what = match (&s.bundle, &s.problem) {
                    (Some(b), _) => format!("{} [{}]", b.label, &b.id[..b.id.len().min(16)]),
                    (None, Some(p)) => format!("DOES NOT VERIFY: {p}"),
                    (None, None) => "empty".into(),
                };
                let what = match &s.policy {
                    Some(p) => format!("{what}  REFUSED: {p}"),
                    None => what,
                };
                writeln!(out, "{mark} {}  {what}", s.slot)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = if c == "recover" {
        slots.recover(&verifier, &mut Failpoints::none())?
    } else {
        slots.rollback(&verifier, &mut Failpoints::none())?
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for a in &report.actions {
            writeln!(out, "{a}")?;
        }
        writeln!(
            out,
            "current: slot {} holds {}",
            report.current, report.bundle.label
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
