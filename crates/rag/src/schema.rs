//! Versioned migrations of `rag.sqlite`, as in the store crate: `PRAGMA user_version` counts the
//! scripts applied; scripts are append-only, each applied in its own transaction.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::{Error, Result};

const MIGRATIONS: &[&str] = &[
    // Version 1: collections, documents, chunks and their vectors.
    r#"
    CREATE TABLE collections (
        -- AUTOINCREMENT: a deleted collection's id is never handed out again, so nothing left
        -- of it in the search index can ever match a new one.
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        name                TEXT NOT NULL UNIQUE,
        -- Recorded at the first ingest; every later vector must come from the same model.
        embedding_model     TEXT,
        embedding_dimension INTEGER,
        created_ms          INTEGER NOT NULL
    );

    CREATE TABLE documents (
        -- AUTOINCREMENT for the same reason: the search index refers to documents by id.
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        collection_id INTEGER NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
        -- An absolute path, or the name an upload was given.
        source        TEXT NOT NULL,
        -- 'file', 'folder' or 'upload'.
        origin        TEXT NOT NULL,
        -- For origin 'folder': the folder root it was found under (its documents are deleted
        -- when their file is gone from that root).
        folder_root   TEXT,
        title         TEXT NOT NULL,
        kind          TEXT NOT NULL,
        -- sha256 of the file's bytes, hex.
        digest        TEXT NOT NULL,
        size_bytes    INTEGER NOT NULL,
        chunk_count   INTEGER NOT NULL,
        -- 0 while the document is being indexed: invisible to search, removed at the next
        -- open if the process died. Set to 1 last, once the search index has it too.
        committed     INTEGER NOT NULL DEFAULT 0,
        created_ms    INTEGER NOT NULL,
        committed_ms  INTEGER
    );
    -- At most one visible version of a source per collection.
    CREATE UNIQUE INDEX documents_visible_source ON documents (collection_id, source)
        WHERE committed = 1;
    CREATE INDEX documents_by_root ON documents (collection_id, folder_root);

    CREATE TABLE chunks (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        document_id  INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
        ordinal      INTEGER NOT NULL,
        text         TEXT NOT NULL,
        -- JSON array of headings, outermost first; [] when the document has none.
        heading_path TEXT NOT NULL,
        page         INTEGER,
        -- Character offsets (not bytes) into the document's extracted text, end exclusive.
        char_start   INTEGER NOT NULL,
        char_end     INTEGER NOT NULL,
        UNIQUE (document_id, ordinal)
    );

    CREATE TABLE vectors (
        chunk_id INTEGER PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
        -- Little-endian f32s, L2-normalised; the length is the collection's dimension.
        vector   BLOB NOT NULL
    );

    "#,
    // Version 2: the embedding model's version (a Flowers engine says it), recorded at the
    // first ingest that learns it; NULL for a server that does not say.
    r#"
    ALTER TABLE collections ADD COLUMN embedding_version TEXT;
    "#,
];

pub(crate) fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Brings the database up to [`known_version`], one script per transaction, so that a crash in
/// the middle leaves a whole version the next open continues from.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    loop {
        // IMMEDIATE takes the write lock before reading the version, so two processes opening
        // a fresh file cannot both apply one script.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = user_version(&tx)?;
        if found > known_version() {
            return Err(Error::NewerSchema {
                path: path.to_path_buf(),
                found,
                known: known_version(),
            });
        }
        if found == known_version() {
            return Ok(());
        }
        if found < 0 {
            return Err(Error::Corrupt(format!(
                "{}: negative schema version {found}",
                path.display()
            )));
        }
        tx.execute_batch(MIGRATIONS[found as usize])
            .map_err(|source| {
                Error::Corrupt(format!(
                    "{}: migration to schema version {} failed: {source}",
                    path.display(),
                    found + 1
                ))
            })?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), version = found + 1, "applied rag migration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_database_reaches_the_known_version_and_stays_there() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new("rag.sqlite")).unwrap();
        assert_eq!(user_version(&conn).unwrap(), known_version());
        migrate(&mut conn, Path::new("rag.sqlite")).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN \
                 ('collections', 'documents', 'chunks', 'vectors')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(tables, 4);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", known_version() + 1)
            .unwrap();
        let error = migrate(&mut conn, Path::new("rag.sqlite")).unwrap_err();
        assert!(matches!(error, Error::NewerSchema { .. }), "{error}");
        assert!(error.to_string().contains("rag.sqlite"), "{error}");
    }
}
