//! EchoJEPA (V-JEPA 2) model family in candle: encoder, predictor, probes, checkpoints, phantom, bundles
