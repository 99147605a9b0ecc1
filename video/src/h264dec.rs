//! H.264 decoding for the MP4 reader: rusty_h264 first, OpenH264 where rusty_h264 reports a
//! coding tool it does not implement.
//!
//! rusty_h264 (pure Rust, `forbid(unsafe_code)`) decodes each access unit to its picture at once,
//! in decode order, so the reader maps picture to frame by the access unit it fed, and the
//! presentation order comes from the container (`ctts`). On the files libx264 writes by default
//! (High profile, CABAC, B-frames with pyramids, weighted prediction) its luma matched FFmpeg's
//! bit for bit in our tests, where OpenH264 was off by a few levels in some B-pictures; see
//! BENCHMARKS.md for the comparison and the speed. It lacks a few rare tools (CABAC `I_PCM`,
//! SP/SI slices); a session that meets one is decoded again with OpenH264.
//!
//! OpenH264 is driven by hand because `openh264::decoder::Decoder::decode` `openh264::decoder::Decoder::decode`: by default it asks the decoder for a picture
//! after every access unit that returned none ("flush after decode"). With B-frames the decoder
//! holds pictures back on purpose, to emit them in presentation order; forcing them out breaks
//! its reordering and its picture pool, and files written by libx264 with B-frames then failed
//! after the first B-frame (state 0x4000, "out of memory"). Here the decoder runs with its own
//! reordering, every access unit is tagged with its decode index through OpenH264's input
//! timestamp, and each picture that comes out carries the tag of the access unit it belongs to.
//! So a picture is matched to its frame by identity, not by counting, and a frame the decoder
//! drops cannot shift later frames onto the wrong index. Pictures still held at the end of the
//! stream (or of a decode session) are drained with `FlushFrame`.

use std::ptr::{addr_of_mut, null_mut};

use openh264::decoder::{Decoder, DecoderConfig, Flush};
use openh264_sys2::{
    DECODER_OPTION, DECODER_OPTION_NUM_OF_FRAMES_REMAINING_IN_BUFFER, DECODING_STATE, SBufferInfo,
    dsFramePending,
};

/// One decoded picture in I420, cropped to the display size.
pub(crate) struct Picture<'a> {
    /// The tag given to [`H264Decoder::decode`] with the access unit of this picture.
    pub tag: u64,
    pub width: usize,
    pub height: usize,
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    /// Strides of the Y plane and of the two chroma planes.
    pub strides: (usize, usize, usize),
}

/// Which library decodes a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Rusty,
    OpenH264,
}

/// A decoder of Annex-B access units, each tagged with its decode index.
pub(crate) enum H264Decoder {
    Rusty(Box<rusty_h264_decoder::Decoder>),
    OpenH264(OpenH264Decoder),
}

/// The error of a decode call; `Unsupported` means: try the other backend.
pub(crate) enum DecodeFailure {
    Unsupported(String),
    Failed(String),
}

impl H264Decoder {
    pub fn new(backend: Backend) -> Result<Self, String> {
        Ok(match backend {
            Backend::Rusty => Self::Rusty(Box::default()),
            Backend::OpenH264 => Self::OpenH264(OpenH264Decoder::new()?),
        })
    }

    /// Decodes one access unit tagged `tag`; `out` gets every picture that comes out.
    pub fn decode(
        &mut self,
        annexb: &[u8],
        tag: u64,
        out: &mut dyn FnMut(Picture<'_>) -> Result<(), String>,
    ) -> Result<(), DecodeFailure> {
        match self {
            Self::Rusty(d) => {
                use rusty_h264_decoder::DecodeError;
                // rusty_h264 can panic on a damaged stream (an arithmetic overflow in its CABAC
                // engine: fuzz/crashes/h264/). The panic is caught and treated like a tool it
                // lacks: the session is decoded again by OpenH264, which reports damage as an
                // error, and the decoder that panicked is dropped with its session.
                let decoded =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.decode(annexb)));
                let Ok(decoded) = decoded else {
                    return Err(DecodeFailure::Unsupported(
                        "a stream rusty_h264 cannot decode (it panicked)".into(),
                    ));
                };
                match decoded {
                    Ok(Some(f)) => {
                        let cw = f.width.div_ceil(2);
                        out(Picture {
                            tag,
                            width: f.width,
                            height: f.height,
                            y: &f.y,
                            u: &f.u,
                            v: &f.v,
                            strides: (f.width, cw, cw),
                        })
                        .map_err(DecodeFailure::Failed)
                    }
                    Ok(None) => Ok(()),
                    Err(DecodeError::Unsupported(what)) => {
                        Err(DecodeFailure::Unsupported(what.to_string()))
                    }
                    Err(e) => Err(DecodeFailure::Failed(format!("{e:?}"))),
                }
            }
            Self::OpenH264(d) => d.decode(annexb, tag, out).map_err(DecodeFailure::Failed),
        }
    }

    /// Hands out the pictures still held back for reordering.
    pub fn drain(
        &mut self,
        out: &mut dyn FnMut(Picture<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        match self {
            Self::Rusty(_) => Ok(()),
            Self::OpenH264(d) => d.drain(out),
        }
    }
}

/// An OpenH264 decoder fed Annex-B access units.
pub(crate) struct OpenH264Decoder {
    inner: Decoder,
}

/// Names the bits of OpenH264's `DECODING_STATE`.
fn describe_state(state: DECODING_STATE) -> String {
    const NAMES: [(i32, &str); 11] = [
        (0x02, "reference lost"),
        (0x04, "bitstream error"),
        (0x08, "dependency layer lost"),
        (0x10, "no parameter sets"),
        (0x20, "data error concealed"),
        (0x40, "reference list null"),
        (0x1000, "invalid argument"),
        (0x2000, "decoder not initialised"),
        (0x4000, "out of memory"),
        (0x8000, "destination buffer too small"),
        (0x01, "frame pending"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| state & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    format!("OpenH264 state {state:#x} ({})", names.join(", "))
}

impl OpenH264Decoder {
    pub fn new() -> Result<Self, String> {
        let api = openh264::OpenH264API::from_source();
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let inner = Decoder::with_api_config(api, config)
            .map_err(|e| format!("cannot create the H.264 decoder: {e}"))?;
        Ok(Self { inner })
    }

    /// Decodes one access unit (Annex-B, parameter sets may precede it) tagged `tag`, and calls
    /// `out` with the picture that came out, if any (which may belong to an earlier unit).
    pub fn decode(
        &mut self,
        annexb: &[u8],
        tag: u64,
        out: &mut dyn FnMut(Picture<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let len = i32::try_from(annexb.len())
            .map_err(|_| format!("access unit of {} bytes is too large", annexb.len()))?;
        let mut dst = [null_mut::<u8>(); 3];
        let mut info = SBufferInfo {
            uiInBsTimeStamp: tag,
            ..Default::default()
        };
        // SAFETY: `annexb` outlives the call; `dst` and `info` are valid for writes. The decoder
        // was initialised by `Decoder::with_api_config` and is used from one thread (`&mut self`).
        let state = unsafe {
            self.inner.raw_api().decode_frame_no_delay(
                annexb.as_ptr(),
                len,
                dst.as_mut_ptr(),
                &raw mut info,
            )
        };
        if state & !dsFramePending != 0 {
            return Err(describe_state(state));
        }
        // SAFETY: `dst`/`info` were filled by the decoder call above and stay valid until the
        // next call on this decoder; `emit` borrows them only for `out`.
        unsafe { emit(&dst, &info, out) }
    }

    /// Drains the pictures the decoder still holds (end of stream or of a session).
    pub fn drain(
        &mut self,
        out: &mut dyn FnMut(Picture<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut remaining: DECODER_OPTION = 0;
        // SAFETY: reads one integer option into a valid local.
        let rc = unsafe {
            self.inner.raw_api().get_option(
                DECODER_OPTION_NUM_OF_FRAMES_REMAINING_IN_BUFFER,
                addr_of_mut!(remaining).cast(),
            )
        };
        if rc != 0 {
            return Err(format!("OpenH264 GetOption failed ({rc})"));
        }
        // The count is bounded by the decoder's picture pool; guard against a bogus value.
        for _ in 0..remaining.clamp(0, 64) {
            let mut dst = [null_mut::<u8>(); 3];
            let mut info = SBufferInfo::default();
            // SAFETY: as in `decode`.
            let state = unsafe {
                self.inner
                    .raw_api()
                    .flush_frame(dst.as_mut_ptr(), &raw mut info)
            };
            if state & !dsFramePending != 0 {
                return Err(describe_state(state));
            }
            if info.iBufferStatus != 1 {
                break;
            }
            // SAFETY: as in `decode`.
            unsafe { emit(&dst, &info, out)? };
        }
        Ok(())
    }
}

/// Hands the picture described by `dst`/`info` to `out`, if the decoder produced one.
///
/// # Safety
/// `dst` and `info` must come from the decoder call just made, and the decoder must not be
/// called again while `out` runs.
unsafe fn emit(
    dst: &[*mut u8; 3],
    info: &SBufferInfo,
    out: &mut dyn FnMut(Picture<'_>) -> Result<(), String>,
) -> Result<(), String> {
    if info.iBufferStatus != 1 || dst.iter().any(|p| p.is_null()) {
        return Ok(());
    }
    // SAFETY: reading a plain-data union field the decoder filled for system-memory output.
    let buf = unsafe { info.UsrData.sSystemBuffer };
    let (w, h) = (buf.iWidth, buf.iHeight);
    let (sy, sc) = (buf.iStride[0], buf.iStride[1]);
    if w <= 0 || h <= 0 || sy < w || sc < (w + 1) / 2 {
        return Err(format!(
            "decoder returned a {w}x{h} picture with strides {sy}/{sc}"
        ));
    }
    let (w, h, sy, sc) = (w as usize, h as usize, sy as usize, sc as usize);
    let ch = h.div_ceil(2);
    let cw = w.div_ceil(2);
    // SAFETY: OpenH264 guarantees planes of `stride × rows` bytes behind the returned pointers
    // (luma `h` rows, chroma `ceil(h/2)` rows); the last row is read only up to the width.
    let (y, u, v) = unsafe {
        (
            std::slice::from_raw_parts(dst[0], sy * (h - 1) + w),
            std::slice::from_raw_parts(dst[1], sc * (ch - 1) + cw),
            std::slice::from_raw_parts(dst[2], sc * (ch - 1) + cw),
        )
    };
    out(Picture {
        tag: info.uiOutYuvTimeStamp,
        width: w,
        height: h,
        y,
        u,
        v,
        strides: (sy, sc, sc),
    })
}
