//! The crate-wide worker pool and the static work split used by every parallel kernel.
//!
//! One rayon pool (size: [`KernelSettings::threads`](crate::KernelSettings), else the number of
//! CPUs the process may use) runs all kernels. A parallel region splits its work into exactly one contiguous chunk per thread,
//! so a thread always gets the same share of the output (its panels of weights stay in its own
//! core's cache from one call to the next). With `pin_threads` set (Linux) worker `i`
//! is also pinned to the `i`-th CPU the process may run on, so that share never migrates; this
//! is opt-in because on a machine shared with other busy processes pinning can only hurt.

use std::ops::Range;
use std::sync::OnceLock;

fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let settings = crate::settings::current();
        let n = settings.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        );
        let pin = settings.pin_threads;
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("echojepa-kernel-{i}"))
            .start_handler(move |i| {
                if pin {
                    pin_current_thread(i);
                }
            })
            .build()
            .unwrap_or_else(|_| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .expect("a one-thread pool always builds")
            })
    })
}

/// Number of worker threads the kernels use.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Split `0..n_items` into at most `num_threads()` contiguous chunks of whole `grain`s and run
/// `f(chunk)` for each in parallel. Runs inline when there is only one chunk.
pub fn for_each_chunk<F>(n_items: usize, grain: usize, f: F)
where
    F: Fn(Range<usize>) + Sync,
{
    let grain = grain.max(1);
    let n_grains = n_items.div_ceil(grain);
    let nt = num_threads().min(n_grains).max(1);
    if nt <= 1 {
        if n_items > 0 {
            f(0..n_items);
        }
        return;
    }
    let chunk = |t: usize| {
        let g0 = n_grains * t / nt;
        let g1 = n_grains * (t + 1) / nt;
        (g0 * grain).min(n_items)..(g1 * grain).min(n_items)
    };
    let f = &f;
    // The calling thread runs the first chunk itself instead of handing the whole region to
    // the pool and sleeping until it is done: one thread wake-up fewer per region.
    pool().in_place_scope(|s| {
        for t in 1..nt {
            let r = chunk(t);
            s.spawn(move |_| f(r));
        }
        f(chunk(0));
    });
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
