//! Clinical logic: what a sonographer is shown for each clip.
//!
//! - The view label and its confidence, every clip.
//! - EF only when all of these hold, otherwise an explicit status says why it is withheld:
//!   the model has an EF head (`no_ef_head`); the view is one the EF head was trained on
//!   (`wrong_view`); the view confidence is at least `ef_min_confidence` (`low_confidence`); the
//!   EF-capable view has been held for at least `min_cycle_seconds`, one cardiac cycle at the
//!   slowest supported heart rate (`warming_up`).
//! - EF shown is the median of the per-clip estimates of the last `ef_window_seconds` of the
//!   same view, with their spread (standard deviation) and count. A change of view, or a pause
//!   longer than the window, starts the estimate afresh.
//! - With a traced LV (a bundle with an LV decoder) the window holds the cavity's volume in every
//!   frame instead: EF is the median over the whole beats in it (end-diastole at each peak,
//!   end-systole at the trough before the next), calibrated with the bundle's line, shown with
//!   the number of beats and their spread. Clips below the confidence threshold add no frames,
//!   and neither do clips that overlap frames already in the window: the curve is one clip after
//!   another, as in training, so that the jitter between overlapping clips' tracings does not
//!   widen its extremes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

/// Why EF is or is not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EfStatus {
    Ok,
    WarmingUp,
    WrongView,
    LowConfidence,
    NoEfHead,
}

/// The smoothed EF shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EfEstimate {
    /// Median of the per-clip estimates in the window.
    pub value: f32,
    /// Standard deviation of those estimates.
    pub spread: f32,
    /// Number of clips in the window.
    pub clips: usize,
    /// Seconds of video the window covers.
    pub window_s: f32,
    /// With a traced LV: the whole beats behind the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beats: Option<usize>,
}

/// The decision for one clip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EfDecision {
    pub status: EfStatus,
    pub estimate: Option<EfEstimate>,
    /// The model's EF at this clip whether shown or not: the regressor's value for the clip, or
    /// with a traced LV the beats of the window including this clip's frames (its own extremes
    /// while the window holds no whole beat). For logging and scoring.
    pub clip_estimate: Option<f32>,
    /// `warming_up` only: how much longer the view must be held before EF is shown (zero when
    /// the time is covered and a traced LV still waits for a usable volume curve).
    pub warmup_remaining: Option<Duration>,
}

/// Thresholds (from the board profile).
#[derive(Debug, Clone)]
pub struct ClinicalPolicy {
    pub ef_min_confidence: f32,
    pub min_cycle: Duration,
    pub ef_window: Duration,
    /// Views EF may be shown for; `None` means the model has no EF head.
    pub ef_views: Option<Vec<String>>,
    /// Traced LV: `EF = a + b · EF_traced` (absent: the traced EF as is).
    pub lv_fit: Option<[f64; 2]>,
}

/// One frame of a traced LV: source sequence number, source time, area–length volume.
pub type LvSample = (u64, Duration, f64);

/// What a clip measured.
enum Measure<'a> {
    Clip(f32),
    Traced(&'a [LvSample]),
}

/// Running state across clips.
#[derive(Debug)]
pub struct ClinicalState {
    policy: ClinicalPolicy,
    /// The EF-capable view being held and since when (clip start time).
    held: Option<(String, Duration)>,
    /// (clip end time, per-clip EF) of the current view.
    history: VecDeque<(Duration, f32)>,
    /// Traced LV volumes of the current view by source frame: (time, volume). Only clips that
    /// begin after the newest frame here add theirs, so the curve is one clip's frames after
    /// another, as the model was calibrated on (back-to-back clips in training). The union of
    /// overlapping clips would be several times denser and jitter from clip to clip, and its
    /// extremes lie outside every single clip's: end-diastole higher, end-systole lower, EF too
    /// high (on the phantom live, +16 EF points on average over 200 shown values).
    volumes: BTreeMap<u64, (Duration, f64)>,
}

impl ClinicalState {
    pub fn new(policy: ClinicalPolicy) -> Self {
        Self {
            policy,
            held: None,
            history: VecDeque::new(),
            volumes: BTreeMap::new(),
        }
    }

    fn reset(&mut self) {
        self.held = None;
        self.history.clear();
        self.volumes.clear();
    }

    /// Decides for a clip covering `[start, end]` (source time) with the view label, its
    /// confidence and the clip's raw EF estimate from a regressor.
    pub fn update(
        &mut self,
        start: Duration,
        end: Duration,
        view: &str,
        confidence: f32,
        ef: Option<f32>,
    ) -> EfDecision {
        self.observe(start, end, view, confidence, ef.map(Measure::Clip))
    }

    /// Decides for a clip whose LV was traced: `lv` holds each frame's volume.
    pub fn update_traced(
        &mut self,
        start: Duration,
        end: Duration,
        view: &str,
        confidence: f32,
        lv: &[LvSample],
    ) -> EfDecision {
        self.observe(start, end, view, confidence, Some(Measure::Traced(lv)))
    }

    fn observe(
        &mut self,
        start: Duration,
        end: Duration,
        view: &str,
        confidence: f32,
        m: Option<Measure<'_>>,
    ) -> EfDecision {
        let withheld = |status, clip_estimate| EfDecision {
            status,
            estimate: None,
            clip_estimate,
            warmup_remaining: None,
        };
        let (Some(views), Some(m)) = (&self.policy.ef_views, m) else {
            return withheld(EfStatus::NoEfHead, None);
        };
        if !views.iter().any(|v| v == view) {
            self.reset();
            let own = match m {
                Measure::Clip(e) => Some(e),
                Measure::Traced(lv) => self
                    .traced(lv.iter().map(|x| (x.1, x.2)).collect())
                    .map(|e| e.value),
            };
            return withheld(EfStatus::WrongView, own);
        }
        // A pause longer than the window, a jump back in time or a different view: start over.
        let last = self
            .history
            .back()
            .map(|&(t, _)| t)
            .or_else(|| self.volumes.values().map(|v| v.0).max());
        let stale = last.is_some_and(|t| end < t || end.saturating_sub(t) > self.policy.ef_window);
        let other_view = self.held.as_ref().is_some_and(|(v, _)| v != view);
        if stale || other_view {
            self.reset();
        }
        let clip_estimate = match &m {
            Measure::Clip(e) => Some(*e),
            Measure::Traced(lv) => {
                // the window's curve continued by this clip's frames after its newest one
                let mut series = self.series();
                let newest = series.last().map(|p| p.0);
                series.extend(
                    lv.iter()
                        .filter(|x| newest.is_none_or(|n| x.1 > n))
                        .map(|x| (x.1, x.2)),
                );
                self.traced(series).map(|e| e.value)
            }
        };
        if confidence < self.policy.ef_min_confidence {
            return withheld(EfStatus::LowConfidence, clip_estimate);
        }
        let since = self.held.get_or_insert_with(|| (view.to_string(), start)).1;
        self.history
            .push_back((end, clip_estimate.unwrap_or(f32::NAN)));
        if let Measure::Traced(lv) = m {
            let newest = self.volumes.values().map(|v| v.0).max();
            let after = lv
                .iter()
                .map(|x| x.1)
                .min()
                .is_some_and(|first| newest.is_none_or(|n| first > n));
            if after {
                self.volumes
                    .extend(lv.iter().map(|&(seq, t, v)| (seq, (t, v))));
            }
        }
        let window = self.policy.ef_window;
        while let Some(&(t, _)) = self.history.front() {
            if end.saturating_sub(t) > window {
                self.history.pop_front();
            } else {
                break;
            }
        }
        self.volumes
            .retain(|_, v| end.saturating_sub(v.0) <= window);
        let held_for = end.saturating_sub(since);
        if held_for < self.policy.min_cycle {
            return EfDecision {
                warmup_remaining: Some(self.policy.min_cycle - held_for),
                ..withheld(EfStatus::WarmingUp, clip_estimate)
            };
        }
        let first = self.history.front().map(|&(t, _)| t).unwrap_or(end);
        let estimate = if self.volumes.is_empty() {
            let values: Vec<f32> = self.history.iter().map(|&(_, e)| e).collect();
            let (value, spread) = median_and_spread(&values);
            EfEstimate {
                value,
                spread,
                clips: values.len(),
                window_s: end.saturating_sub(first).as_secs_f32(),
                beats: None,
            }
        } else {
            let Some(mut e) = self.traced(self.series()) else {
                return EfDecision {
                    warmup_remaining: Some(Duration::ZERO),
                    ..withheld(EfStatus::WarmingUp, clip_estimate)
                };
            };
            e.clips = self.history.len();
            e
        };
        EfDecision {
            status: EfStatus::Ok,
            estimate: Some(estimate),
            clip_estimate,
            warmup_remaining: None,
        }
    }

    /// The traced volume curve of the window, oldest first.
    fn series(&self) -> Vec<(Duration, f64)> {
        let mut v: Vec<(Duration, f64)> = self.volumes.values().copied().collect();
        v.sort_by_key(|p| p.0);
        v
    }

    /// EF of a traced volume curve: calibrated median over its beats (or its extremes when it
    /// holds no whole beat), with the beats' spread.
    fn traced(&self, series: Vec<(Duration, f64)>) -> Option<EfEstimate> {
        let pts: Vec<(f64, f64)> = series.iter().map(|p| (p.0.as_secs_f64(), p.1)).collect();
        let (raw, beats) = echojepa::lv::ef_of_series(&pts)?;
        let cal = |e: f64| match self.policy.lv_fit {
            Some([a, b]) => a + b * e,
            None => e,
        };
        let per_beat: Vec<f32> = beats.iter().map(|b| cal(b.ef_percent) as f32).collect();
        let spread = if per_beat.len() > 1 {
            median_and_spread(&per_beat).1
        } else {
            0.0
        };
        let span = match (series.first(), series.last()) {
            (Some(a), Some(b)) => b.0.saturating_sub(a.0).as_secs_f32(),
            _ => 0.0,
        };
        Some(EfEstimate {
            value: cal(raw).clamp(0.0, 100.0) as f32,
            spread,
            clips: 1,
            window_s: span,
            beats: Some(beats.len()),
        })
    }
}

/// Median and standard deviation (population) of some values; NaNs are ignored.
fn median_and_spread(values: &[f32]) -> (f32, f32) {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f32::NAN, 0.0);
    }
    v.sort_by(f32::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let mean = v.iter().sum::<f32>() / n as f32;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n as f32;
    (median, var.sqrt())
}

/// Index and value of the largest probability.
pub fn top1(probs: &[f32]) -> Option<(usize, f32)> {
    probs
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ClinicalPolicy {
        ClinicalPolicy {
            ef_min_confidence: 0.6,
            min_cycle: Duration::from_millis(1500),
            ef_window: Duration::from_secs(6),
            ef_views: Some(vec!["A4C".into(), "A2C".into()]),
            lv_fit: None,
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Clips of 1 s, one every 250 ms, ending at `end_ms`.
    fn clip(s: &mut ClinicalState, end_ms: u64, view: &str, conf: f32, ef: f32) -> EfDecision {
        s.update(ms(end_ms - 1000), ms(end_ms), view, conf, Some(ef))
    }

    #[test]
    fn warms_up_for_one_cycle_then_reports_the_median() {
        let mut s = ClinicalState::new(policy());
        let d = clip(&mut s, 1000, "A4C", 0.9, 50.0);
        assert_eq!(d.status, EfStatus::WarmingUp);
        // held since 0 ms (the clip's start), 1500 ms needed
        assert_eq!(d.warmup_remaining, Some(ms(500)));
        let d = clip(&mut s, 1250, "A4C", 0.9, 60.0);
        assert_eq!(d.status, EfStatus::WarmingUp);
        assert_eq!(d.warmup_remaining, Some(ms(250)));
        // Held since 0 ms; at 1500 ms one cycle is covered.
        let d = clip(&mut s, 1500, "A4C", 0.9, 55.0);
        assert_eq!(d.status, EfStatus::Ok);
        assert_eq!(d.warmup_remaining, None);
        let e = d.estimate.unwrap();
        assert_eq!(e.value, 55.0);
        assert_eq!(e.clips, 3);
        assert!((e.spread - 4.0825).abs() < 1e-3, "{}", e.spread);
        assert!((e.window_s - 0.5).abs() < 1e-6);
    }

    #[test]
    fn wrong_view_and_low_confidence_withhold_ef() {
        let mut s = ClinicalState::new(policy());
        assert_eq!(
            clip(&mut s, 1000, "PLAX", 0.99, 50.0).status,
            EfStatus::WrongView
        );
        assert_eq!(
            clip(&mut s, 1250, "A4C", 0.3, 50.0).status,
            EfStatus::LowConfidence
        );
        assert!(clip(&mut s, 1250, "A4C", 0.3, 50.0).estimate.is_none());
    }

    #[test]
    fn a_change_of_view_restarts_the_estimate() {
        let mut s = ClinicalState::new(policy());
        for t in (1000..=3000).step_by(250) {
            clip(&mut s, t, "A4C", 0.9, 40.0);
        }
        assert_eq!(
            clip(&mut s, 3250, "A2C", 0.9, 70.0).status,
            EfStatus::WarmingUp
        );
        let mut last = None;
        for t in (3500..=4750).step_by(250) {
            last = Some(clip(&mut s, t, "A2C", 0.9, 70.0));
        }
        let e = last.unwrap().estimate.unwrap();
        assert_eq!(e.value, 70.0, "A4C estimates leaked into A2C");
        // A wrong view in between resets too.
        clip(&mut s, 5000, "PSAX", 0.9, 0.0);
        assert_eq!(
            clip(&mut s, 5250, "A2C", 0.9, 70.0).status,
            EfStatus::WarmingUp
        );
    }

    #[test]
    fn window_drops_old_estimates() {
        let mut s = ClinicalState::new(policy());
        for t in (1000..=4000).step_by(250) {
            clip(&mut s, t, "A4C", 0.9, 30.0);
        }
        let mut d = None;
        for t in (4250..=11000).step_by(250) {
            d = Some(clip(&mut s, t, "A4C", 0.9, 60.0));
        }
        let e = d.unwrap().estimate.unwrap();
        assert_eq!(e.value, 60.0);
        assert_eq!(e.spread, 0.0);
        assert!(e.window_s <= 6.0);
    }

    #[test]
    fn no_ef_head_is_reported() {
        let mut p = policy();
        p.ef_views = None;
        let mut s = ClinicalState::new(p);
        assert_eq!(
            clip(&mut s, 1000, "A4C", 0.9, 50.0).status,
            EfStatus::NoEfHead
        );
        let mut s = ClinicalState::new(policy());
        assert_eq!(
            s.update(ms(0), ms(1000), "A4C", 0.9, None).status,
            EfStatus::NoEfHead
        );
    }

    /// Clips of 8 frames every 133 ms (1.07 s), back to back from `t0`, of a heart at 75 bpm
    /// whose traced volume swings between 100 and 40 (EF 60).
    fn traced_clip(s: &mut ClinicalState, k: u64, view: &str, conf: f32) -> EfDecision {
        let dt = Duration::from_micros(133_333);
        let samples: Vec<LvSample> = (0..8)
            .map(|j| {
                let seq = k * 8 + j;
                let t = dt * seq as u32;
                let ph = (t.as_secs_f64() / 0.8).fract();
                let v = 70.0 + 30.0 * (2.0 * std::f64::consts::PI * ph).cos();
                (seq, t, v)
            })
            .collect();
        s.update_traced(samples[0].1, samples[7].1, view, conf, &samples)
    }

    #[test]
    fn traced_lv_reports_ef_from_whole_beats() {
        let mut s = ClinicalState::new(policy());
        let first = traced_clip(&mut s, 0, "A4C", 0.9);
        assert_eq!(first.status, EfStatus::WarmingUp);
        // one clip's own extremes already say something
        assert!(first.clip_estimate.is_some());
        let mut last = None;
        for k in 1..5 {
            last = Some(traced_clip(&mut s, k, "A4C", 0.9));
        }
        let d = last.unwrap();
        assert_eq!(d.status, EfStatus::Ok);
        let e = d.estimate.unwrap();
        assert!(e.beats.unwrap() >= 3, "{e:?}");
        assert!((e.value - 60.0).abs() < 4.0, "{e:?}");
        assert!(e.window_s > 4.0 && e.window_s <= 6.0, "{e:?}");
        // the calibration line is applied
        let mut p = policy();
        p.lv_fit = Some([10.0, 0.5]);
        let mut s = ClinicalState::new(p);
        let mut last = None;
        for k in 0..5 {
            last = Some(traced_clip(&mut s, k, "A4C", 0.9));
        }
        let v = last.unwrap().estimate.unwrap().value;
        assert!((v - 40.0).abs() < 2.5, "{v}");
    }

    #[test]
    fn traced_lv_skips_unsure_clips_and_restarts_on_a_new_view() {
        let mut s = ClinicalState::new(policy());
        for k in 0..4 {
            traced_clip(&mut s, k, "A4C", 0.9);
        }
        // a low-confidence clip is withheld and adds no frames
        let d = traced_clip(&mut s, 4, "A4C", 0.3);
        assert_eq!(d.status, EfStatus::LowConfidence);
        assert!(d.estimate.is_none() && d.clip_estimate.is_some());
        assert_eq!(s.volumes.len(), 32);
        // another EF view starts over
        assert_eq!(
            traced_clip(&mut s, 5, "A2C", 0.9).status,
            EfStatus::WarmingUp
        );
        assert_eq!(s.volumes.len(), 8);
        // a wrong view clears everything
        assert_eq!(
            traced_clip(&mut s, 6, "PLAX", 0.9).status,
            EfStatus::WrongView
        );
        assert!(s.volumes.is_empty());
    }

    /// As a 50 fps source gives them: a clip of 8 frames 133 ms apart every 8 source frames
    /// (20 ms each), so each stretch of time is traced by up to 6 overlapping clips, each off by
    /// its own few percent. The same heart as `traced_clip` (EF 60). `keep(c)` picks the clips.
    fn overlapping_clips(keep: impl Fn(u64) -> bool) -> EfDecision {
        let mut s = ClinicalState::new(policy());
        let src = Duration::from_millis(20);
        let mut last = None;
        for c in (0..30u64).filter(|&c| keep(c)) {
            let jitter = [-4.0, 3.0, -1.0, 5.0, -3.0, 1.0][(c % 6) as usize];
            let samples: Vec<LvSample> = (0..8u64)
                .map(|j| {
                    let seq = 8 * c + j * 20 / 3;
                    let t = src * seq as u32;
                    let ph = (t.as_secs_f64() / 0.8).fract();
                    let v = 70.0 + 30.0 * (2.0 * std::f64::consts::PI * ph).cos() + jitter;
                    (seq, t, v)
                })
                .collect();
            last = Some(s.update_traced(samples[0].1, samples[7].1, "A4C", 0.9, &samples));
        }
        last.unwrap()
    }

    #[test]
    fn overlapping_clips_add_only_what_follows_the_curve() {
        // a clip spans 47 source frames: clips 0, 6, 12, ... follow each other without overlap
        let all = overlapping_clips(|_| true).estimate.unwrap();
        let tiled = overlapping_clips(|c| c % 6 == 0).estimate.unwrap();
        assert_eq!(all.value, tiled.value, "{all:?} {tiled:?}");
        assert_eq!(all.beats, tiled.beats);
        assert!(all.beats.unwrap() >= 3, "{all:?}");
        // the jitter between clips stays a jitter, not a bias outwards (the union of all
        // clips' frames gives 63.6 here)
        assert!((all.value - 60.0).abs() < 3.0, "{all:?}");
    }

    #[test]
    fn top1_picks_the_largest() {
        assert_eq!(top1(&[0.1, 0.7, 0.2]), Some((1, 0.7)));
        assert_eq!(top1(&[]), None);
    }
}
