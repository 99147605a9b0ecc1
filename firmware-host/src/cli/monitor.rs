//! `firmware-host monitor`: print every frame on the MCU link, decoded.
//!
//! By default it runs the handshake and heartbeats (the MCU only talks to a live host) and prints
//! what it sends and receives. `--passive` only listens, for a tap on one line of a link another
//! host is driving. With `--elf`, MCU log records carrying defmt frames are decoded with that
//! firmware ELF's format strings.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cart_protocol::{Envelope, Feed, FrameDecoder, HostMsg, LogPayload, LogRecord, McuMsg};
use crossbeam_channel::{after, never, select};
use firmware_host::link::{HostLink, LinkEvent, Trace};

use super::{PortArgs, hex8};

/// Arguments of `monitor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub port: PortArgs,
    /// Only listen: no handshake, no heartbeats, nothing written to the port
    #[arg(long)]
    pub passive: bool,
    /// With --passive: which side's frames the tapped line carries
    #[arg(long, value_enum, default_value_t = Direction::Mcu)]
    pub direction: Direction,
    /// Firmware ELF whose defmt table decodes the MCU's defmt log records
    #[arg(long)]
    pub elf: Option<PathBuf>,
    /// Print heartbeats too
    #[arg(long)]
    pub heartbeats: bool,
    /// Stop after this many seconds [default: until Ctrl-C]
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many frames from the MCU (heartbeats not counted)
    #[arg(long)]
    pub count: Option<u64>,
    /// One JSON object per line instead of text
    #[arg(long)]
    pub json: bool,
}

/// Which messages a passively monitored line carries.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// MCU to host.
    Mcu,
    /// Host to MCU.
    Host,
}

#[cfg(feature = "defmt-elf")]
type Table = firmware_host::defmt_log::DefmtTable;
#[cfg(not(feature = "defmt-elf"))]
type Table = ();

fn load_table(elf: &Option<PathBuf>) -> Result<Option<Table>> {
    let Some(path) = elf else { return Ok(None) };
    #[cfg(feature = "defmt-elf")]
    {
        Ok(Some(firmware_host::defmt_log::DefmtTable::from_elf(path)?))
    }
    #[cfg(not(feature = "defmt-elf"))]
    {
        anyhow::bail!(
            "--elf {} needs firmware-host built with the `defmt-elf` feature",
            path.display()
        )
    }
}

struct Printer<'a, W: Write> {
    out: &'a mut W,
    json: bool,
    heartbeats: bool,
    table: Option<Table>,
    start: Instant,
    received: u64,
}

impl<W: Write> Printer<'_, W> {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn log_text(&self, log: &LogRecord) -> (String, serde_json::Value) {
        match &log.payload {
            LogPayload::Text(t) => (t.to_string(), serde_json::json!({"text": t.as_str()})),
            LogPayload::Defmt(bytes) => {
                #[cfg(feature = "defmt-elf")]
                if let Some(table) = &self.table {
                    return match table.decode(bytes) {
                        Ok(d) => (
                            format!(
                                "{}{}",
                                d.timestamp
                                    .as_ref()
                                    .map(|t| format!("[{t}] "))
                                    .unwrap_or_default(),
                                d.message
                            ),
                            serde_json::json!({"defmt": d}),
                        ),
                        Err(e) => (
                            format!("defmt {} ({e})", hex8(bytes)),
                            serde_json::json!({"defmt_raw": hex8(bytes), "error": e.to_string()}),
                        ),
                    };
                }
                let _ = &self.table;
                (
                    format!("defmt {} (pass --elf FIRMWARE to decode)", hex8(bytes)),
                    serde_json::json!({"defmt_raw": hex8(bytes)}),
                )
            }
        }
    }

    fn frame<M: serde::Serialize + std::fmt::Debug>(
        &mut self,
        dir: &str,
        env: &Envelope<M>,
        log: Option<&LogRecord>,
        heartbeat: bool,
    ) -> Result<()> {
        if heartbeat && !self.heartbeats {
            return Ok(());
        }
        let t = self.t();
        let decoded = log.map(|l| self.log_text(l));
        if self.json {
            let mut v = serde_json::json!({"t_s": t, "dir": dir, "seq": env.seq, "msg": env.msg});
            if let Some((_, j)) = decoded {
                v["log"] = j;
            }
            writeln!(self.out, "{v}")?;
        } else if let (Some(l), Some((text, _))) = (log, decoded) {
            writeln!(
                self.out,
                "{t:9.3}s {dir} #{} log {:?}: {text}",
                env.seq, l.level
            )?;
        } else {
            writeln!(self.out, "{t:9.3}s {dir} #{} {:?}", env.seq, env.msg)?;
        }
        Ok(())
    }

    fn note(&mut self, kind: &str, text: String) -> Result<()> {
        let t = self.t();
        if self.json {
            writeln!(
                self.out,
                "{}",
                serde_json::json!({"t_s": t, "event": kind, "detail": text})
            )?;
        } else {
            writeln!(self.out, "{t:9.3}s {kind}: {text}")?;
        }
        Ok(())
    }

    fn mcu(&mut self, dir: &str, env: &Envelope<McuMsg>) -> Result<()> {
        let log = match &env.msg {
            McuMsg::Log(l) => Some(l),
            _ => None,
        };
        let hb = matches!(env.msg, McuMsg::Heartbeat(_));
        self.frame(dir, env, log, hb)
    }

    fn host(&mut self, dir: &str, env: &Envelope<HostMsg>) -> Result<()> {
        let hb = matches!(env.msg, HostMsg::Heartbeat(_));
        self.frame(dir, env, None, hb)
    }
}

/// Runs `monitor`.
pub fn run(args: Args, out: &mut impl Write) -> Result<ExitCode> {
    let table = load_table(&args.elf)?;
    let mut cfg = args.port.link_config()?;
    let end = match args.duration {
        Some(s) => after(Duration::try_from_secs_f64(s).context("--duration")?),
        None => never(),
    };
    let mut p = Printer {
        out,
        json: args.json,
        heartbeats: args.heartbeats,
        table,
        start: Instant::now(),
        received: 0,
    };
    let done = |p: &Printer<'_, _>| args.count.is_some_and(|n| p.received >= n);
    if args.passive {
        return passive(
            &cfg.port,
            cfg.baud,
            args.direction,
            &end,
            args.count,
            &mut p,
        );
    }
    cfg.trace = true;
    cfg.event_capacity = 4096;
    let port = cfg.port.clone();
    let link = HostLink::spawn(cfg)?;
    p.note("monitor", format!("opening {port}"))?;
    loop {
        select! {
            recv(link.events()) -> e => {
                let Ok(e) = e else { break };
                match e {
                    LinkEvent::Trace(Trace::Sent(env)) => p.host("->", &env)?,
                    LinkEvent::Trace(Trace::Received(env)) => {
                        p.mcu("<-", &env)?;
                        if !matches!(env.msg, McuMsg::Heartbeat(_)) {
                            p.received += 1;
                        }
                    }
                    LinkEvent::Trace(Trace::Stale(env)) => {
                        p.note("stale", format!("ignored duplicate #{} {:?}", env.seq, env.msg))?
                    }
                    LinkEvent::Trace(Trace::Dropped { error, lost_bytes }) => {
                        p.note("dropped", format!("{lost_bytes} bytes: {error}"))?
                    }
                    LinkEvent::Up(peer) => p.note(
                        "up",
                        format!(
                            "cart {} firmware {} build {}{}",
                            peer.cart_id,
                            peer.firmware,
                            hex8(&peer.build_id),
                            if peer.authenticated {
                                ", authenticated"
                            } else {
                                ", NOT authenticated (no --link-key)"
                            }
                        ),
                    )?,
                    LinkEvent::Down(reason) => p.note("down", format!("{reason:?}"))?,
                    LinkEvent::Rejected(r) => p.note("rejected", format!("{r:?}"))?,
                    // The frame was traced as received; say that the link dropped it.
                    LinkEvent::ReplyRejected { kind, problem } => p.note(
                        "reply_rejected",
                        format!("{kind:?} dropped: {problem:?}"),
                    )?,
                    // Everything else is also traced as a received frame.
                    _ => {}
                }
            }
            recv(end) -> _ => break,
        }
        p.out.flush()?;
        if done(&p) {
            break;
        }
    }
    let stats = link.shutdown();
    p.note(
        "stats",
        serde_json::to_string(&stats).unwrap_or_else(|e| e.to_string()),
    )?;
    Ok(ExitCode::SUCCESS)
}

fn passive(
    port: &str,
    baud: u32,
    direction: Direction,
    end: &crossbeam_channel::Receiver<Instant>,
    count: Option<u64>,
    p: &mut Printer<'_, impl Write>,
) -> Result<ExitCode> {
    let mut serial = serialport::new(port, baud)
        .timeout(Duration::from_millis(50))
        .open()
        .with_context(|| format!("opening {port}"))?;
    p.note("monitor", format!("listening passively on {port}"))?;
    let mut dec: FrameDecoder = FrameDecoder::new();
    let mut buf = [0u8; 1024];
    while end.try_recv().is_err() && count.is_none_or(|n| p.received < n) {
        let n = match serial.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {port}")),
        };
        let mut input = &buf[..n];
        loop {
            let next = match direction {
                Direction::Mcu => match dec.feed::<McuMsg>(input) {
                    Feed::Consumed => break,
                    Feed::Frame { envelope, rest } => {
                        p.mcu("<-", &envelope)?;
                        if !matches!(envelope.msg, McuMsg::Heartbeat(_)) {
                            p.received += 1;
                        }
                        rest
                    }
                    Feed::Dropped {
                        error,
                        lost_bytes,
                        rest,
                    } => {
                        p.note("dropped", format!("{lost_bytes} bytes: {error}"))?;
                        rest
                    }
                },
                Direction::Host => match dec.feed::<HostMsg>(input) {
                    Feed::Consumed => break,
                    Feed::Frame { envelope, rest } => {
                        p.host("->", &envelope)?;
                        if !matches!(envelope.msg, HostMsg::Heartbeat(_)) {
                            p.received += 1;
                        }
                        rest
                    }
                    Feed::Dropped {
                        error,
                        lost_bytes,
                        rest,
                    } => {
                        p.note("dropped", format!("{lost_bytes} bytes: {error}"))?;
                        rest
                    }
                },
            };
            input = next;
        }
        p.out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
