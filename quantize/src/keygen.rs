//! `quantize keygen`: a new ed25519 signing key pair as PEM (PKCS #8 secret, SPKI public: what
//! openssl writes; `echojepa::bundle` documents the name line before each block). The secret file
//! is written 0600; existing files are never overwritten.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use echojepa::bundle::SecretKey;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Key name (shown when a cart refuses or accepts a bundle): A-Z a-z 0-9 . _ -
    #[arg(long)]
    name: String,
    /// Directory for NAME.secret and NAME.pub (created if missing).
    #[arg(
        long = "out",
        visible_alias = "out-dir",
        value_name = "DIR",
        default_value = "."
    )]
    out_dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, out: &mut impl Write) -> Result<()> {
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let secret = a.out_dir.join(format!("{}.secret", a.name));
    let public = a.out_dir.join(format!("{}.pub", a.name));
    let key = SecretKey::generate(&a.name)?;
    key.write_new(&secret, &public)?;
    let pk = key.public();
    if a.json {
        let v = serde_json::json!({
            "name": pk.name(), "id": pk.id(), "public_key": pk.hex(),
            "secret_file": secret, "public_file": public,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "key `{}` (id {})", pk.name(), pk.id())?;
        writeln!(
            out,
            "  secret: {}  (keep it offline; mode 0600)",
            secret.display()
        )?;
        writeln!(out, "  public: {}  (give this to carts)", public.display())?;
        writeln!(out, "  public key hex: {}", pk.hex())?;
    }
    Ok(())
}
