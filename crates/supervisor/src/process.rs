//! Starting monitors and keeping hold of them: freshly spawned by this Flowers, or adopted from
//! an earlier one that was killed.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use domain::ExitStatus;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::monitor::MonitorArgs;
use crate::procfs::{is_alive, process_start_ticks};
use crate::run_files::{
    read_child_pid, read_exit_status, CHILD_PID_FILE, EXIT_FILE, MONITOR_LOG_FILE,
};
use crate::SupervisorError;

/// How often an adopted monitor is checked when the kernel offers no pidfd.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// Everything needed to start one Run's command under a monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    pub run_id: String,
    /// Program and arguments; no shell is involved.
    pub command: Vec<String>,
    pub workdir: Option<PathBuf>,
    /// Added to the environment Flowers itself runs with.
    pub env: Vec<(String, String)>,
    /// Created if missing; holds `output.log*`, `exit.json`, `child.pid` and `monitor.log`.
    pub run_dir: PathBuf,
    /// Size at which `output.log` is rotated; 0 never rotates.
    pub log_max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub log_keep: u32,
}

/// What identifies a monitor across Flowers restarts; store it with the Run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessHandle {
    /// The monitor's pid, which is also the process group id of the Run.
    pub pid: u32,
    /// `/proc/PID/stat` field 22 of the monitor: tells it apart from a later process that was
    /// given the same pid.
    pub start_ticks: u64,
}

/// Starts and re-adopts monitors.
#[derive(Clone, Debug)]
pub struct Supervisor {
    monitor_command: Vec<OsString>,
}

impl Supervisor {
    /// `monitor_command`: program and leading args that run the monitor, e.g.
    /// `[current_exe, "__monitor"]`; the monitor's own arguments follow them.
    pub fn new(monitor_command: Vec<OsString>) -> Self {
        Supervisor { monitor_command }
    }

    /// Starts the monitor (which starts the command); returns once the monitor is running.
    /// A command that cannot be started is not an error here: the monitor records it as exit
    /// status 127 (126: not executable) with the reason in `output.log`.
    pub async fn spawn(&self, spec: &LaunchSpec) -> Result<RunProcess, SupervisorError> {
        let (program, leading_args) =
            self.monitor_command
                .split_first()
                .ok_or_else(|| SupervisorError::InvalidLaunch {
                    run_id: spec.run_id.clone(),
                    reason: "the monitor command is empty".to_string(),
                })?;
        if spec.command.is_empty() || spec.command[0].is_empty() {
            return Err(SupervisorError::InvalidLaunch {
                run_id: spec.run_id.clone(),
                reason: "the command is empty".to_string(),
            });
        }
        if let Some((name, _)) = spec
            .env
            .iter()
            .find(|(name, _)| name.is_empty() || name.contains('=') || name.contains('\0'))
        {
            return Err(SupervisorError::InvalidLaunch {
                run_id: spec.run_id.clone(),
                reason: format!("environment variable name {name:?} is not valid"),
            });
        }
        let run_dir_error = |source| SupervisorError::RunDir {
            run_id: spec.run_id.clone(),
            path: spec.run_dir.clone(),
            source,
        };
        fs::create_dir_all(&spec.run_dir).map_err(run_dir_error)?;
        // A Run directory reused after a crash must not show the previous command's ending.
        for stale in [EXIT_FILE, CHILD_PID_FILE] {
            match fs::remove_file(spec.run_dir.join(stale)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(run_dir_error(error))
                }
                _ => {}
            }
        }
        let monitor_log = File::options()
            .create(true)
            .append(true)
            .open(spec.run_dir.join(MONITOR_LOG_FILE))
            .map_err(run_dir_error)?;

        let monitor_args = MonitorArgs {
            run_dir: spec.run_dir.clone(),
            log_max_bytes: spec.log_max_bytes,
            log_keep: spec.log_keep,
            workdir: spec.workdir.clone(),
            command: spec.command.iter().map(OsString::from).collect(),
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(leading_args)
            .args(monitor_args.to_args())
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(monitor_log))
            // The monitor must outlive a Flowers that is stopped or killed.
            .kill_on_drop(false);
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls.
        unsafe {
            command.pre_exec(|| {
                // Its own session and process group, so that a stop reaches the command and
                // everything it starts, and a signal to Flowers' group does not.
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                // Ignored dispositions survive exec: the monitor is immune to a group-wide
                // SIGTERM from its first instruction, before it could set them itself.
                for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                    libc::signal(signal, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|source| SupervisorError::SpawnMonitor {
                run_id: spec.run_id.clone(),
                program: PathBuf::from(program),
                source,
            })?;
        let pid = child.id().ok_or_else(|| SupervisorError::MonitorVanished {
            run_id: spec.run_id.clone(),
        })?;
        // Not yet reaped (the Child is held), so /proc/PID exists even if it already exited.
        let start_ticks =
            process_start_ticks(pid).ok_or_else(|| SupervisorError::MonitorVanished {
                run_id: spec.run_id.clone(),
            })?;
        tracing::debug!(run_id = %spec.run_id, pid, "monitor started");
        // The monitor writes child.pid right after it forks the command; wait for it (briefly)
        // so callers can record the command's pid with the Run.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while read_child_pid(&spec.run_dir).is_none()
            && !spec.run_dir.join(EXIT_FILE).exists()
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        Ok(RunProcess {
            handle: ProcessHandle { pid, start_ticks },
            run_dir: spec.run_dir.clone(),
            watch: Watch::Spawned(child),
            finished: None,
        })
    }

    /// Re-attaches to a monitor started by an earlier Flowers. `Ok(None)` when it is no longer
    /// alive (pid gone, zombie, or pid reused: start_ticks differ); its status, if it recorded
    /// one, is then in [`read_exit_status`].
    pub fn adopt(
        &self,
        handle: ProcessHandle,
        run_dir: &Path,
    ) -> Result<Option<RunProcess>, SupervisorError> {
        if !is_alive(handle) {
            return Ok(None);
        }
        let pidfd = match pidfd_open(handle.pid) {
            Ok(fd) => Some(fd),
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(error) => {
                tracing::debug!(pid = handle.pid, %error, "no pidfd; polling /proc instead");
                None
            }
        };
        // The pid may have been recycled between the check and pidfd_open; checking again
        // while holding the pidfd settles which process it refers to.
        if !is_alive(handle) {
            return Ok(None);
        }
        Ok(Some(RunProcess {
            handle,
            run_dir: run_dir.to_path_buf(),
            watch: Watch::Adopted {
                pidfd,
                registered: None,
            },
            finished: None,
        }))
    }
}

/// A monitor (and through it a Run's command) that this Flowers watches.
#[derive(Debug)]
pub struct RunProcess {
    handle: ProcessHandle,
    run_dir: PathBuf,
    watch: Watch,
    finished: Option<ExitStatus>,
}

#[derive(Debug)]
enum Watch {
    /// Started by this Flowers: waiting also reaps it.
    Spawned(tokio::process::Child),
    /// Started by an earlier Flowers: init (or a subreaper) reaps it; only its exit is seen.
    Adopted {
        pidfd: Option<OwnedFd>,
        /// The pidfd registered with the runtime, on the first `wait` (adopt may run outside
        /// a runtime).
        registered: Option<AsyncFd<OwnedFd>>,
    },
}

impl RunProcess {
    pub fn handle(&self) -> ProcessHandle {
        self.handle
    }

    /// The pid of the Run's command, once the monitor has started it and written `child.pid`.
    pub fn child_pid(&self) -> Option<u32> {
        read_child_pid(&self.run_dir)
    }

    /// Resolves when the monitor has exited. The status is the command's, from `exit.json`;
    /// without one, the monitor's own ending when it is known (a spawned monitor killed by
    /// signal n reads as signaled(n)), else signaled(9). Cancel-safe; later calls return the
    /// same status at once.
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.finished {
            return status;
        }
        let monitor_status = match &mut self.watch {
            Watch::Spawned(child) => match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    Some(match status.signal() {
                        Some(signal) => ExitStatus::signaled(signal),
                        None => ExitStatus::exited(status.code().unwrap_or(0)),
                    })
                }
                Err(error) => {
                    tracing::warn!(pid = self.handle.pid, %error, "waiting for the monitor failed");
                    wait_by_polling(self.handle).await;
                    None
                }
            },
            Watch::Adopted { pidfd, registered } => {
                if registered.is_none() {
                    if let Some(fd) = pidfd.take() {
                        // SAFETY: an OwnedFd stays open, and the same descriptor, for as long as
                        // the AsyncFd owns it.
                        match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
                            Ok(async_fd) => *registered = Some(async_fd),
                            Err(error) => tracing::debug!(%error, "pidfd not pollable"),
                        }
                    }
                }
                match registered {
                    // A pidfd turns readable when its process exits.
                    Some(async_fd) => match async_fd.readable().await {
                        Ok(_guard) => {}
                        Err(_) => wait_by_polling(self.handle).await,
                    },
                    None => wait_by_polling(self.handle).await,
                }
                None
            }
        };
        let status = read_exit_status(&self.run_dir)
            .or(monitor_status)
            .unwrap_or(ExitStatus::signaled(libc::SIGKILL));
        self.finished = Some(status);
        status
    }
}

async fn wait_by_polling(handle: ProcessHandle) {
    while is_alive(handle) {
        tokio::time::sleep(ADOPTED_POLL).await;
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The path taken when the kernel has no pidfd_open (before Linux 5.3).
    #[tokio::test]
    async fn an_adopted_monitor_without_pidfd_is_polled_until_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        let pid = sleeper.id();
        let handle = ProcessHandle {
            pid,
            start_ticks: process_start_ticks(pid).unwrap(),
        };
        let mut run = RunProcess {
            handle,
            run_dir: dir.path().to_path_buf(),
            watch: Watch::Adopted {
                pidfd: None,
                registered: None,
            },
            finished: None,
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(300), run.wait())
                .await
                .is_err(),
            "still running"
        );
        sleeper.kill().unwrap();
        // Left unreaped on purpose: a zombie counts as exited.
        let status = tokio::time::timeout(Duration::from_secs(10), run.wait())
            .await
            .unwrap();
        assert_eq!(status, ExitStatus::signaled(9), "no exit.json: signaled(9)");
        sleeper.wait().unwrap();
    }
}
