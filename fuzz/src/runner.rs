//! The fuzzing loop: replay the corpus, then mutate it until the time is up; stop at the first
//! panic, hang or over-cap allocation and keep the input that caused it.
//!
//! Feedback: there is no code-coverage instrumentation (that needs nightly sanitizer coverage
//! or a `-C instrument-coverage` build that is far slower). Instead every target returns a short
//! description of its outcome (the error message with numbers blanked, or what was decoded),
//! and an input whose outcome was never seen before joins the in-memory corpus. A new error
//! message usually means a new branch of the parser was reached, so this steers mutation
//! towards deeper code at almost no cost; it cannot see branches that end in the same outcome.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::alloc::Violation;
use crate::mutate::{Rng, mutate};
use crate::targets::Target;

/// Why a run could not be carried out (a crash found is not an error: see [`RunReport`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Settings of one [`run`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long to mutate after the corpus was replayed.
    pub duration: Duration,
    pub seed: u64,
    /// An input running longer than this is a hang.
    pub timeout: Duration,
    /// The fuzz directory holding `corpus/TARGET` and `crashes/TARGET`.
    pub dir: PathBuf,
    /// Write inputs with a new outcome into `corpus/TARGET` (to grow the committed corpus).
    pub save_new: bool,
}

/// What a run found.
#[derive(Debug)]
pub struct RunReport {
    /// Inputs executed (seeds included).
    pub execs: u64,
    /// Seeds loaded from the corpus and crash directories.
    pub seeds: usize,
    /// Distinct outcomes seen.
    pub outcomes: usize,
    /// The crash that stopped the run, if any.
    pub crash: Option<Crash>,
}

/// A panicking input, saved.
#[derive(Debug)]
pub struct Crash {
    pub file: PathBuf,
    pub message: String,
}

/// The input being run, for the hang watchdog and the allocation cap.
struct Current {
    target: &'static str,
    crash_dir: Option<PathBuf>,
    input: Vec<u8>,
    started: Option<Instant>,
}

static CURRENT: Mutex<Current> = Mutex::new(Current {
    target: "",
    crash_dir: None,
    input: Vec::new(),
    started: None,
});

fn set_current(target: &'static str, crash_dir: Option<&Path>, data: &[u8]) {
    let mut c = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    c.target = target;
    if c.crash_dir.as_deref() != crash_dir {
        c.crash_dir = crash_dir.map(Path::to_path_buf);
    }
    c.input.clear();
    c.input.extend_from_slice(data);
    c.started = Some(Instant::now());
}

fn clear_current() {
    let mut c = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    c.started = None;
}

/// FNV-1a, for crash file names.
pub fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes `data` as `DIR/KIND-HASH` and returns the path.
pub fn save_input(dir: &Path, kind: &str, data: &[u8]) -> Result<PathBuf, RunError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join(format!("{kind}-{:016x}", fnv64(data)));
    std::fs::write(&path, data).map_err(io_err(&path))?;
    Ok(path)
}

fn report_current(kind: &str, what: &str) {
    // try_lock: the allocating thread may be the one holding the lock.
    let saved = match CURRENT.try_lock() {
        Ok(c) if c.started.is_some() => {
            let label = format!("target `{}`, {} byte input", c.target, c.input.len());
            match &c.crash_dir {
                Some(dir) => match save_input(dir, kind, &c.input) {
                    Ok(p) => format!("{label}, saved as {}", p.display()),
                    Err(e) => format!("{label}, not saved: {e}"),
                },
                None => label,
            }
        }
        _ => "no input recorded".to_string(),
    };
    eprintln!("echojepa-fuzz: {what} ({saved})");
}

/// Called by [`crate::alloc::CappedAlloc`] when it refuses an allocation: saves the current
/// input as `oom-HASH` and aborts (a global allocator must not unwind).
pub fn on_allocation_violation(v: Violation) -> ! {
    report_current("oom", &format!("{v}"));
    eprintln!("{}", std::backtrace::Backtrace::force_capture());
    std::process::abort()
}

/// Runs `data` through `target`, turning a panic into `Err(message)`.
pub fn execute(target: &Target, data: &[u8]) -> Result<String, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(data))).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic with a non-string payload".into())
    })
}

/// Runs one input with the watchdog and allocation cap attributing problems to it;
/// `crash_dir` is where an over-cap or hanging input is saved (`None`: only reported).
pub fn execute_tracked(
    target: &'static Target,
    data: &[u8],
    crash_dir: Option<&Path>,
) -> Result<String, String> {
    set_current(target.name, crash_dir, data);
    let r = execute(target, data);
    clear_current();
    r
}

/// A thread that ends the process when an input runs past `timeout`; stops when dropped.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(timeout: Duration) -> Result<Self, RunError> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    let late = CURRENT
                        .lock()
                        .map(|c| c.started.is_some_and(|t| t.elapsed() > timeout))
                        .unwrap_or(false);
                    if late {
                        report_current(
                            "timeout",
                            &format!("an input ran longer than {} ms", timeout.as_millis()),
                        );
                        std::process::exit(70);
                    }
                }
            })
            .map_err(|e| RunError::Io {
                path: PathBuf::from("<watchdog thread>"),
                source: e,
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The files of `dir` in name order (none if it does not exist); dot files are skipped.
pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>, RunError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type().map_err(io_err(&entry.path()))?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// `corpus/TARGET` and `crashes/TARGET` under the fuzz directory.
pub fn target_dirs(dir: &Path, target: &Target) -> (PathBuf, PathBuf) {
    (
        dir.join("corpus").join(target.name),
        dir.join("crashes").join(target.name),
    )
}

/// Replays the corpus and the kept crashes, then mutates for `opts.duration`.
pub fn run(target: &'static Target, opts: &RunOptions) -> Result<RunReport, RunError> {
    let (corpus_dir, crash_dir) = target_dirs(&opts.dir, target);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for f in files_in(&corpus_dir)?.iter().chain(&files_in(&crash_dir)?) {
        corpus.push(std::fs::read(f).map_err(io_err(f))?);
    }
    let seeds = corpus.len();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let _watchdog = Watchdog::start(opts.timeout)?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut execs = 0u64;
    let crash = |data: &[u8], message: String| -> Result<Option<Crash>, RunError> {
        let file = save_input(&crash_dir, "crash", data)?;
        Ok(Some(Crash { file, message }))
    };
    for i in 0..corpus.len() {
        execs += 1;
        match execute_tracked(target, &corpus[i], Some(&crash_dir)) {
            Ok(outcome) => {
                seen.insert(outcome);
            }
            Err(msg) => {
                let c = crash(&corpus[i], msg)?;
                return Ok(RunReport {
                    execs,
                    seeds,
                    outcomes: seen.len(),
                    crash: c,
                });
            }
        }
    }
    let mut rng = Rng::new(opts.seed);
    let deadline = Instant::now() + opts.duration;
    let mut data = Vec::new();
    while Instant::now() < deadline {
        let pick = rng.below(corpus.len());
        let other = rng.below(corpus.len());
        data.clear();
        data.extend_from_slice(&corpus[pick]);
        mutate(
            &mut rng,
            &mut data,
            &corpus[other],
            target.dict,
            target.max_len,
        );
        execs += 1;
        match execute_tracked(target, &data, Some(&crash_dir)) {
            Ok(outcome) => {
                if !seen.contains(&outcome) {
                    seen.insert(outcome);
                    if corpus.len() < 10_000 {
                        corpus.push(data.clone());
                    }
                    if opts.save_new {
                        save_input(&corpus_dir, "new", &data)?;
                    }
                }
            }
            Err(msg) => {
                let c = crash(&data, msg)?;
                return Ok(RunReport {
                    execs,
                    seeds,
                    outcomes: seen.len(),
                    crash: c,
                });
            }
        }
    }
    Ok(RunReport {
        execs,
        seeds,
        outcomes: seen.len(),
        crash: None,
    })
}
