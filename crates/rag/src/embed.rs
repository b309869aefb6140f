//! How the library reaches an embedding model: the [`Embed`] trait, so that this crate never
//! depends on candle, and [`OpenAiEmbeddings`], its implementation over the OpenAI-compatible
//! `POST /v1/embeddings` (the embedding engine behind the gateway, or any compatible server).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Vectors, and which version of the model made them, when the server says.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// A Flowers engine's [`api_types::MODEL_VERSION_HEADER`]; `None` from other servers.
    pub version: Option<String>,
}

/// A sentence-embedding model. `embed` returns one vector per text, in order, all of one
/// dimension; the library L2-normalises them itself, so that a dot product is the cosine.
pub trait Embed: Send + Sync {
    /// The model's name, recorded per collection: vectors of two models are never mixed.
    fn model(&self) -> &str;

    /// A boxed future rather than an `async fn`, so that `Arc<dyn Embed>` works.
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>>>;

    /// [`Embed::embed`], with the version of the model that answered: recorded per collection
    /// too, since two versions of one model make vectors as incomparable as two models. The
    /// default knows no version.
    fn embed_versioned(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Embedded>> {
        Box::pin(async move {
            Ok(Embedded {
                vectors: self.embed(texts).await?,
                version: None,
            })
        })
    }
}

/// An [`Embed`] over HTTP: `POST {base_url}/v1/embeddings`.
#[derive(Debug, Clone)]
pub struct OpenAiEmbeddings {
    /// Without the `/v1/embeddings` path, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The model to ask for, also the name recorded in the collections.
    pub model: String,
    pub client: reqwest::Client,
}

impl OpenAiEmbeddings {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> OpenAiEmbeddings {
        OpenAiEmbeddings {
            base_url: base_url.into(),
            model: model.into(),
            client: reqwest::Client::new(),
        }
    }
}

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingObject>,
}

#[derive(Deserialize)]
struct EmbeddingObject {
    index: usize,
    embedding: Vec<f32>,
}

impl Embed for OpenAiEmbeddings {
    fn model(&self) -> &str {
        &self.model
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>>> {
        Box::pin(async move { Ok(self.embed_versioned(texts).await?.vectors) })
    }

    fn embed_versioned(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Embedded>> {
        Box::pin(async move {
            let url = format!("{}/v1/embeddings", self.base_url.trim_end_matches('/'));
            let response = self
                .client
                .post(&url)
                .json(&EmbeddingsRequest {
                    model: &self.model,
                    input: &texts,
                })
                .send()
                .await
                .map_err(|error| Error::Embed(format!("cannot reach {url}: {error}")))?;
            let status = response.status();
            let version = response
                .headers()
                .get(api_types::MODEL_VERSION_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            let body = response
                .bytes()
                .await
                .map_err(|error| Error::Embed(format!("{url}: reading the answer: {error}")))?;
            if !status.is_success() {
                return Err(Error::Embed(format!(
                    "{url} answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(500)])
                )));
            }
            let parsed: EmbeddingsResponse = serde_json::from_slice(&body).map_err(|error| {
                Error::Embed(format!("{url}: not an embeddings response: {error}"))
            })?;
            let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
            for object in parsed.data {
                let slot = vectors.get_mut(object.index).ok_or_else(|| {
                    Error::Embed(format!(
                        "{url}: answered index {} for {} inputs",
                        object.index,
                        texts.len()
                    ))
                })?;
                *slot = Some(object.embedding);
            }
            let vectors = vectors
                .into_iter()
                .enumerate()
                .map(|(index, vector)| {
                    vector
                        .ok_or_else(|| Error::Embed(format!("{url}: no vector for input {index}")))
                })
                .collect::<Result<_>>()?;
            Ok(Embedded { vectors, version })
        })
    }
}

/// Scales `vector` to length 1 (left as is when it is all zeros, which then matches nothing).
pub(crate) fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && (norm - 1.0).abs() > 1e-6 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
}
