//! `flowers video analyze|analyses|report`: archives, through the video service (on the
//! gateway) and the control API (which runs the `video-analyze` job).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use video::archive::store::{AnalysisView, FileView};

use crate::rag_cli::ServiceClient;
use crate::table::Table;

/// How often the progress bar is redrawn.
const POLL: Duration = Duration::from_secs(1);
/// The rate and time left are measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(20);

pub struct AnalyzeOptions {
    pub paths: Vec<PathBuf>,
    pub settings: serde_json::Map<String, Value>,
    pub new: bool,
    pub detach: bool,
    pub job: String,
}

pub async fn analyze(
    service: &ServiceClient,
    api: &str,
    options: AnalyzeOptions,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    // The service reads the paths: they must mean the same there, so they are made absolute
    // here (the service runs on this machine).
    let paths = options
        .paths
        .iter()
        .map(|p| {
            std::path::absolute(p)
                .map(|a| a.to_string_lossy().into_owned())
                .with_context(|| format!("{}: cannot make the path absolute", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !json_output {
        eprintln!("fingerprinting the files under {} …", paths.join(", "));
    }
    let answer: Value = service
        .post_json(
            "/v1/analyses",
            &json!({"paths": paths, "settings": options.settings, "new": options.new}),
        )
        .await?;
    let view: AnalysisView = serde_json::from_value(answer["analysis"].clone())
        .context("the video service's answer is not an analysis")?;
    let resumed = answer["resumed"].as_bool().unwrap_or(false);
    let skipped = answer["skipped"].as_array().cloned().unwrap_or_default();
    if !json_output {
        println!(
            "analysis {}{}: {} files, {} already finished",
            view.id,
            if resumed { " (resumed)" } else { "" },
            view.files.total,
            view.files.done + view.files.failed
        );
        for skip in skipped.iter().take(10) {
            println!(
                "  skipped {}: {}",
                skip["path"].as_str().unwrap_or(""),
                skip["reason"].as_str().unwrap_or("")
            );
        }
        if skipped.len() > 10 {
            println!("  … and {} more skipped", skipped.len() - 10);
        }
    }
    let client = client::Client::new(api);
    if view.state != "finished" {
        start_job(&client, &options.job).await?;
    }
    if options.detach || view.state == "finished" {
        if json_output {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else if view.state == "finished" {
            println!(
                "nothing left to analyse: `flowers video report {}`",
                view.id
            );
        } else {
            println!(
                "the {} job is analysing it: `flowers video analyses`, then `flowers video report {}`",
                options.job, view.id
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(service, &client, &options.job, view.id, json_output).await
}

/// Starts the job unless a Run of it is already at work.
async fn start_job(client: &client::Client, job: &str) -> anyhow::Result<()> {
    match client.start_job(job).await {
        Ok(_) => Ok(()),
        Err(client::ClientError::Api { status: 409, .. }) => Ok(()),
        Err(client::ClientError::Api {
            status: 404,
            message,
            ..
        }) => bail!(
            "{message}: archives are analysed by a job running `flowers engine video-analyze`; \
             add [jobs.{job}] to flowers.toml as the embedded default has it, or pass --job NAME"
        ),
        Err(error) => Err(error.into()),
    }
}

/// Draws the progress until the analysis is finished, or the job stops short.
async fn follow(
    service: &ServiceClient,
    client: &client::Client,
    job: &str,
    id: i64,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let tty = std::io::stderr().is_terminal() && !json_output;
    let mut samples: std::collections::VecDeque<(Instant, u64, u64)> = Default::default();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut restarted = false;
    let mut polls = 0u64;
    let mut job_note: Option<String> = None;
    loop {
        let answer: Value = service.get_json(&format!("/v1/analyses/{id}")).await?;
        let view: AnalysisView = serde_json::from_value(answer["analysis"].clone())
            .context("the video service's answer is not an analysis")?;
        let now = Instant::now();
        samples.push_back((now, view.frames, view.bytes_done));
        while samples.len() > 2 && now.duration_since(samples[0].0) > RATE_WINDOW {
            samples.pop_front();
        }
        let mut line = progress_line(&view, &samples);
        if let Some(note) = job_note.as_deref().filter(|_| view.state == "waiting") {
            line.push_str(&format!(": {note}"));
        }
        if tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if !json_output && now.duration_since(last_line) >= Duration::from_secs(10) {
            eprintln!("{line}");
            last_line = now;
        }
        if view.state == "finished" {
            if tty {
                eprintln!();
            }
            return finished(service, &view, json_output).await;
        }
        polls += 1;
        // The job is asked less often: a Run that ended while files are left means it
        // stopped short (or never saw the newest files).
        if view.state != "running" && polls.is_multiple_of(3) {
            let info = client.job(job).await?;
            let active = matches!(
                info.state.as_str(),
                "waiting" | "running" | "restarting" | "stopping"
            );
            // Why it waits (no device free), shown on the line.
            job_note = info.reason.clone().filter(|_| info.state == "waiting");
            if !active {
                // The analysis may have finished between the two questions.
                let again: Value = service.get_json(&format!("/v1/analyses/{id}")).await?;
                let again: AnalysisView = serde_json::from_value(again["analysis"].clone())?;
                if again.state == "finished" {
                    continue;
                }
                if tty {
                    eprintln!();
                }
                let run = info.last_run.as_ref();
                let why = again
                    .last_error
                    .clone()
                    .or_else(|| run.and_then(|r| r.reason.clone()))
                    .unwrap_or_else(|| format!("the {job} job is {}", info.state));
                if info.state == "succeeded" && again.last_error.is_none() && !restarted {
                    // Files added after its last claim: one more Run takes them.
                    restarted = true;
                    start_job(client, job).await?;
                    continue;
                }
                eprintln!(
                    "stopped: {why}{}; run the same command again to resume",
                    run.map(|r| format!(" (see `flowers logs {}`)", r.id))
                        .unwrap_or_default()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `analysis 3 [#######-------] 45% 12/40 files (1 failed) 8400 frames 52.1 fps 3m12s left`
fn progress_line(
    view: &AnalysisView,
    samples: &std::collections::VecDeque<(Instant, u64, u64)>,
) -> String {
    let fraction = if view.bytes_total == 0 {
        0.0
    } else {
        (view.bytes_done as f64 / view.bytes_total as f64).clamp(0.0, 1.0)
    };
    let width = 24;
    let filled = (fraction * width as f64).round() as usize;
    let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
    let finished = view.files.done + view.files.failed;
    let mut line = format!(
        "analysis {} [{bar}] {:>3.0}% {finished}/{} files",
        view.id,
        fraction * 100.0,
        view.files.total
    );
    if view.files.failed > 0 {
        line.push_str(&format!(" ({} failed)", view.files.failed));
    }
    line.push_str(&format!(" {} frames", view.frames));
    if let (Some(first), Some(last)) = (samples.front(), samples.back()) {
        let seconds = last.0.duration_since(first.0).as_secs_f64();
        if seconds >= 2.0 {
            let fps = last.1.saturating_sub(first.1) as f64 / seconds;
            let bytes_rate = last.2.saturating_sub(first.2) as f64 / seconds;
            line.push_str(&format!(" {fps:.1} fps"));
            if bytes_rate > 0.0 {
                let left = view.bytes_total.saturating_sub(view.bytes_done) as f64 / bytes_rate;
                line.push_str(&format!(" {} left", short_duration(left)));
            }
        }
    }
    match view.state.as_str() {
        "running" => {}
        "waiting" => line.push_str(" (waiting for the job)"),
        other => line.push_str(&format!(" ({other})")),
    }
    line
}

fn short_duration(seconds: f64) -> String {
    let s = seconds.round().max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

async fn finished(
    service: &ServiceClient,
    view: &AnalysisView,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    if json_output {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "analysis {} finished: {} files ({} failed), {} frames, {} objects, {} events",
        view.id, view.files.total, view.files.failed, view.frames, view.objects, view.events
    );
    if view.files.failed > 0 {
        let answer: Value = service
            .get_json(&format!("/v1/analyses/{}?files=true", view.id))
            .await?;
        let files: Vec<FileView> = serde_json::from_value(answer["files"].clone())?;
        for file in files.iter().filter(|f| f.state == "failed") {
            println!(
                "  failed {}: {}",
                file.path,
                file.error.as_deref().unwrap_or("")
            );
        }
    }
    println!(
        "report: `flowers video report {} [--csv] [-o FILE]`",
        view.id
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn analyses(service: &ServiceClient, json_output: bool) -> anyhow::Result<ExitCode> {
    let answer: Value = service.get_json("/v1/analyses").await?;
    let views: Vec<AnalysisView> = serde_json::from_value(answer["analyses"].clone())
        .context("the video service's answer is not a list of analyses")?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
    if views.is_empty() {
        println!("no analyses: `flowers video analyze PATH…` starts one");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "ID", "STATE", "FILES", "DONE", "FAILED", "FRAMES", "EVENTS", "PATHS", "ERROR",
    ]);
    for view in &views {
        table.row(vec![
            view.id.to_string(),
            view.state.clone(),
            view.files.total.to_string(),
            view.files.done.to_string(),
            view.files.failed.to_string(),
            view.frames.to_string(),
            view.events.to_string(),
            view.roots.join(" "),
            view.last_error.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

pub async fn report(
    service: &ServiceClient,
    id: i64,
    csv: bool,
    output: Option<PathBuf>,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let format = if csv { "csv" } else { "json" };
    let response = service
        .send(
            service
                .http
                .get(service.url(&format!("/v1/analyses/{id}/report?format={format}"))),
        )
        .await?;
    let body = response.bytes().await?;
    if let Some(path) = output {
        std::fs::write(&path, &body).with_context(|| format!("cannot write {}", path.display()))?;
        println!("saved {} ({} bytes)", path.display(), body.len());
        return Ok(ExitCode::SUCCESS);
    }
    if csv {
        std::io::stdout().write_all(&body)?;
        return Ok(ExitCode::SUCCESS);
    }
    let report: Value =
        serde_json::from_slice(&body).context("the video service's report is not JSON")?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    let text = |row: &Value, key: &str| match &row[key] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) if key.ends_with("_s") || key == "score" => {
            format!("{:.2}", n.as_f64().unwrap_or(0.0))
        }
        other => other.to_string(),
    };
    let mut table = Table::new(&[
        "FILE",
        "TIME",
        "KIND",
        "CLASS",
        "ZONE/LINE",
        "DIRECTION",
        "OBJECT",
        "DETAIL",
    ]);
    for row in &rows {
        table.row(vec![
            text(row, "file"),
            text(row, "time_s"),
            text(row, "kind"),
            text(row, "class"),
            format!("{}{}", text(row, "zone"), text(row, "line")),
            text(row, "direction"),
            text(row, "object"),
            text(row, "detail"),
        ]);
    }
    print!("{}", table.render());
    let analysis = &report["analysis"];
    println!(
        "analysis {}: {} rows; {} files, {} failed ({})",
        analysis["id"],
        rows.len(),
        analysis["files"]["total"],
        analysis["files"]["failed"],
        analysis["state"].as_str().unwrap_or("")
    );
    Ok(ExitCode::SUCCESS)
}
