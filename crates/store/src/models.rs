//! Models, their versions and the promotion history. The files of a version live under the data
//! directory (the orchestrator writes them); a version exists for Flowers once its row is here.

use domain::{Metrics, Name, VersionState};
use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use crate::{narrow, narrow_opt, parse_name, widen, Store, StoreError};

/// A Model and which of its versions is promoted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelRecord {
    pub name: Name,
    pub promoted: Option<u32>,
    pub updated_ms: i64,
}

/// A version about to be recorded; its files are already in place.
#[derive(Clone, Debug, PartialEq)]
pub struct NewVersion {
    pub model: Name,
    pub version: u32,
    pub digest: String,
    pub files: u64,
    pub size_bytes: u64,
    pub metrics: Metrics,
    pub run: Option<String>,
    pub job: Option<String>,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VersionRecord {
    pub model: Name,
    pub version: u32,
    pub state: VersionState,
    /// `sha256:` of the version's files (see the orchestrator's manifest).
    pub digest: String,
    pub files: u64,
    pub size_bytes: u64,
    pub metrics: Metrics,
    pub run: Option<String>,
    pub job: Option<String>,
    pub source: String,
    /// Why it failed or was deleted.
    pub reason: Option<String>,
    pub created_ms: i64,
}

/// One change of a model's promoted version.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Promotion {
    pub id: i64,
    pub model: Name,
    pub version: u32,
    pub previous: Option<u32>,
    pub reason: String,
    pub time_ms: i64,
}

const VERSION_COLUMNS: &str = "model, version, state, digest, files, size_bytes, metrics_json, \
    run, job, source, reason, created_ms";

impl Store {
    /// Records a model (no version promoted) if it is not known yet.
    pub fn ensure_model(&self, name: &Name) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT OR IGNORE INTO models (name, promoted, updated_ms) VALUES (?1, NULL, ?2)",
            params![name.as_str(), domain::now_ms()],
        )?;
        Ok(())
    }

    pub fn models(&self) -> Result<Vec<ModelRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT name, promoted, updated_ms FROM models ORDER BY name")?;
        let mut rows = stmt.query([])?;
        let mut models = Vec::new();
        while let Some(row) = rows.next()? {
            models.push(model_from_row(row)?);
        }
        Ok(models)
    }

    pub fn model(&self, name: &str) -> Result<Option<ModelRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT name, promoted, updated_ms FROM models WHERE name = ?1")?;
        let mut rows = stmt.query([name])?;
        rows.next()?.map(model_from_row).transpose()
    }

    /// The number the next version of `model` gets: one more than any it ever had.
    pub fn next_version(&self, model: &str) -> Result<u32, StoreError> {
        let highest: Option<i64> = self.lock().query_row(
            "SELECT max(version) FROM versions WHERE model = ?1",
            [model],
            |row| row.get(0),
        )?;
        let highest: u32 =
            narrow_opt(highest, || format!("versions.version of model {model}"))?.unwrap_or(0);
        Ok(highest + 1)
    }

    /// Records a version (and its model, if new) in state `ready`. A number already used is
    /// refused, so a version can never be recorded twice.
    pub fn insert_version(&self, new: &NewVersion) -> Result<VersionRecord, StoreError> {
        let metrics_json = serde_json::to_string(&new.metrics)
            .map_err(|error| StoreError::invalid("metrics", error.to_string()))?;
        let created_ms = domain::now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO models (name, promoted, updated_ms) VALUES (?1, NULL, ?2)",
            params![new.model.as_str(), created_ms],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO versions ({VERSION_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, ?11)"
            ),
            params![
                new.model.as_str(),
                new.version,
                VersionState::Ready.as_str(),
                new.digest,
                widen(new.files, "file count")?,
                widen(new.size_bytes, "version size")?,
                metrics_json,
                new.run,
                new.job,
                new.source,
                created_ms,
            ],
        )?;
        tx.commit()?;
        Ok(VersionRecord {
            model: new.model.clone(),
            version: new.version,
            state: VersionState::Ready,
            digest: new.digest.clone(),
            files: new.files,
            size_bytes: new.size_bytes,
            metrics: new.metrics.clone(),
            run: new.run.clone(),
            job: new.job.clone(),
            source: new.source.clone(),
            reason: None,
            created_ms,
        })
    }

    /// The versions of `model`, newest first.
    pub fn versions(&self, model: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE model = ?1 ORDER BY version DESC"
        ))?;
        let mut rows = stmt.query([model])?;
        let mut versions = Vec::new();
        while let Some(row) = rows.next()? {
            versions.push(version_from_row(row)?);
        }
        Ok(versions)
    }

    pub fn version(&self, model: &str, version: u32) -> Result<Option<VersionRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE model = ?1 AND version = ?2"
        ))?;
        let mut rows = stmt.query(params![model, version])?;
        rows.next()?.map(version_from_row).transpose()
    }

    /// The newest version a job registered that still has its files: where it resumes from.
    pub fn latest_job_version(&self, job: &str) -> Result<Option<VersionRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE job = ?1 AND state <> ?2 \
             ORDER BY created_ms DESC, version DESC LIMIT 1"
        ))?;
        let mut rows = stmt.query(params![job, VersionState::Deleted.as_str()])?;
        rows.next()?.map(version_from_row).transpose()
    }

    pub fn set_version_state(
        &self,
        model: &str,
        version: u32,
        state: VersionState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let changed = self.lock().execute(
            "UPDATE versions SET state = ?1, reason = ?2 WHERE model = ?3 AND version = ?4",
            params![state.as_str(), reason, model, version],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound {
                what: "model version",
                id: format!("{model}:{version}"),
            });
        }
        Ok(())
    }

    /// Makes `version` the promoted version of `model` (`None`: nothing promoted) and records
    /// the change in the history, in one transaction.
    pub fn set_promoted(
        &self,
        model: &Name,
        version: Option<u32>,
        reason: &str,
    ) -> Result<Option<Promotion>, StoreError> {
        let time_ms = domain::now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO models (name, promoted, updated_ms) VALUES (?1, NULL, ?2)",
            params![model.as_str(), time_ms],
        )?;
        let previous: Option<i64> = tx.query_row(
            "SELECT promoted FROM models WHERE name = ?1",
            [model.as_str()],
            |row| row.get(0),
        )?;
        let previous: Option<u32> = narrow_opt(previous, || format!("models.promoted of {model}"))?;
        tx.execute(
            "UPDATE models SET promoted = ?1, updated_ms = ?2 WHERE name = ?3",
            params![version, time_ms, model.as_str()],
        )?;
        let promotion = match version {
            Some(version) => {
                tx.execute(
                    "INSERT INTO promotions (model, version, previous, reason, time_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![model.as_str(), version, previous, reason, time_ms],
                )?;
                Some(Promotion {
                    id: tx.last_insert_rowid(),
                    model: model.clone(),
                    version,
                    previous,
                    reason: reason.to_string(),
                    time_ms,
                })
            }
            None => None,
        };
        tx.commit()?;
        Ok(promotion)
    }

    /// Promotions of `model`, newest first.
    pub fn promotions(&self, model: &str, limit: u32) -> Result<Vec<Promotion>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, model, version, previous, reason, time_ms FROM promotions \
             WHERE model = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![model, limit])?;
        let mut promotions = Vec::new();
        while let Some(row) = rows.next()? {
            let id: i64 = row.get("id")?;
            let place = |column: &str| format!("promotions.{column} of promotion {id}");
            promotions.push(Promotion {
                id,
                model: parse_name(&row.get::<_, String>("model")?, || place("model"))?,
                version: narrow(row.get("version")?, || place("version"))?,
                previous: narrow_opt(row.get("previous")?, || place("previous"))?,
                reason: row.get("reason")?,
                time_ms: row.get("time_ms")?,
            });
        }
        Ok(promotions)
    }

    /// Whether a model is known, for clear "no such model" errors.
    pub fn has_model(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT 1 FROM models WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

fn model_from_row(row: &Row<'_>) -> Result<ModelRecord, StoreError> {
    let name: String = row.get("name")?;
    let place = |column: &str| format!("models.{column} of model {name}");
    Ok(ModelRecord {
        name: parse_name(&name, || place("name"))?,
        promoted: narrow_opt(row.get("promoted")?, || place("promoted"))?,
        updated_ms: row.get("updated_ms")?,
    })
}

fn version_from_row(row: &Row<'_>) -> Result<VersionRecord, StoreError> {
    let model: String = row.get("model")?;
    let version: i64 = row.get("version")?;
    let place = |column: &str| format!("versions.{column} of {model}:{version}");
    let state_text: String = row.get("state")?;
    let state = VersionState::parse(&state_text).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "{}: unknown version state {state_text:?}",
            place("state")
        ))
    })?;
    let metrics_json: String = row.get("metrics_json")?;
    let metrics: Metrics = serde_json::from_str(&metrics_json)
        .map_err(|error| StoreError::Corrupt(format!("{}: {error}", place("metrics_json"))))?;
    Ok(VersionRecord {
        model: parse_name(&model, || place("model"))?,
        version: narrow(version, || place("version"))?,
        state,
        digest: row.get("digest")?,
        files: narrow(row.get("files")?, || place("files"))?,
        size_bytes: narrow(row.get("size_bytes")?, || place("size_bytes"))?,
        metrics,
        run: row.get("run")?,
        job: row.get("job")?,
        source: row.get("source")?,
        reason: row.get("reason")?,
        created_ms: row.get("created_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_store;

    fn name(text: &str) -> Name {
        Name::new(text).unwrap()
    }

    fn new_version(model: &str, version: u32, job: Option<&str>, loss: f64) -> NewVersion {
        NewVersion {
            model: name(model),
            version,
            digest: format!("sha256:{version:064x}"),
            files: 2,
            size_bytes: 1234,
            metrics: [("eval_loss".to_string(), loss)].into_iter().collect(),
            run: job.map(|j| format!("{j}-7")),
            job: job.map(str::to_string),
            source: "test".into(),
        }
    }

    #[test]
    fn versions_are_numbered_per_model_and_never_reused() {
        let (_dir, store) = temp_store();
        assert_eq!(store.next_version("m").unwrap(), 1);
        store
            .insert_version(&new_version("m", 1, None, 0.5))
            .unwrap();
        store
            .insert_version(&new_version("m", 2, None, 0.4))
            .unwrap();
        assert_eq!(store.next_version("m").unwrap(), 3);
        assert_eq!(store.next_version("other").unwrap(), 1);
        // Deleting keeps the row, so the number stays taken.
        store
            .set_version_state("m", 2, VersionState::Deleted, Some("retention"))
            .unwrap();
        assert_eq!(store.next_version("m").unwrap(), 3);
        assert!(store
            .insert_version(&new_version("m", 2, None, 0.1))
            .is_err());
        let versions = store.versions("m").unwrap();
        assert_eq!(
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(versions[0].state, VersionState::Deleted);
        assert_eq!(versions[0].reason.as_deref(), Some("retention"));
        assert_eq!(versions[1].metrics["eval_loss"], 0.5);
        assert!(store.has_model("m").unwrap());
        assert!(!store.has_model("nope").unwrap());
    }

    #[test]
    fn promotion_history_records_the_previous_version() {
        let (_dir, store) = temp_store();
        store.ensure_model(&name("m")).unwrap();
        assert_eq!(store.model("m").unwrap().unwrap().promoted, None);
        store
            .insert_version(&new_version("m", 1, None, 0.5))
            .unwrap();
        store
            .insert_version(&new_version("m", 2, None, 0.4))
            .unwrap();
        let first = store
            .set_promoted(&name("m"), Some(1), "first")
            .unwrap()
            .unwrap();
        assert_eq!((first.version, first.previous), (1, None));
        let second = store
            .set_promoted(&name("m"), Some(2), "better")
            .unwrap()
            .unwrap();
        assert_eq!((second.version, second.previous), (2, Some(1)));
        assert_eq!(store.model("m").unwrap().unwrap().promoted, Some(2));
        let history = store.promotions("m", 10).unwrap();
        assert_eq!(
            history.iter().map(|p| p.version).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(store.set_promoted(&name("m"), None, "none").unwrap(), None);
        assert_eq!(store.model("m").unwrap().unwrap().promoted, None);
        assert_eq!(store.models().unwrap().len(), 1);
    }

    #[test]
    fn a_job_resumes_from_its_newest_version_with_files() {
        let (_dir, store) = temp_store();
        assert!(store.latest_job_version("train").unwrap().is_none());
        store
            .insert_version(&new_version("m", 1, Some("train"), 0.5))
            .unwrap();
        store
            .insert_version(&new_version("m", 2, None, 0.4))
            .unwrap();
        store
            .insert_version(&new_version("m", 3, Some("train"), 0.3))
            .unwrap();
        assert_eq!(
            store.latest_job_version("train").unwrap().unwrap().version,
            3
        );
        store
            .set_version_state("m", 3, VersionState::Deleted, None)
            .unwrap();
        assert_eq!(
            store.latest_job_version("train").unwrap().unwrap().version,
            1
        );
    }

    #[test]
    fn corrupt_metrics_are_reported_with_their_place() {
        let (_dir, store) = temp_store();
        store
            .insert_version(&new_version("m", 1, None, 0.5))
            .unwrap();
        store
            .lock()
            .execute("UPDATE versions SET metrics_json = 'nope'", [])
            .unwrap();
        let error = store.versions("m").unwrap_err().to_string();
        assert!(error.contains("versions.metrics_json of m:1"), "{error}");
    }
}
