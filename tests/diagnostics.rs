//! The diagnostics suite.
//!
//! - `tests/errors/*.qir`: one file per error kind a user can reach. Each is compiled exactly as
//!   the driver compiles it and the rendered diagnostics are snapshotted
//!   (`tests/snapshots/diagnostics__<name>.snap`). A file there that compiles is a failure.
//! - `tests/verify/*.qir`: `--split-input-file --verify-diagnostics` runs of the built binary;
//!   `tests/verify/bad/*.qir` hold deliberately wrong expectations and must fail.
//!
//! Regenerate snapshots with `INSTA_UPDATE=always cargo test --test diagnostics`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use qc::diag::Files;

use common::files::files_with_extension;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `path` relative to the package root, with `/` separators, so snapshots do not depend on
/// where the checkout lives.
fn workspace_relative(path: &Path) -> PathBuf {
    path.strip_prefix(manifest_dir()).unwrap_or(path).to_path_buf()
}

fn display(path: &Path) -> String {
    workspace_relative(path).to_string_lossy().replace('\\', "/")
}

/// Compiles `path` as `qc` does and renders what it reports; panics if it compiles.
fn rendered_errors(path: &Path) -> String {
    let source = std::fs::read_to_string(path).expect("read test input");
    let first = source.lines().next().unwrap_or_default();
    assert!(first.starts_with("// "), "{}: the first line must be a `// ` comment saying what it tests", display(path));
    // Relative to the package root (the working directory of `cargo test`), so paths that end
    // up in messages are machine-independent.
    let dir = workspace_relative(path.parent().expect("file has a directory"));
    let result = qc::driver::compile(&source, Some(&dir), &[], &Default::default(), &mut String::new());
    let diags = match result {
        Ok(_) => panic!("{} compiled without errors, but files in tests/errors/ must fail", display(path)),
        Err(diags) => diags,
    };
    assert!(diags.iter().any(|d| d.is_error()), "{}: compilation failed without any error diagnostic", display(path));
    let mut files = Files::new();
    let file_id = files.add(display(path), source);
    qc::diag::render(&files, file_id, &diags)
}

#[test]
fn error_kinds() {
    insta::glob!("errors/*.qir", |path| {
        let rendered = rendered_errors(path);
        let name = path.file_stem().and_then(|s| s.to_str()).expect("utf-8 file name").to_string();
        insta::with_settings!({
            omit_expression => true,
            snapshot_suffix => "",
        }, {
            insta::assert_snapshot!(name, rendered);
        });
    });
}

fn qc() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qc"));
    cmd.current_dir(manifest_dir()).arg("--color=never");
    cmd
}

fn qir_files(dir: &str) -> Vec<PathBuf> {
    files_with_extension(&manifest_dir().join(dir), "qir")
}

/// Every expectation in `tests/verify/*.qir` is met, and nothing unexpected is reported.
#[test]
fn verify_diagnostics_pass() {
    let files = qir_files("tests/verify");
    assert!(!files.is_empty(), "no tests/verify/*.qir files");
    for path in files {
        let out = qc().arg("--split-input-file").arg("--verify-diagnostics").arg(&path).output().expect("run qc");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} failed --verify-diagnostics:\n{}",
            display(&path),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "--verify-diagnostics printed IR for {}", display(&path));
    }
}

/// Wrong or missing expectations fail the run with exit status 1 and say what did not match.
#[test]
fn verify_diagnostics_mismatch() {
    let path = "tests/verify/bad/mismatch.qir";
    let out = qc().arg("--split-input-file").arg("--verify-diagnostics").arg(path).output().expect("run qc");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit status 1, stderr:\n{stderr}");
    insta::with_settings!({omit_expression => true, input_file => manifest_dir().join(path)}, {
        insta::assert_snapshot!("verify_mismatch", stderr);
    });
}

/// A malformed `expected-error` comment is itself reported.
#[test]
fn verify_diagnostics_malformed() {
    let path = "tests/verify/bad/malformed.qir";
    let out = qc().arg("--split-input-file").arg("--verify-diagnostics").arg(path).output().expect("run qc");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit status 1, stderr:\n{stderr}");
    insta::with_settings!({omit_expression => true, input_file => manifest_dir().join(path)}, {
        insta::assert_snapshot!("verify_malformed", stderr);
    });
}

/// `--split-input-file` keeps each case's original line numbers.
#[test]
fn split_keeps_line_numbers() {
    let path = "tests/verify/bad/split_lines.qir";
    let source = std::fs::read_to_string(manifest_dir().join(path)).expect("read");
    let out = qc().arg("--split-input-file").arg(path).output().expect("run qc");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit status 1, stderr:\n{stderr}");
    // Every case's error is reported at the line it has in the whole file.
    for (marker, want) in [("rleu", "unknown op `rleu`"), ("sigmiod", "unknown op `sigmiod`")] {
        let line = source.lines().position(|l| l.contains(&format!("= {marker}("))).expect("marker line") + 1;
        let col = source.lines().nth(line - 1).and_then(|l| l.find(marker)).expect("marker column") + 1;
        assert!(stderr.contains(want), "missing `{want}` in:\n{stderr}");
        assert!(
            stderr.contains(&format!("{path}:{line}:{col}")),
            "`{want}` is not reported at {path}:{line}:{col}:\n{stderr}"
        );
    }
    insta::with_settings!({omit_expression => true, input_file => manifest_dir().join(path)}, {
        insta::assert_snapshot!("split_line_numbers", stderr);
    });
}
