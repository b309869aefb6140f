//! The durable memory of Flowers: one SQLite file, `flowers.db`, holding Runs, the append-only
//! Event log, per-owner restart bookkeeping and Services and Jobs added at run time.
//!
//! This is the only crate that knows SQL. It owns the schema and its versioned migrations, and
//! turns rows into `domain` types (refusing values it does not recognise as corrupt, never
//! panicking on them). It never decides anything: it does not schedule, start processes or
//! interpret specs, and it never edits or deletes a single Event. Every method is synchronous
//! and short; async callers wrap it in `spawn_blocking`.

mod error;
mod events;
mod models;
mod owners;
mod runs;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;

pub use error::StoreError;
pub use events::EventFilter;
pub use models::{ModelRecord, NewVersion, Promotion, VersionRecord};
pub use owners::{OwnerState, StoredSpec};
pub use runs::{NewRun, RunFilter, RunRecord, RunUpdate};

/// How long a statement waits for another connection's write lock (the CLI or a second process
/// reading the file) before it fails with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle to the store; cheap to clone, shared by every part of Flowers.
///
/// One connection behind a mutex: Flowers writes a few rows a second, so one writer is plenty,
/// and it makes every method's transaction trivially serialised within the process.
#[derive(Clone, Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating the parent directory and the file if missing) and migrates the store.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // Refuse a newer file before changing anything in it (even its journal mode). This is
        // also the first real read, so a file that is not a database fails here, with its path.
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_error)?;
        if found > schema::known_version() {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
                known: schema::known_version(),
            });
        }
        let journal_mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_error)?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            // Some file systems (network mounts) cannot hold the WAL's shared memory; the store
            // still works in the mode SQLite chose, only with readers blocking the writer.
            tracing::warn!(path = %path.display(), %journal_mode, "SQLite refused WAL journal mode");
        }
        // In WAL mode NORMAL syncs at checkpoints, not at every commit: a committed transaction
        // survives a crash or kill -9 of Flowers (it is in the WAL file the OS holds), but a
        // power loss or kernel panic may lose the last few commits. The database itself stays
        // consistent either way. That trade is right for run and event bookkeeping.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_error)?;
        schema::migrate(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        schema::user_version(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (an unfinished
        // rusqlite Transaction rolls back when dropped), so the connection is still sound.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Narrows an integer read from the file, calling it corrupt (with where it was) if it does not
/// fit: nothing Flowers writes is out of range, so such a value was put there by someone else.
fn narrow<T: TryFrom<i64>>(value: i64, place: impl FnOnce() -> String) -> Result<T, StoreError> {
    T::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("{}: {value} is out of range", place())))
}

fn narrow_opt<T: TryFrom<i64>>(
    value: Option<i64>,
    place: impl FnOnce() -> String,
) -> Result<Option<T>, StoreError> {
    value.map(|v| narrow(v, place)).transpose()
}

/// SQLite integers are signed 64-bit; refuse the (absurd) u64 values that would not round-trip.
fn widen(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::invalid(what, format!("{value} is larger than {}", i64::MAX)))
}

fn owner_kind_text(kind: domain::OwnerKind) -> &'static str {
    match kind {
        domain::OwnerKind::Service => "service",
        domain::OwnerKind::Job => "job",
    }
}

fn parse_owner_kind(
    text: &str,
    place: impl FnOnce() -> String,
) -> Result<domain::OwnerKind, StoreError> {
    match text {
        "service" => Ok(domain::OwnerKind::Service),
        "job" => Ok(domain::OwnerKind::Job),
        other => Err(StoreError::Corrupt(format!(
            "{}: unknown owner kind {other:?} (expected \"service\" or \"job\")",
            place()
        ))),
    }
}

fn parse_name(text: &str, place: impl FnOnce() -> String) -> Result<domain::Name, StoreError> {
    domain::Name::new(text).map_err(|err| StoreError::Corrupt(format!("{}: {err}", place())))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A store in a fresh temporary directory; keep the directory alive as long as the store.
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("flowers.db")).unwrap();
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::temp_store;
    use super::*;

    #[test]
    fn open_creates_the_directory_and_the_file_and_sets_the_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/data/flowers.db");
        let store = Store::open(&path).unwrap();
        assert!(path.is_file());
        assert_eq!(store.schema_version().unwrap(), schema::known_version());
        let conn = store.lock();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let synchronous: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 1, "NORMAL");
        let foreign_keys: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(foreign_keys, 1);
    }

    #[test]
    fn reopening_keeps_the_data_and_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowers.db");
        let store = Store::open(&path).unwrap();
        store
            .append_event(&domain::NewEvent::new(
                domain::EventKind::FlowersStarted,
                "hello",
            ))
            .unwrap();
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.schema_version().unwrap(), schema::known_version());
        assert_eq!(again.events(&EventFilter::default()).unwrap().len(), 1);
        // A second handle on the same file while the first is open also works.
        let third = Store::open(&path).unwrap();
        assert_eq!(third.events(&EventFilter::default()).unwrap().len(), 1);
    }

    #[test]
    fn a_database_from_a_newer_flowers_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowers.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("flowers.db"), "{message}");
        assert!(message.contains("99"), "{message}");
        // Refused before anything in the file changed: it is still in its old journal mode.
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowers.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("flowers.db"), "{err}");
    }

    #[test]
    fn a_parent_that_is_a_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("data");
        std::fs::write(&blocker, "").unwrap();
        let err = Store::open(&blocker.join("flowers.db")).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("data"), "{err}");
    }

    #[test]
    fn the_store_is_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Store>();
        let (_dir, store) = temp_store();
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for j in 0..25 {
                        store
                            .append_event(&domain::NewEvent::new(
                                domain::EventKind::RunStarted,
                                format!("{i}-{j}"),
                            ))
                            .unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(store.events(&EventFilter::default()).unwrap().len(), 100);
    }
}
