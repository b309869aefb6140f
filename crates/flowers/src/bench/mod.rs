//! `flowers bench availability`: the proof that training beside serving fails no request.
//!
//! It starts a Flowers of its own (a child `flowers up` on free loopback ports, two CPU slots, a
//! temporary data directory) with a real service that answers with the model version it loaded
//! (`serve.py`) and a real, preemptible training job that registers a better version every few
//! seconds (`train.py`, promoted automatically on its loss). Each promotion on two slots is the
//! role swap: the job is preempted, the new version starts on its slot, the old one is drained
//! and stopped, the job resumes from its checkpoint on the freed slot. While a bounded load
//! generator sends requests through the gateway, the service's serving process is killed with
//! SIGKILL a few times. The report: requests, failures, versions answered, promotions and
//! whether each was served, preemptions, kills, and p50/p99 latency steady versus during swaps.
//! The exit status is non-zero when any request failed or any check did not hold.
//!
//! `--config FILE` points it at any `flowers.toml` instead (for example
//! `examples/train-and-serve`): the same child Flowers on free loopback ports, a temporary data
//! directory and `--cpu-slots`, load on `--path` through the gateway, kills of `--service`'s
//! serving process, and the versions of the model that service follows, each with its metrics,
//! so the report shows the promotion policy's metric climbing version after version.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use client::{Client, EventInfo, ModelDetail};
use serde::Serialize;
use serde_json::Value;

const SERVE_PY: &str = include_str!("serve.py");
const TRAIN_PY: &str = include_str!("train.py");

#[derive(clap::Args, Debug, Clone)]
pub struct AvailabilityArgs {
    /// How long the load runs.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent clients sending requests back to back.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub concurrency: u32,
    /// SIGKILLs of the serving replica, spread over the run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub kills: u32,
    /// Promotions the run must see to pass.
    #[arg(long, default_value_t = 5)]
    pub min_promotions: u32,
    /// Seconds of "training" between the job's checkpoints.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub epoch: Duration,
    /// Keep the temporary directory (config, data, logs) even when everything passed.
    #[arg(long)]
    pub keep: bool,
    /// Run this flowers.toml instead of the built-in service and job (its listen addresses,
    /// data directory and CPU slots are replaced by the benchmark's own; `--epoch` does not
    /// apply to it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The service to send load to and kill; it must follow a model.
    #[arg(long, default_value = "web")]
    pub service: String,
    /// The path sent through the gateway with GET; answers must be JSON with a "version".
    #[arg(long, default_value = "/predict")]
    pub path: String,
    /// CPU slots of the benchmark's Flowers (two: a promotion swaps serving and training).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub cpu_slots: u32,
}

/// What the benchmark runs: a config file, the service it loads and kills, and the model that
/// service follows.
struct Target {
    config: PathBuf,
    service: String,
    model: String,
}

#[derive(Clone, Debug)]
struct Sample {
    /// Wall clock, milliseconds since the epoch, when the request was sent.
    start_ms: f64,
    latency_ms: f64,
    outcome: Result<u32, String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub duration_s: f64,
    pub concurrency: u32,
    pub requests: usize,
    pub failed: usize,
    pub failures: Vec<String>,
    pub requests_per_s: f64,
    pub versions_registered: Vec<u32>,
    /// The model the service follows.
    pub model: String,
    /// The metric its promotion policy compares, if it has one.
    pub metric: Option<String>,
    /// Every registered version, oldest first, with its metrics.
    pub versions: Vec<VersionReport>,
    pub versions_answered: BTreeMap<u32, usize>,
    pub unregistered_answers: usize,
    pub promotions: Vec<PromotionReport>,
    pub preemptions: usize,
    pub kills: Vec<String>,
    pub steady: Latency,
    pub during_swaps: Latency,
    pub checks: Vec<Check>,
    pub passed: bool,
    pub data_dir: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VersionReport {
    pub version: u32,
    pub metrics: BTreeMap<String, f64>,
    /// Whether it was promoted at some point (during the load or before it).
    pub promoted: bool,
    /// `ready`, `failed` or `deleted` (its files removed by retention).
    pub state: String,
}

#[derive(Debug, Serialize)]
pub struct PromotionReport {
    pub version: u32,
    pub at_s: f64,
    /// Whether a later answer came from it (or the run ended first).
    pub served: bool,
    /// Not served, because a newer version was promoted before its replica was ready (for
    /// example when the replica starting it was the one killed) and that one was served.
    pub superseded: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// A `flowers up` of the benchmark's own, stopped when dropped.
struct Server {
    child: std::process::Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: Flowers stops its Runs gracefully and exits.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Writes the built-in service, job and config into `dir`. The flags of `flowers up` set the
/// listen addresses, data directory and CPU slots, as they do for a `--config` file.
fn write_files(dir: &Path, args: &AvailabilityArgs) -> Result<PathBuf> {
    std::fs::write(dir.join("serve.py"), SERVE_PY)?;
    std::fs::write(dir.join("train.py"), TRAIN_PY)?;
    let config = format!(
        r#"# Written by `flowers bench availability`.
[models.bench]
promote = {{ metric = "loss", mode = "min" }}
keep = 4

[services.web]
command = ["python3", "serve.py"]
devices = 1
model = "bench"
routes = [{{ path = "/" }}]
stop_grace = "5s"

[services.web.probe]
interval = "100ms"
timeout = "1s"
start_timeout = "30s"

[services.web.restart]
backoff = "100ms"
backoff_max = "1s"
crash_loop_after = 1000

[jobs.train]
command = ["python3", "train.py"]
devices = 1
preemptible = true
autostart = true
stop_grace = "10s"
model = "bench"
env = {{ BENCH_EPOCH_SECONDS = "{epoch}" }}
"#,
        epoch = args.epoch.as_secs_f64()
    );
    let path = dir.join("flowers.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out after {}s waiting for {what}", timeout.as_secs())
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

pub async fn availability(args: AvailabilityArgs, json: bool) -> Result<ExitCode> {
    if !args.path.starts_with('/') {
        bail!("--path {:?}: expected a path starting with '/'", args.path);
    }
    // A config file that cannot run the benchmark is refused before anything starts.
    if let Some(config) = &args.config {
        target(config, &args.service, &config::Overrides::default())?;
    }
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        bail!("python3 is needed for the benchmark's service and job, and was not found on PATH");
    }
    let dir = std::env::temp_dir().join(format!("flowers-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let outcome = run(&args, &dir).await;
    let keep = args.keep || !outcome.as_ref().is_ok_and(|r| r.passed);
    match outcome {
        Ok(mut report) => {
            report.data_dir = keep.then(|| dir.display().to_string());
            if !keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(error) => Err(error.context(format!(
            "the benchmark did not complete; its files are in {}",
            dir.display()
        ))),
    }
}

/// Loads `config` as `flowers up` will, and finds the service to load and the model it follows.
fn target(config: &Path, service: &str, overrides: &config::Overrides) -> Result<Target> {
    if !config.is_file() {
        bail!("--config {}: no such file", config.display());
    }
    let loaded = crate::up::load_config(Some(config), overrides)
        .map_err(|error| anyhow::anyhow!("--config {}: {error}", config.display()))?;
    let Some(spec) = loaded.services.get(service) else {
        let names: Vec<&str> = loaded.services.keys().map(|n| n.as_str()).collect();
        bail!(
            "--service {service}: {} has no such service (it has: {})",
            config.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    let Some(model) = &spec.model else {
        bail!(
            "--service {service}: it follows no model in {}; the benchmark needs a service with \
             `model = \"...\"` and a job that registers versions of it",
            config.display()
        );
    };
    Ok(Target {
        config: config.to_path_buf(),
        service: service.to_string(),
        model: model.to_string(),
    })
}

async fn run(args: &AvailabilityArgs, dir: &Path) -> Result<Report> {
    let api_port = free_port()?;
    let gateway_port = free_port()?;
    let overrides = config::Overrides {
        api_listen: Some(([127, 0, 0, 1], api_port).into()),
        gateway_listen: Some(([127, 0, 0, 1], gateway_port).into()),
        data_dir: Some(dir.join("data")),
        cpu_slots: Some(args.cpu_slots),
    };
    let config = match &args.config {
        Some(config) => std::path::absolute(config)?,
        None => write_files(dir, args)?,
    };
    let target = target(&config, &args.service, &overrides)?;
    let log = std::fs::File::create(dir.join("flowers.log"))?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("up")
        .arg("--config")
        .arg(&target.config)
        .arg("--api-listen")
        .arg(overrides.api_listen.unwrap().to_string())
        .arg("--gateway-listen")
        .arg(overrides.gateway_listen.unwrap().to_string())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--cpu-slots")
        .arg(args.cpu_slots.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start `flowers up`")?;
    let server = Server { child };
    let control = Client::new(&format!("http://127.0.0.1:{api_port}"));
    wait_for("the control API", Duration::from_secs(30), || {
        let control = control.clone();
        async move { control.status().await.is_ok() }
    })
    .await?;
    // The job registers the first version, which is promoted and served.
    first_version_served(&control, &target, dir).await?;

    let gateway = format!("http://127.0.0.1:{gateway_port}{}", args.path);
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let started = Instant::now();
    let load_start_ms = now_ms();
    let end = started + args.duration;
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let url = gateway.clone();
        let samples = samples.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < end {
                let start_ms = now_ms();
                let sent = Instant::now();
                let outcome = request(&client, &url).await;
                mine.push(Sample {
                    start_ms,
                    latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
                    outcome,
                });
            }
            samples.lock().unwrap().extend(mine);
        }));
    }
    let kills = chaos(&control, args, &target.service, started).await;
    for worker in workers {
        worker.await?;
    }
    let load_end_ms = now_ms();
    let samples = std::mem::take(&mut *samples.lock().unwrap());

    let events = control.events(Some(0), None, 10_000).await?;
    let model = control.model(&target.model).await?;
    drop(server);
    Ok(analyse(
        args,
        &target.service,
        samples,
        kills?,
        &events,
        &model,
        load_start_ms,
        load_end_ms,
    ))
}

/// Waits for a ready replica of the service; a job of its model that failed, or the service
/// in a crash loop, ends the wait at once with where to read why.
async fn first_version_served(control: &Client, target: &Target, dir: &Path) -> Result<()> {
    let timeout = Duration::from_secs(90);
    let deadline = Instant::now() + timeout;
    let output = |run: &str| dir.join("data").join("runs").join(run).join("output.log");
    loop {
        if let Ok(service) = control.service(&target.service).await {
            if service.ready_replicas >= 1 {
                return Ok(());
            }
            if service.state == "crash_loop" {
                let run = control.runs(Some(&target.service), false, 1).await?;
                let log = run.first().map(|r| output(&r.id).display().to_string());
                bail!(
                    "service {} is in a crash loop ({}); its last Run's output: {}",
                    target.service,
                    service.reason.unwrap_or_default(),
                    log.unwrap_or_else(|| "none".to_string())
                );
            }
        }
        let jobs = control.jobs().await.unwrap_or_default();
        let failed = jobs
            .iter()
            .find(|job| job.model.as_deref() == Some(&target.model) && job.state == "failed");
        if let Some(job) = failed {
            let log = job.last_run.as_ref().map(|r| output(&r.id));
            bail!(
                "job {} failed before a version of {} was served ({}); its output: {}",
                job.name,
                target.model,
                job.reason.clone().unwrap_or_default(),
                log.map_or("none".to_string(), |p| p.display().to_string())
            );
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {}s waiting for the first version of {} to be served by {}",
                timeout.as_secs(),
                target.model,
                target.service
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn request(client: &reqwest::Client, url: &str) -> Result<u32, String> {
    let response = client.get(url).send().await.map_err(|e| format!("{e:#}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("body: {e:#}"))?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            body.chars().take(200).collect::<String>()
        ));
    }
    let value: Value =
        serde_json::from_str(&body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    value["version"]
        .as_u64()
        .map(|v| v as u32)
        .ok_or_else(|| format!("no version in {body}"))
}

/// Kills the serving replica's process with SIGKILL `kills` times, evenly spread.
async fn chaos(
    control: &Client,
    args: &AvailabilityArgs,
    service: &str,
    started: Instant,
) -> Result<Vec<(f64, String)>> {
    let mut kills = Vec::new();
    for i in 0..args.kills {
        let at = args
            .duration
            .mul_f64(f64::from(i + 1) / f64::from(args.kills + 1));
        tokio::time::sleep_until((started + at).into()).await;
        // The newest ready replica: the one serving now.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let runs = control.runs(Some(service), true, 100).await?;
            let target = runs
                .iter()
                .find(|run| run.state == "ready" && run.child_pid.is_some());
            if let Some(run) = target {
                let pid = run.child_pid.unwrap_or(0) as i32;
                let id = run.id.clone();
                let killed_ms = now_ms();
                // SAFETY: kill(2) with a pid read from Flowers' API; no memory is involved.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    kills.push((killed_ms, format!("{id} (pid {pid})")));
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("no ready replica of {service} to kill for 30s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(kills)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency(mut values: Vec<f64>) -> Latency {
    values.sort_by(f64::total_cmp);
    Latency {
        requests: values.len(),
        p50_ms: percentile(&values, 50.0),
        p99_ms: percentile(&values, 99.0),
        max_ms: values.last().copied().unwrap_or(0.0),
    }
}

#[allow(clippy::too_many_arguments)]
fn analyse(
    args: &AvailabilityArgs,
    service: &str,
    samples: Vec<Sample>,
    kills: Vec<(f64, String)>,
    events: &[EventInfo],
    model: &ModelDetail,
    load_start_ms: f64,
    load_end_ms: f64,
) -> Report {
    let at = |e: &EventInfo| e.time_ms as f64;
    let kind = |e: &EventInfo, k: &str| e.kind == k;
    let during_load = |t: f64| t >= load_start_ms && t <= load_end_ms;

    let registered: BTreeSet<u32> = model.versions.iter().map(|v| v.version).collect();
    let mut answered: BTreeMap<u32, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for sample in &samples {
        match &sample.outcome {
            Ok(version) => *answered.entry(*version).or_default() += 1,
            Err(error) => failures.push(format!(
                "at {:.1}s: {error}",
                (sample.start_ms - load_start_ms) / 1000.0
            )),
        }
    }
    let unregistered = answered
        .iter()
        .filter(|(v, _)| !registered.contains(v))
        .map(|(_, n)| n)
        .sum();

    // Promotions during the load, oldest first, and whether an answer came from each afterwards.
    let mut promotion_events: Vec<(f64, u32)> = model
        .promotions
        .iter()
        .map(|p| (p.time_ms as f64, p.version))
        .filter(|(t, _)| during_load(*t))
        .collect();
    promotion_events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ever_promoted: BTreeSet<u32> = model.promotions.iter().map(|p| p.version).collect();
    let mut versions: Vec<VersionReport> = model
        .versions
        .iter()
        .map(|v| VersionReport {
            version: v.version,
            metrics: v.metrics.clone(),
            promoted: ever_promoted.contains(&v.version),
            state: v.state.clone(),
        })
        .collect();
    versions.sort_by_key(|v| v.version);
    let promotions: Vec<PromotionReport> = promotion_events
        .iter()
        .enumerate()
        .map(|(i, (t, version))| {
            let next = promotion_events.get(i + 1).map_or(f64::MAX, |(t, _)| *t);
            let served = samples
                .iter()
                .any(|s| s.start_ms >= *t && s.outcome.as_ref().is_ok_and(|v| v == version));
            // A promotion in the last seconds may be cut off by the end of the load.
            let cut_off = next == f64::MAX && load_end_ms - t < 15_000.0;
            let newer_served = samples
                .iter()
                .any(|s| s.start_ms >= next && s.outcome.as_ref().is_ok_and(|v| v > version));
            PromotionReport {
                version: *version,
                at_s: (t - load_start_ms) / 1000.0,
                served: served || cut_off,
                superseded: !(served || cut_off) && next != f64::MAX && newer_served,
            }
        })
        .collect();
    let preemptions = events
        .iter()
        .filter(|e| kind(e, "job_preempted") && during_load(at(e)))
        .count();

    // Swap windows: promotion → the old replica stopped; kill → a replica ready again.
    let web = |e: &EventInfo| e.owner.as_deref() == Some(service);
    let mut windows: Vec<(f64, f64)> = Vec::new();
    for (t, _) in &promotion_events {
        let end = events
            .iter()
            .filter(|e| web(e) && kind(e, "run_stopped") && at(e) > *t)
            .map(at)
            .next()
            .unwrap_or(load_end_ms);
        windows.push((*t, end));
    }
    for (t, _) in &kills {
        let end = events
            .iter()
            .filter(|e| web(e) && kind(e, "run_ready") && at(e) > *t)
            .map(at)
            .next()
            .unwrap_or(load_end_ms);
        windows.push((*t, end));
    }
    let (mut steady, mut swapping) = (Vec::new(), Vec::new());
    for sample in &samples {
        let end = sample.start_ms + sample.latency_ms;
        let overlaps = windows
            .iter()
            .any(|(a, b)| sample.start_ms <= *b && end >= *a);
        if overlaps {
            swapping.push(sample.latency_ms);
        } else {
            steady.push(sample.latency_ms);
        }
    }

    let elapsed_s = (load_end_ms - load_start_ms) / 1000.0;
    let mut checks = Vec::new();
    let mut check = |name: &str, passed: bool, detail: String| {
        checks.push(Check {
            name: name.to_string(),
            passed,
            detail,
        })
    };
    check(
        "no failed request",
        failures.is_empty() && !samples.is_empty(),
        format!("{} of {} failed", failures.len(), samples.len()),
    );
    check(
        "every answer from a registered version",
        unregistered == 0,
        format!("{unregistered} answer(s) from versions never registered"),
    );
    check(
        "promotions",
        promotions.len() >= args.min_promotions as usize,
        format!(
            "{} (at least {} wanted)",
            promotions.len(),
            args.min_promotions
        ),
    );
    let unserved: Vec<u32> = promotions
        .iter()
        .filter(|p| !p.served && !p.superseded)
        .map(|p| p.version)
        .collect();
    let superseded: Vec<u32> = promotions
        .iter()
        .filter(|p| p.superseded)
        .map(|p| p.version)
        .collect();
    check(
        "each promoted version served (or superseded by a newer one that was)",
        unserved.is_empty(),
        match (unserved.is_empty(), superseded.is_empty()) {
            (true, true) => "all served".to_string(),
            (true, false) => format!("all; superseded before serving: {superseded:?}"),
            (false, _) => format!("never answered, nor any newer version: {unserved:?}"),
        },
    );
    check(
        "preemptions",
        preemptions >= 1,
        format!("{preemptions} (at least 1 wanted)"),
    );
    check(
        "kills",
        kills.len() == args.kills as usize,
        format!("{} of {}", kills.len(), args.kills),
    );
    let passed = checks.iter().all(|c| c.passed);
    failures.truncate(20);
    Report {
        duration_s: elapsed_s,
        concurrency: args.concurrency,
        requests: samples.len(),
        failed: samples.iter().filter(|s| s.outcome.is_err()).count(),
        failures,
        requests_per_s: samples.len() as f64 / elapsed_s.max(0.001),
        versions_registered: registered.into_iter().collect(),
        model: model.model.name.clone(),
        metric: model.model.promote.metric.clone(),
        versions,
        versions_answered: answered,
        unregistered_answers: unregistered,
        promotions,
        preemptions,
        kills: kills
            .into_iter()
            .map(|(t, what)| format!("{what} at {:.1}s", (t - load_start_ms) / 1000.0))
            .collect(),
        steady: latency(steady),
        during_swaps: latency(swapping),
        checks,
        passed,
        data_dir: None,
    }
}

fn print_report(report: &Report) {
    println!(
        "availability: {} requests in {:.1}s ({:.0}/s) from {} clients, {} failed",
        report.requests,
        report.duration_s,
        report.requests_per_s,
        report.concurrency,
        report.failed
    );
    for failure in &report.failures {
        println!("  failed {failure}");
    }
    let promotions: Vec<String> = report
        .promotions
        .iter()
        .map(|p| {
            format!(
                "v{} at {:.1}s{}",
                p.version,
                p.at_s,
                match (p.served, p.superseded) {
                    (true, _) => "",
                    (false, true) => " (superseded)",
                    (false, false) => " (never served)",
                }
            )
        })
        .collect();
    println!(
        "promotions: {} ({})",
        report.promotions.len(),
        promotions.join(", ")
    );
    if let Some(line) = versions_line(report) {
        println!("{line}");
    }
    println!("preemptions: {}", report.preemptions);
    println!(
        "kills: {} ({})",
        report.kills.len(),
        report.kills.join(", ")
    );
    let answered: Vec<String> = report
        .versions_answered
        .iter()
        .map(|(v, n)| format!("v{v}: {n}"))
        .collect();
    println!("answers by version: {}", answered.join(", "));
    println!();
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}",
        "LATENCY", "REQUESTS", "P50 MS", "P99 MS", "MAX MS"
    );
    for (name, l) in [
        ("steady", &report.steady),
        ("during swaps", &report.during_swaps),
    ] {
        println!(
            "{name:<14} {:>9} {:>9.1} {:>9.1} {:>9.1}",
            l.requests, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    println!();
    for check in &report.checks {
        println!(
            "{} {}: {}",
            if check.passed { "ok  " } else { "FAIL" },
            check.name,
            check.detail
        );
    }
    if let Some(dir) = &report.data_dir {
        println!("files kept in {dir}");
    }
}

/// `versions (accuracy, * promoted): 1* 0.312 → 2* 0.524 → 3 0.510`: the promotion policy's
/// metric (or every metric, without one) of each registered version, oldest first.
fn versions_line(report: &Report) -> Option<String> {
    if report.versions.is_empty() {
        return None;
    }
    let shown: Vec<String> = report
        .versions
        .iter()
        .map(|v| {
            let values = match &report.metric {
                Some(metric) => v
                    .metrics
                    .get(metric)
                    .map_or("-".to_string(), |value| format!("{value:.3}")),
                None => v
                    .metrics
                    .iter()
                    .map(|(k, value)| format!("{k} {value:.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            format!(
                "{}{} {values}",
                v.version,
                if v.promoted { "*" } else { "" }
            )
        })
        .collect();
    Some(format!(
        "versions of {} ({}, * promoted): {}",
        report.model,
        report.metric.as_deref().unwrap_or("metrics"),
        shown.join(" → ")
    ))
}
