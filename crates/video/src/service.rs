//! The video service's state: its streams (declared in `[video]` or added through the API),
//! each followed live on its own thread ([`crate::live`]); what they report stored in
//! `video.sqlite` ([`crate::db`]) with snapshots, published to followers of the events, and
//! delivered to webhooks and an MQTT broker ([`crate::deliver`]) as `[video]` asks.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;

use domain::{StreamSpec, VideoConfig, WebhookSpec};

use crate::db::{
    DbError, Delivery, DeliveryCounts, Event, EventKind, NewEvent, Retention, SweepReport, VideoDb,
};
use crate::deliver::{webhook, DeliveryOptions, MqttStatus, Publisher};
use crate::live::{self, LiveEvent, LiveOptions, StreamHandle, StreamStatus};
use crate::rules::RuleEvent;
use crate::snapshot;

/// Events kept for followers that fall behind; one further behind is told to catch up from
/// the store (`Last-Event-ID`).
const FOLLOWER_BACKLOG: usize = 1024;

#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Where `video.sqlite` and the snapshots are.
    pub data_dir: PathBuf,
    pub config: VideoConfig,
    pub live: LiveOptions,
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the stream {0} is declared in the config file; change it there")]
    Declared(String),
    #[error("no stream {0}")]
    NotFound(String),
    #[error(
        "[video] declares webhooks or MQTT, whose senders run on a tokio runtime; start the \
         video service from inside one"
    )]
    NoRuntime,
}

/// The failed deliveries `GET /v1/deliveries` lists.
const RECENT_FAILURES: usize = 20;

/// Where deliveries stand, as `GET /v1/deliveries` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveriesView {
    /// Webhook deliveries by state (all kept until retention removes their events).
    pub webhooks: DeliveryCounts,
    /// The latest failed ones, newest first, with why.
    pub failed: Vec<Delivery>,
    /// `None` without `[video.mqtt]`.
    pub mqtt: Option<MqttStatus>,
}

/// Where a stream was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `[video.streams.NAME]` in flowers.toml: changed only there.
    Config,
    /// `PUT /v1/streams/NAME`: kept in video.sqlite across restarts.
    Api,
}

/// A stream as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    pub name: String,
    pub origin: Origin,
    pub spec: StreamSpec,
    pub status: StreamStatus,
}

struct Running {
    origin: Origin,
    spec: StreamSpec,
    handle: StreamHandle,
}

pub struct VideoService {
    db: Arc<Mutex<VideoDb>>,
    streams: Mutex<BTreeMap<String, Running>>,
    events: broadcast::Sender<Event>,
    /// Set when the service is stopping: followers' event streams end.
    closing: tokio::sync::watch::Sender<bool>,
    config: VideoConfig,
    live: LiveOptions,
    webhooks: Arc<Vec<WebhookSpec>>,
    /// Notified when an event with deliveries is stored: the webhook sender looks.
    wake: Arc<Notify>,
    mqtt: Option<Publisher>,
    /// Set by [`VideoService::shutdown`]: the senders stop.
    stopping: watch::Sender<bool>,
    senders: Mutex<Vec<JoinHandle<()>>>,
}

impl VideoService {
    /// Opens the store (ending objects a crash left open), starts the webhook sender and the
    /// MQTT connection when `[video]` declares them (on the current tokio runtime; pending
    /// deliveries of an earlier run resume), then every stream.
    pub fn start(options: ServiceOptions) -> Result<Arc<VideoService>, ServiceError> {
        VideoService::start_with(options, DeliveryOptions::default())
    }

    /// [`VideoService::start`] with the deliveries' timings.
    pub fn start_with(
        options: ServiceOptions,
        delivery: DeliveryOptions,
    ) -> Result<Arc<VideoService>, ServiceError> {
        let delivers = !options.config.webhooks.is_empty() || options.config.mqtt.is_some();
        if delivers && tokio::runtime::Handle::try_current().is_err() {
            return Err(ServiceError::NoRuntime);
        }
        std::fs::create_dir_all(&options.data_dir).map_err(|source| DbError::Io {
            path: options.data_dir.clone(),
            source,
        })?;
        let mut db = VideoDb::open(&options.data_dir)?;
        let closed = db.close_open_objects_with_deliveries(domain::now_ms(), &|stream| {
            webhook::targets(
                &options.config.webhooks,
                stream,
                EventKind::ObjectEnded.as_str(),
            )
        })?;
        if !closed.is_empty() {
            tracing::info!(
                "{} objects left open by the last run were ended",
                closed.len()
            );
        }
        let added = db.streams()?;
        let db = Arc::new(Mutex::new(db));
        let webhooks = Arc::new(options.config.webhooks.clone());
        let wake = Arc::new(Notify::new());
        let stopping = watch::channel(false).0;
        let mut senders = Vec::new();
        if !webhooks.is_empty() {
            senders.push(webhook::spawn(
                Arc::clone(&db),
                Arc::clone(&webhooks),
                delivery.webhooks,
                Arc::clone(&wake),
                stopping.subscribe(),
            ));
        }
        let mqtt = options
            .config
            .mqtt
            .as_ref()
            .map(|spec| Publisher::start(spec, delivery.mqtt, stopping.subscribe()));
        if let Some(mqtt) = &mqtt {
            for event in &closed {
                mqtt.event(event);
            }
        }
        let service = Arc::new(VideoService {
            db,
            streams: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(FOLLOWER_BACKLOG).0,
            closing: tokio::sync::watch::channel(false).0,
            config: options.config.clone(),
            live: options.live,
            webhooks,
            wake,
            mqtt,
            stopping,
            senders: Mutex::new(senders),
        });
        for (name, spec) in &options.config.streams {
            service.run(name.as_str(), spec.clone(), Origin::Config);
        }
        for (name, json) in added {
            if options.config.streams.keys().any(|n| n.as_str() == name) {
                tracing::warn!(
                    "the stream {name} added through the API is also declared in the config \
                     file; the file's wins"
                );
                continue;
            }
            match serde_json::from_value::<StreamSpec>(json) {
                Ok(spec) => service.run(&name, spec, Origin::Api),
                Err(error) => tracing::error!("the stored stream {name} is unreadable: {error}"),
            }
        }
        Ok(service)
    }

    fn run(self: &Arc<Self>, name: &str, spec: StreamSpec, origin: Origin) {
        // A file analysed to its end, unchanged and with the same settings, is not analysed
        // again at each start of the service: its events are stored already.
        let mut file = None;
        if !spec.is_live() {
            let settings = serde_json::to_string(&spec).expect("a spec serializes");
            // A file that cannot be read is reported by the stream itself.
            if let Ok(fingerprint) = crate::archive::fingerprint(std::path::Path::new(&spec.url)) {
                let ended = self.db().file_stream_ended(name, &fingerprint, &settings);
                match ended {
                    Ok(Some((finished_ms, frames))) => {
                        let when = std::time::UNIX_EPOCH
                            + std::time::Duration::from_millis(finished_ms.max(0) as u64);
                        let note = format!(
                            "analysed to its end at {} ({frames} frames); it is analysed again \
                             when the file or the stream's settings change",
                            humantime::format_rfc3339_seconds(when)
                        );
                        let handle = live::already_ended(frames, note);
                        let running = Running {
                            origin,
                            spec,
                            handle,
                        };
                        self.lock_streams().insert(name.to_string(), running);
                        return;
                    }
                    Ok(None) => file = Some((fingerprint, settings)),
                    Err(error) => tracing::error!("stream {name}: {error}"),
                }
            }
        }
        let mut sink = Sink {
            file,
            stream: name.to_string(),
            db: Arc::clone(&self.db),
            events: self.events.clone(),
            objects: HashMap::new(),
            webhooks: Arc::clone(&self.webhooks),
            wake: Arc::clone(&self.wake),
            mqtt: self.mqtt.clone(),
        };
        let handle = live::spawn(
            name,
            spec.clone(),
            self.config.motion,
            self.live.clone(),
            move |event| sink.take(event),
        );
        let old = self.lock_streams().insert(
            name.to_string(),
            Running {
                origin,
                spec,
                handle,
            },
        );
        if let Some(old) = old {
            old.handle.stop();
        }
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn db(&self) -> std::sync::MutexGuard<'_, VideoDb> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn streams(&self) -> Vec<StreamView> {
        self.lock_streams()
            .iter()
            .map(|(name, running)| view(name, running))
            .collect()
    }

    pub fn stream(&self, name: &str) -> Option<StreamView> {
        self.lock_streams()
            .get(name)
            .map(|running| view(name, running))
    }

    /// Adds or replaces a stream added through the API; true when it is new. It is stored
    /// before it starts, so it survives a restart.
    pub fn put_stream(
        self: &Arc<Self>,
        name: &str,
        spec: StreamSpec,
    ) -> Result<bool, ServiceError> {
        let existing = self.lock_streams().get(name).map(|r| r.origin);
        if existing == Some(Origin::Config) {
            return Err(ServiceError::Declared(name.to_string()));
        }
        let json = serde_json::to_value(&spec).expect("a spec serializes");
        {
            let mut db = self.db();
            db.put_stream(name, &json, domain::now_ms())?;
            // Put again: a file is analysed again.
            db.forget_file_stream(name)?;
        }
        let old = self.lock_streams().remove(name);
        if let Some(old) = old {
            // Its objects end (and are recorded) before the new one starts.
            old.handle.stop();
        }
        self.run(name, spec, Origin::Api);
        Ok(existing.is_none())
    }

    pub fn remove_stream(&self, name: &str) -> Result<(), ServiceError> {
        let origin = self.lock_streams().get(name).map(|r| r.origin);
        match origin {
            None => Err(ServiceError::NotFound(name.to_string())),
            Some(Origin::Config) => Err(ServiceError::Declared(name.to_string())),
            Some(Origin::Api) => {
                {
                    let mut db = self.db();
                    db.delete_stream(name)?;
                    db.forget_file_stream(name)?;
                }
                if let Some(old) = self.lock_streams().remove(name) {
                    old.handle.stop();
                }
                Ok(())
            }
        }
    }

    /// What the streams' detector is doing; `None` when the service has none (motion only).
    pub fn detector(&self) -> Option<crate::detect::client::DetectorState> {
        self.live
            .detector
            .as_ref()
            .map(|link| link.state.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Events as they are stored, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Ends every follower's event stream (the service is stopping; they reconnect to the
    /// next one with `Last-Event-ID`).
    pub fn close_followers(&self) {
        self.closing.send_replace(true);
    }

    /// Changes to true when followers must stop.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Restarts decoders that stopped sending frames.
    pub fn check_stalls(&self) {
        for running in self.lock_streams().values() {
            running.handle.check_stall();
        }
    }

    /// Removes the snapshot files no object names (left by a crash between writing one and
    /// recording it), checking a thousand at a time so that streams are not held up; returns
    /// how many were removed.
    pub fn remove_orphan_snapshots(&self) -> Result<usize, ServiceError> {
        let dir = self
            .db()
            .path()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let files = VideoDb::snapshot_files(&dir).map_err(|source| {
            ServiceError::Db(crate::db::DbError::Io {
                path: dir.join(crate::db::SNAPSHOT_DIR),
                source,
            })
        })?;
        let mut removed = 0;
        for chunk in files.chunks(1000) {
            // Checked and removed under one lock: no picture is recorded meanwhile.
            let db = self.db();
            for relative in db.unrecorded_snapshots(chunk)? {
                let path = db.snapshot_path(&relative);
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(error) => tracing::warn!("cannot remove {}: {error}", path.display()),
                }
            }
        }
        Ok(removed)
    }

    /// How motion is found (`[video.motion]`), for streams and archives alike.
    pub fn motion(&self) -> domain::MotionSpec {
        self.config.motion
    }

    /// Applies the retention limits once.
    pub fn sweep(&self) -> Result<SweepReport, ServiceError> {
        let retention = Retention {
            max_age_ms: Some(self.config.retention.max_age.as_millis() as i64),
            max_bytes: Some(self.config.retention.max_size.bytes()),
        };
        Ok(self.db().sweep(&retention, domain::now_ms())?)
    }

    /// Webhook deliveries by state, the latest failures and the MQTT connection.
    pub fn deliveries(&self) -> Result<DeliveriesView, ServiceError> {
        let db = self.db();
        Ok(DeliveriesView {
            webhooks: db.delivery_counts()?,
            failed: db.failed_deliveries(RECENT_FAILURES)?,
            mqtt: self.mqtt.as_ref().map(Publisher::status),
        })
    }

    /// Stops every stream, ending (and recording) their objects, then the senders: what is
    /// queued for MQTT is handed over (within a few seconds) before "offline"; webhook
    /// deliveries still pending wait in the outbox for the next start.
    pub fn shutdown(&self) {
        let streams = std::mem::take(&mut *self.lock_streams());
        for (_, running) in streams {
            running.handle.stop();
        }
        self.stopping.send_replace(true);
        if let Some(mqtt) = &self.mqtt {
            mqtt.wait_stopped();
        }
        for sender in std::mem::take(&mut *self.senders.lock().unwrap_or_else(|p| p.into_inner())) {
            sender.abort();
        }
    }
}

fn view(name: &str, running: &Running) -> StreamView {
    StreamView {
        name: name.to_string(),
        origin: running.origin,
        spec: running.spec.clone(),
        status: running.handle.status(),
    }
}

/// Turns one stream's [`LiveEvent`]s into stored objects and events.
struct Sink {
    stream: String,
    /// For a file stream: the file's fingerprint and the stream's settings, recorded when it
    /// ends.
    file: Option<(String, String)>,
    db: Arc<Mutex<VideoDb>>,
    events: broadcast::Sender<Event>,
    /// The stored object of each open track, and its class.
    objects: HashMap<u64, (i64, String)>,
    webhooks: Arc<Vec<WebhookSpec>>,
    wake: Arc<Notify>,
    mqtt: Option<Publisher>,
}

impl Sink {
    fn take(&mut self, event: LiveEvent) {
        if let Err(error) = self.store(event) {
            tracing::error!("stream {}: cannot store an event: {error}", self.stream);
        }
    }

    fn new_event(&self, time_ms: i64, kind: EventKind) -> NewEvent {
        NewEvent::new(time_ms, &self.stream, kind)
    }

    fn store(&mut self, event: LiveEvent) -> Result<(), DbError> {
        // The picture is encoded before the store is locked: other streams wait on the lock.
        let jpeg = match &event {
            LiveEvent::ObjectEnded {
                snapshot: Some(s), ..
            } => picture(s)
                .map_err(|error| tracing::warn!("stream {}: no snapshot: {error}", self.stream))
                .ok(),
            _ => None,
        };
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let new = match event {
            LiveEvent::Online {
                time_ms,
                width,
                height,
            } => NewEvent {
                details: serde_json::json!({"width": width, "height": height}),
                ..self.new_event(time_ms, EventKind::StreamOnline)
            },
            LiveEvent::Offline { time_ms, reason } => NewEvent {
                details: serde_json::json!({"reason": reason}),
                ..self.new_event(time_ms, EventKind::StreamOffline)
            },
            LiveEvent::Ended { time_ms, frames } => {
                if let Some((fingerprint, settings)) = &self.file {
                    db.set_file_stream_ended(&self.stream, fingerprint, settings, frames, time_ms)?;
                }
                return Ok(());
            }
            LiveEvent::ObjectStarted { time_ms, track } => {
                let id = db.start_object(&self.stream, &track.class, None, track.first_ms)?;
                self.objects.insert(track.id, (id, track.class.clone()));
                NewEvent {
                    object: Some(id),
                    class: Some(track.class.clone()),
                    score: Some(track.best_score),
                    details: serde_json::json!({"box": box_of(&track.bbox)}),
                    ..self.new_event(time_ms, EventKind::ObjectStarted)
                }
            }
            LiveEvent::ObjectEnded { time_ms, track, .. } => {
                let Some((id, _)) = self.objects.remove(&track.id) else {
                    return Ok(());
                };
                db.end_object(
                    id,
                    track.last_ms,
                    track.best_score,
                    box_of(&track.best_bbox),
                    jpeg.as_deref(),
                )?;
                NewEvent {
                    object: Some(id),
                    class: Some(track.class.clone()),
                    score: Some(track.best_score),
                    details: serde_json::json!({
                        "started_ms": track.first_ms,
                        "ended_ms": track.last_ms,
                    }),
                    ..self.new_event(time_ms, EventKind::ObjectEnded)
                }
            }
            LiveEvent::Rule(rule) => {
                let (time_ms, track, kind) = match &rule {
                    RuleEvent::ZoneEntered { time_ms, track, .. } => {
                        (*time_ms, *track, EventKind::ZoneEntered)
                    }
                    RuleEvent::ZoneLeft { time_ms, track, .. } => {
                        (*time_ms, *track, EventKind::ZoneLeft)
                    }
                    RuleEvent::Loitered { time_ms, track, .. } => {
                        (*time_ms, *track, EventKind::Loitered)
                    }
                    RuleEvent::LineCrossed { time_ms, track, .. } => {
                        (*time_ms, *track, EventKind::LineCrossed)
                    }
                };
                let object = self.objects.get(&track);
                let mut new = NewEvent {
                    object: object.map(|(id, _)| *id),
                    class: object.map(|(_, class)| class.clone()),
                    ..self.new_event(time_ms, kind)
                };
                match rule {
                    RuleEvent::ZoneEntered { zone, .. }
                    | RuleEvent::ZoneLeft { zone, .. }
                    | RuleEvent::Loitered { zone, .. } => new.zone = Some(zone),
                    RuleEvent::LineCrossed {
                        line, direction, ..
                    } => {
                        new.line = Some(line);
                        new.direction = Some(direction);
                    }
                }
                new
            }
        };
        let urls = webhook::targets(&self.webhooks, &self.stream, new.kind.as_str());
        let stored = db.insert_event_with_deliveries(&new, &urls, domain::now_ms())?;
        drop(db);
        if !urls.is_empty() {
            self.wake.notify_one();
        }
        if let Some(mqtt) = &self.mqtt {
            mqtt.event(&stored);
        }
        let _ = self.events.send(stored);
        Ok(())
    }
}

/// The JPEG of an object's best moment: its box with a margin around it.
pub(crate) fn picture(s: &crate::pipeline::Snapshot) -> Result<Vec<u8>, snapshot::SnapshotError> {
    let region = snapshot::crop_around(&s.bbox, snapshot::DEFAULT_MARGIN, s.width, s.height)?;
    if s.colour {
        // Only the region is converted to RGB.
        let rgb = crate::detect::client::yuv420_to_rgb(
            &s.pixels,
            s.width,
            s.height,
            crate::detect::client::Region {
                x: region.x,
                y: region.y,
                width: region.width,
                height: region.height,
            },
        );
        let frame = snapshot::Frame::rgb24(&rgb, region.width, region.height)?;
        return snapshot::encode(&frame, None, snapshot::DEFAULT_QUALITY);
    }
    let frame = snapshot::Frame::gray(&s.pixels, s.width, s.height)?;
    snapshot::encode(&frame, Some(region), snapshot::DEFAULT_QUALITY)
}

fn box_of(b: &crate::track::BoxF) -> [f32; 4] {
    [b.x0, b.y0, b.x1, b.y1]
}

#[cfg(test)]
mod tests {
    use super::picture;
    use crate::pipeline::Snapshot;
    use crate::track::BoxF;

    /// The component count of a JPEG's frame header (SOF0..SOF2): 1 gray, 3 colour.
    fn components(jpeg: &[u8]) -> u8 {
        let at = jpeg
            .windows(2)
            .position(|w| w[0] == 0xFF && (0xC0..=0xC2).contains(&w[1]))
            .expect("a frame header");
        jpeg[at + 9]
    }

    #[test]
    fn pictures_have_colour_when_the_frames_do() {
        let (w, h) = (64usize, 48usize);
        let bbox = BoxF::new(16.0, 12.0, 48.0, 36.0);
        let gray = Snapshot {
            width: w,
            height: h,
            pixels: vec![128; w * h],
            colour: false,
            bbox,
            time_ms: 0,
        };
        assert_eq!(components(&picture(&gray).unwrap()), 1);
        // Pure red in BT.601 limited range: Y 81, U 90, V 240.
        let mut yuv = vec![81u8; w * h];
        yuv.extend(std::iter::repeat_n(90u8, (w / 2) * (h / 2)));
        yuv.extend(std::iter::repeat_n(240u8, (w / 2) * (h / 2)));
        let red = Snapshot {
            pixels: yuv,
            colour: true,
            ..gray
        };
        let jpeg = picture(&red).unwrap();
        assert_eq!(components(&jpeg), 3);
        assert!(jpeg.starts_with(&[0xFF, 0xD8]) && jpeg.ends_with(&[0xFF, 0xD9]));
    }
}
