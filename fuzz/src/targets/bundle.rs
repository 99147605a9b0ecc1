//! Model bundles: `verify_bundle` over a scratch directory, and the key file parsers.
//!
//! The first byte picks what the rest is (modulo 4):
//! - 0: `manifest.json`, signed with the harness's key (so the fuzzed manifest gets past the
//!   signature check and reaches the JSON parser and the manifest checks); the directory holds
//!   `model.gguf` with the content the seed manifest lists, so a seed verifies completely;
//! - 1: `manifest.sig`, next to the fixed manifest of `fuzz/fixtures/bundle-manifest.json`;
//! - 2: a public key file (`PublicKey::parse`);
//! - 3: a secret key file (`SecretKey::parse`).

use std::path::PathBuf;

use echojepa::bundle::{MANIFEST_FILE, PublicKey, SIGNATURE_FILE, SecretKey, verify_bundle};

use super::{outcome, scratch_dir};

pub(crate) static DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"true",
    b"1e309",
    b"-0",
    b"-1",
    b"18446744073709551616",
    b"\"files\"",
    b"\"weights\"",
    b"\"heads\"",
    b"\"encoder\"",
    b"\"input\"",
    b"\"sha256\"",
    b"\"bytes\"",
    b"\"format_version\"",
    b"\"../x\"",
    b"\"\"",
    b"\\u0000",
    b"\\ud800",
    b"echojepa-ed25519-signature v1\n",
    b"key-id: ",
    b"key: ",
    b"signature: ",
    b"\n",
];

/// What the seed manifest lists as `model.gguf`.
pub const WEIGHTS: &[u8] = b"echojepa-fuzz stand-in weights\n";
/// The manifest of mode 1 (and, prefixed with 0, a mode 0 seed).
pub const MANIFEST: &[u8] = include_bytes!("../../fixtures/bundle-manifest.json");

/// The harness's signing key (a fixed seed: the fuzzer is not testing key secrecy).
pub fn key() -> SecretKey {
    SecretKey::from_seed("fuzz", &[7; 32])
}

fn bundle_dir() -> PathBuf {
    let Some(scratch) = scratch_dir() else {
        panic!("fuzz harness: no scratch directory");
    };
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let dir = scratch.join(format!("bundle-t{thread}"));
    if !dir.is_dir() {
        let made = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::write(dir.join("model.gguf"), WEIGHTS));
        if let Err(e) = made {
            panic!("fuzz harness: {}: {e}", dir.display());
        }
    }
    dir
}

fn verify(manifest: &[u8], sig: &[u8]) -> String {
    let dir = bundle_dir();
    for (name, bytes) in [(MANIFEST_FILE, manifest), (SIGNATURE_FILE, sig)] {
        if let Err(e) = std::fs::write(dir.join(name), bytes) {
            panic!("fuzz harness: {}: {e}", dir.join(name).display());
        }
    }
    match verify_bundle(&dir, &[key().public()]) {
        Ok(b) => match b.read_weights() {
            Ok(w) => {
                assert_eq!(w, WEIGHTS, "read_weights returned other bytes");
                "ok".into()
            }
            Err(e) => outcome("weights error:", &e.to_string()),
        },
        Err(e) => outcome("error:", &e.to_string()),
    }
}

pub(crate) fn bundle(data: &[u8]) -> String {
    let Some((&mode, rest)) = data.split_first() else {
        return "empty".into();
    };
    match mode % 4 {
        0 => verify(rest, key().sign_manifest(rest).as_bytes()),
        1 => verify(MANIFEST, rest),
        m => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return "not UTF-8".into();
            };
            let r = if m == 2 {
                PublicKey::parse(text, "fuzz").map(|k| k.to_file_text())
            } else {
                SecretKey::parse(text, "fuzz").map(|k| k.to_file_text())
            };
            match r {
                // What a key writes must parse back to the same key.
                Ok(written) => {
                    let again = if m == 2 {
                        PublicKey::parse(&written, "again").map(|k| k.to_file_text())
                    } else {
                        SecretKey::parse(&written, "again").map(|k| k.to_file_text())
                    };
                    match again {
                        Ok(t) => assert_eq!(t, written, "a key file does not round-trip"),
                        Err(e) => panic!("a written key file does not parse: {e}"),
                    }
                    "ok key".into()
                }
                // The message quotes the offending line, which may hold quote characters
                // itself: the first words name the check.
                Err(e) => {
                    let o = outcome("key error:", &e.to_string());
                    o.split_whitespace().take(7).collect::<Vec<_>>().join(" ")
                }
            }
        }
    }
}
