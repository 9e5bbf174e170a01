//! The modules of src/ form layers, and no module imports one above it: the module picture is a
//! DAG that reads bottom to top (README's layout table; issue #14).
//!
//! Every file under src/ (and grammar/qir.lalrpop, which `syntax` includes) is read, and each
//! `crate::<module>` path and each `super::` path that climbs out of its top-level module is
//! checked against [`LAYERS`]. Modules of one layer may import each other, but not in a cycle.
//! `#[cfg(test)]` modules are left out: tests may build their inputs with any layer (the front
//! end, mostly).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of src/ and its layer, bottom (0) to top.
const LAYERS: &[(&str, u32)] = &[
    ("diag", 0),
    ("tensor", 0),
    ("regular_file", 0),
    ("weights", 0),
    ("ir", 1),
    ("ops", 1),
    ("quant", 2),
    ("syntax", 3),
    ("interp", 3),
    ("passes", 4),
    ("quantizers", 4),
    ("driver", 5),
];

/// Modules that are one unit with another of their layer and may import it both ways: the op
/// registry is the IR's vocabulary, and the IR's graph names its ops.
const UNITS: &[(&str, &str)] = &[("ops", "ir")];

/// Files that belong to no module: the crate root and the binary.
const ROOTS: &[&str] = &["lib.rs", "main.rs"];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(name, _)| *name == module).map(|&(_, layer)| layer)
}

fn unit(module: &str) -> &str {
    UNITS.iter().find(|(part, _)| *part == module).map_or(module, |&(_, whole)| whole)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text that is compiled outside tests: comments and `#[cfg(test)]` modules removed. A test
/// module runs from `#[cfg(test)]` before `mod … {` to the next line that is only `}` (rustfmt
/// puts a top-level module's closing brace alone at column 0).
fn code_outside_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod ")) {
            for skipped in lines.by_ref() {
                if skipped == "}" {
                    break;
                }
            }
            continue;
        }
        let code = line.split("//").next().unwrap_or_default();
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn identifier_at(text: &str) -> &str {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules a file's code names: `crate::m`, `crate::{m, n::x}`, and `super::`
/// chains of at least `depth` steps (the file's depth below src/), which leave its top-level
/// module for the crate root.
fn imported_modules(code: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let starts_path = |at: usize| {
        let before = code[..at].chars().next_back();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for (at, _) in code.match_indices("crate::") {
        if !starts_path(at) {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let (mut nesting, mut item_start) = (0usize, true);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => nesting += 1,
                        '}' if nesting == 0 => break,
                        '}' => nesting -= 1,
                        ',' if nesting == 0 => item_start = true,
                        c if item_start && !c.is_whitespace() => {
                            item_start = false;
                            found.insert(identifier_at(&group[i..]).to_string());
                        }
                        _ => {}
                    }
                }
            }
            None => {
                found.insert(identifier_at(rest).to_string());
            }
        }
    }
    for (at, _) in code.match_indices("super::") {
        if !starts_path(at) {
            continue;
        }
        let mut rest = &code[at..];
        let mut steps = 0;
        while let Some(after) = rest.strip_prefix("super::") {
            rest = after;
            steps += 1;
        }
        if steps >= depth {
            found.insert(identifier_at(rest).to_string());
        }
    }
    found.remove("");
    found.remove("self");
    found
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    // The grammar is compiled into `syntax` (lalrpop_mod! in src/syntax/mod.rs).
    let mut sources: Vec<(String, String, usize)> = vec![("grammar/qir.lalrpop".into(), "syntax".into(), 2)];
    for file in &files {
        let relative = file.strip_prefix(&src).expect("a file under src/");
        let parts: Vec<&str> = relative.iter().map(|p| p.to_str().expect("a UTF-8 path")).collect();
        if parts.len() == 1 && ROOTS.contains(&parts[0]) {
            continue;
        }
        let top = parts[0].trim_end_matches(".rs").to_string();
        let depth = parts.len() - usize::from(parts.last() == Some(&"mod.rs"));
        sources.push((format!("src/{}", parts.join("/")), top, depth));
    }

    let mut violations = Vec::new();
    // Imports between different units of one layer, for the cycle check.
    let mut same_layer: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, from, depth) in &sources {
        let text = std::fs::read_to_string(root.join(path)).expect("a readable source file");
        let Some(from_layer) = layer(from) else {
            violations.push(format!("{path}: the module `{from}` is not in the layer table"));
            continue;
        };
        for to in imported_modules(&code_outside_tests(&text), *depth) {
            if to == *from {
                continue;
            }
            match layer(&to) {
                None => violations.push(format!("{path}: {from} imports {to}, which the layer table does not list")),
                Some(to_layer) if to_layer > from_layer => {
                    violations.push(format!("{path}: {from} imports {to} (above it)"));
                }
                Some(to_layer) if to_layer == from_layer && unit(from) != unit(&to) => {
                    same_layer.entry(unit(from).to_string()).or_default().insert(unit(&to).to_string());
                }
                Some(_) => {}
            }
        }
    }
    // A cycle within a layer shows as a module reaching itself.
    for start in same_layer.keys() {
        let mut stack: Vec<&String> = same_layer[start].iter().collect();
        let mut seen = BTreeSet::new();
        while let Some(next) = stack.pop() {
            if next == start {
                violations.push(format!("{start} imports itself through modules of its own layer (a cycle)"));
                break;
            }
            if seen.insert(next) {
                stack.extend(same_layer.get(next).into_iter().flatten());
            }
        }
    }
    for v in &violations {
        println!("{v}");
    }
    assert!(violations.is_empty(), "layer violations:\n{}", violations.join("\n"));
}

#[test]
fn imports_are_found_in_every_spelling() {
    let code = "use crate::ir::Graph;\nuse crate::{diag::Span, tensor};\nlet x = $crate::ops::X;\nsuper::super::weights::decode";
    let found: Vec<String> = imported_modules(code, 2).into_iter().collect();
    assert_eq!(found, ["diag", "ir", "ops", "tensor", "weights"]);
    assert!(imported_modules("use super::graph::Graph;", 2).is_empty());
    let outside = code_outside_tests(
        "use crate::ir::X; // crate::driver\n#[cfg(test)]\nmod tests {\n    use crate::syntax;\n}\n",
    );
    assert_eq!(imported_modules(&outside, 1).into_iter().collect::<Vec<_>>(), ["ir"]);
}
