//! The control API over plain HTTP: every error is JSON `{code, message}` with a stable code,
//! the event stream is server-sent events that resume exactly after `Last-Event-ID`, and the
//! OpenAPI document is the checked-in one and lists every route.

use client::EventInfo;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, Response};

use crate::support::*;

fn url(server: &TestServer, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", server.api_port)
}

async fn request(server: &TestServer, method: Method, path: &str) -> Response {
    reqwest::Client::new()
        .request(method, url(server, path))
        .send()
        .await
        .expect("the control API answers")
}

/// Checks that `response` is an error with `status` and `code` in exactly the documented
/// shape; returns its message.
pub(crate) async fn error_message(response: Response, status: u16, code: &str) -> String {
    let what = format!("{} {}", response.status(), response.url().path());
    assert_eq!(response.status().as_u16(), status, "{what}");
    assert_eq!(
        response.headers().get(CONTENT_TYPE).unwrap(),
        "application/json",
        "{what}"
    );
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    let object = body.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["code", "message"], "{what}: {body}");
    assert_eq!(body["code"], code, "{what}: {body}");
    body["message"]
        .as_str()
        .expect("a string message")
        .to_string()
}

async fn assert_error(
    server: &TestServer,
    method: Method,
    path: &str,
    status: u16,
    code: &str,
    message: &str,
) {
    let response = request(server, method.clone(), path).await;
    assert_eq!(
        error_message(response, status, code).await,
        message,
        "{method} {path}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_wrong_methods_and_bad_queries_are_json_errors() {
    let server = TestServer::start("").await;
    let response = request(&server, Method::GET, "/v1/nope").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers().get(CONTENT_TYPE).unwrap(),
        "application/json"
    );
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"code":"not_found","message":"no such endpoint: GET /v1/nope"}"#
    );
    assert_error(
        &server,
        Method::POST,
        "/v1/nope",
        404,
        "not_found",
        "no such endpoint: POST /v1/nope",
    )
    .await;

    assert_error(
        &server,
        Method::DELETE,
        "/v1/status",
        405,
        "method_not_allowed",
        "/v1/status does not accept DELETE",
    )
    .await;
    assert_error(
        &server,
        Method::GET,
        "/v1/jobs/train/runs",
        405,
        "method_not_allowed",
        "/v1/jobs/train/runs does not accept GET",
    )
    .await;

    let message = error_message(
        request(&server, Method::GET, "/v1/runs?limit=abc").await,
        400,
        "bad_request",
    )
    .await;
    assert!(
        message.starts_with("bad query string: ") && message.contains("limit"),
        "{message}"
    );
    assert_error(
        &server,
        Method::GET,
        "/v1/events?limit=0",
        400,
        "bad_request",
        "limit: expected 1..=10000, got 0",
    )
    .await;
    assert_error(
        &server,
        Method::GET,
        "/v1/runs?limit=20000",
        400,
        "bad_request",
        "limit: expected 1..=10000, got 20000",
    )
    .await;
    for path in [
        "/v1/runs?bogus=1",
        "/v1/events?bogus=1",
        "/v1/runs/web-1/logs?bogus=1",
    ] {
        let message = error_message(
            request(&server, Method::GET, path).await,
            400,
            "bad_request",
        )
        .await;
        assert!(
            message.starts_with("bad query string: ") && message.contains("bogus"),
            "{path}: {message}"
        );
    }
    let response = reqwest::Client::new()
        .get(url(&server, "/v1/events"))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_message(response, 400, "bad_request").await,
        "Last-Event-ID: expected an event id (an integer)"
    );

    for (method, path, message) in [
        (
            Method::GET,
            "/v1/services/nope",
            r#"no service is named "nope""#,
        ),
        (
            Method::POST,
            "/v1/services/nope/reset",
            r#"no service is named "nope""#,
        ),
        (Method::GET, "/v1/jobs/nope", r#"no job is named "nope""#),
        (
            Method::POST,
            "/v1/jobs/nope/runs",
            r#"no job is named "nope""#,
        ),
        (
            Method::POST,
            "/v1/jobs/nope/reset",
            r#"no job is named "nope""#,
        ),
        (
            Method::GET,
            "/v1/runs/nope-1",
            r#"no run is named "nope-1""#,
        ),
        (
            Method::POST,
            "/v1/runs/nope-1/stop",
            r#"no run is named "nope-1""#,
        ),
        (
            Method::GET,
            "/v1/runs/nope-1/logs",
            r#"no run is named "nope-1""#,
        ),
    ] {
        assert_error(&server, method, path, 404, "not_found", message).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_running_job_or_stopping_an_ended_run_is_a_conflict() {
    let server = TestServer::start(&format!(
        "[jobs.train]\ncommand = [\"python3\", \"-u\", \"{WORKLOAD}\"]\n\
         env = {{ WORKLOAD_NO_SERVER = \"1\" }}\nstop_grace = \"5s\"\n"
    ))
    .await;
    let response = request(&server, Method::POST, "/v1/jobs/train/runs").await;
    assert_eq!(response.status(), 202);
    let started: client::ActionResponse = response.json().await.unwrap();
    let run = started.run.expect("the new run's id");
    assert_eq!(started.message, format!("job train started as run {run}"));

    assert_error(
        &server,
        Method::POST,
        "/v1/jobs/train/runs",
        409,
        "conflict",
        &format!(
            "job train is already running (run {run}); stop it first with `flowers stop {run}`"
        ),
    )
    .await;

    let response = request(&server, Method::POST, &format!("/v1/runs/{run}/stop")).await;
    assert_eq!(response.status(), 202);
    server.event("train", "run_stopped").await;
    assert_eq!(server.client.run(&run).await.unwrap().state, "stopped");
    assert_error(
        &server,
        Method::POST,
        &format!("/v1/runs/{run}/stop"),
        409,
        "conflict",
        &format!("run {run} has already ended"),
    )
    .await;
}

#[derive(Debug)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// A server-sent events reader over a streaming response, read frame by frame.
struct Sse {
    response: Response,
    buffer: Vec<u8>,
}

impl Sse {
    async fn open(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut request = reqwest::Client::new().get(url(server, path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the event stream opens");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get(CONTENT_TYPE).unwrap(),
            "text/event-stream"
        );
        Sse {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next frame with data (keep-alive comments are skipped).
    async fn next(&mut self) -> Frame {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                    let mut frame = Frame {
                        id: None,
                        event: None,
                        data: String::new(),
                    };
                    for line in String::from_utf8(block).unwrap().lines() {
                        match line.split_once(':') {
                            Some(("id", value)) => frame.id = Some(value.trim_start().into()),
                            Some(("event", value)) => frame.event = Some(value.trim_start().into()),
                            Some(("data", value)) => frame.data.push_str(value.trim_start()),
                            _ => {}
                        }
                    }
                    if !frame.data.is_empty() {
                        return frame;
                    }
                    continue;
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .expect("the event stream reads")
                    .expect("the event stream stays open");
                self.buffer.extend_from_slice(&chunk);
            }
        })
        .await
        .expect("an event in time")
    }

    /// The next event, checking that its SSE `id` and `event` are the event's id and kind.
    async fn next_event(&mut self) -> EventInfo {
        let frame = self.next().await;
        let event: EventInfo = serde_json::from_str(&frame.data).expect("an event as JSON");
        assert_eq!(frame.id, Some(event.id.to_string()), "{frame:?}");
        assert_eq!(
            frame.event.as_deref(),
            Some(event.kind.as_str()),
            "{frame:?}"
        );
        event
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_the_backlog_then_live_events_and_resumes_after_last_event_id() {
    let server = TestServer::start(&service("web", "")).await;
    let run = server.ready_runs("web", 1).await.remove(0);
    server.event("web", "run_ready").await;
    let backlog = server.client.events(Some(0), None, 10_000).await.unwrap();

    let mut stream = Sse::open(&server, "/v1/events?follow=true", &[]).await;
    for expected in &backlog {
        assert_eq!(&stream.next_event().await, expected);
    }

    // A live event: the replica crashes and is replaced.
    let _ = reqwest::get(format!(
        "http://127.0.0.1:{}/crash?code=3",
        run.port.unwrap()
    ))
    .await;
    let mut live = Vec::new();
    loop {
        let event = stream.next_event().await;
        let replaced = event.kind == "run_ready" && event.run.as_deref() != Some(&run.id);
        live.push(event);
        if replaced {
            break;
        }
    }
    assert!(
        live.iter().any(|e| e.kind == "run_exited"
            && e.run.as_deref() == Some(&run.id)
            && e.message == "exited code=3"),
        "{live:#?}"
    );
    // Exactly what the store holds, in order: no duplicates, no gaps.
    let stored = server.client.events(Some(0), None, 10_000).await.unwrap();
    let streamed: Vec<EventInfo> = backlog.iter().cloned().chain(live.clone()).collect();
    assert_eq!(stored[..streamed.len()], streamed[..]);

    // Reconnecting (here by content negotiation) resumes right after the last id seen.
    let resume_after = backlog.last().unwrap().id;
    let mut resumed = Sse::open(
        &server,
        "/v1/events",
        &[
            ("Accept", "text/event-stream"),
            ("Last-Event-ID", &resume_after.to_string()),
        ],
    )
    .await;
    for expected in &live {
        assert_eq!(&resumed.next_event().await, expected);
    }
    let first = &live[0];
    assert_eq!(first.id, resume_after + 1, "ids are consecutive");
}

const ROUTES_SOURCE: &str = include_str!("../../../api/src/routes.rs");
const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

/// `(path, method)` of every `.route(…)` in the API's `router()`.
fn routes_in_router() -> Vec<(String, String)> {
    let start = ROUTES_SOURCE
        .find("pub fn router(")
        .expect("router() in routes.rs");
    let body = &ROUTES_SOURCE[start..];
    let body = &body[..body.find("\n}\n").expect("the end of router()")];
    let mut routes = Vec::new();
    for line in body
        .lines()
        .filter(|l| l.trim_start().starts_with(".route(\""))
    {
        let path = line.split('"').nth(1).unwrap().to_string();
        let handlers = &line[line.find("\",").unwrap()..];
        for method in ["get", "post", "put", "patch", "delete"] {
            if handlers.contains(&format!("{method}(")) {
                routes.push((path.clone(), method.to_string()));
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_the_checked_in_one_and_lists_every_route() {
    let server = TestServer::start("").await;
    let response = request(&server, Method::GET, "/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get(CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let served = response.text().await.unwrap();
    let (code, printed, err) = server.cli(&["openapi"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(printed.trim_end(), served.trim_end());

    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        checked_in.trim_end() == served.trim_end(),
        "docs/openapi.json is missing or differs from what the control API serves; regenerate \
         it from the repository root with:\n  \
         cargo run --release -p flowers -- openapi > docs/openapi.json"
    );

    let document: serde_json::Value = serde_json::from_str(&served).unwrap();
    let routes = routes_in_router();
    assert!(routes.len() >= 15, "{routes:?}");
    for (path, method) in routes {
        assert!(
            document["paths"][&path][&method].is_object(),
            "{} {path} is routed but missing from the OpenAPI document",
            method.to_uppercase()
        );
    }
}
