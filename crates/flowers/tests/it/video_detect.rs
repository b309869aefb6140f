//! The video service's detector is a Model like any other: a new version promoted while a
//! camera is followed live swaps in blue/green with no detect request failing. Real processes
//! throughout: `flowers up` with the detector and video services, ffmpeg serving an MJPEG
//! camera, ONNX Runtime (PyPI's, which scripts/setup installs) running fixture models that
//! `make_yolo.py` writes.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::*;
use crate::video::{camera, crossing_clip};

/// ONNX Runtime's library (`ort`) or the Python with onnx (`python`) that scripts/setup installs.
fn test_env(name: &str) -> String {
    setup_path(name, "ort-path", "onnxruntime and onnx")
        .to_string_lossy()
        .into_owned()
}

/// The fixture YOLOv8 model (hand-placed boxes: a person, a dog, a toy) as `dir/NAME/v8.onnx`.
fn fixture_version(dir: &std::path::Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../video/tests/fixtures/make_yolo.py"
    );
    let status = Command::new(test_env("python"))
        .arg(script)
        .arg(&out)
        .arg("v8")
        .status()
        .expect("the test Python runs");
    assert!(status.success(), "make_yolo.py failed");
    out.join("v8.onnx")
}

async fn detector_state(server: &TestServer) -> Value {
    get_json(server.gateway_port, "/video/v1/streams")
        .await
        .map(|answer| answer["detector"].clone())
        .unwrap_or_default()
}

/// The gateway's counts for the detector's route: (2xx, everything else).
async fn detect_traffic(server: &TestServer) -> (u64, u64, Value) {
    let report = server.client.gateway().await.expect("the gateway report");
    let route = report
        .routes
        .iter()
        .find(|r| r.path_prefix == "/v1/detect")
        .expect("the detector's route");
    let t = &route.traffic;
    let bad = t.responses.status_4xx + t.responses.status_5xx + t.errors.values().sum::<u64>();
    (
        t.responses.status_2xx,
        bad,
        serde_json::to_value(t).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_promoted_under_a_live_stream_fails_no_detect_request() {
    let models = tempfile::tempdir().unwrap();
    let v1 = fixture_version(models.path(), "v1");
    let v2 = fixture_version(models.path(), "v2");
    let clip = crossing_clip(models.path());
    let cam_port = free_port();
    let config = format!(
        r#"
[models.detector]

[services.detector]
command = ["flowers", "engine", "detect", "--threads", "1"]
model = "detector"
routes = [{{ path = "/v1/detect" }}]
[services.detector.probe]
interval = "200ms"

[services.video]
command = ["flowers", "engine", "video"]
routes = [{{ path = "/video" }}]
replace = "stop-first"

[video.streams.cam]
url = "http://127.0.0.1:{cam_port}/cam"
"#
    );
    let ort = test_env("ort");
    let import = format!("detector={}", v1.display());
    let server = TestServer::start_with_args(
        &config,
        &[("FLOWERS_ORT_LIB", ort.as_str())],
        &["--import-model", &import],
    )
    .await;
    let _cam = camera(&clip, cam_port);

    // Version 1 answers the camera's frames: the fixture's classes are tracked, not motion.
    server
        .eventually("version 1 to answer the stream", || async {
            let state = detector_state(&server).await;
            (state["state"] == "ready" && state["version"] == "1").then_some(())
        })
        .await;
    server
        .eventually("detect requests to flow", || async {
            (detect_traffic(&server).await.0 >= 5).then_some(())
        })
        .await;
    let events = get_json(
        server.gateway_port,
        "/video/v1/events?kind=object_started&limit=100",
    )
    .await
    .unwrap();
    let classes: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["class"].as_str())
        .collect();
    assert!(classes.contains(&"person"), "{classes:?}");
    assert!(!classes.contains(&"motion"), "{classes:?}");

    // Version 2 is imported and promoted while the stream goes on.
    let v2 = v2.to_string_lossy().into_owned();
    let (code, _, err) = server.cli(&["models", "import", &v2, "--model", "detector"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = server.cli(&["models", "promote", "detector", "2"]);
    assert_eq!(code, 0, "{err}");
    server
        .eventually("version 2 to answer the stream", || async {
            let state = detector_state(&server).await;
            (state["state"] == "ready" && state["version"] == "2").then_some(())
        })
        .await;
    let (answered, _, _) = detect_traffic(&server).await;
    server
        .eventually("more detect requests after the swap", || async {
            (detect_traffic(&server).await.0 >= answered + 5).then_some(())
        })
        .await;
    let (answered, failed, traffic) = detect_traffic(&server).await;
    assert_eq!(failed, 0, "{traffic:#}");
    assert!(answered >= 10, "{traffic:#}");
    // The old replica was drained and stopped.
    let runs = server.ready_runs("detector", 1).await;
    assert_eq!(runs[0].model_version, Some(2), "{runs:?}");
}
