//! A small, defensive MP4 / QuickTime (ISO BMFF) demuxer for the first H.264 video track, and
//! the [`Mp4Reader`] that decodes it (rusty_h264, with OpenH264 as the fallback: see `h264dec.rs`).
//!
//! Only the boxes needed to find samples are parsed (`moov/mvhd`, `moov/trak/{edts/elst,mdia/
//! {mdhd,hdlr,minf/stbl/{stsd,stts,ctts,stss,stsz,stz2,stsc,stco,co64}}}`). Every length and
//! index is checked against the file, and every count against the bytes behind it, so a
//! truncated or corrupt file is an error naming the file and what is wrong, never a panic or a
//! huge allocation. Frames are returned in presentation order (`ctts`), and only those the first
//! non-empty edit of `elst` shows (samples before it are decoded as references but not
//! returned), as FFmpeg counts them. Fragmented MP4 and non-H.264 tracks are reported as
//! unsupported (the `ffmpeg` feature reads them).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use std::collections::{BTreeSet, HashMap};

use super::h264::{self, ColorInfo};
use super::h264dec::{Backend, DecodeFailure, H264Decoder, Picture};
use super::{Clip, ColorMode, VideoError, VideoInfo, VideoReader};

/// Largest `moov` box we read into memory.
const MAX_MOOV: u64 = 512 << 20;
/// Largest single sample we read.
const MAX_SAMPLE: u32 = 64 << 20;

/// Where one coded frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub offset: u64,
    pub size: u32,
    /// Decode timestamp in track timescale units.
    pub dts: u64,
    /// Composition offset (presentation = dts + cts_offset).
    pub cts_offset: i64,
    pub sync: bool,
}

/// The parsed video track.
#[derive(Debug, Clone)]
pub struct Track {
    pub codec: String,
    pub width: usize,
    pub height: usize,
    pub timescale: u32,
    /// Duration in timescale units (sum of sample deltas).
    pub duration: u64,
    pub nal_length_size: usize,
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
    /// Samples in decode order.
    pub samples: Vec<Sample>,
    /// `display[k]` = decode index of the k-th frame in presentation order.
    pub display: Vec<usize>,
}

struct Cur<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cur<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.pos + n > self.data.len() {
            return Err(format!(
                "`{}` box is truncated ({} bytes, needs {})",
                self.what,
                self.data.len(),
                self.pos + n
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// Entry count checked against the remaining bytes (`entry` bytes each).
    fn count(&mut self, entry: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(entry) > self.data.len() - self.pos {
            return Err(format!(
                "`{}` box claims {n} entries but holds {} bytes",
                self.what,
                self.data.len() - self.pos
            ));
        }
        Ok(n)
    }
}

/// Iterates the child boxes of `data`: `(type, payload)`.
fn children(data: &[u8]) -> Result<Vec<([u8; 4], &[u8])>, String> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i + 8 <= data.len() {
        let size32 = u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as u64;
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&data[i + 4..i + 8]);
        let (header, size) = match size32 {
            0 => (8u64, (data.len() - i) as u64),
            1 => {
                if i + 16 > data.len() {
                    return Err(format!("box `{}` has a cut-off 64-bit size", fourcc(&kind)));
                }
                let mut a = [0u8; 8];
                a.copy_from_slice(&data[i + 8..i + 16]);
                (16, u64::from_be_bytes(a))
            }
            s => (8, s),
        };
        if size < header || i as u64 + size > data.len() as u64 {
            return Err(format!(
                "box `{}` at byte {i} has size {size} beyond its parent",
                fourcc(&kind)
            ));
        }
        out.push((kind, &data[i + header as usize..i + size as usize]));
        i += size as usize;
    }
    Ok(out)
}

fn fourcc(k: &[u8; 4]) -> String {
    k.iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, String> {
    Ok(children(data)?
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, d)| d))
}

fn need<'a>(data: &'a [u8], kind: &[u8; 4], parent: &str) -> Result<&'a [u8], String> {
    child(data, kind)?.ok_or_else(|| format!("`{parent}` has no `{}` box", fourcc(kind)))
}

/// Reads the top-level boxes of a file and returns the `moov` payload.
fn read_moov(file: &mut File, len: u64) -> Result<Vec<u8>, String> {
    let mut pos = 0u64;
    let mut moov = None;
    while pos + 8 <= len {
        file.seek(SeekFrom::Start(pos)).map_err(|e| e.to_string())?;
        let mut h = [0u8; 16];
        let got = file.read(&mut h).map_err(|e| e.to_string())?;
        if got < 8 {
            break;
        }
        let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
        let kind = [h[4], h[5], h[6], h[7]];
        let (header, size) = match size32 {
            0 => (8, len - pos),
            1 if got >= 16 => (
                16,
                u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
            ),
            1 => return Err(format!("top-level box at byte {pos} is cut off")),
            s => (8, s),
        };
        if size < header {
            return Err(format!(
                "top-level box `{}` at byte {pos} has invalid size {size}",
                fourcc(&kind)
            ));
        }
        if pos + size > len {
            if &kind == b"moov" {
                return Err(format!(
                    "`moov` box at byte {pos} runs past the end of the file (truncated?)"
                ));
            }
            if &kind == b"mdat" {
                // media data cut short: samples past the end are caught below
                pos = len;
                continue;
            }
            return Err(format!(
                "box `{}` at byte {pos} runs past the end of the file (truncated?)",
                fourcc(&kind)
            ));
        }
        match &kind {
            b"moov" => {
                if size - header > MAX_MOOV {
                    return Err(format!("`moov` box of {size} bytes is implausibly large"));
                }
                let mut buf = vec![0u8; (size - header) as usize];
                file.seek(SeekFrom::Start(pos + header))
                    .map_err(|e| e.to_string())?;
                file.read_exact(&mut buf).map_err(|e| e.to_string())?;
                moov = Some(buf);
            }
            b"moof" => return Err("fragmented MP4 (`moof`)".into()),
            _ => {}
        }
        pos += size;
    }
    moov.ok_or_else(|| "no `moov` box (not an MP4, or truncated before the index)".into())
}

/// Parses the first video track of the MP4 at `path`.
pub fn parse(path: &Path) -> Result<Track, VideoError> {
    let mut file = File::open(path).map_err(|e| VideoError::io(path, e))?;
    let len = file.metadata().map_err(|e| VideoError::io(path, e))?.len();
    let container = |reason: String| VideoError::Container {
        path: path.to_path_buf(),
        format: "MP4",
        reason,
    };
    let moov = read_moov(&mut file, len).map_err(|r| {
        if r.starts_with("fragmented") {
            VideoError::Unsupported {
                path: path.to_path_buf(),
                what: r,
            }
        } else {
            container(r)
        }
    })?;
    let track = parse_moov(&moov, len).map_err(|e| match e {
        ParseError::Bad(r) => container(r),
        ParseError::Unsupported(r) => VideoError::Unsupported {
            path: path.to_path_buf(),
            what: r,
        },
    })?;
    for (i, s) in track.samples.iter().enumerate() {
        if s.offset
            .checked_add(s.size as u64)
            .is_none_or(|end| end > len)
        {
            return Err(container(format!(
                "sample {i} (bytes {}..{}) lies past the end of the {len}-byte file (truncated?)",
                s.offset,
                s.offset.saturating_add(s.size as u64)
            )));
        }
    }
    Ok(track)
}

enum ParseError {
    Bad(String),
    Unsupported(String),
}

impl From<String> for ParseError {
    fn from(s: String) -> Self {
        ParseError::Bad(s)
    }
}

/// The part of the media timeline an edit list shows: `[start, end)` in media timescale units
/// (`end` is `None` for "to the end").
type Edit = (i64, Option<i64>);

/// The first non-empty edit of `edts/elst` (empty edits only delay the start, which does not
/// change which frames are shown). Later edits, rare in echo files, are not followed.
fn first_edit(
    edts: &[u8],
    movie_timescale: u32,
    media_timescale: u32,
) -> Result<Option<Edit>, String> {
    let Some(elst) = child(edts, b"elst")? else {
        return Ok(None);
    };
    let mut c = Cur::new(elst, "elst");
    let version = c.u8()?;
    c.take(3)?;
    let n = c.count(if version == 1 { 20 } else { 12 })?;
    for _ in 0..n {
        let (duration, media_time) = if version == 1 {
            (c.u64()?, c.u64()? as i64)
        } else {
            (c.u32()? as u64, c.u32()? as i32 as i64)
        };
        c.take(4)?; // media rate
        if media_time < 0 {
            continue; // an empty edit
        }
        let end = (duration > 0 && movie_timescale > 0).then(|| {
            let d = duration as u128 * media_timescale as u128 / movie_timescale as u128;
            media_time.saturating_add(i64::try_from(d).unwrap_or(i64::MAX))
        });
        return Ok(Some((media_time, end)));
    }
    Ok(None)
}

/// Decode indices in presentation order, of the samples the edit shows (all samples when there
/// is no edit, or when the edit would show none).
fn presentation_order(samples: &[Sample], edit: Option<Edit>) -> Vec<usize> {
    let pts = |i: usize| samples[i].dts as i128 + samples[i].cts_offset as i128;
    let mut display: Vec<usize> = (0..samples.len()).collect();
    display.sort_by_key(|&i| (pts(i), i));
    if let Some((start, end)) = edit {
        let shown: Vec<usize> = display
            .iter()
            .copied()
            .filter(|&i| pts(i) >= start as i128 && end.is_none_or(|e| pts(i) < e as i128))
            .collect();
        if !shown.is_empty() {
            return shown;
        }
    }
    display
}

/// The movie timescale from `mvhd` (edit durations are in it).
fn movie_timescale(moov: &[u8]) -> Result<u32, String> {
    let Some(mvhd) = child(moov, b"mvhd")? else {
        return Ok(0);
    };
    let mut c = Cur::new(mvhd, "mvhd");
    let version = c.u8()?;
    c.take(3)?;
    c.take(if version == 1 { 16 } else { 8 })?;
    c.u32()
}

fn parse_moov(moov: &[u8], file_len: u64) -> Result<Track, ParseError> {
    let movie_timescale = movie_timescale(moov)?;
    let mut other_codec = None;
    for (kind, trak) in children(moov)? {
        if &kind != b"trak" {
            continue;
        }
        let mdia = need(trak, b"mdia", "trak")?;
        let hdlr = need(mdia, b"hdlr", "mdia")?;
        if hdlr.len() < 12 || &hdlr[8..12] != b"vide" {
            continue;
        }
        let mdhd = need(mdia, b"mdhd", "mdia")?;
        let mut c = Cur::new(mdhd, "mdhd");
        let version = c.u8()?;
        c.take(3)?;
        let timescale = if version == 1 {
            c.take(16)?;
            c.u32()?
        } else {
            c.take(8)?;
            c.u32()?
        };
        if timescale == 0 {
            return Err("`mdhd` timescale is 0".to_string().into());
        }
        let stbl = need(need(mdia, b"minf", "mdia")?, b"stbl", "minf")?;
        let stsd = need(stbl, b"stsd", "stbl")?;
        let mut c = Cur::new(stsd, "stsd");
        c.take(4)?;
        if c.u32()? == 0 {
            return Err("`stsd` has no sample entry".to_string().into());
        }
        let entry = children(&stsd[8..])?;
        let (codec, payload) = entry
            .first()
            .ok_or_else(|| "`stsd` entry missing".to_string())?;
        if !matches!(codec, b"avc1" | b"avc3") {
            other_codec = Some(fourcc(codec));
            continue;
        }
        // VisualSampleEntry: 6 reserved + 2 ref index + 16 + width(2) height(2) + 50 = 78 bytes
        let mut c = Cur::new(payload, "avc1");
        c.take(24)?;
        let width = c.u16()? as usize;
        let height = c.u16()? as usize;
        c.take(50)?;
        let avcc = need(&payload[78..], b"avcC", "avc1")?;
        let mut c = Cur::new(avcc, "avcC");
        c.take(4)?;
        let nal_length_size = (c.u8()? & 3) as usize + 1;
        let nsps = (c.u8()? & 0x1f) as usize;
        let mut sps = Vec::new();
        for _ in 0..nsps {
            let l = c.u16()? as usize;
            sps.push(c.take(l)?.to_vec());
        }
        let npps = c.u8()? as usize;
        let mut pps = Vec::new();
        for _ in 0..npps {
            let l = c.u16()? as usize;
            pps.push(c.take(l)?.to_vec());
        }
        if sps.is_empty() || pps.is_empty() {
            return Err("`avcC` holds no SPS/PPS".to_string().into());
        }
        let samples = sample_table(stbl, file_len)?;
        let duration = samples
            .last()
            .map(|s| s.dts)
            .unwrap_or(0)
            .saturating_add(last_delta(stbl)?);
        let edit = match child(trak, b"edts")? {
            Some(edts) => first_edit(edts, movie_timescale, timescale)?,
            None => None,
        };
        let display = presentation_order(&samples, edit);
        return Ok(Track {
            codec: if codec == b"avc1" {
                "h264".into()
            } else {
                "h264 (avc3)".into()
            },
            width,
            height,
            timescale,
            duration,
            nal_length_size,
            sps,
            pps,
            samples,
            display,
        });
    }
    Err(match other_codec {
        Some(c) => ParseError::Unsupported(format!(
            "video codec `{c}` (only H.264 is built in; the `ffmpeg` feature reads others)"
        )),
        None => ParseError::Bad("no video track".into()),
    })
}

fn last_delta(stbl: &[u8]) -> Result<u64, String> {
    let stts = need(stbl, b"stts", "stbl")?;
    let mut c = Cur::new(stts, "stts");
    c.take(4)?;
    let n = c.count(8)?;
    let mut last = 0;
    for _ in 0..n {
        let count = c.u32()?;
        let delta = c.u32()?;
        if count > 0 {
            last = delta as u64;
        }
    }
    Ok(last)
}

/// The sample table. Every count is bounded by the bytes that back it: entries by the box that
/// lists them, samples of a uniform size by the file (they must lie in it), so a small file
/// cannot make us allocate for millions of samples it does not hold.
fn sample_table(stbl: &[u8], file_len: u64) -> Result<Vec<Sample>, String> {
    let sizes = sample_sizes(stbl, file_len)?;
    let n = sizes.len();
    let offsets = place_samples(stbl, &chunk_offsets(stbl)?, &sizes)?;
    let dts = decode_times(stbl, n)?;
    let cts = composition_offsets(stbl, n)?;
    let sync = sync_flags(stbl, n)?;
    Ok((0..n)
        .map(|i| Sample {
            offset: offsets[i],
            size: sizes[i],
            dts: dts[i],
            cts_offset: cts[i],
            sync: sync[i],
        })
        .collect())
}

/// Sample sizes from `stsz` or the compact `stz2`.
fn sample_sizes(stbl: &[u8], file_len: u64) -> Result<Vec<u32>, String> {
    let sizes: Vec<u32> = if let Some(stsz) = child(stbl, b"stsz")? {
        let mut c = Cur::new(stsz, "stsz");
        c.take(4)?;
        let uniform = c.u32()?;
        if uniform != 0 {
            let n = c.u32()? as usize;
            if n as u64 > file_len / uniform as u64 {
                return Err(format!(
                    "`stsz` claims {n} samples of {uniform} bytes, more than the {file_len}-byte file holds"
                ));
            }
            vec![uniform; n]
        } else {
            let n = c.count(4)?;
            (0..n).map(|_| c.u32()).collect::<Result<_, _>>()?
        }
    } else if let Some(stz2) = child(stbl, b"stz2")? {
        let mut c = Cur::new(stz2, "stz2");
        c.take(7)?;
        let field = c.u8()?;
        let n = c.u32()? as usize;
        let bytes = match field {
            4 => n.div_ceil(2),
            8 => n,
            16 => 2 * n,
            _ => return Err(format!("`stz2` field size {field}")),
        };
        let raw = c.take(bytes)?;
        (0..n)
            .map(|i| match field {
                4 => {
                    (if i % 2 == 0 {
                        raw[i / 2] >> 4
                    } else {
                        raw[i / 2] & 15
                    }) as u32
                }
                8 => raw[i] as u32,
                _ => u16::from_be_bytes([raw[2 * i], raw[2 * i + 1]]) as u32,
            })
            .collect()
    } else {
        return Err("`stbl` has no `stsz`/`stz2` box".into());
    };
    if let Some((i, s)) = sizes.iter().enumerate().find(|(_, s)| **s > MAX_SAMPLE) {
        return Err(format!("sample {i} claims {s} bytes"));
    }
    Ok(sizes)
}

/// Chunk offsets from `stco` or `co64`.
fn chunk_offsets(stbl: &[u8]) -> Result<Vec<u64>, String> {
    Ok(if let Some(stco) = child(stbl, b"stco")? {
        let mut c = Cur::new(stco, "stco");
        c.take(4)?;
        let k = c.count(4)?;
        (0..k)
            .map(|_| c.u32().map(|v| v as u64))
            .collect::<Result<_, _>>()?
    } else if let Some(co64) = child(stbl, b"co64")? {
        let mut c = Cur::new(co64, "co64");
        c.take(4)?;
        let k = c.count(8)?;
        (0..k).map(|_| c.u64()).collect::<Result<_, _>>()?
    } else {
        return Err("`stbl` has no `stco`/`co64` box".into());
    })
}

/// The file offset of every sample: `stsc` runs of samples per chunk, laid out from each chunk's
/// offset by the sample sizes.
fn place_samples(stbl: &[u8], offsets: &[u64], sizes: &[u32]) -> Result<Vec<u64>, String> {
    let n = sizes.len();
    let stsc = need(stbl, b"stsc", "stbl")?;
    let mut c = Cur::new(stsc, "stsc");
    c.take(4)?;
    let k = c.count(12)?;
    let mut runs = Vec::with_capacity(k);
    for _ in 0..k {
        let first = c.u32()?;
        let per = c.u32()?;
        c.u32()?;
        runs.push((first, per));
    }
    let mut sample_offsets = Vec::with_capacity(n);
    let mut s = 0usize;
    for (ri, &(first, per)) in runs.iter().enumerate() {
        if first == 0 || per == 0 {
            return Err(format!(
                "`stsc` entry {ri} is invalid (first chunk {first}, {per} samples per chunk)"
            ));
        }
        let next_first = runs
            .get(ri + 1)
            .map(|r| r.0)
            .unwrap_or(offsets.len() as u32 + 1);
        if next_first < first {
            return Err(format!("`stsc` entries out of order at {ri}"));
        }
        for chunk in first..next_first {
            let Some(&base) = offsets.get(chunk as usize - 1) else {
                return Err(format!(
                    "`stsc` refers to chunk {chunk} but there are {} chunks",
                    offsets.len()
                ));
            };
            let mut off = base;
            for _ in 0..per {
                if s >= n {
                    break;
                }
                sample_offsets.push(off);
                off = off.saturating_add(sizes[s] as u64);
                s += 1;
            }
        }
    }
    if sample_offsets.len() != n {
        return Err(format!(
            "chunk tables place {} of {n} samples",
            sample_offsets.len()
        ));
    }
    Ok(sample_offsets)
}

/// Decode timestamps from `stts`.
fn decode_times(stbl: &[u8], n: usize) -> Result<Vec<u64>, String> {
    let stts = need(stbl, b"stts", "stbl")?;
    let mut c = Cur::new(stts, "stts");
    c.take(4)?;
    let k = c.count(8)?;
    let mut dts = Vec::with_capacity(n);
    let mut t = 0u64;
    for _ in 0..k {
        let count = c.u32()? as usize;
        let delta = c.u32()? as u64;
        for _ in 0..count {
            if dts.len() == n {
                break;
            }
            dts.push(t);
            t = t.saturating_add(delta);
        }
    }
    if dts.len() != n {
        return Err(format!("`stts` times {} of {n} samples", dts.len()));
    }
    Ok(dts)
}

/// Composition offsets from `ctts` (zero without it: presentation order is decode order).
fn composition_offsets(stbl: &[u8], n: usize) -> Result<Vec<i64>, String> {
    let mut cts = vec![0i64; n];
    if let Some(ctts) = child(stbl, b"ctts")? {
        let mut c = Cur::new(ctts, "ctts");
        let version = c.u8()?;
        c.take(3)?;
        let k = c.count(8)?;
        let mut i = 0usize;
        for _ in 0..k {
            let count = c.u32()? as usize;
            let raw = c.u32()?;
            let off = if version == 1 {
                raw as i32 as i64
            } else {
                raw as i64
            };
            for _ in 0..count.min(n - i) {
                cts[i] = off;
                i += 1;
            }
        }
    }
    Ok(cts)
}

/// Sync samples from `stss` (every sample is one without it).
fn sync_flags(stbl: &[u8], n: usize) -> Result<Vec<bool>, String> {
    let mut sync = vec![true; n];
    if let Some(stss) = child(stbl, b"stss")? {
        sync.fill(false);
        let mut c = Cur::new(stss, "stss");
        c.take(4)?;
        let k = c.count(4)?;
        for _ in 0..k {
            let i = c.u32()? as usize;
            if i >= 1 && i <= n {
                sync[i - 1] = true;
            }
        }
    }
    Ok(sync)
}

/// Why a decode session stopped.
enum SessionError {
    /// The backend lacks a coding tool the stream uses (another backend may have it).
    Unsupported {
        frame: usize,
        what: String,
    },
    Video(VideoError),
}

impl From<VideoError> for SessionError {
    fn from(e: VideoError) -> Self {
        SessionError::Video(e)
    }
}

/// Where decoded pictures go: the wanted frames of one `read_frames` call, converted.
struct Target<'a> {
    /// decode index -> presentation index
    position: &'a [usize],
    /// decode index -> shown (not hidden by an edit list)
    shown: &'a [bool],
    wanted: &'a BTreeSet<usize>,
    width: usize,
    height: usize,
    color_info: ColorInfo,
    color: ColorMode,
}

impl Target<'_> {
    fn store(&self, pic: Picture<'_>, frames: &mut HashMap<usize, Vec<u8>>) -> Result<(), String> {
        let Some(d) = usize::try_from(pic.tag)
            .ok()
            .filter(|&d| d < self.position.len())
        else {
            return Err(format!(
                "decoder returned a picture with unknown tag {}",
                pic.tag
            ));
        };
        let shown = self.position[d];
        if !self.shown[d] || !self.wanted.contains(&shown) || frames.contains_key(&shown) {
            return Ok(());
        }
        let (w, h) = (self.width, self.height);
        if pic.width < w || pic.height < h {
            return Err(format!(
                "frame {shown}: decoded {}x{}, expected {w}x{h}",
                pic.width, pic.height
            ));
        }
        let mut out = Vec::with_capacity(w * h * self.color.channels());
        h264::yuv420_to(
            pic.y,
            pic.u,
            pic.v,
            pic.strides,
            w,
            h,
            self.color_info,
            self.color == ColorMode::Rgb,
            &mut out,
        );
        frames.insert(shown, out);
        Ok(())
    }
}

/// `mov` for a QuickTime file (major brand `qt  `), else `mp4`.
fn container_brand(path: &Path) -> String {
    let mut head = [0u8; 12];
    let quicktime = File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[4..8] == b"ftyp"
        && &head[8..12] == b"qt  ";
    if quicktime { "mov" } else { "mp4" }.into()
}

/// An H.264 MP4 file opened for random access.
pub struct Mp4Reader {
    path: PathBuf,
    file: File,
    track: Track,
    info: VideoInfo,
    color: ColorInfo,
    /// decode index -> presentation index (inverse of `track.display`; for a sample an edit
    /// list hides, the next frame shown)
    position: Vec<usize>,
    /// decode index -> is the sample shown (edit lists hide some)
    shown: Vec<bool>,
    /// decode index -> the last sync sample at or before it
    sync_at: Vec<usize>,
    /// The decoder tried first (rusty_h264 outside tests).
    first_backend: Backend,
}

impl std::fmt::Debug for Mp4Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mp4Reader")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Mp4Reader {
    /// Opens and indexes the file (no frame is decoded yet).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VideoError> {
        let path = path.as_ref();
        let track = parse(path)?;
        let sps = h264::parse_sps(&track.sps[0]).map_err(|r| VideoError::Container {
            path: path.to_path_buf(),
            format: "MP4",
            reason: format!("bad SPS in `avcC`: {r}"),
        })?;
        if sps.bit_depth_luma != 8 || sps.chroma_format_idc != 1 {
            return Err(VideoError::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "H.264 with {}-bit luma and chroma format {} (the built-in decoders read 8-bit 4:2:0; build with the `ffmpeg` feature)",
                    sps.bit_depth_luma, sps.chroma_format_idc
                ),
            });
        }
        if sps.width.saturating_mul(sps.height) > super::MAX_PIXELS
            || sps.width == 0
            || sps.height == 0
        {
            return Err(VideoError::Container {
                path: path.to_path_buf(),
                format: "MP4",
                reason: format!(
                    "the SPS declares an implausible {}x{} picture",
                    sps.width, sps.height
                ),
            });
        }
        let file = File::open(path).map_err(|e| VideoError::io(path, e))?;
        let secs = track.duration as f64 / track.timescale as f64;
        let n = track.samples.len();
        let fps = (secs > 0.0 && n > 0).then(|| n as f64 / secs);
        let (width, height) = if sps.width > 0 && sps.height > 0 {
            (sps.width, sps.height)
        } else {
            (track.width, track.height)
        };
        let info = VideoInfo {
            path: path.to_path_buf(),
            frame_count: track.display.len(),
            fps,
            width,
            height,
            codec: track.codec.clone(),
            container: container_brand(path),
            profile: Some(h264::profile_name(&track.sps[0]).to_string()),
        };
        // Samples an edit list hides are decoded (later frames may reference them) but never
        // returned; for messages they count as the next frame shown.
        let mut position = vec![usize::MAX; n];
        let mut shown = vec![false; n];
        for (k, &d) in track.display.iter().enumerate() {
            position[d] = k;
            shown[d] = true;
        }
        let mut next = track.display.len().saturating_sub(1);
        for d in (0..n).rev() {
            if shown[d] {
                next = position[d];
            } else {
                position[d] = next;
            }
        }
        let mut sync_at = vec![0; n];
        let mut last = 0;
        for (d, s) in track.samples.iter().enumerate() {
            if s.sync {
                last = d;
            }
            sync_at[d] = last;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            color: sps.color,
            track,
            info,
            position,
            shown,
            sync_at,
            first_backend: Backend::Rusty,
        })
    }

    /// Decodes with OpenH264 only (tests of the fallback path).
    #[cfg(test)]
    pub(crate) fn with_openh264(mut self) -> Self {
        self.first_backend = Backend::OpenH264;
        self
    }

    /// The parsed sample table.
    pub fn track(&self) -> &Track {
        &self.track
    }

    /// Decode index of the last sync sample at or before decode index `d`.
    fn sync_before(&self, d: usize) -> usize {
        self.sync_at[d]
    }

    fn pts(&self, d: usize) -> i128 {
        let s = &self.track.samples[d];
        s.dts as i128 + s.cts_offset as i128
    }

    /// Where a decode session for the frame at decode index `d` starts: its sync sample, or an
    /// earlier one when the frame is shown before that sync sample (an open GOP's leading
    /// pictures reference the previous group).
    fn session_start(&self, d: usize) -> usize {
        let mut start = self.sync_before(d);
        while start > 0 && self.pts(start) > self.pts(d) {
            start = self.sync_before(start - 1);
        }
        start
    }

    /// The SPS and PPS of `avcC` as Annex-B, fed before the first access unit of a session.
    fn parameter_sets(&self) -> Vec<u8> {
        let mut header = Vec::new();
        for nal in self.track.sps.iter().chain(self.track.pps.iter()) {
            header.extend_from_slice(&[0, 0, 0, 1]);
            header.extend_from_slice(nal);
        }
        header
    }

    /// Runs one decoder session from the sync sample `start`, storing the wanted frames (by
    /// presentation index) that come out, until every wanted frame whose session starts before
    /// the next sync sample is out. Returns the decode index where the session stopped.
    fn run_session(
        &mut self,
        start: usize,
        wanted: &BTreeSet<usize>,
        frames: &mut HashMap<usize, Vec<u8>>,
        color: ColorMode,
    ) -> Result<usize, VideoError> {
        match self.run_session_with(self.first_backend, start, wanted, frames, color) {
            Err(SessionError::Unsupported { frame, what }) => {
                tracing::debug!(
                    path = %self.path.display(),
                    frame,
                    "rusty_h264 does not implement {what}; decoding with OpenH264"
                );
                match self.run_session_with(Backend::OpenH264, start, wanted, frames, color) {
                    Ok(end) => Ok(end),
                    Err(SessionError::Video(e)) => Err(e),
                    Err(SessionError::Unsupported { frame, what }) => Err(VideoError::Frame {
                        path: self.path.clone(),
                        frame,
                        reason: format!("H.264 decode failed: {what}"),
                    }),
                }
            }
            Err(SessionError::Video(e)) => Err(e),
            Ok(end) => Ok(end),
        }
    }

    fn run_session_with(
        &mut self,
        backend: Backend,
        start: usize,
        wanted: &BTreeSet<usize>,
        frames: &mut HashMap<usize, Vec<u8>>,
        color: ColorMode,
    ) -> Result<usize, SessionError> {
        let (w, h) = (self.info.width, self.info.height);
        let path = self.path.clone();
        let frame_err = |frame: usize, reason: String| VideoError::Frame {
            path: path.clone(),
            frame,
            reason,
        };
        let mut decoder =
            H264Decoder::new(backend).map_err(|r| frame_err(self.position[start], r))?;
        let target = Target {
            position: &self.position,
            shown: &self.shown,
            wanted,
            width: w,
            height: h,
            color_info: self.color,
            color,
        };
        let n = self.track.samples.len();
        let mut sample = Vec::new();
        let mut annexb = self.parameter_sets();
        let mut d = start;
        while d < n {
            if d > start && self.track.samples[d].sync {
                // Stop at a sync sample once no wanted frame still missing needs this session.
                let next_needed = wanted
                    .iter()
                    .filter(|f| !frames.contains_key(f))
                    .map(|&f| self.session_start(self.track.display[f]))
                    .min();
                if next_needed.is_none_or(|s| s >= d) {
                    break;
                }
            }
            let s = self.track.samples[d];
            sample.resize(s.size as usize, 0);
            self.file
                .seek(SeekFrom::Start(s.offset))
                .and_then(|_| self.file.read_exact(&mut sample))
                .map_err(|e| frame_err(self.position[d], format!("reading sample: {e}")))?;
            h264::avcc_to_annexb(&sample, self.track.nal_length_size, &mut annexb)
                .map_err(|r| frame_err(self.position[d], r))?;
            match decoder.decode(&annexb, d as u64, &mut |pic| target.store(pic, frames)) {
                Ok(()) => {}
                Err(DecodeFailure::Unsupported(what)) => {
                    return Err(SessionError::Unsupported {
                        frame: self.position[d],
                        what,
                    });
                }
                Err(DecodeFailure::Failed(r)) => {
                    return Err(
                        frame_err(self.position[d], format!("H.264 decode failed: {r}")).into(),
                    );
                }
            }
            annexb.clear();
            d += 1;
        }
        decoder
            .drain(&mut |pic| target.store(pic, frames))
            .map_err(|r| {
                frame_err(
                    self.position[d.min(n - 1)],
                    format!("H.264 drain failed: {r}"),
                )
            })?;
        Ok(d)
    }
}

impl VideoReader for Mp4Reader {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn read_frames(&mut self, indices: &[usize], color: ColorMode) -> Result<Clip, VideoError> {
        let wanted: BTreeSet<usize> =
            super::distinct_indices(&self.path, indices, self.info.frame_count)?
                .into_iter()
                .collect();
        let mut frames: HashMap<usize, Vec<u8>> = HashMap::with_capacity(wanted.len());
        loop {
            let missing = wanted
                .iter()
                .filter(|f| !frames.contains_key(f))
                .map(|&f| (self.session_start(self.track.display[f]), f))
                .min();
            let Some((start, first)) = missing else { break };
            let end = self.run_session(start, &wanted, &mut frames, color)?;
            // Every wanted frame whose data lay inside the session must be out by now.
            if let Some(&lost) = wanted
                .iter()
                .find(|&&f| !frames.contains_key(&f) && self.track.display[f] < end)
            {
                return Err(VideoError::Frame {
                    path: self.path.clone(),
                    frame: lost,
                    reason: "the decoder produced no picture for this frame (corrupt stream?)"
                        .into(),
                });
            }
            if !frames.contains_key(&first) && end <= start {
                return Err(VideoError::Frame {
                    path: self.path.clone(),
                    frame: first,
                    reason: "no progress decoding this frame".into(),
                });
            }
        }
        let (w, h) = (self.info.width, self.info.height);
        super::gather(&self.path, indices, h, w, color.channels(), |i| {
            frames.get(&i).map(|v| v.as_slice())
        })
    }
}
