//! Ed25519 keys and signatures in the encodings other tools write, so device makers can sign
//! bundles with what they already use (an HSM, `openssl pkeyutl`, minisign) and trust keys as
//! those tools print them:
//!
//! - PEM `PUBLIC KEY` (SubjectPublicKeyInfo, RFC 8410), as `openssl pkey -pubout` writes it;
//! - PEM `PRIVATE KEY` (PKCS #8 v1, RFC 8410), as `openssl genpkey -algorithm ed25519` writes it;
//! - OpenSSH `ssh-ed25519 AAAA… comment` public key lines (RFC 8709 wire format);
//! - minisign public keys (`untrusted comment:` line, then base64 of `Ed` + 8-byte key id +
//!   32-byte key) and minisign signatures made in legacy mode (`minisign -S -l`: `Ed`, a plain
//!   Ed25519 signature over the file; the default prehashed `ED` signs a BLAKE2b hash instead and
//!   is refused with that explanation);
//! - a raw signature: 64 bytes (what `openssl pkeyutl -sign -rawin` writes), 128 hex digits or
//!   base64 of the 64 bytes.
//!
//! Each DER form of an Ed25519 key is one fixed prefix followed by the 32 key bytes, so the
//! parsers compare the prefix exactly instead of decoding general ASN.1.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// DER of SubjectPublicKeyInfo { algorithm id-Ed25519 (1.3.101.112), BIT STRING (32 bytes) }.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of OneAsymmetricKey v0 { id-Ed25519, OCTET STRING { OCTET STRING (32-byte seed) } }.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const SSH_ED25519: &str = "ssh-ed25519";

/// The base64 body of the PEM block labelled `label`, if the text holds one.
fn pem_body(text: &str, label: &str) -> Option<Result<Vec<u8>, String>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let Some(len) = text[start..].find(&end) else {
        return Some(Err(format!("`{begin}` without `{end}`")));
    };
    let b64: String = text[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    Some(
        STANDARD
            .decode(b64)
            .map_err(|e| format!("PEM {label} is not base64: {e}")),
    )
}

fn after_prefix<const N: usize>(der: &[u8], prefix: &[u8], what: &str) -> Result<[u8; N], String> {
    der.strip_prefix(prefix)
        .and_then(|rest| <[u8; N]>::try_from(rest).ok())
        .ok_or_else(|| {
            format!(
                "{what} is not an Ed25519 key ({} bytes of DER; RSA, EC and other keys cannot sign bundles)",
                der.len()
            )
        })
}

/// A PEM `PUBLIC KEY` (SPKI) Ed25519 key, if the text is one.
pub(crate) fn spki_public(text: &str) -> Option<Result<[u8; 32], String>> {
    let der = pem_body(text, "PUBLIC KEY")?;
    Some(der.and_then(|d| after_prefix(&d, &SPKI_PREFIX, "PEM PUBLIC KEY")))
}

/// A PEM `PRIVATE KEY` (PKCS #8) Ed25519 seed, if the text is one.
pub(crate) fn pkcs8_seed(text: &str) -> Option<Result<[u8; 32], String>> {
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Some(Err(
            "the PEM private key is encrypted; decrypt it for signing (openssl pkey -in KEY -out PLAIN) or sign with your own tool and `quantize sign --signature`".into(),
        ));
    }
    let der = pem_body(text, "PRIVATE KEY")?;
    Some(der.and_then(|d| after_prefix(&d, &PKCS8_PREFIX, "PEM PRIVATE KEY")))
}

/// PEM text of an SPKI public key.
pub(crate) fn to_spki_pem(key: &[u8; 32]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(key);
    pem("PUBLIC KEY", &der)
}

/// PEM text of a PKCS #8 private key.
pub(crate) fn to_pkcs8_pem(seed: &[u8; 32]) -> String {
    let mut der = PKCS8_PREFIX.to_vec();
    der.extend_from_slice(seed);
    pem("PRIVATE KEY", &der)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An OpenSSH `ssh-ed25519` public key line: the key and its comment.
pub(crate) fn openssh_public(text: &str) -> Option<Result<([u8; 32], String), String>> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(SSH_ED25519))?;
    let mut parts = line.split_whitespace();
    let _kind = parts.next();
    let Some(b64) = parts.next() else {
        return Some(Err("`ssh-ed25519` line without the key".into()));
    };
    let comment = parts.collect::<Vec<_>>().join(" ");
    let blob = match STANDARD.decode(b64) {
        Ok(b) => b,
        Err(e) => return Some(Err(format!("OpenSSH key is not base64: {e}"))),
    };
    // string "ssh-ed25519", string key (each a u32 big-endian length, then the bytes)
    let mut expected = (SSH_ED25519.len() as u32).to_be_bytes().to_vec();
    expected.extend_from_slice(SSH_ED25519.as_bytes());
    expected.extend_from_slice(&32u32.to_be_bytes());
    Some(
        after_prefix(&blob, &expected, "OpenSSH key")
            .map(|k| (k, comment))
            .map_err(|_| {
                format!(
                    "OpenSSH key blob of {} bytes is not ssh-ed25519",
                    blob.len()
                )
            }),
    )
}

/// The base64 line of a minisign file (the first line that is not a comment).
fn minisign_payload(text: &str) -> Option<&str> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next()?;
    if !first.starts_with("untrusted comment:") {
        return None;
    }
    lines.next()
}

/// A minisign public key: the key and minisign's own key id (hex, as minisign prints it).
pub(crate) fn minisign_public(text: &str) -> Option<Result<([u8; 32], String), String>> {
    let b64 = minisign_payload(text)?;
    let raw = match STANDARD.decode(b64) {
        Ok(r) => r,
        Err(e) => return Some(Err(format!("minisign key is not base64: {e}"))),
    };
    if raw.len() != 42 || &raw[..2] != b"Ed" {
        return Some(Err(format!(
            "minisign public key of {} bytes (expected 42, starting `Ed`)",
            raw.len()
        )));
    }
    let mut id = raw[2..10].to_vec();
    id.reverse(); // minisign prints the little-endian id as a big-endian number
    let key: [u8; 32] = raw[10..].try_into().ok()?;
    Some(Ok((key, hex::encode_upper(id))))
}

/// A 64-byte signature in any of the accepted encodings (see the module docs).
pub fn parse_signature(bytes: &[u8]) -> Result<[u8; 64], String> {
    if bytes.len() == 64 {
        return Ok(bytes.try_into().unwrap_or([0; 64]));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        format!(
            "{} bytes: not a raw 64-byte signature nor text",
            bytes.len()
        )
    })?;
    if let Some(b64) = minisign_payload(text) {
        let raw = STANDARD
            .decode(b64)
            .map_err(|e| format!("minisign signature is not base64: {e}"))?;
        return match raw.get(..2) {
            Some(b"Ed") if raw.len() == 74 => Ok(raw[10..].try_into().unwrap_or([0; 64])),
            Some(b"ED") => Err(
                "this minisign signature is prehashed (BLAKE2b, minisign's default); sign with `minisign -S -l` (legacy mode), which signs the manifest bytes themselves".into(),
            ),
            _ => Err(format!("minisign signature of {} bytes is not Ed25519", raw.len())),
        };
    }
    let t = text.trim();
    let decoded = if t.len() == 128 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).map_err(|e| e.to_string())?
    } else {
        STANDARD.decode(t).map_err(|_| {
            "not a raw 64-byte signature, 128 hex digits, base64 or a minisign signature"
                .to_string()
        })?
    };
    decoded
        .try_into()
        .map_err(|v: Vec<u8>| format!("signature has {} bytes, expected 64", v.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_refuses_other_algorithms() {
        let key = [7u8; 32];
        let pem = to_spki_pem(&key);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert_eq!(spki_public(&pem).unwrap().unwrap(), key);
        let sk = to_pkcs8_pem(&key);
        assert!(sk.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"));
        assert_eq!(pkcs8_seed(&sk).unwrap().unwrap(), key);
        // An EC P-256 public key (openssl ecparam output): a clear refusal, not a wrong key.
        let ec = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n-----END PUBLIC KEY-----\n";
        let e = spki_public(ec).unwrap().unwrap_err();
        assert!(e.contains("not an Ed25519 key"), "{e}");
        assert!(spki_public("echojepa-ed25519-public-key v1").is_none());
    }

    #[test]
    fn minisign_and_raw_signatures() {
        let mut pk = b"Ed".to_vec();
        pk.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        pk.extend_from_slice(&[9u8; 32]);
        let text = format!(
            "untrusted comment: minisign public key 0807060504030201\n{}\n",
            STANDARD.encode(&pk)
        );
        let (k, id) = minisign_public(&text).unwrap().unwrap();
        assert_eq!((k, id.as_str()), ([9u8; 32], "0807060504030201"));

        let sig = [3u8; 64];
        assert_eq!(parse_signature(&sig).unwrap(), sig);
        assert_eq!(parse_signature(hex::encode(sig).as_bytes()).unwrap(), sig);
        assert_eq!(
            parse_signature(STANDARD.encode(sig).as_bytes()).unwrap(),
            sig
        );
        let mut legacy = b"Ed".to_vec();
        legacy.extend_from_slice(&[1u8; 8]);
        legacy.extend_from_slice(&sig);
        let file = format!(
            "untrusted comment: signature\n{}\ntrusted comment: t\nAAAA\n",
            STANDARD.encode(&legacy)
        );
        assert_eq!(parse_signature(file.as_bytes()).unwrap(), sig);
        legacy[1] = b'D';
        let file = format!("untrusted comment: s\n{}\n", STANDARD.encode(&legacy));
        assert!(parse_signature(file.as_bytes()).unwrap_err().contains("-l"));
        assert!(parse_signature(&[0u8; 63]).is_err());
    }
}
