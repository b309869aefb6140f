//! A job's life: idle until `flowers run`, running, succeeded or failed after its restart limit,
//! reset, conflicts, a user's stop, autostart, and yielding devices to services.

use client::{ClientError, JobInfo};

use crate::support::*;

/// A `[jobs.NAME]` table running the workload without its HTTP server, plus `extra` lines.
fn job(name: &str, extra: &str) -> String {
    format!(
        r#"
[jobs.{name}]
command = ["python3", "-u", "{WORKLOAD}"]
{extra}
"#
    )
}

async fn job_in_state(server: &TestServer, name: &str, state: &str) -> JobInfo {
    server
        .eventually(&format!("job {name} to be {state}"), || async {
            let job = server.client.job(name).await.ok()?;
            (job.state == state).then_some(job)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_idle_until_run_then_runs_and_succeeds() {
    let server = TestServer::start(&job(
        "train",
        "env = { WORKLOAD_NO_SERVER = \"1\", WORKLOAD_EXIT_AFTER = \"1\", WORKLOAD_EXIT_CODE = \"0\" }",
    ))
    .await;
    let idle = server.client.job("train").await.unwrap();
    assert_eq!(idle.state, "idle");
    assert!(idle.last_run.is_none());
    assert!(server
        .client
        .runs(Some("train"), false, 10)
        .await
        .unwrap()
        .is_empty());

    let (code, out, err) = server.cli(&["run", "train"]);
    assert_eq!(code, 0, "{err}");
    let started = server.client.job("train").await.unwrap();
    let run = started.last_run.expect("the run");
    assert_eq!(out.trim(), format!("job train started as run {}", run.id));
    // The job exits by itself a second after it starts; it is running now.
    assert_eq!(started.state, "running");
    assert_eq!(run.state, "running");
    assert_eq!(run.owner_kind, "job");
    assert!(process_alive(run.child_pid.unwrap()));

    let succeeded = job_in_state(&server, "train", "succeeded").await;
    let event = server.event("train", "job_succeeded").await;
    assert_eq!(event.run.as_deref(), Some(run.id.as_str()));
    assert_eq!(event.message, "finished code=0");
    let last = succeeded.last_run.unwrap();
    assert_eq!(last.id, run.id);
    assert_eq!(last.exit_code, Some(0));
    assert_eq!(server.run_count("train").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_up_to_its_limit_then_failed_and_reset_clears_it() {
    let server = TestServer::start(&job(
        "train",
        "env = { WORKLOAD_NO_SERVER = \"1\", WORKLOAD_EXIT_AFTER = \"0.1\", WORKLOAD_EXIT_CODE = \"4\" }\n\
         restart_limit = 2\nrestart_backoff = \"100ms\"",
    ))
    .await;
    let (code, _, err) = server.cli(&["run", "train"]);
    assert_eq!(code, 0, "{err}");

    let failed = server.event("train", "job_failed").await;
    assert_eq!(
        failed.message,
        "failed 3 time(s), restart limit 2: last code=4"
    );
    let job = job_in_state(&server, "train", "failed").await;
    assert_eq!(
        job.reason.as_deref(),
        Some("failed 3 time(s), restart limit 2: last code=4")
    );
    let runs = server.client.runs(Some("train"), false, 10).await.unwrap();
    assert_eq!(runs.len(), 3, "one attempt and two restarts");
    assert!(runs
        .iter()
        .all(|r| r.exit_code == Some(4) && r.state == "exited"));
    let restarts = server
        .events_matching("train", "run_restart_scheduled", 2)
        .await;
    assert_eq!(restarts[0].message, "restarting in 100ms (restart 1 of 2)");
    assert_eq!(restarts[1].message, "restarting in 200ms (restart 2 of 2)");

    let (code, out, err) = server.cli(&["reset", "train"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "train: failure count cleared");
    let job = server.client.job("train").await.unwrap();
    assert_eq!(job.state, "idle");
    assert_eq!(job.reason, None);

    let (code, out, err) = server.cli(&["run", "train"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("job train started as run "), "{out}");
    server.events_matching("train", "run_started", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_a_job_that_is_already_running_is_a_conflict() {
    let server = TestServer::start(&job("train", "env = { WORKLOAD_NO_SERVER = \"1\" }")).await;
    let (code, _, err) = server.cli(&["run", "train"]);
    assert_eq!(code, 0, "{err}");
    let run = server.client.job("train").await.unwrap().last_run.unwrap();
    let expected = format!(
        "job train is already running (run {0}); stop it first with `flowers stop {0}`",
        run.id
    );

    let (code, out, err) = server.cli(&["run", "train"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(err.trim(), format!("error: {expected}"));

    match server.client.start_job("train").await {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!(status, 409);
            assert_eq!(code, "conflict");
            assert_eq!(message, expected);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Still the one Run.
    assert_eq!(server.run_count("train").await, 1);
    assert!(process_alive(run.child_pid.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_is_not_restarted() {
    let server = TestServer::start(&job(
        "train",
        "env = { WORKLOAD_NO_SERVER = \"1\" }\nrestart_limit = 3\nrestart_backoff = \"100ms\"",
    ))
    .await;
    let (code, _, err) = server.cli(&["run", "train"]);
    assert_eq!(code, 0, "{err}");
    let run = server.client.job("train").await.unwrap().last_run.unwrap();
    // Stopped once it is working (its SIGTERM handler is in place), so it ends with code 0.
    server
        .wait_for_output(&run.id, "working without a server")
        .await;

    let (code, out, err) = server.cli(&["stop", &run.id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("stopping {}", run.id)), "{out}");
    let stopped = server.event("train", "run_stopped").await;
    assert_eq!(stopped.run.as_deref(), Some(run.id.as_str()));
    assert_eq!(stopped.message, "stopped code=0 (requested by user)");

    let job = job_in_state(&server, "train", "stopped").await;
    let last = job.last_run.unwrap();
    assert_eq!(last.id, run.id);
    assert_eq!(last.state, "stopped");
    assert!(!process_alive(run.child_pid.unwrap()));
    assert!(server
        .events_matching("train", "run_restart_scheduled", 0)
        .await
        .is_empty());
    assert_eq!(server.run_count("train").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autostart_job_starts_with_flowers() {
    let server = TestServer::start(&job(
        "train",
        "env = { WORKLOAD_NO_SERVER = \"1\" }\nautostart = true",
    ))
    .await;
    let job = job_in_state(&server, "train", "running").await;
    let run = job.last_run.unwrap();
    assert_eq!(run.state, "running");
    let started = server.event("train", "run_started").await;
    assert_eq!(started.run.as_deref(), Some(run.id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_for_a_device_services_hold_and_runs_when_one_frees() {
    let server = TestServer::start(&format!(
        "{}{}",
        service(
            "web",
            "replicas = 2\ndevices = 1\n[services.web.restart]\npolicy = \"never\"",
        ),
        job("train", "env = { WORKLOAD_NO_SERVER = \"1\" }\ndevices = 1"),
    ))
    .await;
    let runs = server.ready_runs("web", 2).await;
    let reason = "needs 1 whole device; all 2 are taken (cpu0 taken, cpu1 taken)";

    let (code, out, err) = server.cli(&["run", "train"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("job train is waiting: {reason}"));
    let job = server.client.job("train").await.unwrap();
    assert_eq!(job.state, "waiting");
    assert_eq!(job.reason.as_deref(), Some(reason));
    let placement = server.event("train", "placement_failed").await;
    assert_eq!(placement.message, format!("could not place: {reason}"));
    assert!(server
        .client
        .runs(Some("train"), false, 10)
        .await
        .unwrap()
        .is_empty());

    // A replica ends and, by its policy, is not restarted: its device goes to the job.
    let victim = &runs[0];
    let _ = reqwest::get(format!(
        "http://127.0.0.1:{}/crash?code=3",
        victim.port.unwrap()
    ))
    .await;
    let job = job_in_state(&server, "train", "running").await;
    let run = job.last_run.unwrap();
    assert_eq!(run.device, victim.device);
    assert_eq!(job.reason, None);
    let service = server.service("web").await;
    assert_eq!(service.ready_replicas, 1);
    assert_eq!(service.runs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_reports_progress_that_ps_and_the_api_show() {
    let server = TestServer::start(&job(
        "train",
        "env = { WORKLOAD_NO_SERVER = \"1\" }\nautostart = true",
    ))
    .await;
    let job = job_in_state(&server, "train", "running").await;
    let run = job.last_run.unwrap();
    assert_eq!(run.progress, None);

    let report = client::ReportProgress {
        step: Some(120),
        total: Some(1000),
        metrics: [("loss".to_string(), 0.3125)].into(),
    };
    server
        .client
        .report_progress(&run.id, &report)
        .await
        .unwrap();
    let progress = server.client.run(&run.id).await.unwrap().progress.unwrap();
    assert_eq!(
        (progress.step, progress.total, progress.metrics.clone()),
        (Some(120), Some(1000), report.metrics.clone())
    );
    assert!(progress.updated_ms > 0);
    let (code, out, err) = server.cli(&["ps"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PROGRESS"), "{out}");
    assert!(out.contains("120/1000 (12%) loss=0.312"), "{out}");

    // Bad reports are refused with what is wrong, and the last good one stays.
    let url = format!(
        "http://127.0.0.1:{}/v1/runs/{}/progress",
        server.api_port, run.id
    );
    let http = reqwest::Client::new();
    for (body, status, says) in [
        (
            r#"{"step": 11, "total": 10}"#,
            400,
            "step 11 is beyond total 10",
        ),
        (r#"{"step": -1}"#, 400, "step: invalid value: integer `-1`"),
        (
            r#"{"metrics": {"loss": "low"}}"#,
            400,
            "metrics.loss: invalid type",
        ),
        (r#"{"steps": 1}"#, 400, "unknown field `steps`"),
        ("{", 400, "request body: EOF while parsing"),
    ] {
        let response = http.post(&url).body(body).send().await.unwrap();
        let message = crate::api::error_message(response, status, "bad_request").await;
        assert!(message.contains(says), "{body}: {message}");
    }
    let unknown = http
        .post(format!(
            "http://127.0.0.1:{}/v1/runs/nope-99/progress",
            server.api_port
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    crate::api::error_message(unknown, 404, "not_found").await;
    assert_eq!(
        server
            .client
            .run(&run.id)
            .await
            .unwrap()
            .progress
            .unwrap()
            .step,
        Some(120)
    );

    // An ended Run reports no more; what it reported last stays on its record.
    server.client.stop_run(&run.id).await.unwrap();
    job_in_state(&server, "train", "stopped").await;
    let late = server.client.report_progress(&run.id, &report).await;
    assert!(
        matches!(&late, Err(ClientError::Api { status, .. }) if *status == 409),
        "{late:?}"
    );
    let kept = server.client.job("train").await.unwrap().last_run.unwrap();
    assert_eq!(kept.progress.unwrap().step, Some(120));
}
