//! The control API's wire types: what goes over HTTP as JSON between Flowers, its CLI, the
//! dashboard and scripts, with their OpenAPI schemas.
//!
//! These types are kept apart from the domain types on purpose: the wire format is a promise
//! to clients and changes only deliberately, while domain types may be refactored freely. This
//! crate holds data and schemas only; it does no I/O and knows nothing of how answers are made.

mod models;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod gateway;
pub use gateway::{
    GatewayReport, GatewayRouteInfo, LatencyBucket, LatencyInfo, StatusClasses, TrafficInfo,
};
pub use models::{
    ModelDetail, ModelInfo, PromoteInfo, PromoteRequest, PromotionInfo, RegisterVersion,
    RegisteredInfo, VersionInfo,
};

/// The response header with which a Flowers model engine (`flowers engine embed|chat`) says
/// which version of its Model answers (`FLOWERS_MODEL_VERSION`), so that a client keeping
/// results (the RAG service's vectors) can tell when a new version was promoted.
pub const MODEL_VERSION_HEADER: &str = "x-flowers-model-version";

/// Every error answer of the control API. 4xx: the request was wrong; 5xx: Flowers failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Stable, machine-readable: `not_found`, `bad_request`, `conflict`, `internal`, …
    pub code: String,
    /// For people: what went wrong and what to do.
    pub message: String,
}

/// What this Flowers is and where it listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    pub version: String,
    pub pid: u32,
    pub api_listen: String,
    pub gateway_listen: String,
    pub data_dir: String,
    /// `embedded` or the path of the config file.
    pub config_source: String,
    pub started_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DevicesResponse {
    /// `nvml`, `fake` (a test stand-in for NVML) or `none`.
    pub gpu_source: String,
    /// One line: the driver version, or why no GPU is used.
    pub gpu_status: String,
    pub devices: Vec<DeviceInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceInfo {
    /// `gpu0`, `cpu1`, …
    pub id: String,
    /// `gpu` or `cpu`.
    pub kind: String,
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub memory_total_bytes: Option<u64>,
    /// Live NVML readings; absent for CPU slots or when NVML could not be read.
    pub telemetry: Option<Telemetry>,
    /// Why telemetry is missing for a GPU.
    pub telemetry_error: Option<String>,
    /// What Flowers has reserved on this device.
    pub allocations: Vec<AllocationInfo>,
    /// Sum of VRAM budgets reserved; a whole-device allocation counts as the whole memory.
    pub allocated_vram_bytes: Option<u64>,
    /// VRAM used by processes that are not this device's Runs (programs Flowers did not start),
    /// as last read (every 2 s). The scheduler counts it as taken. Absent for CPU slots and
    /// without a reading.
    pub foreign_vram_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Telemetry {
    pub memory_used_bytes: Option<u64>,
    pub utilization_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    pub power_draw_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub pcie_generation: Option<u32>,
    pub pcie_link_width: Option<u32>,
    pub pcie_max_generation: Option<u32>,
    pub pcie_max_link_width: Option<u32>,
    pub processes: Vec<GpuProcessInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GpuProcessInfo {
    pub pid: u32,
    pub memory_used_bytes: Option<u64>,
    /// The Run this process belongs to, when Flowers started it.
    pub run: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AllocationInfo {
    pub run: String,
    pub owner: String,
    /// VRAM budget; absent when the Run holds the whole device.
    pub vram_bytes: Option<u64>,
    /// VRAM the Run's processes use on this device as NVML last reported it (every 2 s).
    /// Beyond `vram_bytes`, the scheduler counts this instead. Absent for CPU slots and without
    /// a reading.
    pub vram_used_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResourcesInfo {
    pub devices: u32,
    pub vram_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceInfo {
    pub name: String,
    /// `running` (all replicas ready), `starting`, `degraded` (some ready), `waiting` (cannot
    /// be placed), `restarting` (backing off), `crash_loop` or `stopped` (0 replicas).
    pub state: String,
    /// Why it is in that state, when there is something to say.
    pub reason: Option<String>,
    pub replicas: u32,
    pub ready_replicas: u32,
    pub consecutive_failures: u32,
    pub resources: ResourcesInfo,
    pub model: Option<String>,
    /// Added at run time (`flowers deploy`, `PUT /v1/services/NAME`), not declared in the
    /// configuration file; `flowers remove` takes it away.
    #[serde(default)]
    pub added: bool,
    /// Current (non-terminal) Runs.
    pub runs: Vec<RunInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    pub name: String,
    /// `idle` (never started), `waiting`, `running`, `restarting`, `stopping`, `succeeded`,
    /// `failed` or `stopped`.
    pub state: String,
    pub reason: Option<String>,
    pub priority: i32,
    pub preemptible: bool,
    pub resources: ResourcesInfo,
    pub model: Option<String>,
    /// Added at run time (`flowers train`, `PUT /v1/jobs/NAME`), not declared in the
    /// configuration file; `flowers remove` takes it away.
    #[serde(default)]
    pub added: bool,
    /// The current Run, or the last one.
    pub last_run: Option<RunInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunInfo {
    pub id: String,
    pub owner: String,
    /// `service` or `job`.
    pub owner_kind: String,
    pub replica: u32,
    /// `starting`, `ready`, `running`, `stopping`, `exited` or `stopped`.
    pub state: String,
    pub device: Option<String>,
    pub vram_bytes: Option<u64>,
    pub port: Option<u16>,
    /// The Run's process group (its monitor process).
    pub pid: Option<u32>,
    /// The Run's command itself.
    pub child_pid: Option<u32>,
    /// The version of its service's model this replica serves; absent for a job, or a service
    /// that follows no model.
    pub model_version: Option<u32>,
    pub attempt: u32,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub reason: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub ready_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// What the Run last reported of its progress (`POST /v1/runs/{id}/progress`).
    pub progress: Option<ProgressInfo>,
}

/// How far a Run has come, as its process reports it (the Python SDK's `flowers.report()`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressInfo {
    /// Steps done: epochs, batches, files, whatever the job counts.
    pub step: Option<u64>,
    /// Steps in all, when known; not below `step`.
    pub total: Option<u64>,
    /// Finite numbers by name (at most 64).
    pub metrics: BTreeMap<String, f64>,
    /// When Flowers received it.
    pub updated_ms: i64,
}

/// A Run's report of its progress; it replaces the one before.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportProgress {
    #[serde(default)]
    pub step: Option<u64>,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventInfo {
    /// Increasing; pass it back as `after` or `Last-Event-ID` to resume.
    pub id: i64,
    pub time_ms: i64,
    /// `run_started`, `run_ready`, `run_exited`, `run_restart_scheduled`, `crash_loop_entered`,
    /// `placement_failed`, … (snake_case, past tense).
    pub kind: String,
    pub owner: Option<String>,
    pub run: Option<String>,
    pub device: Option<String>,
    pub message: String,
}

/// Answer to an action (start a job, stop a run, restart a service).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActionResponse {
    /// What Flowers did or will do, for people.
    pub message: String,
    /// The Run the action concerns, if there is one yet.
    pub run: Option<String>,
}
