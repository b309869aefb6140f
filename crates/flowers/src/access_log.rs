//! Writes the gateway's access log, `DATA_DIR/logs/access.log`, one JSON line per request,
//! rotated by size like Runs' logs. The gateway hands records over a bounded channel; this
//! writer runs on a thread of its own so that a slow disk never holds up a request, only
//! makes the gateway drop (and count) lines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Records waiting for the writer before the gateway starts dropping them.
const CAPACITY: usize = 8192;
/// Lines gathered into one write when they arrive faster than the disk takes them.
const BATCH_BYTES: usize = 64 * 1024;
/// At most one warning this often, however badly the writer falls behind or fails.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("logs").join("access.log")
}

/// Opens the access log and starts its writer; the returned end goes into the gateway's
/// settings.
pub fn start(data_dir: &Path, max_bytes: u64, keep: u32) -> anyhow::Result<gateway::AccessLog> {
    let path = path(data_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = supervisor::RotatingLog::open_file(&path, max_bytes, keep)
        .with_context(|| format!("cannot open the access log {}", path.display()))?;
    let (log, reader) = gateway::AccessLog::channel(CAPACITY);
    std::thread::Builder::new()
        .name("access-log".to_string())
        .spawn(move || write(reader, file, &path))
        .context("cannot start the access log writer")?;
    Ok(log)
}

fn write(mut reader: gateway::AccessLogReader, mut file: supervisor::RotatingLog, path: &Path) {
    let mut batch = String::new();
    let mut reported_dropped = 0;
    let mut last_warning: Option<Instant> = None;
    let mut may_warn = || {
        let now = Instant::now();
        let due = last_warning.is_none_or(|last| now.duration_since(last) >= WARN_EVERY);
        if due {
            last_warning = Some(now);
        }
        due
    };
    while let Some(record) = reader.blocking_recv() {
        batch.clear();
        batch.push_str(&record.to_json_line());
        while batch.len() < BATCH_BYTES {
            match reader.try_recv() {
                Some(record) => batch.push_str(&record.to_json_line()),
                None => break,
            }
        }
        if let Err(error) = file.write(batch.as_bytes()) {
            if may_warn() {
                tracing::warn!(path = %path.display(), %error, "cannot write the access log");
            }
        }
        let dropped = reader.dropped();
        if dropped > reported_dropped && may_warn() {
            tracing::warn!(
                dropped = dropped - reported_dropped,
                total = dropped,
                "the access log fell behind: lines were dropped (`flowers gateway` counts them)"
            );
            reported_dropped = dropped;
        }
    }
}
