//! Convert stage: any captured pixel format to 8-bit grey. Echo is a grey-scale modality and the
//! model takes grey replicated to three channels, so grey is what the rest of the pipeline carries.
//!
//! YUYV keeps the luma bytes (expanded from 16–235 to 0–255 when the board says its device sends
//! limited range, as video files are decoded), RGB uses the BT.601 luma weights
//! (`echojepa_input::rgb_to_gray`, as for video files), MJPEG is decoded to luma. A frame
//! whose size does not match its format, or a JPEG that does not decode, is a [`ConvertError`]
//! naming the frame; the pipeline skips and counts it and carries on with the next frame.

use boards::LumaRange;

use crate::frame::{Frame, GrayImage, PixelFormat, bytes_per_pixel};

/// A frame that cannot be converted.
#[derive(Debug, thiserror::Error)]
#[error("frame {seq} ({format} {width}x{height}): {reason}")]
pub struct ConvertError {
    pub seq: u64,
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub reason: String,
}

/// The grey image of a frame, YUYV luma taken as full range.
pub fn to_gray(frame: &Frame) -> Result<GrayImage, ConvertError> {
    to_gray_with(frame, LumaRange::Full)
}

/// The grey image of a frame, YUYV luma in `range`.
pub fn to_gray_with(frame: &Frame, range: LumaRange) -> Result<GrayImage, ConvertError> {
    let err = |reason: String| ConvertError {
        seq: frame.seq,
        format: frame.format,
        width: frame.width,
        height: frame.height,
        reason,
    };
    let (w, h) = (frame.width as usize, frame.height as usize);
    if w == 0 || h == 0 {
        return Err(err("zero-sized frame".into()));
    }
    if frame.format == PixelFormat::Mjpg {
        return decode_jpeg(&frame.data, w, h).map_err(err);
    }
    let bpp = bytes_per_pixel(frame.format).unwrap_or(1);
    if frame.format == PixelFormat::Yuyv && w % 2 != 0 {
        return Err(err("YUYV needs an even width".into()));
    }
    let stride = if frame.stride == 0 {
        w * bpp
    } else {
        frame.stride
    };
    if stride < w * bpp {
        return Err(err(format!(
            "stride {stride} is less than width x {bpp} bytes = {}",
            w * bpp
        )));
    }
    let needed = stride * (h - 1) + w * bpp;
    if frame.data.len() < needed {
        return Err(err(format!(
            "{} bytes, a full frame needs {needed} (truncated)",
            frame.data.len()
        )));
    }
    let mut out = GrayImage::new(w, h);
    let lut = (range == LumaRange::Limited).then(echojepa_input::limited_range_lut);
    for y in 0..h {
        let row = &frame.data[y * stride..y * stride + w * bpp];
        let dst = &mut out.data[y * w..(y + 1) * w];
        match frame.format {
            PixelFormat::Grey => dst.copy_from_slice(row),
            PixelFormat::Yuyv => match &lut {
                None => {
                    for (d, px) in dst.iter_mut().zip(row.chunks_exact(2)) {
                        *d = px[0];
                    }
                }
                Some(lut) => {
                    for (d, px) in dst.iter_mut().zip(row.chunks_exact(2)) {
                        *d = lut[px[0] as usize];
                    }
                }
            },
            PixelFormat::Rgb3 => {
                for (d, px) in dst.iter_mut().zip(row.chunks_exact(3)) {
                    *d = echojepa_input::rgb_to_gray(px[0], px[1], px[2]);
                }
            }
            PixelFormat::Mjpg => unreachable!("handled above"),
        }
    }
    Ok(out)
}

fn decode_jpeg(bytes: &[u8], w: usize, h: usize) -> Result<GrayImage, String> {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Err(format!(
            "not a JPEG ({} bytes, no start-of-image marker)",
            bytes.len()
        ));
    }
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)
        .map_err(|e| format!("JPEG does not decode: {e}"))?;
    let luma = img.to_luma8();
    let (dw, dh) = (luma.width() as usize, luma.height() as usize);
    if (dw, dh) != (w, h) {
        return Err(format!(
            "JPEG is {dw}x{dh}, the negotiated format says {w}x{h}"
        ));
    }
    GrayImage::from_vec(dw, dh, luma.into_raw()).ok_or_else(|| "JPEG size mismatch".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(format: PixelFormat, w: u32, h: u32, stride: usize, data: Vec<u8>) -> Frame {
        Frame {
            seq: 9,
            ts: Duration::ZERO,
            arrived: Duration::ZERO,
            width: w,
            height: h,
            format,
            stride,
            data,
            truth: None,
        }
    }

    #[test]
    fn yuyv_keeps_luma_and_honours_stride() {
        // 2x2 pixels, stride 6 (2 bytes of padding per row).
        let data = vec![10, 128, 20, 128, 0xEE, 0xEE, 30, 1, 40, 2, 0xEE, 0xEE];
        let g = to_gray(&frame(PixelFormat::Yuyv, 2, 2, 6, data)).unwrap();
        assert_eq!(g.data, vec![10, 20, 30, 40]);
    }

    #[test]
    fn limited_range_yuyv_is_expanded_like_video_files() {
        // Y = 16, 126, 235, 250 in limited range: black, mid grey, white, clamped.
        let data = vec![16, 128, 126, 128, 235, 128, 250, 128];
        let f = frame(PixelFormat::Yuyv, 4, 1, 0, data);
        assert_eq!(to_gray(&f).unwrap().data, vec![16, 126, 235, 250]);
        let g = to_gray_with(&f, LumaRange::Limited).unwrap();
        assert_eq!(g.data, vec![0, 128, 255, 255]);
    }

    #[test]
    fn rgb_uses_bt601_weights() {
        let data = vec![255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255];
        let g = to_gray(&frame(PixelFormat::Rgb3, 4, 1, 0, data)).unwrap();
        // BT.601 rounded, the conversion video files get when decoded to grey: white stays 255,
        // pure red 0.299·255 = 76.2, green 0.587·255 = 149.7, blue 0.114·255 = 29.1.
        assert_eq!(g.data, vec![255, 76, 150, 29]);
    }

    #[test]
    fn truncated_frame_names_the_frame() {
        let e = to_gray(&frame(PixelFormat::Grey, 4, 4, 0, vec![0; 10])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("frame 9"), "{msg}");
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn mjpeg_round_trips_and_garbage_is_refused() {
        let mut img = image::GrayImage::new(16, 8);
        for (x, _, p) in img.enumerate_pixels_mut() {
            p.0 = [(x * 16) as u8];
        }
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageLuma8(img)
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let g = to_gray(&frame(PixelFormat::Mjpg, 16, 8, 0, jpeg.clone())).unwrap();
        assert_eq!((g.width, g.height), (16, 8));
        assert!(g.get(15, 4) > g.get(0, 4) + 150, "gradient lost");

        let wrong_size = to_gray(&frame(PixelFormat::Mjpg, 32, 8, 0, jpeg.clone())).unwrap_err();
        assert!(wrong_size.to_string().contains("16x8"), "{wrong_size}");

        let mut corrupt = jpeg;
        corrupt.truncate(corrupt.len() / 3);
        assert!(to_gray(&frame(PixelFormat::Mjpg, 16, 8, 0, corrupt)).is_err());
        let e = to_gray(&frame(PixelFormat::Mjpg, 16, 8, 0, vec![1, 2, 3, 4, 5])).unwrap_err();
        assert!(e.to_string().contains("not a JPEG"), "{e}");
    }
}
