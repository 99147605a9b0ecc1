//! A defensive RIFF/AVI demuxer for the first video stream, and the [`AviReader`] that decodes
//! its frames in the default build: Motion JPEG (what EchoNet-Dynamic's `.avi` files hold:
//! OpenCV's `VideoWriter` with the `MJPG` FourCC, as in that project's DICOM-to-AVI notebook),
//! and uncompressed 8-bit gray or 24/32-bit BGR. Every other codec is a
//! [`VideoError::Unsupported`] naming it and the `ffmpeg` feature.
//!
//! The frame list comes from walking the `movi` lists of every `RIFF` chunk (`AVI ` and the
//! OpenDML `AVIX` extensions), not from `idx1`, so files without an index or with a damaged one
//! read the same. Each chunk header is checked against the file size before it is trusted; the
//! walk reads headers only (8 bytes a chunk), so memory is bounded by the number of chunks
//! actually present, never by a count the file declares. Zero-length video chunks (an AVI
//! writer's "repeat the previous frame") carry no picture and are not counted as frames, as
//! FFmpeg does not decode them either.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::mjpeg;
use super::{Clip, ColorMode, VideoError, VideoInfo, VideoReader};

/// Largest header list (`hdrl`) read into memory.
const MAX_HEADER: u64 = 1 << 20;
/// Largest single frame read.
const MAX_FRAME: u64 = 64 << 20;
/// Deepest nesting of `LIST` chunks followed inside `movi`.
const MAX_DEPTH: usize = 4;

/// How the video stream's frames are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AviCodec {
    /// Motion JPEG: every frame a JPEG image (Huffman tables may be left out, as MJPEG allows).
    Mjpeg,
    /// Uncompressed bottom-up (or, with a negative height, top-down) BGR, 24 or 32 bits a pixel.
    Bgr { bits: u16, top_down: bool },
    /// Uncompressed 8-bit gray (`Y800`, `GREY`, `Y8  `): a FourCC format, so rows are top-down
    /// and unpadded (only BI_RGB rows are bottom-up and padded to 4 bytes).
    Gray,
}

/// One coded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub size: u32,
}

/// The parsed video stream.
#[derive(Debug, Clone)]
pub struct AviStream {
    /// FourCC of the codec (`strf` biCompression, or `strh` handler when that is empty).
    pub fourcc: String,
    pub codec: Result<AviCodec, String>,
    pub width: usize,
    pub height: usize,
    /// Frames per second from `strh` (`dwRate / dwScale`), else from `avih`.
    pub fps: Option<f64>,
    /// Frames in file order (non-empty chunks of the stream).
    pub frames: Vec<Chunk>,
}

fn fourcc(k: &[u8]) -> String {
    k.iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

fn le16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("header cut off at byte {at}"))
}

fn le32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("header cut off at byte {at}"))
}

/// The sub-chunks of an in-memory list payload: `(id, payload)`.
fn sub_chunks(data: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i + 8 <= data.len() {
        let mut id = [0u8; 4];
        id.copy_from_slice(&data[i..i + 4]);
        let size =
            u32::from_le_bytes([data[i + 4], data[i + 5], data[i + 6], data[i + 7]]) as usize;
        let end = (i + 8).saturating_add(size).min(data.len());
        out.push((id, &data[i + 8..end]));
        i = end + (size & 1);
    }
    out
}

/// What `hdrl` says about the first video stream.
struct Header {
    stream: usize,
    fourcc: String,
    codec: Result<AviCodec, String>,
    width: usize,
    height: usize,
    fps: Option<f64>,
}

fn codec_of(
    compression: [u8; 4],
    handler: [u8; 4],
    bits: u16,
    top_down: bool,
) -> (String, Result<AviCodec, String>) {
    let tag = if compression == [0; 4] {
        "BI_RGB".to_string()
    } else {
        fourcc(&compression)
    };
    let upper = tag.to_ascii_uppercase();
    let codec = match upper.trim_end() {
        "MJPG" | "AVRN" | "JPEG" | "DMB1" | "MJPA" => Ok(AviCodec::Mjpeg),
        "BI_RGB" | "RAW" | "DIB" if bits == 24 || bits == 32 => {
            Ok(AviCodec::Bgr { bits, top_down })
        }
        "Y800" | "GREY" | "Y8" => Ok(AviCodec::Gray),
        "BI_RGB" if bits == 8 => Err("8-bit palettised RGB".to_string()),
        "FMP4" | "XVID" | "DIVX" | "DX50" | "MP4V" | "M4S2" | "MP42" | "MP43" | "DIV3" => {
            Err(format!("MPEG-4 Part 2 video (`{tag}`)"))
        }
        "H264" | "X264" | "AVC1" | "DAVC" => Err(format!("H.264 in AVI (`{tag}`)")),
        "HEVC" | "H265" | "HVC1" | "HEV1" | "X265" => Err(format!("HEVC video (`{tag}`)")),
        _ => Err(format!(
            "video codec `{tag}` (handler `{}`)",
            fourcc(&handler)
        )),
    };
    (tag, codec)
}

fn parse_header(hdrl: &[u8]) -> Result<Header, String> {
    let mut avih_fps = None;
    let mut index = 0usize;
    for (id, body) in sub_chunks(hdrl) {
        if &id == b"avih" {
            let us = le32(body, 0)?;
            if us > 0 {
                avih_fps = Some(1e6 / us as f64);
            }
            continue;
        }
        if &id != b"LIST" || body.get(0..4) != Some(b"strl") {
            continue;
        }
        let stream = index;
        index += 1;
        let mut strh = None;
        let mut strf = None;
        for (sid, sbody) in sub_chunks(&body[4..]) {
            match &sid {
                b"strh" => strh = Some(sbody),
                b"strf" => strf = Some(sbody),
                _ => {}
            }
        }
        let Some(strh) = strh else { continue };
        if strh.get(0..4) != Some(b"vids") {
            continue;
        }
        let strf = strf.ok_or_else(|| format!("video stream {stream} has no `strf` chunk"))?;
        let mut handler = [0u8; 4];
        handler.copy_from_slice(strh.get(4..8).ok_or("`strh` is cut off")?);
        let scale = le32(strh, 20)?;
        let rate = le32(strh, 24)?;
        let fps = (scale > 0 && rate > 0)
            .then(|| rate as f64 / scale as f64)
            .or(avih_fps);
        // BITMAPINFOHEADER
        let width = le32(strf, 4)? as i32;
        let height = le32(strf, 8)? as i32;
        let bits = le16(strf, 14)?;
        let mut compression = [0u8; 4];
        compression.copy_from_slice(strf.get(16..20).ok_or("`strf` is cut off")?);
        if width <= 0
            || height == 0
            || (width as usize).saturating_mul(height.unsigned_abs() as usize) > super::MAX_PIXELS
        {
            return Err(format!(
                "video stream {stream} has invalid size {width}x{height}"
            ));
        }
        let (tag, codec) = codec_of(compression, handler, bits, height < 0);
        return Ok(Header {
            stream,
            fourcc: tag,
            codec,
            width: width as usize,
            height: height.unsigned_abs() as usize,
            fps: fps.filter(|f| f.is_finite() && *f > 0.0),
        });
    }
    Err("no video stream".into())
}

/// Reads the 8-byte header of the chunk at `pos`: `(id, size)`.
fn chunk_header(file: &mut File, pos: u64) -> Result<([u8; 4], u32), String> {
    let mut h = [0u8; 8];
    file.seek(SeekFrom::Start(pos))
        .and_then(|_| file.read_exact(&mut h))
        .map_err(|e| format!("reading the chunk header at byte {pos}: {e}"))?;
    let mut id = [0u8; 4];
    id.copy_from_slice(&h[0..4]);
    Ok((id, u32::from_le_bytes([h[4], h[5], h[6], h[7]])))
}

/// Collects the stream's frames from the chunks between `start` and `end` (a `movi` payload or
/// a `rec ` list inside it).
fn walk_movi(
    file: &mut File,
    start: u64,
    end: u64,
    wanted: &[u8; 2],
    depth: usize,
    frames: &mut Vec<Chunk>,
) -> Result<(), String> {
    let mut pos = start;
    while pos + 8 <= end {
        let (id, size) = chunk_header(file, pos)?;
        let body = pos + 8;
        let body_end = body + size as u64;
        if body_end > end {
            // A chunk cut off by the end of the file: what came before still plays.
            tracing::debug!(
                pos,
                size,
                "AVI chunk runs past the end of its list; stopping there"
            );
            break;
        }
        if &id == b"LIST" && size >= 4 && depth < MAX_DEPTH {
            walk_movi(file, body + 4, body_end, wanted, depth + 1, frames)?;
        } else if id[0..2] == wanted[..] && (&id[2..4] == b"dc" || &id[2..4] == b"db") && size > 0 {
            if size as u64 > MAX_FRAME {
                return Err(format!("frame chunk at byte {pos} claims {size} bytes"));
            }
            frames.push(Chunk { offset: body, size });
        }
        pos = body_end + (size as u64 & 1);
    }
    Ok(())
}

/// Parses the AVI file at `path`: the first video stream and its frames.
pub fn parse(path: &Path) -> Result<AviStream, VideoError> {
    let container = |reason: String| VideoError::Container {
        path: path.to_path_buf(),
        format: "AVI",
        reason,
    };
    let mut file = File::open(path).map_err(|e| VideoError::io(path, e))?;
    let len = file.metadata().map_err(|e| VideoError::io(path, e))?.len();
    let mut header: Option<Header> = None;
    let mut frames = Vec::new();
    let mut pos = 0u64;
    while pos + 12 <= len {
        let (id, size) = chunk_header(&mut file, pos).map_err(container)?;
        if &id != b"RIFF" {
            if pos == 0 {
                return Err(container(
                    "the file does not start with a RIFF header".into(),
                ));
            }
            break; // trailing bytes after the last RIFF chunk
        }
        let riff_end = (pos + 8 + size as u64).min(len);
        let mut form = [0u8; 4];
        file.read_exact(&mut form)
            .map_err(|e| VideoError::io(path, e))?;
        if pos == 0 && &form != b"AVI " {
            return Err(container(format!(
                "RIFF form `{}` is not `AVI `",
                fourcc(&form)
            )));
        }
        let mut at = pos + 12;
        while at + 8 <= riff_end {
            let (cid, csize) = chunk_header(&mut file, at).map_err(container)?;
            let body = at + 8;
            let body_end = (body + csize as u64).min(riff_end);
            if &cid == b"LIST" && csize >= 4 {
                let mut kind = [0u8; 4];
                file.read_exact(&mut kind)
                    .map_err(|e| VideoError::io(path, e))?;
                match &kind {
                    b"hdrl" if header.is_none() => {
                        let n = body_end - body;
                        if n > MAX_HEADER {
                            return Err(container(format!(
                                "`hdrl` list of {n} bytes is implausibly large"
                            )));
                        }
                        let mut buf = vec![0u8; n as usize];
                        file.seek(SeekFrom::Start(body))
                            .and_then(|_| file.read_exact(&mut buf))
                            .map_err(|e| VideoError::io(path, e))?;
                        // the list may be cut short by its RIFF chunk's end
                        let list = buf.get(4..).unwrap_or_default();
                        header = Some(parse_header(list).map_err(container)?);
                    }
                    b"movi" => {
                        let Some(h) = &header else {
                            return Err(container("`movi` list before the `hdrl` header".into()));
                        };
                        let wanted = format!("{:02}", h.stream.min(99));
                        let wanted = [wanted.as_bytes()[0], wanted.as_bytes()[1]];
                        walk_movi(&mut file, body + 4, body_end, &wanted, 0, &mut frames)
                            .map_err(container)?;
                    }
                    _ => {}
                }
            }
            at = body + csize as u64 + (csize as u64 & 1);
        }
        pos = pos + 8 + size as u64 + (size as u64 & 1);
    }
    let h = header.ok_or_else(|| container("no `hdrl` header list (truncated?)".into()))?;
    Ok(AviStream {
        fourcc: h.fourcc,
        codec: h.codec,
        width: h.width,
        height: h.height,
        fps: h.fps,
        frames,
    })
}

/// An AVI file opened for random access (every frame is coded on its own).
pub struct AviReader {
    path: PathBuf,
    file: File,
    stream: AviStream,
    codec: AviCodec,
    info: VideoInfo,
}

impl std::fmt::Debug for AviReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AviReader")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl AviReader {
    /// Opens and indexes the file (no frame is decoded yet).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VideoError> {
        let path = path.as_ref();
        let stream = parse(path)?;
        let codec = stream
            .codec
            .clone()
            .map_err(|what| VideoError::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "{what} in AVI; the default build decodes Motion JPEG and uncompressed AVI, \
                 build with the `ffmpeg` feature (system FFmpeg) for other codecs"
                ),
            })?;
        let file = File::open(path).map_err(|e| VideoError::io(path, e))?;
        let info = VideoInfo {
            path: path.to_path_buf(),
            frame_count: stream.frames.len(),
            fps: stream.fps,
            width: stream.width,
            height: stream.height,
            codec: match codec {
                AviCodec::Mjpeg => "mjpeg".into(),
                AviCodec::Bgr { .. } => "rawvideo (bgr)".into(),
                AviCodec::Gray => "rawvideo (gray)".into(),
            },
            container: "avi".into(),
            profile: None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            stream,
            codec,
            info,
        })
    }

    /// The parsed stream.
    pub fn stream(&self) -> &AviStream {
        &self.stream
    }

    fn decode(
        &mut self,
        index: usize,
        buf: &mut Vec<u8>,
        color: ColorMode,
    ) -> Result<Vec<u8>, VideoError> {
        let chunk = self.stream.frames[index];
        let frame_err = |reason: String| VideoError::Frame {
            path: self.path.clone(),
            frame: index,
            reason,
        };
        buf.resize(chunk.size as usize, 0);
        self.file
            .seek(SeekFrom::Start(chunk.offset))
            .and_then(|_| self.file.read_exact(buf))
            .map_err(|e| frame_err(format!("reading the frame: {e}")))?;
        let (w, h) = (self.info.width, self.info.height);
        match self.codec {
            AviCodec::Mjpeg => mjpeg::decode(buf, w, h, color).map_err(frame_err),
            AviCodec::Bgr { bits, top_down } => {
                let px = bits as usize / 8;
                let stride = (w * px).div_ceil(4) * 4;
                if buf.len() < stride * h {
                    return Err(frame_err(format!(
                        "{} bytes for a {w}x{h} {bits}-bit frame (needs {})",
                        buf.len(),
                        stride * h
                    )));
                }
                let mut out = Vec::with_capacity(w * h * color.channels());
                for row in 0..h {
                    let src = if top_down { row } else { h - 1 - row };
                    let line = &buf[src * stride..src * stride + w * px];
                    for p in line.chunks_exact(px) {
                        let (b, g, r) = (p[0], p[1], p[2]);
                        match color {
                            ColorMode::Rgb => out.extend_from_slice(&[r, g, b]),
                            ColorMode::Gray => out.push(super::rgb_to_gray(r, g, b)),
                        }
                    }
                }
                Ok(out)
            }
            AviCodec::Gray => {
                if buf.len() < w * h {
                    return Err(frame_err(format!(
                        "{} bytes for a {w}x{h} gray frame (needs {})",
                        buf.len(),
                        w * h
                    )));
                }
                Ok(super::convert_channels(&buf[..w * h], 1, color))
            }
        }
    }
}

impl VideoReader for AviReader {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn read_frames(&mut self, indices: &[usize], color: ColorMode) -> Result<Clip, VideoError> {
        let wanted = super::distinct_indices(&self.path, indices, self.info.frame_count)?;
        let mut frames = std::collections::HashMap::with_capacity(wanted.len());
        let mut buf = Vec::new();
        for &i in &wanted {
            let f = self.decode(i, &mut buf, color)?;
            frames.insert(i, f);
        }
        let (w, h) = (self.info.width, self.info.height);
        super::gather(&self.path, indices, h, w, color.channels(), |i| {
            frames.get(&i).map(|v| v.as_slice())
        })
    }
}
