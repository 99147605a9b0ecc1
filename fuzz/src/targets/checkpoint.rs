//! PyTorch `.pt` checkpoints: a zip archive with a pickle (`data.pkl`) and tensor storages.
//!
//! An input starting with `PK` is the whole file. Anything else is the pickle: the harness
//! packs it as `archive/data.pkl` with four 64-byte storages `archive/data/0..3` into a zip
//! with valid CRCs, so mutations of the pickle reach the unpickler and `state_dict` instead of
//! stopping at the zip's CRC check.

use candle_core::Device;
use echojepa::checkpoint::PtFile;

use super::{outcome, with_file};

pub(crate) static DICT: &[&[u8]] = &[
    b"PK\x03\x04",
    b"PK\x01\x02",
    b"PK\x05\x06",
    b"archive/data.pkl",
    b"archive/data/0",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch\nFloatStorage\n",
    b"ctorch\nHalfStorage\n",
    b"ccollections\nOrderedDict\n",
    b"\x80\x02",
    b"q\x00",
    b"}q\x00",
    b"(X",
    b"\x8a\x08",
    b"K\xff",
    b"M\xff\xff",
    b"J\xff\xff\xff\x7f",
    b"\x85",
    b"\x86",
    b"\x87",
    b"R",
    b"t",
    b"s",
    b"u",
    b"e",
    b"Q",
    b".",
];

/// `pickle` as `archive/data.pkl` of a zip with four small storages.
fn pack(pickle: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let storage: Vec<u8> = (0..64u8).collect();
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut put = |name: &str, bytes: &[u8]| -> zip::result::ZipResult<()> {
        w.start_file(name, opts)?;
        w.write_all(bytes)?;
        Ok(())
    };
    let written = put("archive/data.pkl", pickle)
        .and_then(|()| (0..4).try_for_each(|k| put(&format!("archive/data/{k}"), &storage)))
        .and_then(|()| put("archive/version", b"3\n"))
        .and_then(|()| w.finish());
    match written {
        Ok(c) => c.into_inner(),
        Err(e) => panic!("fuzz harness: cannot write the zip: {e}"),
    }
}

pub(crate) fn pt(data: &[u8]) -> String {
    let packed;
    let data = if data.starts_with(b"PK") {
        data
    } else {
        packed = pack(data);
        &packed
    };
    with_file("in.pt", data, |path| {
        let pt = match PtFile::open(path) {
            Ok(pt) => pt,
            Err(e) => return outcome("open error:", &e.to_string()),
        };
        let keys = pt.keys();
        let _ = pt.number("epoch");
        let mut result = String::from("ok");
        let mut paths: Vec<Vec<&str>> = vec![vec![]];
        paths.extend(keys.iter().take(8).map(|k| vec![k.as_str()]));
        for p in &paths {
            match pt.state_dict(p, &Device::Cpu) {
                Ok(map) => {
                    for t in map.values() {
                        // Touch the data: a tensor whose storage is shorter than its shape
                        // says must have been refused when it was read.
                        let _ = t
                            .flatten_all()
                            .and_then(|t| t.to_dtype(candle_core::DType::F32));
                    }
                }
                Err(e) => result = outcome("state_dict error:", &e.to_string()),
            }
        }
        result
    })
}
