use std::path::PathBuf;

/// Everything that can go wrong in the store. Messages say what and where, because they end up
/// in logs and in the CLI of people who cannot attach a debugger to their GPU box.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),

    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("no {what} {id:?} in the store")]
    NotFound { what: &'static str, id: String },

    /// The file was written by a newer Flowers; opening it with this binary could destroy data
    /// it does not understand.
    #[error(
        "the database {path} has schema version {found}, but this flowers binary only knows \
         versions up to {known}; run the newer flowers that wrote it, or restore a backup"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },

    /// A value in the file that no version of Flowers writes (edited by hand, or damaged).
    #[error("corrupt database: {0}")]
    Corrupt(String),

    /// A caller handed the store a value it cannot keep faithfully.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl StoreError {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
