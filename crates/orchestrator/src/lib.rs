//! The orchestrator: Flowers' one event loop. It owns the live state of services, jobs and
//! Runs, asks the pure scheduler for a plan whenever something changes, and carries the plan
//! out through the supervisor, recording every Run in the store and every happening as an
//! Event.
//!
//! Every trigger of work arrives as one [`Input`] on one channel (a process exited, a probe
//! passed, a backoff elapsed, a user asked), so what can happen is visible in one place and
//! handled one at a time. Other crates talk to it only through a [`Handle`]: commands in,
//! a published [`View`] and a broadcast of [`domain::Event`]s out. It never serves HTTP,
//! never parses configuration and never talks to NVML; it is handed specs, devices and
//! readings of the GPUs' memory ([`DeviceUsage`]).

mod engine;
mod usage;
pub mod versions;
mod view;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use domain::{Device, Event, JobSpec, Metrics, ModelSpec, Name, Progress, RunId, ServiceSpec};
use store::{Store, VersionRecord};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use usage::{DeviceUsage, GpuUsage};
pub use view::{JobView, ModelView, OwnerStatus, ServiceView, View};

/// What the orchestrator needs to know about its surroundings, decided by the binary.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Given to every Run as `FLOWERS_CONTROL_URL`.
    pub control_url: String,
    /// Given to every Run as `FLOWERS_GATEWAY_URL`: how one service calls another (the RAG
    /// service reaches the engines through the gateway, so their version swaps cover it too).
    pub gateway_url: String,
    /// The program a command whose program is exactly `flowers` runs: this binary, not a
    /// `PATH` lookup, so engines served as services (`command = ["flowers", "engine", "chat"]`)
    /// are always the server's own version. `None` leaves such commands to `PATH`.
    pub flowers_exe: Option<PathBuf>,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    /// Runs of each service or job whose directory is kept; older ended ones are deleted.
    pub keep_runs: u32,
    /// Program and leading arguments that start the supervisor's monitor process.
    pub monitor_command: Vec<OsString>,
    /// Requests in flight to a Run, as the gateway counts them: a service replica is taken out
    /// of rotation, then stopped only once this reaches zero (or `drain_timeout` passes).
    pub in_flight: Option<InFlight>,
    pub drain_timeout: Duration,
    pub python_path: PythonPath,
}

/// What Runs get as `PYTHONPATH`: their own (`env` in the spec) or else the one Flowers was
/// started with, followed by `added`.
#[derive(Clone, Debug, Default)]
pub struct PythonPath {
    /// Flowers' own `PYTHONPATH`, which Runs would otherwise inherit.
    pub inherited: Option<String>,
    /// Directories appended for every Run: where the binary put the Python SDK.
    pub added: Vec<PathBuf>,
}

/// How many requests are in flight to a Run (by run id).
#[derive(Clone)]
pub struct InFlight(pub Arc<dyn Fn(&str) -> usize + Send + Sync>);

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight(..)")
    }
}

/// The declared world: what should run, and on what.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub services: BTreeMap<Name, ServiceSpec>,
    pub jobs: BTreeMap<Name, JobSpec>,
    /// Declared models and those implied by a service or job naming one.
    pub models: BTreeMap<Name, ModelSpec>,
    pub devices: Vec<Device>,
    /// VRAM already in use when Flowers starts (a first reading, charged to the Runs the store
    /// lists as not ended), so that the first plan does not over-commit a GPU another program
    /// fills.
    pub device_usage: DeviceUsage,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no service or job is named {0:?}")]
    UnknownOwner(String),
    #[error("no job is named {0:?}")]
    UnknownJob(String),
    #[error("no run is named {0:?}")]
    UnknownRun(String),
    #[error("run {0} has already ended")]
    RunEnded(String),
    #[error("job {0} is already running (run {1}); stop it first with `flowers stop {1}`")]
    JobAlreadyRunning(String, String),
    #[error("Flowers is shutting down")]
    ShuttingDown,
    #[error("no model is named {0:?}")]
    UnknownModel(String),
    #[error("model {0} has no version {1}")]
    UnknownVersion(String, u32),
    #[error("{0}")]
    Refused(String),
    /// What was asked contradicts what is there (a name the configuration declares).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Version(#[from] versions::VersionError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl Error {
    /// A service's Run tried to register a version: only jobs do.
    pub(crate) fn not_a_job(run: &RunId, service: &Name) -> Error {
        Error::Refused(format!(
            "run {run} belongs to service {service}; only jobs register versions \
             (import files with `flowers models import`)"
        ))
    }
}

/// What asking for a job to start did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobStarted {
    /// A Run was started.
    Run(RunId),
    /// No device is free for it; it starts as soon as one is. The reason says why.
    Waiting(String),
}

/// What registering a version did.
#[derive(Clone, Debug)]
pub struct Registered {
    pub version: VersionRecord,
    pub promoted: bool,
    /// Why it was or was not promoted, for people.
    pub note: String,
}

/// A version to register: files from `path` (absolute; a file or a directory on this machine).
#[derive(Clone, Debug)]
pub struct Registration {
    pub model: String,
    pub path: PathBuf,
    pub metrics: Metrics,
    /// The job's Run registering it (`FLOWERS_RUN_ID`); `None` for an import.
    pub run: Option<RunId>,
}

/// A request from outside the loop, answered on its oneshot.
pub(crate) enum Command {
    StartJob {
        name: String,
        reply: oneshot::Sender<Result<JobStarted, Error>>,
    },
    StopRun {
        run: RunId,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    Reset {
        name: String,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    PutService {
        spec: Box<ServiceSpec>,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    PutJob {
        spec: Box<JobSpec>,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    Remove {
        name: String,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    RegisterVersion {
        registration: Registration,
        staged: versions::Staged,
        reply: oneshot::Sender<Result<Registered, Error>>,
    },
    ReportProgress {
        run: RunId,
        progress: Progress,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Promote {
        model: String,
        /// `None`: roll back to the version promoted before the current one.
        version: Option<u32>,
        reply: oneshot::Sender<Result<String, Error>>,
    },
}

/// The only way into the orchestrator from other tasks. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<engine::Input>,
    view: watch::Receiver<Arc<View>>,
    events: broadcast::Sender<Event>,
    store: Store,
    data_dir: PathBuf,
}

impl Handle {
    /// The latest published state; cheap, never blocks on the loop.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// Waits for the next change of the published state.
    pub fn view_updates(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// Events as they are recorded. Subscribe first, then read the backlog from the store,
    /// and skip ids already seen, to miss nothing.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where a model version's files are: `DATA_DIR/models/MODEL/VERSION`.
    pub fn version_dir(&self, model: &str, version: u32) -> PathBuf {
        versions::version_dir(&self.data_dir, model, version)
    }

    /// Starts a Run of the job, or queues it until a device is free.
    pub async fn start_job(&self, name: &str) -> Result<JobStarted, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(engine::Input::Command(Command::StartJob {
                name: name.to_string(),
                reply,
            }))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Stops a Run gracefully. A service replica is replaced; a job is not restarted.
    pub async fn stop_run(&self, run: &RunId) -> Result<String, Error> {
        self.ask(|reply| Command::StopRun {
            run: run.clone(),
            reply,
        })
        .await
    }

    /// Clears a service's crash loop or a job's failed state so Flowers tries again.
    pub async fn reset(&self, name: &str) -> Result<String, Error> {
        self.ask(|reply| Command::Reset {
            name: name.to_string(),
            reply,
        })
        .await
    }

    /// Adds a service at run time, kept across restarts, or replaces the spec of one added
    /// earlier (its replicas are replaced blue/green). A name the configuration declares, or
    /// a job's, is a conflict.
    pub async fn put_service(&self, spec: ServiceSpec) -> Result<String, Error> {
        self.ask(|reply| Command::PutService {
            spec: Box::new(spec),
            reply,
        })
        .await
    }

    /// Adds a job at run time, kept across restarts, or replaces the spec of one added
    /// earlier that is not running. It starts at once when its spec says `autostart`.
    pub async fn put_job(&self, spec: JobSpec) -> Result<String, Error> {
        self.ask(|reply| Command::PutJob {
            spec: Box::new(spec),
            reply,
        })
        .await
    }

    /// Removes a service or job added at run time: a service's replicas are drained, then
    /// stopped; a job's Run is stopped gracefully.
    pub async fn remove(&self, name: &str) -> Result<String, Error> {
        self.ask(|reply| Command::Remove {
            name: name.to_string(),
            reply,
        })
        .await
    }

    /// Registers a new version of a model from files on this machine: they are copied (and
    /// digested) into the data directory first, outside the loop, then recorded; the model's
    /// promotion policy and retention apply at once.
    pub async fn register_version(&self, registration: Registration) -> Result<Registered, Error> {
        if Name::new(&registration.model).is_err() {
            return Err(Error::Refused(format!(
                "{:?} is not a valid model name: lowercase letters, digits and '-', starting with a letter",
                registration.model
            )));
        }
        for (name, value) in &registration.metrics {
            if !value.is_finite() {
                return Err(Error::Refused(format!(
                    "metric {name:?} is {value}; metrics must be finite numbers"
                )));
            }
        }
        // A Run that cannot register is refused before its files are copied (a big checkpoint
        // takes a while); the loop checks again once they are, since the Run may end meanwhile.
        if let Some(run) = &registration.run {
            match self.store.run(run)? {
                None => return Err(Error::UnknownRun(run.to_string())),
                Some(record) if record.ended_ms.is_some() => {
                    return Err(Error::RunEnded(run.to_string()))
                }
                Some(record) if record.owner.kind == domain::OwnerKind::Service => {
                    return Err(Error::not_a_job(run, &record.owner.name))
                }
                Some(_) => {}
            }
        }
        let data_dir = self.data_dir.clone();
        let model = registration.model.clone();
        let path = registration.path.clone();
        let staged = tokio::task::spawn_blocking(move || versions::stage(&data_dir, &model, &path))
            .await
            .map_err(|_| Error::ShuttingDown)??;
        let staging = staged.dir.clone();
        let (reply, answer) = oneshot::channel();
        let sent = self
            .commands
            .send(engine::Input::Command(Command::RegisterVersion {
                registration,
                staged,
                reply,
            }))
            .await;
        if sent.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(Error::ShuttingDown);
        }
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Makes `version` the promoted version of `model`; services that follow it are moved to it
    /// blue/green.
    pub async fn promote(&self, model: &str, version: u32) -> Result<String, Error> {
        self.ask(|reply| Command::Promote {
            model: model.to_string(),
            version: Some(version),
            reply,
        })
        .await
    }

    /// Records how far a Run has come (what its process reports; shown in `flowers ps`). Only
    /// a Run that has not ended may report; `updated_ms` is set here.
    pub async fn report_progress(&self, run: &RunId, mut progress: Progress) -> Result<(), Error> {
        progress.check().map_err(Error::Refused)?;
        progress.updated_ms = domain::now_ms();
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(engine::Input::Command(Command::ReportProgress {
                run: run.clone(),
                progress,
                reply,
            }))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Promotes again the version that was promoted before the current one.
    pub async fn rollback(&self, model: &str) -> Result<String, Error> {
        self.ask(|reply| Command::Promote {
            model: model.to_string(),
            version: None,
            reply,
        })
        .await
    }

    /// Hands the loop a new reading of the GPUs' memory: it counts in the next plans, and a Run
    /// that went beyond its VRAM budget gets an event (it is not stopped).
    pub async fn report_device_usage(&self, usage: DeviceUsage) -> Result<(), Error> {
        self.commands
            .send(engine::Input::DeviceUsage(usage))
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// Stops every Run gracefully and ends the loop. Returns when all are gone.
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(engine::Input::Command(Command::Shutdown { reply }))
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<String, Error>>) -> Command,
    ) -> Result<String, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(engine::Input::Command(make(reply)))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }
}

/// Opens the loop: re-adopts or cleans up the Runs an earlier Flowers left behind, starts
/// what the desired state asks for, and returns a handle plus the loop's task.
pub async fn start(
    settings: Settings,
    desired: Desired,
    store: Store,
    gpu_status: String,
) -> Result<(Handle, tokio::task::JoinHandle<()>), Error> {
    engine::start(settings, desired, store, gpu_status).await
}
