//! `flowers engine video-analyze`: the archives job (`[jobs.video-analyze]` in the embedded
//! default). It claims files from the video service one at a time per worker, analyses each
//! with one single-threaded ffmpeg, and posts the file's results, which the service commits
//! with the file's `done` state. Progress goes to the service per file and to Flowers per Run
//! (`flowers ps`).
//!
//! SIGTERM (a preemption, `flowers stop`) stops the decoders, gives the files in progress
//! back and exits 0: the next Run starts them again. A drive unplugged ("source gone") gives
//! its file back with the reason, which `flowers video analyze` shows, and the Run fails;
//! running the command again resumes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use video::archive::store::{AnalysisView, Claim, FileResult};

#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// The video service's base URL (default: the gateway's, FLOWERS_GATEWAY_URL, with
    /// `--route`).
    #[arg(long, value_name = "URL")]
    service: Option<String>,
    #[arg(long, env = "FLOWERS_GATEWAY_URL", hide = true)]
    gateway: Option<String>,
    /// The video service's route on the gateway.
    #[arg(long, default_value = "/video")]
    route: String,
    /// The id files are claimed under (Flowers sets FLOWERS_RUN_ID).
    #[arg(long, env = "FLOWERS_RUN_ID")]
    run: Option<String>,
    #[arg(long, env = "FLOWERS_CONTROL_URL", hide = true)]
    control: Option<String>,
    /// Files analysed at once, each decoded by one single-threaded ffmpeg (default: one per
    /// core).
    #[arg(long)]
    workers: Option<usize>,
    /// The ffmpeg program that decodes the files.
    #[arg(long, default_value = "ffmpeg", value_name = "PATH")]
    ffmpeg: PathBuf,
    /// The ffprobe program that reads their durations (for the progress bar).
    #[arg(long, default_value = "ffprobe", value_name = "PATH")]
    ffprobe: PathBuf,
    /// The object detector's `/v1/detect` (default: the gateway's). While it cannot answer,
    /// motion is tracked and it is asked again every 30 s.
    #[arg(long, value_name = "URL", conflicts_with = "no_detector")]
    detector: Option<String>,
    /// Motion only: never ask a detector.
    #[arg(long)]
    no_detector: bool,
    #[arg(long, env = "CUDA_VISIBLE_DEVICES", hide = true)]
    cuda_visible_devices: Option<String>,
}

/// What the workers share.
struct Job {
    http: reqwest::Client,
    base: String,
    run: String,
    control: Option<String>,
    ffmpeg: PathBuf,
    ffprobe: PathBuf,
    gpu: bool,
    detector: Option<(String, Arc<Mutex<video::detect::client::DetectorState>>)>,
    stop: Arc<AtomicBool>,
}

/// How long the job keeps asking a video service that does not answer (being restarted).
const SERVICE_PATIENCE: Duration = Duration::from_secs(120);

pub async fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let base = match (&args.service, &args.gateway) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(gateway)) => format!(
            "{}{}",
            gateway.trim_end_matches('/'),
            args.route.trim_end_matches('/')
        ),
        (None, None) => bail!(
            "no video service to ask for files: pass --service URL (Flowers sets FLOWERS_GATEWAY_URL for its jobs)"
        ),
    };
    let run = args
        .run
        .clone()
        .unwrap_or_else(|| format!("manual-{}-{}", std::process::id(), domain::now_ms()));
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if workers == 0 {
        bail!("--workers: expected at least 1");
    }
    let detector = if args.no_detector {
        None
    } else {
        args.detector
            .clone()
            .or_else(|| {
                args.gateway
                    .as_ref()
                    .map(|g| format!("{}/v1/detect", g.trim_end_matches('/')))
            })
            .map(|url| {
                (
                    url,
                    Arc::new(Mutex::new(video::detect::client::DetectorState::Unknown)),
                )
            })
    };
    println!(
        "video-analyze: run {run}, {workers} workers, files from {base}, detector {}",
        detector
            .as_ref()
            .map_or("none (motion only)", |(url, _)| url.as_str())
    );
    let job = Arc::new(Job {
        http: reqwest::Client::new(),
        base,
        run,
        control: args.control.clone(),
        ffmpeg: args.ffmpeg.clone(),
        ffprobe: args.ffprobe.clone(),
        gpu: args
            .cuda_visible_devices
            .as_deref()
            .is_some_and(|d| !d.trim().is_empty()),
        detector,
        stop: Arc::new(AtomicBool::new(false)),
    });
    {
        let stop = Arc::clone(&job.stop);
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            println!("video-analyze: stopping; the files in progress are given back");
            stop.store(true, Ordering::SeqCst);
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker(Arc::clone(&job)));
    }
    let mut failure = None;
    while let Some(outcome) = tasks.join_next().await {
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                job.stop.store(true, Ordering::SeqCst);
                failure.get_or_insert(error);
            }
            Err(panic) => {
                job.stop.store(true, Ordering::SeqCst);
                failure.get_or_insert(anyhow::anyhow!("a worker panicked: {panic}"));
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None if job.stop.load(Ordering::SeqCst) => {
            println!("video-analyze: stopped");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!("video-analyze: nothing left to analyse");
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl Job {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body`, retrying while the service cannot be reached (it may be restarting).
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        let url = self.url(path);
        let started = Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            match self.http.post(&url).json(body).send().await {
                Ok(response)
                    if response.status() != reqwest::StatusCode::BAD_GATEWAY
                        && response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE =>
                {
                    return Ok(response)
                }
                Ok(response) if started.elapsed() > SERVICE_PATIENCE => {
                    bail!("{url} answered {}", response.status())
                }
                Err(error) if started.elapsed() > SERVICE_PATIENCE => {
                    bail!("cannot reach the video service at {url}: {error}")
                }
                _ => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn post_ok(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        let response = self.post(path, body).await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("{} answered {status}: {}", self.url(path), text.trim());
        }
        Ok(response)
    }

    async fn release(&self, file: i64, reason: Option<&str>) -> anyhow::Result<()> {
        self.post_ok(
            &format!("/v1/analyses/files/{file}/release"),
            &json!({"run": self.run, "reason": reason}),
        )
        .await?;
        Ok(())
    }

    /// Tells Flowers how far the analysis has come (`flowers ps`); a failure is only logged.
    async fn report_run_progress(&self, analysis: i64) {
        let Some(control) = &self.control else {
            return;
        };
        let view = match self
            .http
            .get(self.url(&format!("/v1/analyses/{analysis}")))
            .send()
            .await
        {
            Ok(response) => response.json::<Value>().await.ok(),
            Err(_) => None,
        };
        let Some(view) =
            view.and_then(|v| serde_json::from_value::<AnalysisView>(v["analysis"].clone()).ok())
        else {
            return;
        };
        let body = json!({
            "step": view.files.done + view.files.failed,
            "total": view.files.total,
            "metrics": {"frames": view.frames, "events": view.events, "analysis": view.id},
        });
        let url = format!(
            "{}/v1/runs/{}/progress",
            control.trim_end_matches('/'),
            self.run
        );
        if let Err(error) = self.http.post(&url).json(&body).send().await {
            tracing::warn!("cannot report progress to {url}: {error}");
        }
    }
}

async fn worker(job: Arc<Job>) -> anyhow::Result<()> {
    loop {
        if job.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let response = job
            .post("/v1/analyses/claim", &json!({"run": job.run}))
            .await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(());
        }
        let status = response.status();
        if !status.is_success() {
            bail!(
                "the video service refused a claim: {status}: {}",
                response.text().await.unwrap_or_default().trim()
            );
        }
        let claim: Claim = response
            .json()
            .await
            .context("the video service answered a claim that is not one")?;
        analyse(&job, claim).await?;
    }
}

/// Whether the file's drive or folder is gone (unplugged), rather than the file being bad or
/// deleted: the file is missing and so is its root, or the root is empty (a mount point left
/// behind by a drive that was unplugged).
fn source_gone(root: &Path, path: &Path) -> bool {
    if path.exists() {
        return false;
    }
    match std::fs::read_dir(root) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true,
    }
}

async fn analyse(job: &Arc<Job>, claim: Claim) -> anyhow::Result<()> {
    let file = claim.file;
    let path = PathBuf::from(&file.path);
    let root = PathBuf::from(&file.root);
    let started = Instant::now();
    if source_gone(&root, &path) {
        let reason = format!("source gone: {}", file.root);
        job.release(file.id, Some(&reason)).await?;
        bail!("{reason}; run `flowers video analyze` again once it is back to resume");
    }
    if !path.is_file() {
        // Deleted or moved while its drive is there: failed, and the analysis goes on.
        let result = FileResult {
            run: job.run.clone(),
            error: Some(format!(
                "{} is no longer there (deleted or moved)",
                file.path
            )),
            ..FileResult::default()
        };
        job.post_ok(
            &format!("/v1/analyses/files/{}/result", file.id),
            &serde_json::to_value(&result).expect("a result serialises"),
        )
        .await?;
        println!("{}: no longer there", file.path);
        job.report_run_progress(file.analysis).await;
        return Ok(());
    }
    let mut settings = claim.settings;
    settings["url"] = json!(file.path);
    // The service's [video.motion], stored with the analysis (none in older ones).
    let motion = match settings.as_object_mut().and_then(|s| s.remove("motion")) {
        Some(value) => serde_json::from_value(value).with_context(|| {
            format!(
                "analysis {}: motion settings this binary cannot read",
                file.analysis
            )
        })?,
        None => domain::MotionSpec::default(),
    };
    let spec: domain::StreamSpec = serde_json::from_value(settings).with_context(|| {
        format!(
            "analysis {}: settings this binary cannot read",
            file.analysis
        )
    })?;
    let mut decode = video::DecodeOptions::new(spec.url.clone());
    decode.fps = spec.fps;
    decode.width = spec.width;
    decode.program = job.ffmpeg.clone();
    decode.one_thread = true;
    decode.hwaccel = match spec.hwaccel {
        domain::HwAccel::Cuda => true,
        domain::HwAccel::Auto => job.gpu,
        domain::HwAccel::None => false,
    };
    let options = video::ScanOptions {
        decode,
        pipeline: video::PipelineOptions::from_spec(&spec, motion)
            .with_context(|| format!("analysis {}: a mask", file.analysis))?,
    };
    let frames_total = {
        let (ffprobe, path, fps) = (job.ffprobe.clone(), path.clone(), spec.fps);
        tokio::task::spawn_blocking(move || {
            video::archive::work::frames_total(&ffprobe, &path, fps)
        })
        .await
        .unwrap_or(None)
    };
    let frames = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicBool::new(false));
    // Progress once a second while the file is analysed; a 409 means another Run took the
    // file over (this one was thought dead): the analysis stops.
    let reporter = {
        let (job, frames, lost) = (Arc::clone(job), Arc::clone(&frames), Arc::clone(&lost));
        let id = file.id;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let body = json!({"run": job.run, "frames": frames.load(Ordering::Relaxed), "frames_total": frames_total});
                match job
                    .http
                    .post(job.url(&format!("/v1/analyses/files/{id}/progress")))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    _ => {}
                }
            }
        })
    };
    let detector: Option<Box<dyn video::detect::client::Detect>> =
        job.detector.as_ref().map(|(url, state)| {
            let mut options = video::detect::client::DetectorClientOptions::new(url.clone());
            options.priority = "background";
            Box::new(video::detect::client::DetectorClient::new(
                options,
                tokio::runtime::Handle::current(),
                spec.objects.clone(),
                spec.min_score,
                Arc::clone(state),
            )) as Box<dyn video::detect::client::Detect>
        });
    let outcome = {
        let (stop, lost, frames) = (
            Arc::clone(&job.stop),
            Arc::clone(&lost),
            Arc::clone(&frames),
        );
        tokio::task::spawn_blocking(move || {
            video::archive::work::analyse_file(
                &options,
                detector,
                &|| stop.load(Ordering::SeqCst) || lost.load(Ordering::SeqCst),
                |n| frames.store(n, Ordering::Relaxed),
            )
        })
        .await
        .context("the analysing thread panicked")?
    };
    reporter.abort();
    let mut result: FileResult = match outcome {
        Err(video::ScanError::Stopped) => {
            if lost.load(Ordering::SeqCst) {
                println!("{}: taken over by another Run", file.path);
            } else {
                job.release(file.id, None).await?;
            }
            return Ok(());
        }
        Err(error) => FileResult {
            error: Some(error.to_string()),
            ..FileResult::default()
        },
        Ok(result) => result,
    };
    if result.error.is_some() && job.stop.load(Ordering::SeqCst) {
        // Stopping: the signal reached ffmpeg too (Flowers signals the Run's process group),
        // so its failure says nothing about the file. It is given back.
        job.release(file.id, None).await?;
        return Ok(());
    }
    if result.error.is_some() && source_gone(&root, &path) {
        let reason = format!("source gone: {}", file.root);
        job.release(file.id, Some(&reason)).await?;
        bail!("{reason} while {} was analysed; run `flowers video analyze` again once it is back to resume", file.relative);
    }
    result.run = job.run.clone();
    job.post_ok(
        &format!("/v1/analyses/files/{}/result", file.id),
        &serde_json::to_value(&result).expect("a result serialises"),
    )
    .await?;
    match &result.error {
        Some(error) => println!("{}: failed: {error}", file.path),
        None => println!(
            "{}: {} frames, {} objects, {} events in {:.1} s",
            file.path,
            result.frames,
            result.objects.len(),
            result.events.len(),
            started.elapsed().as_secs_f64()
        ),
    }
    job.report_run_progress(file.analysis).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::source_gone;

    #[test]
    fn a_missing_file_is_a_gone_source_only_when_its_root_is_gone_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("usb0");
        std::fs::create_dir_all(root.join("day1")).unwrap();
        std::fs::write(root.join("day1/a.mp4"), b"a").unwrap();
        assert!(!source_gone(&root, &root.join("day1/a.mp4")));
        // Deleted while the drive is there: the file is bad, not the source.
        assert!(!source_gone(&root, &root.join("day1/b.mp4")));
        // A mount point left empty by an unplugged drive, or no root at all.
        let empty = dir.path().join("usb1");
        std::fs::create_dir(&empty).unwrap();
        assert!(source_gone(&empty, &empty.join("day1/a.mp4")));
        assert!(source_gone(
            &dir.path().join("usb2"),
            &dir.path().join("usb2/a.mp4")
        ));
    }
}
