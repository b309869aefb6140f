use std::path::PathBuf;

use crate::extract::ExtractError;

/// Everything that can go wrong in the RAG library. Messages say what and where, because they
/// reach people through the CLI and the HTTP API (`{code, message}`), who cannot attach a
/// debugger to the box their documents live on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the library database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("library database error: {0}")]
    Sqlite(#[from] rusqlite::Error),

    #[error("search index error: {0}")]
    Index(#[from] tantivy::TantivyError),

    #[error("cannot open the search index in {}: {reason}", path.display())]
    IndexOpen { path: PathBuf, reason: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file was written by a newer Flowers; opening it could destroy data it does not know.
    #[error(
        "the library database {} has schema version {found}, but this flowers binary only knows \
         versions up to {known}; run the newer flowers that wrote it, or restore a backup",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },

    /// A value in the database that no version of Flowers writes (edited by hand, or damaged).
    #[error("corrupt library: {0}")]
    Corrupt(String),

    #[error("no collection named {0:?}; create it first (POST /v1/collections or `flowers rag collections create`)")]
    UnknownCollection(String),

    #[error("collection {0:?} already exists")]
    CollectionExists(String),

    #[error("invalid collection name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("no document {id} in collection {collection:?}")]
    UnknownDocument { collection: String, id: i64 },

    /// One document could not be read: what is wrong with it, and which one.
    #[error("{document}: {error}")]
    Document {
        document: String,
        #[source]
        error: ExtractError,
    },

    /// A collection's vectors come from one embedding model; mixing two would make dense
    /// scores meaningless, so the second is refused.
    #[error(
        "collection {collection:?} was embedded with {recorded_model:?} ({recorded_dimension} \
         dimensions), but the embedder now is {model:?}{}; use the same model, or a new \
         collection",
        dimension.map(|d| format!(" ({d} dimensions)")).unwrap_or_default()
    )]
    EmbeddingMismatch {
        collection: String,
        recorded_model: String,
        recorded_dimension: usize,
        model: String,
        /// Unknown when the model's name differed before anything was embedded.
        dimension: Option<usize>,
    },

    /// The collection's vectors came from another version of its embedding model (a new one
    /// was promoted since): the new vectors would not be comparable with them.
    #[error(
        "collection {collection:?} was embedded with version {recorded} of {model:?}, but the \
         embedding engine now serves version {now}: their vectors cannot be compared. Ingest the \
         documents into a new collection, promote version {recorded} again, or search with \
         mode \"bm25\""
    )]
    EmbeddingVersionMismatch {
        collection: String,
        model: String,
        recorded: String,
        now: String,
    },

    /// The embedding engine failed or answered something unusable.
    #[error("embedding engine: {0}")]
    Embed(String),

    /// The chat engine failed, could not be reached, or answered something unusable.
    #[error("chat engine: {0}")]
    Chat(String),

    /// The chat engine refused the request as the client's fault (a 4xx of its own).
    #[error("chat engine refused the request ({status}): {message}")]
    ChatRejected { status: u16, message: String },

    /// A caller's request that cannot be carried out as asked (an empty query, k out of range).
    #[error("{0}")]
    InvalidRequest(String),

    #[error("folder {}: {reason}", path.display())]
    Folder { path: PathBuf, reason: String },
}

impl Error {
    /// True when the error belongs to one document (its content or its file), so an ingest of
    /// many files reports it and goes on; anything else (the database, the index, the
    /// embedding engine) would fail every following file too, so it stops the ingest.
    pub fn is_per_document(&self) -> bool {
        matches!(self, Error::Document { .. } | Error::Io { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
