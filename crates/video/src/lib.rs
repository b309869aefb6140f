//! Video analysis for Flowers (journey J5; plan in docs/plans/video.md). The stages of a
//! stream's pipeline with no model: decoding with an `ffmpeg` child, from files and live
//! cameras alike ([`decode`]), whose frames [`y4m`] reads; motion detection ([`motion`]);
//! tracking ([`track`]); the geometry of zones, counting lines and masks ([`geometry`]); the
//! rules that turn tracks into zone, loitering and line events ([`rules`]); and [`scan`], which
//! runs them over one source. The service's storage: objects, events and streams in
//! `video.sqlite` with retention ([`db`]), JPEG snapshots ([`snapshot`]), and events delivered
//! to webhooks and MQTT ([`deliver`]). It links no libav
//! and never reads the environment: the ffmpeg program and every setting are handed to it.

pub mod archive;
pub mod db;
pub mod decode;
pub mod deliver;
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
    Attempt, DbError, Delivery, DeliveryCounts, DeliveryState, Event, EventKind, EventQuery,
    NewEvent, Object, ObjectQuery, Retention, SweepReport, UnknownEventKind, VideoDb,
};
pub use decode::{
    ffmpeg_version, parse_ffmpeg_version, validate_source, DecodeError, DecodeOptions, Decoder,
    DecoderKiller, FfmpegVersion, RtspTransport,
};
pub use deliver::{DeliveryOptions, MqttStatus, Publisher, PublisherOptions, SenderOptions};
pub use detect::{DetectError, Detected, Detector, DetectorOptions, Layout, RgbImage};
pub use geometry::{Direction, Line, NormalisedPolygon, Point, Polygon, PolygonError, Side};
pub use live::{LiveEvent, LiveOptions, StreamHandle, StreamState, StreamStatus};
pub use motion::{downscale_half, mask_of, MotionBox, MotionConfig, MotionDetector, MotionError};
pub use pipeline::{Pipeline, PipelineOptions, Snapshot, Step, StreamMotion};
pub use rules::{anchor, CountLine, RuleEvent, Rules, Zone, ZONE_INERTIA};
pub use scan::{scan, scan_steps, ScanError, ScanEvent, ScanOptions, ScanReport};
pub use service::{DeliveriesView, Origin, ServiceError, ServiceOptions, StreamView, VideoService};
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
    /// The plan's crossing clip (docs/plans/video.md §8): 5 s of black at 640×360; from 1 s a
    /// white 40 px square moves right along the top at 500 px/s, from 2 s another moves left
    /// along the bottom. Both cross x = 330 once.
    pub(crate) fn crossing(dir: &Path) -> String {
        make(
            &dir.join("cross.mp4"),
            "color=c=black:s=640x360:r=25:d=5[bg];color=c=white:s=40x40:r=25:d=5[a];\
             color=c=white:s=40x40:r=25:d=5[b];\
             [bg][a]overlay=x='500*(t-1)':y=60:enable='gte(t,1)':shortest=1[t1];\
             [t1][b]overlay=x='600-500*(t-2)':y=260:enable='gte(t,2)':shortest=1,format=yuv420p",
            &["-c:v", "libx264", "-preset", "veryfast", "-g", "25"],
        )
    }
}
