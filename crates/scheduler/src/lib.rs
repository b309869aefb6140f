//! The scheduler: a pure function from a snapshot of devices, what is already allocated and what
//! asks to run, to a [`Plan`] saying which request goes on which device and, for each one that
//! cannot be placed, a reason a person can read.
//!
//! It does no I/O, keeps no state and knows nothing of processes, ports or the store: the
//! orchestrator builds the snapshot and carries the plan out. That keeps every placement rule
//! testable in thousands of cases a second (see the property tests below).
//!
//! Rules: services' replicas first, in the order given, then jobs by priority (highest first,
//! ties in the order given). A request for no device is always placed. A request with a VRAM
//! budget goes on the GPU where it fits most tightly, else on a free CPU slot (CPU slots stand in
//! for GPUs, so a service written for a GPU still runs on a laptop). A request for a whole device
//! takes a GPU nobody uses, else a free CPU slot. CPU slots are whole-slot resources.
//!
//! **The VRAM ledger:** a GPU's free memory is its total less what its allocations hold and less
//! [`Snapshot::unaccounted`], the memory NVML says is in use outside every Run's reservation
//! (another program's). The caller counts each Run at the larger of its budget and what it
//! really uses, so neither a Run beyond its budget nor another program over-commits a device.
//!
//! **Preemption:** a service replica that fits nowhere (a new version's blue/green replica, a
//! replica whose device is gone, a service's minimum) takes room from preemptible jobs: first it
//! waits for Runs already stopping if their room is enough; otherwise the plan names the
//! preemptible jobs to stop, on the one device where the fewest, lowest-priority ones make it
//! fit. The replica itself is placed by a later plan, once they have stopped. Jobs never preempt.

use std::collections::BTreeMap;

use domain::{ByteSize, Device, DeviceId, DeviceKind, ResourceRequest};

/// Something already holding (part of) a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub device: DeviceId,
    /// `None`: the whole device.
    pub vram: Option<ByteSize>,
    /// Who holds it, for reasons shown to people (`web-3`); also names it in [`Preemption`].
    pub holder: String,
    /// The priority of the preemptible job holding it; `None` for anything that may not be
    /// preempted (a service replica, a job that is not preemptible).
    pub preemptible: Option<i32>,
    /// It is being stopped: its room comes back soon, and preempting it again would be moot.
    pub stopping: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestClass {
    Service,
    Job { priority: i32 },
}

/// A Run that wants to start. `key` is the caller's handle for it and comes back in the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<K> {
    pub key: K,
    pub resources: ResourceRequest,
    pub class: RequestClass,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot<K> {
    pub devices: Vec<Device>,
    pub allocations: Vec<Allocation>,
    pub requests: Vec<Request<K>>,
    /// VRAM in use on a GPU that no allocation accounts for (processes Flowers did not start),
    /// as last read from NVML. Missing devices have none.
    pub unaccounted: BTreeMap<DeviceId, ByteSize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement<K> {
    pub key: K,
    /// `None` for a request of no device.
    pub device: Option<DeviceId>,
    /// The VRAM reserved on a GPU; `None` for a whole device, a CPU slot or no device.
    pub vram: Option<ByteSize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting<K> {
    pub key: K,
    /// Why it cannot be placed now, e.g. `needs 6.0GiB of VRAM on one device; largest free is
    /// 3.1GiB on gpu1`.
    pub reason: String,
}

/// A preemptible job's Run to stop so that a waiting service replica fits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preemption<K> {
    /// The [`Allocation::holder`] to stop.
    pub holder: String,
    /// The request it makes room for.
    pub for_key: K,
    pub device: DeviceId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<K> {
    pub placements: Vec<Placement<K>>,
    /// Requests not placed now. A service request that preemption (or a Run already stopping)
    /// will make room for is here too, with a reason that says so.
    pub waiting: Vec<Waiting<K>>,
    pub preemptions: Vec<Preemption<K>>,
}

/// What is left of one device while a plan is being made.
#[derive(Clone)]
struct Room<'a> {
    device: &'a Device,
    whole_taken_by: Option<String>,
    vram_reserved: ByteSize,
    /// In use outside Flowers ([`Snapshot::unaccounted`]); never released by a plan.
    vram_unaccounted: ByteSize,
    holders: Vec<String>,
}

impl Room<'_> {
    fn is_free(&self) -> bool {
        self.whole_taken_by.is_none() && self.holders.is_empty()
    }
    fn free_vram(&self) -> Option<ByteSize> {
        if self.whole_taken_by.is_some() {
            return Some(ByteSize(0));
        }
        self.device.memory_total.map(|total| {
            total
                .saturating_sub(self.vram_reserved)
                .saturating_sub(self.vram_unaccounted)
        })
    }
}

/// Every device of the snapshot with nothing allocated yet, apart from what is in use outside
/// Flowers.
fn empty_rooms<K>(snapshot: &Snapshot<K>) -> BTreeMap<&DeviceId, Room<'_>> {
    snapshot
        .devices
        .iter()
        .map(|device| {
            (
                &device.id,
                Room {
                    device,
                    whole_taken_by: None,
                    vram_reserved: ByteSize(0),
                    vram_unaccounted: snapshot
                        .unaccounted
                        .get(&device.id)
                        .copied()
                        .unwrap_or_default(),
                    holders: Vec::new(),
                },
            )
        })
        .collect()
}

pub fn plan<K: Clone>(snapshot: &Snapshot<K>) -> Plan<K> {
    let mut rooms = empty_rooms(snapshot);
    for allocation in &snapshot.allocations {
        // An allocation on a device that has disappeared holds nothing we can place on.
        if let Some(room) = rooms.get_mut(&allocation.device) {
            take(room, allocation.vram, &allocation.holder);
        }
    }

    let mut order: Vec<&Request<K>> = snapshot.requests.iter().collect();
    // Stable sort: services keep their given order and come first; jobs by priority.
    order.sort_by_key(|request| match request.class {
        RequestClass::Service => (0, 0),
        RequestClass::Job { priority } => (1, -(priority as i64)),
    });

    let mut placements = Vec::new();
    let mut waiting = Vec::new();
    let mut unplaced_services = Vec::new();
    for (position, request) in order.into_iter().enumerate() {
        let holder = format!("request {position}");
        match choose(&rooms, &request.resources) {
            Choice::NoDevice => placements.push(Placement {
                key: request.key.clone(),
                device: None,
                vram: None,
            }),
            Choice::On(device_id, vram) => {
                let room = rooms
                    .get_mut(&device_id)
                    .expect("choose returns a device of the snapshot");
                take(room, vram, &holder);
                placements.push(Placement {
                    key: request.key.clone(),
                    device: Some(device_id),
                    vram,
                });
            }
            Choice::Nowhere(reason) => {
                if request.class == RequestClass::Service {
                    unplaced_services.push((request, reason));
                } else {
                    waiting.push(Waiting {
                        key: request.key.clone(),
                        reason,
                    });
                }
            }
        }
    }
    let preemptions = make_room(snapshot, &placements, unplaced_services, &mut waiting);
    Plan {
        placements,
        waiting,
        preemptions,
    }
}

/// The rooms as they will be once every Run already stopping is gone and `placements` are
/// made: what unplaced service requests can count on without preempting anything new.
fn rooms_after<'a, K>(
    snapshot: &'a Snapshot<K>,
    placements: &[Placement<K>],
) -> BTreeMap<&'a DeviceId, Room<'a>> {
    let mut rooms = empty_rooms(snapshot);
    for allocation in snapshot.allocations.iter().filter(|a| !a.stopping) {
        if let Some(room) = rooms.get_mut(&allocation.device) {
            take(room, allocation.vram, &allocation.holder);
        }
    }
    for placement in placements {
        let Some(device) = &placement.device else {
            continue;
        };
        if let Some(room) = rooms.get_mut(device) {
            take(room, placement.vram, "placed now");
        }
    }
    rooms
}

/// For each service request that fits nowhere: wait for Runs already stopping if that is
/// enough, else preempt the fewest, lowest-priority preemptible jobs on one device.
fn make_room<K: Clone>(
    snapshot: &Snapshot<K>,
    placements: &[Placement<K>],
    unplaced: Vec<(&Request<K>, String)>,
    waiting: &mut Vec<Waiting<K>>,
) -> Vec<Preemption<K>> {
    let mut preemptions = Vec::new();
    if unplaced.is_empty() {
        return preemptions;
    }
    let mut future = rooms_after(snapshot, placements);
    // Allocations that may still be preempted, lowest priority first (ties: given order).
    let mut candidates: Vec<&Allocation> = snapshot
        .allocations
        .iter()
        .filter(|a| !a.stopping && a.preemptible.is_some())
        .collect();
    candidates.sort_by_key(|a| a.preemptible);
    let mut taken: Vec<&str> = Vec::new();

    for (position, (request, reason)) in unplaced.into_iter().enumerate() {
        let holder = format!("unplaced {position}");
        // 1. Room that Runs already stopping will give back.
        if let Choice::On(device, vram) = choose(&future, &request.resources) {
            if let Some(room) = future.get_mut(&device) {
                take(room, vram, &holder);
            }
            let on_device: Vec<&str> = snapshot
                .allocations
                .iter()
                .filter(|a| a.stopping && a.device == device)
                .map(|a| a.holder.as_str())
                .collect();
            waiting.push(Waiting {
                key: request.key.clone(),
                reason: format!("waiting for {} to stop", on_device.join(", ")),
            });
            continue;
        }
        // 2. The device where the fewest, lowest-priority preemptible jobs make it fit.
        let mut best: Option<(DeviceId, Vec<&Allocation>)> = None;
        for device in &snapshot.devices {
            let mut victims: Vec<&Allocation> = Vec::new();
            let mut fits = false;
            for candidate in candidates
                .iter()
                .filter(|a| a.device == device.id && !taken.contains(&a.holder.as_str()))
            {
                victims.push(candidate);
                // The device as it will be, earlier decisions of this pass included, without
                // the victims so far.
                let Some(mut room) = future.get(&device.id).cloned() else {
                    break;
                };
                for victim in &victims {
                    release(&mut room, victim);
                }
                let only_here = BTreeMap::from([(&device.id, room)]);
                if matches!(choose(&only_here, &request.resources), Choice::On(..)) {
                    fits = true;
                    break;
                }
            }
            if !fits {
                continue;
            }
            let better = match &best {
                None => true,
                Some((_, current)) => {
                    let key =
                        |v: &[&Allocation]| (v.iter().filter_map(|a| a.preemptible).max(), v.len());
                    key(&victims) < key(current)
                }
            };
            if better {
                best = Some((device.id.clone(), victims));
            }
        }
        match best {
            Some((device, victims)) => {
                if let Some(room) = future.get_mut(&device) {
                    for victim in &victims {
                        release(room, victim);
                    }
                    let vram = match (room.device.kind, request.resources.vram) {
                        (DeviceKind::Gpu, Some(vram)) => Some(vram),
                        _ => None,
                    };
                    take(room, vram, &holder);
                }
                let names: Vec<&str> = victims.iter().map(|v| v.holder.as_str()).collect();
                for victim in victims {
                    taken.push(victim.holder.as_str());
                    preemptions.push(Preemption {
                        holder: victim.holder.clone(),
                        for_key: request.key.clone(),
                        device: device.clone(),
                    });
                }
                waiting.push(Waiting {
                    key: request.key.clone(),
                    reason: format!("preempting {} on {device} to make room", names.join(", ")),
                });
            }
            None => waiting.push(Waiting {
                key: request.key.clone(),
                reason,
            }),
        }
    }
    preemptions
}

/// Gives back what `allocation` holds on `room`.
fn release(room: &mut Room, allocation: &Allocation) {
    match (room.device.kind, allocation.vram) {
        (DeviceKind::Gpu, Some(vram)) => {
            room.vram_reserved = room.vram_reserved.saturating_sub(vram);
        }
        _ => room.whole_taken_by = None,
    }
    room.holders.retain(|h| h != &allocation.holder);
    if room.holders.is_empty() {
        room.whole_taken_by = None;
    }
}

fn take(room: &mut Room, vram: Option<ByteSize>, holder: &str) {
    match (room.device.kind, vram) {
        (DeviceKind::Gpu, Some(vram)) => {
            room.vram_reserved = ByteSize(room.vram_reserved.0 + vram.0)
        }
        _ => room.whole_taken_by = Some(holder.to_string()),
    }
    room.holders.push(holder.to_string());
}

enum Choice {
    NoDevice,
    On(DeviceId, Option<ByteSize>),
    Nowhere(String),
}

fn choose(rooms: &BTreeMap<&DeviceId, Room>, request: &ResourceRequest) -> Choice {
    if request.devices == 0 {
        return Choice::NoDevice;
    }
    if rooms.is_empty() {
        return Choice::Nowhere(
            "needs 1 device; this machine has none (no GPU found and cpu_slots = 0)".into(),
        );
    }
    let gpus = rooms.values().filter(|r| r.device.kind == DeviceKind::Gpu);
    let free_cpu = rooms
        .values()
        .find(|r| r.device.kind == DeviceKind::Cpu && r.is_free());
    match request.vram {
        Some(vram) => {
            // Best fit: the GPU left with the least free memory after placing, so large
            // budgets still find room later.
            let best_gpu = gpus
                .filter(|r| r.free_vram().is_some_and(|free| free >= vram))
                .min_by_key(|r| r.free_vram().map(|free| free.0 - vram.0));
            if let Some(room) = best_gpu {
                return Choice::On(room.device.id.clone(), Some(vram));
            }
            if let Some(room) = free_cpu {
                return Choice::On(room.device.id.clone(), None);
            }
            Choice::Nowhere(explain(rooms, Some(vram)))
        }
        None => {
            // Of the free GPUs, the one with the least memory to offer: larger ones stay for
            // the VRAM budgets that need them (as best fit does for budgets).
            let free_gpu = gpus
                .filter(|r| r.is_free())
                .min_by_key(|r| r.free_vram().map_or(0, |free| free.0));
            match free_gpu.or(free_cpu) {
                Some(room) => Choice::On(room.device.id.clone(), None),
                None => Choice::Nowhere(explain(rooms, None)),
            }
        }
    }
}

fn explain(rooms: &BTreeMap<&DeviceId, Room>, vram: Option<ByteSize>) -> String {
    let largest_gpu = rooms
        .values()
        .filter(|r| r.device.kind == DeviceKind::Gpu)
        .filter_map(|r| r.free_vram().map(|free| (free, &r.device.id)))
        .max_by_key(|(free, _)| *free);
    let taken: Vec<String> = rooms
        .values()
        .map(|r| {
            let label = if r.device.kind == DeviceKind::Cpu {
                "taken".to_string()
            } else {
                match r.free_vram() {
                    Some(free) => format!("{free} free"),
                    None => "taken".to_string(),
                }
            };
            format!("{} {label}", r.device.id)
        })
        .collect();
    match (vram, largest_gpu) {
        (Some(vram), Some((free, id))) => format!(
            "needs {vram} of VRAM on one device; largest free is {free} on {id}, and no CPU slot is free{}",
            used_outside(rooms, vram)
        ),
        (Some(vram), None) => {
            format!("needs {vram} of VRAM or a free CPU slot; none is free ({})", taken.join(", "))
        }
        (None, _) => format!(
            "needs 1 whole device; all {} are taken ({})",
            rooms.len(),
            taken.join(", ")
        ),
    }
}

/// `; 7.0GiB on gpu0 is used outside Flowers` when memory in use outside Flowers is what keeps
/// `vram` off some GPU (it would fit there otherwise); empty when it does not matter.
fn used_outside(rooms: &BTreeMap<&DeviceId, Room>, vram: ByteSize) -> String {
    let blocking: Vec<String> = rooms
        .values()
        .filter(|r| r.device.kind == DeviceKind::Gpu && r.whole_taken_by.is_none())
        .filter(|r| r.vram_unaccounted > ByteSize(0))
        .filter(|r| {
            r.device
                .memory_total
                .is_some_and(|total| total.saturating_sub(r.vram_reserved) >= vram)
        })
        .map(|r| format!("{} on {}", r.vram_unaccounted, r.device.id))
        .collect();
    match blocking.len() {
        0 => String::new(),
        1 => format!("; {} is used outside Flowers", blocking[0]),
        _ => format!("; {} are used outside Flowers", blocking.join(" and ")),
    }
}

#[cfg(test)]
mod tests;
