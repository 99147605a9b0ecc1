//! A global allocator that turns an absurd allocation into a reported finding.
//!
//! [`CappedAlloc`] forwards to the system allocator but refuses any single allocation above
//! [`SINGLE_CAP`] bytes, and any allocation that would take the bytes live in the process above
//! [`LIVE_CAP`]. A refused allocation must not unwind (a global allocator may not panic), so it
//! calls [`crate::runner::on_allocation_violation`], which saves the input being run into the
//! crash directory and aborts the process with a message naming the size. Without the cap a
//! length field that declares 4 GiB would either pass unnoticed (lazily mapped pages) or get the
//! fuzzer OOM-killed without saying which input did it.
//!
//! Install it in a binary or test with
//! `#[global_allocator] static A: echojepa_fuzz::alloc::CappedAlloc = echojepa_fuzz::alloc::CappedAlloc;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Largest single allocation allowed: 256 MiB (a full-size 8192×8192 RGB frame is 192 MiB).
pub const SINGLE_CAP: usize = 256 << 20;
/// Largest number of bytes live at once: 3 GiB.
pub const LIVE_CAP: usize = 3 << 30;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Set once a violation is being reported: the report itself allocates, unchecked.
static REPORTING: AtomicBool = AtomicBool::new(false);

/// What the allocator refused.
#[derive(Debug, Clone, Copy)]
pub struct Violation {
    /// The size asked for.
    pub size: usize,
    /// Bytes live before the request.
    pub live: usize,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.size > SINGLE_CAP {
            write!(
                f,
                "an allocation of {} bytes (cap {SINGLE_CAP} per allocation)",
                self.size
            )
        } else {
            write!(
                f,
                "an allocation of {} bytes with {} bytes live (cap {LIVE_CAP} live)",
                self.size, self.live
            )
        }
    }
}

/// Bytes currently allocated through [`CappedAlloc`].
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The capped system allocator.
pub struct CappedAlloc;

impl CappedAlloc {
    #[inline]
    fn check(&self, size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed);
        if (size > SINGLE_CAP || live.saturating_add(size) > LIVE_CAP)
            && !REPORTING.swap(true, Ordering::SeqCst)
        {
            crate::runner::on_allocation_violation(Violation { size, live });
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's layout and pointer unchanged; the
// bookkeeping only counts bytes, and a refused request never returns (the process aborts).
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            self.check(new_size - layout.size());
            if new_size > SINGLE_CAP && !REPORTING.swap(true, Ordering::SeqCst) {
                crate::runner::on_allocation_violation(Violation {
                    size: new_size,
                    live: live_bytes(),
                });
            }
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
