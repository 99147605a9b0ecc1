//! EchoJEPA (V-JEPA 2 for echocardiography) in candle: the model family and everything the
//! tools share — configs, the video ViT encoder with 3-D RoPE, the predictor, attentive probes,
//! official `.pt` and native checkpoints, clip preprocessing, the synthetic echo phantom, acoustic
//! perturbations, video decoding and signed edge bundles.
//!
//! Tools depend on this crate; it depends on no tool. Training-only code (data loading,
//! augmentation, optimisers) lives in `trainer`. The reference's dataset list format
//! ([`datalist`]) and clip-sampling rules ([`sampling`]) are here because `quantize report`
//! evaluates on the same lists the probes were trained on.

pub mod checkpoint;
pub mod config;
pub mod datalist;
pub mod encoder;
pub mod error;
pub mod nn;
pub mod predictor;
pub mod probe;
pub mod rope;

// Filled by other work streams (see DESIGN.md); each file says why it exists.
pub use echojepa_bundle as bundle;
pub mod input;
pub mod lv;
pub mod perturb;
pub mod phantom;
pub mod preprocess;
pub mod quantized;
pub mod sampling;
pub mod video;

pub use config::{EncoderConfig, PredictorConfig, ProbeConfig, ProbeKind};
pub use error::{Error, Result};
