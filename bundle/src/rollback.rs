//! Anti-rollback and expiry, the way A/B updaters (RAUC, Mender) and TUF/Uptane do it: every
//! signed manifest carries a monotonic `security_version` and may carry `not_after_unix`; a cart
//! remembers the highest security version it has accepted (its *floor*, a small JSON file in the
//! slots directory) and refuses anything below it, and anything expired, unless the operator
//! overrides it explicitly — which is logged.
//!
//! A signature alone cannot stop a rollback: an old bundle with a known defect stays correctly
//! signed forever. The floor is what makes "old" refusable. Old bundles still *verify* (for
//! audits, `quantize verify` reports how one relates to a floor); they are refused only for
//! installing and running.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Manifest;

/// File name of the floor inside a slots directory.
pub const FLOOR_FILE: &str = "security_floor.json";

/// Largest floor file read (bytes); anything bigger is not ours.
const MAX_FLOOR_BYTES: u64 = 64 * 1024;

/// The highest security version a cart has accepted, and which bundle raised it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityFloor {
    /// Bundles below this are refused.
    pub security_version: u64,
    /// `model_id model_version` of the bundle that set it, for people.
    pub bundle: String,
    /// sha256 of that bundle's manifest.
    pub manifest_sha256: String,
    /// When it was set (seconds since the Unix epoch).
    pub since_unix: u64,
}

/// Why the floor file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FloorError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a floor (too large or not the expected JSON).
    #[error("{path}: not a security floor file ({reason}); refusing to guess the floor")]
    Malformed { path: PathBuf, reason: String },
}

impl SecurityFloor {
    /// The floor recorded in `slots_dir`, `None` when none was ever recorded. A file that exists
    /// but cannot be read is an error: guessing "no floor" would reopen rollbacks.
    pub fn load(slots_dir: &Path) -> Result<Option<Self>, FloorError> {
        let path = slots_dir.join(FLOOR_FILE);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(FloorError::Io { path, source }),
        };
        if meta.len() > MAX_FLOOR_BYTES {
            return Err(FloorError::Malformed {
                path,
                reason: format!("{} bytes", meta.len()),
            });
        }
        let bytes = std::fs::read(&path).map_err(|source| FloorError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| FloorError::Malformed {
                path,
                reason: e.to_string(),
            })
    }
}

/// What an operator explicitly allows beyond the policy. Each use is logged by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Accept a security version below the floor.
    pub allow_rollback: bool,
    /// Accept a bundle past its `not_after_unix`.
    pub allow_expired: bool,
}

/// A policy violation: the bundle is authentic, but this cart must not take it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// Older than what the cart has accepted.
    #[error(
        "security version {version} is below {floor}, the highest this cart has accepted (set by {by}): refusing a rollback (an operator can override it with --allow-rollback, which is logged)"
    )]
    Rollback {
        version: u64,
        floor: u64,
        by: String,
    },
    /// Past its expiry.
    #[error(
        "the bundle expired at {} (not_after_unix {not_after}); it is now {} (an operator can override it with --allow-expired, which is logged)",
        format_utc(*not_after),
        format_utc(*now)
    )]
    Expired { not_after: u64, now: u64 },
}

/// What `check` let through only because of an override (to be logged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overridden(pub Vec<PolicyViolation>);

/// Checks `manifest` against `floor` and the clock; see [`check_terms`].
pub fn check(
    manifest: &Manifest,
    floor: Option<&SecurityFloor>,
    now_unix: u64,
    overrides: Overrides,
) -> Result<Overridden, PolicyViolation> {
    check_terms(
        manifest.security_version,
        manifest.not_after_unix,
        floor,
        now_unix,
        overrides,
    )
}

/// Checks a bundle's security version and expiry against `floor` and the clock. Violations the
/// overrides allow come back in [`Overridden`] so the caller logs them; the first one they do not
/// allow is the error.
pub fn check_terms(
    security_version: u64,
    not_after_unix: Option<u64>,
    floor: Option<&SecurityFloor>,
    now_unix: u64,
    overrides: Overrides,
) -> Result<Overridden, PolicyViolation> {
    let mut overridden = Overridden::default();
    if let Some(f) = floor
        && security_version < f.security_version
    {
        let v = PolicyViolation::Rollback {
            version: security_version,
            floor: f.security_version,
            by: f.bundle.clone(),
        };
        if !overrides.allow_rollback {
            return Err(v);
        }
        overridden.0.push(v);
    }
    if let Some(not_after) = not_after_unix
        && now_unix > not_after
    {
        let v = PolicyViolation::Expired {
            not_after,
            now: now_unix,
        };
        if !overrides.allow_expired {
            return Err(v);
        }
        overridden.0.push(v);
    }
    Ok(overridden)
}

/// How a bundle's security version relates to a floor, for audits.
pub fn relation(version: u64, floor: Option<&SecurityFloor>) -> &'static str {
    match floor {
        None => "no floor recorded",
        Some(f) if version < f.security_version => "below the floor: refused as a rollback",
        Some(f) if version == f.security_version => "at the floor: accepted",
        Some(_) => "above the floor: accepted, raises the floor when committed",
    }
}

/// Seconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's civil-days method).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD` (the end of that day, 23:59:59 UTC) or plain seconds since the epoch, as
/// seconds since the epoch.
pub fn parse_not_after(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|e| format!("{s:?}: not seconds since the epoch ({e})"));
    }
    let bad = || format!("{s:?}: expected YYYY-MM-DD (UTC) or seconds since the epoch");
    let mut parts = s.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let y: i64 = y.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    let d: u32 = d.parse().map_err(|_| bad())?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return Err(bad());
    }
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return Err(format!("{s:?}: no such date"));
    }
    Ok((days as u64) * 86_400 + 86_399)
}

/// `YYYY-MM-DD` (UTC) of a time in seconds since the epoch.
pub fn format_date(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(unix: u64) -> String {
    let secs = unix % 86_400;
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        format_date(unix),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_bad_dates_are_refused() {
        assert_eq!(parse_not_after("1970-01-01"), Ok(86_399));
        // 2000-02-29 exists (a leap century), 1900 is out of range, 2023-02-29 does not exist.
        let t = parse_not_after("2000-02-29").unwrap();
        assert_eq!(format_utc(t), "2000-02-29 23:59:59 UTC");
        assert_eq!(format_utc(1_796_688_000), "2026-12-08 00:00:00 UTC");
        assert!(
            parse_not_after("2023-02-29")
                .unwrap_err()
                .contains("no such date")
        );
        for bad in ["", "2026-1-01", "2026-13-01", "26-01-01", "2026/01/01", "x"] {
            assert!(parse_not_after(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_not_after("1796688000"), Ok(1_796_688_000));
    }

    fn floor(v: u64) -> SecurityFloor {
        SecurityFloor {
            security_version: v,
            bundle: "m 2".into(),
            manifest_sha256: "ab".into(),
            since_unix: 5,
        }
    }

    #[test]
    fn floor_and_expiry_are_enforced_unless_overridden() {
        let mut m = crate::tests::manifest();
        m.security_version = 2;
        assert_eq!(
            check(&m, None, 10, Overrides::default()),
            Ok(Overridden::default())
        );
        assert!(check(&m, Some(&floor(2)), 10, Overrides::default()).is_ok());
        let e = check(&m, Some(&floor(3)), 10, Overrides::default()).unwrap_err();
        assert!(matches!(
            e,
            PolicyViolation::Rollback {
                version: 2,
                floor: 3,
                ..
            }
        ));
        assert!(e.to_string().contains("--allow-rollback"), "{e}");
        let allowed = Overrides {
            allow_rollback: true,
            ..Overrides::default()
        };
        assert_eq!(check(&m, Some(&floor(3)), 10, allowed).unwrap().0.len(), 1);

        m.not_after_unix = Some(100);
        assert!(check(&m, None, 100, Overrides::default()).is_ok());
        let e = check(&m, None, 101, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("1970-01-01 00:01:40 UTC"), "{e}");
        // Both violations, both overridden: both are reported for the log.
        let all = Overrides {
            allow_rollback: true,
            allow_expired: true,
        };
        assert_eq!(check(&m, Some(&floor(3)), 101, all).unwrap().0.len(), 2);
        // The rollback override does not cover expiry.
        assert!(matches!(
            check(&m, Some(&floor(3)), 101, allowed),
            Err(PolicyViolation::Expired { .. })
        ));
    }

    #[test]
    fn floor_file_missing_is_none_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SecurityFloor::load(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(FLOOR_FILE), b"{\"security_version\": 1").unwrap();
        let e = SecurityFloor::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(FLOOR_FILE), "{e}");
        let f = floor(7);
        std::fs::write(dir.path().join(FLOOR_FILE), serde_json::to_vec(&f).unwrap()).unwrap();
        assert_eq!(SecurityFloor::load(dir.path()).unwrap(), Some(f));
    }
}
