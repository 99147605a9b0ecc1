//! Video files as a source (`--source file:PATH`): any file `echojepa_video` reads (H.264 MP4
//! without system packages; DICOM and FFmpeg formats when echojepa is built with those features).
//! Frames carry the file's timestamps (`index / fps`); wrap the source in [`super::Paced`] to play
//! it at its own frame rate, or read it as fast as possible.
//!
//! Frames are decoded in chunks (one decoder session per chunk, from the preceding keyframe). When
//! a chunk fails, its frames are decoded one by one so that only the bad ones are reported as
//! corrupt and the rest still play. With `looping`, the file starts again at its end; timestamps
//! restart too, so the pipeline sees the cut and does not build a clip across it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use echojepa_video::{ColorMode, VideoReader};

use super::{FrameSource, SourceError};
use crate::frame::Frame;

/// Frames decoded per chunk.
const CHUNK: usize = 32;

/// A video file read frame by frame.
pub struct FileSource {
    path: PathBuf,
    reader: Box<dyn VideoReader>,
    fps: f64,
    next: usize,
    pending: VecDeque<Result<Frame, SourceError>>,
    looping: bool,
    seq: u64,
    /// Frames that decoded in the current pass (a file with none is not looped forever).
    good_this_pass: usize,
}

impl FileSource {
    /// Opens the file; `default_fps` is used when the file has no frame rate.
    pub fn open(path: &Path, default_fps: f64, looping: bool) -> Result<Self, SourceError> {
        let reader = echojepa_video::open(path).map_err(|e| SourceError::Fatal {
            source_name: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let info = reader.info();
        if info.frame_count == 0 {
            return Err(SourceError::Fatal {
                source_name: path.display().to_string(),
                reason: "the video has no frames".into(),
            });
        }
        let fps = info
            .fps
            .filter(|f| f.is_finite() && *f > 0.0)
            .unwrap_or(default_fps);
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            fps,
            next: 0,
            pending: VecDeque::new(),
            looping,
            seq: 0,
            good_this_pass: 0,
        })
    }

    fn frame(&mut self, index: usize, data: Vec<u8>) -> Frame {
        let info = self.reader.info();
        let (w, h) = (info.width as u32, info.height as u32);
        let seq = self.seq;
        self.seq += 1;
        Frame::gray(
            seq,
            Duration::from_secs_f64(index as f64 / self.fps),
            w,
            h,
            data,
        )
    }

    fn decode_chunk(&mut self) {
        let count = self.reader.info().frame_count;
        let end = (self.next + CHUNK).min(count);
        let indices: Vec<usize> = (self.next..end).collect();
        self.next = end;
        match self.reader.read_frames(&indices, ColorMode::Gray) {
            Ok(clip) => {
                for (k, &i) in indices.iter().enumerate() {
                    let data = clip.frame(k).map(<[u8]>::to_vec).unwrap_or_default();
                    let f = self.frame(i, data);
                    self.good_this_pass += 1;
                    self.pending.push_back(Ok(f));
                }
            }
            Err(_) => {
                // Find the bad frames one by one; the good ones still play.
                for &i in &indices {
                    match self.reader.read_frames(&[i], ColorMode::Gray) {
                        Ok(clip) => {
                            let data = clip.frame(0).map(<[u8]>::to_vec).unwrap_or_default();
                            let f = self.frame(i, data);
                            self.good_this_pass += 1;
                            self.pending.push_back(Ok(f));
                        }
                        Err(e) => {
                            let seq = self.seq;
                            self.seq += 1;
                            self.pending.push_back(Err(SourceError::Corrupt {
                                source_name: self.path.display().to_string(),
                                seq,
                                reason: e.to_string(),
                            }));
                        }
                    }
                }
            }
        }
    }
}

impl FrameSource for FileSource {
    fn describe(&self) -> String {
        let info = self.reader.info();
        format!(
            "{} ({} {}x{}, {} frames @ {:.2} fps{})",
            self.path.display(),
            info.codec,
            info.width,
            info.height,
            info.frame_count,
            self.fps,
            if self.looping { ", looping" } else { "" }
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return item.map(Some);
            }
            if self.next >= self.reader.info().frame_count {
                if !self.looping || self.good_this_pass == 0 {
                    return Ok(None);
                }
                self.next = 0;
                self.good_this_pass = 0;
            }
            self.decode_chunk();
        }
    }

    fn nominal_fps(&self) -> Option<f64> {
        Some(self.fps)
    }
}
