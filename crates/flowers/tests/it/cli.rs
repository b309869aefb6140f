//! The CLI as people and scripts use it: `--json` that parses, human tables, events past and
//! live, and clear failures when Flowers is not there or a name is wrong.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

use crate::support::*;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// A service `web` with two replicas on the two CPU slots, and a job `train` never started.
fn web_and_train() -> String {
    format!(
        "{}\n[jobs.train]\ncommand = [\"python3\", \"-u\", \"{WORKLOAD}\"]\n\
         env = {{ WORKLOAD_NO_SERVER = \"1\" }}\n",
        service("web", "replicas = 2\ndevices = 1")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_of_ps_gpus_and_events_parses_with_the_expected_fields() {
    let server = TestServer::start(&web_and_train()).await;
    let mut runs: Vec<String> = server
        .ready_runs("web", 2)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    runs.sort();

    let (code, out, err) = server.cli(&["ps", "--json"]);
    assert_eq!(code, 0, "{err}");
    let ps = json(&out);
    let web = &ps["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["state"], "running");
    assert_eq!(web["replicas"], 2);
    assert_eq!(web["ready_replicas"], 2);
    let mut listed: Vec<&str> = web["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, runs);
    for run in web["runs"].as_array().unwrap() {
        assert_eq!(run["owner"], "web");
        assert_eq!(run["owner_kind"], "service");
        assert_eq!(run["state"], "ready");
        assert!(run["port"].is_u64() && run["pid"].is_u64(), "{run}");
    }
    let train = &ps["jobs"][0];
    assert_eq!(train["name"], "train");
    assert_eq!(train["state"], "idle");
    assert!(train["last_run"].is_null());

    let (code, out, err) = server.cli(&["gpus", "--json"]);
    assert_eq!(code, 0, "{err}");
    let gpus = json(&out);
    assert!(
        ["nvml", "fake", "none"].contains(&gpus["gpu_source"].as_str().unwrap()),
        "{gpus}"
    );
    assert!(gpus["gpu_status"].is_string());
    let slots: Vec<&serde_json::Value> = gpus["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "cpu")
        .collect();
    assert_eq!(slots.len(), 2, "{gpus}");
    let mut allocated = Vec::new();
    for (index, slot) in slots.iter().enumerate() {
        assert_eq!(slot["id"], format!("cpu{index}"));
        assert_eq!(slot["index"], index);
        assert!(slot["telemetry"].is_null());
        let allocations = slot["allocations"].as_array().unwrap();
        assert_eq!(allocations.len(), 1, "{slot}");
        assert_eq!(allocations[0]["owner"], "web");
        allocated.push(allocations[0]["run"].as_str().unwrap());
    }
    allocated.sort();
    assert_eq!(allocated, runs);

    let (code, out, err) = server.cli(&["events", "--json"]);
    assert_eq!(code, 0, "{err}");
    let events = json(&out);
    let events = events.as_array().expect("a list of events");
    let fields = ["id", "time_ms", "kind", "owner", "run", "device", "message"];
    for event in events {
        for field in fields {
            assert!(event.get(field).is_some(), "{field} missing in {event}");
        }
    }
    for run in &runs {
        assert!(
            events.iter().any(|e| e["kind"] == "run_started"
                && e["run"] == run.as_str()
                && e["owner"] == "web"),
            "no run_started for {run}: {out}"
        );
    }
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "not in id order: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_ps_and_events_show_tables_and_kinds() {
    let server = TestServer::start(&web_and_train()).await;
    let runs = server.ready_runs("web", 2).await;

    let (code, out, err) = server.cli(&["ps"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header[..4], ["NAME", "KIND", "STATE", "READY"], "{out}");
    let web = out
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no row for web:\n{out}"));
    let cells: Vec<&str> = web.split_whitespace().collect();
    assert_eq!(cells[..4], ["web", "service", "running", "2/2"], "{out}");
    for run in &runs {
        assert!(web.contains(&run.id), "{out}");
    }
    let train = out
        .lines()
        .find(|l| l.starts_with("train "))
        .unwrap_or_else(|| panic!("no row for train:\n{out}"));
    let cells: Vec<&str> = train.split_whitespace().collect();
    assert_eq!(cells[..4], ["train", "job", "idle", "-"], "{out}");

    server.events_matching("web", "run_ready", 2).await;
    let (code, out, err) = server.cli(&["events"]);
    assert_eq!(code, 0, "{err}");
    for run in &runs {
        for kind in ["run_started", "run_ready"] {
            assert!(
                out.lines().any(|l| {
                    let cells: Vec<&str> = l.split_whitespace().collect();
                    cells.get(1) == Some(&kind)
                        && cells.get(2) == Some(&"web")
                        && cells.get(3) == Some(&run.id.as_str())
                }),
                "no {kind} line for {}:\n{out}",
                run.id
            );
        }
    }
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a line in time")
        .expect("stdout reads")
        .expect("still following")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_a_new_event_as_it_happens() {
    let server = TestServer::start(&service("web", "")).await;
    let run = server.ready_runs("web", 1).await.remove(0);
    server.event("web", "run_ready").await;

    let mut child = tokio::process::Command::new(FLOWERS)
        .args(["events", "-f"])
        .env("FLOWERS_API", server.client.base())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("flowers events -f starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The backlog first: the replica became ready before the command started.
    loop {
        let line = next_line(&mut lines).await;
        if line.contains("run_ready") && line.contains(&run.id) {
            break;
        }
    }
    let _ = reqwest::get(format!(
        "http://127.0.0.1:{}/crash?code=3",
        run.port.unwrap()
    ))
    .await;
    loop {
        let line = next_line(&mut lines).await;
        if line.contains("run_exited") {
            assert!(line.contains(&run.id), "{line}");
            assert!(line.ends_with("exited code=3"), "{line}");
            break;
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "still following after a live event"
    );
    child.kill().await.unwrap();
}

#[test]
fn the_cli_against_a_closed_port_says_flowers_is_not_running() {
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["ps"][..],
        &["events"],
        &["logs", "web"],
        &["gpus", "--json"],
    ] {
        let (code, out, err) = cli_in(dir.path(), &api, args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains(&format!("cannot reach Flowers at {api}")),
            "{args:?}: {err}"
        );
        assert!(err.contains("is `flowers up` running"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_fail_with_the_api_message() {
    let server = TestServer::start(&service("web", "")).await;
    let (code, out, err) = server.cli(&["logs", "NOPE"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(err, "error: no service, job or run is named \"NOPE\"\n");

    let (code, out, err) = server.cli(&["stop", "nope-1"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(err, "error: no run is named \"nope-1\"\n");

    let (code, _out, err) = server.cli(&["run", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(err, "error: no job is named \"nope\"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_api_beyond_loopback_is_warned_about() {
    let mut server = TestServer::start("").await;
    assert!(
        !server.log().contains("warning: the control API"),
        "{}",
        server.log()
    );
    server.terminate();
    let port = free_port();
    let address = format!("0.0.0.0:{port}");
    server.api_port = port;
    server.client = client::Client::new(&format!("http://127.0.0.1:{port}"));
    server
        .launch(&[("FLOWERS_API_LISTEN", address.as_str())])
        .await;
    let status = server.client.status().await.unwrap();
    assert_eq!(status.api_listen, address);
    assert!(
        server.log().contains(&format!(
            "warning: the control API listens on {address}, beyond this machine, and has no authentication"
        )),
        "{}",
        server.log()
    );
}
