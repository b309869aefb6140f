//! Retrieval-augmented generation for Flowers (journey J6): collections of documents ingested
//! from uploads or folders, searched with BM25 (tantivy) and dense vectors fused by their
//! normalised scores (or by reciprocal rank), and answered through an OpenAI-compatible `/v1/chat/completions` that cites
//! its sources.
//!
//! This crate owns the library on disk (`DIR/rag.sqlite`, `DIR/index/`), extraction, chunking,
//! retrieval, prompt building and the HTTP routes. It never runs a model: embeddings and chat
//! come from other services over HTTP, through the [`Embed`] trait and [`OpenAiChat`], so it
//! never depends on candle. It never reads the environment; the binary hands it a directory,
//! options and engine URLs.

mod chat;
mod chunk;
mod embed;
mod error;
pub mod eval;
pub mod extract;
pub mod http;
mod index;
mod library;
pub mod prompt;
mod schema;
mod search;
mod vectors;

pub use chat::{ChatStream, OpenAiChat};
pub use chunk::{chunk, Chunk, ChunkOptions};
pub use embed::{Embed, Embedded, OpenAiEmbeddings};
pub use error::{Error, Result};
pub use library::{
    validate_collection_name, Collection, Document, FileError, FolderReport, IngestEvent,
    IngestOutcome, IngestStatus, Library, LibraryOptions, Origin,
};
pub use search::{
    reciprocal_rank_fusion, relative_score_fusion, Filters, Hit, Location, Mode, SearchRequest,
    DENSE_WEIGHT, FUSION_WINDOW, MAX_K, RRF_K,
};
