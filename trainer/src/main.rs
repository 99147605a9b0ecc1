//! `trainer`: what researchers run centrally — conformance against the reference implementation,
//! and (as they land) synthetic datasets, pretraining, probing, evaluation and embeddings.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod conformance;
// Synthetic data and the reference data pipeline (issue 3).
mod data;
mod synth;

// Pretraining / probing stack (helper "trainer").
mod bench;
mod config;
mod device;
mod embed;
mod jepa;
mod masks;
mod metrics;
mod optim;
mod plan;
mod plot;
mod pretrain;
mod pretrain_data;
mod probe;
mod rng;
mod schedule;

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
    /// Write a synthetic echo dataset (phantom videos as H.264 MP4 + reference-format lists).
    Synth(synth::Args),
    /// V-JEPA pretraining or cooldown from a reference pretraining config (`--dry-run` prints the plan).
    Pretrain(pretrain::Args),
    /// Train attentive probes on a frozen encoder from a reference frozen-evaluation config.
    Probe(probe::Args),
    /// Evaluate a trained probe: metrics, predictions CSV, optional robustness to perturbations.
    Evaluate(probe::EvalArgs),
    /// Export per-clip embeddings and a 2-D PCA plot coloured by label.
    Embed(embed::Args),
    /// Measure pretraining throughput (clips/s) of a model on random clips.
    BenchPretrain(bench::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let result: Result<std::process::ExitCode> =
        match cli.command {
            Command::Conformance(args) => conformance::run(args, &mut std::io::stdout()),
            Command::Synth(args) => {
                synth::run(args, &mut std::io::stdout()).map(|()| std::process::ExitCode::SUCCESS)
            }
            Command::Pretrain(args) => pretrain::run(args, &mut std::io::stdout())
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Probe(args) => {
                probe::run(args, &mut std::io::stdout()).map(|()| std::process::ExitCode::SUCCESS)
            }
            Command::Evaluate(args) => probe::evaluate(args, &mut std::io::stdout())
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Embed(args) => {
                embed::run(args, &mut std::io::stdout()).map(|()| std::process::ExitCode::SUCCESS)
            }
            Command::BenchPretrain(args) => {
                bench::run(args, &mut std::io::stdout()).map(|()| std::process::ExitCode::SUCCESS)
            }
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
