//! Raw frames from a byte stream (standard input by default), so any other capture stack can pipe
//! frames in: `gst-launch-1.0 ... ! video/x-raw,format=GRAY8 ! fdsink | edge-runtime --source
//! stdin --stdin-format 640x480:GREY`.
//!
//! Frames are back to back, each exactly `width * height * bytes-per-pixel` bytes (GREY 1, YUYV 2,
//! RGB3 3; MJPEG is not framed and so not accepted here). Timestamps are either the arrival time
//! on the pipeline clock (a live producer) or `seq / fps` (a producer that replays at its own pace,
//! and tests). The stream closing between frames ends the source; closing in the middle of a frame
//! reports that frame as truncated, then ends.

use std::io::{ErrorKind, Read};
use std::time::Duration;

use super::{FrameSource, SourceError};
use crate::clock::SharedClock;
use crate::frame::{Frame, PixelFormat, bytes_per_pixel};

/// Size and pixel format of the raw frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFormat {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
}

impl RawFormat {
    /// Parses `WIDTHxHEIGHT:FORMAT`, e.g. `640x480:GREY` or `1280x720:YUYV`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (size, fmt) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT:FORMAT, e.g. 640x480:GREY"))?;
        let (w, h) = size
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("`{size}`: expected WIDTHxHEIGHT, e.g. 640x480"))?;
        let width: u32 = w
            .parse()
            .map_err(|_| format!("`{w}`: width is not a number"))?;
        let height: u32 = h
            .parse()
            .map_err(|_| format!("`{h}`: height is not a number"))?;
        let format = PixelFormat::parse(fmt)
            .ok_or_else(|| format!("`{fmt}`: unknown pixel format (GREY, YUYV, RGB3)"))?;
        let f = Self {
            width,
            height,
            format,
        };
        f.frame_bytes()?;
        Ok(f)
    }

    /// Bytes of one frame.
    pub fn frame_bytes(&self) -> Result<usize, String> {
        let bpp = bytes_per_pixel(self.format).ok_or_else(|| {
            format!(
                "{} frames have no fixed size and cannot be read raw; use GREY, YUYV or RGB3",
                self.format
            )
        })?;
        if self.width == 0 || self.height == 0 || self.width > 16384 || self.height > 16384 {
            return Err(format!(
                "frame size {}x{} is out of range (1..16384)",
                self.width, self.height
            ));
        }
        if self.format == PixelFormat::Yuyv && !self.width.is_multiple_of(2) {
            return Err("YUYV needs an even width".into());
        }
        Ok(self.width as usize * self.height as usize * bpp)
    }
}

/// How raw frames get their timestamps.
#[derive(Clone)]
pub enum RawTiming {
    /// The time the frame was read, on this clock.
    Arrival(SharedClock),
    /// `seq / fps`.
    Fps(f64),
}

/// Frames read back to back from a byte stream.
pub struct RawSource<R> {
    reader: R,
    name: String,
    format: RawFormat,
    frame_bytes: usize,
    timing: RawTiming,
    seq: u64,
    ended: bool,
}

impl<R: Read + Send> RawSource<R> {
    pub fn new(
        reader: R,
        name: impl Into<String>,
        format: RawFormat,
        timing: RawTiming,
    ) -> Result<Self, SourceError> {
        let name = name.into();
        let frame_bytes = format.frame_bytes().map_err(|reason| SourceError::Fatal {
            source_name: name.clone(),
            reason,
        })?;
        Ok(Self {
            reader,
            name,
            format,
            frame_bytes,
            timing,
            seq: 0,
            ended: false,
        })
    }
}

impl<R: Read + Send> FrameSource for RawSource<R> {
    fn describe(&self) -> String {
        format!(
            "{} (raw {} {}x{})",
            self.name, self.format.format, self.format.width, self.format.height
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.ended {
            return Ok(None);
        }
        let mut data = vec![0u8; self.frame_bytes];
        let mut filled = 0;
        while filled < data.len() {
            match self.reader.read(&mut data[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.ended = true;
                    return Err(SourceError::Fatal {
                        source_name: self.name.clone(),
                        reason: format!("read failed in frame {}: {e}", self.seq),
                    });
                }
            }
        }
        let seq = self.seq;
        if filled == 0 {
            self.ended = true;
            return Ok(None);
        }
        if filled < data.len() {
            self.ended = true;
            return Err(SourceError::Corrupt {
                source_name: self.name.clone(),
                seq,
                reason: format!(
                    "truncated: the stream closed after {filled} of {} bytes",
                    data.len()
                ),
            });
        }
        self.seq += 1;
        let ts = match &self.timing {
            RawTiming::Arrival(clock) => clock.now(),
            RawTiming::Fps(fps) => Duration::from_secs_f64(seq as f64 / fps),
        };
        let bpp = bytes_per_pixel(self.format.format).unwrap_or(1);
        Ok(Some(Frame {
            seq,
            ts,
            arrived: Duration::ZERO,
            width: self.format.width,
            height: self.format.height,
            format: self.format.format,
            stride: self.format.width as usize * bpp,
            data,
            truth: None,
        }))
    }

    fn nominal_fps(&self) -> Option<f64> {
        match self.timing {
            RawTiming::Fps(f) => Some(f),
            RawTiming::Arrival(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_formats_and_refuses_bad_ones() {
        let f = RawFormat::parse("640x480:GREY").unwrap();
        assert_eq!((f.width, f.height, f.format), (640, 480, PixelFormat::Grey));
        assert_eq!(RawFormat::parse("4x2:yuyv").unwrap().frame_bytes(), Ok(16));
        for bad in [
            "640x480",
            "640:GREY",
            "ax480:GREY",
            "640x480:NV12",
            "641x480:YUYV",
            "64x48:MJPG",
            "0x4:GREY",
        ] {
            assert!(RawFormat::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_frames_back_to_back_then_reports_a_truncated_tail() {
        let fmt = RawFormat::parse("2x2:GREY").unwrap();
        let bytes: Vec<u8> = (0..10).collect();
        let mut s = RawSource::new(&bytes[..], "pipe", fmt, RawTiming::Fps(25.0)).unwrap();
        let a = s.next_frame().unwrap().unwrap();
        let b = s.next_frame().unwrap().unwrap();
        assert_eq!((a.seq, a.data.clone()), (0, vec![0, 1, 2, 3]));
        assert_eq!(b.ts, Duration::from_millis(40));
        let e = s.next_frame().unwrap_err().to_string();
        assert!(e.contains("frame 2") && e.contains("2 of 4 bytes"), "{e}");
        assert!(s.next_frame().unwrap().is_none());
    }

    #[test]
    fn closing_between_frames_ends_cleanly() {
        let fmt = RawFormat::parse("2x1:GREY").unwrap();
        let bytes = [1u8, 2];
        let mut s = RawSource::new(&bytes[..], "pipe", fmt, RawTiming::Fps(10.0)).unwrap();
        assert!(s.next_frame().unwrap().is_some());
        assert!(s.next_frame().unwrap().is_none());
        assert!(s.next_frame().unwrap().is_none());
    }
}
