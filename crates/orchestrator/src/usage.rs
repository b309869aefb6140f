//! The VRAM ledger's second column: what NVML says is in use on each GPU, next to what Flowers
//! reserved. The binary reads NVML (this crate never does) and charges each process's memory to
//! the Run whose process group it is in; the loop keeps the latest reading here, counts every
//! Run at the larger of its budget and its real use when it plans, counts the rest as used
//! outside Flowers, and reports a Run that goes beyond its budget (it is not stopped for it).

use std::collections::{BTreeMap, BTreeSet};

use domain::{ByteSize, DeviceId, EventKind, NewEvent, RunId};
use store::RunRecord;

/// One reading of the GPUs' memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceUsage {
    /// The GPUs that could be read. The ledger keeps the last reading of one missing here (NVML
    /// failed this time, or it is gone), so that a failed read never makes room appear.
    pub devices: BTreeMap<DeviceId, GpuUsage>,
}

/// One GPU's memory, as NVML reports it, charged to Runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuUsage {
    /// The whole card's use (the driver's own share included) and its size.
    pub used: Option<ByteSize>,
    pub total: Option<ByteSize>,
    /// The memory of each Run's processes on this GPU.
    pub runs: BTreeMap<RunId, ByteSize>,
    /// The memory of processes that are in no Run's process group.
    pub foreign: ByteSize,
}

impl DeviceUsage {
    /// What `record`'s processes use on its GPU; `None` without a reading of that GPU.
    pub fn used_by(&self, record: &RunRecord) -> Option<ByteSize> {
        let gpu = self.devices.get(record.device.as_ref()?)?;
        Some(gpu.runs.get(&record.id).copied().unwrap_or_default())
    }

    /// Memory in use outside every Run's reservation, per GPU.
    pub fn foreign(&self) -> BTreeMap<DeviceId, ByteSize> {
        self.devices
            .iter()
            .map(|(device, gpu)| (device.clone(), gpu.foreign))
            .collect()
    }
}

/// A reading that moved less than this from the one before keeps the earlier value: use jitters
/// by a few MiB, and a waiting Run's reason (and its event) should change only when the room does.
const SETTLE: ByteSize = ByteSize(64 * ByteSize::MIB);

/// The latest reading and which Runs were reported beyond their budget.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    reading: DeviceUsage,
    over_budget: BTreeSet<RunId>,
}

impl Ledger {
    /// Takes a new reading; values within [`SETTLE`] of the previous ones keep those, and a GPU
    /// it lacks keeps its previous reading.
    pub(crate) fn record(&mut self, reading: DeviceUsage) {
        let settled: Vec<(DeviceId, GpuUsage)> = reading
            .devices
            .into_iter()
            .map(|(device, gpu)| {
                let before = self.reading.devices.get(&device);
                let runs = gpu
                    .runs
                    .into_iter()
                    .map(|(run, used)| {
                        let earlier = before.and_then(|b| b.runs.get(&run).copied());
                        (run, settle(earlier, used))
                    })
                    .collect();
                let gpu = GpuUsage {
                    used: gpu
                        .used
                        .map(|used| settle(before.and_then(|b| b.used), used)),
                    total: gpu.total,
                    runs,
                    foreign: settle(before.map(|b| b.foreign), gpu.foreign),
                };
                (device, gpu)
            })
            .collect();
        self.reading.devices.extend(settled);
    }

    /// The reading as the scheduler counts it, given the Runs alive now: a Run's use on its own
    /// GPU is its own; a live Run's process on a GPU it was not given is foreign there; the
    /// memory of a Run that has ended went with its processes.
    pub(crate) fn counted(&self, runs: &[&RunRecord]) -> DeviceUsage {
        let devices = self
            .reading
            .devices
            .iter()
            .map(|(device, gpu)| {
                let mut counted = GpuUsage {
                    runs: BTreeMap::new(),
                    ..gpu.clone()
                };
                for (run, used) in &gpu.runs {
                    match runs.iter().find(|r| &r.id == run) {
                        Some(record) if record.device.as_ref() == Some(device) => {
                            counted.runs.insert(run.clone(), *used);
                        }
                        Some(_) => counted.foreign = ByteSize(counted.foreign.0 + used.0),
                        None => {}
                    }
                }
                (device.clone(), counted)
            })
            .collect();
        DeviceUsage { devices }
    }

    /// An event for each Run that went beyond its VRAM budget since the last call; a Run is
    /// reported again only after a reading found it back within its budget.
    pub(crate) fn crossings(&mut self, runs: &[&RunRecord]) -> Vec<NewEvent> {
        let counted = self.counted(runs);
        let mut events = Vec::new();
        for record in runs {
            let (Some(device), Some(budget)) = (&record.device, record.vram_reserved) else {
                continue;
            };
            let Some(used) = counted.used_by(record) else {
                continue;
            };
            if used <= budget {
                self.over_budget.remove(&record.id);
            } else if self.over_budget.insert(record.id.clone()) {
                events.push(
                    NewEvent::new(
                        EventKind::VramBudgetExceeded,
                        format!(
                            "{} uses {used} of VRAM on {device}, beyond its {budget} budget",
                            record.id
                        ),
                    )
                    .owner(&record.owner.name)
                    .run(&record.id)
                    .device(device),
                );
            }
        }
        self.over_budget
            .retain(|run| runs.iter().any(|r| &r.id == run));
        events
    }
}

/// What the scheduler holds for a Run: a whole device stays whole (`None`); a budget counts as
/// what the Run really uses when that is more.
pub(crate) fn counted_vram(record: &RunRecord, usage: &DeviceUsage) -> Option<ByteSize> {
    let budget = record.vram_reserved?;
    Some(budget.max(usage.used_by(record).unwrap_or_default()))
}

fn settle(earlier: Option<ByteSize>, now: ByteSize) -> ByteSize {
    match earlier {
        Some(earlier) if earlier.0.abs_diff(now.0) < SETTLE.0 => earlier,
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use domain::{Name, OwnerKind, RunOwner, RunState};

    use super::*;

    fn run(id: &str, device: &str, budget_gib: Option<u64>) -> RunRecord {
        RunRecord {
            id: RunId(id.to_string()),
            owner: RunOwner {
                kind: OwnerKind::Job,
                name: Name::new(id.split('-').next().unwrap()).unwrap(),
                replica: 0,
            },
            state: RunState::Running,
            device: Some(DeviceId(device.to_string())),
            vram_reserved: budget_gib.map(ByteSize::gib),
            port: None,
            pid: Some(100),
            pid_start_ticks: Some(1),
            child_pid: None,
            spec_hash: String::new(),
            run_dir: PathBuf::new(),
            attempt: 1,
            exit: None,
            reason: None,
            created_ms: 0,
            started_ms: None,
            ready_ms: None,
            ended_ms: None,
            model_version: None,
            progress: None,
        }
    }

    fn reading(device: &str, runs: &[(&str, u64)], foreign_mib: u64) -> DeviceUsage {
        DeviceUsage {
            devices: BTreeMap::from([(
                DeviceId(device.to_string()),
                GpuUsage {
                    used: Some(ByteSize::gib(1)),
                    total: Some(ByteSize::gib(8)),
                    runs: runs
                        .iter()
                        .map(|(run, mib)| (RunId(run.to_string()), ByteSize::mib(*mib)))
                        .collect(),
                    foreign: ByteSize::mib(foreign_mib),
                },
            )]),
        }
    }

    #[test]
    fn a_run_is_counted_at_the_larger_of_its_budget_and_its_use() {
        let mut ledger = Ledger::default();
        ledger.record(reading("gpu0", &[("train-4", 5 * 1024), ("web-1", 512)], 0));
        let train = run("train-4", "gpu0", Some(4));
        let web = run("web-1", "gpu0", Some(2));
        let whole = run("big-2", "gpu0", None);
        let usage = ledger.counted(&[&train, &web, &whole]);
        assert_eq!(Ledger::default().counted(&[&train]).used_by(&train), None);
        assert_eq!(counted_vram(&train, &usage), Some(ByteSize::gib(5)));
        assert_eq!(counted_vram(&web, &usage), Some(ByteSize::gib(2)));
        assert_eq!(counted_vram(&whole, &usage), None);
        // No reading of its GPU: the budget alone.
        let elsewhere = run("eval-3", "gpu1", Some(1));
        assert_eq!(counted_vram(&elsewhere, &usage), Some(ByteSize::gib(1)));
        assert_eq!(usage.used_by(&elsewhere), None);
    }

    #[test]
    fn memory_outside_a_runs_own_gpu_is_foreign_and_an_ended_runs_is_gone() {
        let mut ledger = Ledger::default();
        ledger.record(reading(
            "gpu0",
            &[("web-1", 1024), ("stray-2", 2048), ("gone-3", 3072)],
            512,
        ));
        let web = run("web-1", "gpu0", Some(2));
        // A live Run given gpu1 whose process holds memory on gpu0 anyway.
        let stray = run("stray-2", "gpu1", Some(2));
        let usage = ledger.counted(&[&web, &stray]);
        let gpu0 = &usage.devices[&DeviceId::gpu(0)];
        assert_eq!(gpu0.runs.len(), 1);
        assert_eq!(gpu0.foreign, ByteSize::mib(512 + 2048));
        assert_eq!(usage.foreign()[&DeviceId::gpu(0)], ByteSize::mib(2560));
        assert_eq!(usage.used_by(&web), Some(ByteSize::gib(1)));
    }

    #[test]
    fn small_moves_keep_the_earlier_value_and_large_ones_do_not() {
        let mut ledger = Ledger::default();
        ledger.record(reading("gpu0", &[("web-1", 1000)], 1000));
        ledger.record(reading("gpu0", &[("web-1", 1040)], 960));
        let web = run("web-1", "gpu0", Some(2));
        let usage = ledger.counted(&[&web]);
        assert_eq!(usage.used_by(&web), Some(ByteSize::mib(1000)));
        assert_eq!(
            usage.devices[&DeviceId::gpu(0)].foreign,
            ByteSize::mib(1000)
        );
        ledger.record(reading("gpu0", &[("web-1", 1100)], 900));
        let usage = ledger.counted(&[&web]);
        assert_eq!(usage.used_by(&web), Some(ByteSize::mib(1100)));
        assert_eq!(usage.devices[&DeviceId::gpu(0)].foreign, ByteSize::mib(900));
        // A GPU that could not be read this time keeps its last reading.
        ledger.record(DeviceUsage::default());
        assert_eq!(
            ledger.counted(&[&web]).used_by(&web),
            Some(ByteSize::mib(1100))
        );
    }

    #[test]
    fn going_beyond_the_budget_is_reported_once_per_crossing() {
        let mut ledger = Ledger::default();
        let train = run("train-4", "gpu1", Some(4));
        let over = |ledger: &mut Ledger, mib: u64| {
            ledger.record(reading("gpu1", &[("train-4", mib)], 0));
            ledger.crossings(&[&train])
        };
        assert!(over(&mut ledger, 3 * 1024).is_empty());
        let events = over(&mut ledger, 5222);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::VramBudgetExceeded);
        assert_eq!(
            events[0].message,
            "train-4 uses 5.1GiB of VRAM on gpu1, beyond its 4.0GiB budget"
        );
        assert_eq!(events[0].owner.as_deref(), Some("train"));
        assert_eq!(events[0].run.as_deref(), Some("train-4"));
        assert_eq!(events[0].device.as_deref(), Some("gpu1"));
        // Still beyond: nothing new. A failed reading changes nothing either.
        assert!(over(&mut ledger, 6 * 1024).is_empty());
        ledger.record(DeviceUsage::default());
        assert!(ledger.crossings(&[&train]).is_empty());
        assert!(over(&mut ledger, 6 * 1024).is_empty());
        // Back within, then beyond again: reported again.
        assert!(over(&mut ledger, 4 * 1024).is_empty());
        assert_eq!(over(&mut ledger, 6 * 1024).len(), 1);
        // A Run that ended is forgotten; whole-device Runs have no budget to exceed.
        assert!(ledger.crossings(&[]).is_empty());
        assert!(ledger.over_budget.is_empty());
        let whole = run("big-2", "gpu1", None);
        ledger.record(reading("gpu1", &[("big-2", 7 * 1024)], 0));
        assert!(ledger.crossings(&[&whole]).is_empty());
    }
}
