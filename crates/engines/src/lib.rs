//! Model engines: the code that runs a model's weights and answers its OpenAI-compatible HTTP
//! API. Today that is `embed` (BERT-family sentence embeddings); a chat engine for GGUF models
//! comes next. This is the only crate that depends on candle, so a build of the control plane
//! never compiles it. It never reads the environment, never downloads anything, and knows
//! nothing of jobs, services or the store: it is given a model directory and serves it.

use std::path::PathBuf;

pub mod embed;

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
    #[error("no input texts: pass at least one string (an empty string is allowed)")]
    EmptyInput,
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
