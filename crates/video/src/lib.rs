//! Video analysis for Flowers (journey J5; plan in docs/plans/video.md). So far: motion
//! detection without a model ([`motion`]), the first stage of every stream's pipeline, and the
//! geometry of zones and counting lines ([`geometry`]), and tracking ([`track`]).

pub mod geometry;
pub mod motion;
pub mod track;

pub use geometry::{Direction, Line, Point, Polygon, Side};
pub use motion::{downscale_half, MotionBox, MotionConfig, MotionDetector, MotionError};
pub use track::{BoxF, Detection, Track, TrackEvent, Tracker, TrackerConfig};
