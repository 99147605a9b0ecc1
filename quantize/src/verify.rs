//! `quantize verify`: the same check a cart makes before it loads a bundle (signature by a
//! trusted key first, then every file's size and sha256), with the exact reason on failure.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use echojepa::bundle::rollback::{self, SecurityFloor};
use echojepa::bundle::{PublicKey, verify_bundle};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bundle directory.
    bundle: PathBuf,
    /// Trusted public key file(s): PEM, OpenSSH, minisign or `quantize keygen`'s NAME.pub;
    /// repeat for several.
    #[arg(long = "trusted-key", visible_alias = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Print the result as JSON (also on failure: {"ok": false, "error": ...}).
    #[arg(long)]
    json: bool,
    /// A cart's slots directory: also report how the bundle's security version relates to the
    /// anti-rollback floor recorded there (old bundles still verify, for audits; a cart refuses
    /// to install or run one below its floor).
    #[arg(long)]
    slots_dir: Option<PathBuf>,
}

pub fn run(a: Args, out: &mut impl Write) -> Result<()> {
    let keys = a
        .keys
        .iter()
        .map(|p| PublicKey::load(p).with_context(|| format!("trusted key {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let floor = match &a.slots_dir {
        Some(d) => Some(
            SecurityFloor::load(d)
                .with_context(|| format!("the anti-rollback floor in {}", d.display()))?,
        ),
        None => None,
    };
    match verify_bundle(&a.bundle, &keys) {
        Ok(b) => {
            let m = b.manifest();
            let now = rollback::now_unix();
            let expired = m.not_after_unix.is_some_and(|t| now > t);
            let relation = floor
                .as_ref()
                .map(|f| rollback::relation(m.security_version, f.as_ref()));
            if a.json {
                let v = serde_json::json!({
                    "ok": true, "bundle": a.bundle, "model_id": m.model_id,
                    "model_version": m.model_version, "signer": b.signer().name(),
                    "signer_id": b.signer().id(), "manifest_sha256": b.manifest_sha256(),
                    "security_version": m.security_version,
                    "not_after_unix": m.not_after_unix, "expired": expired,
                    "security_floor": floor.as_ref().map(|f| f.as_ref().map(|f| f.security_version)),
                    "floor_relation": relation,
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
                writeln!(
                    out,
                    "security version {}{}",
                    m.security_version,
                    match m.not_after_unix {
                        Some(t) => format!(
                            ", valid until {}{}",
                            rollback::format_utc(t),
                            if expired {
                                " (EXPIRED: carts refuse it)"
                            } else {
                                ""
                            }
                        ),
                        None => ", no expiry".into(),
                    }
                )?;
                if let (Some(f), Some(r)) = (&floor, relation) {
                    match f {
                        Some(f) => writeln!(
                            out,
                            "floor in {}: {} (set by {}): {r}",
                            a.slots_dir
                                .as_deref()
                                .unwrap_or(std::path::Path::new("?"))
                                .display(),
                            f.security_version,
                            f.bundle
                        )?,
                        None => writeln!(out, "{r}")?,
                    }
                }
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
