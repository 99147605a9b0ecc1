//! `quantize sign`: completes a bundle with a signature. Either with a secret key file (ours or
//! an Ed25519 PEM private key), or with a signature made elsewhere — an HSM, `openssl pkeyutl
//! -sign -rawin`, `minisign -S -l` — over the exact bytes of the bundle's `manifest.json`, checked
//! against the signer's public key before anything is written.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use echojepa::bundle::key_formats::parse_signature;
use echojepa::bundle::{MANIFEST_FILE, PublicKey, SecretKey, attach_signature};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bundle directory (from `quantize build --unsigned`, or one to re-sign).
    bundle: PathBuf,
    /// Sign here with this secret key (`quantize keygen`'s NAME.secret or an Ed25519 PEM private
    /// key).
    #[arg(long, conflicts_with_all = ["signature", "public_key"])]
    secret_key: Option<PathBuf>,
    /// A signature made elsewhere over the exact bytes of BUNDLE/manifest.json: 64 raw bytes
    /// (openssl pkeyutl -sign -rawin), 128 hex digits, base64, or a legacy-mode minisign
    /// signature file (minisign -S -l).
    #[arg(long, requires = "public_key")]
    signature: Option<PathBuf>,
    /// The signer's public key: PEM (openssl pkey -pubout), OpenSSH ssh-ed25519, minisign, or
    /// `quantize keygen`'s NAME.pub.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, out: &mut impl Write) -> Result<()> {
    let manifest = a.bundle.join(MANIFEST_FILE);
    if !manifest.is_file() {
        bail!(
            "{}: no {MANIFEST_FILE}, so this is not a bundle",
            a.bundle.display()
        );
    }
    let (signature, signer) = match (&a.secret_key, &a.signature, &a.public_key) {
        (Some(k), None, None) => {
            let key = SecretKey::load(k).with_context(|| format!("secret key {}", k.display()))?;
            let bytes = std::fs::read(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            (key.sign_raw(&bytes), key.public())
        }
        (None, Some(sig), Some(pk)) => {
            let signer =
                PublicKey::load(pk).with_context(|| format!("public key {}", pk.display()))?;
            let meta = std::fs::metadata(sig).with_context(|| format!("{}", sig.display()))?;
            if meta.len() > 64 * 1024 {
                bail!(
                    "{}: {} bytes is too large for a signature",
                    sig.display(),
                    meta.len()
                );
            }
            let raw = std::fs::read(sig).with_context(|| format!("{}", sig.display()))?;
            let signature =
                parse_signature(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", sig.display()))?;
            (signature, signer)
        }
        _ => bail!("give --secret-key FILE, or --signature FILE with --public-key FILE"),
    };
    let bundle = attach_signature(&a.bundle, &signature, &signer)
        .with_context(|| format!("signing {}", a.bundle.display()))?;
    let m = bundle.manifest();
    if a.json {
        let v = serde_json::json!({
            "ok": true, "bundle": a.bundle, "model_id": m.model_id,
            "model_version": m.model_version, "signer": signer.name(), "signer_id": signer.id(),
            "manifest_sha256": bundle.manifest_sha256(),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "signed {} ({} {}) by {}; the bundle verifies (manifest sha256 {})",
            a.bundle.display(),
            m.model_id,
            m.model_version,
            signer,
            bundle.manifest_sha256()
        )?;
    }
    Ok(())
}
