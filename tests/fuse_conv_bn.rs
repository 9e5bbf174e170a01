//! `fuse-conv-bn` against PyTorch: the folded weights and biases must be bit-identical to
//! torchao's `_fuse_conv_bn_` / `_fuse_linear_bn_` (fixtures in `tests/fuse_conv_bn/`, made by
//! `tools/gen_fuse_fixtures.py`), and the folded graph must compute what the unfolded one does.
//! Also: the warnings of the skipped patterns, idempotence, and `qc -o` writing the folded
//! weights beside the output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{ArrayD, IxDyn};
use qc::diag::{render, Files};
use qc::interp::{run_graph, RunOptions};
use qc::ir::printer::print_module;
use qc::ir::{DType, Module};
use qc::passes::registry::find;
use qc::passes::PassContext;
use qc::syntax::parse_module;
use qc::tensor::Tensor;
use qc::weights::WeightFile;

use common::files::files_with_extension;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path) -> Module {
    let source = std::fs::read_to_string(path).unwrap();
    parse_module(&source, path.parent()).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
}

/// Runs the pass; returns whether it changed the module and its warnings.
fn fuse(module: &mut Module) -> (bool, PassContext) {
    let pass = find("fuse-conv-bn").expect("fuse-conv-bn is registered");
    let mut cx = PassContext::default();
    let changed = (pass.run)(module, &mut cx).unwrap_or_else(|e| panic!("{e:?}"));
    let errors = qc::ir::verifier::verify(module, qc::quant::OP_CHECKS);
    assert!(errors.is_empty(), "invalid IR after fuse-conv-bn: {errors:?}");
    (changed, cx)
}

/// Deterministic pseudo-random inputs in [-2, 2) for every input of graph 0.
fn random_inputs(module: &Module, seed: u64) -> Vec<Tensor> {
    let graph = &module.graphs[0];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
    };
    graph
        .inputs()
        .iter()
        .map(|&v| {
            let ty = graph.value_type(v);
            let shape = ty.static_shape().unwrap();
            let n: usize = shape.iter().product();
            let data: Vec<f64> = (0..n).map(|_| next()).collect();
            match ty.dtype {
                DType::F64 => Tensor::F64(ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()),
                _ => Tensor::F32(
                    ArrayD::from_shape_vec(IxDyn(&shape), data.iter().map(|&x| x as f32).collect()).unwrap(),
                ),
            }
        })
        .collect()
}

/// Runs graph 0 of both modules on the same random input: (max |difference|, max |output|).
fn compare_outputs(before: &Module, after: &Module) -> (f64, f64) {
    let inputs = random_inputs(before, 42);
    let run = |m: &Module| run_graph(m, &m.graphs[0], inputs.clone(), &RunOptions::default(), None).unwrap().outputs;
    let (a, b) = (run(before), run(after));
    assert_eq!(a.len(), b.len());
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.shape(), y.shape());
        for (p, q) in x.to_f64_array().iter().zip(y.to_f64_array().iter()) {
            diff = diff.max((p - q).abs());
            scale = scale.max(p.abs());
        }
    }
    (diff, scale)
}

/// The `expected.<key>` tensors of a fixture, by key.
fn expected_tensors(path: &Path) -> Vec<(String, Tensor)> {
    let file = WeightFile::open(path).unwrap();
    file.keys()
        .into_iter()
        .filter_map(|k| Some((k.strip_prefix("expected.")?.to_string(), file.tensor(k).unwrap())))
        .collect()
}

/// Asserts every expected tensor is what the module now reads under its key, bit for bit, and
/// that the pass created nothing else. Returns (tensors, elements) compared.
fn assert_bit_identical(case: &str, module: &Module, expected: &[(String, Tensor)]) -> (usize, usize) {
    let mut elements = 0;
    for (key, want) in expected {
        assert!(module.created_weights().contains_key(key), "{case}: `{key}` was not created");
        let got = module.weights().tensor(key).unwrap();
        assert_eq!(got.dtype(), want.dtype(), "{case}: `{key}` dtype");
        assert_eq!(got.shape(), want.shape(), "{case}: `{key}` shape");
        if !got.bit_eq(want) {
            let (g, w) = (got.scalars(), want.scalars());
            let differing = g.iter().zip(&w).filter(|(a, b)| a != b).count();
            let first = g.iter().zip(&w).position(|(a, b)| a != b);
            panic!(
                "{case}: `{key}` differs from torchao in {differing} of {} elements (first at {first:?}: {:?} vs {:?})",
                w.len(),
                first.map(|i| g[i]),
                first.map(|i| w[i])
            );
        }
        elements += want.len();
    }
    for key in module.created_weights().keys() {
        assert!(expected.iter().any(|(k, _)| k == key), "{case}: created `{key}`, which torchao does not have");
    }
    (expected.len(), elements)
}

fn fixture_dir() -> PathBuf {
    root().join("tests/fuse_conv_bn")
}

/// Every generated case: `<case>.qir` + `<case>.safetensors` (originals and `expected.*`).
#[test]
fn folded_parameters_are_bit_identical_to_torchao() {
    let cases = files_with_extension(&fixture_dir(), "qir");
    assert!(cases.len() >= 10, "fixtures missing: run python -m tools.gen_fuse_fixtures");
    let (mut tensors, mut elements) = (0, 0);
    for path in &cases {
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        let before = load(path);
        let mut after = before.clone();
        let (changed, cx) = fuse(&mut after);
        assert!(changed, "{case}: nothing folded");
        assert!(cx.warnings.is_empty(), "{case}: {:?}", cx.warnings);
        assert!(!print_module(&after).contains("batch_norm"), "{case}: a batch_norm is left");
        let (t, e) = assert_bit_identical(&case, &after, &expected_tensors(&path.with_extension("safetensors")));
        tensors += t;
        elements += e;
        let (diff, scale) = compare_outputs(&before, &after);
        println!("{case}: {t} tensors bit-identical; interpreter max |unfolded - folded| = {diff:.3e} (max |output| {scale:.3e})");
        let tolerance = if after.graphs[0].inputs().iter().any(|&v| after.graphs[0].value_type(v).dtype == DType::F64) {
            1e-12
        } else {
            1e-5
        };
        assert!(diff <= tolerance * scale.max(1.0), "{case}: outputs differ by {diff}");
    }
    println!("{} cases: {tensors} tensors, {elements} elements bit-identical to torchao", cases.len());
}

/// The examples themselves: the pass on `examples/<name>.qir` creates exactly the tensors
/// torchao folds from the same weights.
#[test]
fn examples_fold_like_torchao() {
    for name in ["small_cnn", "resnet_basic_block", "mobilenetv2_inverted_residual"] {
        let before = load(&root().join(format!("examples/{name}.qir")));
        let mut after = before.clone();
        let (changed, cx) = fuse(&mut after);
        assert!(changed && cx.warnings.is_empty(), "{name}: {:?}", cx.warnings);
        let text = print_module(&after);
        assert!(!text.contains("batch_norm") && !text.contains("running_var"), "{name}:\n{text}");
        let expected = expected_tensors(&fixture_dir().join(format!("example_{name}.safetensors")));
        let (t, e) = assert_bit_identical(name, &after, &expected);
        let (diff, scale) = compare_outputs(&before, &after);
        println!("{name}: {t} tensors ({e} elements) bit-identical; interpreter max |unfolded - folded| = {diff:.3e} (max |output| {scale:.3e})");
        assert!(diff <= 1e-4 * scale.max(1.0), "{name}: outputs differ by {diff}");

        // Idempotent: a second run changes nothing.
        let mut again = after.clone();
        let (changed, _) = fuse(&mut again);
        assert!(!changed, "{name}: a second run changed the module");
        assert_eq!(print_module(&again), text);
    }
}

/// The pattern skips say why, at the batch norm.
#[test]
fn skipped_patterns_warn() {
    let warnings = |case: &str| -> String {
        let path = root().join("tests/passes/fuse-conv-bn").join(case);
        let mut module = load(&path);
        let (_, cx) = fuse(&mut module);
        let mut files = Files::new();
        let id = files.add(case.to_string(), std::fs::read_to_string(&path).unwrap());
        let text = render(&files, id, &cx.warnings);
        assert!(cx.warnings.iter().all(|d| !d.is_error()), "{text}");
        // A second run warns the same and changes nothing.
        let (changed, again) = fuse(&mut module.clone());
        assert!(!changed, "{case}: not idempotent");
        assert_eq!(again.warnings.len(), cx.warnings.len(), "{case}");
        text
    };

    let text = warnings("linear_3d_input.qir");
    assert!(text.contains("warning: `%bn` is not folded into `%fc`: the linear input is 3-D"), "{text}");
    assert!(text.contains("pytorch/ao#4116"), "{text}");

    let text = warnings("other_users.qir");
    assert_eq!(text.matches("warning:").count(), 4, "{text}");
    assert!(text.contains("`%conv` has other users besides the batch_norm"), "{text}");
    assert!(text.contains("PT2E folds it anyway"), "{text}");

    let text = warnings("shared_weight.qir");
    assert_eq!(text.matches("warning:").count(), 3, "{text}");
    assert!(text.contains("whose batch_norm `%bn2` has other parameters"), "{text}");
    assert!(text.contains("fake_fuse"), "{text}");
    assert!(text.contains("which does not fold a batch_norm of its own"), "{text}");

    let text = warnings("not_constant.qir");
    assert!(text.contains("the weight `%w` is a graph input"), "{text}");
    assert!(text.contains("the running variance `%var` is computed by `mul`"), "{text}");

    let text = warnings("weights_keys.qir");
    assert_eq!(text.matches("warning:").count(), 2, "{text}");
    assert!(text.contains("its weight is also read by function `@g`"), "{text}");
    assert!(text.contains("its weight is also read by function `@f`"), "{text}");

    for quiet in ["conv2d_bias.qir", "weights_file.qir", "chain_and_meta.qir", "bn_not_after_conv.qir", "noop.qir"] {
        assert_eq!(warnings(quiet), "", "{quiet}");
    }
}

/// Parameter types the pass does not fold, and an unbatched conv.
#[test]
fn unsupported_types_and_unbatched_input_warn() {
    let source = r#"module {
  func @half(%x: f16[1,2,2,2]) -> f16[1,2,2,2] {
    %w = const {value = [[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]} : f16[2,2,1,1]
    %conv = conv2d(%x, %w) : f16[1,2,2,2]
    %g = const {value = [1.0, 1.0]} : f16[2]
    %bn = batch_norm(%conv, %g, %g, %g, %g) : f16[1,2,2,2]
    return %bn
  }
  func @mixed(%x: f32[1,2,2,2]) -> f32[1,2,2,2] {
    %w = const {value = [[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]} : f32[2,2,1,1]
    %conv = conv2d(%x, %w) : f32[1,2,2,2]
    %g = const {value = [1.0, 1.0]} : f64[2]
    %bn = batch_norm(%conv, %g, %g, %g, %g) : f32[1,2,2,2]
    return %bn
  }
  func @unbatched(%x: f32[1,5]) -> f32[2,3] {
    %w = const {value = [[[1.0, 1.0, 1.0]], [[2.0, 2.0, 2.0]]]} : f32[2,1,3]
    %conv = conv1d(%x, %w) : f32[2,3]
    %g = const {value = [1.0, 1.0, 1.0]} : f32[3]
    %bn = batch_norm(%conv, %g, %g, %g, %g) : f32[2,3]
    return %bn
  }
}
"#;
    let mut module = parse_module(source, None).unwrap_or_else(|e| panic!("{e:?}"));
    let (changed, cx) = fuse(&mut module);
    assert!(!changed);
    let mut files = Files::new();
    let id = files.add("types.qir".to_string(), source.to_string());
    let text = render(&files, id, &cx.warnings);
    assert!(text.contains("its parameters are f16, f16, f16, f16, f16"), "{text}");
    assert!(text.contains("its parameters are f32, f64, f64, f64, f64"), "{text}");
    assert!(text.contains("the conv input `%x` is unbatched"), "{text}");
}

/// `qc examples/small_cnn.qir -p fuse-conv-bn -o out.qir` writes out.safetensors beside it, the
/// output reads it, and `qc run` on the output gives what the unfused model gives.
#[test]
fn cli_writes_folded_weights_that_run() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuse_conv_bn_cli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = root().join("examples/small_cnn.qir");
    let out = dir.join("out.qir");
    let status = Command::new(env!("CARGO_BIN_EXE_qc"))
        .args([model.to_str().unwrap(), "-p", "fuse-conv-bn", "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(dir.join("out.safetensors").exists());
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("weights \"out.safetensors\""), "{text}");
    assert!(
        text.contains("%conv2.weight_bias = weight {key = \"conv2.weight_bias\"} : f32[32] loc(\"conv2\")"),
        "{text}"
    );
    assert!(!text.contains("batch_norm"), "{text}");

    // The written file holds the folded tensors (bit-identical to torchao), and the unchanged
    // ones copied from the input's file.
    let written = WeightFile::open(&dir.join("out.safetensors")).unwrap();
    let mut keys = written.keys();
    keys.sort_unstable();
    assert_eq!(keys, ["conv1.bias", "conv1.weight", "conv2.weight", "conv2.weight_bias", "fc.bias", "fc.weight"]);
    for (key, want) in expected_tensors(&fixture_dir().join("example_small_cnn.safetensors")) {
        assert!(written.tensor(&key).unwrap().bit_eq(&want), "{key}");
    }

    // `qc run` on both, same input.
    let x = random_inputs(&load(&model), 7).remove(0);
    std::fs::write(dir.join("x.npy"), qc::interp::io::write_npy(&x)).unwrap();
    let x_arg = format!("x={}", dir.join("x.npy").display());
    let run = |qir: &Path, npy: &str| {
        let o = dir.join(npy);
        let status = Command::new(env!("CARGO_BIN_EXE_qc"))
            .args(["run", qir.to_str().unwrap(), "--input", &x_arg, "-o", o.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));
        qc::interp::io::read_npy(&std::fs::read(&o).unwrap()[..]).unwrap().to_f64_array()
    };
    let (unfused, fused) = (run(&model, "unfused.npy"), run(&out, "fused.npy"));
    let diff = unfused.iter().zip(fused.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let scale = unfused.iter().map(|a| a.abs()).fold(0.0, f64::max);
    println!("qc run small_cnn: max |unfused - fused| = {diff:.3e} (max |output| {scale:.3e})");
    assert!(diff <= 1e-5 * scale.max(1.0), "{diff}");
}
