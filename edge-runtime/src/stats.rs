//! Counters and latency samples shared by the pipeline threads, and the percentiles reported by
//! the run summary and `edge-runtime bench`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic event counters (relaxed atomics: each is read on its own).
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames the source delivered.
    pub captured: AtomicU64,
    /// Frames the source reported as corrupt, or that failed conversion.
    pub corrupt: AtomicU64,
    /// Frames lost because preprocessing fell behind capture (the frame queue was full). Should
    /// stay 0; non-zero means the board is too slow for the capture rate.
    pub frame_overruns: AtomicU64,
    /// Frames converted, cropped, resized and put in the ring.
    pub processed: AtomicU64,
    /// Clips assembled.
    pub clips_built: AtomicU64,
    /// Clips evicted from the inference queue (drop-oldest) before the model saw them.
    pub clips_dropped: AtomicU64,
    /// Clips the model ran on.
    pub clips_inferred: AtomicU64,
    /// Clips on which inference failed.
    pub engine_errors: AtomicU64,
    /// Times the source was reopened.
    pub reconnects: AtomicU64,
    /// Times the clip ring was emptied because time jumped.
    pub discontinuities: AtomicU64,
    /// Status events dropped because the output stage was busy.
    pub events_dropped: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            captured: g(&self.captured),
            corrupt: g(&self.corrupt),
            frame_overruns: g(&self.frame_overruns),
            processed: g(&self.processed),
            clips_built: g(&self.clips_built),
            clips_dropped: g(&self.clips_dropped),
            clips_inferred: g(&self.clips_inferred),
            engine_errors: g(&self.engine_errors),
            reconnects: g(&self.reconnects),
            discontinuities: g(&self.discontinuities),
            events_dropped: g(&self.events_dropped),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    pub captured: u64,
    pub corrupt: u64,
    pub frame_overruns: u64,
    pub processed: u64,
    pub clips_built: u64,
    pub clips_dropped: u64,
    pub clips_inferred: u64,
    pub engine_errors: u64,
    pub reconnects: u64,
    pub discontinuities: u64,
    pub events_dropped: u64,
}

/// Latency samples in milliseconds by stage name. Bounded: after `cap` samples per stage the
/// oldest half is discarded, so a long run keeps recent behaviour in constant memory.
#[derive(Debug)]
pub struct Latencies {
    samples: Mutex<BTreeMap<&'static str, Vec<f32>>>,
    cap: usize,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl Latencies {
    pub fn new(cap: usize) -> Self {
        Self {
            samples: Mutex::new(BTreeMap::new()),
            cap: cap.max(2),
        }
    }

    pub fn record(&self, stage: &'static str, ms: f32) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let v = s.entry(stage).or_default();
        if v.len() >= self.cap {
            v.drain(..self.cap / 2);
        }
        v.push(ms);
    }

    /// p50/p99/max per stage.
    pub fn summary(&self) -> BTreeMap<String, Percentiles> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .filter_map(|(k, v)| percentiles(v).map(|p| (k.to_string(), p)))
            .collect()
    }
}

/// Summary statistics of a latency sample, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f32,
    pub p99: f32,
    pub max: f32,
    pub mean: f32,
}

/// Nearest-rank percentiles; `None` for an empty sample.
pub fn percentiles(v: &[f32]) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let rank = |p: f64| {
        let r = (p * s.len() as f64).ceil() as usize;
        s[r.clamp(1, s.len()) - 1]
    };
    Some(Percentiles {
        n: s.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: s[s.len() - 1],
        mean: s.iter().sum::<f32>() / s.len() as f32,
    })
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        let p = percentiles(&v).unwrap();
        assert_eq!((p.p50, p.p99, p.max, p.n), (50.0, 99.0, 100.0, 100));
        assert!(percentiles(&[]).is_none());
        assert_eq!(percentiles(&[3.0]).unwrap().p99, 3.0);
    }

    #[test]
    fn latencies_stay_bounded() {
        let l = Latencies::new(10);
        for i in 0..1000 {
            l.record("x", i as f32);
        }
        let s = l.summary();
        assert!(s["x"].n <= 10);
        assert_eq!(s["x"].max, 999.0);
    }

    #[test]
    fn peak_rss_is_readable_on_linux() {
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
    }
}
