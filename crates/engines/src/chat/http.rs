//! The OpenAI-compatible HTTP API over a [`ChatModel`]: `POST /v1/chat/completions`,
//! `POST /v1/completions` (both with server-sent-event streaming) and `GET /v1/models`.
//!
//! One engine serves one model, so the request's `model` field is accepted whatever it says
//! and responses name the model actually loaded. Fields this engine does not know are ignored,
//! as the official clients send extras; known fields of the wrong type or out of range are a
//! 400 naming the field. A client that disconnects drops the response, which drops the
//! [`GenerationStream`] and cancels the generation at its next step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use api_types::ApiError;

use super::{
    ChatMessage, ChatModel, FinishReason, GenerationEvent, GenerationParams, GenerationStream,
    Role, Usage,
};
use crate::Error;

/// Limits of the chat routes.
#[derive(Debug, Clone, Copy)]
pub struct ChatHttpLimits {
    /// Larger request bodies are refused with 413 before they are parsed. The default, 1 MiB,
    /// is far more text than the 4096-token context can hold.
    pub max_body_bytes: usize,
    /// The `Retry-After` of a 503 when the queue is full.
    pub retry_after_seconds: u64,
}

impl Default for ChatHttpLimits {
    fn default() -> Self {
        ChatHttpLimits {
            max_body_bytes: 1024 * 1024,
            retry_after_seconds: 1,
        }
    }
}

/// The chat routes over a loaded model.
pub fn router(model: Arc<ChatModel>, limits: ChatHttpLimits) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(Served { model, limits })
}

#[derive(Clone)]
struct Served {
    model: Arc<ChatModel>,
    limits: ChatHttpLimits,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleIn {
    System,
    /// OpenAI's newer name for the system role, sent by current clients.
    Developer,
    User,
    Assistant,
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ContentIn {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct MessageIn {
    role: RoleIn,
    #[serde(default)]
    content: Option<ContentIn>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<MessageIn>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    /// OpenAI's newer name for max_tokens; it wins when both are given.
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stop: Option<StopIn>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    /// Refused when used: see [`refuse_unsupported`].
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    logit_bias: Option<Value>,
    #[serde(default)]
    top_logprobs: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: PromptIn,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    best_of: Option<u64>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    stop: Option<StopIn>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    /// Refused when used: see [`refuse_unsupported`].
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    logit_bias: Option<Value>,
}

struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_seconds: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
            retry_after_seconds: None,
        }
    }
    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// Our fault: the detail goes to the log, not to the client.
    fn internal(detail: impl std::fmt::Display) -> Failure {
        tracing::error!(%detail, "chat engine internal error");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error in the chat engine; its log has the details",
        )
    }
    fn from_error(error: Error, limits: &ChatHttpLimits) -> Failure {
        match error {
            Error::InvalidParameter { .. } => Failure::bad_request(error.to_string()),
            Error::Template(detail) => Failure::bad_request(format!(
                "the model's chat template refused these messages: {detail}"
            )),
            Error::PromptTooLong { .. } => Failure::new(
                StatusCode::BAD_REQUEST,
                "context_length_exceeded",
                error.to_string(),
            ),
            Error::Overloaded { .. } => Failure {
                retry_after_seconds: Some(limits.retry_after_seconds),
                ..Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    error.to_string(),
                )
            },
            Error::Stopped => Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                error.to_string(),
            ),
            other => Failure::internal(other),
        }
    }
    fn body(&self) -> ApiError {
        ApiError {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

fn read_body(
    body: Result<Bytes, BytesRejection>,
    limits: &ChatHttpLimits,
) -> Result<Bytes, Failure> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "request body is over {} bytes; send a shorter conversation",
                    limits.max_body_bytes
                ),
            )
        } else {
            Failure::bad_request(format!("cannot read the request body: {rejection}"))
        }
    })
}

/// Parses a request, naming the field that is wrong (`messages[1].role: unknown variant…`).
fn parse<T: DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, Failure> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Failure::bad_request(format!(
                "body is not valid JSON ({inner}); expected {expected}"
            ))
        } else if path == "." {
            Failure::bad_request(format!("{inner}; expected {expected}"))
        } else {
            Failure::bad_request(format!("{path}: {inner}"))
        }
    })
}

fn stops(stop: Option<StopIn>) -> Vec<String> {
    match stop {
        None => Vec::new(),
        Some(StopIn::One(stop)) => vec![stop],
        Some(StopIn::Many(stops)) => stops,
    }
}

/// The sampling fields both kinds of request share.
struct SamplingIn {
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<u64>,
    stop: Option<StopIn>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
}

/// OpenAI fields this engine cannot honour: refused by name when they ask for something, so
/// that a client never takes an answer made without them for one made with them. Absent,
/// null, false, 0 or empty is no request.
fn refuse_unsupported(fields: &[(&str, &Option<Value>)]) -> Result<(), Failure> {
    for (name, value) in fields {
        let asked = match value {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(Value::Array(items)) => !items.is_empty(),
            Some(Value::Object(map)) if *name == "response_format" => {
                map.get("type").and_then(Value::as_str) != Some("text")
            }
            Some(Value::Object(map)) => !map.is_empty(),
            Some(_) => true,
        };
        if asked {
            let why = match *name {
                "tools" | "functions" => {
                    "this engine does not call tools; send the conversation without them"
                }
                "response_format" => {
                    "this engine answers in plain text only ({\"type\": \"text\"})"
                }
                _ => "this engine does not support it",
            };
            return Err(Failure::bad_request(format!("{name}: {why}")));
        }
    }
    Ok(())
}

fn params(sampling: SamplingIn) -> Result<GenerationParams, Failure> {
    if let Some(n) = sampling.n.filter(|&n| n != 1) {
        return Err(Failure::bad_request(format!(
            "n is {n}; this engine gives one choice per request (n = 1)"
        )));
    }
    let defaults = GenerationParams::default();
    let params = GenerationParams {
        max_tokens: sampling
            .max_tokens
            .map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
        temperature: sampling.temperature.unwrap_or(defaults.temperature),
        top_p: sampling.top_p.unwrap_or(defaults.top_p),
        stop: stops(sampling.stop),
        // A negative seed is as good a seed as any: keep its bits.
        seed: sampling.seed.map(|seed| seed as u64),
        presence_penalty: sampling
            .presence_penalty
            .unwrap_or(defaults.presence_penalty),
        frequency_penalty: sampling
            .frequency_penalty
            .unwrap_or(defaults.frequency_penalty),
    };
    params
        .check()
        .map_err(|error| Failure::bad_request(error.to_string()))?;
    Ok(params)
}

fn messages(messages: Vec<MessageIn>) -> Result<Vec<ChatMessage>, Failure> {
    if messages.is_empty() {
        return Err(Failure::bad_request(
            "messages is empty; send at least one message",
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| {
            let role = match message.role {
                RoleIn::System | RoleIn::Developer => Role::System,
                RoleIn::User => Role::User,
                RoleIn::Assistant => Role::Assistant,
            };
            let content = match message.content {
                None => String::new(),
                Some(ContentIn::Text(text)) => text,
                Some(ContentIn::Parts(parts)) => {
                    let mut text = String::new();
                    for (part_index, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(part_text)) => text.push_str(&part_text),
                            ("text", None) => {
                                return Err(Failure::bad_request(format!(
                                    "messages[{index}].content[{part_index}].text is missing"
                                )))
                            }
                            (other, _) => {
                                return Err(Failure::bad_request(format!(
                                    "messages[{index}].content[{part_index}].type is \"{other}\"; \
                                     only \"text\" parts are supported"
                                )))
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// Queues the request from a blocking thread: templating and tokenizing a long prompt are
/// CPU work that must not hold an async worker.
async fn submit(
    served: &Served,
    submit: impl FnOnce(&ChatModel) -> crate::Result<GenerationStream> + Send + 'static,
) -> Result<GenerationStream, Failure> {
    let model = served.model.clone();
    tokio::task::spawn_blocking(move || submit(&model))
        .await
        .map_err(Failure::internal)?
        .map_err(|error| Failure::from_error(error, &served.limits))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// What every response and chunk of one request shares.
struct Frame {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Frame {
    fn new(kind: Kind, model: &ChatModel, include_usage: bool) -> Frame {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        };
        Frame {
            kind,
            id: format!(
                "{prefix}-{:x}-{}",
                model.loaded_at(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            created,
            model: model.name().to_string(),
            include_usage,
        }
    }

    fn usage(usage: &Usage) -> Value {
        json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        })
    }

    fn whole(&self, text: String, reason: FinishReason, usage: &Usage) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": reason.as_str(),
            }),
            Kind::Text => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": reason.as_str(),
            }),
        };
        json!({
            "id": self.id,
            "object": match self.kind { Kind::Chat => "chat.completion", Kind::Text => "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
            "usage": Frame::usage(usage),
        })
    }

    /// A streamed chunk; `delta` is the chat delta object, or the completion's text.
    fn chunk(&self, delta: Value, reason: Option<FinishReason>) -> Event {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": reason.map(FinishReason::as_str),
            }),
            Kind::Text => json!({
                "index": 0,
                "text": delta,
                "logprobs": null,
                "finish_reason": reason.map(FinishReason::as_str),
            }),
        };
        self.event(vec![choice], None)
    }

    fn event(&self, choices: Vec<Value>, usage: Option<&Usage>) -> Event {
        let mut object = json!({
            "id": self.id,
            "object": match self.kind { Kind::Chat => "chat.completion.chunk", Kind::Text => "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        // OpenAI's shape: with include_usage every chunk has `usage`, null but in the last.
        if self.include_usage {
            object["usage"] = usage.map_or(Value::Null, Frame::usage);
        }
        Event::default().data(object.to_string())
    }

    fn text_delta(&self, text: String) -> Value {
        match self.kind {
            Kind::Chat => json!({"content": text}),
            Kind::Text => Value::String(text),
        }
    }

    fn end_delta(&self) -> Value {
        match self.kind {
            Kind::Chat => json!({}),
            Kind::Text => Value::String(String::new()),
        }
    }
}

fn error_event(failure: &Failure) -> Event {
    Event::default().data(json!({"error": failure.body()}).to_string())
}

/// The chunks of a streamed answer: (chat only) the role, text as it comes, the finish
/// reason, the usage if asked for, then `[DONE]`. A failure ends the stream with an error
/// object and no `[DONE]`, so clients do not take a cut answer for a whole one.
fn sse(frame: Frame, stream: GenerationStream) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut pending = VecDeque::new();
    if frame.kind == Kind::Chat {
        pending.push_back(frame.chunk(json!({"role": "assistant", "content": ""}), None));
    }
    let state = (frame, stream, pending, false);
    futures::stream::unfold(
        state,
        |(frame, mut stream, mut pending, mut ended)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (frame, stream, pending, ended)));
                }
                if ended {
                    return None;
                }
                match stream.next().await {
                    Some(GenerationEvent::Text(text)) => {
                        pending.push_back(frame.chunk(frame.text_delta(text), None));
                    }
                    Some(GenerationEvent::Finished { reason, usage }) => {
                        pending.push_back(frame.chunk(frame.end_delta(), Some(reason)));
                        if frame.include_usage {
                            pending.push_back(frame.event(Vec::new(), Some(&usage)));
                        }
                        pending.push_back(Event::default().data("[DONE]"));
                        ended = true;
                    }
                    Some(GenerationEvent::Failed(detail)) => {
                        pending.push_back(error_event(&Failure::internal(detail)));
                        ended = true;
                    }
                    None => {
                        pending.push_back(error_event(&Failure::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            Error::Stopped.to_string(),
                        )));
                        ended = true;
                    }
                }
            }
        },
    )
}

async fn answer(
    served: &Served,
    frame: Frame,
    stream: GenerationStream,
    streaming: bool,
) -> Result<Response, Failure> {
    if streaming {
        return Ok(Sse::new(sse(frame, stream)).into_response());
    }
    // If the client goes away, axum drops this future and with it `stream`: cancelled.
    let completion = stream
        .collect()
        .await
        .map_err(|error| Failure::from_error(error, &served.limits))?;
    Ok(
        Json(frame.whole(completion.text, completion.finish_reason, &completion.usage))
            .into_response(),
    )
}

async fn chat_completions(
    State(served): State<Served>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let body = read_body(body, &served.limits)?;
    let request: ChatRequest = parse(
        &body,
        "a chat completion request {\"messages\": [{\"role\": ..., \"content\": ...}], ...}",
    )?;
    refuse_unsupported(&[
        ("tools", &request.tools),
        ("functions", &request.functions),
        ("logprobs", &request.logprobs),
        ("top_logprobs", &request.top_logprobs),
        ("logit_bias", &request.logit_bias),
        ("response_format", &request.response_format),
    ])?;
    let params = params(SamplingIn {
        max_tokens: request.max_completion_tokens.or(request.max_tokens),
        temperature: request.temperature,
        top_p: request.top_p,
        n: request.n,
        stop: request.stop,
        seed: request.seed,
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
    })?;
    let messages = messages(request.messages)?;
    let streaming = request.stream.unwrap_or(false);
    let include_usage = request
        .stream_options
        .unwrap_or_default()
        .include_usage
        .unwrap_or(false);
    let stream = submit(&served, move |model| model.submit_chat(&messages, &params)).await?;
    let frame = Frame::new(Kind::Chat, &served.model, include_usage);
    answer(&served, frame, stream, streaming).await
}

async fn completions(
    State(served): State<Served>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let body = read_body(body, &served.limits)?;
    let request: CompletionRequest =
        parse(&body, "a completion request {\"prompt\": string, ...}")?;
    let prompt = match request.prompt {
        PromptIn::One(prompt) => prompt,
        PromptIn::Many(mut prompts) if prompts.len() == 1 => prompts.remove(0),
        PromptIn::Many(prompts) => {
            return Err(Failure::bad_request(format!(
                "prompt has {} strings; send one prompt per request",
                prompts.len()
            )))
        }
    };
    if let Some(best_of) = request.best_of.filter(|&b| b != 1) {
        return Err(Failure::bad_request(format!(
            "best_of is {best_of}; this engine gives one choice per request (best_of = 1)"
        )));
    }
    if request.echo == Some(true) {
        return Err(Failure::bad_request(
            "echo is not supported; the prompt is not repeated in the answer",
        ));
    }
    refuse_unsupported(&[
        ("logprobs", &request.logprobs),
        ("logit_bias", &request.logit_bias),
    ])?;
    let params = params(SamplingIn {
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        n: request.n,
        stop: request.stop,
        seed: request.seed,
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
    })?;
    let streaming = request.stream.unwrap_or(false);
    let include_usage = request
        .stream_options
        .unwrap_or_default()
        .include_usage
        .unwrap_or(false);
    let stream = submit(&served, move |model| model.submit_text(&prompt, &params)).await?;
    let frame = Frame::new(Kind::Text, &served.model, include_usage);
    answer(&served, frame, stream, streaming).await
}

async fn models(State(served): State<Served>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": served.model.name(),
            "object": "model",
            "created": served.model.loaded_at(),
            "owned_by": "flowers",
            "context_length": served.model.context_length(),
        }],
    }))
}
