//! Golden tests of the interpreter against PyTorch: every `tests/golden/<case>.qir` runs on the
//! `input.*` tensors of its safetensors file and must match the `expected.*` tensors PyTorch
//! computed, within the tolerance on the case's first line (see `tools/gen_golden.py` for the
//! justification of each). `exact` means bitwise equality, NaNs included.

mod common;

use std::path::Path;

use qc::interp::{bind_inputs, run_graph, RunOptions};
use qc::syntax::parse_module;
use qc::tensor::Tensor;
use qc::weights::WeightFile;

use common::files::files_with_extension;

enum Tolerance {
    Exact,
    Close { atol: f64, rtol: f64 },
}

fn tolerance(first_line: &str) -> Tolerance {
    let spec = first_line.strip_prefix("// golden: ").expect("a golden case starts with `// golden: <tolerance>`");
    if spec.trim() == "exact" {
        return Tolerance::Exact;
    }
    let get = |key: &str| -> f64 {
        spec.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok()).unwrap_or(0.0)
    };
    Tolerance::Close { atol: get("atol"), rtol: get("rtol") }
}

/// Element bits for exact comparison (dtype-aware so -0.0 ≠ 0.0 and NaN payloads count).
fn bits(t: &Tensor) -> Vec<u64> {
    qc::tensor::le_bytes(t)
        .chunks(t.dtype().size_bytes())
        .map(|c| c.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
        .collect()
}

fn compare(case: &str, name: &str, actual: &Tensor, expected: &Tensor, tol: &Tolerance) -> Result<(), String> {
    if actual.dtype() != expected.dtype() || actual.shape() != expected.shape() {
        return Err(format!(
            "{case}/{name}: got {} {:?}, expected {} {:?}",
            actual.dtype(),
            actual.shape(),
            expected.dtype(),
            expected.shape()
        ));
    }
    match tol {
        Tolerance::Exact => {
            let (a, e) = (bits(actual), bits(expected));
            if let Some(i) = (0..a.len()).find(|&i| a[i] != e[i]) {
                let (av, ev) = (actual.to_f64_array(), expected.to_f64_array());
                let (av, ev) = (av.iter().nth(i).copied(), ev.iter().nth(i).copied());
                return Err(format!(
                    "{case}/{name}: element {i} differs: got {av:?}, expected {ev:?} (bits {:#x} vs {:#x})",
                    a[i], e[i]
                ));
            }
        }
        Tolerance::Close { atol, rtol } => {
            let (a, e) = (actual.to_f64_array(), expected.to_f64_array());
            for (i, (&x, &y)) in a.iter().zip(e.iter()).enumerate() {
                let ok = if y.is_nan() {
                    x.is_nan()
                } else if y.is_infinite() {
                    x == y
                } else {
                    (x - y).abs() <= atol + rtol * y.abs()
                };
                if !ok {
                    return Err(format!(
                        "{case}/{name}: element {i}: got {x:e}, expected {y:e} (atol {atol:e}, rtol {rtol:e})"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn interpreter_matches_pytorch() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let cases = files_with_extension(&dir, "qir");
    assert!(cases.len() >= 60, "expected the golden fixtures to be present");
    let mut failures = Vec::new();
    for path in &cases {
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(path).unwrap();
        let tol = tolerance(source.lines().next().unwrap_or_default());
        let module = parse_module(&source, Some(&dir)).unwrap_or_else(|e| panic!("{case}: {e:?}"));
        let data = WeightFile::open(&path.with_extension("safetensors")).unwrap();
        let graph = &module.graphs[0];
        let inputs = data
            .keys()
            .into_iter()
            .filter_map(|k| Some((k.strip_prefix("input.")?.to_string(), data.tensor(k).unwrap())))
            .collect();
        let bound = bind_inputs(graph, inputs).unwrap_or_else(|d| panic!("{case}: {}", d.message));
        let result = match run_graph(&module, graph, bound, &RunOptions::default(), None) {
            Ok(r) => r,
            Err(d) => {
                failures.push(format!("{case}: {}", d.message));
                continue;
            }
        };
        for (name, actual) in &result.outputs {
            let expected = data.tensor(&format!("expected.{name}")).unwrap();
            if let Err(e) = compare(&case, name, actual, &expected, &tol) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} golden cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
