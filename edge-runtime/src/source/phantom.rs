//! The synthetic echo phantom as a live source: frames rendered at the requested rate with the
//! exact ground truth (view, EF) attached, so a run can score itself. It cycles through a list of
//! views, each for a number of seconds and each with a new synthetic patient, which exercises
//! the clinical logic (EF shown for apical views, withheld for the others).
//!
//! Timestamps are `frame / fps` (media time); wrap the source in [`super::Paced`] to play it in
//! real time.

use std::time::Duration;

use echojepa_phantom::{Phantom, PhantomParams, View};

use super::{FrameSource, SourceError};
use crate::frame::{Frame, GroundTruth, PixelFormat};

/// What the phantom stream shows.
#[derive(Debug, Clone)]
pub struct PhantomSchedule {
    /// Views in order; the list repeats.
    pub views: Vec<View>,
    /// Seconds each view is shown.
    pub seconds_per_view: f64,
    /// Seed of the first patient; segment `i` uses `seed + i`.
    pub seed: u64,
}

impl PhantomSchedule {
    /// Parses a comma-separated view list (`a4c,plax,a2c`).
    pub fn parse_views(list: &str) -> Result<Vec<View>, String> {
        let views = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<View>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if views.is_empty() {
            return Err("the phantom view list is empty".into());
        }
        Ok(views)
    }
}

/// Renders the phantom frame by frame.
pub struct PhantomSource {
    schedule: PhantomSchedule,
    width: usize,
    height: usize,
    fps: f64,
    seq: u64,
    segment: Option<(u64, Phantom, GroundTruth)>,
    max_frames: Option<u64>,
}

impl PhantomSource {
    pub fn new(
        schedule: PhantomSchedule,
        width: usize,
        height: usize,
        fps: f64,
    ) -> Result<Self, SourceError> {
        let fatal = |reason: String| SourceError::Fatal {
            source_name: "phantom".into(),
            reason,
        };
        if schedule.views.is_empty() {
            return Err(fatal("no views to show".into()));
        }
        if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
            return Err(fatal(format!("frame rate {fps} is not in (0, 1000]")));
        }
        if !(schedule.seconds_per_view.is_finite() && schedule.seconds_per_view > 0.0) {
            return Err(fatal(format!(
                "seconds per view {} must be positive",
                schedule.seconds_per_view
            )));
        }
        let mut s = Self {
            schedule,
            width,
            height,
            fps,
            seq: 0,
            segment: None,
            max_frames: None,
        };
        // Render one frame now so a bad size fails at open, not mid-stream.
        s.segment_for(0)?;
        let probe = s.render(0.0)?;
        debug_assert_eq!(probe.len(), width * height);
        Ok(s)
    }

    /// Ends the stream after `n` frames (the phantom is otherwise endless).
    pub fn with_max_frames(mut self, n: u64) -> Self {
        self.max_frames = Some(n);
        self
    }

    fn segment_for(&mut self, index: u64) -> Result<(), SourceError> {
        if self.segment.as_ref().is_some_and(|(i, ..)| *i == index) {
            return Ok(());
        }
        let views = &self.schedule.views;
        let view = views[(index % views.len() as u64) as usize];
        let params = PhantomParams::sample(self.schedule.seed.wrapping_add(index), view);
        let phantom = Phantom::new(params).map_err(|e| SourceError::Fatal {
            source_name: "phantom".into(),
            reason: e.to_string(),
        })?;
        let gt = phantom.ground_truth();
        let truth = GroundTruth {
            view: view.name().to_string(),
            ef: gt.ef_percent as f32,
        };
        self.segment = Some((index, phantom, truth));
        Ok(())
    }

    fn render(&self, t_in_segment: f64) -> Result<Vec<u8>, SourceError> {
        let Some((_, phantom, _)) = &self.segment else {
            return Err(SourceError::Fatal {
                source_name: "phantom".into(),
                reason: "no segment".into(),
            });
        };
        let mut data = vec![0u8; self.width * self.height];
        phantom
            .render_frame_into(t_in_segment, self.width, self.height, &mut data)
            .map_err(|e| SourceError::Fatal {
                source_name: "phantom".into(),
                reason: e.to_string(),
            })?;
        Ok(data)
    }
}

impl FrameSource for PhantomSource {
    fn describe(&self) -> String {
        let views: Vec<&str> = self.schedule.views.iter().map(|v| v.name()).collect();
        format!(
            "phantom {}x{} @ {} fps, views {} ({} s each), seed {} (synthetic)",
            self.width,
            self.height,
            self.fps,
            views.join(","),
            self.schedule.seconds_per_view,
            self.schedule.seed
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.max_frames.is_some_and(|m| self.seq >= m) {
            return Ok(None);
        }
        let t = self.seq as f64 / self.fps;
        let segment = (t / self.schedule.seconds_per_view).floor() as u64;
        self.segment_for(segment)?;
        let t_in = t - segment as f64 * self.schedule.seconds_per_view;
        let data = self.render(t_in)?;
        let truth = self.segment.as_ref().map(|(_, _, g)| g.clone());
        let seq = self.seq;
        self.seq += 1;
        let mut f = Frame::gray(
            seq,
            Duration::from_secs_f64(t),
            self.width as u32,
            self.height as u32,
            data,
        );
        f.format = PixelFormat::Grey;
        f.truth = truth;
        Ok(Some(f))
    }

    fn nominal_fps(&self) -> Option<f64> {
        Some(self.fps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> PhantomSchedule {
        PhantomSchedule {
            views: vec![View::A4c, View::Plax],
            seconds_per_view: 0.1,
            seed: 7,
        }
    }

    #[test]
    fn frames_carry_timestamps_and_the_truth_of_their_segment() {
        let mut s = PhantomSource::new(schedule(), 64, 48, 50.0)
            .unwrap()
            .with_max_frames(10);
        let frames: Vec<Frame> = std::iter::from_fn(|| s.next_frame().unwrap()).collect();
        assert_eq!(frames.len(), 10);
        assert_eq!(frames[3].ts, Duration::from_millis(60));
        assert_eq!(frames[0].truth.as_ref().unwrap().view, "a4c");
        assert_eq!(frames[5].truth.as_ref().unwrap().view, "plax");
        let ef = frames[0].truth.as_ref().unwrap().ef;
        assert!((5.0..95.0).contains(&ef), "{ef}");
        assert!(frames.iter().all(|f| f.data.len() == 64 * 48));
        // The image is not blank.
        assert!(frames[0].data.iter().any(|&v| v > 30));
    }

    #[test]
    fn same_seed_same_bytes() {
        let mut a = PhantomSource::new(schedule(), 64, 48, 30.0).unwrap();
        let mut b = PhantomSource::new(schedule(), 64, 48, 30.0).unwrap();
        for _ in 0..3 {
            assert_eq!(
                a.next_frame().unwrap().unwrap().data,
                b.next_frame().unwrap().unwrap().data
            );
        }
    }

    #[test]
    fn bad_settings_fail_at_open() {
        assert!(PhantomSource::new(schedule(), 4, 4, 30.0).is_err());
        assert!(PhantomSource::new(schedule(), 64, 64, 0.0).is_err());
        assert!(PhantomSchedule::parse_views("a4c,zzz").is_err());
        assert_eq!(
            PhantomSchedule::parse_views("A4C, plax").unwrap(),
            vec![View::A4c, View::Plax]
        );
    }
}
