//! EchoJEPA (V-JEPA 2 for echocardiography) in candle: the model family — configs, the video
//! ViT encoder with 3-D RoPE, the predictor, attentive probes, the LV head, official `.pt` and
//! native checkpoints, and the int8 encoder that runs signed edge bundles.
//!
//! Tools depend on this crate; it depends on no tool and on no video decoder. The model's input
//! (clips, sampling, resize, sector, normalisation) is `echojepa-input`, video files are
//! `echojepa-video`, the synthetic phantom is `echojepa-phantom`. Training-only code (data
//! loading, augmentation, optimisers) lives in `trainer`. The reference's dataset list format
//! ([`datalist`]) is here because `quantize report` evaluates on the same lists the probes were
//! trained on.

pub mod checkpoint;
pub mod config;
pub mod datalist;
pub mod encoder;
pub mod error;
pub mod nn;
pub mod predictor;
pub mod probe;
pub mod rope;

pub use echojepa_bundle as bundle;
pub mod lv;
pub mod quantized;

pub use config::{EncoderConfig, PredictorConfig, ProbeConfig, ProbeKind};
pub use error::{Error, Result};
