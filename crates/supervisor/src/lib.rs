//! The OS processes of Runs: starting them, their logs, their probes, stopping them, and
//! re-adopting them after Flowers itself was killed.
//!
//! Every Run is started through a small monitor process (the `flowers` binary run as a hidden
//! subcommand, like podman's conmon) that leads the Run's process group, copies its output
//! into a size-rotated `RUN_DIR/output.log`, reaps what it leaves behind and records its exit
//! status in `RUN_DIR/exit.json`. The monitor needs nothing from Flowers once started, so a
//! Flowers that dies leaves its Runs running and the next one adopts them by pid and start time.
//! This crate never decides what runs where or when (that is the scheduler and the
//! orchestrator), never stores anything beyond a Run's own directory, and never reads the
//! environment or configuration: callers hand it plain values. Linux only.

use std::path::PathBuf;

pub mod logs;
mod monitor;
mod probe;
mod process;
mod procfs;
mod rotate;
mod run_files;
mod stop;

pub use monitor::monitor_main;
pub use probe::{pick_free_port, probe_http};
pub use process::{LaunchSpec, ProcessHandle, RunProcess, Supervisor};
pub use procfs::{group_members, group_of_each, is_alive, process_start_ticks, unrecorded_group};
pub use rotate::RotatingLog;
pub use run_files::read_exit_status;
pub use stop::{stop_group, StopOutcome};

/// Why the supervisor could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The launch request itself is unusable (empty command, bad environment name).
    #[error("run {run_id}: cannot launch: {reason}")]
    InvalidLaunch { run_id: String, reason: String },
    /// The Run directory could not be created or prepared.
    #[error("run {run_id}: run directory {}: {source}", path.display())]
    RunDir {
        run_id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The monitor program could not be executed.
    #[error("run {run_id}: cannot start the monitor {}: {source}", program.display())]
    SpawnMonitor {
        run_id: String,
        program: PathBuf,
        source: std::io::Error,
    },
    /// The monitor was gone before its pid and start time could be read.
    #[error("run {run_id}: the monitor exited before it could be observed")]
    MonitorVanished { run_id: String },
}
