//! The acoustic robustness perturbations of the EchoJEPA paper, for evaluation: depth
//! attenuation (each pixel × `max(0, 1 − α·y/H)`, α ∈ {0.3, 0.5, 0.7}) and a Gaussian acoustic
//! shadow (each pixel × `1 − exp(−(x − x0)² / 2σ²)`, σ ∈ {0.1, 0.2, 0.3}·W). Both are applied
//! to every frame of the raw 8-bit clip, before the evaluation transform.

use std::fmt;
use std::str::FromStr;

use echojepa_input::Clip;

/// One perturbation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Perturbation {
    /// Multiply row `y` by `max(0, 1 − alpha·y/H)`.
    DepthAttenuation { alpha: f32 },
    /// Multiply column `x` by `1 − exp(−(x − x0)² / 2σ²)` with `σ = sigma·W`, `x0 = centre·W`.
    AcousticShadow { sigma: f32, centre: f32 },
}

/// Errors parsing a perturbation spec.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid perturbation `{spec}`: {reason} (expected `depth:ALPHA` or `shadow:SIGMA[@CENTRE]`, e.g. `depth:0.5`, `shadow:0.2@0.5`)"
)]
pub struct ParsePerturbationError {
    spec: String,
    reason: String,
}

impl Perturbation {
    /// The six settings of the paper's robustness table, in order.
    pub fn paper_set() -> Vec<Perturbation> {
        let mut v: Vec<Perturbation> = [0.3, 0.5, 0.7]
            .iter()
            .map(|&alpha| Perturbation::DepthAttenuation { alpha })
            .collect();
        v.extend(
            [0.1, 0.2, 0.3]
                .iter()
                .map(|&sigma| Perturbation::AcousticShadow { sigma, centre: 0.5 }),
        );
        v
    }

    /// Multiplicative gain at pixel `(x, y)` of a `width × height` frame.
    pub fn gain(&self, x: usize, y: usize, width: usize, height: usize) -> f32 {
        match *self {
            Perturbation::DepthAttenuation { alpha } => {
                (1.0 - alpha * y as f32 / height as f32).max(0.0)
            }
            Perturbation::AcousticShadow { sigma, centre } => {
                let s = (sigma * width as f32).max(1e-6);
                let d = x as f32 - centre * width as f32;
                1.0 - (-(d * d) / (2.0 * s * s)).exp()
            }
        }
    }

    /// Applies the perturbation to every frame of an 8-bit clip (rounded to nearest).
    pub fn apply(&self, clip: &mut Clip) {
        let (w, h, c) = (clip.width, clip.height, clip.channels);
        if w == 0 || h == 0 || c == 0 {
            return;
        }
        // the gain is separable: rows for depth, columns for the shadow
        let gains: Vec<f32> = match self {
            Perturbation::DepthAttenuation { .. } => {
                (0..h).map(|y| self.gain(0, y, w, h)).collect()
            }
            Perturbation::AcousticShadow { .. } => (0..w).map(|x| self.gain(x, 0, w, h)).collect(),
        };
        let by_row = matches!(self, Perturbation::DepthAttenuation { .. });
        for (i, px) in clip.data.chunks_exact_mut(c).enumerate() {
            let p = i % (w * h);
            let g = if by_row { gains[p / w] } else { gains[p % w] };
            for v in px {
                *v = (*v as f32 * g).round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    /// A short name for reports, e.g. `depth-0.5`, `shadow-0.2`.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Perturbation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Perturbation::DepthAttenuation { alpha } => write!(f, "depth:{alpha}"),
            Perturbation::AcousticShadow { sigma, centre } if (*centre - 0.5).abs() < 1e-6 => {
                write!(f, "shadow:{sigma}")
            }
            Perturbation::AcousticShadow { sigma, centre } => write!(f, "shadow:{sigma}@{centre}"),
        }
    }
}

impl FromStr for Perturbation {
    type Err = ParsePerturbationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParsePerturbationError {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let (kind, rest) = s.trim().split_once(':').ok_or_else(|| err("missing `:`"))?;
        let num = |v: &str| v.trim().parse::<f32>().map_err(|_| err("not a number"));
        match kind.trim().to_ascii_lowercase().as_str() {
            "depth" => {
                let alpha = num(rest)?;
                if !(0.0..=1.0).contains(&alpha) {
                    return Err(err("alpha must be in [0, 1]"));
                }
                Ok(Perturbation::DepthAttenuation { alpha })
            }
            "shadow" => {
                let (sigma, centre) = match rest.split_once('@') {
                    Some((a, b)) => (num(a)?, num(b)?),
                    None => (num(rest)?, 0.5),
                };
                if !(sigma > 0.0 && sigma <= 2.0 && (0.0..=1.0).contains(&centre)) {
                    return Err(err("sigma must be in (0, 2] and the centre in [0, 1]"));
                }
                Ok(Perturbation::AcousticShadow { sigma, centre })
            }
            _ => Err(err("unknown kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(w: usize, h: usize, v: u8) -> Clip {
        Clip {
            frames: 2,
            height: h,
            width: w,
            channels: 1,
            data: vec![v; 2 * w * h],
        }
    }

    #[test]
    fn depth_attenuation_follows_the_formula_on_every_frame() {
        let mut c = flat(4, 10, 200);
        Perturbation::DepthAttenuation { alpha: 0.5 }.apply(&mut c);
        for t in 0..2 {
            for y in 0..10 {
                let want = (200.0 * (1.0 - 0.5 * y as f32 / 10.0)).round() as u8;
                assert_eq!(c.data[t * 40 + y * 4 + 2], want);
            }
        }
        let mut c = flat(2, 10, 200);
        Perturbation::DepthAttenuation { alpha: 1.0 }.apply(&mut c);
        assert!(c.data[19] > 0 && c.data[18] <= 20);
    }

    #[test]
    fn shadow_is_darkest_at_its_centre() {
        let mut c = flat(100, 3, 200);
        Perturbation::AcousticShadow {
            sigma: 0.1,
            centre: 0.5,
        }
        .apply(&mut c);
        assert_eq!(c.data[50], 0);
        assert!(c.data[0] > 195);
        // exp(-1/2) at one sigma
        let want = (200.0 * (1.0 - (-0.5f32).exp())).round() as u8;
        assert_eq!(c.data[60], want);
    }

    #[test]
    fn parse_and_paper_set() {
        assert_eq!(
            "depth:0.3".parse::<Perturbation>().unwrap(),
            Perturbation::DepthAttenuation { alpha: 0.3 }
        );
        assert_eq!(
            "shadow:0.2@0.25".parse::<Perturbation>().unwrap(),
            Perturbation::AcousticShadow {
                sigma: 0.2,
                centre: 0.25
            }
        );
        assert!("blur:1".parse::<Perturbation>().is_err());
        assert!("depth:3".parse::<Perturbation>().is_err());
        let set = Perturbation::paper_set();
        assert_eq!(set.len(), 6);
        let names: Vec<String> = set.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            names,
            [
                "depth:0.3",
                "depth:0.5",
                "depth:0.7",
                "shadow:0.1",
                "shadow:0.2",
                "shadow:0.3"
            ]
        );
        for p in set {
            assert_eq!(p.to_string().parse::<Perturbation>().unwrap(), p);
        }
    }
}
