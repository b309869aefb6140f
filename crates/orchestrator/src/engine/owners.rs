//! Services and jobs added at run time (`flowers deploy`, `flowers train`, `PUT
//! /v1/services/NAME`): kept in the store so they survive restarts, replaced blue/green when
//! their spec changes, removed (drained first) on request. The configuration file wins: a name
//! it declares cannot be added, changed or removed at run time.

use domain::{EventKind, JobSpec, ModelSpec, Name, NewEvent, OwnerKind, RunId, ServiceSpec};

use super::{spec_hash, Engine, JobOutcome, ModelState, StopCause};
use crate::Error;

/// A spec read back from the store.
enum Stored {
    Service(ServiceSpec),
    Job(JobSpec),
}

impl Engine {
    /// Services and jobs added at run time, from the store. One whose name the configuration
    /// now declares is dropped (the file wins); one whose stored spec cannot be read is left
    /// in the store, with an event, for `flowers remove` to delete. Returns the services
    /// whose crash loop was cleared because their spec changed.
    pub(super) fn load_added(&mut self) -> Result<Vec<Name>, Error> {
        let mut cleared = Vec::new();
        for stored in self.store.specs()? {
            let Ok(name) = Name::new(&stored.name) else {
                continue;
            };
            if self.services.contains_key(&name) || self.jobs.contains_key(&name) {
                self.store.remove_spec(name.as_str())?;
                self.emit(
                    NewEvent::new(
                        EventKind::OwnerRemoved,
                        format!(
                            "{name}, added at run time, is now declared in the configuration, \
                             which wins; the run-time spec was dropped"
                        ),
                    )
                    .owner(&name),
                );
                continue;
            }
            // A spec that cannot be read is reported; the store's own errors stop the start.
            let parsed = match stored.kind {
                OwnerKind::Service => serde_json::from_str(&stored.spec_json).map(Stored::Service),
                OwnerKind::Job => serde_json::from_str(&stored.spec_json).map(Stored::Job),
            };
            match parsed {
                Ok(Stored::Service(spec)) => {
                    self.ensure_model(spec.model.as_ref())?;
                    if self.insert_service(name.clone(), spec, true)? {
                        cleared.push(name);
                    }
                }
                Ok(Stored::Job(spec)) => {
                    self.ensure_model(spec.model.as_ref())?;
                    self.insert_job(name, spec, true)?;
                }
                Err(error) => {
                    tracing::error!(%error, owner = %name, "cannot read a stored spec");
                    self.emit(
                        NewEvent::new(
                            EventKind::PlacementFailed,
                            format!(
                                "the spec of {name}, added at run time, cannot be read ({error}); \
                                 it is not started. Add it again, or `flowers remove {name}`"
                            ),
                        )
                        .owner(&name),
                    );
                }
            }
        }
        Ok(cleared)
    }

    /// A model a run-time service or job names exists from then on, as the configuration's
    /// implied models do.
    fn ensure_model(&mut self, model: Option<&Name>) -> Result<(), Error> {
        let Some(model) = model else {
            return Ok(());
        };
        if !self.models.contains_key(model) {
            self.store.ensure_model(model)?;
            self.models.insert(
                model.clone(),
                ModelState {
                    spec: ModelSpec::implied(model.clone()),
                    promoted: None,
                },
            );
        }
        Ok(())
    }

    /// Refuses a name the configuration declares, or that the other kind uses.
    fn check_run_time_name(&self, name: &Name, kind: OwnerKind) -> Result<(), Error> {
        let (declared, other) = match kind {
            OwnerKind::Service => (
                self.services.get(name).is_some_and(|s| !s.added),
                self.jobs.contains_key(name).then_some("a job"),
            ),
            OwnerKind::Job => (
                self.jobs.get(name).is_some_and(|j| !j.added),
                self.services.contains_key(name).then_some("a service"),
            ),
        };
        if declared {
            return Err(Error::Conflict(format!(
                "{name} is declared in the configuration file; change it there and restart Flowers"
            )));
        }
        if let Some(other) = other {
            return Err(Error::Conflict(format!(
                "{name} is already {other}; services and jobs share one set of names"
            )));
        }
        if self.shutdown_replies.is_some() {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Adds a service, or replaces the spec of one added earlier: its replicas are then
    /// replaced blue/green, one slot at a time, as for a new model version.
    pub(super) fn put_service(&mut self, spec: ServiceSpec) -> Result<String, Error> {
        let name = spec.name.clone();
        self.check_run_time_name(&name, OwnerKind::Service)?;
        if self.services.get(&name).is_some_and(|s| s.spec == spec) {
            return Ok(format!("service {name} is unchanged"));
        }
        let json = serde_json::to_string(&spec).map_err(|e| Error::Refused(e.to_string()))?;
        self.store
            .put_spec(name.as_str(), OwnerKind::Service, &json)?;
        self.ensure_model(spec.model.as_ref())?;
        let (kind, message) = if let Some(service) = self.services.get_mut(&name) {
            let restarts = service.hash != spec_hash(&spec);
            service.hash = spec_hash(&spec);
            service.spec = spec;
            service.failures = 0;
            service.crash_loop = false;
            service.backoff_until = None;
            service.finished_slots.clear();
            self.save_owner_state(name.as_str(), OwnerKind::Service, 0, false);
            let message = if restarts {
                format!("service {name} changed: its replicas are replaced blue/green")
            } else {
                format!("service {name} changed")
            };
            (EventKind::OwnerChanged, message)
        } else {
            let replicas = spec.replicas;
            self.insert_service(name.clone(), spec, true)?;
            (
                EventKind::OwnerAdded,
                format!("service {name} added with {replicas} replica(s)"),
            )
        };
        self.emit(NewEvent::new(kind, message.clone()).owner(&name));
        Ok(message)
    }

    /// Adds a job, or replaces the spec of one added earlier that is not running.
    pub(super) fn put_job(&mut self, spec: JobSpec) -> Result<String, Error> {
        let name = spec.name.clone();
        self.check_run_time_name(&name, OwnerKind::Job)?;
        if let Some(live) = self.live_job_run(name.as_str()) {
            return Err(Error::Conflict(format!(
                "job {name} is running (run {}); stop it first with `flowers stop {}`",
                live.record.id, live.record.id
            )));
        }
        let json = serde_json::to_string(&spec).map_err(|e| Error::Refused(e.to_string()))?;
        self.store.put_spec(name.as_str(), OwnerKind::Job, &json)?;
        self.ensure_model(spec.model.as_ref())?;
        let starts = if spec.autostart { ", starting" } else { "" };
        let (kind, message) = if let Some(job) = self.jobs.get_mut(&name) {
            job.hash = spec_hash(&spec);
            job.outcome = if spec.autostart {
                JobOutcome::Active
            } else {
                JobOutcome::Idle
            };
            job.spec = spec;
            job.failures = 0;
            job.backoff_until = None;
            self.save_owner_state(name.as_str(), OwnerKind::Job, 0, false);
            (
                EventKind::OwnerChanged,
                format!("job {name} changed{starts}"),
            )
        } else {
            self.insert_job(name.clone(), spec, true)?;
            (EventKind::OwnerAdded, format!("job {name} added{starts}"))
        };
        self.emit(NewEvent::new(kind, message.clone()).owner(&name));
        Ok(message)
    }

    /// Removes a service or job added at run time. A service's replicas leave the gateway's
    /// rotation at once and are stopped once their requests in flight have finished; a job's
    /// Run is stopped (SIGTERM, its grace period to checkpoint).
    pub(super) fn remove_owner(&mut self, name: &str) -> Result<String, Error> {
        let kind = if let Some(service) = self.services.get(name) {
            Some((OwnerKind::Service, service.added))
        } else {
            self.jobs.get(name).map(|job| (OwnerKind::Job, job.added))
        };
        let Some((kind, added)) = kind else {
            // A stored spec that could not be read is still removable.
            if self.store.remove_spec(name)? {
                return Ok(format!("removed the unreadable spec of {name}"));
            }
            return Err(Error::UnknownOwner(name.to_string()));
        };
        if !added {
            return Err(Error::Conflict(format!(
                "{name} is declared in the configuration file; remove it there and restart Flowers"
            )));
        }
        self.store.remove_spec(name)?;
        let owner = match kind {
            OwnerKind::Service => self.services.remove(name).map(|s| s.spec.name),
            OwnerKind::Job => self.jobs.remove(name).map(|j| j.spec.name),
        }
        .expect("found above");
        let runs: Vec<RunId> = self
            .runs
            .values()
            .filter(|live| live.stop.is_none() && live.record.owner.name == owner)
            .map(|live| live.record.id.clone())
            .collect();
        let what = match kind {
            OwnerKind::Service => "service",
            OwnerKind::Job => "job",
        };
        for run in &runs {
            self.begin_stop(
                run,
                StopCause::NotDesired(format!("its {what} was removed")),
            );
        }
        let message = match (kind, runs.len()) {
            (_, 0) => format!("{what} {owner} removed"),
            (OwnerKind::Service, n) => {
                format!("{what} {owner} removed; draining and stopping {n} replica(s)")
            }
            (OwnerKind::Job, _) => format!("{what} {owner} removed; stopping run {}", runs[0]),
        };
        self.emit(NewEvent::new(EventKind::OwnerRemoved, message.clone()).owner(&owner));
        Ok(message)
    }
}
