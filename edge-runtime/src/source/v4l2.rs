//! V4L2 capture (feature `v4l`): a USB/HDMI grabber on the cart's video output, or any UVC device.
//!
//! Opening negotiates the format: the first of the board profile's pixel formats (YUYV, MJPG,
//! GREY, RGB3) that the device lists, at the requested size; the driver may change the size, so
//! the format is read back and used as the driver set it. The frame rate and camera controls are
//! best effort: a device that rejects them is logged and used as it is (many USB grabbers claim
//! controls they then refuse). Frames are streamed from mmap buffers and copied out, with the
//! driver's timestamp and sequence number.
//!
//! A device that is missing, unplugged or stops delivering frames (2 s without one) reports
//! [`SourceError::Disconnected`], which [`super::Reconnecting`] turns into reopening with backoff.
//! A buffer the driver flags as erroneous, or one shorter than a frame, is a corrupt frame.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::{FrameSource, SourceError};
use crate::frame::{Frame, PixelFormat, bytes_per_pixel};

/// What to open.
#[derive(Debug, Clone)]
pub struct V4l2Request {
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Preferred formats, most preferred first.
    pub formats: Vec<PixelFormat>,
    pub buffers: u32,
    /// Controls by name (`brightness`, `gain`, ...), best effort.
    pub controls: BTreeMap<String, i64>,
}

/// An open, streaming V4L2 device.
pub struct V4l2Source {
    // Declared before `_device` so the stream is dropped (and stopped) first.
    stream: Stream<'static>,
    _device: Device,
    name: String,
    width: u32,
    height: u32,
    stride: usize,
    format: PixelFormat,
    fps: Option<f64>,
    seq: u64,
    start: Instant,
}

fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(2 | 5 | 6 | 19)) // ENOENT, EIO, ENXIO, ENODEV
        || e.kind() == io::ErrorKind::NotFound
        || e.kind() == io::ErrorKind::TimedOut
}

fn control_key(name: &str) -> String {
    name.to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl V4l2Source {
    /// Opens and configures the device and starts streaming.
    pub fn open(req: &V4l2Request) -> Result<Self, SourceError> {
        let name = req.device.clone();
        let fail = |e: io::Error, what: &str| -> SourceError {
            if is_gone(&e) {
                SourceError::Disconnected {
                    source_name: name.clone(),
                    reason: format!("{what}: {e}"),
                }
            } else if e.kind() == io::ErrorKind::PermissionDenied {
                SourceError::Fatal {
                    source_name: name.clone(),
                    reason: format!(
                        "{what}: {e} (is the user in the `video` group? see deploy/README.md)"
                    ),
                }
            } else {
                SourceError::Fatal {
                    source_name: name.clone(),
                    reason: format!("{what}: {e}"),
                }
            }
        };
        let device = Device::with_path(&req.device).map_err(|e| fail(e, "open"))?;
        let offered = device
            .enum_formats()
            .map_err(|e| fail(e, "listing formats"))?;
        let offered: Vec<[u8; 4]> = offered.iter().map(|d| d.fourcc.repr).collect();
        let chosen = req
            .formats
            .iter()
            .copied()
            .find(|f| offered.contains(&f.fourcc()))
            .ok_or_else(|| SourceError::Fatal {
                source_name: name.clone(),
                reason: format!(
                    "none of the wanted formats ({}) is offered; the device offers {}",
                    req.formats
                        .iter()
                        .map(|f| f.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    offered
                        .iter()
                        .map(|cc| String::from_utf8_lossy(cc).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let mut fmt = device.format().map_err(|e| fail(e, "reading the format"))?;
        fmt.width = req.width;
        fmt.height = req.height;
        fmt.fourcc = FourCC::new(&chosen.fourcc());
        let got = device
            .set_format(&fmt)
            .map_err(|e| fail(e, "setting the format"))?;
        let format = PixelFormat::parse(&String::from_utf8_lossy(&got.fourcc.repr))
            .filter(|f| *f == chosen)
            .ok_or_else(|| SourceError::Fatal {
                source_name: name.clone(),
                reason: format!(
                    "asked for {chosen}, the driver set {}",
                    String::from_utf8_lossy(&got.fourcc.repr)
                ),
            })?;
        if (got.width, got.height) != (req.width, req.height) {
            tracing::warn!(
                device = %name,
                "asked for {}x{}, the driver set {}x{}; using that",
                req.width, req.height, got.width, got.height
            );
        }
        let fps = match device.set_params(&v4l::video::capture::Parameters::with_fps(
            req.fps.round().max(1.0) as u32,
        )) {
            Ok(p) if p.interval.numerator > 0 => {
                Some(p.interval.denominator as f64 / p.interval.numerator as f64)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(device = %name, "frame rate {} not accepted: {e}; using the device's", req.fps);
                None
            }
        };
        if !req.controls.is_empty() {
            match device.query_controls() {
                Ok(known) => {
                    for (key, value) in &req.controls {
                        match known.iter().find(|d| control_key(&d.name) == *key) {
                            Some(d) => {
                                let c = v4l::control::Control {
                                    id: d.id,
                                    value: v4l::control::Value::Integer(*value),
                                };
                                if let Err(e) = device.set_control(c) {
                                    tracing::warn!(device = %name, "control {key} = {value} rejected: {e}; skipped");
                                }
                            }
                            None => {
                                tracing::warn!(device = %name, "the device has no control `{key}`; skipped")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(device = %name, "cannot list controls: {e}; none set"),
            }
        }
        let mut stream = Stream::with_buffers(&device, Type::VideoCapture, req.buffers)
            .map_err(|e| fail(e, "mapping buffers"))?;
        stream.set_timeout(Duration::from_secs(2));
        let stride = if got.stride > 0 {
            got.stride as usize
        } else {
            got.width as usize * bytes_per_pixel(format).unwrap_or(1)
        };
        tracing::info!(device = %name, "{format} {}x{} streaming", got.width, got.height);
        Ok(Self {
            stream,
            _device: device,
            name,
            width: got.width,
            height: got.height,
            stride,
            format,
            fps,
            seq: 0,
            start: Instant::now(),
        })
    }
}

impl FrameSource for V4l2Source {
    fn describe(&self) -> String {
        format!(
            "{} ({} {}x{}{})",
            self.name,
            self.format,
            self.width,
            self.height,
            self.fps
                .map(|f| format!(" @ {f:.0} fps"))
                .unwrap_or_default()
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let (buf, meta) = self.stream.next().map_err(|e| SourceError::Disconnected {
            source_name: self.name.clone(),
            reason: format!("capture failed: {e}"),
        })?;
        let seq = self.seq;
        self.seq += 1;
        let used = (meta.bytesused as usize).min(buf.len());
        if meta.flags.contains(v4l::buffer::Flags::ERROR) {
            return Err(SourceError::Corrupt {
                source_name: self.name.clone(),
                seq,
                reason: "the driver flagged the buffer as erroneous".into(),
            });
        }
        if let Some(bpp) = bytes_per_pixel(self.format) {
            let needed = self.stride * (self.height as usize - 1) + self.width as usize * bpp;
            if used < needed {
                return Err(SourceError::Corrupt {
                    source_name: self.name.clone(),
                    seq,
                    reason: format!("{used} bytes, a frame needs {needed}"),
                });
            }
        }
        let driver_ts = Duration::from_secs(meta.timestamp.sec.max(0) as u64)
            + Duration::from_micros(meta.timestamp.usec.max(0) as u64);
        let ts = if driver_ts.is_zero() {
            self.start.elapsed()
        } else {
            driver_ts
        };
        Ok(Some(Frame {
            seq: u64::from(meta.sequence).max(seq),
            ts,
            arrived: Duration::ZERO,
            width: self.width,
            height: self.height,
            format: self.format,
            stride: if self.format == PixelFormat::Mjpg {
                0
            } else {
                self.stride
            },
            data: buf[..used].to_vec(),
            truth: None,
        }))
    }

    fn nominal_fps(&self) -> Option<f64> {
        self.fps
    }
}
