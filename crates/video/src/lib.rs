//! Video analysis for Flowers (journey J5; plan in docs/plans/video.md). The stages of a
//! stream's pipeline with no model: decoding with an `ffmpeg` child, from files and live
//! cameras alike ([`decode`]), whose frames [`y4m`] reads; motion detection ([`motion`]);
//! tracking ([`track`]); the geometry of zones, counting lines and masks ([`geometry`]); the
//! rules that turn tracks into zone, loitering and line events ([`rules`]); and [`scan`], which
//! runs them over one source. The service's storage: objects, events and streams in
//! `video.sqlite` with retention ([`db`]), and JPEG snapshots ([`snapshot`]). It links no libav
//! and never reads the environment: the ffmpeg program and every setting are handed to it.

pub mod db;
pub mod decode;
pub mod detect;
pub mod geometry;
pub mod http;
pub mod live;
pub mod motion;
pub mod pipeline;
pub mod rules;
pub mod scan;
pub mod service;
pub mod snapshot;
pub mod track;
pub mod y4m;

pub use db::{
    DbError, Event, EventKind, EventQuery, NewEvent, Object, ObjectQuery, Retention, SweepReport,
    UnknownEventKind, VideoDb,
};
pub use decode::{
    ffmpeg_version, parse_ffmpeg_version, validate_source, DecodeError, DecodeOptions, Decoder,
    DecoderKiller, FfmpegVersion, RtspTransport,
};
pub use detect::{DetectError, Detected, Detector, DetectorOptions, Layout, RgbImage};
pub use geometry::{Direction, Line, NormalisedPolygon, Point, Polygon, PolygonError, Side};
pub use live::{LiveEvent, LiveOptions, StreamHandle, StreamState, StreamStatus};
pub use motion::{downscale_half, mask_of, MotionBox, MotionConfig, MotionDetector, MotionError};
pub use pipeline::{Pipeline, PipelineOptions, Snapshot, Step, StreamMotion};
pub use rules::{anchor, CountLine, RuleEvent, Rules, Zone, ZONE_INERTIA};
pub use scan::{scan, ScanError, ScanEvent, ScanOptions, ScanReport};
pub use service::{Origin, ServiceError, ServiceOptions, StreamView, VideoService};
pub use snapshot::{crop_around, Frame, Rect, SnapshotError};
pub use track::{BoxF, Detection, Track, TrackEvent, Tracker, TrackerConfig, TrackerError};
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
