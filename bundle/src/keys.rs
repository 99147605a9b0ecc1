//! Signing keys and `manifest.sig`: ed25519 keys in small text files a person can read, copy into
//! a board profile and compare by id, and the strict signature format a bundle carries.
//!
//! Key files (UTF-8; `#` lines are comments; CRLF accepted):
//!
//! ```text
//! echojepa-ed25519-public-key v1
//! name: demo
//! key: <64 lowercase hex digits: the 32-byte ed25519 public key>
//! ```
//!
//! The secret key file has the first line `echojepa-ed25519-secret-key v1` and the 32-byte seed
//! as `key:`. Its name is the public key's name.
//!
//! Keys in standard encodings are read too ([`super::key_formats`]: PEM SPKI and PKCS #8 as
//! openssl writes them, OpenSSH `ssh-ed25519` lines, minisign public keys), and `quantize keygen`
//! writes PEM, with the key's name on a line before the PEM block (where PEM readers such as
//! openssl ignore text): `# echojepa-key-name: NAME`. A key without a name line takes its file's
//! stem (or the OpenSSH comment) as its name; what identifies a key is its id.
//!
//! `manifest.sig` has exactly this form (LF line ends, lowercase hex, nothing else; any other
//! byte sequence is refused):
//!
//! ```text
//! echojepa-ed25519-signature v1
//! key-id: <16 hex digits: the first 8 bytes of sha256(public key)>
//! key: <64 hex digits: the public key that signed>
//! signature: <128 hex digits: ed25519 signature over the exact bytes of manifest.json>
//! ```

use std::fmt;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::BundleError;
use super::key_formats;

const NAME_LINE: &str = "# echojepa-key-name:";

/// The name a key file gives itself on a `# echojepa-key-name:` line.
fn name_line(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(NAME_LINE))
        .map(|n| n.split_whitespace().next().unwrap_or_default().to_string())
}

/// A key name made from a file name (invalid characters become `-`).
fn name_from_origin(origin: &str) -> String {
    let stem = Path::new(origin)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        name = "key".into();
    }
    name
}

/// The name for a key read from `text` (in a standard format) at `origin`.
fn standard_name(text: &str, origin: &str, comment: Option<&str>) -> Result<String, String> {
    if let Some(n) = name_line(text) {
        check_name(&n)?;
        return Ok(n);
    }
    if let Some(c) = comment
        && check_name(c).is_ok()
    {
        return Ok(c.to_string());
    }
    Ok(name_from_origin(origin))
}

const PUBLIC_HEADER: &str = "echojepa-ed25519-public-key v1";
const SECRET_HEADER: &str = "echojepa-ed25519-secret-key v1";
const SIG_HEADER: &str = "echojepa-ed25519-signature v1";

/// A trusted (or signing) public key with a human name.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for PublicKey {
    /// `` `name` (id 0123456789abcdef) ``
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` (id {})", self.name, self.id())
    }
}

/// Short key id: hex of the first 8 bytes of sha256 of the public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let d = Sha256::digest(key.as_bytes());
    hex::encode(&d[..8])
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "key name `{name}` must be 1-64 characters of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

fn parse_hex32(s: &str, what: &str) -> Result<[u8; 32], String> {
    let v = hex::decode(s).map_err(|e| format!("{what} is not hex: {e}"))?;
    v.try_into()
        .map_err(|v: Vec<u8>| format!("{what} has {} bytes, expected 32", v.len()))
}

/// Parses `header` + `name:` + `key:` lines.
fn parse_key_text(text: &str, header: &str) -> Result<(String, [u8; 32]), String> {
    let mut lines = text
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    match lines.next() {
        Some(h) if h == header => {}
        Some(h) if h == PUBLIC_HEADER || h == SECRET_HEADER => {
            return Err(format!("this is a `{h}` file, expected `{header}`"));
        }
        Some(h) => return Err(format!("first line is `{h}`, expected `{header}`")),
        None => return Err("file is empty".into()),
    }
    let (mut name, mut key) = (None, None);
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("line `{line}` is not `field: value`"))?;
        let v = v.trim();
        match k.trim() {
            "name" => name = Some(v.to_string()),
            "key" => key = Some(parse_hex32(v, "key")?),
            other => return Err(format!("unknown field `{other}`")),
        }
    }
    let name = name.ok_or("no `name:` line")?;
    check_name(&name)?;
    Ok((name, key.ok_or("no `key:` line")?))
}

impl PublicKey {
    /// A named public key from its 32 bytes.
    pub fn from_bytes(name: &str, bytes: &[u8; 32]) -> Result<Self, BundleError> {
        let bad = |reason: String| BundleError::BadKey {
            what: format!("public key `{name}`"),
            reason,
        };
        check_name(name).map_err(bad)?;
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|e| bad(format!("not a valid ed25519 point: {e}")))?;
        if key.is_weak() {
            return Err(bad("weak (small-order) key".into()));
        }
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    /// A named public key from 64 hex digits (as written in board profiles).
    pub fn from_hex(name: &str, hex_key: &str) -> Result<Self, BundleError> {
        let bytes = parse_hex32(hex_key.trim(), "key").map_err(|reason| BundleError::BadKey {
            what: format!("public key `{name}`"),
            reason,
        })?;
        Self::from_bytes(name, &bytes)
    }

    /// Parses the text of a public key file in any accepted format (see the module docs);
    /// `origin` names it in errors and, for formats without a name, gives the key its name.
    pub fn parse(text: &str, origin: &str) -> Result<Self, BundleError> {
        let bad = |reason: String| BundleError::BadKey {
            what: origin.to_string(),
            reason,
        };
        if text.contains("-----BEGIN PRIVATE KEY-----")
            || text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        {
            return Err(bad(
                "this is a PEM PRIVATE KEY (a secret-key file), expected a public key".into(),
            ));
        }
        let standard = if let Some(r) = key_formats::spki_public(text) {
            Some(r.and_then(|k| Ok((standard_name(text, origin, None)?, k))))
        } else if let Some(r) = key_formats::openssh_public(text) {
            Some(r.and_then(|(k, c)| Ok((standard_name(text, origin, Some(&c))?, k))))
        } else {
            key_formats::minisign_public(text)
                .map(|r| r.and_then(|(k, _id)| Ok((standard_name(text, origin, None)?, k))))
        };
        if let Some(r) = standard {
            let (name, bytes) = r.map_err(bad)?;
            return Self::from_bytes(&name, &bytes).map_err(|e| match e {
                BundleError::BadKey { reason, .. } => bad(reason),
                e => e,
            });
        }
        let (name, bytes) = parse_key_text(text, PUBLIC_HEADER).map_err(bad)?;
        Self::from_bytes(&name, &bytes).map_err(|e| match e {
            BundleError::BadKey { reason, .. } => BundleError::BadKey {
                what: origin.to_string(),
                reason,
            },
            e => e,
        })
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let text = read_small_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The key as PEM SubjectPublicKeyInfo (what `openssl pkey -pubout` writes), after a name
    /// line that PEM readers ignore.
    pub fn to_pem(&self) -> String {
        format!(
            "{NAME_LINE} {} (id {})\n{}",
            self.name,
            self.id(),
            key_formats::to_spki_pem(self.key.as_bytes())
        )
    }

    /// The key file text (this project's own v1 format).
    pub fn to_file_text(&self) -> String {
        format!(
            "{PUBLIC_HEADER}\n# id {}\nname: {}\nkey: {}\n",
            self.id(),
            self.name,
            self.hex()
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Short key id (first 8 bytes of sha256 of the key, hex).
    pub fn id(&self) -> String {
        key_id(&self.key)
    }

    /// The 32 key bytes as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

/// A named ed25519 signing key. Keep its file secret; [`SecretKey::write_new`] writes it 0600.
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public())
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, BundleError> {
        check_name(name).map_err(|reason| BundleError::BadKey {
            what: "new key".into(),
            reason,
        })?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| BundleError::BadKey {
            what: "new key".into(),
            reason: format!("no operating-system randomness: {e}"),
        })?;
        Ok(Self::from_seed(name, &seed))
    }

    /// A key from its 32-byte seed (deterministic; for tests and demo keys only).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        Self {
            name: name.to_string(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Parses the text of a secret key file (this project's format, or PEM PKCS #8 as `openssl
    /// genpkey -algorithm ed25519` writes it); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, BundleError> {
        let bad = |reason: String| BundleError::BadKey {
            what: origin.to_string(),
            reason,
        };
        if let Some(r) = key_formats::pkcs8_seed(text) {
            let seed = r.map_err(bad)?;
            let name = standard_name(text, origin, None).map_err(bad)?;
            return Ok(Self::from_seed(&name, &seed));
        }
        if key_formats::spki_public(text).is_some() || key_formats::openssh_public(text).is_some() {
            return Err(bad("this is a public key, expected a secret key".into()));
        }
        let (name, seed) =
            parse_key_text(text, SECRET_HEADER).map_err(|reason| BundleError::BadKey {
                what: origin.to_string(),
                reason,
            })?;
        Ok(Self::from_seed(&name, &seed))
    }

    /// Reads a secret key file.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let text = read_small_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The secret key file text.
    pub fn to_file_text(&self) -> String {
        format!(
            "{SECRET_HEADER}\n# keep this file secret; public key id {}\nname: {}\nkey: {}\n",
            self.public().id(),
            self.name,
            hex::encode(self.key.to_bytes())
        )
    }

    /// The key as PEM PKCS #8 (what `openssl genpkey -algorithm ed25519` writes), after a name
    /// line that PEM readers ignore.
    pub fn to_pem(&self) -> String {
        format!(
            "{NAME_LINE} {} (secret; public key id {})\n{}",
            self.name,
            self.public().id(),
            key_formats::to_pkcs8_pem(&self.key.to_bytes())
        )
    }

    /// The raw Ed25519 signature of `bytes` (64 bytes).
    pub fn sign_raw(&self, bytes: &[u8]) -> [u8; 64] {
        self.key.sign(bytes).to_bytes()
    }

    /// Writes `secret_path` (mode 0600) and `public_path` as PEM (PKCS #8 and SPKI, readable by
    /// openssl and other tools), refusing to overwrite either.
    pub fn write_new(&self, secret_path: &Path, public_path: &Path) -> Result<(), BundleError> {
        for p in [secret_path, public_path] {
            if p.exists() {
                return Err(BundleError::OutputExists {
                    path: p.to_path_buf(),
                });
            }
        }
        write_new_file(secret_path, self.to_pem().as_bytes(), true)?;
        write_new_file(public_path, self.public().to_pem().as_bytes(), false)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// `manifest.sig` text for these exact manifest bytes.
    pub fn sign_manifest(&self, manifest_bytes: &[u8]) -> String {
        let sig = self.key.sign(manifest_bytes);
        SignatureFile {
            key: self.key.verifying_key(),
            signature: sig,
        }
        .to_text()
    }
}

fn write_new_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), BundleError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            BundleError::OutputExists {
                path: path.to_path_buf(),
            }
        } else {
            io(e)
        }
    })?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read_small_text(path: &Path) -> Result<String, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > 64 * 1024 {
        return Err(BundleError::BadKey {
            what: path.display().to_string(),
            reason: format!("{} bytes is too large for a key file", meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| BundleError::BadKey {
        what: path.display().to_string(),
        reason: "not UTF-8 text".into(),
    })
}

/// Parsed `manifest.sig`.
pub(crate) struct SignatureFile {
    pub key: VerifyingKey,
    pub signature: Signature,
}

impl SignatureFile {
    pub fn to_text(&self) -> String {
        format!(
            "{SIG_HEADER}\nkey-id: {}\nkey: {}\nsignature: {}\n",
            key_id(&self.key),
            hex::encode(self.key.as_bytes()),
            hex::encode(self.signature.to_bytes())
        )
    }

    /// Strict parse: the bytes must be exactly the canonical form of what they encode.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
        let mut lines = text.split('\n');
        if lines.next() != Some(SIG_HEADER) {
            return Err(format!("first line is not `{SIG_HEADER}`"));
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().unwrap_or_default();
            line.strip_prefix(name)
                .and_then(|r| r.strip_prefix(": "))
                .map(str::to_string)
                .ok_or_else(|| format!("expected a `{name}: …` line, found `{line}`"))
        };
        let _id = field("key-id")?;
        let key = field("key")?;
        let sig = field("signature")?;
        let key_bytes = parse_hex32(&key, "key")?;
        let key = VerifyingKey::from_bytes(&key_bytes)
            .map_err(|e| format!("key is not a valid ed25519 public key: {e}"))?;
        let sig_bytes: [u8; 64] = hex::decode(&sig)
            .map_err(|e| format!("signature is not hex: {e}"))?
            .try_into()
            .map_err(|v: Vec<u8>| format!("signature has {} bytes, expected 64", v.len()))?;
        let parsed = Self {
            key,
            signature: Signature::from_bytes(&sig_bytes),
        };
        if parsed.to_text().as_bytes() != bytes {
            return Err(
                "not in canonical form (wrong key-id, upper-case hex, extra bytes or line ends)"
                    .into(),
            );
        }
        Ok(parsed)
    }
}
