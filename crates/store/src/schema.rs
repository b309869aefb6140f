//! Versioned schema migrations.
//!
//! `PRAGMA user_version` holds how many scripts of [`MIGRATIONS`] have been applied. Scripts are
//! append-only: a released script is never edited, a change is a new script at the end, so every
//! database walks the same path to the same schema.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// The schema, one script per version: script `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1: runs, events, per-owner restart bookkeeping and run-time specs.
    r#"
    CREATE TABLE runs (
        -- The sequence number in the run id; AUTOINCREMENT so that a number is never handed out
        -- twice, even after the newest run is deleted by hand.
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        -- '<owner>-<seq>', set in the same transaction as the insert.
        id              TEXT UNIQUE,
        owner_kind      TEXT NOT NULL,
        owner_name      TEXT NOT NULL,
        replica         INTEGER NOT NULL,
        state           TEXT NOT NULL,
        device          TEXT,
        vram_reserved   INTEGER,
        port            INTEGER,
        pid             INTEGER,
        pid_start_ticks INTEGER,
        child_pid       INTEGER,
        spec_hash       TEXT NOT NULL,
        run_dir         TEXT NOT NULL,
        attempt         INTEGER NOT NULL,
        exit_code       INTEGER,
        exit_signal     INTEGER,
        reason          TEXT,
        created_ms      INTEGER NOT NULL,
        started_ms      INTEGER,
        ready_ms        INTEGER,
        ended_ms        INTEGER
    );
    CREATE INDEX runs_by_owner ON runs (owner_name, seq);
    CREATE INDEX runs_by_state ON runs (state);

    CREATE TABLE events (
        -- AUTOINCREMENT: SSE clients resume from an id, so ids must never be reused.
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms  INTEGER NOT NULL,
        kind     TEXT NOT NULL,
        owner    TEXT,
        run      TEXT,
        device   TEXT,
        message  TEXT NOT NULL
    );
    CREATE INDEX events_by_owner ON events (owner, id);
    CREATE INDEX events_by_run ON events (run, id);

    CREATE TABLE owner_states (
        name                 TEXT PRIMARY KEY,
        kind                 TEXT NOT NULL,
        consecutive_failures INTEGER NOT NULL,
        crash_loop           INTEGER NOT NULL,
        updated_ms           INTEGER NOT NULL
    );

    CREATE TABLE specs (
        name       TEXT PRIMARY KEY,
        kind       TEXT NOT NULL,
        spec_json  TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    "#,
    // Version 2: models, their versions and promotion history; the version a Run serves.
    r#"
    ALTER TABLE runs ADD COLUMN model_version INTEGER;

    CREATE TABLE models (
        name       TEXT PRIMARY KEY,
        -- The promoted version, NULL while none is.
        promoted   INTEGER,
        updated_ms INTEGER NOT NULL
    );

    CREATE TABLE versions (
        model        TEXT NOT NULL REFERENCES models (name),
        -- 1, 2, 3, ... per model; never reused (deleted versions keep their row).
        version      INTEGER NOT NULL,
        state        TEXT NOT NULL,
        digest       TEXT NOT NULL,
        files        INTEGER NOT NULL,
        size_bytes   INTEGER NOT NULL,
        metrics_json TEXT NOT NULL,
        -- The Run that registered it, or NULL for an import.
        run          TEXT,
        -- The job that registered it (its checkpoints are resumed from), or NULL.
        job          TEXT,
        -- Where the files came from, for people.
        source       TEXT NOT NULL,
        reason       TEXT,
        created_ms   INTEGER NOT NULL,
        PRIMARY KEY (model, version)
    );
    CREATE INDEX versions_by_job ON versions (job, created_ms);

    CREATE TABLE promotions (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        model    TEXT NOT NULL REFERENCES models (name),
        version  INTEGER NOT NULL,
        previous INTEGER,
        reason   TEXT NOT NULL,
        time_ms  INTEGER NOT NULL
    );
    CREATE INDEX promotions_by_model ON promotions (model, id);
    "#,
    // Version 3: the progress a job's Run last reported (JSON), kept after it ends.
    r#"
    ALTER TABLE runs ADD COLUMN progress TEXT;
    "#,
];

/// The schema version this binary writes.
pub(crate) fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

pub(crate) fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Brings the database up to [`known_version`], one script per transaction, so that a crash in
/// the middle leaves a database at some whole version that the next start continues from.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    migrate_with(conn, path, MIGRATIONS)
}

fn migrate_with(conn: &mut Connection, path: &Path, scripts: &[&str]) -> Result<(), StoreError> {
    let known = scripts.len() as i64;
    loop {
        // IMMEDIATE takes the write lock before reading the version, so two processes opening
        // the same fresh file cannot both apply the same script.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = user_version(&tx)?;
        if found > known {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        if found == known {
            return Ok(());
        }
        if found < 0 {
            return Err(StoreError::Corrupt(format!(
                "{}: negative schema version {found}",
                path.display()
            )));
        }
        let script = scripts[found as usize];
        tx.execute_batch(script).map_err(|source| {
            StoreError::Corrupt(format!(
                "{}: migration to schema version {} failed: {source}",
                path.display(),
                found + 1
            ))
        })?;
        // user_version lives in the database header, which is written as part of this same
        // transaction: the script and the version number commit together or not at all.
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), version = found + 1, "applied store migration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Connection {
        Connection::open_in_memory().unwrap()
    }

    #[test]
    fn an_empty_database_reaches_the_known_version() {
        let mut conn = memory();
        migrate(&mut conn, Path::new("test.db")).unwrap();
        assert_eq!(user_version(&conn).unwrap(), known_version());
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
                 AND name IN ('runs', 'events', 'owner_states', 'specs')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(tables, 4);
    }

    #[test]
    fn each_script_is_applied_once_and_in_order() {
        let scripts = [
            "CREATE TABLE a (x INTEGER);",
            "INSERT INTO a VALUES (1);",
            "INSERT INTO a VALUES (2);",
        ];
        let mut conn = memory();
        migrate_with(&mut conn, Path::new("t.db"), &scripts[..2]).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 2);
        // A newer binary continues from where the older one stopped.
        migrate_with(&mut conn, Path::new("t.db"), &scripts).unwrap();
        migrate_with(&mut conn, Path::new("t.db"), &scripts).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 3);
        let rows: Vec<i64> = conn
            .prepare("SELECT x FROM a ORDER BY x")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![1, 2]);
    }

    #[test]
    fn a_failing_script_leaves_the_previous_version_whole() {
        let scripts = [
            "CREATE TABLE a (x INTEGER);",
            "CREATE TABLE b (y); SELECT nonsense FROM nowhere;",
        ];
        let mut conn = memory();
        let err = migrate_with(&mut conn, Path::new("t.db"), &scripts).unwrap_err();
        assert!(err.to_string().contains("schema version 2"), "{err}");
        assert_eq!(user_version(&conn).unwrap(), 1);
        let b_exists: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b_exists, 0, "half of a failed script must not stay behind");
    }

    #[test]
    fn a_newer_version_is_refused() {
        let mut conn = memory();
        conn.pragma_update(None, "user_version", known_version() + 1)
            .unwrap();
        let err = migrate(&mut conn, Path::new("flowers.db")).unwrap_err();
        match err {
            StoreError::NewerSchema { found, known, .. } => {
                assert_eq!(found, known_version() + 1);
                assert_eq!(known, known_version());
            }
            other => panic!("expected NewerSchema, got {other}"),
        }
    }
}
