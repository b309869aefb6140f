//! Train beside serve: blue/green promotion, a version that never gets ready, preemption and
//! resume (the role swap on two slots), failover when a device is lost, and the availability
//! benchmark with its zero-failed-requests verdict.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::support::*;

const SERVE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/bench/serve.py");
const TRAIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/bench/train.py");

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}{path}", server.api_port))
        .json(&body)
        .send()
        .await
        .expect("the control API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn model(server: &TestServer, name: &str) -> Value {
    get_json(server.api_port, &format!("/v1/models/{name}"))
        .await
        .expect("the model's detail")
}

/// Writes a version's files: `weights` and, if `loads`, the `ready` file the workload needs.
fn version_files(root: &Path, name: &str, loads: bool) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("weights"), name).unwrap();
    if loads {
        std::fs::write(dir.join("ready"), "").unwrap();
    }
    dir.to_string_lossy().into_owned()
}

/// Sends requests through the gateway back to back until stopped; returns every answer's
/// FLOWERS_MODEL_VERSION, or the failure.
fn load(
    server: &TestServer,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Result<String, String>>> {
    let url = format!("http://127.0.0.1:{}/env", server.gateway_port);
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let answer = match http.get(&url).send().await {
                Ok(response) if response.status().is_success() => response
                    .json::<Value>()
                    .await
                    .map(|env| {
                        env["FLOWERS_MODEL_VERSION"]
                            .as_str()
                            .unwrap_or("")
                            .to_string()
                    })
                    .map_err(|e| e.to_string()),
                Ok(response) => Err(format!("status {}", response.status())),
                Err(error) => Err(error.to_string()),
            };
            answers.push(answer);
        }
        answers
    })
}

/// Waits until the gateway answers from a replica serving `version`.
async fn served_through_gateway(server: &TestServer, version: &str) {
    let url = format!("http://127.0.0.1:{}/env", server.gateway_port);
    server
        .eventually(
            &format!("version {version} to answer through the gateway"),
            || async {
                let env: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
                (env["FLOWERS_MODEL_VERSION"] == version).then_some(())
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_never_gets_ready_fails_and_the_old_one_keeps_serving() {
    let body = format!(
        r#"
[models.m]

[services.web]
command = ["python3", "-u", "{WORKLOAD}"]
devices = 1
model = "m"
routes = [{{ path = "/" }}]
env = {{ WORKLOAD_READY_FILE = "ready" }}

[services.web.probe]
interval = "100ms"
start_timeout = "2s"
"#
    );
    let server = TestServer::start(&body).await;
    // Nothing promoted: the service waits and says why.
    let waiting = server
        .eventually("web to wait for a version", || async {
            let service = server.client.service("web").await.ok()?;
            (service.state == "waiting").then_some(service)
        })
        .await;
    assert!(
        waiting
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("model m has no promoted version"),
        "{waiting:?}"
    );

    let files = tempfile::tempdir().unwrap();
    let (status, registered) = post(
        &server,
        "/v1/models/m/versions",
        json!({ "path": version_files(files.path(), "one", true) }),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(registered["promoted"], false, "manual policy: {registered}");
    let (status, answer) = post(&server, "/v1/models/m/promote", json!({ "version": 1 })).await;
    assert_eq!(status, 200, "{answer}");
    let first = server.ready_runs("web", 1).await;
    let env = get_json(first[0].port.unwrap(), "/env").await.unwrap();
    assert_eq!(env["FLOWERS_MODEL_VERSION"], "1");
    assert!(
        env["FLOWERS_MODEL_PATH"]
            .as_str()
            .unwrap()
            .ends_with("/models/m/1"),
        "{env}"
    );

    // Requests flow while version 2, which cannot load, is promoted.
    let stop = Arc::new(AtomicBool::new(false));
    served_through_gateway(&server, "1").await;
    let answers = load(&server, stop.clone());
    let (status, _) = post(
        &server,
        "/v1/models/m/versions",
        json!({ "path": version_files(files.path(), "two", false) }),
    )
    .await;
    assert_eq!(status, 201);
    let (status, answer) = post(&server, "/v1/models/m/promote", json!({ "version": 2 })).await;
    assert_eq!(status, 200, "{answer}");

    let failed = server.event("m", "version_failed").await;
    assert!(
        failed
            .message
            .starts_with("m:2 failed: its replica did not become ready: not ready after 2s"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.ends_with("version 1 keeps serving"),
        "{}",
        failed.message
    );
    let detail = server
        .eventually("version 1 to be promoted again", || async {
            let detail = model(&server, "m").await;
            (detail["model"]["promoted"] == 1).then_some(detail)
        })
        .await;
    let two = detail["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 2)
        .unwrap()
        .clone();
    assert_eq!(two["state"], "failed", "{two}");
    stop.store(true, Ordering::Relaxed);
    let answers = answers.await.unwrap();
    assert!(!answers.is_empty());
    let failures: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok("1")),
        "only version 1 served"
    );
    // The original replica served throughout.
    assert_eq!(server.ready_runs("web", 1).await[0].id, first[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_on_two_slots_swaps_roles_and_the_job_resumes_from_its_checkpoint() {
    let body = format!(
        r#"
[models.m]
promote = {{ metric = "loss", mode = "min" }}

[services.web]
command = ["python3", "-u", "{SERVE}"]
devices = 1
model = "m"
routes = [{{ path = "/" }}]
env = {{ BENCH_LOAD_SECONDS = "0" }}

[services.web.probe]
interval = "100ms"

[jobs.train]
command = ["python3", "-u", "{TRAIN}"]
devices = 1
preemptible = true
autostart = true
model = "m"
env = {{ BENCH_EPOCH_SECONDS = "1" }}
"#
    );
    let server = TestServer::start(&body).await;
    // The job's first checkpoint is promoted and served beside it.
    let web_v1 = server.ready_runs("web", 1).await.remove(0);
    let job_before = server
        .client
        .job("train")
        .await
        .unwrap()
        .last_run
        .expect("the job runs");
    assert_ne!(web_v1.device, job_before.device);

    // The next better checkpoint is promoted: the job is preempted for the staging slot.
    let preempted = server.event("train", "job_preempted").await;
    assert!(
        preempted.message.contains("to make room on"),
        "{}",
        preempted.message
    );
    let web_v2 = server.replacement("web", &web_v1.id).await;
    assert_eq!(
        web_v2.device, job_before.device,
        "the new version takes the training slot"
    );
    let resumed = server
        .eventually("the job to resume on the freed slot", || async {
            let run = server.client.job("train").await.ok()?.last_run?;
            (run.id != job_before.id && run.state == "running").then_some(run)
        })
        .await;
    assert_eq!(
        resumed.device, web_v1.device,
        "training moves to the slot the old version freed"
    );
    server.wait_for_output(&resumed.id, "resumed from").await;
    let output = std::fs::read_to_string(
        server
            .data_dir()
            .join("runs")
            .join(&resumed.id)
            .join("output.log"),
    )
    .unwrap();
    assert!(output.contains("/models/m/"), "{output}");
    // The old replica was drained and stopped once the new one was ready.
    let stopped = server
        .eventually("the old replica to be stopped", || async {
            let run = server.client.run(&web_v1.id).await.ok()?;
            (run.state == "stopped").then_some(run)
        })
        .await;
    assert!(
        stopped
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("replaced by a ready replica of version"),
        "{stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_gpu_is_lost_takes_the_room_of_a_preemptible_job() {
    // The second card is a little smaller, so best fit puts the service there; losing it
    // keeps the first card's index (NVML numbers the cards it finds in order).
    let two_gpus = r#"{"driver_version": "550.54", "gpus": [
        {"name": "RTX 3050", "uuid": "GPU-aaaa", "memory_total": "8GiB"},
        {"name": "RTX 3050", "uuid": "GPU-bbbb", "memory_total": "7GiB"}]}"#;
    let one_gpu = r#"{"driver_version": "550.54", "gpus": [
        {"name": "RTX 3050", "uuid": "GPU-aaaa", "memory_total": "8GiB"}]}"#;
    let fakes = tempfile::tempdir().unwrap();
    let (two, one) = (fakes.path().join("two.json"), fakes.path().join("one.json"));
    std::fs::write(&two, two_gpus).unwrap();
    std::fs::write(&one, one_gpu).unwrap();
    let job = format!(
        "[jobs.train]\ncommand = [\"python3\", \"-u\", \"{WORKLOAD}\"]\ndevices = 1\nvram = \"6GiB\"\n\
         preemptible = true\nautostart = true\nenv = {{ WORKLOAD_NO_SERVER = \"1\" }}\n"
    );
    let body = format!(
        "[devices]\ncpu_slots = 0\n{}\n{job}",
        service("web", "devices = 1\nvram = \"6GiB\"")
    );
    let mut server =
        TestServer::start_with_env(&body, &[("FLOWERS_FAKE_NVML", two.to_str().unwrap())]).await;
    let web = server.ready_runs("web", 1).await.remove(0);
    assert_eq!(web.device.as_deref(), Some("gpu1"));
    server
        .eventually("the job to run on gpu0", || async {
            let run = server.client.job("train").await.ok()?.last_run?;
            (run.state == "running" && run.device.as_deref() == Some("gpu0")).then_some(())
        })
        .await;

    // gpu1 is gone when Flowers comes back (the card fell off the bus): the replica takes the
    // job's room on gpu0, and the job waits with a reason.
    server.kill9();
    server
        .launch(&[("FLOWERS_FAKE_NVML", one.to_str().unwrap())])
        .await;
    let preempted = server.event("train", "job_preempted").await;
    assert!(
        preempted.message.contains("for web replica 0"),
        "{}",
        preempted.message
    );
    let moved = server.replacement("web", &web.id).await;
    assert_eq!(moved.device.as_deref(), Some("gpu0"));
    let job = server
        .eventually("the job to wait for room", || async {
            let job = server.client.job("train").await.ok()?;
            (job.state == "waiting").then_some(job)
        })
        .await;
    assert!(
        job.reason
            .as_deref()
            .unwrap_or("")
            .contains("needs 6.0GiB of VRAM"),
        "{job:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_availability_benchmark_fails_no_request() {
    let output = std::process::Command::new(FLOWERS)
        .args([
            "bench",
            "availability",
            "--json",
            "--duration",
            "30s",
            "--epoch",
            "1s",
            "--concurrency",
            "4",
        ])
        .env_remove("FLOWERS_API")
        .output()
        .expect("the benchmark runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{stdout}\n{stderr}"));
    assert!(output.status.success(), "{report:#}\n{stderr}");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["failed"], 0, "{report:#}");
    assert!(report["requests"].as_u64().unwrap() > 100, "{report:#}");
    assert!(
        report["promotions"].as_array().unwrap().len() >= 5,
        "{report:#}"
    );
    assert_eq!(report["kills"].as_array().unwrap().len(), 3, "{report:#}");
    assert!(report["preemptions"].as_u64().unwrap() >= 1, "{report:#}");
    assert_eq!(report["unregistered_answers"], 0, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_one_device_box_a_promotion_replaces_in_place_and_requests_wait() {
    let body = format!(
        r#"
[devices]
cpu_slots = 1

[services.web]
command = ["python3", "-u", "{WORKLOAD}"]
devices = 1
model = "m"
routes = [{{ path = "/" }}]
env = {{ WORKLOAD_READY_AFTER = "0.5" }}

[services.web.probe]
interval = "100ms"
"#
    );
    let server = TestServer::start(&body).await;
    let files = tempfile::tempdir().unwrap();
    for (name, version) in [("one", 1), ("two", 2)] {
        let (status, answer) = post(
            &server,
            "/v1/models/m/versions",
            json!({ "path": version_files(files.path(), name, true) }),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["version"]["version"], version);
    }
    let (status, _) = post(&server, "/v1/models/m/promote", json!({ "version": 1 })).await;
    assert_eq!(status, 200);
    let first = server.ready_runs("web", 1).await.remove(0);
    server
        .eventually("the gateway to route to version 1", || async {
            let response = reqwest::get(format!("http://127.0.0.1:{}/env", server.gateway_port))
                .await
                .ok()?;
            response.status().is_success().then_some(())
        })
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let answers = load(&server, stop.clone());
    let (status, _) = post(&server, "/v1/models/m/promote", json!({ "version": 2 })).await;
    assert_eq!(status, 200);
    let second = server.replacement("web", &first.id).await;
    assert_eq!(second.device, first.device);
    served_through_gateway(&server, "2").await;
    stop.store(true, Ordering::Relaxed);
    let answers = answers.await.unwrap();
    let failures: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let old = server.client.run(&first.id).await.unwrap();
    assert!(
        old.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("replaced in place"),
        "{old:?}"
    );
}
