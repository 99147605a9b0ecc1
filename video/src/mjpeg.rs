//! Motion JPEG frames (AVI `MJPG`), decoded by zune-jpeg (pure Rust, the JPEG decoder of the
//! `image` crate, which the workspace already builds).
//!
//! MJPEG lets a frame leave out its Huffman tables (DHT); decoders then use the tables of the
//! JPEG standard's Annex K. zune-jpeg does that when the frame carries the `AVI1` APP0 marker,
//! so a frame without DHT gets that marker added before it is decoded. Gray output is the JPEG's
//! luma plane as coded (JPEG is full range, so no range conversion); RGB is zune-jpeg's
//! YCbCr → RGB conversion.

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::ColorMode;

/// Does the JPEG define any Huffman table before its first scan?
fn has_huffman_tables(jpeg: &[u8]) -> bool {
    let mut i = 2usize; // after SOI
    while i + 4 <= jpeg.len() {
        if jpeg[i] != 0xFF {
            return false;
        }
        let marker = jpeg[i + 1];
        match marker {
            0xC4 => return true,
            0xDA | 0xD9 => return false,
            0xFF => {
                i += 1; // fill byte
                continue;
            }
            0x01 | 0xD0..=0xD7 => {
                i += 2;
                continue;
            }
            _ => {}
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        i += 2 + len;
    }
    false
}

/// The frame with an `AVI1` APP0 segment after SOI, which tells zune-jpeg to use the standard
/// tables for the ones the frame leaves out.
fn with_default_tables(jpeg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(jpeg.len() + 18);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x10]);
    out.extend_from_slice(b"AVI1\0");
    out.extend_from_slice(&[0u8; 9]);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Decodes one MJPEG frame of the stream's size `width × height` into gray or RGB bytes.
pub(crate) fn decode(
    jpeg: &[u8],
    width: usize,
    height: usize,
    color: ColorMode,
) -> Result<Vec<u8>, String> {
    if jpeg.len() < 4 || jpeg[0] != 0xFF || jpeg[1] != 0xD8 {
        return Err(format!(
            "not a JPEG frame (starts with {:02x?})",
            &jpeg[..jpeg.len().min(4)]
        ));
    }
    let patched;
    let data = if has_huffman_tables(jpeg) {
        jpeg
    } else {
        patched = with_default_tables(jpeg);
        &patched
    };
    let out_space = match color {
        ColorMode::Gray => ColorSpace::Luma,
        ColorMode::Rgb => ColorSpace::RGB,
    };
    // The declared size of a frame may not exceed the stream's: a hostile frame header cannot
    // make the decoder allocate more than one frame of the size the container gave.
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(out_space)
        .set_max_width(width)
        .set_max_height(height)
        .set_strict_mode(false);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
    let pixels = decoder
        .decode()
        .map_err(|e| format!("JPEG decode failed: {e}"))?;
    let info = decoder
        .info()
        .ok_or("JPEG decoder returned no image info")?;
    let (w, h) = (info.width as usize, info.height as usize);
    if (w, h) != (width, height) {
        return Err(format!(
            "JPEG frame is {w}x{h}, the stream says {width}x{height}"
        ));
    }
    let expected = w * h * color.channels();
    if pixels.len() != expected {
        return Err(format!(
            "JPEG decoder returned {} bytes, expected {expected}",
            pixels.len()
        ));
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            &[0xFF, 0xD8][..],
            &[0xFF, 0xD8, 0xFF, 0xC0, 0xFF, 0xFF][..],
            &[1, 2, 3, 4, 5][..],
        ] {
            assert!(decode(bad, 16, 16, ColorMode::Gray).is_err());
        }
    }

    #[test]
    fn finds_huffman_tables_before_the_scan() {
        // SOI, APP0 (len 4), DHT
        assert!(has_huffman_tables(&[
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xC4, 0, 2
        ]));
        // SOI, SOS: no tables
        assert!(!has_huffman_tables(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]));
        let patched = with_default_tables(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]);
        assert_eq!(&patched[2..6], &[0xFF, 0xE0, 0x00, 0x10]);
        assert_eq!(&patched[6..11], b"AVI1\0");
        assert_eq!(patched.len(), 6 + 18);
    }
}
