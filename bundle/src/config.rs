//! Architectures: the ViT encoder presets of the reference (`vit_tiny` … `vit_giant_xformers`),
//! custom encoders, the predictor and the attentive probe. Field names follow the reference
//! constructors so a config reads like the Python call that built the checkpoint.

use serde::{Deserialize, Serialize};

/// A configuration that cannot describe a model; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

type Result<T> = std::result::Result<T, ConfigError>;

/// The video ViT encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Preset name (`vit_small`, …) or `custom`.
    #[serde(default = "custom")]
    pub name: String,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// Hidden width of the MLP (`int(embed_dim * mlp_ratio)` in the reference).
    pub mlp_hidden: usize,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_tubelet")]
    pub tubelet_size: usize,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    /// LayerNorm epsilon of the blocks and the final norm: 1e-6 in the reference factories
    /// (`vit_small`, …) that built every released checkpoint; a bare `VisionTransformer(...)`
    /// call gets PyTorch's default 1e-5 ([`TORCH_LN_EPS`]).
    #[serde(default = "default_vit_eps")]
    pub norm_eps: f64,
}

fn custom() -> String {
    "custom".into()
}
fn default_patch() -> usize {
    16
}
fn default_tubelet() -> usize {
    2
}
fn default_in_chans() -> usize {
    3
}
fn default_vit_eps() -> f64 {
    VIT_LN_EPS
}

/// LayerNorm epsilon of the encoder and predictor built by the reference factories
/// (`vit_*`, `vit_predictor`), i.e. of every released checkpoint.
pub const VIT_LN_EPS: f64 = 1e-6;
/// PyTorch's `nn.LayerNorm` default, used by the reference constructors when no `norm_layer` is
/// passed (the conformance fixture builds its models that way).
pub const TORCH_LN_EPS: f64 = 1e-5;
/// LayerNorm epsilon of every probe LayerNorm and of the pretraining target normalisation.
pub const PROBE_LN_EPS: f64 = 1e-5;

/// Preset names accepted by [`EncoderConfig::preset`].
pub const PRESETS: &[&str] = &[
    "vit_tiny",
    "vit_small",
    "vit_base",
    "vit_large",
    "vit_huge",
    "vit_giant_xformers",
];

impl EncoderConfig {
    /// A custom encoder; `mlp_ratio` as in the reference (`int(dim * ratio)`).
    pub fn custom(embed_dim: usize, depth: usize, num_heads: usize, mlp_ratio: f64) -> Self {
        Self {
            name: custom(),
            embed_dim,
            depth,
            num_heads,
            mlp_hidden: (embed_dim as f64 * mlp_ratio) as usize,
            patch_size: 16,
            tubelet_size: 2,
            in_chans: 3,
            norm_eps: VIT_LN_EPS,
        }
    }

    /// The reference factory of that name (aliases of the hub such as `vit_giant` map to
    /// `vit_giant_xformers`, the released ViT-g). `*_rope` suffixes are accepted.
    pub fn preset(name: &str) -> Result<Self> {
        let base = name.strip_suffix("_rope").unwrap_or(name);
        let (d, depth, heads, hidden) = match base {
            "vit_tiny" => (192, 12, 3, 768),
            "vit_small" => (384, 12, 6, 1536),
            "vit_base" => (768, 12, 12, 3072),
            "vit_large" => (1024, 24, 16, 4096),
            "vit_huge" => (1280, 32, 16, 5120),
            "vit_giant_xformers" | "vit_giant" | "vit_giant_384" | "vit_ac_giant" => {
                (1408, 40, 22, 6144)
            }
            other => {
                return Err(ConfigError(format!(
                    "unknown model name `{other}`; known: {}",
                    PRESETS.join(", ")
                )));
            }
        };
        let canonical = match base {
            "vit_giant" | "vit_giant_384" | "vit_ac_giant" => "vit_giant_xformers",
            b => b,
        };
        Ok(Self {
            name: canonical.into(),
            embed_dim: d,
            depth,
            num_heads: heads,
            mlp_hidden: hidden,
            patch_size: 16,
            tubelet_size: 2,
            in_chans: 3,
            norm_eps: VIT_LN_EPS,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Checks the numbers make a valid model.
    pub fn validate(&self) -> Result<()> {
        if self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 || self.mlp_hidden == 0 {
            return Err(ConfigError(format!(
                "encoder `{}`: embed_dim, depth, num_heads and mlp_hidden must be positive",
                self.name
            )));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(ConfigError(format!(
                "encoder `{}`: embed_dim {} is not divisible by num_heads {}",
                self.name, self.embed_dim, self.num_heads
            )));
        }
        if self.head_dim() < 6 {
            return Err(ConfigError(format!(
                "encoder `{}`: head dim {} is too small for 3-D RoPE (needs >= 6)",
                self.name,
                self.head_dim()
            )));
        }
        if self.patch_size == 0 || self.tubelet_size == 0 {
            return Err(ConfigError(
                "patch_size and tubelet_size must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Number of parameters (patch embed + blocks + final norm).
    pub fn num_params(&self) -> usize {
        let d = self.embed_dim;
        let h = self.mlp_hidden;
        let patch = d * self.in_chans * self.tubelet_size * self.patch_size * self.patch_size + d;
        let block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (h * d + h) + (d * h + d);
        patch + self.depth * block + 2 * d
    }
}

/// The V-JEPA predictor (narrow ViT between context and target tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictorConfig {
    /// Width of the encoder it predicts for.
    pub embed_dim: usize,
    pub predictor_embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_hidden: usize,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_tubelet")]
    pub tubelet_size: usize,
    pub num_mask_tokens: usize,
    /// Construction crop size `[H, W]`; the predictor's RoPE uses this grid.
    pub img_size: [usize; 2],
    /// Construction frame count.
    pub num_frames: usize,
    /// LayerNorm epsilon (see [`EncoderConfig::norm_eps`]).
    #[serde(default = "default_vit_eps")]
    pub norm_eps: f64,
}

impl PredictorConfig {
    /// The released V-JEPA 2 / EchoJEPA predictor (384 wide, 12 layers, 12 heads, 10 mask tokens).
    pub fn reference(embed_dim: usize, crop: usize, num_frames: usize) -> Self {
        Self {
            embed_dim,
            predictor_embed_dim: 384,
            depth: 12,
            num_heads: 12,
            mlp_hidden: 1536,
            patch_size: 16,
            tubelet_size: 2,
            num_mask_tokens: 10,
            img_size: [crop, crop],
            num_frames,
            norm_eps: VIT_LN_EPS,
        }
    }

    /// Token grid `(T', Hp, Wp)` of the construction size.
    pub fn grid(&self) -> (usize, usize, usize) {
        (
            self.num_frames / self.tubelet_size,
            self.img_size[0] / self.patch_size,
            self.img_size[1] / self.patch_size,
        )
    }

    pub fn validate(&self) -> Result<()> {
        let d = self.predictor_embed_dim;
        if d == 0
            || self.num_heads == 0
            || !d.is_multiple_of(self.num_heads)
            || d / self.num_heads < 6
        {
            return Err(ConfigError(format!(
                "predictor: predictor_embed_dim {d} must be divisible by num_heads {} with head dim >= 6",
                self.num_heads
            )));
        }
        if self.num_mask_tokens == 0 {
            return Err(ConfigError(
                "predictor: num_mask_tokens must be >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// What the probe's head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// `linear` head over `num_classes`.
    Classifier,
    /// `regressor` head over `num_targets` (z-scored).
    Regressor,
}

/// Multi-view slot embeddings of the EchoJEPA multi-view probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotConfig {
    pub num_views: usize,
    pub clips_per_view: usize,
    /// `view_embed` + `clip_embed` (true) or one `slot_embed` per slot (false).
    pub use_factorized: bool,
}

/// The attentive probe (`AttentiveClassifier` / `AttentiveRegressor` of the reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    pub kind: ProbeKind,
    pub embed_dim: usize,
    pub num_heads: usize,
    /// Number of probe blocks: `depth - 1` self-attention blocks, then the cross-attention block.
    pub depth: usize,
    /// Classes (classifier) or targets (regressor).
    pub num_outputs: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default)]
    pub slots: Option<SlotConfig>,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

impl ProbeConfig {
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    pub fn validate(&self) -> Result<()> {
        if self.depth == 0 {
            return Err(ConfigError("probe depth must be >= 1".into()));
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(ConfigError(format!(
                "probe: embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            )));
        }
        if self.num_outputs == 0 {
            return Err(ConfigError(
                "probe: num_classes/num_targets must be >= 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_reference_parameter_counts() {
        // Parameter counts in millions from the reference notes (patch + blocks + final norm).
        for (name, millions) in [
            ("vit_tiny", 5.63),
            ("vit_small", 21.9),
            ("vit_base", 86.2),
            ("vit_large", 303.9),
            ("vit_huge", 631.6),
            ("vit_giant_xformers", 1012.2),
        ] {
            let cfg = EncoderConfig::preset(name).unwrap();
            cfg.validate().unwrap();
            let got = cfg.num_params() as f64 / 1e6;
            assert!((got - millions).abs() / millions < 0.01, "{name}: {got} M");
        }
        assert_eq!(EncoderConfig::preset("vit_giant").unwrap().num_heads, 22);
        assert!(EncoderConfig::preset("vit_enormous").is_err());
    }
}
