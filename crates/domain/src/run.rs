use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Name;

/// A Run's id: the owner's name and a number the store hands out once (`chat-17`), readable in
/// logs and unique for the life of the data directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    pub fn new(owner: &Name, sequence: i64) -> Self {
        RunId(format!("{owner}-{sequence}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    Service,
    Job,
}

/// What a Run belongs to: one replica of a Service, or one attempt of a Job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunOwner {
    pub kind: OwnerKind,
    pub name: Name,
    /// Replica slot for a service (0-based); 0 for a job.
    pub replica: u32,
}

/// Where a Run is in its life. `Exited` and `Stopped` are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// The process is up; a service's readiness probe has not passed yet.
    Starting,
    /// A service Run whose readiness probe passed: it may receive traffic.
    Ready,
    /// A job Run in progress (jobs have no probe).
    Running,
    /// SIGTERM sent; waiting for the process group to exit within its grace period.
    Stopping,
    /// The process ended by itself (crash, or a job finishing).
    Exited,
    /// The process ended because Flowers stopped it.
    Stopped,
}

impl RunState {
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Exited | RunState::Stopped)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Ready => "ready",
            RunState::Running => "running",
            RunState::Stopping => "stopping",
            RunState::Exited => "exited",
            RunState::Stopped => "stopped",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "starting" => RunState::Starting,
            "ready" => RunState::Ready,
            "running" => RunState::Running,
            "stopping" => RunState::Stopping,
            "exited" => RunState::Exited,
            "stopped" => RunState::Stopped,
            _ => return None,
        })
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended, in the shell's convention: a signal `n` also reads as `code=128+n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: i32,
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn exited(code: i32) -> Self {
        ExitStatus { code, signal: None }
    }
    pub fn signaled(signal: i32) -> Self {
        ExitStatus {
            code: 128 + signal,
            signal: Some(signal),
        }
    }
    pub fn success(self) -> bool {
        self.code == 0 && self.signal.is_none()
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code={}", self.code)?;
        if let Some(signal) = self.signal {
            let name = match signal {
                1 => "SIGHUP",
                2 => "SIGINT",
                6 => "SIGABRT",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                13 => "SIGPIPE",
                15 => "SIGTERM",
                _ => "",
            };
            if name.is_empty() {
                write!(f, " (signal {signal})")?;
            } else {
                write!(f, " ({name})")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_reads_like_a_shell() {
        assert_eq!(ExitStatus::signaled(9).to_string(), "code=137 (SIGKILL)");
        assert_eq!(ExitStatus::exited(3).to_string(), "code=3");
        assert!(ExitStatus::exited(0).success());
        assert!(!ExitStatus::signaled(15).success());
    }

    #[test]
    fn run_state_round_trips_through_text() {
        for state in [
            RunState::Starting,
            RunState::Ready,
            RunState::Running,
            RunState::Stopping,
            RunState::Exited,
            RunState::Stopped,
        ] {
            assert_eq!(RunState::parse(state.as_str()), Some(state));
        }
    }
}
