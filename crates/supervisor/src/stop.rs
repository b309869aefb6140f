//! Stopping a Run: its whole process group, politely first.

use std::time::Duration;

use tokio::time::Instant;

use crate::procfs::{group_members, read_stat};
use crate::ProcessHandle;

const STOP_POLL: Duration = Duration::from_millis(50);
/// After SIGKILL, how long the group may take to disappear before we give up waiting.
const KILL_BOUND: Duration = Duration::from_secs(5);
/// During escalation, how long the monitor gets to record the killed command's status before
/// it is killed as well.
const MONITOR_RECORD_BOUND: Duration = Duration::from_secs(2);

/// How [`stop_group`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Nothing of the group was running (or its leader's pid now belongs to someone else).
    AlreadyGone,
    /// The group exited within the grace period after SIGTERM.
    Terminated,
    /// The group was still there after the grace period and was killed.
    Killed,
}

/// SIGTERM to the process group, wait up to `grace` for the whole group to be gone, then
/// SIGKILL it and wait until it is gone (at most about 7 s more). Never signals a group whose
/// leader pid was reused (checked through start_ticks while the leader exists).
///
/// On escalation the command and its descendants are killed before the monitor, so that the
/// monitor can still record `code=137 (SIGKILL)` in `exit.json`.
pub async fn stop_group(handle: ProcessHandle, grace: Duration) -> StopOutcome {
    if !may_signal(handle) {
        return StopOutcome::AlreadyGone;
    }
    let pgid = nix::unistd::Pid::from_raw(handle.pid as i32);
    use nix::sys::signal::{kill, killpg, Signal};
    if killpg(pgid, Signal::SIGTERM).is_err() {
        return StopOutcome::AlreadyGone;
    }
    if wait_until_gone(handle.pid, grace, |_| {}).await {
        return StopOutcome::Terminated;
    }
    tracing::info!(
        pgid = handle.pid,
        ?grace,
        "group outlived its grace period; killing it"
    );
    let kill_others = |members: &[u32]| {
        for &pid in members.iter().filter(|&&pid| pid != handle.pid) {
            let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    };
    kill_others(&group_members(handle.pid));
    if !wait_until_gone(handle.pid, MONITOR_RECORD_BOUND, kill_others).await {
        let _ = killpg(pgid, Signal::SIGKILL);
        if !wait_until_gone(handle.pid, KILL_BOUND, |_| {}).await {
            tracing::warn!(
                pgid = handle.pid,
                "process group still present after SIGKILL"
            );
        }
    }
    StopOutcome::Killed
}

/// Whether the group of `handle` may be signalled: it has live members, and its leader is either
/// gone (then the kernel keeps its pid out of reuse while the group exists) or the same process.
fn may_signal(handle: ProcessHandle) -> bool {
    if let Some(stat) = read_stat(handle.pid) {
        if stat.start_ticks != handle.start_ticks {
            return false;
        }
    }
    !group_members(handle.pid).is_empty()
}

/// Polls until no live member of the group is left or `bound` has passed; `each_round` sees the
/// members still there. True when the group is gone.
async fn wait_until_gone(pgid: u32, bound: Duration, each_round: impl Fn(&[u32])) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        let members = group_members(pgid);
        if members.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        each_round(&members);
        tokio::time::sleep(STOP_POLL).await;
    }
}
