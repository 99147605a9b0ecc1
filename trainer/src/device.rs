//! `--devices cpu|cuda:N` parsing and the compute precision a run uses there: the config's
//! `bfloat16` on CUDA (f32 master weights), f32 on CPU where bf16 brings no speed.

use anyhow::{Result, bail};
use candle_core::{DType, Device};
use serde::Serialize;

/// A device as the user named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    /// `cuda` without an index: GPU 0 for a process of its own (as `cuda:0`), the local rank's
    /// GPU for a rank started by a launcher (`dist::device_for` resolves it to `cuda:LOCAL_RANK`).
    CudaAny,
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("cpu") {
            return Ok(Self::Cpu);
        }
        if s.eq_ignore_ascii_case("cuda") {
            return Ok(Self::CudaAny);
        }
        if let Some(n) = s.strip_prefix("cuda:")
            && let Ok(i) = n.parse()
        {
            return Ok(Self::Cuda(i));
        }
        bail!("unknown device `{s}`: use cpu or cuda:N (e.g. cuda:0)")
    }

    /// The first of `--devices` (one device per process; several are refused). A device this
    /// build cannot drive is refused here, before any config, data or checkpoint is read, so a
    /// long job never starts on the wrong hardware.
    pub fn from_list(list: &[String]) -> Result<Self> {
        let dev = match list {
            [] => Self::Cpu,
            [one] => Self::parse(one)?,
            many => bail!(
                "--devices {}: one device per run is supported (no multi-GPU data parallelism)",
                many.join(" ")
            ),
        };
        dev.check_built()?;
        Ok(dev)
    }

    /// Whether this build can drive the device at all (not whether one is attached).
    pub fn check_built(self) -> Result<()> {
        if self.is_cuda() && !cfg!(feature = "cuda") {
            bail!(
                "--devices {}: this trainer was built without CUDA; rebuild with \
                 `cargo build --release -p trainer --features cuda` (needs the CUDA toolkit), \
                 or use --devices cpu",
                self.label()
            );
        }
        Ok(())
    }

    pub fn open(self) -> Result<Device> {
        self.check_built()?;
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(_) | Self::CudaAny => Ok(Device::new_cuda(self.cuda_index().unwrap_or(0))?),
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_) | Self::CudaAny)
    }

    /// The GPU index this spec opens in a process of its own (`cuda` alone is GPU 0).
    pub fn cuda_index(self) -> Option<usize> {
        match self {
            Self::Cpu => None,
            Self::Cuda(i) => Some(i),
            Self::CudaAny => Some(0),
        }
    }

    /// Compute precision for a requested `meta.dtype` / `use_bfloat16`.
    pub fn compute_dtype(self, requested_bf16: bool) -> DType {
        if requested_bf16 && self.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        }
    }

    pub fn label(self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Cuda(i) => format!("cuda:{i}"),
            Self::CudaAny => "cuda:0".into(),
        }
    }
}

/// Whether a config dtype string asks for reduced precision.
pub fn wants_bf16(dtype: &str) -> bool {
    matches!(
        dtype.to_ascii_lowercase().as_str(),
        "bfloat16" | "bf16" | "float16" | "fp16" | "half"
    )
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F32 => "float32",
        DType::F64 => "float64",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        // `cuda` alone is GPU 0 for one process, as before
        let any = DeviceSpec::parse("cuda").unwrap();
        assert_eq!(any, DeviceSpec::CudaAny);
        assert_eq!((any.cuda_index(), any.label()), (Some(0), "cuda:0".into()));
        assert!(any.is_cuda() && !DeviceSpec::Cpu.is_cuda());
        assert!(DeviceSpec::parse("tpu").is_err());
        assert!(DeviceSpec::from_list(&["cuda:0".into(), "cuda:1".into()]).is_err());
        assert_eq!(DeviceSpec::Cpu.compute_dtype(true), DType::F32);
        assert_eq!(DeviceSpec::Cuda(0).compute_dtype(true), DType::BF16);
        assert!(wants_bf16("bfloat16") && !wants_bf16("float32"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
