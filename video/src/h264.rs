//! H.264 bitstream helpers: NAL unit framing (Annex-B start codes vs. AVCC length prefixes),
//! the few SPS fields a decoder front end needs (size, colour range and matrix from the VUI),
//! and YUV 4:2:0 → gray/RGB conversion that honours them.

/// NAL unit types used here.
pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;

/// Splits an Annex-B byte stream into NAL units (without start codes).
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new(); // (payload start, start-code start)
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let sc = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((i + 3, sc));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &(s, _)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map(|&(_, sc)| sc).unwrap_or(data.len());
        if end > s {
            out.push(&data[s..end]);
        }
    }
    out
}

/// Converts one AVCC sample (NAL units with `length_size`-byte big-endian length prefixes) to
/// Annex-B, appending to `out`. Errors describe the malformed prefix.
pub fn avcc_to_annexb(sample: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), String> {
    if !(1..=4).contains(&length_size) || length_size == 3 {
        return Err(format!("invalid NAL length size {length_size}"));
    }
    let mut i = 0;
    while i < sample.len() {
        if i + length_size > sample.len() {
            return Err(format!(
                "NAL length prefix cut off at byte {i} of a {}-byte sample",
                sample.len()
            ));
        }
        let mut len = 0usize;
        for &b in &sample[i..i + length_size] {
            len = (len << 8) | b as usize;
        }
        i += length_size;
        if len == 0 {
            continue;
        }
        if i + len > sample.len() {
            return Err(format!(
                "NAL unit of {len} bytes at byte {i} runs past the end of the {}-byte sample",
                sample.len()
            ));
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&sample[i..i + len]);
        i += len;
    }
    Ok(())
}

/// The NAL unit type (low 5 bits of the first byte).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map(|b| b & 0x1f).unwrap_or(0)
}

/// The profile an SPS declares, named as FFmpeg names it (`profile_idc` with the constraint
/// flags that single out Constrained Baseline and Intra profiles).
pub fn profile_name(sps: &[u8]) -> &'static str {
    let (idc, flags) = match sps {
        [_, idc, flags, ..] => (*idc, *flags),
        _ => return "unknown",
    };
    let constraint_set1 = flags & 0x40 != 0;
    let constraint_set3 = flags & 0x10 != 0;
    match idc {
        66 if constraint_set1 => "Constrained Baseline",
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 if constraint_set3 => "High 10 Intra",
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4 Predictive",
        44 => "CAVLC 4:4:4 Intra",
        _ => "other",
    }
}

/// Colour signalling from the SPS VUI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColorInfo {
    /// `video_full_range_flag`: luma spans 0..255 instead of 16..235.
    pub full_range: bool,
    /// `matrix_coefficients` (1 = BT.709, 5/6 = BT.601; 2 = unspecified).
    pub matrix: u8,
}

impl Default for ColorInfo {
    fn default() -> Self {
        Self {
            full_range: false,
            matrix: 2,
        }
    }
}

/// What the SPS says about the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub width: usize,
    pub height: usize,
    pub chroma_format_idc: u32,
    pub bit_depth_luma: u32,
    pub color: ColorInfo,
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, String> {
        let byte = self.data.get(self.pos / 8).ok_or("SPS ended early")?;
        let v = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(v as u32)
    }

    fn bits(&mut self, n: u32) -> Result<u32, String> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    fn ue(&mut self) -> Result<u32, String> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err("bad Exp-Golomb code in SPS".into());
            }
        }
        Ok(((1u64 << zeros) - 1 + self.bits(zeros)? as u64) as u32)
    }

    fn se(&mut self) -> Result<i32, String> {
        let k = self.ue()? as i64;
        Ok(if k % 2 == 1 {
            ((k + 1) / 2) as i32
        } else {
            -(k / 2) as i32
        })
    }
}

/// Removes emulation-prevention bytes (`00 00 03` → `00 00`).
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Parses an SPS NAL unit (including its one-byte NAL header).
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, String> {
    if nal_type(nal) != NAL_SPS {
        return Err(format!("NAL type {} is not an SPS", nal_type(nal)));
    }
    let data = rbsp(&nal[1..]);
    let mut r = Bits {
        data: &data,
        pos: 0,
    };
    let profile_idc = r.bits(8)? as u8;
    r.bits(16)?; // constraint flags + level
    r.ue()?; // sps id
    let mut chroma_format_idc = 1;
    let mut bit_depth_luma = 8;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?;
        }
        bit_depth_luma = r.ue()? + 8;
        r.ue()?; // chroma depth
        r.bit()?; // transform bypass
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            let delta = r.se()?;
                            next = (last + delta + 256).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num - 4
    let poc_type = r.ue()?;
    if poc_type == 0 {
        r.ue()?;
    } else if poc_type == 1 {
        r.bit()?;
        r.se()?;
        r.se()?;
        let n = r.ue()?;
        if n > 255 {
            return Err("SPS: too many POC cycle entries".into());
        }
        for _ in 0..n {
            r.se()?;
        }
    }
    r.ue()?; // max refs
    r.bit()?; // gaps
    let w_mbs = r.ue()? as usize + 1;
    let h_units = r.ue()? as usize + 1;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?; // direct 8x8
    let mut width = w_mbs * 16;
    let mut height = h_units * 16 * (2 - frame_mbs_only as usize);
    if r.bit()? == 1 {
        let (l, rt, t, b) = (
            r.ue()? as usize,
            r.ue()? as usize,
            r.ue()? as usize,
            r.ue()? as usize,
        );
        let (cx, cy) = match chroma_format_idc {
            0 | 3 => (1, 2 - frame_mbs_only as usize),
            2 => (2, 2 - frame_mbs_only as usize),
            _ => (2, 2 * (2 - frame_mbs_only as usize)),
        };
        width = width.saturating_sub((l + rt) * cx);
        height = height.saturating_sub((t + b) * cy);
    }
    let mut color = ColorInfo::default();
    if r.bit()? == 1 {
        // VUI
        if r.bit()? == 1 && r.bits(8)? == 255 {
            r.bits(32)?;
        }
        if r.bit()? == 1 {
            r.bit()?;
        }
        if r.bit()? == 1 {
            r.bits(3)?;
            color.full_range = r.bit()? == 1;
            if r.bit()? == 1 {
                r.bits(16)?; // primaries, transfer
                color.matrix = r.bits(8)? as u8;
            }
        }
    }
    Ok(SpsInfo {
        profile_idc,
        width,
        height,
        chroma_format_idc,
        bit_depth_luma,
        color,
    })
}

/// Look-up table from coded luma to full-range gray.
pub fn luma_lut(color: ColorInfo) -> [u8; 256] {
    if color.full_range {
        std::array::from_fn(|y| y as u8)
    } else {
        echojepa_input::limited_range_lut()
    }
}

/// Converts a 4:2:0 picture (planes with strides) to interleaved gray or RGB.
#[allow(clippy::too_many_arguments)]
pub fn yuv420_to(
    y: &[u8],
    u: &[u8],
    v: &[u8],
    strides: (usize, usize, usize),
    width: usize,
    height: usize,
    color: ColorInfo,
    rgb: bool,
    out: &mut Vec<u8>,
) {
    let lut = luma_lut(color);
    if !rgb {
        out.reserve(width * height);
        for row in 0..height {
            let line = &y[row * strides.0..row * strides.0 + width];
            out.extend(line.iter().map(|&v| lut[v as usize]));
        }
        return;
    }
    // BT.709 when signalled, else BT.601 (as FFmpeg assumes for unspecified SD video)
    let (kr, kb) = if color.matrix == 1 {
        (0.2126f32, 0.0722f32)
    } else {
        (0.299f32, 0.114f32)
    };
    let kg = 1.0 - kr - kb;
    let (ys, cs) = if color.full_range {
        (1.0f32, 1.0f32)
    } else {
        (255.0 / 219.0, 255.0 / 224.0)
    };
    let y0 = if color.full_range { 0.0 } else { 16.0 };
    out.reserve(width * height * 3);
    for row in 0..height {
        for col in 0..width {
            let yy = (y[row * strides.0 + col] as f32 - y0) * ys;
            let cb = (u[(row / 2) * strides.1 + col / 2] as f32 - 128.0) * cs;
            let cr = (v[(row / 2) * strides.2 + col / 2] as f32 - 128.0) * cs;
            let r = yy + 2.0 * (1.0 - kr) * cr;
            let b = yy + 2.0 * (1.0 - kb) * cb;
            let g = (yy - kr * r - kb * b) / kg;
            out.push(r.round().clamp(0.0, 255.0) as u8);
            out.push(g.round().clamp(0.0, 255.0) as u8);
            out.push(b.round().clamp(0.0, 255.0) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_and_avcc_round_trip() {
        let stream = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9, 9,
        ];
        let nals = split_annexb(&stream);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 9, 9][..]]
        );
        let mut avcc = Vec::new();
        for n in &nals {
            avcc.extend_from_slice(&(n.len() as u32).to_be_bytes());
            avcc.extend_from_slice(n);
        }
        let mut back = Vec::new();
        avcc_to_annexb(&avcc, 4, &mut back).unwrap();
        assert_eq!(split_annexb(&back), nals);
        // a length prefix that runs past the end is an error naming the byte
        let err = avcc_to_annexb(&[0, 0, 0, 9, 1, 2], 4, &mut Vec::new()).unwrap_err();
        assert!(err.contains("byte 4"), "{err}");
    }

    #[test]
    fn luma_range() {
        let l = luma_lut(ColorInfo {
            full_range: false,
            matrix: 2,
        });
        assert_eq!((l[16], l[235], l[0], l[255]), (0, 255, 0, 255));
        let f = luma_lut(ColorInfo {
            full_range: true,
            matrix: 2,
        });
        assert_eq!(f[100], 100);
    }
}
