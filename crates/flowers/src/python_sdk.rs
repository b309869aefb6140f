//! The Python SDK (`sdk/python/flowers`) inside the binary: `flowers up` writes it to
//! `DATA_DIR/python/flowers/` and appends `DATA_DIR/python` to every Run's `PYTHONPATH`, so
//! `import flowers` works in any service or job with nothing installed, and always matches the
//! Flowers that runs it.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The package's files, relative to `sdk/python/flowers/`.
const FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../sdk/python/flowers/__init__.py"),
    ),
    (
        "_control.py",
        include_str!("../../../sdk/python/flowers/_control.py"),
    ),
    (
        "_errors.py",
        include_str!("../../../sdk/python/flowers/_errors.py"),
    ),
    (
        "_job.py",
        include_str!("../../../sdk/python/flowers/_job.py"),
    ),
    (
        "_service.py",
        include_str!("../../../sdk/python/flowers/_service.py"),
    ),
    (
        "py.typed",
        include_str!("../../../sdk/python/flowers/py.typed"),
    ),
];

/// Writes the package under `data_dir/python` (each file replaced atomically, files of an
/// older SDK removed) and returns the directory to put on `PYTHONPATH`.
pub fn install(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let root = data_dir.join("python");
    let package = root.join("flowers");
    std::fs::create_dir_all(&package)
        .with_context(|| format!("cannot create {}", package.display()))?;
    for (name, text) in FILES {
        let path = package.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            continue;
        }
        let staging = package.join(format!(".{name}.tmp"));
        std::fs::write(&staging, text)
            .and_then(|()| std::fs::rename(&staging, &path))
            .with_context(|| format!("cannot write the Python SDK to {}", path.display()))?;
    }
    for entry in std::fs::read_dir(&package)?.flatten() {
        let name = entry.file_name();
        let known = FILES.iter().any(|(file, _)| name == *file);
        if !known && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_package_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python/flowers");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add new SDK files to python_sdk::FILES");
    }

    #[test]
    fn install_writes_the_package_and_removes_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("python/flowers/_old.py");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, "x").unwrap();
        std::fs::write(dir.path().join("python/flowers/_job.py"), "old").unwrap();
        let root = install(dir.path()).unwrap();
        assert_eq!(root, dir.path().join("python"));
        assert!(!stale.exists());
        for (name, text) in FILES {
            assert_eq!(
                std::fs::read_to_string(root.join("flowers").join(name)).unwrap(),
                *text
            );
        }
    }
}
