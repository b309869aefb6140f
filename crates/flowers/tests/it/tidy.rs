//! Tidy checks that run with `cargo test`: every library says what it owns, no stubs or
//! debugging leftovers in the code, folder name = crate name.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(workspace().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_library_opens_with_what_it_owns() {
    for dir in crates() {
        let lib = dir.join("src/lib.rs");
        if let Ok(text) = std::fs::read_to_string(&lib) {
            assert!(
                text.starts_with("//!"),
                "{} must open with a //! paragraph saying what the crate owns and never does",
                lib.display()
            );
        }
    }
}

#[test]
fn folder_name_is_crate_name() {
    for dir in crates() {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            manifest.contains(&format!("name = \"{folder}\"")),
            "crates/{folder}/Cargo.toml must name the package {folder:?}"
        );
    }
}

#[test]
fn no_stubs_or_debugging_leftovers() {
    // Built from pieces so that this file does not match itself.
    let banned = [
        ["to", "do!("].concat(),
        ["unimple", "mented!("].concat(),
        ["db", "g!("].concat(),
    ];
    let mut files = Vec::new();
    rust_files(&workspace().join("crates"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for pattern in &banned {
                if line.contains(pattern.as_str()) {
                    found.push(format!(
                        "{}:{}: {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "stubs or debugging left in:\n{}",
        found.join("\n")
    );
}
