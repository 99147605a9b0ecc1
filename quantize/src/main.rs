//! `quantize`: turns an EchoJEPA checkpoint and its probes into a signed int8 edge bundle,
//! verifies bundles, and reports what int8 costs against full precision.
//!
//! Typical use by a device maker:
//!
//! ```text
//! quantize keygen --name acme-release --out-dir keys/
//! quantize build --checkpoint runs/phantom-tiny --key keys/acme-release.secret \
//!     --model-id echojepa-phantom-tiny --model-version 1 --out bundles/phantom-tiny
//! quantize verify bundles/phantom-tiny --key keys/acme-release.pub
//! quantize report bundles/phantom-tiny --key keys/acme-release.pub \
//!     --checkpoint runs/phantom-tiny --phantom 60 --markdown report.md --json report.json
//! ```

mod bench;
mod build;
mod calibrate;
mod data;
mod keygen;
mod report;
mod sign;
mod source;
mod verify;

use std::io::Write;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Signed int8 bundles for EchoJEPA on ultrasound carts.
///
/// A bundle is a directory with GGUF weights (int8 Q8_0 where measurement says int8 is faster
/// and accurate enough), manifest.json (architecture, input spec, classes, targets, per-layer
/// precision, sha256 of every file) and manifest.sig (ed25519). Carts refuse bundles that are
/// unsigned, tampered with, or signed by a key they do not trust.
#[derive(Debug, Parser)]
#[command(
    name = "quantize",
    version,
    about,
    long_about,
    after_long_help = echojepa_kernels::settings::env_help()
)]
struct Cli {
    #[command(flatten)]
    log: cli_log::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a signing key pair (NAME.secret, mode 0600, and NAME.pub); never overwrites.
    Keygen(keygen::Args),
    /// Quantize a checkpoint (+ probes) into a signed bundle.
    Build(build::Args),
    /// Sign a bundle (made with `build --unsigned`, or re-sign one): with a secret key, or by
    /// attaching an Ed25519 signature made by any standard signer (openssl, an HSM, minisign).
    Sign(sign::Args),
    /// Check a bundle's signature and file hashes against trusted public keys.
    Verify(verify::Args),
    /// Compare a bundle's int8 model with the full-precision checkpoint on phantom clips.
    Report(report::Args),
    /// Time int8 vs f32 linear layers at the ViT widths (per layer shape).
    Bench(bench::Args),
}

fn main() {
    let cli = Cli::parse();
    cli_log::init(&cli.log);
    if let Err(e) = echojepa_kernels::settings::configure_from_env(None, 0) {
        eprintln!("error: kernel settings in the environment: {e}");
        std::process::exit(2);
    }
    let mut out = std::io::stdout().lock();
    let result: Result<()> = match cli.command {
        Command::Keygen(a) => keygen::run(a, &mut out),
        Command::Build(a) => build::run(a, &mut out),
        Command::Sign(a) => sign::run(a, &mut out),
        Command::Verify(a) => verify::run(a, &mut out),
        Command::Report(a) => report::run(a, &mut out),
        Command::Bench(a) => bench::run(a, &mut out),
    };
    let _ = out.flush();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Every flag has help text, `--json` is a switch and key flags use the shared names.
#[test]
fn the_command_line_follows_the_shared_vocabulary() {
    cli_log::assert_vocabulary(<Cli as clap::CommandFactory>::command());
}
