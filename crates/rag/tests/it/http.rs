//! The HTTP routes on loopback, under the `/rag` prefix the gateway uses, with the real
//! MiniLM embedder. The chat engine is a STAND-IN: a small OpenAI-compatible server written
//! here that records what it was sent and answers a fixed text (the real SmolLM2 end to end
//! is the binary's test).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rag::http::{router, HttpLimits, RagHttpOptions};
use rag::{Library, LibraryOptions, OpenAiChat};
use reqwest::Client;
use serde_json::{json, Value};

use crate::common::{serve, MiniLm};

const PREFIX: &str = "/rag";

struct Server {
    base: String,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(chat: Option<OpenAiChat>, limits: HttpLimits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let library = Library::open(dir.path(), LibraryOptions::default()).unwrap();
        let mut options = RagHttpOptions::new(MiniLm::shared());
        options.prefix = PREFIX.to_string();
        options.chat = chat;
        options.limits = limits;
        let base = serve(router(library, options)).await;
        Server {
            base: format!("{base}{PREFIX}"),
            client: Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        answer(self.client.delete(self.url(path)).send().await.unwrap()).await
    }

    async fn upload(&self, collection: &str, name: &str, bytes: &[u8]) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(&format!("/v1/collections/{collection}/documents")))
            .query(&[("name", name)])
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        answer(response).await
    }
}

async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// An error answer: the project's `{code, message}`, with the message containing `needle`.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str, needle: &str) {
    assert_eq!(got.0, status, "{got:?}");
    assert_eq!(got.1["code"], code, "{got:?}");
    let message = got.1["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

const GUIDE: &str = "# Pump manual\n\n## Maintenance\n\nThe pump needs fresh oil every 200 hours \
of running.\n\n## Noise\n\nA whining pump usually has a worn bearing.\n";

#[tokio::test]
async fn collections_are_managed_and_bad_requests_get_reasons() {
    let server = Server::start(None, HttpLimits::default()).await;
    let created = server
        .post_json("/v1/collections", json!({"name": "docs"}))
        .await;
    assert_eq!(created.0, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.1["name"], "docs");
    let again = server
        .post_json("/v1/collections", json!({"name": "docs"}))
        .await;
    assert_error(&again, StatusCode::CONFLICT, "conflict", "already exists");
    let bad = server
        .post_json("/v1/collections", json!({"name": "no spaces"}))
        .await;
    assert_error(
        &bad,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "invalid collection name",
    );
    let malformed = server.post_raw("/v1/collections", "{\"name\": ").await;
    assert_error(
        &malformed,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "expected {\"name\": \"docs\"}",
    );
    let unknown_field = server
        .post_json("/v1/collections", json!({"name": "x", "colour": "red"}))
        .await;
    assert_error(
        &unknown_field,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "unknown field `colour`",
    );
    let huge = server
        .post_raw(
            "/v1/collections",
            format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20)),
        )
        .await;
    assert_error(
        &huge,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "over 1048576 bytes",
    );

    let listed = server.get("/v1/collections").await;
    assert_eq!(listed.1["collections"][0]["name"], "docs", "{listed:?}");
    let models = server.get("/v1/models").await;
    assert_eq!(models.1["data"][0]["id"], "docs", "{models:?}");
    assert_eq!(
        server.delete("/v1/collections/docs").await.0,
        StatusCode::NO_CONTENT
    );
    let gone = server.delete("/v1/collections/docs").await;
    assert_error(
        &gone,
        StatusCode::NOT_FOUND,
        "not_found",
        "no collection named \"docs\"",
    );
    let documents = server.get("/v1/collections/docs/documents").await;
    assert_error(&documents, StatusCode::NOT_FOUND, "not_found", "\"docs\"");
}

#[tokio::test]
async fn uploads_are_ingested_listed_searched_and_deleted() {
    let limits = HttpLimits {
        max_upload_bytes: 4096,
        ..HttpLimits::default()
    };
    let server = Server::start(None, limits).await;
    server
        .post_json("/v1/collections", json!({"name": "docs"}))
        .await;
    let added = server.upload("docs", "pump.md", GUIDE.as_bytes()).await;
    assert_eq!(added.0, StatusCode::CREATED, "{added:?}");
    assert_eq!(added.1["status"], "added");
    assert_eq!(added.1["title"], "Pump manual");
    let again = server.upload("docs", "pump.md", GUIDE.as_bytes()).await;
    assert_eq!(
        (again.0, &again.1["status"]),
        (StatusCode::OK, &json!("unchanged"))
    );

    assert_error(
        &server.upload("docs", "photo.png", b"\x89PNG").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable_document",
        "photo.png: unsupported file type .png; supported: .txt",
    );
    assert_error(
        &server.upload("docs", "empty.md", b"\n\n").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable_document",
        "empty document",
    );
    assert_error(
        &server.upload("docs", "big.txt", &vec![b'a'; 5000]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "over 4096 bytes",
    );
    assert_error(
        &server.upload("nope", "a.md", b"text").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "\"nope\"",
    );
    let no_name = server
        .post_raw("/v1/collections/docs/documents", "text")
        .await;
    assert_error(
        &no_name,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "?name=FILE",
    );

    let found = server
        .post_json(
            "/v1/search",
            json!({"collection": "docs", "query": "how often should the pump get oil", "k": 2}),
        )
        .await;
    assert_eq!(found.0, StatusCode::OK, "{found:?}");
    assert_eq!(found.1["mode"], "hybrid");
    let first = &found.1["results"][0];
    assert_eq!(first["document"], "pump.md", "{found:?}");
    assert_eq!(
        first["location"]["heading_path"],
        json!(["Pump manual", "Maintenance"])
    );
    assert_eq!(first["location_label"], "Pump manual > Maintenance");
    assert!(first["text"].as_str().unwrap().contains("200 hours"));
    assert!(first["score"].as_f64().unwrap() > 0.0);
    assert_eq!(first["bm25_rank"], 1);
    assert_eq!(first["dense_rank"], 1);

    for (body, needle) in [
        (
            json!({"collection": "docs", "query": "x", "k": 101}),
            "1 to 100",
        ),
        (
            json!({"collection": "docs", "query": "  "}),
            "query is empty",
        ),
        (
            json!({"collection": "docs", "query": "x", "mode": "fuzzy"}),
            "unknown variant `fuzzy`",
        ),
        (json!({"collection": "docs"}), "missing field `query`"),
        (
            json!({"collection": "docs", "query": "x", "filters": {"kind": "docx"}}),
            "unknown variant `docx`",
        ),
    ] {
        let got = server.post_json("/v1/search", body).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "bad_request", needle);
    }
    let got = server
        .post_json("/v1/search", json!({"collection": "nope", "query": "x"}))
        .await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", "\"nope\"");
    let filtered = server
        .post_json(
            "/v1/search",
            json!({"collection": "docs", "query": "pump", "mode": "bm25", "filters": {"kind": "pdf"}}),
        )
        .await;
    assert_eq!(filtered.1["results"], json!([]), "{filtered:?}");

    let listed = server.get("/v1/collections/docs/documents").await;
    let id = listed.1["documents"][0]["id"].as_i64().unwrap();
    assert_eq!(listed.1["documents"][0]["chunk_count"], 3, "{listed:?}");
    assert_error(
        &server.delete("/v1/collections/docs/documents/abc").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "not a number",
    );
    assert_eq!(
        server
            .delete(&format!("/v1/collections/docs/documents/{id}"))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &server
            .delete(&format!("/v1/collections/docs/documents/{id}"))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no document {id}"),
    );
}

/// `event: NAME` / `data: JSON` pairs of a server-sent event stream.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_string();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                }
            }
            (
                name,
                serde_json::from_str(&data).unwrap_or(Value::String(data)),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_folder_ingest_streams_progress_errors_and_totals() {
    let server = Server::start(None, HttpLimits::default()).await;
    server
        .post_json("/v1/collections", json!({"name": "docs"}))
        .await;
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("pump.md"), GUIDE).unwrap();
    std::fs::write(folder.path().join("notes.txt"), "Valves need grease.").unwrap();
    std::fs::write(folder.path().join("broken.pdf"), "%PDF-1.4 nothing else").unwrap();
    let path = folder.path().to_string_lossy().into_owned();

    let response = server
        .client
        .post(server.url("/v1/collections/docs/ingest"))
        .json(&json!({"path": path}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec!["progress", "file_error", "progress", "progress", "done"],
        "{events:?}"
    );
    assert_eq!(events[0].1["files_total"], 3);
    assert!(events[1].1["message"]
        .as_str()
        .unwrap()
        .contains("unsupported or corrupt PDF"));
    assert_eq!(events[3].1["files_done"], 3);
    let done = &events[4].1;
    assert_eq!(
        (done["added"].as_u64(), done["failed"].as_u64()),
        (Some(2), Some(1)),
        "{done}"
    );
    assert_eq!(done["chunks_added"], events[3].1["chunks"]);

    let missing = server
        .post_json(
            "/v1/collections/docs/ingest",
            json!({"path": format!("{path}/nowhere")}),
        )
        .await;
    assert_error(
        &missing,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "is the drive mounted?",
    );
    let unknown = server
        .post_json("/v1/collections/nope/ingest", json!({"path": path}))
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found", "\"nope\"");
    let no_path = server
        .post_json("/v1/collections/docs/ingest", json!({}))
        .await;
    assert_error(
        &no_path,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "missing field `path`",
    );
}

/// STAND-IN chat engine: records each request body; answers "Pumps need oil [1]." whole, or
/// streamed in three chunks.
async fn stand_in_chat() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |body: Bytes| {
            let record = record.clone();
            async move {
                let request: Value = serde_json::from_slice(&body).unwrap();
                record.lock().unwrap().push(request.clone());
                if request["stream"] == true {
                    let mut text = String::new();
                    for piece in ["Pumps ", "need oil ", "[1]."] {
                        let chunk = json!({"id": "c1", "object": "chat.completion.chunk",
                            "created": 1, "model": request["model"],
                            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                        text.push_str(&format!("data: {chunk}\n\n"));
                    }
                    text.push_str("data: [DONE]\n\n");
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(axum::body::Body::from(text))
                        .unwrap()
                } else {
                    Json(json!({"id": "c1", "object": "chat.completion", "created": 1,
                        "model": request["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "Pumps need oil [1]."}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}))
                    .into_response()
                }
            }
        }),
    );
    (serve(app).await, seen)
}

#[tokio::test]
async fn chat_completions_retrieve_prompt_and_cite() {
    let (chat_base, seen) = stand_in_chat().await;
    let server = Server::start(
        Some(OpenAiChat::new(chat_base, "smollm2")),
        HttpLimits::default(),
    )
    .await;
    server
        .post_json("/v1/collections", json!({"name": "docs"}))
        .await;
    server.upload("docs", "pump.md", GUIDE.as_bytes()).await;

    let question = json!({"role": "user", "content": "How often does the pump need oil?"});
    let whole = server
        .post_json(
            "/v1/chat/completions",
            json!({"model": "docs", "messages": [question], "temperature": 0.2, "max_tokens": 64}),
        )
        .await;
    assert_eq!(whole.0, StatusCode::OK, "{whole:?}");
    assert_eq!(
        whole.1["choices"][0]["message"]["content"],
        "Pumps need oil [1]."
    );
    let citation = &whole.1["citations"][0];
    assert_eq!(citation["index"], 1);
    assert_eq!(citation["document"], "pump.md");
    assert_eq!(citation["title"], "Pump manual");
    assert_eq!(citation["location"], "Pump manual > Maintenance");
    assert!(citation["snippet"].as_str().unwrap().contains("200 hours"));
    assert!(
        citation["chunk_id"].is_i64() && citation["score"].is_f64(),
        "{citation}"
    );

    let sent = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["model"], "smollm2");
    assert_eq!(sent["temperature"], 0.2, "unknown fields pass through");
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["stream"], false);
    let system = sent["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("cite the sources") || system.contains("Cite the sources"),
        "{system}"
    );
    assert!(
        system.contains("[1] Pump manual (pump.md; Pump manual > Maintenance)"),
        "{system}"
    );
    assert_eq!(sent["messages"][1], question);

    // Streamed, with the collection in the header and `model` naming something else.
    let response = server
        .client
        .post(server.url("/v1/chat/completions"))
        .header("X-Flowers-Collection", "docs")
        .json(&json!({"model": "anything", "stream": true, "messages": [question]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect();
    assert_eq!(data.len(), 4, "{text}");
    assert_eq!(data[3], "[DONE]");
    let chunks: Vec<Value> = data[..3]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["citations"][0]["document"], "pump.md", "{text}");
    assert!(chunks[1].get("citations").is_none());
    let streamed: String = chunks
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, "Pumps need oil [1].");
    assert_eq!(seen.lock().unwrap().last().unwrap()["stream"], true);

    // Bad requests, each with its reason.
    for (body, status, needle) in [
        (
            json!({"model": "nope", "messages": [question]}),
            StatusCode::NOT_FOUND,
            "\"nope\"",
        ),
        (
            json!({"model": "docs"}),
            StatusCode::BAD_REQUEST,
            "messages must be a non-empty array",
        ),
        (
            json!({"model": "docs", "messages": [{"role": "assistant", "content": "hi"}]}),
            StatusCode::BAD_REQUEST,
            "no user message",
        ),
        (
            json!({"messages": [question]}),
            StatusCode::BAD_REQUEST,
            "name the collection",
        ),
        (
            json!({"model": "docs", "messages": [{"content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "messages[0] needs a string \"role\"",
        ),
        (
            json!({"model": "docs", "messages": [question], "max_tokens": -3}),
            StatusCode::BAD_REQUEST,
            "max_tokens must be a positive integer",
        ),
        (
            json!({"model": "docs", "messages": [question], "max_tokens": 9000}),
            StatusCode::BAD_REQUEST,
            "do not fit the chat model's context of 4096 tokens",
        ),
        (
            json!([1, 2]),
            StatusCode::BAD_REQUEST,
            "must be a JSON object",
        ),
    ] {
        let got = server.post_json("/v1/chat/completions", body.clone()).await;
        assert_eq!(got.0, status, "{body}: {got:?}");
        assert!(
            got.1["message"].as_str().unwrap().contains(needle),
            "{body}: {got:?}"
        );
    }
    let malformed = server
        .post_raw("/v1/chat/completions", "{\"model\": \"docs\",")
        .await;
    assert_error(
        &malformed,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "body is not JSON",
    );
}

#[tokio::test]
async fn an_unreachable_or_missing_chat_engine_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dead = OpenAiChat::new(format!("http://127.0.0.1:{port}"), "smollm2");
    let server = Server::start(Some(dead), HttpLimits::default()).await;
    server
        .post_json("/v1/collections", json!({"name": "docs"}))
        .await;
    let body = json!({"model": "docs", "messages": [{"role": "user", "content": "hi"}]});
    let got = server.post_json("/v1/chat/completions", body.clone()).await;
    assert_error(
        &got,
        StatusCode::BAD_GATEWAY,
        "upstream",
        &format!("cannot reach http://127.0.0.1:{port}"),
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let got = server.post_json("/v1/chat/completions", streamed).await;
    assert_error(&got, StatusCode::BAD_GATEWAY, "upstream", "chat engine");

    // An engine that refuses the request as the client's fault: its status and reason come
    // back; one that answers garbage is a 502.
    for (status, body, expect, needle) in [
        (
            400u16,
            r#"{"code": "bad_request", "message": "temperature must be <= 2"}"#,
            StatusCode::BAD_REQUEST,
            "temperature must be <= 2",
        ),
        (
            200,
            "not json",
            StatusCode::BAD_GATEWAY,
            "not a chat completion",
        ),
        (
            500,
            "boom",
            StatusCode::BAD_GATEWAY,
            "500 Internal Server Error: boom",
        ),
    ] {
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move || async move { (StatusCode::from_u16(status).unwrap(), body) }),
        );
        let server = Server::start(
            Some(OpenAiChat::new(serve(app).await, "m")),
            HttpLimits::default(),
        )
        .await;
        server
            .post_json("/v1/collections", json!({"name": "docs"}))
            .await;
        let got = server
            .post_json("/v1/chat/completions", body_for_docs())
            .await;
        assert_eq!(got.0, expect, "{got:?}");
        assert!(
            got.1["message"].as_str().unwrap().contains(needle),
            "{got:?}"
        );
    }

    let without = Server::start(None, HttpLimits::default()).await;
    without
        .post_json("/v1/collections", json!({"name": "docs"}))
        .await;
    let got = without.post_json("/v1/chat/completions", body).await;
    assert_error(
        &got,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "no chat engine",
    );
}

fn body_for_docs() -> Value {
    json!({"model": "docs", "messages": [{"role": "user", "content": "hi"}]})
}

/// The official OpenAI Python client, unchanged, against the RAG route. It is not in
/// scripts/setup's requirements yet: the test runs it when the venv has it and says loudly
/// when it does not (FLOWERS_TEST_OPENAI=1 makes its absence a failure).
#[tokio::test]
async fn the_official_openai_python_client_works_unchanged() {
    let python = std::env::var_os("HOME")
        .map(|h| std::path::PathBuf::from(h).join(".cache/flowers/venv/bin/python3"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "python3".into());
    let has_openai = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openai {
        assert!(
            std::env::var_os("FLOWERS_TEST_OPENAI").is_none(),
            "FLOWERS_TEST_OPENAI is set but {} cannot import openai",
            python.display()
        );
        eprintln!(
            "NOT RUN: the OpenAI Python client test needs `pip install openai` in {}",
            python.display()
        );
        return;
    }
    let (chat_base, _seen) = stand_in_chat().await;
    let server = Server::start(
        Some(OpenAiChat::new(chat_base, "smollm2")),
        HttpLimits::default(),
    )
    .await;
    server
        .post_json("/v1/collections", json!({"name": "docs"}))
        .await;
    server.upload("docs", "pump.md", GUIDE.as_bytes()).await;
    let script = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0, timeout=60)
question = [{"role": "user", "content": "How often does the pump need oil?"}]
whole = client.chat.completions.create(model="docs", messages=question)
extra = whole.model_extra or {}
stream = client.chat.completions.create(model="docs", messages=question, stream=True)
pieces, first_citations = [], None
for chunk in stream:
    if first_citations is None:
        first_citations = (chunk.model_extra or {}).get("citations")
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
try:
    client.chat.completions.create(model="nope", messages=question)
    not_found = None
except openai.NotFoundError as error:
    not_found = error.status_code
print(json.dumps({"content": whole.choices[0].message.content,
                  "citations": extra.get("citations"), "streamed": "".join(pieces),
                  "first_citations": first_citations, "not_found": not_found}))
"#;
    let base = server.base.clone();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .args(["-c", script, &base])
            .output(),
    )
    .await
    .expect("the python client finished")
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["content"], "Pumps need oil [1].");
    assert_eq!(result["streamed"], "Pumps need oil [1].");
    assert_eq!(result["citations"][0]["document"], "pump.md", "{result}");
    assert_eq!(result["first_citations"][0]["index"], 1, "{result}");
    assert_eq!(result["not_found"], 404);
}
