//! The files of model versions: `DATA_DIR/models/MODEL/VERSION/` holds a version's files and
//! its `manifest.json`. A version is written in a staging directory next to where it will live
//! (`MODEL/.staging-*`), its files synced, its manifest written and synced, and only then
//! renamed into place; the store's row, written after the rename, is what makes it exist. A
//! crash at any point leaves either nothing visible or a complete version: leftovers (staging
//! directories, a renamed directory whose row was never written) are removed at the next start.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use domain::Metrics;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The name of the manifest inside a version's directory; a source may not have a file by
/// that name at its top.
pub const MANIFEST: &str = "manifest.json";

/// Files copied into a staging directory, with their digest. Dropping it removes the staging
/// directory unless [`commit`] moved it into place: a registration abandoned on the way (its
/// caller went away, Flowers is shutting down) leaves nothing behind.
#[derive(Debug)]
pub struct Staged {
    pub dir: PathBuf,
    /// `sha256:` over every file's relative path and contents, in path order.
    pub digest: String,
    pub files: Vec<ManifestFile>,
    pub size_bytes: u64,
}

impl Drop for Staged {
    fn drop(&mut self) {
        // After a commit the directory has been renamed away and this finds nothing; staging
        // names are never reused within a process, so it cannot remove another's.
        if self.dir.exists() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Manifest<'a> {
    pub model: &'a str,
    pub version: u32,
    pub digest: &'a str,
    pub size_bytes: u64,
    pub files: &'a [ManifestFile],
    pub metrics: &'a Metrics,
    /// The Run that registered it; `null` for an import.
    pub run: Option<&'a str>,
    pub source: &'a str,
    pub created_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("{path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("could not write the version under {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

pub fn model_dir(data_dir: &Path, model: &str) -> PathBuf {
    data_dir.join("models").join(model)
}

pub fn version_dir(data_dir: &Path, model: &str, version: u32) -> PathBuf {
    model_dir(data_dir, model).join(version.to_string())
}

/// Copies `source` (a file or a directory) into a new staging directory of `model`, syncing
/// every file, and digests it. Refuses what would not make a sound version: a missing or
/// unreadable source, an empty one, symbolic links, special files, a top-level `manifest.json`.
pub fn stage(data_dir: &Path, model: &str, source: &Path) -> Result<Staged, VersionError> {
    let refuse = |message: String| VersionError::Source {
        path: source.to_path_buf(),
        message,
    };
    if !source.is_absolute() {
        return Err(refuse("the path must be absolute".into()));
    }
    let metadata = fs::symlink_metadata(source).map_err(|error| refuse(describe(&error)))?;
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    if metadata.is_file() {
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| refuse("the file name is not valid UTF-8".into()))?;
        sources.push((name.to_string(), source.to_path_buf()));
    } else if metadata.is_dir() {
        walk(source, source, &mut sources)?;
    } else {
        return Err(refuse(
            "expected a file or a directory, not a link or a special file".into(),
        ));
    }
    if sources.is_empty() {
        return Err(refuse("the directory has no files".into()));
    }
    if sources.iter().any(|(path, _)| path == MANIFEST) {
        return Err(refuse(format!(
            "{MANIFEST} at the top is reserved for Flowers' manifest; put the files in a subdirectory or rename it"
        )));
    }
    sources.sort();

    let parent = model_dir(data_dir, model);
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VersionError::Write { path, source }
    };
    fs::create_dir_all(&parent).map_err(write_error(&parent))?;
    static STAGINGS: AtomicU64 = AtomicU64::new(0);
    let dir = parent.join(format!(
        ".staging-{}-{}-{}",
        std::process::id(),
        domain::now_ms(),
        STAGINGS.fetch_add(1, Ordering::Relaxed)
    ));
    let dir = unique(dir);
    fs::create_dir(&dir).map_err(write_error(&dir))?;
    let result = copy_all(&dir, &sources, source);
    match result {
        Ok((files, size_bytes, digest)) => Ok(Staged {
            dir,
            digest,
            files,
            size_bytes,
        }),
        Err(error) => {
            let _ = fs::remove_dir_all(&dir);
            Err(error)
        }
    }
}

fn unique(dir: PathBuf) -> PathBuf {
    let mut candidate = dir.clone();
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{}-{n}", dir.display()));
        n += 1;
    }
    candidate
}

fn copy_all(
    dir: &Path,
    sources: &[(String, PathBuf)],
    root: &Path,
) -> Result<(Vec<ManifestFile>, u64, String), VersionError> {
    let mut files = Vec::new();
    let mut total = Sha256::new();
    let mut size_bytes = 0;
    for (relative, from) in sources {
        let to = dir.join(relative);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|source| VersionError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let (bytes, sha256) = copy_file(from, &to, root)?;
        total.update(relative.as_bytes());
        total.update([0]);
        total.update(sha256.as_bytes());
        total.update([0]);
        size_bytes += bytes;
        files.push(ManifestFile {
            path: relative.clone(),
            bytes,
            sha256,
        });
    }
    Ok((
        files,
        size_bytes,
        format!("sha256:{}", hex(&total.finalize())),
    ))
}

/// Copies one file, hashing it on the way, and syncs the copy.
fn copy_file(from: &Path, to: &Path, root: &Path) -> Result<(u64, String), VersionError> {
    let mut input = File::open(from).map_err(|error| VersionError::Source {
        path: root.to_path_buf(),
        message: format!("{}: {}", from.display(), describe(&error)),
    })?;
    let write_error = |source| VersionError::Write {
        path: to.to_path_buf(),
        source,
    };
    let mut output = File::create(to).map_err(write_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = input
            .read(&mut buffer)
            .map_err(|error| VersionError::Source {
                path: root.to_path_buf(),
                message: format!("{}: {}", from.display(), describe(&error)),
            })?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        output.write_all(&buffer[..n]).map_err(write_error)?;
        bytes += n as u64;
    }
    output.sync_all().map_err(write_error)?;
    Ok((bytes, hex(&hasher.finalize())))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), VersionError> {
    let refuse = |path: &Path, message: String| VersionError::Source {
        path: path.to_path_buf(),
        message,
    };
    let entries = fs::read_dir(dir).map_err(|error| refuse(dir, describe(&error)))?;
    for entry in entries {
        let entry = entry.map_err(|error| refuse(dir, describe(&error)))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|error| refuse(&path, describe(&error)))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let relative = path
                .strip_prefix(root)
                .ok()
                .and_then(|p| p.to_str())
                .ok_or_else(|| refuse(&path, "the path is not valid UTF-8".into()))?;
            out.push((relative.to_string(), path.clone()));
        } else {
            return Err(refuse(
                &path,
                "symbolic links and special files cannot be part of a version".into(),
            ));
        }
    }
    Ok(())
}

/// Writes the manifest into the staging directory and moves it to its final place, syncing
/// what makes the move durable. Returns the version's directory.
pub fn commit(
    data_dir: &Path,
    staged: &Staged,
    manifest: &Manifest<'_>,
) -> Result<PathBuf, VersionError> {
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VersionError::Write { path, source }
    };
    let manifest_path = staged.dir.join(MANIFEST);
    let text = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
    let mut file = File::create(&manifest_path).map_err(write_error(&manifest_path))?;
    file.write_all(&text)
        .and_then(|_| file.sync_all())
        .map_err(write_error(&manifest_path))?;
    sync_tree(&staged.dir).map_err(write_error(&staged.dir))?;
    let target = version_dir(data_dir, manifest.model, manifest.version);
    if target.exists() {
        // Left by a crash between the rename and the row (the row is what counts): replace it.
        fs::remove_dir_all(&target).map_err(write_error(&target))?;
    }
    fs::rename(&staged.dir, &target).map_err(write_error(&target))?;
    let parent = model_dir(data_dir, manifest.model);
    File::open(&parent)
        .and_then(|dir| dir.sync_all())
        .map_err(write_error(&parent))?;
    Ok(target)
}

/// Syncs every directory of a tree, so the names of the synced files are durable too.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    File::open(dir)?.sync_all()
}

/// Removes what is not a recorded version: staging directories and version directories whose
/// row was never written (`known` gives each model's recorded, undeleted version numbers).
/// Returns what was removed, for the log.
pub fn clean_up(data_dir: &Path, known: &BTreeMap<String, Vec<u32>>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(models) = fs::read_dir(data_dir.join("models")) else {
        return removed;
    };
    for model in models.flatten() {
        let Some(model_name) = model.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Ok(entries) = fs::read_dir(model.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let recorded = name.parse::<u32>().ok().is_some_and(|version| {
                known
                    .get(&model_name)
                    .is_some_and(|versions| versions.contains(&version))
            });
            let leftover =
                name.starts_with(".staging-") || (!recorded && name.parse::<u32>().is_ok());
            if leftover && fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    removed
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest<'a>(staged: &'a Staged, metrics: &'a Metrics, version: u32) -> Manifest<'a> {
        Manifest {
            model: "m",
            version,
            digest: &staged.digest,
            size_bytes: staged.size_bytes,
            files: &staged.files,
            metrics,
            run: None,
            source: "test",
            created_ms: 1,
        }
    }

    #[test]
    fn a_directory_becomes_a_version_with_a_manifest_and_a_stable_digest() {
        let data = tempfile::tempdir().unwrap();
        let source = tempfile::tempdir().unwrap();
        fs::create_dir(source.path().join("sub")).unwrap();
        fs::write(source.path().join("weights.bin"), b"0123456789").unwrap();
        fs::write(source.path().join("sub/config.json"), b"{}").unwrap();
        let staged = stage(data.path(), "m", source.path()).unwrap();
        assert_eq!(staged.size_bytes, 12);
        let paths: Vec<&str> = staged.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["sub/config.json", "weights.bin"]);
        // The same content digests the same, wherever it comes from.
        let again = stage(data.path(), "m", source.path()).unwrap();
        assert_eq!(staged.digest, again.digest);
        let metrics = Metrics::new();
        let dir = commit(data.path(), &staged, &manifest(&staged, &metrics, 1)).unwrap();
        assert_eq!(dir, version_dir(data.path(), "m", 1));
        assert_eq!(fs::read(dir.join("weights.bin")).unwrap(), b"0123456789");
        let written: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(written["digest"], staged.digest.as_str());
        assert_eq!(written["files"][1]["bytes"], 10);
        // A changed byte changes the digest.
        fs::write(source.path().join("weights.bin"), b"0123456780").unwrap();
        let changed = stage(data.path(), "m", source.path()).unwrap();
        assert_ne!(changed.digest, staged.digest);
    }

    #[test]
    fn bad_sources_are_refused_with_their_path_and_leave_nothing() {
        let data = tempfile::tempdir().unwrap();
        let source = tempfile::tempdir().unwrap();
        let error = stage(data.path(), "m", Path::new("relative/dir")).unwrap_err();
        assert_eq!(error.to_string(), "relative/dir: the path must be absolute");
        let missing = source.path().join("nope");
        let error = stage(data.path(), "m", &missing).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("nope: no such file or directory"),
            "{error}"
        );
        let error = stage(data.path(), "m", source.path()).unwrap_err();
        assert!(
            error.to_string().ends_with(": the directory has no files"),
            "{error}"
        );
        fs::write(source.path().join(MANIFEST), b"{}").unwrap();
        let error = stage(data.path(), "m", source.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("manifest.json at the top is reserved"),
            "{error}"
        );
        fs::remove_file(source.path().join(MANIFEST)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", source.path().join("link")).unwrap();
        let error = stage(data.path(), "m", source.path()).unwrap_err();
        assert!(error.to_string().contains("symbolic links"), "{error}");
        // No staging directory is left behind by any refusal.
        let left: Vec<_> = fs::read_dir(model_dir(data.path(), "m"))
            .map(|d| d.flatten().collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn an_abandoned_staging_is_removed_and_a_committed_one_is_not() {
        let data = tempfile::tempdir().unwrap();
        let source = tempfile::tempdir().unwrap();
        fs::write(source.path().join("weights.bin"), b"w").unwrap();
        let abandoned = stage(data.path(), "m", source.path()).unwrap();
        let staging = abandoned.dir.clone();
        assert!(staging.is_dir());
        drop(abandoned);
        assert!(!staging.exists());

        let staged = stage(data.path(), "m", source.path()).unwrap();
        let metrics = Metrics::new();
        let dir = commit(data.path(), &staged, &manifest(&staged, &metrics, 1)).unwrap();
        // A staging started after the commit never takes the name the committed one had.
        let next = stage(data.path(), "m", source.path()).unwrap();
        assert_ne!(next.dir, staged.dir);
        drop(staged);
        assert!(dir.join("weights.bin").is_file() && next.dir.is_dir());
    }

    #[test]
    fn a_single_file_is_a_version_of_one_file() {
        let data = tempfile::tempdir().unwrap();
        let source = tempfile::tempdir().unwrap();
        let file = source.path().join("model.gguf");
        fs::write(&file, b"GGUF").unwrap();
        let staged = stage(data.path(), "m", &file).unwrap();
        assert_eq!(staged.files[0].path, "model.gguf");
    }

    #[test]
    fn clean_up_removes_staging_and_unrecorded_versions_only() {
        let data = tempfile::tempdir().unwrap();
        let model = model_dir(data.path(), "m");
        for name in ["1", "2", ".staging-1-2", "notes"] {
            fs::create_dir_all(model.join(name)).unwrap();
        }
        let known = BTreeMap::from([("m".to_string(), vec![1])]);
        let mut removed = clean_up(data.path(), &known);
        removed.sort();
        assert_eq!(removed, vec![model.join(".staging-1-2"), model.join("2")]);
        assert!(model.join("1").exists() && model.join("notes").exists());
    }
}
