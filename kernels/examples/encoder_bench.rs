//! A complete V-JEPA encoder forward pass built only from this crate's kernels, used by
//! `bench/peer_bench.py` to time the kernel layer end to end next to PyTorch and ONNX Runtime
//! (and to measure its token cosine to f32). It is a benchmark harness, not the product
//! encoder (that lives in `echojepa`); it shows what the kernels deliver per clip.
//!
//! `cargo run --release -p echojepa-kernels --example encoder_bench -- --weights W.safetensors
//!  --input V.safetensors [--reps 10] [--precision f32,int8] [--output-prefix P] [--json]`
//!
//! Weights: the `Encoder.state_dict()` names of bench/vjepa_encoder.py (`patch_embed.proj.*`,
//! `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`, `norm.*`) in f32, with
//! `embed_dim`, `depth`, `num_heads` in the safetensors metadata. Input: `video` `[1,3,T,H,W]`.
//! Prints one JSON line per precision: `{"label", "times_ms", "median_ms", "output"}`; the
//! output file holds `tokens` `[1, N, D]`.

use std::collections::HashMap;
use std::time::Instant;

use echojepa_kernels::rope::{RopeTables, apply_rope_qk};
use echojepa_kernels::{
    Epilogue, PackedF32Linear, PackedInt8Linear, PackedLinear, attention, cpu, norm,
};
use safetensors::SafeTensors;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Tensors {
    map: HashMap<String, (Vec<usize>, Vec<f32>)>,
    meta: HashMap<String, String>,
}

fn load(path: &str) -> Res<Tensors> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let mut map = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(
                format!("{path}: tensor {name} is {:?}, expected F32", view.dtype()).into(),
            );
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        map.insert(name, (view.shape().to_vec(), data));
    }
    Ok(Tensors {
        map,
        meta: meta.metadata().clone().unwrap_or_default(),
    })
}

impl Tensors {
    fn get(&self, name: &str) -> Res<&[f32]> {
        Ok(&self
            .map
            .get(name)
            .ok_or_else(|| format!("missing tensor {name}"))?
            .1)
    }
    fn meta_usize(&self, key: &str) -> Res<usize> {
        Ok(self
            .meta
            .get(key)
            .ok_or_else(|| format!("missing metadata {key}"))?
            .parse()?)
    }
}

struct Block {
    n1: (Vec<f32>, Vec<f32>),
    qkv: PackedLinear,
    proj: PackedLinear,
    n2: (Vec<f32>, Vec<f32>),
    fc1: PackedLinear,
    fc2: PackedLinear,
}

struct Model {
    dim: usize,
    heads: usize,
    patch: PackedLinear,
    blocks: Vec<Block>,
    norm: (Vec<f32>, Vec<f32>),
}

fn linear(t: &Tensors, name: &str, int8: bool) -> Res<PackedLinear> {
    let (shape, w) = t
        .map
        .get(&format!("{name}.weight"))
        .ok_or(format!("missing {name}.weight"))?;
    let out = shape[0];
    let inp: usize = shape[1..].iter().product();
    let b = t.get(&format!("{name}.bias"))?;
    Ok(if int8 {
        PackedLinear::Int8(PackedInt8Linear::from_f32(w, out, inp, Some(b))?)
    } else {
        PackedLinear::F32(PackedF32Linear::from_f32(w, out, inp, Some(b))?)
    })
}

fn ln(t: &Tensors, name: &str) -> Res<(Vec<f32>, Vec<f32>)> {
    Ok((
        t.get(&format!("{name}.weight"))?.to_vec(),
        t.get(&format!("{name}.bias"))?.to_vec(),
    ))
}

impl Model {
    fn new(t: &Tensors, int8: bool) -> Res<Self> {
        let dim = t.meta_usize("embed_dim")?;
        let depth = t.meta_usize("depth")?;
        let heads = t.meta_usize("num_heads")?;
        let mut blocks = vec![];
        for i in 0..depth {
            let p = format!("blocks.{i}");
            blocks.push(Block {
                n1: ln(t, &format!("{p}.norm1"))?,
                qkv: linear(t, &format!("{p}.attn.qkv"), int8)?,
                proj: linear(t, &format!("{p}.attn.proj"), int8)?,
                n2: ln(t, &format!("{p}.norm2"))?,
                fc1: linear(t, &format!("{p}.mlp.fc1"), int8)?,
                fc2: linear(t, &format!("{p}.mlp.fc2"), int8)?,
            });
        }
        Ok(Self {
            dim,
            heads,
            // The patch embedding stays f32: its input is raw pixels and it runs once.
            patch: linear(t, "patch_embed.proj", false)?,
            blocks,
            norm: ln(t, "norm")?,
        })
    }

    fn forward(&self, video: &[f32], shape: &[usize], rope: &RopeTables) -> Res<Vec<f32>> {
        let (c, tf, h, w) = (shape[1], shape[2], shape[3], shape[4]);
        let (tp, hp, wp) = (tf / 2, h / 16, w / 16);
        let n = tp * hp * wp;
        let d = self.dim;
        let hd = d / self.heads;
        // im2col in (c, t, y, x) order = the Conv3d weight's flattening.
        let pl = c * 2 * 16 * 16;
        let mut patches = vec![0f32; n * pl];
        for ti in 0..tp {
            for yi in 0..hp {
                for xi in 0..wp {
                    let tok = ti * hp * wp + yi * wp + xi;
                    let dst = &mut patches[tok * pl..(tok + 1) * pl];
                    let mut o = 0;
                    for ch in 0..c {
                        for dt in 0..2 {
                            for dy in 0..16 {
                                let src =
                                    ((ch * tf + ti * 2 + dt) * h + yi * 16 + dy) * w + xi * 16;
                                dst[o..o + 16].copy_from_slice(&video[src..src + 16]);
                                o += 16;
                            }
                        }
                    }
                }
            }
        }
        let mut x = vec![0f32; n * d];
        self.patch.forward(&patches, n, &mut x, Epilogue::None)?;
        let mut hbuf = vec![0f32; n * d];
        let mut qkv = vec![0f32; n * 3 * d];
        let mut a = vec![0f32; n * d];
        let mut f = vec![0f32; n * 4 * d];
        for b in &self.blocks {
            norm::layer_norm(&x, n, d, &b.n1.0, &b.n1.1, 1e-6, &mut hbuf)?;
            b.qkv.forward(&hbuf, n, &mut qkv, Epilogue::None)?;
            apply_rope_qk(&mut qkv, n, self.heads, hd, rope)?;
            attention::attention(&qkv, n, self.heads, hd, &mut a)?;
            b.proj.forward(&a, n, &mut x, Epilogue::Accumulate)?;
            norm::layer_norm(&x, n, d, &b.n2.0, &b.n2.1, 1e-6, &mut hbuf)?;
            b.fc1.forward(&hbuf, n, &mut f, Epilogue::Gelu)?;
            b.fc2.forward(&f, n, &mut x, Epilogue::Accumulate)?;
        }
        norm::layer_norm(&x, n, d, &self.norm.0, &self.norm.1, 1e-6, &mut hbuf)?;
        Ok(hbuf)
    }
}

fn main() -> Res<()> {
    echojepa_kernels::settings::configure_from_env(None, 0)?;
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let weights = arg("--weights").ok_or("--weights is required")?;
    let input = arg("--input").ok_or("--input is required")?;
    let reps: usize = arg("--reps").unwrap_or_else(|| "10".into()).parse()?;
    let precisions = arg("--precision").unwrap_or_else(|| "f32,int8".into());
    let prefix = arg("--output-prefix");
    let json = args.iter().any(|a| a == "--json");
    let t = load(&weights)?;
    let inp = load(&input)?;
    let (vshape, video) = inp
        .map
        .get("video")
        .ok_or(format!("{input}: missing tensor video"))?;
    if vshape.len() != 5 || vshape[0] != 1 {
        return Err(format!("{input}: video must be [1,3,T,H,W], got {vshape:?}").into());
    }
    if !json {
        eprintln!("{}", cpu::describe());
    }
    for prec in precisions.split(',') {
        let int8 = match prec {
            "int8" => true,
            "f32" => false,
            other => return Err(format!("unknown precision {other}").into()),
        };
        let model = Model::new(&t, int8)?;
        let hd = model.dim / model.heads;
        let rope = RopeTables::grid(vshape[2] / 2, vshape[3] / 16, vshape[4] / 16, hd)?;
        let out = model.forward(video, vshape, &rope)?;
        let mut times = vec![];
        for _ in 0..reps {
            let s = Instant::now();
            std::hint::black_box(model.forward(video, vshape, &rope)?);
            times.push(s.elapsed().as_secs_f64() * 1e3);
        }
        let mut sorted = times.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let median = sorted[sorted.len() / 2];
        let label = format!("kernels_{prec}");
        let mut out_path = String::new();
        if let Some(p) = &prefix {
            out_path = format!("{p}.{label}.safetensors");
            let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
            let n = out.len() / model.dim;
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![1, n, model.dim],
                &bytes,
            )?;
            safetensors::serialize_to_file(
                [("tokens", view)],
                None,
                std::path::Path::new(&out_path),
            )?;
        }
        if json {
            let ts: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
            println!(
                "{{\"label\": \"{label}\", \"median_ms\": {median:.3}, \"times_ms\": [{}], \"output\": \"{out_path}\"}}",
                ts.join(", ")
            );
        } else {
            println!("{label}: median {median:.1} ms over {reps} runs");
        }
    }
    Ok(())
}
