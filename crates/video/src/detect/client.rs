//! The video service's side of detection (docs/plans/video.md §4): where a frame moved, a
//! square around the motion (at least the model's input size, or the whole frame once that
//! covers half of it) is converted to RGB and sent to the detector service
//! (`POST /v1/detect`, through the gateway); the boxes it answers come back in frame pixels.
//! A detector that cannot answer (no model yet, not declared, down) is asked again after a
//! pause, and the stream meanwhile tracks motion, so frames never wait on it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::track::{BoxF, Detection};

/// A rectangle of the frame, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// The region to look at for `boxes` (motion, or objects to see again) on a `width × height`
/// frame: the square around their union, at least `side` pixels (the model's input), moved
/// inside the frame; the whole frame when the square covers half of it or more. Even
/// coordinates and sizes, so that the half-size chroma planes line up.
pub fn region_for(boxes: &[BoxF], width: usize, height: usize, side: usize) -> Option<Region> {
    let first = boxes.first()?;
    let (mut x0, mut y0, mut x1, mut y1) = (first.x0, first.y0, first.x1, first.y1);
    for b in &boxes[1..] {
        x0 = x0.min(b.x0);
        y0 = y0.min(b.y0);
        x1 = x1.max(b.x1);
        y1 = y1.max(b.y1);
    }
    let whole = Region {
        x: 0,
        y: 0,
        width,
        height,
    };
    let wanted = ((x1 - x0).max(y1 - y0).ceil() as usize).max(side);
    let square = wanted.min(width).min(height);
    if 2 * square * square >= width * height || square == 0 {
        return Some(whole);
    }
    let place = |centre: f32, limit: usize| -> usize {
        let start = (centre - square as f32 / 2.0).round().max(0.0) as usize;
        start.min(limit - square) & !1
    };
    Some(Region {
        x: place((x0 + x1) / 2.0, width),
        y: place((y0 + y1) / 2.0, height),
        width: square & !1,
        height: square & !1,
    })
}

/// `region` of a YUV 4:2:0 frame (the luma plane, then U and V at half size each way, as
/// ffmpeg's `yuv420p`) as RGB24, with BT.601's limited-range coefficients (ffmpeg's default
/// for this pixel format without other information).
pub fn yuv420_to_rgb(frame: &[u8], width: usize, height: usize, region: Region) -> Vec<u8> {
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let (u_plane, v_plane) = (width * height, width * height + cw * ch);
    let mut rgb = Vec::with_capacity(region.width * region.height * 3);
    for y in region.y..region.y + region.height {
        for x in region.x..region.x + region.width {
            let luma = f32::from(frame[y * width + x]) - 16.0;
            let c = (y / 2) * cw + x / 2;
            let u = f32::from(frame[u_plane + c]) - 128.0;
            let v = f32::from(frame[v_plane + c]) - 128.0;
            let l = 1.164 * luma;
            let clamp = |value: f32| value.round().clamp(0.0, 255.0) as u8;
            rgb.push(clamp(l + 1.596 * v));
            rgb.push(clamp(l - 0.392 * u - 0.813 * v));
            rgb.push(clamp(l + 2.017 * u));
        }
    }
    rgb
}

/// What the streams' detector is doing, for the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DetectorState {
    /// Not asked yet.
    Unknown,
    /// It answered: objects are detected.
    Ready { model: String, version: String },
    /// It could not answer; motion is tracked until it is asked again.
    Unavailable { reason: String },
}

/// Objects in one frame.
pub trait Detect: Send {
    /// The objects on a YUV 4:2:0 frame where `boxes` are; `None` when no answer can be had
    /// now (the caller tracks motion instead).
    fn detect(
        &mut self,
        frame: &[u8],
        width: usize,
        height: usize,
        boxes: &[BoxF],
    ) -> Option<Vec<Detection>>;
}

#[derive(Debug, Clone)]
pub struct DetectorClientOptions {
    /// The detector's `/v1/detect` URL.
    pub url: String,
    /// The model's input side; regions are at least this big.
    pub input_side: usize,
    /// How long a request may take.
    pub timeout: Duration,
    /// After a failure, how long until the detector is asked again.
    pub retry_after: Duration,
    /// `live` for cameras, `background` for archives (the detector serves live first).
    pub priority: &'static str,
}

impl DetectorClientOptions {
    pub fn new(url: impl Into<String>) -> DetectorClientOptions {
        DetectorClientOptions {
            url: url.into(),
            input_side: 640,
            timeout: Duration::from_secs(2),
            retry_after: Duration::from_secs(30),
            priority: "live",
        }
    }
}

/// The detector service over HTTP, from a stream's thread (requests run on the service's
/// tokio runtime).
pub struct DetectorClient {
    options: DetectorClientOptions,
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    /// Classes kept (all when empty) and the least score kept.
    objects: Vec<String>,
    min_score: f32,
    down_until: Option<Instant>,
    state: Arc<Mutex<DetectorState>>,
}

#[derive(Deserialize)]
struct Answer {
    model: String,
    version: String,
    results: Vec<Vec<Found>>,
}

#[derive(Deserialize)]
struct Found {
    label: String,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

impl DetectorClient {
    /// A client whose state (shared by the streams) is `state`.
    pub fn new(
        options: DetectorClientOptions,
        runtime: tokio::runtime::Handle,
        objects: Vec<String>,
        min_score: f32,
        state: Arc<Mutex<DetectorState>>,
    ) -> DetectorClient {
        DetectorClient {
            options,
            http: reqwest::Client::new(),
            runtime,
            objects,
            min_score,
            down_until: None,
            state,
        }
    }

    fn set_state(&self, state: DetectorState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    fn ask(&self, rgb: Vec<u8>, region: Region) -> Result<Answer, String> {
        let mut body = serde_json::to_vec(&[serde_json::json!({
            "width": region.width, "height": region.height
        })])
        .expect("sizes serialize");
        body.push(b'\n');
        body.extend_from_slice(&rgb);
        let request = self
            .http
            .post(&self.options.url)
            .header(crate::detect::http::PRIORITY_HEADER, self.options.priority)
            .header("content-type", "application/octet-stream")
            .timeout(self.options.timeout)
            .body(body);
        self.runtime.block_on(async {
            let response = request
                .send()
                .await
                .map_err(|error| format!("cannot reach {}: {error}", self.options.url))?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(format!(
                    "{} answered {status}: {}",
                    self.options.url,
                    text.trim()
                ));
            }
            response
                .json::<Answer>()
                .await
                .map_err(|error| format!("{} answered something else: {error}", self.options.url))
        })
    }
}

impl Detect for DetectorClient {
    fn detect(
        &mut self,
        frame: &[u8],
        width: usize,
        height: usize,
        boxes: &[BoxF],
    ) -> Option<Vec<Detection>> {
        if self.down_until.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let region = region_for(boxes, width, height, self.options.input_side)?;
        let expected = width * height + 2 * width.div_ceil(2) * height.div_ceil(2);
        if frame.len() < expected {
            // Luma only: nothing to show a detector.
            return None;
        }
        let rgb = yuv420_to_rgb(frame, width, height, region);
        match self.ask(rgb, region) {
            Err(reason) => {
                self.down_until = Some(Instant::now() + self.options.retry_after);
                self.set_state(DetectorState::Unavailable { reason });
                None
            }
            Ok(answer) => {
                self.down_until = None;
                self.set_state(DetectorState::Ready {
                    model: answer.model,
                    version: answer.version,
                });
                let found = answer.results.into_iter().next().unwrap_or_default();
                Some(
                    found
                        .into_iter()
                        .filter(|f| f.score >= self.min_score)
                        .filter(|f| self.objects.is_empty() || self.objects.contains(&f.label))
                        .map(|f| Detection {
                            bbox: BoxF::new(
                                f.bbox[0] + region.x as f32,
                                f.bbox[1] + region.y as f32,
                                f.bbox[2] + region.x as f32,
                                f.bbox[3] + region.y as f32,
                            ),
                            score: f.score,
                            class: f.label,
                        })
                        .collect(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_a_square_around_the_motion_inside_the_frame() {
        // A small box near the right edge of a 1920×1080 frame: a 640 square, moved inside.
        let region = region_for(&[BoxF::new(1800.0, 500.0, 1850.0, 600.0)], 1920, 1080, 640);
        assert_eq!(
            region,
            Some(Region {
                x: 1280,
                y: 230,
                width: 640,
                height: 640
            })
        );
        // Motion over most of a small frame: the whole frame.
        let region = region_for(&[BoxF::new(0.0, 0.0, 300.0, 200.0)], 640, 360, 640);
        assert_eq!(
            region,
            Some(Region {
                x: 0,
                y: 0,
                width: 640,
                height: 360
            })
        );
        // Two boxes far apart: their union.
        let region = region_for(
            &[
                BoxF::new(100.0, 100.0, 120.0, 120.0),
                BoxF::new(1000.0, 900.0, 1010.0, 950.0),
            ],
            3840,
            2160,
            640,
        )
        .unwrap();
        assert!(
            region.x <= 100 && region.x + region.width >= 1010,
            "{region:?}"
        );
        assert!(
            region.y <= 100 && region.y + region.height >= 950,
            "{region:?}"
        );
        assert_eq!(region_for(&[], 640, 360, 640), None);
    }

    #[test]
    fn yuv_white_black_and_red_become_rgb() {
        // 2×2 pixels: luma 235 (white), 16 (black), 81 and 81 with red's chroma (240, 90).
        let (w, h) = (2, 2);
        let mut frame = vec![235, 16, 81, 81];
        frame.extend([90u8]); // U
        frame.extend([240u8]); // V
        let rgb = yuv420_to_rgb(
            &frame,
            w,
            h,
            Region {
                x: 0,
                y: 0,
                width: 2,
                height: 2,
            },
        );
        // The shared chroma tints every pixel; luma sets the level. Red's luma and chroma
        // together give (255, 0, 0) within rounding.
        let red = &rgb[6..9];
        assert!(red[0] >= 250 && red[1] <= 5 && red[2] <= 5, "{red:?}");
        assert_eq!(rgb.len(), 12);
    }
}

/// The live pipeline asking the real detector service (the router on loopback, the real ONNX
/// Runtime, a fixture model whose boxes are constant: see `detect::tests`).
#[cfg(test)]
mod service_tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use domain::{Name, StreamSpec, VideoConfig};

    use super::{DetectorClientOptions, DetectorState};
    use crate::db::EventKind;
    use crate::detect::tests::{fixture_models, options};
    use crate::detect::Detector;
    use crate::live::{DetectorLink, LiveOptions, StreamState};
    use crate::service::{ServiceOptions, VideoService};

    async fn detector_url() -> (String, tempfile::TempDir) {
        let dir = fixture_models(&["v8"]);
        let detector = Detector::load(&options(dir.path(), "v8")).unwrap();
        let router = crate::detect::http::router(
            detector,
            crate::detect::http::DetectService::new("detector", "3"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (format!("http://{address}/v1/detect"), dir)
    }

    /// Runs the moving-squares clip as a stream through a service asking `url`; the classes of
    /// the objects it started, and the detector's state.
    async fn classes(url: &str, objects: &[&str]) -> (Vec<String>, Option<DetectorState>) {
        let dir = tempfile::tempdir().unwrap();
        let clip = crate::test_clips::make(
            &dir.path().join("moving.mp4"),
            "color=c=black:s=640x360:r=25:d=4[bg];color=c=white:s=40x40:r=25:d=4[a];\
             [bg][a]overlay=x='200*t':y=100:shortest=1,format=yuv420p",
            &["-c:v", "libx264", "-preset", "veryfast"],
        );
        let mut stream = StreamSpec::new(clip);
        stream.objects = objects.iter().map(|o| o.to_string()).collect();
        let mut config = VideoConfig::default();
        config.streams.insert(Name::new("yard").unwrap(), stream);
        let state = Arc::new(Mutex::new(DetectorState::Unknown));
        let live = LiveOptions {
            detector: Some(DetectorLink {
                options: DetectorClientOptions::new(url),
                runtime: tokio::runtime::Handle::current(),
                state: Arc::clone(&state),
            }),
            ..LiveOptions::default()
        };
        let data = dir.path().join("data");
        let service = tokio::task::spawn_blocking(move || {
            VideoService::start(ServiceOptions {
                data_dir: data,
                config,
                live,
            })
        })
        .await
        .unwrap()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while service.stream("yard").unwrap().status.state != StreamState::Ended {
            assert!(Instant::now() < deadline, "the clip did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let query = crate::db::EventQuery {
            kind: Some(EventKind::ObjectStarted),
            limit: 100,
            ..Default::default()
        };
        let started = service.db().events(&query).unwrap();
        let detector = service.detector();
        tokio::task::spawn_blocking(move || service.shutdown())
            .await
            .unwrap();
        let mut classes: Vec<String> = started.into_iter().filter_map(|e| e.class).collect();
        classes.sort();
        classes.dedup();
        (classes, detector)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn moving_regions_are_detected_and_the_stream_tracks_the_detectors_classes() {
        let (url, _models) = detector_url().await;
        // The fixture's boxes on a 640×360 frame (letterboxed with 140 rows above): a person,
        // a dog and a toy at the right edge, each score ≥ 0.5, the default least score.
        let (found, state) = classes(&url, &[]).await;
        assert_eq!(found, ["cat's toy", "dog", "person"]);
        assert_eq!(
            state,
            Some(DetectorState::Ready {
                model: "detector".to_string(),
                version: "3".to_string()
            })
        );
        // A stream keeps the classes it names.
        let (found, _) = classes(&url, &["dog"]).await;
        assert_eq!(found, ["dog"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn without_a_detector_the_stream_tracks_motion_and_says_why() {
        let closed = format!("http://127.0.0.1:{}/v1/detect", {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        });
        let (found, state) = classes(&closed, &[]).await;
        assert_eq!(found, ["motion"]);
        match state {
            Some(DetectorState::Unavailable { reason }) => {
                assert!(reason.contains("cannot reach"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
