//! `firmware-host ping`: handshake with the MCU and measure round-trip times.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use firmware_host::link::LinkEvent;

use super::{PortArgs, connect};

/// Arguments of `ping`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub port: PortArgs,
    /// Number of pings
    #[arg(long, short = 'c', default_value_t = 4)]
    pub count: u32,
    /// One JSON object per line instead of text
    #[arg(long)]
    pub json: bool,
}

/// Runs `ping`; fails (exit 1) when no ping was answered.
pub fn run(args: Args, out: &mut impl Write) -> Result<ExitCode> {
    let timeout = args.port.timeout()?;
    let link = connect(args.port.link_config()?, timeout)?;
    let peer = link.peer().unwrap_or_else(unreachable_peer);
    let mut rtts = Vec::new();
    // A lost ping is reported, not retried; wait at most 2 s for each.
    let wait = timeout.min(Duration::from_secs(2));
    for _ in 0..args.count {
        let nonce = link.ping()?;
        let end = Instant::now() + wait;
        let mut rtt = None;
        while let Ok(e) = link
            .events()
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            if let LinkEvent::Pong { nonce: n, rtt: r } = e
                && n == nonce
            {
                rtt = Some(r);
                break;
            }
        }
        let ms = rtt.map(|r| r.as_secs_f64() * 1000.0);
        if args.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"cart_id": peer.cart_id, "nonce": nonce, "rtt_ms": ms})
            )?;
        } else {
            match ms {
                Some(ms) => writeln!(
                    out,
                    "pong from {}: nonce={nonce} rtt={ms:.2} ms",
                    peer.cart_id
                )?,
                None => writeln!(
                    out,
                    "no pong from {} for nonce={nonce} within {wait:?}",
                    peer.cart_id
                )?,
            }
        }
        if let Some(r) = rtt {
            rtts.push(r);
        }
    }
    let stats = link.shutdown();
    let answered = rtts.len() as u32;
    if !args.json {
        let avg = if rtts.is_empty() {
            Duration::ZERO
        } else {
            rtts.iter().sum::<Duration>() / answered
        };
        writeln!(
            out,
            "{answered}/{} answered, mean rtt {:.2} ms, {} frames dropped on receive",
            args.count,
            avg.as_secs_f64() * 1000.0,
            stats.rx_dropped_frames
        )?;
    }
    Ok(if answered > 0 || args.count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn unreachable_peer() -> firmware_host::link::PeerInfo {
    // `connect` returns only after `Up`, which stores the peer; a reboot right after could
    // clear it again, in which case we print an empty id rather than fail.
    firmware_host::link::PeerInfo {
        version: cart_protocol::PROTOCOL_VERSION,
        cart_id: String::new(),
        firmware: String::new(),
        build_id: [0; 8],
        last_counter: 0,
        active_slot: None,
        authenticated: false,
    }
}
