//! Unlimited phantom data: clips rendered on the fly, as the cart would see them, with their
//! view, EF and per-frame LV cavity map.
//!
//! Every clip is a pure function of `(split, index)`, so a run (and its resume) draws the same
//! clips for the same seed, and nothing is stored. Patients come from disjoint seed ranges per
//! split: the ranges are checked at construction and written into the run's metadata, so a
//! validation or test patient can never be drawn for training. The default ranges start far
//! above the small seeds the edge runtime's `--phantom-seed` uses (0 … 1 000 000), so the
//! runtime's benchmark streams are unseen patients too.
//!
//! Frames are rendered at the capture size, then go through the same input preparation as the
//! edge runtime ([`echojepa_input`]: antialiased short-side resize, centre crop, ImageNet
//! normalisation), so a model trained here sees what the cart computes.

use anyhow::{Context, Result, bail};
use echojepa_input::{
    GrayImage, IMAGENET_MEAN, IMAGENET_STD, eval_geometry, normalise_frames,
    resize_short_side_and_center_crop,
};
use echojepa_phantom::perturb::Perturbation;
use echojepa_phantom::{Label, Phantom, PhantomParams, View};
use echojepa_video::Clip;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A half-open range of patient seeds `[start, start + count)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedRange {
    pub start: u64,
    pub count: u64,
}

impl SeedRange {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.count)
    }

    fn overlaps(&self, o: &SeedRange) -> bool {
        self.start < o.end() && o.start < self.end()
    }
}

/// Which part of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

/// How the stream renders and prepares clips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Views drawn, in turn (class order is always [`View::ALL`]).
    #[serde(default = "all_views")]
    pub views: Vec<View>,
    /// Capture size the frames are rendered at (the cart's stream: 320 × 240).
    #[serde(default = "default_width")]
    pub width: usize,
    #[serde(default = "default_height")]
    pub height: usize,
    /// Capture frame rate.
    #[serde(default = "default_fps")]
    pub fps: f64,
    /// Patient seeds of each split.
    #[serde(default = "default_train")]
    pub train_seeds: SeedRange,
    #[serde(default = "default_val")]
    pub val_seeds: SeedRange,
    #[serde(default = "default_test")]
    pub test_seeds: SeedRange,
    /// Training only: probability that a clip gets one of the acoustic perturbations of the
    /// EchoJEPA robustness study (depth attenuation or a shadow, random strength).
    #[serde(default)]
    pub perturb_prob: f64,
}

fn all_views() -> Vec<View> {
    View::ALL.to_vec()
}
fn default_width() -> usize {
    320
}
fn default_height() -> usize {
    240
}
fn default_fps() -> f64 {
    30.0
}
fn default_train() -> SeedRange {
    SeedRange {
        start: 1 << 32,
        count: 1 << 32,
    }
}
fn default_val() -> SeedRange {
    SeedRange {
        start: 2_000_000,
        count: 1000,
    }
}
fn default_test() -> SeedRange {
    SeedRange {
        start: 3_000_000,
        count: 1000,
    }
}

impl Default for StreamSpec {
    fn default() -> Self {
        Self {
            views: all_views(),
            width: default_width(),
            height: default_height(),
            fps: default_fps(),
            train_seeds: default_train(),
            val_seeds: default_val(),
            test_seeds: default_test(),
            perturb_prob: 0.0,
        }
    }
}

/// One rendered clip with everything the phantom knows about it.
#[derive(Debug, Clone)]
pub struct StreamClip {
    /// `[3, T, R, R]`, normalised exactly as the edge runtime does.
    pub input: Vec<f32>,
    /// `[T, R, R]`: 1 where the model pixel's centre is inside the LV cavity, else 0.
    pub lv: Vec<f32>,
    pub view: View,
    pub ef_percent: f64,
}

/// The stream: rendering settings plus the model's clip geometry.
#[derive(Debug, Clone)]
pub struct PhantomStream {
    pub spec: StreamSpec,
    pub frames: usize,
    pub frame_step: usize,
    pub resolution: usize,
    /// Run seed: which clips the training stream draws.
    pub seed: u64,
}

impl PhantomStream {
    /// Checks the settings: sizes, rate, views and that the seed ranges are disjoint.
    pub fn new(
        spec: StreamSpec,
        frames: usize,
        frame_step: usize,
        resolution: usize,
        seed: u64,
    ) -> Result<Self> {
        if spec.views.is_empty() {
            bail!("phantom stream: `views` is empty");
        }
        if !(16..=4096).contains(&spec.width) || !(16..=4096).contains(&spec.height) {
            bail!(
                "phantom stream: capture size {}x{} (expected 16..=4096 each)",
                spec.width,
                spec.height
            );
        }
        if !(spec.fps.is_finite() && spec.fps > 0.0 && spec.fps <= 240.0) {
            bail!("phantom stream: fps {} (expected 0 < fps <= 240)", spec.fps);
        }
        if frames == 0 || frame_step == 0 || resolution < 16 {
            bail!(
                "phantom stream: {frames} frames every {frame_step} at {resolution} px is not a clip"
            );
        }
        if !(0.0..=1.0).contains(&spec.perturb_prob) {
            bail!(
                "phantom stream: perturb_prob {} is not a probability",
                spec.perturb_prob
            );
        }
        let named = [
            ("train_seeds", spec.train_seeds),
            ("val_seeds", spec.val_seeds),
            ("test_seeds", spec.test_seeds),
        ];
        for (name, r) in named {
            if r.count == 0 {
                bail!("phantom stream: `{name}` has no patients");
            }
        }
        for i in 0..named.len() {
            for j in i + 1..named.len() {
                if named[i].1.overlaps(&named[j].1) {
                    bail!(
                        "phantom stream: `{}` [{}, {}) overlaps `{}` [{}, {}): a patient could be both trained on and evaluated",
                        named[i].0,
                        named[i].1.start,
                        named[i].1.end(),
                        named[j].0,
                        named[j].1.start,
                        named[j].1.end()
                    );
                }
            }
        }
        Ok(Self {
            spec,
            frames,
            frame_step,
            resolution,
            seed,
        })
    }

    fn range(&self, split: Split) -> SeedRange {
        match split {
            Split::Train => self.spec.train_seeds,
            Split::Val => self.spec.val_seeds,
            Split::Test => self.spec.test_seeds,
        }
    }

    /// Patient, view, scan seed and start time of clip `index` of `split`. Training clips are
    /// drawn at random from the run seed; validation and test clips enumerate their patients,
    /// every view of one patient in turn, independent of the run seed.
    pub fn placement(&self, split: Split, index: u64) -> (u64, View, u64, f64) {
        let r = self.range(split);
        let nv = self.spec.views.len() as u64;
        let view = self.spec.views[(index % nv) as usize];
        match split {
            Split::Train => {
                let mut rng = crate::rng::rng_for(&[self.seed, 0x5743_0a11, index]);
                let patient = r.start + rng.random_range(0..r.count);
                let video = rng.random::<u64>();
                let start = rng.random_range(0.0..2.0);
                (patient, view, video, start)
            }
            Split::Val | Split::Test => {
                let patient = r.start + (index / nv) % r.count;
                let salt = if split == Split::Val { 0x7661 } else { 0x7465 };
                let video = crate::rng::mix(&[salt, index]);
                let start = (crate::rng::mix(&[salt, index, 1]) % 2000) as f64 / 1000.0;
                (patient, view, video, start)
            }
        }
    }

    /// Renders clip `index` of `split`.
    pub fn clip(&self, split: Split, index: u64) -> Result<StreamClip> {
        self.clip_at(split, index, 0.0)
    }

    /// Seconds one clip spans (`frames · frame_step / fps`): where the next clip of a continuous
    /// scan starts.
    pub fn clip_span_s(&self) -> f64 {
        (self.frames * self.frame_step) as f64 / self.spec.fps
    }

    /// Renders clip `index` of `split` as if the scan went on `offset_s` seconds longer before
    /// it: the same patient and video, later in time. Consecutive clips of one scan are
    /// `offset_s = j · clip_span_s()`; frame `k` is at `offset_s + k · frame_step / fps`.
    pub fn clip_at(&self, split: Split, index: u64, offset_s: f64) -> Result<StreamClip> {
        let (patient, view, video, start) = self.placement(split, index);
        let start = start + offset_s;
        let params = PhantomParams::for_patient(patient, view, video);
        let phantom = Phantom::new(params)
            .with_context(|| format!("phantom patient {patient} view {view}"))?;
        let (w, h, r) = (self.spec.width, self.spec.height, self.resolution);
        let perturbation = match split {
            Split::Train => self.perturbation(index),
            _ => None,
        };
        let geometry = eval_geometry(w, h, r);
        let (label_w, label_h) = geometry.resized;
        let mut frames = Vec::with_capacity(self.frames);
        let mut lv = Vec::with_capacity(self.frames * r * r);
        for k in 0..self.frames {
            let t = start + (k * self.frame_step) as f64 / self.spec.fps;
            let mut img = GrayImage::new(w, h);
            phantom
                .render_frame_into(t, w, h, &mut img.data)
                .with_context(|| format!("phantom patient {patient} frame at {t:.3} s"))?;
            if let Some(p) = &perturbation {
                let mut c = Clip {
                    frames: 1,
                    height: h,
                    width: w,
                    channels: 1,
                    data: std::mem::take(&mut img.data),
                };
                p.apply(&mut c);
                img.data = c.data;
            }
            frames.push(resize_short_side_and_center_crop(&img, r));
            // the labels are drawn straight at the resized size (the same scene, sampled
            // coarser), which costs a fraction of drawing them at capture size
            let (lw, lh) = (label_w, label_h);
            let labels = phantom.render_labels(t, lw, lh)?;
            let (x0, y0) = (geometry.crop.x, geometry.crop.y);
            for y in 0..r {
                let row = &labels[(y0 + y) * lw + x0..(y0 + y) * lw + x0 + r];
                lv.extend(row.iter().map(|&l| {
                    if l == Label::LvCavity as u8 {
                        1.0f32
                    } else {
                        0.0
                    }
                }));
            }
        }
        let planes: Vec<&[u8]> = frames.iter().map(|f| f.data.as_slice()).collect();
        Ok(StreamClip {
            input: normalise_frames(&planes, 3, IMAGENET_MEAN, IMAGENET_STD),
            lv,
            view,
            ef_percent: phantom.ground_truth().ef_percent,
        })
    }

    fn perturbation(&self, index: u64) -> Option<Perturbation> {
        let mut rng = crate::rng::rng_for(&[self.seed, 0x7e27, index]);
        if rng.random::<f64>() >= self.spec.perturb_prob {
            return None;
        }
        Some(if rng.random::<bool>() {
            Perturbation::DepthAttenuation {
                alpha: rng.random_range(0.2..0.7),
            }
        } else {
            Perturbation::AcousticShadow {
                sigma: rng.random_range(0.05..0.3),
                centre: rng.random_range(0.2..0.8),
            }
        })
    }

    /// EF (percent) of `n` training patients, without rendering: the label statistics.
    pub fn ef_stats(&self, n: u64) -> (f64, f64) {
        let efs: Vec<f64> = (0..n)
            .map(|i| {
                let (patient, view, video, _) = self.placement(Split::Train, i);
                PhantomParams::for_patient(patient, view, video)
                    .ground_truth()
                    .ef_percent
            })
            .filter(|v| v.is_finite())
            .collect();
        let m = efs.iter().sum::<f64>() / efs.len().max(1) as f64;
        let var = efs.iter().map(|v| (v - m).powi(2)).sum::<f64>() / efs.len().max(1) as f64;
        (m, var.sqrt().max(1e-6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> PhantomStream {
        let spec = StreamSpec {
            width: 96,
            height: 72,
            ..StreamSpec::default()
        };
        PhantomStream::new(spec, 4, 2, 32, 7).unwrap()
    }

    #[test]
    fn clips_are_a_function_of_split_and_index() {
        let s = stream();
        let a = s.clip(Split::Train, 5).unwrap();
        let b = s.clip(Split::Train, 5).unwrap();
        let c = s.clip(Split::Train, 6).unwrap();
        assert_eq!(a.input, b.input);
        assert_ne!(a.input, c.input);
        assert_eq!(a.input.len(), 3 * 4 * 32 * 32);
        assert_eq!(a.lv.len(), 4 * 32 * 32);
        // another run seed draws other training clips but the same validation clips
        let other = PhantomStream::new(s.spec.clone(), 4, 2, 32, 8).unwrap();
        assert_ne!(other.clip(Split::Train, 5).unwrap().input, a.input);
        assert_eq!(
            other.clip(Split::Val, 3).unwrap().input,
            s.clip(Split::Val, 3).unwrap().input
        );
    }

    #[test]
    fn splits_draw_patients_only_from_their_range() {
        let s = stream();
        for i in 0..200 {
            for (split, r) in [
                (Split::Train, s.spec.train_seeds),
                (Split::Val, s.spec.val_seeds),
                (Split::Test, s.spec.test_seeds),
            ] {
                let (p, ..) = s.placement(split, i);
                assert!(p >= r.start && p < r.end(), "{split:?} {i}: patient {p}");
            }
        }
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let spec = StreamSpec {
            val_seeds: SeedRange {
                start: (1 << 32) + 10,
                count: 5,
            },
            ..StreamSpec::default()
        };
        let e = PhantomStream::new(spec, 4, 2, 32, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train_seeds") && e.contains("val_seeds"), "{e}");
    }

    #[test]
    fn the_lv_map_shrinks_in_systole() {
        // An A4C clip spanning a beat: the cavity area must vary by roughly the EF.
        let spec = StreamSpec {
            views: vec![View::A4c],
            width: 160,
            height: 120,
            ..StreamSpec::default()
        };
        let s = PhantomStream::new(spec, 16, 2, 64, 1).unwrap();
        let c = s.clip(Split::Val, 0).unwrap();
        let areas: Vec<f32> = c.lv.chunks(64 * 64).map(|f| f.iter().sum()).collect();
        let max = areas.iter().cloned().fold(0.0, f32::max);
        let min = areas.iter().cloned().fold(f32::MAX, f32::min);
        assert!(max > 50.0, "no cavity drawn: {areas:?}");
        assert!(min < 0.95 * max, "the cavity does not contract: {areas:?}");
    }

    #[test]
    fn the_lv_map_lies_on_the_dark_cavity_of_the_image() {
        // Blood is darker than the myocardium around it: pixels the map calls cavity must be
        // darker on average than the ring just outside it, or the two are misaligned.
        let spec = StreamSpec {
            views: vec![View::A4c],
            ..StreamSpec::default()
        };
        let s = PhantomStream::new(spec, 2, 2, 112, 1).unwrap();
        for i in 0..4 {
            let c = s.clip(Split::Val, i).unwrap();
            let (r, plane) = (112usize, 2 * 112 * 112);
            let img = &c.input[..plane];
            let (mut inside, mut ni, mut ring, mut nr) = (0.0f64, 0, 0.0f64, 0);
            for y in 2..r - 2 {
                for x in 2..r - 2 {
                    let k = y * r + x;
                    let near = |d: isize| {
                        let k2 = ((y as isize + d) * r as isize + x as isize + d) as usize;
                        c.lv[k2] > 0.5
                    };
                    if c.lv[k] > 0.5 {
                        inside += img[k] as f64;
                        ni += 1;
                    } else if near(2) || near(-2) {
                        ring += img[k] as f64;
                        nr += 1;
                    }
                }
            }
            assert!(
                ni > 100 && nr > 20,
                "clip {i}: cavity {ni} px, ring {nr} px"
            );
            let (inside, ring) = (inside / ni as f64, ring / nr as f64);
            assert!(
                inside < ring,
                "clip {i}: cavity {inside:.3} not darker than its rim {ring:.3}"
            );
        }
    }
}
