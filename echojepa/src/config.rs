//! Architectures (encoder presets, predictor, attentive probe). They live in the candle-free
//! `echojepa-bundle` crate because bundle manifests carry them; re-exported here for the model
//! code.

pub use echojepa_bundle::config::*;
