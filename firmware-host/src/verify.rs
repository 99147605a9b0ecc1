//! The real [`BundleVerifier`]: `echojepa_bundle::verify_bundle` (ed25519 signature over the
//! exact `manifest.json` bytes by a trusted key, then the size and sha256 of every listed file,
//! and no unlisted file), plus loading the trusted keys named by a board profile.

use std::path::Path;

use echojepa_bundle::{MANIFEST_FILE, PublicKey, SIGNATURE_FILE, verify_bundle};

use crate::slots::{BundleInfo, BundleVerifier};

/// Verifies bundles against a fixed set of trusted public keys.
#[derive(Debug, Clone)]
pub struct SignedBundleVerifier {
    keys: Vec<PublicKey>,
}

impl SignedBundleVerifier {
    /// Trusts exactly `keys` (an empty set refuses every bundle).
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys }
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }
}

impl BundleVerifier for SignedBundleVerifier {
    fn verify(&self, dir: &Path) -> Result<BundleInfo, String> {
        let v = verify_bundle(dir, &self.keys).map_err(|e| e.to_string())?;
        let m = v.manifest();
        let mut files: Vec<String> = m.files.keys().cloned().collect();
        files.push(MANIFEST_FILE.to_owned());
        files.push(SIGNATURE_FILE.to_owned());
        Ok(BundleInfo {
            id: v.manifest_sha256().to_owned(),
            label: format!(
                "{} {}{}",
                m.model_id,
                m.model_version,
                if m.synthetic_training_data {
                    " (trained on synthetic data)"
                } else {
                    ""
                }
            ),
            files,
            security_version: m.security_version,
            not_after_unix: m.not_after_unix,
        })
    }
}

/// Loads the public keys a board profile trusts (`[trust] keys`): inline hex or key files
/// (relative paths resolved against the profile's directory).
pub fn board_keys(profile: &boards::BoardProfile) -> Result<Vec<PublicKey>, String> {
    profile
        .trust
        .keys
        .iter()
        .map(|k| match (&k.ed25519, &k.file) {
            (Some(hex), _) => PublicKey::from_hex(&k.name, hex).map_err(|e| e.to_string()),
            (None, Some(file)) => {
                PublicKey::load(&profile.resolve_path(file)).map_err(|e| e.to_string())
            }
            (None, None) => Err(format!(
                "board profile {}: trust key `{}` has neither `ed25519` nor `file`",
                profile.origin, k.name
            )),
        })
        .collect()
}
