//! `reference-repr` on every example with calibration data: the default pipeline quantizes the
//! model, `reference-repr` rewrites a copy into integer arithmetic, and both run in the
//! interpreter on calibration samples.
//!
//! - Group by group, each rewritten quantize's integers are computed by the integer ops from the
//!   q/dq graph's own values and must be within one unit (LSB) of the q/dq graph's.
//! - End to end, the integer graph runs on its own and every output that is a dequantize must
//!   agree with the q/dq graph's within one LSB of its scale.
//!
//! The hand-written cases of `tests/passes/reference-repr/` (one per integer form) are run the
//! same way, end to end, on seeded random inputs.
//!
//! Run with `--nocapture` for the numbers: groups rewritten, LSB differences.

mod common;

use std::path::Path;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use rustc_hash::FxHashMap;

use qc::driver::compile_with;
use qc::interp::dataset::Dataset;
use qc::interp::{bind_inputs, eval_op, run_graph, RunOptions};
use qc::ir::attr::Attr;
use qc::ir::{Graph, Module};
use qc::passes::manager::{run_pipeline, Instrumentation};
use qc::passes::registry::{expand, find};
use qc::passes::PassContext;
use qc::tensor::Tensor;

use common::files::files_with_extension;

/// The examples with calibration data.
const EXAMPLES: [(&str, &str); 3] = [
    ("small_cnn.qir", "small_cnn_calib.npz"),
    ("transformer_encoder_block.qir", "transformer_encoder_block_calib.npz"),
    ("digits_cnn.qir", "digits_calib.npz"),
];
/// Calibration samples run per example.
const SAMPLES: usize = 16;
/// The quantizers compared: int8 (XNNPACK) and uint8 (x86) activations.
const QUANTIZERS: [&str; 2] = ["xnnpack", "x86"];

fn verified() -> Instrumentation {
    Instrumentation { verify_each: true, ..Default::default() }
}

/// The q/dq graph of `example` (the default pipeline) and its reference representation.
fn quantized(example: &str, calib: &str, quantizer: &str) -> (Module, Module) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let source = std::fs::read_to_string(dir.join(example)).unwrap();
    let cx =
        PassContext { calibration: Some(dir.join(calib)), quantizer: Some(quantizer.into()), ..PassContext::default() };
    let passes = expand(&["default".into()]).unwrap();
    let compiled = compile_with(&source, Some(&dir), &passes, &verified(), cx, &mut String::new())
        .unwrap_or_else(|e| panic!("{example}: {}", e[0].message));
    let reference = reference_of(&compiled.module, &format!("{example} / {quantizer}"));
    (compiled.module, reference)
}

/// The elements of an integer tensor.
fn ints(t: &Tensor) -> Vec<i64> {
    t.to_f64_array().iter().map(|&v| v as i64).collect()
}

/// The groups of the q/dq graph — quantize ops of an op (through a relu) reading a
/// dequantize — by the quantize's name: those the reference graph computes in integers, and
/// those it leaves.
fn groups(qdq: &Graph, reference: &Graph) -> (Vec<String>, Vec<String>) {
    let (mut rewritten, mut left) = (Vec::new(), Vec::new());
    for q in qdq.ops().filter(|&op| qdq.op(op).def().name == "quantize_per_tensor") {
        let Some(mut op) = qdq.producer(qdq.op(q).operands()[0]) else { continue };
        if qdq.op(op).def().name == "relu" {
            let Some(x) = qdq.producer(qdq.op(op).operands()[0]) else { continue };
            op = x;
        }
        let dequantized = |v| qdq.producer(v).is_some_and(|p| qdq.op(p).def().name == "dequantize_per_tensor");
        let reads_dequantize = qdq.op(op).operands().iter().any(|&v| dequantized(v));
        if !reads_dequantize {
            continue;
        }
        let name = qdq.value_name(qdq.op(q).result(0).unwrap()).to_string();
        let now =
            reference.value_by_name(&name).and_then(|v| reference.producer(v)).expect("the quantize's value stays");
        if reference.op(now).def().name == "quantize_per_tensor" {
            left.push(name)
        } else {
            rewritten.push(name)
        }
    }
    (rewritten, left)
}

/// Runs the reference graph op by op, each op reading the q/dq graph's value of an operand
/// when that graph has one of the same name and type, so each group starts from the same
/// integers as in the q/dq graph. Returns every value by name.
fn teacher_forced(
    module: &Module,
    g: &Graph,
    inputs: Vec<Tensor>,
    qdq: &FxHashMap<String, Arc<Tensor>>,
) -> FxHashMap<String, Arc<Tensor>> {
    let mut values: FxHashMap<String, Arc<Tensor>> = FxHashMap::default();
    for (&v, t) in g.inputs().iter().zip(inputs) {
        values.insert(g.value_name(v).to_string(), Arc::new(t));
    }
    for op in g.ops() {
        let operands: Vec<Arc<Tensor>> = g
            .op(op)
            .operands()
            .iter()
            .map(|&v| {
                let name = g.value_name(v);
                match qdq.get(name) {
                    Some(t) if t.dtype() == g.value_type(v).dtype => Arc::clone(t),
                    _ => Arc::clone(&values[name]),
                }
            })
            .collect();
        let refs: Vec<&Tensor> = operands.iter().map(|t| &**t).collect();
        let results = eval_op(module, g, op, &refs).unwrap_or_else(|d| panic!("{}", d.message));
        for (r, t) in g.op(op).results().zip(results) {
            values.insert(g.value_name(r).to_string(), Arc::new(t));
        }
    }
    values
}

/// Runs `reference-repr` on a copy of `module`.
fn reference_of(module: &Module, what: &str) -> Module {
    let mut reference = module.clone();
    let pass = find("reference-repr").expect("reference-repr is registered");
    run_pipeline(&mut reference, &[pass], &verified(), &mut PassContext::default(), &mut String::new())
        .unwrap_or_else(|e| panic!("{what}: reference-repr: {}", e[0].message));
    reference
}

/// How far apart two runs' outputs are: the largest difference among the outputs that are
/// dequantizes, in units (LSB) of their scale (both sides are multiples of it, up to float
/// rounding), if any output is one; and the largest absolute difference among the others.
fn output_differences(g: &Graph, a: &[(String, Arc<Tensor>)], b: &[(String, Arc<Tensor>)]) -> (Option<i64>, f64) {
    let (mut lsb, mut other) = (None, 0.0f64);
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let (x, y) = (x.to_f64_array(), y.to_f64_array());
        let abs = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        match output_scale(g, name) {
            Some(scale) => lsb = Some(lsb.unwrap_or(0).max((abs / scale).round() as i64)),
            None => other = other.max(abs),
        }
    }
    (lsb, other)
}

/// The scale of the dequantize producing the value `name`, if one does.
fn output_scale(g: &Graph, name: &str) -> Option<f64> {
    let op = g.producer(g.value_by_name(name)?)?;
    (g.op(op).def().name == "dequantize_per_tensor").then(|| g.attr(op, "scale").and_then(Attr::as_float)).flatten()
}

#[test]
fn integer_graphs_track_the_qdq_graphs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for ((example, calib), quantizer) in EXAMPLES.into_iter().flat_map(|e| QUANTIZERS.map(|q| (e, q))) {
        let (qdq_module, ref_module) = quantized(example, calib, quantizer);
        let example = format!("{example} / {quantizer}");
        let (qdq, reference) = (&qdq_module.graphs[0], &ref_module.graphs[0]);
        let (rewritten, left) = groups(qdq, reference);
        // (x86 leaves some models without groups: it quantizes no linear's output.)
        assert!(left.is_empty() || !rewritten.is_empty(), "{example}: no group was rewritten");
        let inputs = qdq.inputs().iter().map(|&v| (qdq.value_name(v).to_string(), qdq.value_type(v).clone())).collect();
        let mut data = Dataset::open(&dir.join(calib), inputs).unwrap();
        let (mut group_lsb, mut group_diffs, mut group_elems) = (0i64, 0usize, 0usize);
        let (mut outputs_lsb, mut output_abs) = (None, 0.0f64);
        for _ in 0..SAMPLES {
            let batch = data.next_batch().expect("enough samples").unwrap();
            let keep = RunOptions { keep_intermediates: true };
            let bound = bind_inputs(qdq, batch.clone()).unwrap();
            let ran = run_graph(&qdq_module, qdq, bound, &keep, None).unwrap();
            let qdq_values: FxHashMap<String, Arc<Tensor>> =
                ran.intermediates.iter().chain(&ran.outputs).map(|(n, t)| (n.clone(), Arc::clone(t))).collect();
            // Group by group, from the q/dq graph's integers.
            let forced =
                teacher_forced(&ref_module, reference, bind_inputs(reference, batch.clone()).unwrap(), &qdq_values);
            for name in &rewritten {
                let (a, b) = (ints(&qdq_values[name]), ints(&forced[name]));
                assert_eq!(a.len(), b.len(), "{example}: `{name}` changed shape");
                let diffs = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).filter(|&d| d != 0);
                group_lsb = diffs.clone().fold(group_lsb, i64::max);
                group_diffs += diffs.count();
                group_elems += a.len();
            }
            // End to end.
            let free =
                run_graph(&ref_module, reference, bind_inputs(reference, batch).unwrap(), &RunOptions::default(), None)
                    .unwrap_or_else(|d| panic!("{example}: the integer graph does not run: {}", d.message));
            let (lsb, abs) = output_differences(qdq, &ran.outputs, &free.outputs);
            outputs_lsb = outputs_lsb.max(lsb);
            output_abs = output_abs.max(abs);
        }
        let outputs = outputs_lsb.map_or_else(|| "no dequantized output".to_string(), |l| format!("max {l} LSB"));
        println!(
            "{example}: {} of {} groups rewritten (left: {left:?}); per group: max {group_lsb} LSB, {group_diffs} of \
             {group_elems} elements differ; end to end: dequantized outputs {outputs}, float outputs {output_abs:e} apart",
            rewritten.len(),
            rewritten.len() + left.len(),
        );
        assert!(group_lsb <= 1, "{example}: a group is {group_lsb} LSB off");
        assert!(outputs_lsb.unwrap_or(0) <= 1, "{example}: an output is {outputs} off");
    }
}

/// Seeded values in [-3, 3) for every input of `g`.
fn random_inputs(g: &Graph, seed: u64) -> FxHashMap<String, Tensor> {
    let mut state = seed;
    g.inputs()
        .iter()
        .map(|&v| {
            let shape = g.value_type(v).static_shape().unwrap();
            let data = (0..shape.iter().product())
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
                })
                .collect();
            (g.value_name(v).to_string(), Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()))
        })
        .collect()
}

#[test]
fn hand_written_groups_track_their_qdq_graphs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/passes/reference-repr");
    let cases = files_with_extension(&dir, "qir");
    assert!(!cases.is_empty());
    for path in cases {
        let what = path.file_name().unwrap().to_string_lossy().into_owned();
        let qdq = qc::syntax::parse_module(&std::fs::read_to_string(&path).unwrap(), Some(&dir)).unwrap();
        let reference = reference_of(&qdq, &what);
        let (g, r) = (&qdq.graphs[0], &reference.graphs[0]);
        let mut worst = 0;
        for seed in 0..16 {
            let inputs = random_inputs(g, seed);
            let a = run_graph(&qdq, g, bind_inputs(g, inputs.clone()).unwrap(), &RunOptions::default(), None).unwrap();
            let b = run_graph(&reference, r, bind_inputs(r, inputs).unwrap(), &RunOptions::default(), None)
                .unwrap_or_else(|d| panic!("{what}: the integer graph does not run: {}", d.message));
            let (lsb, other) = output_differences(g, &a.outputs, &b.outputs);
            assert_eq!(other, 0.0, "{what}: an output that is not a dequantize changed");
            worst = worst.max(lsb.unwrap_or(0));
        }
        assert!(worst <= 1, "{what}: an output is {worst} LSB off");
    }
}
