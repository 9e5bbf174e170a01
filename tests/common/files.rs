//! Finding the fixture files of a test directory.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

/// The files of `dir` whose extension is `extension`, sorted, so that tests and their failure
/// lists run in a fixed order.
pub fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == extension)).collect();
    files.sort();
    files
}
