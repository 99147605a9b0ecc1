//! The crate-wide worker threads and the static work split used by every parallel kernel.
//!
//! [`KernelSettings::threads`](crate::KernelSettings) threads (else the number of CPUs the
//! process may use) run all kernels: the thread that starts a parallel region runs its first
//! chunk and the pool's workers the others. A region splits its work into exactly one
//! contiguous chunk per thread, so a thread always gets the same share of the output (its panels
//! of weights stay in its own core's cache from one call to the next). After a region the
//! workers poll for the next one for `SPIN` (300 µs) before they sleep: the regions of one
//! encoder pass (about ten per block) follow each other within microseconds, and waking a
//! sleeping thread costs more than many of them take. With `pin_threads` set (Linux) worker `i` is also pinned
//! to the `i`-th CPU the process may run on, so that share never migrates; this is opt-in
//! because on a machine shared with other busy processes pinning can only hurt.
//!
//! One region runs on the pool at a time. A region started while another runs (from another
//! thread, or from inside a chunk) runs on its own thread, whole; results are the same.

use std::ops::Range;
use std::sync::OnceLock;

/// How long a worker keeps polling for the next region after finishing one before it sleeps.
/// Waking a sleeping thread measured 50–100 µs on a 2-vCPU virtual machine (a 392-row layer
/// norm took longer on two threads than on one); between passes (a clip every few hundred
/// milliseconds on a cart) the workers sleep and leave the cores to capture and preprocessing.
const SPIN: std::time::Duration = std::time::Duration::from_micros(300);

/// How long the caller of a region polls for the workers to finish their chunks before it sleeps
/// until the last one wakes it.
const CALLER_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// One parallel region: `f` over chunk `t` of `n_items` in `nt` chunks of whole `grain`s.
#[derive(Clone, Copy)]
struct Job {
    /// The region's closure, its lifetime erased: [`for_each_chunk`] does not return before
    /// every worker has finished with it.
    f: *const (dyn Fn(Range<usize>) + Sync),
    n_items: usize,
    grain: usize,
    nt: usize,
}

/// State shared by the caller of a region and the workers.
struct Shared {
    /// Incremented (Release) after `job` is written for a new region.
    epoch: std::sync::atomic::AtomicU64,
    /// The current region (written only by the holder of `dispatch`, before `epoch` moves).
    job: std::cell::UnsafeCell<Job>,
    /// Workers that have not yet finished the current region.
    pending: std::sync::atomic::AtomicUsize,
    /// A chunk of the current region panicked.
    panicked: std::sync::atomic::AtomicBool,
    /// One region at a time; a caller that finds it taken (another thread's region, or a
    /// region started from inside a chunk) runs its region on its own thread.
    dispatch: std::sync::Mutex<()>,
    /// Sleeping workers wait here for `epoch` to move.
    sleep: std::sync::Mutex<()>,
    wake: std::sync::Condvar,
    /// Workers asleep (or about to be): the caller only takes `sleep` when some are.
    sleepers: std::sync::atomic::AtomicUsize,
    /// The caller of the current region waits on `done` (after its own poll budget) for the
    /// last worker to finish; that worker wakes it when this is set.
    caller_waiting: std::sync::atomic::AtomicBool,
    done_lock: std::sync::Mutex<()>,
    done: std::sync::Condvar,
}

// SAFETY: `job` is written only by the thread holding `dispatch` while no worker reads it (all
// finished the previous region: `pending` is 0), and read by workers after the Acquire load of
// the `epoch` that published it; the closure behind `f` is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above.
unsafe impl Send for Shared {}

struct Pool {
    threads: usize,
    shared: std::sync::Arc<Shared>,
}

/// The job slot's value before the first region.
static NOOP: fn(Range<usize>) = |_| {};

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let settings = crate::settings::current();
        let n = settings.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        );
        let pin = settings.pin_threads;
        let shared = std::sync::Arc::new(Shared {
            epoch: std::sync::atomic::AtomicU64::new(0),
            job: std::cell::UnsafeCell::new(Job {
                f: &NOOP as &(dyn Fn(Range<usize>) + Sync),
                n_items: 0,
                grain: 1,
                nt: 1,
            }),
            pending: std::sync::atomic::AtomicUsize::new(0),
            panicked: std::sync::atomic::AtomicBool::new(false),
            dispatch: std::sync::Mutex::new(()),
            sleep: std::sync::Mutex::new(()),
            wake: std::sync::Condvar::new(),
            sleepers: std::sync::atomic::AtomicUsize::new(0),
            caller_waiting: std::sync::atomic::AtomicBool::new(false),
            done_lock: std::sync::Mutex::new(()),
            done: std::sync::Condvar::new(),
        });
        // The caller of a region runs its first chunk; workers 1..n the others.
        let mut started = 1;
        for w in 1..n {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("echojepa-kernel-{w}"))
                .spawn(move || {
                    if pin {
                        pin_current_thread(w);
                    }
                    worker(&sh, w);
                });
            if spawned.is_err() {
                break; // fewer threads, same results
            }
            started += 1;
        }
        Pool {
            threads: started,
            shared,
        }
    })
}

/// Chunk `t` of `nt` over `n_items` in whole `grain`s.
fn chunk_of(n_items: usize, grain: usize, nt: usize, t: usize) -> Range<usize> {
    let n_grains = n_items.div_ceil(grain);
    let g0 = n_grains * t / nt;
    let g1 = n_grains * (t + 1) / nt;
    (g0 * grain).min(n_items)..(g1 * grain).min(n_items)
}

fn worker(sh: &Shared, w: usize) {
    use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, SeqCst};
    let mut seen = 0u64;
    loop {
        // Poll for the next region for a while, then sleep until one is published.
        let t0 = std::time::Instant::now();
        let mut polls = 0u32;
        loop {
            let e = sh.epoch.load(Acquire);
            if e != seen {
                seen = e;
                break;
            }
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(64) || t0.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            sh.sleepers.fetch_add(1, SeqCst);
            let mut guard = sh.sleep.lock().unwrap_or_else(|e| e.into_inner());
            while sh.epoch.load(SeqCst) == seen {
                guard = sh.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            drop(guard);
            sh.sleepers.fetch_sub(1, AcqRel);
        }
        // SAFETY: published by the Release increment of `epoch` we just Acquire-loaded; the
        // caller keeps the closure alive until `pending` reaches 0, which we only signal after
        // our last use of it.
        let job = unsafe { *sh.job.get() };
        if w < job.nt {
            let r = chunk_of(job.n_items, job.grain, job.nt, w);
            // SAFETY: as above.
            let f = unsafe { &*job.f };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r))).is_err() {
                sh.panicked.store(true, Relaxed);
            }
        }
        // SeqCst, as the caller's `caller_waiting` store and `pending` load: either it sees
        // the count reach 0 or we see it waiting and wake it.
        if sh.pending.fetch_sub(1, SeqCst) == 1 && sh.caller_waiting.load(SeqCst) {
            let _g = sh.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.done.notify_all();
        }
    }
}

/// Number of worker threads the kernels use (the calling thread counted).
pub fn num_threads() -> usize {
    pool().threads
}

/// Split `0..n_items` into at most `num_threads()` contiguous chunks of whole `grain`s and run
/// `f(chunk)` for each in parallel, the first on the calling thread. Runs inline when there is
/// only one chunk, and when the pool is busy with another region (another thread's, or this
/// one's from inside a chunk).
pub fn for_each_chunk<F>(n_items: usize, grain: usize, f: F)
where
    F: Fn(Range<usize>) + Sync,
{
    use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
    let grain = grain.max(1);
    let p = pool();
    let nt = p.threads.min(n_items.div_ceil(grain)).max(1);
    let guard = if nt > 1 {
        match p.shared.dispatch.try_lock() {
            Ok(g) => Some(g),
            // A chunk panicked in an earlier region; the pool itself is intact.
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    } else {
        None
    };
    let Some(_guard) = guard else {
        if n_items > 0 {
            f(0..n_items);
        }
        return;
    };
    let sh = &*p.shared;
    let fr: &(dyn Fn(Range<usize>) + Sync) = &f;
    // SAFETY: only the lifetime is erased; we wait below until no worker can still use it.
    let fp: *const (dyn Fn(Range<usize>) + Sync) = unsafe { std::mem::transmute(fr) };
    // SAFETY: we hold `dispatch` and every worker finished the previous region (`pending` was
    // 0 when it returned), so nobody reads `job` now.
    unsafe {
        *sh.job.get() = Job {
            f: fp,
            n_items,
            grain,
            nt,
        };
    }
    sh.panicked.store(false, Relaxed);
    // Every worker acknowledges every region (those beyond `nt` with nothing to do), so that
    // none can still be reading `job` when the next region overwrites it.
    sh.pending.store(p.threads - 1, Release);
    // SeqCst here and in the worker's sleep path: either the worker sees the new epoch before
    // it waits, or we see it counted as a sleeper and wake it.
    sh.epoch.fetch_add(1, SeqCst);
    if sh.sleepers.load(SeqCst) > 0 {
        let _g = sh.sleep.lock().unwrap_or_else(|e| e.into_inner());
        sh.wake.notify_all();
    }
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f(chunk_of(n_items, grain, nt, 0))
    }));
    // Poll briefly for the workers (they are usually a few microseconds behind), then sleep
    // until the last one wakes us: a worker whose core another thread holds (capture, the
    // live view) must not also find this one busy polling.
    let t0 = std::time::Instant::now();
    let mut polls = 0u32;
    while sh.pending.load(Acquire) != 0 {
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(64) || t0.elapsed() < CALLER_SPIN {
            std::hint::spin_loop();
            continue;
        }
        let mut g = sh.done_lock.lock().unwrap_or_else(|e| e.into_inner());
        sh.caller_waiting.store(true, SeqCst);
        while sh.pending.load(SeqCst) != 0 {
            g = sh.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        sh.caller_waiting.store(false, SeqCst);
        break;
    }
    if let Err(e) = mine {
        std::panic::resume_unwind(e);
    }
    if sh.panicked.load(Relaxed) {
        panic!("a kernel worker thread panicked");
    }
}
/// Run `f(i)` for every `i` in `0..n` on the pool, one contiguous block of indices per thread.
pub fn for_each_index<F>(n: usize, f: F)
where
    F: Fn(usize) + Sync,
{
    for_each_chunk(n, 1, |r| r.for_each(&f));
}

/// A raw pointer into one output buffer that parallel chunks may share, each writing only its
/// own disjoint part of the buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(*mut f32);

impl SharedMut {
    pub(crate) fn new(p: *mut f32) -> Self {
        Self(p)
    }

    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: only used to hand disjoint regions of one buffer to pool threads.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

/// Pin the calling thread to the `i`-th CPU of the process's affinity mask (Linux only; a
/// failure leaves the thread unpinned).
#[cfg(target_os = "linux")]
fn pin_current_thread(i: usize) {
    // SAFETY: cpu_set_t is plain data; the libc calls only read/write the set we pass.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        if cpus.is_empty() {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus[i % cpus.len()], &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_current_thread(_i: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every index exactly once, in whole grains, however many threads.
    fn covers(n: usize, grain: usize) {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        for_each_chunk(n, grain, |r| {
            assert!(
                r.start % grain.max(1) == 0 || r.start == n,
                "chunk {r:?} not on a grain"
            );
            for i in r {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(
            hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
            "n {n} grain {grain}"
        );
    }

    #[test]
    fn regions_cover_every_index_once() {
        for (n, g) in [(0, 1), (1, 1), (2, 1), (7, 3), (64, 8), (1000, 24), (5, 0)] {
            covers(n, g);
        }
    }

    /// Regions from several threads at once, regions started inside a chunk, and regions after
    /// the workers went to sleep all finish with every index covered once.
    #[test]
    fn concurrent_nested_and_after_sleep() {
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for i in 0..200 {
                        covers(50 + t + i % 7, 1 + i % 4);
                    }
                });
            }
        });
        let total = AtomicUsize::new(0);
        for_each_chunk(8, 1, |outer| {
            for _ in outer {
                for_each_chunk(10, 1, |inner| {
                    total.fetch_add(inner.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 80);
        for _ in 0..3 {
            std::thread::sleep(SPIN * 20);
            covers(100, 1);
        }
    }

    /// A panic in any chunk reaches the caller, and the pool runs the next region normally.
    #[test]
    fn a_panicking_chunk_panics_the_caller_and_the_pool_goes_on() {
        for bad in [0, 99] {
            let r = std::panic::catch_unwind(|| {
                for_each_chunk(100, 1, |r| {
                    if r.contains(&bad) {
                        panic!("chunk with {bad}");
                    }
                })
            });
            assert!(r.is_err(), "index {bad}");
            covers(100, 1);
        }
    }
}
