//! What the user declared: services and jobs, fully resolved (every default filled in).
//!
//! Specs are what the scheduler and the orchestrator read and what the store keeps for
//! services and jobs added at run time; the config crate builds them from `flowers.toml`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ApiKeyDigest, ByteSize, Name};

/// How much of a device a Run needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourceRequest {
    /// 0: needs no device (runs beside everything else); 1: needs one GPU or CPU slot.
    pub devices: u32,
    /// VRAM budget on a GPU. `None` with `devices = 1` takes a whole device.
    pub vram: Option<ByteSize>,
}

/// The HTTP readiness (and liveness) probe of a service replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// Path requested with GET on `127.0.0.1:$FLOWERS_PORT`; any 2xx or 3xx answer passes.
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a new replica may take to pass its first probe before it is restarted.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// Consecutive failures of a ready replica after which it is restarted (liveness).
    pub failure_threshold: u32,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        ProbeSpec {
            path: "/healthz".to_string(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            start_timeout: Duration::from_secs(60),
            failure_threshold: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever the process ends (the default for services).
    Always,
    /// Restart only when it ends with a non-zero status or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// How a service's replicas are replaced when its spec changes or a new model version is
/// promoted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplaceStrategy {
    /// Blue/green: the new replica starts beside the old one, which is drained and stopped
    /// once the new one is ready. No request waits; needs room for both at once.
    #[default]
    Surge,
    /// The old replica is drained and stopped first, and the new one starts once it has
    /// exited: for a service that cannot run twice at once (one writer of a database or an
    /// index). Requests meanwhile wait on the gateway (up to `hold`).
    StopFirst,
}

impl ReplaceStrategy {
    pub fn is_surge(&self) -> bool {
        *self == ReplaceStrategy::Surge
    }
}

/// When and how fast a crashed Run is started again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// Delay before the first restart; doubles after each consecutive failure.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// After this many consecutive failures the owner enters the crash-loop state and is not
    /// restarted until a user clears it (`flowers reset NAME`).
    pub crash_loop_after: u32,
    /// A Run that stays up (and ready, for a service) this long resets the failure count.
    #[serde(with = "humantime_serde")]
    pub healthy_after: Duration,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Always,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            crash_loop_after: 5,
            healthy_after: Duration::from_secs(60),
        }
    }
}

impl RestartSpec {
    /// Delay before restart number `consecutive_failures` (1 for the first failure).
    pub fn backoff(&self, consecutive_failures: u32) -> Duration {
        let exponent = consecutive_failures.saturating_sub(1).min(30);
        self.backoff_initial
            .saturating_mul(1u32 << exponent)
            .min(self.backoff_max)
    }
}

/// A route on the gateway to a service: host and/or path prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    pub host: Option<String>,
    pub path_prefix: String,
}

/// A long-running process answering HTTP on the port Flowers gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: Name,
    /// Program and arguments; no shell is involved.
    pub command: Vec<String>,
    pub workdir: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub replicas: u32,
    pub resources: ResourceRequest,
    pub probe: ProbeSpec,
    pub restart: RestartSpec,
    /// Time between SIGTERM and SIGKILL when the replica is stopped.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    pub routes: Vec<RouteSpec>,
    /// How long a request on its routes waits for a ready replica before it gets 503.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// The largest request body its routes accept.
    pub max_body: ByteSize,
    /// Digests of the keys its routes accept as `Authorization: Bearer KEY`; empty: open.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyDigest>,
    /// The Model whose promoted version this service serves.
    pub model: Option<Name>,
    /// Absent in specs stored before it existed: blue/green.
    #[serde(default, skip_serializing_if = "ReplaceStrategy::is_surge")]
    pub replace: ReplaceStrategy,
}

/// A run-to-completion process: training, batch analysis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: Name,
    pub command: Vec<String>,
    pub workdir: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub resources: ResourceRequest,
    /// Higher runs first when devices are scarce.
    pub priority: i32,
    /// May be stopped (and resumed later) to make room for services.
    pub preemptible: bool,
    /// Restarts after a failed attempt before the job is marked failed.
    pub restart_limit: u32,
    /// Delay before each restart of a failed attempt; doubles per attempt, as for services.
    #[serde(with = "humantime_serde")]
    pub restart_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// Start the job when Flowers starts, rather than on `flowers run`.
    pub autostart: bool,
    /// The Model this job produces versions of.
    pub model: Option<Name>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let spec = RestartSpec {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..RestartSpec::default()
        };
        let delays: Vec<u64> = (1..=6).map(|n| spec.backoff(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(spec.backoff(1000), Duration::from_secs(10));
    }
}
