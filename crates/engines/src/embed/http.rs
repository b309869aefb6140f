//! The OpenAI-compatible `POST /v1/embeddings` over an [`Embedder`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use api_types::ApiError;

use super::Embedder;
use crate::Error;

/// Request-size limits of the embeddings route.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Larger request bodies are refused with 413 before they are parsed.
    pub max_body_bytes: usize,
    /// More texts in one request are refused with 413 (OpenAI's own limit is 2048).
    pub max_inputs: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 4 * 1024 * 1024,
            max_inputs: 2048,
        }
    }
}

/// `POST /v1/embeddings` with the default limits.
pub fn router(embedder: Arc<Embedder>) -> Router {
    router_with_limits(embedder, HttpLimits::default())
}

pub fn router_with_limits(embedder: Arc<Embedder>, limits: HttpLimits) -> Router {
    Router::new()
        .route("/v1/embeddings", post(create_embeddings))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(Served { embedder, limits })
}

#[derive(Clone)]
struct Served {
    embedder: Arc<Embedder>,
    limits: HttpLimits,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<serde_json::Value>),
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Input,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    // OpenAI's `user` and anything else unknown are accepted and ignored, as the official
    // clients may send them.
}

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

/// `encoding_format` "float" (a JSON array) or "base64": the little-endian f32 bytes, which
/// the official OpenAI clients ask for by default and decode themselves.
#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

impl Embedding {
    fn encode(vector: Vec<f32>, base64: bool) -> Embedding {
        if !base64 {
            return Embedding::Float(vector);
        }
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
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
    fn too_large(message: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: message.into(),
        }
    }
    /// Our fault: the detail goes to the log, not to the client.
    fn internal(detail: impl std::fmt::Display) -> Failure {
        tracing::error!(%detail, "embedding engine internal error");
        Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error in the embedding engine; its log has the details".into(),
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

async fn create_embeddings(
    State(served): State<Served>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EmbeddingsResponse>, Failure> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure::too_large(format!(
                "request body is over {} bytes; send fewer or shorter texts per request",
                served.limits.max_body_bytes
            ))
        } else {
            Failure::bad_request(format!("cannot read the request body: {rejection}"))
        }
    })?;
    let request: EmbeddingsRequest = serde_json::from_slice(&body).map_err(|error| {
        Failure::bad_request(format!(
            "body is not an embeddings request ({error}); expected {{\"input\": string or array of strings, \"model\": string}}"
        ))
    })?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Failure::bad_request(format!(
                "encoding_format \"{other}\" is not supported; use \"float\" or \"base64\" (or leave it out)"
            )))
        }
    };
    let embedder = served.embedder.clone();
    if let Some(dimensions) = request.dimensions {
        if dimensions != embedder.dimension() {
            return Err(Failure::bad_request(format!(
                "dimensions {dimensions} is not supported: this model's vectors have {} dimensions",
                embedder.dimension()
            )));
        }
    }
    let texts: Vec<String> = match request.input {
        Input::One(text) => vec![text],
        Input::Many(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                serde_json::Value::String(text) => Ok(text),
                _ => Err(Failure::bad_request(format!(
                    "input[{index}] is not a string; token-id input is not supported, send text"
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    if texts.is_empty() {
        return Err(Failure::bad_request(
            "input is an empty array; send at least one string",
        ));
    }
    if texts.len() > served.limits.max_inputs {
        return Err(Failure::too_large(format!(
            "{} inputs in one request; at most {} are allowed",
            texts.len(),
            served.limits.max_inputs
        )));
    }
    let model = request.model.unwrap_or_else(|| embedder.name().to_string());
    // The forward pass is seconds of CPU for a big request: keep it off the async workers.
    let embedded = tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        embedder.embed_counting(&texts)
    })
    .await
    .map_err(Failure::internal)?
    .map_err(|error| match error {
        Error::EmptyInput => Failure::bad_request(error.to_string()),
        other => Failure::internal(other),
    })?;
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data: embedded
            .vectors
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| EmbeddingObject {
                object: "embedding",
                index,
                embedding: Embedding::encode(embedding, base64),
            })
            .collect(),
        model,
        usage: Usage {
            prompt_tokens: embedded.tokens,
            total_tokens: embedded.tokens,
        },
    }))
}
