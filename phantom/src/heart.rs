//! The beating heart of the phantom: patient parameters, the cardiac cycle and the LV geometry
//! whose end-diastolic and end-systolic volumes (single-plane area–length method) give the
//! ground-truth ejection fraction exactly.
//!
//! LV model: in its long-axis section the cavity is an ellipse with semi-axes `a` (long) and `b`
//! (short) truncated by the mitral annular plane at `KAPPA * a` beyond the centre. Its area is
//! `A = a b f(KAPPA)` and its length (apex to annulus midpoint) `L = (1 + KAPPA) a`, so the
//! area–length volume `V = 8 A² / (3 π L)` equals `K a b²` with a constant `K`. Because `K` cancels
//! in `ESV/EDV`, the end-systolic short axis follows from the target EF with square roots only.

use serde::{Deserialize, Serialize};

use super::PhantomError;
use super::dmath::{self, Rng};

/// Where the mitral annular plane cuts the LV ellipse, as a fraction of the long semi-axis
/// beyond the centre.
pub(crate) const KAPPA: f64 = 0.65;

/// Parameters of one synthetic heart (one "patient"). Lengths in cm, volumes in mL.
///
/// All views rendered from the same `HeartParams` show the same heart, which is what makes
/// multi-view datasets possible.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeartParams {
    /// Heart rate in beats per minute (45–130).
    pub heart_rate_bpm: f64,
    /// Target LV ejection fraction in percent (5–90). The rendered geometry reproduces it.
    pub ef_percent: f64,
    /// End-diastolic LV length, apex to mitral annulus midpoint, in cm (5–13).
    pub lv_length_cm: f64,
    /// End-diastolic LV internal diameter at its widest, in cm (3–8).
    pub lv_diameter_cm: f64,
    /// End-diastolic LV wall thickness in cm (0.5–1.8).
    pub wall_thickness_cm: f64,
    /// Fractional long-axis shortening from end-diastole to end-systole (0–0.3).
    pub long_axis_shortening: f64,
    /// The hidden multi-view quantity, an analogue of RV systolic pressure, in mmHg (15–100).
    /// It dilates the RV (visible in A4C, PLAX, subcostal) and flattens the septum (PSAX).
    pub rvsp_mmhg: f64,
    /// Individual RV size factor multiplying the pressure-driven dilation (about 0.8–1.2).
    pub rv_size_factor: f64,
    /// Individual offset added to the pressure-driven septal flattening (about ±0.1).
    pub septal_shape_offset: f64,
    /// Left-atrial size factor (about 0.8–1.4).
    pub la_size_factor: f64,
    /// Aortic root diameter in cm (2–4.5).
    pub aortic_root_cm: f64,
    /// Cardiac phase at `t = 0` (0 = end-diastole at the ECG R peak), in `[0, 1)`.
    pub start_phase: f64,
}

impl HeartParams {
    /// Draws a heart from clinically plausible ranges: EF uniform over 15–80 %, heart rate
    /// 45–130 bpm, RVSP analogue 18–85 mmHg; dilated ventricles go with low EF.
    pub fn sample(seed: u64) -> Self {
        let mut rng = Rng::stream(seed, 0x4845_4152_54);
        let ef = rng.range(15.0, 80.0);
        let heart_rate = rng.range(45.0, 130.0);
        // dilation grows as EF falls (remodelling), with individual spread
        let dilation = (1.0 + 0.008 * (55.0 - ef).max(0.0)) * (1.0 + 0.05 * rng.normal());
        let lv_length =
            (8.0 * dilation.max(0.7).sqrt() * (1.0 + 0.05 * rng.normal())).clamp(6.5, 10.5);
        let lv_diameter = (4.6 * dilation * (1.0 + 0.05 * rng.normal())).clamp(3.6, 6.6);
        let wall = (1.0 / dilation.sqrt() * (1.0 + 0.1 * rng.normal())).clamp(0.6, 1.5);
        // long-axis function falls with EF too (MAPSE)
        let long_short = (0.04 + 0.16 * ef / 80.0 + 0.015 * rng.normal()).clamp(0.02, 0.25);
        let u = rng.uniform();
        let rvsp = 18.0 + 67.0 * u * u.sqrt();
        Self {
            heart_rate_bpm: heart_rate,
            ef_percent: ef,
            lv_length_cm: lv_length,
            lv_diameter_cm: lv_diameter,
            wall_thickness_cm: wall,
            long_axis_shortening: long_short,
            rvsp_mmhg: rvsp,
            rv_size_factor: (1.0 + 0.08 * rng.normal()).clamp(0.75, 1.25),
            septal_shape_offset: (0.035 * rng.normal()).clamp(-0.1, 0.1),
            la_size_factor: (1.0 + 0.15 * (55.0 - ef).max(0.0) / 40.0 + 0.08 * rng.normal())
                .clamp(0.8, 1.45),
            aortic_root_cm: (3.0 + 0.25 * rng.normal()).clamp(2.3, 4.0),
            start_phase: rng.uniform(),
        }
    }

    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), PhantomError> {
        let checks: [(&'static str, f64, f64, f64); 12] = [
            ("heart_rate_bpm", self.heart_rate_bpm, 45.0, 130.0),
            ("ef_percent", self.ef_percent, 5.0, 90.0),
            ("lv_length_cm", self.lv_length_cm, 5.0, 13.0),
            ("lv_diameter_cm", self.lv_diameter_cm, 3.0, 8.0),
            ("wall_thickness_cm", self.wall_thickness_cm, 0.5, 1.8),
            ("long_axis_shortening", self.long_axis_shortening, 0.0, 0.3),
            ("rvsp_mmhg", self.rvsp_mmhg, 15.0, 100.0),
            ("rv_size_factor", self.rv_size_factor, 0.6, 1.5),
            ("septal_shape_offset", self.septal_shape_offset, -0.2, 0.2),
            ("la_size_factor", self.la_size_factor, 0.6, 1.6),
            ("aortic_root_cm", self.aortic_root_cm, 2.0, 4.5),
            ("start_phase", self.start_phase, 0.0, 1.0),
        ];
        for (name, value, lo, hi) in checks {
            if !(value.is_finite() && value >= lo && value <= hi) {
                return Err(PhantomError::OutOfRange {
                    name,
                    value,
                    lo,
                    hi,
                });
            }
        }
        Ok(())
    }

    /// LV cavity semi-axes `(a, b)` in cm at end-diastole.
    pub(crate) fn lv_axes_ed(&self) -> (f64, f64) {
        (self.lv_length_cm / (1.0 + KAPPA), self.lv_diameter_cm / 2.0)
    }

    /// LV cavity semi-axes at end-systole, chosen so that `ESV/EDV = 1 - EF` exactly.
    pub(crate) fn lv_axes_es(&self) -> (f64, f64) {
        let (a_d, b_d) = self.lv_axes_ed();
        let a_s = a_d * (1.0 - self.long_axis_shortening);
        let b_s = b_d * ((1.0 - self.ef_percent / 100.0) * a_d / a_s).sqrt();
        (a_s, b_s)
    }

    /// RV dilation factor driven by the RVSP analogue (1 = normal size).
    pub(crate) fn rv_dilation(&self) -> f64 {
        self.rv_size_factor * (1.0 + 0.9 * (self.rvsp_mmhg - 25.0).max(0.0) / 55.0)
    }

    /// Septal flattening in the short-axis view, as a fraction of the LV radius (0 = round).
    pub(crate) fn septal_flattening(&self) -> f64 {
        (0.45 * (self.rvsp_mmhg - 30.0).max(0.0) / 50.0 + self.septal_shape_offset).clamp(0.0, 0.5)
    }

    /// Fraction of the RR interval spent in systole (shortens less than diastole as HR rises).
    pub(crate) fn systolic_fraction(&self) -> f64 {
        let ts = 0.33 - 0.0013 * (self.heart_rate_bpm - 60.0);
        (ts * self.heart_rate_bpm / 60.0).clamp(0.2, 0.6)
    }
}

/// LV cavity area in the long-axis section for semi-axes `(a, b)`, in cm².
pub(crate) fn lv_section_area(a: f64, b: f64) -> f64 {
    let k = KAPPA;
    a * b * (std::f64::consts::FRAC_PI_2 + k.asin() + k * (1.0 - k * k).sqrt())
}

/// LV length apex → annulus midpoint for long semi-axis `a`, in cm.
pub(crate) fn lv_section_length(a: f64) -> f64 {
    (1.0 + KAPPA) * a
}

/// Single-plane area–length volume in mL from an area (cm²) and a length (cm).
pub fn area_length_volume_ml(area_cm2: f64, length_cm: f64) -> f64 {
    8.0 * area_cm2 * area_cm2 / (3.0 * std::f64::consts::PI * length_cm)
}

/// Smooth step `(1 - cos(pi u)) / 2` on `[0, 1]`.
fn smooth(u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    0.5 * (1.0 - dmath::cos(std::f64::consts::PI * u))
}

/// Piecewise-linear interpolation through `(x, y)` knots sorted by `x`.
fn knots(x: f64, pts: &[(f64, f64)]) -> f64 {
    if x <= pts[0].0 {
        return pts[0].1;
    }
    for w in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x <= x1 {
            if x1 - x0 <= 0.0 {
                return y1;
            }
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
        }
    }
    pts[pts.len() - 1].1
}

/// The state of the heart at one instant, in the units of [`HeartParams`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeartState {
    /// Cardiac phase in `[0, 1)`; 0 = end-diastole (R peak).
    pub phase: f64,
    /// Contraction: 0 at end-diastole, 1 at end-systole.
    pub contraction: f64,
    pub lv_a: f64,
    pub lv_b: f64,
    /// LV wall thickness (myocardial area conserved in the long-axis section).
    pub lv_wall: f64,
    /// LV wall thickness in the short-axis section (area conserved there).
    pub lv_wall_sax: f64,
    pub lv_a_ed: f64,
    pub lv_b_ed: f64,
    pub rv_dilation: f64,
    /// RV short-axis scale relative to end-diastole (1 at ED, < 1 in systole).
    pub rv_scale: f64,
    /// Atrial size relative to minimum (largest at end-systole).
    pub atrial_scale: f64,
    /// Atrioventricular valve opening 0 (closed) ..1 (wide open).
    pub av_valve_open: f64,
    /// Semilunar (aortic/pulmonary) valve opening.
    pub sl_valve_open: f64,
    pub flattening: f64,
}

impl HeartState {
    /// The heart at `t` seconds.
    pub(crate) fn at(h: &HeartParams, t: f64) -> Self {
        let beats = t * h.heart_rate_bpm / 60.0 + h.start_phase;
        let phase = beats - beats.floor();
        Self::at_phase(h, phase)
    }

    pub(crate) fn at_phase(h: &HeartParams, phase: f64) -> Self {
        let s = h.systolic_fraction();
        let dia = 1.0 - s;
        let fill = 0.32 * dia;
        let kick = 0.2 * dia;
        let c = if phase < s {
            smooth(phase / s)
        } else if phase < s + fill {
            1.0 - 0.78 * smooth((phase - s) / fill)
        } else if phase < 1.0 - kick {
            0.22 - 0.07 * (phase - s - fill) / (dia - fill - kick)
        } else {
            0.15 * (1.0 - smooth((phase - (1.0 - kick)) / kick))
        };
        let av_open = knots(
            phase,
            &[
                (0.0, 0.0),
                (s + 0.02, 0.0),
                (s + 0.02 + 0.07 * dia, 1.0),
                (s + 0.3 * dia, 0.55),
                (1.0 - kick, 0.45),
                (1.0 - 0.5 * kick, 0.9),
                (0.985, 0.0),
                (1.0, 0.0),
            ],
        );
        let sl_open = knots(
            phase,
            &[
                (0.0, 0.0),
                (0.1 * s, 0.0),
                (0.22 * s, 1.0),
                (0.8 * s, 0.85),
                (0.97 * s, 0.0),
                (1.0, 0.0),
            ],
        );
        let (a_d, b_d) = h.lv_axes_ed();
        let (a_s, b_s) = h.lv_axes_es();
        let lv_a = a_d + (a_s - a_d) * c;
        let lv_b = b_d + (b_s - b_d) * c;
        let h_d = h.wall_thickness_cm;
        // (a+h)(b+h) - ab = M  =>  h = (-(a+b) + sqrt((a+b)^2 + 4M)) / 2
        let m_long = (a_d + h_d) * (b_d + h_d) - a_d * b_d;
        let lv_wall = 0.5 * (-(lv_a + lv_b) + ((lv_a + lv_b).powi(2) + 4.0 * m_long).sqrt());
        // short axis: (b+h)^2 - b^2 = M
        let m_short = (b_d + h_d) * (b_d + h_d) - b_d * b_d;
        let lv_wall_sax = (lv_b * lv_b + m_short).sqrt() - lv_b;
        let dil = h.rv_dilation();
        Self {
            phase,
            contraction: c,
            lv_a,
            lv_b,
            lv_wall,
            lv_wall_sax,
            lv_a_ed: a_d,
            lv_b_ed: b_d,
            rv_dilation: dil,
            rv_scale: 1.0 - 0.2 * c / dil.max(1.0),
            atrial_scale: 1.0 + 0.22 * c,
            av_valve_open: av_open,
            sl_valve_open: sl_open,
            flattening: h.septal_flattening(),
        }
    }
}

/// ECG voltage (arbitrary units, R peak = 1) at a cardiac phase; the R peak is at phase 0.
pub(crate) fn ecg(h: &HeartParams, phase: f64) -> f64 {
    let s = h.systolic_fraction();
    let rr = 60.0 / h.heart_rate_bpm;
    // waves as (centre in seconds relative to R, width in seconds, amplitude)
    let waves: [(f64, f64, f64); 5] = [
        (-0.16, 0.025, 0.12),         // P
        (-0.025, 0.008, -0.12),       // Q
        (0.0, 0.011, 1.0),            // R
        (0.028, 0.01, -0.25),         // S
        (s * rr - 0.09, 0.045, 0.28), // T, ending near end-systole
    ];
    let mut v = 0.0;
    for (centre, width, amp) in waves {
        // distance in seconds on the circle of one beat
        let mut d = phase * rr - centre;
        d -= (d / rr + 0.5).floor() * rr;
        let z = d / width;
        if z.abs() < 6.0 {
            v += amp * dmath::exp(-0.5 * z * z);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_hearts_are_valid_and_span_the_ef_range() {
        let mut efs = Vec::new();
        for seed in 0..400 {
            let h = HeartParams::sample(seed);
            h.validate().unwrap();
            efs.push(h.ef_percent);
        }
        let lo = efs.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = efs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert!(lo < 18.0 && hi > 77.0, "EF range {lo}..{hi}");
    }

    #[test]
    fn contraction_peaks_at_end_systole_and_is_zero_at_end_diastole() {
        let h = HeartParams::sample(1);
        let s = h.systolic_fraction();
        assert!(HeartState::at_phase(&h, 0.0).contraction.abs() < 1e-12);
        assert!((HeartState::at_phase(&h, s).contraction - 1.0).abs() < 1e-12);
        for i in 0..1000 {
            let c = HeartState::at_phase(&h, i as f64 / 1000.0).contraction;
            assert!((-1e-12..=1.0 + 1e-12).contains(&c));
        }
    }

    #[test]
    fn lv_area_is_largest_at_ed_and_smallest_at_es() {
        let h = HeartParams::sample(5);
        let s = h.systolic_fraction();
        let vol = |st: HeartState| {
            area_length_volume_ml(
                lv_section_area(st.lv_a, st.lv_b),
                lv_section_length(st.lv_a),
            )
        };
        let ed = vol(HeartState::at_phase(&h, 0.0));
        let es = vol(HeartState::at_phase(&h, s));
        for i in 0..200 {
            let v = vol(HeartState::at_phase(&h, i as f64 / 200.0));
            assert!(v <= ed + 1e-9 && v >= es - 1e-9);
        }
        assert!(((ed - es) / ed * 100.0 - h.ef_percent).abs() < 1e-9);
    }

    #[test]
    fn rejects_out_of_range_params() {
        let mut h = HeartParams::sample(2);
        h.heart_rate_bpm = 200.0;
        let err = h.validate().unwrap_err().to_string();
        assert!(err.contains("heart_rate_bpm"), "{err}");
    }
}
