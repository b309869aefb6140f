//! Models and their versions: a Model is a named series of immutable Versions (directories of
//! files with a manifest); one of them at a time is *promoted*, and the services that follow
//! the Model serve it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Name;

/// Whether a bigger or a smaller value of a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricMode {
    Min,
    Max,
}

impl MetricMode {
    /// Whether `candidate` beats `current` (strictly: an equal metric does not promote).
    pub fn better(self, candidate: f64, current: f64) -> bool {
        match self {
            MetricMode::Min => candidate < current,
            MetricMode::Max => candidate > current,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricMode::Min => "min",
            MetricMode::Max => "max",
        }
    }
}

/// When a new version becomes the promoted one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum PromotePolicy {
    /// Only by `flowers models promote` (or the API).
    Manual,
    /// As soon as a version's `metric` beats the promoted version's (or nothing is promoted).
    Metric { metric: String, mode: MetricMode },
}

impl PromotePolicy {
    /// For people: `manual`, `when eval_loss is lower`.
    pub fn describe(&self) -> String {
        match self {
            PromotePolicy::Manual => "manual".to_string(),
            PromotePolicy::Metric { metric, mode } => format!(
                "when {metric} is {}",
                match mode {
                    MetricMode::Min => "lower",
                    MetricMode::Max => "higher",
                }
            ),
        }
    }
}

/// A Model as declared (`[models.NAME]`), or implied by a service or job that names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: Name,
    pub promote: PromotePolicy,
    /// Versions kept on disk, newest first; the promoted version, the one before it (for
    /// rollback) and any being served are kept beyond this.
    pub keep: u32,
}

impl ModelSpec {
    pub const DEFAULT_KEEP: u32 = 5;

    /// The spec of a model nobody declared: manual promotion, default retention.
    pub fn implied(name: Name) -> ModelSpec {
        ModelSpec {
            name,
            promote: PromotePolicy::Manual,
            keep: Self::DEFAULT_KEEP,
        }
    }
}

/// Where a version stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Registered and usable.
    Ready,
    /// Promoted once, but its replicas did not become ready; never promoted automatically again.
    Failed,
    /// Removed by retention; the record stays, the files are gone.
    Deleted,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Ready => "ready",
            VersionState::Failed => "failed",
            VersionState::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<VersionState> {
        [
            VersionState::Ready,
            VersionState::Failed,
            VersionState::Deleted,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// Metric values by name, as a job reported them with a version.
pub type Metrics = BTreeMap<String, f64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn better_is_strict_and_follows_the_mode() {
        assert!(MetricMode::Min.better(0.1, 0.2));
        assert!(!MetricMode::Min.better(0.2, 0.2));
        assert!(MetricMode::Max.better(0.9, 0.8));
        assert!(!MetricMode::Max.better(0.8, 0.9));
    }

    #[test]
    fn states_round_trip() {
        for state in [
            VersionState::Ready,
            VersionState::Failed,
            VersionState::Deleted,
        ] {
            assert_eq!(VersionState::parse(state.as_str()), Some(state));
        }
        assert_eq!(VersionState::parse("gone"), None);
    }
}
