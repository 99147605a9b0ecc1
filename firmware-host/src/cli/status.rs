//! `firmware-host status`: the MCU's identity (from the handshake) and its status report.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use firmware_host::link::LinkEvent;

use super::{PortArgs, connect, hex8};

/// Arguments of `status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub port: PortArgs,
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// Runs `status`.
pub fn run(args: Args, out: &mut impl Write) -> Result<ExitCode> {
    let timeout = args.port.timeout()?;
    let cfg = args.port.link_config()?;
    let port = cfg.port.clone();
    let link = connect(cfg, timeout)?;
    let Some(peer) = link.peer() else {
        bail!("the MCU on {port} went away right after the handshake");
    };
    let end = Instant::now() + timeout;
    let mut status = None;
    // The request can be lost on a noisy line: ask again every half second.
    'outer: while Instant::now() < end {
        link.request_status()?;
        let retry = Instant::now() + std::time::Duration::from_millis(500);
        while let Ok(e) = link
            .events()
            .recv_timeout(retry.min(end).saturating_duration_since(Instant::now()))
        {
            if let LinkEvent::McuStatus(s) = e {
                status = Some(s);
                break 'outer;
            }
        }
    }
    let Some(st) = status else {
        bail!("the MCU on {port} did not answer a status request within {timeout:?}");
    };
    let stats = link.shutdown();
    if args.json {
        let v = serde_json::json!({
            "port": port,
            "peer": peer,
            "build_id_hex": hex8(&peer.build_id),
            "status": st,
            "link": stats,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "port            {port}")?;
    writeln!(out, "cart            {}", peer.cart_id)?;
    writeln!(
        out,
        "firmware        {} (build {}), protocol {}.{}",
        peer.firmware,
        hex8(&peer.build_id),
        peer.version.major,
        peer.version.minor
    )?;
    writeln!(
        out,
        "authenticated   {}",
        if peer.authenticated {
            "yes (handshake and status verified with the cart key)"
        } else {
            "NO: no --link-key, so nothing below is verified"
        }
    )?;
    writeln!(
        out,
        "uptime          {:.1} s",
        f64::from(st.uptime_ms) / 1000.0
    )?;
    writeln!(out, "boots           {}", st.boot_count)?;
    writeln!(out, "power           {:?}", st.power)?;
    match st.temperature_c {
        Some(t) => writeln!(out, "temperature     {t:.1} °C")?,
        None => writeln!(out, "temperature     unknown")?,
    }
    writeln!(
        out,
        "active slot     {}",
        st.active_slot
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "none".into())
    )?;
    writeln!(out, "last counter    {}", st.last_counter)?;
    writeln!(out, "mcu rx dropped  {} frames", st.rx_dropped)?;
    writeln!(out, "host watchdog   {} trips", st.host_watchdog_trips)?;
    writeln!(
        out,
        "host rx dropped {} frames ({} bytes)",
        stats.rx_dropped_frames, stats.rx_bytes_lost
    )?;
    Ok(ExitCode::SUCCESS)
}
