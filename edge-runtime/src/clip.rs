//! Ring buffer and clip scheduler: preprocessed frames go in, and every `k` frames a clip comes
//! out, sampled at the model's frame interval by timestamp.
//!
//! The model was trained on clips of `F` frames spaced `interval` apart (its `fps`, or its
//! `frame_step` at the training videos' frame rate). Live sources run at their own rate (30, 50,
//! 60 fps, sometimes jittery), so the clip is resampled: for target times
//! `t_end - (F-1-i) * interval` the frame nearest in time is taken. The ring holds just enough
//! time for one clip; a jump backwards in time or a gap longer than half a clip (at least two
//! model intervals; a reconnect, a looped file) starts it afresh so that no clip mixes two stretches of video.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use echojepa_input::FrameSpacing;

use crate::frame::{GrayImage, GroundTruth};

/// The clip the model takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSpec {
    pub frames: usize,
    /// Time between two frames of a clip.
    pub interval: Duration,
    /// Square input size in pixels.
    pub resolution: usize,
    /// `Some(step)`: the frames are placed by the reference loader's linspace rule over
    /// `frames × step` source frames (`interval` is then `step` source frames); `None`: exactly
    /// `interval` apart.
    pub linspace_step: Option<u32>,
}

impl ClipSpec {
    /// How far before the clip's newest frame each frame lies, oldest first.
    pub fn offsets_back(&self) -> Vec<Duration> {
        let n = self.frames;
        match self.linspace_step {
            None => (0..n).map(|i| self.interval * (n - 1 - i) as u32).collect(),
            Some(step) => {
                let o = FrameSpacing::ReferenceLinspace.offsets(n, step as usize);
                let last = o.last().copied().unwrap_or(0);
                o.iter()
                    .map(|&k| self.interval.mul_f64((last - k) as f64 / step as f64))
                    .collect()
            }
        }
    }

    /// Time from the first to the last frame of a clip.
    pub fn span(&self) -> Duration {
        self.offsets_back().first().copied().unwrap_or_default()
    }
}

/// A frame after convert, sector crop and resize.
#[derive(Debug, Clone)]
pub struct ProcessedFrame {
    pub seq: u64,
    pub ts: Duration,
    pub arrived: Duration,
    pub image: Arc<GrayImage>,
    pub truth: Option<GroundTruth>,
    /// The part of the source frame the model input shows, `[x, y, width, height]` as
    /// fractions of the source frame (for drawing model-space results over the echo).
    pub input_rect: [f32; 4],
}

/// `F` frames for the model, with where they came from.
#[derive(Debug, Clone)]
pub struct Clip {
    /// Counts clips built since start (dropped ones included), from 0.
    pub id: u64,
    pub spec: ClipSpec,
    /// The frames, oldest first.
    pub frames: Vec<Arc<GrayImage>>,
    /// Source sequence numbers of the frames.
    pub seqs: Vec<u64>,
    pub first_ts: Duration,
    pub last_ts: Duration,
    /// Pipeline-clock arrival of the newest frame (latency is measured from here).
    pub arrived: Duration,
    /// When the clip was assembled, on the pipeline clock.
    pub built_at: Duration,
    /// Ground truth when every frame of the clip shows the same phantom view.
    pub truth: Option<GroundTruth>,
    /// [`ProcessedFrame::input_rect`] of the newest frame.
    pub input_rect: [f32; 4],
}

/// Why the ring was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discontinuity {
    /// Timestamps went backwards (file looped, source restarted).
    Backwards,
    /// A gap longer than half a clip.
    Gap,
}

/// Builds clips from a stream of processed frames.
#[derive(Debug)]
pub struct ClipBuilder {
    spec: ClipSpec,
    every: usize,
    ring: VecDeque<ProcessedFrame>,
    since_last: usize,
    next_id: u64,
    max_frames: usize,
    /// Discontinuities seen so far.
    pub discontinuities: u64,
}

impl ClipBuilder {
    /// A clip every `every` frames (at least 1).
    pub fn new(spec: ClipSpec, every: usize) -> Self {
        Self {
            spec,
            every: every.max(1),
            ring: VecDeque::new(),
            since_last: 0,
            next_id: 0,
            max_frames: 4096,
            discontinuities: 0,
        }
    }

    pub fn spec(&self) -> ClipSpec {
        self.spec
    }

    /// Frames currently held.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Time covered by the ring.
    pub fn covered(&self) -> Duration {
        match (self.ring.front(), self.ring.back()) {
            (Some(a), Some(b)) => b.ts.saturating_sub(a.ts),
            _ => Duration::ZERO,
        }
    }

    /// Adds a frame; returns a clip when one is due, and reports a discontinuity that emptied the
    /// ring first.
    pub fn push(
        &mut self,
        frame: ProcessedFrame,
        now: Duration,
    ) -> (Option<Clip>, Option<Discontinuity>) {
        let mut disc = None;
        if let Some(last) = self.ring.back() {
            if frame.ts < last.ts {
                disc = Some(Discontinuity::Backwards);
            } else if frame.ts - last.ts > self.max_gap() {
                disc = Some(Discontinuity::Gap);
            }
        }
        if disc.is_some() {
            self.ring.clear();
            self.since_last = 0;
            self.discontinuities += 1;
        }
        let newest = frame.ts;
        self.ring.push_back(frame);
        self.since_last += 1;
        // Keep one interval more than a clip needs.
        let keep = self.spec.span() + self.spec.interval;
        while let Some(front) = self.ring.front() {
            if newest.saturating_sub(front.ts) > keep || self.ring.len() > self.max_frames {
                self.ring.pop_front();
            } else {
                break;
            }
        }
        let clip = if self.since_last >= self.every && self.covers_clip() {
            self.since_last = 0;
            Some(self.build(now))
        } else {
            None
        };
        (clip, disc)
    }

    /// A longer pause between two frames is a discontinuity: half a clip, but at least two model
    /// intervals (a source may legitimately be as slow as the model's frame rate).
    fn max_gap(&self) -> Duration {
        (self.spec.span() / 2).max(self.spec.interval * 2)
    }

    fn covers_clip(&self) -> bool {
        if self.ring.len() < 2 && self.spec.frames > 1 {
            return false;
        }
        // 1 ms of slack for intervals that are not whole nanoseconds (1/30 s).
        self.covered() + Duration::from_millis(1) >= self.spec.span()
    }

    fn build(&mut self, now: Duration) -> Clip {
        let newest = self.ring.back().map(|f| f.ts).unwrap_or_default();
        let mut frames = Vec::with_capacity(self.spec.frames);
        let mut seqs = Vec::with_capacity(self.spec.frames);
        let mut picked: Vec<&ProcessedFrame> = Vec::with_capacity(self.spec.frames);
        for back in self.spec.offsets_back() {
            let target = newest.saturating_sub(back);
            let f = self.nearest(target);
            frames.push(f.image.clone());
            seqs.push(f.seq);
            picked.push(f);
        }
        let first = picked[0];
        let last = picked[picked.len() - 1];
        let truth = match (&first.truth, &last.truth) {
            (Some(a), Some(b))
                if picked
                    .iter()
                    .all(|f| f.truth.as_ref().is_some_and(|t| t.view == a.view)) =>
            {
                Some(GroundTruth {
                    view: b.view.clone(),
                    ef: (a.ef + b.ef) / 2.0,
                })
            }
            _ => None,
        };
        let clip = Clip {
            id: self.next_id,
            spec: self.spec,
            frames,
            seqs,
            first_ts: first.ts,
            last_ts: last.ts,
            arrived: last.arrived,
            built_at: now,
            truth,
            input_rect: last.input_rect,
        };
        self.next_id += 1;
        clip
    }

    fn nearest(&self, t: Duration) -> &ProcessedFrame {
        let i = self.ring.partition_point(|f| f.ts < t);
        let after = self.ring.get(i);
        let before = i.checked_sub(1).and_then(|j| self.ring.get(j));
        match (before, after) {
            (Some(b), Some(a)) => {
                if t - b.ts <= a.ts - t {
                    b
                } else {
                    a
                }
            }
            (Some(b), None) => b,
            (None, Some(a)) => a,
            (None, None) => unreachable!("build() is only called on a non-empty ring"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, ts_ms: u64) -> ProcessedFrame {
        ProcessedFrame {
            seq,
            ts: Duration::from_millis(ts_ms),
            arrived: Duration::from_millis(ts_ms),
            image: Arc::new(GrayImage::new(2, 2)),
            truth: None,
            input_rect: [0.0, 0.0, 1.0, 1.0],
        }
    }

    fn spec(frames: usize, interval_ms: u64) -> ClipSpec {
        ClipSpec {
            frames,
            interval: Duration::from_millis(interval_ms),
            resolution: 2,
            linspace_step: None,
        }
    }

    #[test]
    fn resamples_by_timestamp_at_the_model_interval() {
        // 50 fps source (20 ms), model 4 frames at 60 ms: picks every third frame.
        let mut b = ClipBuilder::new(spec(4, 60), 1);
        let mut clips = Vec::new();
        for i in 0..12 {
            if let (Some(c), _) = b.push(frame(i, i * 20), Duration::ZERO) {
                clips.push(c);
            }
        }
        // The first clip needs 180 ms of video: frames 0..=9 (ts 0..180).
        let first = &clips[0];
        assert_eq!(first.seqs, vec![0, 3, 6, 9]);
        assert_eq!(first.last_ts, Duration::from_millis(180));
        assert_eq!(clips.last().unwrap().seqs, vec![2, 5, 8, 11]);
    }

    #[test]
    fn reference_linspace_spacing_picks_the_training_loaders_frames() {
        // 30 fps source, 8 frames, frame step 4: the reference loader takes frames
        // 0, 4, 9, 13, 18, 22, 27, 31 of the first window; so must the runtime's first clip.
        let mut s = spec(8, 0);
        s.interval = Duration::from_secs_f64(4.0 / 30.0);
        s.linspace_step = Some(4);
        let mut b = ClipBuilder::new(s, 1);
        let first = (0..40u64)
            .find_map(|i| {
                let ts = Duration::from_secs_f64(i as f64 / 30.0);
                let mut f = frame(i, 0);
                f.ts = ts;
                f.arrived = ts;
                b.push(f, Duration::ZERO).0
            })
            .unwrap();
        assert_eq!(first.seqs, vec![0, 4, 9, 13, 18, 22, 27, 31]);
    }

    #[test]
    fn a_clip_every_k_frames() {
        let mut b = ClipBuilder::new(spec(2, 20), 5);
        let ids: Vec<u64> = (0..30)
            .filter_map(|i| b.push(frame(i, i * 20), Duration::ZERO).0)
            .map(|c| c.seqs[1])
            .collect();
        assert_eq!(ids, vec![4, 9, 14, 19, 24, 29]);
    }

    #[test]
    fn jittery_timestamps_pick_the_nearest_frame() {
        let mut b = ClipBuilder::new(spec(3, 100), 100);
        for (seq, ts) in [(0, 0), (1, 48), (2, 103), (3, 151), (4, 197)] {
            let _ = b.push(frame(seq, ts), Duration::ZERO);
        }
        let (c, _) = {
            b.every = 1;
            b.push(frame(5, 210), Duration::ZERO)
        };
        // Targets 10, 110, 210 -> ts 0, 103, 210.
        assert_eq!(c.unwrap().seqs, vec![0, 2, 5]);
    }

    #[test]
    fn discontinuities_empty_the_ring() {
        let mut b = ClipBuilder::new(spec(4, 20), 1);
        for i in 0..4 {
            let _ = b.push(frame(i, 1000 + i * 20), Duration::ZERO);
        }
        let (_, d) = b.push(frame(4, 0), Duration::ZERO);
        assert_eq!(d, Some(Discontinuity::Backwards));
        assert_eq!(b.len(), 1);
        let (_, d) = b.push(frame(5, 5000), Duration::ZERO);
        assert_eq!(d, Some(Discontinuity::Gap));
        assert_eq!(b.discontinuities, 2);
    }

    #[test]
    fn ring_holds_only_about_one_clip_of_time() {
        let mut b = ClipBuilder::new(spec(16, 40), 8);
        for i in 0..10_000u64 {
            let _ = b.push(frame(i, i * 10), Duration::ZERO);
        }
        // span 600 ms + one interval at 10 ms/frame.
        assert!(b.len() <= 66, "{}", b.len());
    }

    #[test]
    fn truth_only_when_the_view_is_constant() {
        let mut b = ClipBuilder::new(spec(2, 20), 1);
        let mut f0 = frame(0, 0);
        f0.truth = Some(GroundTruth {
            view: "A4C".into(),
            ef: 50.0,
        });
        let mut f1 = frame(1, 20);
        f1.truth = Some(GroundTruth {
            view: "A4C".into(),
            ef: 60.0,
        });
        let mut f2 = frame(2, 40);
        f2.truth = Some(GroundTruth {
            view: "PLAX".into(),
            ef: 60.0,
        });
        let _ = b.push(f0, Duration::ZERO);
        let c = b.push(f1, Duration::ZERO).0.unwrap();
        assert_eq!(c.truth.unwrap().ef, 55.0);
        let c = b.push(f2, Duration::ZERO).0.unwrap();
        assert!(c.truth.is_none());
    }
}
