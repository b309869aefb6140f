//! Archives (docs/plans/video.md §9): folders of recordings, for example on a removable drive,
//! analysed once by a job instead of followed live.
//!
//! The video service owns the record ([`store`]): an *analysis* is a set of files with one set
//! of settings (a stream's keys without its URL); each file is `pending`, `running` (claimed by
//! a Run), `done` or `failed`. A job Run (`flowers engine video-analyze`) claims files one at a
//! time, analyses them ([`work`]) and posts each file's results, which the service commits in
//! one transaction with the file's `done` state. So an interruption (a preemption, a kill, an
//! unplugged drive) costs at most the files in progress, and a file finished is never analysed
//! again.
//!
//! Files are known by a fingerprint, not a path: their size and the SHA-256 of their first and
//! last MiB (hours of video are never hashed whole). A drive mounted elsewhere the next time,
//! or a folder renamed, is recognised: analysing it again resumes the analysis that shares its
//! files and settings.

pub mod http;
pub mod store;
pub mod work;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Extensions taken as video when a folder is walked (compared without case). A file named
/// explicitly is taken whatever its name.
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "3gp", "asf", "avi", "dav", "flv", "h264", "h265", "hevc", "m2ts", "m4v", "mjpeg", "mjpg",
    "mkv", "mov", "mp4", "mpeg", "mpg", "mts", "mxf", "ogv", "ts", "vob", "webm", "wmv", "y4m",
];

/// Bytes hashed at each end of a file for its fingerprint.
pub const FINGERPRINT_SPAN: u64 = 1 << 20;

/// A file found under the paths given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    /// The folder given (or a named file's folder), absolute.
    pub root: PathBuf,
    /// The file's path under `root`, `/`-separated.
    pub relative: String,
    pub size: u64,
    pub mtime_ms: Option<i64>,
    pub fingerprint: String,
}

impl FoundFile {
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.relative)
    }
}

/// Something under the paths that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Walk {
    /// In path order, each fingerprint once.
    pub files: Vec<FoundFile>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Error)]
pub enum WalkError {
    #[error(
        "{0}: the path must be absolute (paths are read by the video service, not the client)"
    )]
    Relative(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: neither a file nor a folder")]
    NotAFile(String),
    #[error("no video files under {paths} (looked for {extensions})")]
    Empty { paths: String, extensions: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalkError + '_ {
    move |source| WalkError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Finds the video files under `paths` (files named, folders walked recursively) and
/// fingerprints them. Links are not followed: one is skipped with the reason, as is a file
/// whose content another file has already and a file that cannot be read. Hidden names
/// (starting with `.`, such as the `._NAME` files macOS leaves on drives) are passed over
/// without a word: they are never recordings. A path that does not exist, or is relative, is
/// an error.
pub fn walk(paths: &[PathBuf]) -> Result<Walk, WalkError> {
    let mut walk = Walk::default();
    let mut seen = std::collections::HashMap::<String, String>::new();
    for given in paths {
        if !given.is_absolute() {
            return Err(WalkError::Relative(given.display().to_string()));
        }
        let meta = fs::symlink_metadata(given).map_err(io_error(given))?;
        let mut found = Vec::new();
        if meta.is_dir() {
            collect(given, given, &mut found, &mut walk.skipped)?;
        } else if meta.is_file() || meta.file_type().is_symlink() {
            // A file named explicitly is taken whatever its extension; a link named
            // explicitly is followed, since the user chose it.
            let target = fs::canonicalize(given).map_err(io_error(given))?;
            if !target.is_file() {
                return Err(WalkError::NotAFile(given.display().to_string()));
            }
            let root = target.parent().unwrap_or(Path::new("/")).to_path_buf();
            found.push((root, target));
        } else {
            return Err(WalkError::NotAFile(given.display().to_string()));
        }
        found.sort();
        for (root, path) in found {
            let relative = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            match describe(&path) {
                Err(error) => walk.skipped.push(Skipped {
                    path: path.display().to_string(),
                    reason: format!("cannot be read: {error}"),
                }),
                Ok((size, mtime_ms, fingerprint)) => {
                    if let Some(first) = seen.get(&fingerprint) {
                        walk.skipped.push(Skipped {
                            path: path.display().to_string(),
                            reason: format!("the same content as {first}"),
                        });
                        continue;
                    }
                    seen.insert(fingerprint.clone(), path.display().to_string());
                    walk.files.push(FoundFile {
                        root: root.clone(),
                        relative,
                        size,
                        mtime_ms,
                        fingerprint,
                    });
                }
            }
        }
    }
    if walk.files.is_empty() {
        return Err(WalkError::Empty {
            paths: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            extensions: VIDEO_EXTENSIONS
                .iter()
                .map(|e| format!(".{e}"))
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    Ok(walk)
}

fn collect(
    root: &Path,
    dir: &Path,
    found: &mut Vec<(PathBuf, PathBuf)>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), WalkError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // The folder given must be readable; one below it that is not is reported and passed.
        Err(error) if dir != root => {
            skipped.push(Skipped {
                path: dir.display().to_string(),
                reason: format!("cannot be read: {error}"),
            });
            return Ok(());
        }
        Err(error) => return Err(io_error(dir)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(io_error(&path))?;
        if kind.is_symlink() {
            skipped.push(Skipped {
                path: path.display().to_string(),
                reason: "a symbolic link (links are not followed; name its target instead)"
                    .to_string(),
            });
        } else if kind.is_dir() {
            collect(root, &path, found, skipped)?;
        } else if kind.is_file() && is_video_name(&name) {
            found.push((root.to_path_buf(), path));
        }
    }
    Ok(())
}

/// Whether a file name has one of [`VIDEO_EXTENSIONS`].
pub fn is_video_name(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| {
        VIDEO_EXTENSIONS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(ext))
    })
}

fn describe(path: &Path) -> io::Result<(u64, Option<i64>, String)> {
    let meta = fs::metadata(path)?;
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    let fingerprint = fingerprint(path)?;
    Ok((meta.len(), mtime_ms, fingerprint))
}

/// A file's fingerprint: `SIZE-HEX`, the hex being the SHA-256 of the size (8 bytes, little
/// endian), the first [`FINGERPRINT_SPAN`] bytes and the last (overlapping for a small file).
pub fn fingerprint(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    hasher.update(size.to_le_bytes());
    let mut buffer = vec![0u8; FINGERPRINT_SPAN.min(size) as usize];
    file.read_exact(&mut buffer)?;
    hasher.update(&buffer);
    file.seek(SeekFrom::Start(size - buffer.len() as u64))?;
    file.read_exact(&mut buffer)?;
    hasher.update(&buffer);
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{size}-{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_walk_takes_videos_skips_links_hidden_files_and_copies() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("usb");
        write(&root.join("b/clip2.MP4"), b"second clip");
        write(&root.join("a/clip1.mkv"), b"first clip");
        write(&root.join("a/copy.avi"), b"first clip");
        write(&root.join("notes.txt"), b"not a video");
        write(&root.join("._clip1.mkv"), b"macOS metadata");
        std::os::unix::fs::symlink(root.join("a/clip1.mkv"), root.join("link.mp4")).unwrap();
        let walk = walk(std::slice::from_ref(&root)).unwrap();
        let names: Vec<&str> = walk.files.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(names, ["a/clip1.mkv", "b/clip2.MP4"]);
        assert!(walk.files.iter().all(|f| f.root == root));
        assert_eq!(walk.files[0].size, 10);
        let reasons: Vec<(&str, &str)> = walk
            .skipped
            .iter()
            .map(|s| (s.path.rsplit('/').next().unwrap(), s.reason.as_str()))
            .collect();
        assert!(
            reasons.iter().any(|(name, why)| *name == "copy.avi"
                && why.starts_with("the same content as")
                && why.ends_with("a/clip1.mkv")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|(name, why)| *name == "link.mp4" && why.contains("symbolic link")),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_named_file_is_taken_whatever_its_name_and_bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recording.bin");
        write(&file, b"bytes");
        let walk = walk(std::slice::from_ref(&file)).unwrap();
        assert_eq!(walk.files.len(), 1);
        assert_eq!(walk.files[0].relative, "recording.bin");
        assert_eq!(walk.files[0].path(), file.canonicalize().unwrap());

        let error = super::walk(&[PathBuf::from("relative/dir")]).unwrap_err();
        assert!(error.to_string().contains("must be absolute"), "{error}");
        let missing = dir.path().join("gone");
        let error = super::walk(std::slice::from_ref(&missing)).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&missing.display().to_string()),
            "{error}"
        );
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let error = super::walk(&[empty]).unwrap_err();
        assert!(
            error.to_string().contains("no video files under")
                && error.to_string().contains(".mp4"),
            "{error}"
        );
    }

    #[test]
    fn fingerprints_see_both_ends_and_the_size_but_not_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let big = FINGERPRINT_SPAN as usize * 3;
        let mut bytes = vec![7u8; big];
        write(&dir.path().join("a.mp4"), &bytes);
        write(&dir.path().join("renamed.mp4"), &bytes);
        let a = fingerprint(&dir.path().join("a.mp4")).unwrap();
        assert_eq!(a, fingerprint(&dir.path().join("renamed.mp4")).unwrap());
        assert!(a.starts_with(&format!("{big}-")), "{a}");
        // The middle is not read; the last byte is.
        bytes[big / 2] = 8;
        write(&dir.path().join("middle.mp4"), &bytes);
        assert_eq!(a, fingerprint(&dir.path().join("middle.mp4")).unwrap());
        bytes[big - 1] = 8;
        write(&dir.path().join("end.mp4"), &bytes);
        assert_ne!(a, fingerprint(&dir.path().join("end.mp4")).unwrap());
        // Empty files have one too.
        write(&dir.path().join("empty.mp4"), b"");
        assert!(fingerprint(&dir.path().join("empty.mp4"))
            .unwrap()
            .starts_with("0-"));
    }
}
