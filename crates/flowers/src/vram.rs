//! Reads the GPUs' memory for the orchestrator's VRAM ledger: NVML's per-process use (the binary
//! owns the NVML handle; the orchestrator never calls NVML), each process charged to the Run
//! whose process group it is in (the supervisor reads `/proc`), the rest counted as foreign.

use std::sync::Arc;
use std::time::Duration;

use domain::{ByteSize, DeviceId, GpuTelemetry, RunId};
use orchestrator::{DeviceUsage, GpuUsage};
use store::{RunFilter, RunRecord};

/// How often the GPUs' memory is read for the ledger.
pub const PERIOD: Duration = Duration::from_secs(2);

/// Each Run with the pid of its monitor, which leads the Run's process group.
fn group_leaders(runs: &[RunRecord]) -> Vec<(RunId, u32)> {
    runs.iter()
        .filter_map(|run| Some((run.id.clone(), run.pid?)))
        .collect()
}

/// Charges each GPU process's memory to the Run whose process group it is in (`leaders`: each
/// Run and its group's leader). A process whose memory NVML does not report counts as none.
pub fn attribute(
    telemetry: &[(DeviceId, Result<GpuTelemetry, String>)],
    leaders: &[(RunId, u32)],
) -> DeviceUsage {
    let leader_pids: Vec<u32> = leaders.iter().map(|(_, pid)| *pid).collect();
    let devices = telemetry
        .iter()
        .filter_map(|(device, reading)| Some((device, reading.as_ref().ok()?)))
        .map(|(device, reading)| {
            let pids: Vec<u32> = reading.processes.iter().map(|p| p.pid).collect();
            let groups = supervisor::group_of_each(&pids, &leader_pids);
            let mut usage = GpuUsage {
                used: reading.memory_used,
                total: reading.memory_total,
                ..GpuUsage::default()
            };
            for (process, group) in reading.processes.iter().zip(groups) {
                let bytes = process.memory_used.unwrap_or_default();
                let counter = match group {
                    Some(index) => usage.runs.entry(leaders[index].0.clone()).or_default(),
                    None => &mut usage.foreign,
                };
                *counter = ByteSize(counter.0 + bytes.0);
            }
            (device.clone(), usage)
        })
        .collect();
    DeviceUsage { devices }
}

/// The reading the orchestrator starts with, charged to the Runs the store lists as not ended
/// (those it is about to adopt or stop). Blocking: NVML and `/proc`.
pub fn first_reading(gpus: &gpu::Gpus, store: &store::Store) -> DeviceUsage {
    if gpus.devices().is_empty() {
        return DeviceUsage::default();
    }
    let runs = store
        .runs(&RunFilter {
            active_only: true,
            ..RunFilter::default()
        })
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot list Runs to charge GPU memory to; all is foreign");
            Vec::new()
        });
    attribute(&gpus.telemetry(), &group_leaders(&runs))
}

/// Reads the GPUs every [`PERIOD`] and hands each reading to the orchestrator, until it stops.
pub async fn follow(gpus: Arc<gpu::Gpus>, orchestrator: orchestrator::Handle) {
    if gpus.devices().is_empty() {
        return;
    }
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let gpus = gpus.clone();
        let handle = orchestrator.clone();
        // NVML first, then the Runs: a Run started before the reading is in the view read after.
        let reading = tokio::task::spawn_blocking(move || {
            let telemetry = gpus.telemetry();
            attribute(&telemetry, &group_leaders(&handle.view().runs))
        })
        .await;
        let Ok(reading) = reading else {
            return;
        };
        if orchestrator.report_device_usage(reading).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::GpuProcess;

    use super::*;

    #[test]
    fn memory_of_processes_outside_every_run_is_foreign_and_a_failed_reading_is_left_out() {
        // This test process stands in for a Run's process: it is in its own process group.
        let me = std::process::id();
        let group = nix::unistd::getpgrp().as_raw() as u32;
        let web = RunId("web-1".into());
        let reading = GpuTelemetry {
            memory_used: Some(ByteSize::gib(3)),
            memory_total: Some(ByteSize::gib(8)),
            processes: vec![
                GpuProcess {
                    pid: me,
                    memory_used: Some(ByteSize::gib(1)),
                },
                // No process has pid 0: another program's, as far as Flowers can tell.
                GpuProcess {
                    pid: 0,
                    memory_used: Some(ByteSize::gib(2)),
                },
                GpuProcess {
                    pid: me,
                    memory_used: None,
                },
            ],
            ..GpuTelemetry::default()
        };
        let usage = attribute(
            &[
                (DeviceId::gpu(0), Ok(reading)),
                (DeviceId::gpu(1), Err("gpu1: gone".into())),
            ],
            &[(web.clone(), group)],
        );
        assert_eq!(usage.devices.len(), 1);
        let gpu0 = &usage.devices[&DeviceId::gpu(0)];
        assert_eq!(gpu0.runs[&web], ByteSize::gib(1));
        assert_eq!(gpu0.foreign, ByteSize::gib(2));
        assert_eq!(gpu0.used, Some(ByteSize::gib(3)));
    }
}
