//! Analyses in `video.sqlite` (schema version 3): analyses, their files, and the objects and
//! events found in each file. A file's results and its `done` state are written in one
//! transaction, so a file is either finished with all its results or still to do.
//!
//! Archive snapshots are files under `archives/ANALYSIS/FILE-N.jpg` in the data directory,
//! written whole (to a temporary file, synced, renamed) before the transaction that names them;
//! they are not subject to the live streams' retention: an analysis is a result someone asked
//! for.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::FoundFile;
use crate::db::{DbError, VideoDb};

/// The archive snapshots' folder in the data directory.
pub const ARCHIVE_DIR: &str = "archives";

/// A file claimed by a Run that has sent nothing for this long is shown as `interrupted`.
pub const STALE_MS: i64 = 30_000;

/// Rule events a Run may report for a file.
pub const EVENT_KINDS: &[&str] = &["zone_entered", "zone_left", "loitered", "line_crossed"];

/// Files by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCounts {
    pub total: u64,
    pub pending: u64,
    /// Claimed by a Run that reported within [`STALE_MS`].
    pub running: u64,
    /// Claimed by a Run that has gone quiet (killed, or its drive unplugged): claimed again by
    /// the next Run.
    pub interrupted: u64,
    pub done: u64,
    pub failed: u64,
}

/// An analysis and how far it has come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisView {
    pub id: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// `running` (a Run is at work), `waiting` (files left, no Run at work) or `finished`.
    pub state: String,
    /// The keys of a stream without its URL.
    pub settings: serde_json::Value,
    pub roots: Vec<String>,
    pub files: FileCounts,
    pub bytes_total: u64,
    /// Finished files' sizes, plus the part of each running file already analysed.
    pub bytes_done: u64,
    /// Frames analysed, in finished and running files.
    pub frames: u64,
    pub events: u64,
    pub objects: u64,
    /// Why the last Run stopped short (a drive unplugged), until a file is finished again.
    pub last_error: Option<String>,
}

/// One file of an analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileView {
    pub id: i64,
    pub analysis: i64,
    /// Where it was last found.
    pub path: String,
    pub root: String,
    pub relative: String,
    pub size: u64,
    pub fingerprint: String,
    /// `pending`, `running`, `interrupted`, `done` or `failed`.
    pub state: String,
    pub frames: u64,
    pub frames_total: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub error: Option<String>,
}

/// A file handed to a Run, with the settings to analyse it with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub file: FileView,
    pub settings: serde_json::Value,
}

/// An object a Run found in a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultObject {
    pub class: String,
    /// Times in the file, ms from its start.
    pub started_ms: i64,
    pub ended_ms: i64,
    pub best_score: f32,
    /// `[x0, y0, x1, y1]` in the analysed frame's pixels.
    pub best_box: [f32; 4],
    /// The JPEG of its best moment, base64.
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// A rule event a Run found in a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEvent {
    pub time_ms: i64,
    /// One of [`EVENT_KINDS`].
    pub kind: String,
    /// Index into the result's objects.
    #[serde(default)]
    pub object: Option<usize>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub line: Option<String>,
    #[serde(default)]
    pub direction: Option<String>,
}

/// A file's results: what was found, or why it could not be analysed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileResult {
    /// The Run that claimed the file.
    pub run: String,
    pub frames: u64,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// Set when the file could not be analysed (corrupt, an unknown codec): it is `failed`.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub objects: Vec<ResultObject>,
    #[serde(default)]
    pub events: Vec<ResultEvent>,
}

/// One line of a report: an object seen, a rule event, or a file that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The file's path under its root.
    pub file: String,
    /// Seconds from the file's start.
    pub time_s: f64,
    /// For an object, when it was last seen.
    pub end_s: Option<f64>,
    /// `object`, a rule event's kind, or `file_failed`.
    pub kind: String,
    pub class: Option<String>,
    pub score: Option<f32>,
    pub zone: Option<String>,
    pub line: Option<String>,
    pub direction: Option<String>,
    pub object: Option<i64>,
    /// The object's snapshot, as a path of the service's API.
    pub snapshot: Option<String>,
    /// Why a file failed.
    pub detail: Option<String>,
}

/// The CSV columns of a report, in order.
pub const REPORT_COLUMNS: &[&str] = &[
    "file",
    "time_s",
    "end_s",
    "kind",
    "class",
    "score",
    "zone",
    "line",
    "direction",
    "object",
    "snapshot",
    "detail",
];

impl ReportRow {
    /// The row as CSV (RFC 4180: fields with a comma, quote or line break are quoted).
    pub fn csv(&self) -> String {
        let number = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
        let fields = [
            self.file.clone(),
            format!("{:.3}", self.time_s),
            number(self.end_s),
            self.kind.clone(),
            self.class.clone().unwrap_or_default(),
            self.score.map(|s| format!("{s:.3}")).unwrap_or_default(),
            self.zone.clone().unwrap_or_default(),
            self.line.clone().unwrap_or_default(),
            self.direction.clone().unwrap_or_default(),
            self.object.map(|o| o.to_string()).unwrap_or_default(),
            self.snapshot.clone().unwrap_or_default(),
            self.detail.clone().unwrap_or_default(),
        ];
        fields
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

const FILE_SELECT: &str = "SELECT id, analysis, root, path, size, fingerprint, state, \
     updated_ms, frames, frames_total, width, height, started_ms, finished_ms, error \
     FROM analysis_files";

fn file_row(row: &rusqlite::Row<'_>, now_ms: i64) -> rusqlite::Result<FileView> {
    let root: String = row.get(2)?;
    let relative: String = row.get(3)?;
    let state: String = row.get(6)?;
    let updated_ms: i64 = row.get(7)?;
    let state = if state == "running" && now_ms - updated_ms > STALE_MS {
        "interrupted".to_string()
    } else {
        state
    };
    Ok(FileView {
        id: row.get(0)?,
        analysis: row.get(1)?,
        path: PathBuf::from(&root).join(&relative).display().to_string(),
        root,
        relative,
        size: row.get::<_, i64>(4)? as u64,
        fingerprint: row.get(5)?,
        state,
        frames: row.get::<_, i64>(8)? as u64,
        frames_total: row.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        width: row.get(10)?,
        height: row.get(11)?,
        started_ms: row.get(12)?,
        finished_ms: row.get(13)?,
        error: row.get(14)?,
    })
}

impl VideoDb {
    fn archive_dir(&self) -> PathBuf {
        self.path()
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(ARCHIVE_DIR)
    }

    /// Where the archive snapshot recorded as `relative` is on disk.
    pub fn archive_snapshot_path(&self, relative: &str) -> PathBuf {
        self.archive_dir().join(relative)
    }

    /// Records `found` for analysis with `settings` (canonical JSON). Unless `fresh`, the newest
    /// analysis with the same settings that shares a file (by fingerprint) with `found` is
    /// resumed: its files found again get their new location, keeping their state, and new
    /// files are added `pending`. Returns the analysis and whether it was resumed.
    pub fn add_analysis(
        &mut self,
        settings: &str,
        roots: &[String],
        found: &[FoundFile],
        fresh: bool,
        now_ms: i64,
    ) -> Result<(AnalysisView, bool), DbError> {
        let roots_json = serde_json::to_string(roots).expect("strings serialise");
        let tx = self.conn.transaction()?;
        let mut resumed = None;
        if !fresh {
            let mut statement = tx.prepare(
                "SELECT a.id FROM analyses a WHERE a.settings = ?1 AND EXISTS \
                 (SELECT 1 FROM analysis_files f WHERE f.analysis = a.id AND f.fingerprint = ?2) \
                 ORDER BY a.id DESC LIMIT 1",
            )?;
            for file in found {
                if let Some(id) = statement
                    .query_row(params![settings, file.fingerprint], |row| {
                        row.get::<_, i64>(0)
                    })
                    .optional()?
                {
                    resumed = Some(resumed.map_or(id, |r: i64| r.max(id)));
                }
            }
        }
        let id = match resumed {
            Some(id) => {
                tx.execute(
                    "UPDATE analyses SET roots = ?2, updated_ms = ?3 WHERE id = ?1",
                    params![id, roots_json, now_ms],
                )?;
                id
            }
            None => {
                tx.execute(
                    "INSERT INTO analyses (created_ms, settings, roots, updated_ms) \
                     VALUES (?1, ?2, ?3, ?1)",
                    params![now_ms, settings, roots_json],
                )?;
                tx.last_insert_rowid()
            }
        };
        // Roots that moved (a drive mounted elsewhere): files not found this time move too.
        let mut moved_roots = std::collections::BTreeMap::new();
        for file in found {
            let root = file.root.display().to_string();
            let old_root: Option<String> = tx
                .query_row(
                    "SELECT root FROM analysis_files WHERE analysis = ?1 AND fingerprint = ?2",
                    params![id, file.fingerprint],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(old_root) = old_root.filter(|old| *old != root) {
                moved_roots.insert(old_root, root.clone());
            }
            let moved = tx.execute(
                "UPDATE analysis_files SET root = ?3, path = ?4, mtime_ms = ?5 \
                 WHERE analysis = ?1 AND fingerprint = ?2",
                params![id, file.fingerprint, root, file.relative, file.mtime_ms],
            )?;
            if moved == 0 {
                tx.execute(
                    "INSERT INTO analysis_files (analysis, root, path, size, mtime_ms, \
                     fingerprint, state, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)",
                    params![
                        id,
                        root,
                        file.relative,
                        file.size as i64,
                        file.mtime_ms,
                        file.fingerprint,
                        now_ms
                    ],
                )?;
            }
        }
        for (old_root, root) in &moved_roots {
            tx.execute(
                "UPDATE analysis_files SET root = ?3 WHERE analysis = ?1 AND root = ?2",
                params![id, old_root, root],
            )?;
        }
        tx.commit()?;
        let view = self.analysis(id, now_ms)?.ok_or(DbError::NotFound {
            what: "analysis",
            id,
        })?;
        Ok((view, resumed.is_some()))
    }

    /// Deletes analysis `id` with its files' results and pictures. Refused while a Run is
    /// analysing one of its files (stop the job first).
    pub fn delete_analysis(&mut self, id: i64, now_ms: i64) -> Result<(), DbError> {
        let view = self.analysis(id, now_ms)?.ok_or(DbError::NotFound {
            what: "analysis",
            id,
        })?;
        if view.files.running > 0 {
            return Err(DbError::Conflict(format!(
                "analysis {id} has {} files being analysed; stop the job first \
                 (`flowers stop RUN`), or wait for it",
                view.files.running
            )));
        }
        let tx = self.conn.transaction()?;
        let files = "SELECT id FROM analysis_files WHERE analysis = ?1";
        tx.execute(
            &format!("DELETE FROM analysis_events WHERE file IN ({files})"),
            [id],
        )?;
        tx.execute(
            &format!("DELETE FROM analysis_objects WHERE file IN ({files})"),
            [id],
        )?;
        tx.execute("DELETE FROM analysis_files WHERE analysis = ?1", [id])?;
        tx.execute("DELETE FROM analyses WHERE id = ?1", [id])?;
        tx.commit()?;
        // The rows are gone first: a crash here leaves pictures no row names, never a row
        // naming a missing picture.
        let pictures = self.archive_dir().join(id.to_string());
        match fs::remove_dir_all(&pictures) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(DbError::io(&pictures)(error))
            }
            _ => Ok(()),
        }
    }

    /// Every analysis, newest first.
    pub fn analyses(&self, now_ms: i64) -> Result<Vec<AnalysisView>, DbError> {
        let ids: Vec<i64> = self
            .conn
            .prepare("SELECT id FROM analyses ORDER BY id DESC")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            views.extend(self.analysis(id, now_ms)?);
        }
        Ok(views)
    }

    pub fn analysis(&self, id: i64, now_ms: i64) -> Result<Option<AnalysisView>, DbError> {
        let Some((created_ms, updated_ms, settings, roots, last_error)) = self
            .conn
            .query_row(
                "SELECT created_ms, updated_ms, settings, roots, last_error FROM analyses \
                 WHERE id = ?1",
                [id],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Option<String>>(4)?,
                    ))
                },
            )
            .optional()?
        else {
            return Ok(None);
        };
        let corrupt = |what: &str, error: serde_json::Error| {
            DbError::Corrupt(format!("analysis {id}: {what}: {error}"))
        };
        let settings = serde_json::from_str(&settings).map_err(|e| corrupt("settings", e))?;
        let roots = serde_json::from_str(&roots).map_err(|e| corrupt("roots", e))?;
        let mut files = FileCounts::default();
        let (mut bytes_total, mut bytes_done, mut frames) = (0u64, 0u64, 0u64);
        for file in self.analysis_files(id, now_ms)? {
            files.total += 1;
            bytes_total += file.size;
            frames += file.frames;
            match file.state.as_str() {
                "pending" => files.pending += 1,
                "running" => {
                    files.running += 1;
                    if let Some(total) = file.frames_total.filter(|t| *t > 0) {
                        bytes_done += (file.size as f64 * (file.frames.min(total) as f64)
                            / total as f64) as u64;
                    }
                }
                "interrupted" => files.interrupted += 1,
                "done" => {
                    files.done += 1;
                    bytes_done += file.size;
                }
                _ => {
                    files.failed += 1;
                    bytes_done += file.size;
                }
            }
        }
        let (events, objects): (i64, i64) = self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM analysis_events e JOIN analysis_files f \
             ON f.id = e.file WHERE f.analysis = ?1), \
             (SELECT COUNT(*) FROM analysis_objects o JOIN analysis_files f \
             ON f.id = o.file WHERE f.analysis = ?1)",
            [id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let state = if files.running > 0 {
            "running"
        } else if files.pending + files.interrupted > 0 {
            "waiting"
        } else {
            "finished"
        };
        Ok(Some(AnalysisView {
            id,
            created_ms,
            updated_ms,
            state: state.to_string(),
            settings,
            roots,
            files,
            bytes_total,
            bytes_done,
            frames,
            events: events as u64,
            objects: objects as u64,
            last_error,
        }))
    }

    /// An analysis's files in the order they are analysed.
    pub fn analysis_files(&self, id: i64, now_ms: i64) -> Result<Vec<FileView>, DbError> {
        let mut statement = self
            .conn
            .prepare(&format!("{FILE_SELECT} WHERE analysis = ?1 ORDER BY id"))?;
        let files = statement
            .query_map([id], |row| file_row(row, now_ms))?
            .collect::<Result<_, _>>()?;
        Ok(files)
    }

    pub fn analysis_file(&self, id: i64, now_ms: i64) -> Result<Option<FileView>, DbError> {
        Ok(self
            .conn
            .query_row(&format!("{FILE_SELECT} WHERE id = ?1"), [id], |row| {
                file_row(row, now_ms)
            })
            .optional()?)
    }

    /// Hands `run` the next file to analyse: the oldest analysis's first file that is pending
    /// or was claimed by another Run (one that ended without finishing it: one Run of the
    /// job runs at a time). `None` when nothing is left.
    pub fn claim_file(&mut self, run: &str, now_ms: i64) -> Result<Option<Claim>, DbError> {
        let tx = self.conn.transaction()?;
        let next: Option<(i64, String)> = tx
            .query_row(
                "SELECT f.id, a.settings FROM analysis_files f JOIN analyses a ON a.id = f.analysis \
                 WHERE f.state = 'pending' OR (f.state = 'running' AND f.claimed_by IS NOT ?1) \
                 ORDER BY f.analysis, f.id LIMIT 1",
                [run],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((id, settings)) = next else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE analysis_files SET state = 'running', claimed_by = ?2, updated_ms = ?3, \
             started_ms = ?3, frames = 0, frames_total = NULL WHERE id = ?1",
            params![id, run, now_ms],
        )?;
        tx.commit()?;
        let file = self
            .analysis_file(id, now_ms)?
            .ok_or(DbError::NotFound { what: "file", id })?;
        let settings = serde_json::from_str(&settings)
            .map_err(|e| DbError::Corrupt(format!("analysis {}: settings: {e}", file.analysis)))?;
        Ok(Some(Claim { file, settings }))
    }

    /// Refuses unless file `id` is running under `run`.
    fn check_claim(&self, id: i64, run: &str) -> Result<(), DbError> {
        let claim: Option<(String, Option<String>)> = self
            .conn
            .query_row(
                "SELECT state, claimed_by FROM analysis_files WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match claim {
            None => Err(DbError::NotFound { what: "file", id }),
            Some((state, Some(by))) if state == "running" && by == run => Ok(()),
            Some((state, by)) => Err(DbError::Conflict(format!(
                "file {id} is {state}{}, not being analysed by run {run}",
                by.filter(|_| state == "running")
                    .map(|by| format!(" under run {by}"))
                    .unwrap_or_default()
            ))),
        }
    }

    /// Records how far `run` has come in file `id`.
    pub fn file_progress(
        &mut self,
        id: i64,
        run: &str,
        frames: u64,
        frames_total: Option<u64>,
        now_ms: i64,
    ) -> Result<(), DbError> {
        self.check_claim(id, run)?;
        self.conn.execute(
            "UPDATE analysis_files SET frames = ?2, frames_total = COALESCE(?3, frames_total), \
             updated_ms = ?4 WHERE id = ?1",
            params![id, frames as i64, frames_total.map(|t| t as i64), now_ms],
        )?;
        Ok(())
    }

    /// Gives file `id` back (its Run is stopping), with why when the reason concerns the whole
    /// analysis (its drive is gone).
    pub fn release_file(
        &mut self,
        id: i64,
        run: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<(), DbError> {
        self.check_claim(id, run)?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE analysis_files SET state = 'pending', claimed_by = NULL, frames = 0, \
             updated_ms = ?2 WHERE id = ?1",
            params![id, now_ms],
        )?;
        if let Some(reason) = reason {
            tx.execute(
                "UPDATE analyses SET last_error = ?2, updated_ms = ?3 \
                 WHERE id = (SELECT analysis FROM analysis_files WHERE id = ?1)",
                params![id, reason, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records file `id`'s results and its end (`done`, or `failed` with the result's error)
    /// in one transaction; the snapshots are written whole before it.
    pub fn finish_file(
        &mut self,
        id: i64,
        result: &FileResult,
        snapshots: &HashMap<usize, Vec<u8>>,
        now_ms: i64,
    ) -> Result<FileView, DbError> {
        self.check_claim(id, &result.run)?;
        validate(result)?;
        let file = self
            .analysis_file(id, now_ms)?
            .ok_or(DbError::NotFound { what: "file", id })?;
        let mut names = HashMap::new();
        for (index, jpeg) in snapshots {
            let name = format!("{}/{id}-{index}.jpg", file.analysis);
            let tmp_name = format!("archive-{}", name.replace('/', "-"));
            self.write_whole(&self.archive_dir().join(&name), &tmp_name, jpeg)?;
            names.insert(*index, name);
        }
        let tx = self.conn.transaction()?;
        let mut object_ids = Vec::with_capacity(result.objects.len());
        for (index, object) in result.objects.iter().enumerate() {
            tx.execute(
                "INSERT INTO analysis_objects (file, class, started_ms, ended_ms, best_score, \
                 best_box, snapshot) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    object.class,
                    object.started_ms,
                    object.ended_ms,
                    f64::from(object.best_score),
                    serde_json::to_string(&object.best_box).expect("finite floats serialise"),
                    names.get(&index)
                ],
            )?;
            object_ids.push(tx.last_insert_rowid());
        }
        for event in &result.events {
            tx.execute(
                "INSERT INTO analysis_events (file, time_ms, kind, object, zone, line, \
                 direction) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    event.time_ms,
                    event.kind,
                    event.object.map(|i| object_ids[i]),
                    event.zone,
                    event.line,
                    event.direction
                ],
            )?;
        }
        let state = if result.error.is_some() {
            "failed"
        } else {
            "done"
        };
        tx.execute(
            "UPDATE analysis_files SET state = ?2, claimed_by = NULL, frames = ?3, width = ?4, \
             height = ?5, error = ?6, finished_ms = ?7, updated_ms = ?7, \
             frames_total = CASE WHEN ?2 = 'done' THEN ?3 ELSE frames_total END WHERE id = ?1",
            params![
                id,
                state,
                result.frames as i64,
                result.width,
                result.height,
                result.error,
                now_ms
            ],
        )?;
        tx.execute(
            "UPDATE analyses SET last_error = NULL, updated_ms = ?2 WHERE id = ?1",
            params![file.analysis, now_ms],
        )?;
        tx.commit()?;
        self.analysis_file(id, now_ms)?
            .ok_or(DbError::NotFound { what: "file", id })
    }

    /// The snapshot of archive object `id`, relative to the archives folder.
    pub fn archive_object_snapshot(&self, id: i64) -> Result<Option<String>, DbError> {
        let snapshot: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT snapshot FROM analysis_objects WHERE id = ?1",
                [id],
                |row| row.get(0),
            )
            .optional()?;
        match snapshot {
            None => Err(DbError::NotFound {
                what: "archive object",
                id,
            }),
            Some(snapshot) => {
                // Never leave the folder, whatever the row says.
                Ok(snapshot.filter(|s| !s.contains("..") && !s.starts_with('/')))
            }
        }
    }

    /// Analysis `id`'s report: per file in order, its objects and events by time, and a row
    /// for each failed file. `snapshot_url` turns an object id into its snapshot's API path.
    pub fn report(
        &self,
        id: i64,
        snapshot_url: impl Fn(i64) -> String,
    ) -> Result<Vec<ReportRow>, DbError> {
        let mut rows = Vec::new();
        let seconds = |ms: i64| ms as f64 / 1000.0;
        for file in self.analysis_files(id, 0)? {
            if file.state == "failed" {
                rows.push(ReportRow {
                    file: file.relative.clone(),
                    time_s: 0.0,
                    end_s: None,
                    kind: "file_failed".to_string(),
                    class: None,
                    score: None,
                    zone: None,
                    line: None,
                    direction: None,
                    object: None,
                    snapshot: None,
                    detail: file.error.clone(),
                });
                continue;
            }
            let mut file_rows = Vec::new();
            let mut objects = self.conn.prepare(
                "SELECT id, class, started_ms, ended_ms, best_score, snapshot \
                 FROM analysis_objects WHERE file = ?1",
            )?;
            let mut classes = HashMap::new();
            for object in objects.query_map([file.id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, f64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })? {
                let (oid, class, started, ended, score, snapshot) = object?;
                classes.insert(oid, (class.clone(), score as f32, snapshot.is_some()));
                file_rows.push(ReportRow {
                    file: file.relative.clone(),
                    time_s: seconds(started),
                    end_s: Some(seconds(ended)),
                    kind: "object".to_string(),
                    class: Some(class),
                    score: Some(score as f32),
                    zone: None,
                    line: None,
                    direction: None,
                    object: Some(oid),
                    snapshot: snapshot.map(|_| snapshot_url(oid)),
                    detail: None,
                });
            }
            let mut events = self.conn.prepare(
                "SELECT time_ms, kind, object, zone, line, direction FROM analysis_events \
                 WHERE file = ?1 ORDER BY time_ms, id",
            )?;
            for event in events.query_map([file.id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })? {
                let (time, kind, object, zone, line, direction) = event?;
                let known = object.and_then(|o| classes.get(&o));
                file_rows.push(ReportRow {
                    file: file.relative.clone(),
                    time_s: seconds(time),
                    end_s: None,
                    kind,
                    class: known.map(|(class, _, _)| class.clone()),
                    score: known.map(|(_, score, _)| *score),
                    zone,
                    line,
                    direction,
                    object,
                    snapshot: object
                        .filter(|_| known.is_some_and(|(_, _, has)| *has))
                        .map(&snapshot_url),
                    detail: None,
                });
            }
            // By time; at one time, objects before the events they take part in.
            file_rows.sort_by(|a, b| {
                a.time_s
                    .total_cmp(&b.time_s)
                    .then_with(|| (a.kind != "object").cmp(&(b.kind != "object")))
            });
            rows.extend(file_rows);
        }
        Ok(rows)
    }
}

/// Refuses results Flowers would store wrongly: unknown kinds, objects out of range,
/// non-finite numbers, negative times.
fn validate(result: &FileResult) -> Result<(), DbError> {
    let bad = |what: String, reason: String| Err(DbError::invalid(what, reason));
    for (i, object) in result.objects.iter().enumerate() {
        if object.started_ms < 0 || object.ended_ms < object.started_ms {
            return bad(
                format!("objects[{i}]"),
                format!(
                    "times {}..{} ms must be from 0 and in order",
                    object.started_ms, object.ended_ms
                ),
            );
        }
        if !object.best_score.is_finite() || !object.best_box.iter().all(|v| v.is_finite()) {
            return bad(
                format!("objects[{i}]"),
                "score and box must be finite numbers".to_string(),
            );
        }
    }
    for (i, event) in result.events.iter().enumerate() {
        if !EVENT_KINDS.contains(&event.kind.as_str()) {
            return bad(
                format!("events[{i}].kind"),
                format!("{:?} is not one of {}", event.kind, EVENT_KINDS.join(", ")),
            );
        }
        if event.time_ms < 0 {
            return bad(
                format!("events[{i}].time_ms"),
                format!("{} is before the file's start", event.time_ms),
            );
        }
        if let Some(object) = event.object {
            if object >= result.objects.len() {
                return bad(
                    format!("events[{i}].object"),
                    format!(
                        "{object} is not the index of one of the {} objects",
                        result.objects.len()
                    ),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SETTINGS: &str = r#"{"fps":5.0}"#;

    fn found(root: &str, relative: &str, fingerprint: &str) -> FoundFile {
        FoundFile {
            root: PathBuf::from(root),
            relative: relative.to_string(),
            size: 1000,
            mtime_ms: Some(1),
            fingerprint: fingerprint.to_string(),
        }
    }

    fn jpeg() -> Vec<u8> {
        let frame = crate::snapshot::Frame::gray(&[128u8; 64], 8, 8).unwrap();
        crate::snapshot::encode(&frame, None, 80).unwrap()
    }

    fn crossing(run: &str) -> FileResult {
        FileResult {
            run: run.to_string(),
            frames: 25,
            width: Some(640),
            height: Some(360),
            objects: vec![ResultObject {
                class: "motion".to_string(),
                started_ms: 1000,
                ended_ms: 3000,
                best_score: 1.0,
                best_box: [1.0, 2.0, 3.0, 4.0],
                snapshot: None,
            }],
            events: vec![ResultEvent {
                time_ms: 1800,
                kind: "line_crossed".to_string(),
                object: Some(0),
                zone: None,
                line: Some("door, main".to_string()),
                direction: Some("left_to_right".to_string()),
            }],
            error: None,
        }
    }

    #[test]
    fn files_are_claimed_finished_once_and_resumed_under_a_new_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = VideoDb::open(dir.path()).unwrap();
        let files = [
            found("/media/usb0", "a.mp4", "f1"),
            found("/media/usb0", "b.mp4", "f2"),
        ];
        let (view, resumed) = db
            .add_analysis(SETTINGS, &["/media/usb0".into()], &files, false, 10)
            .unwrap();
        assert!(!resumed);
        assert_eq!(
            (view.files.total, view.files.pending, view.state.as_str()),
            (2, 2, "waiting")
        );

        let claim = db.claim_file("run-1", 20).unwrap().unwrap();
        assert_eq!(claim.file.path, "/media/usb0/a.mp4");
        assert_eq!(claim.settings, serde_json::json!({"fps": 5.0}));
        db.file_progress(claim.file.id, "run-1", 10, Some(25), 21)
            .unwrap();
        let view = db.analysis(view.id, 22).unwrap().unwrap();
        assert_eq!(
            (view.files.running, view.frames, view.bytes_done),
            (1, 10, 400)
        );
        assert_eq!(view.state, "running");
        // Another Run may not report on it, nor finish it.
        let error = db
            .file_progress(claim.file.id, "run-2", 1, None, 22)
            .unwrap_err();
        assert!(error.to_string().contains("under run run-1"), "{error}");
        assert!(matches!(
            db.finish_file(claim.file.id, &crossing("run-2"), &HashMap::new(), 23),
            Err(DbError::Conflict(_))
        ));
        let pictures = HashMap::from([(0, jpeg())]);
        let done = db
            .finish_file(claim.file.id, &crossing("run-1"), &pictures, 30)
            .unwrap();
        assert_eq!(
            (done.state.as_str(), done.frames, done.finished_ms),
            ("done", 25, Some(30))
        );
        // Finished once: a second result is refused.
        assert!(matches!(
            db.finish_file(claim.file.id, &crossing("run-1"), &pictures, 31),
            Err(DbError::Conflict(_))
        ));

        // The second file is claimed, then the Run dies: the next Run takes it over.
        let second = db.claim_file("run-1", 40).unwrap().unwrap();
        assert_eq!(second.file.relative, "b.mp4");
        assert!(
            db.claim_file("run-1", 41).unwrap().is_none(),
            "run-1 holds it"
        );
        let view = db.analysis(view.id, 40 + STALE_MS + 1).unwrap().unwrap();
        assert_eq!(
            (view.files.interrupted, view.state.as_str()),
            (1, "waiting")
        );

        // The drive comes back elsewhere with one more file; the same settings resume.
        let moved = [
            found("/media/usb1", "a.mp4", "f1"),
            found("/media/usb1", "b.mp4", "f2"),
            found("/media/usb1", "c.mp4", "f3"),
        ];
        let (again, resumed) = db
            .add_analysis(SETTINGS, &["/media/usb1".into()], &moved, false, 50)
            .unwrap();
        assert!(resumed);
        assert_eq!(again.id, view.id);
        assert_eq!(again.roots, ["/media/usb1"]);
        assert_eq!((again.files.total, again.files.done), (3, 1));
        let files = db.analysis_files(view.id, 50).unwrap();
        assert_eq!(files[0].path, "/media/usb1/a.mp4");
        // A file not found this time (deleted) moves with its root, so that the Run finds its
        // root there and reports the file gone, not the drive.
        let only_a = [found("/media/usb2", "a.mp4", "f1")];
        db.add_analysis(SETTINGS, &["/media/usb2".into()], &only_a, false, 51)
            .unwrap();
        let moved_too = db.analysis_files(view.id, 51).unwrap();
        assert!(
            moved_too.iter().all(|f| f.root == "/media/usb2"),
            "{moved_too:?}"
        );
        assert_eq!(
            files[0].finished_ms,
            Some(30),
            "a finished file stays finished"
        );
        let taken = db.claim_file("run-2", 60).unwrap().unwrap();
        assert_eq!(taken.file.relative, "b.mp4");
        db.release_file(taken.file.id, "run-2", Some("source gone: /media/usb1"), 61)
            .unwrap();
        let view = db.analysis(view.id, 62).unwrap().unwrap();
        assert_eq!(view.last_error.as_deref(), Some("source gone: /media/usb1"));
        assert_eq!(view.files.pending, 2);

        // Other settings, or `new`, make a new analysis.
        let (other, resumed) = db
            .add_analysis(r#"{"fps":1.0}"#, &[], &moved, false, 70)
            .unwrap();
        assert!(!resumed);
        assert_ne!(other.id, view.id);
        let (fresh, resumed) = db.add_analysis(SETTINGS, &[], &moved, true, 71).unwrap();
        assert!(!resumed);
        assert_ne!(fresh.id, view.id);

        // The report: the object, then its crossing, with the picture's path.
        let rows = db
            .report(view.id, |o| {
                format!("/video/v1/analyses/objects/{o}/snapshot.jpg")
            })
            .unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].kind, "object");
        assert_eq!(rows[1].kind, "line_crossed");
        assert_eq!(rows[1].time_s, 1.8);
        assert_eq!(rows[1].class.as_deref(), Some("motion"));
        let object = rows[1].object.unwrap();
        assert_eq!(
            rows[1].snapshot.as_deref(),
            Some(format!("/video/v1/analyses/objects/{object}/snapshot.jpg").as_str())
        );
        assert_eq!(
            rows[1].csv(),
            format!(
                "a.mp4,1.800,,line_crossed,motion,1.000,,\"door, main\",left_to_right,{object},\
                 /video/v1/analyses/objects/{object}/snapshot.jpg,"
            )
        );
        let relative = db.archive_object_snapshot(object).unwrap().unwrap();
        assert_eq!(
            std::fs::read(db.archive_snapshot_path(&relative)).unwrap(),
            jpeg()
        );
        assert!(db
            .archive_snapshot_path(&relative)
            .starts_with(dir.path().join(ARCHIVE_DIR)));

        // Deleting: refused while a Run holds a file, then everything goes, pictures too.
        let held = db.claim_file("run-3", 80).unwrap().unwrap();
        assert_eq!(held.file.analysis, view.id);
        let error = db.delete_analysis(view.id, 81).unwrap_err();
        assert!(error.to_string().contains("stop the job first"), "{error}");
        db.release_file(held.file.id, "run-3", None, 82).unwrap();
        db.delete_analysis(view.id, 83).unwrap();
        assert!(db.analysis(view.id, 84).unwrap().is_none());
        assert!(!db.archive_snapshot_path(&relative).exists());
        assert!(matches!(
            db.archive_object_snapshot(object),
            Err(DbError::NotFound { .. })
        ));
        assert!(matches!(
            db.delete_analysis(view.id, 85),
            Err(DbError::NotFound { .. })
        ));
        // The other analyses are untouched.
        assert!(db.analysis(other.id, 86).unwrap().is_some());
    }

    #[test]
    fn a_failed_file_is_reported_and_bad_results_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = VideoDb::open(dir.path()).unwrap();
        let (view, _) = db
            .add_analysis(
                SETTINGS,
                &[],
                &[found("/d", "bad.mp4", "f1"), found("/d", "ok.mp4", "f2")],
                false,
                1,
            )
            .unwrap();
        let claim = db.claim_file("r", 2).unwrap().unwrap();
        let failed = FileResult {
            run: "r".to_string(),
            error: Some("/d/bad.mp4: Invalid data found when processing input".to_string()),
            ..FileResult::default()
        };
        assert_eq!(
            db.finish_file(claim.file.id, &failed, &HashMap::new(), 3)
                .unwrap()
                .state,
            "failed"
        );
        let claim = db.claim_file("r", 4).unwrap().unwrap();
        let mut bad = crossing("r");
        bad.events[0].kind = "teleported".to_string();
        let error = db
            .finish_file(claim.file.id, &bad, &HashMap::new(), 5)
            .unwrap_err();
        assert!(error.to_string().contains("events[0].kind"), "{error}");
        let mut bad = crossing("r");
        bad.events[0].object = Some(3);
        let error = db
            .finish_file(claim.file.id, &bad, &HashMap::new(), 5)
            .unwrap_err();
        assert!(error.to_string().contains("events[0].object"), "{error}");
        let mut bad = crossing("r");
        bad.objects[0].ended_ms = 0;
        let error = db
            .finish_file(claim.file.id, &bad, &HashMap::new(), 5)
            .unwrap_err();
        assert!(error.to_string().contains("objects[0]"), "{error}");
        // Nothing of the refused results was kept, and the file is still the Run's.
        let view = db.analysis(view.id, 6).unwrap().unwrap();
        assert_eq!((view.events, view.objects, view.files.running), (0, 0, 1));
        let rows = db.report(view.id, |o| o.to_string()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "file_failed");
        assert!(rows[0].csv().contains("Invalid data found"));
        assert!(Path::new(&db.archive_snapshot_path("x")).starts_with(dir.path()));
    }
}
