//! The crate-wide worker threads and the static work split used by every parallel kernel.
//!
//! [`KernelSettings::threads`](crate::KernelSettings) threads (else the number of CPUs the
//! process may use) run all kernels. A region splits its work into exactly one contiguous chunk
//! per thread, so the split (and every result) never depends on timing, and a thread usually
//! gets the same share of the output from one call to the next (the caller of a region claims
//! the first chunk before the workers, whose panels of weights stay in their own cores' caches).
//! The chunks are claimed, not assigned: the caller runs chunks until none is left, so a worker
//! that is slow to wake (a virtual CPU the host has descheduled after the pipeline idled between
//! clips) delays nothing; it finds its chunk taken and goes back to waiting. After a region the
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
/// Waking a sleeping thread measured 50–100 µs on a 2-vCPU virtual machine in one session and
/// milliseconds in another (the host's scheduler decides when a halted virtual CPU runs again);
/// the serial work between two regions of a pass (the encoder's own glue, the heads) can exceed
/// a few hundred microseconds. With 3 ms a worker stays awake through a whole pass; between
/// passes (a clip every few hundred milliseconds on a cart) it sleeps and leaves the cores to
/// capture and preprocessing. The demo encoder started 0.1 s after the previous pass took
/// 5.3–6.6 ms with 3 ms here and 2 ms below, 7.5–8.8 with 300 µs and 50 µs (BENCHMARKS.md).
const SPIN: std::time::Duration = std::time::Duration::from_micros(3000);

/// How long the caller of a region polls for the workers to finish the chunks they claimed
/// before it sleeps until the last one wakes it (and its own wake-up may then take as long as a
/// worker's, above).
const CALLER_SPIN: std::time::Duration = std::time::Duration::from_micros(2000);

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
    /// The current region's epoch (bits 32..64, incremented for every region), its number of
    /// chunks (bits 16..32) and the number claimed so far (bits 0..16). Stored (Release) after
    /// `job` is written for a new region; a chunk is claimed by a compare-exchange of the whole
    /// word, so a thread holding a stale value can never claim a chunk of a later region, and
    /// nobody needs the job to know whether a chunk is left.
    claim: std::sync::atomic::AtomicU64,
    /// The current region (written only by the holder of `dispatch`, before `claim` moves on,
    /// while every chunk of the previous region has finished; read only by a thread that holds
    /// an unfinished chunk of it).
    job: std::cell::UnsafeCell<Job>,
    /// Chunks of the current region that have finished.
    finished: std::sync::atomic::AtomicUsize,
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
    /// chunks the workers hold to finish; the worker finishing the last wakes it when this is
    /// set.
    caller_waiting: std::sync::atomic::AtomicBool,
    done_lock: std::sync::Mutex<()>,
    done: std::sync::Condvar,
}

// SAFETY: `job` is written only by the thread holding `dispatch` while nobody reads it (every
// chunk of the previous region finished, and a chunk of it can no longer be claimed), and read by
// a worker only after it claimed a chunk of the region that published it (Acquire); the caller
// waits for that chunk before it returns. The closure behind `f` is `Sync`.
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
            claim: std::sync::atomic::AtomicU64::new(0),
            job: std::cell::UnsafeCell::new(Job {
                f: &NOOP as &(dyn Fn(Range<usize>) + Sync),
                n_items: 0,
                grain: 1,
                nt: 1,
            }),
            finished: std::sync::atomic::AtomicUsize::new(0),
            panicked: std::sync::atomic::AtomicBool::new(false),
            dispatch: std::sync::Mutex::new(()),
            sleep: std::sync::Mutex::new(()),
            wake: std::sync::Condvar::new(),
            sleepers: std::sync::atomic::AtomicUsize::new(0),
            caller_waiting: std::sync::atomic::AtomicBool::new(false),
            done_lock: std::sync::Mutex::new(()),
            done: std::sync::Condvar::new(),
        });
        // The caller of a region claims its first chunk; workers 1..n help with the others.
        let mut started = 1;
        for w in 1..n {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("echojepa-kernel-{w}"))
                .spawn(move || {
                    if pin {
                        pin_current_thread(w);
                    }
                    worker(&sh);
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

/// Epoch of a `claim` value.
fn epoch_of(claim: u64) -> u64 {
    claim >> 32
}

/// The `claim` value that publishes region `epoch` with `nt` chunks, none claimed.
fn published(epoch: u64, nt: usize) -> u64 {
    (epoch << 32) | ((nt as u64) << 16)
}

/// Claims the next chunk of the region of epoch `epoch`: its index, or `None` when all are taken
/// or the region is over.
fn claim_chunk(sh: &Shared, epoch: u64) -> Option<usize> {
    use std::sync::atomic::Ordering::{AcqRel, Acquire};
    let mut cur = sh.claim.load(Acquire);
    loop {
        let t = (cur & 0xffff) as usize;
        let nt = ((cur >> 16) & 0xffff) as usize;
        if epoch_of(cur) != epoch || t >= nt {
            return None;
        }
        match sh
            .claim
            .compare_exchange_weak(cur, cur + 1, AcqRel, Acquire)
        {
            Ok(_) => return Some(t),
            Err(now) => cur = now,
        }
    }
}

/// Runs chunk `t` of the current region (claimed by this thread) and counts it finished; the
/// thread finishing the last chunk wakes a caller that sleeps on it.
fn run_chunk(sh: &Shared, job: &Job, t: usize) {
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};
    let r = chunk_of(job.n_items, job.grain, job.nt, t);
    // SAFETY: the closure lives until every chunk of its region finished, and ours has not.
    let f = unsafe { &*job.f };
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r))).is_err() {
        sh.panicked.store(true, Relaxed);
    }
    // SeqCst, as the caller's `caller_waiting` store and `finished` load: either it sees the
    // count complete or we see it waiting and wake it.
    if sh.finished.fetch_add(1, SeqCst) + 1 == job.nt && sh.caller_waiting.load(SeqCst) {
        let _g = sh.done_lock.lock().unwrap_or_else(|e| e.into_inner());
        sh.done.notify_all();
    }
}

fn worker(sh: &Shared) {
    use std::sync::atomic::Ordering::{AcqRel, Acquire, SeqCst};
    let mut seen = 0u64;
    loop {
        // Poll for the next region for a while, then sleep until one is published.
        let t0 = std::time::Instant::now();
        let mut polls = 0u32;
        loop {
            let e = epoch_of(sh.claim.load(Acquire));
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
            while epoch_of(sh.claim.load(SeqCst)) == seen {
                guard = sh.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            drop(guard);
            sh.sleepers.fetch_sub(1, AcqRel);
        }
        #[cfg(test)]
        tests::stall_point();
        // A worker that comes late (all chunks taken, or the region over) has nothing to do.
        let Some(t) = claim_chunk(sh, seen) else {
            continue;
        };
        // SAFETY: we hold chunk `t` of region `seen` (claimed with Acquire after the Release
        // store that published the job), so the caller has not moved on and `job` is its job.
        let job = unsafe { *sh.job.get() };
        run_chunk(sh, &job, t);
        while let Some(t) = claim_chunk(sh, seen) {
            run_chunk(sh, &job, t);
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
    use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
    let grain = grain.max(1);
    let p = pool();
    // (a region has at most 65535 chunks: the count lives in 16 bits of `claim`)
    let nt = p.threads.min(n_items.div_ceil(grain)).clamp(1, 0xffff);
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
    // SAFETY: only the lifetime is erased; we wait below until every chunk has finished, and no
    // chunk of this region can be claimed after that.
    let fp: *const (dyn Fn(Range<usize>) + Sync) = unsafe { std::mem::transmute(fr) };
    let job = Job {
        f: fp,
        n_items,
        grain,
        nt,
    };
    // SAFETY: we hold `dispatch` and every chunk of the previous region finished (and all were
    // claimed), so nobody reads `job` now.
    unsafe { *sh.job.get() = job };
    sh.panicked.store(false, Relaxed);
    sh.finished.store(0, Relaxed);
    // (after 2^32 regions the epoch wraps to 0, which the workers' last seen one is not)
    let epoch = (epoch_of(sh.claim.load(Relaxed)) + 1) & 0xffff_ffff;
    // SeqCst here and in the worker's sleep path: either the worker sees the new epoch before
    // it waits, or we see it counted as a sleeper and wake it.
    sh.claim.store(published(epoch, nt), SeqCst);
    if sh.sleepers.load(SeqCst) > 0 {
        let _g = sh.sleep.lock().unwrap_or_else(|e| e.into_inner());
        sh.wake.notify_all();
    }
    // Run chunks until none is left (the first, and any a late worker has not claimed yet).
    // A panic in ours is kept for after the others finished: they may still use the closure.
    let mut mine = Ok(());
    while let Some(t) = claim_chunk(sh, epoch) {
        let r = chunk_of(n_items, grain, nt, t);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r)));
        if res.is_err() && mine.is_ok() {
            mine = res;
        }
        sh.finished.fetch_add(1, SeqCst);
    }
    // Poll briefly for the chunks workers hold (they are usually a few microseconds behind),
    // then sleep until the last one wakes us: a worker whose core another thread holds
    // (capture, the live view) must not also find this one busy polling.
    let t0 = std::time::Instant::now();
    let mut polls = 0u32;
    while sh.finished.load(Acquire) != nt {
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(64) || t0.elapsed() < CALLER_SPIN {
            std::hint::spin_loop();
            continue;
        }
        let mut g = sh.done_lock.lock().unwrap_or_else(|e| e.into_inner());
        sh.caller_waiting.store(true, SeqCst);
        while sh.finished.load(SeqCst) != nt {
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

    /// While closed, a worker that sees a new region waits here before it claims a chunk, as a
    /// virtual CPU the host has not scheduled yet would; the test that closes it opens it.
    static GATE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    static GATE_OPENED: std::sync::Condvar = std::sync::Condvar::new();
    /// Serialises the tests that close `GATE` with the others (the pool is shared).
    static POOL_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    pub(super) fn stall_point() {
        let mut closed = GATE.lock().unwrap_or_else(|e| e.into_inner());
        while *closed {
            closed = GATE_OPENED.wait(closed).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn set_gate(closed: bool) {
        *GATE.lock().unwrap_or_else(|e| e.into_inner()) = closed;
        GATE_OPENED.notify_all();
    }

    /// A region whose workers do not come runs every chunk on the calling thread, each once, in
    /// the same chunks as always; the pool is intact afterwards (the held workers find nothing
    /// left and claim nothing of the next region's).
    #[test]
    fn a_late_worker_delays_nothing() {
        let _serial = POOL_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        if num_threads() < 2 {
            return;
        }
        let me = std::thread::current().id();
        let want: Vec<Range<usize>> = (0..num_threads())
            .map(|t| chunk_of(100, 1, num_threads(), t))
            .collect();
        // Workers that see the region stop at the gate, so only the caller can claim chunks.
        // (A region started while another test's holds the pool runs inline, as one chunk:
        // try again.)
        set_gate(true);
        // If the caller waited for a held worker the region would never end: a watchdog opens
        // the gate after 10 s, so that the test fails below instead of hanging.
        let (done, watch) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watch
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_err()
            {
                set_gate(false);
            }
        });
        let mut ran = Vec::new();
        for _ in 0..10_000 {
            let seen: std::sync::Mutex<Vec<(Range<usize>, std::thread::ThreadId)>> =
                Default::default();
            for_each_chunk(100, 1, |r| {
                seen.lock().unwrap().push((r, std::thread::current().id()));
            });
            ran = seen.into_inner().unwrap();
            if ran.len() > 1 {
                break;
            }
            std::thread::yield_now();
        }
        set_gate(false);
        let _ = done.send(());
        let _ = watchdog.join();
        ran.sort_by_key(|(r, _)| r.start);
        assert_eq!(ran.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(), want);
        assert!(
            ran.iter().all(|(_, id)| *id == me),
            "a chunk waited for a worker"
        );
        // the released workers find a finished region; the next ones cover everything
        for _ in 0..50 {
            covers(1000, 8);
        }
    }

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
        let _serial = POOL_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        for (n, g) in [(0, 1), (1, 1), (2, 1), (7, 3), (64, 8), (1000, 24), (5, 0)] {
            covers(n, g);
        }
    }

    /// Regions from several threads at once, regions started inside a chunk, and regions after
    /// the workers went to sleep all finish with every index covered once.
    #[test]
    fn concurrent_nested_and_after_sleep() {
        let _serial = POOL_TESTS.lock().unwrap_or_else(|e| e.into_inner());
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
        let _serial = POOL_TESTS.lock().unwrap_or_else(|e| e.into_inner());
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
