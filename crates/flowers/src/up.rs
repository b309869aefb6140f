//! `flowers up`: load the config, take the data directory, find devices, re-adopt what an
//! earlier Flowers left running, and serve the control API and the gateway until SIGTERM or
//! Ctrl-C, then stop every Run gracefully.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::{UpArgs, MONITOR_SUBCOMMAND};

/// The process environment as the config crate wants it (libraries never read it).
pub fn environment() -> config::Environment {
    config::Environment {
        vars: std::env::vars().collect(),
        // SAFETY: geteuid has no preconditions and cannot fail.
        is_root: unsafe { libc::geteuid() } == 0,
    }
}

/// Which config `up` and `check` use: the flag (or FLOWERS_CONFIG), else `./flowers.toml` when
/// it exists, else the embedded default (`None`).
pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        let local = PathBuf::from("flowers.toml");
        local.is_file().then_some(local)
    })
}

pub fn load_config(
    path: Option<&Path>,
    overrides: &config::Overrides,
) -> Result<config::Config, config::ConfigError> {
    let env = environment();
    match path {
        Some(path) => config::load_file(path, &env, overrides),
        None => config::embedded(&env, overrides),
    }
}

/// `--import-model NAME=PATH`.
#[derive(Clone, Debug)]
pub struct Import {
    pub model: String,
    pub path: PathBuf,
}

pub fn parse_import(text: &str) -> Result<Import, String> {
    let Some((model, path)) = text.split_once('=') else {
        return Err(format!("expected NAME=PATH, got {text:?}"));
    };
    domain::Name::new(model).map_err(|error| format!("model name {model:?}: {error}"))?;
    if path.is_empty() {
        return Err(format!("no path after {model}="));
    }
    let path = std::path::absolute(path).map_err(|error| format!("{path}: {error}"))?;
    if !path.exists() {
        return Err(format!("{}: no such file or directory", path.display()));
    }
    Ok(Import {
        model: model.to_string(),
        path,
    })
}

/// Imports `import` unless its model already has a version, and promotes it when the model's
/// policy did not: a service waiting for that model starts on it at once.
async fn import_first_version(
    handle: &orchestrator::Handle,
    import: &Import,
) -> anyhow::Result<()> {
    if !handle.store().versions(&import.model)?.is_empty() {
        return Ok(());
    }
    let registered = handle
        .register_version(orchestrator::Registration {
            model: import.model.clone(),
            path: import.path.clone(),
            metrics: Default::default(),
            run: None,
        })
        .await?;
    let version = registered.version.version;
    if !registered.promoted {
        handle.promote(&import.model, version).await?;
    }
    println!(
        "imported {} as {}:{version} and promoted it",
        import.path.display(),
        import.model
    );
    Ok(())
}

pub async fn up(args: UpArgs, json_logs: bool) -> anyhow::Result<ExitCode> {
    init_logging(json_logs);
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let overrides = config::Overrides {
        api_listen: args.api_listen,
        gateway_listen: args.gateway_listen,
        data_dir: args.data_dir.map(|dir| cwd.join(dir)),
        cpu_slots: args.cpu_slots,
    };
    let path = config_path(args.config);
    let config = match load_config(path.as_deref(), &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            eprintln!("flowers: the configuration has problems; nothing was started");
            return Ok(ExitCode::from(2));
        }
    };
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    // Two Flowers on one data directory would fight over the same Runs; the second refuses.
    let _lock = lock_data_dir(&data_dir)?;

    let store = store::Store::open(&data_dir.join("flowers.db"))
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;

    let gpus = Arc::new(gpu::Gpus::detect(&gpu::DetectOptions {
        fake_nvml: std::env::var_os("FLOWERS_FAKE_NVML").map(PathBuf::from),
    }));
    let devices = gpu::inventory(
        &gpus.devices(),
        config.devices.cpu_slots,
        gpu::available_cores(),
    );
    let cpu_slots = devices
        .iter()
        .filter(|d| d.kind == domain::DeviceKind::Cpu)
        .count();
    let gpu_status = match gpus.status() {
        gpu::GpuStatus::Unavailable { .. } => {
            format!("{}; {cpu_slots} CPU slot(s) stand in", gpus.status())
        }
        status => status.to_string(),
    };

    let api_listener = bind(config.server.api_listen, "control API").await?;
    let gateway_listener = bind(config.server.gateway_listen, "gateway").await?;
    let api_addr = api_listener.local_addr()?;
    let gateway_addr = gateway_listener.local_addr()?;

    let source = match &config.source {
        config::ConfigSource::File(path) => path.display().to_string(),
        config::ConfigSource::Embedded => "embedded".to_string(),
    };
    let access_log = if config.server.access_log {
        let log =
            crate::access_log::start(&data_dir, config.logs.max_size.bytes(), config.logs.keep)?;
        Some(log)
    } else {
        None
    };
    let gateway = gateway::Gateway::new(gateway::Settings {
        access_log,
        ..gateway::Settings::default()
    });
    let counts = gateway.clone();
    let settings = orchestrator::Settings {
        data_dir: data_dir.clone(),
        control_url: format!("http://{}", reachable(api_addr)),
        gateway_url: format!("http://{}", reachable(gateway_addr)),
        flowers_exe: Some(
            std::env::current_exe()
                .context("cannot find the flowers executable to start engines with")?,
        ),
        log_max_bytes: config.logs.max_size.bytes(),
        log_keep: config.logs.keep,
        keep_runs: config.logs.keep_runs,
        monitor_command: vec![
            std::env::current_exe()
                .context("cannot find the flowers executable to start Runs with")?
                .into_os_string(),
            MONITOR_SUBCOMMAND.into(),
        ],
        in_flight: Some(orchestrator::InFlight(Arc::new(move |run: &str| {
            counts.in_flight().get(run).copied().unwrap_or(0)
        }))),
        drain_timeout: crate::routes::DEFAULT_DRAIN,
        python_path: orchestrator::PythonPath {
            inherited: std::env::var("PYTHONPATH").ok(),
            added: vec![crate::python_sdk::install(&data_dir)?],
        },
    };
    let desired = orchestrator::Desired {
        services: config.services.clone(),
        jobs: config.jobs.clone(),
        models: config.models.clone(),
        devices: devices.clone(),
        device_usage: crate::vram::first_reading(&gpus, &store),
    };
    let (handle, engine) = orchestrator::start(settings, desired, store, gpu_status.clone())
        .await
        .context("cannot start the orchestrator")?;
    let vram_task = tokio::spawn(crate::vram::follow(gpus.clone(), handle.clone()));
    for import in &args.import_models {
        if !config
            .models
            .keys()
            .any(|name| name.as_str() == import.model)
        {
            println!(
                "--import-model {}: skipped, the config declares no [models.{}]",
                import.model, import.model
            );
            continue;
        }
        if let Err(error) = import_first_version(&handle, import).await {
            // The server is up: its services wait for a model instead, and say so.
            eprintln!("flowers: --import-model {}: {error:#}", import.model);
        }
    }

    let info = api_types::ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        api_listen: api_addr.to_string(),
        gateway_listen: gateway_addr.to_string(),
        data_dir: data_dir.display().to_string(),
        config_source: source.clone(),
        started_ms: domain::now_ms(),
    };
    let state = api::AppState {
        orchestrator: handle.clone(),
        gpus,
        gateway: gateway.clone(),
        info: Arc::new(info),
        video: Arc::new(config.video.clone()),
    };
    let (stop_servers, servers_stopped) = tokio::sync::watch::channel(false);
    let api_task = {
        let mut stopped = servers_stopped.clone();
        tokio::spawn(api::serve(api_listener, state, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    };
    let routes_task = tokio::spawn(crate::routes::follow(handle.clone(), gateway.clone()));
    let gateway_task = {
        let mut stopped = servers_stopped.clone();
        tokio::spawn(gateway.serve(gateway_listener, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    };

    let device_list = devices
        .iter()
        .map(|d| d.id.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "flowers {}: control API http://{api_addr}, gateway http://{gateway_addr}, data {}, config {source}",
        env!("CARGO_PKG_VERSION"),
        data_dir.display()
    );
    println!(
        "devices: {} ({gpu_status})",
        if device_list.is_empty() {
            "none"
        } else {
            &device_list
        }
    );
    if !api_addr.ip().is_loopback() {
        println!(
            "warning: the control API listens on {api_addr}, beyond this machine, and has no \
             authentication: whoever reaches it can start and stop processes here"
        );
    }
    println!(
        "{} service(s), {} job(s); `flowers ps` lists them, `flowers events -f` follows what happens",
        config.services.len(),
        config.jobs.len()
    );

    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping every Run"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping every Run"),
    }
    // A second Ctrl-C means "now". Repeated SIGTERMs do not: service managers and `timeout`
    // may send one to the process and another to its group.
    let shutdown = handle.shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = terminate.recv() => tracing::info!("SIGTERM again: still stopping Runs gracefully"),
            _ = interrupt.recv() => bail!("second SIGINT: exiting without waiting for Runs to stop"),
        }
    }
    let _ = stop_servers.send(true);
    let _ = api_task.await;
    let _ = gateway_task.await;
    routes_task.abort();
    vram_task.abort();
    let _ = engine.await;
    println!("flowers: every Run stopped; bye");
    Ok(ExitCode::SUCCESS)
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWERS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn bind(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for the {what}"))
}

/// The address a local client uses to reach a listener bound to a wildcard address.
fn reachable(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        ip if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), address.port())
        }
        _ => address,
    }
}

/// Holds an exclusive `flock` on `DATA_DIR/flowers.lock` for the life of the process; the
/// kernel drops it when the process dies, even by SIGKILL, so a restart never finds it stale.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("flowers.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        bail!(
            "another Flowers is already running on the data directory {} (it holds {})",
            data_dir.display(),
            path.display()
        );
    }
    Ok(file)
}
