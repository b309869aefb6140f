//! Model engines: the code that runs a model's weights and answers its OpenAI-compatible HTTP
//! API. `embed` serves BERT-family sentence embeddings (`/v1/embeddings`); `chat` serves a
//! llama-family GGUF model (`/v1/chat/completions`, `/v1/completions`, `/v1/models`) with its
//! own tokenizer and chat template read from the GGUF, a fair queue and cancellation when the
//! client goes away. This is the only crate that depends on candle, so a build of the control
//! plane never compiles it. It never reads the environment, never downloads anything, and
//! knows nothing of jobs, services or the store: it is given a model path and serves it.

use std::path::PathBuf;

pub mod chat;
pub mod embed;

/// The device a model runs on ([`embed::EmbedderOptions::device`], [`chat::ChatOptions::device`]),
/// so callers need not depend on candle themselves.
pub use candle_core::Device;

/// Whether this build can run models on NVIDIA GPUs: the `cuda` feature (candle's CUDA backend).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Opens CUDA device `ordinal`, counted among the GPUs `CUDA_VISIBLE_DEVICES` leaves visible.
/// Fails with candle's reason when there is no driver or no such GPU, and always in a build
/// without the `cuda` feature.
pub fn cuda_device(ordinal: usize) -> candle_core::Result<Device> {
    Device::new_cuda(ordinal)
}

/// What can go wrong loading or running a model. Broken model files and bad input are data
/// with a reason; candle's own failures are kept as their source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: missing {file} (the model directory must hold it)", dir.display())]
    MissingFile { dir: PathBuf, file: &'static str },
    #[error("{}: {reason}", path.display())]
    InvalidFile { path: PathBuf, reason: String },
    #[error("{}: not a BERT-family model ({found}); the embedding engine loads model_type \"bert\" only", path.display())]
    NotBert { path: PathBuf, found: String },
    #[error("{}: no .gguf file in this directory", dir.display())]
    NoGguf { dir: PathBuf },
    #[error("{}: {} .gguf files ({}); point at one of them", dir.display(), found.len(), list_names(found))]
    SeveralGguf { dir: PathBuf, found: Vec<PathBuf> },
    #[error("{}: general.architecture is \"{found}\"; the chat engine loads llama-family GGUF models (\"llama\") only", path.display())]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("the prompt is {prompt_tokens} tokens and this model's context holds {context_length}, which leaves no room for an answer; shorten the prompt")]
    PromptTooLong {
        prompt_tokens: usize,
        context_length: usize,
    },
    #[error("the chat engine is busy: {waiting} requests are already waiting; retry later")]
    Overloaded { waiting: usize },
    #[error("{field} {reason}")]
    InvalidParameter { field: &'static str, reason: String },
    #[error("the chat engine has stopped")]
    Stopped,
    #[error("generation failed: {0}")]
    Generation(String),
    #[error("no input texts: pass at least one string (an empty string is allowed)")]
    EmptyInput,
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn list_names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| {
            path.file_name().map_or_else(
                || path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
