//! A/B slots on a real filesystem: install and keep the previous slot, refuse a tampered bundle
//! before writing anything, roll back on a failed or hanging health check, recover from a torn
//! slot, and — the main property — power lost at every single write step (and again during the
//! recovery) leaves a cart that boots the old or the new bundle, never neither.
//!
//! The slot logic is tested through `BundleVerifier` with a small hash-list verifier defined
//! here (it checks that the directory holds exactly the listed files with their sha256, and a
//! "signature" that is the manifest's own sha256). Real ed25519 bundle verification is
//! `echojepa-bundle`'s job and is tested there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use echojepa_bundle::rollback::{Overrides, PolicyViolation, SecurityFloor};
use firmware_host::slots::{BundleInfo, BundleVerifier, Failpoints, HealthCheck, SlotError, Slots};
use sha2::{Digest, Sha256};

struct HashListVerifier;

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl BundleVerifier for HashListVerifier {
    fn verify(&self, dir: &Path) -> Result<BundleInfo, String> {
        let at = |f: &str| format!("{}/{f}", dir.display());
        let manifest = std::fs::read(dir.join("manifest.json"))
            .map_err(|e| format!("{}: {e}", at("manifest.json")))?;
        let sig = std::fs::read_to_string(dir.join("manifest.sig"))
            .map_err(|e| format!("{}: {e}", at("manifest.sig")))?;
        if sig.trim() != sha(&manifest) {
            return Err(format!("{}: signature does not match", at("manifest.sig")));
        }
        let m: serde_json::Value = serde_json::from_slice(&manifest)
            .map_err(|e| format!("{}: {e}", at("manifest.json")))?;
        let listed: BTreeMap<String, String> =
            serde_json::from_value(m["files"].clone()).map_err(|e| e.to_string())?;
        let mut files = vec!["manifest.json".to_string(), "manifest.sig".to_string()];
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let name = entry.map_err(|e| e.to_string())?.file_name();
            let name = name.to_string_lossy().into_owned();
            if name != "manifest.json" && name != "manifest.sig" && !listed.contains_key(&name) {
                return Err(format!("{}: not listed in the manifest", at(&name)));
            }
        }
        for (name, want) in &listed {
            let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", at(name)))?;
            if &sha(&bytes) != want {
                return Err(format!("{}: sha256 mismatch", at(name)));
            }
            files.push(name.clone());
        }
        Ok(BundleInfo {
            id: sha(&manifest),
            label: m["model_id"].as_str().unwrap_or("?").to_string(),
            files,
            security_version: m["security_version"].as_u64().unwrap_or(0),
            not_after_unix: m["not_after_unix"].as_u64(),
        })
    }
}

/// Writes a small bundle `dir/name` whose weights differ per name.
fn bundle(dir: &Path, name: &str) -> PathBuf {
    bundle_with(dir, name, 0, None)
}

/// A bundle with a security version and an optional expiry.
fn bundle_with(dir: &Path, name: &str, security_version: u64, not_after: Option<u64>) -> PathBuf {
    let b = dir.join(name);
    std::fs::create_dir_all(&b).unwrap();
    let weights: Vec<u8> = name.bytes().cycle().take(3000).collect();
    let labels = format!("[\"A4C\", \"{name}\"]");
    std::fs::write(b.join("model.gguf"), &weights).unwrap();
    std::fs::write(b.join("labels.json"), &labels).unwrap();
    let manifest = serde_json::json!({
        "model_id": name,
        "security_version": security_version,
        "not_after_unix": not_after,
        "files": {"model.gguf": sha(&weights), "labels.json": sha(labels.as_bytes())},
    });
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    std::fs::write(b.join("manifest.json"), &bytes).unwrap();
    std::fs::write(b.join("manifest.sig"), sha(&bytes)).unwrap();
    b
}

fn id_of(b: &Path) -> String {
    HashListVerifier.verify(b).unwrap().id
}

/// Every path under `dir` with its content (links as their target), for "nothing changed" checks.
pub fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                stack.push(p);
            } else {
                out.insert(rel, sha(&std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

pub fn ok_check() -> HealthCheck {
    HealthCheck {
        command: "test -f \"$ECHOJEPA_BUNDLE/model.gguf\"".into(),
        timeout: Duration::from_secs(20),
    }
}

#[test]
fn install_switches_and_keeps_the_previous_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2, v3) = (
        bundle(tmp.path(), "v1"),
        bundle(tmp.path(), "v2"),
        bundle(tmp.path(), "v3"),
    );
    let slots = Slots::new(tmp.path().join("slots"));
    let r = slots
        .install(
            &v1,
            &HashListVerifier,
            Some(&ok_check()),
            &mut Failpoints::none(),
        )
        .unwrap();
    assert_eq!((r.slot.as_str(), r.previous.as_deref()), ("a", None));
    assert!(r.health_checked);
    let r = slots
        .install(
            &v2,
            &HashListVerifier,
            Some(&ok_check()),
            &mut Failpoints::none(),
        )
        .unwrap();
    assert_eq!((r.slot.as_str(), r.previous.as_deref()), ("b", Some("a")));
    let st = slots.status(&HashListVerifier);
    assert!(st[1].current && !st[0].current);
    assert_eq!(
        st[0].bundle.as_ref().unwrap().id,
        id_of(&v1),
        "previous kept"
    );
    assert_eq!(st[1].bundle.as_ref().unwrap().id, id_of(&v2));
    // The runtime loads through `current`.
    let loaded = HashListVerifier
        .verify(&slots.dir().join("current"))
        .unwrap();
    assert_eq!(loaded.id, id_of(&v2));
    // A third install replaces the older one and keeps v2.
    slots
        .install(&v3, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap();
    let st = slots.status(&HashListVerifier);
    assert_eq!(st[0].bundle.as_ref().unwrap().id, id_of(&v3));
    assert!(st[0].current);
    assert_eq!(st[1].bundle.as_ref().unwrap().id, id_of(&v2));
    assert!(!slots.dir().join("pending").exists());
    // Manual rollback goes back to v2.
    let r = slots
        .rollback(&HashListVerifier, &mut Failpoints::none())
        .unwrap();
    assert_eq!(r.bundle.id, id_of(&v2));
}

#[test]
fn a_tampered_bundle_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = bundle(tmp.path(), "v1");
    let evil = bundle(tmp.path(), "evil");
    let mut w = std::fs::read(evil.join("model.gguf")).unwrap();
    w[100] ^= 1;
    std::fs::write(evil.join("model.gguf"), w).unwrap();

    // On a fresh cart the slots directory is not even created.
    let fresh = Slots::new(tmp.path().join("fresh"));
    let e = fresh
        .install(&evil, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap_err();
    assert!(matches!(e, SlotError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("model.gguf"), "names the file: {e}");
    assert!(!fresh.dir().exists());

    let slots = Slots::new(tmp.path().join("slots"));
    slots
        .install(&v1, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap();
    let before = tree(slots.dir());
    let mut fp = Failpoints::none();
    let e = slots
        .install(&evil, &HashListVerifier, None, &mut fp)
        .unwrap_err();
    assert!(matches!(e, SlotError::Refused { .. }));
    assert_eq!(fp.taken(), 0, "no write step was taken");
    assert_eq!(tree(slots.dir()), before);

    // An extra unlisted file is tampering too.
    let extra = bundle(tmp.path(), "extra");
    std::fs::write(extra.join("payload.sh"), "rm -rf /").unwrap();
    let e = slots
        .install(&extra, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap_err();
    assert!(e.to_string().contains("payload.sh"), "{e}");
    assert_eq!(tree(slots.dir()), before);
}

#[test]
fn a_failed_health_check_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = (bundle(tmp.path(), "v1"), bundle(tmp.path(), "v2"));
    let slots = Slots::new(tmp.path().join("slots"));
    slots
        .install(&v1, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap();
    let failing = HealthCheck {
        command: "echo model refused to load >&2; exit 3".into(),
        timeout: Duration::from_secs(20),
    };
    let e = slots
        .install(
            &v2,
            &HashListVerifier,
            Some(&failing),
            &mut Failpoints::none(),
        )
        .unwrap_err();
    match &e {
        SlotError::HealthCheckFailed {
            slot,
            detail,
            rolled_back_to,
        } => {
            assert_eq!(slot, "b");
            assert_eq!(rolled_back_to, "a");
            assert!(detail.contains("model refused to load"), "{detail}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        HashListVerifier
            .verify(&slots.dir().join("current"))
            .unwrap()
            .id,
        id_of(&v1)
    );
    assert!(!slots.dir().join("pending").exists());

    // The check sees the new bundle, and a hanging check is killed and counts as failed.
    let sees_v2 = HealthCheck {
        command:
            "grep -q '\"v2\"' \"$ECHOJEPA_BUNDLE/manifest.json\" && test \"$ECHOJEPA_SLOT\" = b"
                .into(),
        timeout: Duration::from_secs(20),
    };
    slots
        .install(
            &v2,
            &HashListVerifier,
            Some(&sees_v2),
            &mut Failpoints::none(),
        )
        .unwrap();
    let v3 = bundle(tmp.path(), "v3");
    let hangs = HealthCheck {
        command: "sleep 30".into(),
        timeout: Duration::from_millis(200),
    };
    let e = slots
        .install(
            &v3,
            &HashListVerifier,
            Some(&hangs),
            &mut Failpoints::none(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("did not finish"), "{e}");
    assert_eq!(
        HashListVerifier
            .verify(&slots.dir().join("current"))
            .unwrap()
            .id,
        id_of(&v2)
    );
}

#[test]
fn recover_switches_away_from_a_torn_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = (bundle(tmp.path(), "v1"), bundle(tmp.path(), "v2"));
    let slots = Slots::new(tmp.path().join("slots"));
    for b in [&v1, &v2] {
        slots
            .install(b, &HashListVerifier, None, &mut Failpoints::none())
            .unwrap();
    }
    // Half of the current weights lost (e.g. storage failure).
    let w = slots.dir().join("b/model.gguf");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let r = slots
        .recover(&HashListVerifier, &mut Failpoints::none())
        .unwrap();
    assert_eq!((r.current.as_str(), r.bundle.id.clone()), ("a", id_of(&v1)));
    assert!(
        r.actions
            .iter()
            .any(|a| a.contains("switched current to a"))
    );
    // Both bad: a clear error naming both slots.
    std::fs::remove_file(slots.dir().join("a/labels.json")).unwrap();
    let e = slots
        .recover(&HashListVerifier, &mut Failpoints::none())
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("slot a") && msg.contains("slot b"), "{msg}");
}

#[test]
fn power_loss_at_every_step_boots_old_or_new_never_neither() {
    let tmp = tempfile::tempdir().unwrap();
    let v = [
        bundle(tmp.path(), "v1"),
        bundle(tmp.path(), "v2"),
        bundle(tmp.path(), "v3"),
    ];
    let (total, outcomes) = power_loss_at_every_step(&HashListVerifier, &v, tmp.path());
    eprintln!("install has {total} write steps; after power loss the cart booted {outcomes:?}");
}

/// Installs `v[2]` on a cart holding `v[0]` (previous) and `v[1]` (current), losing power at
/// step 1, 2, ... until an install completes; after each loss the boot check (itself losing power
/// at each of its steps) must leave `current` on the old or the new bundle, and the cart must take
/// a new flash. Returns the number of steps and how often each bundle was booted.
pub fn power_loss_at_every_step(
    verifier: &dyn BundleVerifier,
    v: &[PathBuf; 3],
    scratch: &Path,
) -> (usize, BTreeMap<&'static str, usize>) {
    let (old, new) = (
        verifier.verify(&v[1]).unwrap().id,
        verifier.verify(&v[2]).unwrap().id,
    );
    // A cart with v1 (previous) and v2 (current), copied for every run. Power loss is simulated
    // by the failpoints, so fsyncs (tested elsewhere) are skipped here to keep it fast.
    let base = Slots::new(scratch.join("base")).durable(false);
    for b in &v[..2] {
        base.install(b, verifier, None, &mut Failpoints::none())
            .unwrap();
    }
    let mut outcomes = BTreeMap::new();
    let mut total_steps = None;
    for n in 1.. {
        let root = scratch.join(format!("cart{n}"));
        copy_tree(base.dir(), &root);
        let slots = Slots::new(&root).durable(false);
        let mut fp = Failpoints::fail_at(n);
        match slots.install(&v[2], verifier, Some(&ok_check()), &mut fp) {
            Ok(_) => {
                total_steps = Some(n - 1);
                break;
            }
            Err(SlotError::Interrupted { step, .. }) => assert_eq!(step, n),
            Err(e) => panic!("step {n}: unexpected error {e}"),
        }
        // Power comes back; the boot check may itself lose power at any of its steps.
        for m in 1.. {
            match slots.recover(verifier, &mut Failpoints::fail_at(m)) {
                Ok(_) => break,
                Err(SlotError::Interrupted { .. }) => {
                    // Whatever it did so far, a full recovery from here must still work.
                    let again = Slots::new(scratch.join(format!("cart{n}-{m}"))).durable(false);
                    copy_tree(&root, again.dir());
                    let r = again
                        .recover(verifier, &mut Failpoints::none())
                        .unwrap_or_else(|e| panic!("install step {n}, recover step {m}: {e}"));
                    assert!(r.bundle.id == old || r.bundle.id == new);
                }
                Err(e) => panic!("install step {n}, recover step {m}: {e}"),
            }
        }
        let r = slots
            .recover(verifier, &mut Failpoints::none())
            .unwrap_or_else(|e| panic!("install interrupted at step {n}: {e}"));
        let which = if r.bundle.id == old {
            "old"
        } else if r.bundle.id == new {
            "new"
        } else {
            panic!("step {n}: boots {} which is neither", r.bundle.label)
        };
        // What `current` resolves to is exactly what recover reported.
        let via_link = verifier.verify(&root.join("current")).unwrap();
        assert_eq!(via_link.id, r.bundle.id);
        *outcomes.entry(which).or_insert(0) += 1;
        // And the cart can be flashed again afterwards.
        let r = slots
            .install(&v[2], verifier, None, &mut Failpoints::none())
            .unwrap_or_else(|e| panic!("reflash after step {n}: {e}"));
        assert_eq!(r.bundle.id, new);
    }
    let total = total_steps.expect("install finished for a large enough step");
    assert!(
        total >= 12,
        "only {total} steps: the failpoints do not cover the install"
    );
    assert!(outcomes.get("old").copied().unwrap_or(0) > 0);
    (total, outcomes)
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let dst = to.join(e.file_name());
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&p).unwrap(), &dst).unwrap();
        } else if meta.is_dir() {
            copy_tree(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

fn floor_of(slots: &Slots) -> Option<u64> {
    slots.floor().unwrap().map(|f| f.security_version)
}

#[test]
fn an_older_security_version_is_refused_unless_the_operator_overrides_it() {
    let tmp = tempfile::tempdir().unwrap();
    let new = bundle_with(tmp.path(), "new", 3, None);
    let old = bundle_with(tmp.path(), "old", 1, None);
    let same = bundle_with(tmp.path(), "same", 3, None);
    let slots = Slots::new(tmp.path().join("slots"));
    slots
        .install(
            &new,
            &HashListVerifier,
            Some(&ok_check()),
            &mut Failpoints::none(),
        )
        .unwrap();
    assert_eq!(
        floor_of(&slots),
        Some(3),
        "the floor follows the committed bundle"
    );

    // The old bundle is authentic, but a rollback: refused, nothing written.
    let before = tree(slots.dir());
    let mut fp = Failpoints::none();
    let e = slots
        .install(&old, &HashListVerifier, None, &mut fp)
        .unwrap_err();
    match &e {
        SlotError::Policy {
            violation:
                PolicyViolation::Rollback {
                    version: 1,
                    floor: 3,
                    ..
                },
            ..
        } => {}
        other => panic!("expected a rollback refusal, got {other}"),
    }
    assert!(e.to_string().contains("--allow-rollback"), "{e}");
    assert_eq!(fp.taken(), 0, "nothing written: {:?}", fp.log());
    assert_eq!(tree(slots.dir()), before);

    // An ordinary update at the same security version is fine, and then plain A/B rollback
    // between two bundles of the same version still works.
    slots
        .install(&same, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap();
    let r = slots
        .rollback(&HashListVerifier, &mut Failpoints::none())
        .unwrap();
    assert_eq!(r.bundle.id, id_of(&new));

    // Forced by the operator: installed, logged, and the floor follows the forced bundle (so the
    // next boot does not undo what the operator chose).
    let forced = Slots::new(slots.dir()).overrides(Overrides {
        allow_rollback: true,
        allow_expired: false,
    });
    forced
        .install(&old, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap();
    assert_eq!(floor_of(&slots), Some(1));
    let audit = std::fs::read_to_string(slots.dir().join("audit.log")).unwrap();
    let line: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(line["action"], "install");
    assert_eq!(line["security_version"], 1);
    assert!(
        line["overridden"][0].as_str().unwrap().contains("below 3"),
        "{line}"
    );
    let r = slots
        .recover(&HashListVerifier, &mut Failpoints::none())
        .unwrap();
    assert_eq!(r.bundle.id, id_of(&old), "boot keeps the forced bundle");
}

#[test]
fn a_manual_rollback_below_the_floor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = bundle_with(tmp.path(), "v1", 1, None);
    let v2 = bundle_with(tmp.path(), "v2", 2, None);
    let slots = Slots::new(tmp.path().join("slots"));
    for b in [&v1, &v2] {
        slots
            .install(b, &HashListVerifier, None, &mut Failpoints::none())
            .unwrap();
    }
    assert_eq!(floor_of(&slots), Some(2));
    let e = slots
        .rollback(&HashListVerifier, &mut Failpoints::none())
        .unwrap_err();
    assert!(matches!(e, SlotError::Policy { .. }), "{e}");
    assert_eq!(
        slots.current().map(firmware_host::slots::slot_name),
        Some("b")
    );
    let st = slots.status(&HashListVerifier);
    assert!(
        st[0].policy.as_deref().unwrap_or("").contains("below 2"),
        "{st:?}"
    );
    assert!(st[1].policy.is_none());

    // At boot, a current slot that no longer verifies does not fall back below the floor.
    std::fs::write(slots.dir().join("b/model.gguf"), b"torn").unwrap();
    let e = slots
        .recover(&HashListVerifier, &mut Failpoints::none())
        .unwrap_err();
    assert!(matches!(e, SlotError::NoBootableSlot { .. }), "{e}");
    assert!(e.to_string().contains("below 2"), "{e}");
}

#[test]
fn an_expired_bundle_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle_with(tmp.path(), "b", 0, Some(1_000));
    let slots = Slots::new(tmp.path().join("slots")).at_time(1_001);
    let e = slots
        .install(&b, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap_err();
    assert!(
        matches!(
            &e,
            SlotError::Policy {
                violation: PolicyViolation::Expired {
                    not_after: 1_000,
                    now: 1_001
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(!slots.dir().exists(), "nothing written");
    // Still valid at its last second.
    Slots::new(tmp.path().join("ok"))
        .at_time(1_000)
        .install(&b, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap();
    Slots::new(tmp.path().join("slots"))
        .at_time(1_001)
        .overrides(Overrides {
            allow_rollback: false,
            allow_expired: true,
        })
        .install(&b, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap();
    assert!(slots.dir().join("audit.log").is_file());
}

#[test]
fn a_crash_before_the_floor_is_raised_is_repaired_at_boot() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = bundle_with(tmp.path(), "v1", 1, None);
    let v5 = bundle_with(tmp.path(), "v5", 5, None);
    let slots = Slots::new(tmp.path().join("slots")).durable(false);
    slots
        .install(&v1, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap();
    // Find the step that raises the floor to 5 and cut power there.
    let mut probe = Failpoints::none();
    let copy = Slots::new(tmp.path().join("probe")).durable(false);
    copy.install(&v1, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap();
    copy.install(&v5, &HashListVerifier, None, &mut probe)
        .unwrap();
    let step = probe
        .log()
        .iter()
        .position(|s| s.contains("raise the security floor to 5"))
        .expect("a floor step")
        + 1;
    let e = slots
        .install(&v5, &HashListVerifier, None, &mut Failpoints::fail_at(step))
        .unwrap_err();
    assert!(matches!(e, SlotError::Interrupted { .. }), "{e}");
    assert_eq!(floor_of(&slots), Some(1));
    let r = slots
        .recover(&HashListVerifier, &mut Failpoints::none())
        .unwrap();
    assert_eq!(r.bundle.id, id_of(&v5));
    assert_eq!(floor_of(&slots), Some(5));
    let f: SecurityFloor = slots.floor().unwrap().unwrap();
    assert_eq!(f.manifest_sha256, id_of(&v5));
}

#[test]
fn a_garbled_floor_file_refuses_installs_instead_of_guessing() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path(), "b");
    let slots = Slots::new(tmp.path().join("slots"));
    std::fs::create_dir_all(slots.dir()).unwrap();
    std::fs::write(slots.dir().join("security_floor.json"), b"{garbage").unwrap();
    let e = slots
        .install(&b, &HashListVerifier, None, &mut Failpoints::none())
        .unwrap_err();
    assert!(e.to_string().contains("security_floor.json"), "{e}");
}
