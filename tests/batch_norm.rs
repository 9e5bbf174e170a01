//! batch_norm against PyTorch, bit for bit, in both modes: every
//! `tests/batch_norm/<case>.safetensors` (written by `tools/gen_batch_norm_fixtures.py`) holds the
//! operands, what `F.batch_norm(..., training=True)` returned and the running statistics it left,
//! and what `F.batch_norm(..., training=False)` returned. The outputs are computed by running a
//! one-op QIR graph with the interpreter, the running statistics by
//! `batch_norm_training_update`, the function the calibration pass calls.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use qc::interp::kernels::norm::batch_norm_training_update;
use qc::interp::{bind_inputs, run_graph, RunOptions};
use qc::syntax::parse_module;
use qc::tensor::Tensor;
use qc::weights::WeightFile;

use common::files::files_with_extension;

fn fixtures() -> Vec<PathBuf> {
    files_with_extension(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/batch_norm"), "safetensors")
}

fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("a safetensors file");
    meta.metadata().clone().unwrap_or_default()
}

fn qir_type(t: &Tensor) -> String {
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    format!("{}[{}]", t.dtype(), dims.join(","))
}

/// A graph of one batch_norm of `x`'s type.
fn module_text(x: &Tensor, channels: &Tensor, eps: &str, training: bool) -> String {
    let (xt, ct) = (qir_type(x), qir_type(channels));
    format!(
        "module {{\n  func @main(%x: {xt}, %weight: {ct}, %bias: {ct}, %running_mean: {ct}, %running_var: {ct}) -> {xt} {{\n    \
         %y = batch_norm(%x, %weight, %bias, %running_mean, %running_var) {{eps = {eps}, training = {training}}} : {xt}\n    \
         return %y\n  }}\n}}\n"
    )
}

const OPERANDS: [&str; 5] = ["x", "weight", "bias", "running_mean", "running_var"];

/// Runs the batch_norm graph on `operands` (in [`OPERANDS`] order).
fn run(operands: &[Tensor], eps: &str, training: bool) -> Result<Tensor, String> {
    let text = module_text(&operands[0], &operands[1], eps, training);
    let module = parse_module(&text, None).map_err(|e| format!("{e:?}"))?;
    let graph = &module.graphs[0];
    let inputs = OPERANDS.iter().map(|n| n.to_string()).zip(operands.iter().cloned()).collect();
    let bound = bind_inputs(graph, inputs).map_err(|d| d.message)?;
    let result = run_graph(&module, graph, bound, &RunOptions::default(), None).map_err(|d| d.message)?;
    Ok((*result.outputs[0].1).clone())
}

/// The first element whose bits differ, with both values and the distance in ulps.
fn first_difference(actual: &Tensor, expected: &Tensor) -> Option<String> {
    if actual.dtype() != expected.dtype() || actual.shape() != expected.shape() {
        return Some(format!("got {}, expected {}", qir_type(actual), qir_type(expected)));
    }
    let ordered = |t: &Tensor| -> Vec<i64> {
        match t {
            Tensor::F32(a) => {
                a.iter().map(|v| v.to_bits() as i32).map(|b| i64::from(if b < 0 { i32::MIN - b } else { b })).collect()
            }
            Tensor::F64(a) => {
                a.iter().map(|v| v.to_bits() as i64).map(|b| if b < 0 { i64::MIN - b } else { b }).collect()
            }
            other => panic!("unexpected dtype {}", other.dtype()),
        }
    };
    let (a, e) = (ordered(actual), ordered(expected));
    let i = (0..a.len()).find(|&i| a[i] != e[i])?;
    let worst = a.iter().zip(&e).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
    let (av, ev) = (actual.to_f64_array(), expected.to_f64_array());
    let (av, ev) = (av.iter().nth(i).unwrap(), ev.iter().nth(i).unwrap());
    Some(format!("element {i}: got {av:e}, expected {ev:e}; at most {worst} ulps apart"))
}

#[test]
fn batch_norm_matches_pytorch_bit_for_bit() {
    let cases = fixtures();
    assert!(cases.len() >= 16, "expected the fixtures to be present");
    let mut failures = Vec::new();
    for path in &cases {
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        let meta = metadata(path);
        let data = WeightFile::open(path).unwrap();
        let operands: Vec<Tensor> = OPERANDS.iter().map(|n| data.tensor(&format!("input.{n}")).unwrap()).collect();
        let expected = |n: &str| data.tensor(&format!("expected.{n}")).unwrap();
        for (training, output) in [(true, "y"), (false, "y_eval")] {
            match run(&operands, &meta["eps"], training) {
                Ok(y) => {
                    failures.extend(first_difference(&y, &expected(output)).map(|d| format!("{case}/{output}: {d}")))
                }
                Err(e) => failures.push(format!("{case}/{output}: {e}")),
            }
        }
        let momentum: f64 = meta["momentum"].parse().unwrap();
        match batch_norm_training_update(&operands[0], &operands[3], &operands[4], momentum) {
            Ok((mean, var)) => {
                for (name, actual) in [("running_mean", mean), ("running_var", var)] {
                    failures.extend(first_difference(&actual, &expected(name)).map(|d| format!("{case}/{name}: {d}")));
                }
            }
            Err(e) => failures.push(format!("{case}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} mismatches in {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

fn f32_tensor(shape: &[usize], f: impl Fn(usize) -> f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(f).collect()).unwrap())
}

/// Operands for an input of `shape`: pseudo-random data, per-channel vectors of `channels`.
fn operands(shape: &[usize]) -> Vec<Tensor> {
    let channels = shape[1];
    let x = f32_tensor(shape, |i| ((i as f32 * 0.618_034).fract() - 0.5) * 4.0 + (i % 7) as f32);
    let vector = |k: f32| f32_tensor(&[channels], move |c| 1.0 + k * c as f32);
    vec![x, vector(0.5), vector(-0.25), vector(0.1), vector(0.3)]
}

#[test]
fn one_value_per_channel_is_refused() {
    // PyTorch: "Expected more than 1 value per channel when training".
    for shape in [[1, 4, 1, 1], [1, 4, 0, 3]] {
        let ops = operands(&shape);
        let err = run(&ops, "1e-5", true).unwrap_err();
        assert!(err.contains("more than one value per channel"), "{shape:?}: {err}");
        let err = batch_norm_training_update(&ops[0], &ops[3], &ops[4], 0.1).unwrap_err();
        assert!(err.contains("more than one value per channel"), "{shape:?}: {err}");
    }
    let ops = operands(&[1, 4]);
    assert!(run(&ops, "1e-5", true).unwrap_err().contains("more than one value per channel"));
}

#[test]
fn a_non_positive_eps_is_refused() {
    // PyTorch: "batch_norm eps must be positive during training".
    let ops = operands(&[2, 3, 2, 2]);
    for eps in ["0.0", "-1e-5"] {
        assert!(run(&ops, eps, true).unwrap_err().contains("positive `eps`"), "{eps}");
    }
}

#[test]
fn mismatched_running_statistics_are_refused() {
    let ops = operands(&[2, 3, 2, 2]);
    let short = f32_tensor(&[2], |_| 0.0);
    assert!(batch_norm_training_update(&ops[0], &short, &ops[4], 0.1).unwrap_err().contains("3 channels"));
    let wide = ops[3].cast(qc::ir::DType::F64);
    assert!(batch_norm_training_update(&ops[0], &wide, &ops[4], 0.1).unwrap_err().contains("running statistics"));
}

#[test]
fn training_batch_norm_does_not_depend_on_the_thread_count() {
    // Large enough for the parallel paths (channels, planes), in both reduction orders.
    for shape in [vec![4, 16, 40, 40], vec![4096, 24]] {
        let ops = operands(&shape);
        let in_pool = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let y = run(&ops, "1e-5", true).unwrap();
                let (mean, var) = batch_norm_training_update(&ops[0], &ops[3], &ops[4], 0.1).unwrap();
                [y, mean, var]
            })
        };
        let (one, four) = (in_pool(1), in_pool(4));
        for (a, b) in one.iter().zip(&four) {
            assert!(a.bit_eq(b), "{shape:?}");
        }
    }
}
