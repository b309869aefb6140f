use domain::{Device, JobSpec, ModelSpec, ServiceSpec};
use store::RunRecord;

use crate::DeviceUsage;

/// A consistent picture of the orchestrator's state, published after every change.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub started_ms: i64,
    pub devices: Vec<Device>,
    /// One line: the NVML driver, the fake in use, or why no GPU is used.
    pub gpu_status: String,
    pub services: Vec<ServiceView>,
    pub jobs: Vec<JobView>,
    pub models: Vec<ModelView>,
    /// Runs that have not ended, in id order.
    pub runs: Vec<RunRecord>,
    pub shutting_down: bool,
    /// VRAM in use on the GPUs as last read (every 2 s), counted as the scheduler counts it:
    /// each Run's own use on its GPU, everything else as foreign.
    pub device_usage: DeviceUsage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerStatus {
    /// Every replica ready.
    Running,
    /// Replicas started, none ready yet.
    Starting,
    /// Some replicas ready, not all.
    Degraded,
    /// Cannot be placed now; the reason says why.
    Waiting,
    /// Backing off before the next start.
    Restarting,
    /// Failed too many times in a row; waits for `flowers reset`.
    CrashLoop,
    /// A service with no replicas wanted, or a job stopped by a user.
    Stopped,
    /// A job that was never started.
    Idle,
    Stopping,
    Succeeded,
    Failed,
}

impl OwnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerStatus::Running => "running",
            OwnerStatus::Starting => "starting",
            OwnerStatus::Degraded => "degraded",
            OwnerStatus::Waiting => "waiting",
            OwnerStatus::Restarting => "restarting",
            OwnerStatus::CrashLoop => "crash_loop",
            OwnerStatus::Stopped => "stopped",
            OwnerStatus::Idle => "idle",
            OwnerStatus::Stopping => "stopping",
            OwnerStatus::Succeeded => "succeeded",
            OwnerStatus::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServiceView {
    pub spec: ServiceSpec,
    /// Added at run time (`flowers deploy`, the API), not declared in the configuration.
    pub added: bool,
    pub status: OwnerStatus,
    pub reason: Option<String>,
    pub ready: u32,
    pub consecutive_failures: u32,
}

#[derive(Clone, Debug)]
pub struct JobView {
    pub spec: JobSpec,
    /// Added at run time (`flowers train`, the API), not declared in the configuration.
    pub added: bool,
    pub status: OwnerStatus,
    pub reason: Option<String>,
    /// The current Run, or the most recent one.
    pub last_run: Option<RunRecord>,
}

#[derive(Clone, Debug)]
pub struct ModelView {
    pub spec: ModelSpec,
    pub promoted: Option<u32>,
    /// Versions that ready service replicas serve now (more than one during a promotion).
    pub serving: Vec<u32>,
}
