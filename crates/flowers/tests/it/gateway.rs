//! The gateway in front of real replicas: routing to ready replicas, forwarding headers, and
//! no failed request when a serving replica is killed.

use std::collections::BTreeSet;

use crate::support::*;

fn gateway_url(server: &TestServer, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", server.gateway_port)
}

/// Waits until the gateway's table routes `/pid` to a ready replica.
async fn routed(server: &TestServer, http: &reqwest::Client) {
    server
        .eventually("the gateway to route to the replica", || async {
            let response = http.get(gateway_url(server, "/pid")).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_spread_over_ready_replicas_with_forwarding_headers() {
    let server =
        TestServer::start(&service("web", "replicas = 2\nroutes = [{ path = \"/\" }]")).await;
    let runs = server.ready_runs("web", 2).await;
    let expected: BTreeSet<String> = runs.iter().map(|r| r.id.clone()).collect();
    let http = reqwest::Client::new();
    // Once both replicas are in the gateway's table, sequential requests reach both.
    let seen = server
        .eventually("requests to reach both replicas", || async {
            let mut seen = BTreeSet::new();
            for _ in 0..20 {
                let env: serde_json::Value = http
                    .get(gateway_url(&server, "/env"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                seen.insert(env["FLOWERS_RUN_ID"].as_str()?.to_string());
            }
            (seen == expected).then_some(seen)
        })
        .await;
    assert_eq!(seen.len(), 2);

    let headers: serde_json::Value = http
        .get(gateway_url(&server, "/headers"))
        .header("Connection", "keep-alive, X-Secret-Hop")
        .header("X-Secret-Hop", "must not pass")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["x-forwarded-host"],
        format!("127.0.0.1:{}", server.gateway_port)
    );
    assert!(headers.get("x-secret-hop").is_none(), "{headers}");

    let missing = http
        .get(format!(
            "http://127.0.0.1:{}/nothing-here",
            server.gateway_port
        ))
        .header("Host", "other.lan")
        .send()
        .await
        .unwrap();
    // The route "/" matches any host and path.
    assert_eq!(missing.status(), 404, "the workload's own 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_without_a_route_is_a_clear_404() {
    let server = TestServer::start(&service("web", "routes = [{ path = \"/web\" }]")).await;
    server.ready_runs("web", 1).await;
    let response = reqwest::get(gateway_url(&server, "/other")).await.unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "no_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_only_serving_replica_fails_no_request() {
    let server = TestServer::start(&service(
        "web",
        "routes = [{ path = \"/\" }]\n[services.web.restart]\nbackoff = \"100ms\"",
    ))
    .await;
    let first = server.ready_runs("web", 1).await.remove(0);
    let http = reqwest::Client::new();
    routed(&server, &http).await;

    // kill -9 of the replica's process, then keep asking until its replacement answers.
    signal(first.child_pid.unwrap(), libc::SIGKILL);
    let mut answered = 0;
    let mut failures = Vec::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no replacement answered; {} failures, the first: {:?}\n{}",
            failures.len(),
            &failures[..failures.len().min(3)],
            server.log()
        );
        match http.get(gateway_url(&server, "/env")).send().await {
            Ok(response) if response.status().is_success() => {
                answered += 1;
                let env: serde_json::Value = response.json().await.unwrap();
                if env["FLOWERS_RUN_ID"] != first.id.as_str() {
                    break;
                }
            }
            Ok(response) => failures.push(format!("HTTP {}", response.status())),
            Err(error) => failures.push(error.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed requests, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(answered >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_finishes_its_requests_in_flight_first() {
    let server = TestServer::start(&service(
        "web",
        "routes = [{ path = \"/\" }]\nstop_grace = \"10s\"",
    ))
    .await;
    let run = server.ready_runs("web", 1).await.remove(0);
    let http = reqwest::Client::new();
    routed(&server, &http).await;

    // A POST (never replayed) in flight when the replica is told to stop.
    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = gateway_url(&server, "/sleep?secs=1.5");
        async move { http.post(url).body("precious").send().await }
    });
    server.wait_for_output(&run.id, "sleeping 1.5s").await;
    let (code, out, err) = server.cli(&["stop", &run.id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("stopping {}", run.id)), "{out}");

    let response = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["body"], "precious");
    assert_eq!(answer["run"], run.id.as_str());

    let stopping = server.event("web", "run_stopping").await;
    assert!(
        stopping.message.contains("draining requests"),
        "{}",
        stopping.message
    );
    let stopped = server.event("web", "run_stopped").await;
    assert_eq!(stopped.run.as_deref(), Some(run.id.as_str()));
    // SIGTERM came only after the answer: the workload exits 0 on it.
    assert_eq!(server.client.run(&run.id).await.unwrap().exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_services_limit_is_refused_with_413() {
    let server = TestServer::start(&service(
        "web",
        "routes = [{ path = \"/\" }]\nmax_body = \"1KiB\"",
    ))
    .await;
    server.ready_runs("web", 1).await;
    let http = reqwest::Client::new();
    let small = server
        .eventually("a small body to pass", || async {
            let response = http
                .post(gateway_url(&server, "/sleep?secs=0"))
                .body("x".repeat(1024))
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(response)
        })
        .await;
    assert_eq!(small.status(), 200);
    let large = http
        .post(gateway_url(&server, "/sleep?secs=0"))
        .body("x".repeat(1025))
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), 413);
    let error: serde_json::Value = large.json().await.unwrap();
    assert_eq!(error["code"], "body_too_large");
    assert_eq!(
        error["message"],
        "the request body is 1025 bytes, over service web's limit of 1024 bytes"
    );
}
