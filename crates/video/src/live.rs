//! One stream followed live: an `ffmpeg` child decoding it, restarted with backoff when it
//! exits or stalls, its frames through the pipeline ([`crate::pipeline`]), and what happens
//! handed to a sink as [`LiveEvent`]s (docs/plans/video.md §2).
//!
//! A live source (a URL) never ends: any exit of its decoder, whatever its status (ffmpeg
//! exits 0 when an RTSP server goes away), makes the stream offline, and the next frame makes
//! it online again. A file ends once; a file that cannot be decoded fails, and is not retried.
//! Each stream has its own thread, so a stream that misbehaves disturbs no other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use domain::{MotionSpec, StreamSpec};

use crate::decode::{DecodeOptions, Decoder, DecoderKiller};
use crate::detect::client::{DetectorClient, DetectorClientOptions, DetectorState};
use crate::pipeline::{Pipeline, PipelineOptions, Snapshot, Step};
use crate::rules::RuleEvent;
use crate::track::Track;

/// How streams are decoded and restarted.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The `ffmpeg` program.
    pub ffmpeg: std::path::PathBuf,
    /// A decoder that sends no frame this long is killed and the stream restarted.
    pub stall_timeout: Duration,
    /// The first wait before a restart, doubled after each failure in a row.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// A connection that delivered frames this long resets the backoff.
    pub healthy_after: Duration,
    /// The service was given a GPU: streams with `hwaccel = "auto"` decode on it (NVDEC),
    /// falling back to software when it cannot start.
    pub gpu: bool,
    /// Where objects are detected; motion only without.
    pub detector: Option<DetectorLink>,
}

/// The detector service the streams ask, and the state they share about it.
#[derive(Debug, Clone)]
pub struct DetectorLink {
    pub options: DetectorClientOptions,
    /// The service's runtime, which runs the requests of the streams' threads.
    pub runtime: tokio::runtime::Handle,
    pub state: Arc<Mutex<DetectorState>>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            ffmpeg: "ffmpeg".into(),
            stall_timeout: Duration::from_secs(20),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            gpu: false,
            detector: None,
        }
    }
}

/// What a stream is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Its decoder is starting; no frame yet.
    Starting,
    /// Frames are arriving.
    Online,
    /// Its source failed or went away; it is retried with backoff.
    Offline,
    /// A file was analysed to its end.
    Ended,
    /// A file could not be decoded; it is not retried.
    Failed,
    /// It was stopped (removed, or the service is stopping).
    Stopped,
}

/// A stream's state as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub state: StreamState,
    /// Since when (ms since the epoch) it has been in that state.
    pub since_ms: i64,
    /// Frames analysed since the service started.
    pub frames: u64,
    /// The analysed frames' size (0 before the first frame).
    pub width: usize,
    pub height: usize,
    /// Frames analysed per second over the last few seconds.
    pub fps: f32,
    pub last_frame_ms: Option<i64>,
    /// Why it last went offline or failed.
    pub error: Option<String>,
    /// Something to know that is not a failure: decoding fell back to software, a file was
    /// already analysed.
    pub note: Option<String>,
    /// Decoders started after the first.
    pub restarts: u32,
    /// Objects being followed now.
    pub objects: usize,
}

impl StreamStatus {
    fn new() -> StreamStatus {
        StreamStatus {
            state: StreamState::Starting,
            since_ms: domain::now_ms(),
            frames: 0,
            width: 0,
            height: 0,
            fps: 0.0,
            last_frame_ms: None,
            error: None,
            note: None,
            restarts: 0,
            objects: 0,
        }
    }

    fn enter(&mut self, state: StreamState) {
        if self.state != state {
            self.state = state;
            self.since_ms = domain::now_ms();
        }
    }
}

/// What a stream reports, in order.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// The first frame after a start or a restart.
    Online {
        time_ms: i64,
        width: usize,
        height: usize,
    },
    /// Its source failed or went away.
    Offline { time_ms: i64, reason: String },
    /// A file's end.
    Ended { time_ms: i64, frames: u64 },
    /// An object is being followed (a confirmed track).
    ObjectStarted { time_ms: i64, track: Track },
    /// An object is gone, with the picture of its best moment.
    ObjectEnded {
        time_ms: i64,
        track: Track,
        snapshot: Option<Snapshot>,
    },
    /// A zone, loitering or line event.
    Rule(RuleEvent),
}

/// Wakes a waiting stream thread when it is told to stop.
#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl StopSignal {
    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits `duration` or until stopped; true when stopped.
    fn wait(&self, duration: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, duration, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

/// State the stream's thread shares with its handle and the watchdog.
struct Shared {
    status: Mutex<StreamStatus>,
    stop: StopSignal,
    /// The running decoder, for the watchdog and `stop` to kill.
    decoder: Mutex<Option<DecoderKiller>>,
    /// When the running decoder last made progress (started or sent a frame).
    progress: Mutex<Instant>,
    /// Set by the watchdog when it killed a stalled decoder.
    stalled: AtomicBool,
}

/// A running stream; [`StreamHandle::stop`] ends it.
pub struct StreamHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    stall_timeout: Duration,
}

impl StreamHandle {
    pub fn status(&self) -> StreamStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Kills the decoder when it sent nothing for the stall timeout; the stream's thread
    /// then restarts it. Called every second or so by the service's watchdog.
    pub fn check_stall(&self) {
        let idle = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if idle < self.stall_timeout {
            return;
        }
        if let Some(killer) = self
            .shared
            .decoder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            self.shared.stalled.store(true, Ordering::SeqCst);
            killer.kill();
        }
    }

    /// Stops the stream: kills its decoder, ends its objects (reported to the sink) and waits
    /// for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.stop();
        if let Some(killer) = self
            .shared
            .decoder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            killer.kill();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A file stream that is not started because it was analysed to its end before: `Ended`,
/// with `note` saying when.
pub fn already_ended(frames: u64, note: String) -> StreamHandle {
    let mut status = StreamStatus::new();
    status.enter(StreamState::Ended);
    status.frames = frames;
    status.note = Some(note);
    StreamHandle {
        shared: Arc::new(Shared {
            status: Mutex::new(status),
            stop: StopSignal::default(),
            decoder: Mutex::new(None),
            progress: Mutex::new(Instant::now()),
            stalled: AtomicBool::new(false),
        }),
        thread: None,
        stall_timeout: Duration::MAX,
    }
}

/// Starts following `spec` on a thread of its own; events go to `sink` on that thread.
pub fn spawn(
    name: &str,
    spec: StreamSpec,
    motion: MotionSpec,
    options: LiveOptions,
    sink: impl FnMut(LiveEvent) + Send + 'static,
) -> StreamHandle {
    let shared = Arc::new(Shared {
        status: Mutex::new(StreamStatus::new()),
        stop: StopSignal::default(),
        decoder: Mutex::new(None),
        progress: Mutex::new(Instant::now()),
        stalled: AtomicBool::new(false),
    });
    let stall_timeout = options.stall_timeout;
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("video-{name}"))
            .spawn(move || run(&spec, motion, &options, &shared, sink))
            .expect("a thread starts")
    };
    StreamHandle {
        shared,
        thread: Some(thread),
        stall_timeout,
    }
}

/// The analysed frames per second, from the times of the last frames.
struct RateMeter {
    times: std::collections::VecDeque<Instant>,
}

impl RateMeter {
    fn tick(&mut self, now: Instant) -> f32 {
        self.times.push_back(now);
        while self.times.len() > 2
            && now.duration_since(*self.times.front().expect("not empty")) > Duration::from_secs(5)
        {
            self.times.pop_front();
        }
        let span = now
            .duration_since(*self.times.front().expect("not empty"))
            .as_secs_f32();
        if self.times.len() < 2 || span <= 0.0 {
            0.0
        } else {
            (self.times.len() - 1) as f32 / span
        }
    }
}

fn decode_options(spec: &StreamSpec, options: &LiveOptions) -> DecodeOptions {
    let mut decode = DecodeOptions::new(spec.url.clone());
    decode.fps = spec.fps;
    decode.width = spec.width;
    decode.program = options.ffmpeg.clone();
    decode.live = spec.is_live();
    decode.colour = options.detector.is_some();
    decode.hwaccel = match spec.hwaccel {
        domain::HwAccel::Cuda => true,
        domain::HwAccel::Auto => options.gpu,
        domain::HwAccel::None => false,
    };
    decode.rtsp_transport = match spec.rtsp_transport {
        domain::RtspTransport::Tcp => crate::decode::RtspTransport::Tcp,
        domain::RtspTransport::Udp => crate::decode::RtspTransport::Udp,
    };
    decode
}

fn run(
    spec: &StreamSpec,
    motion: MotionSpec,
    options: &LiveOptions,
    shared: &Shared,
    mut sink: impl FnMut(LiveEvent),
) {
    let status = |f: &mut dyn FnMut(&mut StreamStatus)| {
        f(&mut shared.status.lock().unwrap_or_else(|p| p.into_inner()));
    };
    let mut decode = decode_options(spec, options);
    let pipeline_options = match PipelineOptions::from_spec(spec, motion) {
        Ok(options) => options,
        Err(error) => {
            let mut s = shared.status.lock().unwrap_or_else(|p| p.into_inner());
            s.enter(StreamState::Failed);
            s.error = Some(format!("mask: {error}"));
            return;
        }
    };
    let mut backoff = options.backoff_first;
    // Whether the last thing said about the source is that it is online; an offline event is
    // sent once per outage, not at every failed retry.
    let mut online = false;
    let mut reported_offline = false;
    let mut attempts = 0u32;
    let mut meter = RateMeter {
        times: Default::default(),
    };
    let mut frame = Vec::new();
    while !shared.stop.is_stopped() {
        if attempts > 0 {
            status(&mut |s| s.restarts += 1);
        }
        attempts += 1;
        shared.stalled.store(false, Ordering::SeqCst);
        *shared.progress.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let mut reason: Option<String> = None;
        let mut reached_end = false;
        let mut got_frame = false;
        match Decoder::start(&decode) {
            Err(error) => reason = Some(error.to_string()),
            Ok(mut decoder) => {
                *shared.decoder.lock().unwrap_or_else(|p| p.into_inner()) = Some(decoder.killer());
                let connected = Instant::now();
                let connected_ms = domain::now_ms();
                let mut index = 0u64;
                let mut pipeline: Option<Pipeline> = None;
                loop {
                    match decoder.next_frame(&mut frame) {
                        Ok(true) => {}
                        Ok(false) => {
                            reached_end = true;
                            break;
                        }
                        Err(error) => {
                            reason = Some(error.to_string());
                            break;
                        }
                    }
                    got_frame = true;
                    let now = Instant::now();
                    *shared.progress.lock().unwrap_or_else(|p| p.into_inner()) = now;
                    // A live frame is stamped when it arrives; a file's frames by where they
                    // are in the file (it decodes faster than real time).
                    let time_ms = if spec.is_live() {
                        domain::now_ms()
                    } else {
                        connected_ms + (index as f64 * 1000.0 / f64::from(spec.fps)).round() as i64
                    };
                    index += 1;
                    let header = *decoder.header().expect("a frame was read");
                    let (w, h) = (header.width, header.height);
                    let pipeline = match &mut pipeline {
                        Some(p) if p.size() == (w, h) => p,
                        slot => {
                            // A new connection, or the source changed its size: objects
                            // followed so far end.
                            if let Some(old) = slot.take() {
                                end_objects(old, time_ms, &mut sink);
                            }
                            match Pipeline::new(w, h, &pipeline_options) {
                                Ok(p) => slot.insert(match &options.detector {
                                    Some(link) => p.with_detector(Box::new(DetectorClient::new(
                                        link.options.clone(),
                                        link.runtime.clone(),
                                        spec.objects.clone(),
                                        spec.min_score,
                                        Arc::clone(&link.state),
                                    ))),
                                    None => p,
                                }),
                                Err(error) => {
                                    reason = Some(error.to_string());
                                    break;
                                }
                            }
                        }
                    };
                    if !online {
                        online = true;
                        reported_offline = false;
                        sink(LiveEvent::Online {
                            time_ms,
                            width: w,
                            height: h,
                        });
                        status(&mut |s| {
                            s.enter(StreamState::Online);
                            s.width = w;
                            s.height = h;
                        });
                    }
                    let step = match pipeline.push(time_ms, &frame) {
                        Ok(step) => step,
                        Err(error) => {
                            reason = Some(error.to_string());
                            break;
                        }
                    };
                    emit(step, time_ms, &mut sink);
                    let fps = meter.tick(now);
                    let objects = pipeline.open_objects();
                    status(&mut |s| {
                        s.frames += 1;
                        s.fps = fps;
                        s.last_frame_ms = Some(time_ms);
                        s.objects = objects;
                    });
                    if connected.elapsed() >= options.healthy_after {
                        backoff = options.backoff_first;
                    }
                    if shared.stop.is_stopped() {
                        break;
                    }
                }
                *shared.decoder.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if let Some(pipeline) = pipeline {
                    end_objects(pipeline, domain::now_ms(), &mut sink);
                }
                status(&mut |s| s.objects = 0);
            }
        }
        if shared.stop.is_stopped() {
            break;
        }
        if decode.hwaccel && !got_frame && spec.hwaccel == domain::HwAccel::Auto {
            // NVDEC could not start here (no driver, a codec it lacks): software from now on,
            // at once, and the status says why.
            decode.hwaccel = false;
            let why = reason.unwrap_or_default();
            status(&mut |s| s.note = Some(format!("NVDEC failed, decoding in software: {why}")));
            continue;
        }
        let now_ms = domain::now_ms();
        if !spec.is_live() {
            // A file: its end is the end; a file that cannot be read will not get better.
            if reached_end {
                let frames = shared
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .frames;
                sink(LiveEvent::Ended {
                    time_ms: now_ms,
                    frames,
                });
                status(&mut |s| s.enter(StreamState::Ended));
            } else {
                let reason = reason.unwrap_or_else(|| "the decoder stopped".to_string());
                status(&mut |s| {
                    s.enter(StreamState::Failed);
                    s.error = Some(reason.clone());
                });
            }
            return;
        }
        let reason = if shared.stalled.load(Ordering::SeqCst) {
            format!(
                "no frame for {} s; the decoder was restarted",
                options.stall_timeout.as_secs()
            )
        } else {
            reason.unwrap_or_else(|| "the source ended the stream".to_string())
        };
        if online || !reported_offline {
            online = false;
            reported_offline = true;
            sink(LiveEvent::Offline {
                time_ms: now_ms,
                reason: reason.clone(),
            });
        }
        status(&mut |s| {
            s.enter(StreamState::Offline);
            s.error = Some(reason.clone());
            s.fps = 0.0;
        });
        meter.times.clear();
        if shared.stop.wait(backoff) {
            break;
        }
        backoff = (backoff * 2).min(options.backoff_max);
    }
    status(&mut |s| s.enter(StreamState::Stopped));
}

fn end_objects(mut pipeline: Pipeline, time_ms: i64, sink: &mut impl FnMut(LiveEvent)) {
    emit(pipeline.finish(time_ms), time_ms, sink);
}

fn emit(step: Step, time_ms: i64, sink: &mut impl FnMut(LiveEvent)) {
    for track in step.started {
        sink(LiveEvent::ObjectStarted { time_ms, track });
    }
    for event in step.rules {
        sink(LiveEvent::Rule(event));
    }
    for (track, snapshot) in step.ended {
        sink(LiveEvent::ObjectEnded {
            time_ms,
            track,
            snapshot,
        });
    }
}
