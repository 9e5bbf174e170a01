//! Per-pass snapshot tests: every `tests/passes/<pass>/<case>.qir` starts with a
//! `// RUN: -p <passes>` line; its snapshot holds the input IR and the IR after each pass, in
//! the format of `qc --print-ir-after-all`, then any warnings (or the rendered diagnostics if
//! the run fails). Each pass's `doc_example.qir` is also the example in the pass's `//!` doc,
//! which must show what the pass does to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qc::diag::{render, Files};
use qc::driver::compile_with;
use qc::ir::printer::{print_module, write_module};
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

/// Every pass's `//!` doc shows an example as a ```` ```qir before ```` block and a
/// ```` ```qir after ```` block: the before is the body of `tests/passes/<pass>/doc_example.qir`
/// (whose RUN line runs the pass alone, with any options it needs), and running the pass on it
/// prints exactly the after. So the examples in the docs cannot rot.
#[test]
fn doc_examples_are_what_the_passes_do() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = BTreeMap::new();
    pass_sources(&root.join("src/passes"), &mut sources);
    let failures: Vec<String> =
        PASSES.iter().filter_map(|pass| check_doc_example(root, pass.name, &sources).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Pass name → the files under `dir` whose `PASS: PassDef` carries that name: found by content,
/// so that pass files can move.
fn pass_sources(dir: &Path, out: &mut BTreeMap<String, Vec<PathBuf>>) {
    for path in std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()) {
        if path.is_dir() {
            pass_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = text
                .split_once("PASS: PassDef")
                .and_then(|(_, def)| def.split_once("name: \""))
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(name, _)| name.to_string());
            if let Some(name) = name {
                out.entry(name).or_default().push(path);
            }
        }
    }
}

/// Checks the example in `pass`'s doc against its `doc_example.qir` and what the pass prints;
/// the error says which file and what differs.
fn check_doc_example(root: &Path, pass: &str, sources: &BTreeMap<String, Vec<PathBuf>>) -> Result<(), String> {
    let shown = |path: &Path| path.strip_prefix(root).unwrap_or(path).display().to_string();
    let file = match sources.get(pass).map(Vec::as_slice) {
        Some([file]) => file,
        Some(files) => return Err(format!("pass `{pass}` is defined in several files: {files:?}")),
        None => return Err(format!("no file under src/passes has a `PASS: PassDef` named \"{pass}\"")),
    };
    let file = shown(file);
    let text = std::fs::read_to_string(root.join(&file)).unwrap();
    let doc: Vec<&str> = text
        .lines()
        .map_while(|line| line.trim_start().strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect();
    let before = fenced(&doc, "before").map_err(|e| format!("{file}: {e}"))?;
    let after = fenced(&doc, "after").map_err(|e| format!("{file}: {e}"))?;

    let case = root.join("tests/passes").join(pass).join("doc_example.qir");
    let source =
        std::fs::read_to_string(&case).map_err(|e| format!("{file}: its example has no case {}: {e}", shown(&case)))?;
    let (names, cx) = run_line(&source, &case);
    if names != [pass] {
        return Err(format!("{}: the RUN line must run `{pass}` alone, not {names:?}", shown(&case)));
    }
    let body = source.split_once('\n').map_or("", |(_, body)| body);
    if body != before {
        let case = shown(&case);
        return Err(format!(
            "{file}: the ```qir before example is not the body of {case}\n{}",
            difference(&before, body, &case)
        ));
    }

    let passes = expand(&names).map_err(|e| format!("{}: {e}", shown(&case)))?;
    let inst = Instrumentation { verify_each: true, ..Default::default() };
    let compiled = compile_with(&source, case.parent(), &passes, &inst, cx, &mut String::new()).map_err(|diags| {
        let mut files = Files::new();
        let id = files.add(shown(&case), source.clone());
        format!("{file}: `{pass}` fails on its example:\n{}", render(&files, id, &diags))
    })?;
    let printed = print_module(&compiled.module);
    if printed != after {
        return Err(format!(
            "{file}: the ```qir after example is not what `{pass}` prints\n{}",
            difference(&after, &printed, pass)
        ));
    }
    Ok(())
}

/// The text of the one ```` ```qir <label> ```` block of a doc, each line ending in a newline.
fn fenced(doc: &[&str], label: &str) -> Result<String, String> {
    let open = format!("```qir {label}");
    let starts: Vec<usize> = (0..doc.len()).filter(|&i| doc[i] == open).collect();
    let [start] = starts[..] else {
        return Err(format!("its `//!` doc has {} ```qir {label} blocks, not one", starts.len()));
    };
    let block = &doc[start + 1..];
    let end = block.iter().position(|&line| line == "```").ok_or(format!("its ```qir {label} block is not closed"))?;
    Ok(block[..end].iter().map(|line| format!("{line}\n")).collect())
}

/// The first line where `other` (named `other_name`) departs from the doc's text, then the whole
/// of `other`, ready to paste into the doc when it is the truth.
fn difference(doc: &str, other: &str, other_name: &str) -> String {
    let (doc_lines, other_lines): (Vec<&str>, Vec<&str>) = (doc.lines().collect(), other.lines().collect());
    let line = (0..doc_lines.len().max(other_lines.len())).find(|&i| doc_lines.get(i) != other_lines.get(i));
    let show = |line: Option<&&str>| line.map_or("(no line)".to_string(), |line| format!("`{line}`"));
    let first = match line {
        Some(i) => format!(
            "  first difference, line {} of the example:\n    doc: {}\n    {other_name}: {}\n",
            i + 1,
            show(doc_lines.get(i)),
            show(other_lines.get(i))
        ),
        None => "  the lines agree; the difference is in line endings or a last newline\n".to_string(),
    };
    format!("{first}  {other_name} is:\n{other}")
}
