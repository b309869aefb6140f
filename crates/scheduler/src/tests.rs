use proptest::prelude::*;

use super::*;

fn gpu(index: u32, gib: u64) -> Device {
    Device {
        id: DeviceId::gpu(index),
        kind: DeviceKind::Gpu,
        index,
        name: "Test GPU".into(),
        uuid: Some(format!("GPU-{index}")),
        memory_total: Some(ByteSize::gib(gib)),
    }
}

fn service(key: &str, devices: u32, vram_gib: Option<u64>) -> Request<String> {
    Request {
        key: key.to_string(),
        resources: ResourceRequest {
            devices,
            vram: vram_gib.map(ByteSize::gib),
        },
        class: RequestClass::Service,
    }
}

fn job(key: &str, priority: i32, vram_gib: Option<u64>) -> Request<String> {
    Request {
        class: RequestClass::Job { priority },
        ..service(key, 1, vram_gib)
    }
}

fn placed(plan: &Plan<String>, key: &str) -> Option<Option<DeviceId>> {
    plan.placements
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.device.clone())
}

#[test]
fn requests_for_no_device_are_always_placed() {
    let plan = plan(&Snapshot {
        devices: vec![],
        allocations: vec![],
        requests: vec![service("a", 0, None), service("b", 0, None)],
        ..Default::default()
    });
    assert_eq!(placed(&plan, "a"), Some(None));
    assert_eq!(placed(&plan, "b"), Some(None));
    assert!(plan.waiting.is_empty());
}

#[test]
fn cpu_slots_are_whole_and_services_come_before_jobs() {
    let plan = plan(&Snapshot {
        devices: vec![Device::cpu_slot(0), Device::cpu_slot(1)],
        allocations: vec![],
        requests: vec![
            job("train", 10, None),
            service("web", 1, None),
            service("api", 1, Some(2)),
        ],
        ..Default::default()
    });
    assert_eq!(placed(&plan, "web"), Some(Some(DeviceId::cpu(0))));
    assert_eq!(placed(&plan, "api"), Some(Some(DeviceId::cpu(1))));
    assert_eq!(plan.waiting.len(), 1);
    assert_eq!(plan.waiting[0].key, "train");
    assert!(
        plan.waiting[0].reason.contains("all 2 are taken"),
        "{}",
        plan.waiting[0].reason
    );
}

#[test]
fn jobs_are_placed_by_priority() {
    let plan = plan(&Snapshot {
        devices: vec![Device::cpu_slot(0)],
        allocations: vec![],
        requests: vec![job("low", 1, None), job("high", 5, None)],
        ..Default::default()
    });
    assert_eq!(placed(&plan, "high"), Some(Some(DeviceId::cpu(0))));
    assert_eq!(plan.waiting[0].key, "low");
}

#[test]
fn vram_budgets_share_a_gpu_best_fit_and_explain_when_full() {
    let plan = plan(&Snapshot {
        devices: vec![gpu(0, 8), gpu(1, 8)],
        allocations: vec![Allocation {
            device: DeviceId::gpu(1),
            vram: Some(ByteSize::gib(5)),
            holder: "chat-1".into(),
            preemptible: None,
            stopping: false,
        }],
        requests: vec![
            service("small", 1, Some(2)),
            service("big", 1, Some(6)),
            service("huge", 1, Some(7)),
        ],
        ..Default::default()
    });
    // 2 GiB fits tighter on gpu1 (3 GiB free) than gpu0 (8 GiB free).
    assert_eq!(placed(&plan, "small"), Some(Some(DeviceId::gpu(1))));
    assert_eq!(placed(&plan, "big"), Some(Some(DeviceId::gpu(0))));
    assert_eq!(
        plan.waiting[0].reason,
        "needs 7.0GiB of VRAM on one device; largest free is 2.0GiB on gpu0, and no CPU slot is free"
    );
}

#[test]
fn a_whole_device_request_does_not_take_a_shared_gpu() {
    let plan = plan(&Snapshot {
        devices: vec![gpu(0, 8)],
        allocations: vec![Allocation {
            device: DeviceId::gpu(0),
            vram: Some(ByteSize::gib(1)),
            holder: "embed-1".into(),
            preemptible: None,
            stopping: false,
        }],
        requests: vec![service("whole", 1, None)],
        ..Default::default()
    });
    assert!(placed(&plan, "whole").is_none());
    assert!(plan.waiting[0].reason.starts_with("needs 1 whole device"));
}

#[test]
fn allocations_on_vanished_devices_are_ignored() {
    let plan = plan(&Snapshot {
        devices: vec![Device::cpu_slot(0)],
        allocations: vec![Allocation {
            device: DeviceId::gpu(3),
            vram: None,
            holder: "old".into(),
            preemptible: None,
            stopping: false,
        }],
        requests: vec![service("web", 1, None)],
        ..Default::default()
    });
    assert_eq!(placed(&plan, "web"), Some(Some(DeviceId::cpu(0))));
}

fn held(
    device: DeviceId,
    vram_gib: Option<u64>,
    holder: &str,
    preemptible: Option<i32>,
) -> Allocation {
    Allocation {
        device,
        vram: vram_gib.map(ByteSize::gib),
        holder: holder.into(),
        preemptible,
        stopping: false,
    }
}

#[test]
fn a_service_preempts_the_lowest_priority_preemptible_job() {
    // The 2-slot box: web v1 on cpu0, training on cpu1; web v2's blue/green replica needs room.
    let plan = plan(&Snapshot {
        devices: vec![
            Device::cpu_slot(0),
            Device::cpu_slot(1),
            Device::cpu_slot(2),
        ],
        allocations: vec![
            held(DeviceId::cpu(0), None, "web-1", None),
            held(DeviceId::cpu(1), None, "train-2", Some(5)),
            held(DeviceId::cpu(2), None, "sweep-3", Some(-1)),
        ],
        requests: vec![service("web-v2", 1, None), job("eval", 100, None)],
        ..Default::default()
    });
    assert!(plan.placements.is_empty());
    assert_eq!(
        plan.preemptions,
        vec![Preemption {
            holder: "sweep-3".into(),
            for_key: "web-v2".to_string(),
            device: DeviceId::cpu(2),
        }]
    );
    let reasons: Vec<(&str, &str)> = plan
        .waiting
        .iter()
        .map(|w| (w.key.as_str(), w.reason.as_str()))
        .collect();
    assert!(reasons.contains(&("web-v2", "preempting sweep-3 on cpu2 to make room")));
    // A job never preempts, whatever its priority.
    assert!(reasons
        .iter()
        .any(|(k, r)| *k == "eval" && r.starts_with("needs 1 whole device")));
}

#[test]
fn nothing_is_preempted_for_room_that_a_stopping_run_gives_back() {
    let mut stopping = held(DeviceId::cpu(1), None, "train-2", Some(0));
    stopping.stopping = true;
    let plan = plan(&Snapshot {
        devices: vec![
            Device::cpu_slot(0),
            Device::cpu_slot(1),
            Device::cpu_slot(2),
        ],
        allocations: vec![
            held(DeviceId::cpu(0), None, "web-1", None),
            stopping,
            held(DeviceId::cpu(2), None, "sweep-3", Some(-1)),
        ],
        requests: vec![service("web-v2", 1, None)],
        ..Default::default()
    });
    assert!(plan.preemptions.is_empty());
    assert_eq!(plan.waiting[0].reason, "waiting for train-2 to stop");
}

#[test]
fn services_and_unpreemptible_jobs_are_never_preempted() {
    let plan = plan(&Snapshot {
        devices: vec![Device::cpu_slot(0), Device::cpu_slot(1)],
        allocations: vec![
            held(DeviceId::cpu(0), None, "web-1", None),
            held(DeviceId::cpu(1), None, "train-2", None),
        ],
        requests: vec![service("api", 1, None)],
        ..Default::default()
    });
    assert!(plan.preemptions.is_empty());
    assert!(plan.waiting[0].reason.starts_with("needs 1 whole device"));
}

#[test]
fn vram_preemption_takes_the_fewest_lowest_jobs_on_one_gpu() {
    let plan = plan(&Snapshot {
        devices: vec![gpu(0, 8), gpu(1, 8)],
        allocations: vec![
            // gpu0: two small jobs of priority 1 and 2 and a service; freeing 6 GiB takes both.
            held(DeviceId::gpu(0), Some(3), "a-1", Some(1)),
            held(DeviceId::gpu(0), Some(3), "b-2", Some(2)),
            held(DeviceId::gpu(0), Some(2), "svc-3", None),
            // gpu1: one job of priority 3 holding 7 GiB; freeing it alone is enough.
            held(DeviceId::gpu(1), Some(7), "c-4", Some(3)),
        ],
        requests: vec![service("chat", 1, Some(6))],
        ..Default::default()
    });
    // Highest victim priority decides first (2 on gpu0 vs 3 on gpu1).
    let victims: Vec<&str> = plan.preemptions.iter().map(|p| p.holder.as_str()).collect();
    assert_eq!(victims, ["a-1", "b-2"]);
    assert!(plan
        .preemptions
        .iter()
        .all(|p| p.device == DeviceId::gpu(0)));
}

#[test]
fn two_waiting_replicas_do_not_count_on_the_same_freed_room() {
    let plan = plan(&Snapshot {
        devices: vec![Device::cpu_slot(0), Device::cpu_slot(1)],
        allocations: vec![
            held(DeviceId::cpu(0), None, "train-1", Some(0)),
            held(DeviceId::cpu(1), None, "sweep-2", Some(1)),
        ],
        requests: vec![service("web-0", 1, None), service("web-1", 1, None)],
        ..Default::default()
    });
    let victims: Vec<&str> = plan.preemptions.iter().map(|p| p.holder.as_str()).collect();
    assert_eq!(victims, ["train-1", "sweep-2"]);
}

#[test]
fn memory_used_outside_flowers_is_not_free_and_the_reason_says_so() {
    let plan = plan(&Snapshot {
        devices: vec![gpu(0, 8), gpu(1, 8)],
        allocations: vec![held(DeviceId::gpu(1), Some(5), "chat-1", None)],
        requests: vec![service("web", 1, Some(2)), service("big", 1, Some(4))],
        // Another program fills most of gpu0.
        unaccounted: BTreeMap::from([(DeviceId::gpu(0), ByteSize::gib(7))]),
    });
    // 2 GiB fits only beside chat-1; 4 GiB would fit on gpu0 but for the other program.
    assert_eq!(placed(&plan, "web"), Some(Some(DeviceId::gpu(1))));
    assert_eq!(
        plan.waiting[0].reason,
        "needs 4.0GiB of VRAM on one device; largest free is 1.0GiB on gpu1, and no CPU slot is \
         free; 7.0GiB on gpu0 is used outside Flowers"
    );
}

#[test]
fn memory_used_outside_flowers_is_named_only_where_it_keeps_a_request_off() {
    let outside = |gib: u64| BTreeMap::from([(DeviceId::gpu(0), ByteSize::gib(gib))]);
    // Even without the other program 9 GiB would not fit: no word about it.
    let too_big = plan(&Snapshot {
        devices: vec![gpu(0, 8)],
        requests: vec![service("huge", 1, Some(9))],
        unaccounted: outside(1),
        ..Default::default()
    });
    assert_eq!(
        too_big.waiting[0].reason,
        "needs 9.0GiB of VRAM on one device; largest free is 7.0GiB on gpu0, and no CPU slot is free"
    );
    // Two GPUs that both would have room: both named.
    let both = plan(&Snapshot {
        devices: vec![gpu(0, 8), gpu(1, 8)],
        requests: vec![service("web", 1, Some(4))],
        unaccounted: BTreeMap::from([
            (DeviceId::gpu(0), ByteSize::gib(6)),
            (DeviceId::gpu(1), ByteSize::gib(5)),
        ]),
        ..Default::default()
    });
    assert!(
        both.waiting[0]
            .reason
            .ends_with("; 6.0GiB on gpu0 and 5.0GiB on gpu1 are used outside Flowers"),
        "{}",
        both.waiting[0].reason
    );
    // A whole-device request takes a GPU no Run holds, whatever else uses it.
    let whole = plan(&Snapshot {
        devices: vec![gpu(0, 8)],
        requests: vec![service("whole", 1, None)],
        unaccounted: outside(7),
        ..Default::default()
    });
    assert_eq!(placed(&whole, "whole"), Some(Some(DeviceId::gpu(0))));
}

#[test]
fn a_run_counted_beyond_its_budget_leaves_less_room_and_frees_it_when_preempted() {
    // The caller counts train-1 at the 6 GiB it uses, not its 2 GiB budget.
    let plan = plan(&Snapshot {
        devices: vec![gpu(0, 8)],
        allocations: vec![held(DeviceId::gpu(0), Some(6), "train-1", Some(0))],
        requests: vec![service("web", 1, Some(3))],
        unaccounted: BTreeMap::from([(DeviceId::gpu(0), ByteSize::gib(1))]),
    });
    assert!(plan.placements.is_empty());
    assert_eq!(
        plan.preemptions,
        vec![Preemption {
            holder: "train-1".into(),
            for_key: "web".to_string(),
            device: DeviceId::gpu(0),
        }]
    );
}

/// VRAM used outside Flowers on each device, in GiB, in device order.
fn used_outside_flowers(devices: &[Device], gib: &[u64]) -> BTreeMap<DeviceId, ByteSize> {
    devices
        .iter()
        .zip(gib)
        .map(|(device, gib)| (device.id.clone(), ByteSize::gib(*gib)))
        .collect()
}

fn arbitrary_device() -> impl Strategy<Value = (bool, u64)> {
    (any::<bool>(), 1u64..16)
}

proptest! {
    /// No device is ever over-committed: on a GPU, VRAM placed now stays within what its
    /// memory leaves beside the Runs already there (counted as the caller counts them, their
    /// real use included) and the memory used outside Flowers; a whole device or CPU slot has
    /// exactly one holder; every request is answered exactly once.
    #[test]
    fn never_over_commits(
        devices in proptest::collection::vec(arbitrary_device(), 0..5),
        holding in proptest::collection::vec((0usize..5, proptest::option::of(1u64..10)), 0..4),
        outside_gib in proptest::collection::vec(0u64..12, 5),
        requests in proptest::collection::vec((0u32..2, proptest::option::of(1u64..10), any::<bool>(), -3i32..3), 0..20),
    ) {
        let devices: Vec<Device> = devices
            .iter()
            .enumerate()
            .map(|(i, (is_gpu, gib))| if *is_gpu { gpu(i as u32, *gib) } else { Device::cpu_slot(i as u32) })
            .collect();
        // Runs already there may use more than a device has (a Run beyond its budget): the plan
        // must not add to that, but it is not the plan's doing.
        let allocations: Vec<Allocation> = holding
            .iter()
            .enumerate()
            .filter(|(_, (device, _))| *device < devices.len())
            .map(|(i, (device, vram))| held(devices[*device].id.clone(), *vram, &format!("h{i}"), None))
            .collect();
        let unaccounted = used_outside_flowers(&devices, &outside_gib);
        let requests: Vec<Request<String>> = requests
            .iter()
            .enumerate()
            .map(|(i, (n, vram, is_service, priority))| Request {
                key: format!("r{i}"),
                resources: ResourceRequest { devices: *n, vram: vram.map(ByteSize::gib) },
                class: if *is_service { RequestClass::Service } else { RequestClass::Job { priority: *priority } },
            })
            .collect();
        let plan = plan(&Snapshot {
            devices: devices.clone(),
            allocations: allocations.clone(),
            requests: requests.clone(),
            unaccounted: unaccounted.clone(),
        });

        prop_assert_eq!(plan.placements.len() + plan.waiting.len(), requests.len());
        for device in &devices {
            let on_it: Vec<&Placement<String>> = plan.placements.iter().filter(|p| p.device.as_ref() == Some(&device.id)).collect();
            let held_here: Vec<&Allocation> = allocations.iter().filter(|a| a.device == device.id).collect();
            let whole = on_it.iter().filter(|p| p.vram.is_none()).count();
            let vram: u64 = on_it.iter().filter_map(|p| p.vram.map(|v| v.0)).sum();
            match device.kind {
                DeviceKind::Cpu => prop_assert!(on_it.is_empty() || (on_it.len() == 1 && held_here.is_empty())),
                DeviceKind::Gpu => {
                    prop_assert!(whole == 0 || (on_it.len() == 1 && held_here.is_empty()));
                    if vram > 0 {
                        prop_assert!(held_here.iter().all(|a| a.vram.is_some()), "placed beside a whole-device Run");
                        let in_use: u64 = held_here.iter().filter_map(|a| a.vram.map(|v| v.0)).sum::<u64>()
                            + unaccounted[&device.id].0;
                        prop_assert!(vram + in_use <= device.memory_total.unwrap().0);
                    }
                }
            }
        }
        for request in &requests {
            if request.resources.devices == 0 {
                prop_assert_eq!(placed(&plan, &request.key), Some(None));
            }
        }
    }

    /// Preemption stops only preemptible jobs that are not already stopping, each at most once,
    /// only for services; and once the victims and stopping Runs are gone, every service that
    /// asked for them fits, without over-committing a device.
    #[test]
    fn preemption_is_sound(
        devices in proptest::collection::vec(arbitrary_device(), 1..4),
        held_by in proptest::collection::vec((0usize..4, proptest::option::of(1u64..8), proptest::option::of(-3i32..3), any::<bool>()), 0..8),
        requests in proptest::collection::vec((proptest::option::of(1u64..8), any::<bool>()), 1..5),
        outside_gib in proptest::collection::vec(0u64..4, 4),
    ) {
        let devices: Vec<Device> = devices
            .iter()
            .enumerate()
            .map(|(i, (is_gpu, gib))| if *is_gpu { gpu(i as u32, *gib) } else { Device::cpu_slot(i as u32) })
            .collect();
        let unaccounted = used_outside_flowers(&devices, &outside_gib);
        // Existing allocations built by planning them one by one, so they are themselves valid.
        let mut allocations: Vec<Allocation> = Vec::new();
        for (i, (_, vram, preemptible, stopping)) in held_by.iter().enumerate() {
            let one = plan(&Snapshot {
                devices: devices.clone(),
                allocations: allocations.clone(),
                requests: vec![Request {
                    key: i,
                    resources: ResourceRequest { devices: 1, vram: vram.map(ByteSize::gib) },
                    class: RequestClass::Service,
                }],
                unaccounted: unaccounted.clone(),
            });
            if let Some(p) = one.placements.first() {
                allocations.push(Allocation {
                    device: p.device.clone().unwrap(),
                    vram: p.vram,
                    holder: format!("h{i}"),
                    preemptible: *preemptible,
                    stopping: *stopping,
                });
            }
        }
        let requests: Vec<Request<String>> = requests
            .iter()
            .enumerate()
            .map(|(i, (vram, is_service))| Request {
                key: format!("r{i}"),
                resources: ResourceRequest { devices: 1, vram: vram.map(ByteSize::gib) },
                class: if *is_service { RequestClass::Service } else { RequestClass::Job { priority: 0 } },
            })
            .collect();
        let made = plan(&Snapshot { devices: devices.clone(), allocations: allocations.clone(), requests: requests.clone(), unaccounted: unaccounted.clone() });
        let mut seen = std::collections::HashSet::new();
        for preemption in &made.preemptions {
            let victim = allocations.iter().find(|a| a.holder == preemption.holder).unwrap();
            prop_assert!(victim.preemptible.is_some() && !victim.stopping);
            prop_assert_eq!(&victim.device, &preemption.device);
            prop_assert!(seen.insert(preemption.holder.clone()), "preempted twice");
            let asker = requests.iter().find(|r| r.key == preemption.for_key).unwrap();
            prop_assert_eq!(asker.class, RequestClass::Service);
        }
        // The world after: victims and stopping Runs gone, this plan's placements made.
        let mut after: Vec<Allocation> = allocations
            .iter()
            .filter(|a| !a.stopping && !seen.contains(&a.holder))
            .cloned()
            .collect();
        for p in &made.placements {
            after.push(Allocation { device: p.device.clone().unwrap(), vram: p.vram, holder: p.key.clone(), preemptible: None, stopping: false });
        }
        let helped: Vec<Request<String>> = requests
            .iter()
            .filter(|r| made.preemptions.iter().any(|p| p.for_key == r.key))
            .cloned()
            .collect();
        let next = plan(&Snapshot { devices: devices.clone(), allocations: after, requests: helped.clone(), unaccounted });
        prop_assert_eq!(next.placements.len(), helped.len(), "{:?}", next.waiting);
    }
}
