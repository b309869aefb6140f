//! Devices: GPUs through the fake NVML file (the named stand-in for NVML on a machine without
//! a GPU), placement by VRAM budget, the VRAM ledger (what Runs and other programs really use,
//! read from NVML every 2 s), `flowers gpus`, and CPU slots standing in when there is no GPU or
//! the fake file is broken.

use client::{DeviceInfo, RunInfo};

use crate::support::*;

const GIB: u64 = 1 << 30;

/// Two 8 GiB cards like the seed's RTX 3050s, with full readings and one process Flowers did
/// not start.
const TWO_GPUS: &str = r#"{
  "driver_version": "550.54",
  "gpus": [
    {"name": "NVIDIA GeForce RTX 3050", "uuid": "GPU-aaaa-0000", "memory_total": "8GiB",
     "memory_used": "300MiB", "utilization_percent": 7, "temperature_celsius": 41,
     "power_draw_watts": 12.4, "power_limit_watts": 130.0,
     "pcie": {"generation": 4, "width": 8, "max_generation": 4, "max_width": 8},
     "processes": [{"pid": 4242, "memory_used": "200MiB"}]},
    {"name": "NVIDIA GeForce RTX 3050", "uuid": "GPU-bbbb-1111", "memory_total": "8GiB",
     "memory_used": "1GiB", "utilization_percent": 55, "temperature_celsius": 63,
     "power_draw_watts": 70.0, "power_limit_watts": 130.0,
     "pcie": {"generation": 3, "width": 4, "max_generation": 4, "max_width": 16},
     "processes": []}
  ]
}"#;

/// Writes the fake NVML file outside the server's directory; keep the guard alive.
fn fake_nvml(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("nvml.json");
    std::fs::write(&path, text).expect("fake NVML written");
    let path = path.to_string_lossy().into_owned();
    (dir, path)
}

/// Replaces the fake NVML file at once (write, then rename), so Flowers never reads half of it.
fn rewrite_fake(path: &str, text: &str) {
    let staging = format!("{path}.new");
    std::fs::write(&staging, text).expect("fake NVML written");
    std::fs::rename(&staging, path).expect("fake NVML replaced");
}

/// One 8 GiB card; `processes` is the JSON list of its processes.
fn one_gpu(processes: &str) -> String {
    format!(
        r#"{{"gpus": [{{"uuid": "GPU-cccc-2222", "memory_total": "8GiB", "memory_used": "1GiB",
                     "processes": [{processes}]}}]}}"#
    )
}

/// Waits until the control API shows device `index` (in `/v1/devices` order) as `check` wants:
/// the ledger reads the GPUs every 2 s.
async fn device_when<F>(server: &TestServer, index: usize, what: &str, check: F) -> DeviceInfo
where
    F: Fn(&DeviceInfo) -> bool,
{
    let check = &check;
    server
        .eventually(what, || async move {
            let devices = server.client.devices().await.ok()?;
            let device = devices.devices.into_iter().nth(index)?;
            check(&device).then_some(device)
        })
        .await
}

fn on(runs: &[RunInfo], device: &str) -> usize {
    runs.iter()
        .filter(|r| r.device.as_deref() == Some(device))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_placed_on_fake_gpus_by_vram_budget_and_gpus_shows_them() {
    let (_fake, path) = fake_nvml(TWO_GPUS);
    let body = format!(
        "[devices]\ncpu_slots = 0\n{}",
        service("web", "replicas = 3\ndevices = 1\nvram = \"3GiB\"")
    );
    let server = TestServer::start_with_env(&body, &[("FLOWERS_FAKE_NVML", &path)]).await;
    let runs = server.ready_runs("web", 3).await;

    // Best fit: the second replica goes where the least room is left (gpu0), the third no
    // longer fits there.
    assert_eq!(on(&runs, "gpu0"), 2);
    assert_eq!(on(&runs, "gpu1"), 1);
    for run in &runs {
        assert_eq!(run.vram_bytes, Some(3 * GIB));
        let env = get_json(run.port.unwrap(), "/env").await.unwrap();
        let device = run.device.clone().unwrap();
        let uuid = if device == "gpu0" {
            "GPU-aaaa-0000"
        } else {
            "GPU-bbbb-1111"
        };
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], uuid);
        assert_eq!(env["FLOWERS_DEVICE"], device);
    }
    let started = server.events_matching("web", "run_started", 3).await;
    assert!(
        started[0].message.contains(", 3.0GiB VRAM (pid "),
        "{}",
        started[0].message
    );

    let devices = server.client.devices().await.unwrap();
    assert_eq!(devices.gpu_source, "fake");
    assert_eq!(devices.gpu_status, format!("fake NVML from {path}"));
    let ids: Vec<&str> = devices.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["gpu0", "gpu1"]);
    for (device, count) in devices.devices.iter().zip([2u64, 1]) {
        assert_eq!(device.kind, "gpu");
        assert_eq!(device.memory_total_bytes, Some(8 * GIB));
        assert_eq!(device.allocated_vram_bytes, Some(count * 3 * GIB));
        // Nothing of the Runs' shows in NVML yet; pid 4242 on gpu0 is another program's.
        assert!(device
            .allocations
            .iter()
            .all(|a| a.vram_used_bytes == Some(0)));
        assert_eq!(device.allocations.len() as u64, count);
        assert!(device
            .allocations
            .iter()
            .all(|a| a.owner == "web" && a.vram_bytes == Some(3 * GIB)));
        assert!(device.telemetry.is_some(), "{:?}", device.telemetry_error);
    }
    assert_eq!(devices.devices[0].foreign_vram_bytes, Some(200 << 20));
    assert_eq!(devices.devices[1].foreign_vram_bytes, Some(0));
    let gpu0 = &devices.devices[0];
    assert_eq!(gpu0.uuid.as_deref(), Some("GPU-aaaa-0000"));
    let telemetry = gpu0.telemetry.as_ref().unwrap();
    assert_eq!(telemetry.memory_used_bytes, Some(300 << 20));
    assert_eq!(telemetry.utilization_percent, Some(7));
    assert_eq!(telemetry.processes.len(), 1);
    assert_eq!(telemetry.processes[0].pid, 4242);
    assert_eq!(telemetry.processes[0].run, None);

    let (code, out, err) = server.cli(&["gpus"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("GPUs: fake NVML from {path}"));
    for header in [
        "DEVICE",
        "NAME",
        "MEMORY USED/TOTAL",
        "UTIL",
        "TEMP",
        "POWER",
        "PCIE",
        "ALLOCATED",
        "FOREIGN",
        "RUNS",
    ] {
        assert!(lines[1].contains(header), "{out}");
    }
    let row = |id: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id} row:\n{out}"))
    };
    let gpu0_row = row("gpu0");
    for cell in [
        "NVIDIA GeForce RTX 3050",
        "300MiB / 8.0GiB",
        "7%",
        "41C",
        "12W / 130W",
        "Gen4 x8",
        "6.0GiB / 8.0GiB",
        "200MiB",
    ] {
        assert!(gpu0_row.contains(cell), "{cell:?} missing in {gpu0_row:?}");
    }
    assert!(!gpu0_row.contains("max"), "{gpu0_row}");
    let gpu1_row = row("gpu1");
    for cell in [
        "1.0GiB / 8.0GiB",
        "55%",
        "63C",
        "70W / 130W",
        "Gen3 x4 (max Gen4 x16)",
        "3.0GiB / 8.0GiB",
    ] {
        assert!(gpu1_row.contains(cell), "{cell:?} missing in {gpu1_row:?}");
    }
    for run in &runs {
        let cell = format!("{} (3.0GiB reserved, 0B used)", run.id);
        let row = row(run.device.as_deref().unwrap());
        assert!(row.contains(&cell), "{cell:?} missing in {row:?}");
    }
    let processes = lines
        .iter()
        .position(|l| *l == "PROCESSES")
        .unwrap_or_else(|| panic!("no processes section:\n{out}"));
    assert!(
        lines[processes + 1..].contains(&"  gpu0: pid 4242 uses 200MiB (not started by Flowers)"),
        "{out}"
    );

    // The fake is read again at each call: a process of a Run shows which Run it is.
    let lone = runs
        .iter()
        .find(|r| r.device.as_deref() == Some("gpu1"))
        .unwrap();
    let child = lone.child_pid.unwrap();
    rewrite_fake(
        &path,
        &TWO_GPUS.replace(
            "\"processes\": []",
            &format!("\"processes\": [{{\"pid\": {child}, \"memory_used\": \"2GiB\"}}]"),
        ),
    );
    let (code, out, err) = server.cli(&["gpus"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l == format!("  gpu1: pid {child} uses 2.0GiB (run {})", lone.id)),
        "{out}"
    );
    let devices = server.client.devices().await.unwrap();
    let processes = &devices.devices[1].telemetry.as_ref().unwrap().processes;
    assert_eq!(processes.len(), 1);
    assert_eq!(processes[0].run.as_deref(), Some(lone.id.as_str()));
    assert_eq!(processes[0].memory_used_bytes, Some(2 * GIB));

    // The ledger's next reading charges the 2 GiB to the Run, within its 3 GiB budget.
    device_when(&server, 1, "gpu1's Run to use 2 GiB", |gpu1| {
        gpu1.allocations[0].vram_used_bytes == Some(2 * GIB)
    })
    .await;
    let (code, out, err) = server.cli(&["gpus", "--json"]);
    assert_eq!(code, 0, "{err}");
    let parsed: client::DevicesResponse = serde_json::from_str(&out).expect("JSON");
    assert_eq!(parsed.devices.len(), 2);
    assert_eq!(parsed.devices[0].allocated_vram_bytes, Some(6 * GIB));
    assert_eq!(parsed.devices[1].foreign_vram_bytes, Some(0));
    let allocation = &parsed.devices[1].allocations[0];
    assert_eq!(
        (allocation.vram_bytes, allocation.vram_used_bytes),
        (Some(3 * GIB), Some(2 * GIB))
    );
    let (code, out, err) = server.cli(&["gpus"]);
    assert_eq!(code, 0, "{err}");
    let cell = format!("{} (3.0GiB reserved, 2.0GiB used)", lone.id);
    assert!(out.contains(&cell), "{cell:?} missing in:\n{out}");
    assert!(server
        .client
        .events(Some(0), Some("web"), 1000)
        .await
        .unwrap()
        .iter()
        .all(|e| e.kind != "vram_budget_exceeded"));
}

/// A `[jobs.NAME]` table running the workload without its HTTP server, plus `extra` lines.
fn job(name: &str, extra: &str) -> String {
    format!(
        r#"
[jobs.{name}]
command = ["python3", "-u", "{WORKLOAD}"]
env = {{ WORKLOAD_NO_SERVER = "1" }}
devices = 1
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_beyond_its_budget_is_reported_at_each_crossing_counted_at_its_use_and_kept() {
    let (_fake, path) = fake_nvml(&one_gpu(""));
    let body = format!(
        "[devices]\ncpu_slots = 0\n{}{}",
        job("train", "vram = \"2GiB\"\nautostart = true"),
        job("eval", "vram = \"5.5GiB\""),
    );
    let server = TestServer::start_with_env(&body, &[("FLOWERS_FAKE_NVML", &path)]).await;
    let train = server
        .eventually("train's Run to start", || async {
            let run = server.client.job("train").await.ok()?.last_run?;
            run.child_pid.is_some().then_some(run)
        })
        .await;
    assert_eq!(train.device.as_deref(), Some("gpu0"));
    let child = train.child_pid.unwrap();
    let uses = |gib: u64| format!(r#"{{"pid": {child}, "memory_used": "{gib}GiB"}}"#);

    // Its command grows beyond the 2 GiB budget: one event, the Run keeps running.
    rewrite_fake(&path, &one_gpu(&uses(3)));
    let exceeded = server.event("train", "vram_budget_exceeded").await;
    assert_eq!(
        exceeded.message,
        format!(
            "{} uses 3.0GiB of VRAM on gpu0, beyond its 2.0GiB budget",
            train.id
        )
    );
    assert_eq!(exceeded.run.as_deref(), Some(train.id.as_str()));
    assert_eq!(exceeded.device.as_deref(), Some("gpu0"));
    assert!(process_alive(child));
    let now = server.client.job("train").await.unwrap();
    assert_eq!(now.state, "running");
    assert_eq!(now.last_run.map(|r| r.id), Some(train.id.clone()));

    let (code, out, err) = server.cli(&["gpus", "--json"]);
    assert_eq!(code, 0, "{err}");
    let parsed: client::DevicesResponse = serde_json::from_str(&out).expect("JSON");
    let allocation = &parsed.devices[0].allocations[0];
    assert_eq!(allocation.run, train.id);
    assert_eq!(
        (allocation.vram_bytes, allocation.vram_used_bytes),
        (Some(2 * GIB), Some(3 * GIB))
    );
    assert_eq!(parsed.devices[0].allocated_vram_bytes, Some(2 * GIB));
    let (code, out, err) = server.cli(&["gpus"]);
    assert_eq!(code, 0, "{err}");
    let cell = format!("{} (2.0GiB reserved, 3.0GiB used, over budget)", train.id);
    assert!(out.contains(&cell), "{cell:?} missing in:\n{out}");

    // The scheduler counts what it uses: 5.5 GiB would fit beside its budget, not beside its use.
    let (code, _, err) = server.cli(&["run", "eval"]);
    assert_eq!(code, 0, "{err}");
    let eval = server
        .eventually("eval to wait", || async {
            let job = server.client.job("eval").await.ok()?;
            (job.state == "waiting").then_some(job)
        })
        .await;
    assert_eq!(
        eval.reason.as_deref(),
        Some("needs 5.5GiB of VRAM on one device; largest free is 5.0GiB on gpu0, and no CPU slot is free")
    );

    // Back within its budget: the room comes back, and a new crossing is reported again.
    rewrite_fake(&path, &one_gpu(&uses(1)));
    server
        .eventually("eval to be placed", || async {
            let job = server.client.job("eval").await.ok()?;
            (job.state == "running").then_some(())
        })
        .await;
    rewrite_fake(&path, &one_gpu(&uses(3)));
    let twice = server
        .events_matching("train", "vram_budget_exceeded", 2)
        .await;
    assert_eq!(twice[1].message, exceeded.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_another_program_uses_makes_a_replica_wait_with_the_reason() {
    // Another program holds 7 GiB of the only GPU when Flowers starts.
    let other = |gib: u64| format!(r#"{{"pid": 4242, "memory_used": "{gib}GiB"}}"#);
    let (_fake, path) = fake_nvml(&one_gpu(&other(7)));
    let body = format!(
        "[devices]\ncpu_slots = 0\n{}",
        service("web", "devices = 1\nvram = \"3GiB\""),
    );
    let server = TestServer::start_with_env(&body, &[("FLOWERS_FAKE_NVML", &path)]).await;
    let reason = "needs 3.0GiB of VRAM on one device; largest free is 1.0GiB on gpu0, and no CPU \
                  slot is free; 7.0GiB on gpu0 is used outside Flowers";
    let placement = server.event("web", "placement_failed").await;
    assert_eq!(placement.message, format!("could not place: {reason}"));
    let web = server.service("web").await;
    assert_eq!(web.state, "waiting");
    assert_eq!(web.reason.as_deref(), Some(reason));
    assert!(web.runs.is_empty());
    let gpu0 = &server.client.devices().await.unwrap().devices[0];
    assert_eq!(gpu0.foreign_vram_bytes, Some(7 * GIB));
    assert!(gpu0.allocations.is_empty());
    let (code, out, err) = server.cli(&["gpus"]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.starts_with("gpu0")).unwrap();
    assert!(row.contains("7.0GiB"), "{row}");

    // The other program ends: the replica is placed.
    rewrite_fake(&path, &one_gpu(""));
    let run = server.ready_runs("web", 1).await.remove(0);
    assert_eq!(run.device.as_deref(), Some("gpu0"));

    // It comes back with 6 GiB while the replica runs; the replica crashes, and its replacement
    // waits rather than over-commit the GPU.
    rewrite_fake(&path, &one_gpu(&other(6)));
    device_when(&server, 0, "6 GiB used outside Flowers", |gpu0| {
        gpu0.foreign_vram_bytes == Some(6 * GIB)
    })
    .await;
    let _ = reqwest::get(format!(
        "http://127.0.0.1:{}/crash?code=3",
        run.port.unwrap()
    ))
    .await;
    let failed = server.events_matching("web", "placement_failed", 2).await;
    assert_eq!(
        failed[1].message,
        "could not place: needs 3.0GiB of VRAM on one device; largest free is 2.0GiB on gpu0, \
         and no CPU slot is free; 6.0GiB on gpu0 is used outside Flowers"
    );
    let web = server.service("web").await;
    assert_eq!(web.state, "waiting");
    assert!(web.runs.is_empty(), "{:?}", web.runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_fit_waits_with_its_reason_and_is_placed_when_room_frees() {
    let (_fake, path) = fake_nvml(TWO_GPUS);
    // `web` is placed first (services go in name order): gpu0 keeps 2 GiB, gpu1 5 GiB.
    let body = format!(
        "[devices]\ncpu_slots = 0\n{}{}",
        service(
            "web",
            "replicas = 3\ndevices = 1\nvram = \"3GiB\"\n\
             [services.web.restart]\npolicy = \"never\"",
        ),
        service("xl", "devices = 1\nvram = \"7GiB\""),
    );
    let server = TestServer::start_with_env(&body, &[("FLOWERS_FAKE_NVML", &path)]).await;
    let runs = server.ready_runs("web", 3).await;
    let reason =
        "needs 7.0GiB of VRAM on one device; largest free is 5.0GiB on gpu1, and no CPU slot is free";

    let placement = server.event("xl", "placement_failed").await;
    assert_eq!(placement.message, format!("could not place: {reason}"));
    let xl = server.service("xl").await;
    assert_eq!(xl.state, "waiting");
    assert_eq!(xl.reason.as_deref(), Some(reason));
    assert!(xl.runs.is_empty());
    let (code, out, err) = server.cli(&["ps"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("xl: {reason}")), "{out}");

    // The replica alone on gpu1 ends for good (restart policy "never"): 8 GiB free there.
    let lone = runs
        .iter()
        .find(|r| r.device.as_deref() == Some("gpu1"))
        .unwrap();
    let _ = reqwest::get(format!(
        "http://127.0.0.1:{}/crash?code=3",
        lone.port.unwrap()
    ))
    .await;
    let placed = server.ready_runs("xl", 1).await.remove(0);
    assert_eq!(placed.device.as_deref(), Some("gpu1"));
    assert_eq!(placed.vram_bytes, Some(7 * GIB));
    let xl = server.service("xl").await;
    assert_eq!(xl.state, "running");
    assert_eq!(xl.reason, None);
    // Only one placement failure: the reason did not change while it waited.
    assert_eq!(
        server
            .events_matching("xl", "placement_failed", 1)
            .await
            .len(),
        1
    );

    let devices = server.client.devices().await.unwrap();
    assert_eq!(devices.devices[1].allocated_vram_bytes, Some(7 * GIB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gpu_cpu_slots_stand_in() {
    let server = TestServer::start(&service("web", "replicas = 2\ndevices = 1")).await;
    let runs = server.ready_runs("web", 2).await;
    let (code, out, err) = server.cli(&["gpus"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("GPUs: no GPU: "), "{out}");
    assert!(lines[0].ends_with("; 2 CPU slot(s) stand in"), "{out}");
    for (index, id) in ["cpu0", "cpu1"].iter().enumerate() {
        let row = lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id} row:\n{out}"));
        let run = runs
            .iter()
            .find(|r| r.device.as_deref() == Some(id))
            .unwrap();
        assert!(row.contains("whole slot"), "{row}");
        assert!(row.contains(&run.id), "{row}");
        let device = &server.client.devices().await.unwrap().devices[index];
        assert_eq!(device.kind, "cpu");
        assert_eq!(device.telemetry, None);
        assert_eq!(device.allocated_vram_bytes, None);
    }
    assert!(!out.contains("gpu0"), "{out}");
    let devices = server.client.devices().await.unwrap();
    assert_eq!(devices.gpu_source, "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_fake_nvml_file_is_reported_and_flowers_still_starts() {
    for (text, problem) in [
        (
            "{\"gpus\": [",
            "EOF while parsing a list at line 1 column 10",
        ),
        (
            "{\"gpus\": [{\"memory_total\": \"8GiB\", \"utilization_percent\": 140}]}",
            "gpus[0]: utilization_percent must be 0..=100, got 140",
        ),
    ] {
        let (_fake, path) = fake_nvml(text);
        let server = TestServer::start_with_env(
            &service("web", "devices = 1"),
            &[("FLOWERS_FAKE_NVML", &path)],
        )
        .await;
        // CPU slots stand in; the service runs.
        let run = server.ready_runs("web", 1).await.remove(0);
        assert_eq!(run.device.as_deref(), Some("cpu0"));
        let (code, out, err) = server.cli(&["gpus"]);
        assert_eq!(code, 0, "{err}");
        let first = out.lines().next().unwrap();
        assert_eq!(
            first,
            format!("GPUs: no GPU: fake NVML file {path}: {problem}; 2 CPU slot(s) stand in")
        );
        let devices = server.client.devices().await.unwrap();
        assert_eq!(devices.gpu_source, "none");
        let events = server.client.events(Some(0), None, 100).await.unwrap();
        let detected = events
            .iter()
            .find(|e| e.kind == "devices_detected")
            .expect("a devices_detected event");
        assert!(detected.message.contains(problem), "{}", detected.message);
    }
}
