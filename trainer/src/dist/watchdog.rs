//! A timer for blocking collective calls that cannot be interrupted (`MPI_Allreduce`, an NCCL
//! all-reduce waited on by a stream synchronise, NCCL's communicator setup). A rank that hangs
//! without exiting would hold the others forever; the engines arm this around each blocking call,
//! and when one waits longer than the timeout the process ends with an error, which makes the
//! launcher (mpirun, torchrun, srun) stop the whole job.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Armed: since when the current collective call waits; `None` while no call is in flight.
type Armed = Arc<(Mutex<Option<Instant>>, Condvar)>;

/// Ends the process when one collective call waits longer than the timeout.
pub struct Watchdog {
    armed: Armed,
}

impl Watchdog {
    /// Exits the process with status 3 and a message naming `rank` of `world` when a call waits
    /// longer than `timeout`.
    pub fn start(timeout: Duration, rank: usize, world: usize) -> Self {
        Self::start_with(timeout, move |waited| {
            eprintln!(
                "error: rank {rank} of {world} waited {:.0} s in an all-reduce (the \
                 collective timeout); another rank has stalled or died, stopping the \
                 job (the first ranks to report waited; a rank that hung inside an \
                 all-reduce may report too, later, when the job is torn down)",
                waited.as_secs_f64()
            );
            std::process::exit(3);
        })
    }

    /// Calls `expire` (once) with how long the call has waited when one call waits longer than
    /// `timeout`; [`Watchdog::start`] exits the process there, tests record it.
    pub fn start_with(timeout: Duration, expire: impl FnOnce(Duration) + Send + 'static) -> Self {
        let armed: Armed = Arc::default();
        let shared = armed.clone();
        std::thread::spawn(move || {
            let (lock, cv) = &*shared;
            let mut since = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match *since {
                    None => since = cv.wait(since).unwrap_or_else(|p| p.into_inner()),
                    Some(t) if t.elapsed() >= timeout => {
                        let waited = t.elapsed();
                        drop(since);
                        expire(waited);
                        return;
                    }
                    Some(t) => {
                        let left = timeout.saturating_sub(t.elapsed());
                        since = cv
                            .wait_timeout(since, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
            }
        });
        Self { armed }
    }

    /// Arms the timer (a blocking call starts now).
    pub fn arm(&self) {
        self.set(Some(Instant::now()));
    }

    /// Disarms it (the call returned).
    pub fn disarm(&self) {
        self.set(None);
    }

    /// Runs `f` with the timer armed.
    pub fn guard<T>(&self, f: impl FnOnce() -> T) -> T {
        self.arm();
        let out = f();
        self.disarm();
        out
    }

    fn set(&self, v: Option<Instant>) {
        let (lock, cv) = &*self.armed;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = v;
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_call_that_waits_too_long_expires_and_a_quick_one_does_not() {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::start_with(Duration::from_millis(200), move |w| {
            let _ = tx.send(w);
        });
        // quick calls, each well within the timeout, even though together they take longer
        for _ in 0..5 {
            dog.guard(|| std::thread::sleep(Duration::from_millis(60)));
        }
        assert!(rx.try_recv().is_err(), "expired on quick calls");
        // idle time with nothing armed does not count
        std::thread::sleep(Duration::from_millis(300));
        assert!(rx.try_recv().is_err(), "expired while disarmed");
        dog.arm();
        let waited = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a call that hangs expires");
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
    }
}
