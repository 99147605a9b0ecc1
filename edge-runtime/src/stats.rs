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

/// Latency distributions in milliseconds by stage name, in constant memory: each stage is a
/// histogram of logarithmic buckets 1 % wide (from 1 µs to about an hour) plus its exact count,
/// sum and maximum, allocated once on the stage's first sample. So a cart that runs for days
/// keeps the same footprint from its first minute (a list of samples, even a capped one, grows
/// for hours and showed up as steps in the one-hour soak's RSS), and percentiles are within 1 %
/// over the whole run.
#[derive(Debug, Default)]
pub struct Latencies {
    stages: Mutex<BTreeMap<&'static str, Histogram>>,
}

/// Smallest latency told apart from zero, in milliseconds.
const HIST_MIN_MS: f64 = 0.001;
/// Ratio of a bucket's upper to its lower bound.
const HIST_GROWTH: f64 = 1.01;
/// Buckets: `HIST_MIN_MS · HIST_GROWTH^2200` is about 3.2e6 ms (53 minutes); longer latencies
/// land in the last bucket (the exact maximum is kept apart).
const HIST_BUCKETS: usize = 2200;

#[derive(Debug)]
struct Histogram {
    counts: Vec<u32>,
    n: u64,
    sum: f64,
    min: f32,
    max: f32,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; HIST_BUCKETS],
            n: 0,
            sum: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }

    fn bucket(ms: f32) -> usize {
        let v = f64::from(ms);
        if !(v > HIST_MIN_MS) {
            return 0; // also NaN
        }
        let b = ((v / HIST_MIN_MS).ln() / HIST_GROWTH.ln()).floor();
        (b as usize).min(HIST_BUCKETS - 1)
    }

    fn record(&mut self, ms: f32) {
        let b = Self::bucket(ms);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.n += 1;
        if ms.is_finite() {
            self.sum += f64::from(ms);
            self.min = self.min.min(ms);
            self.max = self.max.max(ms);
        }
    }

    /// Nearest-rank percentile: the middle of the bucket holding that rank, within the exact
    /// minimum and maximum.
    fn percentile(&self, p: f64) -> f32 {
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        let rank = ((p * total as f64).ceil() as u64).clamp(1, total.max(1));
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                let mid = HIST_MIN_MS * HIST_GROWTH.powf(i as f64 + 0.5);
                return (mid as f32).clamp(self.min.min(self.max), self.max);
            }
        }
        self.max
    }

    fn summary(&self) -> Option<Percentiles> {
        (self.n > 0).then(|| Percentiles {
            n: usize::try_from(self.n).unwrap_or(usize::MAX),
            p50: self.percentile(0.50),
            p99: self.percentile(0.99),
            max: self.max,
            mean: (self.sum / self.n as f64) as f32,
        })
    }
}

impl Latencies {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, stage: &'static str, ms: f32) {
        let mut s = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        s.entry(stage).or_insert_with(Histogram::new).record(ms);
    }

    /// p50/p99/max/mean per stage, over every sample since the start.
    pub fn summary(&self) -> BTreeMap<String, Percentiles> {
        let s = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .filter_map(|(k, h)| h.summary().map(|p| (k.to_string(), p)))
            .collect()
    }

    /// Bytes held for the histograms (the same after the first sample of each stage as after a
    /// million).
    pub fn heap_bytes(&self) -> usize {
        let s = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        s.values()
            .map(|h| h.counts.capacity() * std::mem::size_of::<u32>())
            .sum()
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
    fn latencies_keep_constant_memory_and_percentiles_within_one_percent() {
        let l = Latencies::new();
        l.record("x", 1.0);
        let first = l.heap_bytes();
        for i in 1..=200_000 {
            l.record("x", i as f32 / 1000.0);
        }
        assert_eq!(l.heap_bytes(), first, "memory grew with the samples");
        let s = l.summary()["x"];
        assert_eq!(s.n, 200_001);
        assert_eq!(s.max, 200.0);
        let near = |got: f32, want: f32| (got / want - 1.0).abs() <= 0.01;
        assert!(near(s.p50, 100.0), "p50 {}", s.p50);
        assert!(near(s.p99, 198.0), "p99 {}", s.p99);
        assert!(near(s.mean, 100.0), "mean {}", s.mean);
        // One sample: every percentile is that sample; zero and NaN do not break it.
        let one = Latencies::new();
        one.record("y", 3.0);
        let p = one.summary()["y"];
        assert_eq!((p.p50, p.p99, p.max), (3.0, 3.0, 3.0));
        one.record("z", 0.0);
        one.record("z", f32::NAN);
        assert_eq!(one.summary()["z"].n, 2);
    }

    #[test]
    fn peak_rss_is_readable_on_linux() {
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
    }
}
