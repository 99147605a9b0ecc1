//! Learning-rate, weight-decay and EMA-momentum schedules of the reference trainers, as pure
//! functions of the step so that resuming at step `s` reproduces them exactly:
//! warmup-cosine (`WarmupCosineSchedule`), linear-decay cooldown (`LinearDecaySchedule`,
//! `is_anneal`), cosine weight decay (`CosineWDSchedule`) and the linear EMA momentum ramp.

use serde::Serialize;

/// Learning-rate schedule. The reference calls `.step()` at the start of each iteration, so the
/// LR used by iteration `i` (0-based) is `lr_at(i + 1)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Linear warmup `start_lr → ref_lr` over `warmup_steps`, then cosine to `final_lr` over
    /// `t_max` further steps.
    WarmupCosine {
        warmup_steps: usize,
        start_lr: f64,
        ref_lr: f64,
        final_lr: f64,
        t_max: usize,
    },
    /// `ref_lr → final_lr` linearly over `t_max` steps (cooldown).
    LinearDecay {
        ref_lr: f64,
        final_lr: f64,
        t_max: usize,
    },
}

impl LrSchedule {
    /// The pretraining schedule from the config values. `total = int(ipe_scale * epochs * ipe)`.
    pub fn pretrain(
        is_anneal: bool,
        warmup_steps: usize,
        start_lr: f64,
        lr: f64,
        final_lr: f64,
        total: usize,
    ) -> Self {
        if is_anneal {
            Self::LinearDecay {
                ref_lr: lr,
                final_lr,
                t_max: total,
            }
        } else {
            Self::WarmupCosine {
                warmup_steps,
                start_lr,
                ref_lr: lr,
                final_lr,
                t_max: total.saturating_sub(warmup_steps),
            }
        }
    }

    /// LR after the scheduler has been stepped `step` times (`step >= 1`).
    pub fn lr_at(&self, step: usize) -> f64 {
        match *self {
            Self::WarmupCosine {
                warmup_steps,
                start_lr,
                ref_lr,
                final_lr,
                t_max,
            } => {
                if step < warmup_steps {
                    let p = step as f64 / warmup_steps.max(1) as f64;
                    start_lr + p * (ref_lr - start_lr)
                } else {
                    // progress is capped at 1 (the reference never steps past its horizon)
                    let p = ((step - warmup_steps) as f64 / t_max.max(1) as f64).min(1.0);
                    let cos = final_lr
                        + (ref_lr - final_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
                    final_lr.max(cos)
                }
            }
            Self::LinearDecay {
                ref_lr,
                final_lr,
                t_max,
            } => {
                let p = (step as f64 / t_max.max(1) as f64).min(1.0);
                ref_lr + p * (final_lr - ref_lr)
            }
        }
    }
}

/// Cosine weight-decay schedule `ref_wd → final_wd` over `t_max` steps, clamped at `final_wd`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WdSchedule {
    pub ref_wd: f64,
    pub final_wd: f64,
    pub t_max: usize,
}

impl WdSchedule {
    pub fn wd_at(&self, step: usize) -> f64 {
        let p = (step as f64 / self.t_max.max(1) as f64).min(1.0);
        let wd = self.final_wd
            + (self.ref_wd - self.final_wd) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        if self.final_wd <= self.ref_wd {
            wd.max(self.final_wd)
        } else {
            wd.min(self.final_wd)
        }
    }
}

/// EMA momentum `ema[0] → ema[1]` linearly over `total` steps; iteration `i` (0-based) uses
/// `momentum_at(i)` after its optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmaSchedule {
    pub start: f64,
    pub end: f64,
    /// `ipe * epochs * ipe_scale` (not truncated, as in the reference generator).
    pub total: f64,
}

impl EmaSchedule {
    pub fn momentum_at(&self, iteration: usize) -> f64 {
        self.start + iteration as f64 * (self.end - self.start) / self.total.max(1.0)
    }
}

/// All schedules of a pretraining run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedules {
    pub lr: LrSchedule,
    pub wd: WdSchedule,
    pub ema: EmaSchedule,
    /// Iterations the run performs (`epochs * ipe`).
    pub steps: usize,
    /// `int(ipe_scale * epochs * ipe)`, the horizon of the schedules.
    pub horizon: usize,
    pub ipe: usize,
}

impl Schedules {
    /// From the `optimization` section and the resolved iterations per epoch.
    pub fn from_config(o: &crate::config::pretrain::PretrainOpt, ipe: usize) -> Self {
        let horizon = (o.ipe_scale * o.epochs as f64 * ipe as f64) as usize;
        let warmup_steps = (o.warmup * ipe as f64) as usize;
        let lr = LrSchedule::pretrain(
            o.is_anneal,
            warmup_steps,
            o.start_lr.unwrap_or(o.lr),
            o.lr,
            o.final_lr.unwrap_or(o.lr),
            horizon,
        );
        let wd = WdSchedule {
            ref_wd: o.weight_decay,
            final_wd: o.final_weight_decay.unwrap_or(o.weight_decay),
            t_max: horizon,
        };
        let ema = EmaSchedule {
            start: o.ema[0],
            end: o.ema[1],
            total: ipe as f64 * o.epochs as f64 * o.ipe_scale,
        };
        Self {
            lr,
            wd,
            ema,
            steps: o.epochs * ipe,
            horizon,
            ipe,
        }
    }

    /// `(lr, wd, momentum)` used by iteration `i` (0-based).
    pub fn at(&self, i: usize) -> (f64, f64, f64) {
        (
            self.lr.lr_at(i + 1),
            self.wd.wd_at(i + 1),
            self.ema.momentum_at(i),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule::pretrain(false, 10, 1e-4, 1e-3, 1e-5, 110);
        assert!((s.lr_at(0) - 1e-4).abs() < 1e-15);
        assert!((s.lr_at(5) - 5.5e-4).abs() < 1e-12);
        assert!(
            (s.lr_at(10) - 1e-3).abs() < 1e-12,
            "peak at the end of warmup"
        );
        assert!(
            (s.lr_at(60) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-12,
            "half way"
        );
        assert!((s.lr_at(110) - 1e-5).abs() < 1e-12);
        assert!((s.lr_at(500) - 1e-5).abs() < 1e-9, "clamped at final_lr");
        assert!((0..110).all(|i| s.lr_at(i) <= 1e-3 + 1e-15));
    }

    #[test]
    fn reference_constant_after_warmup_when_final_equals_lr() {
        // EchoJEPA-L pretrain: 3.33e-5 -> 1.75e-4 over 40 epochs x 300, then constant.
        let s = LrSchedule::pretrain(false, 12_000, 3.33e-5, 1.75e-4, 1.75e-4, 90_000);
        assert!((s.lr_at(6_000) - (3.33e-5 + 0.5 * (1.75e-4 - 3.33e-5))).abs() < 1e-12);
        for step in [12_000, 30_000, 72_000, 90_000] {
            assert!((s.lr_at(step) - 1.75e-4).abs() < 1e-12);
        }
    }

    #[test]
    fn anneal_decays_linearly_and_ipe_scale_stops_early() {
        // ipe_scale 1.25: horizon 1.25x the run, so the run ends at lr + 0.8 (final - lr).
        let o: crate::config::pretrain::PretrainOpt = serde_json::from_value(serde_json::json!({
            "is_anneal": true, "epochs": 4, "ipe": 10, "ipe_scale": 1.25,
            "lr": 1.0e-3, "final_lr": 0.0, "ema": [0.99, 0.99]
        }))
        .unwrap();
        let s = Schedules::from_config(&o, 10);
        assert_eq!(s.steps, 40);
        assert_eq!(s.horizon, 50);
        let (lr_last, _, _) = s.at(39);
        assert!((lr_last - 0.2e-3).abs() < 1e-12, "{lr_last}");
        assert!((s.at(0).0 - 0.98e-3).abs() < 1e-12);
    }

    #[test]
    fn cosine_weight_decay_and_ema_ramp() {
        let wd = WdSchedule {
            ref_wd: 0.04,
            final_wd: 0.4,
            t_max: 100,
        };
        assert!((wd.wd_at(0) - 0.04).abs() < 1e-12);
        assert!((wd.wd_at(50) - 0.22).abs() < 1e-12);
        assert!((wd.wd_at(100) - 0.4).abs() < 1e-12);
        assert!((wd.wd_at(200) - 0.4).abs() < 1e-12, "clamped");
        let ema = EmaSchedule {
            start: 0.996,
            end: 1.0,
            total: 100.0,
        };
        assert!((ema.momentum_at(0) - 0.996).abs() < 1e-15);
        assert!((ema.momentum_at(50) - 0.998).abs() < 1e-12);
        let constant = EmaSchedule {
            start: 0.99925,
            end: 0.99925,
            total: 90_000.0,
        };
        assert_eq!(constant.momentum_at(12_345), 0.99925);
    }
}
