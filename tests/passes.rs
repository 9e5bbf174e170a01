//! Per-pass snapshot tests: every `tests/passes/<pass>/<case>.qir` starts with a
//! `// RUN: -p <passes>` line; its snapshot holds the input IR and the IR after each pass, in
//! the format of `qc --print-ir-after-all`, then any warnings (or the rendered diagnostics if
//! the run fails).

use std::path::Path;

use qc::diag::{render, Files};
use qc::driver::compile_with;
use qc::ir::printer::write_module;
use qc::passes::manager::{dump_header, Instrumentation};
use qc::passes::registry::{expand, PASSES};
use qc::passes::PassContext;

/// The passes and options named by the case's first line:
/// `// RUN: -p a,b [--calib FILE] [--quantizer NAME]` (FILE relative to the case).
fn run_line(source: &str, path: &Path) -> (Vec<String>, PassContext) {
    let first = source.lines().next().unwrap_or_default();
    let Some(spec) = first.strip_prefix("// RUN: -p ") else {
        panic!("{}: the first line must be `// RUN: -p <passes> [options]`", path.display());
    };
    let mut words = spec.split_whitespace();
    let passes = words.next().unwrap_or_default().split(',').map(|s| s.trim().to_string()).collect();
    let mut cx = PassContext::default();
    while let Some(flag) = words.next() {
        let value = words.next().unwrap_or_else(|| panic!("{}: `{flag}` needs a value", path.display()));
        match flag {
            // Relative to the package root (the tests' working directory), so messages that
            // name the file are the same on every machine.
            "--calib" => {
                let dir = path.parent().unwrap();
                let dir = dir.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(dir);
                cx.calibration = Some(dir.join(value));
            }
            "--quantizer" => cx.quantizer = Some(value.to_string()),
            other => panic!("{}: unknown RUN option `{other}`", path.display()),
        }
    }
    (passes, cx)
}

/// Input IR, then the IR after each pass (or the diagnostics).
fn snapshot_of(path: &Path) -> (String, String) {
    let source = std::fs::read_to_string(path).unwrap();
    let (names, cx) = run_line(&source, path);
    let passes = expand(&names).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dir = path.parent().unwrap();
    let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path).display().to_string();
    let mut out = String::new();
    match qc::syntax::parse_module(&source, Some(dir)) {
        Ok(module) => {
            dump_header(&mut out, "Before", "pipeline");
            write_module(&mut out, &module);
        }
        Err(_) => out.push_str("// (the input does not compile)\n"),
    }
    let inst = Instrumentation { print_after_all: true, verify_each: true, ..Default::default() };
    let mut dumps = String::new();
    match compile_with(&source, Some(dir), &passes, &inst, cx, &mut dumps) {
        Ok(compiled) => {
            out.push_str(&dumps);
            if !compiled.warnings.is_empty() {
                out.push_str("// -----// Warnings //----- //\n");
                let mut files = Files::new();
                let id = files.add(relative, source.clone());
                out.push_str(&render(&files, id, &compiled.warnings));
            }
        }
        Err(diags) => {
            out.push_str(&dumps);
            out.push_str("// -----// Error //----- //\n");
            let mut files = Files::new();
            let id = files.add(relative, source.clone());
            out.push_str(&render(&files, id, &diags));
        }
    }
    (names.join(","), out)
}

#[test]
fn pass_cases() {
    insta::glob!("passes/*/*.qir", |path| {
        let (pipeline, snapshot) = snapshot_of(path);
        insta::with_settings!({ description => format!("-p {pipeline}"), omit_expression => true }, {
            insta::assert_snapshot!(snapshot);
        });
    });
}

#[test]
fn every_registered_pass_has_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/passes");
    for pass in PASSES {
        let dir = root.join(pass.name);
        let cases = std::fs::read_dir(&dir)
            .map(|entries| {
                entries.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "qir")).count()
            })
            .unwrap_or(0);
        assert!(cases > 0, "pass `{}` has no snapshot cases in {}", pass.name, dir.display());
    }
}
