//! PyTorch `.pt` checkpoints: a zip archive with a pickle (`data.pkl`) and tensor storages.

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

pub(crate) fn pt(data: &[u8]) -> String {
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
