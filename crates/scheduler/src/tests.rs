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
        }],
        requests: vec![
            service("small", 1, Some(2)),
            service("big", 1, Some(6)),
            service("huge", 1, Some(7)),
        ],
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
        }],
        requests: vec![service("whole", 1, None)],
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
        }],
        requests: vec![service("web", 1, None)],
    });
    assert_eq!(placed(&plan, "web"), Some(Some(DeviceId::cpu(0))));
}

fn arbitrary_device() -> impl Strategy<Value = (bool, u64)> {
    (any::<bool>(), 1u64..16)
}

proptest! {
    /// No device is ever over-committed: VRAM budgets on a GPU stay within its memory, a whole
    /// device or CPU slot has exactly one holder, and every request is answered exactly once.
    #[test]
    fn never_over_commits(
        devices in proptest::collection::vec(arbitrary_device(), 0..5),
        requests in proptest::collection::vec((0u32..2, proptest::option::of(1u64..10), any::<bool>(), -3i32..3), 0..20),
    ) {
        let devices: Vec<Device> = devices
            .iter()
            .enumerate()
            .map(|(i, (is_gpu, gib))| if *is_gpu { gpu(i as u32, *gib) } else { Device::cpu_slot(i as u32) })
            .collect();
        let requests: Vec<Request<String>> = requests
            .iter()
            .enumerate()
            .map(|(i, (n, vram, is_service, priority))| Request {
                key: format!("r{i}"),
                resources: ResourceRequest { devices: *n, vram: vram.map(ByteSize::gib) },
                class: if *is_service { RequestClass::Service } else { RequestClass::Job { priority: *priority } },
            })
            .collect();
        let plan = plan(&Snapshot { devices: devices.clone(), allocations: vec![], requests: requests.clone() });

        prop_assert_eq!(plan.placements.len() + plan.waiting.len(), requests.len());
        for device in &devices {
            let on_it: Vec<&Placement<String>> = plan.placements.iter().filter(|p| p.device.as_ref() == Some(&device.id)).collect();
            let whole = on_it.iter().filter(|p| p.vram.is_none()).count();
            let vram: u64 = on_it.iter().filter_map(|p| p.vram.map(|v| v.0)).sum();
            match device.kind {
                DeviceKind::Cpu => prop_assert!(on_it.len() <= 1),
                DeviceKind::Gpu => {
                    prop_assert!(whole == 0 || on_it.len() == 1);
                    prop_assert!(vram <= device.memory_total.unwrap().0);
                }
            }
        }
        for request in &requests {
            if request.resources.devices == 0 {
                prop_assert_eq!(placed(&plan, &request.key), Some(None));
            }
        }
    }
}
