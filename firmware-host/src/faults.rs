//! Seeded fault injection on a byte stream (dropped bytes, flipped bits), with a journal that
//! records which frames came through untouched.
//!
//! The simulated MCU runs its received and its transmitted bytes through a [`FaultInjector`]. The
//! journal is what lets a test check "every valid frame that survives is delivered": it lists each
//! clean frame and whether any of its bytes, or the delimiters around it, were hit.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Per-byte fault rates (probabilities in 0..=1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ByteFaults {
    /// Probability that a byte is lost.
    pub drop_rate: f64,
    /// Probability that one random bit of a byte is flipped.
    pub flip_rate: f64,
}

impl ByteFaults {
    /// No faults.
    pub const NONE: ByteFaults = ByteFaults {
        drop_rate: 0.0,
        flip_rate: 0.0,
    };

    /// `rate` of all bytes corrupted, half dropped and half bit-flipped.
    pub fn corrupt(rate: f64) -> Self {
        Self {
            drop_rate: rate / 2.0,
            flip_rate: rate / 2.0,
        }
    }

    /// Whether any fault can happen.
    pub fn is_active(&self) -> bool {
        self.drop_rate > 0.0 || self.flip_rate > 0.0
    }
}

/// One clean frame (the bytes between two delimiters, still COBS-encoded) and its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The frame as it was before injection.
    pub frame: Vec<u8>,
    /// No byte of it and neither delimiter next to it was dropped or changed.
    pub intact: bool,
}

/// Counters of an injector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectorStats {
    /// Bytes seen.
    pub bytes: u64,
    /// Bytes dropped.
    pub dropped: u64,
    /// Bytes with a flipped bit.
    pub flipped: u64,
}

/// Applies [`ByteFaults`] to a byte stream, deterministically for a given seed.
#[derive(Debug)]
pub struct FaultInjector {
    rng: ChaCha8Rng,
    faults: ByteFaults,
    journal: Option<Vec<JournalEntry>>,
    segment: Vec<u8>,
    segment_touched: bool,
    leading_zero_touched: bool,
    stats: InjectorStats,
}

/// Journal entries kept at most (older ones are discarded) so a long simulation stays bounded.
pub const JOURNAL_LIMIT: usize = 100_000;

impl FaultInjector {
    /// An injector with its own random stream; `journal` turns frame bookkeeping on.
    pub fn new(seed: u64, faults: ByteFaults, journal: bool) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            faults,
            journal: journal.then(Vec::new),
            segment: Vec::new(),
            segment_touched: false,
            leading_zero_touched: false,
            stats: InjectorStats::default(),
        }
    }

    /// Changes the rates from now on.
    pub fn set_faults(&mut self, faults: ByteFaults) {
        self.faults = faults;
    }

    /// Counters so far.
    pub fn stats(&self) -> InjectorStats {
        self.stats
    }

    /// The journal so far (empty when journalling is off).
    pub fn journal(&self) -> &[JournalEntry] {
        self.journal.as_deref().unwrap_or(&[])
    }

    /// Appends `clean` to `out` with faults applied.
    pub fn apply(&mut self, clean: &[u8], out: &mut Vec<u8>) {
        for &byte in clean {
            self.stats.bytes += 1;
            let hit = if self.faults.is_active() {
                let r: f64 = self.rng.random();
                if r < self.faults.drop_rate {
                    self.stats.dropped += 1;
                    true
                } else if r < self.faults.drop_rate + self.faults.flip_rate {
                    self.stats.flipped += 1;
                    out.push(byte ^ (1u8 << self.rng.random_range(0..8u32)));
                    true
                } else {
                    out.push(byte);
                    false
                }
            } else {
                out.push(byte);
                false
            };
            self.note(byte, hit);
        }
    }

    fn note(&mut self, byte: u8, hit: bool) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        if byte != 0 {
            self.segment.push(byte);
            self.segment_touched |= hit;
            return;
        }
        if !self.segment.is_empty() {
            if journal.len() >= JOURNAL_LIMIT {
                journal.remove(0);
            }
            journal.push(JournalEntry {
                frame: std::mem::take(&mut self.segment),
                intact: !self.leading_zero_touched && !self.segment_touched && !hit,
            });
        }
        self.segment_touched = false;
        self.leading_zero_touched = hit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_faults_is_identity_and_journals_frames() {
        let mut inj = FaultInjector::new(1, ByteFaults::NONE, true);
        let mut out = Vec::new();
        inj.apply(&[0, 1, 2, 0, 0, 3, 0], &mut out);
        assert_eq!(out, vec![0, 1, 2, 0, 0, 3, 0]);
        let j = inj.journal();
        assert_eq!(j.len(), 2);
        assert!(j.iter().all(|e| e.intact));
        assert_eq!(j[1].frame, vec![3]);
    }

    #[test]
    fn same_seed_same_faults() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let run = |seed| {
            let mut inj = FaultInjector::new(seed, ByteFaults::corrupt(0.05), false);
            let mut out = Vec::new();
            inj.apply(&data, &mut out);
            (out, inj.stats())
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7).0, run(8).0);
        let (_, stats) = run(7);
        // 5 % of 5000 bytes: expect about 250 hits.
        let hits = stats.dropped + stats.flipped;
        assert!((150..350).contains(&hits), "{stats:?}");
    }

    #[test]
    fn touched_frames_are_marked() {
        let mut inj = FaultInjector::new(3, ByteFaults::corrupt(1.0), true);
        let mut out = Vec::new();
        inj.apply(&[0, 9, 9, 0], &mut out);
        assert_eq!(inj.journal().len(), 1);
        assert!(!inj.journal()[0].intact);
    }
}
