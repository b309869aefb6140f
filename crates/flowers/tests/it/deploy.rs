//! Services and jobs added at run time: `flowers deploy`, `flowers train`, `flowers remove`
//! and `PUT`/`DELETE /v1/services|jobs/NAME`: kept across restarts, replaced blue/green, drained
//! on removal, and refused where the configuration file or the other kind has the name.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn gateway(server: &TestServer, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", server.gateway_port)
}

/// The JSON form of a service table running the workload with fast probes.
fn workload_service(route: &str, env: serde_json::Value) -> serde_json::Value {
    json!({
        "command": ["python3", "-u", WORKLOAD],
        "workdir": "/",
        "routes": [{"path": route}],
        "devices": 0,
        "env": env,
        "probe": {"interval": "100ms", "start_timeout": "20s"}
    })
}

/// GETs the workload's `/env` at `url` back to back for 4 s: each answer's status and mark.
fn steady_load(url: String) -> tokio::task::JoinHandle<Vec<(u16, Option<String>)>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut answers = Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(4);
        while std::time::Instant::now() < end {
            let response = http.get(&url).send().await.unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            answers.push((status, body["WORKLOAD_MARK"].as_str().map(str::to_string)));
        }
        answers
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_service_is_routed_kept_across_restarts_replaced_blue_green_and_drained() {
    let mut server = TestServer::start(&service("web", "routes = [{ path = \"/web\" }]")).await;

    // `flowers deploy` with the workload as the program: the CLI makes its command.
    let (code, out, err) = server.cli(&[
        "deploy",
        WORKLOAD,
        "--name",
        "extra",
        "--devices",
        "0",
        "--env",
        "WORKLOAD_READY_AFTER=0.2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "service extra added with 1 replica(s)");
    let first = server.ready_runs("extra", 1).await.remove(0);
    let info = server.service("extra").await;
    assert!(info.added);
    assert!(!server.service("web").await.added);
    let http = reqwest::Client::new();
    let env: serde_json::Value = http
        .get(gateway(&server, "/extra/env"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(env["FLOWERS_ROUTE_PREFIXES"], "/extra");
    assert_eq!(env["FLOWERS_PROBE_PATH"], "/healthz");
    // The embedded SDK comes after the PYTHONPATH the Run would have had.
    let python_path = env["PYTHONPATH"].as_str().unwrap();
    let sdk = server.data_dir().join("python");
    assert!(
        python_path.ends_with(sdk.to_str().unwrap()),
        "{python_path}"
    );
    assert_eq!(env["FLOWERS_RUN_ID"], first.id);
    server.event("extra", "owner_added").await;

    // It survives a restart of Flowers (adopted, since its spec did not change).
    server.terminate();
    server.launch(&[]).await;
    server.ready_runs("extra", 1).await;
    assert!(server.service("extra").await.added);

    // A new spec: a replica of it starts beside the old one, which is drained and stopped
    // once the new one is ready; requests meanwhile all succeed.
    let before = server.ready_runs("extra", 1).await.remove(0);
    let load = steady_load(gateway(&server, "/extra/env"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changed = server
        .client
        .put_service(
            "extra",
            &workload_service(
                "/extra",
                json!({"WORKLOAD_MARK": "two", "WORKLOAD_READY_AFTER": "1"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        changed.message,
        "service extra changed: its replicas are replaced blue/green"
    );
    let after = server.replacement("extra", &before.id).await;
    let stopped = server
        .eventually("the old replica to be stopped", || async {
            let run = server.client.run(&before.id).await.ok()?;
            (run.state == "stopped").then_some(run)
        })
        .await;
    assert_eq!(
        stopped.reason.as_deref(),
        Some("replaced by a ready replica of the service's new spec")
    );
    let answers = load.await.unwrap();
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert!(answers
        .iter()
        .any(|(_, mark)| mark.as_deref() == Some("two")));
    assert_ne!(after.id, before.id);

    // Removal: a request in flight finishes; then the route is gone.
    let slow = {
        let url = gateway(&server, "/extra/sleep?secs=1");
        tokio::spawn(async move { reqwest::Client::new().post(url).send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out, err) = server.cli(&["remove", "extra"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "service extra removed; draining and stopping 1 replica(s)"
    );
    assert_eq!(slow.await.unwrap().unwrap().status().as_u16(), 200);
    let gone = http
        .get(gateway(&server, "/extra/env"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    assert!(server.client.service("extra").await.is_err());
    // And it stays gone after a restart.
    server.terminate();
    server.launch(&[]).await;
    assert!(server.client.service("extra").await.is_err());
}

/// A service that cannot run twice (it locks a file, as the RAG service locks its index) with
/// `replace = "stop-first"`: on a new spec the old replica exits first, the new one starts once
/// it has, and requests meanwhile wait on the gateway instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_first_service_is_replaced_once_its_old_replica_has_exited() {
    let server = TestServer::start(&service("web", "")).await;
    let lock = server.data_dir().join("single-writer.lock");
    let spec = |mark: &str| {
        let mut spec = workload_service(
            "/locked",
            json!({"WORKLOAD_LOCK_FILE": lock.to_str().unwrap(), "WORKLOAD_MARK": mark}),
        );
        spec["replace"] = json!("stop-first");
        spec
    };
    server
        .client
        .put_service("locked", &spec("one"))
        .await
        .unwrap();
    let before = server.ready_runs("locked", 1).await.remove(0);

    let load = steady_load(gateway(&server, "/locked/env"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server
        .client
        .put_service("locked", &spec("two"))
        .await
        .unwrap();
    let after = server.replacement("locked", &before.id).await;
    let stopped = server.client.run(&before.id).await.unwrap();
    assert_eq!(stopped.state, "stopped");
    assert_eq!(
        stopped.reason.as_deref(),
        Some(
            "the service's spec changed; stopped first (replace = \"stop-first\"), then a \
             replica of the service's new spec starts"
        )
    );
    let answers = load.await.unwrap();
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert_eq!(
        answers.last().unwrap().1.as_deref(),
        Some("two"),
        "{answers:?}"
    );
    // The new replica never met the lock held: two Runs in all, none failed.
    assert_eq!(server.run_count("locked").await, 2);
    assert_ne!(after.id, before.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_added_with_train_runs_and_names_are_checked() {
    let server = TestServer::start(&service("web", "")).await;
    let (code, out, err) = server.cli(&[
        "train",
        WORKLOAD,
        "--name",
        "fit",
        "--model",
        "m",
        "--preemptible",
        "--env",
        "WORKLOAD_NO_SERVER=1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "job fit added, starting");
    let job = server
        .eventually("the job to run", || async {
            let job = server.client.job("fit").await.ok()?;
            (job.state == "running").then_some(job)
        })
        .await;
    assert!(job.added && job.preemptible);
    assert_eq!(job.model.as_deref(), Some("m"));
    // The model it names exists from then on.
    server.client.model("m").await.unwrap();

    // Refusals say why.
    for (args, says) in [
        (
            vec!["train", WORKLOAD, "--name", "fit"],
            "job fit is running (run fit-",
        ),
        (
            vec!["deploy", WORKLOAD, "--name", "web"],
            "web is declared in the configuration file; change it there",
        ),
        (
            vec!["deploy", WORKLOAD, "--name", "fit"],
            "fit is already a job; services and jobs share one set of names",
        ),
        (
            vec!["remove", "web"],
            "web is declared in the configuration file; remove it there",
        ),
        (
            vec!["remove", "nothing"],
            "no service or job is named \"nothing\"",
        ),
        (
            vec!["deploy", "/no/such/app.py", "--name", "x"],
            "/no/such/app.py: No such file or directory",
        ),
        (
            vec![
                "deploy",
                WORKLOAD,
                "--name",
                "x",
                "--vram",
                "lots",
                "--devices",
                "1",
            ],
            "request body: vram: ",
        ),
        (
            vec!["deploy", WORKLOAD, "--name", "Bad_Name"],
            "request body: name: ",
        ),
        (
            vec!["deploy", WORKLOAD, "--name", "x", "--env", "NOEQUALS"],
            "expected KEY=VALUE",
        ),
        (
            vec![
                "deploy",
                WORKLOAD,
                "--name",
                "x",
                "--probe-interval",
                "often",
            ],
            "request body: probe.interval: ",
        ),
        (
            vec!["deploy", WORKLOAD, "--name", "x", "--probe-path", "healthz"],
            "request body: probe.path: ",
        ),
    ] {
        let (code, _, err) = server.cli(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A body that is not a table at all.
    let response = reqwest::Client::new()
        .put(format!(
            "http://127.0.0.1:{}/v1/services/x",
            server.api_port
        ))
        .body("[1, 2]")
        .send()
        .await
        .unwrap();
    let message = crate::api::error_message(response, 400, "bad_request").await;
    assert!(message.contains("expected a JSON object"), "{message}");
    assert!(server.client.service("x").await.is_err());

    // Removing the job stops its Run gracefully.
    let run = job.last_run.unwrap();
    let (code, out, err) = server.cli(&["remove", "fit"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("job fit removed; stopping run {}", run.id)
    );
    server
        .eventually("the job's run to stop", || async {
            let run = server.client.run(&run.id).await.ok()?;
            (run.state == "stopped").then_some(())
        })
        .await;
    assert!(server.client.job("fit").await.is_err());
    server.event("fit", "owner_removed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_sdk_service_deploys_with_nothing_installed() {
    let server = TestServer::start("").await;
    // Ten lines with the SDK Flowers carries itself: no pip, no PYTHONPATH from the user.
    let app = server.dir.path().join("hello.py");
    std::fs::write(
        &app,
        r#"import flowers

app = flowers.Service()

@app.route("/greet", methods=("GET",))
def greet(request):
    return {"hello": request.query.get("name", "world"), "sdk": flowers.__file__}

app.run()
"#,
    )
    .unwrap();
    let app = app.to_str().unwrap();
    let (code, _, err) = server.cli(&[
        "deploy",
        app,
        "--name",
        "hello",
        "--devices",
        "0",
        "--probe-interval",
        "200ms",
    ]);
    assert_eq!(code, 0, "{err}");
    let url = format!(
        "http://127.0.0.1:{}/hello/greet?name=flowers",
        server.gateway_port
    );
    // The request waits in the gateway's hold queue until the replica is ready.
    let answer: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(answer["hello"], "flowers", "{answer}");
    let sdk = answer["sdk"].as_str().unwrap();
    let installed = server.data_dir().join("python/flowers/__init__.py");
    assert_eq!(
        std::fs::canonicalize(sdk).unwrap(),
        std::fs::canonicalize(installed).unwrap()
    );
}
