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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_an_api_key_needs_it_and_the_replica_never_sees_it() {
    // The key and its config line come from the CLI, as a user would get them.
    let (code, out, err) = cli_in(
        std::path::Path::new("."),
        "http://127.0.0.1:1",
        &["gateway", "new-key", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = made["key"].as_str().unwrap().to_string();
    let digest = made["digest"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64, "32 random bytes as hex");
    assert!(digest.starts_with("sha256:") && digest.len() == 7 + 64);
    assert!(!digest.contains(&key));

    let server = TestServer::start(&service(
        "web",
        &format!("routes = [{{ path = \"/\" }}]\napi_keys = [\"{digest}\"]"),
    ))
    .await;
    server.ready_runs("web", 1).await;
    let http = reqwest::Client::new();
    let with_key = server
        .eventually("the gateway to route to the replica", || async {
            let response = http
                .get(gateway_url(&server, "/headers"))
                .bearer_auth(&key)
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(response)
        })
        .await;
    let headers: serde_json::Value = with_key.json().await.unwrap();
    assert!(headers.get("authorization").is_none(), "{headers}");

    for authorization in [None, Some("Bearer not-the-key".to_string())] {
        let mut request = http.get(gateway_url(&server, "/headers"));
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["code"], "unauthorized");
        assert!(
            !error.to_string().contains(&key),
            "an error must not echo a key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_in_the_access_log_the_gateway_report_and_the_metrics() {
    let server = TestServer::start(&service("web", "routes = [{ path = \"/web\" }]")).await;
    let run = server.ready_runs("web", 1).await.remove(0);
    let http = reqwest::Client::new();
    server
        .eventually("the gateway to route to the replica", || async {
            let response = http.get(gateway_url(&server, "/web/x")).send().await.ok()?;
            (response.status() == 404).then_some(())
        })
        .await;
    let response = http
        .get(gateway_url(&server, "/elsewhere?token=secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // One JSON line per request, written in the background.
    let log = server.data_dir().join("logs").join("access.log");
    let lines: Vec<serde_json::Value> = server
        .eventually("the access log to have the no_route line", || async {
            let text = std::fs::read_to_string(&log).ok()?;
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).expect("every line is JSON"))
                .collect();
            lines
                .iter()
                .any(|line| line["error"] == "no_route")
                .then_some(lines)
        })
        .await;
    let routed = lines
        .iter()
        .find(|line| line["path"] == "/web/x")
        .expect("the routed request's line");
    assert_eq!(routed["status"], 404, "the workload's own 404");
    assert_eq!(routed["method"], "GET");
    assert_eq!(routed["service"], "web");
    assert_eq!(routed["run"], run.id.as_str());
    assert_eq!(routed["error"], serde_json::Value::Null);
    assert!(routed["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(routed["bytes_out"].as_u64().is_some() && routed["duration_ms"].is_number());
    assert!(routed["time"].as_str().unwrap().ends_with('Z'));
    let unrouted = lines
        .iter()
        .find(|line| line["error"] == "no_route")
        .unwrap();
    assert_eq!(unrouted["path"], "/elsewhere", "no query string in the log");
    assert_eq!(unrouted["service"], serde_json::Value::Null);
    assert!(!std::fs::read_to_string(&log).unwrap().contains("secret"));

    let (code, out, err) = server.cli(&["gateway", "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let web = &report["routes"][0];
    assert_eq!(web["service"], "web");
    assert_eq!(web["path_prefix"], "/web");
    assert_eq!(web["active"], true);
    let requests = web["traffic"]["requests"].as_u64().unwrap();
    assert!(requests >= 1);
    assert_eq!(
        web["traffic"]["responses"]["4xx"].as_u64().unwrap(),
        requests
    );
    assert_eq!(
        web["traffic"]["latency"]["count"].as_u64().unwrap(),
        requests
    );
    assert!(web["traffic"]["latency"]["p50_seconds"].is_number());
    assert_eq!(report["unrouted"]["errors"]["no_route"], 1);
    assert_eq!(report["access_log_dropped"], 0);

    let (code, out, err) = server.cli(&["gateway"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("SERVICE"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("web ") && l.contains("/web")),
        "{out}"
    );
    assert!(
        out.contains("(no route)") && out.contains("no_route=1"),
        "{out}"
    );

    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", server.api_port))
        .await
        .unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = metrics.text().await.unwrap();
    let expected = format!(
        "flowers_gateway_requests_total{{service=\"web\",host=\"\",prefix=\"/web\",class=\"4xx\"}} {requests}"
    );
    assert!(metrics.lines().any(|l| l == expected), "{metrics}");
}
