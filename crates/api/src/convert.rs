//! Domain and store types to wire types.

use api_types::{
    EventInfo, GpuProcessInfo, JobInfo, ResourcesInfo, RunInfo, ServiceInfo, Telemetry,
};
use domain::{DeviceKind, GpuTelemetry, OwnerKind, ResourceRequest};
use orchestrator::{JobView, ServiceView};
use store::RunRecord;

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
        attempt: record.attempt,
        exit_code: record.exit.map(|e| e.code),
        exit_signal: record.exit.and_then(|e| e.signal),
        reason: record.reason.clone(),
        created_ms: record.created_ms,
        started_ms: record.started_ms,
        ready_ms: record.ready_ms,
        ended_ms: record.ended_ms,
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
            .map(|process| GpuProcessInfo {
                pid: process.pid,
                memory_used_bytes: process.memory_used.map(|v| v.bytes()),
                run: run_of_pid(process.pid, runs),
            })
            .collect(),
    }
}

/// The Run a GPU process belongs to: its command, or a descendant in the Run's process group.
fn run_of_pid(pid: u32, runs: &[RunRecord]) -> Option<String> {
    let group = process_group(pid);
    runs.iter()
        .find(|r| {
            r.child_pid == Some(pid) || r.pid == Some(pid) || (group.is_some() && r.pid == group)
        })
        .map(|r| r.id.to_string())
}

fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(2)?.parse().ok()
}
