//! Models in the loop: registering versions, promotion (by policy, by hand, rollback, after a
//! failed rollout), retention, and which version a service replica should serve.

use std::collections::BTreeSet;

use domain::{
    now_ms, EventKind, Metrics, ModelSpec, Name, NewEvent, OwnerKind, PromotePolicy, RunId,
    RunState, VersionState,
};
use store::{NewVersion, VersionRecord};

use super::{Engine, ModelState};
use crate::versions::{self, Manifest, Staged};
use crate::{Error, Registered, Registration};

impl Engine {
    /// The version a service's replicas should serve: `Ok(None)` for a service that follows
    /// no model, `Err(reason)` while its model has no promoted version.
    pub(super) fn desired_version(&self, service: &Name) -> Result<Option<u32>, String> {
        let Some(model) = self
            .services
            .get(service)
            .and_then(|s| s.spec.model.as_ref())
        else {
            return Ok(None);
        };
        match self.models.get(model).and_then(|m| m.promoted) {
            Some(version) => Ok(Some(version)),
            None => Err(format!(
                "model {model} has no promoted version yet: a job registers one, or import one with \
                 `flowers models import PATH --model {model}` and promote it"
            )),
        }
    }

    pub(super) fn register_version(
        &mut self,
        registration: Registration,
        staged: &Staged,
    ) -> Result<Registered, Error> {
        if self.shutdown_replies.is_some() {
            return Err(Error::ShuttingDown);
        }
        let model = Name::new(&registration.model)
            .map_err(|error| Error::Refused(format!("model name: {error}")))?;
        let job = match &registration.run {
            None => None,
            Some(run) => {
                let Some(live) = self.runs.get(run) else {
                    return match self.store.run(run)? {
                        Some(_) => Err(Error::RunEnded(run.to_string())),
                        None => Err(Error::UnknownRun(run.to_string())),
                    };
                };
                if live.record.owner.kind != OwnerKind::Job {
                    return Err(Error::not_a_job(run, &live.record.owner.name));
                }
                Some(live.record.owner.name.to_string())
            }
        };
        if !self.models.contains_key(&model) {
            self.store.ensure_model(&model)?;
            self.models.insert(
                model.clone(),
                ModelState {
                    spec: ModelSpec::implied(model.clone()),
                    promoted: None,
                },
            );
        }
        let version = self.store.next_version(model.as_str())?;
        let source = match &registration.run {
            Some(run) => format!("run {run}"),
            None => registration.path.display().to_string(),
        };
        let created_ms = now_ms();
        let run_text = registration.run.as_ref().map(RunId::to_string);
        let manifest = Manifest {
            model: model.as_str(),
            version,
            digest: &staged.digest,
            size_bytes: staged.size_bytes,
            files: &staged.files,
            metrics: &registration.metrics,
            run: run_text.as_deref(),
            source: &source,
            created_ms,
        };
        let dir = versions::commit(&self.settings.data_dir, staged, &manifest)?;
        let record = match self.store.insert_version(&NewVersion {
            model: model.clone(),
            version,
            digest: staged.digest.clone(),
            files: staged.files.len() as u64,
            size_bytes: staged.size_bytes,
            metrics: registration.metrics.clone(),
            run: run_text.clone(),
            job: job.clone(),
            source,
        }) {
            Ok(record) => record,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error.into());
            }
        };
        let mut event = NewEvent::new(
            EventKind::VersionRegistered,
            format!(
                "registered {model}:{version} ({} file(s), {}{}){}",
                record.files,
                domain::ByteSize(record.size_bytes),
                describe_metrics(&record.metrics),
                run_text
                    .as_ref()
                    .map(|r| format!(" from {r}"))
                    .unwrap_or_default()
            ),
        )
        .owner(&model);
        if let Some(run) = &run_text {
            event = event.run(run);
        }
        self.emit(event);

        let (promote, note) = self.policy_verdict(&model, &record)?;
        if promote {
            self.promote(&model, version, &note)?;
        }
        self.apply_retention(&model)?;
        Ok(Registered {
            version: record,
            promoted: promote,
            note,
        })
    }

    /// Whether the model's policy promotes `candidate`, and why (or why not).
    fn policy_verdict(
        &self,
        model: &Name,
        candidate: &VersionRecord,
    ) -> Result<(bool, String), Error> {
        let state = &self.models[model];
        let PromotePolicy::Metric { metric, mode } = &state.spec.promote else {
            return Ok((
                false,
                format!(
                    "not promoted: promotion of {model} is manual (`flowers models promote {model} {}`)",
                    candidate.version
                ),
            ));
        };
        let Some(value) = candidate.metrics.get(metric) else {
            return Ok((
                false,
                format!(
                    "not promoted: it has no {metric} metric, which the promotion policy compares"
                ),
            ));
        };
        let Some(current) = state.promoted else {
            return Ok((true, format!("{metric} {value}; nothing was promoted")));
        };
        let current_value = self
            .store
            .version(model.as_str(), current)?
            .and_then(|record| record.metrics.get(metric).copied());
        Ok(match current_value {
            None => (
                true,
                format!("{metric} {value}; promoted version {current} has no {metric}"),
            ),
            Some(current_value) if mode.better(*value, current_value) => (
                true,
                format!(
                    "{metric} {value} {} {current_value} of version {current}",
                    if mode.as_str() == "min" { "<" } else { ">" }
                ),
            ),
            Some(current_value) => (
                false,
                format!(
                    "not promoted: {metric} {value} does not beat {current_value} of version {current} ({})",
                    mode.as_str()
                ),
            ),
        })
    }

    /// Records `version` as promoted; the next reconcile moves the model's services to it.
    pub(super) fn promote(
        &mut self,
        model: &Name,
        version: u32,
        reason: &str,
    ) -> Result<(), Error> {
        let promotion = self.store.set_promoted(model, Some(version), reason)?;
        if let Some(state) = self.models.get_mut(model) {
            state.promoted = Some(version);
        }
        let previous = promotion
            .and_then(|p| p.previous)
            .map(|p| format!(" (was {p})"))
            .unwrap_or_default();
        let followers: Vec<String> = self
            .services
            .values()
            .filter(|s| s.spec.model.as_ref() == Some(model))
            .map(|s| s.spec.name.to_string())
            .collect();
        let serving = if followers.is_empty() {
            String::new()
        } else {
            format!("; rolling out to {}", followers.join(", "))
        };
        self.emit(
            NewEvent::new(
                EventKind::VersionPromoted,
                format!("promoted {model}:{version}{previous}: {reason}{serving}"),
            )
            .owner(model),
        );
        Ok(())
    }

    /// `flowers models promote` (a version) or `rollback` (`None`).
    pub(super) fn promote_by_user(
        &mut self,
        model: &str,
        version: Option<u32>,
    ) -> Result<String, Error> {
        if self.shutdown_replies.is_some() {
            return Err(Error::ShuttingDown);
        }
        let name = self
            .models
            .keys()
            .find(|n| n.as_str() == model)
            .cloned()
            .ok_or_else(|| Error::UnknownModel(model.to_string()))?;
        let current = self.models[&name].promoted;
        let (version, reason) = match version {
            Some(version) => (version, "promoted by user".to_string()),
            None => {
                let history = self.store.promotions(model, 1)?;
                let previous = history
                    .first()
                    .filter(|p| Some(p.version) == current)
                    .and_then(|p| p.previous)
                    .ok_or_else(|| {
                        Error::Refused(format!(
                            "model {model} has no earlier promoted version to roll back to"
                        ))
                    })?;
                (
                    previous,
                    format!("rolled back from version {}", current.unwrap_or(0)),
                )
            }
        };
        let record = self
            .store
            .version(model, version)?
            .ok_or_else(|| Error::UnknownVersion(model.to_string(), version))?;
        if record.state == VersionState::Deleted {
            return Err(Error::Refused(format!(
                "version {version} of {model} was deleted ({}); its files are gone",
                record.reason.as_deref().unwrap_or("retention")
            )));
        }
        if current == Some(version) {
            return Ok(format!("{model}:{version} is already promoted"));
        }
        if record.state == VersionState::Failed {
            // Promoting by hand is a decision to try again (the cause may be fixed).
            self.store
                .set_version_state(model, version, VersionState::Ready, None)?;
        }
        self.promote(&name, version, &reason)?;
        self.apply_retention(&name)?;
        Ok(format!("promoted {model}:{version} ({reason})"))
    }

    /// A replica of the promoted version ended before it was ever ready while a replica of an
    /// older version still serves: the rollout failed. The version is marked failed and the
    /// older one promoted again, so nothing changes for clients. Returns whether it was that.
    pub(super) fn rollout_failed(
        &mut self,
        service: &Name,
        replica: u32,
        version: Option<u32>,
        never_ready: bool,
        why: &str,
    ) -> bool {
        let (Some(version), true) = (version, never_ready) else {
            return false;
        };
        let Some(model) = self
            .services
            .get(service)
            .and_then(|s| s.spec.model.clone())
        else {
            return false;
        };
        if self.models.get(&model).and_then(|m| m.promoted) != Some(version) {
            return false;
        }
        let serving_older = self.runs.values().find_map(|live| {
            let record = &live.record;
            (record.owner.kind == OwnerKind::Service
                && &record.owner.name == service
                && record.owner.replica == replica
                && record.state == RunState::Ready
                && record.model_version != Some(version))
            .then_some(record.model_version)
            .flatten()
        });
        let Some(older) = serving_older else {
            return false;
        };
        let reason = format!("its replica did not become ready: {why}");
        if let Err(error) = self.store.set_version_state(
            model.as_str(),
            version,
            VersionState::Failed,
            Some(&reason),
        ) {
            tracing::error!(%error, "could not mark a version failed");
        }
        self.emit(
            NewEvent::new(
                EventKind::VersionFailed,
                format!("{model}:{version} failed: {reason}; version {older} keeps serving"),
            )
            .owner(&model),
        );
        if let Err(error) = self.promote(
            &model,
            older,
            &format!("version {version} failed to become ready"),
        ) {
            tracing::error!(%error, "could not promote the older version again");
        }
        true
    }

    /// Deletes the files of versions beyond the model's `keep`, newest first, except the
    /// promoted one, the one promoted before it, any a live Run serves, and each job's newest
    /// (it resumes from it).
    pub(super) fn apply_retention(&mut self, model: &Name) -> Result<(), Error> {
        let keep = self
            .models
            .get(model)
            .map_or(ModelSpec::DEFAULT_KEEP, |m| m.spec.keep);
        let versions = self.store.versions(model.as_str())?;
        let mut protected: BTreeSet<u32> = BTreeSet::new();
        if let Some(promoted) = self.models.get(model).and_then(|m| m.promoted) {
            protected.insert(promoted);
        }
        if let Some(last) = self.store.promotions(model.as_str(), 1)?.first() {
            protected.extend(last.previous);
        }
        for live in self.runs.values() {
            let follows = self
                .services
                .get(&live.record.owner.name)
                .is_some_and(|s| s.spec.model.as_ref() == Some(model));
            if follows {
                protected.extend(live.record.model_version);
            }
        }
        let mut newest_per_job: BTreeSet<&str> = BTreeSet::new();
        for record in versions.iter().filter(|v| v.state != VersionState::Deleted) {
            if let Some(job) = &record.job {
                if newest_per_job.insert(job.as_str()) {
                    protected.insert(record.version);
                }
            }
        }
        let mut kept = 0;
        for record in versions.iter().filter(|v| v.state != VersionState::Deleted) {
            if kept < keep {
                kept += 1;
                continue;
            }
            if protected.contains(&record.version) {
                continue;
            }
            let dir =
                versions::version_dir(&self.settings.data_dir, model.as_str(), record.version);
            if let Err(error) = std::fs::remove_dir_all(&dir) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%error, dir = %dir.display(), "could not delete an old version");
                    continue;
                }
            }
            let reason = format!("retention: keep = {keep}");
            self.store.set_version_state(
                model.as_str(),
                record.version,
                VersionState::Deleted,
                Some(&reason),
            )?;
            self.emit(
                NewEvent::new(
                    EventKind::VersionDeleted,
                    format!("deleted {model}:{} ({reason})", record.version),
                )
                .owner(model),
            );
        }
        Ok(())
    }

    pub(super) fn model_views(&self) -> Vec<crate::ModelView> {
        self.models
            .values()
            .map(|state| {
                let serving: BTreeSet<u32> =
                    self.runs
                        .values()
                        .filter(|live| {
                            live.record.state == RunState::Ready
                                && self.services.get(&live.record.owner.name).is_some_and(|s| {
                                    s.spec.model.as_ref() == Some(&state.spec.name)
                                })
                        })
                        .filter_map(|live| live.record.model_version)
                        .collect();
                crate::ModelView {
                    spec: state.spec.clone(),
                    promoted: state.promoted,
                    serving: serving.into_iter().collect(),
                }
            })
            .collect()
    }
}

/// `, eval_loss=0.31, accuracy=0.9`, or nothing.
fn describe_metrics(metrics: &Metrics) -> String {
    metrics
        .iter()
        .map(|(name, value)| format!(", {name}={value}"))
        .collect()
}
