//! The vocabulary of Flowers: devices, specs of services and jobs, runs, events and byte sizes.
//!
//! This crate owns the nouns of PRODUCT.md as plain data with their invariants (a `ByteSize`
//! parses `"6GiB"`, a `Name` is a valid service or job name, an `ExitStatus` knows how to say
//! `code=137 (SIGKILL)`). It never does I/O, never reads the environment and never knows how
//! anything is stored, scheduled or served: every other crate speaks in these types.

mod api_key;
mod bytes;
mod device;
mod event;
mod model;
mod name;
mod run;
mod spec;
mod video;

pub use api_key::{ApiKeyDigest, ApiKeyDigestError};
pub use bytes::{ByteSize, ByteSizeError};
pub use device::{Device, DeviceId, DeviceKind, GpuProcess, GpuTelemetry};
pub use event::{Event, EventKind, NewEvent};
pub use model::{MetricMode, Metrics, ModelSpec, PromotePolicy, VersionState};
pub use name::{Name, NameError};
pub use run::{ExitStatus, OwnerKind, Progress, RunId, RunOwner, RunState};
pub use spec::{
    JobSpec, ProbeSpec, ReplaceStrategy, ResourceRequest, RestartPolicy, RestartSpec, RouteSpec,
    ServiceSpec,
};

pub use video::{
    HwAccel, LineSpec, MotionSpec, MqttSpec, NormPoint, RetentionSpec, RtspTransport, StreamSpec,
    VideoConfig, WebhookSpec, ZoneSpec, DEFAULT_MQTT_CLIENT_ID, DEFAULT_MQTT_PORT,
    DEFAULT_MQTT_PREFIX, DEFAULT_VIDEO_FPS, DEFAULT_VIDEO_WIDTH, MAX_VIDEO_FPS, VIDEO_EVENT_KINDS,
};

/// Milliseconds since the Unix epoch, the one clock every record in Flowers is stamped with.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
