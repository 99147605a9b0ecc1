//! `edge-runtime boards`: list the built-in board profiles, or validate and print one.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use boards::{BUILTIN_NAMES, BoardProfile};

use super::BoardsArgs;

pub fn run(args: BoardsArgs, out: &mut impl Write) -> Result<ExitCode> {
    match args.board {
        None => {
            for name in BUILTIN_NAMES {
                let p = BoardProfile::builtin(name)?;
                writeln!(out, "{:<22} {}", p.name, p.description)?;
            }
        }
        Some(name) => {
            let p = BoardProfile::resolve(&name)?;
            writeln!(out, "# {} (valid)", p.origin)?;
            write!(out, "{}", toml::to_string_pretty(&p)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
