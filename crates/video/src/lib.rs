//! Video analysis for Flowers (journey J5; plan in docs/plans/video.md). So far, the pure
//! stages of a stream's pipeline: motion detection without a model ([`motion`]), tracking
//! ([`track`]), the geometry of zones and counting lines ([`geometry`]) and the rules that turn
//! tracks into zone, loitering and line events ([`rules`]); and decoding with an `ffmpeg` child
//! ([`decode`]) whose frames [`y4m`] reads.

pub mod decode;
pub mod geometry;
pub mod motion;
pub mod rules;
pub mod track;
pub mod y4m;

pub use decode::{DecodeError, DecodeOptions, Decoder};
pub use geometry::{Direction, Line, Point, Polygon, Side};
pub use motion::{downscale_half, MotionBox, MotionConfig, MotionDetector, MotionError};
pub use rules::{anchor, CountLine, RuleEvent, Rules, Zone, ZONE_INERTIA};
pub use track::{BoxF, Detection, Track, TrackEvent, Tracker, TrackerConfig};
pub use y4m::{Colour, Y4mError, Y4mHeader, Y4mReader};
