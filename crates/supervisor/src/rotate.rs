//! Size-rotated log files, such as the `output.log` a monitor writes: `output.log` is current,
//! `output.log.1` the newest rotated file, `output.log.KEEP` the oldest kept one. The binary
//! writes the gateway's access log with it too.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::logs::current_log;

/// A log file that is rotated by size, keeping whole lines together.
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    /// 0 means never rotate.
    max_bytes: u64,
    keep: u32,
}

impl RotatingLog {
    /// Opens (appending to) `RUN_DIR/output.log`.
    pub(crate) fn open(run_dir: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        Self::open_file(&current_log(run_dir), max_bytes, keep)
    }

    /// Opens (appending to) `path`; rotated files are `path.1` (newest) to `path.KEEP`.
    /// `max_bytes` 0 never rotates; `keep` 0 starts the file over at the limit.
    pub fn open_file(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            keep,
        })
    }

    /// Appends `bytes`, rotating whenever the current file would grow past `max_bytes`. A chunk
    /// is cut after its last newline that still fits, so that rotated files hold whole lines;
    /// only a line longer than `max_bytes` is split. Nothing is dropped except by `keep`.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.max_bytes == 0 {
                return self.append(bytes);
            }
            let room = self.max_bytes.saturating_sub(self.size) as usize;
            if bytes.len() <= room {
                return self.append(bytes);
            }
            let fitting = &bytes[..room];
            if let Some(newline) = fitting.iter().rposition(|&b| b == b'\n') {
                self.append(&bytes[..=newline])?;
                bytes = &bytes[newline + 1..];
                self.rotate()?;
            } else if self.size > 0 {
                // The pending line may fit whole in a fresh file.
                self.rotate()?;
            } else {
                self.append(fitting)?;
                bytes = &bytes[room..];
                self.rotate()?;
            }
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let current = &self.path;
        if self.keep == 0 {
            fs::remove_file(current)?;
        } else {
            let oldest = rotated(current, self.keep);
            match fs::remove_file(&oldest) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            for index in (1..self.keep).rev() {
                let from = rotated(current, index);
                if from.exists() {
                    fs::rename(&from, rotated(current, index + 1))?;
                }
            }
            fs::rename(current, rotated(current, 1))?;
        }
        self.file = open_append(current)?;
        self.size = 0;
        Ok(())
    }
}

/// `path.INDEX`.
fn rotated(path: &Path, index: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{log_files, rotated_log};

    fn contents(dir: &Path) -> Vec<Vec<u8>> {
        log_files(dir)
            .iter()
            .map(|path| fs::read(path).unwrap())
            .collect()
    }

    #[test]
    fn rotates_on_line_boundaries_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir.path(), 10, 10).unwrap();
        log.write(b"aaaa\nbbbb\ncc").unwrap();
        log.write(b"c\ndddd\n").unwrap();
        let files = contents(dir.path());
        assert_eq!(
            files,
            vec![b"aaaa\nbbbb\n".to_vec(), b"ccc\ndddd\n".to_vec()]
        );
    }

    #[test]
    fn splits_only_lines_longer_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir.path(), 4, 10).unwrap();
        log.write(b"ab\n0123456789\n").unwrap();
        let files = contents(dir.path());
        assert_eq!(files.concat(), b"ab\n0123456789\n".to_vec());
        assert!(files.iter().all(|file| file.len() <= 4));
        assert_eq!(files[0], b"ab\n".to_vec());
    }

    #[test]
    fn keeps_only_the_newest_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir.path(), 2, 2).unwrap();
        for line in [b"1\n", b"2\n", b"3\n", b"4\n", b"5\n"] {
            log.write(line).unwrap();
        }
        // Each line fills a file; writing "5" rotated "4" into .1, so .2 holds "3".
        assert_eq!(
            contents(dir.path()),
            vec![b"3\n".to_vec(), b"4\n".to_vec(), b"5\n".to_vec()]
        );
        assert!(!rotated_log(dir.path(), 3).exists());
    }

    #[test]
    fn keep_zero_starts_over_and_max_zero_never_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir.path(), 3, 0).unwrap();
        log.write(b"ab\ncd\n").unwrap();
        assert_eq!(contents(dir.path()), vec![b"cd\n".to_vec()]);

        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir.path(), 0, 3).unwrap();
        log.write(&[b'x'; 10_000]).unwrap();
        assert_eq!(contents(dir.path()), vec![vec![b'x'; 10_000]]);
    }

    #[test]
    fn any_file_rotates_beside_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut log = RotatingLog::open_file(&path, 4, 2).unwrap();
        log.write(b"1\n2\n3\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"3\n");
        assert_eq!(
            fs::read(dir.path().join("access.log.1")).unwrap(),
            b"1\n2\n"
        );
    }
}
