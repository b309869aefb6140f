//! `flowers engine …`: the built-in model engines, each a plain HTTP server that Flowers runs
//! as a service (`command = ["flowers", "engine", "embed"]`) like any other: supervised,
//! probed on `/healthz`, following a Model whose promoted version it loads from
//! `$FLOWERS_MODEL_PATH`, and listening on `127.0.0.1:$FLOWERS_PORT`. They also run by hand,
//! outside Flowers, with `--model` and `--listen`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::signal::unix::{signal, SignalKind};

#[derive(clap::Subcommand, Debug)]
pub enum EngineCommand {
    /// Serve a BERT-family sentence-embedding model (a sentence-transformers directory):
    /// OpenAI-compatible `POST /v1/embeddings`.
    Embed(EngineArgs),
    /// Serve a llama-family GGUF chat model: OpenAI-compatible `POST /v1/chat/completions`,
    /// `POST /v1/completions` (both streaming) and `GET /v1/models`.
    Chat(ChatArgs),
    /// Serve document collections with hybrid search and cited answers (the RAG service):
    /// embeddings and answers come from the embed and chat engines through the gateway.
    Rag(RagArgs),
    /// Analyse camera streams and recordings (the video service): motion, tracking, zones
    /// and counting lines, with events and snapshots kept in video.sqlite.
    Video(crate::video_engine::VideoArgs),
    /// Serve a YOLO-family ONNX object detector (v5, v8/v11 or end-to-end outputs) on ONNX
    /// Runtime: `POST /v1/detect` with raw RGB images, batched across requests.
    Detect(crate::video_engine::DetectArgs),
    /// The archives job: analyse the files that `flowers video analyze` recorded with the
    /// video service, one file per core, posting each file's results as it is finished.
    VideoAnalyze(crate::archive_job::AnalyzeArgs),
}

/// What every engine that keeps state and serves under a route is told: where its state
/// lives, its route prefix and where it listens (all set by Flowers for its services).
#[derive(clap::Args, Debug)]
pub struct ServiceEngineArgs {
    /// Where the engine keeps its state. Default: a folder named after the engine (`rag`,
    /// `video`) in the service's data directory, FLOWERS_DATA_DIR.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[arg(long, env = "FLOWERS_DATA_DIR", hide = true)]
    service_data: Option<PathBuf>,
    /// The path every route starts with (default: the service's first route, from
    /// FLOWERS_ROUTE_PREFIXES, e.g. `/rag`).
    #[arg(long)]
    prefix: Option<String>,
    #[arg(long, env = "FLOWERS_ROUTE_PREFIXES", hide = true)]
    route_prefixes: Option<String>,
    /// Where to listen (default: 127.0.0.1 on FLOWERS_PORT, which Flowers sets).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    #[arg(long, env = "FLOWERS_PORT", hide = true)]
    port: Option<u16>,
}

impl ServiceEngineArgs {
    pub(crate) fn address(&self) -> anyhow::Result<SocketAddr> {
        EngineArgs::address_of(self.listen, self.port)
    }

    /// `--data`, else `name` in the service's data directory; `what` says what lives there.
    pub(crate) fn dir(&self, name: &str, what: &str) -> anyhow::Result<PathBuf> {
        match (&self.data, &self.service_data) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, Some(service)) => Ok(service.join(name)),
            (None, None) => anyhow::bail!(
                "no directory for the {what}: pass --data DIR (Flowers sets FLOWERS_DATA_DIR for its services)"
            ),
        }
    }

    /// The path the routes start with: `--prefix`, else the first of the service's routes
    /// (FLOWERS_ROUTE_PREFIXES), else none; without a trailing '/'.
    pub(crate) fn prefix(&self) -> anyhow::Result<String> {
        let prefix = match (&self.prefix, &self.route_prefixes) {
            (Some(prefix), _) => prefix.as_str(),
            (None, Some(prefixes)) => prefixes.split(' ').next().unwrap_or_default(),
            (None, None) => "",
        };
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.is_empty() && !prefix.starts_with('/') {
            anyhow::bail!("--prefix {prefix:?} must start with '/'");
        }
        Ok(prefix)
    }
}

#[derive(clap::Args, Debug)]
pub struct RagArgs {
    #[command(flatten)]
    service: ServiceEngineArgs,
    /// Where the embed and chat engines answer: Flowers' gateway (FLOWERS_GATEWAY_URL).
    #[arg(long, env = "FLOWERS_GATEWAY_URL", value_name = "URL")]
    engines: String,
    /// The embedding model to ask for (and to record in each collection).
    #[arg(long, default_value = "minilm")]
    embed_model: String,
    /// The chat model to ask for.
    #[arg(long, default_value = "smollm2")]
    chat_model: String,
    /// The chat model's context window, in tokens; prompts are packed to fit it.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(256..))]
    context_tokens: u32,
}

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The model's id in answers and `/v1/models` (default: the Model Flowers serves,
    /// FLOWERS_MODEL, else the GGUF's own name).
    #[arg(long, env = "FLOWERS_MODEL")]
    name: Option<String>,
    /// Threads generating tokens; requests beyond them take turns token by token.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Requests generating at once (taking turns); more wait in arrival order.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    max_active: u16,
    /// Requests waiting beyond those; more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 64)]
    max_waiting: usize,
    /// Cap on the context, in tokens (default: the model's, at most 4096).
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..))]
    max_context: Option<u32>,
}

#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    /// The model's files. Flowers sets FLOWERS_MODEL_PATH to the promoted version of the
    /// service's Model.
    #[arg(long, env = "FLOWERS_MODEL_PATH", value_name = "PATH")]
    pub(crate) model: PathBuf,
    /// Where to listen (default: 127.0.0.1 on FLOWERS_PORT, which Flowers sets).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// The port on 127.0.0.1 when --listen is not given.
    #[arg(long, env = "FLOWERS_PORT", hide = true)]
    pub(crate) port: Option<u16>,
    /// The version of the Model being served, which Flowers sets: every answer says it in
    /// an `x-flowers-model-version` header (the RAG service records it with its vectors).
    #[arg(long, env = "FLOWERS_MODEL_VERSION", hide = true)]
    pub(crate) model_version: Option<String>,
    /// Where the model runs. Default: the GPU when Flowers placed the Run on one (it sets
    /// CUDA_VISIBLE_DEVICES to the GPU's UUID), else the CPU. `cuda` needs a binary built
    /// with the `cuda` feature; without it the engine says so and runs on the CPU.
    #[arg(long, value_enum, value_name = "DEVICE")]
    pub(crate) device: Option<DeviceFlag>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceFlag {
    Cpu,
    /// The first GPU CUDA_VISIBLE_DEVICES leaves visible.
    Cuda,
}

/// Where an engine will run, decided from `--device`, the environment Flowers gives a Run and
/// what this binary was built with; [`open_device`] acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DevicePlan {
    /// The CPU, with a warning to print once when a GPU was asked for but cannot be used.
    Cpu { warning: Option<String> },
    /// CUDA device 0 of those this process sees; `label` names it in messages.
    Cuda { label: String },
}

/// A Run on a GPU gets `CUDA_VISIBLE_DEVICES=<the GPU's UUID>` and `FLOWERS_DEVICE=gpuN`; a
/// CPU-slot Run an empty CUDA_VISIBLE_DEVICES. Outside Flowers (unset) the CPU is the default
/// too: `--device cuda` asks for the GPU by hand.
fn plan_device(
    flag: Option<DeviceFlag>,
    cuda_visible_devices: Option<&str>,
    flowers_device: Option<&str>,
    cuda_built: bool,
) -> DevicePlan {
    let visible = cuda_visible_devices
        .map(str::trim)
        .filter(|value| !value.is_empty());
    let asked_by = match (flag, visible) {
        (Some(DeviceFlag::Cpu), _) | (None, None) => return DevicePlan::Cpu { warning: None },
        (Some(DeviceFlag::Cuda), _) => "--device cuda".to_string(),
        (None, Some(visible)) => format!("CUDA_VISIBLE_DEVICES={visible}"),
    };
    let placed = flowers_device.filter(|device| device.starts_with("gpu"));
    let label = match (placed, visible) {
        (Some(device), Some(visible)) => format!("{device} ({visible})"),
        (Some(device), None) => device.to_string(),
        (None, Some(visible)) => visible.to_string(),
        (None, None) if cuda_visible_devices.is_some() => {
            "CUDA device 0 (CUDA_VISIBLE_DEVICES is empty: no GPU is visible)".to_string()
        }
        (None, None) => "CUDA device 0".to_string(),
    };
    if cuda_built {
        DevicePlan::Cuda { label }
    } else {
        DevicePlan::Cpu {
            warning: Some(format!(
                "{asked_by} asks for the GPU {label}, but this flowers binary was built without \
                 CUDA (cargo feature `cuda`), so the engine runs on the CPU; build with \
                 `--features cuda` (scripts/cuda-build) to use the GPU"
            )),
        }
    }
}

/// [`open_device`] on a blocking thread: opening CUDA initialises the driver.
async fn open_device_blocking(plan: &DevicePlan) -> anyhow::Result<engines::Device> {
    let plan = plan.clone();
    tokio::task::spawn_blocking(move || open_device(&plan))
        .await
        .context("the thread opening the device panicked")?
}

/// The device a plan names, opened; a warning on stderr (once) when it falls back to the CPU.
fn open_device(plan: &DevicePlan) -> anyhow::Result<engines::Device> {
    match plan {
        DevicePlan::Cpu { warning } => {
            if let Some(warning) = warning {
                tracing::warn!("{warning}");
            }
            Ok(engines::Device::Cpu)
        }
        DevicePlan::Cuda { label } => engines::cuda_device(0)
            .with_context(|| format!("cannot open the GPU {label} with CUDA")),
    }
}

impl DevicePlan {
    fn for_engine(args: &EngineArgs) -> DevicePlan {
        plan_device(
            args.device,
            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
            std::env::var("FLOWERS_DEVICE").ok().as_deref(),
            engines::CUDA_BUILT,
        )
    }

    /// How the engine's start line names it.
    fn describe(&self) -> String {
        match self {
            DevicePlan::Cpu { .. } => "the CPU".to_string(),
            DevicePlan::Cuda { label } => format!("the GPU {label}"),
        }
    }
}

impl EngineArgs {
    fn address(&self) -> anyhow::Result<SocketAddr> {
        EngineArgs::address_of(self.listen, self.port)
    }

    /// Where an engine listens: `--listen`, else 127.0.0.1 on FLOWERS_PORT.
    pub(crate) fn address_of(
        listen: Option<SocketAddr>,
        port: Option<u16>,
    ) -> anyhow::Result<SocketAddr> {
        match (listen, port) {
            (Some(address), _) => Ok(address),
            (None, Some(port)) => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            (None, None) => anyhow::bail!(
                "no address to listen on: pass --listen ADDR (Flowers sets FLOWERS_PORT for its services)"
            ),
        }
    }
}

pub async fn run(command: EngineCommand) -> anyhow::Result<ExitCode> {
    init_logging();
    match command {
        EngineCommand::Embed(args) => embed(args).await,
        EngineCommand::Chat(args) => chat(args).await,
        EngineCommand::Rag(args) => rag(args).await,
        EngineCommand::Video(args) => crate::video_engine::run(args).await,
        EngineCommand::Detect(args) => crate::video_engine::detect(args).await,
        EngineCommand::VideoAnalyze(args) => crate::archive_job::run(args).await,
    }
}

async fn rag(args: RagArgs) -> anyhow::Result<ExitCode> {
    let address = args.service.address()?;
    let dir = args.service.dir("rag", "collections")?;
    let prefix = args.service.prefix()?;
    let engines = args.engines.trim_end_matches('/').to_string();
    let open_dir = dir.clone();
    let library = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&open_dir)?;
        rag::Library::open(&open_dir, rag::LibraryOptions::default()).map_err(anyhow::Error::from)
    })
    .await
    .context("the opening thread panicked")?
    .with_context(|| format!("cannot open the collections in {}", dir.display()))?;
    let embed = rag::OpenAiEmbeddings::new(engines.clone(), args.embed_model.clone());
    let mut options = rag::http::RagHttpOptions::new(Arc::new(embed));
    options.prefix = prefix.clone();
    options.chat = Some(rag::OpenAiChat::new(
        engines.clone(),
        args.chat_model.clone(),
    ));
    options.context_tokens = args.context_tokens as usize;
    println!(
        "rag engine: collections in {}, routes under {}/v1, embeddings from {engines} ({}), answers from {engines} ({})",
        dir.display(),
        if prefix.is_empty() { "" } else { &prefix },
        args.embed_model,
        args.chat_model
    );
    serve(address, rag::http::router(library, options)).await
}

async fn chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let address = args.engine.address()?;
    let started = Instant::now();
    let plan = DevicePlan::for_engine(&args.engine);
    let options = engines::chat::ChatOptions {
        name: args.name.clone(),
        workers: args.workers.into(),
        max_active: args.max_active.into(),
        max_waiting: args.max_waiting,
        max_context: args.max_context.map(|n| n as usize),
        device: open_device_blocking(&plan).await?,
        ..engines::chat::ChatOptions::default()
    };
    let path = args.engine.model.clone();
    let model = tokio::task::spawn_blocking(move || engines::chat::ChatModel::load(&path, options))
        .await
        .context("the loading thread panicked")?
        .with_context(|| format!("cannot load the chat model {}", args.engine.model.display()))?;
    println!(
        "chat engine: {} ({} tokens of context) from {} on {} in {} ms",
        model.name(),
        model.context_length(),
        args.engine.model.display(),
        plan.describe(),
        started.elapsed().as_millis()
    );
    let router = engines::chat::router(Arc::new(model), engines::chat::ChatHttpLimits::default());
    serve(address, with_model_version(router, &args.engine)?).await
}

async fn embed(args: EngineArgs) -> anyhow::Result<ExitCode> {
    let address = args.address()?;
    let started = Instant::now();
    let dir = args.model.clone();
    let plan = DevicePlan::for_engine(&args);
    let options = engines::embed::EmbedderOptions {
        device: open_device_blocking(&plan).await?,
        ..engines::embed::EmbedderOptions::default()
    };
    let embedder =
        tokio::task::spawn_blocking(move || engines::embed::Embedder::load_with(&dir, options))
            .await
            .context("the loading thread panicked")?
            .with_context(|| format!("cannot load the embedding model {}", args.model.display()))?;
    println!(
        "embed engine: {} ({} dimensions, {:?} pooling{}) from {} on {} in {} ms",
        embedder.name(),
        embedder.dimension(),
        embedder.pooling(),
        if embedder.normalizes() {
            ", normalised"
        } else {
            ""
        },
        args.model.display(),
        plan.describe(),
        started.elapsed().as_millis()
    );
    let router = engines::embed::router(Arc::new(embedder));
    serve(address, with_model_version(router, &args)?).await
}

/// Adds the served version's [`api_types::MODEL_VERSION_HEADER`] to every answer, when known.
fn with_model_version(router: Router, args: &EngineArgs) -> anyhow::Result<Router> {
    let Some(version) = &args.model_version else {
        return Ok(router);
    };
    let value = HeaderValue::from_str(version)
        .with_context(|| format!("FLOWERS_MODEL_VERSION {version:?} is not a header value"))?;
    Ok(router.layer(axum::middleware::map_response(
        move |mut response: Response| {
            let value = value.clone();
            async move {
                response
                    .headers_mut()
                    .insert(api_types::MODEL_VERSION_HEADER, value);
                response
            }
        },
    )))
}

/// Serves `router` plus `/healthz` until SIGTERM or Ctrl-C, then finishes the requests in
/// flight: Flowers drains a replica before it stops it, so few remain.
pub(crate) async fn serve(address: SocketAddr, router: Router) -> anyhow::Result<ExitCode> {
    serve_with_health(address, router.route("/healthz", get(|| async { "ok\n" }))).await
}

/// [`serve`] for a router that answers `/healthz` itself.
pub(crate) async fn serve_with_health(
    address: SocketAddr,
    router: Router,
) -> anyhow::Result<ExitCode> {
    serve_until_signal(address, router, || {}).await
}

/// Serves until SIGTERM or SIGINT, then drains. `on_signal` runs first: responses that never
/// end by themselves (event streams) must be ended there, or the drain would wait for them.
pub(crate) async fn serve_until_signal(
    address: SocketAddr,
    router: Router,
    on_signal: impl FnOnce() + Send + 'static,
) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            on_signal();
        })
        .await
        .context("the HTTP server failed")?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWERS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_slot_run_uses_the_cpu() {
        let plan = plan_device(None, Some(""), Some("cpu0"), true);
        assert_eq!(plan, DevicePlan::Cpu { warning: None });
        assert_eq!(plan_device(None, Some(""), Some("none"), false), plan);
    }

    #[test]
    fn outside_flowers_the_cpu_is_the_default() {
        assert_eq!(
            plan_device(None, None, None, true),
            DevicePlan::Cpu { warning: None }
        );
    }

    #[test]
    fn a_gpu_run_uses_cuda_in_a_cuda_build() {
        let plan = plan_device(None, Some("GPU-5a1f"), Some("gpu0"), true);
        assert_eq!(
            plan,
            DevicePlan::Cuda {
                label: "gpu0 (GPU-5a1f)".to_string()
            }
        );
        assert_eq!(plan.describe(), "the GPU gpu0 (GPU-5a1f)");
    }

    #[test]
    fn a_gpu_run_without_the_cuda_feature_runs_on_the_cpu_and_says_why() {
        let DevicePlan::Cpu {
            warning: Some(warning),
        } = plan_device(None, Some("GPU-5a1f"), Some("gpu0"), false)
        else {
            panic!("expected the CPU with a warning");
        };
        assert!(
            warning.starts_with("CUDA_VISIBLE_DEVICES=GPU-5a1f asks for the GPU gpu0 (GPU-5a1f)")
        );
        assert!(warning.contains("built without CUDA (cargo feature `cuda`)"));
        assert!(warning.contains("runs on the CPU"));
    }

    #[test]
    fn the_flag_overrides_the_environment() {
        assert_eq!(
            plan_device(Some(DeviceFlag::Cpu), Some("GPU-5a1f"), Some("gpu0"), true),
            DevicePlan::Cpu { warning: None }
        );
        assert_eq!(
            plan_device(Some(DeviceFlag::Cuda), None, None, true),
            DevicePlan::Cuda {
                label: "CUDA device 0".to_string()
            }
        );
        let DevicePlan::Cpu {
            warning: Some(warning),
        } = plan_device(Some(DeviceFlag::Cuda), Some(""), Some("cpu0"), false)
        else {
            panic!("expected the CPU with a warning");
        };
        assert!(warning.starts_with(
            "--device cuda asks for the GPU CUDA device 0 (CUDA_VISIBLE_DEVICES is empty"
        ));
    }

    #[test]
    fn opening_the_cpu_plan_gives_the_cpu() {
        let device = open_device(&DevicePlan::Cpu {
            warning: Some("test".into()),
        })
        .unwrap();
        assert!(device.is_cpu());
    }

    #[test]
    fn without_the_cuda_feature_opening_cuda_is_a_clear_error() {
        if engines::CUDA_BUILT {
            return;
        }
        let error = open_device(&DevicePlan::Cuda {
            label: "gpu0 (GPU-5a1f)".into(),
        })
        .unwrap_err();
        assert!(
            format!("{error:#}").starts_with("cannot open the GPU gpu0 (GPU-5a1f) with CUDA"),
            "{error:#}"
        );
    }
}
