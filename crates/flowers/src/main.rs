//! `flowers`: the one binary. `flowers up` runs the server (orchestrator, control API,
//! gateway); every other command is a client of the control API.

mod access_log;
mod archive_job;
mod bench;
mod commands;
mod deploy;
mod engine;
mod models;
mod python_sdk;
mod rag_cli;
mod routes;
mod table;
mod up;
mod video_archive_cli;
mod video_cli;
mod video_engine;
mod vram;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The hidden subcommand the supervisor starts each Run through (see the supervisor crate).
pub const MONITOR_SUBCOMMAND: &str = "__monitor";

#[derive(Parser, Debug)]
#[command(
    name = "flowers",
    version,
    about = "An always-up, on-premises deep-learning server: train and serve on the same GPUs.",
    propagate_version = true
)]
struct Cli {
    /// URL of the control API that client commands talk to.
    #[arg(
        long,
        global = true,
        env = "FLOWERS_API",
        default_value = "http://127.0.0.1:7070"
    )]
    api: String,

    /// Print JSON for machines instead of tables for people.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start Flowers: devices, services, jobs, the control API and the gateway.
    Up(UpArgs),
    /// Validate a config file without starting anything.
    Check {
        /// The file to check (default: ./flowers.toml, else the embedded default).
        file: Option<PathBuf>,
    },
    /// List services and jobs with their Runs.
    Ps,
    /// Show devices: NVML readings and what Flowers has allocated on each.
    Gpus,
    /// Show the output of a service's replicas, a job's latest Run, or one Run.
    Logs {
        /// A service, job or Run id (`web`, `train`, `web-12`).
        name: String,
        /// Keep printing new output until the Run ends (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
        /// Start with the last this many lines.
        #[arg(long, default_value_t = 200)]
        tail: usize,
    },
    /// Start a Run of a job.
    Run {
        /// The job's name.
        job: String,
    },
    /// Stop a Run gracefully (a service replica is replaced; a job is not restarted).
    Stop {
        /// The Run id, as `flowers ps` shows it.
        run: String,
    },
    /// Add a service to a running Flowers (kept across restarts), or replace one added before.
    Deploy(deploy::DeployArgs),
    /// Add a training job to a running Flowers (kept across restarts) and start it.
    Train(deploy::TrainArgs),
    /// Take away a service or job added with deploy or train (a service is drained first).
    Remove {
        /// The service or job.
        name: String,
    },
    /// Clear a service's crash loop, or a job's failure count, so Flowers tries again.
    Reset {
        /// The service or job.
        name: String,
    },
    /// Show what happened; with -f, keep following.
    Events {
        #[arg(short, long)]
        follow: bool,
        /// Only events about this service or job.
        #[arg(long)]
        owner: Option<String>,
        /// How many past events to show first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show the gateway's traffic per route: answers by status, errors, bytes, latency.
    Gateway {
        #[command(subcommand)]
        action: Option<GatewayAction>,
    },
    /// List models; with a subcommand, show, import, promote or roll back their versions.
    Models {
        #[command(subcommand)]
        action: Option<models::ModelsAction>,
    },
    /// Print the control API's OpenAPI document.
    Openapi,
    /// Benchmarks that start a Flowers of their own.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Collections, ingest, search and cited answers of the RAG service (through the gateway).
    Rag(rag_cli::RagArgs),
    /// Streams, events and snapshots of the video service (through the gateway), and `scan`
    /// to analyse a file here with no server.
    Video(video_cli::VideoArgs),
    /// Run a built-in model engine (Flowers starts these as services; see `engine embed --help`).
    #[command(subcommand)]
    Engine(engine::EngineCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Train beside serve under load: promotions, kills and preemptions, zero failed requests.
    Availability(bench::AvailabilityArgs),
}

#[derive(Subcommand, Debug)]
enum GatewayAction {
    /// Make a random API key and print it with the `api_keys` entry for flowers.toml (only
    /// the key's SHA-256 goes there).
    NewKey,
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// Config file (default: ./flowers.toml if present, else the embedded default).
    #[arg(long, short, env = "FLOWERS_CONFIG")]
    config: Option<PathBuf>,
    /// Control API address (overrides [server] api_listen and FLOWERS_API_LISTEN).
    #[arg(long)]
    api_listen: Option<std::net::SocketAddr>,
    /// Gateway address (overrides [server] gateway_listen and FLOWERS_GATEWAY_LISTEN).
    #[arg(long)]
    gateway_listen: Option<std::net::SocketAddr>,
    /// Data directory (overrides [server] data_dir and FLOWERS_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of CPU slots (overrides [devices] cpu_slots and FLOWERS_CPU_SLOTS).
    #[arg(long)]
    cpu_slots: Option<u32>,
    /// Import the file or directory PATH as model NAME's first version, and promote it, when
    /// NAME has no version yet; nothing happens once it has one. Repeatable. scripts/up gives
    /// the embedded default's engines their models this way.
    #[arg(long = "import-model", value_name = "NAME=PATH", value_parser = up::parse_import)]
    import_models: Vec<up::Import>,
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == MONITOR_SUBCOMMAND) {
        supervisor::monitor_main(args.split_off(2));
    }
    let cli = Cli::parse_from(args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::up(args, cli.json).await,
            Command::Check { file } => commands::check(file, cli.json),
            Command::Bench(BenchCommand::Availability(args)) => {
                bench::availability(args, cli.json).await
            }
            Command::Engine(command) => engine::run(command).await,
            Command::Rag(args) => rag_cli::run(args, cli.json).await,
            Command::Video(args) => video_cli::run(args, &cli.api, cli.json).await,
            Command::Openapi => {
                println!("{}", api::openapi_json());
                Ok(ExitCode::SUCCESS)
            }
            Command::Gateway {
                action: Some(GatewayAction::NewKey),
            } => commands::new_key(cli.json),
            command => commands::client_command(&cli.api, cli.json, command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
