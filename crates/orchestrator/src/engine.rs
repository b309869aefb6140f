//! The loop itself: state, the handling of each [`Input`], and reconciliation.

mod models;
mod owners;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{
    now_ms, ByteSize, DeviceId, EventKind, ExitStatus, JobSpec, ModelSpec, Name, NewEvent,
    OwnerKind, ProbeSpec, Progress, ReplaceStrategy, RestartPolicy, RunId, RunOwner, RunState,
    ServiceSpec, VersionState,
};
use scheduler::{Allocation, Request, RequestClass, Snapshot};
use store::{NewRun, OwnerState, RunFilter, RunRecord, RunUpdate, Store};
use supervisor::{LaunchSpec, ProcessHandle, Supervisor};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::usage::{self, DeviceUsage, Ledger};
use crate::versions;
use crate::view::{JobView, OwnerStatus, ServiceView, View};
use crate::{Command, Desired, Error, Handle, JobStarted, Settings};

/// A command whose program is this name runs `Settings::flowers_exe`.
const FLOWERS_PROGRAM: &str = "flowers";

/// Everything that can make the orchestrator act. One closed set, handled one at a time.
pub(crate) enum Input {
    Command(Command),
    /// A Run's monitor process ended; `status` is the Run command's own.
    RunExited {
        run: RunId,
        status: ExitStatus,
    },
    /// A service Run passed its first readiness probe.
    ProbePassed {
        run: RunId,
    },
    /// A service Run did not become ready within its start timeout.
    StartTimedOut {
        run: RunId,
        reason: String,
    },
    /// A ready service Run failed its probe `failure_threshold` times in a row.
    RunUnhealthy {
        run: RunId,
        reason: String,
    },
    /// An owner's restart backoff is over.
    BackoffElapsed,
    /// A new reading of the GPUs' memory, charged to Runs (every 2 s, from the binary).
    DeviceUsage(DeviceUsage),
}

/// Why Flowers is stopping a Run; decides what happens after it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StopCause {
    User,
    ScaleDown,
    Unhealthy(String),
    NotDesired(String),
    Shutdown,
    /// A preemptible job stopped to make room for a service replica; it resumes later.
    Preempted(String),
    /// A replica of an older version, replaced by one of the promoted version.
    Replaced(String),
}

impl StopCause {
    fn describe(&self) -> String {
        match self {
            StopCause::User => "requested by user".into(),
            StopCause::ScaleDown => "more replicas than configured".into(),
            StopCause::Unhealthy(reason) => reason.clone(),
            StopCause::NotDesired(reason) => reason.clone(),
            StopCause::Shutdown => "Flowers is shutting down".into(),
            StopCause::Preempted(reason) => format!("preempted {reason}"),
            StopCause::Replaced(reason) => reason.clone(),
        }
    }
    /// A Run stopped for failing its probes counts as a failure of its owner.
    fn is_failure(&self) -> bool {
        matches!(self, StopCause::Unhealthy(_))
    }
}

struct LiveRun {
    record: RunRecord,
    handle: Option<ProcessHandle>,
    stop_grace: Duration,
    probe: Option<AbortHandle>,
    stop: Option<StopCause>,
}

struct ServiceState {
    spec: ServiceSpec,
    hash: String,
    /// Added at run time (kept in the store), not declared in the configuration.
    added: bool,
    failures: u32,
    crash_loop: bool,
    backoff_until: Option<Instant>,
    waiting: Option<String>,
    /// Replica slots that ended and, by restart policy, are not started again.
    finished_slots: BTreeSet<u32>,
    last_exit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum JobOutcome {
    Idle,
    Active,
    Succeeded,
    Failed(String),
    Stopped,
}

struct JobState {
    spec: JobSpec,
    hash: String,
    /// Added at run time (kept in the store), not declared in the configuration.
    added: bool,
    outcome: JobOutcome,
    failures: u32,
    backoff_until: Option<Instant>,
    waiting: Option<String>,
    last_run: Option<RunRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Replica(Name, u32),
    Job(Name),
}

/// A Model and its promoted version, mirrored from the store.
struct ModelState {
    spec: ModelSpec,
    promoted: Option<u32>,
}

struct Engine {
    settings: Settings,
    models: BTreeMap<Name, ModelState>,
    store: Store,
    supervisor: Arc<Supervisor>,
    desired_devices: Vec<domain::Device>,
    gpu_status: String,
    services: BTreeMap<Name, ServiceState>,
    jobs: BTreeMap<Name, JobState>,
    runs: BTreeMap<RunId, LiveRun>,
    inputs: mpsc::UnboundedSender<Input>,
    events: broadcast::Sender<domain::Event>,
    view: watch::Sender<Arc<View>>,
    started_ms: i64,
    shutdown_replies: Option<Vec<oneshot::Sender<()>>>,
    /// Events emitted while handling the current input, recorded after the view is published.
    pending_events: RefCell<Vec<NewEvent>>,
    /// VRAM in use on the GPUs, as last read.
    vram: Ledger,
}

pub(crate) async fn start(
    settings: Settings,
    desired: Desired,
    store: Store,
    gpu_status: String,
) -> Result<(Handle, tokio::task::JoinHandle<()>), Error> {
    let (inputs, receiver) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(1024);
    let (view, view_receiver) = watch::channel(Arc::new(View::default()));
    let supervisor = Arc::new(Supervisor::new(settings.monitor_command.clone()));
    // The first plan already counts what other programs hold on the GPUs.
    let mut vram = Ledger::default();
    vram.record(desired.device_usage.clone());

    let mut engine = Engine {
        supervisor,
        store: store.clone(),
        desired_devices: desired.devices.clone(),
        gpu_status,
        services: BTreeMap::new(),
        jobs: BTreeMap::new(),
        models: BTreeMap::new(),
        runs: BTreeMap::new(),
        inputs: inputs.clone(),
        events: events.clone(),
        view,
        started_ms: now_ms(),
        shutdown_replies: None,
        pending_events: RefCell::new(Vec::new()),
        vram,
        settings,
    };
    engine.load(desired)?;
    engine.adopt_previous_runs().await?;
    engine.reconcile().await;
    engine.publish();

    let (commands_tx, mut commands_rx) = mpsc::channel::<Input>(64);
    // Commands from handles come through a bounded channel (back-pressure on callers) and are
    // forwarded into the loop's single input queue.
    let forward = inputs.clone();
    tokio::spawn(async move {
        while let Some(input) = commands_rx.recv().await {
            if forward.send(input).is_err() {
                break;
            }
        }
    });
    let engine_data_dir = engine.settings.data_dir.clone();
    let task = tokio::spawn(engine.run(receiver));
    Ok((
        Handle {
            commands: commands_tx,
            view: view_receiver,
            events,
            store,
            data_dir: engine_data_dir,
        },
        task,
    ))
}

/// A stable digest of what makes two versions of a spec need different processes. Replica
/// counts are left out: scaling never restarts the replicas that stay.
fn spec_hash<T: serde::Serialize>(spec: &T) -> String {
    let mut value = serde_json::to_value(spec).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("replicas");
        object.remove("autostart");
        // Keys are the gateway's business: rotating one must not restart a model.
        object.remove("api_keys");
        object.remove("replace");
    }
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    // FNV-1a: stable across Rust releases, unlike the standard library's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn run_dir(data_dir: &Path, run: &RunId) -> PathBuf {
    data_dir.join("runs").join(run.as_str())
}

impl Engine {
    /// Takes a service into the loop with its saved restart state. Failures (and a crash
    /// loop) belong to the configuration that failed: when the spec changed since its last Run,
    /// it starts afresh, and the answer is true if that cleared a crash loop.
    fn insert_service(
        &mut self,
        name: Name,
        spec: ServiceSpec,
        added: bool,
    ) -> Result<bool, Error> {
        let hash = spec_hash(&spec);
        let mut saved = self.store.owner_state(name.as_str())?;
        let last_run = self.last_run(&name)?;
        let mut cleared = false;
        if last_run.is_some_and(|run| run.spec_hash != hash)
            && saved.as_ref().is_some_and(|s| s.consecutive_failures > 0)
        {
            cleared = saved.as_ref().is_some_and(|s| s.crash_loop);
            self.save_owner_state(name.as_str(), OwnerKind::Service, 0, false);
            saved = None;
        }
        self.services.insert(
            name,
            ServiceState {
                hash,
                spec,
                added,
                failures: saved.as_ref().map_or(0, |s| s.consecutive_failures),
                crash_loop: saved.as_ref().is_some_and(|s| s.crash_loop),
                backoff_until: None,
                waiting: None,
                finished_slots: BTreeSet::new(),
                last_exit: None,
            },
        );
        Ok(cleared)
    }

    /// Takes a job into the loop: active at once if it starts by itself, else idle.
    fn insert_job(&mut self, name: Name, spec: JobSpec, added: bool) -> Result<(), Error> {
        let outcome = if spec.autostart {
            JobOutcome::Active
        } else {
            JobOutcome::Idle
        };
        let last_run = self.last_run(&name)?;
        self.jobs.insert(
            name,
            JobState {
                hash: spec_hash(&spec),
                spec,
                added,
                outcome,
                failures: 0,
                backoff_until: None,
                waiting: None,
                last_run,
            },
        );
        Ok(())
    }

    fn load(&mut self, desired: Desired) -> Result<(), Error> {
        self.load_models(desired.models)?;
        let mut fresh_starts = Vec::new();
        for (name, spec) in desired.services {
            if self.insert_service(name.clone(), spec, false)? {
                fresh_starts.push(name);
            }
        }
        for (name, spec) in desired.jobs {
            self.insert_job(name, spec, false)?;
        }
        fresh_starts.extend(self.load_added()?);
        let devices = self
            .desired_devices
            .iter()
            .map(|d| d.id.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        self.emit(NewEvent::new(
            EventKind::FlowersStarted,
            format!(
                "Flowers {} started (pid {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
        ));
        let owners: Vec<Name> = self
            .services
            .keys()
            .chain(self.jobs.keys())
            .cloned()
            .collect();
        for owner in owners {
            self.prune_run_dirs(&owner, None);
        }
        for name in fresh_starts {
            self.emit(
                NewEvent::new(
                    EventKind::CrashLoopCleared,
                    "crash loop cleared: the service's configuration changed",
                )
                .owner(&name),
            );
        }
        self.emit(NewEvent::new(
            EventKind::DevicesDetected,
            format!(
                "devices: {}; {}",
                if devices.is_empty() { "none" } else { &devices },
                self.gpu_status
            ),
        ));
        Ok(())
    }

    /// Models from the configuration, and those only the store knows (imported earlier), with
    /// their promoted versions; removes version files that no record backs.
    fn load_models(&mut self, declared: BTreeMap<Name, ModelSpec>) -> Result<(), Error> {
        for name in declared.keys() {
            self.store.ensure_model(name)?;
        }
        let mut known = BTreeMap::new();
        for record in self.store.models()? {
            let spec = declared
                .get(&record.name)
                .cloned()
                .unwrap_or_else(|| ModelSpec::implied(record.name.clone()));
            let versions: Vec<u32> = self
                .store
                .versions(record.name.as_str())?
                .into_iter()
                .filter(|v| v.state != VersionState::Deleted)
                .map(|v| v.version)
                .collect();
            known.insert(record.name.to_string(), versions);
            self.models.insert(
                record.name.clone(),
                ModelState {
                    spec,
                    promoted: record.promoted,
                },
            );
        }
        for removed in versions::clean_up(&self.settings.data_dir, &known) {
            tracing::info!(path = %removed.display(), "removed an unfinished model version");
        }
        Ok(())
    }

    fn last_run(&self, owner: &Name) -> Result<Option<RunRecord>, Error> {
        let newest = self.store.runs(&RunFilter {
            owner: Some(owner.to_string()),
            active_only: false,
            limit: Some(1),
        })?;
        Ok(newest.into_iter().next())
    }

    /// Runs an earlier Flowers left behind are adopted again when they are still alive and
    /// still wanted as they are; otherwise stopped, so nothing is leaked and the device memory
    /// they held comes back.
    async fn adopt_previous_runs(&mut self) -> Result<(), Error> {
        let previous = self.store.runs(&RunFilter {
            owner: None,
            active_only: true,
            limit: None,
        })?;
        for record in previous.into_iter().rev() {
            // The directory follows from the id; the recorded path may predate knowing the id.
            let dir = run_dir(&self.settings.data_dir, &record.id);
            let (handle, verdict) = match (record.pid, record.pid_start_ticks) {
                (Some(pid), Some(start_ticks)) => (
                    ProcessHandle { pid, start_ticks },
                    self.still_wanted(&record),
                ),
                _ => match supervisor::unrecorded_group(&dir) {
                    // Flowers died between starting the monitor and recording its pid.
                    Some(handle) => (
                        handle,
                        Err("Flowers stopped before recording its process".to_string()),
                    ),
                    None => {
                        self.close_dead_run(
                            record,
                            None,
                            "Flowers stopped before the process was started".into(),
                        );
                        continue;
                    }
                },
            };
            let process = match self.supervisor.adopt(handle, &dir) {
                Ok(Some(process)) => process,
                Ok(None) => {
                    let status = supervisor::read_exit_status(&dir);
                    self.close_dead_run(record, status, "ended while Flowers was down".into());
                    continue;
                }
                Err(error) => {
                    self.close_dead_run(record, None, format!("could not be adopted: {error}"));
                    continue;
                }
            };
            let stop_grace = self.stop_grace_of(&record.owner);
            let run_id = record.id.clone();
            self.spawn_waiter(run_id.clone(), process);
            let was_ready = record.state == RunState::Ready;
            let port = record.port;
            let owner = record.owner.clone();
            self.runs.insert(
                run_id.clone(),
                LiveRun {
                    record,
                    handle: Some(handle),
                    stop_grace,
                    probe: None,
                    stop: None,
                },
            );
            match verdict {
                Ok(()) => {
                    self.emit(
                        NewEvent::new(
                            EventKind::RunAdopted,
                            format!("adopted after a restart of Flowers (pid {})", handle.pid),
                        )
                        .owner(&owner.name)
                        .run(&run_id),
                    );
                    if owner.kind == OwnerKind::Service {
                        if let (Some(port), Some(service)) = (port, self.services.get(&owner.name))
                        {
                            let probe = service.spec.probe.clone();
                            let abort = self.spawn_probe(run_id.clone(), port, probe, was_ready);
                            if let Some(live) = self.runs.get_mut(&run_id) {
                                live.probe = Some(abort);
                            }
                        }
                    } else if let Some(job) = self.jobs.get_mut(&owner.name) {
                        job.outcome = JobOutcome::Active;
                    }
                }
                Err(reason) => self.begin_stop(&run_id, StopCause::NotDesired(reason)),
            }
        }
        Ok(())
    }

    fn still_wanted(&self, record: &RunRecord) -> Result<(), String> {
        // A Run the earlier Flowers was stopping is stopped again: the SIGKILL that would have
        // ended it after its grace period died with that Flowers.
        if record.state == RunState::Stopping {
            return Err("it was being stopped when Flowers went down".into());
        }
        if let Some(device) = &record.device {
            if !self.desired_devices.iter().any(|d| &d.id == device) {
                return Err(format!("its device {device} is gone"));
            }
        }
        let hash = match record.owner.kind {
            OwnerKind::Service => {
                let Some(service) = self.services.get(&record.owner.name) else {
                    return Err("its service is no longer configured".into());
                };
                if record.owner.replica >= service.spec.replicas {
                    return Err("more replicas than configured".into());
                }
                &service.hash
            }
            OwnerKind::Job => match self.jobs.get(&record.owner.name) {
                Some(job) => &job.hash,
                None => return Err("its job is no longer configured".into()),
            },
        };
        if *hash != record.spec_hash {
            return Err("its configuration changed".into());
        }
        Ok(())
    }

    fn stop_grace_of(&self, owner: &RunOwner) -> Duration {
        match owner.kind {
            OwnerKind::Service => self
                .services
                .get(&owner.name)
                .map_or(Duration::from_secs(10), |s| s.spec.stop_grace),
            OwnerKind::Job => self
                .jobs
                .get(&owner.name)
                .map_or(Duration::from_secs(30), |j| j.spec.stop_grace),
        }
    }

    fn close_dead_run(&mut self, record: RunRecord, status: Option<ExitStatus>, reason: String) {
        let update = RunUpdate {
            state: Some(RunState::Exited),
            exit: status,
            reason: Some(reason.clone()),
            ended_ms: Some(now_ms()),
            ..RunUpdate::default()
        };
        if let Err(error) = self.store.update_run(&record.id, &update) {
            tracing::error!(%error, run = %record.id, "could not record the end of a run");
        }
        let message = match status {
            Some(status) => format!("exited {status} ({reason})"),
            None => format!("exited ({reason})"),
        };
        self.emit(
            NewEvent::new(EventKind::RunExited, message)
                .owner(&record.owner.name)
                .run(&record.id),
        );
        if record.owner.kind != OwnerKind::Job {
            return;
        }
        // The job was loaded with this Run as its last one, still running: it must show how the
        // Run ended, and an end with a known status counts as the job's attempt, as if seen live.
        let owner = record.owner.clone();
        let mut record = record;
        record.state = RunState::Exited;
        record.exit = status;
        record.reason = Some(reason);
        record.ended_ms = update.ended_ms;
        match status {
            Some(status) => {
                let live = LiveRun {
                    stop_grace: self.stop_grace_of(&owner),
                    record,
                    handle: None,
                    probe: None,
                    stop: None,
                };
                self.after_job_exit(&owner, live, status, false);
            }
            None => {
                if let Some(job) = self.jobs.get_mut(&owner.name) {
                    job.last_run = Some(record);
                }
            }
        }
    }

    async fn run(mut self, mut inputs: mpsc::UnboundedReceiver<Input>) {
        while let Some(input) = inputs.recv().await {
            self.handle(input).await;
            if let Some(replies) = self.shutdown_replies.as_mut() {
                if self.runs.is_empty() {
                    for reply in replies.drain(..) {
                        let _ = reply.send(());
                    }
                    self.publish();
                    return;
                }
            } else {
                self.reconcile().await;
            }
            self.publish();
        }
    }

    async fn handle(&mut self, input: Input) {
        match input {
            Input::Command(command) => self.handle_command(command).await,
            Input::RunExited { run, status } => self.on_exit(run, status),
            Input::ProbePassed { run } => self.on_ready(run),
            Input::StartTimedOut { run, reason } | Input::RunUnhealthy { run, reason } => {
                if let Some(live) = self.runs.get(&run) {
                    self.emit(
                        NewEvent::new(EventKind::RunUnhealthy, reason.clone())
                            .owner(&live.record.owner.name)
                            .run(&run),
                    );
                    self.begin_stop(&run, StopCause::Unhealthy(reason));
                }
            }
            Input::BackoffElapsed => {}
            Input::DeviceUsage(reading) => {
                self.vram.record(reading);
                let runs: Vec<&RunRecord> = self.runs.values().map(|live| &live.record).collect();
                for event in self.vram.crossings(&runs) {
                    self.emit(event);
                }
            }
        }
    }

    /// The latest VRAM reading, as it counts for the Runs alive now.
    fn device_usage(&self) -> DeviceUsage {
        let runs: Vec<&RunRecord> = self.runs.values().map(|live| &live.record).collect();
        self.vram.counted(&runs)
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::StartJob { name, reply } => {
                let answer = self.start_job(&name).await;
                let _ = reply.send(answer);
            }
            Command::StopRun { run, reply } => {
                let answer = self.stop_run_by_user(&run);
                let _ = reply.send(answer);
            }
            Command::Reset { name, reply } => {
                let answer = self.reset(&name);
                let _ = reply.send(answer);
            }
            Command::RegisterVersion {
                registration,
                staged,
                reply,
            } => {
                let staging = staged.dir.clone();
                let answer = self.register_version(registration, &staged);
                if answer.is_err() {
                    let _ = std::fs::remove_dir_all(&staging);
                }
                let _ = reply.send(answer);
            }
            Command::PutService { spec, reply } => {
                let answer = self.put_service(*spec);
                let _ = reply.send(answer);
            }
            Command::PutJob { spec, reply } => {
                let answer = self.put_job(*spec);
                let _ = reply.send(answer);
            }
            Command::Remove { name, reply } => {
                let answer = self.remove_owner(&name);
                let _ = reply.send(answer);
            }
            Command::ReportProgress {
                run,
                progress,
                reply,
            } => {
                let answer = self.report_progress(&run, progress);
                let _ = reply.send(answer);
            }
            Command::Promote {
                model,
                version,
                reply,
            } => {
                let answer = self.promote_by_user(&model, version);
                let _ = reply.send(answer);
            }
            Command::Shutdown { reply } => {
                if self.shutdown_replies.is_none() {
                    self.emit(NewEvent::new(
                        EventKind::FlowersStopping,
                        format!("stopping {} run(s)", self.runs.len()),
                    ));
                    let ids: Vec<RunId> = self.runs.keys().cloned().collect();
                    for id in ids {
                        self.begin_stop(&id, StopCause::Shutdown);
                    }
                }
                self.shutdown_replies
                    .get_or_insert_with(Vec::new)
                    .push(reply);
            }
        }
    }

    async fn start_job(&mut self, name: &str) -> Result<JobStarted, Error> {
        if self.shutdown_replies.is_some() {
            return Err(Error::ShuttingDown);
        }
        if !self.jobs.contains_key(name) {
            return Err(Error::UnknownJob(name.to_string()));
        }
        if let Some(live) = self.live_job_run(name) {
            return Err(Error::JobAlreadyRunning(
                name.to_string(),
                live.record.id.to_string(),
            ));
        }
        let job = self.jobs.get_mut(name).expect("checked above");
        job.outcome = JobOutcome::Active;
        job.failures = 0;
        job.backoff_until = None;
        self.reconcile().await;
        if let Some(live) = self.live_job_run(name) {
            return Ok(JobStarted::Run(live.record.id.clone()));
        }
        Ok(JobStarted::Waiting(
            self.jobs[name]
                .waiting
                .clone()
                .unwrap_or_else(|| "waiting to be placed".to_string()),
        ))
    }

    fn live_job_run(&self, name: &str) -> Option<&LiveRun> {
        self.runs.values().find(|live| {
            live.record.owner.kind == OwnerKind::Job && live.record.owner.name.as_str() == name
        })
    }

    fn stop_run_by_user(&mut self, run: &RunId) -> Result<String, Error> {
        if !self.runs.contains_key(run) {
            return match self.store.run(run)? {
                Some(_) => Err(Error::RunEnded(run.to_string())),
                None => Err(Error::UnknownRun(run.to_string())),
            };
        }
        let live = &self.runs[run];
        let grace = live.stop_grace;
        if live.record.owner.kind == OwnerKind::Job {
            if let Some(job) = self.jobs.get_mut(&live.record.owner.name) {
                job.outcome = JobOutcome::Stopped;
            }
        }
        self.begin_stop(run, StopCause::User);
        Ok(format!(
            "stopping {run} (SIGTERM, then SIGKILL after {})",
            humantime_secs(grace)
        ))
    }

    /// A Run's `PYTHONPATH`: its own (or Flowers' own) followed by the directories Flowers
    /// adds (the Python SDK), so that `import flowers` works in every Run.
    fn python_path(&self, own: Option<&String>) -> Option<String> {
        let base = own.or(self.settings.python_path.inherited.as_ref());
        let added = std::env::join_paths(&self.settings.python_path.added).ok()?;
        let added = added.to_string_lossy();
        match (base.filter(|b| !b.is_empty()), added.is_empty()) {
            (Some(base), false) => Some(format!("{base}:{added}")),
            (Some(base), true) => Some(base.clone()),
            (None, false) => Some(added.into_owned()),
            (None, true) => None,
        }
    }

    fn report_progress(&mut self, run: &RunId, progress: Progress) -> Result<(), Error> {
        let Some(live) = self.runs.get_mut(run) else {
            return match self.store.run(run)? {
                Some(_) => Err(Error::RunEnded(run.to_string())),
                None => Err(Error::UnknownRun(run.to_string())),
            };
        };
        live.record.progress = Some(progress.clone());
        if let Some(job) = self.jobs.get_mut(&live.record.owner.name) {
            if let Some(last) = job.last_run.as_mut().filter(|last| last.id == *run) {
                last.progress = Some(progress.clone());
            }
        }
        self.store.update_run(
            run,
            &RunUpdate {
                progress: Some(progress),
                ..Default::default()
            },
        )?;
        Ok(())
    }

    fn reset(&mut self, name: &str) -> Result<String, Error> {
        if let Some(service) = self.services.get_mut(name) {
            let was = service.crash_loop;
            service.crash_loop = false;
            service.failures = 0;
            service.backoff_until = None;
            service.finished_slots.clear();
            let kind = OwnerKind::Service;
            self.save_owner_state(name, kind, 0, false);
            let message = if was {
                "crash loop cleared; starting again"
            } else {
                "failure count cleared"
            };
            self.emit(NewEvent::new(EventKind::CrashLoopCleared, message).owner(name));
            return Ok(format!("{name}: {message}"));
        }
        if let Some(job) = self.jobs.get_mut(name) {
            job.failures = 0;
            job.backoff_until = None;
            if matches!(job.outcome, JobOutcome::Failed(_)) {
                job.outcome = JobOutcome::Idle;
            }
            self.save_owner_state(name, OwnerKind::Job, 0, false);
            self.emit(
                NewEvent::new(EventKind::CrashLoopCleared, "failure count cleared").owner(name),
            );
            return Ok(format!("{name}: failure count cleared"));
        }
        Err(Error::UnknownOwner(name.to_string()))
    }

    fn on_ready(&mut self, run: RunId) {
        let Some(live) = self.runs.get_mut(&run) else {
            return;
        };
        if live.stop.is_some() || live.record.state == RunState::Ready {
            return;
        }
        let now = now_ms();
        live.record.state = RunState::Ready;
        live.record.ready_ms = Some(now);
        let owner = live.record.owner.name.clone();
        let started = live.record.started_ms.unwrap_or(now);
        self.update_run(
            &run,
            RunUpdate {
                state: Some(RunState::Ready),
                ready_ms: Some(now),
                ..RunUpdate::default()
            },
        );
        self.emit(
            NewEvent::new(
                EventKind::RunReady,
                format!("ready after {:.1}s", (now - started) as f64 / 1000.0),
            )
            .owner(&owner)
            .run(&run),
        );
    }

    fn on_exit(&mut self, run: RunId, status: ExitStatus) {
        let Some(mut live) = self.runs.remove(&run) else {
            return;
        };
        if let Some(probe) = live.probe.take() {
            probe.abort();
        }
        let now = now_ms();
        let owner = live.record.owner.clone();
        let stopped_by_us = live.stop.as_ref().is_some_and(|cause| !cause.is_failure());
        let state = if stopped_by_us {
            RunState::Stopped
        } else {
            RunState::Exited
        };
        let reason = live
            .stop
            .as_ref()
            .map(StopCause::describe)
            .or_else(|| could_not_start(&run_dir(&self.settings.data_dir, &run), status));
        self.update_run(
            &run,
            RunUpdate {
                state: Some(state),
                exit: Some(status),
                ended_ms: Some(now),
                reason: reason.clone(),
                ..RunUpdate::default()
            },
        );
        live.record.state = state;
        live.record.exit = Some(status);
        live.record.ended_ms = Some(now);
        live.record.reason = reason.clone();
        let (kind, message) = match (&live.stop, stopped_by_us) {
            (Some(cause), true) => (
                EventKind::RunStopped,
                format!("stopped {status} ({})", cause.describe()),
            ),
            (Some(cause), false) => (
                EventKind::RunExited,
                format!("exited {status} after being stopped: {}", cause.describe()),
            ),
            (None, _) => match &reason {
                Some(reason) => (EventKind::RunExited, format!("exited {status}: {reason}")),
                None => (EventKind::RunExited, format!("exited {status}")),
            },
        };
        self.emit(NewEvent::new(kind, message).owner(&owner.name).run(&run));
        self.prune_run_dirs(&owner.name, Some(self.settings.keep_runs + 32));

        if self.shutdown_replies.is_some() {
            return;
        }
        // How long the Run was healthy decides whether earlier failures are forgiven.
        let healthy_since = match owner.kind {
            OwnerKind::Service => live.record.ready_ms,
            OwnerKind::Job => live.record.started_ms,
        };
        let healthy_for =
            healthy_since.map(|since| Duration::from_millis((now - since).max(0) as u64));
        match owner.kind {
            OwnerKind::Service => {
                self.after_service_exit(&owner, &live, status, stopped_by_us, healthy_for)
            }
            OwnerKind::Job => self.after_job_exit(&owner, live, status, stopped_by_us),
        }
    }

    fn after_service_exit(
        &mut self,
        owner: &RunOwner,
        live: &LiveRun,
        status: ExitStatus,
        stopped_by_us: bool,
        healthy_for: Option<Duration>,
    ) {
        if !self.services.contains_key(&owner.name) {
            return;
        }
        if stopped_by_us {
            // A replica Flowers (or a user) stopped is simply replaced, with no penalty.
            return;
        }
        let why = live
            .stop
            .as_ref()
            .map(StopCause::describe)
            .unwrap_or_else(|| format!("exited {status}"));
        if self.rollout_failed(
            &owner.name,
            owner.replica,
            live.record.model_version,
            live.record.ready_ms.is_none(),
            &why,
        ) {
            return;
        }
        let Some(service) = self.services.get_mut(&owner.name) else {
            return;
        };
        service.last_exit = Some(format!("{} exited {status}", live.record.id));
        let restart = match service.spec.restart.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !status.success() || live.stop.is_some(),
            RestartPolicy::Never => false,
        };
        if !restart {
            service.finished_slots.insert(owner.replica);
            return;
        }
        let restart_spec = service.spec.restart.clone();
        if healthy_for.is_some_and(|d| d >= restart_spec.healthy_after) {
            service.failures = 0;
        }
        service.failures += 1;
        let failures = service.failures;
        if failures >= restart_spec.crash_loop_after {
            service.crash_loop = true;
            self.save_owner_state(owner.name.as_str(), OwnerKind::Service, failures, true);
            self.emit(
                NewEvent::new(
                    EventKind::CrashLoopEntered,
                    format!(
                        "failed {failures} times in a row; not restarting until cleared with `flowers reset {}`",
                        owner.name
                    ),
                )
                .owner(&owner.name),
            );
            // The other replicas are left as they are: they may still be serving.
            return;
        }
        let delay = restart_spec.backoff(failures);
        service.backoff_until = Some(Instant::now() + delay);
        self.save_owner_state(owner.name.as_str(), OwnerKind::Service, failures, false);
        self.schedule_backoff(delay);
        self.emit(
            NewEvent::new(
                EventKind::RunRestartScheduled,
                format!(
                    "restarting in {} (failure {failures} of {} before crash loop)",
                    humantime_secs(delay),
                    restart_spec.crash_loop_after
                ),
            )
            .owner(&owner.name)
            .run(&live.record.id),
        );
    }

    fn after_job_exit(
        &mut self,
        owner: &RunOwner,
        live: LiveRun,
        status: ExitStatus,
        stopped_by_us: bool,
    ) {
        let Some(job) = self.jobs.get_mut(&owner.name) else {
            return;
        };
        let run_id = live.record.id.clone();
        let preempted = matches!(live.stop, Some(StopCause::Preempted(_)));
        job.last_run = Some(live.record);
        if preempted {
            // Still wanted: it starts again (resuming from its last checkpoint) when placed.
            job.outcome = JobOutcome::Active;
            return;
        }
        if stopped_by_us {
            job.outcome = JobOutcome::Stopped;
            return;
        }
        if status.success() {
            job.outcome = JobOutcome::Succeeded;
            job.failures = 0;
            self.save_owner_state(owner.name.as_str(), OwnerKind::Job, 0, false);
            self.emit(
                NewEvent::new(EventKind::JobSucceeded, format!("finished {status}"))
                    .owner(&owner.name)
                    .run(&run_id),
            );
            return;
        }
        job.failures += 1;
        let failures = job.failures;
        let limit = job.spec.restart_limit;
        if failures > limit {
            let reason = format!("failed {failures} time(s), restart limit {limit}: last {status}");
            job.outcome = JobOutcome::Failed(reason.clone());
            self.save_owner_state(owner.name.as_str(), OwnerKind::Job, failures, false);
            self.emit(
                NewEvent::new(EventKind::JobFailed, reason)
                    .owner(&owner.name)
                    .run(&run_id),
            );
            return;
        }
        let delay = job
            .spec
            .restart_backoff
            .saturating_mul(1u32 << (failures - 1).min(16));
        job.backoff_until = Some(Instant::now() + delay);
        self.save_owner_state(owner.name.as_str(), OwnerKind::Job, failures, false);
        self.schedule_backoff(delay);
        self.emit(
            NewEvent::new(
                EventKind::RunRestartScheduled,
                format!(
                    "restarting in {} (restart {failures} of {limit})",
                    humantime_secs(delay)
                ),
            )
            .owner(&owner.name)
            .run(&run_id),
        );
    }

    /// Deletes the directories (logs, exit status) of the owner's ended Runs beyond the newest
    /// `keep_runs`, so that a service crashing for weeks cannot fill the disk. The records stay.
    /// `window` bounds how many of the newest Runs are looked at: older ones were pruned when
    /// earlier Runs ended (at start, every Run is looked at once).
    fn prune_run_dirs(&self, owner: &Name, window: Option<u32>) {
        let runs = match self.store.runs(&RunFilter {
            owner: Some(owner.to_string()),
            active_only: false,
            limit: window,
        }) {
            Ok(runs) => runs,
            Err(error) => {
                tracing::error!(%error, %owner, "could not list runs to prune");
                return;
            }
        };
        for record in runs.iter().skip(self.settings.keep_runs as usize) {
            if !record.state.is_terminal() {
                continue;
            }
            let dir = run_dir(&self.settings.data_dir, &record.id);
            if dir.exists() {
                if let Err(error) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(%error, dir = %dir.display(), "could not remove an old run directory");
                }
            }
        }
    }

    fn schedule_backoff(&self, delay: Duration) {
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inputs.send(Input::BackoffElapsed);
        });
    }

    fn save_owner_state(&self, name: &str, kind: OwnerKind, failures: u32, crash_loop: bool) {
        let state = OwnerState {
            name: name.to_string(),
            kind,
            consecutive_failures: failures,
            crash_loop,
            updated_ms: now_ms(),
        };
        if let Err(error) = self.store.put_owner_state(&state) {
            tracing::error!(%error, owner = name, "could not save restart state");
        }
    }

    /// Asks the scheduler for a plan over what should run but does not, and carries it out.
    async fn reconcile(&mut self) {
        if self.shutdown_replies.is_some() {
            return;
        }
        let now = Instant::now();

        // Replicas beyond the configured count are stopped.
        let extra: Vec<RunId> = self
            .runs
            .values()
            .filter(|live| live.stop.is_none() && live.record.owner.kind == OwnerKind::Service)
            .filter(|live| {
                self.services
                    .get(&live.record.owner.name)
                    .is_none_or(|s| live.record.owner.replica >= s.spec.replicas)
            })
            .map(|live| live.record.id.clone())
            .collect();
        for id in extra {
            self.begin_stop(&id, StopCause::ScaleDown);
        }
        self.retire_outdated_replicas();

        let mut requests = Vec::new();
        // Services whose model has nothing promoted: they wait, with the reason.
        let mut unservable: Vec<(Name, String)> = Vec::new();
        for (name, service) in &self.services {
            if service.crash_loop || service.backoff_until.is_some_and(|t| t > now) {
                continue;
            }
            let desired = match self.desired_version(name) {
                Ok(desired) => desired,
                Err(reason) => {
                    if service.spec.replicas > 0 {
                        unservable.push((name.clone(), reason));
                    }
                    continue;
                }
            };
            // Blue/green, one replica slot at a time: a slot whose replica serves an older
            // version gets a replica of the promoted one beside it (a surge), and only one
            // slot of a service surges at once, so a rollout needs one spare device at most.
            // A replica is current when it serves the promoted version with the service's
            // spec as it is now (a run-time service's spec may be replaced).
            let is_current =
                |r: &&RunRecord| r.model_version == desired && r.spec_hash == service.hash;
            let mut surging = (0..service.spec.replicas)
                .filter(|&replica| {
                    let slot = self.slot_runs(name, replica);
                    slot.iter().any(|r| !is_current(r)) && slot.iter().any(is_current)
                })
                .count();
            for replica in 0..service.spec.replicas {
                let slot = self.slot_runs(name, replica);
                let current = slot.iter().any(is_current);
                if current || service.finished_slots.contains(&replica) {
                    continue;
                }
                if service.spec.replace == ReplaceStrategy::StopFirst {
                    // The old replica must have exited, not merely be stopping: it may
                    // hold what the new one needs (retire_outdated_replicas stops it).
                    if !slot.is_empty() || self.slot_is_stopping(name, replica) {
                        continue;
                    }
                } else if !slot.is_empty() {
                    if surging > 0 {
                        continue;
                    }
                    surging += 1;
                }
                requests.push(Request {
                    key: Key::Replica(name.clone(), replica),
                    resources: service.spec.resources.clone(),
                    class: RequestClass::Service,
                });
            }
        }
        for (name, job) in &self.jobs {
            if job.outcome != JobOutcome::Active || job.backoff_until.is_some_and(|t| t > now) {
                continue;
            }
            let running = self.runs.values().any(|live| {
                live.record.owner.kind == OwnerKind::Job && &live.record.owner.name == name
            });
            if !running {
                requests.push(Request {
                    key: Key::Job(name.clone()),
                    resources: job.spec.resources.clone(),
                    class: RequestClass::Job {
                        priority: job.spec.priority,
                    },
                });
            }
        }
        let usage = self.device_usage();
        let allocations = self
            .runs
            .values()
            .filter_map(|live| {
                let preemptible = match live.record.owner.kind {
                    OwnerKind::Job => self
                        .jobs
                        .get(&live.record.owner.name)
                        .filter(|job| job.spec.preemptible)
                        .map(|job| job.spec.priority),
                    OwnerKind::Service => None,
                };
                live.record.device.clone().map(|device| Allocation {
                    device,
                    vram: usage::counted_vram(&live.record, &usage),
                    holder: live.record.id.to_string(),
                    preemptible,
                    stopping: live.stop.is_some(),
                })
            })
            .collect();
        let plan = scheduler::plan(&Snapshot {
            devices: self.desired_devices.clone(),
            allocations,
            requests,
            unaccounted: usage.foreign(),
        });

        for preemption in &plan.preemptions {
            let Key::Replica(service, replica) = &preemption.for_key else {
                continue;
            };
            let run = RunId(preemption.holder.clone());
            let Some(live) = self.runs.get(&run) else {
                continue;
            };
            let job = live.record.owner.name.clone();
            let why = format!(
                "to make room on {} for {service} replica {replica}",
                preemption.device
            );
            self.emit(
                NewEvent::new(
                    EventKind::JobPreempted,
                    format!("preempting {run} {why}; it resumes from its last checkpoint when a device is free"),
                )
                .owner(&job)
                .run(&run)
                .device(&preemption.device),
            );
            self.begin_stop(&run, StopCause::Preempted(why));
        }

        let mut still_waiting: HashSet<Name> = HashSet::new();
        let unservable = unservable
            .into_iter()
            .map(|(name, reason)| scheduler::Waiting {
                key: Key::Replica(name, 0),
                reason,
            });
        let mut in_place = Vec::new();
        for waiting in plan.waiting.into_iter().chain(unservable) {
            let name = match &waiting.key {
                Key::Replica(name, _) | Key::Job(name) => name.clone(),
            };
            // Room that is being made (a preemption, a Run stopping) is not a failure to place.
            let transient = waiting.reason.starts_with("preempting ")
                || waiting.reason.starts_with("waiting for ");
            if let (Key::Replica(_, replica), false) = (&waiting.key, transient) {
                // A new version's replica with no room beside the old one, even by preemption
                // (a box with one device): the old one is replaced in place. Requests wait in
                // the gateway's hold queue meanwhile, so none fails, but they wait.
                let outdated: Vec<RunId> = self
                    .slot_runs(&name, *replica)
                    .iter()
                    .map(|r| r.id.clone())
                    .collect();
                if !outdated.is_empty() {
                    in_place.extend(outdated);
                    continue;
                }
            }
            still_waiting.insert(name.clone());
            let previous = match &waiting.key {
                Key::Replica(..) => self.services.get_mut(&name).map(|s| &mut s.waiting),
                Key::Job(_) => self.jobs.get_mut(&name).map(|j| &mut j.waiting),
            };
            if let Some(slot) = previous {
                if slot.as_deref() != Some(waiting.reason.as_str()) {
                    *slot = Some(waiting.reason.clone());
                    if transient {
                        continue;
                    }
                    self.emit(
                        NewEvent::new(
                            EventKind::PlacementFailed,
                            format!("could not place: {}", waiting.reason),
                        )
                        .owner(&name),
                    );
                }
            }
        }
        for (name, service) in self.services.iter_mut() {
            if !still_waiting.contains(name) {
                service.waiting = None;
            }
        }
        for (name, job) in self.jobs.iter_mut() {
            if !still_waiting.contains(name) {
                job.waiting = None;
            }
        }
        for run in in_place {
            self.begin_stop(
                &run,
                StopCause::Replaced(
                    "replaced in place by the promoted version: no device has room for both".into(),
                ),
            );
        }
        for placement in plan.placements {
            self.start_run(placement.key, placement.device, placement.vram)
                .await;
        }
    }

    /// Live Runs of one replica slot of a service that are not being stopped.
    fn slot_runs(&self, service: &Name, replica: u32) -> Vec<&RunRecord> {
        self.runs
            .values()
            .filter(|live| {
                live.stop.is_none()
                    && live.record.owner.kind == OwnerKind::Service
                    && &live.record.owner.name == service
                    && live.record.owner.replica == replica
            })
            .map(|live| &live.record)
            .collect()
    }

    /// Whether a replica of this slot is being stopped (draining, or waiting to exit).
    fn slot_is_stopping(&self, service: &Name, replica: u32) -> bool {
        self.runs.values().any(|live| {
            live.stop.is_some()
                && live.record.owner.kind == OwnerKind::Service
                && &live.record.owner.name == service
                && live.record.owner.replica == replica
        })
    }

    /// Replicas of a version that is no longer promoted (or of an old spec): stopped (after
    /// draining) once their slot has a ready replica of the promoted version, or at once if
    /// they never served. A stop-first service's are stopped first, one slot at a time: only
    /// while every other slot has a ready current replica and nothing stopping.
    fn retire_outdated_replicas(&mut self) {
        let mut retire = Vec::new();
        for (name, service) in &self.services {
            let Ok(desired) = self.desired_version(name) else {
                continue;
            };
            let is_current =
                |r: &RunRecord| r.model_version == desired && r.spec_hash == service.hash;
            let stop_first = service.spec.replace == ReplaceStrategy::StopFirst;
            // Slots down or on their way back (stopping, empty, or starting a current
            // replica): a stop-first rollout takes another slot down only when none is.
            let mut replacing: HashSet<u32> = (0..service.spec.replicas)
                .filter(|&replica| {
                    let slot = self.slot_runs(name, replica);
                    self.slot_is_stopping(name, replica)
                        || slot.is_empty()
                        || slot
                            .iter()
                            .any(|r| is_current(r) && r.state != RunState::Ready)
                })
                .collect();
            for live in self.runs.values() {
                let record = &live.record;
                if live.stop.is_some()
                    || record.owner.kind != OwnerKind::Service
                    || &record.owner.name != name
                    || is_current(record)
                {
                    continue;
                }
                let replaced = self
                    .slot_runs(name, record.owner.replica)
                    .iter()
                    .any(|r| is_current(r) && r.state == RunState::Ready);
                // What is new: the version, or (same version) the service's spec.
                let (new, came) = match desired {
                    Some(version) if record.model_version != desired => (
                        format!("version {version}"),
                        format!("version {version} was promoted"),
                    ),
                    _ => (
                        "the service's new spec".to_string(),
                        "the service's spec changed".to_string(),
                    ),
                };
                if replaced {
                    retire.push((
                        record.id.clone(),
                        format!("replaced by a ready replica of {new}"),
                    ));
                } else if stop_first && record.state == RunState::Ready {
                    let replica = record.owner.replica;
                    if replacing.iter().all(|&other| other == replica) {
                        replacing.insert(replica);
                        retire.push((
                            record.id.clone(),
                            format!("{came}; stopped first (replace = \"stop-first\"), then a replica of {new} starts"),
                        ));
                    }
                } else if record.state != RunState::Ready {
                    retire.push((
                        record.id.clone(),
                        format!("{came} before this one was ready"),
                    ));
                }
            }
        }
        for (run, reason) in retire {
            self.begin_stop(&run, StopCause::Replaced(reason));
        }
    }

    async fn start_run(&mut self, key: Key, device: Option<DeviceId>, vram: Option<ByteSize>) {
        let (owner, hash, mut command, workdir, spec_env, stop_grace, probe) = match &key {
            Key::Replica(name, replica) => {
                let service = &self.services[name];
                (
                    RunOwner {
                        kind: OwnerKind::Service,
                        name: name.clone(),
                        replica: *replica,
                    },
                    service.hash.clone(),
                    service.spec.command.clone(),
                    service.spec.workdir.clone(),
                    service.spec.env.clone(),
                    service.spec.stop_grace,
                    Some(service.spec.probe.clone()),
                )
            }
            Key::Job(name) => {
                let job = &self.jobs[name];
                (
                    RunOwner {
                        kind: OwnerKind::Job,
                        name: name.clone(),
                        replica: 0,
                    },
                    job.hash.clone(),
                    job.spec.command.clone(),
                    job.spec.workdir.clone(),
                    job.spec.env.clone(),
                    job.spec.stop_grace,
                    None,
                )
            }
        };
        if let (Some(program), Some(exe)) = (command.first_mut(), &self.settings.flowers_exe) {
            if program == FLOWERS_PROGRAM {
                *program = exe.to_string_lossy().into_owned();
            }
        }
        let attempt = match &key {
            Key::Replica(name, _) => self.services[name].failures,
            Key::Job(name) => self.jobs[name].failures,
        };
        // What the Run is told about models: the version a replica serves, the checkpoint a
        // job resumes from.
        let mut model_env: Vec<(String, String)> = Vec::new();
        let mut model_version = None;
        match &key {
            Key::Replica(name, _) => {
                // The gateway forwards paths unchanged; the SDK strips these prefixes.
                let mut prefixes: Vec<&str> = Vec::new();
                for route in &self.services[name].spec.routes {
                    if !prefixes.contains(&route.path_prefix.as_str()) {
                        prefixes.push(&route.path_prefix);
                    }
                }
                model_env.push(("FLOWERS_ROUTE_PREFIXES".to_string(), prefixes.join(" ")));
                model_env.push((
                    "FLOWERS_PROBE_PATH".to_string(),
                    self.services[name].spec.probe.path.clone(),
                ));
                if let (Some(model), Ok(Some(version))) = (
                    self.services[name].spec.model.clone(),
                    self.desired_version(name),
                ) {
                    model_version = Some(version);
                    let dir =
                        versions::version_dir(&self.settings.data_dir, model.as_str(), version);
                    model_env.extend([
                        ("FLOWERS_MODEL".to_string(), model.to_string()),
                        ("FLOWERS_MODEL_VERSION".to_string(), version.to_string()),
                        (
                            "FLOWERS_MODEL_PATH".to_string(),
                            dir.to_string_lossy().into_owned(),
                        ),
                    ]);
                }
            }
            Key::Job(name) => {
                if let Some(model) = &self.jobs[name].spec.model {
                    model_env.push(("FLOWERS_MODEL".to_string(), model.to_string()));
                }
                match self.store.latest_job_version(name.as_str()) {
                    Ok(Some(checkpoint)) => {
                        let dir = versions::version_dir(
                            &self.settings.data_dir,
                            checkpoint.model.as_str(),
                            checkpoint.version,
                        );
                        model_env.push((
                            "FLOWERS_RESUME_FROM".to_string(),
                            dir.to_string_lossy().into_owned(),
                        ));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::error!(%error, job = %name, "could not look up the job's last checkpoint")
                    }
                }
            }
        }
        let taken: HashSet<u16> = self
            .runs
            .values()
            .filter_map(|live| live.record.port)
            .collect();
        let port = match supervisor::pick_free_port(&taken) {
            Ok(port) => port,
            Err(error) => {
                tracing::error!(%error, "no free port for a new run");
                self.emit(
                    NewEvent::new(
                        EventKind::PlacementFailed,
                        format!("could not start: no free TCP port on 127.0.0.1: {error}"),
                    )
                    .owner(&owner.name),
                );
                return;
            }
        };
        let record = match self.store.insert_run(&NewRun {
            owner: owner.clone(),
            device: device.clone(),
            vram_reserved: vram,
            port: Some(port),
            spec_hash: hash,
            run_dir: self.settings.data_dir.join("runs"),
            attempt,
            model_version,
        }) {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(%error, "could not record a new run; not starting it");
                return;
            }
        };
        let run_id = record.id.clone();
        let dir = run_dir(&self.settings.data_dir, &run_id);
        let owner_data = self
            .settings
            .data_dir
            .join("data")
            .join(owner.name.as_str());
        if let Err(error) =
            std::fs::create_dir_all(&dir).and_then(|_| std::fs::create_dir_all(&owner_data))
        {
            tracing::error!(%error, "could not create the run's directories");
        }
        self.update_run(
            &run_id,
            RunUpdate {
                run_dir: Some(dir.clone()),
                ..RunUpdate::default()
            },
        );

        let (device_label, cuda) = match &device {
            Some(id) => {
                let uuid = self
                    .desired_devices
                    .iter()
                    .find(|d| &d.id == id)
                    .and_then(|d| d.uuid.clone())
                    .unwrap_or_default();
                (id.to_string(), uuid)
            }
            None => ("none".to_string(), String::new()),
        };
        let python_path = self.python_path(spec_env.get("PYTHONPATH"));
        let mut env: Vec<(String, String)> = spec_env.into_iter().collect();
        env.extend(python_path.map(|path| ("PYTHONPATH".to_string(), path)));
        env.extend([
            ("FLOWERS_PORT".to_string(), port.to_string()),
            ("FLOWERS_RUN_ID".to_string(), run_id.to_string()),
            ("FLOWERS_DEVICE".to_string(), device_label.clone()),
            // Empty on a CPU slot (or no device) so frameworks do not grab a GPU.
            ("CUDA_VISIBLE_DEVICES".to_string(), cuda),
            (
                "FLOWERS_DATA_DIR".to_string(),
                owner_data.to_string_lossy().into_owned(),
            ),
            (
                "FLOWERS_CONTROL_URL".to_string(),
                self.settings.control_url.clone(),
            ),
            (
                "FLOWERS_GATEWAY_URL".to_string(),
                self.settings.gateway_url.clone(),
            ),
            (
                match owner.kind {
                    OwnerKind::Service => "FLOWERS_SERVICE",
                    OwnerKind::Job => "FLOWERS_JOB",
                }
                .to_string(),
                owner.name.to_string(),
            ),
            ("FLOWERS_REPLICA".to_string(), owner.replica.to_string()),
        ]);
        env.extend(model_env);
        let launch = LaunchSpec {
            run_id: run_id.to_string(),
            command,
            workdir,
            env,
            run_dir: dir,
            log_max_bytes: self.settings.log_max_bytes,
            log_keep: self.settings.log_keep,
        };
        let mut live = LiveRun {
            record,
            handle: None,
            stop_grace,
            probe: None,
            stop: None,
        };
        live.record.run_dir = launch.run_dir.clone();
        match self.supervisor.spawn(&launch).await {
            Ok(process) => {
                let handle = process.handle();
                let now = now_ms();
                let state = if owner.kind == OwnerKind::Service {
                    RunState::Starting
                } else {
                    RunState::Running
                };
                let update = RunUpdate {
                    state: Some(state),
                    pid: Some(handle.pid),
                    pid_start_ticks: Some(handle.start_ticks),
                    child_pid: process.child_pid(),
                    started_ms: Some(now),
                    ..RunUpdate::default()
                };
                self.update_run(&run_id, update);
                live.record.state = state;
                live.record.pid = Some(handle.pid);
                live.record.pid_start_ticks = Some(handle.start_ticks);
                live.record.child_pid = process.child_pid();
                live.record.started_ms = Some(now);
                live.handle = Some(handle);
                self.spawn_waiter(run_id.clone(), process);
                if let Some(probe) = probe {
                    live.probe = Some(self.spawn_probe(run_id.clone(), port, probe, false));
                }
                let vram_text = vram.map(|v| format!(", {v} VRAM")).unwrap_or_default();
                let version_text = model_version
                    .map(|v| format!(", version {v}"))
                    .unwrap_or_default();
                self.emit(
                    NewEvent::new(
                        EventKind::RunStarted,
                        format!(
                            "started on {device_label}{vram_text}{version_text} (pid {}, port {port})",
                            handle.pid
                        ),
                    )
                    .owner(&owner.name)
                    .run(&run_id)
                    .device(&device_label),
                );
                if let Key::Job(name) = &key {
                    if let Some(job) = self.jobs.get_mut(name) {
                        job.last_run = Some(live.record.clone());
                    }
                }
                self.runs.insert(run_id, live);
            }
            Err(error) => {
                // Handled as an exit so restart policy and crash-loop accounting apply.
                self.emit(
                    NewEvent::new(EventKind::RunStarted, format!("could not start: {error}"))
                        .owner(&owner.name)
                        .run(&run_id),
                );
                self.runs.insert(run_id.clone(), live);
                let _ = self.inputs.send(Input::RunExited {
                    run: run_id,
                    status: ExitStatus::exited(127),
                });
            }
        }
    }

    fn spawn_waiter(&self, run: RunId, mut process: supervisor::RunProcess) {
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let status = process.wait().await;
            let _ = inputs.send(Input::RunExited { run, status });
        });
    }

    fn spawn_probe(
        &self,
        run: RunId,
        port: u16,
        probe: ProbeSpec,
        already_ready: bool,
    ) -> AbortHandle {
        let inputs = self.inputs.clone();
        tokio::spawn(probe_loop(inputs, run, port, probe, already_ready)).abort_handle()
    }

    fn begin_stop(&mut self, run: &RunId, cause: StopCause) {
        let Some(live) = self.runs.get_mut(run) else {
            return;
        };
        if live.stop.is_some() {
            return;
        }
        if let Some(probe) = live.probe.take() {
            probe.abort();
        }
        let grace = live.stop_grace;
        // A service replica leaves the gateway's rotation with this step (its state is no
        // longer ready); its requests in flight finish before it is signalled.
        let drain = match (&self.settings.in_flight, live.record.owner.kind) {
            (Some(in_flight), OwnerKind::Service) => Some(in_flight.clone()),
            _ => None,
        };
        let message = format!(
            "stopping: {} ({}SIGTERM, SIGKILL after {})",
            cause.describe(),
            if drain.is_some() {
                format!(
                    "draining requests for up to {}, then ",
                    humantime_secs(self.settings.drain_timeout)
                )
            } else {
                String::new()
            },
            humantime_secs(grace)
        );
        live.stop = Some(cause);
        live.record.state = RunState::Stopping;
        let owner = live.record.owner.name.clone();
        let handle = live.handle;
        self.update_run(
            run,
            RunUpdate {
                state: Some(RunState::Stopping),
                ..RunUpdate::default()
            },
        );
        self.emit(
            NewEvent::new(EventKind::RunStopping, message)
                .owner(&owner)
                .run(run),
        );
        match handle {
            Some(handle) => {
                let run = run.to_string();
                let drain_timeout = self.settings.drain_timeout;
                let mut views = self.view.subscribe();
                tokio::spawn(async move {
                    if let Some(in_flight) = drain {
                        // First the view without this replica must be out (the gateway follows
                        // it), then its requests must finish.
                        let deadline = tokio::time::Instant::now() + drain_timeout;
                        let out_of_rotation = views.wait_for(|view| {
                            !view
                                .runs
                                .iter()
                                .any(|r| r.id.as_str() == run && r.state == RunState::Ready)
                        });
                        let _ = tokio::time::timeout_at(deadline, out_of_rotation).await;
                        while (in_flight.0)(&run) > 0 && tokio::time::Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    supervisor::stop_group(handle, grace).await;
                });
            }
            None => {
                // Never got a process: nothing to signal, it has ended already.
                let _ = self.inputs.send(Input::RunExited {
                    run: run.clone(),
                    status: ExitStatus::exited(127),
                });
            }
        }
    }

    fn update_run(&self, run: &RunId, update: RunUpdate) {
        if let Err(error) = self.store.update_run(run, &update) {
            tracing::error!(%error, %run, "could not update the run's record");
        }
    }

    /// Queues an event; [`Engine::publish`] records and broadcasts it once the state that it
    /// reports is visible, so that whoever sees an event can read the state it speaks of.
    fn emit(&self, event: NewEvent) {
        self.pending_events.borrow_mut().push(event);
    }

    fn flush_events(&self) {
        for event in self.pending_events.borrow_mut().drain(..) {
            match self.store.append_event(&event) {
                Ok(event) => {
                    tracing::info!(kind = event.kind.as_str(), owner = ?event.owner, run = ?event.run, "{}", event.message);
                    let _ = self.events.send(event);
                }
                Err(error) => {
                    tracing::error!(%error, message = %event.message, "could not record an event")
                }
            }
        }
    }

    /// Publishes the view of the current state, then records and broadcasts the events that
    /// led to it.
    fn publish(&self) {
        let now = Instant::now();
        let runs: Vec<RunRecord> = self.runs.values().map(|live| live.record.clone()).collect();
        let services = self
            .services
            .iter()
            .map(|(name, service)| {
                let mine: Vec<&RunRecord> = runs
                    .iter()
                    .filter(|r| r.owner.kind == OwnerKind::Service && &r.owner.name == name)
                    .collect();
                let ready = mine.iter().filter(|r| r.state == RunState::Ready).count() as u32;
                let wanted = service.spec.replicas;
                let (status, reason) = if service.crash_loop {
                    (
                        OwnerStatus::CrashLoop,
                        Some(format!(
                            "failed {} times in a row{}; clear with `flowers reset {name}`",
                            service.failures,
                            service
                                .last_exit
                                .as_ref()
                                .map(|e| format!(" (last: {e})"))
                                .unwrap_or_default()
                        )),
                    )
                } else if wanted == 0 {
                    (OwnerStatus::Stopped, None)
                } else if ready >= wanted {
                    (OwnerStatus::Running, None)
                } else if let Some(reason) = &service.waiting {
                    (OwnerStatus::Waiting, Some(reason.clone()))
                } else if let Some(until) = service.backoff_until.filter(|t| *t > now) {
                    (
                        OwnerStatus::Restarting,
                        Some(format!(
                            "restarting in {}{}",
                            humantime_secs(until - now),
                            service
                                .last_exit
                                .as_ref()
                                .map(|e| format!(" after {e}"))
                                .unwrap_or_default()
                        )),
                    )
                } else if mine.is_empty() && service.finished_slots.len() as u32 >= wanted {
                    (
                        OwnerStatus::Stopped,
                        Some(
                            "every replica ended and its restart policy says not to restart".into(),
                        ),
                    )
                } else if ready > 0 {
                    (OwnerStatus::Degraded, None)
                } else {
                    (OwnerStatus::Starting, None)
                };
                ServiceView {
                    spec: service.spec.clone(),
                    added: service.added,
                    status,
                    reason,
                    ready,
                    consecutive_failures: service.failures,
                }
            })
            .collect();
        let jobs = self
            .jobs
            .iter()
            .map(|(name, job)| {
                let live = runs
                    .iter()
                    .find(|r| r.owner.kind == OwnerKind::Job && &r.owner.name == name);
                let (status, reason) = match (live, &job.outcome) {
                    (Some(run), _) if run.state == RunState::Stopping => {
                        (OwnerStatus::Stopping, None)
                    }
                    (Some(_), _) => (OwnerStatus::Running, None),
                    (None, JobOutcome::Active) => {
                        if let Some(reason) = &job.waiting {
                            (OwnerStatus::Waiting, Some(reason.clone()))
                        } else if let Some(until) = job.backoff_until.filter(|t| *t > now) {
                            (
                                OwnerStatus::Restarting,
                                Some(format!("restarting in {}", humantime_secs(until - now))),
                            )
                        } else {
                            (OwnerStatus::Starting, None)
                        }
                    }
                    (None, JobOutcome::Idle) => (OwnerStatus::Idle, None),
                    (None, JobOutcome::Succeeded) => (OwnerStatus::Succeeded, None),
                    (None, JobOutcome::Failed(reason)) => {
                        (OwnerStatus::Failed, Some(reason.clone()))
                    }
                    (None, JobOutcome::Stopped) => (OwnerStatus::Stopped, None),
                };
                JobView {
                    spec: job.spec.clone(),
                    added: job.added,
                    status,
                    reason,
                    last_run: live.cloned().or_else(|| job.last_run.clone()),
                }
            })
            .collect();
        self.view.send_replace(Arc::new(View {
            started_ms: self.started_ms,
            devices: self.desired_devices.clone(),
            gpu_status: self.gpu_status.clone(),
            services,
            jobs,
            models: self.model_views(),
            runs,
            shutting_down: self.shutdown_replies.is_some(),
            device_usage: self.device_usage(),
        }));
        self.flush_events();
    }
}

/// Why a command could not be started, when its exit status says so (126: not executable,
/// 127: not found, the shell's convention that the monitor follows): the last line of its log,
/// where the monitor (or a shell) wrote the reason.
fn could_not_start(run_dir: &Path, status: ExitStatus) -> Option<String> {
    if status.signal.is_some() || !matches!(status.code, 126 | 127) {
        return None;
    }
    let tail = supervisor::logs::tail(run_dir, 1).ok()?;
    let line = tail.trim();
    (!line.is_empty() && line.len() <= 300).then(|| line.to_string())
}

/// Readiness first (until the start timeout), then liveness for as long as the Run lives.
async fn probe_loop(
    inputs: mpsc::UnboundedSender<Input>,
    run: RunId,
    port: u16,
    probe: ProbeSpec,
    already_ready: bool,
) {
    if !already_ready {
        let deadline = Instant::now() + probe.start_timeout;
        loop {
            let last_error = match supervisor::probe_http(port, &probe.path, probe.timeout).await {
                Ok(()) => {
                    let _ = inputs.send(Input::ProbePassed { run: run.clone() });
                    break;
                }
                Err(reason) => reason,
            };
            let now = Instant::now();
            if now >= deadline {
                let _ = inputs.send(Input::StartTimedOut {
                    run,
                    reason: format!(
                        "not ready after {}: GET {} {last_error}",
                        humantime_secs(probe.start_timeout),
                        probe.path
                    ),
                });
                return;
            }
            tokio::time::sleep(probe.interval.min(deadline - now)).await;
        }
    }
    let mut failures = 0;
    loop {
        tokio::time::sleep(probe.interval).await;
        match supervisor::probe_http(port, &probe.path, probe.timeout).await {
            Ok(()) => failures = 0,
            Err(reason) => {
                failures += 1;
                if failures >= probe.failure_threshold {
                    let _ = inputs.send(Input::RunUnhealthy {
                        run,
                        reason: format!(
                            "failed its probe {failures} times in a row: GET {} {reason}",
                            probe.path
                        ),
                    });
                    return;
                }
            }
        }
    }
}

/// `4s`, `1.5s`, `2m`: short and exact enough for messages.
fn humantime_secs(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        let secs = millis / 1000;
        if secs >= 60 && secs.is_multiple_of(60) {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        }
    } else if millis < 1000 {
        format!("{millis}ms")
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_shortly() {
        assert_eq!(humantime_secs(Duration::from_secs(4)), "4s");
        assert_eq!(humantime_secs(Duration::from_millis(1500)), "1.5s");
        assert_eq!(humantime_secs(Duration::from_millis(250)), "250ms");
        assert_eq!(humantime_secs(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn spec_hash_ignores_replicas_but_not_the_command() {
        let mut spec = ServiceSpec {
            name: Name::new("web").unwrap(),
            command: vec!["a".into()],
            workdir: None,
            env: Default::default(),
            replicas: 1,
            resources: Default::default(),
            probe: Default::default(),
            restart: Default::default(),
            stop_grace: Duration::from_secs(1),
            routes: vec![],
            hold: Duration::from_secs(30),
            max_body: ByteSize::mib(100),
            api_keys: vec![],
            model: None,
            replace: ReplaceStrategy::Surge,
        };
        let first = spec_hash(&spec);
        spec.replicas = 3;
        assert_eq!(spec_hash(&spec), first);
        spec.api_keys = vec![domain::ApiKeyDigest([7; 32])];
        assert_eq!(spec_hash(&spec), first);
        // How replicas are replaced is no reason to replace them.
        spec.replace = ReplaceStrategy::StopFirst;
        assert_eq!(spec_hash(&spec), first);
        spec.command = vec!["b".into()];
        assert_ne!(spec_hash(&spec), first);
    }
}
