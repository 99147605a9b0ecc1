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

use std::collections::VecDeque;
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
}

/// The decision for one clip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EfDecision {
    pub status: EfStatus,
    pub estimate: Option<EfEstimate>,
}

/// Thresholds (from the board profile).
#[derive(Debug, Clone)]
pub struct ClinicalPolicy {
    pub ef_min_confidence: f32,
    pub min_cycle: Duration,
    pub ef_window: Duration,
    /// Views EF may be shown for; `None` means the model has no EF head.
    pub ef_views: Option<Vec<String>>,
}

/// Running state across clips.
#[derive(Debug)]
pub struct ClinicalState {
    policy: ClinicalPolicy,
    /// The EF-capable view being held and since when (clip start time).
    held: Option<(String, Duration)>,
    /// (clip end time, per-clip EF) of the current view.
    history: VecDeque<(Duration, f32)>,
}

impl ClinicalState {
    pub fn new(policy: ClinicalPolicy) -> Self {
        Self {
            policy,
            held: None,
            history: VecDeque::new(),
        }
    }

    fn reset(&mut self) {
        self.held = None;
        self.history.clear();
    }

    /// Decides for a clip covering `[start, end]` (source time) with the view label, its
    /// confidence and the clip's raw EF estimate.
    pub fn update(
        &mut self,
        start: Duration,
        end: Duration,
        view: &str,
        confidence: f32,
        ef: Option<f32>,
    ) -> EfDecision {
        let withheld = |status| EfDecision {
            status,
            estimate: None,
        };
        let (Some(views), Some(ef)) = (&self.policy.ef_views, ef) else {
            return withheld(EfStatus::NoEfHead);
        };
        if !views.iter().any(|v| v == view) {
            self.reset();
            return withheld(EfStatus::WrongView);
        }
        // A pause longer than the window, a jump back in time or a different view: start over.
        let stale = self
            .history
            .back()
            .is_some_and(|&(t, _)| end < t || end.saturating_sub(t) > self.policy.ef_window);
        let other_view = self.held.as_ref().is_some_and(|(v, _)| v != view);
        if stale || other_view {
            self.reset();
        }
        if confidence < self.policy.ef_min_confidence {
            return withheld(EfStatus::LowConfidence);
        }
        let since = self.held.get_or_insert_with(|| (view.to_string(), start)).1;
        self.history.push_back((end, ef));
        while let Some(&(t, _)) = self.history.front() {
            if end.saturating_sub(t) > self.policy.ef_window {
                self.history.pop_front();
            } else {
                break;
            }
        }
        if end.saturating_sub(since) < self.policy.min_cycle {
            return withheld(EfStatus::WarmingUp);
        }
        let mut values: Vec<f32> = self.history.iter().map(|&(_, e)| e).collect();
        values.sort_by(f32::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        let mean = values.iter().sum::<f32>() / n as f32;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n as f32;
        let first = self.history.front().map(|&(t, _)| t).unwrap_or(end);
        EfDecision {
            status: EfStatus::Ok,
            estimate: Some(EfEstimate {
                value: median,
                spread: var.sqrt(),
                clips: n,
                window_s: end.saturating_sub(first).as_secs_f32(),
            }),
        }
    }
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
        assert_eq!(
            clip(&mut s, 1000, "A4C", 0.9, 50.0).status,
            EfStatus::WarmingUp
        );
        assert_eq!(
            clip(&mut s, 1250, "A4C", 0.9, 60.0).status,
            EfStatus::WarmingUp
        );
        // Held since 0 ms; at 1500 ms one cycle is covered.
        let d = clip(&mut s, 1500, "A4C", 0.9, 55.0);
        assert_eq!(d.status, EfStatus::Ok);
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

    #[test]
    fn top1_picks_the_largest() {
        assert_eq!(top1(&[0.1, 0.7, 0.2]), Some((1, 0.7)));
        assert_eq!(top1(&[]), None);
    }
}
