//! A/B model slots on the cart: install a verified bundle into the inactive slot, switch
//! atomically, keep the previous slot, roll back on a failed health check, and recover after
//! power was lost at any point.
//!
//! Layout of a slots directory (board profile `bundles.slots_dir`):
//!
//! ```text
//! slots/
//!   a/            one bundle, exactly the files its manifest lists (+ manifest.json, manifest.sig)
//!   b/            the other bundle (the previous one after a switch)
//!   current -> a  symlink: what the runtime loads (`slots/current/manifest.json`)
//!   pending       JSON {"trial": "b", "fallback": "a"} while a new slot is on trial
//!   security_floor.json   the highest security version accepted (anti-rollback)
//!   audit.log     one JSON line per operator override (rollback or expired bundle forced)
//! ```
//!
//! Anti-rollback ([`echojepa_bundle::rollback`]): a bundle whose `security_version` is below the
//! floor, or whose `not_after_unix` has passed, is refused before anything is written, and a slot
//! holding one is not booted. The floor rises to a bundle's version once it is committed (after
//! its health check) and again at every boot (`recover`), so a crash between commit and raise
//! cannot leave it low. An operator override ([`Slots::overrides`]) lets one such bundle through;
//! it is logged in `audit.log` and the floor then follows the forced bundle, since the operator
//! chose to run it.
//!
//! [`Slots::install`] does, in order (each numbered step is a [`Failpoints`] step):
//! verify the bundle (nothing is written before this passes); create `slots/` if needed; remove
//! leftovers; copy every file into `.X.incoming/` (fsync each, then the directory); verify the
//! copy; move the old `X/` aside, move `.X.incoming/` to `X/`, remove the old one; write `pending`
//! (trial X, fallback = current); point `current` at X (new symlink renamed over the old: atomic);
//! run the health check; on success remove `pending` (commit), on failure point `current` back
//! at the fallback.
//!
//! [`Slots::recover`] runs at boot before the runtime: it removes half-written leftovers, rolls an
//! unconfirmed trial back to its fallback, and checks that `current` verifies, switching to the
//! other slot if it does not. So wherever power is lost, the cart boots the old bundle or the new
//! one, never neither (tested by failing at every step).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cart_protocol::Slot;
use echojepa_bundle::rollback::{
    self, FLOOR_FILE, Overridden, Overrides, PolicyViolation, SecurityFloor,
};
use serde::{Deserialize, Serialize};

/// Checks a bundle directory (signature and file hashes) before it is installed or booted.
///
/// The real implementation is `echojepa-bundle` (ed25519 over `manifest.json`, sha256 of every
/// file); this trait keeps the slot logic independent of it and testable.
pub trait BundleVerifier {
    /// Verifies the bundle in `dir`; the error names the file and the reason.
    fn verify(&self, dir: &Path) -> Result<BundleInfo, String>;
}

/// What a verified bundle is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleInfo {
    /// Stable identity, e.g. the sha256 of the manifest (covers every file).
    pub id: String,
    /// Human-readable name (model id and version).
    pub label: String,
    /// Every file in the bundle directory (manifest and signature included), flat names.
    pub files: Vec<String>,
    /// The manifest's anti-rollback counter.
    pub security_version: u64,
    /// The manifest's expiry (seconds since the Unix epoch), if any.
    pub not_after_unix: Option<u64>,
}

/// Errors of slot management.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// bundle {bundle} refused, nothing was written: {reason}
    #[error("bundle {bundle} refused, nothing was written: {reason}")]
    Refused {
        /// The bundle directory.
        bundle: PathBuf,
        /// Why.
        reason: String,
    },
    /// {path}: {source}
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// the copy in {slot} does not verify after writing (disk error?): {reason}
    #[error("the copy in {slot} does not verify after writing (disk error?): {reason}")]
    CopyCorrupt {
        /// The staging directory.
        slot: PathBuf,
        /// Why.
        reason: String,
    },
    /// interrupted at step {step} ({what})
    #[error("interrupted at step {step} ({what})")]
    Interrupted {
        /// Step number (1-based).
        step: usize,
        /// What the step was about to do.
        what: String,
    },
    /// health check failed ({detail}); rolled back to {rolled_back_to}
    #[error("health check of slot {slot} failed ({detail}); rolled back to {rolled_back_to}")]
    HealthCheckFailed {
        /// The slot that failed.
        slot: String,
        /// Exit status and the end of its output.
        detail: String,
        /// What `current` points to now.
        rolled_back_to: String,
    },
    /// bundle {bundle} is authentic but refused by the anti-rollback policy; nothing was written
    #[error("bundle {bundle} refused, nothing was written: {violation}")]
    Policy {
        /// The bundle directory.
        bundle: PathBuf,
        /// What it violates.
        violation: PolicyViolation,
    },
    /// the security floor file cannot be read: {0}
    #[error(transparent)]
    Floor(#[from] rollback::FloorError),
    /// no slot holds a bundle that verifies: {details}
    #[error("no slot in {dir} holds a bundle that verifies: {details}")]
    NoBootableSlot {
        /// The slots directory.
        dir: PathBuf,
        /// What was wrong with each slot.
        details: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
    move |source| SlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counts the steps that change the disk and can stop at any one of them, like power loss.
#[derive(Debug, Default)]
pub struct Failpoints {
    fail_at: Option<usize>,
    taken: usize,
    log: Vec<String>,
}

impl Failpoints {
    /// Never fails.
    pub fn none() -> Self {
        Self::default()
    }

    /// Fails (returns [`SlotError::Interrupted`]) instead of doing step `n` (1-based).
    pub fn fail_at(n: usize) -> Self {
        Self {
            fail_at: Some(n),
            ..Default::default()
        }
    }

    /// Steps passed so far.
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// The steps passed, in order.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    fn step(&mut self, what: impl Into<String>) -> Result<(), SlotError> {
        let what = what.into();
        let n = self.taken + 1;
        if self.fail_at == Some(n) {
            return Err(SlotError::Interrupted { step: n, what });
        }
        self.taken = n;
        self.log.push(what);
        Ok(())
    }
}

/// The runtime's self-test, run after switching.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Shell command (`sh -c`); it sees `ECHOJEPA_BUNDLE` (the new slot's directory) and
    /// `ECHOJEPA_SLOT` (`a` or `b`). Exit status 0 means healthy.
    pub command: String,
    /// Longer than this counts as failed (the command is killed).
    pub timeout: Duration,
}

impl HealthCheck {
    fn run(&self, bundle: &Path, slot: Slot) -> Result<(), String> {
        let mut child = Command::new("sh")
            // Own process group, so a timeout kills the whole check, not just the shell.
            .process_group(0)
            .arg("-c")
            .arg(&self.command)
            .env("ECHOJEPA_BUNDLE", bundle)
            .env("ECHOJEPA_SLOT", slot_name(slot))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `{}`: {e}", self.command))?;
        // Drain output on threads so a chatty check cannot block on a full pipe.
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let pid = child.id();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let waiter = std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(self.timeout) {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => return Err(format!("waiting for `{}`: {e}", self.command)),
            Err(_) => {
                kill_group(pid);
                None
            }
        };
        let _ = waiter.join();
        let mut text = out.join().unwrap_or_default();
        text.extend(err.join().unwrap_or_default());
        let text = String::from_utf8_lossy(&text);
        let tail: String = text
            .trim()
            .chars()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("`{}` exited with {s}: {tail}", self.command)),
            None => Err(format!(
                "`{}` did not finish within {:?}: {tail}",
                self.command, self.timeout
            )),
        }
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) takes plain integers; a negative pid names the process group the
        // child leads (it was started with `process_group(0)`), so nothing else is signalled.
        // The child is not reaped yet (its waiter thread is still blocked), so the id is ours.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// `a` or `b`.
pub fn slot_name(s: Slot) -> &'static str {
    match s {
        Slot::A => "a",
        Slot::B => "b",
    }
}

fn parse_slot(s: &str) -> Option<Slot> {
    match s {
        "a" => Some(Slot::A),
        "b" => Some(Slot::B),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Pending {
    trial: String,
    fallback: Option<String>,
}

/// Result of a successful [`Slots::install`].
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The slot now active.
    pub slot: String,
    /// The slot kept as previous, if any.
    pub previous: Option<String>,
    /// The bundle installed.
    pub bundle: BundleInfo,
    /// Whether a health check ran (and passed).
    pub health_checked: bool,
}

/// Result of [`Slots::recover`].
#[derive(Debug, Clone, Serialize)]
pub struct RecoverReport {
    /// The slot `current` points to now.
    pub current: String,
    /// Its bundle.
    pub bundle: BundleInfo,
    /// What was repaired, in order (empty when all was well).
    pub actions: Vec<String>,
}

/// State of one slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotState {
    /// `a` or `b`.
    pub slot: String,
    /// Refused by the anti-rollback policy (below the floor, or expired), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Whether `current` points here.
    pub current: bool,
    /// The bundle, if the slot holds one that verifies.
    pub bundle: Option<BundleInfo>,
    /// Why not, if it holds something that does not verify.
    pub problem: Option<String>,
}

/// The A/B slots of one cart.
#[derive(Debug, Clone)]
pub struct Slots {
    dir: PathBuf,
    durable: bool,
    overrides: Overrides,
    now_unix: Option<u64>,
}

const CURRENT: &str = "current";
const PENDING: &str = "pending";

fn remove_if_exists(path: &Path) -> Result<bool, SlotError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(path)(e)),
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(io(path))?;
    } else {
        std::fs::remove_file(path).map_err(io(path))?;
    }
    Ok(true)
}

impl Slots {
    /// The slots in `dir` (which need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            durable: true,
            overrides: Overrides::default(),
            now_unix: None,
        }
    }

    /// What the operator explicitly allows past the anti-rollback policy (each use is logged in
    /// `audit.log`).
    pub fn overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// Judges expiry at this time instead of the system clock (tests, audits).
    pub fn at_time(mut self, now_unix: u64) -> Self {
        self.now_unix = Some(now_unix);
        self
    }

    /// The recorded security floor, if any.
    pub fn floor(&self) -> Result<Option<SecurityFloor>, SlotError> {
        Ok(SecurityFloor::load(&self.dir)?)
    }

    fn now(&self) -> u64 {
        self.now_unix.unwrap_or_else(rollback::now_unix)
    }

    /// The policy verdict on `info` with this cart's floor.
    fn policy(&self, info: &BundleInfo) -> Result<Result<Overridden, PolicyViolation>, SlotError> {
        let floor = self.floor()?;
        Ok(rollback::check_terms(
            info.security_version,
            info.not_after_unix,
            floor.as_ref(),
            self.now(),
            self.overrides,
        ))
    }

    /// Appends one line to `audit.log` and warns in the log: an override was used.
    fn audit(&self, action: &str, info: &BundleInfo, what: &Overridden) -> Result<(), SlotError> {
        let reasons: Vec<String> = what.0.iter().map(|v| v.to_string()).collect();
        tracing::warn!(
            action,
            bundle = %info.label,
            reasons = %reasons.join("; "),
            "anti-rollback policy overridden by the operator"
        );
        let line = serde_json::json!({
            "unix": self.now(),
            "action": action,
            "bundle": info.label,
            "manifest_sha256": info.id,
            "security_version": info.security_version,
            "overridden": reasons,
        });
        let path = self.dir.join("audit.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        writeln!(f, "{line}").map_err(io(&path))?;
        self.sync_file(&f, &path)
    }

    /// Records `info` as the floor when it is higher than the recorded one, or when the operator
    /// forced it past the floor (`forced`). Atomic: a new file renamed over the old.
    fn raise_floor(
        &self,
        info: &BundleInfo,
        forced: bool,
        fp: &mut Failpoints,
    ) -> Result<(), SlotError> {
        let current = self.floor()?;
        let needed = match &current {
            None => true,
            Some(f) => {
                info.security_version > f.security_version
                    || (forced && info.security_version != f.security_version)
            }
        };
        if !needed {
            return Ok(());
        }
        fp.step(format!(
            "raise the security floor to {}",
            info.security_version
        ))?;
        let floor = SecurityFloor {
            security_version: info.security_version,
            bundle: info.label.clone(),
            manifest_sha256: info.id.clone(),
            since_unix: self.now(),
        };
        let tmp = self.dir.join(format!("{FLOOR_FILE}.tmp"));
        let path = self.dir.join(FLOOR_FILE);
        let bytes =
            serde_json::to_vec_pretty(&floor).map_err(|e| io(&tmp)(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        self.sync_file(&f, &tmp)?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        self.sync_dir(&self.dir)
    }

    /// With `false`, nothing is fsync'd (files or directories). Only for
    /// scratch directories and tests that simulate power loss with [`Failpoints`]: on a real cart
    /// a crash could then leave a slot whose files are not on disk yet.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), SlotError> {
        if self.durable {
            std::fs::File::open(dir)
                .and_then(|f| f.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }

    fn sync_file(&self, f: &std::fs::File, path: &Path) -> Result<(), SlotError> {
        if self.durable {
            f.sync_all().map_err(io(path))?;
        }
        Ok(())
    }

    /// The slots directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory of a slot.
    pub fn slot_dir(&self, s: Slot) -> PathBuf {
        self.dir.join(slot_name(s))
    }

    /// The slot `current` points to, if it is a valid link to `a` or `b`.
    pub fn current(&self) -> Option<Slot> {
        let target = std::fs::read_link(self.dir.join(CURRENT)).ok()?;
        parse_slot(target.to_str()?)
    }

    fn pending(&self) -> Option<Pending> {
        let bytes = std::fs::read(self.dir.join(PENDING)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Points `current` at `slot` atomically (a new link renamed over the old one).
    fn switch(&self, slot: Slot, fp: &mut Failpoints) -> Result<(), SlotError> {
        let tmp = self.dir.join("current.new");
        fp.step(format!("create link current.new -> {}", slot_name(slot)))?;
        remove_if_exists(&tmp)?;
        std::os::unix::fs::symlink(slot_name(slot), &tmp).map_err(io(&tmp))?;
        fp.step(format!(
            "rename current.new over current ({})",
            slot_name(slot)
        ))?;
        let cur = self.dir.join(CURRENT);
        std::fs::rename(&tmp, &cur).map_err(io(&cur))?;
        self.sync_dir(&self.dir)
    }

    fn write_pending(&self, p: &Pending, fp: &mut Failpoints) -> Result<(), SlotError> {
        let tmp = self.dir.join("pending.tmp");
        let path = self.dir.join(PENDING);
        fp.step("write pending.tmp")?;
        let bytes = serde_json::to_vec(p).map_err(|e| io(&tmp)(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        self.sync_file(&f, &tmp)?;
        fp.step("rename pending.tmp to pending")?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        self.sync_dir(&self.dir)
    }

    fn clear_pending(&self, fp: &mut Failpoints) -> Result<(), SlotError> {
        fp.step("remove pending (commit)")?;
        remove_if_exists(&self.dir.join(PENDING))?;
        self.sync_dir(&self.dir)
    }

    /// Copies one file with fsync; step `n` happens halfway through, so a failure there leaves
    /// a torn file, like power lost mid-write.
    fn copy_file(&self, src: &Path, dst: &Path, fp: &mut Failpoints) -> Result<(), SlotError> {
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(src).map_err(io(src))?;
        fp.step(format!("create {name}"))?;
        let mut f = std::fs::File::create(dst).map_err(io(dst))?;
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half]).map_err(io(dst))?;
        fp.step(format!("write rest of {name}"))?;
        f.write_all(&bytes[half..]).map_err(io(dst))?;
        self.sync_file(&f, dst)
    }

    /// Removes what an interrupted install can leave behind (never a slot or `current`).
    fn remove_leftovers(&self, fp: &mut Failpoints) -> Result<Vec<String>, SlotError> {
        let mut removed = Vec::new();
        for name in [
            ".a.incoming",
            ".b.incoming",
            ".a.old",
            ".b.old",
            "current.new",
            "pending.tmp",
            "security_floor.json.tmp",
        ] {
            let p = self.dir.join(name);
            if std::fs::symlink_metadata(&p).is_ok() {
                fp.step(format!("remove leftover {name}"))?;
                remove_if_exists(&p)?;
                removed.push(format!("removed leftover {name}"));
            }
        }
        if !removed.is_empty() {
            self.sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Installs `bundle` into the inactive slot and switches to it; see the module docs.
    pub fn install(
        &self,
        bundle: &Path,
        verifier: &dyn BundleVerifier,
        health: Option<&HealthCheck>,
        fp: &mut Failpoints,
    ) -> Result<InstallReport, SlotError> {
        // Verify before anything is written.
        let info = verifier
            .verify(bundle)
            .map_err(|reason| SlotError::Refused {
                bundle: bundle.to_path_buf(),
                reason,
            })?;
        let overridden = self.policy(&info)?.map_err(|violation| SlotError::Policy {
            bundle: bundle.to_path_buf(),
            violation,
        })?;
        for f in &info.files {
            if f.is_empty() || f.contains('/') || f == "." || f == ".." {
                return Err(SlotError::Refused {
                    bundle: bundle.to_path_buf(),
                    reason: format!("file name {f:?} is not a plain file name"),
                });
            }
        }
        if !self.dir.is_dir() {
            fp.step("create slots directory")?;
            std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        }
        if std::fs::symlink_metadata(self.dir.join(PENDING)).is_ok() {
            // A previous install was interrupted: settle that first.
            self.recover(verifier, fp)?;
        }
        self.remove_leftovers(fp)?;
        if !overridden.0.is_empty() {
            self.audit("install", &info, &overridden)?;
        }
        let active = self.current();
        let target = active.map(Slot::other).unwrap_or(Slot::A);
        let t = slot_name(target);
        let staging = self.dir.join(format!(".{t}.incoming"));
        fp.step(format!("create .{t}.incoming"))?;
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        for f in &info.files {
            self.copy_file(&bundle.join(f), &staging.join(f), fp)?;
        }
        self.sync_dir(&staging)?;
        let copied = verifier.verify(&staging).map_err(|reason| {
            let _ = std::fs::remove_dir_all(&staging);
            SlotError::CopyCorrupt {
                slot: staging.clone(),
                reason,
            }
        })?;
        if copied.id != info.id {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(SlotError::CopyCorrupt {
                slot: staging,
                reason: format!("copy is bundle {}, source is {}", copied.id, info.id),
            });
        }
        let slot_dir = self.slot_dir(target);
        let old = self.dir.join(format!(".{t}.old"));
        if std::fs::symlink_metadata(&slot_dir).is_ok() {
            fp.step(format!("move {t} aside to .{t}.old"))?;
            std::fs::rename(&slot_dir, &old).map_err(io(&slot_dir))?;
        }
        fp.step(format!("move .{t}.incoming to {t}"))?;
        std::fs::rename(&staging, &slot_dir).map_err(io(&slot_dir))?;
        self.sync_dir(&self.dir)?;
        if std::fs::symlink_metadata(&old).is_ok() {
            fp.step(format!("remove .{t}.old"))?;
            remove_if_exists(&old)?;
            self.sync_dir(&self.dir)?;
        }
        let pending = Pending {
            trial: t.to_owned(),
            fallback: active.map(|s| slot_name(s).to_owned()),
        };
        self.write_pending(&pending, fp)?;
        self.switch(target, fp)?;
        let mut checked = false;
        if let Some(h) = health {
            fp.step(format!("health check of {t}"))?;
            if let Err(detail) = h.run(&self.dir.join(CURRENT), target) {
                let rolled_back_to = match active {
                    Some(prev) => {
                        self.switch(prev, fp)?;
                        slot_name(prev).to_owned()
                    }
                    None => {
                        fp.step("remove current (nothing to fall back to)")?;
                        remove_if_exists(&self.dir.join(CURRENT))?;
                        "nothing (there was no previous bundle)".to_owned()
                    }
                };
                self.clear_pending(fp)?;
                return Err(SlotError::HealthCheckFailed {
                    slot: t.to_owned(),
                    detail,
                    rolled_back_to,
                });
            }
            checked = true;
        }
        self.clear_pending(fp)?;
        self.raise_floor(&info, !overridden.0.is_empty(), fp)?;
        Ok(InstallReport {
            slot: t.to_owned(),
            previous: active.map(|s| slot_name(s).to_owned()),
            bundle: info,
            health_checked: checked,
        })
    }

    /// Boot-time check and repair; see the module docs.
    pub fn recover(
        &self,
        verifier: &dyn BundleVerifier,
        fp: &mut Failpoints,
    ) -> Result<RecoverReport, SlotError> {
        if !self.dir.is_dir() {
            return Err(SlotError::NoBootableSlot {
                dir: self.dir.clone(),
                details: "the slots directory does not exist".into(),
            });
        }
        let mut actions = self.remove_leftovers(fp)?;
        if let Some(p) = self.pending() {
            let trial = parse_slot(&p.trial);
            let fallback = p.fallback.as_deref().and_then(parse_slot);
            let on_trial = trial.is_some() && self.current() == trial;
            if let (true, Some(fb)) = (on_trial, fallback)
                && verifier
                    .verify(&self.slot_dir(fb))
                    .is_ok_and(|info| matches!(self.policy(&info), Ok(Ok(_))))
            {
                self.switch(fb, fp)?;
                actions.push(format!(
                    "slot {} was on trial and never confirmed healthy: rolled back to {}",
                    p.trial,
                    slot_name(fb)
                ));
            }
            fp.step("remove pending")?;
            remove_if_exists(&self.dir.join(PENDING))?;
            self.sync_dir(&self.dir)?;
            actions.push("cleared the pending trial marker".into());
        } else if std::fs::symlink_metadata(self.dir.join(PENDING)).is_ok() {
            fp.step("remove unreadable pending")?;
            remove_if_exists(&self.dir.join(PENDING))?;
            actions.push("removed an unreadable pending marker".into());
        }
        let mut problems = Vec::new();
        let current = self.current();
        let order: Vec<Slot> = match current {
            Some(c) => vec![c, c.other()],
            None => {
                problems.push("`current` is missing or not a link to a or b".to_owned());
                vec![Slot::A, Slot::B]
            }
        };
        for s in order {
            let dir = self.slot_dir(s);
            if !dir.is_dir() {
                problems.push(format!("slot {} is empty", slot_name(s)));
                continue;
            }
            match verifier.verify(&dir) {
                Ok(bundle) => {
                    let overridden = match self.policy(&bundle)? {
                        Ok(o) => o,
                        Err(v) => {
                            problems.push(format!("slot {}: {v}", slot_name(s)));
                            continue;
                        }
                    };
                    if !overridden.0.is_empty() {
                        self.audit("boot", &bundle, &overridden)?;
                    }
                    if current != Some(s) {
                        self.switch(s, fp)?;
                        actions.push(format!("switched current to {}", slot_name(s)));
                    }
                    self.raise_floor(&bundle, !overridden.0.is_empty(), fp)?;
                    return Ok(RecoverReport {
                        current: slot_name(s).to_owned(),
                        bundle,
                        actions,
                    });
                }
                Err(e) => problems.push(format!("slot {}: {e}", slot_name(s))),
            }
        }
        Err(SlotError::NoBootableSlot {
            dir: self.dir.clone(),
            details: problems.join("; "),
        })
    }

    /// Both slots and what they hold.
    pub fn status(&self, verifier: &dyn BundleVerifier) -> Vec<SlotState> {
        let current = self.current();
        // Read once for both slots; an unreadable floor judges nothing here (install refuses).
        let floor = self.floor().ok().flatten();
        [Slot::A, Slot::B]
            .into_iter()
            .map(|s| {
                let dir = self.slot_dir(s);
                let (bundle, problem) = if dir.is_dir() {
                    match verifier.verify(&dir) {
                        Ok(b) => (Some(b), None),
                        Err(e) => (None, Some(e)),
                    }
                } else {
                    (None, None)
                };
                let policy = bundle.as_ref().and_then(|b| {
                    rollback::check_terms(
                        b.security_version,
                        b.not_after_unix,
                        floor.as_ref(),
                        self.now(),
                        Overrides::default(),
                    )
                    .err()
                    .map(|v| v.to_string())
                });
                SlotState {
                    slot: slot_name(s).to_owned(),
                    policy,
                    current: current == Some(s),
                    bundle,
                    problem,
                }
            })
            .collect()
    }

    /// Switches `current` to the other slot if it holds a bundle that verifies.
    pub fn rollback(
        &self,
        verifier: &dyn BundleVerifier,
        fp: &mut Failpoints,
    ) -> Result<RecoverReport, SlotError> {
        let cur = self.current().ok_or_else(|| SlotError::NoBootableSlot {
            dir: self.dir.clone(),
            details: "`current` is not set, nothing to roll back from".into(),
        })?;
        let other = cur.other();
        let bundle =
            verifier
                .verify(&self.slot_dir(other))
                .map_err(|e| SlotError::NoBootableSlot {
                    dir: self.dir.clone(),
                    details: format!("slot {}: {e}", slot_name(other)),
                })?;
        let overridden = self
            .policy(&bundle)?
            .map_err(|violation| SlotError::Policy {
                bundle: self.slot_dir(other),
                violation,
            })?;
        if !overridden.0.is_empty() {
            self.audit("rollback", &bundle, &overridden)?;
        }
        self.switch(other, fp)?;
        self.raise_floor(&bundle, !overridden.0.is_empty(), fp)?;
        Ok(RecoverReport {
            current: slot_name(other).to_owned(),
            bundle,
            actions: vec![format!(
                "switched current from {} to {}",
                slot_name(cur),
                slot_name(other)
            )],
        })
    }
}
