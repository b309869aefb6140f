use std::path::PathBuf;

use domain::{ByteSize, DeviceId, ExitStatus, Progress, RunId, RunOwner, RunState};
use rusqlite::types::Value;
use rusqlite::{params, Row};
use serde::Serialize;

use crate::{
    narrow, narrow_opt, owner_kind_text, parse_name, parse_owner_kind, widen, Store, StoreError,
};

/// A Run about to start; the store gives it its id, its `Starting` state and its creation time.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    pub owner: RunOwner,
    pub device: Option<DeviceId>,
    pub vram_reserved: Option<ByteSize>,
    pub port: Option<u16>,
    /// Hash of the spec the Run was started from, to tell whether a Run is out of date.
    pub spec_hash: String,
    pub run_dir: PathBuf,
    pub attempt: u32,
    /// The version of its service's Model the Run serves, if the service follows one.
    pub model_version: Option<u32>,
}

/// Everything the store knows about one Run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: RunId,
    pub owner: RunOwner,
    pub state: RunState,
    pub device: Option<DeviceId>,
    pub vram_reserved: Option<ByteSize>,
    pub port: Option<u16>,
    /// The supervisor's monitor process, which is also the process group id.
    pub pid: Option<u32>,
    /// Start time of `pid` in clock ticks since boot, so a recycled pid is not mistaken for it.
    pub pid_start_ticks: Option<u64>,
    pub child_pid: Option<u32>,
    pub spec_hash: String,
    pub run_dir: PathBuf,
    pub attempt: u32,
    pub exit: Option<ExitStatus>,
    /// Why the Run stopped, or why it is in its current state.
    pub reason: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub ready_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// The version of its service's Model the Run serves, if the service follows one.
    pub model_version: Option<u32>,
    /// What a job's Run last reported of its progress.
    pub progress: Option<Progress>,
}

/// A change to a Run: only the `Some` fields are written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunUpdate {
    pub state: Option<RunState>,
    pub pid: Option<u32>,
    pub pid_start_ticks: Option<u64>,
    pub child_pid: Option<u32>,
    pub port: Option<u16>,
    pub exit: Option<ExitStatus>,
    pub reason: Option<String>,
    pub started_ms: Option<i64>,
    pub ready_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// Where the Run's logs and exit status live; set once the id (and so the name of the
    /// directory) is known.
    pub run_dir: Option<PathBuf>,
    /// Replaces the progress the Run last reported.
    pub progress: Option<Progress>,
}

/// Which Runs [`Store::runs`] returns; the default is all of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFilter {
    /// Only Runs of this service or job.
    pub owner: Option<String>,
    /// Only Runs that are not `exited` or `stopped`.
    pub active_only: bool,
    /// At most this many (the newest).
    pub limit: Option<u32>,
}

const RUN_COLUMNS: &str = "id, owner_kind, owner_name, replica, state, device, vram_reserved, \
    port, pid, pid_start_ticks, child_pid, spec_hash, run_dir, attempt, exit_code, exit_signal, \
    reason, created_ms, started_ms, ready_ms, ended_ms, model_version, progress";

impl Store {
    /// Records a new Run in state `Starting` and gives it the next id (`<owner>-<seq>`).
    pub fn insert_run(&self, new: &NewRun) -> Result<RunRecord, StoreError> {
        let run_dir = new.run_dir.to_str().ok_or_else(|| {
            StoreError::invalid(
                "run directory",
                format!("{} is not valid UTF-8", new.run_dir.display()),
            )
        })?;
        let vram_reserved = new
            .vram_reserved
            .map(|size| widen(size.bytes(), "reserved VRAM"))
            .transpose()?;
        let created_ms = domain::now_ms();
        let state = RunState::Starting;

        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO runs (owner_kind, owner_name, replica, state, device, vram_reserved, \
             port, spec_hash, run_dir, attempt, created_ms, model_version) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                owner_kind_text(new.owner.kind),
                new.owner.name.as_str(),
                new.owner.replica,
                state.as_str(),
                new.device.as_ref().map(DeviceId::as_str),
                vram_reserved,
                new.port,
                new.spec_hash,
                run_dir,
                new.attempt,
                created_ms,
                new.model_version,
            ],
        )?;
        let seq = tx.last_insert_rowid();
        let id = RunId::new(&new.owner.name, seq);
        tx.execute(
            "UPDATE runs SET id = ?1 WHERE seq = ?2",
            params![id.as_str(), seq],
        )?;
        tx.commit()?;

        Ok(RunRecord {
            id,
            owner: new.owner.clone(),
            state,
            device: new.device.clone(),
            vram_reserved: new.vram_reserved,
            port: new.port,
            pid: None,
            pid_start_ticks: None,
            child_pid: None,
            spec_hash: new.spec_hash.clone(),
            run_dir: new.run_dir.clone(),
            attempt: new.attempt,
            exit: None,
            reason: None,
            created_ms,
            started_ms: None,
            ready_ms: None,
            ended_ms: None,
            model_version: new.model_version,
            progress: None,
        })
    }

    /// Writes the `Some` fields of `update`; a Run that does not exist is `NotFound`.
    pub fn update_run(&self, id: &RunId, update: &RunUpdate) -> Result<(), StoreError> {
        let mut assignments: Vec<(&str, Value)> = Vec::new();
        if let Some(state) = update.state {
            assignments.push(("state", Value::Text(state.as_str().to_string())));
        }
        if let Some(pid) = update.pid {
            assignments.push(("pid", Value::Integer(pid.into())));
        }
        if let Some(ticks) = update.pid_start_ticks {
            assignments.push((
                "pid_start_ticks",
                Value::Integer(widen(ticks, "pid start ticks")?),
            ));
        }
        if let Some(child_pid) = update.child_pid {
            assignments.push(("child_pid", Value::Integer(child_pid.into())));
        }
        if let Some(port) = update.port {
            assignments.push(("port", Value::Integer(port.into())));
        }
        if let Some(exit) = update.exit {
            // Both columns always change together, so a signal never outlives its exit code.
            assignments.push(("exit_code", Value::Integer(exit.code.into())));
            assignments.push((
                "exit_signal",
                exit.signal
                    .map_or(Value::Null, |s| Value::Integer(s.into())),
            ));
        }
        if let Some(reason) = &update.reason {
            assignments.push(("reason", Value::Text(reason.clone())));
        }
        if let Some(dir) = &update.run_dir {
            let text = dir.to_str().ok_or_else(|| {
                StoreError::invalid(
                    "run directory",
                    format!("{} is not valid UTF-8", dir.display()),
                )
            })?;
            assignments.push(("run_dir", Value::Text(text.to_string())));
        }
        if let Some(progress) = &update.progress {
            let json = serde_json::to_string(progress)
                .map_err(|error| StoreError::invalid("progress", error.to_string()))?;
            assignments.push(("progress", Value::Text(json)));
        }
        for (column, value) in [
            ("started_ms", update.started_ms),
            ("ready_ms", update.ready_ms),
            ("ended_ms", update.ended_ms),
        ] {
            if let Some(ms) = value {
                assignments.push((column, Value::Integer(ms)));
            }
        }

        let conn = self.lock();
        let changed = if assignments.is_empty() {
            // Nothing to write, but the caller still learns whether the Run exists.
            conn.query_row(
                "SELECT count(*) FROM runs WHERE id = ?1",
                [id.as_str()],
                |r| r.get::<_, i64>(0),
            )? as usize
        } else {
            let set = assignments
                .iter()
                .enumerate()
                .map(|(i, (column, _))| format!("{column} = ?{}", i + 1))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE runs SET {set} WHERE id = ?{}",
                assignments.len() + 1
            );
            let mut values: Vec<Value> = assignments.into_iter().map(|(_, v)| v).collect();
            values.push(Value::Text(id.as_str().to_string()));
            conn.execute(&sql, rusqlite::params_from_iter(values))?
        };
        if changed == 0 {
            return Err(StoreError::NotFound {
                what: "run",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// One Run by id, or `None`.
    pub fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?;
        let mut rows = stmt.query([id.as_str()])?;
        rows.next()?.map(run_from_row).transpose()
    }

    /// Runs matching `filter`, newest first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id IS NOT NULL");
        let mut values: Vec<Value> = Vec::new();
        if let Some(owner) = &filter.owner {
            values.push(Value::Text(owner.clone()));
            sql.push_str(&format!(" AND owner_name = ?{}", values.len()));
        }
        if filter.active_only {
            for state in [RunState::Exited, RunState::Stopped] {
                values.push(Value::Text(state.as_str().to_string()));
                sql.push_str(&format!(" AND state <> ?{}", values.len()));
            }
        }
        sql.push_str(" ORDER BY seq DESC");
        if let Some(limit) = filter.limit {
            values.push(Value::Integer(limit.into()));
            sql.push_str(&format!(" LIMIT ?{}", values.len()));
        }

        let conn = self.lock();
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
        let mut runs = Vec::new();
        while let Some(row) = rows.next()? {
            runs.push(run_from_row(row)?);
        }
        Ok(runs)
    }

    /// The highest run sequence number handed out so far, if any; for tests and diagnostics.
    #[cfg(test)]
    fn last_run_seq(&self) -> Option<i64> {
        self.lock()
            .query_row("SELECT max(seq) FROM runs", [], |r| r.get(0))
            .unwrap()
    }
}

fn run_from_row(row: &Row<'_>) -> Result<RunRecord, StoreError> {
    let id = RunId(row.get::<_, String>("id")?);
    let place = |column: &str| format!("runs.{column} of run {id}");
    let state_text: String = row.get("state")?;
    let state = RunState::parse(&state_text).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "{}: unknown run state {state_text:?}",
            place("state")
        ))
    })?;
    let owner = RunOwner {
        kind: parse_owner_kind(&row.get::<_, String>("owner_kind")?, || place("owner_kind"))?,
        name: parse_name(&row.get::<_, String>("owner_name")?, || place("owner_name"))?,
        replica: narrow(row.get("replica")?, || place("replica"))?,
    };
    let exit_code: Option<i64> = row.get("exit_code")?;
    let exit_signal: Option<i64> = row.get("exit_signal")?;
    let exit = match (exit_code, exit_signal) {
        (None, None) => None,
        (Some(code), signal) => Some(ExitStatus {
            code: narrow(code, || place("exit_code"))?,
            signal: narrow_opt(signal, || place("exit_signal"))?,
        }),
        (None, Some(signal)) => {
            return Err(StoreError::Corrupt(format!(
                "{}: signal {signal} without an exit code",
                place("exit_signal")
            )))
        }
    };
    let vram_reserved: Option<i64> = row.get("vram_reserved")?;
    let pid_start_ticks: Option<i64> = row.get("pid_start_ticks")?;
    Ok(RunRecord {
        owner,
        state,
        device: row.get::<_, Option<String>>("device")?.map(DeviceId),
        vram_reserved: narrow_opt::<u64>(vram_reserved, || place("vram_reserved"))?.map(ByteSize),
        port: narrow_opt(row.get("port")?, || place("port"))?,
        pid: narrow_opt(row.get("pid")?, || place("pid"))?,
        pid_start_ticks: narrow_opt(pid_start_ticks, || place("pid_start_ticks"))?,
        child_pid: narrow_opt(row.get("child_pid")?, || place("child_pid"))?,
        spec_hash: row.get("spec_hash")?,
        run_dir: PathBuf::from(row.get::<_, String>("run_dir")?),
        attempt: narrow(row.get("attempt")?, || place("attempt"))?,
        exit,
        reason: row.get("reason")?,
        created_ms: row.get("created_ms")?,
        started_ms: row.get("started_ms")?,
        ready_ms: row.get("ready_ms")?,
        ended_ms: row.get("ended_ms")?,
        model_version: narrow_opt(row.get("model_version")?, || place("model_version"))?,
        progress: row
            .get::<_, Option<String>>("progress")?
            .map(|json| {
                serde_json::from_str(&json)
                    .map_err(|error| StoreError::Corrupt(format!("{}: {error}", place("progress"))))
            })
            .transpose()?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use domain::{Name, OwnerKind};

    use super::*;
    use crate::test_support::temp_store;

    fn new_run(name: &str, kind: OwnerKind, replica: u32) -> NewRun {
        NewRun {
            owner: RunOwner {
                kind,
                name: Name::new(name).unwrap(),
                replica,
            },
            device: Some(DeviceId::gpu(1)),
            vram_reserved: Some(ByteSize::gib(6)),
            port: Some(41000),
            spec_hash: "abc123".to_string(),
            run_dir: PathBuf::from("/var/lib/flowers/runs/x"),
            attempt: 2,
            model_version: Some(3),
        }
    }

    #[test]
    fn insert_hands_out_increasing_ids_and_reads_back_equal() {
        let (_dir, store) = temp_store();
        let before = domain::now_ms();
        let first = store
            .insert_run(&new_run("chat", OwnerKind::Service, 0))
            .unwrap();
        let second = store
            .insert_run(&new_run("train", OwnerKind::Job, 0))
            .unwrap();
        assert_eq!(first.id.as_str(), "chat-1");
        assert_eq!(second.id.as_str(), "train-2");
        assert_eq!(first.state, RunState::Starting);
        assert!(first.created_ms >= before);
        assert_eq!(store.run(&first.id).unwrap(), Some(first.clone()));
        assert_eq!(store.run(&second.id).unwrap(), Some(second));
        assert_eq!(store.run(&RunId("chat-99".into())).unwrap(), None);
        assert_eq!(store.last_run_seq(), Some(2));
    }

    #[test]
    fn a_run_with_no_optional_fields_round_trips() {
        let (_dir, store) = temp_store();
        let mut new = new_run("embed", OwnerKind::Service, 3);
        new.device = None;
        new.vram_reserved = None;
        new.port = None;
        let run = store.insert_run(&new).unwrap();
        let read = store.run(&run.id).unwrap().unwrap();
        assert_eq!(read, run);
        assert_eq!(read.owner.replica, 3);
        assert_eq!(read.device, None);
    }

    #[test]
    fn update_changes_only_the_given_fields() {
        let (_dir, store) = temp_store();
        let run = store
            .insert_run(&new_run("chat", OwnerKind::Service, 0))
            .unwrap();
        store
            .update_run(
                &run.id,
                &RunUpdate {
                    state: Some(RunState::Ready),
                    pid: Some(4242),
                    pid_start_ticks: Some(123_456_789),
                    child_pid: Some(4243),
                    started_ms: Some(10),
                    ready_ms: Some(20),
                    ..Default::default()
                },
            )
            .unwrap();
        store
            .update_run(
                &run.id,
                &RunUpdate {
                    state: Some(RunState::Exited),
                    exit: Some(ExitStatus::signaled(9)),
                    reason: Some("killed".into()),
                    port: Some(41001),
                    ended_ms: Some(30),
                    run_dir: Some(PathBuf::from("/var/lib/flowers/runs/chat-1")),
                    ..Default::default()
                },
            )
            .unwrap();
        let read = store.run(&run.id).unwrap().unwrap();
        assert_eq!(
            read,
            RunRecord {
                state: RunState::Exited,
                pid: Some(4242),
                pid_start_ticks: Some(123_456_789),
                child_pid: Some(4243),
                port: Some(41001),
                exit: Some(ExitStatus::signaled(9)),
                reason: Some("killed".into()),
                started_ms: Some(10),
                ready_ms: Some(20),
                ended_ms: Some(30),
                run_dir: PathBuf::from("/var/lib/flowers/runs/chat-1"),
                ..run.clone()
            }
        );
        // A later plain exit replaces the signal too, not just the code.
        store
            .update_run(
                &run.id,
                &RunUpdate {
                    exit: Some(ExitStatus::exited(3)),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            store.run(&run.id).unwrap().unwrap().exit,
            Some(ExitStatus::exited(3))
        );
    }

    #[test]
    fn progress_is_replaced_and_read_back() {
        let (_dir, store) = temp_store();
        let run = store
            .insert_run(&new_run("train", OwnerKind::Job, 0))
            .unwrap();
        assert_eq!(store.run(&run.id).unwrap().unwrap().progress, None);
        for step in [1, 2] {
            let progress = Progress {
                step: Some(step),
                total: Some(10),
                metrics: [("loss".to_string(), 1.0 / step as f64)].into(),
                updated_ms: 5,
            };
            store
                .update_run(
                    &run.id,
                    &RunUpdate {
                        progress: Some(progress.clone()),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(
                store.run(&run.id).unwrap().unwrap().progress,
                Some(progress)
            );
        }
    }

    #[test]
    fn updating_a_missing_run_is_not_found() {
        let (_dir, store) = temp_store();
        let missing = RunId("ghost-7".into());
        for update in [
            RunUpdate::default(),
            RunUpdate {
                state: Some(RunState::Ready),
                ..Default::default()
            },
        ] {
            let err = store.update_run(&missing, &update).unwrap_err();
            assert!(
                matches!(&err, StoreError::NotFound { what: "run", id } if id == "ghost-7"),
                "{err:?}"
            );
        }
        let run = store
            .insert_run(&new_run("chat", OwnerKind::Service, 0))
            .unwrap();
        store.update_run(&run.id, &RunUpdate::default()).unwrap();
    }

    #[test]
    fn runs_filters_by_owner_activity_and_limit_newest_first() {
        let (_dir, store) = temp_store();
        let a1 = store
            .insert_run(&new_run("chat", OwnerKind::Service, 0))
            .unwrap();
        let b1 = store
            .insert_run(&new_run("train", OwnerKind::Job, 0))
            .unwrap();
        let a2 = store
            .insert_run(&new_run("chat", OwnerKind::Service, 1))
            .unwrap();
        let a3 = store
            .insert_run(&new_run("chat", OwnerKind::Service, 0))
            .unwrap();
        for (run, state) in [
            (&a1, RunState::Exited),
            (&a3, RunState::Stopped),
            (&a2, RunState::Ready),
        ] {
            store
                .update_run(
                    &run.id,
                    &RunUpdate {
                        state: Some(state),
                        ..Default::default()
                    },
                )
                .unwrap();
        }
        let ids = |filter: RunFilter| -> Vec<String> {
            store
                .runs(&filter)
                .unwrap()
                .into_iter()
                .map(|r| r.id.0)
                .collect()
        };
        assert_eq!(
            ids(RunFilter::default()),
            ["chat-4", "chat-3", "train-2", "chat-1"]
        );
        assert_eq!(
            ids(RunFilter {
                owner: Some("chat".into()),
                ..Default::default()
            }),
            ["chat-4", "chat-3", "chat-1"]
        );
        assert_eq!(
            ids(RunFilter {
                active_only: true,
                ..Default::default()
            }),
            [a2.id.0.as_str(), b1.id.0.as_str()]
        );
        assert_eq!(
            ids(RunFilter {
                owner: Some("chat".into()),
                active_only: true,
                limit: Some(5),
            }),
            ["chat-3"]
        );
        assert_eq!(
            ids(RunFilter {
                limit: Some(2),
                ..Default::default()
            }),
            ["chat-4", "chat-3"]
        );
        assert!(ids(RunFilter {
            owner: Some("nobody".into()),
            ..Default::default()
        })
        .is_empty());
    }

    #[test]
    fn values_that_do_not_fit_are_refused_not_truncated() {
        let (_dir, store) = temp_store();
        let mut new = new_run("chat", OwnerKind::Service, 0);
        new.vram_reserved = Some(ByteSize(u64::MAX));
        let err = store.insert_run(&new).unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
        let run = store
            .insert_run(&new_run("chat", OwnerKind::Service, 0))
            .unwrap();
        let err = store
            .update_run(
                &run.id,
                &RunUpdate {
                    pid_start_ticks: Some(u64::MAX),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("pid start ticks"), "{err}");
    }

    #[test]
    fn unknown_text_in_the_file_is_corrupt_not_a_panic() {
        let (_dir, store) = temp_store();
        let run = store
            .insert_run(&new_run("chat", OwnerKind::Service, 0))
            .unwrap();
        let corrupt = |sql: &str| {
            store.lock().execute(sql, []).unwrap();
            let err = store.run(&run.id).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{sql}: {err:?}");
            assert!(err.to_string().contains("chat-1"), "{err}");
            let err = store.runs(&RunFilter::default()).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{sql}: {err:?}");
        };
        corrupt("UPDATE runs SET state = 'dancing'");
        corrupt("UPDATE runs SET state = 'ready', owner_kind = 'robot'");
        corrupt("UPDATE runs SET owner_kind = 'job', owner_name = 'Not A Name'");
        corrupt("UPDATE runs SET owner_name = 'chat', port = 70000");
        corrupt("UPDATE runs SET port = NULL, exit_signal = 9");
        corrupt("UPDATE runs SET exit_signal = NULL, vram_reserved = -1");
    }
}
