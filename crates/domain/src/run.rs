use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Metrics, Name};

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

/// How far a job's Run has come, as its process last reported (`flowers.report()` in the
/// Python SDK): shown in `flowers ps` and on the Run in the control API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps done (epochs, batches, files: whatever the job counts).
    pub step: Option<u64>,
    /// Steps in all, when known; never below `step`.
    pub total: Option<u64>,
    /// Finite numbers by name (loss, accuracy, …).
    #[serde(default)]
    pub metrics: Metrics,
    /// When Flowers received it, milliseconds since the Unix epoch.
    pub updated_ms: i64,
}

impl Progress {
    /// Checks what a Run reported: `total` not below `step`, metric names short and
    /// printable, values finite, and not too many of them. The message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let (Some(step), Some(total)) = (self.step, self.total) {
            if step > total {
                return Err(format!("step {step} is beyond total {total}"));
            }
        }
        if self.metrics.len() > 64 {
            return Err(format!(
                "{} metrics reported; at most 64 are kept",
                self.metrics.len()
            ));
        }
        for (name, value) in &self.metrics {
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(format!(
                    "metric name {name:?} must be 1 to 64 printable characters"
                ));
            }
            if !value.is_finite() {
                return Err(format!(
                    "metric {name:?} is {value}; metrics must be finite numbers"
                ));
            }
        }
        Ok(())
    }

    /// One short line for tables: `120/1000 (12%) acc=0.912 loss=0.31`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match (self.step, self.total) {
            (Some(step), Some(total)) if total > 0 => {
                parts.push(format!("{step}/{total} ({}%)", step * 100 / total))
            }
            (Some(step), _) => parts.push(format!("step {step}")),
            (None, Some(total)) => parts.push(format!("?/{total}")),
            (None, None) => {}
        }
        for (name, value) in &self.metrics {
            parts.push(format!("{name}={}", short_number(*value)));
        }
        parts.join(" ")
    }
}

/// Three decimals below 10, fewer above (four digits in all), without trailing zeros.
fn short_number(value: f64) -> String {
    if value != 0.0 && (value.abs() >= 1e5 || value.abs() < 1e-3) {
        return format!("{value:.3e}");
    }
    let digits = (3 - value.abs().log10().floor().max(0.0) as i32).max(0) as usize;
    let text = format!("{value:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    fn progress(step: Option<u64>, total: Option<u64>, metrics: &[(&str, f64)]) -> Progress {
        Progress {
            step,
            total,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            updated_ms: 0,
        }
    }

    #[test]
    fn check_refuses_what_cannot_be_shown() {
        assert!(progress(Some(3), Some(10), &[("loss", 0.5)])
            .check()
            .is_ok());
        assert!(progress(None, None, &[]).check().is_ok());
        let beyond = progress(Some(11), Some(10), &[]).check().unwrap_err();
        assert_eq!(beyond, "step 11 is beyond total 10");
        let nan = progress(None, None, &[("loss", f64::NAN)])
            .check()
            .unwrap_err();
        assert!(nan.contains("\"loss\" is NaN"), "{nan}");
        let empty = progress(None, None, &[("", 1.0)]).check().unwrap_err();
        assert!(empty.contains("1 to 64 printable"), "{empty}");
        let many: Vec<(String, f64)> = (0..65).map(|i| (format!("m{i}"), 1.0)).collect();
        let many = Progress {
            metrics: many.into_iter().collect(),
            ..Progress::default()
        };
        assert!(many.check().unwrap_err().contains("at most 64"));
    }

    #[test]
    fn summary_is_short() {
        assert_eq!(
            progress(Some(120), Some(1000), &[("acc", 0.91234), ("loss", 12.5)]).summary(),
            "120/1000 (12%) acc=0.912 loss=12.5"
        );
        assert_eq!(progress(Some(7), None, &[]).summary(), "step 7");
        assert_eq!(
            progress(None, None, &[("lr", 0.00001)]).summary(),
            "lr=1.000e-5"
        );
        assert_eq!(progress(None, None, &[("n", 3.0)]).summary(), "n=3");
    }
}
