//! `trainer`: what researchers run centrally — conformance against the reference implementation,
//! and (as they land) synthetic datasets, pretraining, probing, evaluation and embeddings.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod check_data;
mod conformance;
// Public datasets into the reference list formats.
mod import;
// Synthetic data and the reference data pipeline.
mod data;
mod synth;

// Pretraining / probing stack (helper "trainer").
mod bench;
mod config;
mod device;
mod dist;
mod embed;
mod finetune;
mod jepa;
mod masks;
mod metrics;
mod optim;
mod phantom_stream;
mod plan;
mod plot;
mod pretrain;
mod pretrain_data;
mod probe;
mod provenance;
mod rng;
mod schedule;

/// EchoJEPA trainer: reference-conformant V-JEPA 2 models for echocardiography in Rust.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    log: cli_log::LogArgs,

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
    /// Fine-tune the encoder end to end with view, EF and LV-cavity heads on streamed phantom clips.
    Finetune(finetune::Args),
    /// Evaluate a trained probe: metrics, predictions CSV, optional robustness to perturbations.
    Evaluate(probe::EvalArgs),
    /// Export per-clip embeddings and a 2-D PCA plot coloured by label.
    Embed(embed::Args),
    /// Measure pretraining throughput (clips/s) of a model on random clips.
    BenchPretrain(bench::Args),
    /// Import a public echo dataset (EchoNet-Dynamic) into reference-format lists.
    Import(import::Args),
    /// Decode every video of dataset lists once; list the failures and a summary by format.
    CheckData(check_data::Args),
    /// Write the sbatch script that runs a config on SLURM (nodes x tasks per node, one per GPU).
    Slurm(dist::slurm::Args),
    /// Check the collective engine of a launched job: exact all-reduce sums and bandwidth.
    #[command(hide = true)]
    CollectiveCheck(dist::check::Args),
}

/// mimalloc instead of the system allocator, told never to hand freed memory back to the OS.
/// A pretraining step allocates and frees tensors of 5-240 MB (activations, attention maps and
/// their gradients) hundreds of times. glibc serves those with mmap/munmap, so the kernel zeroes
/// every page again on each reuse and shoots down TLBs: about a fifth of a CPU step in `perf`.
/// Side by side (`trainer bench-pretrain --model vit_tiny --batch 4`, three alternating runs),
/// mimalloc's default (purge after 1 s) took 21-24 s a step and never purging 18-20 s; glibc
/// took 24-25 s. The cost is that the process keeps its peak memory until it exits.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (`mimalloc.h`); libmimalloc-sys has
/// no constant for it. The test below checks the index against the option's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one allocator option; mimalloc allows it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// The environment, read once here so that library code takes the launcher's variables as a map
/// (variables that are not UTF-8 cannot be launcher variables and are left out).
fn launcher_env() -> dist::EnvMap {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    cli_log::init(&cli.log);
    if let Ok(w) = dist::World::from_env(&launcher_env()) {
        let _ = config::LAUNCHED_RANKS.set(w.size);
    }
    let several_ranks = match &cli.command {
        Command::Evaluate(_) => Some("evaluate"),
        Command::Embed(_) => Some("embed"),
        _ => None,
    }
    .map(|name| dist::one_rank_only(&launcher_env(), name));
    if let Some(Err(err)) = several_ranks {
        eprintln!("error: {err:#}");
        return std::process::ExitCode::FAILURE;
    }
    let result: Result<std::process::ExitCode> =
        match cli.command {
            Command::Conformance(args) => conformance::run(args, &mut std::io::stdout()),
            Command::Synth(args) => {
                synth::run(args, &mut std::io::stdout()).map(|()| std::process::ExitCode::SUCCESS)
            }
            Command::Pretrain(args) => pretrain::run(args, &launcher_env(), &mut std::io::stdout())
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Probe(args) => probe::run(args, &launcher_env(), &mut std::io::stdout())
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Evaluate(args) => probe::evaluate(args, &mut std::io::stdout())
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Embed(args) => {
                embed::run(args, &mut std::io::stdout()).map(|()| std::process::ExitCode::SUCCESS)
            }
            Command::BenchPretrain(args) => {
                bench::run(args, &mut std::io::stdout()).map(|()| std::process::ExitCode::SUCCESS)
            }
            Command::Import(args) => {
                import::run(args, &mut std::io::stdout()).map(|()| std::process::ExitCode::SUCCESS)
            }
            Command::CheckData(args) => check_data::run(args, &mut std::io::stdout()),
            Command::Finetune(args) => finetune::run(args, &launcher_env(), &mut std::io::stdout())
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Slurm(args) => dist::slurm::run(args, &mut std::io::stdout())
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::CollectiveCheck(args) => {
                dist::check::run(args, &launcher_env(), &mut std::io::stdout())
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

#[cfg(test)]
mod allocator_tests {
    /// Guards the hand-written option index across mimalloc upgrades: option 15 must be the
    /// purge delay, whose v3 default (1000 ms) no other option shares.
    #[test]
    fn option_15_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one allocator option.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(v, 1000);
    }
}

/// Every flag has help text, `--json` is a switch and key flags use the shared names.
#[test]
fn the_command_line_follows_the_shared_vocabulary() {
    cli_log::assert_vocabulary(<Cli as clap::CommandFactory>::command());
}
