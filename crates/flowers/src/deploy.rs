//! `flowers deploy`, `flowers train` and `flowers remove`: add a service or a job to a running
//! Flowers without editing files, and take it away. The flags become the JSON form of a
//! `[services.NAME]` or `[jobs.NAME]` table, which Flowers checks like the file and keeps across
//! restarts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use client::{Client, ClientError};
use serde_json::{json, Map, Value};

use crate::commands::print_action;

/// What `deploy` and `train` share.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// The program: a Python file (run with --python) or an executable.
    pub file: PathBuf,
    /// The service's or job's name: lowercase letters, digits and '-', starting with a letter.
    #[arg(long)]
    pub name: String,
    /// GPUs (or CPU slots) per Run: 0 or 1.
    #[arg(long)]
    pub devices: Option<u32>,
    /// VRAM budget on a shared GPU, e.g. 2GiB.
    #[arg(long)]
    pub vram: Option<String>,
    /// The model it serves (a service) or produces versions of (a job).
    #[arg(long)]
    pub model: Option<String>,
    /// An environment variable for its Runs, KEY=VALUE; repeat for more.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The Python interpreter for a .py file (default: python3 as found on this shell's PATH,
    /// so the Runs use the interpreter, and packages, you would).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DeployArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// A path prefix the gateway sends to it (default /NAME); repeat for more.
    #[arg(long = "route", value_name = "PREFIX")]
    pub routes: Vec<String>,
    /// Replicas to keep running.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// The readiness probe's path (default /healthz, which the Python SDK answers).
    #[arg(long)]
    pub probe_path: Option<String>,
    /// How often the readiness probe runs, e.g. 500ms (default 2s).
    #[arg(long)]
    pub probe_interval: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// May be stopped (and resumed from its last checkpoint) to make room for services.
    #[arg(long)]
    pub preemptible: bool,
    /// Higher runs first when devices are scarce.
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Add it without starting it (start it later with `flowers run NAME`).
    #[arg(long)]
    pub no_start: bool,
}

/// The command and working directory for FILE: `[python, /abs/FILE]` in FILE's directory for a
/// Python file, `[/abs/FILE]` for an executable.
fn command(common: &CommonArgs) -> anyhow::Result<(Vec<String>, PathBuf)> {
    let file = std::path::absolute(&common.file)
        .with_context(|| format!("cannot make {} absolute", common.file.display()))?;
    let metadata = std::fs::metadata(&file).map_err(|error| {
        anyhow::anyhow!(
            "{}: {error}; give the path of the program to run",
            file.display()
        )
    })?;
    if !metadata.is_file() {
        bail!("{} is not a file; give the program to run", file.display());
    }
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let text = |path: &Path| {
        path.to_str()
            .map(str::to_string)
            .with_context(|| format!("{} is not valid UTF-8", path.display()))
    };
    let python_file = file.extension().is_some_and(|e| e == "py");
    let command = if python_file {
        let python = match &common.python {
            Some(python) => python.clone(),
            None => find_on_path("python3").context(
                "python3 is not on this shell's PATH; say which interpreter with --python",
            )?,
        };
        vec![text(&python)?, text(&file)?]
    } else {
        use std::os::unix::fs::PermissionsExt;
        if metadata.permissions().mode() & 0o111 == 0 {
            bail!(
                "{} is neither a .py file nor executable (chmod +x it, or name a .py file)",
                file.display()
            );
        }
        vec![text(&file)?]
    };
    Ok((command, dir))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// The keys both kinds of table share.
fn common_spec(common: &CommonArgs) -> anyhow::Result<Map<String, Value>> {
    let (command, workdir) = command(common)?;
    let mut spec = Map::new();
    spec.insert("command".into(), json!(command));
    spec.insert("workdir".into(), json!(workdir));
    if let Some(devices) = common.devices {
        spec.insert("devices".into(), json!(devices));
    }
    if let Some(vram) = &common.vram {
        spec.insert("vram".into(), json!(vram));
    }
    if let Some(model) = &common.model {
        spec.insert("model".into(), json!(model));
    }
    if !common.env.is_empty() {
        let mut env = Map::new();
        for pair in &common.env {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--env {pair:?}: expected KEY=VALUE");
            };
            env.insert(key.to_string(), json!(value));
        }
        spec.insert("env".into(), Value::Object(env));
    }
    Ok(spec)
}

/// The JSON form of the `[services.NAME]` table the flags describe.
pub fn service_spec(args: &DeployArgs) -> anyhow::Result<Value> {
    let mut spec = common_spec(&args.common)?;
    let routes: Vec<Value> = if args.routes.is_empty() {
        vec![json!({ "path": format!("/{}", args.common.name) })]
    } else {
        args.routes.iter().map(|p| json!({ "path": p })).collect()
    };
    spec.insert("routes".into(), Value::Array(routes));
    if let Some(replicas) = args.replicas {
        spec.insert("replicas".into(), json!(replicas));
    }
    let mut probe = Map::new();
    if let Some(path) = &args.probe_path {
        probe.insert("path".into(), json!(path));
    }
    if let Some(interval) = &args.probe_interval {
        probe.insert("interval".into(), json!(interval));
    }
    if !probe.is_empty() {
        spec.insert("probe".into(), Value::Object(probe));
    }
    Ok(Value::Object(spec))
}

/// The JSON form of the `[jobs.NAME]` table the flags describe.
pub fn job_spec(args: &TrainArgs) -> anyhow::Result<Value> {
    let mut spec = common_spec(&args.common)?;
    spec.insert("autostart".into(), json!(!args.no_start));
    if args.preemptible {
        spec.insert("preemptible".into(), json!(true));
    }
    if let Some(priority) = args.priority {
        spec.insert("priority".into(), json!(priority));
    }
    Ok(Value::Object(spec))
}

pub async fn deploy(client: &Client, json: bool, args: DeployArgs) -> anyhow::Result<()> {
    let spec = service_spec(&args)?;
    let answer = client.put_service(&args.common.name, &spec).await?;
    print_action(json, &answer);
    Ok(())
}

pub async fn train(client: &Client, json: bool, args: TrainArgs) -> anyhow::Result<()> {
    let spec = job_spec(&args)?;
    let answer = client.put_job(&args.common.name, &spec).await?;
    print_action(json, &answer);
    Ok(())
}

pub async fn remove(client: &Client, json: bool, name: &str) -> anyhow::Result<()> {
    let services = client.services().await?;
    let answer = if services.iter().any(|s| s.name == name) {
        client.remove_service(name).await
    } else {
        client.remove_job(name).await
    };
    match answer {
        Err(ClientError::Api { status: 404, .. }) => {
            bail!("no service or job is named {name:?}")
        }
        other => {
            print_action(json, &other?);
            Ok(())
        }
    }
}
