//! Models, their versions and promotions on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A Model: a named series of versions, one of which is promoted (served) at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub promote: PromoteInfo,
    /// Versions kept on disk, newest first; the promoted one, the one promoted before it and
    /// any being served are kept beyond this.
    pub keep: u32,
    /// The promoted version, if any.
    pub promoted: Option<u32>,
    /// Versions that ready service replicas serve now (two during a promotion).
    pub serving: Vec<u32>,
    /// Versions that still have their files (every state but `deleted`).
    pub versions: u32,
}

/// When a new version becomes the promoted one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromoteInfo {
    /// `manual` (only `flowers models promote`) or `metric` (a version whose metric beats the
    /// promoted one's is promoted as it is registered).
    pub policy: String,
    /// The metric compared, for `metric`.
    pub metric: Option<String>,
    /// `min` (lower is better) or `max`, for `metric`.
    pub mode: Option<String>,
}

/// A model with its versions and the history of its promotions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelDetail {
    pub model: ModelInfo,
    /// Newest first, deleted ones included.
    pub versions: Vec<VersionInfo>,
    /// Newest first, at most 50.
    pub promotions: Vec<PromotionInfo>,
}

/// One immutable version of a model: a directory of files with a `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    pub model: String,
    pub version: u32,
    /// `ready`, `failed` (its replicas never became ready; not promoted automatically again)
    /// or `deleted` (removed by retention; the record stays, the files are gone).
    pub state: String,
    /// `sha256:` over every file's relative path and contents: equal content, equal digest.
    pub digest: String,
    pub files: u64,
    pub size_bytes: u64,
    /// Metric values reported with the version.
    pub metrics: BTreeMap<String, f64>,
    /// The job's Run that registered it; absent for an import.
    pub run: Option<String>,
    /// The job whose Run registered it.
    pub job: Option<String>,
    /// Where it came from: `run RUN_ID`, or the imported path.
    pub source: String,
    /// Why it failed or was deleted.
    pub reason: Option<String>,
    pub created_ms: i64,
    /// The version's directory, `DATA_DIR/models/MODEL/VERSION` (gone once deleted).
    pub path: String,
}

/// One change of the promoted version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromotionInfo {
    pub version: u32,
    /// The version promoted before; absent for the first promotion.
    pub previous: Option<u32>,
    /// Why: the policy's comparison, `promoted by user`, `rolled back from version N`, …
    pub reason: String,
    pub time_ms: i64,
}

/// A new version from files on the machine Flowers runs on: a job registers its checkpoint,
/// or a person imports files. The files are copied; the source is left as it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterVersion {
    /// Absolute path of a file or a directory on this machine. A directory may not have a
    /// `manifest.json` at its top (Flowers writes its own) nor links or special files.
    pub path: String,
    /// Finite numbers by name, compared by a `metric` promotion policy.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The job's Run registering it (its `FLOWERS_RUN_ID`); omitted for an import.
    #[serde(default)]
    pub run: Option<String>,
}

/// What registering a version did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisteredInfo {
    pub version: VersionInfo,
    /// Whether the model's policy promoted it.
    pub promoted: bool,
    /// Why it was or was not promoted, for people.
    pub note: String,
}

/// The version to promote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub version: u32,
}
