//! The full-precision model a bundle is built from (and compared against): a native checkpoint
//! (`stem.safetensors` + `stem.json`, see `echojepa::checkpoint`) or an official `.pt` with probe
//! `.pt` files. Everything is loaded strictly: a missing tensor or a wrong shape names the tensor
//! and the file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use echojepa::bundle::{
    HeadTask, Measure, Provenance, SourceFile, TargetSpec, TaskKind, sha256_file,
};
use echojepa::checkpoint::{self, LvHeadEntry, NativeCheckpoint, PtFile, Scaler, TensorMap};
use echojepa::config::{EncoderConfig, ProbeConfig, ProbeKind, SlotConfig};
use echojepa::encoder::VisionTransformer;
use echojepa::probe::AttentiveProbe;

/// One probe head of the source.
#[derive(Debug, Clone)]
pub struct ProbeSource {
    pub name: String,
    pub cfg: ProbeConfig,
    pub tensors: TensorMap,
    pub classes: Vec<String>,
    pub targets: Vec<TargetSpec>,
    /// Calibration and valid views stored with a native probe (see `ProbeEntry`).
    pub temperature: Option<f64>,
    pub min_confidence: Option<f64>,
    pub valid_views: Vec<String>,
    /// What the head predicts, as the checkpoint recorded it (none: an official `.pt` probe or
    /// a checkpoint written before tasks were recorded).
    pub task: Option<HeadTask>,
    /// Where the tensors came from (for errors).
    pub origin: PathBuf,
}

impl ProbeSource {
    /// The head's task for the manifest, with the classes, targets and valid views the head
    /// ends up with (the command line may have changed them): the recorded task's kind and each
    /// recorded measure whose unit still holds; else, for heads recorded without a task, the
    /// legacy derivation ([`HeadTask::legacy`]).
    pub fn task_for(&self, valid_views: &[String], view_head: bool) -> HeadTask {
        let labels: Vec<(String, String)> = self
            .targets
            .iter()
            .map(|t| (t.name.clone(), t.unit.clone()))
            .collect();
        let Some(recorded) = &self.task else {
            return HeadTask::legacy(
                self.cfg.kind,
                &self.classes,
                &labels,
                valid_views,
                view_head,
            );
        };
        let task = match &recorded.kind {
            TaskKind::ViewClassifier { .. } => HeadTask::view_classifier(self.classes.clone()),
            TaskKind::Classifier { .. } => HeadTask::classifier(self.classes.clone()),
            TaskKind::Regressor { targets } => HeadTask::regressor(
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, (n, u))| match targets.get(i) {
                        Some(m) if m.unit == *u => m.clone(),
                        _ => Measure::from_label(n, u),
                    })
                    .collect(),
            ),
        };
        task.on_views(valid_views.to_vec())
    }
}

/// The loaded full-precision model.
#[derive(Debug)]
pub struct Source {
    /// The file whose hash identifies the source (safetensors or .pt).
    pub checkpoint: PathBuf,
    pub checkpoint_sha256: String,
    /// Other source files (native JSON config, probe files) with their hashes.
    pub other_files: Vec<SourceFile>,
    pub encoder_cfg: EncoderConfig,
    pub encoder: TensorMap,
    pub probes: Vec<ProbeSource>,
    /// Input spec stored in a native checkpoint.
    pub input: Option<checkpoint::InputSpec>,
    pub model_id: String,
    /// Where the training data came from (encoder and every probe).
    pub provenance: Provenance,
    /// The LV cavity decoder of a fine-tuned checkpoint: what it records, and its
    /// `weight` and `bias`.
    pub lv: Option<(LvHeadEntry, TensorMap)>,
}

/// What the command line says about the source.
#[derive(Debug, Clone, Default)]
pub struct SourceArgs {
    pub checkpoint: PathBuf,
    /// Architecture preset for `.pt` files.
    pub arch: Option<String>,
    /// Which encoder of a pretraining checkpoint (`target_encoder` or `encoder`).
    pub encoder_key: Option<String>,
    /// `NAME=PATH[#INDEX]` probe files: official `.pt` (INDEX into `classifiers`) or native
    /// probe checkpoints of `trainer probe` (INDEX among its probes).
    pub probes: Vec<String>,
    /// Probe heads for `.pt` probes (default: the encoder's).
    pub probe_heads: Option<usize>,
    /// `NAME=A,B,C` class names.
    pub classes: Vec<String>,
    /// `NAME=TARGET:UNIT:MEAN:STD` regression targets.
    pub targets: Vec<String>,
}

fn is_pt(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("pt" | "pth" | "tar")
    )
}

fn kv(s: &str, what: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("{what} `{s}` must look like NAME=VALUE"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// `"LVEF (%)"` → (`LVEF`, `%`).
fn split_unit(s: &str) -> (String, String) {
    if let (Some(a), true) = (s.rfind('('), s.ends_with(')')) {
        return (
            s[..a].trim().to_string(),
            s[a + 1..s.len() - 1].trim().to_string(),
        );
    }
    (s.trim().to_string(), String::new())
}

pub fn load(a: &SourceArgs) -> Result<Source> {
    let dev = Device::Cpu;
    let mut src = if is_pt(&a.checkpoint) {
        load_pt(a, &dev)?
    } else {
        load_native(a, &dev)?
    };
    // Extra probe files.
    for spec in &a.probes {
        let (name, rest) = kv(spec, "--probe")?;
        let (path, index) = match rest.rsplit_once('#') {
            Some((p, i)) => (
                PathBuf::from(p),
                i.parse::<usize>()
                    .with_context(|| format!("--probe {spec}: `{i}` is not a head index"))?,
            ),
            None => (PathBuf::from(&rest), 0),
        };
        if !is_pt(&path) {
            // a native probe checkpoint (`trainer probe` writes probe.safetensors + probe.json):
            // its head with class names or label scaler, trained on this very encoder
            let other = load_native(
                &SourceArgs {
                    checkpoint: path.clone(),
                    encoder_key: a.encoder_key.clone(),
                    ..SourceArgs::default()
                },
                &dev,
            )
            .with_context(|| format!("probe `{name}` from {}", path.display()))?;
            same_encoder(&src, &other)?;
            let count = other.probes.len();
            let mut head = other.probes.into_iter().nth(index).with_context(|| {
                format!(
                    "--probe {spec}: {} has {count} probe(s), no #{index}",
                    path.display()
                )
            })?;
            head.name = name.clone();
            src.other_files.push(SourceFile {
                file: file_name(&other.checkpoint),
                sha256: other.checkpoint_sha256,
            });
            src.other_files.extend(other.other_files);
            if other.provenance != src.provenance {
                src.provenance = Provenance {
                    synthetic: src.provenance.synthetic || other.provenance.synthetic,
                    description: format!(
                        "{}; probe `{name}`: {}",
                        src.provenance.description, other.provenance.description
                    ),
                };
            }
            src.probes.retain(|p| p.name != name);
            src.probes.push(head);
            continue;
        }
        let pt = PtFile::open(&path)?;
        let tensors = pt
            .state_dict(&["classifiers", &index.to_string()], &dev)
            .with_context(|| format!("probe `{name}` from {}", path.display()))?;
        let heads = a.probe_heads.unwrap_or(src.encoder_cfg.num_heads);
        let cfg = infer_probe_config(&tensors, heads, &path)?;
        let (sha, _) = sha256_file(&path)?;
        src.other_files.push(SourceFile {
            file: file_name(&path),
            sha256: sha,
        });
        src.probes.retain(|p| p.name != name);
        src.probes.push(ProbeSource {
            name,
            cfg,
            tensors,
            classes: vec![],
            targets: vec![],
            temperature: None,
            min_confidence: None,
            valid_views: vec![],
            task: None,
            origin: path,
        });
    }
    for spec in &a.classes {
        let (name, list) = kv(spec, "--classes")?;
        let p = find_probe(&mut src.probes, &name)?;
        p.classes = list.split(',').map(|c| c.trim().to_string()).collect();
    }
    for spec in &a.targets {
        let (name, t) = kv(spec, "--target")?;
        let parts: Vec<&str> = t.split(':').collect();
        let [tname, unit, mean, std] = parts.as_slice() else {
            bail!("--target {spec}: expected NAME=TARGET:UNIT:MEAN:STD, e.g. lvef=LVEF:%:55.1:9.8");
        };
        let parse = |v: &str| {
            v.parse::<f64>()
                .with_context(|| format!("--target {spec}: `{v}` is not a number"))
        };
        let p = find_probe(&mut src.probes, &name)?;
        let target = TargetSpec {
            name: tname.to_string(),
            unit: unit.to_string(),
            scaler: Scaler {
                mean: parse(mean)?,
                std: parse(std)?,
            },
        };
        if let Some(t) = p.targets.iter_mut().find(|t| t.name == *tname) {
            *t = target;
        } else {
            p.targets.push(target);
        }
    }
    for p in &src.probes {
        let n = p.cfg.num_outputs;
        match p.cfg.kind {
            ProbeKind::Classifier if p.classes.len() != n => bail!(
                "probe `{}` has {n} classes; give their names with --classes {}=NAME1,NAME2,...",
                p.name,
                p.name
            ),
            ProbeKind::Regressor if p.targets.len() != n => bail!(
                "probe `{}` has {n} regression target(s) but {} are described; give each with --target {}=NAME:UNIT:MEAN:STD (mean/std of the training labels)",
                p.name,
                p.targets.len(),
                p.name
            ),
            _ => {}
        }
    }
    Ok(src)
}

/// A probe trained on a frozen encoder is only valid on that encoder: every tensor must match.
fn same_encoder(src: &Source, other: &Source) -> Result<()> {
    let differs = |k: &str| -> Result<bool> {
        let (Some(a), Some(b)) = (src.encoder.get(k), other.encoder.get(k)) else {
            return Ok(true);
        };
        if a.dims() != b.dims() {
            return Ok(true);
        }
        let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        Ok(d != 0.0)
    };
    let mut names: Vec<&String> = src.encoder.keys().chain(other.encoder.keys()).collect();
    names.sort();
    names.dedup();
    for k in names {
        if differs(k)? {
            bail!(
                "{} was trained on another encoder than {} (tensor `{k}` differs): a probe only \
                 fits the frozen encoder it was trained on",
                other.checkpoint.display(),
                src.checkpoint.display()
            );
        }
    }
    Ok(())
}

fn find_probe<'a>(probes: &'a mut [ProbeSource], name: &str) -> Result<&'a mut ProbeSource> {
    let known: Vec<String> = probes.iter().map(|p| p.name.clone()).collect();
    probes
        .iter_mut()
        .find(|p| p.name == name)
        .with_context(|| format!("no probe `{name}` (probes: {})", known.join(", ")))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn load_native(a: &SourceArgs, dev: &Device) -> Result<Source> {
    let stem = &a.checkpoint;
    let (st, js) = checkpoint::native_paths(stem);
    let ck = NativeCheckpoint::load(stem, dev)
        .with_context(|| format!("loading native checkpoint {}", stem.display()))?;
    let cfg = ck.config.clone();
    let which = match &a.encoder_key {
        Some(k) => k.clone(),
        None if cfg.encoders.iter().any(|e| e == "target_encoder") => "target_encoder".into(),
        None => "encoder".into(),
    };
    if !cfg.encoders.contains(&which) {
        bail!(
            "{}: no `{which}` encoder (has: {})",
            js.display(),
            cfg.encoders.join(", ")
        );
    }
    let encoder = ck.part(&which);
    let expected = checkpoint::expected_tensors(|vb| VisionTransformer::new(&cfg.encoder, vb))?;
    checkpoint::check_tensors(&st, &encoder, &expected)?;
    let mut probes = Vec::new();
    for (name, entry) in &cfg.probes {
        let tensors = ck.part(&format!("probes.{name}"));
        let pc = entry.config.clone();
        let expected = checkpoint::expected_tensors(|vb| AttentiveProbe::new(&pc, vb))?;
        checkpoint::check_tensors(&st, &tensors, &expected)
            .with_context(|| format!("probe `{name}`"))?;
        let targets = entry
            .targets
            .iter()
            .map(|t| {
                let (n, u) = split_unit(t);
                TargetSpec {
                    name: n,
                    unit: u,
                    scaler: entry.scaler.unwrap_or(Scaler {
                        mean: 0.0,
                        std: 1.0,
                    }),
                }
            })
            .collect();
        if entry.config.kind == ProbeKind::Regressor && entry.scaler.is_none() {
            tracing::warn!(probe = %name, "regressor without a scaler: outputs are reported as z-scores");
        }
        probes.push(ProbeSource {
            name: name.clone(),
            cfg: entry.config.clone(),
            tensors,
            classes: entry.classes.clone(),
            targets,
            temperature: entry.temperature,
            min_confidence: entry.min_confidence,
            valid_views: entry.valid_views.clone(),
            task: entry.task.clone(),
            origin: st.clone(),
        });
    }
    let lv = match &cfg.lv_head {
        Some(entry) => {
            let tensors = ck.part("lv_head");
            let e = &cfg.encoder;
            let width = e.tubelet_size * e.patch_size * e.patch_size;
            let shape = |n: &str| tensors.get(n).map(|t| t.dims().to_vec());
            if shape("weight") != Some(vec![width, e.embed_dim])
                || shape("bias") != Some(vec![width])
                || tensors.len() != 2
            {
                bail!(
                    "{}: the LV decoder `lv_head` must be exactly weight [{width}, {}] and bias [{width}], found {:?}",
                    st.display(),
                    e.embed_dim,
                    tensors
                        .iter()
                        .map(|(k, t)| format!("{k} {:?}", t.dims()))
                        .collect::<Vec<_>>()
                );
            }
            Some((entry.clone(), tensors))
        }
        None => None,
    };
    let (sha, _) = sha256_file(&st)?;
    let (jsha, _) = sha256_file(&js)?;
    Ok(Source {
        checkpoint: st,
        checkpoint_sha256: sha,
        other_files: vec![SourceFile {
            file: file_name(&js),
            sha256: jsha,
        }],
        encoder_cfg: cfg.encoder.clone(),
        encoder,
        probes,
        input: cfg.input.clone(),
        model_id: cfg.model_id.clone(),
        provenance: cfg.provenance(),
        lv,
    })
}

fn load_pt(a: &SourceArgs, dev: &Device) -> Result<Source> {
    let arch = a.arch.as_deref().with_context(|| {
        format!(
            "{} is an official .pt checkpoint: give its architecture with --arch (e.g. vit_large)",
            a.checkpoint.display()
        )
    })?;
    let cfg = EncoderConfig::preset(arch)?;
    let key = a.encoder_key.as_deref().unwrap_or("target_encoder");
    let pt = PtFile::open(&a.checkpoint)?;
    let encoder = pt.state_dict(&[key], dev)?;
    let expected = checkpoint::expected_tensors(|vb| VisionTransformer::new(&cfg, vb))?;
    checkpoint::check_tensors(&a.checkpoint, &encoder, &expected)?;
    let (sha, _) = sha256_file(&a.checkpoint)?;
    Ok(Source {
        checkpoint: a.checkpoint.clone(),
        checkpoint_sha256: sha,
        other_files: vec![],
        encoder_cfg: cfg,
        encoder,
        probes: vec![],
        input: None,
        model_id: String::new(),
        provenance: Provenance::official(&file_name(&a.checkpoint)),
        lv: None,
    })
}

/// Probe architecture from the tensors of an official probe file.
pub fn infer_probe_config(t: &TensorMap, num_heads: usize, path: &Path) -> Result<ProbeConfig> {
    let (kind, head) = if let Some(w) = t.get("linear.weight") {
        (ProbeKind::Classifier, w)
    } else if let Some(w) = t.get("regressor.weight") {
        (ProbeKind::Regressor, w)
    } else {
        bail!(
            "{}: no `linear.weight` or `regressor.weight`: not an attentive probe",
            path.display()
        );
    };
    let (outputs, d) = head.dims2()?;
    let blocks = t
        .keys()
        .filter_map(|k| k.strip_prefix("pooler.blocks."))
        .filter_map(|k| k.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let fc1 = t
        .get("pooler.cross_attention_block.mlp.fc1.weight")
        .with_context(|| {
            format!(
                "{}: missing `pooler.cross_attention_block.mlp.fc1.weight`",
                path.display()
            )
        })?;
    let hidden = fc1.dim(0)?;
    let slots = match (
        t.get("view_embed.weight"),
        t.get("clip_embed.weight"),
        t.get("slot_embed.weight"),
    ) {
        (Some(v), Some(c), _) => Some(SlotConfig {
            num_views: v.dim(0)?,
            clips_per_view: c.dim(0)?,
            use_factorized: true,
        }),
        (_, _, Some(s)) => Some(SlotConfig {
            num_views: s.dim(0)?,
            clips_per_view: 1,
            use_factorized: false,
        }),
        _ => None,
    };
    let cfg = ProbeConfig {
        kind,
        embed_dim: d,
        num_heads,
        depth: blocks + 1,
        num_outputs: outputs,
        mlp_ratio: hidden as f64 / d as f64,
        slots,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The f32 reference models built from the source (for the report).
pub struct Reference {
    pub encoder: VisionTransformer,
    pub probes: Vec<(String, AttentiveProbe)>,
}

pub fn reference(src: &Source) -> Result<Reference> {
    let dev = Device::Cpu;
    let cfg = src.encoder_cfg.clone();
    let encoder = checkpoint::load_strict(
        &src.checkpoint,
        src.encoder.clone(),
        DType::F32,
        &dev,
        |vb| VisionTransformer::new(&cfg, vb),
    )?;
    let probes = src
        .probes
        .iter()
        .map(|p| {
            let pc = p.cfg.clone();
            let m =
                checkpoint::load_strict(&p.origin, p.tensors.clone(), DType::F32, &dev, |vb| {
                    AttentiveProbe::new(&pc, vb)
                })?;
            Ok((p.name.clone(), m))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Reference { encoder, probes })
}
