//! The bundle's weights file: GGUF written and read with candle's `gguf_file`. Linear weights
//! that run in int8 are stored Q8_0 with ONE scale per output row (every 32-block of a row
//! carries the same f16 scale), so the per-channel int8 GEMM kernels run exactly the integers
//! that were signed; the file is still standard Q8_0 that any GGUF reader (and candle's
//! `QMatMul`) understands. Norms, biases and query tokens are f32; layers that stay in full
//! precision are f16 or f32. candle refuses tensors of more than 4 dims on read, so the patch
//! embedding weight is stored 2-D `[D, C·t·p·p]`.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QStorage, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use half::f16;

use super::QuantError;
use crate::bundle::Precision;

/// Q8_0 block length.
pub const QK8_0: usize = 32;

/// Largest |q| of the int8 weights.
const QMAX: f32 = 127.0;

/// Per-row f16 scale such that `|w / s| <= 127` for the row's largest weight.
fn row_scale(row: &[f32]) -> f16 {
    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        return f16::from_f32(1.0);
    }
    let mut s = f16::from_f32(amax / QMAX);
    // Round the scale up if f16 rounding made it too small (keeps every |q| <= 127).
    while (amax / s.to_f32()) > QMAX + 0.5 {
        s = f16::from_bits(s.to_bits() + 1);
    }
    if s.to_f32() == 0.0 {
        s = f16::MIN_POSITIVE_SUBNORMAL;
    }
    s
}

/// Quantizes a row-major `[rows, cols]` weight to Q8_0 with one scale per row.
/// `cols` must be a multiple of 32.
pub fn quantize_q8_0_rows(weight: &[f32], rows: usize, cols: usize) -> Result<QTensor, String> {
    if !cols.is_multiple_of(QK8_0) {
        return Err(format!("{cols} columns is not a multiple of {QK8_0}"));
    }
    if weight.len() != rows * cols {
        return Err(format!(
            "{} values for a [{rows}, {cols}] weight",
            weight.len()
        ));
    }
    if let Some(i) = weight.iter().position(|v| !v.is_finite()) {
        return Err(format!("non-finite value at index {i}"));
    }
    let mut bytes = Vec::with_capacity(rows * cols / QK8_0 * 34);
    for row in weight.chunks_exact(cols) {
        let s = row_scale(row);
        let inv = 1.0 / s.to_f32();
        for block in row.chunks_exact(QK8_0) {
            bytes.extend_from_slice(&s.to_bits().to_le_bytes());
            for &v in block {
                bytes.push((v * inv).round().clamp(-QMAX, QMAX) as i8 as u8);
            }
        }
    }
    let storage = QStorage::from_data(bytes.into(), &Device::Cpu, GgmlDType::Q8_0)
        .map_err(|e| e.to_string())?;
    QTensor::new(storage, (rows, cols)).map_err(|e| e.to_string())
}

/// A tensor stored at `precision` (Q8_0 uses [`quantize_q8_0_rows`] on the last dim).
pub fn store(values: &[f32], shape: &[usize], precision: Precision) -> Result<QTensor, String> {
    match precision {
        Precision::Q8_0 => match shape {
            [rows, cols] => quantize_q8_0_rows(values, *rows, *cols),
            _ => Err(format!("q8_0 needs a 2-D weight, got shape {shape:?}")),
        },
        Precision::F16 | Precision::F32 => {
            let t = Tensor::from_slice(values, shape.to_vec(), &Device::Cpu)
                .map_err(|e| e.to_string())?;
            let dt = if precision == Precision::F16 {
                GgmlDType::F16
            } else {
                GgmlDType::F32
            };
            QTensor::quantize(&t, dt).map_err(|e| e.to_string())
        }
    }
}

/// Precision of a stored tensor, if it is one the bundle uses.
pub fn precision_of(t: &QTensor) -> Option<Precision> {
    match t.dtype() {
        GgmlDType::Q8_0 => Some(Precision::Q8_0),
        GgmlDType::F16 => Some(Precision::F16),
        GgmlDType::F32 => Some(Precision::F32),
        _ => None,
    }
}

/// Writes a GGUF file with string/number metadata and named tensors (in the given order).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, gguf_file::Value)],
    tensors: &[(String, QTensor)],
) -> Result<(), QuantError> {
    let io = |e: std::io::Error| QuantError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    let md: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut w, &md, &ts).map_err(|e| QuantError::Gguf {
        file: path.display().to_string(),
        reason: e.to_string(),
    })?;
    use std::io::Write;
    w.flush().map_err(io)?;
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

/// All tensors of a GGUF file, read from memory.
pub struct GgufWeights {
    origin: String,
    tensors: HashMap<String, QTensor>,
    metadata: HashMap<String, gguf_file::Value>,
}

impl std::fmt::Debug for GgufWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWeights")
            .field("origin", &self.origin)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufWeights {
    /// Parses GGUF bytes; `origin` (a file name) names the file in errors.
    pub fn read(bytes: &[u8], origin: &str) -> Result<Self, QuantError> {
        let bad = |reason: String| QuantError::Gguf {
            file: origin.to_string(),
            reason,
        };
        let mut cur = Cursor::new(bytes);
        let content = gguf_file::Content::read(&mut cur).map_err(|e| bad(e.to_string()))?;
        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        for name in content.tensor_infos.keys() {
            let t = content
                .tensor(&mut cur, name, &Device::Cpu)
                .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            tensors.insert(name.clone(), t);
        }
        Ok(Self {
            origin: origin.to_string(),
            tensors,
            metadata: content.metadata,
        })
    }

    /// The file these weights came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// A metadata string.
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key) {
            Some(gguf_file::Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The stored tensor `name`.
    pub fn get(&self, name: &str) -> Result<&QTensor, QuantError> {
        self.tensors
            .get(name)
            .ok_or_else(|| QuantError::MissingTensor {
                file: self.origin.clone(),
                tensor: name.to_string(),
            })
    }

    /// `name` dequantized to f32 after checking its shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<(Vec<f32>, Precision), QuantError> {
        let t = self.get(name)?;
        if t.shape().dims() != shape {
            return Err(QuantError::Shape {
                file: self.origin.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape().dims().to_vec(),
            });
        }
        let precision = precision_of(t).ok_or_else(|| QuantError::Gguf {
            file: self.origin.clone(),
            reason: format!("tensor `{name}` has unsupported type {:?}", t.dtype()),
        })?;
        let v = t
            .dequantize(&Device::Cpu)
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(|e| QuantError::Gguf {
                file: self.origin.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        Ok((v, precision))
    }

    /// The tensors under `prefix.` dequantized to f32 candle tensors, prefix removed (for
    /// building the f32 model code, e.g. probes, from stored weights).
    pub fn f32_tensors(&self, prefix: &str) -> Result<HashMap<String, Tensor>, QuantError> {
        let p = format!("{prefix}.");
        let mut out = HashMap::new();
        for (name, t) in &self.tensors {
            if let Some(short) = name.strip_prefix(&p) {
                let x = t.dequantize(&Device::Cpu).map_err(|e| QuantError::Gguf {
                    file: self.origin.clone(),
                    reason: format!("tensor `{name}`: {e}"),
                })?;
                out.insert(short.to_string(), x);
            }
        }
        Ok(out)
    }
}
