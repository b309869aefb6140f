//! `TestServer`: the real `flowers` binary, started with a config the test writes, on
//! loopback ports, CPU slots and a temporary data directory; plus polling helpers (no sleeps
//! to wait for state: every wait is a condition polled against a deadline).

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::{Client, EventInfo, RunInfo, ServiceInfo};

pub const FLOWERS: &str = env!("CARGO_BIN_EXE_flowers");
pub const WORKLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/workload.py");

/// Generous: CI machines have two cores shared by every test binary.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// A `[services.NAME]` table running the workload with fast probes, plus `extra` lines.
pub fn service(name: &str, extra: &str) -> String {
    format!(
        r#"
[services.{name}]
command = ["python3", "-u", "{WORKLOAD}"]
{extra}
[services.{name}.probe]
interval = "100ms"
timeout = "1s"
start_timeout = "20s"
"#
    )
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    pub gateway_port: u16,
    child: Option<Child>,
    pub client: Client,
    /// More arguments for `flowers up`, after `--config flowers.toml`.
    pub up_args: Vec<String>,
}

impl TestServer {
    /// Writes `flowers.toml` (a `[server]` table on free ports, then `body`) and starts
    /// `flowers up`, waiting until the control API answers.
    pub async fn start(body: &str) -> TestServer {
        Self::start_with_env(body, &[]).await
    }

    pub async fn start_with_env(body: &str, env: &[(&str, &str)]) -> TestServer {
        Self::start_with_args(body, env, &[]).await
    }

    pub async fn start_with_args(body: &str, env: &[(&str, &str)], up_args: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let api_port = free_port();
        let gateway_port = free_port();
        let mut server = TestServer {
            dir,
            api_port,
            gateway_port,
            child: None,
            client: Client::new(&format!("http://127.0.0.1:{api_port}")),
            up_args: up_args.iter().map(|a| a.to_string()).collect(),
        };
        server.write_config(body);
        server.launch(env).await;
        server
    }

    pub fn write_config(&self, body: &str) {
        // Two CPU slots unless the test says otherwise: the 2-device behaviour on any machine.
        let devices = if body.contains("[devices]") {
            ""
        } else {
            "[devices]\ncpu_slots = 2\n"
        };
        let text = format!(
            "[server]\napi_listen = \"127.0.0.1:{}\"\ngateway_listen = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n\n{devices}{body}",
            self.api_port, self.gateway_port
        );
        std::fs::write(self.dir.path().join("flowers.toml"), text).expect("config written");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("flowers.log")
    }

    /// Flowers' own output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `flowers up` on the existing directory (a first start, or a restart).
    pub async fn launch(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "Flowers is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut command = Command::new(FLOWERS);
        command
            .args(["up", "--config", "flowers.toml"])
            .args(&self.up_args)
            .current_dir(self.dir.path())
            .env("FLOWERS_LOG", "info")
            .env_remove("FLOWERS_API")
            .env_remove("FLOWERS_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("flowers up starts"));
        let client = self.client.clone();
        self.eventually("the control API to answer", || {
            let client = client.clone();
            async move { client.status().await.ok() }
        })
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9` of Flowers itself; its Runs keep going.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL flowers");
        child.wait().expect("reap flowers");
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait flowers") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "Flowers did not exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `probe` every 50 ms until it gives `Some`, or fails the test with Flowers' log.
    pub async fn eventually<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n--- flowers log ---\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the Run's output contains `text` (e.g. a job saying it installed its
    /// SIGTERM handler, before the test sends one).
    pub async fn wait_for_output(&self, run: &str, text: &str) {
        let log = self.data_dir().join("runs").join(run).join("output.log");
        self.eventually(&format!("{run} to print {text:?}"), || async {
            let output = std::fs::read_to_string(&log).ok()?;
            output.contains(text).then_some(())
        })
        .await;
    }

    /// How many Runs `owner` has had, ended ones included.
    pub async fn run_count(&self, owner: &str) -> usize {
        self.client
            .runs(Some(owner), false, 10_000)
            .await
            .expect("runs")
            .len()
    }

    /// Waits for a ready replica of `name` other than `old` (its replacement).
    pub async fn replacement(&self, name: &str, old: &str) -> RunInfo {
        self.eventually(&format!("a replacement of {old}"), || async {
            let service = self.client.service(name).await.ok()?;
            service
                .runs
                .into_iter()
                .find(|r| r.id != old && r.state == "ready")
        })
        .await
    }

    pub async fn service(&self, name: &str) -> ServiceInfo {
        self.client.service(name).await.expect("service")
    }

    /// Waits until `name` has `n` ready replicas and returns them.
    pub async fn ready_runs(&self, name: &str, n: usize) -> Vec<RunInfo> {
        let client = self.client.clone();
        self.eventually(&format!("{n} ready replica(s) of {name}"), || {
            let client = client.clone();
            let name = name.to_string();
            async move {
                let service = client.service(&name).await.ok()?;
                let ready: Vec<RunInfo> = service
                    .runs
                    .into_iter()
                    .filter(|r| r.state == "ready")
                    .collect();
                (ready.len() == n).then_some(ready)
            }
        })
        .await
    }

    /// Waits for an event of `kind` about `owner` and returns it.
    pub async fn event(&self, owner: &str, kind: &str) -> EventInfo {
        self.events_matching(owner, kind, 1).await.remove(0)
    }

    /// Waits until at least `n` events of `kind` about `owner` exist.
    pub async fn events_matching(&self, owner: &str, kind: &str, n: usize) -> Vec<EventInfo> {
        let client = self.client.clone();
        self.eventually(&format!("{n} {kind} event(s) for {owner}"), || {
            let client = client.clone();
            let (owner, kind) = (owner.to_string(), kind.to_string());
            async move {
                let events = client.events(Some(0), Some(&owner), 10_000).await.ok()?;
                let found: Vec<EventInfo> = events.into_iter().filter(|e| e.kind == kind).collect();
                (found.len() >= n).then_some(found)
            }
        })
        .await
    }

    /// Runs the CLI against this server; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli_in(self.dir.path(), self.client.base(), args)
    }
}

pub fn cli_in(dir: &Path, api: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(FLOWERS)
        .args(args)
        .current_dir(dir)
        .env("FLOWERS_API", api)
        .env_remove("FLOWERS_CONFIG")
        .output()
        .expect("the CLI runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + DEADLINE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid we started; no memory is involved.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Alive and not a zombie (a zombie has exited; only its parent has not reaped it yet).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// GET a path on a Run's port; the JSON answer.
pub async fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    response.json().await.ok()
}

/// Where the real default model `name` ("minilm", "smollm2") is: `FLOWERS_TEST_MINILM` /
/// `FLOWERS_TEST_SMOLLM2` (scripts/test sets them), else asked of scripts/model-paths, which
/// reads scripts/setup's virtual environment. Tests that need a model fail without it.
pub fn default_model(name: &str) -> PathBuf {
    setup_path(name, "model-paths", "the default models")
}

/// `FLOWERS_TEST_{NAME}` (scripts/test sets it), else the `NAME=` line that `scripts/SCRIPT`
/// prints from what scripts/setup installed (`what`, for the message when it did not).
pub fn setup_path(name: &str, script: &str, what: &str) -> PathBuf {
    let variable = format!("FLOWERS_TEST_{}", name.to_uppercase());
    if let Some(path) = std::env::var_os(&variable).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let path = format!("{}/../../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(&path)
        .output()
        .unwrap_or_else(|error| panic!("scripts/{script} does not run: {error}"));
    assert!(
        output.status.success(),
        "{variable} is unset and scripts/{script} failed ({}): run scripts/setup, which installs {what}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let prefix = format!("{name}=");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(&prefix).map(PathBuf::from))
        .unwrap_or_else(|| panic!("scripts/{script} names no {name}"))
}
