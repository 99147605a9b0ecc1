//! Every committed corpus file and every crash ever found (fuzz/crashes/TARGET/) runs through
//! its target: the crashes are the regression tests of the bugs they found.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use echojepa_fuzz::runner::{self, Watchdog};
use echojepa_fuzz::{TARGETS, find};

#[global_allocator]
static ALLOC: echojepa_fuzz::alloc::CappedAlloc = echojepa_fuzz::alloc::CappedAlloc;

/// One target at a time: the allocation cap and the watchdog name the input being run.
static SERIAL: Mutex<()> = Mutex::new(());

fn replay(name: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let target = find(name).unwrap_or_else(|| panic!("no target {name}"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (corpus, crashes) = runner::target_dirs(dir, target);
    let seeds = runner::files_in(&corpus).expect("corpus directory readable");
    assert!(!seeds.is_empty(), "{}: no seed corpus", corpus.display());
    let kept = runner::files_in(&crashes).expect("crash directory readable");
    let _watchdog = Watchdog::start(Duration::from_secs(60)).expect("watchdog thread");
    let mut failures = Vec::new();
    let mut outcomes = std::collections::BTreeSet::new();
    for f in seeds.iter().chain(&kept) {
        let data = std::fs::read(f).expect("corpus file readable");
        // Over-cap allocations and hangs abort the test binary, naming the input.
        match runner::execute_tracked(target, &data, None) {
            Ok(o) => {
                outcomes.insert(o);
            }
            Err(msg) => failures.push(format!("{}: {msg}", f.display())),
        }
    }
    echojepa_fuzz::targets::remove_scratch();
    assert!(failures.is_empty(), "{name}: {}", failures.join("\n"));
    eprintln!(
        "{name}: {} seeds, {} kept crashes, {} distinct outcomes",
        seeds.len(),
        kept.len(),
        outcomes.len()
    );
}

#[test]
fn every_target_has_a_test_here() {
    let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "mp4", "avi", "h264", "pt", "bundle", "board", "serial", "http"
        ]
    );
}

#[test]
fn mp4() {
    replay("mp4");
}

#[test]
fn avi() {
    replay("avi");
}

#[test]
fn h264() {
    replay("h264");
}

#[test]
fn pt() {
    replay("pt");
}

#[test]
fn bundle() {
    replay("bundle");
}

#[test]
fn board() {
    replay("board");
}

#[test]
fn serial() {
    replay("serial");
}

#[test]
fn http() {
    replay("http");
}
