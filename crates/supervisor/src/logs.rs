//! Reading a Run's output: `RUN_DIR/output.log` and its rotated predecessors
//! `output.log.1` (newest) … `output.log.N` (oldest), as the monitor writes them.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;

use crate::run_files::exit_file;

const LOG_NAME: &str = "output.log";
const FOLLOW_POLL: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 64 * 1024;

/// `RUN_DIR/output.log`, the file the monitor is writing now.
pub fn current_log(run_dir: &Path) -> PathBuf {
    run_dir.join(LOG_NAME)
}

pub(crate) fn rotated_log(run_dir: &Path, index: u32) -> PathBuf {
    run_dir.join(format!("{LOG_NAME}.{index}"))
}

/// Every log file of the Run that exists, oldest rotated file first and the current one last.
pub fn log_files(run_dir: &Path) -> Vec<PathBuf> {
    let prefix = format!("{LOG_NAME}.");
    let mut rotated: Vec<u32> = fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_prefix(&prefix)?.parse::<u32>().ok()
        })
        .collect();
    rotated.sort_unstable_by(|a, b| b.cmp(a));
    let mut files: Vec<PathBuf> = rotated
        .into_iter()
        .map(|index| rotated_log(run_dir, index))
        .collect();
    let current = current_log(run_dir);
    if current.exists() {
        files.push(current);
    }
    files
}

/// The last `lines` lines of the Run's output, reading backwards across rotated files so that a
/// rotation just before the call does not hide recent lines. Invalid UTF-8 is replaced.
pub fn tail(run_dir: &Path, lines: usize) -> io::Result<String> {
    tail_until(run_dir, lines, None)
}

/// The last `lines` lines and then everything written after them until the Run ends, with
/// nothing lost or repeated in between: the current `output.log` is opened first, the tail
/// is read up to where it ended then, and following starts exactly there. (Reading a tail and
/// then following from the end would drop whatever was written between the two.)
pub fn tail_and_follow(
    run_dir: PathBuf,
    lines: usize,
) -> io::Result<(
    String,
    impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static,
)> {
    let path = current_log(&run_dir);
    let open = match File::open(&path) {
        Ok(file) => {
            let metadata = file.metadata().map_err(|e| with_path(e, &path))?;
            Some(OpenLog {
                file,
                inode: metadata.ino(),
                position: metadata.len(),
            })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(with_path(error, &path)),
    };
    let text = tail_until(
        &run_dir,
        lines,
        open.as_ref().map(|o| (o.inode, o.position)),
    )?;
    Ok((text, follow_state(run_dir, false, open)))
}

/// [`tail`] of the output written up to `until` (an inode and an offset in it): files rotated
/// in after that one, and bytes past the offset, are left out.
fn tail_until(run_dir: &Path, lines: usize, until: Option<(u64, u64)>) -> io::Result<String> {
    if lines == 0 {
        return Ok(String::new());
    }
    let mut files = log_files(run_dir);
    if let Some((inode, _)) = until {
        let inode_of = |path: &PathBuf| fs::metadata(path).map(|m| m.ino()).ok();
        if let Some(index) = files.iter().position(|p| inode_of(p) == Some(inode)) {
            files.truncate(index + 1);
        }
    }
    // Chunks read from the end, newest first; joined in reverse at the end.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0usize;
    let mut first_byte_seen = false;
    'files: for path in files.iter().rev() {
        let mut file = match File::open(path) {
            Ok(file) => file,
            // Rotated away between listing and opening: the next older name holds it now.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(with_path(error, path)),
        };
        let metadata = file.metadata().map_err(|e| with_path(e, path))?;
        let mut end = match until {
            Some((inode, offset)) if metadata.ino() == inode => metadata.len().min(offset),
            _ => metadata.len(),
        };
        while end > 0 {
            let start = end.saturating_sub(READ_CHUNK as u64);
            let mut chunk = vec![0; (end - start) as usize];
            file.seek(SeekFrom::Start(start))
                .and_then(|_| file.read_exact(&mut chunk))
                .map_err(|e| with_path(e, path))?;
            let mut counted = chunk.iter().filter(|&&b| b == b'\n').count();
            if !first_byte_seen && chunk.last() == Some(&b'\n') {
                // The newline that ends the last line does not start another one.
                counted -= 1;
            }
            first_byte_seen = true;
            newlines += counted;
            chunks.push(chunk);
            end = start;
            if newlines >= lines {
                break 'files;
            }
        }
    }
    let mut text: Vec<u8> = chunks.into_iter().rev().flatten().collect();
    let body_end = if text.last() == Some(&b'\n') {
        text.len() - 1
    } else {
        text.len()
    };
    let mut seen = 0;
    let mut start = 0;
    for index in (0..body_end).rev() {
        if text[index] == b'\n' {
            seen += 1;
            if seen == lines {
                start = index + 1;
                break;
            }
        }
    }
    text.drain(..start);
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Follows the Run's output and yields bytes as the monitor writes them, polling every 200 ms.
///
/// Starts at the beginning of the current `output.log`, or at its end with `from_end`. When
/// the file is rotated (replaced) the old file is read to its end before the new one is read
/// from its start; a file that shrank is read again from its start. The stream ends once
/// `RUN_DIR/exit.json` exists and the current file is drained; for a Run whose monitor was
/// killed before writing it, the stream goes on until it is dropped. Reads are small local
/// file reads done inline. If the file is rotated more than once between two polls, the
/// intermediate files are skipped (they stay readable through [`log_files`]).
pub fn follow(
    run_dir: PathBuf,
    from_end: bool,
) -> impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
    follow_state(run_dir, from_end, None)
}

fn follow_state(
    run_dir: PathBuf,
    from_end: bool,
    open: Option<OpenLog>,
) -> impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
    let state = Follower {
        run_dir,
        from_end,
        open,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        match state.next_chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), state)),
            Ok(None) => None,
            Err(error) => {
                state.done = true;
                Some((Err(error), state))
            }
        }
    })
}

struct OpenLog {
    file: File,
    inode: u64,
    position: u64,
}

struct Follower {
    run_dir: PathBuf,
    /// Applies to the first file opened only; later files (after rotation) are read whole.
    from_end: bool,
    open: Option<OpenLog>,
    done: bool,
}

impl Follower {
    /// The next non-empty chunk, or `None` when the Run has exited and everything is read.
    async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let path = current_log(&self.run_dir);
        loop {
            // Checked before reading: the monitor writes exit.json only after its last log
            // write, so an empty read after seeing it means the log is drained.
            let exited = exit_file(&self.run_dir).exists();
            let Some(open) = self.open.as_mut() else {
                match File::open(&path) {
                    Ok(file) => {
                        let metadata = file.metadata().map_err(|e| with_path(e, &path))?;
                        let position = if self.from_end { metadata.len() } else { 0 };
                        self.from_end = false;
                        self.open = Some(OpenLog {
                            file,
                            inode: metadata.ino(),
                            position,
                        });
                        continue;
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        if exited {
                            return Ok(None);
                        }
                        self.from_end = false;
                        tokio::time::sleep(FOLLOW_POLL).await;
                        continue;
                    }
                    Err(error) => return Err(with_path(error, &path)),
                }
            };
            let chunk = read_from(open, &path)?;
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
            match fs::metadata(&path) {
                Ok(metadata) if metadata.ino() == open.inode => {
                    if metadata.len() < open.position {
                        open.position = 0;
                        continue;
                    }
                }
                // Replaced or removed by a rotation: the old file was just read to its end,
                // and nothing is written to it after the rename.
                Ok(_) => {
                    let rest = read_from(open, &path)?;
                    self.open = None;
                    if !rest.is_empty() {
                        return Ok(Some(rest));
                    }
                    continue;
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    self.open = None;
                    continue;
                }
                Err(error) => return Err(with_path(error, &path)),
            }
            if exited {
                return Ok(None);
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

fn read_from(open: &mut OpenLog, path: &Path) -> io::Result<Vec<u8>> {
    let mut chunk = vec![0; READ_CHUNK];
    open.file
        .seek(SeekFrom::Start(open.position))
        .map_err(|e| with_path(e, path))?;
    let read = open.file.read(&mut chunk).map_err(|e| with_path(e, path))?;
    chunk.truncate(read);
    open.position += read as u64;
    Ok(chunk)
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn lists_rotated_files_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "output.log",
            "output.log.1",
            "output.log.10",
            "output.log.2",
            "other",
        ] {
            fs::write(dir.path().join(name), name).unwrap();
        }
        let names: Vec<String> = log_files(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "output.log.10",
                "output.log.2",
                "output.log.1",
                "output.log"
            ]
        );
    }

    #[test]
    fn tail_reads_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("output.log.2"), "one\ntwo\n").unwrap();
        fs::write(dir.path().join("output.log.1"), "three\n").unwrap();
        fs::write(dir.path().join("output.log"), "four\nfive").unwrap();
        assert_eq!(tail(dir.path(), 2).unwrap(), "four\nfive");
        assert_eq!(tail(dir.path(), 4).unwrap(), "two\nthree\nfour\nfive");
        assert_eq!(tail(dir.path(), 50).unwrap(), "one\ntwo\nthree\nfour\nfive");
        assert_eq!(tail(dir.path(), 0).unwrap(), "");
        fs::write(dir.path().join("output.log"), "four\nfive\n").unwrap();
        assert_eq!(tail(dir.path(), 1).unwrap(), "five\n");
    }

    #[test]
    fn tail_of_a_large_file_reads_only_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..50_000).map(|n| format!("line {n}\n")).collect();
        fs::write(dir.path().join("output.log"), text).unwrap();
        assert_eq!(tail(dir.path(), 2).unwrap(), "line 49998\nline 49999\n");
        assert_eq!(tail(tempfile::tempdir().unwrap().path(), 3).unwrap(), "");
    }

    #[tokio::test]
    async fn follow_survives_rotation_and_ends_after_exit() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().to_path_buf();
        fs::write(current_log(&run_dir), "old\n").unwrap();
        let mut stream = Box::pin(follow(run_dir.clone(), false));
        assert_eq!(stream.next().await.unwrap().unwrap(), b"old\n");

        // Rotate as the monitor does: more bytes to the old file, rename, new file, exit.
        let mut old = fs::OpenOptions::new()
            .append(true)
            .open(current_log(&run_dir))
            .unwrap();
        std::io::Write::write_all(&mut old, b"tail-of-old\n").unwrap();
        fs::rename(current_log(&run_dir), rotated_log(&run_dir, 1)).unwrap();
        fs::write(current_log(&run_dir), "new\n").unwrap();
        crate::run_files::write_exit_status(&run_dir, domain::ExitStatus::exited(0)).unwrap();

        let mut rest = Vec::new();
        while let Some(chunk) = stream.next().await {
            rest.extend(chunk.unwrap());
        }
        assert_eq!(rest, b"tail-of-old\nnew\n");
    }

    #[tokio::test]
    async fn follow_from_end_skips_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().to_path_buf();
        fs::write(current_log(&run_dir), "before\n").unwrap();
        let mut stream = Box::pin(follow(run_dir.clone(), true));
        let appender = {
            let run_dir = run_dir.clone();
            // On this single-threaded runtime the task first runs when the stream, having
            // opened the file at its end, waits for its next poll.
            tokio::spawn(async move {
                let mut file = fs::OpenOptions::new()
                    .append(true)
                    .open(current_log(&run_dir))
                    .unwrap();
                std::io::Write::write_all(&mut file, b"after\n").unwrap();
                crate::run_files::write_exit_status(&run_dir, domain::ExitStatus::exited(0))
                    .unwrap();
            })
        };
        let mut seen = Vec::new();
        while let Some(chunk) = stream.next().await {
            seen.extend(chunk.unwrap());
        }
        appender.await.unwrap();
        assert_eq!(seen, b"after\n");
    }

    #[tokio::test]
    async fn tail_and_follow_lose_and_repeat_nothing_written_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().to_path_buf();
        fs::write(current_log(&run_dir), "one\ntwo\n").unwrap();
        let (head, rest) = tail_and_follow(run_dir.clone(), 1).unwrap();
        assert_eq!(head, "two\n");
        // Written after the tail was read and before the stream is first polled, then rotated.
        let append = |text: &[u8]| {
            let mut file = fs::OpenOptions::new()
                .append(true)
                .open(current_log(&run_dir))
                .unwrap();
            std::io::Write::write_all(&mut file, text).unwrap();
        };
        append(b"three\n");
        fs::rename(current_log(&run_dir), rotated_log(&run_dir, 1)).unwrap();
        fs::write(current_log(&run_dir), "four\n").unwrap();
        crate::run_files::write_exit_status(&run_dir, domain::ExitStatus::exited(0)).unwrap();
        let mut seen = Vec::new();
        let mut rest = Box::pin(rest);
        while let Some(chunk) = rest.next().await {
            seen.extend(chunk.unwrap());
        }
        assert_eq!(seen, b"three\nfour\n");

        // Taken after that rotation, the tail spans both files.
        let (head, _) = tail_and_follow(run_dir.clone(), 2).unwrap();
        assert_eq!(head, "three\nfour\n");
    }
}
