//! Video analysis for Flowers (journey J5; plan in docs/plans/video.md). So far, the pure
//! stages of a stream's pipeline: motion detection without a model ([`motion`]), tracking
//! ([`track`]), the geometry of zones and counting lines ([`geometry`]) and the rules that turn
//! tracks into zone, loitering and line events ([`rules`]); and decoding with an `ffmpeg` child
//! ([`decode`]) whose frames [`y4m`] reads.

pub mod decode;
pub mod detect;
pub mod geometry;
pub mod motion;
pub mod rules;
pub mod scan;
pub mod track;
pub mod y4m;

pub use decode::{DecodeError, DecodeOptions, Decoder};
pub use detect::{DetectError, Detected, Detector, DetectorOptions, Layout, RgbImage};
pub use geometry::{Direction, Line, Point, Polygon, Side};
pub use motion::{downscale_half, MotionBox, MotionConfig, MotionDetector, MotionError};
pub use rules::{anchor, CountLine, RuleEvent, Rules, Zone, ZONE_INERTIA};
pub use scan::{scan, ScanError, ScanEvent, ScanOptions, ScanReport};
pub use track::{BoxF, Detection, Track, TrackEvent, Tracker, TrackerConfig};
pub use y4m::{Colour, Y4mError, Y4mHeader, Y4mReader};

/// Clips the tests make with ffmpeg itself (scripts/setup installs it), so nothing is fetched.
#[cfg(test)]
mod test_clips {
    use std::path::Path;
    use std::process::Command;

    /// Renders the lavfi `graph` into `path` with these output options; returns the path.
    pub(crate) fn make(path: &Path, graph: &str, output_options: &[&str]) -> String {
        let status = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                graph,
            ])
            .args(output_options)
            .arg(path)
            .status()
            .expect("ffmpeg runs (scripts/setup installs it)");
        assert!(status.success(), "ffmpeg could not make {}", path.display());
        path.to_string_lossy().into_owned()
    }
}
