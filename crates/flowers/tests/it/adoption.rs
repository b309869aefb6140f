//! Flowers itself crashing and coming back: Runs are adopted again or cleanly stopped, none is
//! leaked, a Run that ended meanwhile is recorded with its real exit status, a graceful
//! shutdown leaves no process, one data directory has one Flowers, and the store survives.

use client::RunInfo;

use crate::support::*;

/// The pids of a service Run: its monitor, its command and the command's `sleep` grandchild.
async fn pids_of(run: &RunInfo) -> Vec<u32> {
    let grandchild = get_json(run.port.unwrap(), "/grandchild")
        .await
        .expect("the workload answers")["pid"]
        .as_u64()
        .expect("a grandchild") as u32;
    let pids = vec![run.pid.unwrap(), run.child_pid.unwrap(), grandchild];
    for pid in &pids {
        assert!(process_alive(*pid), "pid {pid} of {} is not alive", run.id);
    }
    pids
}

fn sorted_ids(runs: &[RunInfo]) -> Vec<String> {
    let mut ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_runs_are_adopted_again_and_still_watched() {
    let body = service(
        "web",
        "replicas = 2\nenv = { WORKLOAD_GRANDCHILD = \"1\" }\n\
         [services.web.restart]\nbackoff = \"100ms\"",
    );
    let mut server = TestServer::start(&body).await;
    let mut before = server.ready_runs("web", 2).await;
    before.sort_by(|a, b| a.id.cmp(&b.id));
    let mut pids = Vec::new();
    for run in &before {
        pids.push(pids_of(run).await);
    }
    let started_before = server.events_matching("web", "run_started", 2).await.len();

    server.kill9();
    // The Runs do not depend on Flowers being alive.
    for pid in pids.iter().flatten() {
        assert!(process_alive(*pid), "pid {pid} died with Flowers");
    }

    server.launch(&[]).await;
    let adopted = server.events_matching("web", "run_adopted", 2).await;
    let mut adopted_runs: Vec<String> = adopted.iter().map(|e| e.run.clone().unwrap()).collect();
    adopted_runs.sort();
    assert_eq!(adopted_runs, sorted_ids(&before));
    for (run, pids) in before.iter().zip(&pids) {
        let event = adopted
            .iter()
            .find(|e| e.run.as_deref() == Some(run.id.as_str()))
            .unwrap();
        assert_eq!(
            event.message,
            format!("adopted after a restart of Flowers (pid {})", pids[0])
        );
    }

    let mut after = server.ready_runs("web", 2).await;
    after.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(sorted_ids(&after), sorted_ids(&before));
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(new.pid, old.pid);
        assert_eq!(new.child_pid, old.child_pid);
        assert_eq!(new.port, old.port);
    }
    let service = server.service("web").await;
    assert_eq!(service.state, "running");
    assert_eq!(service.ready_replicas, 2);
    for pid in pids.iter().flatten() {
        assert!(process_alive(*pid), "pid {pid} died at the restart");
    }
    assert_eq!(
        server.events_matching("web", "run_started", 1).await.len(),
        started_before,
        "nothing is started again when every Run is adopted"
    );

    // The adopted Run is really watched: its crash is noticed and it is replaced.
    let victim = &after[0];
    let _ = reqwest::get(format!(
        "http://127.0.0.1:{}/crash?code=3",
        victim.port.unwrap()
    ))
    .await;
    let exited = server.event("web", "run_exited").await;
    assert_eq!(exited.run.as_deref(), Some(victim.id.as_str()));
    assert_eq!(exited.message, "exited code=3");
    server
        .events_matching("web", "run_restart_scheduled", 1)
        .await;
    let replacement = server
        .eventually("a replacement of the adopted run", || async {
            let service = server.client.service("web").await.ok()?;
            let ready: Vec<RunInfo> = service
                .runs
                .into_iter()
                .filter(|r| r.state == "ready")
                .collect();
            (ready.len() == 2 && ready.iter().all(|r| r.id != victim.id)).then_some(ready)
        })
        .await;
    assert!(replacement.iter().any(|r| r.id == after[1].id));
    let record = server.client.run(&victim.id).await.unwrap();
    assert_eq!(record.state, "exited");
    assert_eq!(record.exit_code, Some(3));
    assert_eq!(
        server.events_matching("web", "run_started", 1).await.len(),
        started_before + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_runs_no_longer_wanted_are_stopped_and_leave_no_process() {
    let changed = |args: &str| {
        format!(
            r#"
[services.changed]
command = ["python3", "-u", "{WORKLOAD}"{args}]
env = {{ WORKLOAD_GRANDCHILD = "1" }}
devices = 1
[services.changed.probe]
interval = "100ms"
timeout = "1s"
start_timeout = "20s"
"#
        )
    };
    let gone = service(
        "gone",
        "env = { WORKLOAD_GRANDCHILD = \"1\" }\nstop_grace = \"2s\"\ndevices = 1",
    );
    let mut server = TestServer::start(&format!("{gone}{}", changed(""))).await;
    let gone_run = server.ready_runs("gone", 1).await.remove(0);
    let changed_run = server.ready_runs("changed", 1).await.remove(0);
    let gone_pids = pids_of(&gone_run).await;
    let changed_pids = pids_of(&changed_run).await;

    server.kill9();
    // `gone` is removed from the config; `changed` gets a new command.
    server.write_config(&changed(", \"v2\""));
    server.launch(&[]).await;

    for (name, run, pids, reason) in [
        (
            "gone",
            &gone_run,
            &gone_pids,
            "its service is no longer configured",
        ),
        (
            "changed",
            &changed_run,
            &changed_pids,
            "its configuration changed",
        ),
    ] {
        let stopping = server.event(name, "run_stopping").await;
        assert_eq!(stopping.run.as_deref(), Some(run.id.as_str()));
        assert!(
            stopping
                .message
                .starts_with(&format!("stopping: {reason} (draining requests")),
            "{}",
            stopping.message
        );
        let stopped = server.event(name, "run_stopped").await;
        assert_eq!(stopped.run.as_deref(), Some(run.id.as_str()));
        assert_eq!(stopped.message, format!("stopped code=0 ({reason})"));
        let record = server.client.run(&run.id).await.unwrap();
        assert_eq!(record.state, "stopped");
        assert_eq!(record.reason.as_deref(), Some(reason));
        assert!(
            server
                .events_matching(name, "run_adopted", 0)
                .await
                .is_empty(),
            "{name}: a Run that is not wanted is not adopted"
        );
        for pid in pids {
            server
                .eventually(&format!("{name}: pid {pid} to be gone"), || async {
                    (!process_alive(*pid)).then_some(())
                })
                .await;
        }
    }

    // The changed service starts again with its new command.
    let fresh = server.ready_runs("changed", 1).await.remove(0);
    assert_ne!(fresh.id, changed_run.id);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", fresh.child_pid.unwrap())).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert!(args.contains(&b"v2".as_slice()), "{args:?}");
    assert_eq!(server.service("changed").await.state, "running");
    assert!(server.client.service("gone").await.is_err());
    // The devices the stopped Runs held are free again: only the fresh Run holds one.
    let devices = server.client.devices().await.unwrap();
    let held: Vec<String> = devices
        .devices
        .iter()
        .flat_map(|d| d.allocations.iter().map(|a| a.run.clone()))
        .collect();
    assert_eq!(held, vec![fresh.id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_ended_while_flowers_was_down_is_recorded_with_its_exit_status() {
    let mut server = TestServer::start(&service("web", "")).await;
    let run = server.ready_runs("web", 1).await.remove(0);

    server.kill9();
    let _ = reqwest::get(format!(
        "http://127.0.0.1:{}/crash?code=5",
        run.port.unwrap()
    ))
    .await;
    // The monitor records the status and ends with its command.
    let monitor = run.pid.unwrap();
    server
        .eventually("the monitor to end", || async {
            (!process_alive(monitor)).then_some(())
        })
        .await;

    server.launch(&[]).await;
    let exited = server.event("web", "run_exited").await;
    assert_eq!(exited.run.as_deref(), Some(run.id.as_str()));
    assert_eq!(
        exited.message,
        "exited code=5 (ended while Flowers was down)"
    );
    let record = server.client.run(&run.id).await.unwrap();
    assert_eq!(record.state, "exited");
    assert_eq!(record.exit_code, Some(5));
    assert_eq!(
        record.reason.as_deref(),
        Some("ended while Flowers was down")
    );
    assert!(record.ended_ms.is_some());
    assert!(server
        .events_matching("web", "run_adopted", 0)
        .await
        .is_empty());

    let replacement = server.ready_runs("web", 1).await.remove(0);
    assert_ne!(replacement.id, run.id);
    assert_eq!(server.service("web").await.state, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_stops_every_run_and_leaves_no_process() {
    let body = format!(
        "{}{}",
        service("polite", "replicas = 2\nenv = { WORKLOAD_GRANDCHILD = \"1\" }"),
        service(
            "stubborn",
            "env = { WORKLOAD_IGNORE_SIGTERM = \"1\", WORKLOAD_GRANDCHILD = \"1\" }\nstop_grace = \"500ms\"",
        )
    );
    let mut server = TestServer::start(&body).await;
    let mut runs = server.ready_runs("polite", 2).await;
    runs.extend(server.ready_runs("stubborn", 1).await);
    let mut pids = Vec::new();
    for run in &runs {
        pids.extend(pids_of(run).await);
    }

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    for pid in &pids {
        assert!(!process_alive(*pid), "pid {pid} outlived Flowers");
    }
    assert!(server.log().contains("flowers: every Run stopped; bye"));

    // The records say so, as the next Flowers reads them.
    server.launch(&[]).await;
    for run in &runs {
        let record = server.client.run(&run.id).await.unwrap();
        assert_eq!(record.state, "stopped", "{}", run.id);
        assert_eq!(record.reason.as_deref(), Some("Flowers is shutting down"));
        let expected_code = if run.owner == "stubborn" { 137 } else { 0 };
        assert_eq!(record.exit_code, Some(expected_code), "{}", run.id);
    }
    assert!(server
        .events_matching("polite", "run_adopted", 0)
        .await
        .is_empty());
    let stopped = server.events_matching("stubborn", "run_stopped", 1).await;
    assert_eq!(
        stopped[0].message,
        "stopped code=137 (SIGKILL) (Flowers is shutting down)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_flowers_on_the_same_data_directory_is_refused() {
    let server = TestServer::start(&service("web", "")).await;
    let run = server.ready_runs("web", 1).await.remove(0);

    let (code, out, err) = cli_in(
        server.dir.path(),
        server.client.base(),
        &[
            "up",
            "--config",
            "flowers.toml",
            "--api-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("another Flowers is already running on the data directory")
            && err.contains("flowers.lock"),
        "{err}"
    );
    assert!(!out.contains("control API"), "{out}");

    // The first one is untouched.
    let status = server.client.status().await.unwrap();
    assert_eq!(status.pid, server.pid());
    let still = server.ready_runs("web", 1).await.remove(0);
    assert_eq!(still.id, run.id);
    assert!(process_alive(run.child_pid.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_events_survive_a_kill_9() {
    let mut server = TestServer::start(&service(
        "web",
        "[services.web.restart]\nbackoff = \"100ms\"",
    ))
    .await;
    let first = server.ready_runs("web", 1).await.remove(0);
    let _ = reqwest::get(format!(
        "http://127.0.0.1:{}/crash?code=3",
        first.port.unwrap()
    ))
    .await;
    server.event("web", "run_exited").await;
    let second = server.replacement("web", &first.id).await;
    let events_before = server.client.events(Some(0), None, 10_000).await.unwrap();
    let runs_before = server.client.runs(None, false, 100).await.unwrap();
    assert_eq!(runs_before.len(), 2);

    server.kill9();
    server.launch(&[]).await;
    server.event("web", "run_adopted").await;

    let events_after = server.client.events(Some(0), None, 10_000).await.unwrap();
    assert!(events_after.len() > events_before.len());
    assert_eq!(
        &events_after[..events_before.len()],
        &events_before[..],
        "every event from before the crash is still there, unchanged"
    );
    let last_before = events_before.last().unwrap().id;
    let new_events = &events_after[events_before.len()..];
    assert!(new_events.iter().all(|e| e.id > last_before));
    assert!(events_after.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(new_events[0].kind, "flowers_started");

    let runs_after = server.client.runs(None, false, 100).await.unwrap();
    assert_eq!(sorted_ids(&runs_after), sorted_ids(&runs_before));
    let crashed = server.client.run(&first.id).await.unwrap();
    assert_eq!(crashed.state, "exited");
    assert_eq!(crashed.exit_code, Some(3));
    let adopted = server.client.run(&second.id).await.unwrap();
    assert_eq!(adopted.state, "ready");
    assert_eq!(adopted.pid, second.pid);
    assert_eq!(adopted.started_ms, second.started_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_adopted_or_recorded_as_ended_after_a_kill_9() {
    let job = |name: &str| {
        format!(
            "\n[jobs.{name}]\ncommand = [\"python3\", \"-u\", \"{WORKLOAD}\"]\nenv = {{ WORKLOAD_NO_SERVER = \"1\" }}\n"
        )
    };
    let mut server = TestServer::start(&format!("{}{}", job("kept"), job("ended"))).await;
    let mut runs = Vec::new();
    for name in ["kept", "ended"] {
        let (code, _, err) = server.cli(&["run", name]);
        assert_eq!(code, 0, "{err}");
        let run = server.client.job(name).await.unwrap().last_run.unwrap();
        // Working, so SIGTERM reaches its handler and it ends with code 0.
        server
            .wait_for_output(&run.id, "working without a server")
            .await;
        runs.push(run);
    }
    let (kept, ended) = (&runs[0], &runs[1]);

    server.kill9();
    signal(ended.child_pid.unwrap(), libc::SIGTERM);
    server
        .eventually("the monitor to end", || async {
            (!process_alive(ended.pid.unwrap())).then_some(())
        })
        .await;
    server.launch(&[]).await;

    // The job that ended meanwhile: its real status, and its job says it finished.
    let exited = server.event("ended", "run_exited").await;
    assert_eq!(exited.run.as_deref(), Some(ended.id.as_str()));
    assert_eq!(
        exited.message,
        "exited code=0 (ended while Flowers was down)"
    );
    let record = server.client.run(&ended.id).await.unwrap();
    assert_eq!(record.state, "exited");
    assert_eq!(record.exit_code, Some(0));
    let job = server.client.job("ended").await.unwrap();
    let last = job.last_run.unwrap();
    assert_eq!(last.id, ended.id);
    assert_eq!(last.state, "exited", "the job shows its Run as it is now");
    assert_eq!(last.exit_code, Some(0));
    assert_eq!(job.state, "succeeded");
    let succeeded = server.event("ended", "job_succeeded").await;
    assert_eq!(succeeded.run.as_deref(), Some(ended.id.as_str()));

    // The job still running is adopted, watched, and succeeds when it finishes.
    let adopted = server.event("kept", "run_adopted").await;
    assert_eq!(adopted.run.as_deref(), Some(kept.id.as_str()));
    let job = server.client.job("kept").await.unwrap();
    assert_eq!(job.state, "running");
    assert_eq!(job.last_run.unwrap().pid, kept.pid);
    signal(kept.child_pid.unwrap(), libc::SIGTERM);
    let succeeded = server.event("kept", "job_succeeded").await;
    assert_eq!(succeeded.run.as_deref(), Some(kept.id.as_str()));
    assert_eq!(succeeded.message, "finished code=0");
    assert_eq!(server.client.job("kept").await.unwrap().state, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_flowers_was_stopping_when_killed_is_stopped_after_the_restart() {
    let mut server = TestServer::start(&format!(
        "\n[jobs.train]\ncommand = [\"python3\", \"-u\", \"{WORKLOAD}\"]\n\
         env = {{ WORKLOAD_NO_SERVER = \"1\", WORKLOAD_IGNORE_SIGTERM = \"1\" }}\n\
         stop_grace = \"5s\"\n"
    ))
    .await;
    let (code, _, err) = server.cli(&["run", "train"]);
    assert_eq!(code, 0, "{err}");
    let run = server.client.job("train").await.unwrap().last_run.unwrap();
    // Working, so it ignores SIGTERM from now on.
    server
        .wait_for_output(&run.id, "working without a server")
        .await;
    let (code, _, err) = server.cli(&["stop", &run.id]);
    assert_eq!(code, 0, "{err}");
    server.event("train", "run_stopping").await;
    // Killed within the grace period: this Flowers never sends the SIGKILL.
    server.kill9();
    assert!(process_alive(run.child_pid.unwrap()));

    server.launch(&[]).await;
    let stopping = server.events_matching("train", "run_stopping", 2).await;
    assert_eq!(stopping[1].run.as_deref(), Some(run.id.as_str()));
    assert_eq!(
        stopping[1].message,
        "stopping: it was being stopped when Flowers went down (SIGTERM, SIGKILL after 5s)"
    );
    let stopped = server.event("train", "run_stopped").await;
    assert_eq!(stopped.run.as_deref(), Some(run.id.as_str()));
    assert_eq!(
        stopped.message,
        "stopped code=137 (SIGKILL) (it was being stopped when Flowers went down)"
    );
    for pid in [run.pid.unwrap(), run.child_pid.unwrap()] {
        assert!(!process_alive(pid), "pid {pid} survived");
    }
    let job = server.client.job("train").await.unwrap();
    assert_eq!(job.state, "stopped");
    assert!(server
        .events_matching("train", "run_adopted", 0)
        .await
        .is_empty());
}
