//! The video service's memory (docs/plans/video.md §6): `video.sqlite` and the snapshot files
//! beside it, in the service's data directory. Objects (one per track, open while it is
//! followed), the events SSE clients, webhooks and MQTT are fed from, and streams added through
//! the API. Unlike `flowers.db`'s Events, video events have retention: [`VideoDb::sweep`]
//! removes old ended objects, their events and pictures, and keeps the pictures under a size.
//!
//! Snapshots live as `snapshots/YYYY-MM-DD/ID.jpg` (the UTC day the object started), written to
//! a temporary file, synced and renamed, so a crash never leaves half a picture under its final
//! name. A row refers to a file only once the file is whole; a crash between the two can leave a
//! file no row refers to (removed at the next start: [`VideoDb::unrecorded_snapshots`]), never a
//! row whose file is half written.
//!
//! One process writes (the video service runs `stop-first`); methods are synchronous and short,
//! and async callers wrap them in `spawn_blocking`.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};
use serde::{Serialize, Serializer};
use thiserror::Error;

use crate::geometry::Direction;

/// The database's file name in the data directory.
pub const DB_FILE: &str = "video.sqlite";

/// The snapshots' folder in the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Where pictures are written before they are renamed into their day's folder. Not a date, so
/// it never collides with one; emptied at every open (one process writes).
const TMP_DIR: &str = "tmp";

/// How long a statement waits for another connection's lock (someone reading the file with the
/// sqlite3 shell) before it fails with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The latest time accepted, the last millisecond of the year 9999: days keep four digits.
const MAX_TIME_MS: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// The schema, one script per version: script `i` takes the database from version `i` to
/// `i + 1`. Append-only, as in the store crate: a released script is never edited.
const MIGRATIONS: &[&str] = &[
    // Version 1: objects, events and streams added through the API.
    r#"
    CREATE TABLE objects (
        -- AUTOINCREMENT: snapshot files are named by id and clients keep ids, so an id freed by
        -- retention must never name a new object.
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        stream         TEXT NOT NULL,
        class          TEXT NOT NULL,
        label          TEXT,
        started_ms     INTEGER NOT NULL,
        -- NULL while the object is followed; retention never touches an open object.
        ended_ms       INTEGER,
        best_score     REAL,
        -- JSON [x0, y0, x1, y1] of the best moment, the one the snapshot shows.
        best_box       TEXT,
        -- 'YYYY-MM-DD/ID.jpg' under snapshots/, NULL until a picture is taken.
        snapshot       TEXT,
        -- The file's size, so that retention sums sizes in SQL instead of walking the disk.
        snapshot_bytes INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX objects_by_stream ON objects (stream, started_ms);
    CREATE INDEX objects_by_class ON objects (class, started_ms);
    CREATE INDEX objects_by_ended ON objects (ended_ms);

    CREATE TABLE events (
        -- The SSE id. AUTOINCREMENT: clients resume from the last id they saw, so an id must
        -- never be handed out again, even after retention deleted the newest rows.
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms   INTEGER NOT NULL,
        stream    TEXT NOT NULL,
        kind      TEXT NOT NULL,
        -- NULL for a stream's own events (offline, online). The snapshot is the object's.
        object    INTEGER REFERENCES objects (id),
        class     TEXT,
        score     REAL,
        zone      TEXT,
        line      TEXT,
        direction TEXT,
        -- Anything else the event carries, as a JSON value.
        json      TEXT NOT NULL
    );
    CREATE INDEX events_by_time ON events (time_ms);
    CREATE INDEX events_by_stream ON events (stream, time_ms);
    CREATE INDEX events_by_kind ON events (kind, time_ms);
    CREATE INDEX events_by_class ON events (class, time_ms);
    CREATE INDEX events_by_zone ON events (zone, time_ms);
    -- Retention deletes events by object, and SQLite checks the foreign key on every object
    -- deleted: without this each would scan the whole table.
    CREATE INDEX events_by_object ON events (object);

    CREATE TABLE streams (
        name       TEXT PRIMARY KEY,
        json       TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    "#,
    // Version 2: the webhooks' outbox, written in the transaction of the event it carries.
    r#"
    CREATE TABLE deliveries (
        id         INTEGER PRIMARY KEY,
        event      INTEGER NOT NULL REFERENCES events (id),
        -- The webhook's URL when the event was stored: a list changed across a restart never
        -- sends an event somewhere it was not meant for.
        url        TEXT NOT NULL,
        -- Tries made so far.
        attempts   INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        -- When the next try is due (pending only).
        next_ms    INTEGER NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        last_error TEXT
    );
    -- The sender asks for pending rows by due time; the API counts rows by state.
    CREATE INDEX deliveries_due ON deliveries (state, next_ms);
    -- Retention deletes deliveries by event.
    CREATE INDEX deliveries_by_event ON deliveries (event);
    "#,
    // Version 3: archives (crate::archive): analyses, their files and what was found in them.
    r#"
    CREATE TABLE analyses (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        created_ms INTEGER NOT NULL,
        -- JSON: the keys of a stream without its URL (fps, width, zones, lines, masks, …).
        settings   TEXT NOT NULL,
        -- JSON array: the paths last given, for people.
        roots      TEXT NOT NULL,
        -- Why the last Run stopped short (a drive unplugged), until a file is finished again.
        last_error TEXT,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE analysis_files (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        analysis    INTEGER NOT NULL REFERENCES analyses (id),
        -- Where the file was last found: root (absolute) and the path under it.
        root        TEXT NOT NULL,
        path        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        mtime_ms    INTEGER,
        -- SIZE-SHA256 of the first and last MiB: the file's identity across mount points.
        fingerprint TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
        -- The Run analysing it (running only).
        claimed_by  TEXT,
        updated_ms  INTEGER NOT NULL,
        frames      INTEGER NOT NULL DEFAULT 0,
        frames_total INTEGER,
        width       INTEGER,
        height      INTEGER,
        started_ms  INTEGER,
        finished_ms INTEGER,
        error       TEXT,
        UNIQUE (analysis, fingerprint)
    );
    CREATE INDEX analysis_files_by_state ON analysis_files (state, analysis, id);
    CREATE TABLE analysis_objects (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        file        INTEGER NOT NULL REFERENCES analysis_files (id),
        class       TEXT NOT NULL,
        -- Times in the file, ms from its start.
        started_ms  INTEGER NOT NULL,
        ended_ms    INTEGER NOT NULL,
        best_score  REAL NOT NULL,
        best_box    TEXT NOT NULL,
        -- Under archives/: 'ANALYSIS/FILE-N.jpg'.
        snapshot    TEXT
    );
    CREATE INDEX analysis_objects_by_file ON analysis_objects (file);
    CREATE TABLE analysis_events (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        file      INTEGER NOT NULL REFERENCES analysis_files (id),
        time_ms   INTEGER NOT NULL,
        kind      TEXT NOT NULL,
        object    INTEGER REFERENCES analysis_objects (id),
        zone      TEXT,
        line      TEXT,
        direction TEXT
    );
    CREATE INDEX analysis_events_by_file ON analysis_events (file, time_ms);
    -- Streams of a file analysed to its end, so a restart does not analyse them again: the
    -- file's fingerprint and the stream's settings when it was.
    CREATE TABLE file_streams (
        name        TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        spec        TEXT NOT NULL,
        frames      INTEGER NOT NULL,
        finished_ms INTEGER NOT NULL
    );
    "#,
];

fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Everything that can go wrong with the video database. Messages say what and where: they end
/// up in logs and API errors.
#[derive(Debug, Error)]
pub enum DbError {
    #[error("cannot open the video database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("video database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file was written by a newer Flowers; this binary could destroy what it does not know.
    #[error(
        "the video database {path} has schema version {found}, but this flowers binary only \
         knows versions up to {known}; run the newer flowers that wrote it, or restore a backup"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// A value in the file that Flowers never writes (edited by hand, or damaged).
    #[error("corrupt video database: {0}")]
    Corrupt(String),
    #[error("no {what} {id} in the video database")]
    NotFound { what: &'static str, id: i64 },
    #[error("object {id} has already ended")]
    AlreadyEnded { id: i64 },
    /// A change refused in the state things are in (a file another Run has claimed).
    #[error("{0}")]
    Conflict(String),
    /// A caller handed the database a value it cannot keep faithfully.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl DbError {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> DbError {
        DbError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> DbError + '_ {
        move |source| DbError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What happened, as events name it (docs/plans/video.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ObjectStarted,
    ObjectEnded,
    ZoneEntered,
    ZoneLeft,
    LineCrossed,
    Loitered,
    StreamOffline,
    StreamOnline,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::ObjectStarted,
        EventKind::ObjectEnded,
        EventKind::ZoneEntered,
        EventKind::ZoneLeft,
        EventKind::LineCrossed,
        EventKind::Loitered,
        EventKind::StreamOffline,
        EventKind::StreamOnline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ObjectStarted => "object_started",
            EventKind::ObjectEnded => "object_ended",
            EventKind::ZoneEntered => "zone_entered",
            EventKind::ZoneLeft => "zone_left",
            EventKind::LineCrossed => "line_crossed",
            EventKind::Loitered => "loitered",
            EventKind::StreamOffline => "stream_offline",
            EventKind::StreamOnline => "stream_online",
        }
    }

    /// Whether events of this kind are about an object (all but a stream's own).
    pub fn has_object(self) -> bool {
        !matches!(self, EventKind::StreamOffline | EventKind::StreamOnline)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an [`EventKind`]'s; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown event kind {got:?}; expected one of {}", valid_kinds())]
pub struct UnknownEventKind {
    pub got: String,
}

fn valid_kinds() -> String {
    EventKind::ALL.map(EventKind::as_str).join(", ")
}

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(name: &str) -> Result<EventKind, UnknownEventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownEventKind {
                got: name.to_string(),
            })
    }
}

/// An event to record. Object events name their object, which must be on the same stream;
/// zone events name the zone, and a line crossing its line and direction.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub time_ms: i64,
    pub stream: String,
    pub kind: EventKind,
    pub object: Option<i64>,
    pub class: Option<String>,
    pub score: Option<f32>,
    pub zone: Option<String>,
    pub line: Option<String>,
    pub direction: Option<Direction>,
    /// Anything else the event carries (`null` when nothing).
    pub details: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` with no object, zone, line or details yet.
    pub fn new(time_ms: i64, stream: impl Into<String>, kind: EventKind) -> NewEvent {
        NewEvent {
            time_ms,
            stream: stream.into(),
            kind,
            object: None,
            class: None,
            score: None,
            zone: None,
            line: None,
            direction: None,
            details: serde_json::Value::Null,
        }
    }
}

/// A recorded event, as the API shows it. `id` is the SSE id: it only grows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: i64,
    pub time_ms: i64,
    pub stream: String,
    pub kind: EventKind,
    pub object: Option<i64>,
    pub class: Option<String>,
    pub score: Option<f32>,
    pub zone: Option<String>,
    pub line: Option<String>,
    #[serde(serialize_with = "serialize_direction")]
    pub direction: Option<Direction>,
    /// The object's snapshot (relative to the snapshots folder), once it has one: an event
    /// recorded before the picture was taken shows it afterwards.
    pub snapshot: Option<String>,
    pub details: serde_json::Value,
}

fn serialize_direction<S: Serializer>(
    direction: &Option<Direction>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    direction.map(Direction::as_str).serialize(serializer)
}

fn parse_direction(text: &str) -> Option<Direction> {
    [Direction::LeftToRight, Direction::RightToLeft]
        .into_iter()
        .find(|d| d.as_str() == text)
}

/// Which events to list, oldest (lowest id) first. `since_ms` is inclusive, `until_ms`
/// exclusive; `after_id` is the last id a client saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub stream: Option<String>,
    pub kind: Option<EventKind>,
    pub class: Option<String>,
    pub zone: Option<String>,
    pub after_id: Option<i64>,
    /// The most events returned; the caller bounds it (0 returns none).
    pub limit: usize,
    /// The newest `limit` events (still listed oldest first) rather than the oldest.
    pub newest: bool,
}

/// One tracked object: open (`ended_ms` is `None`) while it is followed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    pub id: i64,
    pub stream: String,
    pub class: String,
    pub label: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub best_score: Option<f32>,
    /// x0, y0, x1, y1 of the best moment, in the pixels of the frame the snapshot was taken of.
    pub best_box: Option<[f32; 4]>,
    /// Relative to the snapshots folder; see [`VideoDb::snapshot_path`].
    pub snapshot: Option<String>,
    pub snapshot_bytes: u64,
}

/// Which objects to list, lowest id first; the times bound `started_ms` (since inclusive, until
/// exclusive).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectQuery {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub stream: Option<String>,
    pub class: Option<String>,
    /// `Some(true)`: only open objects; `Some(false)`: only ended ones.
    pub open: Option<bool>,
    pub after_id: Option<i64>,
    /// The most objects returned; the caller bounds it (0 returns none).
    pub limit: usize,
}

/// How much to keep (`[video.retention]`). `None` keeps everything by that measure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Ended objects, their events and stream events older than this go.
    pub max_age_ms: Option<i64>,
    /// While the snapshots together are larger, the oldest ended objects go.
    pub max_bytes: Option<u64>,
}

/// What a [`VideoDb::sweep`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub objects: usize,
    pub events: usize,
    /// Webhook deliveries of the removed events, whatever their state.
    pub deliveries: usize,
    /// Snapshot files deleted (a file already gone is not counted, nor an error).
    pub files: usize,
    /// The bytes of the removed objects' snapshots, as recorded.
    pub freed_bytes: u64,
    /// The snapshots' total afterwards; above `max_bytes` only when open objects hold it.
    pub snapshot_bytes: u64,
    /// Files whose rows are gone but that could not be deleted, with why: for the log.
    pub file_errors: Vec<String>,
}

/// `video.sqlite` and its snapshots in one data directory.
#[derive(Debug)]
pub struct VideoDb {
    pub(crate) conn: Connection,
    path: PathBuf,
    snapshots: PathBuf,
}

impl VideoDb {
    /// Opens (creating the directory, the file and the snapshots folder if missing) and
    /// migrates `dir/video.sqlite`. Pictures half written by a process that died are removed.
    pub fn open(dir: &Path) -> Result<VideoDb, DbError> {
        let path = dir.join(DB_FILE);
        let snapshots = dir.join(SNAPSHOT_DIR);
        let tmp = snapshots.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(DbError::io(&tmp))?;
        let open_error = |source| DbError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // Refuse a newer file before changing anything in it (even its journal mode). This is
        // also the first read, so a file that is not a database fails here, with its path.
        let found = user_version(&conn).map_err(open_error)?;
        if found > known_version() {
            return Err(DbError::NewerSchema {
                path,
                found,
                known: known_version(),
            });
        }
        // WAL lets API readers run beside the pipeline's writes. In WAL mode NORMAL syncs at
        // checkpoints, not at every commit: a commit survives a kill of the service, and a power
        // loss may lose the last few events but never the database's consistency.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_error)?;
        migrate(&mut conn, &path)?;
        for entry in fs::read_dir(&tmp).map_err(DbError::io(&tmp))? {
            let leftover = entry.map_err(DbError::io(&tmp))?.path();
            remove_if_present(&leftover).map_err(DbError::io(&leftover))?;
        }
        Ok(VideoDb {
            conn,
            path,
            snapshots,
        })
    }

    /// Every picture under `dir`'s `snapshots/DAY/ID.jpg`, as `DAY/ID.jpg` with the id. Reads
    /// the folders only, not the database: [`VideoDb::unrecorded_snapshots`] says which of
    /// them no object names (a crash between writing a picture and recording it leaves one).
    pub fn snapshot_files(dir: &Path) -> io::Result<Vec<(String, i64)>> {
        let snapshots = dir.join(SNAPSHOT_DIR);
        let mut found = Vec::new();
        for day in fs::read_dir(&snapshots)? {
            let day = day?;
            let name = day.file_name().to_string_lossy().into_owned();
            if name == TMP_DIR || !day.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(day.path())? {
                let file = file?.file_name().to_string_lossy().into_owned();
                if let Some(id) = file.strip_suffix(".jpg").and_then(|id| id.parse().ok()) {
                    found.push((format!("{name}/{file}"), id));
                }
            }
        }
        Ok(found)
    }

    /// Of `files` (`DAY/ID.jpg` with the id), those that the object `ID` does not name.
    pub fn unrecorded_snapshots(&self, files: &[(String, i64)]) -> Result<Vec<String>, DbError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT snapshot FROM objects WHERE id = ?1")?;
        let mut orphans = Vec::new();
        for (relative, id) in files {
            let named: Option<Option<String>> =
                statement.query_row([id], |row| row.get(0)).optional()?;
            if named.flatten().as_deref() != Some(relative.as_str()) {
                orphans.push(relative.clone());
            }
        }
        Ok(orphans)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the snapshot recorded as `relative` (an [`Object::snapshot`] or
    /// [`Event::snapshot`]) is on disk. Rows are checked when read, so such a path never leaves
    /// the snapshots folder.
    pub fn snapshot_path(&self, relative: &str) -> PathBuf {
        self.snapshots.join(relative)
    }

    /// Records an event; the returned one carries its id and the object's snapshot, if any.
    pub fn insert_event(&mut self, event: &NewEvent) -> Result<Event, DbError> {
        self.insert_event_with_deliveries(event, &[], 0)
    }

    /// Records an event and, in the same transaction, one pending delivery to each of
    /// `webhooks` (URLs), due at `now_ms`: a crash keeps both or neither.
    pub fn insert_event_with_deliveries(
        &mut self,
        event: &NewEvent,
        webhooks: &[String],
        now_ms: i64,
    ) -> Result<Event, DbError> {
        check_event(event)?;
        if !webhooks.is_empty() {
            check_time("delivery time", now_ms)?;
        }
        let tx = self.conn.transaction()?;
        let snapshot = match event.object {
            None => None,
            Some(id) => {
                let (stream, snapshot): (String, Option<String>) = tx
                    .query_row(
                        "SELECT stream, snapshot FROM objects WHERE id = ?1",
                        [id],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?
                    .ok_or(DbError::NotFound { what: "object", id })?;
                if stream != event.stream {
                    return Err(DbError::invalid(
                        format!("{} event", event.kind),
                        format!(
                            "object {id} is on stream {stream:?}, not {:?}",
                            event.stream
                        ),
                    ));
                }
                snapshot
            }
        };
        let details = serde_json::to_string(&event.details).map_err(|error| {
            DbError::invalid(format!("{} event details", event.kind), error.to_string())
        })?;
        tx.execute(
            "INSERT INTO events \
             (time_ms, stream, kind, object, class, score, zone, line, direction, json) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                event.time_ms,
                event.stream,
                event.kind.as_str(),
                event.object,
                event.class,
                event.score.map(f64::from),
                event.zone,
                event.line,
                event.direction.map(Direction::as_str),
                details,
            ],
        )?;
        let id = tx.last_insert_rowid();
        for url in webhooks {
            tx.execute(
                "INSERT INTO deliveries (event, url, created_ms, next_ms, state) \
                 VALUES (?1, ?2, ?3, ?3, 'pending')",
                params![id, url, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(Event {
            id,
            time_ms: event.time_ms,
            stream: event.stream.clone(),
            kind: event.kind,
            object: event.object,
            class: event.class.clone(),
            score: event.score,
            zone: event.zone.clone(),
            line: event.line.clone(),
            direction: event.direction,
            snapshot,
            details: event.details.clone(),
        })
    }

    pub fn events(&self, query: &EventQuery) -> Result<Vec<Event>, DbError> {
        let mut filter = Filter::default();
        filter.at_least("e.time_ms", query.since_ms);
        filter.below("e.time_ms", query.until_ms);
        filter.equal("e.stream", query.stream.clone());
        filter.equal("e.kind", query.kind.map(|k| k.as_str().to_string()));
        filter.equal("e.class", query.class.clone());
        filter.equal("e.zone", query.zone.clone());
        filter.above("e.id", query.after_id);
        let order = if query.newest { "DESC" } else { "ASC" };
        let sql = format!(
            "{EVENT_SELECT} {} ORDER BY e.id {order} LIMIT ?",
            filter.clause()
        );
        let mut events = self.query_events(&sql, filter.with_limit(query.limit))?;
        if query.newest {
            events.reverse();
        }
        Ok(events)
    }

    pub fn event(&self, id: i64) -> Result<Option<Event>, DbError> {
        let sql = format!("{EVENT_SELECT} WHERE e.id = ?");
        Ok(self.query_events(&sql, vec![Value::Integer(id)])?.pop())
    }

    fn query_events(&self, sql: &str, values: Vec<Value>) -> Result<Vec<Event>, DbError> {
        let mut statement = self.conn.prepare(sql)?;
        let mut rows = statement.query(params_from_iter(values))?;
        let mut events = Vec::new();
        while let Some(row) = rows.next()? {
            events.push(event_from_row(row)?);
        }
        Ok(events)
    }

    /// Records a new, open object and returns its id.
    pub fn start_object(
        &mut self,
        stream: &str,
        class: &str,
        label: Option<&str>,
        started_ms: i64,
    ) -> Result<i64, DbError> {
        check_name("object stream", stream)?;
        check_name("object class", class)?;
        check_time("object start", started_ms)?;
        self.conn.execute(
            "INSERT INTO objects (stream, class, label, started_ms) VALUES (?1, ?2, ?3, ?4)",
            params![stream, class, label, started_ms],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Ends an open object with its best moment, and its picture when one is given (otherwise
    /// the one [`VideoDb::set_object_snapshot`] took, if any, stays).
    pub fn end_object(
        &mut self,
        id: i64,
        ended_ms: i64,
        best_score: f32,
        best_box: [f32; 4],
        snapshot_jpeg: Option<&[u8]>,
    ) -> Result<(), DbError> {
        let open = self.open_object(id)?;
        check_time("object end", ended_ms)?;
        if ended_ms < open.started_ms {
            return Err(DbError::invalid(
                format!("end of object {id}"),
                format!("{ended_ms} ms is before its start, {} ms", open.started_ms),
            ));
        }
        let best_box = best_json(id, best_score, best_box)?;
        let (snapshot, bytes) = match snapshot_jpeg {
            Some(jpeg) => {
                let (relative, bytes) = self.write_snapshot(id, open.started_ms, jpeg)?;
                (Some(relative), bytes)
            }
            None => (open.snapshot, open.snapshot_bytes),
        };
        self.conn.execute(
            "UPDATE objects SET ended_ms = ?2, best_score = ?3, best_box = ?4, snapshot = ?5, \
             snapshot_bytes = ?6 WHERE id = ?1",
            params![
                id,
                ended_ms,
                f64::from(best_score),
                best_box,
                snapshot,
                bytes
            ],
        )?;
        Ok(())
    }

    /// Gives an open object its picture so far, with the score and box it shows, replacing any
    /// earlier one: a zone or line event wants a picture before the object ends.
    pub fn set_object_snapshot(
        &mut self,
        id: i64,
        best_score: f32,
        best_box: [f32; 4],
        jpeg: &[u8],
    ) -> Result<(), DbError> {
        let open = self.open_object(id)?;
        let best_box = best_json(id, best_score, best_box)?;
        let (snapshot, bytes) = self.write_snapshot(id, open.started_ms, jpeg)?;
        self.conn.execute(
            "UPDATE objects SET best_score = ?2, best_box = ?3, snapshot = ?4, \
             snapshot_bytes = ?5 WHERE id = ?1",
            params![id, f64::from(best_score), best_box, snapshot, bytes],
        )?;
        Ok(())
    }

    /// The object `id`, refused unless it exists and is open.
    fn open_object(&self, id: i64) -> Result<Object, DbError> {
        let object = self
            .object(id)?
            .ok_or(DbError::NotFound { what: "object", id })?;
        if object.ended_ms.is_some() {
            return Err(DbError::AlreadyEnded { id });
        }
        Ok(object)
    }

    /// Writes `jpeg` as object `id`'s picture (replacing the file whole if there is one) and
    /// returns its relative path and size. The file is complete and synced under its final name
    /// before this returns, so the row that is then updated never names half a picture.
    fn write_snapshot(
        &self,
        id: i64,
        started_ms: i64,
        jpeg: &[u8],
    ) -> Result<(String, u64), DbError> {
        if !(jpeg.starts_with(&[0xFF, 0xD8]) && jpeg.ends_with(&[0xFF, 0xD9])) {
            return Err(DbError::invalid(
                format!("snapshot of object {id}"),
                format!(
                    "{} bytes that are not a JPEG (no SOI marker at the start or no EOI \
                     marker at the end)",
                    jpeg.len()
                ),
            ));
        }
        let relative = format!("{}/{id}.jpg", utc_day(started_ms));
        self.write_whole(&self.snapshots.join(&relative), &format!("{id}.jpg"), jpeg)?;
        Ok((relative, jpeg.len() as u64))
    }

    /// Writes `bytes` as the file `path` (replacing it whole if there is one), creating its
    /// folder: written and synced under the temporary folder, renamed, and the folder synced,
    /// so the file is complete under its final name before this returns and a row may name
    /// it. Pictures of objects and of archives alike; `tmp_name` is unique to the picture.
    pub(crate) fn write_whole(
        &self,
        path: &Path,
        tmp_name: &str,
        bytes: &[u8],
    ) -> Result<(), DbError> {
        let dir = path.parent().unwrap_or(&self.snapshots);
        fs::create_dir_all(dir).map_err(DbError::io(dir))?;
        let tmp = self.snapshots.join(TMP_DIR).join(tmp_name);
        let written = File::create(&tmp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .map_err(DbError::io(&tmp));
        if let Err(error) = written {
            let _ = fs::remove_file(&tmp);
            return Err(error);
        }
        fs::rename(&tmp, path).map_err(DbError::io(path))?;
        // The rename is durable once the folder is synced; only then may a row name the file.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(DbError::io(dir))
    }

    pub fn object(&self, id: i64) -> Result<Option<Object>, DbError> {
        let sql = format!("{OBJECT_SELECT} WHERE id = ?");
        Ok(self.query_objects(&sql, vec![Value::Integer(id)])?.pop())
    }

    pub fn objects(&self, query: &ObjectQuery) -> Result<Vec<Object>, DbError> {
        let mut filter = Filter::default();
        filter.at_least("started_ms", query.since_ms);
        filter.below("started_ms", query.until_ms);
        filter.equal("stream", query.stream.clone());
        filter.equal("class", query.class.clone());
        filter.above("id", query.after_id);
        match query.open {
            Some(true) => filter.condition("ended_ms IS NULL"),
            Some(false) => filter.condition("ended_ms IS NOT NULL"),
            None => {}
        }
        let sql = format!("{OBJECT_SELECT} {} ORDER BY id LIMIT ?", filter.clause());
        self.query_objects(&sql, filter.with_limit(query.limit))
    }

    fn query_objects(&self, sql: &str, values: Vec<Value>) -> Result<Vec<Object>, DbError> {
        let mut statement = self.conn.prepare(sql)?;
        let mut rows = statement.query(params_from_iter(values))?;
        let mut objects = Vec::new();
        while let Some(row) = rows.next()? {
            objects.push(object_from_row(row)?);
        }
        Ok(objects)
    }

    /// Ends the objects a crashed or killed service left open, at `now_ms` (or their start, if
    /// later), with an `object_ended` event each, all in one transaction. Called once at start,
    /// before any stream runs; returns the events for delivery.
    pub fn close_open_objects(&mut self, now_ms: i64) -> Result<Vec<Event>, DbError> {
        self.close_open_objects_with_deliveries(now_ms, &|_| Vec::new())
    }

    /// [`VideoDb::close_open_objects`], with one pending delivery of each event to each URL
    /// `webhooks` gives for its stream, in the same transaction.
    pub fn close_open_objects_with_deliveries(
        &mut self,
        now_ms: i64,
        webhooks: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<Vec<Event>, DbError> {
        check_time("closing time", now_ms)?;
        let open = self.objects(&ObjectQuery {
            open: Some(true),
            limit: usize::MAX,
            ..ObjectQuery::default()
        })?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ids = Vec::with_capacity(open.len());
        let details = serde_json::json!({ "reason": "the video service restarted" });
        for object in &open {
            let ended_ms = now_ms.max(object.started_ms);
            tx.execute(
                "UPDATE objects SET ended_ms = ?2 WHERE id = ?1",
                params![object.id, ended_ms],
            )?;
            tx.execute(
                "INSERT INTO events (time_ms, stream, kind, object, class, score, json) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    ended_ms,
                    object.stream,
                    EventKind::ObjectEnded.as_str(),
                    object.id,
                    object.class,
                    object.best_score.map(f64::from),
                    details.to_string(),
                ],
            )?;
            let id = tx.last_insert_rowid();
            for url in webhooks(&object.stream) {
                tx.execute(
                    "INSERT INTO deliveries (event, url, created_ms, next_ms, state) \
                     VALUES (?1, ?2, ?3, ?3, 'pending')",
                    params![id, url, now_ms],
                )?;
            }
            ids.push(id);
        }
        tx.commit()?;
        ids.into_iter()
            .map(|id| {
                self.event(id)?
                    .ok_or(DbError::NotFound { what: "event", id })
            })
            .collect()
    }

    /// Adds or replaces a stream added through the API (its configuration as JSON).
    pub fn put_stream(
        &mut self,
        name: &str,
        json: &serde_json::Value,
        now_ms: i64,
    ) -> Result<(), DbError> {
        check_name("stream name", name)?;
        check_time("stream time", now_ms)?;
        self.conn.execute(
            "INSERT INTO streams (name, json, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3) \
             ON CONFLICT (name) DO UPDATE SET json = excluded.json, updated_ms = excluded.updated_ms",
            params![name, json.to_string(), now_ms],
        )?;
        Ok(())
    }

    /// Records that the file stream `name` was analysed to its end: `fingerprint` of the file,
    /// with the settings `spec`.
    pub fn set_file_stream_ended(
        &mut self,
        name: &str,
        fingerprint: &str,
        spec: &str,
        frames: u64,
        now_ms: i64,
    ) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO file_streams (name, fingerprint, spec, frames, finished_ms)              VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO UPDATE SET              fingerprint = excluded.fingerprint, spec = excluded.spec,              frames = excluded.frames, finished_ms = excluded.finished_ms",
            params![name, fingerprint, spec, frames as i64, now_ms],
        )?;
        Ok(())
    }

    /// When the file stream `name` was analysed to its end, and in how many frames, if it was
    /// with this file (`fingerprint`) and these settings (`spec`).
    pub fn file_stream_ended(
        &self,
        name: &str,
        fingerprint: &str,
        spec: &str,
    ) -> Result<Option<(i64, u64)>, DbError> {
        Ok(self
            .conn
            .query_row(
                "SELECT finished_ms, frames FROM file_streams                  WHERE name = ?1 AND fingerprint = ?2 AND spec = ?3",
                params![name, fingerprint, spec],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    /// Forgets that the file stream `name` was analysed (its settings were changed through
    /// the API, or it was removed): it is analysed again.
    pub fn forget_file_stream(&mut self, name: &str) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM file_streams WHERE name = ?1", [name])?;
        Ok(())
    }

    /// Removes a stream added through the API; false if there was none of that name.
    pub fn delete_stream(&mut self, name: &str) -> Result<bool, DbError> {
        Ok(self
            .conn
            .execute("DELETE FROM streams WHERE name = ?1", [name])?
            > 0)
    }

    /// The streams added through the API, by name.
    pub fn streams(&self) -> Result<Vec<(String, serde_json::Value)>, DbError> {
        let mut statement = self
            .conn
            .prepare("SELECT name, json FROM streams ORDER BY name")?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get::<_, String>(1)?)))?
            .collect::<Result<Vec<(String, String)>, _>>()?;
        rows.into_iter()
            .map(|(name, json)| {
                let value = serde_json::from_str(&json).map_err(|error| {
                    DbError::Corrupt(format!("stream {name:?}: its JSON: {error}"))
                })?;
                Ok((name, value))
            })
            .collect()
    }

    /// Applies retention at `now_ms`: ended objects that ended more than `max_age_ms` ago go,
    /// with their events and pictures, and so do stream events that old; then, while the
    /// snapshots total more than `max_bytes`, the ended objects that ended first go. Open
    /// objects, their events and pictures always stay. Rows go in one transaction; files after
    /// it commits, so a crash in between leaves unreferenced files, never rows without files.
    pub fn sweep(&mut self, retention: &Retention, now_ms: i64) -> Result<SweepReport, DbError> {
        check_time("sweep time", now_ms)?;
        if let Some(age) = retention.max_age_ms.filter(|age| *age < 0) {
            return Err(DbError::invalid(
                "retention max_age",
                format!("{age} ms is negative"),
            ));
        }
        let max_bytes = retention.max_bytes.map(|b| b.min(i64::MAX as u64) as i64);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut report = SweepReport::default();
        // (id, snapshot): what goes, oldest end first.
        let mut doomed: Vec<(i64, Option<String>)> = Vec::new();
        let mut doomed_ids = BTreeSet::new();
        let mut freed: i64 = 0;
        if let Some(age) = retention.max_age_ms {
            let cutoff = now_ms.saturating_sub(age);
            let mut statement = tx.prepare(
                "SELECT id, snapshot, snapshot_bytes FROM objects \
                 WHERE ended_ms IS NOT NULL AND ended_ms < ?1 ORDER BY ended_ms, id",
            )?;
            let mut rows = statement.query([cutoff])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                doomed.push((id, row.get(1)?));
                doomed_ids.insert(id);
                freed += row.get::<_, i64>(2)?;
            }
            report.deliveries += tx.execute(
                "DELETE FROM deliveries WHERE event IN \
                 (SELECT id FROM events WHERE object IS NULL AND time_ms < ?1)",
                [cutoff],
            )?;
            report.events += tx.execute(
                "DELETE FROM events WHERE object IS NULL AND time_ms < ?1",
                [cutoff],
            )?;
        }
        if let Some(max_bytes) = max_bytes {
            let total: i64 = tx.query_row(
                "SELECT COALESCE(SUM(snapshot_bytes), 0) FROM objects",
                [],
                |row| row.get(0),
            )?;
            if total - freed > max_bytes {
                let mut statement = tx.prepare(
                    "SELECT id, snapshot, snapshot_bytes FROM objects \
                     WHERE ended_ms IS NOT NULL AND snapshot_bytes > 0 ORDER BY ended_ms, id",
                )?;
                let mut rows = statement.query([])?;
                while total - freed > max_bytes {
                    let Some(row) = rows.next()? else { break };
                    let id: i64 = row.get(0)?;
                    if doomed_ids.insert(id) {
                        doomed.push((id, row.get(1)?));
                        freed += row.get::<_, i64>(2)?;
                    }
                }
            }
        }
        {
            let mut delete_deliveries = tx.prepare(
                "DELETE FROM deliveries WHERE event IN (SELECT id FROM events WHERE object = ?1)",
            )?;
            let mut delete_events = tx.prepare("DELETE FROM events WHERE object = ?1")?;
            let mut delete_object = tx.prepare("DELETE FROM objects WHERE id = ?1")?;
            for (id, _) in &doomed {
                report.deliveries += delete_deliveries.execute([id])?;
                report.events += delete_events.execute([id])?;
                report.objects += delete_object.execute([id])?;
            }
        }
        report.snapshot_bytes = tx.query_row(
            "SELECT COALESCE(SUM(snapshot_bytes), 0) FROM objects",
            [],
            |row| row.get::<_, i64>(0),
        )? as u64;
        tx.commit()?;
        report.freed_bytes = freed as u64;
        let mut days = BTreeSet::new();
        for relative in doomed.into_iter().filter_map(|(_, snapshot)| snapshot) {
            let path = self.snapshot_path(&relative);
            match fs::remove_file(&path) {
                Ok(()) => report.files += 1,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => report
                    .file_errors
                    .push(format!("{}: {error}", path.display())),
            }
            if let Some(day) = path.parent() {
                days.insert(day.to_path_buf());
            }
        }
        // A day's folder goes with its last picture; one still holding files stays.
        for day in days {
            let _ = fs::remove_dir(day);
        }
        Ok(report)
    }
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// To be tried at `next_ms`.
    Pending,
    Delivered,
    /// Given up: a permanent refusal, or retried for too long.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// One event on its way to one webhook (the outbox's row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub event: i64,
    pub url: String,
    pub attempts: u32,
    pub created_ms: i64,
    pub next_ms: i64,
    pub state: DeliveryState,
    /// Why the last try failed, for people.
    pub last_error: Option<String>,
}

/// How many deliveries are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// What became of one try, to record with [`VideoDb::record_attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Try again at this time.
    Retry {
        next_ms: i64,
        error: String,
    },
    Failed {
        error: String,
    },
}

const DELIVERY_SELECT: &str = "SELECT id, event, url, attempts, created_ms, next_ms, state, \
     last_error FROM deliveries";

impl VideoDb {
    /// Pending deliveries due at `now_ms`, the earliest due first, at most `limit`.
    pub fn due_deliveries(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, DbError> {
        let sql = format!(
            "{DELIVERY_SELECT} WHERE state = 'pending' AND next_ms <= ?1 \
             ORDER BY next_ms, id LIMIT ?2"
        );
        self.query_deliveries(&sql, params![now_ms, limit.min(i64::MAX as usize) as i64])
    }

    /// When the earliest pending delivery is due; `None` when none is pending.
    pub fn next_delivery_ms(&self) -> Result<Option<i64>, DbError> {
        Ok(self.conn.query_row(
            "SELECT MIN(next_ms) FROM deliveries WHERE state = 'pending'",
            [],
            |row| row.get(0),
        )?)
    }

    /// The deliveries of one event, by id.
    pub fn deliveries_of(&self, event: i64) -> Result<Vec<Delivery>, DbError> {
        let sql = format!("{DELIVERY_SELECT} WHERE event = ?1 ORDER BY id");
        self.query_deliveries(&sql, params![event])
    }

    /// The most recent failed deliveries, newest first, at most `limit`.
    pub fn failed_deliveries(&self, limit: usize) -> Result<Vec<Delivery>, DbError> {
        let sql = format!("{DELIVERY_SELECT} WHERE state = 'failed' ORDER BY id DESC LIMIT ?1");
        self.query_deliveries(&sql, params![limit.min(i64::MAX as usize) as i64])
    }

    pub fn delivery_counts(&self) -> Result<DeliveryCounts, DbError> {
        let mut statement = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM deliveries GROUP BY state")?;
        let mut rows = statement.query([])?;
        let mut counts = DeliveryCounts::default();
        while let Some(row) = rows.next()? {
            let state: String = row.get(0)?;
            let n = row.get::<_, i64>(1)? as u64;
            match state.as_str() {
                "pending" => counts.pending = n,
                "delivered" => counts.delivered = n,
                "failed" => counts.failed = n,
                other => {
                    return Err(DbError::Corrupt(format!(
                        "deliveries: unknown state {other:?}"
                    )))
                }
            }
        }
        Ok(counts)
    }

    /// Records one more try of pending delivery `id` and what became of it.
    pub fn record_attempt(&mut self, id: i64, attempt: &Attempt) -> Result<(), DbError> {
        let (state, next_ms, error) = match attempt {
            Attempt::Delivered => (DeliveryState::Delivered, None, None),
            Attempt::Retry { next_ms, error } => {
                check_time("next delivery time", *next_ms)?;
                (DeliveryState::Pending, Some(*next_ms), Some(error.as_str()))
            }
            Attempt::Failed { error } => (DeliveryState::Failed, None, Some(error.as_str())),
        };
        let changed = self.conn.execute(
            "UPDATE deliveries SET attempts = attempts + 1, state = ?2, \
             next_ms = COALESCE(?3, next_ms), last_error = COALESCE(?4, last_error) \
             WHERE id = ?1 AND state = 'pending'",
            params![id, state.as_str(), next_ms, error],
        )?;
        if changed == 0 {
            return Err(DbError::NotFound {
                what: "pending delivery",
                id,
            });
        }
        Ok(())
    }

    fn query_deliveries(
        &self,
        sql: &str,
        values: impl rusqlite::Params,
    ) -> Result<Vec<Delivery>, DbError> {
        let mut statement = self.conn.prepare(sql)?;
        let mut rows = statement.query(values)?;
        let mut deliveries = Vec::new();
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let state: String = row.get(6)?;
            let state = [
                DeliveryState::Pending,
                DeliveryState::Delivered,
                DeliveryState::Failed,
            ]
            .into_iter()
            .find(|s| s.as_str() == state)
            .ok_or_else(|| DbError::Corrupt(format!("delivery {id}: unknown state {state:?}")))?;
            deliveries.push(Delivery {
                id,
                event: row.get(1)?,
                url: row.get(2)?,
                attempts: row.get::<_, i64>(3)?.clamp(0, u32::MAX as i64) as u32,
                created_ms: row.get(4)?,
                next_ms: row.get(5)?,
                state,
                last_error: row.get(7)?,
            });
        }
        Ok(deliveries)
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Brings the database up to [`known_version`], one script per transaction, so that a crash in
/// the middle leaves a whole version the next open continues from.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    loop {
        // IMMEDIATE takes the write lock before reading the version, so two processes opening
        // a fresh file cannot both apply one script.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = user_version(&tx)?;
        if found > known_version() {
            return Err(DbError::NewerSchema {
                path: path.to_path_buf(),
                found,
                known: known_version(),
            });
        }
        if found == known_version() {
            return Ok(());
        }
        if found < 0 {
            return Err(DbError::Corrupt(format!(
                "{}: negative schema version {found}",
                path.display()
            )));
        }
        tx.execute_batch(MIGRATIONS[found as usize])
            .map_err(|source| {
                DbError::Corrupt(format!(
                    "{}: migration to schema version {} failed: {source}",
                    path.display(),
                    found + 1
                ))
            })?;
        // user_version is in the database header, written by this same transaction.
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
    }
}

const EVENT_SELECT: &str = "SELECT e.id, e.time_ms, e.stream, e.kind, e.object, e.class, \
     e.score, e.zone, e.line, e.direction, e.json, o.snapshot \
     FROM events e LEFT JOIN objects o ON o.id = e.object";

const OBJECT_SELECT: &str = "SELECT id, stream, class, label, started_ms, ended_ms, best_score, \
     best_box, snapshot, snapshot_bytes FROM objects";

fn event_from_row(row: &rusqlite::Row<'_>) -> Result<Event, DbError> {
    let id: i64 = row.get(0)?;
    let place = || format!("event {id}");
    let kind: String = row.get(3)?;
    let kind = kind
        .parse()
        .map_err(|error| DbError::Corrupt(format!("{}: {error}", place())))?;
    let direction = row
        .get::<_, Option<String>>(9)?
        .map(|text| {
            parse_direction(&text).ok_or_else(|| {
                DbError::Corrupt(format!(
                    "{}: unknown direction {text:?} (expected left_to_right or right_to_left)",
                    place()
                ))
            })
        })
        .transpose()?;
    let details: String = row.get(10)?;
    let details = serde_json::from_str(&details)
        .map_err(|error| DbError::Corrupt(format!("{}: its JSON: {error}", place())))?;
    Ok(Event {
        id,
        time_ms: row.get(1)?,
        stream: row.get(2)?,
        kind,
        object: row.get(4)?,
        class: row.get(5)?,
        score: row.get::<_, Option<f64>>(6)?.map(|s| s as f32),
        zone: row.get(7)?,
        line: row.get(8)?,
        direction,
        snapshot: checked_snapshot(row.get(11)?, &place)?,
        details,
    })
}

fn object_from_row(row: &rusqlite::Row<'_>) -> Result<Object, DbError> {
    let id: i64 = row.get(0)?;
    let place = || format!("object {id}");
    let best_box = row
        .get::<_, Option<String>>(7)?
        .map(|text| {
            serde_json::from_str::<[f32; 4]>(&text).map_err(|error| {
                DbError::Corrupt(format!("{}: best_box {text:?}: {error}", place()))
            })
        })
        .transpose()?;
    let bytes: i64 = row.get(9)?;
    Ok(Object {
        id,
        stream: row.get(1)?,
        class: row.get(2)?,
        label: row.get(3)?,
        started_ms: row.get(4)?,
        ended_ms: row.get(5)?,
        best_score: row.get::<_, Option<f64>>(6)?.map(|s| s as f32),
        best_box,
        snapshot: checked_snapshot(row.get(8)?, &place)?,
        snapshot_bytes: u64::try_from(bytes).map_err(|_| {
            DbError::Corrupt(format!("{}: negative snapshot_bytes {bytes}", place()))
        })?,
    })
}

/// A snapshot path read from the file, refused unless it has the shape Flowers writes
/// (`YYYY-MM-DD/ID.jpg`), so that no row can point outside the snapshots folder.
fn checked_snapshot(
    snapshot: Option<String>,
    place: &dyn Fn() -> String,
) -> Result<Option<String>, DbError> {
    let Some(text) = snapshot else {
        return Ok(None);
    };
    let well_formed = text.split_once('/').is_some_and(|(day, file)| {
        day.len() == 10
            && day.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            })
            && file
                .strip_suffix(".jpg")
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    });
    if well_formed {
        Ok(Some(text))
    } else {
        Err(DbError::Corrupt(format!(
            "{}: snapshot path {text:?} is not of the form YYYY-MM-DD/ID.jpg",
            place()
        )))
    }
}

fn check_event(event: &NewEvent) -> Result<(), DbError> {
    let what = format!("{} event", event.kind);
    let fail = |reason: &str| Err(DbError::invalid(what.clone(), reason));
    check_name(&format!("{what} stream"), &event.stream)?;
    check_time(&what, event.time_ms)?;
    match (event.kind.has_object(), event.object) {
        (true, None) => return fail("it needs the object it is about"),
        (false, Some(_)) => return fail("a stream's own event has no object"),
        _ => {}
    }
    let zone_kind = matches!(
        event.kind,
        EventKind::ZoneEntered | EventKind::ZoneLeft | EventKind::Loitered
    );
    if zone_kind && event.zone.is_none() {
        return fail("it needs its zone");
    }
    if event.kind == EventKind::LineCrossed && (event.line.is_none() || event.direction.is_none()) {
        return fail("it needs its line and direction");
    }
    if event.score.is_some_and(|score| !score.is_finite()) {
        return fail("its score is not a finite number");
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), DbError> {
    if name.is_empty() {
        return Err(DbError::invalid(what, "it is empty"));
    }
    Ok(())
}

fn check_time(what: &str, time_ms: i64) -> Result<(), DbError> {
    if !(0..=MAX_TIME_MS).contains(&time_ms) {
        return Err(DbError::invalid(
            what,
            format!("{time_ms} ms is not a time between 1970 and the year 9999"),
        ));
    }
    Ok(())
}

/// The best moment's box as stored, refused unless it and the score are finite.
fn best_json(id: i64, score: f32, bbox: [f32; 4]) -> Result<String, DbError> {
    if !score.is_finite() || !bbox.iter().all(|v| v.is_finite()) {
        return Err(DbError::invalid(
            format!("best moment of object {id}"),
            format!("score {score} and box {bbox:?} must be finite numbers"),
        ));
    }
    Ok(serde_json::to_string(&bbox).expect("finite floats serialise"))
}

/// Removes a file, treating one already gone as removed.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// The UTC calendar day of a time (milliseconds since 1970), as `YYYY-MM-DD`: the civil-from-
/// days conversion of Howard Hinnant's date algorithms, so no calendar crate is needed.
fn utc_day(time_ms: i64) -> String {
    let z = time_ms.div_euclid(MS_PER_DAY) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The WHERE clause of a list query, built from the filters that are set.
#[derive(Default)]
struct Filter {
    conditions: Vec<String>,
    values: Vec<Value>,
}

impl Filter {
    fn condition(&mut self, condition: &str) {
        self.conditions.push(condition.to_string());
    }

    fn compare(&mut self, column: &str, operator: &str, value: Option<Value>) {
        if let Some(value) = value {
            self.conditions.push(format!("{column} {operator} ?"));
            self.values.push(value);
        }
    }

    fn equal(&mut self, column: &str, value: Option<String>) {
        self.compare(column, "=", value.map(Value::Text));
    }

    fn at_least(&mut self, column: &str, value: Option<i64>) {
        self.compare(column, ">=", value.map(Value::Integer));
    }

    fn below(&mut self, column: &str, value: Option<i64>) {
        self.compare(column, "<", value.map(Value::Integer));
    }

    fn above(&mut self, column: &str, value: Option<i64>) {
        self.compare(column, ">", value.map(Value::Integer));
    }

    fn clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conditions.join(" AND "))
        }
    }

    /// The values, then the LIMIT's.
    fn with_limit(self, limit: usize) -> Vec<Value> {
        let mut values = self.values;
        values.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        values
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use super::*;

    /// 2023-11-14T00:00:00Z.
    const T0: i64 = 1_699_920_000_000;

    fn temp_db() -> (tempfile::TempDir, VideoDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = VideoDb::open(dir.path()).unwrap();
        (dir, db)
    }

    #[test]
    fn pictures_no_object_names_are_found_and_recorded_ones_are_not() {
        let (dir, mut db) = temp_db();
        let id = db.start_object("front", "car", None, T0).unwrap();
        db.end_object(id, T0 + 10, 0.9, [0.0, 0.0, 1.0, 1.0], Some(&jpeg(1, 64)))
            .unwrap();
        let recorded = db.object(id).unwrap().unwrap().snapshot.unwrap();
        // A crash between writing a picture and recording it: a file no row names, under an id
        // that exists and under one that does not.
        let day = dir.path().join(SNAPSHOT_DIR).join(utc_day(T0));
        let other = db.start_object("front", "car", None, T0).unwrap();
        std::fs::write(day.join(format!("{other}.jpg")), jpeg(2, 64)).unwrap();
        std::fs::write(day.join("999.jpg"), jpeg(3, 64)).unwrap();
        std::fs::write(day.join("notes.txt"), b"not a picture").unwrap();
        let mut files = VideoDb::snapshot_files(dir.path()).unwrap();
        files.sort();
        assert_eq!(files.len(), 3, "{files:?}");
        let mut orphans = db.unrecorded_snapshots(&files).unwrap();
        orphans.sort();
        let day = utc_day(T0);
        let mut expected = vec![format!("{day}/999.jpg"), format!("{day}/{other}.jpg")];
        expected.sort();
        assert_eq!(orphans, expected);
        assert!(!orphans.contains(&recorded));
    }

    /// Bytes that pass the JPEG check, `len` long, their content a function of `seed`.
    fn jpeg(seed: i64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0xFF, 0xD8];
        bytes.extend((0..len.saturating_sub(4)).map(|i| (i as i64 + seed) as u8 & 0x7F));
        bytes.extend([0xFF, 0xD9]);
        bytes
    }

    fn object_event(stream: &str, object: i64, kind: EventKind, time_ms: i64) -> NewEvent {
        NewEvent {
            object: Some(object),
            class: Some("person".into()),
            zone: Some("door".into()),
            ..NewEvent::new(time_ms, stream, kind)
        }
    }

    fn all_events(db: &VideoDb) -> Vec<Event> {
        db.events(&EventQuery {
            limit: 1000,
            ..EventQuery::default()
        })
        .unwrap()
    }

    fn ids<T>(items: &[T], id: impl Fn(&T) -> i64) -> Vec<i64> {
        items.iter().map(id).collect()
    }

    /// An ended object with a picture of `bytes` bytes and one zone event, ended at `ended_ms`.
    fn ended_object(db: &mut VideoDb, ended_ms: i64, bytes: usize) -> i64 {
        let id = db
            .start_object("front", "person", None, ended_ms - 1_000)
            .unwrap();
        db.insert_event(&object_event(
            "front",
            id,
            EventKind::ZoneEntered,
            ended_ms - 500,
        ))
        .unwrap();
        db.end_object(
            id,
            ended_ms,
            0.9,
            [1.0, 2.0, 3.0, 4.0],
            Some(&jpeg(id, bytes)),
        )
        .unwrap();
        id
    }

    #[test]
    fn open_creates_the_folders_and_the_file_and_sets_the_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/video");
        let db = VideoDb::open(&data).unwrap();
        assert_eq!(db.path(), data.join("video.sqlite"));
        assert!(data.join("video.sqlite").is_file());
        assert!(data.join("snapshots").is_dir());
        let pragma = |name: &str| -> String {
            db.conn
                .pragma_query_value(None, name, |row| row.get::<_, Value>(0))
                .map(|value| match value {
                    Value::Integer(i) => i.to_string(),
                    Value::Text(text) => text,
                    other => format!("{other:?}"),
                })
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "wal");
        assert_eq!(pragma("synchronous"), "1", "NORMAL");
        assert_eq!(pragma("foreign_keys"), "1");
        assert_eq!(pragma("user_version"), known_version().to_string());
        assert_eq!(pragma("busy_timeout"), "5000");
    }

    #[test]
    fn reopening_keeps_the_rows_and_migrates_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let mut db = VideoDb::open(dir.path()).unwrap();
            db.start_object("front", "car", Some("van"), T0).unwrap()
        };
        let db = VideoDb::open(dir.path()).unwrap();
        let object = db.object(id).unwrap().unwrap();
        assert_eq!(object.class, "car");
        assert_eq!(object.label.as_deref(), Some("van"));
        assert_eq!(user_version(&db.conn).unwrap(), known_version());
    }

    #[test]
    fn a_version_1_file_gains_the_outbox_and_the_archives_and_keeps_its_events() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO events (time_ms, stream, kind, json) \
                 VALUES (?1, 'front', 'stream_online', 'null')",
                [T0],
            )
            .unwrap();
        }
        let mut db = VideoDb::open(dir.path()).unwrap();
        assert_eq!(user_version(&db.conn).unwrap(), 3);
        assert_eq!(all_events(&db).len(), 1);
        assert!(db.analyses(T0).unwrap().is_empty());
        let event = db
            .insert_event_with_deliveries(
                &NewEvent::new(T0, "front", EventKind::StreamOffline),
                &["http://a/hook".to_string()],
                T0,
            )
            .unwrap();
        assert_eq!(db.deliveries_of(event.id).unwrap().len(), 1);
    }

    #[test]
    fn a_database_from_a_newer_flowers_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", known_version() + 1)
                .unwrap();
        }
        let err = VideoDb::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, DbError::NewerSchema { found, .. } if found == known_version() + 1),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        // Refused before anything changed: still the rollback journal, no tables.
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        // Fixed pseudo-random bytes (xorshift), long enough to hold a whole header.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let bytes: Vec<u8> = (0..8192)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fs::write(&path, bytes).unwrap();
        let err = VideoDb::open(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DbError::Open { .. }), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a database"), "{message}");
    }

    #[test]
    fn a_half_written_picture_left_by_a_dead_process_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(VideoDb::open(dir.path()).unwrap());
        let leftover = dir.path().join("snapshots/tmp/7.jpg");
        fs::write(&leftover, [0xFF, 0xD8, 1, 2]).unwrap();
        let _db = VideoDb::open(dir.path()).unwrap();
        assert!(!leftover.exists());
    }

    #[test]
    fn event_kinds_have_one_name_each_and_unknown_names_list_the_valid_ones() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        let err = "object_entered".parse::<EventKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown event kind \"object_entered\"; expected one of object_started, \
             object_ended, zone_entered, zone_left, line_crossed, loitered, stream_offline, \
             stream_online"
        );
    }

    #[test]
    fn events_are_listed_by_id_through_every_filter() {
        let (_dir, mut db) = temp_db();
        let front = db.start_object("front", "person", None, T0).unwrap();
        let back = db.start_object("back", "car", None, T0).unwrap();
        let mut inserted = Vec::new();
        let mut add = |db: &mut VideoDb, event: NewEvent| {
            let stored = db.insert_event(&event).unwrap();
            inserted.push(stored.id);
            stored.id
        };
        let e1 = add(
            &mut db,
            object_event("front", front, EventKind::ObjectStarted, T0),
        );
        let e2 = add(
            &mut db,
            object_event("front", front, EventKind::ZoneEntered, T0 + 10),
        );
        let e3 = add(
            &mut db,
            NewEvent {
                class: Some("car".into()),
                zone: Some("drive".into()),
                ..object_event("back", back, EventKind::ZoneEntered, T0 + 20)
            },
        );
        let e4 = add(
            &mut db,
            NewEvent::new(T0 + 30, "back", EventKind::StreamOffline),
        );
        assert!(e1 < e2 && e2 < e3 && e3 < e4);
        let text = |t: &str| Some(t.to_string());
        let query = |set: &dyn Fn(&mut EventQuery)| {
            let mut query = EventQuery {
                limit: 100,
                ..EventQuery::default()
            };
            set(&mut query);
            query
        };
        let cases = [
            (query(&|_| {}), vec![e1, e2, e3, e4]),
            (query(&|q| q.stream = text("front")), vec![e1, e2]),
            (
                query(&|q| q.kind = Some(EventKind::ZoneEntered)),
                vec![e2, e3],
            ),
            (query(&|q| q.class = text("car")), vec![e3]),
            (query(&|q| q.zone = text("door")), vec![e1, e2]),
            (
                query(&|q| (q.since_ms, q.until_ms) = (Some(T0 + 10), Some(T0 + 30))),
                vec![e2, e3],
            ),
            (query(&|q| q.after_id = Some(e2)), vec![e3, e4]),
            (query(&|q| q.limit = 2), vec![e1, e2]),
            (query(&|q| (q.limit, q.newest) = (2, true)), vec![e3, e4]),
            (
                query(&|q| (q.stream, q.newest) = (text("front"), true)),
                vec![e1, e2],
            ),
        ];
        for (query, expected) in cases {
            let events = db.events(&query).unwrap();
            assert_eq!(ids(&events, |e| e.id), expected, "{query:?}");
        }
        assert_eq!(
            db.event(e3).unwrap().unwrap().zone.as_deref(),
            Some("drive")
        );
        assert_eq!(db.event(e4 + 1).unwrap(), None);
    }

    #[test]
    fn an_event_shows_its_objects_snapshot_once_there_is_one() {
        let (_dir, mut db) = temp_db();
        let id = db.start_object("front", "person", None, T0).unwrap();
        let crossed = db
            .insert_event(&NewEvent {
                object: Some(id),
                line: Some("gate".into()),
                direction: Some(Direction::LeftToRight),
                score: Some(0.75),
                details: serde_json::json!({ "track": 3 }),
                ..NewEvent::new(T0 + 1_000, "front", EventKind::LineCrossed)
            })
            .unwrap();
        assert_eq!(crossed.snapshot, None);
        db.set_object_snapshot(id, 0.75, [1.0, 2.0, 3.0, 4.0], &jpeg(1, 100))
            .unwrap();
        let relative = "2023-11-14/1.jpg".to_string();
        let read = db.event(crossed.id).unwrap().unwrap();
        assert_eq!(read.snapshot, Some(relative.clone()));
        assert_eq!(
            Event {
                snapshot: None,
                ..read.clone()
            },
            crossed
        );
        // Events recorded afterwards carry it at once.
        let left = db
            .insert_event(&object_event("front", id, EventKind::ZoneLeft, T0 + 2_000))
            .unwrap();
        assert_eq!(left.snapshot, Some(relative));
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::json!({
                "id": crossed.id, "time_ms": T0 + 1_000, "stream": "front",
                "kind": "line_crossed", "object": id, "class": null, "score": 0.75,
                "zone": null, "line": "gate", "direction": "left_to_right",
                "snapshot": "2023-11-14/1.jpg", "details": { "track": 3 }
            })
        );
    }

    #[test]
    fn events_that_do_not_make_sense_are_refused_saying_why() {
        let (_dir, mut db) = temp_db();
        let id = db.start_object("front", "person", None, T0).unwrap();
        let refused = |db: &mut VideoDb, event: NewEvent| db.insert_event(&event).unwrap_err();
        let err = refused(
            &mut db,
            object_event("front", id + 1, EventKind::ZoneEntered, T0),
        );
        assert_eq!(err.to_string(), "no object 2 in the video database");
        let err = refused(
            &mut db,
            object_event("back", id, EventKind::ZoneEntered, T0),
        );
        assert_eq!(
            err.to_string(),
            "invalid zone_entered event: object 1 is on stream \"front\", not \"back\""
        );
        let err = refused(
            &mut db,
            NewEvent::new(T0, "front", EventKind::ObjectStarted),
        );
        assert!(err.to_string().contains("needs the object"), "{err}");
        let err = refused(
            &mut db,
            NewEvent {
                object: Some(id),
                ..NewEvent::new(T0, "front", EventKind::StreamOnline)
            },
        );
        assert!(err.to_string().contains("has no object"), "{err}");
        let err = refused(
            &mut db,
            NewEvent {
                zone: None,
                ..object_event("front", id, EventKind::Loitered, T0)
            },
        );
        assert!(err.to_string().contains("needs its zone"), "{err}");
        let err = refused(
            &mut db,
            object_event("front", id, EventKind::LineCrossed, T0),
        );
        assert!(err.to_string().contains("line and direction"), "{err}");
        let err = refused(
            &mut db,
            NewEvent {
                score: Some(f32::NAN),
                ..object_event("front", id, EventKind::ZoneLeft, T0)
            },
        );
        assert!(err.to_string().contains("score"), "{err}");
        let err = refused(&mut db, object_event("front", id, EventKind::ZoneLeft, -1));
        assert!(err.to_string().contains("-1 ms"), "{err}");
        let err = refused(&mut db, NewEvent::new(T0, "", EventKind::StreamOnline));
        assert_eq!(
            err.to_string(),
            "invalid stream_online event stream: it is empty"
        );
        assert!(all_events(&db).is_empty());
    }

    #[test]
    fn an_object_ends_with_its_best_moment_and_its_picture_under_its_utc_day() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = VideoDb::open(dir.path()).unwrap();
        // Started a millisecond before midnight UTC: the picture belongs to the 13th.
        let id = db.start_object("front", "person", None, T0 - 1).unwrap();
        assert_eq!(db.object(id).unwrap().unwrap().ended_ms, None);
        let picture = jpeg(5, 3_000);
        db.end_object(
            id,
            T0 + 5_000,
            0.8,
            [10.0, 20.0, 30.0, 60.0],
            Some(&picture),
        )
        .unwrap();
        let object = db.object(id).unwrap().unwrap();
        assert_eq!(
            object,
            Object {
                id,
                stream: "front".into(),
                class: "person".into(),
                label: None,
                started_ms: T0 - 1,
                ended_ms: Some(T0 + 5_000),
                best_score: Some(0.8),
                best_box: Some([10.0, 20.0, 30.0, 60.0]),
                snapshot: Some(format!("2023-11-13/{id}.jpg")),
                snapshot_bytes: 3_000,
            }
        );
        let path = db.snapshot_path(object.snapshot.as_deref().unwrap());
        assert_eq!(
            path,
            dir.path().join(format!("snapshots/2023-11-13/{id}.jpg"))
        );
        assert_eq!(fs::read(&path).unwrap(), picture);
        assert_eq!(
            fs::read_dir(dir.path().join("snapshots/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_later_picture_replaces_the_open_objects_and_ending_without_one_keeps_it() {
        let (_dir, mut db) = temp_db();
        let id = db.start_object("front", "person", None, T0).unwrap();
        db.set_object_snapshot(id, 0.5, [0.0, 0.0, 5.0, 5.0], &jpeg(1, 500))
            .unwrap();
        db.set_object_snapshot(id, 0.7, [1.0, 1.0, 6.0, 6.0], &jpeg(2, 700))
            .unwrap();
        db.end_object(id, T0 + 10, 0.7, [1.0, 1.0, 6.0, 6.0], None)
            .unwrap();
        let object = db.object(id).unwrap().unwrap();
        assert_eq!(object.snapshot_bytes, 700);
        assert_eq!(object.best_score, Some(0.7));
        let path = db.snapshot_path(object.snapshot.as_deref().unwrap());
        assert_eq!(fs::read(path).unwrap(), jpeg(2, 700));
        let objects = db
            .objects(&ObjectQuery {
                open: Some(false),
                stream: Some("front".into()),
                limit: 10,
                ..ObjectQuery::default()
            })
            .unwrap();
        assert_eq!(ids(&objects, |o| o.id), vec![id]);
    }

    #[test]
    fn objects_are_listed_by_id_through_every_filter() {
        let (_dir, mut db) = temp_db();
        let a = db.start_object("front", "person", None, T0).unwrap();
        let b = db.start_object("front", "car", None, T0 + 10).unwrap();
        let c = db.start_object("back", "person", None, T0 + 20).unwrap();
        db.end_object(b, T0 + 15, 0.5, [0.0; 4], None).unwrap();
        let text = |t: &str| Some(t.to_string());
        let query = |set: &dyn Fn(&mut ObjectQuery)| {
            let mut query = ObjectQuery {
                limit: 10,
                ..ObjectQuery::default()
            };
            set(&mut query);
            query
        };
        let cases = [
            (query(&|_| {}), vec![a, b, c]),
            (query(&|q| q.stream = text("front")), vec![a, b]),
            (query(&|q| q.class = text("person")), vec![a, c]),
            (query(&|q| q.open = Some(true)), vec![a, c]),
            (query(&|q| q.open = Some(false)), vec![b]),
            (
                query(&|q| (q.since_ms, q.until_ms) = (Some(T0 + 10), Some(T0 + 20))),
                vec![b],
            ),
            (query(&|q| q.after_id = Some(a)), vec![b, c]),
            (query(&|q| q.limit = 1), vec![a]),
        ];
        for (query, expected) in cases {
            let objects = db.objects(&query).unwrap();
            assert_eq!(ids(&objects, |o| o.id), expected, "{query:?}");
        }
    }

    #[test]
    fn object_mistakes_are_refused_saying_what_and_which() {
        let (dir, mut db) = temp_db();
        let id = db.start_object("front", "person", None, T0).unwrap();
        let err = db.end_object(id, T0 - 1, 0.5, [0.0; 4], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid end of object 1: {} ms is before its start, {T0} ms",
                T0 - 1
            )
        );
        let err = db
            .end_object(id, T0, f32::INFINITY, [0.0; 4], None)
            .unwrap_err();
        assert!(err.to_string().contains("best moment of object 1"), "{err}");
        let err = db
            .set_object_snapshot(id, 0.5, [0.0; 4], b"GIF89a not a jpeg")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid snapshot of object 1: 17 bytes that are not a JPEG (no SOI marker at the \
             start or no EOI marker at the end)"
        );
        let err = db
            .set_object_snapshot(9, 0.5, [0.0; 4], &jpeg(0, 10))
            .unwrap_err();
        assert_eq!(err.to_string(), "no object 9 in the video database");
        db.end_object(id, T0, 0.5, [0.0; 4], None).unwrap();
        let err = db.end_object(id, T0, 0.5, [0.0; 4], None).unwrap_err();
        assert_eq!(err.to_string(), "object 1 has already ended");
        let err = db
            .set_object_snapshot(id, 0.5, [0.0; 4], &jpeg(0, 10))
            .unwrap_err();
        assert!(matches!(err, DbError::AlreadyEnded { id: 1 }), "{err}");
        let err = db.start_object("front", "", None, T0).unwrap_err();
        assert_eq!(err.to_string(), "invalid object class: it is empty");
        // Nothing refused left a file behind.
        let day = dir.path().join("snapshots/2023-11-14");
        assert!(!day.exists() || fs::read_dir(day).unwrap().count() == 0);
    }

    #[test]
    fn utc_days_follow_the_calendar() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(T0), "2023-11-14");
        assert_eq!(utc_day(T0 - 1), "2023-11-13");
        assert_eq!(utc_day(1_709_164_800_000), "2024-02-29");
        assert_eq!(utc_day(951_868_800_000 - 1), "2000-02-29");
        assert_eq!(utc_day(946_598_400_000), "1999-12-31");
        assert_eq!(utc_day(MAX_TIME_MS), "9999-12-31");
    }

    #[test]
    fn objects_left_open_by_a_crash_end_at_start_with_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let (open, ended) = {
            let mut db = VideoDb::open(dir.path()).unwrap();
            let open = db.start_object("front", "person", None, T0).unwrap();
            db.set_object_snapshot(open, 0.6, [0.0; 4], &jpeg(0, 10))
                .unwrap();
            let ended = db.start_object("front", "car", None, T0).unwrap();
            db.end_object(ended, T0 + 1, 0.9, [0.0; 4], None).unwrap();
            (open, ended)
        };
        let mut db = VideoDb::open(dir.path()).unwrap();
        let events = db.close_open_objects(T0 + 60_000).unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.kind, EventKind::ObjectEnded);
        assert_eq!(event.object, Some(open));
        assert_eq!(event.score, Some(0.6));
        assert_eq!(event.snapshot, Some("2023-11-14/1.jpg".into()));
        assert_eq!(
            db.object(open).unwrap().unwrap().ended_ms,
            Some(T0 + 60_000)
        );
        assert_eq!(db.object(ended).unwrap().unwrap().ended_ms, Some(T0 + 1));
        assert!(db.close_open_objects(T0 + 70_000).unwrap().is_empty());
    }

    #[test]
    fn streams_added_through_the_api_are_kept_replaced_and_removed() {
        let (_dir, mut db) = temp_db();
        let front = serde_json::json!({ "url": "rtsp://cam/1", "fps": 5 });
        db.put_stream("front", &front, T0).unwrap();
        db.put_stream("back", &serde_json::json!({ "url": "rtsp://cam/2" }), T0)
            .unwrap();
        let moved = serde_json::json!({ "url": "rtsp://cam/3" });
        db.put_stream("front", &moved, T0 + 1).unwrap();
        let names: Vec<String> = db.streams().unwrap().into_iter().map(|s| s.0).collect();
        assert_eq!(names, vec!["back", "front"]);
        assert_eq!(db.streams().unwrap()[1].1, moved);
        let (created, updated): (i64, i64) = db
            .conn
            .query_row(
                "SELECT created_ms, updated_ms FROM streams WHERE name = 'front'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((created, updated), (T0, T0 + 1));
        assert!(db.delete_stream("front").unwrap());
        assert!(!db.delete_stream("front").unwrap());
        assert_eq!(db.streams().unwrap().len(), 1);
        assert!(db.put_stream("", &front, T0).is_err());
    }

    #[test]
    fn rows_flowers_never_writes_are_reported_as_corrupt_with_where() {
        let (_dir, mut db) = temp_db();
        let id = db.start_object("front", "person", None, T0).unwrap();
        let event = db
            .insert_event(&object_event("front", id, EventKind::ZoneEntered, T0))
            .unwrap();
        db.conn
            .execute("UPDATE events SET kind = 'zone_exploded'", [])
            .unwrap();
        let err = db.event(event.id).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("corrupt video database: event 1: unknown event kind"));
        db.conn
            .execute("UPDATE objects SET snapshot = '../../etc/passwd'", [])
            .unwrap();
        let err = db.object(id).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt video database: object 1: snapshot path \"../../etc/passwd\" is not of the \
             form YYYY-MM-DD/ID.jpg"
        );
        db.conn
            .execute("INSERT INTO streams VALUES ('x', '{oops', 0, 0)", [])
            .unwrap();
        assert!(db
            .streams()
            .unwrap_err()
            .to_string()
            .contains("stream \"x\""));
    }

    const RETENTION_NOW: i64 = T0 + 40 * MS_PER_DAY;
    const THIRTY_DAYS: i64 = 30 * MS_PER_DAY;

    #[test]
    fn a_sweep_past_both_limits_keeps_the_open_object_and_its_picture() {
        let (dir, mut db) = temp_db();
        // Open since long before max_age, with the largest picture.
        let open = db.start_object("front", "person", None, T0).unwrap();
        db.insert_event(&object_event("front", open, EventKind::ZoneEntered, T0))
            .unwrap();
        db.set_object_snapshot(open, 0.5, [0.0; 4], &jpeg(open, 5_000))
            .unwrap();
        let old = ended_object(&mut db, T0 + MS_PER_DAY, 1_000);
        let recent_1 = ended_object(&mut db, RETENTION_NOW - 3 * MS_PER_DAY, 1_000);
        let recent_2 = ended_object(&mut db, RETENTION_NOW - 2 * MS_PER_DAY, 1_000);
        let old_offline = db
            .insert_event(&NewEvent::new(T0, "front", EventKind::StreamOffline))
            .unwrap();
        let recent_online = db
            .insert_event(&NewEvent::new(
                RETENTION_NOW,
                "front",
                EventKind::StreamOnline,
            ))
            .unwrap();
        let file = |id: i64| db.snapshot_path(&db.object(id).unwrap().unwrap().snapshot.unwrap());
        let (old_file, recent_1_file, open_file) = (file(old), file(recent_1), file(open));

        let retention = Retention {
            max_age_ms: Some(THIRTY_DAYS),
            max_bytes: Some(6_000),
        };
        let report = db.sweep(&retention, RETENTION_NOW).unwrap();
        // Age takes `old` and the old stream event; size then the oldest ended, `recent_1`.
        assert_eq!(
            report,
            SweepReport {
                objects: 2,
                events: 3,
                deliveries: 0,
                files: 2,
                freed_bytes: 2_000,
                snapshot_bytes: 6_000,
                file_errors: vec![],
            }
        );
        let objects = db
            .objects(&ObjectQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ids(&objects, |o| o.id), vec![open, recent_2]);
        assert!(!old_file.exists() && !recent_1_file.exists());
        assert_eq!(fs::read(&open_file).unwrap(), jpeg(open, 5_000));
        let left = all_events(&db);
        assert!(
            left.iter().any(|e| e.object == Some(open)),
            "the open object's event stays"
        );
        assert!(!left.iter().any(|e| e.id == old_offline.id));
        assert!(left.iter().any(|e| e.id == recent_online.id));
        // The 2023-11-15 folder held only `old`'s picture.
        assert!(!dir.path().join("snapshots/2023-11-15").exists());

        // Even when the open object alone is over the limit, it stays.
        let report = db
            .sweep(
                &Retention {
                    max_age_ms: None,
                    max_bytes: Some(100),
                },
                RETENTION_NOW,
            )
            .unwrap();
        assert_eq!((report.objects, report.snapshot_bytes), (1, 5_000));
        assert_eq!(
            ids(
                &db.objects(&ObjectQuery {
                    limit: 10,
                    ..Default::default()
                })
                .unwrap(),
                |o| o.id
            ),
            vec![open]
        );
        assert!(open_file.exists());
    }

    #[test]
    fn a_sweep_by_age_alone_keeps_everything_younger_whatever_its_size() {
        let (_dir, mut db) = temp_db();
        let old = ended_object(&mut db, T0, 1_000_000);
        let young = ended_object(&mut db, RETENTION_NOW - MS_PER_DAY, 2_000_000);
        let old_stream = db
            .insert_event(&NewEvent::new(T0, "front", EventKind::StreamOnline))
            .unwrap();
        let retention = Retention {
            max_age_ms: Some(THIRTY_DAYS),
            max_bytes: None,
        };
        let report = db.sweep(&retention, RETENTION_NOW).unwrap();
        assert_eq!((report.objects, report.events, report.files), (1, 2, 1));
        assert_eq!(db.object(old).unwrap(), None);
        assert!(db.object(young).unwrap().is_some());
        assert_eq!(db.event(old_stream.id).unwrap(), None);
        assert_eq!(report.snapshot_bytes, 2_000_000);
    }

    #[test]
    fn a_sweep_by_size_alone_removes_the_first_ended_and_never_stream_events() {
        let (_dir, mut db) = temp_db();
        // Ended last although started first: the order is by end.
        let late = db.start_object("front", "person", None, T0).unwrap();
        let first = ended_object(&mut db, T0 + 1_000, 400);
        let second = ended_object(&mut db, T0 + 2_000, 400);
        db.end_object(late, T0 + 3_000, 0.5, [0.0; 4], Some(&jpeg(late, 400)))
            .unwrap();
        // No picture: nothing to free, so it stays.
        let bare = db.start_object("front", "person", None, T0).unwrap();
        db.end_object(bare, T0 + 500, 0.5, [0.0; 4], None).unwrap();
        let stream_event = db
            .insert_event(&NewEvent::new(T0, "front", EventKind::StreamOffline))
            .unwrap();
        let retention = Retention {
            max_age_ms: None,
            max_bytes: Some(500),
        };
        let report = db.sweep(&retention, RETENTION_NOW).unwrap();
        assert_eq!(
            (report.objects, report.freed_bytes, report.snapshot_bytes),
            (2, 800, 400)
        );
        let objects = db
            .objects(&ObjectQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ids(&objects, |o| o.id), vec![late, bare]);
        assert!(![first, second]
            .iter()
            .any(|id| objects.iter().any(|o| o.id == *id)));
        assert!(db.event(stream_event.id).unwrap().is_some());
        // Under the limit, a second sweep removes nothing.
        assert_eq!(db.sweep(&retention, RETENTION_NOW).unwrap().objects, 0);
    }

    #[test]
    fn a_sweep_after_a_restart_removes_rows_and_files_and_a_missing_file_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let (gone, kept) = {
            let mut db = VideoDb::open(dir.path()).unwrap();
            (
                ended_object(&mut db, T0, 100),
                ended_object(&mut db, T0 + 1, 100),
            )
        };
        let mut db = VideoDb::open(dir.path()).unwrap();
        let gone_file = db.snapshot_path(&db.object(gone).unwrap().unwrap().snapshot.unwrap());
        let kept_file = db.snapshot_path(&db.object(kept).unwrap().unwrap().snapshot.unwrap());
        // Someone deleted one picture by hand.
        fs::remove_file(&gone_file).unwrap();
        let retention = Retention {
            max_age_ms: Some(0),
            max_bytes: None,
        };
        let report = db.sweep(&retention, RETENTION_NOW).unwrap();
        assert_eq!((report.objects, report.files), (2, 1));
        assert!(report.file_errors.is_empty());
        assert!(!kept_file.exists());
        assert!(all_events(&db).is_empty());
        let err = db
            .sweep(
                &Retention {
                    max_age_ms: Some(-1),
                    max_bytes: None,
                },
                RETENTION_NOW,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid retention max_age: -1 ms is negative"
        );
    }

    #[test]
    fn event_ids_never_go_back_after_a_sweep_removed_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let newest = {
            let mut db = VideoDb::open(dir.path()).unwrap();
            ended_object(&mut db, T0, 100);
            let newest = db
                .insert_event(&NewEvent::new(T0, "front", EventKind::StreamOffline))
                .unwrap();
            let retention = Retention {
                max_age_ms: Some(0),
                max_bytes: None,
            };
            db.sweep(&retention, RETENTION_NOW).unwrap();
            assert!(all_events(&db).is_empty());
            newest.id
        };
        let mut db = VideoDb::open(dir.path()).unwrap();
        let next = db
            .insert_event(&NewEvent::new(
                RETENTION_NOW,
                "front",
                EventKind::StreamOnline,
            ))
            .unwrap();
        assert_eq!(next.id, newest + 1);
        let object = db
            .start_object("front", "person", None, RETENTION_NOW)
            .unwrap();
        assert_eq!(object, 2, "object ids are not reused either");
    }

    #[test]
    fn a_failed_write_leaves_the_earlier_picture_and_row_whole() {
        let (dir, mut db) = temp_db();
        let id = db.start_object("front", "person", None, T0).unwrap();
        db.set_object_snapshot(id, 0.5, [0.0; 4], &jpeg(1, 500))
            .unwrap();
        // A folder where the temporary file would go makes the next write fail.
        let blocker = dir.path().join(format!("snapshots/tmp/{id}.jpg"));
        fs::create_dir(&blocker).unwrap();
        let err = db
            .set_object_snapshot(id, 0.9, [1.0; 4], &jpeg(2, 900))
            .unwrap_err();
        assert!(
            err.to_string().starts_with(&blocker.display().to_string()),
            "{err}"
        );
        let object = db.object(id).unwrap().unwrap();
        assert_eq!((object.best_score, object.snapshot_bytes), (Some(0.5), 500));
        let path = db.snapshot_path(object.snapshot.as_deref().unwrap());
        assert_eq!(fs::read(path).unwrap(), jpeg(1, 500));
    }

    /// Set on the child process: the data directory the writer fills.
    const WRITER_DIR_ENV: &str = "FLOWERS_VIDEO_CRASH_WRITER_DIR";
    const WRITER_TEST: &str = "db::tests::crash_writer";

    /// A picture per object whose length and bytes depend on its id, so a torn file shows.
    fn crash_picture(id: i64) -> Vec<u8> {
        jpeg(id, 100_000 + (id as usize * 7_919) % 200_000)
    }

    /// The writer half of [`committed_writes_survive_kill_9`]: in an ordinary run the variable
    /// is unset and it returns at once; in the child it writes until killed, printing each
    /// step only after it returned.
    #[test]
    fn crash_writer() {
        let Some(dir) = std::env::var_os(WRITER_DIR_ENV) else {
            return;
        };
        let mut db = VideoDb::open(Path::new(&dir)).unwrap();
        let mut out = io::stdout().lock();
        for step in 0i64.. {
            let time = T0 + step * 1_000;
            let id = db.start_object("front", "person", None, time).unwrap();
            let picture = crash_picture(id);
            writeln!(out, "object {id}").unwrap();
            db.set_object_snapshot(id, 0.5, [0.0; 4], &picture).unwrap();
            writeln!(out, "snapshot {id}").unwrap();
            let event = db
                .insert_event(&object_event("front", id, EventKind::ZoneEntered, time))
                .unwrap();
            writeln!(out, "event {}", event.id).unwrap();
            db.end_object(id, time + 500, 0.5, [0.0; 4], None).unwrap();
            writeln!(out, "ended {id}").unwrap();
            out.flush().unwrap();
        }
    }

    /// A step the writer reported, or `None` for the test harness's own lines.
    fn writer_claim(line: &str) -> Option<(String, i64)> {
        let (what, id) = line.split_once(' ')?;
        ["object", "snapshot", "event", "ended"]
            .contains(&what)
            .then(|| Some((what.to_string(), id.parse().ok()?)))?
    }

    #[test]
    fn committed_writes_survive_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut claimed: HashSet<(String, i64)> = HashSet::new();
        for (round, kill_after) in [1u32, 9, 21, 41].into_iter().enumerate() {
            let mut child = Command::new(&exe)
                .args([WRITER_TEST, "--exact", "--nocapture", "--test-threads=1"])
                .env(WRITER_DIR_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let (mut seen, mut killed) = (0, false);
            for line in lines.by_ref() {
                let Some(claim) = writer_claim(&line.unwrap()) else {
                    continue;
                };
                seen += 1;
                // Right after "object N" the writer is copying N's picture into its file.
                let writing_a_picture = claim.0 == "object";
                claimed.insert(claim);
                if seen >= kill_after && writing_a_picture {
                    child.kill().unwrap();
                    killed = true;
                    break;
                }
            }
            assert!(killed, "round {round}: the writer stopped by itself");
            // Lines already in the pipe were written after their commits; they count too.
            claimed.extend(lines.map_while(Result::ok).filter_map(|l| writer_claim(&l)));
            assert!(!child.wait().unwrap().success());

            let mut db = VideoDb::open(dir.path()).unwrap();
            let integrity: String = db
                .conn
                .query_row("PRAGMA integrity_check", [], |row| row.get(0))
                .unwrap();
            assert_eq!(integrity, "ok", "round {round}");
            for (what, id) in &claimed {
                let present = match what.as_str() {
                    "object" => db.object(*id).unwrap().is_some(),
                    "snapshot" => db.object(*id).unwrap().unwrap().snapshot.is_some(),
                    "event" => db.event(*id).unwrap().is_some(),
                    "ended" => db.object(*id).unwrap().unwrap().ended_ms.is_some(),
                    other => panic!("unexpected writer line {other:?}"),
                };
                assert!(present, "round {round}: {what} {id} was lost");
            }
            // Every picture under its final name is whole, referenced by its row or not. (On a
            // busy machine the kill seldom lands inside a write, so the failed-write test below
            // is what pins the write-then-rename down; this check catches what it can.)
            for day in fs::read_dir(dir.path().join(SNAPSHOT_DIR)).unwrap() {
                let day = day.unwrap().path();
                if day.ends_with(TMP_DIR) {
                    continue;
                }
                for file in fs::read_dir(&day).unwrap() {
                    let file = file.unwrap().path();
                    let id: i64 = file.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                    assert!(
                        fs::read(&file).unwrap() == crash_picture(id),
                        "{} is torn",
                        file.display()
                    );
                }
            }
            // The next start ends what the kill left open.
            db.close_open_objects(T0 + 1_000_000_000).unwrap();
            assert!(db
                .objects(&ObjectQuery {
                    open: Some(true),
                    limit: 10,
                    ..Default::default()
                })
                .unwrap()
                .is_empty());
        }
        assert!(claimed.iter().any(|(what, _)| what == "snapshot"));
    }
}
