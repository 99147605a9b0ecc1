//! `edge-runtime`: live ultrasound video to a real-time view label and ejection fraction on a
//! cart computer. One file per subcommand under `cli/`; each has a `run()` that writes to
//! `impl Write` so its output can be tested.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli_log::init(&args.log);
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edge-runtime: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
