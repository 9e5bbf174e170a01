//! The printer is a fixed point of parse∘print for every `.qir` under `tests/` and `examples/`:
//! printing a parsed file and parsing that again prints the same text. Examples, which are
//! written in canonical form, print back to themselves exactly (comments aside).

use std::path::{Path, PathBuf};

use qc::ir::printer::print_module;
use qc::syntax::parse_module;

/// Every `.qir` file below `dir`, except the error and `--verify-diagnostics` suites, whose
/// files are meant not to compile.
fn qir_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() && name != "errors" && name != "verify" && name != "snapshots" {
            qir_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "qir") {
            out.push(path);
        }
    }
}

fn strip_comment_lines(text: &str) -> String {
    text.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect()
}

#[test]
fn printing_is_a_fixed_point() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    qir_files(&root.join("tests"), &mut files);
    qir_files(&root.join("examples"), &mut files);
    files.sort();
    assert!(files.len() >= 5, "expected the test and example suites to hold .qir files");
    for path in &files {
        let source = std::fs::read_to_string(path).unwrap();
        let dir = path.parent().unwrap();
        let first = parse_module(&source, Some(dir)).map(|m| print_module(&m));
        let first = first.unwrap_or_else(|e| panic!("{} does not compile: {e:?}", path.display()));
        let second = parse_module(&first, Some(dir)).map(|m| print_module(&m));
        let second = second.unwrap_or_else(|e| panic!("{}: the printed form does not compile: {e:?}", path.display()));
        assert_eq!(first, second, "{}: print(parse(print(parse(x)))) differs from print(parse(x))", path.display());
        if path.starts_with(root.join("examples")) {
            assert_eq!(strip_comment_lines(&source), first, "{} is not in canonical form", path.display());
        }
    }
}

#[test]
// The literals are PT2E-style printed f32 values; their extra digits are the point.
#[allow(clippy::excessive_precision)]
fn floats_round_trip_bit_exactly() {
    let values: [f32; 10] =
        [0.1, 1e-45, -0.0, 3.4028235e38, 1.17549435e-38, 0.028216300532221794, 7.0, 1e20, 123456.79, -2.5e-7];
    let literal = values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ");
    let source = format!(
        "module {{\n  func @f(%x: f32[10]) -> f32[10] {{\n    %c = const {{value = [{literal}]}} : f32[10]\n    %y = add(%x, %c) : f32[10]\n    return %y\n  }}\n}}\n"
    );
    let printed = print_module(&parse_module(&source, None).unwrap());
    assert_eq!(printed, source);
    // f64 attributes: a scale computed in f32 and widened, as PT2E prints it.
    let scale = (0.028216300532221794f32) as f64;
    let source = format!(
        "module {{\n  func @f(%x: f32[4]) -> i8[4] {{\n    %q = quantize_per_tensor(%x) {{scale = {scale:?}, zero_point = -3, qmin = -128, qmax = 127, dtype = i8}} : i8[4]\n    return %q\n  }}\n}}\n"
    );
    let module = parse_module(&source, None).unwrap();
    assert_eq!(print_module(&module), source);
}
