//! Signed edge bundles: the unit a device maker ships to a cart. A bundle is a directory with a
//! GGUF weights file, `manifest.json` (architecture, input spec, heads, per-layer precision and
//! the sha256 of every other file) and `manifest.sig` (ed25519 over the exact manifest bytes).
//!
//! [`verify_bundle`] checks, in this order, and stops at the first problem with an error that
//! names the file or the key:
//!
//! 1. `manifest.sig` exists and is well formed;
//! 2. the key that signed is one of the trusted keys, and the signature matches the exact bytes
//!    of `manifest.json` (nothing in the manifest is parsed before this);
//! 3. the manifest parses and has a known format version;
//! 4. the directory holds exactly the files the manifest lists (no missing, extra, linked or
//!    nested entries) and each has the listed size and sha256.
//!
//! Runtimes then read weights through [`VerifiedBundle::read_file`], which hashes the bytes it
//! returns again, so a file swapped after verification is still refused.
//!
//! [`BundleBuilder`] writes bundles (the `quantize` tool uses it): create the directory, write the
//! weights into it, then [`BundleBuilder::finish`] hashes, writes and signs the manifest and
//! verifies the result.

pub mod config;
pub mod key_formats;
mod keys;
mod manifest;
pub mod provenance;
pub mod rollback;
pub mod task;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use keys::{PublicKey, SecretKey, key_id};
pub use manifest::{
    CalibrationSummary, FORMAT, FORMAT_VERSION, FileEntry, HeadSpec, IMAGENET_MEAN, IMAGENET_STD,
    InputSpec, LayerPrecision, LvHeadSpec, Manifest, Precision, QuantizationInfo, Scaler,
    SectorHandling, SourceFile, SourceInfo, TailSearch, TargetSpec, ToolInfo,
};

pub use provenance::Provenance;
pub use task::{HeadTask, LVEF, Measure, PERCENT, TaskKind};

use keys::SignatureFile;

/// File name of the manifest inside a bundle.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the signature inside a bundle.
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// Largest manifest accepted (bytes).
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// Why a bundle (or a key) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// I/O on a bundle or key file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bundle path is not a directory.
    #[error("{path}: not a bundle directory")]
    NotADirectory { path: PathBuf },

    /// There is no manifest.json.
    #[error("{dir}: no manifest.json, so this is not a bundle")]
    MissingManifest { dir: PathBuf },

    /// The manifest is larger than [`MAX_MANIFEST_BYTES`].
    #[error("{dir}: manifest.json is {bytes} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    ManifestTooLarge { dir: PathBuf, bytes: u64 },

    /// There is no manifest.sig.
    #[error("{dir}: manifest.sig is missing; unsigned bundles are refused")]
    Unsigned { dir: PathBuf },

    /// manifest.sig could not be parsed.
    #[error("{dir}: manifest.sig is malformed: {reason}")]
    MalformedSignature { dir: PathBuf, reason: String },

    /// No trusted keys were given.
    #[error("{dir}: no trusted keys configured, so no bundle can be accepted")]
    NoTrustedKeys { dir: PathBuf },

    /// The key that signed is not trusted.
    #[error(
        "{dir}: manifest.sig is signed by key id {key_id} ({key_hex}), which is not trusted (trusted: {trusted})"
    )]
    UntrustedKey {
        dir: PathBuf,
        key_id: String,
        key_hex: String,
        trusted: String,
    },

    /// The signature does not match the manifest bytes.
    #[error(
        "{dir}: manifest.json does not match the signature in manifest.sig by trusted key {key}: the manifest was changed after signing or the signature was damaged"
    )]
    BadSignature { dir: PathBuf, key: String },

    /// The signed manifest is not valid JSON for this schema.
    #[error("{dir}: manifest.json (signed by {key}) is not a valid manifest: {source}")]
    BadManifest {
        dir: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },

    /// The manifest has an unknown format or version.
    #[error(
        "{dir}: manifest.json has format `{format}` version {version}; this build reads `{FORMAT}` version {FORMAT_VERSION}"
    )]
    UnsupportedFormat {
        dir: PathBuf,
        format: String,
        version: u32,
    },

    /// The manifest content is inconsistent.
    #[error("{dir}: manifest.json: {reason}")]
    InvalidManifest { dir: PathBuf, reason: String },

    /// A file the manifest lists is absent.
    #[error("{dir}: bundle file `{file}` is listed in manifest.json but missing")]
    MissingFile { dir: PathBuf, file: String },

    /// A file is present that the manifest does not list.
    #[error(
        "{dir}: `{file}` is in the bundle directory but not in the signed manifest; extra files are refused"
    )]
    ExtraFile { dir: PathBuf, file: String },

    /// A directory entry is not a regular file (symlink, directory, device).
    #[error("{dir}: `{file}` is not a regular file (links and subdirectories are refused)")]
    NotAFile { dir: PathBuf, file: String },

    /// A file has a different size than the manifest says.
    #[error("{dir}: bundle file `{file}` has {found} bytes, manifest.json says {expected}")]
    SizeMismatch {
        dir: PathBuf,
        file: String,
        expected: u64,
        found: u64,
    },

    /// A file's sha256 differs from the manifest.
    #[error(
        "{dir}: bundle file `{file}` is corrupt or tampered: sha256 {found}, manifest.json says {expected}"
    )]
    HashMismatch {
        dir: PathBuf,
        file: String,
        expected: String,
        found: String,
    },

    /// A file name in the manifest is not allowed.
    #[error("bundle file name `{name}` is not allowed: {reason}")]
    BadFileName { name: String, reason: String },

    /// A key file or key value is invalid.
    #[error("{what}: {reason}")]
    BadKey { what: String, reason: String },

    /// The output path already exists and will not be overwritten.
    #[error("{path}: already exists; refusing to overwrite")]
    OutputExists { path: PathBuf },

    /// Writing the manifest failed.
    #[error("cannot serialise manifest.json: {0}")]
    Serialise(#[source] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a bundle file name: plain ASCII name, no path separators, not hidden, not reserved.
pub fn check_file_name(name: &str) -> Result<(), BundleError> {
    let bad = |reason: &str| {
        Err(BundleError::BadFileName {
            name: name.to_string(),
            reason: reason.into(),
        })
    };
    if name.is_empty() || name.len() > 128 {
        return bad("must be 1-128 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("only A-Z a-z 0-9 . _ - are allowed");
    }
    if name.starts_with('.') {
        return bad("must not start with `.`");
    }
    if name == MANIFEST_FILE || name == SIGNATURE_FILE {
        return bad("reserved for the manifest and its signature");
    }
    Ok(())
}

/// sha256 (lowercase hex) and size of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), BundleError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    hash_reader(&mut f, path)
}

fn hash_reader(r: &mut impl Read, path: &Path) -> Result<(String, u64), BundleError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).map_err(io_err(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// sha256 (lowercase hex) of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// A bundle whose signature and file hashes have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    dir: PathBuf,
    manifest: Manifest,
    manifest_sha256: String,
    signer: PublicKey,
}

impl VerifiedBundle {
    /// The bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// sha256 of the exact manifest bytes: the bundle's identity (covers every file).
    pub fn manifest_sha256(&self) -> &str {
        &self.manifest_sha256
    }

    /// The trusted key that signed the bundle.
    pub fn signer(&self) -> &PublicKey {
        &self.signer
    }

    /// Reads a bundle file into memory and checks its sha256 against the manifest again, so the
    /// bytes returned are the signed bytes even if the file changed after [`verify_bundle`].
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>, BundleError> {
        let entry = self
            .manifest
            .files
            .get(name)
            .ok_or_else(|| BundleError::MissingFile {
                dir: self.dir.clone(),
                file: name.to_string(),
            })?;
        let path = self.dir.join(name);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        check_entry(
            &self.dir,
            name,
            entry,
            bytes.len() as u64,
            &sha256_hex(&bytes),
        )?;
        Ok(bytes)
    }

    /// The verified bytes of the GGUF weights file.
    pub fn read_weights(&self) -> Result<Vec<u8>, BundleError> {
        self.read_file(&self.manifest.weights)
    }
}

fn check_entry(
    dir: &Path,
    name: &str,
    entry: &FileEntry,
    bytes: u64,
    sha: &str,
) -> Result<(), BundleError> {
    if bytes != entry.bytes {
        return Err(BundleError::SizeMismatch {
            dir: dir.to_path_buf(),
            file: name.to_string(),
            expected: entry.bytes,
            found: bytes,
        });
    }
    if sha != entry.sha256 {
        return Err(BundleError::HashMismatch {
            dir: dir.to_path_buf(),
            file: name.to_string(),
            expected: entry.sha256.clone(),
            found: sha.to_string(),
        });
    }
    Ok(())
}

/// Reads a file that must be a regular file no larger than `max`; `None` when absent.
fn read_capped(path: &Path, max: u64) -> Result<Option<(Vec<u8>, u64)>, BundleError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    if !meta.file_type().is_file() {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(BundleError::NotAFile { dir, file });
    }
    if meta.len() > max {
        return Ok(Some((Vec::new(), meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let n = bytes.len() as u64;
    Ok(Some((bytes, n)))
}

/// Verifies a bundle directory against the trusted keys; see the module docs for the order of
/// checks. Nothing of the manifest is interpreted before its signature is checked.
pub fn verify_bundle(
    dir: impl AsRef<Path>,
    trusted_keys: &[PublicKey],
) -> Result<VerifiedBundle, BundleError> {
    let dir = dir.as_ref().to_path_buf();
    let meta = std::fs::metadata(&dir).map_err(io_err(&dir))?;
    if !meta.is_dir() {
        return Err(BundleError::NotADirectory { path: dir });
    }
    let (manifest_bytes, n) = read_capped(&dir.join(MANIFEST_FILE), MAX_MANIFEST_BYTES)?
        .ok_or_else(|| BundleError::MissingManifest { dir: dir.clone() })?;
    if n > MAX_MANIFEST_BYTES {
        return Err(BundleError::ManifestTooLarge { dir, bytes: n });
    }
    let (sig_bytes, _) = read_capped(&dir.join(SIGNATURE_FILE), 4096)?
        .ok_or_else(|| BundleError::Unsigned { dir: dir.clone() })?;

    // 1-2: signature by a trusted key over the exact manifest bytes.
    let sig =
        SignatureFile::parse(&sig_bytes).map_err(|reason| BundleError::MalformedSignature {
            dir: dir.clone(),
            reason,
        })?;
    if trusted_keys.is_empty() {
        return Err(BundleError::NoTrustedKeys { dir });
    }
    let signer = trusted_keys
        .iter()
        .find(|k| k.verifying_key() == &sig.key)
        .ok_or_else(|| BundleError::UntrustedKey {
            dir: dir.clone(),
            key_id: key_id(&sig.key),
            key_hex: hex::encode(sig.key.as_bytes()),
            trusted: trusted_keys
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?
        .clone();
    signer
        .verifying_key()
        .verify_strict(&manifest_bytes, &sig.signature)
        .map_err(|_| BundleError::BadSignature {
            dir: dir.clone(),
            key: signer.to_string(),
        })?;

    // 3: the (now authenticated) manifest.
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|source| BundleError::BadManifest {
            dir: dir.clone(),
            key: signer.to_string(),
            source,
        })?;
    if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
        return Err(BundleError::UnsupportedFormat {
            dir,
            format: manifest.format,
            version: manifest.format_version,
        });
    }
    check_manifest(&dir, &manifest)?;

    // 4: exactly the listed files, each with its size and hash.
    let mut present = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST_FILE || name == SIGNATURE_FILE {
            continue;
        }
        let ft = entry.file_type().map_err(io_err(&entry.path()))?;
        if !manifest.files.contains_key(&name) {
            return Err(BundleError::ExtraFile { dir, file: name });
        }
        if !ft.is_file() {
            return Err(BundleError::NotAFile { dir, file: name });
        }
        present.insert(name, entry.path());
    }
    for (name, entry) in &manifest.files {
        let path = present.get(name).ok_or_else(|| BundleError::MissingFile {
            dir: dir.clone(),
            file: name.clone(),
        })?;
        let (sha, bytes) = sha256_file(path)?;
        check_entry(&dir, name, entry, bytes, &sha)?;
    }
    tracing::debug!(bundle = %dir.display(), signer = %signer, "bundle verified");
    Ok(VerifiedBundle {
        manifest_sha256: sha256_hex(&manifest_bytes),
        dir,
        manifest,
        signer,
    })
}

fn check_manifest(dir: &Path, m: &Manifest) -> Result<(), BundleError> {
    let invalid = |reason: String| BundleError::InvalidManifest {
        dir: dir.to_path_buf(),
        reason,
    };
    for name in m.files.keys() {
        check_file_name(name).map_err(|e| invalid(e.to_string()))?;
    }
    if !m.files.contains_key(&m.weights) {
        return Err(invalid(format!(
            "weights file `{}` is not among the listed files",
            m.weights
        )));
    }
    m.input.check().map_err(invalid)?;
    m.check_provenance().map_err(invalid)?;
    for h in &m.heads {
        h.check().map_err(invalid)?;
    }
    if let Some(lv) = &m.lv_segmentation {
        lv.check().map_err(invalid)?;
    }
    m.encoder
        .validate()
        .map_err(|e| invalid(format!("encoder: {e}")))?;
    Ok(())
}

/// Writes a new bundle directory. Created first, so a bad output path fails before any work.
#[derive(Debug)]
pub struct BundleBuilder {
    dir: PathBuf,
}

impl BundleBuilder {
    /// Creates `dir` (its parent must exist). Refuses a path that exists, unless it is an empty
    /// directory.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let empty = std::fs::read_dir(&dir)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if !empty {
                    return Err(BundleError::OutputExists { path: dir });
                }
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
        Ok(Self { dir })
    }

    /// The bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a new file `name` inside the bundle (the name is checked).
    pub fn file_path(&self, name: &str) -> Result<PathBuf, BundleError> {
        check_file_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Hashes every file in the directory into `manifest.files`, writes `manifest.json`, signs
    /// it into `manifest.sig` and verifies the result with the signing key's public half.
    pub fn finish(
        self,
        manifest: Manifest,
        key: &SecretKey,
    ) -> Result<VerifiedBundle, BundleError> {
        let dir = self.dir.clone();
        let bytes = self.finish_unsigned(manifest)?;
        let sig = dir.join(SIGNATURE_FILE);
        std::fs::write(&sig, key.sign_manifest(&bytes)).map_err(io_err(&sig))?;
        verify_bundle(&dir, &[key.public()])
    }

    /// Like [`Self::finish`] but leaves the bundle unsigned: returns the exact bytes written to
    /// `manifest.json`, which are what a signer must sign (Ed25519 over these bytes, no hashing
    /// first); [`attach_signature`] then completes the bundle.
    pub fn finish_unsigned(self, mut manifest: Manifest) -> Result<Vec<u8>, BundleError> {
        manifest.files.clear();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == MANIFEST_FILE || name == SIGNATURE_FILE {
                return Err(BundleError::OutputExists { path: entry.path() });
            }
            check_file_name(&name)?;
            let (sha256, bytes) = sha256_file(&entry.path())?;
            manifest.files.insert(name, FileEntry { sha256, bytes });
        }
        check_manifest(&self.dir, &manifest)?;
        let mut bytes = serde_json::to_vec_pretty(&manifest).map_err(BundleError::Serialise)?;
        bytes.push(b'\n');
        let path = self.dir.join(MANIFEST_FILE);
        std::fs::write(&path, &bytes).map_err(io_err(&path))?;
        Ok(bytes)
    }
}

/// Completes an unsigned bundle with a signature made elsewhere (an HSM, `openssl pkeyutl
/// -sign -rawin`, `minisign -S -l`): the 64-byte Ed25519 signature of the exact `manifest.json`
/// bytes by `signer`. The signature is checked before `manifest.sig` is written, and the whole
/// bundle is verified after; an existing `manifest.sig` is replaced only when the new one is good.
pub fn attach_signature(
    dir: impl AsRef<Path>,
    signature: &[u8; 64],
    signer: &PublicKey,
) -> Result<VerifiedBundle, BundleError> {
    let dir = dir.as_ref();
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    signer
        .verifying_key()
        .verify_strict(&bytes, &sig)
        .map_err(|_| BundleError::BadSignature {
            dir: dir.to_path_buf(),
            key: signer.to_string(),
        })?;
    let text = keys::SignatureFile {
        key: *signer.verifying_key(),
        signature: sig,
    }
    .to_text();
    let out = dir.join(SIGNATURE_FILE);
    std::fs::write(&out, text).map_err(io_err(&out))?;
    verify_bundle(dir, std::slice::from_ref(signer))
}

/// Re-signs an existing bundle's exact manifest bytes with another key (e.g. a release key
/// after review). The old signature is replaced; the manifest is not touched.
pub fn resign_bundle(dir: impl AsRef<Path>, key: &SecretKey) -> Result<(), BundleError> {
    let dir = dir.as_ref();
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let sig = dir.join(SIGNATURE_FILE);
    std::fs::write(&sig, key.sign_manifest(&bytes)).map_err(io_err(&sig))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod typed_tests;
