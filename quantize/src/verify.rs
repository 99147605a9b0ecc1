//! `quantize verify`: the same check a cart makes before it loads a bundle (signature by a
//! trusted key first, then every file's size and sha256), with the exact reason on failure.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use echojepa::bundle::{PublicKey, verify_bundle};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bundle directory.
    bundle: PathBuf,
    /// Trusted public key file(s) (`quantize keygen` writes NAME.pub); repeat for several.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Print the result as JSON (also on failure: {"ok": false, "error": ...}).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, out: &mut impl Write) -> Result<()> {
    let keys = a
        .keys
        .iter()
        .map(|p| PublicKey::load(p).with_context(|| format!("trusted key {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    match verify_bundle(&a.bundle, &keys) {
        Ok(b) => {
            let m = b.manifest();
            if a.json {
                let v = serde_json::json!({
                    "ok": true, "bundle": a.bundle, "model_id": m.model_id,
                    "model_version": m.model_version, "signer": b.signer().name(),
                    "signer_id": b.signer().id(), "manifest_sha256": b.manifest_sha256(),
                    "files": m.files,
                });
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "OK: {} {} signed by {}; {} file(s) match manifest.json (manifest sha256 {})",
                    m.model_id,
                    m.model_version,
                    b.signer(),
                    m.files.len(),
                    b.manifest_sha256()
                )?;
            }
            Ok(())
        }
        Err(e) => {
            if a.json {
                let v =
                    serde_json::json!({"ok": false, "bundle": a.bundle, "error": e.to_string()});
                writeln!(out, "{v}")?;
            }
            bail!("bundle refused: {e}")
        }
    }
}
