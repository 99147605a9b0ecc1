//! Hostile and damaged video files: the readers return errors, never panic, and never allocate
//! more than a small multiple of the file's size plus the frames they decode.
//!
//! A counting global allocator measures the peak of live heap bytes while each file is opened
//! and decoded. The inputs are crafted files (an MP4 of a few hundred bytes whose sample table
//! declares 50 million samples; huge entry counts in every table; absurd sizes) and, as a
//! property test, seeded random mutations of valid MP4 (H.264) and AVI (Motion JPEG) files:
//! flipped bytes, overwritten 32-bit fields, truncations and spliced ranges, a fixed number of
//! cases per format so the run is bounded and reproducible.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use echojepa_video::{self as video, Clip, ColorMode, EncoderSettings, write_mp4};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// One measurement at a time (the counter is process-wide).
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Opens and fully decodes `path` (gray), returning whether it worked and the peak of heap
/// bytes allocated meanwhile beyond what was live before. Panics propagate to the test.
fn measure(path: &Path) -> (Result<usize, String>, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = video::open(path)
        .and_then(|mut r| r.read_all(ColorMode::Gray))
        .map(|c| c.data.len())
        .map_err(|e| e.to_string());
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (result, peak)
}

/// The bound: a small multiple of the file plus the decoded frames, plus a fixed allowance
/// for decoder state (reference pictures, tables) of a small video.
fn allowed(file_len: usize, decoded: usize) -> usize {
    16 * file_len + 4 * decoded + (24 << 20)
}

fn phantom_like(frames: usize, w: usize, h: usize) -> Clip {
    let mut c = Clip::zeros(frames, h, w, 1);
    for f in 0..frames {
        for y in 0..h {
            for x in 0..w {
                c.data[(f * h + y) * w + x] = ((x * 7 + y * 3 + f * 11) % 251) as u8;
            }
        }
    }
    c
}

/// A small valid Motion-JPEG AVI, written here (JPEG frames by the `image` crate), so the test
/// needs no external tool.
fn write_mjpeg_avi(path: &Path, frames: usize, w: u32, h: u32) {
    use image::codecs::jpeg::JpegEncoder;
    let mut jpegs = Vec::new();
    for f in 0..frames {
        let mut img = image::GrayImage::new(w, h);
        for (x, y, p) in img.enumerate_pixels_mut() {
            p.0[0] = ((x * 5 + y * 3 + f as u32 * 9) % 256) as u8;
        }
        let mut buf = Vec::new();
        JpegEncoder::new_with_quality(&mut buf, 80)
            .encode_image(&img)
            .unwrap();
        jpegs.push(buf);
    }
    let chunk = |id: &[u8], body: &[u8]| {
        let mut v = id.to_vec();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        if body.len() % 2 == 1 {
            v.push(0);
        }
        v
    };
    let list = |kind: &[u8], body: &[u8]| {
        let mut b = kind.to_vec();
        b.extend_from_slice(body);
        chunk(b"LIST", &b)
    };
    let le = |v: u32| v.to_le_bytes();
    let mut avih = Vec::new();
    for v in [
        40_000u32,
        0,
        0,
        0x10,
        frames as u32,
        0,
        1,
        0,
        w,
        h,
        0,
        0,
        0,
        0,
    ] {
        avih.extend_from_slice(&le(v));
    }
    let mut strh = b"vidsMJPG".to_vec();
    for v in [0u32, 0, 0, 1, 25, 0, frames as u32, 0, u32::MAX, 0] {
        strh.extend_from_slice(&le(v));
    }
    strh.extend_from_slice(&[0; 8]);
    let mut strf = Vec::new();
    strf.extend_from_slice(&le(40));
    strf.extend_from_slice(&le(w));
    strf.extend_from_slice(&le(h));
    strf.extend_from_slice(&1u16.to_le_bytes());
    strf.extend_from_slice(&24u16.to_le_bytes());
    strf.extend_from_slice(b"MJPG");
    strf.extend_from_slice(&le(w * h * 3));
    strf.extend_from_slice(&[0; 16]);
    let strl = list(
        b"strl",
        &[chunk(b"strh", &strh), chunk(b"strf", &strf)].concat(),
    );
    let hdrl = list(b"hdrl", &[chunk(b"avih", &avih), strl].concat());
    let movi: Vec<u8> = jpegs.iter().flat_map(|j| chunk(b"00dc", j)).collect();
    let movi = list(b"movi", &movi);
    let mut body = b"AVI ".to_vec();
    body.extend_from_slice(&hdrl);
    body.extend_from_slice(&movi);
    std::fs::write(path, chunk(b"RIFF", &body)).unwrap();
}

/// Offset of the payload of the first box of type `kind` (after its 8-byte header).
fn find_box(bytes: &[u8], kind: &[u8; 4]) -> usize {
    bytes
        .windows(4)
        .position(|w| w == kind)
        .map(|i| i + 4)
        .expect("box present")
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn crafted_sample_tables_are_rejected_within_a_small_allocation() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mp4");
    write_mp4(&good, &phantom_like(6, 32, 32), EncoderSettings::default()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let (ok, _) = measure(&good);
    assert_eq!(ok, Ok(6 * 32 * 32), "the unmodified file must decode");

    // (label, box, offset into its payload, value)
    let cases: [(&str, &[u8; 4], usize, u32); 8] = [
        ("stsz: 50 million samples of 1 byte", b"stsz", 4, 1),
        (
            "stsz: 50 million samples of 1 byte (count)",
            b"stsz",
            8,
            50_000_000,
        ),
        ("stsz: u32::MAX entries", b"stsz", 8, u32::MAX),
        ("stts: u32::MAX entries", b"stts", 4, u32::MAX),
        ("stts: one run of u32::MAX samples", b"stts", 8, u32::MAX),
        ("stco: u32::MAX chunks", b"stco", 4, u32::MAX),
        ("stsc: u32::MAX samples per chunk", b"stsc", 12, u32::MAX),
        ("stco: offset past the end", b"stco", 8, u32::MAX - 3),
    ];
    // the first two edits together make the 50-million-sample file of the report
    let mut fifty = bytes.clone();
    let at = find_box(&fifty, b"stsz");
    put_u32(&mut fifty, at + 4, 1);
    put_u32(&mut fifty, at + 8, 50_000_000);
    let mut variants = vec![("stsz: 50 million samples".to_string(), fifty)];
    for (label, kind, off, v) in cases {
        let mut b = bytes.clone();
        let at = find_box(&b, kind);
        put_u32(&mut b, at + off, v);
        variants.push((label.to_string(), b));
    }
    for (label, b) in variants {
        let path = dir.path().join("crafted.mp4");
        std::fs::write(&path, &b).unwrap();
        let (result, peak) = measure(&path);
        let decoded = result.as_ref().copied().unwrap_or(0);
        assert!(
            peak <= allowed(b.len(), decoded),
            "{label}: peak allocation {peak} bytes for a {}-byte file",
            b.len()
        );
        if let Err(e) = &result {
            assert!(
                e.contains("crafted.mp4"),
                "{label}: error does not name the file: {e}"
            );
        }
    }
}

/// xorshift64*: the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(b.len().saturating_sub(4));
                let v = match rng.below(4) {
                    0 => u32::MAX,
                    1 => 0,
                    2 => 0x7FFF_FFFF,
                    _ => rng.next() as u32,
                };
                b[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
            2 => {
                let keep = rng.below(b.len());
                b.truncate(keep.max(1));
            }
            3 => {
                let (a, c) = (rng.below(b.len()), rng.below(b.len()));
                let len = rng.below(64).min(b.len() - a.max(c));
                let piece = b[a..a + len].to_vec();
                b[c..c + len].copy_from_slice(&piece);
            }
            _ => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
        }
    }
    b
}

fn fuzz(seed_file: &Path, name: &str, cases: usize, seed: u64) {
    let src = std::fs::read(seed_file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed);
    let mut errors = 0;
    for case in 0..cases {
        let b = mutate(&mut rng, &src);
        let path = dir.path().join(name);
        std::fs::write(&path, &b).unwrap();
        let outcome = std::panic::catch_unwind(|| measure(&path));
        let Ok((result, peak)) = outcome else {
            let keep = std::env::temp_dir().join(format!("hostile-{name}-{case}"));
            let _ = std::fs::write(&keep, &b);
            panic!(
                "{name} case {case} panicked; input kept at {}",
                keep.display()
            );
        };
        let decoded = result.as_ref().copied().unwrap_or(0);
        assert!(
            peak <= allowed(b.len(), decoded),
            "{name} case {case}: peak allocation {peak} bytes for a {}-byte file",
            b.len()
        );
        if result.is_err() {
            errors += 1;
        }
    }
    // the mutations must actually reach the error paths
    assert!(
        errors > cases / 10,
        "{name}: only {errors} of {cases} mutants failed"
    );
}

#[test]
fn mutated_mp4_files_never_panic_and_stay_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("seed.mp4");
    write_mp4(
        &good,
        &phantom_like(10, 48, 32),
        EncoderSettings {
            keyframe_interval: 4,
            ..Default::default()
        },
    )
    .unwrap();
    fuzz(&good, "m.mp4", 1500, 0x5EED_0001);
}

#[test]
fn mutated_avi_files_never_panic_and_stay_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("seed.avi");
    write_mjpeg_avi(&good, 6, 40, 24);
    let (ok, _) = measure(&good);
    assert_eq!(ok, Ok(6 * 40 * 24), "the unmodified AVI must decode");
    fuzz(&good, "m.avi", 1500, 0x5EED_0002);
}
