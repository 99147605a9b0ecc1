//! Which frames of a video make up each clip: the reference's rules, reproduced exactly.
//!
//! `VideoDataset.loadvideo_decord` (V-JEPA 2 / EchoJEPA): the frame step comes from
//! `frame_step`, or from `fps` as `ceil(avg_fps) // fps`, or from `duration` as
//! `int(duration * ceil(avg_fps) / fpc)`; `clip_len = fpc * step`. The video is split into
//! `num_clips` equal partitions; a clip is `linspace(end - clip_len, end, fpc)` clipped to
//! `end - 1` and truncated to integers (so step 2 gives offsets 0,2,…,14,17,…,31: spacing
//! 32/15, not 2), with `end` random in `[clip_len, partition_len)` or `clip_len` when placement
//! is deterministic. Short videos use the overlap (evaluation) or padding (pretraining) rules.
//! The EchoJEPA multi-view loader instead takes contiguous windows (`contiguous_windows`).

use rand::Rng;

/// How the distance between sampled frames is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepRule {
    /// `frame_step` frames apart.
    FrameStep(usize),
    /// Resample to this many frames per second: `step = ceil(avg_fps) // fps`.
    Fps(f64),
    /// Spread the clip over this many seconds: `step = int(duration * ceil(avg_fps) / fpc)`.
    Duration(f64),
}

/// Why no clip could be sampled.
#[derive(Debug, Clone, PartialEq)]
pub enum SamplingError {
    /// The video has no frames.
    Empty,
    /// The frame rate is needed (fps or duration rule) but unknown.
    UnknownFps(&'static str),
    /// The rule gives a step of zero.
    ZeroStep(String),
    /// The video is shorter than one clip and short videos are filtered.
    TooShort { frames: usize, clip_len: usize },
    /// A parameter is invalid.
    Invalid(String),
}

impl std::fmt::Display for SamplingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SamplingError::Empty => write!(f, "the video has no frames"),
            SamplingError::UnknownFps(rule) => {
                write!(f, "the video's frame rate is unknown, needed for `{rule}`")
            }
            SamplingError::ZeroStep(why) => write!(
                f,
                "frame step is 0 ({why}); the video's frame rate is lower than requested"
            ),
            SamplingError::TooShort { frames, clip_len } => {
                write!(
                    f,
                    "video of {frames} frames is shorter than one clip ({clip_len} frames)"
                )
            }
            SamplingError::Invalid(why) => write!(f, "invalid clip sampling: {why}"),
        }
    }
}

impl std::error::Error for SamplingError {}

/// The clip sampling settings of the reference's `data` section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSampling {
    /// Frames per clip (`frames_per_clip`).
    pub frames_per_clip: usize,
    pub step: StepRule,
    /// Clips per video (`num_clips` / `num_segments`).
    pub num_clips: usize,
    /// Random clip end within each partition (the reference's default, also in evaluation)
    /// or the first window (`random_clip_sampling: false`).
    pub random_clip_sampling: bool,
    /// Evaluation: clips of short videos may overlap. Pretraining: pad within the partition.
    pub allow_clip_overlap: bool,
    /// Skip videos shorter than one clip instead of padding.
    pub filter_short_videos: bool,
}

impl Default for ClipSampling {
    fn default() -> Self {
        Self {
            frames_per_clip: 16,
            step: StepRule::FrameStep(4),
            num_clips: 1,
            random_clip_sampling: true,
            allow_clip_overlap: false,
            filter_short_videos: false,
        }
    }
}

/// `numpy.linspace(start, stop, num)` (endpoint included), computed as numpy does.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// Offsets of the reference's first-window clip of `fpc` frames over `clip_len` source frames:
/// `clip(linspace(0, clip_len, fpc), 0, clip_len − 1)` truncated.
pub fn reference_offsets(fpc: usize, clip_len: usize) -> Vec<usize> {
    let hi = clip_len.saturating_sub(1) as f64;
    linspace(0.0, clip_len as f64, fpc)
        .into_iter()
        .map(|x| clip_trunc(x, 0.0, hi))
        .collect()
}

/// `np.clip(x, lo, hi).astype(np.int64)` (numpy applies the upper bound last; we also keep
/// indices non-negative, where numpy would return -1 for a one-frame video).
fn clip_trunc(x: f64, lo: f64, hi: f64) -> usize {
    let v = x.max(lo).min(hi);
    if v <= 0.0 { 0 } else { v.trunc() as usize }
}

impl ClipSampling {
    /// The frame step for a video with average frame rate `avg_fps`.
    pub fn frame_step(&self, avg_fps: Option<f64>) -> Result<usize, SamplingError> {
        let step = match self.step {
            StepRule::FrameStep(s) => s,
            StepRule::Fps(fps) => {
                let avg = avg_fps.ok_or(SamplingError::UnknownFps("fps"))?;
                if !(fps > 0.0) {
                    return Err(SamplingError::Invalid(format!("fps {fps}")));
                }
                // Python: int(math.ceil(avg_fps)) // fps
                (avg.ceil() / fps).floor() as usize
            }
            StepRule::Duration(secs) => {
                let avg = avg_fps.ok_or(SamplingError::UnknownFps("duration"))?;
                (secs * avg.ceil() / self.frames_per_clip as f64) as usize
            }
        };
        if step == 0 {
            return Err(SamplingError::ZeroStep(format!(
                "{:?} at {avg_fps:?} fps",
                self.step
            )));
        }
        Ok(step)
    }

    /// Frame indices of each clip (`num_clips` lists of `frames_per_clip` indices) for a video
    /// of `num_frames` frames.
    pub fn clip_indices(
        &self,
        num_frames: usize,
        avg_fps: Option<f64>,
        rng: &mut impl Rng,
    ) -> Result<Vec<Vec<usize>>, SamplingError> {
        let fpc = self.frames_per_clip;
        if fpc == 0 || self.num_clips == 0 {
            return Err(SamplingError::Invalid(format!(
                "frames_per_clip {fpc}, num_clips {}",
                self.num_clips
            )));
        }
        if num_frames == 0 {
            return Err(SamplingError::Empty);
        }
        let fstp = self.frame_step(avg_fps)?;
        let clip_len = fpc * fstp;
        if self.filter_short_videos && num_frames < clip_len {
            return Err(SamplingError::TooShort {
                frames: num_frames,
                clip_len,
            });
        }
        let partition_len = num_frames / self.num_clips;
        let mut clips = Vec::with_capacity(self.num_clips);
        for i in 0..self.num_clips {
            let idx: Vec<usize> = if partition_len > clip_len {
                let end = if self.random_clip_sampling {
                    rng.random_range(clip_len..partition_len)
                } else {
                    clip_len
                };
                let start = end - clip_len;
                linspace(start as f64, end as f64, fpc)
                    .into_iter()
                    .map(|x| clip_trunc(x, start as f64, end as f64 - 1.0) + i * partition_len)
                    .collect()
            } else if !self.allow_clip_overlap {
                let n = partition_len / fstp;
                let mut v = linspace(0.0, partition_len as f64, n);
                v.resize(fpc.max(n), partition_len as f64);
                v.truncate(fpc);
                v.into_iter()
                    .map(|x| clip_trunc(x, 0.0, partition_len as f64 - 1.0) + i * partition_len)
                    .collect()
            } else {
                let sample_len = clip_len.min(num_frames) - 1;
                let n = sample_len / fstp;
                let mut v = linspace(0.0, sample_len as f64, n);
                v.resize(fpc.max(n), sample_len as f64);
                v.truncate(fpc);
                let clip_step = if num_frames > clip_len && self.num_clips > 1 {
                    (num_frames - clip_len) / (self.num_clips - 1)
                } else {
                    0
                };
                v.into_iter()
                    .map(|x| clip_trunc(x, 0.0, sample_len as f64 - 1.0) + i * clip_step)
                    .collect()
            };
            clips.push(idx);
        }
        Ok(clips)
    }
}

/// The EchoJEPA multi-view rule: clip `i` = `arange(i*clip_len, (i+1)*clip_len, step)` clipped
/// to the last frame and padded with it to `fpc` frames.
pub fn contiguous_windows(
    num_frames: usize,
    fpc: usize,
    step: usize,
    num_clips: usize,
) -> Result<Vec<Vec<usize>>, SamplingError> {
    if num_frames == 0 {
        return Err(SamplingError::Empty);
    }
    if fpc == 0 || step == 0 {
        return Err(SamplingError::Invalid(format!(
            "frames_per_clip {fpc}, step {step}"
        )));
    }
    let clip_len = fpc * step;
    let last = num_frames - 1;
    Ok((0..num_clips)
        .map(|i| {
            let mut v: Vec<usize> = (i * clip_len..(i + 1) * clip_len)
                .step_by(step)
                .map(|x| x.min(last))
                .collect();
            let pad = *v.last().unwrap_or(&last);
            v.resize(fpc, pad);
            v
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn det(fpc: usize, step: usize, clips: usize, overlap: bool) -> ClipSampling {
        ClipSampling {
            frames_per_clip: fpc,
            step: StepRule::FrameStep(step),
            num_clips: clips,
            random_clip_sampling: false,
            allow_clip_overlap: overlap,
            filter_short_videos: false,
        }
    }

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(0)
    }

    #[test]
    fn linspace_rule_example_from_the_reference() {
        // fpc 16, step 2: spacing 32/15, not 2
        let c = det(16, 2, 1, true)
            .clip_indices(100, None, &mut rng())
            .unwrap();
        assert_eq!(
            c,
            vec![vec![
                0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31
            ]]
        );
        // two partitions of 50: the second clip is offset by the partition length
        let c = det(16, 2, 2, true)
            .clip_indices(100, None, &mut rng())
            .unwrap();
        assert_eq!(
            c[1],
            vec![
                50, 52, 54, 56, 58, 60, 62, 64, 67, 69, 71, 73, 75, 77, 79, 81
            ]
        );
    }

    #[test]
    fn short_video_with_overlap() {
        // 20 frames < clip_len 32: linspace(0, 19, 9) = 0, 2.375, ..., 19 -> clip to 18, pad 18
        let c = det(16, 2, 1, true)
            .clip_indices(20, None, &mut rng())
            .unwrap();
        assert_eq!(
            c,
            vec![vec![
                0, 2, 4, 7, 9, 11, 14, 16, 18, 18, 18, 18, 18, 18, 18, 18
            ]]
        );
        // 40 frames, 2 clips: partition 20 <= 32; sample_len 31, linspace(0, 31, 15); step (40-32)//1
        let c = det(16, 2, 2, true)
            .clip_indices(40, None, &mut rng())
            .unwrap();
        assert_eq!(
            c[0],
            vec![0, 2, 4, 6, 8, 11, 13, 15, 17, 19, 22, 24, 26, 28, 30, 30]
        );
        assert_eq!(c[1], c[0].iter().map(|i| i + 8).collect::<Vec<_>>());
    }

    #[test]
    fn short_video_without_overlap_pads_within_the_partition() {
        // partition 20: linspace(0, 20, 10) = 0, 2.22, ..., 20 -> clip 19; pad with 20 -> 19
        let c = det(16, 2, 2, false)
            .clip_indices(40, None, &mut rng())
            .unwrap();
        assert_eq!(
            c[0],
            vec![0, 2, 4, 6, 8, 11, 13, 15, 17, 19, 19, 19, 19, 19, 19, 19]
        );
        assert_eq!(c[1][0], 20);
        assert!(c[1].iter().all(|&i| (20..40).contains(&i)));
    }

    #[test]
    fn random_placement_stays_in_its_partition_and_is_seeded() {
        let s = ClipSampling {
            random_clip_sampling: true,
            ..det(16, 2, 2, true)
        };
        let mut r = rng();
        for _ in 0..200 {
            let c = s.clip_indices(200, None, &mut r).unwrap();
            for (i, clip) in c.iter().enumerate() {
                assert_eq!(clip.len(), 16);
                assert!(clip.iter().all(|&f| f >= i * 100 && f < (i + 1) * 100));
                // the linspace pattern relative to the clip start
                let offs: Vec<usize> = clip.iter().map(|f| f - clip[0]).collect();
                assert_eq!(
                    offs,
                    vec![0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31]
                );
            }
        }
        let a = s.clip_indices(200, None, &mut rng()).unwrap();
        let b = s.clip_indices(200, None, &mut rng()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn fps_and_duration_rules() {
        let s = ClipSampling {
            step: StepRule::Fps(8.0),
            ..det(16, 1, 1, true)
        };
        assert_eq!(s.frame_step(Some(29.97)).unwrap(), 3); // ceil(29.97)=30, 30 // 8 = 3
        assert_eq!(s.frame_step(Some(50.0)).unwrap(), 6);
        assert!(matches!(
            s.frame_step(Some(5.0)),
            Err(SamplingError::ZeroStep(_))
        ));
        assert!(matches!(
            s.frame_step(None),
            Err(SamplingError::UnknownFps(_))
        ));
        let d = ClipSampling {
            step: StepRule::Duration(2.0),
            ..det(16, 1, 1, true)
        };
        assert_eq!(d.frame_step(Some(30.0)).unwrap(), 3); // int(2 * 30 / 16)
    }

    #[test]
    fn filtering_and_errors() {
        let s = ClipSampling {
            filter_short_videos: true,
            ..det(16, 2, 1, true)
        };
        assert!(matches!(
            s.clip_indices(20, None, &mut rng()),
            Err(SamplingError::TooShort {
                frames: 20,
                clip_len: 32
            })
        ));
        assert!(matches!(
            det(16, 2, 1, true).clip_indices(0, None, &mut rng()),
            Err(SamplingError::Empty)
        ));
        let one = det(16, 2, 1, true)
            .clip_indices(1, None, &mut rng())
            .unwrap();
        assert_eq!(one[0], vec![0; 16]);
    }

    #[test]
    fn contiguous_windows_rule() {
        let w = contiguous_windows(40, 4, 2, 3).unwrap();
        assert_eq!(
            w,
            vec![vec![0, 2, 4, 6], vec![8, 10, 12, 14], vec![16, 18, 20, 22]]
        );
        let w = contiguous_windows(10, 4, 2, 2).unwrap();
        assert_eq!(w[1], vec![8, 9, 9, 9]);
    }
}
