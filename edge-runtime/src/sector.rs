//! Sector stage: where the ultrasound image (the fan) sits in the captured frame.
//!
//! Exported echo frames carry more than the image: an ECG trace, text, scale marks. The model was
//! trained on the sector alone (or on the whole frame; the bundle says which), so the runtime
//! crops to the sector and, when asked, blanks what lies outside the fan inside the crop.
//!
//! The sector is either fixed by the board profile or detected with the estimator the trainer and
//! `quantize` use (`echojepa_input::sector`: the largest bright connected region over the frames
//! seen, closed by its convex hull). Online, it is estimated from the frames since the last
//! detection (the first after one frame, then every `redetect_every` frames); a new box replaces
//! the old one only when it moved noticeably ([`should_replace`]), so the crop does not jitter.

pub use echojepa_input::Sector;
pub use echojepa_input::sector::{SectorEstimator, should_replace};
