//! Video analysis for Flowers (journey J5; plan in docs/plans/video.md). So far: motion
//! detection without a model ([`motion`]), the first stage of every stream's pipeline.

pub mod motion;

pub use motion::{downscale_half, MotionBox, MotionConfig, MotionDetector, MotionError};
