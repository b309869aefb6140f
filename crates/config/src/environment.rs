//! The `FLOWERS_*` layer and the default data directory, from an [`Environment`] the binary
//! hands in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::{Environment, Problem};

pub(crate) const API_LISTEN: &str = "FLOWERS_API_LISTEN";
pub(crate) const GATEWAY_LISTEN: &str = "FLOWERS_GATEWAY_LISTEN";
pub(crate) const DATA_DIR: &str = "FLOWERS_DATA_DIR";
pub(crate) const CPU_SLOTS: &str = "FLOWERS_CPU_SLOTS";

pub(crate) const ORIGIN: &str = "environment";

/// What the `FLOWERS_*` variables set; `None` where unset.
#[derive(Debug, Default)]
pub(crate) struct EnvironmentLayer {
    pub api_listen: Option<SocketAddr>,
    pub gateway_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub cpu_slots: Option<u32>,
}

pub(crate) fn read(env: &Environment) -> (EnvironmentLayer, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut refuse = |name: &str, message: String| {
        problems.push(problem(name, message));
    };
    let mut layer = EnvironmentLayer::default();

    for (name, slot) in [
        (API_LISTEN, &mut layer.api_listen),
        (GATEWAY_LISTEN, &mut layer.gateway_listen),
    ] {
        if let Some(text) = env.vars.get(name) {
            match text.trim().parse() {
                Ok(address) => *slot = Some(address),
                Err(_) => refuse(
                    name,
                    format!(
                        "expected an address such as \"127.0.0.1:7070\" or \"[::]:8080\", \
                         got {text:?}"
                    ),
                ),
            }
        }
    }

    // The library cannot know the directory the user typed a relative path in, so only an
    // absolute path is taken from the environment.
    if let Some(text) = env.vars.get(DATA_DIR) {
        let path = Path::new(text);
        if path.is_absolute() {
            layer.data_dir = Some(path.to_path_buf());
        } else {
            refuse(
                DATA_DIR,
                format!("expected an absolute directory path, got {text:?}"),
            );
        }
    }

    if let Some(text) = env.vars.get(CPU_SLOTS) {
        match text.trim().parse::<u32>() {
            Ok(slots) if slots <= 256 => layer.cpu_slots = Some(slots),
            _ => refuse(
                CPU_SLOTS,
                format!("expected an integer 0..=256, got {text:?}"),
            ),
        }
    }
    (layer, problems)
}

/// Where state goes when nothing says: the system location for root (as a systemd service
/// would run), the XDG data directory for a user.
pub(crate) fn default_data_dir(env: &Environment) -> Result<PathBuf, Problem> {
    if env.is_root {
        return Ok(PathBuf::from("/var/lib/flowers"));
    }
    // The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    if let Some(xdg) = env.vars.get("XDG_DATA_HOME") {
        if Path::new(xdg).is_absolute() {
            return Ok(Path::new(xdg).join("flowers"));
        }
    }
    match env.vars.get("HOME") {
        Some(home) if Path::new(home).is_absolute() => {
            Ok(Path::new(home).join(".local/share/flowers"))
        }
        _ => Err(problem(
            "HOME",
            format!(
                "needed for the default data directory but not set to an absolute path; \
                 set server.data_dir or {DATA_DIR}"
            ),
        )),
    }
}

fn problem(name: &str, message: String) -> Problem {
    Problem {
        origin: ORIGIN.to_string(),
        line: None,
        field: name.to_string(),
        message,
    }
}
