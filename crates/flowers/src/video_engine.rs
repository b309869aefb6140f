//! `flowers engine video`: the video analysis service. Streams come from the `[video]` table
//! of the config Flowers runs with (asked of the control API, `GET /v1/config/video`, at
//! start) and from `PUT /video/v1/streams/NAME`; events and snapshots are kept in
//! `video.sqlite` in the service's data directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::engine::{
    serve_until_signal, serve_with_health, DeviceFlag, EngineArgs, ServiceEngineArgs,
};

#[derive(clap::Args, Debug)]
pub struct VideoArgs {
    /// `--data` holds video.sqlite and the snapshots.
    #[command(flatten)]
    service: ServiceEngineArgs,
    /// Read the `[video]` table from this flowers.toml instead of asking Flowers' control API
    /// (for running the service by hand).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Flowers' control API, which Flowers sets (FLOWERS_CONTROL_URL).
    #[arg(long, env = "FLOWERS_CONTROL_URL", value_name = "URL")]
    control: Option<String>,
    /// The ffmpeg program that decodes the streams.
    #[arg(long, default_value = "ffmpeg", value_name = "PATH")]
    ffmpeg: PathBuf,
    /// A stream whose decoder sends no frame this long is restarted.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,
    /// The longest wait between restarts of a failing stream.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    #[arg(long, env = "CUDA_VISIBLE_DEVICES", hide = true)]
    cuda_visible_devices: Option<String>,
    /// The object detector's `/v1/detect` (default: the gateway's, FLOWERS_GATEWAY_URL, where
    /// the embedded default routes `flowers engine detect`). While it cannot answer (no model
    /// imported yet), streams track motion and ask again every 30 s.
    #[arg(long, value_name = "URL", conflicts_with = "no_detector")]
    detector: Option<String>,
    /// Motion only: never ask a detector.
    #[arg(long)]
    no_detector: bool,
    #[arg(long, env = "FLOWERS_GATEWAY_URL", hide = true)]
    gateway: Option<String>,
}

pub async fn run(args: VideoArgs) -> anyhow::Result<ExitCode> {
    let address = args.service.address()?;
    let dir = args.service.dir("video", "events")?;
    let prefix = args.service.prefix()?;
    let config = match (&args.config, &args.control) {
        (Some(path), _) => {
            let config = config::load_file(path, &crate::up::environment(), &Default::default())
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            config.video
        }
        (None, Some(control)) => fetch_config(control).await?,
        (None, None) => anyhow::bail!(
            "no [video] table to read: pass --config FLOWERS_TOML (Flowers sets FLOWERS_CONTROL_URL for its services)"
        ),
    };
    let live = video::LiveOptions {
        ffmpeg: args.ffmpeg.clone(),
        stall_timeout: args.stall_timeout,
        backoff_max: args.backoff_max,
        gpu: args
            .cuda_visible_devices
            .as_deref()
            .is_some_and(|devices| !devices.trim().is_empty()),
        detector: detector_url(&args).map(|url| video::live::DetectorLink {
            options: video::detect::client::DetectorClientOptions::new(url),
            runtime: tokio::runtime::Handle::current(),
            state: Arc::new(std::sync::Mutex::new(
                video::detect::client::DetectorState::Unknown,
            )),
        }),
        ..video::LiveOptions::default()
    };
    let detector = live
        .detector
        .as_ref()
        .map_or("none (motion only)".to_string(), |link| {
            link.options.url.clone()
        });
    let streams = config.streams.len();
    let options = video::ServiceOptions {
        data_dir: dir.clone(),
        config,
        live,
    };
    let service = tokio::task::spawn_blocking(move || video::VideoService::start(options))
        .await
        .context("the starting thread panicked")?
        .with_context(|| format!("cannot open the video store in {}", dir.display()))?;
    println!(
        "video engine: {streams} streams from the config, events in {}, routes under {}/v1, detector {detector}",
        dir.display(),
        prefix
    );
    {
        // Pictures a crash left unrecorded, in the background.
        let service = Arc::clone(&service);
        tokio::task::spawn_blocking(move || match service.remove_orphan_snapshots() {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} snapshots that no object named (left by a crash)"),
            Err(error) => tracing::warn!("cannot look for unrecorded snapshots: {error}"),
        });
    }
    let watchdog = {
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut seconds = 0u64;
            loop {
                tick.tick().await;
                service.check_stalls();
                seconds += 1;
                // Retention: at start, then every minute.
                if seconds % 60 == 1 {
                    let service = Arc::clone(&service);
                    match tokio::task::spawn_blocking(move || service.sweep()).await {
                        Ok(Ok(report)) if report.objects > 0 || report.events > 0 => {
                            tracing::info!("retention: {report:?}")
                        }
                        Ok(Err(error)) => tracing::error!("retention: {error}"),
                        _ => {}
                    }
                }
            }
        })
    };
    let router = video::http::router(Arc::clone(&service), &prefix)
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let closing = Arc::clone(&service);
    let code = serve_until_signal(address, router, move || closing.close_followers()).await;
    watchdog.abort();
    // Streams end their objects (recorded with snapshots) before the process exits.
    tokio::task::spawn_blocking(move || service.shutdown())
        .await
        .context("the stopping thread panicked")?;
    code
}

/// `--detector`, else the gateway's `/v1/detect`; none with `--no-detector` or no gateway.
fn detector_url(args: &VideoArgs) -> Option<String> {
    if args.no_detector {
        return None;
    }
    args.detector.clone().or_else(|| {
        args.gateway
            .as_ref()
            .map(|gateway| format!("{}/v1/detect", gateway.trim_end_matches('/')))
    })
}

async fn fetch_config(control: &str) -> anyhow::Result<domain::VideoConfig> {
    let url = format!("{}/v1/config/video", control.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("cannot ask {url} for the [video] table"))?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}");
    }
    response
        .json()
        .await
        .with_context(|| format!("{url} did not answer a [video] table"))
}

#[derive(clap::Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// ONNX Runtime's library (libonnxruntime.so, 1.31 or newer; `scripts/ort-path` finds the
    /// one scripts/setup installs).
    #[arg(long, env = "FLOWERS_ORT_LIB", value_name = "PATH")]
    ort_lib: PathBuf,
    /// Class names, one per line (default: the model's `names` metadata, else
    /// `labels.txt` beside the model, else class0, class1, …).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// The output layout when the shape does not tell: v5, v8 (v11) or e2e.
    #[arg(long)]
    layout: Option<String>,
    /// The least score kept.
    #[arg(long, default_value_t = 0.25)]
    conf: f32,
    /// Boxes of one class overlapping more than this are one.
    #[arg(long, default_value_t = 0.7)]
    iou: f32,
    /// Threads one model run uses; 0: ONNX Runtime's choice (one per core). Fewer is faster
    /// when the detector shares its cores.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The model's name in answers (default: the Model Flowers serves, FLOWERS_MODEL).
    #[arg(long, env = "FLOWERS_MODEL", default_value = "detector")]
    name: String,
    #[arg(long, env = "CUDA_VISIBLE_DEVICES", hide = true)]
    cuda_visible_devices: Option<String>,
}

/// The `.onnx` file of a model version: the path itself, or the one `.onnx` file in it.
fn onnx_file(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!("{} holds no .onnx file", path.display()),
        _ => anyhow::bail!(
            "{} holds {} .onnx files; name one with --model",
            path.display(),
            found.len()
        ),
    }
}

pub async fn detect(args: DetectArgs) -> anyhow::Result<ExitCode> {
    let address = EngineArgs::address_of(args.engine.listen, args.engine.port)?;
    // A Run given a GPU (or --device cuda) asks ONNX Runtime for its CUDA provider; without one
    // (the CPU onnxruntime, no driver) the model runs on the CPU and the start line says why.
    let cuda = match args.engine.device {
        Some(DeviceFlag::Cuda) => true,
        Some(DeviceFlag::Cpu) => false,
        None => args
            .cuda_visible_devices
            .as_deref()
            .is_some_and(|devices| !devices.trim().is_empty()),
    };
    let model = onnx_file(&args.engine.model)?;
    let labels = args.labels.clone().or_else(|| {
        let beside = model.with_file_name("labels.txt");
        beside.is_file().then_some(beside)
    });
    let mut options = video::DetectorOptions::new(model.clone(), args.ort_lib.clone());
    options.labels = labels;
    options.conf = args.conf;
    options.iou = args.iou;
    options.threads = args.threads;
    options.cuda = cuda;
    if let Some(layout) = &args.layout {
        options.layout = Some(
            layout
                .parse()
                .map_err(|error: String| anyhow::anyhow!("--layout: {error}"))?,
        );
    }
    let detector = tokio::task::spawn_blocking(move || video::Detector::load(&options))
        .await
        .context("the loading thread panicked")?
        .with_context(|| format!("cannot load the detector {}", model.display()))?;
    println!(
        "detect engine: {} ({} classes, {:?} layout, input {:?}) on {}",
        model.display(),
        detector.names().len(),
        detector.layout(),
        detector.input_size(),
        match detector.provider() {
            "CUDA" => "the GPU (CUDA)",
            _ => "the CPU",
        }
    );
    if let Some(note) = detector.provider_note() {
        eprintln!("detect engine: {note}");
    }
    let version = args
        .engine
        .model_version
        .clone()
        .unwrap_or_else(|| "unversioned".to_string());
    let service = video::detect::http::DetectService::new(args.name.clone(), version);
    serve_with_health(address, video::detect::http::router(detector, service)).await
}
