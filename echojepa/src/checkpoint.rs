//! Checkpoints: official PyTorch `.pt` files (zip + pickle, as the reference writes them) and
//! the native format (safetensors + JSON config).
//!
//! Official pretraining checkpoints hold `encoder`, `target_encoder` and `predictor` state dicts
//! with keys prefixed `module.backbone.`; probe files hold `{"classifiers": [state_dict, ...]}`,
//! sometimes with `module.` prefixes. candle's own pickle loader reads one top-level key only, so
//! this module walks the unpickled object itself (`classifiers/0` is a path into a list).
//!
//! Loading is strict, unlike the reference (which silently keeps random weights on a shape
//! mismatch): a missing tensor, a wrong shape or an unknown key is an error naming the tensor.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use serde::{Deserialize, Serialize};

use crate::config::{EncoderConfig, PredictorConfig, ProbeConfig};
use crate::encoder::VisionTransformer;
use crate::predictor::Predictor;
use crate::probe::AttentiveProbe;
use crate::{Error, Result};

/// Tensors read from a checkpoint, by name (prefixes already stripped).
pub type TensorMap = HashMap<String, Tensor>;

/// Strips the wrappers' prefixes the reference strips (`module.`, `backbone.`).
pub fn strip_prefixes(name: &str) -> String {
    name.replace("module.", "").replace("backbone.", "")
}

/// Names that official checkpoints may carry but RoPE models do not use.
fn ignored(name: &str) -> bool {
    name == "pos_embed" || name == "predictor_pos_embed"
}

fn bad(path: &Path, reason: impl ToString) -> Error {
    Error::BadCheckpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// An official `.pt` checkpoint (PyTorch zip format), unpickled once.
pub struct PtFile {
    path: PathBuf,
    root: Object,
    /// Directory prefix of the archive (`archive/` or the file stem).
    dir: PathBuf,
}

impl std::fmt::Debug for PtFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtFile").field("path", &self.path).finish()
    }
}

impl PtFile {
    /// Opens and unpickles `path`. A truncated or non-zip file is an error naming it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|e| bad(path, format!("not a PyTorch zip archive ({e}); truncated?")))?;
        let pkl = (0..zip.len())
            .filter_map(|i| {
                zip.name_for_index(i)
                    .and_then(|r| r.ok())
                    .map(|n| n.into_owned())
            })
            .find(|n| n.ends_with("data.pkl"))
            .ok_or_else(|| bad(path, "no data.pkl in the archive"))?;
        let dir = PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
        let mut pickle = Vec::new();
        zip.by_name(&pkl)
            .and_then(|r| Ok(r.take(MAX_PICKLE_BYTES + 1).read_to_end(&mut pickle)?))
            .map_err(|e| bad(path, format!("{pkl}: {e}")))?;
        if pickle.len() as u64 > MAX_PICKLE_BYTES {
            return Err(bad(
                path,
                format!("{pkl}: larger than {MAX_PICKLE_BYTES} bytes"),
            ));
        }
        check_pickle_lengths(&pickle).map_err(|e| bad(path, format!("{pkl}: {e}")))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::Cursor::new(&pickle[..]))
            .map_err(|e| bad(path, format!("{pkl}: {e}")))?;
        let root = stack
            .finalize()
            .map_err(|e| bad(path, format!("{pkl}: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            root: unwrap_build(root),
            dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Top-level keys (for error messages and inspection).
    pub fn keys(&self) -> Vec<String> {
        match &self.root {
            Object::Dict(kv) => kv
                .iter()
                .filter_map(|(k, _)| match k {
                    Object::Unicode(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        }
    }

    /// The object at `key_path`, e.g. `["target_encoder"]` or `["classifiers", "0"]`.
    fn lookup(&self, key_path: &[&str]) -> Result<&Object> {
        let mut obj = &self.root;
        let mut walked = Vec::new();
        for key in key_path {
            walked.push(*key);
            let found = match obj {
                Object::Dict(kv) => kv.iter().find_map(|(k, v)| match k {
                    Object::Unicode(s) if s == key => Some(v),
                    _ => None,
                }),
                Object::List(items) | Object::Tuple(items) => {
                    key.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                _ => None,
            };
            obj = match found {
                Some(o) => unwrap_build_ref(o),
                None => {
                    let found = match obj {
                        Object::Dict(_) if walked.len() == 1 => self.keys().join(", "),
                        Object::List(items) => format!("a list of {} entries", items.len()),
                        _ => "nothing there".into(),
                    };
                    return Err(Error::MissingKey {
                        path: self.path.clone(),
                        key: walked.join("/"),
                        found,
                    });
                }
            };
        }
        Ok(obj)
    }

    /// Reads the state dict at `key_path` (an empty path reads the root), strips prefixes and
    /// drops unused position embeddings.
    pub fn state_dict(&self, key_path: &[&str], dev: &Device) -> Result<TensorMap> {
        let obj = self.lookup(key_path)?;
        let Object::Dict(kv) = obj else {
            return Err(bad(
                &self.path,
                format!("`{}` is not a state dict", key_path.join("/")),
            ));
        };
        let file = std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|e| bad(&self.path, e.to_string()))?;
        let mut out = HashMap::new();
        for (k, v) in kv {
            let Object::Unicode(raw_name) = k else {
                continue;
            };
            let name = strip_prefixes(raw_name);
            if ignored(&name) {
                continue;
            }
            let info = v
                .clone()
                .into_tensor_info(k.clone(), &self.dir)
                .map_err(|e| bad(&self.path, format!("tensor `{raw_name}`: {e}")))?;
            let Some(info) = info else {
                continue; // not a tensor (e.g. an int)
            };
            let t = read_tensor(&mut zip, &info)
                .map_err(|e| bad(&self.path, format!("tensor `{raw_name}`: {e}")))?;
            out.insert(name, t.to_device(dev)?);
        }
        Ok(out)
    }

    /// A scalar number at the top level (`epoch`, `lr`, …), if present.
    pub fn number(&self, key: &str) -> Option<f64> {
        match self.lookup(&[key]).ok()? {
            Object::Int(i) => Some(*i as f64),
            Object::Long(i) => Some(*i as f64),
            Object::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// Largest `data.pkl` read (the object tree only; tensor data lives in other zip entries, and
/// real checkpoints have pickles of a few MB at most).
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Walks the opcodes of a pickle the way candle's unpickler reads them and refuses arguments it
/// would trust blindly: a string length past the end of the pickle (candle allocates the
/// declared length, up to 4 GiB, before reading) and an integer wider than 8 bytes (its shift
/// overflows). Stops at `STOP` or at an opcode candle does not know (candle then reports it).
fn check_pickle_lengths(p: &[u8]) -> std::result::Result<(), String> {
    let mut i = 0;
    let arg = |i: usize, n: usize| -> std::result::Result<&[u8], String> {
        p.get(i..i + n)
            .ok_or_else(|| format!("the pickle ends inside the argument at byte {i}"))
    };
    while let Some(&op) = p.get(i) {
        let at = i;
        i += 1;
        i += match op {
            b'.' => return Ok(()),
            0x80 | b'q' | b'K' | b'h' => 1,
            b'M' => 2,
            b'r' | b'J' | b'j' => 4,
            b'G' => 8,
            b'c' => {
                // module and name, each up to a newline
                let mut n = 0;
                for _ in 0..2 {
                    n += p[(i + n).min(p.len())..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map(|k| k + 1)
                        .ok_or_else(|| format!("GLOBAL at byte {at} has no newline"))?;
                }
                n
            }
            b'X' => {
                let len = u32::from_le_bytes(arg(i, 4)?.try_into().unwrap_or([0; 4])) as usize;
                if len > p.len() - (i + 4).min(p.len()) {
                    return Err(format!(
                        "string at byte {at} declares {len} bytes, past the end of the {}-byte pickle",
                        p.len()
                    ));
                }
                4 + len
            }
            0x8a => {
                let n = arg(i, 1)?[0] as usize;
                if n > 8 {
                    return Err(format!(
                        "integer at byte {at} has {n} bytes (at most 8 are supported)"
                    ));
                }
                1 + n
            }
            b')'
            | b'R'
            | b'('
            | b't'
            | b'Q'
            | 0x85..=0x89
            | b'N'
            | b's'
            | b'u'
            | b'}'
            | b'd'
            | b'b'
            | 0x81
            | b']'
            | b'a'
            | b'e' => 0,
            _ => return Ok(()),
        };
    }
    Ok(())
}

fn unwrap_build(o: Object) -> Object {
    match o {
        Object::Build { callable, .. } if matches!(*callable, Object::Dict(_)) => *callable,
        o => o,
    }
}

fn unwrap_build_ref(o: &Object) -> &Object {
    match o {
        Object::Build { callable, .. } if matches!(**callable, Object::Dict(_)) => callable,
        o => o,
    }
}

fn read_tensor<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    info: &candle_core::pickle::TensorInfo,
) -> std::result::Result<Tensor, String> {
    let mut reader = zip
        .by_name(&info.path)
        .map_err(|e| format!("storage {}: {e}", info.path))?;
    let layout = &info.layout;
    let is_fortran = layout.is_fortran_contiguous();
    if !layout.is_contiguous() && !is_fortran {
        return Err(format!(
            "non-contiguous storage {:?} is not supported",
            layout
        ));
    }
    // Sizes declared by the pickle are checked against the bytes the zip entry really holds
    // before anything is allocated: a hostile file may declare a 2^31-element dimension.
    let elem = info.dtype.size_in_bytes();
    let count = layout
        .dims()
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let sizes = count.and_then(|c| {
        let len = c.checked_mul(elem)?;
        let start = layout.start_offset().checked_mul(elem)?;
        Some((start, len, start.checked_add(len)?))
    });
    let Some((start, len, needed)) = sizes else {
        return Err(format!(
            "storage {}: the declared shape {:?} (offset {}) overflows",
            info.path,
            layout.dims(),
            layout.start_offset()
        ));
    };
    if needed as u64 > reader.size() {
        return Err(format!(
            "storage {} holds {} bytes, the tensor of shape {:?} needs {needed} (truncated or \
             corrupt file?)",
            info.path,
            reader.size(),
            layout.dims()
        ));
    }
    let mut buf = Vec::with_capacity(needed);
    reader
        .by_ref()
        .take((start + len) as u64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("storage {}: {e}", info.path))?;
    if buf.len() < start + len {
        return Err(format!(
            "storage {} holds {} bytes, the tensor needs {} (truncated file?)",
            info.path,
            buf.len(),
            start + len
        ));
    }
    let data = &buf[start..];
    let t = Tensor::from_raw_buffer(data, info.dtype, layout.dims(), &Device::Cpu)
        .map_err(|e| e.to_string())?;
    let rank = layout.dims().len();
    let t = if rank > 1 && is_fortran && !layout.is_contiguous() {
        let rev: Vec<usize> = layout.dims().iter().rev().copied().collect();
        let perm: Vec<usize> = (0..rank).rev().collect();
        Tensor::from_raw_buffer(data, info.dtype, rev.as_slice(), &Device::Cpu)
            .and_then(|t| t.permute(perm))
            .and_then(|t| t.contiguous())
            .map_err(|e| e.to_string())?
    } else {
        t
    };
    t.to_dtype(DType::F32).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Strict loading

/// A [`SimpleBackend`] that records every tensor a model asks for and hands back zero-stride
/// placeholders, so the expected names and shapes come from the model code itself.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, Vec<usize>)>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("recorder: unchecked access to `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Names and shapes of the tensors a model built by `build` needs, in construction order.
pub fn expected_tensors<T>(
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<Vec<(String, Vec<usize>)>> {
    let rec = Arc::new(Recorder::default());
    let backend: Box<dyn SimpleBackend> = Box::new(RecorderRef(rec.clone()));
    let vb = VarBuilder::from_backend(backend, DType::F32, Device::Cpu);
    build(vb)?;
    let seen = rec.seen.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(seen)
}

struct RecorderRef(Arc<Recorder>);

impl SimpleBackend for RecorderRef {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }
    fn get_unchecked(&self, name: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, d, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// Checks `tensors` against what the model needs: every tensor present with the right shape and
/// nothing left over. `path` names the source in errors.
pub fn check_tensors(
    path: &Path,
    tensors: &TensorMap,
    expected: &[(String, Vec<usize>)],
) -> Result<()> {
    for (name, shape) in expected {
        match tensors.get(name) {
            None => {
                return Err(Error::MissingTensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    expected: shape.clone(),
                });
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(Error::ShapeMismatch {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    expected: shape.clone(),
                    found: t.dims().to_vec(),
                });
            }
            Some(_) => {}
        }
    }
    let wanted: std::collections::HashSet<&str> =
        expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|n| !wanted.contains(n))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        let shown: Vec<String> = extra
            .iter()
            .take(8)
            .map(|n| format!("`{n}` {:?}", tensors[*n].dims()))
            .collect();
        let more = if extra.len() > 8 {
            format!(" and {} more", extra.len() - 8)
        } else {
            String::new()
        };
        return Err(Error::UnexpectedTensors {
            path: path.to_path_buf(),
            names: format!("{}{more}", shown.join(", ")),
        });
    }
    Ok(())
}

/// Builds a model from `tensors` after checking them strictly against what it needs.
pub fn load_strict<T>(
    path: &Path,
    tensors: TensorMap,
    dtype: DType,
    dev: &Device,
    build: impl Fn(VarBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    let expected = expected_tensors(&build)?;
    check_tensors(path, &tensors, &expected)?;
    let vb = VarBuilder::from_tensors(tensors, dtype, dev);
    Ok(build(vb)?)
}

/// Loads an encoder (`encoder` or `target_encoder`) from an official pretraining `.pt`.
pub fn load_pt_encoder(
    path: impl AsRef<Path>,
    key: &str,
    cfg: &EncoderConfig,
    dev: &Device,
) -> Result<VisionTransformer> {
    let pt = PtFile::open(&path)?;
    let tensors = pt.state_dict(&[key], dev)?;
    load_strict(pt.path(), tensors, DType::F32, dev, |vb| {
        VisionTransformer::new(cfg, vb)
    })
}

/// Loads the predictor from an official pretraining `.pt`.
pub fn load_pt_predictor(
    path: impl AsRef<Path>,
    cfg: &PredictorConfig,
    dev: &Device,
) -> Result<Predictor> {
    let pt = PtFile::open(&path)?;
    let tensors = pt.state_dict(&["predictor"], dev)?;
    load_strict(pt.path(), tensors, DType::F32, dev, |vb| {
        Predictor::new(cfg, vb)
    })
}

/// Loads head `index` of an official probe file (`{"classifiers": [state_dict, ...]}`).
pub fn load_pt_probe(
    path: impl AsRef<Path>,
    index: usize,
    cfg: &ProbeConfig,
    dev: &Device,
) -> Result<AttentiveProbe> {
    let pt = PtFile::open(&path)?;
    let tensors = pt.state_dict(&["classifiers", &index.to_string()], dev)?;
    load_strict(pt.path(), tensors, DType::F32, dev, |vb| {
        AttentiveProbe::new(cfg, vb)
    })
}

// ---------------------------------------------------------------------------------------------
// Native format

/// Format tag written into native checkpoint configs.
pub const NATIVE_FORMAT: &str = "echojepa-native/1";

/// How clips must be prepared for the model: the one input specification, also in bundle
/// manifests. Native configs keep their own JSON shape for it (see [`input_wire`]).
pub use echojepa_input::InputSpec;

/// The native config's `input` object: `resolution` (one number, square), `frames_per_clip`,
/// `frame_step`, `fps`, `mean`, `std`, and since the input path was unified `channels`
/// (default 3), `sector` (default `full_frame`) and `spacing` (default `uniform`). Checkpoints
/// written before those fields load with the defaults; older readers ignore the extra keys.
mod input_wire {
    use echojepa_input::{FrameSpacing, InputSpec, SectorHandling};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn three() -> usize {
        3
    }

    fn full_frame() -> SectorHandling {
        SectorHandling::FullFrame
    }

    fn is_full_frame(s: &SectorHandling) -> bool {
        *s == SectorHandling::FullFrame
    }

    #[derive(Serialize, Deserialize)]
    struct Wire {
        resolution: usize,
        frames_per_clip: usize,
        #[serde(default)]
        frame_step: Option<usize>,
        #[serde(default)]
        fps: Option<f64>,
        mean: [f32; 3],
        std: [f32; 3],
        #[serde(default = "three")]
        channels: usize,
        #[serde(default = "full_frame", skip_serializing_if = "is_full_frame")]
        sector: SectorHandling,
        #[serde(default, skip_serializing_if = "FrameSpacing::is_uniform")]
        spacing: FrameSpacing,
    }

    pub fn serialize<S: Serializer>(v: &Option<InputSpec>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|i| Wire {
                resolution: i.resolution[0],
                frames_per_clip: i.frames,
                frame_step: i.frame_step,
                fps: i.fps,
                mean: i.mean,
                std: i.std,
                channels: i.channels,
                sector: i.sector,
                spacing: i.spacing,
            })
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<InputSpec>, D::Error> {
        Ok(Option::<Wire>::deserialize(d)?.map(|w| InputSpec {
            frames: w.frames_per_clip,
            frame_step: w.frame_step,
            fps: w.fps,
            resolution: [w.resolution, w.resolution],
            channels: w.channels,
            mean: w.mean,
            std: w.std,
            sector: w.sector,
            spacing: w.spacing,
        }))
    }
}

pub use echojepa_bundle::Scaler;

/// A probe stored in a native checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeEntry {
    pub config: ProbeConfig,
    /// Class names (classifier).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Target names with units, e.g. `["LVEF (%)"]` (regressor).
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub scaler: Option<Scaler>,
    /// Classifier: the softmax temperature fitted on validation data (logits are divided by
    /// it before the softmax); absent when never calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Classifier: the calibrated confidence below which dependent heads (EF) should not be
    /// shown, derived on validation data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f64>,
    /// Views this head was trained on (lower-case names); empty: any view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid_views: Vec<String>,
    /// What the head predicts; absent in checkpoints written before tasks were recorded (the
    /// bundle builder then derives it with [`echojepa_bundle::HeadTask::legacy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<echojepa_bundle::HeadTask>,
}

/// The JSON side of a native checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeConfig {
    pub format: String,
    /// Free-form model id, e.g. `echojepa-phantom-tiny`.
    #[serde(default)]
    pub model_id: String,
    pub encoder: EncoderConfig,
    /// Which encoder tensors are stored: any of `encoder`, `target_encoder`.
    pub encoders: Vec<String>,
    #[serde(default)]
    pub predictor: Option<PredictorConfig>,
    #[serde(default, with = "input_wire")]
    pub input: Option<InputSpec>,
    /// Probes by name (`view`, `ef`, …).
    #[serde(default)]
    pub probes: BTreeMap<String, ProbeEntry>,
    /// Where the training data came from (synthetic or not). Absent in checkpoints written
    /// before it was recorded: [`NativeConfig::provenance`] then reads the notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<echojepa_bundle::Provenance>,
    /// Free-form notes for people (recipe, step, commit, …).
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
    /// The LV cavity decoder (tensors under `lv_head.`), when the model has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lv_head: Option<LvHeadEntry>,
}

/// What a checkpoint records about its LV cavity decoder (see [`crate::lv`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LvHeadEntry {
    /// Views it was trained on (EF is measured only there).
    pub valid_views: Vec<String>,
    /// `EF = a + b · EF_traced`, fitted on validation clips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef_fit: Option<[f64; 2]>,
    /// Dice on validation clips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_dice: Option<f64>,
    /// Whether EF from the traced LV measured better on validation than the EF regressor (or
    /// the model has no regressor): then the cart reports it; otherwise the regressor's EF is
    /// reported and the tracing is only drawn.
    #[serde(default)]
    pub measures_ef: bool,
}

impl NativeConfig {
    pub fn new(encoder: EncoderConfig) -> Self {
        Self {
            format: NATIVE_FORMAT.into(),
            model_id: String::new(),
            encoder,
            encoders: vec![],
            predictor: None,
            input: None,
            probes: BTreeMap::new(),
            provenance: None,
            notes: BTreeMap::new(),
            lv_head: None,
        }
    }

    /// Where the training data came from: as recorded, or for checkpoints written before it
    /// was (legacy) guessed from the notes.
    pub fn provenance(&self) -> echojepa_bundle::Provenance {
        self.provenance
            .clone()
            .unwrap_or_else(|| echojepa_bundle::Provenance::from_legacy_notes(&self.notes))
    }
}

/// Paths of the two files of a native checkpoint `stem`: `stem.safetensors`, `stem.json`.
pub fn native_paths(stem: &Path) -> (PathBuf, PathBuf) {
    let s = stem.to_string_lossy();
    let s = s
        .strip_suffix(".safetensors")
        .or_else(|| s.strip_suffix(".json"))
        .unwrap_or(&s);
    (
        PathBuf::from(format!("{s}.safetensors")),
        PathBuf::from(format!("{s}.json")),
    )
}

/// A native checkpoint in memory: config + tensors named `<part>.<checkpoint name>` where part is
/// `encoder`, `target_encoder`, `predictor` or `probes.<name>`.
#[derive(Debug, Clone)]
pub struct NativeCheckpoint {
    pub config: NativeConfig,
    pub tensors: TensorMap,
}

impl NativeCheckpoint {
    pub fn new(config: NativeConfig) -> Self {
        Self {
            config,
            tensors: HashMap::new(),
        }
    }

    /// Adds a part's tensors under `prefix.`.
    pub fn insert_part(&mut self, prefix: &str, tensors: TensorMap) {
        for (k, v) in tensors {
            self.tensors.insert(format!("{prefix}.{k}"), v);
        }
    }

    /// The tensors of one part, prefix removed.
    pub fn part(&self, prefix: &str) -> TensorMap {
        let p = format!("{prefix}.");
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone())))
            .collect()
    }

    /// Writes `stem.safetensors` and `stem.json`.
    pub fn save(&self, stem: &Path) -> Result<()> {
        let (st, js) = native_paths(stem);
        if let Some(parent) = st.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let tensors: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::F32)?.contiguous()?)))
            .collect::<candle_core::Result<_>>()?;
        candle_core::safetensors::save(&tensors, &st)?;
        let json = serde_json::to_vec_pretty(&self.config).map_err(|e| Error::Json {
            path: js.clone(),
            source: e,
        })?;
        std::fs::write(&js, json).map_err(|e| Error::io(&js, e))?;
        Ok(())
    }

    /// Reads `stem.safetensors` and `stem.json`.
    pub fn load(stem: &Path, dev: &Device) -> Result<Self> {
        let (st, js) = native_paths(stem);
        let bytes = std::fs::read(&js).map_err(|e| Error::io(&js, e))?;
        let config: NativeConfig = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            path: js.clone(),
            source: e,
        })?;
        if config.format != NATIVE_FORMAT {
            return Err(Error::Config(format!(
                "{}: format `{}`, expected `{NATIVE_FORMAT}`",
                js.display(),
                config.format
            )));
        }
        if !st.exists() {
            return Err(Error::io(
                &st,
                std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            ));
        }
        let tensors =
            candle_core::safetensors::load(&st, dev).map_err(|e| Error::BadCheckpoint {
                path: st.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self { config, tensors })
    }

    fn safetensors_path(&self, stem: &Path) -> PathBuf {
        native_paths(stem).0
    }

    /// Builds the encoder `which` (`encoder` or `target_encoder`) strictly.
    pub fn encoder(&self, stem: &Path, which: &str, dev: &Device) -> Result<VisionTransformer> {
        let cfg = self.config.encoder.clone();
        load_strict(
            &self.safetensors_path(stem),
            self.part(which),
            DType::F32,
            dev,
            |vb| VisionTransformer::new(&cfg, vb),
        )
    }

    /// Builds the predictor strictly.
    pub fn predictor(&self, stem: &Path, dev: &Device) -> Result<Predictor> {
        let cfg = self
            .config
            .predictor
            .clone()
            .ok_or_else(|| Error::Config("checkpoint has no predictor".into()))?;
        load_strict(
            &self.safetensors_path(stem),
            self.part("predictor"),
            DType::F32,
            dev,
            |vb| Predictor::new(&cfg, vb),
        )
    }

    /// Builds probe `name` strictly.
    pub fn probe(&self, stem: &Path, name: &str, dev: &Device) -> Result<AttentiveProbe> {
        let entry = self.config.probes.get(name).ok_or_else(|| {
            Error::Config(format!(
                "checkpoint has no probe `{name}` (has: {})",
                self.config
                    .probes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let cfg = entry.config.clone();
        load_strict(
            &self.safetensors_path(stem),
            self.part(&format!("probes.{name}")),
            DType::F32,
            dev,
            |vb| AttentiveProbe::new(&cfg, vb),
        )
    }
}

/// Collects the tensors of a `VarMap` (e.g. after training) into a [`TensorMap`].
pub fn varmap_tensors(vm: &candle_nn::VarMap) -> Result<TensorMap> {
    let data = vm
        .data()
        .lock()
        .map_err(|_| Error::Config("VarMap lock poisoned".into()))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect())
}
