//! Command-line interface: arguments, logging, and dispatch to the subcommands.

mod bench;
mod boards_cmd;
mod check;
mod common;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Live ultrasound video to a real-time view label and ejection fraction (EF), on a cart computer.
///
/// With no arguments it runs the default board profile (generic-cpu): the synthetic echo phantom
/// through the bundled demo model, printing one line per prediction. The demo model is trained
/// on synthetic data; nothing this program shows is for diagnostic use.
///
/// Examples:
///   edge-runtime                                   phantom + demo model, readable lines
///   edge-runtime --serve                           ...and the live view on http://127.0.0.1:8080/
///   edge-runtime --json > run.jsonl                JSON lines (schema: edge-runtime/SCHEMA.md)
///   edge-runtime --board jetson-orin-nano          a cart: V4L2 grabber, its bundle slot, its MCU
///   edge-runtime --source stdin --stdin-format 640x480:GREY < frames.raw
///   edge-runtime bench --seconds 30                frames/s, latency p50/p99, drops, memory
///   edge-runtime check --board jetson-orin-nano    verify and load the cart's bundle (exit 0 = ok)
#[derive(Debug, Parser)]
#[command(
    name = "edge-runtime",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    after_long_help = echojepa_kernels::settings::env_help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub log: cli_log::LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the live pipeline (what happens with no subcommand).
    Run(RunArgs),
    /// Measure a bundle on a source: sustained frames/s, per-stage latency p50/p99, dropped
    /// frames and clips, peak memory, the encoder's time alone (before the live run), and (on
    /// the phantom) accuracy against ground truth.
    Bench(BenchArgs),
    /// Health check of a board's bundle: verify signature and hashes, load the model, run one
    /// clip. Exit status 0 means healthy (used by `firmware-host flash` and the systemd unit).
    Check(CheckArgs),
    /// List the built-in board profiles, or validate and print one (a name or a .toml file).
    Boards(BoardsArgs),
}

/// Which board and which model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Board profile: a built-in name (generic-cpu, jetson-orin-nano, jetson-orin-nx,
    /// jetson-agx-orin, x86-cuda-workstation) or the path of a .toml profile.
    #[arg(long, default_value = boards::DEFAULT_BOARD, env = "ECHOJEPA_BOARD")]
    pub board: String,
    /// Model bundle directory. Default: the board's current slot (<bundles.slots_dir>/current);
    /// on generic-cpu, the bundled demo model.
    #[arg(long, env = "ECHOJEPA_BUNDLE")]
    pub bundle: Option<PathBuf>,
    /// Frame rate of the training videos, used when a bundle gives a frame step but no fps.
    #[arg(long, default_value_t = edge_runtime::model::DEFAULT_REFERENCE_FPS, value_parser = positive_rate)]
    pub reference_fps: f64,
    /// CPU threads for the model [default: ECHOJEPA_THREADS, else the board profile's
    /// compute.threads, else every CPU]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run a bundle whose security version is below the highest this cart has accepted
    /// (<bundles.slots_dir>/security_floor.json); logged as a warning.
    #[arg(long)]
    pub allow_rollback: bool,
    /// Run a bundle past its not-after date; logged as a warning.
    #[arg(long)]
    pub allow_expired: bool,
    /// Write every clip's model input under this folder (for comparing the runtime's input
    /// with the trainer's and quantize's; see `echojepa_input::dump`).
    #[arg(long, hide = true)]
    pub dump_inputs: Option<PathBuf>,
}

/// Where frames come from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Frame source: phantom | v4l2[:DEVICE] | file:PATH | stdin (default: the board profile's
    /// capture.source).
    #[arg(long)]
    pub source: Option<String>,
    /// Raw frame format on stdin: WIDTHxHEIGHT:FORMAT with FORMAT one of GREY, YUYV, RGB3.
    #[arg(long, value_name = "WxH:FMT")]
    pub stdin_format: Option<String>,
    /// Give stdin frames timestamps at this rate instead of their arrival time.
    #[arg(long, value_parser = positive_rate)]
    pub stdin_fps: Option<f64>,
    /// Files and the phantom: as fast as possible instead of in real time.
    #[arg(long)]
    pub fast: bool,
    /// Files: start again at the end.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Phantom views in order, repeating (a4c, a2c, a3c, plax, psax, subcostal).
    #[arg(long, default_value = "a4c,plax,a2c,psax")]
    pub phantom_views: String,
    /// Seconds each phantom view (a new synthetic patient) is shown.
    #[arg(long, default_value_t = 8.0)]
    pub phantom_seconds: f64,
    /// Seed of the first synthetic patient.
    #[arg(long, default_value_t = 1)]
    pub phantom_seed: u64,
    /// Capture or phantom frame rate (default: the profile's capture.fps).
    #[arg(long, value_parser = positive_rate)]
    pub fps: Option<f64>,
    /// Capture or phantom frame size WIDTHxHEIGHT (default: the profile's).
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
}

/// `edge-runtime [run]`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Serve the web live view on ADDR (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    pub serve: Option<String>,
    /// Video frames per second sent to the live view.
    #[arg(long, default_value_t = 10.0, value_parser = positive_rate)]
    pub view_fps: f64,
    #[command(flatten)]
    pub view: ViewLimitArgs,
    /// Serial port of the cart MCU (default: the profile's serial.port).
    #[arg(long)]
    pub serial: Option<String>,
    /// Baud rate with --serial (default: the profile's, else 115200).
    #[arg(long)]
    pub serial_baud: Option<u32>,
    /// Do not open the cart MCU link even if the profile names a port.
    #[arg(long)]
    pub no_serial: bool,
    /// JSON lines on stdout (schema: edge-runtime/SCHEMA.md). The default when stdout is not a
    /// terminal; readable lines otherwise.
    #[arg(long)]
    pub json: bool,
    /// Nothing on stdout (with --serve or a serial link). Logs on stderr follow --log/-q.
    #[arg(long, conflicts_with = "json")]
    pub no_stdout: bool,
    /// Stop after this many seconds of video.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Stop after this many captured frames.
    #[arg(long)]
    pub max_frames: Option<u64>,
}

/// The live view's limits and access (`--serve`). Each limit defaults to the board profile's
/// `[live_view]` value; see boards/src/profile.rs for what each means.
#[derive(Debug, Clone, Default, Args)]
pub struct ViewLimitArgs {
    /// Live view: open connections at once; more get 503 (default: live_view.max_connections).
    #[arg(long, value_name = "N")]
    pub view_max_connections: Option<usize>,
    /// Live view: event streams at once; more get 503 (default: live_view.max_viewers).
    #[arg(long, value_name = "N")]
    pub view_max_viewers: Option<usize>,
    /// Live view: bytes of request line plus headers (default: live_view.max_header_bytes).
    #[arg(long, value_name = "BYTES")]
    pub view_max_header_bytes: Option<usize>,
    /// Live view: headers per request (default: live_view.max_headers).
    #[arg(long, value_name = "N")]
    pub view_max_headers: Option<usize>,
    /// Live view: ms for a request's head to arrive (default: live_view.header_timeout_ms).
    #[arg(long, value_name = "MS")]
    pub view_header_timeout_ms: Option<u64>,
    /// Live view: ms of no traffic before a connection closes (default: live_view.idle_timeout_ms).
    #[arg(long, value_name = "MS")]
    pub view_idle_timeout_ms: Option<u64>,
    /// Live view: ms a write may stall (or a viewer's queue stay full) before the connection is
    /// closed (default: live_view.write_timeout_ms).
    #[arg(long, value_name = "MS")]
    pub view_write_timeout_ms: Option<u64>,
    /// Live view: messages queued per viewer (default: live_view.viewer_queue).
    #[arg(long, value_name = "N")]
    pub view_viewer_queue: Option<usize>,
    /// Live view: a host name the view may be reached by besides loopback names and IP addresses
    /// (repeatable; adds to live_view.allowed_hosts). Other Host headers get 421.
    #[arg(long = "view-allowed-host", value_name = "NAME")]
    pub view_allowed_hosts: Vec<String>,
    /// Live view: the access token every request must carry (?token=, cookie or bearer). Default:
    /// none on loopback; generated at start and printed when --serve binds beyond loopback.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "EDGE_RUNTIME_VIEW_TOKEN",
        hide_env_values = true
    )]
    pub view_token: Option<String>,
}

impl ViewLimitArgs {
    /// The profile's `[live_view]` with these flags applied.
    pub fn apply(&self, profile: &boards::LiveViewSettings) -> boards::LiveViewSettings {
        let mut s = profile.clone();
        let set = |v: Option<usize>, f: &mut usize| {
            if let Some(v) = v {
                *f = v;
            }
        };
        set(self.view_max_connections, &mut s.max_connections);
        set(self.view_max_viewers, &mut s.max_viewers);
        set(self.view_max_header_bytes, &mut s.max_header_bytes);
        set(self.view_max_headers, &mut s.max_headers);
        set(self.view_viewer_queue, &mut s.viewer_queue);
        for (v, f) in [
            (self.view_header_timeout_ms, &mut s.header_timeout_ms),
            (self.view_idle_timeout_ms, &mut s.idle_timeout_ms),
            (self.view_write_timeout_ms, &mut s.write_timeout_ms),
        ] {
            if let Some(v) = v {
                *f = v;
            }
        }
        s.allowed_hosts
            .extend(self.view_allowed_hosts.iter().cloned());
        s
    }
}

/// `edge-runtime bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Seconds of video to run (after the model is loaded).
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// The report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `edge-runtime check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `edge-runtime boards`.
#[derive(Debug, Clone, Args)]
pub struct BoardsArgs {
    /// A built-in name or a .toml file to validate and print; none lists the built-ins.
    pub board: Option<String>,
}

/// A frame rate from the command line: finite, at least 0.01 and at most 10 000 per second
/// (rates become frame intervals, which must be sane durations).
fn positive_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.01..=10_000.0).contains(&v) {
        return Err(format!(
            "`{s}` is not a usable frame rate (between 0.01 and 10000 per second)"
        ));
    }
    Ok(v)
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    match cli.command {
        None => run::run(cli.run),
        Some(Command::Run(args)) => run::run(args),
        Some(Command::Bench(args)) => bench::run(args, &mut stdout),
        Some(Command::Check(args)) => check::run(args, &mut stdout),
        Some(Command::Boards(args)) => boards_cmd::run(args, &mut stdout),
    }
}

/// Every flag has help text, `--json` is a switch and key flags use the shared names.
#[test]
fn the_command_line_follows_the_shared_vocabulary() {
    cli_log::assert_vocabulary(<Cli as clap::CommandFactory>::command());
}
