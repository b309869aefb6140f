//! Domain and store types to wire types.

use std::path::Path;

use api_types::{
    EventInfo, GpuProcessInfo, JobInfo, ModelInfo, ProgressInfo, PromoteInfo, PromotionInfo,
    ResourcesInfo, RunInfo, ServiceInfo, Telemetry, VersionInfo,
};
use domain::{DeviceKind, GpuTelemetry, OwnerKind, PromotePolicy, ResourceRequest, VersionState};
use orchestrator::{JobView, ModelView, ServiceView};
use store::{Promotion, RunRecord, VersionRecord};

pub fn run(record: &RunRecord) -> RunInfo {
    RunInfo {
        id: record.id.to_string(),
        owner: record.owner.name.to_string(),
        owner_kind: match record.owner.kind {
            OwnerKind::Service => "service",
            OwnerKind::Job => "job",
        }
        .to_string(),
        replica: record.owner.replica,
        state: record.state.as_str().to_string(),
        device: record.device.as_ref().map(|d| d.to_string()),
        vram_bytes: record.vram_reserved.map(|v| v.bytes()),
        port: record.port,
        pid: record.pid,
        child_pid: record.child_pid,
        model_version: record.model_version,
        attempt: record.attempt,
        exit_code: record.exit.map(|e| e.code),
        exit_signal: record.exit.and_then(|e| e.signal),
        reason: record.reason.clone(),
        created_ms: record.created_ms,
        started_ms: record.started_ms,
        ready_ms: record.ready_ms,
        ended_ms: record.ended_ms,
        progress: record.progress.as_ref().map(|p| ProgressInfo {
            step: p.step,
            total: p.total,
            metrics: p.metrics.clone(),
            updated_ms: p.updated_ms,
        }),
    }
}

fn resources(request: &ResourceRequest) -> ResourcesInfo {
    ResourcesInfo {
        devices: request.devices,
        vram_bytes: request.vram.map(|v| v.bytes()),
    }
}

pub fn service(view: &ServiceView, runs: &[RunRecord]) -> ServiceInfo {
    ServiceInfo {
        name: view.spec.name.to_string(),
        state: view.status.as_str().to_string(),
        reason: view.reason.clone(),
        replicas: view.spec.replicas,
        ready_replicas: view.ready,
        consecutive_failures: view.consecutive_failures,
        resources: resources(&view.spec.resources),
        model: view.spec.model.as_ref().map(|m| m.to_string()),
        runs: runs
            .iter()
            .filter(|r| r.owner.kind == OwnerKind::Service && r.owner.name == view.spec.name)
            .map(run)
            .collect(),
    }
}

pub fn job(view: &JobView) -> JobInfo {
    JobInfo {
        name: view.spec.name.to_string(),
        state: view.status.as_str().to_string(),
        reason: view.reason.clone(),
        priority: view.spec.priority,
        preemptible: view.spec.preemptible,
        resources: resources(&view.spec.resources),
        model: view.spec.model.as_ref().map(|m| m.to_string()),
        last_run: view.last_run.as_ref().map(run),
    }
}

/// A model as the view has it; `versions` are its version records (any order).
pub fn model(view: &ModelView, versions: &[VersionRecord]) -> ModelInfo {
    ModelInfo {
        name: view.spec.name.to_string(),
        promote: promote(&view.spec.promote),
        keep: view.spec.keep,
        promoted: view.promoted,
        serving: view.serving.clone(),
        versions: versions
            .iter()
            .filter(|v| v.state != VersionState::Deleted)
            .count() as u32,
    }
}

fn promote(policy: &PromotePolicy) -> PromoteInfo {
    match policy {
        PromotePolicy::Manual => PromoteInfo {
            policy: "manual".to_string(),
            metric: None,
            mode: None,
        },
        PromotePolicy::Metric { metric, mode } => PromoteInfo {
            policy: "metric".to_string(),
            metric: Some(metric.clone()),
            mode: Some(mode.as_str().to_string()),
        },
    }
}

/// `dir`: where the version's files are (see `Handle::version_dir`).
pub fn version(record: &VersionRecord, dir: &Path) -> VersionInfo {
    VersionInfo {
        model: record.model.to_string(),
        version: record.version,
        state: record.state.as_str().to_string(),
        digest: record.digest.clone(),
        files: record.files,
        size_bytes: record.size_bytes,
        metrics: record.metrics.clone(),
        run: record.run.clone(),
        job: record.job.clone(),
        source: record.source.clone(),
        reason: record.reason.clone(),
        created_ms: record.created_ms,
        path: dir.display().to_string(),
    }
}

pub fn promotion(promotion: &Promotion) -> PromotionInfo {
    PromotionInfo {
        version: promotion.version,
        previous: promotion.previous,
        reason: promotion.reason.clone(),
        time_ms: promotion.time_ms,
    }
}

pub fn event(event: &domain::Event) -> EventInfo {
    EventInfo {
        id: event.id,
        time_ms: event.time_ms,
        kind: event.kind.as_str().to_string(),
        owner: event.owner.clone(),
        run: event.run.clone(),
        device: event.device.clone(),
        message: event.message.clone(),
    }
}

pub fn kind(kind: DeviceKind) -> String {
    match kind {
        DeviceKind::Gpu => "gpu",
        DeviceKind::Cpu => "cpu",
    }
    .to_string()
}

pub fn telemetry(reading: &GpuTelemetry, runs: &[RunRecord]) -> Telemetry {
    // A GPU process belongs to the Run whose process group it is in (its command, or anything
    // the command started).
    let pids: Vec<u32> = reading.processes.iter().map(|p| p.pid).collect();
    let leaders: Vec<u32> = runs.iter().map(|r| r.pid.unwrap_or(0)).collect();
    let owners = supervisor::group_of_each(&pids, &leaders);
    Telemetry {
        memory_used_bytes: reading.memory_used.map(|v| v.bytes()),
        utilization_percent: reading.utilization_percent,
        temperature_celsius: reading.temperature_celsius,
        power_draw_watts: reading.power_draw_watts,
        power_limit_watts: reading.power_limit_watts,
        pcie_generation: reading.pcie_generation,
        pcie_link_width: reading.pcie_link_width,
        pcie_max_generation: reading.pcie_max_generation,
        pcie_max_link_width: reading.pcie_max_link_width,
        processes: reading
            .processes
            .iter()
            .zip(owners)
            .map(|(process, owner)| GpuProcessInfo {
                pid: process.pid,
                memory_used_bytes: process.memory_used.map(|v| v.bytes()),
                run: owner.map(|i| runs[i].id.to_string()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{MetricMode, ModelSpec, Name};

    fn record(version: u32, state: VersionState) -> VersionRecord {
        VersionRecord {
            model: Name::new("m").unwrap(),
            version,
            state,
            digest: format!("sha256:{version:064x}"),
            files: 2,
            size_bytes: 10,
            metrics: [("eval_loss".to_string(), 0.25)].into_iter().collect(),
            run: Some("train-3".into()),
            job: Some("train".into()),
            source: "run train-3".into(),
            reason: (state == VersionState::Deleted).then(|| "retention: keep = 1".into()),
            created_ms: 7,
        }
    }

    #[test]
    fn a_model_counts_the_versions_that_keep_their_files_and_names_its_policy() {
        let view = ModelView {
            spec: ModelSpec {
                name: Name::new("m").unwrap(),
                promote: PromotePolicy::Metric {
                    metric: "eval_loss".into(),
                    mode: MetricMode::Min,
                },
                keep: 3,
            },
            promoted: Some(2),
            serving: vec![1, 2],
        };
        let versions = [
            record(3, VersionState::Failed),
            record(2, VersionState::Ready),
            record(1, VersionState::Deleted),
        ];
        let info = model(&view, &versions);
        assert_eq!(info.versions, 2);
        assert_eq!(
            (info.promoted, info.serving.as_slice()),
            (Some(2), &[1, 2][..])
        );
        assert_eq!(
            info.promote,
            PromoteInfo {
                policy: "metric".into(),
                metric: Some("eval_loss".into()),
                mode: Some("min".into()),
            }
        );
        let manual = promote(&PromotePolicy::Manual);
        assert_eq!(
            (manual.policy.as_str(), manual.metric, manual.mode),
            ("manual", None, None)
        );
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["promote"]["mode"], "min");
    }

    #[test]
    fn a_version_keeps_every_field_and_names_its_directory() {
        let info = version(
            &record(1, VersionState::Deleted),
            Path::new("/data/models/m/1"),
        );
        assert_eq!(info.state, "deleted");
        assert_eq!(info.reason.as_deref(), Some("retention: keep = 1"));
        assert_eq!(info.path, "/data/models/m/1");
        assert_eq!(info.metrics["eval_loss"], 0.25);
        assert_eq!(
            (info.run.as_deref(), info.job.as_deref()),
            (Some("train-3"), Some("train"))
        );
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["metrics"], serde_json::json!({ "eval_loss": 0.25 }));
    }
}
