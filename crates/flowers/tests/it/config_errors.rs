//! A bad config is refused before anything starts: `flowers check` and `flowers up` report
//! every problem as `FILE:LINE: FIELD: MESSAGE` (exit 2), `--json` gives the same as data, and
//! a bad `FLOWERS_*` variable is refused by name.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// An address no test listens on: `check` never connects, so any will do.
const NO_API: &str = "http://127.0.0.1:9";

/// Writes `flowers.toml` with `body` in a fresh directory and runs `flowers check flowers.toml`.
fn check(body: &str) -> (tempfile::TempDir, i32, String, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("flowers.toml"), body).expect("config written");
    let (code, out, err) = cli_in(dir.path(), NO_API, &["check", "flowers.toml"]);
    (dir, code, out, err)
}

/// `body` has exactly the problem `expected` (the whole line), and nothing else is printed.
fn assert_one_problem(body: &str, expected: &str) {
    let (_dir, code, out, err) = check(body);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "");
    assert_eq!(err, format!("{expected}\nflowers.toml: 1 problem(s)\n"));
}

#[test]
fn a_good_file_is_ok_with_its_counts_in_text_and_json() {
    let body = r#"
[services.web]
command = ["python3", "app.py"]
[services.api]
command = ["python3", "api.py"]
replicas = 2
[jobs.train]
command = ["python3", "train.py"]
"#;
    let (dir, code, out, err) = check(body);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "flowers.toml: ok (2 service(s), 1 job(s))\n");
    assert_eq!(err, "");

    let (code, out, err) = cli_in(dir.path(), NO_API, &["check", "--json", "flowers.toml"]);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["file"], "flowers.toml");
    assert_eq!(summary["services"], serde_json::json!(["api", "web"]));
    assert_eq!(summary["jobs"], serde_json::json!(["train"]));
    assert_eq!(summary["api_listen"], "127.0.0.1:7070");
    assert_eq!(summary["gateway_listen"], "0.0.0.0:8080");
}

#[test]
fn a_toml_syntax_error_names_its_line() {
    let (_dir, code, _out, err) = check("[server]\napi_listen = \"127.0.0.1:1\"\nkeep = = 3\n");
    assert_eq!(code, 2, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("flowers.toml:3: invalid TOML: "),
        "{err}"
    );
    assert_eq!(lines[1], "flowers.toml: 1 problem(s)");
}

#[test]
fn an_unknown_key_suggests_the_closest_one() {
    assert_one_problem(
        "[services.web]\ncommand = [\"app\"]\nreplica = 2\n",
        "flowers.toml:3: services.web.replica: unknown key; did you mean `replicas`?",
    );
    assert_one_problem(
        "[logs]\nzzz = 1\n",
        "flowers.toml:2: logs.zzz: unknown key; expected one of `max_size`, `keep`, `keep_runs`",
    );
}

#[test]
fn a_wrong_type_says_what_was_expected_and_got() {
    assert_one_problem(
        "\n[services.web]\ncommand = [\"app\"]\nreplicas = \"two\"\n",
        "flowers.toml:4: services.web.replicas: expected an integer 0..=64, got \"two\"",
    );
    assert_one_problem(
        "[jobs.train]\ncommand = [\"t\"]\npreemptible = \"yes\"\n",
        "flowers.toml:3: jobs.train.preemptible: expected true or false, got \"yes\"",
    );
}

#[test]
fn an_out_of_range_integer_is_refused() {
    assert_one_problem(
        "[devices]\ncpu_slots = 300\n",
        "flowers.toml:2: devices.cpu_slots: expected an integer 0..=256, got 300",
    );
    assert_one_problem(
        "[services.web]\ncommand = [\"app\"]\nreplicas = 65\n",
        "flowers.toml:3: services.web.replicas: expected an integer 0..=64, got 65",
    );
}

#[test]
fn a_missing_command_points_at_the_table() {
    assert_one_problem(
        "[server]\n\n\n[services.web]\nreplicas = 1\n",
        "flowers.toml:4: services.web.command: required",
    );
}

#[test]
fn vram_without_a_device_is_refused() {
    assert_one_problem(
        "[jobs.t]\ncommand = [\"t\"]\ndevices = 0\nvram = \"2GiB\"\n",
        "flowers.toml:4: jobs.t.vram: needs devices = 1",
    );
}

#[test]
fn a_bad_duration_is_refused() {
    assert_one_problem(
        "[services.web]\ncommand = [\"app\"]\nstop_grace = \"ten\"\n",
        "flowers.toml:3: services.web.stop_grace: expected a duration such as \"500ms\", \"2s\" \
         or \"1m\", got \"ten\"",
    );
}

#[test]
fn a_bad_size_is_refused() {
    assert_one_problem(
        "[jobs.t]\ncommand = [\"t\"]\ndevices = 1\nvram = \"lots\"\n",
        "flowers.toml:4: jobs.t.vram: expected a size such as \"512MiB\", \"6GiB\" or \"8GB\", \
         got \"lots\"",
    );
    assert_one_problem(
        "[logs]\nmax_size = \"1KiB\"\n",
        "flowers.toml:2: logs.max_size: expected a size of at least 4KiB, got \"1KiB\"",
    );
}

#[test]
fn a_bad_name_is_refused() {
    assert_one_problem(
        "[services.Web_1]\ncommand = [\"app\"]\n",
        "flowers.toml:1: services.Web_1: expected a name of lowercase letters, digits and '-', \
         starting with a letter, at most 48 characters; got \"Web_1\"",
    );
}

#[test]
fn a_bad_route_path_is_refused() {
    assert_one_problem(
        "[services.web]\ncommand = [\"app\"]\nroutes = [{ path = \"web\" }]\n",
        "flowers.toml:3: services.web.routes[0].path: expected a path starting with \"/\" such \
         as \"/web\", got \"web\"",
    );
}

#[test]
fn an_env_key_flowers_sets_is_refused() {
    assert_one_problem(
        "[services.web]\ncommand = [\"app\"]\nenv = { FLOWERS_PORT = \"1\" }\n",
        "flowers.toml:3: services.web.env.FLOWERS_PORT: FLOWERS_* variables are set by Flowers \
         for each Run",
    );
}

#[test]
fn a_job_may_not_take_a_service_name() {
    assert_one_problem(
        "[services.web]\ncommand = [\"app\"]\n\n[jobs.web]\ncommand = [\"t\"]\n",
        "flowers.toml:4: jobs.web: the name is already used by `services.web`; a service and a \
         job may not share a name (they share run ids and logs)",
    );
}

#[test]
fn a_missing_workdir_is_refused_with_its_resolved_path() {
    let (dir, code, out, err) =
        check("[services.web]\ncommand = [\"app\"]\nworkdir = \"missing\"\n");
    assert_eq!(code, 2, "{out}");
    // Relative to the file's directory, as the process's working directory names it.
    let base = dir.path().canonicalize().unwrap();
    assert_eq!(
        err,
        format!(
            "flowers.toml:3: services.web.workdir: directory {}/missing does not exist\n\
             flowers.toml: 1 problem(s)\n",
            base.display()
        )
    );
}

const SEVERAL: &str = r#"[services.web]
command = ["app"]
replicas = "two"
stop_grace = "ten"
[jobs.train]
priority = 5000
"#;

#[test]
fn every_problem_is_reported_at_once_in_text_and_json() {
    let expected = [
        (
            3,
            "services.web.replicas",
            "expected an integer 0..=64, got \"two\"",
        ),
        (
            4,
            "services.web.stop_grace",
            "expected a duration such as \"500ms\", \"2s\" or \"1m\", got \"ten\"",
        ),
        (5, "jobs.train.command", "required"),
        (
            6,
            "jobs.train.priority",
            "expected an integer -1000..=1000, got 5000",
        ),
    ];
    let (dir, code, out, err) = check(SEVERAL);
    assert_eq!(code, 2, "{out}");
    let mut lines: Vec<String> = expected
        .iter()
        .map(|(line, field, message)| format!("flowers.toml:{line}: {field}: {message}"))
        .collect();
    lines.push("flowers.toml: 4 problem(s)".to_string());
    assert_eq!(err, format!("{}\n", lines.join("\n")));

    let (code, out, err) = cli_in(dir.path(), NO_API, &["check", "--json", "flowers.toml"]);
    assert_eq!(code, 2, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["file"], "flowers.toml");
    let problems = answer["problems"].as_array().expect("a list of problems");
    assert_eq!(problems.len(), expected.len(), "{out}");
    for (problem, (line, field, message)) in problems.iter().zip(expected) {
        assert_eq!(problem["file"], "flowers.toml");
        assert_eq!(problem["line"], line);
        assert_eq!(problem["field"], field);
        assert_eq!(problem["message"], message);
        assert_eq!(
            problem["text"],
            format!("flowers.toml:{line}: {field}: {message}")
        );
    }
}

#[test]
fn check_without_a_file_reads_the_local_one_else_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = cli_in(dir.path(), NO_API, &["check"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "the embedded default: ok (5 service(s), 1 job(s))\n");

    std::fs::write(
        dir.path().join("flowers.toml"),
        "[devices]\ncpu_slots = -1\n",
    )
    .unwrap();
    let (code, _out, err) = cli_in(dir.path(), NO_API, &["check"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "flowers.toml:2: devices.cpu_slots: expected an integer 0..=256, got -1\n\
         flowers.toml: 1 problem(s)\n"
    );
}

/// Runs `flowers up` in `dir` with `env`, expecting it to exit by itself; kills it and fails
/// the test if it is still running at the deadline.
fn up_in(dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(FLOWERS);
    command
        .args(["up", "--config", "flowers.toml"])
        .current_dir(dir)
        .env_remove("FLOWERS_API")
        .env_remove("FLOWERS_CONFIG")
        .env_remove("FLOWERS_CPU_SLOTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("flowers up starts");
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().expect("wait flowers").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "flowers up kept running with a bad config:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("flowers up output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A config for `up` on free ports with a data directory beside it, then `body`.
fn write_up_config(dir: &Path, body: &str) -> u16 {
    let api_port = free_port();
    let text = format!(
        "[server]\napi_listen = \"127.0.0.1:{api_port}\"\ngateway_listen = \"127.0.0.1:{}\"\n\
         data_dir = \"data\"\n{body}",
        free_port()
    );
    std::fs::write(dir.join("flowers.toml"), text).unwrap();
    api_port
}

fn assert_nothing_started(dir: &Path, api_port: u16) {
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err(),
        "the control API port is open"
    );
    assert!(!dir.join("data").exists(), "the data directory was created");
}

#[test]
fn up_with_a_bad_config_prints_the_problems_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let api_port = write_up_config(
        dir.path(),
        &format!(
            "{}\n[services.other]\nreplicas = 1\n",
            service("web", "replicas = \"two\"")
        ),
    );
    let text = std::fs::read_to_string(dir.path().join("flowers.toml")).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let (code, out, err) = up_in(dir.path(), &[]);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert_eq!(
        err,
        format!(
            "flowers.toml:{}: services.web.replicas: expected an integer 0..=64, got \"two\"\n\
             flowers.toml:{}: services.other.command: required\n\
             flowers: the configuration has problems; nothing was started\n",
            line_of("replicas = \"two\""),
            line_of("[services.other]"),
        )
    );
    assert_nothing_started(dir.path(), api_port);
}

#[test]
fn a_bad_flowers_cpu_slots_is_refused_by_name() {
    let expected = "environment: FLOWERS_CPU_SLOTS: expected an integer 0..=256, got \"lots\"";
    let dir = tempfile::tempdir().unwrap();
    let api_port = write_up_config(dir.path(), "");

    let (code, out, err) = up_in(dir.path(), &[("FLOWERS_CPU_SLOTS", "lots")]);
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert_eq!(
        err,
        format!("{expected}\nflowers: the configuration has problems; nothing was started\n")
    );
    assert_nothing_started(dir.path(), api_port);

    let output = Command::new(FLOWERS)
        .args(["check", "flowers.toml"])
        .current_dir(dir.path())
        .env("FLOWERS_CPU_SLOTS", "257")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "environment: FLOWERS_CPU_SLOTS: expected an integer 0..=256, got \"257\"\n\
         flowers.toml: 1 problem(s)\n"
    );
}
