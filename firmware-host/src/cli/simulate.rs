//! `firmware-host simulate`: a simulated cart MCU on a pseudo-terminal, for trying the host side
//! (the edge runtime, `monitor`, `ping`) without hardware, with seeded fault injection.
//!
//! Type commands on stdin while it runs: `freeze`, `record`, `next` (add `long` for a long
//! press), `reboot`, `stall MS`, `replug`, `log TEXT`, `status`, `quit`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cart_protocol::{Button, ButtonAction, HostMsg, LogLevel};
use crossbeam_channel::{after, never, select};
use firmware_host::faults::ByteFaults;
use firmware_host::sim::{McuConfig, SimConfig, SimControl, SimFaults, SimMcu, SimReport};

use super::read_key;

/// Arguments of `simulate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also keep a symlink here that always points at the current pty (survives `replug`)
    #[arg(long)]
    pub link: Option<PathBuf>,
    /// Seed of every injected fault (same seed, same faults)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of bytes corrupted in both directions (half dropped, half bit-flipped), e.g. 0.01
    #[arg(long, default_value_t = 0.0)]
    pub corrupt: f64,
    /// Fraction of bytes from the host corrupted (overrides --corrupt for that direction)
    #[arg(long)]
    pub corrupt_rx: Option<f64>,
    /// Fraction of bytes to the host corrupted (overrides --corrupt for that direction)
    #[arg(long)]
    pub corrupt_tx: Option<f64>,
    /// Fraction of frames to the host sent twice
    #[arg(long, default_value_t = 0.0)]
    pub duplicate: f64,
    /// Random stalls per second (the MCU stops reading and writing)
    #[arg(long, default_value_t = 0.0)]
    pub stall_rate: f64,
    /// Length of a random stall in milliseconds
    #[arg(long, default_value_t = 1500)]
    pub stall_ms: u64,
    /// Random reboots per second
    #[arg(long, default_value_t = 0.0)]
    pub reboot_rate: f64,
    /// Cart id reported in the handshake
    #[arg(long, default_value = "sim-cart-0001")]
    pub cart_id: String,
    /// File holding the simulated cart's link key (HMAC-SHA256, 64 hex digits)
    /// [default: 5a repeated, a test key]
    #[arg(long, value_name = "FILE", visible_alias = "key-file")]
    pub link_key: Option<PathBuf>,
    /// Press a random button this often (milliseconds), to exercise the host without typing
    #[arg(long)]
    pub buttons_every: Option<u64>,
    /// Stop after this many seconds [default: run until `quit` or Ctrl-C]
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print host heartbeats too
    #[arg(long)]
    pub heartbeats: bool,
    /// One JSON object per line instead of text
    #[arg(long)]
    pub json: bool,
}

fn rate(name: &str, v: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&v) {
        bail!("{name} must be between 0 and 1, got {v}");
    }
    Ok(v)
}

/// Runs the simulator until `quit`, end of `--duration`, or the process is killed.
pub fn run(args: Args, out: &mut impl Write) -> Result<ExitCode> {
    let rx = rate("--corrupt-rx", args.corrupt_rx.unwrap_or(args.corrupt))?;
    let tx = rate("--corrupt-tx", args.corrupt_tx.unwrap_or(args.corrupt))?;
    let mut mcu = McuConfig {
        cart_id: args.cart_id.clone(),
        ..Default::default()
    };
    if let Some(k) = &args.link_key {
        mcu.key = read_key(k)?;
    }
    let config = SimConfig {
        mcu,
        faults: SimFaults {
            seed: args.seed,
            rx: ByteFaults::corrupt(rx),
            tx: ByteFaults::corrupt(tx),
            duplicate_rate: rate("--duplicate", args.duplicate)?,
            stall_rate: args.stall_rate.max(0.0),
            stall_ms: args.stall_ms,
            reboot_rate: args.reboot_rate.max(0.0),
        },
        journal: false,
        link: args.link.clone(),
    };
    let sim = SimMcu::spawn(config).context("creating the pseudo-terminal")?;
    let slave = sim
        .snapshot(Duration::from_secs(5))
        .map(|s| s.slave_path)
        .unwrap_or_default();
    if args.json {
        let v = serde_json::json!({"event": "listening", "pty": slave, "port": sim.port_path()});
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "simulated MCU listening on {}",
            sim.port_path().display()
        )?;
        if args.link.is_some() {
            writeln!(out, "(symlink to {})", slave.display())?;
        }
        writeln!(
            out,
            "connect with: firmware-host ping --port {}",
            sim.port_path().display()
        )?;
    }
    out.flush()?;

    let (lines_tx, lines_rx) = crossbeam_channel::unbounded::<String>();
    std::thread::Builder::new()
        .name("sim-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        })?;
    let mut lines = Some(lines_rx);
    let end = match args.duration {
        Some(s) => after(Duration::try_from_secs_f64(s).context("--duration")?),
        None => never(),
    };
    let buttons = match args.buttons_every {
        Some(ms) => crossbeam_channel::tick(Duration::from_millis(ms.max(1))),
        None => never(),
    };
    let start = Instant::now();
    let mut n_button = 0u32;
    loop {
        let never_lines = never();
        let line_rx = lines.as_ref().unwrap_or(&never_lines);
        select! {
            recv(sim.reports()) -> r => {
                let Ok(r) = r else { break };
                print_report(out, &r, start, &args)?;
            }
            recv(line_rx) -> l => match l {
                Ok(l) => {
                    if !command(&sim, l.trim(), out)? {
                        break;
                    }
                }
                Err(_) => lines = None, // stdin closed: keep running
            },
            recv(buttons) -> _ => {
                let b = [Button::Freeze, Button::Record, Button::Next][(n_button % 3) as usize];
                n_button += 1;
                sim.button(b, ButtonAction::Press, None);
            }
            recv(end) -> _ => break,
        }
        out.flush()?;
    }
    sim.stop();
    Ok(ExitCode::SUCCESS)
}

fn command(sim: &SimMcu, line: &str, out: &mut impl Write) -> Result<bool> {
    let mut words = line.split_whitespace();
    let Some(word) = words.next() else {
        return Ok(true);
    };
    let rest: Vec<&str> = words.collect();
    let action = if rest.first() == Some(&"long") {
        ButtonAction::LongPress
    } else {
        ButtonAction::Press
    };
    match word {
        "freeze" => sim.button(Button::Freeze, action, None),
        "record" => sim.button(Button::Record, action, None),
        "next" => sim.button(Button::Next, action, None),
        "reboot" => sim.control(SimControl::Reboot),
        "replug" => sim.control(SimControl::Replug),
        "stall" => {
            let ms = rest.first().and_then(|s| s.parse().ok()).unwrap_or(1500);
            sim.control(SimControl::Stall(Duration::from_millis(ms)));
        }
        "log" => sim.control(SimControl::Log(LogLevel::Info, rest.join(" "))),
        "status" => {
            if let Some(s) = sim.snapshot(Duration::from_secs(1)) {
                writeln!(
                    out,
                    "session {}, slot {:?}, counter {}, boots {}, rx dropped {}, display {:?}",
                    if s.session_up { "up" } else { "down" },
                    s.persistent.active_slot,
                    s.persistent.last_counter,
                    s.persistent.boot_count,
                    s.rx_dropped,
                    s.display.lines
                )?;
            }
        }
        "quit" | "exit" => return Ok(false),
        other => writeln!(
            out,
            "unknown command {other:?}; try freeze|record|next [long], reboot, stall MS, replug, log TEXT, status, quit"
        )?,
    }
    Ok(true)
}

fn print_report(out: &mut impl Write, r: &SimReport, start: Instant, args: &Args) -> Result<()> {
    if !args.heartbeats
        && matches!(r, SimReport::Received(e) if matches!(e.msg, HostMsg::Heartbeat(_)))
    {
        return Ok(());
    }
    let t = start.elapsed().as_secs_f64();
    if args.json {
        let v = match r {
            SimReport::HostUp { host_name } => {
                serde_json::json!({"event": "host_up", "host_name": host_name})
            }
            SimReport::Received(e) => {
                serde_json::json!({"event": "received", "seq": e.seq, "msg": e.msg})
            }
            SimReport::RxDropped { error, lost_bytes } => serde_json::json!({
                "event": "rx_dropped", "error": error.to_string(), "lost_bytes": lost_bytes
            }),
            SimReport::RxStale { seq } => serde_json::json!({"event": "rx_stale", "seq": seq}),
            SimReport::HostLost { silence_ms } => {
                serde_json::json!({"event": "host_lost", "silence_ms": silence_ms})
            }
            SimReport::Command {
                counter,
                command,
                outcome,
            } => serde_json::json!({
                "event": "command", "counter": counter, "command": command, "outcome": outcome
            }),
            SimReport::Booted(b) => serde_json::json!({"event": "booted", "boot": b}),
            SimReport::Stalled { ms } => serde_json::json!({"event": "stalled", "ms": ms}),
            SimReport::Replugged { path } => {
                serde_json::json!({"event": "replugged", "pty": path})
            }
            SimReport::ReplyNotSigned { kind, error } => serde_json::json!({
                "event": "reply_not_signed", "kind": kind,
                "error": error.map(|e| e.to_string()).unwrap_or_else(|| "no host session".into())
            }),
        };
        let mut v = v;
        v["t_s"] = serde_json::json!(t);
        writeln!(out, "{v}")?;
        return Ok(());
    }
    match r {
        SimReport::HostUp { host_name } => writeln!(out, "{t:9.3}s host {host_name} connected")?,
        SimReport::Received(e) => match &e.msg {
            HostMsg::Prediction(p) => writeln!(
                out,
                "{t:9.3}s prediction #{}: {} ({:.0}%), EF {}{}",
                p.seq,
                p.view,
                p.confidence * 100.0,
                match p.ef_percent {
                    Some(ef) => format!("{ef:.0}%"),
                    None => format!("withheld ({:?})", p.ef_status),
                },
                if p.synthetic {
                    " [model trained on synthetic data]"
                } else {
                    ""
                }
            )?,
            other => writeln!(out, "{t:9.3}s <- host #{} {other:?}", e.seq)?,
        },
        SimReport::RxDropped { error, lost_bytes } => writeln!(
            out,
            "{t:9.3}s dropped {lost_bytes} bytes from host: {error}"
        )?,
        SimReport::RxStale { seq } => writeln!(out, "{t:9.3}s ignored stale frame #{seq}")?,
        SimReport::HostLost { silence_ms } => writeln!(
            out,
            "{t:9.3}s host silent for {silence_ms} ms: watchdog tripped"
        )?,
        SimReport::Command {
            counter,
            command,
            outcome,
        } => writeln!(
            out,
            "{t:9.3}s privileged #{counter} {command:?}: {outcome:?}"
        )?,
        SimReport::Booted(b) => writeln!(
            out,
            "{t:9.3}s booted ({:?}, boot #{})",
            b.reset_cause, b.boot_count
        )?,
        SimReport::Stalled { ms } => writeln!(out, "{t:9.3}s stalling for {ms} ms")?,
        SimReport::Replugged { path } => {
            writeln!(out, "{t:9.3}s re-plugged as {}", path.display())?
        }
        SimReport::ReplyNotSigned { kind, error } => writeln!(
            out,
            "{t:9.3}s reply (message kind {kind}) not sent: {}",
            error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no host session to authenticate it for".into())
        )?,
    }
    Ok(())
}
