use serde::{Deserialize, Serialize};

/// What happened, in the past tense. The set is closed so that the CLI, dashboard and tests
/// can rely on the names; the human detail is in [`Event::message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    FlowersStarted,
    FlowersStopping,
    DevicesDetected,
    RunStarted,
    RunReady,
    RunUnhealthy,
    RunExited,
    RunRestartScheduled,
    RunStopping,
    RunStopped,
    RunAdopted,
    CrashLoopEntered,
    CrashLoopCleared,
    JobSucceeded,
    JobFailed,
    PlacementFailed,
    VersionRegistered,
    VersionPromoted,
    VersionFailed,
    VersionDeleted,
    JobPreempted,
    /// A Run uses more VRAM than its budget (once per crossing; Flowers does not stop it).
    VramBudgetExceeded,
    /// A service or job added at run time (`flowers deploy`, `flowers train`, the API).
    OwnerAdded,
    /// A service or job added at run time was replaced by a new spec.
    OwnerChanged,
    /// A service or job added at run time was removed (`flowers remove`).
    OwnerRemoved,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::FlowersStarted => "flowers_started",
            EventKind::FlowersStopping => "flowers_stopping",
            EventKind::DevicesDetected => "devices_detected",
            EventKind::RunStarted => "run_started",
            EventKind::RunReady => "run_ready",
            EventKind::RunUnhealthy => "run_unhealthy",
            EventKind::RunExited => "run_exited",
            EventKind::RunRestartScheduled => "run_restart_scheduled",
            EventKind::RunStopping => "run_stopping",
            EventKind::RunStopped => "run_stopped",
            EventKind::RunAdopted => "run_adopted",
            EventKind::CrashLoopEntered => "crash_loop_entered",
            EventKind::CrashLoopCleared => "crash_loop_cleared",
            EventKind::JobSucceeded => "job_succeeded",
            EventKind::JobFailed => "job_failed",
            EventKind::PlacementFailed => "placement_failed",
            EventKind::VersionRegistered => "version_registered",
            EventKind::VersionPromoted => "version_promoted",
            EventKind::VersionFailed => "version_failed",
            EventKind::VersionDeleted => "version_deleted",
            EventKind::JobPreempted => "job_preempted",
            EventKind::VramBudgetExceeded => "vram_budget_exceeded",
            EventKind::OwnerAdded => "owner_added",
            EventKind::OwnerChanged => "owner_changed",
            EventKind::OwnerRemoved => "owner_removed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        ALL_KINDS.iter().copied().find(|kind| kind.as_str() == text)
    }
}

const ALL_KINDS: [EventKind; 25] = [
    EventKind::FlowersStarted,
    EventKind::FlowersStopping,
    EventKind::DevicesDetected,
    EventKind::RunStarted,
    EventKind::RunReady,
    EventKind::RunUnhealthy,
    EventKind::RunExited,
    EventKind::RunRestartScheduled,
    EventKind::RunStopping,
    EventKind::RunStopped,
    EventKind::RunAdopted,
    EventKind::CrashLoopEntered,
    EventKind::CrashLoopCleared,
    EventKind::JobSucceeded,
    EventKind::JobFailed,
    EventKind::PlacementFailed,
    EventKind::VersionRegistered,
    EventKind::VersionPromoted,
    EventKind::VersionFailed,
    EventKind::VersionDeleted,
    EventKind::JobPreempted,
    EventKind::VramBudgetExceeded,
    EventKind::OwnerAdded,
    EventKind::OwnerChanged,
    EventKind::OwnerRemoved,
];

/// An event before the store gives it an id and a time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub kind: EventKind,
    /// The service or job the event is about, if any.
    pub owner: Option<String>,
    pub run: Option<String>,
    pub device: Option<String>,
    /// What happened and why, for people: `exited code=137 (SIGKILL)`, `restarting in 4s`.
    pub message: String,
}

impl NewEvent {
    pub fn new(kind: EventKind, message: impl Into<String>) -> Self {
        NewEvent {
            kind,
            owner: None,
            run: None,
            device: None,
            message: message.into(),
        }
    }
    pub fn owner(mut self, owner: impl ToString) -> Self {
        self.owner = Some(owner.to_string());
        self
    }
    pub fn run(mut self, run: impl ToString) -> Self {
        self.run = Some(run.to_string());
        self
    }
    pub fn device(mut self, device: impl ToString) -> Self {
        self.device = Some(device.to_string());
        self
    }
}

/// An append-only record of something that happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing with time; SSE clients resume from it (`Last-Event-ID`).
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub kind: EventKind,
    pub owner: Option<String>,
    pub run: Option<String>,
    pub device: Option<String>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_matches_serde() {
        for kind in ALL_KINDS {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }
}
