//! The detector service's HTTP API (`flowers engine detect`, docs/plans/video.md §4): many
//! clients share one [`Detector`] through one queue, which batches images across requests (up to
//! the detector's `max_batch` when its batch dimension is dynamic) and serves requests marked
//! `x-flowers-priority: background` (archives) only while no live one (camera frames) waits.
//! Errors are the project's `{code, message}` ([`ApiError`]): 4xx when the request was wrong,
//! 5xx when the detector failed.
//!
//! - `POST /v1/detect`: raw RGB24 images, with no JPEG to encode or decode. The body is one
//!   line of JSON giving the images' sizes, a newline, then each image's bytes in that order
//!   (rows top to bottom, 3 bytes a pixel, nothing between rows or images):
//!   `[{"width":1280,"height":720},{"width":640,"height":480}]\n<2764800 bytes><921600 bytes>`.
//!   The answer: `{"model", "version", "names", "results": [[{"class", "label", "score",
//!   "box": [x0, y0, x1, y1]}, …], …]}`, one list per image in the request's order, boxes in
//!   that image's pixels, most confident first.
//! - `GET /healthz`: `ok` while the detector's thread runs, else 503.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use api_types::ApiError;

use super::{Detected, Detector, RgbImage};

/// The request header that marks a request as one that may wait: `background` (an archive's
/// frames) or `live` (the default).
pub const PRIORITY_HEADER: &str = "x-flowers-priority";

/// The longest size header line read before its newline.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What the service says of itself and the sizes it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectService {
    /// The Model served, as answers name it (e.g. `detector`).
    pub model: String,
    /// The served version of it.
    pub version: String,
    /// Requests with more images are refused with 400 (default 32).
    pub max_images: usize,
    /// Larger bodies are refused with 413 (default 128 MiB: twenty 1080p frames).
    pub max_body_bytes: usize,
}

impl DetectService {
    pub fn new(model: impl Into<String>, version: impl Into<String>) -> DetectService {
        DetectService {
            model: model.into(),
            version: version.into(),
            max_images: 32,
            max_body_bytes: 128 * 1024 * 1024,
        }
    }
}

/// `POST /v1/detect` and `GET /healthz` over `detector`, which moves to a thread of its own
/// for the router's life: the thread ends once the router and its clones are dropped and the
/// requests already queued are answered.
pub fn router(detector: Detector, service: DetectService) -> Router {
    router_with_queue(detector, service, false).0
}

/// The router and its queue; a queue made `paused` holds its requests until
/// [`Queue::resume`], so that tests can line requests up.
fn router_with_queue(
    detector: Detector,
    service: DetectService,
    paused: bool,
) -> (Router, Arc<Queue>) {
    let queue = Arc::new(Queue::new(paused));
    let names = detector.names().to_vec();
    let worker = {
        let queue = queue.clone();
        move || {
            // However the thread ends, a panic included, no request is left waiting for it.
            let _ended = WorkerEnded(queue.clone());
            serve_queue(detector, &queue);
        }
    };
    std::thread::Builder::new()
        .name("detector".into())
        .spawn(worker)
        .expect("the OS starts a thread");
    let served = Served {
        names: Arc::new(names),
        service: Arc::new(service.clone()),
        queue: Arc::new(CloseOnDrop(queue.clone())),
    };
    let router = Router::new()
        .route("/v1/detect", post(detect))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(service.max_body_bytes))
        .with_state(served);
    (router, queue)
}

#[derive(Clone)]
struct Served {
    service: Arc<DetectService>,
    names: Arc<Vec<String>>,
    queue: Arc<CloseOnDrop>,
}

/// Tells the queue that the detector's thread has ended.
struct WorkerEnded(Arc<Queue>);

impl Drop for WorkerEnded {
    fn drop(&mut self) {
        self.0.worker_ended();
    }
}

/// Closes the queue when the last clone of the router goes.
struct CloseOnDrop(Arc<Queue>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    Live,
    Background,
}

/// One request's images, waiting or partly looked at.
struct Job {
    priority: Priority,
    body: Bytes,
    /// Each image's width, height and first byte in `body`.
    images: Vec<(usize, usize, usize)>,
    /// Images before this one are done.
    next: usize,
    found: Vec<Vec<Detected>>,
    reply: oneshot::Sender<Result<Vec<Vec<Detected>>, String>>,
}

impl Job {
    fn image(&self, index: usize) -> RgbImage<'_> {
        let (width, height, start) = self.images[index];
        RgbImage {
            width,
            height,
            data: &self.body[start..start + width * height * 3],
        }
    }
}

struct Waiting {
    live: VecDeque<Job>,
    background: VecDeque<Job>,
    paused: bool,
    closed: bool,
    /// The detector's thread has ended: nothing will serve a request again.
    ended: bool,
    /// Each run's images as (priority, count) per job, for the tests.
    #[cfg(test)]
    runs: Vec<Vec<(Priority, usize)>>,
}

/// The requests waiting for the detector, live ones apart from background ones.
struct Queue {
    waiting: Mutex<Waiting>,
    changed: Condvar,
}

impl Queue {
    fn new(paused: bool) -> Queue {
        Queue {
            waiting: Mutex::new(Waiting {
                live: VecDeque::new(),
                background: VecDeque::new(),
                paused,
                closed: false,
                ended: false,
                #[cfg(test)]
                runs: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // A panic elsewhere while holding it left no half-made change: the deques are whole.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job`, unless nothing will ever serve it.
    fn push(&self, job: Job) -> Result<(), Job> {
        let mut waiting = self.lock();
        if waiting.ended {
            return Err(job);
        }
        match job.priority {
            Priority::Live => waiting.live.push_back(job),
            Priority::Background => waiting.background.push_back(job),
        }
        self.changed.notify_all();
        Ok(())
    }

    /// Puts a partly done job back first in its line.
    fn push_front(&self, job: Job) {
        let mut waiting = self.lock();
        match job.priority {
            Priority::Live => waiting.live.push_front(job),
            Priority::Background => waiting.background.push_front(job),
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Drops every waiting job, whose clients then hear that the detector stopped, and refuses
    /// new ones.
    fn worker_ended(&self) {
        let mut waiting = self.lock();
        waiting.ended = true;
        waiting.closed = true;
        waiting.live.clear();
        waiting.background.clear();
    }

    fn ended(&self) -> bool {
        self.lock().ended
    }

    #[cfg(test)]
    fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    #[cfg(test)]
    fn waiting_jobs(&self) -> usize {
        let waiting = self.lock();
        waiting.live.len() + waiting.background.len()
    }

    /// The next run's jobs, each with how many of its images go in it: live jobs first, in
    /// order, up to `max_batch` images (the last job possibly in part); background ones only
    /// when no live one waits. Jobs whose client left are dropped unseen. `None` once closed
    /// and empty.
    fn next_run(&self, max_batch: usize) -> Option<Vec<(Job, usize)>> {
        let mut waiting = self.lock();
        loop {
            let empty = waiting.live.is_empty() && waiting.background.is_empty();
            if empty && waiting.closed {
                return None;
            }
            if empty || waiting.paused {
                waiting = self
                    .changed
                    .wait(waiting)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let line = if waiting.live.is_empty() {
                &mut waiting.background
            } else {
                &mut waiting.live
            };
            let mut run = Vec::new();
            let mut room = max_batch;
            while room > 0 {
                let Some(job) = line.pop_front() else { break };
                if job.reply.is_closed() {
                    continue;
                }
                let count = (job.images.len() - job.next).min(room);
                room -= count;
                run.push((job, count));
            }
            if run.is_empty() {
                continue;
            }
            #[cfg(test)]
            waiting.runs.push(
                run.iter()
                    .map(|(job, count)| (job.priority, *count))
                    .collect(),
            );
            return Some(run);
        }
    }
}

/// The detector's thread: runs what the queue hands it until the queue closes.
fn serve_queue(mut detector: Detector, queue: &Queue) {
    let max_batch = detector.max_batch();
    while let Some(run) = queue.next_run(max_batch) {
        let images: Vec<RgbImage> = run
            .iter()
            .flat_map(|(job, count)| (job.next..job.next + count).map(|index| job.image(index)))
            .collect();
        let outcome = detector.detect(&images);
        drop(images);
        match outcome {
            Ok(found) => {
                let mut found = found.into_iter();
                for (mut job, count) in run {
                    job.found.extend(found.by_ref().take(count));
                    job.next += count;
                    if job.next < job.images.len() {
                        queue.push_front(job);
                    } else {
                        // The client may have gone; nothing to do then.
                        let _ = job.reply.send(Ok(job.found));
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "the detector failed");
                for (job, _) in run {
                    let _ = job.reply.send(Err(error.to_string()));
                }
            }
        }
    }
}

struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn bad_request(message: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    /// The detector's thread has ended (its log says why): the service must be restarted.
    fn stopped() -> Failure {
        Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: "the detector has stopped; its log says why, and the service needs a restart"
                .into(),
        }
    }

    /// Our fault: the detail goes to the log, not to the client.
    fn internal(detail: impl std::fmt::Display) -> Failure {
        tracing::error!(%detail, "detector internal error");
        Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error in the detector; its log has the details".into(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiError {
                code: self.code.to_string(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageSize {
    width: usize,
    height: usize,
}

#[derive(Serialize)]
struct DetectAnswer<'a> {
    model: &'a str,
    version: &'a str,
    names: &'a [String],
    results: Vec<Vec<Found>>,
}

#[derive(Serialize)]
struct Found {
    class: usize,
    label: String,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

/// The images' sizes and where each starts in `body`, or why the body is not a request.
fn parse_body(body: &[u8], max_images: usize) -> Result<Vec<(usize, usize, usize)>, String> {
    let expected = r#"one line of JSON, [{"width": W, "height": H}, …], a newline, then each image's RGB24 bytes"#;
    let newline = body
        .iter()
        .take(MAX_HEADER_BYTES)
        .position(|&byte| byte == b'\n')
        .ok_or_else(|| {
            format!("no newline in the first {MAX_HEADER_BYTES} bytes; the body is {expected}")
        })?;
    let sizes: Vec<ImageSize> = serde_json::from_slice(&body[..newline]).map_err(|error| {
        format!("the header line is not valid ({error}); the body is {expected}")
    })?;
    if sizes.is_empty() {
        return Err("the header line lists no images".into());
    }
    if sizes.len() > max_images {
        return Err(format!(
            "{} images in one request; this detector takes at most {max_images}",
            sizes.len()
        ));
    }
    let mut images = Vec::with_capacity(sizes.len());
    let mut start = newline + 1;
    for (index, size) in sizes.iter().enumerate() {
        if size.width == 0 || size.height == 0 {
            return Err(format!(
                "image {index}: size {}×{} is empty",
                size.width, size.height
            ));
        }
        let bytes = size
            .width
            .checked_mul(size.height)
            .and_then(|pixels| pixels.checked_mul(3))
            .filter(|&bytes| bytes <= body.len())
            .ok_or_else(|| {
                format!(
                    "image {index}: {}×{} is larger than the whole body",
                    size.width, size.height
                )
            })?;
        images.push((size.width, size.height, start));
        start += bytes;
    }
    let given = body.len() - (newline + 1);
    let wanted = start - (newline + 1);
    if given != wanted {
        return Err(format!(
            "the header's {} images of RGB24 are {wanted} bytes, but {given} follow the header line",
            images.len()
        ));
    }
    Ok(images)
}

fn priority(headers: &HeaderMap) -> Result<Priority, Failure> {
    match headers.get(PRIORITY_HEADER).map(|value| value.to_str()) {
        None => Ok(Priority::Live),
        Some(Ok("live")) => Ok(Priority::Live),
        Some(Ok("background")) => Ok(Priority::Background),
        Some(value) => Err(Failure::bad_request(format!(
            "{PRIORITY_HEADER} {:?} is not live or background",
            value.unwrap_or("(not text)")
        ))),
    }
}

async fn detect(
    State(served): State<Served>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let DetectService {
        max_images,
        max_body_bytes,
        ..
    } = *served.service;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "too_large",
                message: format!(
                    "request body is over {max_body_bytes} bytes; send fewer or smaller images per request"
                ),
            }
        } else {
            Failure::bad_request(format!("cannot read the request body: {rejection}"))
        }
    })?;
    let priority = priority(&headers)?;
    let images = parse_body(&body, max_images).map_err(Failure::bad_request)?;
    let (reply, answer) = oneshot::channel();
    let count = images.len();
    let job = Job {
        priority,
        body,
        images,
        next: 0,
        found: Vec::with_capacity(count),
        reply,
    };
    if served.queue.0.push(job).is_err() {
        return Err(Failure::stopped());
    }
    let found = answer
        .await
        .map_err(|_| Failure::stopped())?
        .map_err(Failure::internal)?;
    let results = found
        .into_iter()
        .map(|detections| {
            detections
                .into_iter()
                .map(|detected| Found {
                    class: detected.class,
                    label: detected.label,
                    score: detected.score,
                    bbox: [
                        detected.bbox.x0,
                        detected.bbox.y0,
                        detected.bbox.x1,
                        detected.bbox.y1,
                    ],
                })
                .collect()
        })
        .collect();
    Ok(Json(DetectAnswer {
        model: &served.service.model,
        version: &served.service.version,
        names: &served.names,
        results,
    })
    .into_response())
}

async fn healthz(State(served): State<Served>) -> Response {
    if served.queue.0.ended() {
        Failure::stopped().into_response()
    } else {
        "ok\n".into_response()
    }
}

#[cfg(test)]
mod tests;
