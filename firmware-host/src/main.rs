//! `firmware-host`: talk to the cart microcontroller, simulate one, and install model bundles.
//!
//! Each subcommand lives in its own file under `cli/` with a `run()` that writes to any
//! `impl Write`, so its output can be checked in tests. Logs (`RUST_LOG=debug`) go to stderr.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Serial link to the cart microcontroller (MCU): watch it, ping it, ask its status, run a
/// simulated one, and install signed model bundles into the cart's A/B slots.
///
/// The port comes from `--port`, or from the `[serial]` table of a board profile (`--board
/// jetson-orin-nano` or `--board my-cart.toml`). Try it without hardware:
///
///   firmware-host simulate --link /tmp/cart-mcu &
///
///   firmware-host ping --port /tmp/cart-mcu
///
/// Install a bundle made by `quantize` on a cart (verified and checked against the anti-rollback
/// floor before anything is written; `edge-runtime check` runs on the new slot before the switch
/// is committed; the previous bundle stays in the other slot):
///
///   firmware-host flash ./bundle --board jetson-orin-nano
///
///   firmware-host slots recover --board jetson-orin-nano    (at boot, before the runtime)
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    log: cli_log::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode and print every frame on the link (runs the handshake unless --passive).
    Monitor(cli::monitor::Args),
    /// Handshake with the MCU and measure round trips.
    Ping(cli::ping::Args),
    /// Print the MCU's identity and status.
    Status(cli::status::Args),
    /// Run a simulated MCU on a pseudo-terminal, with optional fault injection.
    Simulate(cli::simulate::Args),
    /// Install a signed model bundle into the cart's inactive A/B slot and switch to it.
    #[cfg(feature = "flash")]
    Flash(cli::flash::FlashArgs),
    /// Inspect, repair (at boot) or roll back the cart's A/B model slots.
    #[cfg(feature = "flash")]
    #[command(subcommand)]
    Slots(cli::flash::SlotsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli_log::init(&cli.log);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Monitor(a) => cli::monitor::run(a, &mut out),
        Command::Ping(a) => cli::ping::run(a, &mut out),
        Command::Status(a) => cli::status::run(a, &mut out),
        Command::Simulate(a) => cli::simulate::run(a, &mut out),
        #[cfg(feature = "flash")]
        Command::Flash(a) => cli::flash::flash(a, &mut out),
        #[cfg(feature = "flash")]
        Command::Slots(c) => cli::flash::slots(c, &mut out),
    };
    let _ = out.flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every flag has help text, `--json` is a switch and key flags use the shared names.
#[test]
fn the_command_line_follows_the_shared_vocabulary() {
    cli_log::assert_vocabulary(<Cli as clap::CommandFactory>::command());
}
