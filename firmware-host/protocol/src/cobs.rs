//! Consistent Overhead Byte Stuffing: removes every 0x00 from a frame so 0x00 can delimit frames.
//!
//! Written here (rather than taken from a crate) so the exact variant is pinned down by this
//! crate's golden-byte tests and WIRE.md: a block of up to 254 data bytes is prefixed with
//! `len + 1`; a block that is not full implies a 0x00 after it, except at the end of the frame.
//! Neither function panics or allocates; both report a too-small or malformed buffer as `None`.

/// Largest COBS encoding of `n` input bytes (one code byte per started block of 254).
pub const fn max_encoded_len(n: usize) -> usize {
    n + n / 254 + 1
}

/// COBS-encodes `src` into `dst`, returning the encoded length, or `None` if `dst` is too small.
/// The output contains no 0x00 byte and no delimiter.
pub fn encode(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let mut code_at = 0usize;
    let mut out = 1usize;
    let mut code = 1u8;
    if dst.is_empty() {
        return None;
    }
    for &byte in src {
        if byte == 0 {
            *dst.get_mut(code_at)? = code;
            code_at = out;
            out += 1;
            code = 1;
        } else {
            *dst.get_mut(out)? = byte;
            out += 1;
            code += 1;
            if code == 0xFF {
                *dst.get_mut(code_at)? = code;
                code_at = out;
                out += 1;
                code = 1;
            }
        }
    }
    *dst.get_mut(code_at)? = code;
    Some(out)
}

/// Decodes a COBS frame (without its delimiter) in place, returning the decoded length, or `None`
/// if the frame is malformed (a 0x00 code byte or a block running past the end).
pub fn decode_in_place(buf: &mut [u8]) -> Option<usize> {
    let len = buf.len();
    let mut read = 0usize;
    let mut write = 0usize;
    while read < len {
        let code = buf[read] as usize;
        if code == 0 {
            return None;
        }
        let start = read + 1;
        let end = read + code;
        if end > len {
            return None;
        }
        // `write <= read` always holds, so moving the block left never overlaps badly.
        buf.copy_within(start..end, write);
        write += code - 1;
        read = end;
        if code != 0xFF && read < len {
            buf[write] = 0;
            write += 1;
        }
    }
    Some(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(src: &[u8]) -> ([u8; 600], usize) {
        let mut enc = [0u8; 600];
        let n = encode(src, &mut enc).expect("fits");
        assert!(n <= max_encoded_len(src.len()));
        assert!(!enc[..n].contains(&0));
        let mut dec = enc;
        let m = decode_in_place(&mut dec[..n]).expect("valid");
        assert_eq!(&dec[..m], src);
        (enc, n)
    }

    #[test]
    fn known_vectors() {
        // Classic examples: [] -> 01; [00] -> 01 01; [11 22 00 33] -> 03 11 22 02 33.
        let (e, n) = roundtrip(&[]);
        assert_eq!(&e[..n], &[0x01]);
        let (e, n) = roundtrip(&[0x00]);
        assert_eq!(&e[..n], &[0x01, 0x01]);
        let (e, n) = roundtrip(&[0x11, 0x22, 0x00, 0x33]);
        assert_eq!(&e[..n], &[0x03, 0x11, 0x22, 0x02, 0x33]);
        let (e, n) = roundtrip(&[0x11, 0x00, 0x00, 0x00]);
        assert_eq!(&e[..n], &[0x02, 0x11, 0x01, 0x01, 0x01]);
    }

    #[test]
    fn long_blocks() {
        let ones = [1u8; 254];
        let (e, n) = roundtrip(&ones);
        assert_eq!(n, 256);
        assert_eq!(e[0], 0xFF);
        assert_eq!(e[255], 0x01);
        let mut v = [7u8; 520];
        v[300] = 0;
        roundtrip(&v);
    }

    #[test]
    fn malformed_is_none() {
        assert_eq!(decode_in_place(&mut [0x05, 1, 2]), None);
        assert_eq!(decode_in_place(&mut [0x00]), None);
        let mut small = [0u8; 2];
        assert_eq!(encode(&[1, 2, 3], &mut small), None);
        assert_eq!(encode(&[], &mut []), None);
    }
}
