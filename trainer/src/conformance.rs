//! `trainer conformance`: recomputes every case of a conformance fixture from its checkpoint
//! files and inputs, writes the outputs, and compares them with the reference outputs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fixture directory (meta.json, inputs.safetensors, checkpoints, optional reference.safetensors).
    #[arg(long)]
    pub fixture: PathBuf,
    /// Where to write the computed outputs (safetensors, one tensor per case `output`).
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(_args: Args, _out: &mut impl Write) -> Result<std::process::ExitCode> {
    anyhow::bail!("conformance runner is being written")
}
