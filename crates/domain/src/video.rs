//! The `[video]` table of `flowers.toml`: camera streams and recordings analysed by the video
//! service, their zones, counting lines and masks, and how long results are kept.
//!
//! Coordinates are normalised: `[0, 0]` is the frame's top-left corner and `[1, 1]` its
//! bottom-right, so that zones and lines survive a change of resolution. The config crate
//! checks every value (ranges, polygons, URLs); these types only carry the result, and travel
//! as JSON from the control API to the video service.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ByteSize, Name};

/// Frames analysed per second: the default, and the most a stream may ask for.
pub const DEFAULT_VIDEO_FPS: f32 = 5.0;
pub const MAX_VIDEO_FPS: f32 = 30.0;
/// The analysed frames' width by default; the height keeps the aspect ratio.
pub const DEFAULT_VIDEO_WIDTH: u32 = 640;

/// The kinds of video events, as events and `[[video.webhooks]] kinds` name them.
pub const VIDEO_EVENT_KINDS: [&str; 8] = [
    "object_started",
    "object_ended",
    "zone_entered",
    "zone_left",
    "line_crossed",
    "loitered",
    "stream_offline",
    "stream_online",
];
/// `[video.mqtt]` defaults: the broker's port, the topics' prefix and the client id.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
pub const DEFAULT_MQTT_PREFIX: &str = "flowers/video";
pub const DEFAULT_MQTT_CLIENT_ID: &str = "flowers-video";

/// A point in normalised coordinates: `[x, y]`, each in `[0, 1]`.
pub type NormPoint = [f32; 2];

/// Everything `[video]` declares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoConfig {
    /// `[video.streams.NAME]`.
    #[serde(default)]
    pub streams: BTreeMap<Name, StreamSpec>,
    /// `[video.motion]`: how motion is found, for every stream.
    #[serde(default)]
    pub motion: MotionSpec,
    /// `[video.retention]`: how long events and snapshots are kept.
    #[serde(default)]
    pub retention: RetentionSpec,
    /// `[video.mqtt]`: the broker every event is published to; none when absent.
    #[serde(default)]
    pub mqtt: Option<MqttSpec>,
    /// `[[video.webhooks]]`: where events are POSTed, in the file's order.
    #[serde(default)]
    pub webhooks: Vec<WebhookSpec>,
}

/// An MQTT broker (plain TCP: this build has no TLS). Events go to `PREFIX/STREAM/events`,
/// a stream's state to `PREFIX/STREAM/status` and the service's to `PREFIX/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MqttSpec {
    pub host: String,
    pub port: u16,
    /// Topics start with this, with no trailing `/` and no wildcard.
    pub prefix: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    pub client_id: String,
}

impl MqttSpec {
    /// The broker at `host:port` with the default prefix and client id, no credentials.
    pub fn new(host: impl Into<String>, port: u16) -> MqttSpec {
        MqttSpec {
            host: host.into(),
            port,
            prefix: DEFAULT_MQTT_PREFIX.to_string(),
            username: None,
            password: None,
            client_id: DEFAULT_MQTT_CLIENT_ID.to_string(),
        }
    }
}

/// An HTTP endpoint events are POSTed to as JSON, retried until it answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookSpec {
    /// An `http://` URL (this build's HTTP client has no TLS).
    pub url: String,
    /// The event kinds sent (names in [`VIDEO_EVENT_KINDS`]); empty sends every kind.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// The streams whose events are sent; empty sends every stream's.
    #[serde(default)]
    pub streams: Vec<String>,
    /// Extra request headers, such as an `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl WebhookSpec {
    /// A webhook of `url` for every event.
    pub fn new(url: impl Into<String>) -> WebhookSpec {
        WebhookSpec {
            url: url.into(),
            kinds: Vec::new(),
            streams: Vec::new(),
            headers: BTreeMap::new(),
        }
    }

    /// Whether an event of `kind` on `stream` is sent here.
    pub fn wants(&self, stream: &str, kind: &str) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && (self.streams.is_empty() || self.streams.iter().any(|s| s == stream))
    }
}

/// One source: a camera (RTSP, HTTP) or a file, analysed continuously.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamSpec {
    /// `rtsp://`, `rtsps://`, `http://`, `https://` or an absolute file path.
    pub url: String,
    /// Frames analysed per second, above 0 and at most [`MAX_VIDEO_FPS`].
    pub fps: f32,
    /// Width of the analysed frames in pixels (16..=7680); the height keeps the aspect.
    pub width: u32,
    /// Decoding on an NVIDIA GPU when the service has one.
    pub hwaccel: HwAccel,
    /// How RTSP media travels.
    pub rtsp_transport: RtspTransport,
    /// Classes kept from the detector; empty keeps all. Motion-only without a detector.
    #[serde(default)]
    pub objects: Vec<String>,
    /// The least detector score kept, in `[0, 1]`.
    pub min_score: f32,
    /// Polygons where nothing is ever seen to move (timestamps, trees in the wind).
    #[serde(default)]
    pub masks: Vec<Vec<NormPoint>>,
    #[serde(default)]
    pub zones: BTreeMap<Name, ZoneSpec>,
    #[serde(default)]
    pub lines: BTreeMap<Name, LineSpec>,
}

impl StreamSpec {
    /// A stream of `url` with every default.
    pub fn new(url: impl Into<String>) -> StreamSpec {
        StreamSpec {
            url: url.into(),
            fps: DEFAULT_VIDEO_FPS,
            width: DEFAULT_VIDEO_WIDTH,
            hwaccel: HwAccel::Auto,
            rtsp_transport: RtspTransport::Tcp,
            objects: Vec::new(),
            min_score: 0.5,
            masks: Vec::new(),
            zones: BTreeMap::new(),
            lines: BTreeMap::new(),
        }
    }

    /// Whether the source is a live one (a URL) rather than a file, which ends.
    pub fn is_live(&self) -> bool {
        self.url.contains("://")
    }
}

/// A region of the frame: objects entering, leaving and staying in it are events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZoneSpec {
    /// At least three points.
    pub polygon: Vec<NormPoint>,
    /// An object inside this long has loitered (one event per object); `None`: never.
    #[serde(default, with = "humantime_serde")]
    pub loiter_after: Option<Duration>,
}

/// A counting line from `from` to `to`; crossing it is an event with a direction
/// (`left_to_right` as seen walking from `from` to `to`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineSpec {
    pub from: NormPoint,
    pub to: NormPoint,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HwAccel {
    /// NVDEC when the service was given a GPU, else software.
    #[default]
    Auto,
    Cuda,
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RtspTransport {
    #[default]
    Tcp,
    Udp,
}

/// How motion is found.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MotionSpec {
    /// Gray levels (1..=255) a pixel must differ from the background by.
    pub threshold: u8,
    /// Pixels a moving region must cover, in the analysed frame.
    pub min_area: u32,
    /// How fast the background follows the frames, in (0, 1].
    pub alpha: f32,
}

impl Default for MotionSpec {
    fn default() -> Self {
        MotionSpec {
            threshold: 25,
            min_area: 16,
            alpha: 0.05,
        }
    }
}

/// Retention: whichever limit is hit first removes the oldest ended objects, their events and
/// snapshots. An object still open is never removed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetentionSpec {
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_size: ByteSize,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        RetentionSpec {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_size: ByteSize::gib(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_survives_json() {
        let mut stream = StreamSpec::new("rtsp://10.0.0.2/s");
        stream.zones.insert(
            Name::new("door").unwrap(),
            ZoneSpec {
                polygon: vec![[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]],
                loiter_after: Some(Duration::from_secs(30)),
            },
        );
        stream.lines.insert(
            Name::new("gate").unwrap(),
            LineSpec {
                from: [0.5, 0.0],
                to: [0.5, 1.0],
            },
        );
        let mut config = VideoConfig::default();
        config.streams.insert(Name::new("front").unwrap(), stream);
        config.mqtt = Some(MqttSpec::new("10.0.0.5", 1883));
        let mut hook = WebhookSpec::new("http://10.0.0.6/hook");
        hook.kinds.push("line_crossed".to_string());
        config.webhooks.push(hook);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["retention"]["max_age"], "30days");
        assert_eq!(
            json["streams"]["front"]["zones"]["door"]["loiter_after"],
            "30s"
        );
        let back: VideoConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);
        assert!(back.streams.values().next().unwrap().is_live());
    }

    #[test]
    fn a_webhook_wants_its_kinds_and_streams_and_empty_lists_want_all() {
        let mut hook = WebhookSpec::new("http://10.0.0.6/hook");
        assert!(hook.wants("front", "object_started"));
        hook.kinds = vec!["line_crossed".to_string(), "loitered".to_string()];
        assert!(hook.wants("front", "loitered"));
        assert!(!hook.wants("front", "object_started"));
        hook.streams = vec!["back".to_string()];
        assert!(hook.wants("back", "line_crossed"));
        assert!(!hook.wants("front", "line_crossed"));
    }
}
