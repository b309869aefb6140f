//! The router on loopback with the real ONNX Runtime and the fixture models (see
//! `detect::tests`), driven by a real HTTP client.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::detect::tests::{expected_1280x720, fixture_models, image, options};
use crate::detect::DetectorOptions;

/// Serves `router` on a free loopback port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{address}")
}

/// The body for these images: the size line, then their bytes.
fn body(images: &[(usize, usize, &[u8])]) -> Vec<u8> {
    let sizes: Vec<Value> = images
        .iter()
        .map(|(width, height, _)| serde_json::json!({"width": width, "height": height}))
        .collect();
    let mut body = serde_json::to_vec(&sizes).unwrap();
    body.push(b'\n');
    for (_, _, data) in images {
        body.extend_from_slice(data);
    }
    body
}

async fn post(url: &str, body: Vec<u8>, priority: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/v1/detect"))
        .body(body);
    if let Some(priority) = priority {
        request = request.header(PRIORITY_HEADER, priority);
    }
    let response = request.send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.json().await.unwrap())
}

fn load(dir: &std::path::Path, model: &str, change: impl FnOnce(&mut DetectorOptions)) -> Detector {
    let mut options = options(dir, model);
    change(&mut options);
    Detector::load(&options).unwrap()
}

/// A client's answer; a request the queue never serves fails the test instead of hanging it.
async fn answered(client: tokio::task::JoinHandle<(StatusCode, Value)>) -> (StatusCode, Value) {
    tokio::time::timeout(Duration::from_secs(60), client)
        .await
        .expect("the request was never answered")
        .unwrap()
}

/// Waits until `count` requests wait in the paused queue.
fn wait_for_jobs(queue: &Queue, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue.waiting_jobs() < count {
        assert!(Instant::now() < deadline, "{count} requests never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn answers_each_image_in_its_own_pixels() {
    let dir = fixture_models(&["v8"]);
    let detector = load(dir.path(), "v8", |_| {});
    let url = serve(router(detector, DetectService::new("detector", "7"))).await;
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let (wide, small) = (image(1280, 720), image(64, 48));
    let (status, answer) = post(&url, body(&[(1280, 720, &wide), (64, 48, &small)]), None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["model"], "detector");
    assert_eq!(answer["version"], "7");
    assert_eq!(
        answer["names"],
        serde_json::json!(["person", "dog", "cat's toy"])
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let first = results[0].as_array().unwrap();
    let expected = expected_1280x720();
    assert_eq!(first.len(), expected.len(), "{answer}");
    for (found, expected) in first.iter().zip(&expected) {
        assert_eq!(found["class"], expected.class);
        assert_eq!(found["label"], expected.label.as_str());
        assert!((found["score"].as_f64().unwrap() - f64::from(expected.score)).abs() < 1e-4);
        let bbox: Vec<f64> = serde_json::from_value(found["box"].clone()).unwrap();
        let wanted = [
            expected.bbox.x0,
            expected.bbox.y0,
            expected.bbox.x1,
            expected.bbox.y1,
        ];
        for (a, b) in bbox.iter().zip(wanted) {
            assert!((a - f64::from(b)).abs() < 1e-3, "{found} vs {expected:?}");
        }
    }
    // 64×48 scales by 10 into 640×480, 80 rows of padding: person A is (15, 12)–(25, 32).
    let person = &results[1][0];
    assert_eq!(person["label"], "person");
    let bbox: Vec<f64> = serde_json::from_value(person["box"].clone()).unwrap();
    for (a, b) in bbox.iter().zip([15.0, 12.0, 25.0, 32.0]) {
        assert!((a - b).abs() < 1e-3, "{person}");
    }
}

#[tokio::test]
async fn bad_bodies_get_400_saying_what_is_wrong() {
    let dir = fixture_models(&["v8"]);
    let detector = load(dir.path(), "v8", |_| {});
    let mut service = DetectService::new("detector", "1");
    service.max_images = 2;
    service.max_body_bytes = 1024 * 1024;
    let url = serve(router(detector, service)).await;
    let pixels = image(4, 2);
    let mut short = body(&[(4, 2, &pixels)]);
    short.pop();
    let many = body(&[(4, 2, &pixels), (4, 2, &pixels), (4, 2, &pixels)]);
    let mut long = body(&[(4, 2, &pixels), (4, 2, &pixels)]);
    long.push(0);
    let urgent = body(&[(4, 2, &pixels)]);
    let cases: [(Vec<u8>, Option<&str>, &str); 9] = [
        (b"no newline".to_vec(), None, "no newline in the first"),
        (
            b"{\"width\": 4}\n".to_vec(),
            None,
            "the header line is not valid",
        ),
        (b"[]\n".to_vec(), None, "lists no images"),
        (
            short,
            None,
            "the header's 1 images of RGB24 are 24 bytes, but 23 follow",
        ),
        (long, None, "are 48 bytes, but 49 follow"),
        (
            b"[{\"width\": 0, \"height\": 2}]\n".to_vec(),
            None,
            "image 0: size 0×2 is empty",
        ),
        (
            b"[{\"width\": 100000000000, \"height\": 100000000000}]\n".to_vec(),
            None,
            "image 0: 100000000000×100000000000 is larger than the whole body",
        ),
        (
            many,
            None,
            "3 images in one request; this detector takes at most 2",
        ),
        (
            urgent,
            Some("urgent"),
            "x-flowers-priority \"urgent\" is not live or background",
        ),
    ];
    for (body, priority, message) in cases {
        let (status, answer) = post(&url, body, priority).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["code"], "bad_request", "{answer}");
        let text = answer["message"].as_str().unwrap();
        assert!(text.contains(message), "{text}");
    }
    let (status, answer) = post(&url, vec![b'x'; 2 * 1024 * 1024], None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["code"], "too_large");
    let text = answer["message"].as_str().unwrap();
    assert!(
        text.contains("request body is over 1048576 bytes"),
        "{text}"
    );
    // The service still answers after all that.
    let (status, _) = post(&url, body(&[(4, 2, &pixels)]), Some("background")).await;
    assert_eq!(status, StatusCode::OK);
}

/// Sends each request (an image count and a priority) to a paused detector service, one at a
/// time so that the queue's order is the sending order; then lets the detector run. Returns
/// the answers and the runs the queue made.
async fn run_queued(
    detector: Detector,
    (width, height): (usize, usize),
    requests: &[(usize, &'static str)],
) -> (Vec<Value>, Vec<Vec<(Priority, usize)>>) {
    let (router, queue) = router_with_queue(detector, DetectService::new("detector", "1"), true);
    let url = serve(router).await;
    let pixels = image(width, height);
    let mut clients = Vec::new();
    for &(count, priority) in requests {
        let images: Vec<(usize, usize, &[u8])> =
            (0..count).map(|_| (width, height, &pixels[..])).collect();
        let request = body(&images);
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            post(&url, request, Some(priority)).await
        }));
        let queue = queue.clone();
        let queued = clients.len();
        tokio::task::spawn_blocking(move || wait_for_jobs(&queue, queued))
            .await
            .unwrap();
    }
    queue.resume();
    let mut answers = Vec::new();
    for client in clients {
        let (status, answer) = answered(client).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answers.push(answer);
    }
    let runs = queue.lock().runs.clone();
    (answers, runs)
}

#[tokio::test]
async fn one_run_batches_images_across_requests() {
    let dir = fixture_models(&["v8_dynamic"]);
    let detector = load(dir.path(), "v8_dynamic", |o| o.max_batch = 4);
    let requests = [(1, "live"), (2, "live"), (2, "live")];
    let (answers, runs) = run_queued(detector, (1280, 720), &requests).await;
    for (answer, (count, _)) in answers.iter().zip(requests) {
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), count);
        for result in results {
            assert_eq!(result.as_array().unwrap().len(), expected_1280x720().len());
        }
    }
    // Five images in batches of four: the first run takes the first two requests whole and
    // half of the third, the second run the rest of it.
    use Priority::Live;
    assert_eq!(
        runs,
        [vec![(Live, 1), (Live, 2), (Live, 1)], vec![(Live, 1)]]
    );
}

#[tokio::test]
async fn background_requests_wait_while_live_ones_do() {
    let dir = fixture_models(&["v8"]);
    let detector = load(dir.path(), "v8", |_| {});
    // A background request of two images first, then two live ones; one image a run.
    let requests = [(2, "background"), (1, "live"), (1, "live")];
    let (_, runs) = run_queued(detector, (64, 48), &requests).await;
    use Priority::{Background, Live};
    assert_eq!(
        runs,
        [
            vec![(Live, 1)],
            vec![(Live, 1)],
            vec![(Background, 1)],
            vec![(Background, 1)]
        ]
    );
}

#[tokio::test]
async fn once_the_detector_thread_ends_requests_get_503() {
    let job = |priority| {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            priority,
            body: Bytes::from_static(&[0, 0, 0]),
            images: vec![(1, 1, 0)],
            next: 0,
            found: Vec::new(),
            reply,
        };
        (job, answer)
    };
    // Waiting requests hear that nothing will serve them; new ones are refused.
    let queue = Arc::new(Queue::new(true));
    let (waiting, answer) = job(Priority::Background);
    assert!(queue.push(waiting).is_ok());
    drop(WorkerEnded(queue.clone()));
    assert!(answer.await.is_err());
    assert!(queue.push(job(Priority::Live).0).is_err());
    assert!(queue.next_run(4).is_none());

    // And the routes say so.
    let dir = fixture_models(&["v8"]);
    let detector = load(dir.path(), "v8", |_| {});
    let (router, queue) = router_with_queue(detector, DetectService::new("detector", "1"), true);
    let url = serve(router).await;
    queue.worker_ended();
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let pixels = image(4, 2);
    let (status, answer) = post(&url, body(&[(4, 2, &pixels)]), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["code"], "unavailable");
}
