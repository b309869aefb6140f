//! `flowers.toml` parsed, validated and layered into typed configuration.
//!
//! This crate owns the configuration schema: which keys exist, their defaults, their limits,
//! and the error messages that point at the file, line and field of every mistake. It layers
//! built-in defaults < the file < `FLOWERS_*` environment variables < command-line overrides,
//! and hands out plain values and `domain` specs. It never reads the process environment (the
//! binary passes an [`Environment`] in), never starts or schedules anything, and never writes
//! files; its only I/O is reading the config file and checking that declared workdirs exist.

mod environment;
mod error;
mod parse;
mod run_time;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use domain::{ByteSize, JobSpec, ModelSpec, Name, ServiceSpec, VideoConfig};

pub use error::{ConfigError, Problem};
pub use run_time::{job_from_json, service_from_json, video_stream_from_json};

/// The configuration Flowers runs with when no `flowers.toml` is given; every key is
/// documented in it.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Where the embedded default is said to come from in problems.
const EMBEDDED_ORIGIN: &str = "embedded default";

/// Everything Flowers needs to start, fully resolved: every default filled in, every relative
/// path made relative to the config file's directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub devices: DevicesConfig,
    pub logs: LogsConfig,
    /// `[services.NAME]` tables: long-running processes answering HTTP.
    pub services: BTreeMap<Name, ServiceSpec>,
    /// `[jobs.NAME]` tables: run-to-completion processes. No job shares a name with a service.
    pub jobs: BTreeMap<Name, JobSpec>,
    /// `[models.NAME]` tables, plus every model a service or job names without declaring it
    /// (manual promotion, default retention).
    pub models: BTreeMap<Name, ModelSpec>,
    /// `[video]`: streams the video service analyses (empty when the file has no table).
    pub video: VideoConfig,
    pub source: ConfigSource,
}

/// Where the configuration came from, for `flowers up` to say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file; absolute when loaded with [`load_file`], as given to [`load_str`].
    File(PathBuf),
    /// [`EMBEDDED_DEFAULT`].
    Embedded,
}

/// `[server]`: where Flowers listens and keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// `gateway_listen`: the LAN-facing port carrying service traffic. Default `0.0.0.0:8080`.
    /// Environment `FLOWERS_GATEWAY_LISTEN`.
    pub gateway_listen: SocketAddr,
    /// `api_listen`: the control API, CLI and dashboard. Default `127.0.0.1:7070`, loopback so
    /// that only this machine can change what runs. Environment `FLOWERS_API_LISTEN`.
    pub api_listen: SocketAddr,
    /// `data_dir`: state, logs and model versions. A relative path in the file is taken from
    /// the file's directory. Default `/var/lib/flowers` as root, else
    /// `$XDG_DATA_HOME/flowers`, else `$HOME/.local/share/flowers`. Environment
    /// `FLOWERS_DATA_DIR` (absolute only).
    pub data_dir: PathBuf,
    /// `access_log`: write one JSON line per gateway request to `DATA_DIR/logs/access.log`,
    /// rotated like Runs' logs (`[logs] max_size`, `keep`). Default true.
    pub access_log: bool,
}

/// `[devices]`: what Runs are placed on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevicesConfig {
    /// `cpu_slots`: CPU slots standing in for GPUs, `0..=256`. `None` (unset) is automatic: the
    /// gpu crate decides from what it finds. Environment `FLOWERS_CPU_SLOTS`.
    pub cpu_slots: Option<u32>,
}

/// `[logs]`: how each Run's log file is rotated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogsConfig {
    /// `max_size`: size at which a log file is rotated, at least `4KiB`. Default `10MiB`.
    pub max_size: ByteSize,
    /// `keep`: rotated files kept per Run, `1..=100`. Default 3.
    pub keep: u32,
    /// `keep_runs`: Runs of each service or job whose directory (logs, exit status) is kept,
    /// newest first, `1..=100000`. Older ended Runs' directories are deleted when a Run ends, so
    /// a service that crashes for weeks cannot fill the disk; their records stay. Default 20.
    pub keep_runs: u32,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_size: ByteSize::mib(10),
            keep: 3,
            keep_runs: 20,
        }
    }
}

/// What the process environment says, passed in by the binary (libraries never read the
/// environment).
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// All environment variables; only `FLOWERS_API_LISTEN`, `FLOWERS_GATEWAY_LISTEN`,
    /// `FLOWERS_DATA_DIR`, `FLOWERS_CPU_SLOTS`, `HOME` and `XDG_DATA_HOME` are looked at.
    pub vars: BTreeMap<String, String>,
    /// Running as root: state goes to `/var/lib/flowers`.
    pub is_root: bool,
}

/// Command-line flags, the highest layer. The binary makes paths absolute before passing them.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub api_listen: Option<SocketAddr>,
    pub gateway_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub cpu_slots: Option<u32>,
}

/// Reads and loads `path`. Problems name the path as given; relative paths inside are resolved
/// against the file's directory made absolute, so the returned config holds absolute paths.
pub fn load_file(
    path: &Path,
    env: &Environment,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        problems: vec![Problem {
            origin: origin.clone(),
            line: None,
            field: String::new(),
            message: format!("cannot read the config file: {error}"),
        }],
    })?;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let base_dir = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
    build(
        &text,
        &origin,
        &base_dir,
        ConfigSource::File(absolute),
        env,
        overrides,
    )
}

/// Loads `text` as if read from `origin`, which names the file in problems and whose parent
/// directory relative paths are resolved against.
pub fn load_str(
    text: &str,
    origin: &Path,
    env: &Environment,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let base_dir = origin.parent().unwrap_or(Path::new(""));
    build(
        text,
        &origin.display().to_string(),
        base_dir,
        ConfigSource::File(origin.to_path_buf()),
        env,
        overrides,
    )
}

/// Loads [`EMBEDDED_DEFAULT`] under the environment and overrides.
pub fn embedded(env: &Environment, overrides: &Overrides) -> Result<Config, ConfigError> {
    build(
        EMBEDDED_DEFAULT,
        EMBEDDED_ORIGIN,
        Path::new(""),
        ConfigSource::Embedded,
        env,
        overrides,
    )
}

fn build(
    text: &str,
    origin: &str,
    base_dir: &Path,
    source: ConfigSource,
    env: &Environment,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let (file, mut problems) = parse::parse_file(text, origin, base_dir);
    let (environment, environment_problems) = environment::read(env);
    problems.extend(environment_problems);

    if let Some(slots) = overrides.cpu_slots.filter(|slots| *slots > 256) {
        problems.push(Problem {
            origin: "command line".to_string(),
            line: None,
            field: "--cpu-slots".to_string(),
            message: format!("expected an integer 0..=256, got {slots}"),
        });
    }

    // The default data directory needs HOME; ask for it only when no layer set one, so that
    // a service manager without HOME still works with an explicit data_dir.
    let data_dir = match overrides
        .data_dir
        .clone()
        .or(environment.data_dir)
        .or(file.data_dir)
    {
        Some(dir) => Some(dir),
        None => match environment::default_data_dir(env) {
            Ok(dir) => Some(dir),
            Err(problem) => {
                problems.push(problem);
                None
            }
        },
    };

    let Some(data_dir) = data_dir.filter(|_| problems.is_empty()) else {
        return Err(ConfigError { problems });
    };

    Ok(Config {
        server: ServerConfig {
            gateway_listen: overrides
                .gateway_listen
                .or(environment.gateway_listen)
                .or(file.gateway_listen)
                .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080))),
            api_listen: overrides
                .api_listen
                .or(environment.api_listen)
                .or(file.api_listen)
                .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 7070))),
            data_dir,
            access_log: file.access_log.unwrap_or(true),
        },
        devices: DevicesConfig {
            cpu_slots: overrides
                .cpu_slots
                .or(environment.cpu_slots)
                .or(file.cpu_slots),
        },
        logs: LogsConfig {
            max_size: file.logs_max_size.unwrap_or(LogsConfig::default().max_size),
            keep: file.logs_keep.unwrap_or(LogsConfig::default().keep),
            keep_runs: file
                .logs_keep_runs
                .unwrap_or(LogsConfig::default().keep_runs),
        },
        models: with_implied_models(file.models, &file.services, &file.jobs),
        services: file.services,
        jobs: file.jobs,
        video: file.video.unwrap_or_default(),
        source,
    })
}

/// Declared models, plus an implied one for each model a service or job names.
fn with_implied_models(
    mut models: BTreeMap<Name, ModelSpec>,
    services: &BTreeMap<Name, ServiceSpec>,
    jobs: &BTreeMap<Name, JobSpec>,
) -> BTreeMap<Name, ModelSpec> {
    let named = services
        .values()
        .filter_map(|s| s.model.as_ref())
        .chain(jobs.values().filter_map(|j| j.model.as_ref()));
    for name in named {
        models
            .entry(name.clone())
            .or_insert_with(|| ModelSpec::implied(name.clone()));
    }
    models
}

#[cfg(test)]
mod tests;
