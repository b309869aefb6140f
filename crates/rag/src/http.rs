//! The RAG service's HTTP API, every route under a configurable prefix (the gateway routes
//! `/rag` to this service without stripping it). Errors are the project's `{code, message}`
//! ([`ApiError`]): 4xx when the request was wrong, 5xx when we or an engine failed.
//!
//! - `GET {p}/v1/collections`, `POST {p}/v1/collections` `{"name"}`, `DELETE {p}/v1/collections/{name}`
//! - `GET {p}/v1/collections/{c}/documents`, `DELETE {p}/v1/collections/{c}/documents/{id}`
//! - `POST {p}/v1/collections/{c}/documents?name=FILE`: the raw file as the body
//! - `POST {p}/v1/collections/{c}/ingest` `{"path"}`: a folder on this machine, answered with
//!   server-sent events `progress`, `file_error`, `deleted`, then `done` (or `error`)
//! - `POST {p}/v1/search` `{collection, query, k, mode, filters}`
//! - `POST {p}/v1/chat/completions`: OpenAI's, with the collection as `model` (or the
//!   `X-Flowers-Collection` header) and a `citations` field added
//! - `GET {p}/v1/models`: the collections, as OpenAI's model list

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use api_types::ApiError;

use crate::chat::OpenAiChat;
use crate::embed::Embed;
use crate::library::{Collection, Document, FolderReport, IngestEvent, IngestOutcome, Library};
use crate::prompt::{self, content_text, Citation};
use crate::search::{Filters, Hit, Mode, SearchRequest};
use crate::{Error, IngestStatus};

/// The header that names the collection of a chat request when `model` names something else.
pub const COLLECTION_HEADER: &str = "x-flowers-collection";

/// Sizes the routes accept.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Uploads larger than this are refused with 413 (default 50 MiB, the extractor's cap).
    pub max_upload_bytes: usize,
    /// JSON request bodies larger than this are refused with 413 (default 1 MiB).
    pub max_json_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_upload_bytes: 50 * 1024 * 1024,
            max_json_bytes: 1024 * 1024,
        }
    }
}

/// Everything the routes need besides the library.
#[derive(Clone)]
pub struct RagHttpOptions {
    /// Prepended to every route: `""` or e.g. `"/rag"` (no trailing slash).
    pub prefix: String,
    /// The chat engine; without it the chat route answers 503.
    pub chat: Option<OpenAiChat>,
    /// The embedding engine (ingest, dense and hybrid search).
    pub embed: Arc<dyn Embed>,
    pub limits: HttpLimits,
    /// The chat model's context window in tokens (default 4096: SmolLM2 under candle).
    pub context_tokens: usize,
    /// The answer's length when a request gives no `max_tokens` (default 512).
    pub default_max_tokens: usize,
    /// Chunks retrieved for a chat request (default 5).
    pub chat_k: usize,
}

impl RagHttpOptions {
    pub fn new(embed: Arc<dyn Embed>) -> RagHttpOptions {
        RagHttpOptions {
            prefix: String::new(),
            chat: None,
            embed,
            limits: HttpLimits::default(),
            context_tokens: 4096,
            default_max_tokens: 512,
            chat_k: 5,
        }
    }
}

#[derive(Clone)]
struct Served {
    library: Library,
    options: Arc<RagHttpOptions>,
}

/// The routes, ready to be served (or merged into a larger router).
pub fn router(library: Library, options: RagHttpOptions) -> Router {
    let p = options.prefix.trim_end_matches('/').to_string();
    let json_limit = DefaultBodyLimit::max(options.limits.max_json_bytes);
    let upload_limit = DefaultBodyLimit::max(options.limits.max_upload_bytes);
    let served = Served {
        library,
        options: Arc::new(options),
    };
    Router::new()
        .route(
            &format!("{p}/v1/collections"),
            get(list_collections).post(create_collection),
        )
        .route(
            &format!("{p}/v1/collections/{{name}}"),
            delete(delete_collection),
        )
        .route(
            &format!("{p}/v1/collections/{{name}}/documents"),
            get(list_documents).post(upload_document.layer(upload_limit)),
        )
        .route(
            &format!("{p}/v1/collections/{{name}}/documents/{{id}}"),
            delete(delete_document),
        )
        .route(
            &format!("{p}/v1/collections/{{name}}/ingest"),
            post(ingest_folder),
        )
        .route(&format!("{p}/v1/search"), post(search))
        .route(&format!("{p}/v1/chat/completions"), post(chat_completions))
        .route(&format!("{p}/v1/models"), get(list_models))
        .layer(json_limit)
        .with_state(served)
}

/// An error answer.
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        use crate::extract::ExtractError;
        let message = error.to_string();
        match &error {
            Error::UnknownCollection(_) | Error::UnknownDocument { .. } => {
                Failure::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            Error::CollectionExists(_) => Failure::new(StatusCode::CONFLICT, "conflict", message),
            Error::Document {
                error: ExtractError::TooLarge { .. },
                ..
            } => Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message),
            Error::Document { .. } => Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable_document",
                message,
            ),
            Error::InvalidName { .. } | Error::InvalidRequest(_) | Error::Folder { .. } => {
                Failure::bad_request(message)
            }
            Error::EmbeddingMismatch { .. } | Error::EmbeddingVersionMismatch { .. } => {
                Failure::new(StatusCode::CONFLICT, "embedding_mismatch", message)
            }
            Error::Io { .. } => Failure::bad_request(message),
            Error::Embed(_) | Error::Chat(_) => {
                // The engine's side: say which, with its reason; nothing of ours leaks.
                Failure::new(StatusCode::BAD_GATEWAY, "upstream", message)
            }
            Error::ChatRejected { status, .. } => Failure::new(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
                "bad_request",
                message,
            ),
            Error::Open { .. }
            | Error::Sqlite(_)
            | Error::Index(_)
            | Error::IndexOpen { .. }
            | Error::NewerSchema { .. }
            | Error::Corrupt(_) => {
                tracing::error!(%error, "RAG internal error");
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error in the RAG service; its log has the details",
                )
            }
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

type Answer<T> = Result<T, Failure>;

/// The body, refusing oversized ones with 413 and saying the limit.
fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize, what: &str) -> Answer<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("{what} is over {limit} bytes"),
            )
        } else {
            Failure::bad_request(format!("cannot read the request body: {rejection}"))
        }
    })
}

/// A JSON body of type `T`, with serde's reason (and place) when it is not one.
fn parse_json<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    expected: &str,
) -> Answer<T> {
    let bytes = body_bytes(body, limit, "the request body")?;
    serde_json::from_slice(&bytes).map_err(|error| {
        Failure::bad_request(format!("body is not valid: {error}; expected {expected}"))
    })
}

#[derive(Serialize)]
struct CollectionsAnswer {
    collections: Vec<Collection>,
}

async fn list_collections(State(served): State<Served>) -> Answer<Json<CollectionsAnswer>> {
    Ok(Json(CollectionsAnswer {
        collections: served.library.list_collections().await?,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCollection {
    name: String,
}

async fn create_collection(
    State(served): State<Served>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, Json<Collection>)> {
    let request: CreateCollection = parse_json(
        body,
        served.options.limits.max_json_bytes,
        "{\"name\": \"docs\"}",
    )?;
    let collection = served.library.create_collection(&request.name).await?;
    Ok((StatusCode::CREATED, Json(collection)))
}

async fn delete_collection(
    State(served): State<Served>,
    Path(name): Path<String>,
) -> Answer<StatusCode> {
    served.library.delete_collection(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct DocumentsAnswer {
    documents: Vec<Document>,
}

async fn list_documents(
    State(served): State<Served>,
    Path(name): Path<String>,
) -> Answer<Json<DocumentsAnswer>> {
    Ok(Json(DocumentsAnswer {
        documents: served.library.list_documents(&name).await?,
    }))
}

async fn delete_document(
    State(served): State<Served>,
    Path((name, id)): Path<(String, String)>,
) -> Answer<StatusCode> {
    let id: i64 = id.parse().map_err(|_| {
        Failure::bad_request(format!(
            "document id {id:?} is not a number; the documents route lists the ids"
        ))
    })?;
    served.library.delete_document(&name, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

async fn upload_document(
    State(served): State<Served>,
    Path(collection): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, Json<IngestOutcome>)> {
    let name = query.name.filter(|n| !n.is_empty()).ok_or_else(|| {
        Failure::bad_request(
            "give the file's name as ?name=FILE (its extension decides how it is read)",
        )
    })?;
    let bytes = body_bytes(
        body,
        served.options.limits.max_upload_bytes,
        &format!("the upload {name:?}"),
    )?;
    let outcome = served
        .library
        .ingest_bytes(
            &collection,
            &name,
            bytes.to_vec(),
            served.options.embed.as_ref(),
        )
        .await?;
    let status = if outcome.status == IngestStatus::Unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(outcome)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestRequest {
    path: String,
}

/// The events of a folder ingest, each as `event: NAME` and its JSON as `data`.
fn sse_event(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_string());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

async fn ingest_folder(
    State(served): State<Served>,
    Path(collection): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Response> {
    let request: IngestRequest = parse_json(
        body,
        served.options.limits.max_json_bytes,
        "{\"path\": \"/absolute/folder\"}",
    )?;
    if request.path.trim().is_empty() {
        return Err(Failure::bad_request(
            "path is empty: name a folder on the RAG service's machine",
        ));
    }
    // Errors that need no walk are answered as errors, before the event stream starts.
    served.library.list_documents(&collection).await.map(drop)?;
    let path = std::path::PathBuf::from(&request.path);
    match tokio::fs::metadata(&path).await {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => {
            return Err(Failure::bad_request(format!("{}: not a folder", path.display())));
        }
        Err(error) => {
            return Err(Failure::bad_request(format!(
                "folder {}: cannot open it: {error} (is the drive mounted? the path is read on the RAG service's machine)",
                path.display()
            )))
        }
    }

    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    // The ingest runs as its own task: a client that goes away stops receiving events, not
    // the ingest, which finishes (and commits) every file it started.
    tokio::spawn(async move {
        let events = sender.clone();
        let result = served
            .library
            .ingest_folder(
                &collection,
                &path,
                served.options.embed.as_ref(),
                move |event| {
                    let name = match &event {
                        IngestEvent::Started { .. } | IngestEvent::Progress { .. } => "progress",
                        IngestEvent::FileError { .. } => "file_error",
                        IngestEvent::Deleted { .. } => "deleted",
                    };
                    let _ = events.send(sse_event(name, &event));
                },
            )
            .await;
        let last = match result {
            Ok(report) => sse_event(
                "done",
                &DoneEvent {
                    event: "done",
                    report,
                },
            ),
            Err(error) => {
                let failure = Failure::from(error);
                sse_event(
                    "error",
                    &ApiError {
                        code: failure.code.to_string(),
                        message: failure.message,
                    },
                )
            }
        };
        let _ = sender.send(last);
    });
    let stream =
        tokio_stream::wrappers::UnboundedReceiverStream::new(receiver).map(Ok::<Bytes, Infallible>);
    Ok(event_stream(Body::from_stream(stream)))
}

#[derive(Serialize)]
struct DoneEvent {
    event: &'static str,
    #[serde(flatten)]
    report: FolderReport,
}

fn event_stream(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    collection: String,
    query: String,
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    filters: Filters,
}

fn default_k() -> usize {
    10
}

#[derive(Serialize)]
struct SearchAnswer {
    collection: String,
    mode: Mode,
    results: Vec<Hit>,
}

async fn search(
    State(served): State<Served>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Json<SearchAnswer>> {
    let request: SearchBody = parse_json(
        body,
        served.options.limits.max_json_bytes,
        "{\"collection\": \"docs\", \"query\": \"...\", \"k\": 10, \"mode\": \"hybrid\"|\"hybrid_rrf\"|\"bm25\"|\"dense\", \
         \"filters\": {\"source_prefix\", \"kind\", \"document_ids\"}}",
    )?;
    let request = SearchRequest {
        collection: request.collection,
        query: request.query,
        k: request.k,
        mode: request.mode,
        filters: request.filters,
    };
    let results = served
        .library
        .search(&request, Some(served.options.embed.as_ref()))
        .await?;
    Ok(Json(SearchAnswer {
        collection: request.collection,
        mode: request.mode,
        results,
    }))
}

async fn list_models(State(served): State<Served>) -> Answer<Json<Value>> {
    let collections = served.library.list_collections().await?;
    Ok(Json(json!({
        "object": "list",
        "data": collections.iter().map(|c| json!({
            "id": c.name,
            "object": "model",
            "created": c.created_ms / 1000,
            "owned_by": "flowers-rag",
        })).collect::<Vec<_>>(),
    })))
}

/// The checked parts of a chat request; the rest of its fields go to the engine unchanged.
struct ChatRequest {
    body: serde_json::Map<String, Value>,
    collection: String,
    question: String,
    stream: bool,
    max_tokens: usize,
}

fn check_chat_request(
    bytes: &[u8],
    headers: &HeaderMap,
    options: &RagHttpOptions,
) -> Answer<ChatRequest> {
    let body: Value = serde_json::from_slice(bytes)
        .map_err(|error| Failure::bad_request(format!("body is not JSON: {error}")))?;
    let Value::Object(body) = body else {
        return Err(Failure::bad_request(
            "body must be a JSON object: {\"model\": COLLECTION, \"messages\": [...]}",
        ));
    };
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| Failure::bad_request("messages must be a non-empty array"))?;
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        let content = message.get("content").map(content_text);
        if role.is_none() || matches!(content, Some(None)) {
            return Err(Failure::bad_request(format!(
                "messages[{index}] needs a string \"role\" and a \"content\" that is a string or an array of text parts"
            )));
        }
    }
    let question = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .and_then(content_text)
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| {
            Failure::bad_request(
                "no user message with text: the last one is the question searched for",
            )
        })?;
    let header = headers
        .get(COLLECTION_HEADER)
        .map(|value| {
            value.to_str().map(str::to_string).map_err(|_| {
                Failure::bad_request(format!("the {COLLECTION_HEADER} header is not text"))
            })
        })
        .transpose()?;
    let collection = header
        .or_else(|| {
            body.get("model")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            Failure::bad_request(format!(
                "name the collection to answer from in \"model\" or the {COLLECTION_HEADER} header"
            ))
        })?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(Failure::bad_request("stream must be true or false")),
    };
    let max_tokens = match body
        .get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
    {
        None | Some(Value::Null) => options.default_max_tokens,
        Some(value) => value
            .as_u64()
            .filter(|n| *n >= 1)
            .map(|n| n as usize)
            .ok_or_else(|| Failure::bad_request("max_tokens must be a positive integer"))?,
    };
    Ok(ChatRequest {
        body,
        collection,
        question,
        stream,
        max_tokens,
    })
}

async fn chat_completions(
    State(served): State<Served>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Response> {
    let options = served.options.clone();
    let bytes = body_bytes(body, options.limits.max_json_bytes, "the request body")?;
    let request = check_chat_request(&bytes, &headers, &options)?;
    let chat = options.chat.clone().ok_or_else(|| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this RAG service has no chat engine configured; /v1/search still works",
        )
    })?;
    let hits = served
        .library
        .search(
            &SearchRequest {
                collection: request.collection.clone(),
                query: request.question.clone(),
                k: options.chat_k,
                mode: Mode::Hybrid,
                filters: Filters::default(),
            },
            Some(options.embed.as_ref()),
        )
        .await?;
    let conversation: Vec<Value> = request.body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let built = prompt::build(
        &conversation,
        &hits,
        options.context_tokens,
        request.max_tokens,
    )?;
    let mut upstream = request.body.clone();
    upstream.insert("messages".into(), Value::Array(built.messages));
    upstream.remove("max_completion_tokens");
    upstream.insert("max_tokens".into(), json!(request.max_tokens));
    let citations = built.citations;

    if !request.stream {
        let mut answer = chat.complete(Value::Object(upstream)).await?;
        if let Value::Object(fields) = &mut answer {
            fields.insert("citations".into(), citations_json(&citations));
        }
        return Ok(Json(answer).into_response());
    }

    let chunks = chat.stream(Value::Object(upstream)).await?;
    let mut citations = Some(citations);
    let events = chunks
        .map(move |item| match item {
            Ok(mut chunk) => {
                if let (Some(citations), Value::Object(fields)) = (citations.take(), &mut chunk) {
                    fields.insert("citations".into(), citations_json(&citations));
                }
                Bytes::from(format!("data: {chunk}\n\n"))
            }
            Err(error) => {
                // Mid-answer: the status is sent already, so the error is an event.
                let failure = Failure::from(error);
                let body = json!({"error": {"code": failure.code, "message": failure.message}});
                Bytes::from(format!("data: {body}\n\n"))
            }
        })
        .chain(futures::stream::once(async {
            Bytes::from_static(b"data: [DONE]\n\n")
        }))
        .map(Ok::<Bytes, Infallible>);
    Ok(event_stream(Body::from_stream(events)))
}

fn citations_json(citations: &[Citation]) -> Value {
    serde_json::to_value(citations).unwrap_or(Value::Array(Vec::new()))
}
