//! Writing prepared model inputs to files, so that the paths that prepare them (the trainer's
//! loader and evaluation, `quantize`, the edge runtime) can be compared byte for byte. Each
//! binary has a hidden `--dump-inputs DIR` flag that calls [`write`].
//!
//! Per clip: `<stem>.f32`, the `[C, T, H, W]` values as little-endian f32, and `<stem>.json`,
//! `{"shape": [C, T, H, W], "frames": [source frame indices], "source": "..."}`.

use std::io;
use std::path::Path;

/// Writes one prepared clip. `frames` are the source frame indices (or sequence numbers) the
/// clip was made of; `source` names the path that prepared it (`trainer`, `quantize`, …).
pub fn write(
    dir: &Path,
    stem: &str,
    data: &[f32],
    shape: [usize; 4],
    frames: &[u64],
    source: &str,
) -> io::Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("dump {stem}: {} values for shape {shape:?}", data.len()),
        ));
    }
    std::fs::create_dir_all(dir)?;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join(format!("{stem}.f32")), bytes)?;
    let frames: Vec<String> = frames.iter().map(u64::to_string).collect();
    let json = format!(
        "{{\"shape\": [{}, {}, {}, {}], \"frames\": [{}], \"source\": \"{}\"}}\n",
        shape[0],
        shape[1],
        shape[2],
        shape[3],
        frames.join(", "),
        source.replace(['"', '\\'], "_")
    );
    std::fs::write(dir.join(format!("{stem}.json")), json)
}

/// A file-name-safe stem: the file name of `path` without its extension.
pub fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| {
            s.to_string_lossy().replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                "_",
            )
        })
        .unwrap_or_else(|| "clip".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_values_and_shape_and_refuses_a_wrong_shape() {
        let dir = std::env::temp_dir().join(format!("echojepa-dump-{}", std::process::id()));
        write(&dir, "a", &[1.0, -2.5], [1, 1, 1, 2], &[0, 4], "test").unwrap();
        let b = std::fs::read(dir.join("a.f32")).unwrap();
        assert_eq!(b.len(), 8);
        assert_eq!(f32::from_le_bytes(b[4..8].try_into().unwrap()), -2.5);
        let j = std::fs::read_to_string(dir.join("a.json")).unwrap();
        assert!(
            j.contains("\"frames\": [0, 4]") && j.contains("[1, 1, 1, 2]"),
            "{j}"
        );
        assert!(write(&dir, "b", &[1.0], [1, 1, 1, 2], &[], "test").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
