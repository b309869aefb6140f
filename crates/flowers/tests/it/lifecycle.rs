//! A service's life: start, readiness, environment, crash and restart with backoff, crash loop
//! and its reset, liveness, graceful stop.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_start_on_cpu_slots_become_ready_and_see_their_environment() {
    let server = TestServer::start(&service("web", "replicas = 2\ndevices = 1")).await;
    let runs = server.ready_runs("web", 2).await;

    let mut devices: Vec<String> = runs.iter().map(|r| r.device.clone().unwrap()).collect();
    devices.sort();
    assert_eq!(devices, vec!["cpu0", "cpu1"]);
    for run in &runs {
        let port = run.port.expect("a port");
        let env = get_json(port, "/env").await.expect("the workload answers");
        assert_eq!(env["FLOWERS_PORT"], port.to_string());
        assert_eq!(env["FLOWERS_RUN_ID"], run.id);
        assert_eq!(env["FLOWERS_DEVICE"], run.device.clone().unwrap());
        // Empty on a CPU slot, so frameworks do not grab a GPU.
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "");
        assert_eq!(
            env["FLOWERS_CONTROL_URL"],
            format!("http://127.0.0.1:{}", server.api_port)
        );
        let data = env["FLOWERS_DATA_DIR"].as_str().unwrap();
        assert!(data.ends_with("data/data/web"), "{data}");
        assert!(std::path::Path::new(data).is_dir());
        // Each Run leads its own process group (its monitor), and the command is in it.
        let pid = run.pid.unwrap();
        let child = run.child_pid.unwrap();
        assert_eq!(
            get_json(port, "/pid").await.unwrap()["pid"],
            serde_json::json!(child)
        );
        assert_eq!(unsafe { libc::getpgid(child as i32) }, pid as i32);
    }

    let service = server.service("web").await;
    assert_eq!(service.state, "running");
    assert_eq!(service.ready_replicas, 2);
    let started = server.events_matching("web", "run_started", 2).await;
    assert!(
        started[0].message.starts_with("started on cpu"),
        "{}",
        started[0].message
    );
    server.events_matching("web", "run_ready", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_not_ready_until_its_probe_passes() {
    let server =
        TestServer::start(&service("slow", "env = { WORKLOAD_READY_AFTER = \"1.5\" }")).await;
    // The process is up and listening well before the probe passes.
    let first = server
        .eventually("the replica to be started", || async {
            let service = server.client.service("slow").await.ok()?;
            service.runs.into_iter().next()
        })
        .await;
    let ready = server.ready_runs("slow", 1).await.remove(0);
    assert_eq!(ready.id, first.id);
    let waited = ready.ready_ms.unwrap() - ready.started_ms.unwrap();
    assert!(waited >= 1500, "ready after only {waited} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replica_is_restarted_with_exponential_backoff() {
    let server = TestServer::start(&service(
        "web",
        "[services.web.restart]\nbackoff = \"300ms\"\nbackoff_max = \"10s\"\ncrash_loop_after = 10",
    ))
    .await;
    for (round, delay) in [(1, "300ms"), (2, "600ms"), (3, "1.2s")] {
        let run = server.ready_runs("web", 1).await.remove(0);
        // The crash endpoint exits with code 3 before answering.
        let _ = reqwest::get(format!(
            "http://127.0.0.1:{}/crash?code=3",
            run.port.unwrap()
        ))
        .await;
        let exits = server.events_matching("web", "run_exited", round).await;
        assert_eq!(exits[round - 1].run.as_deref(), Some(run.id.as_str()));
        assert_eq!(exits[round - 1].message, "exited code=3");
        let restarts = server
            .events_matching("web", "run_restart_scheduled", round)
            .await;
        assert!(
            restarts[round - 1]
                .message
                .starts_with(&format!("restarting in {delay} (failure {round} of 10")),
            "{}",
            restarts[round - 1].message
        );
        let replacement = server.replacement("web", &run.id).await;
        let exited = server.client.run(&run.id).await.unwrap();
        assert_eq!(exited.state, "exited");
        assert_eq!(exited.exit_code, Some(3));
        let gap = replacement.started_ms.unwrap() - exited.ended_ms.unwrap();
        let expected: i64 = [300, 600, 1200][round - 1];
        assert!(
            gap >= expected - 20,
            "restarted {gap} ms after the crash, backoff {expected} ms"
        );
    }
    assert_eq!(server.service("web").await.consecutive_failures, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_stops_restarts_is_visible_and_reset_clears_it() {
    let server = TestServer::start(&service(
        "bad",
        "env = { WORKLOAD_EXIT_AFTER = \"0.2\", WORKLOAD_EXIT_CODE = \"2\" }\n\
         [services.bad.restart]\nbackoff = \"100ms\"\ncrash_loop_after = 3",
    ))
    .await;
    let entered = server.event("bad", "crash_loop_entered").await;
    assert!(
        entered.message.contains("failed 3 times in a row")
            && entered.message.contains("flowers reset bad"),
        "{}",
        entered.message
    );
    let service = server.service("bad").await;
    assert_eq!(service.state, "crash_loop");
    assert!(service.runs.is_empty());
    assert!(service.reason.unwrap().contains("flowers reset bad"));
    assert_eq!(
        server.run_count("bad").await,
        3,
        "no start after the crash loop began"
    );

    let (code, out, err) = server.cli(&["ps"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("crash_loop"), "{out}");

    let (code, out, err) = server.cli(&["reset", "bad"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("crash loop cleared"), "{out}");
    server.event("bad", "crash_loop_cleared").await;
    server.events_matching("bad", "run_started", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_fails_its_liveness_probe_is_replaced() {
    let server = TestServer::start(&service("web", "")).await;
    let run = server.ready_runs("web", 1).await.remove(0);
    get_json(run.port.unwrap(), "/sick")
        .await
        .expect("made sick");
    let unhealthy = server.event("web", "run_unhealthy").await;
    assert!(
        unhealthy
            .message
            .contains("failed its probe 3 times in a row: GET /healthz HTTP 503"),
        "{}",
        unhealthy.message
    );
    let replacement = server.replacement("web", &run.id).await;
    assert_ne!(replacement.id, run.id);
    assert!(!process_alive(run.child_pid.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_is_sigterm_then_sigkill_after_the_grace_period_and_leaves_no_process() {
    let server = TestServer::start(&format!(
        "{}{}",
        service("polite", "env = { WORKLOAD_GRANDCHILD = \"1\" }"),
        service(
            "stubborn",
            "env = { WORKLOAD_IGNORE_SIGTERM = \"1\", WORKLOAD_GRANDCHILD = \"1\" }\nstop_grace = \"700ms\"",
        )
    ))
    .await;
    for (name, code, how) in [
        ("polite", 0, "code=0"),
        ("stubborn", 137, "code=137 (SIGKILL)"),
    ] {
        let run = server.ready_runs(name, 1).await.remove(0);
        let grandchild = get_json(run.port.unwrap(), "/grandchild").await.unwrap()["pid"]
            .as_u64()
            .unwrap() as u32;
        assert!(process_alive(grandchild));
        let (status, out, err) = server.cli(&["stop", &run.id]);
        assert_eq!(status, 0, "{err}");
        assert!(out.contains(&format!("stopping {}", run.id)), "{out}");

        let stopped = server.event(name, "run_stopped").await;
        assert_eq!(stopped.run.as_deref(), Some(run.id.as_str()));
        assert!(stopped.message.contains(how), "{}", stopped.message);
        let record = server.client.run(&run.id).await.unwrap();
        assert_eq!(record.state, "stopped");
        assert_eq!(record.exit_code, Some(code));
        if name == "stubborn" {
            // SIGKILL came only after the grace period.
            let stopping = server.event(name, "run_stopping").await;
            let took = record.ended_ms.unwrap() - stopping.time_ms;
            assert!(took >= 650, "killed {took} ms after SIGTERM, grace 700 ms");
        }
        for pid in [run.pid.unwrap(), run.child_pid.unwrap(), grandchild] {
            assert!(!process_alive(pid), "{name}: pid {pid} survived the stop");
        }
        // A stopped service replica is replaced, without counting as a failure.
        let replacement = server.ready_runs(name, 1).await.remove(0);
        assert_ne!(replacement.id, run.id);
        assert_eq!(server.service(name).await.consecutive_failures, 0);
    }
    let log = std::fs::read_to_string(
        server
            .data_dir()
            .join("runs")
            .join(
                server
                    .client
                    .runs(Some("polite"), false, 10)
                    .await
                    .unwrap()
                    .last()
                    .unwrap()
                    .id
                    .clone(),
            )
            .join("output.log"),
    )
    .unwrap();
    assert!(log.contains("got SIGTERM, exiting"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_says_why_in_its_event_and_run() {
    let server = TestServer::start(
        "[services.typo]\ncommand = [\"no-such-program-for-flowers\", \"--port\"]\n\
         [services.typo.restart]\nbackoff = \"100ms\"\ncrash_loop_after = 2\n",
    )
    .await;
    let exited = server.event("typo", "run_exited").await;
    assert_eq!(
        exited.message,
        "exited code=127: cannot start no-such-program-for-flowers: command not found"
    );
    let run = server
        .client
        .run(exited.run.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        run.reason.as_deref(),
        Some("cannot start no-such-program-for-flowers: command not found")
    );
    server.event("typo", "crash_loop_entered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_survives_a_restart_until_the_configuration_changes() {
    let restart = "[services.bad.restart]\nbackoff = \"100ms\"\ncrash_loop_after = 2";
    let mut server = TestServer::start(&service(
        "bad",
        &format!("env = {{ WORKLOAD_EXIT_AFTER = \"0.1\" }}\n{restart}"),
    ))
    .await;
    server.event("bad", "crash_loop_entered").await;

    // Same configuration: the crash loop is remembered and nothing is started.
    server.terminate();
    server.launch(&[]).await;
    let remembered = server.service("bad").await;
    assert_eq!(remembered.state, "crash_loop");
    assert_eq!(remembered.consecutive_failures, 2);
    assert_eq!(server.run_count("bad").await, 2);

    // The user fixes the service: it starts afresh.
    server.terminate();
    server.write_config(&service("bad", restart));
    server.launch(&[]).await;
    let cleared = server.event("bad", "crash_loop_cleared").await;
    assert_eq!(
        cleared.message,
        "crash loop cleared: the service's configuration changed"
    );
    server.ready_runs("bad", 1).await;
    assert_eq!(server.service("bad").await.consecutive_failures, 0);
}
