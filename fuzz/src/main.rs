//! `echojepa-fuzz`: runs the fuzz targets of this crate (docs/FUZZING.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use echojepa_fuzz::runner::{self, RunOptions};
use echojepa_fuzz::{TARGETS, Target, find};

#[global_allocator]
static ALLOC: echojepa_fuzz::alloc::CappedAlloc = echojepa_fuzz::alloc::CappedAlloc;

#[derive(Parser)]
#[command(about = "Deterministic mutational fuzzing of the project's parsers (docs/FUZZING.md)")]
struct Cli {
    /// The fuzz directory with corpus/TARGET and crashes/TARGET.
    #[arg(long, global = true, default_value = env!("CARGO_MANIFEST_DIR"))]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lists the targets.
    List,
    /// Replays the corpus and kept crashes of each target, then mutates for --seconds. Exits
    /// non-zero at the first panic, hang (exit 70) or over-cap allocation (abort), with the input
    /// saved under crashes/TARGET/.
    Run {
        /// Target names, or `all`.
        #[arg(required = true)]
        targets: Vec<String>,
        /// Mutation time per target.
        #[arg(long, default_value_t = 15.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// An input running longer than this is a hang.
        #[arg(long, default_value_t = 20_000)]
        timeout_ms: u64,
        /// Save inputs with a new outcome into corpus/TARGET/ (to grow the committed corpus).
        #[arg(long)]
        save_new: bool,
    },
    /// (Re)writes the generated seeds of the bundle target (corpus/bundle/gen-*): the fixture
    /// manifest signed with the harness key, its signature file, and the key files.
    BundleSeeds,
    /// Runs files through a target once each and prints the outcome (to reproduce a crash).
    Replay {
        target: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn target(name: &str) -> anyhow::Result<&'static Target> {
    find(name).with_context(|| {
        let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
        format!("no target `{name}` (targets: {})", names.join(", "))
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::List => {
            for t in TARGETS {
                println!("{:8} {}", t.name, t.about);
            }
            Ok(())
        }
        Cmd::Run {
            targets,
            seconds,
            seed,
            timeout_ms,
            save_new,
        } => {
            if !(seconds.is_finite() && seconds >= 0.0) {
                bail!("--seconds {seconds}: expected a number >= 0");
            }
            let chosen: Vec<&'static Target> = if targets.iter().any(|t| t == "all") {
                TARGETS.iter().collect()
            } else {
                targets
                    .iter()
                    .map(|t| target(t))
                    .collect::<anyhow::Result<_>>()?
            };
            let opts = RunOptions {
                duration: Duration::from_secs_f64(seconds),
                seed,
                timeout: Duration::from_millis(timeout_ms),
                dir: cli.dir.clone(),
                save_new,
            };
            run(&chosen, &opts)
        }
        Cmd::BundleSeeds => bundle_seeds(&cli.dir),
        Cmd::Replay {
            target: name,
            files,
        } => {
            let t = target(&name)?;
            let _watchdog = runner::Watchdog::start(Duration::from_secs(20))?;
            let mut failed = 0;
            for f in &files {
                let data = std::fs::read(f).with_context(|| format!("{}", f.display()))?;
                match runner::execute_tracked(t, &data, None) {
                    Ok(outcome) => println!("{}: {outcome}", f.display()),
                    Err(msg) => {
                        failed += 1;
                        println!("{}: PANIC: {msg}", f.display());
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} inputs panicked", files.len());
            }
            Ok(())
        }
    };
    echojepa_fuzz::targets::remove_scratch();
    result
}

fn run(targets: &[&'static Target], opts: &RunOptions) -> anyhow::Result<()> {
    for t in targets {
        let start = std::time::Instant::now();
        let report = runner::run(t, opts)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:8} {:7} execs in {secs:5.1} s ({:6.0}/s), {} seeds, {} distinct outcomes",
            t.name,
            report.execs,
            report.execs as f64 / secs.max(1e-9),
            report.seeds,
            report.outcomes
        );
        if let Some(c) = report.crash {
            bail!(
                "target `{}` panicked: {}\n  input saved as {}\n  reproduce: cargo run -p echojepa-fuzz -- replay {} {}",
                t.name,
                c.message,
                c.file.display(),
                t.name,
                c.file.display()
            );
        }
    }
    Ok(())
}

fn bundle_seeds(dir: &std::path::Path) -> anyhow::Result<()> {
    use echojepa_fuzz::targets::bundle;
    let key = bundle::key();
    let out = dir.join("corpus").join("bundle");
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let seeds: [(&str, u8, Vec<u8>); 4] = [
        ("gen-manifest", 0, bundle::MANIFEST.to_vec()),
        (
            "gen-signature",
            1,
            key.sign_manifest(bundle::MANIFEST).into_bytes(),
        ),
        (
            "gen-public-key",
            2,
            key.public().to_file_text().into_bytes(),
        ),
        ("gen-secret-key", 3, key.to_file_text().into_bytes()),
    ];
    for (name, mode, bytes) in seeds {
        let path = out.join(name);
        let mut data = vec![mode];
        data.extend_from_slice(&bytes);
        std::fs::write(&path, data).with_context(|| path.display().to_string())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
