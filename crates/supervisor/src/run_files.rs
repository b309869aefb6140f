//! The files a monitor leaves in its Run directory. They are the only channel between a
//! monitor and whichever Flowers is alive at the time, so each is written atomically.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use domain::ExitStatus;

pub(crate) const EXIT_FILE: &str = "exit.json";
pub(crate) const CHILD_PID_FILE: &str = "child.pid";
/// The monitor's own diagnostics: its stderr, so that it never writes to a terminal or journal
/// that belonged to a Flowers that may be gone.
pub(crate) const MONITOR_LOG_FILE: &str = "monitor.log";

pub(crate) fn exit_file(run_dir: &Path) -> PathBuf {
    run_dir.join(EXIT_FILE)
}

/// Writes `contents` to `path` so that a reader sees either nothing or all of it, even if the
/// machine loses power: write a temporary file, fsync it, rename it over, fsync the directory.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Directory fsync makes the rename durable; a failure here leaves the file in place.
        if let Ok(dir) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

pub(crate) fn write_exit_status(run_dir: &Path, status: ExitStatus) -> io::Result<()> {
    let json = serde_json::to_vec(&status).map_err(io::Error::other)?;
    write_atomic(&exit_file(run_dir), &json)
}

/// The Run command's exit status as its monitor recorded it in `RUN_DIR/exit.json`; `None` while
/// the monitor has not written it (still running, or killed before it could).
pub fn read_exit_status(run_dir: &Path) -> Option<ExitStatus> {
    let bytes = fs::read(exit_file(run_dir)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(status) => Some(status),
        Err(error) => {
            tracing::warn!(path = %exit_file(run_dir).display(), %error, "unreadable exit.json");
            None
        }
    }
}

pub(crate) fn read_child_pid(run_dir: &Path) -> Option<u32> {
    fs::read_to_string(run_dir.join(CHILD_PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_round_trips_in_the_documented_shape() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_exit_status(dir.path()), None);
        write_exit_status(dir.path(), ExitStatus::signaled(9)).unwrap();
        let text = fs::read_to_string(dir.path().join("exit.json")).unwrap();
        assert_eq!(text, r#"{"code":137,"signal":9}"#);
        assert_eq!(read_exit_status(dir.path()), Some(ExitStatus::signaled(9)));
        assert!(!dir.path().join("exit.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_exit_file_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("exit.json"), "{\"code\":").unwrap();
        assert_eq!(read_exit_status(dir.path()), None);
    }
}
