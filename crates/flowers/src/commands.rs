//! The commands other than `up`: `check` reads the config file; the rest talk to a running
//! Flowers through the control API only.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use client::{Client, ClientError, DeviceInfo, EventInfo, RunInfo, TrafficInfo};
use futures::StreamExt;

use crate::table::Table;
use crate::up::{config_path, load_config};
use crate::Command;

pub fn check(file: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let path = config_path(file);
    let shown = path
        .as_ref()
        .map_or("the embedded default".to_string(), |p| {
            p.display().to_string()
        });
    match load_config(path.as_deref(), &config::Overrides::default()) {
        Ok(config) => {
            if json {
                let summary = serde_json::json!({
                    "ok": true,
                    "file": shown,
                    "services": config.services.keys().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "jobs": config.jobs.keys().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "data_dir": config.server.data_dir,
                    "api_listen": config.server.api_listen.to_string(),
                    "gateway_listen": config.server.gateway_listen.to_string(),
                });
                println!("{summary:#}");
            } else {
                println!(
                    "{shown}: ok ({} service(s), {} job(s))",
                    config.services.len(),
                    config.jobs.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            if json {
                let problems: Vec<_> = error
                    .problems
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "file": p.origin, "line": p.line, "field": p.field,
                            "message": p.message, "text": p.to_string(),
                        })
                    })
                    .collect();
                println!(
                    "{:#}",
                    serde_json::json!({ "ok": false, "file": shown, "problems": problems })
                );
            } else {
                eprintln!("{error}");
                eprintln!("{shown}: {} problem(s)", error.problems.len());
            }
            Ok(ExitCode::from(2))
        }
    }
}

pub async fn client_command(api: &str, json: bool, command: Command) -> anyhow::Result<ExitCode> {
    let client = Client::new(api);
    let result = match command {
        Command::Ps => ps(&client, json).await,
        Command::Gpus => gpus(&client, json).await,
        Command::Logs { name, follow, tail } => logs(&client, &name, follow, tail).await,
        Command::Run { job } => {
            let answer = client.start_job(&job).await?;
            print_action(json, &answer);
            Ok(())
        }
        Command::Deploy(args) => crate::deploy::deploy(&client, json, args).await,
        Command::Train(args) => crate::deploy::train(&client, json, args).await,
        Command::Remove { name } => crate::deploy::remove(&client, json, &name).await,
        Command::Stop { run } => {
            let answer = client.stop_run(&run).await?;
            print_action(json, &answer);
            Ok(())
        }
        Command::Reset { name } => {
            let answer = match client.reset_service(&name).await {
                Err(ClientError::Api { status: 404, .. }) => client.reset_job(&name).await,
                other => other,
            };
            match answer {
                Err(ClientError::Api { status: 404, .. }) => {
                    Err(anyhow::anyhow!("no service or job is named {name:?}"))
                }
                other => {
                    print_action(json, &other?);
                    Ok(())
                }
            }
        }
        Command::Events {
            follow,
            owner,
            limit,
        } => events(&client, json, follow, owner.as_deref(), limit).await,
        Command::Models { action } => crate::models::run(&client, json, action).await,
        Command::Gateway { action: None } => gateway_traffic(&client, json).await,
        Command::Up(_)
        | Command::Check { .. }
        | Command::Openapi
        | Command::Bench(_)
        | Command::Engine(_)
        | Command::Rag(_)
        | Command::Video(_)
        | Command::Gateway { action: Some(_) } => {
            unreachable!("handled in main")
        }
    };
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `flowers gateway new-key`: 32 random bytes from the kernel as 64 hex digits, and the digest
/// line for flowers.toml. The key is printed once and kept nowhere.
pub fn new_key(json: bool) -> anyhow::Result<ExitCode> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("cannot read random bytes from /dev/urandom")?;
    let key: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let digest = domain::ApiKeyDigest(gateway::key_digest(&key));
    if json {
        let value = serde_json::json!({ "key": key, "digest": digest.to_string() });
        println!("{value:#}");
    } else {
        println!("key:     {key}");
        println!("config:  api_keys = [\"{digest}\"]");
        println!();
        println!("Put the config line in the service's table of flowers.toml (add to the list");
        println!("to keep older keys working). Clients send `Authorization: Bearer KEY`. Only the");
        println!("key's SHA-256 is kept: store the key itself where its users can find it.");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn print_action(json: bool, answer: &client::ActionResponse) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(answer).unwrap_or_default()
        );
    } else {
        println!("{}", answer.message);
    }
}

pub fn dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

pub fn gib(bytes: u64) -> String {
    domain::ByteSize(bytes).to_string()
}

/// `3s`, `4m`, `2h5m`: how long ago `ms` was.
fn age(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let secs = ((domain::now_ms() - ms).max(0) / 1000) as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}

pub fn time(ms: i64) -> String {
    let when = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(when).to_string()
}

fn run_summary(run: &RunInfo) -> String {
    let mut parts = vec![run.state.clone()];
    if let Some(device) = &run.device {
        parts.push(device.clone());
    }
    if let Some(port) = run.port {
        parts.push(format!(":{port}"));
    }
    if let Some(version) = run.model_version {
        parts.push(format!("v{version}"));
    }
    format!("{} ({})", run.id, parts.join(", "))
}

/// What a job's Run last reported: `120/1000 (12%) loss=0.31`.
fn progress_summary(run: &RunInfo) -> Option<String> {
    let progress = run.progress.as_ref()?;
    let summary = domain::Progress {
        step: progress.step,
        total: progress.total,
        metrics: progress.metrics.clone(),
        updated_ms: progress.updated_ms,
    }
    .summary();
    (!summary.is_empty()).then_some(summary)
}

/// The model versions a service's replicas serve (`3`, or `2,3` during a promotion), or `-`.
fn served_versions(runs: &[RunInfo]) -> String {
    let versions: std::collections::BTreeSet<u32> =
        runs.iter().filter_map(|r| r.model_version).collect();
    crate::models::versions_list(&versions.into_iter().collect::<Vec<_>>())
}

async fn ps(client: &Client, json: bool) -> anyhow::Result<()> {
    let (services, jobs) = tokio::try_join!(client.services(), client.jobs())?;
    if json {
        let value = serde_json::json!({ "services": services, "jobs": jobs });
        println!("{value:#}");
        return Ok(());
    }
    let mut table = Table::new(&[
        "NAME", "KIND", "STATE", "READY", "VERSION", "UPTIME", "PROGRESS", "RUNS",
    ]);
    let mut reasons = Vec::new();
    for service in &services {
        let oldest_start = service.runs.iter().filter_map(|r| r.started_ms).min();
        table.row(vec![
            service.name.clone(),
            "service".into(),
            service.state.clone(),
            format!("{}/{}", service.ready_replicas, service.replicas),
            served_versions(&service.runs),
            age(oldest_start),
            "-".into(),
            if service.runs.is_empty() {
                "-".into()
            } else {
                service
                    .runs
                    .iter()
                    .map(run_summary)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ]);
        if let Some(reason) = &service.reason {
            reasons.push(format!("{}: {reason}", service.name));
        }
    }
    for job in &jobs {
        let live = job.last_run.as_ref().filter(|r| r.ended_ms.is_none());
        table.row(vec![
            job.name.clone(),
            "job".into(),
            job.state.clone(),
            "-".into(),
            "-".into(),
            age(live.and_then(|r| r.started_ms)),
            dash(job.last_run.as_ref().and_then(progress_summary)),
            dash(job.last_run.as_ref().map(run_summary)),
        ]);
        if let Some(reason) = &job.reason {
            reasons.push(format!("{}: {reason}", job.name));
        }
    }
    if services.is_empty() && jobs.is_empty() {
        println!("no services or jobs are configured");
        return Ok(());
    }
    print!("{}", table.render());
    for reason in reasons {
        println!("  {reason}");
    }
    Ok(())
}

fn memory(device: &DeviceInfo) -> String {
    let used = device.telemetry.as_ref().and_then(|t| t.memory_used_bytes);
    match (used, device.memory_total_bytes) {
        (Some(used), Some(total)) => format!("{} / {}", gib(used), gib(total)),
        (None, Some(total)) => format!("? / {}", gib(total)),
        _ => "-".into(),
    }
}

/// `web-1 (3.0GiB reserved, 2.1GiB used)`: a Run on a device, its budget next to what NVML says
/// it uses.
fn allocation(allocation: &client::AllocationInfo) -> String {
    let run = &allocation.run;
    let reserved = match allocation.vram_bytes {
        Some(vram) => format!("{} reserved", gib(vram)),
        None => "whole".to_string(),
    };
    match allocation.vram_used_bytes {
        // A CPU slot, or a whole GPU without a reading.
        None if allocation.vram_bytes.is_none() => run.clone(),
        None => format!("{run} ({reserved})"),
        Some(used) => {
            let over = match allocation.vram_bytes {
                Some(budget) if used > budget => ", over budget",
                _ => "",
            };
            format!("{run} ({reserved}, {} used{over})", gib(used))
        }
    }
}

async fn gpus(client: &Client, json: bool) -> anyhow::Result<()> {
    let answer = client.devices().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!("GPUs: {}", answer.gpu_status);
    let mut table = Table::new(&[
        "DEVICE",
        "NAME",
        "MEMORY USED/TOTAL",
        "UTIL",
        "TEMP",
        "POWER",
        "PCIE",
        "ALLOCATED",
        "FOREIGN",
        "RUNS",
    ]);
    let mut processes = Vec::new();
    for device in &answer.devices {
        let t = device.telemetry.as_ref();
        let power = match (
            t.and_then(|t| t.power_draw_watts),
            t.and_then(|t| t.power_limit_watts),
        ) {
            (Some(draw), Some(limit)) => format!("{draw:.0}W / {limit:.0}W"),
            (Some(draw), None) => format!("{draw:.0}W"),
            _ => "-".into(),
        };
        let pcie = match t {
            Some(t) => match (t.pcie_generation, t.pcie_link_width) {
                (Some(generation), Some(width)) => {
                    let max = match (t.pcie_max_generation, t.pcie_max_link_width) {
                        (Some(g), Some(w)) if (g, w) != (generation, width) => {
                            format!(" (max Gen{g} x{w})")
                        }
                        _ => String::new(),
                    };
                    format!("Gen{generation} x{width}{max}")
                }
                _ => "-".into(),
            },
            None => "-".into(),
        };
        let allocated = if device.kind == "cpu" {
            if device.allocations.is_empty() {
                "free"
            } else {
                "whole slot"
            }
            .to_string()
        } else {
            match (device.allocated_vram_bytes, device.memory_total_bytes) {
                (Some(allocated), Some(total)) => format!("{} / {}", gib(allocated), gib(total)),
                _ => "-".into(),
            }
        };
        let runs = device
            .allocations
            .iter()
            .map(allocation)
            .collect::<Vec<_>>()
            .join(", ");
        table.row(vec![
            device.id.clone(),
            device.name.clone(),
            memory(device),
            dash(
                t.and_then(|t| t.utilization_percent)
                    .map(|u| format!("{u}%")),
            ),
            dash(
                t.and_then(|t| t.temperature_celsius)
                    .map(|c| format!("{c}C")),
            ),
            power,
            pcie,
            allocated,
            dash(device.foreign_vram_bytes.map(gib)),
            if runs.is_empty() { "-".into() } else { runs },
        ]);
        if let Some(error) = &device.telemetry_error {
            processes.push(format!("{}: no reading: {error}", device.id));
        }
        for process in t.map(|t| t.processes.as_slice()).unwrap_or_default() {
            processes.push(format!(
                "{}: pid {} uses {}{}",
                device.id,
                process.pid,
                dash(process.memory_used_bytes.map(gib)),
                process
                    .run
                    .as_ref()
                    .map(|r| format!(" (run {r})"))
                    .unwrap_or_else(|| " (not started by Flowers)".into())
            ));
        }
    }
    print!("{}", table.render());
    if !processes.is_empty() {
        println!("\nPROCESSES");
        for line in processes {
            println!("  {line}");
        }
    }
    Ok(())
}

/// Which Runs `flowers logs NAME` shows: the Run itself, a service's current replicas (or
/// its latest Run), or a job's latest Run.
async fn runs_to_show(client: &Client, name: &str) -> anyhow::Result<Vec<RunInfo>> {
    match client.run(name).await {
        Ok(run) => return Ok(vec![run]),
        Err(ClientError::Api { status: 404, .. }) => {}
        Err(error) => return Err(error.into()),
    }
    match client.service(name).await {
        Ok(service) if !service.runs.is_empty() => return Ok(service.runs),
        Ok(_) => {}
        Err(ClientError::Api { status: 404, .. }) => match client.job(name).await {
            Ok(job) => return Ok(job.last_run.into_iter().collect()),
            Err(ClientError::Api { status: 404, .. }) => {
                anyhow::bail!("no service, job or run is named {name:?}")
            }
            Err(error) => return Err(error.into()),
        },
        Err(error) => return Err(error.into()),
    }
    Ok(client.runs(Some(name), false, 1).await?)
}

async fn logs(client: &Client, name: &str, follow: bool, tail: usize) -> anyhow::Result<()> {
    let runs = runs_to_show(client, name).await?;
    if runs.is_empty() {
        anyhow::bail!("{name} has no runs yet");
    }
    let prefix = runs.len() > 1;
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for run in runs {
        let stream = client
            .logs(&run.id, tail, follow)
            .await
            .with_context(|| format!("cannot read the logs of {}", run.id))?;
        let stdout = stdout.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut pending: Vec<u8> = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let mut out = stdout.lock().expect("stdout lock");
                if !prefix {
                    out.write_all(&chunk)?;
                    out.flush()?;
                    continue;
                }
                // Several Runs interleave: print whole lines, each with its Run's name.
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    write!(out, "{} | ", run.id)?;
                    out.write_all(&line)?;
                }
                out.flush()?;
            }
            if prefix && !pending.is_empty() {
                let mut out = stdout.lock().expect("stdout lock");
                write!(out, "{} | ", run.id)?;
                out.write_all(&pending)?;
                writeln!(out)?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// `12ms`, `1.5s`: a latency for people.
fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_string(),
        Some(s) if s < 0.01 => format!("{:.1}ms", s * 1000.0),
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.1}s"),
    }
}

fn traffic_row(service: String, route: String, traffic: &TrafficInfo) -> Vec<String> {
    let responses = &traffic.responses;
    let errors = traffic
        .errors
        .iter()
        .map(|(code, count)| format!("{code}={count}"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        service,
        route,
        traffic.requests.to_string(),
        responses.status_1xx.to_string(),
        responses.status_2xx.to_string(),
        responses.status_3xx.to_string(),
        responses.status_4xx.to_string(),
        responses.status_5xx.to_string(),
        traffic.in_flight.to_string(),
        gib(traffic.bytes_in),
        gib(traffic.bytes_out),
        latency(traffic.latency.p50_seconds),
        latency(traffic.latency.p90_seconds),
        latency(traffic.latency.p99_seconds),
        if errors.is_empty() {
            "-".into()
        } else {
            errors
        },
    ]
}

async fn gateway_traffic(client: &Client, json: bool) -> anyhow::Result<()> {
    let report = client.gateway().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mut table = Table::new(&[
        "SERVICE",
        "ROUTE",
        "REQUESTS",
        "1XX",
        "2XX",
        "3XX",
        "4XX",
        "5XX",
        "IN FLIGHT",
        "IN",
        "OUT",
        "P50",
        "P90",
        "P99",
        "GATEWAY ERRORS",
    ]);
    for route in &report.routes {
        let service = if route.active {
            route.service.clone()
        } else {
            format!("{} (removed)", route.service)
        };
        let path = format!(
            "{}{}",
            route.host.as_deref().unwrap_or(""),
            route.path_prefix
        );
        table.row(traffic_row(service, path, &route.traffic));
    }
    table.row(traffic_row(
        "-".into(),
        "(no route)".into(),
        &report.unrouted,
    ));
    print!("{}", table.render());
    println!(
        "held requests: {}, open connections: {}, access log lines dropped: {}",
        report.held_requests, report.open_connections, report.access_log_dropped
    );
    Ok(())
}

fn print_event(event: &EventInfo, json: bool) {
    if json {
        println!("{}", serde_json::to_string(event).unwrap_or_default());
    } else {
        println!(
            "{}  {:<22}  {:<12}  {:<14}  {}",
            time(event.time_ms),
            event.kind,
            event.owner.as_deref().unwrap_or("-"),
            event.run.as_deref().unwrap_or("-"),
            event.message
        );
    }
}

async fn events(
    client: &Client,
    json: bool,
    follow: bool,
    owner: Option<&str>,
    limit: u32,
) -> anyhow::Result<()> {
    if !follow {
        let events = client.events(None, owner, limit).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&events)?);
        } else {
            for event in &events {
                print_event(event, false);
            }
        }
        return Ok(());
    }
    let stream = client.follow_events(None, owner, limit).await?;
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        print_event(&event?, json);
    }
    Ok(())
}
