//! `trainer`: what researchers run centrally — conformance against the reference implementation,
//! and (as they land) synthetic datasets, pretraining, probing, evaluation and embeddings.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod conformance;

/// EchoJEPA trainer: reference-conformant V-JEPA 2 models for echocardiography in Rust.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, long_about = None)]
struct Cli {
    /// Log filter (e.g. `info`, `debug`, `trainer=debug`); also read from RUST_LOG.
    #[arg(long, global = true, default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the Rust model against reference PyTorch outputs (a conformance fixture directory).
    Conformance(conformance::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let result: Result<std::process::ExitCode> = match cli.command {
        Command::Conformance(args) => conformance::run(args, &mut std::io::stdout()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
