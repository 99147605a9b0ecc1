//! The pipeline's notion of time. Real runs use the monotonic system clock; tests use
//! [`TestClock`], whose time moves only when a test (or a paced source "sleeping") moves it, so
//! pacing, reconnect backoff and latency bookkeeping are deterministic and no test sleeps.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Monotonic time since the clock was created, and a way to wait until a later time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
    /// Returns once `now() >= t` (immediately when `t` is past).
    fn sleep_until(&self, t: Duration);
    fn sleep(&self, d: Duration) {
        self.sleep_until(self.now() + d);
    }
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The monotonic system clock.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn shared() -> SharedClock {
        Arc::new(Self::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep_until(&self, t: Duration) {
        let now = self.now();
        if t > now {
            std::thread::sleep(t - now);
        }
    }
}

/// A clock that only moves when told to. `sleep_until` jumps time forward instead of waiting and
/// records the wait, so a test can check what a component would have waited for.
#[derive(Debug, Default)]
pub struct TestClock {
    inner: Mutex<TestClockState>,
}

#[derive(Debug, Default)]
struct TestClockState {
    now: Duration,
    sleeps: Vec<Duration>,
}

impl TestClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn advance(&self, d: Duration) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.now += d;
    }

    /// Every wait asked for so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sleeps
            .clone()
    }
}

impl Clock for TestClock {
    fn now(&self) -> Duration {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).now
    }

    fn sleep_until(&self, t: Duration) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t > s.now {
            let d = t - s.now;
            s.sleeps.push(d);
            s.now = t;
        }
    }
}
