//! The video service (`flowers engine video`) with real ffmpeg processes: a file analysed, live
//! cameras on loopback (HTTP MJPEG and MPEG-TS served by ffmpeg, RTSP relayed by
//! rtsp-server-perl), one of them killed and restarted, an unreachable one, and streams added
//! through the API surviving a restart.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{free_port, signal, DEADLINE, FLOWERS};

/// The plan's crossing clip (docs/plans/video.md §8): from 1 s a white square moves right
/// along the top, from 2 s another moves left along the bottom; both cross x = 330 once.
pub(crate) fn crossing_clip(dir: &Path) -> String {
    let path = dir.join("cross.mp4");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(
            "color=c=black:s=640x360:r=25:d=5[bg];color=c=white:s=40x40:r=25:d=5[a];\
             color=c=white:s=40x40:r=25:d=5[b];\
             [bg][a]overlay=x='500*(t-1)':y=60:enable='gte(t,1)':shortest=1[t1];\
             [t1][b]overlay=x='600-500*(t-2)':y=260:enable='gte(t,2)':shortest=1,format=yuv420p",
        )
        .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "25"])
        .arg(&path)
        .status()
        .expect("ffmpeg runs (scripts/setup installs it)");
    assert!(status.success());
    path.to_string_lossy().into_owned()
}

/// ffmpeg sending `clip` in a loop, in real time, encoded with `output` to `to`.
fn ffmpeg_sending(clip: &str, output: &[&str], to: String) -> Running {
    Running(Some(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-re"])
            .args(["-stream_loop", "-1", "-i", clip])
            .args(output)
            .arg(to)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ffmpeg starts"),
    ))
}

/// A camera: MJPEG over HTTP to one client.
pub(crate) fn camera(clip: &str, port: u16) -> Running {
    let mjpeg = ["-c:v", "mjpeg", "-q:v", "8", "-f", "mpjpeg", "-listen", "1"];
    ffmpeg_sending(clip, &mjpeg, format!("http://127.0.0.1:{port}/cam"))
}

/// Another kind of camera: H.264 in MPEG-TS over HTTP to one client.
fn ts_camera(clip: &str, port: u16) -> Running {
    let ts = [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "25",
        "-f",
        "mpegts",
        "-listen",
        "1",
    ];
    ffmpeg_sending(clip, &ts, format!("http://127.0.0.1:{port}/cam"))
}

/// An RTSP camera: Debian's rtsp-server-perl (UDP only) relaying what ffmpeg publishes to it.
fn rtsp_camera(clip: &str, client_port: u16) -> (Running, Running) {
    let source_port = free_port();
    let server = Running(Some(
        Command::new("rtsp-server-perl")
            .args(["--clientport", &client_port.to_string()])
            .args(["--serverport", &source_port.to_string()])
            .args(["--client_listen_address", "127.0.0.1"])
            .args(["--source_listen_address", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rtsp-server-perl starts (scripts/setup installs it)"),
    ));
    // The server takes a moment to listen; ffmpeg retries nothing, so wait for its port.
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", source_port)).is_err() {
        assert!(Instant::now() < deadline, "rtsp-server-perl did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let h264 = [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "25",
        "-f",
        "rtsp",
    ];
    let publisher = ffmpeg_sending(clip, &h264, format!("rtsp://127.0.0.1:{source_port}/cam"));
    (server, publisher)
}

fn engine(dir: &Path, port: u16) -> Running {
    Running(Some(
        Command::new(FLOWERS)
            .args([
                "engine",
                "video",
                "--config",
                "flowers.toml",
                "--data",
                "data",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--backoff-max", "1s"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the engine starts"),
    ))
}

/// A child killed when dropped, so that a failing test leaves no ffmpeg or engine behind.
pub(crate) struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then the wait for the exit; panics when it does not come.
fn stop(mut running: Running) {
    let mut child = running.0.take().expect("running");
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the process did not stop on SIGTERM");
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    async fn stream(&self, name: &str) -> Value {
        self.get(&format!("/v1/streams/{name}"))
            .await
            .unwrap_or(Value::Null)
    }

    async fn events(&self, query: &str) -> Vec<Value> {
        self.get(&format!("/v1/events?limit=1000&{query}"))
            .await
            .and_then(|v| v["events"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Polls `check` until it holds; panics with `what` at the deadline.
    async fn until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let streams = self.get("/v1/streams").await;
        panic!("timed out waiting for {what}; the streams: {streams:#?}");
    }
}

fn state(stream: &Value) -> &str {
    stream["status"]["state"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_are_followed_through_an_outage_and_api_streams_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clip = crossing_clip(dir.path());
    let (cam_port, cam2_port, rtsp_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("flowers.toml"),
        format!(
            r#"
[video.streams.file]
url = "cross.mp4"
[video.streams.file.lines.gate]
from = [0.515625, 1.0]
to = [0.515625, 0.0]

[video.streams.cam]
url = "http://127.0.0.1:{cam_port}/cam"
[video.streams.cam.lines.gate]
from = [0.515625, 1.0]
to = [0.515625, 0.0]

[video.streams.cam2]
url = "http://127.0.0.1:{cam2_port}/cam"

[video.streams.rtsp]
url = "rtsp://127.0.0.1:{rtsp_port}/cam"
rtsp_transport = "udp"

[video.streams.dead]
url = "http://127.0.0.1:1/cam"
"#
        ),
    )
    .unwrap();
    let cam = camera(&clip, cam_port);
    let cam2 = ts_camera(&clip, cam2_port);
    let rtsp = rtsp_camera(&clip, rtsp_port);
    let port = free_port();
    let video = engine(dir.path(), port);
    let api = Api {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    };

    // The file is analysed to its end: exactly two crossings, one each way.
    api.until("the file's end", || async {
        state(&api.stream("file").await) == "ended"
    })
    .await;
    let crossed: Vec<String> = api
        .events("stream=file&kind=line_crossed")
        .await
        .iter()
        .map(|e| e["direction"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(crossed, ["left_to_right", "right_to_left"]);
    let ended = api.events("stream=file&kind=object_ended").await;
    assert_eq!(ended.len(), 2, "{ended:?}");
    // Each object has its snapshot, a JPEG.
    let object = ended[0]["object"].as_i64().unwrap();
    let jpeg = api
        .http
        .get(format!("{}/v1/objects/{object}/snapshot.jpg", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(jpeg.status(), 200);
    assert_eq!(&jpeg.bytes().await.unwrap()[..2], [0xFF, 0xD8]);

    // The cameras are followed live; the unreachable one is offline and says why.
    api.until("the RTSP camera online", || async {
        let stream = api.stream("rtsp").await;
        state(&stream) == "online" && stream["status"]["frames"].as_u64() > Some(5)
    })
    .await;
    api.until("both cameras online", || async {
        state(&api.stream("cam").await) == "online" && state(&api.stream("cam2").await) == "online"
    })
    .await;
    api.until("a live crossing", || async {
        !api.events("stream=cam&kind=line_crossed").await.is_empty()
    })
    .await;
    let dead = api.stream("dead").await;
    assert_eq!(state(&dead), "offline", "{dead}");
    assert!(
        dead["status"]["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{dead}"
    );
    assert_eq!(api.events("stream=dead&kind=stream_offline").await.len(), 1);

    // The first camera goes away and comes back: offline, then online; the second goes on.
    // (A camera may have been reported offline once already: its server can start listening
    // after the engine first tried it.)
    let count = |query: &'static str| async { api.events(query).await.len() };
    let cam_offline = count("stream=cam&kind=stream_offline").await;
    let cam_online = count("stream=cam&kind=stream_online").await;
    let cam2_offline = count("stream=cam2&kind=stream_offline").await;
    stop(cam);
    api.until("cam offline", || async {
        count("stream=cam&kind=stream_offline").await == cam_offline + 1
    })
    .await;
    assert_eq!(state(&api.stream("cam").await), "offline");
    let frames_before = api.stream("cam2").await["status"]["frames"]
        .as_u64()
        .unwrap();
    let cam = camera(&clip, cam_port);
    api.until("cam back online", || async {
        count("stream=cam&kind=stream_online").await == cam_online + 1
    })
    .await;
    let cam2_now = api.stream("cam2").await;
    assert_eq!(state(&cam2_now), "online");
    assert!(cam2_now["status"]["frames"].as_u64().unwrap() > frames_before);
    assert_eq!(count("stream=cam2&kind=stream_offline").await, cam2_offline);

    // Streams through the API: checked like the file, kept across a restart; the file's own
    // cannot be changed there.
    let put = |name: &str, body: Value| {
        api.http
            .put(format!("{}/v1/streams/{name}", api.base))
            .json(&body)
            .send()
    };
    let message = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 422);
        response.json::<Value>().await.unwrap()["message"].to_string()
    };
    let refused = message(put("extra", json!({"url": "cross.mp4"})).await.unwrap()).await;
    assert!(
        refused.contains("url: expected an absolute path"),
        "{refused}"
    );
    let refused = message(
        put("extra", json!({"url": clip, "fps": 0, "width": 5}))
            .await
            .unwrap(),
    )
    .await;
    assert!(
        refused.contains("fps: expected frames per second"),
        "{refused}"
    );
    assert!(
        refused.contains("width: expected an integer 16..=7680"),
        "{refused}"
    );
    let added = put(
        "extra",
        json!({"url": clip, "lines": {"gate": {"from": [0.515625, 1], "to": [0.515625, 0]}}}),
    )
    .await
    .unwrap();
    assert_eq!(added.status(), 201);
    let declared = api
        .http
        .delete(format!("{}/v1/streams/file", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 409);
    let bad_query = api
        .http
        .get(format!("{}/v1/events?kind=walked", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_query.status(), 400);
    api.until("the added stream's end", || async {
        state(&api.stream("extra").await) == "ended"
    })
    .await;
    assert_eq!(api.events("stream=extra&kind=line_crossed").await.len(), 2);

    stop(video);
    let video = engine(dir.path(), port);
    api.until("the added stream again", || async {
        api.stream("extra").await["origin"] == "api"
    })
    .await;
    // The files were analysed to their ends: not again, so their events are not doubled.
    for name in ["file", "extra"] {
        let stream = api.stream(name).await;
        assert_eq!(state(&stream), "ended", "{stream}");
        assert!(
            stream["status"]["note"]
                .as_str()
                .unwrap_or("")
                .starts_with("analysed to its end at "),
            "{stream}"
        );
        let crossed = api
            .events(&format!("stream={name}&kind=line_crossed"))
            .await;
        assert_eq!(crossed.len(), 2, "{crossed:?}");
    }
    // Event ids go on from the store: a follower resumes after the id it last saw.
    let response = api
        .http
        .get(format!("{}/v1/events?follow=true&stream=file", api.base))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        use futures::StreamExt;
        let chunk = tokio::time::timeout(DEADLINE, body.next())
            .await
            .expect("an event arrives")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let first_id: i64 = text
        .lines()
        .find_map(|line| line.strip_prefix("id:"))
        .expect("an id line")
        .trim()
        .parse()
        .unwrap();
    assert!(first_id > 1, "{text}");
    stop(video);
    stop(cam);
    stop(cam2);
    stop(rtsp.1);
    stop(rtsp.0);
}

/// `flowers video scan`: a file analysed with no server, its flags checked as a stream's.
#[test]
fn scan_counts_the_crossings_of_a_file_and_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    crossing_clip(dir.path());
    let scan = |args: &[&str]| {
        let output = Command::new(FLOWERS)
            .args(["--json", "video", "scan"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, _) = scan(&["cross.mp4", "--line", "gate=0.515625,1,0.515625,0"]);
    assert_eq!(code, Some(0));
    let events: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let crossings: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "line_crossed")
        .map(|e| e["direction"].as_str().unwrap())
        .collect();
    assert_eq!(crossings, ["left_to_right", "right_to_left"]);
    let summary = &events.last().unwrap()["summary"];
    assert_eq!(
        (summary["frames"].as_u64(), summary["crossings"].as_u64()),
        (Some(25), Some(2))
    );

    // NVDEC asked where there is no driver: ffmpeg's reason, not a hang or a crash.
    let (code, _, err) = scan(&["cross.mp4", "--hwaccel", "cuda"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cross.mp4: ffmpeg could not decode it"),
        "{err}"
    );
    let (code, _, err) = scan(&["cross.mp4", "--hwaccel", "gpu"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("[possible values: none, cuda]"), "{err}");
    let (code, _, err) = scan(&["cross.mp4", "--line", "0.5,1.5,0.5,0"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("lines.line1.from: [0.5, 1.5] is outside the frame"),
        "{err}"
    );
    let (code, _, err) = scan(&["cross.mp4", "--line", "0.5,1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("expected X1,Y1,X2,Y2"), "{err}");
    let (code, _, err) = scan(&["missing.mp4"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("missing.mp4: no such file"), "{err}");
    std::fs::write(dir.path().join("bad.mp4"), b"not a video at all").unwrap();
    let (code, _, err) = scan(&["bad.mp4"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("ffmpeg could not decode it"), "{err}");
}

/// An HLS camera: ffmpeg writing a live playlist of one-second segments, served by Python's
/// http.server, as a camera's or a media server's HLS output would be.
#[tokio::test(flavor = "multi_thread")]
async fn an_hls_stream_is_followed_live() {
    let dir = tempfile::tempdir().unwrap();
    let clip = crossing_clip(dir.path());
    let hls = dir.path().join("hls");
    std::fs::create_dir(&hls).unwrap();
    let _writer = ffmpeg_sending(
        &clip,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "5",
            "-hls_flags",
            "delete_segments",
        ],
        hls.join("cam.m3u8").to_string_lossy().into_owned(),
    );
    let http_port = free_port();
    let _server = Running(Some(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &http_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&hls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    ));
    std::fs::write(
        dir.path().join("flowers.toml"),
        format!(
            "[video.streams.hls]\nurl = \"http://127.0.0.1:{http_port}/cam.m3u8\"\n\
             [video.streams.hls.lines.gate]\nfrom = [0.515625, 1.0]\nto = [0.515625, 0.0]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let video = engine(dir.path(), port);
    let api = Api {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    };
    api.until("the HLS stream online with frames", || async {
        let stream = api.stream("hls").await;
        state(&stream) == "online" && stream["status"]["frames"].as_u64() > Some(10)
    })
    .await;
    api.until("a crossing seen on the HLS stream", || async {
        !api.events("stream=hls&kind=line_crossed").await.is_empty()
    })
    .await;
    let stream = api.stream("hls").await;
    assert_eq!(stream["status"]["width"], 640, "{stream}");
    stop(video);
}
