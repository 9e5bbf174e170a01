//! The interpreter end to end: every example runs, results do not depend on the thread count,
//! tensor files round-trip, and bad data gives a diagnostic.

use std::path::Path;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use qc::interp::io::{read_npy, read_npz, write_npy, write_npz};
use qc::interp::{bind_inputs, run_graph, RunOptions};
use qc::ir::Module;
use qc::syntax::parse_module;
use qc::tensor::Tensor;

fn example(name: &str) -> Module {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    parse_module(&std::fs::read_to_string(dir.join(name)).unwrap(), Some(&dir)).unwrap()
}

/// Deterministic pseudo-random f32 inputs for every graph input.
fn inputs_for(module: &Module) -> Vec<Tensor> {
    let graph = &module.graphs[0];
    graph
        .inputs()
        .iter()
        .map(|&v| {
            let shape = graph.value_type(v).static_shape().unwrap();
            let n: usize = shape.iter().product();
            let data = (0..n).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 4.0).collect();
            Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap())
        })
        .collect()
}

fn run(module: &Module) -> Vec<(String, Arc<Tensor>)> {
    run_graph(module, &module.graphs[0], inputs_for(module), &RunOptions::default(), None).unwrap().outputs
}

#[test]
fn every_example_runs() {
    for name in [
        "small_cnn.qir",
        "resnet_basic_block.qir",
        "mobilenetv2_inverted_residual.qir",
        "transformer_encoder_block.qir",
    ] {
        let module = example(name);
        let outputs = run(&module);
        let graph = &module.graphs[0];
        for ((_, t), &declared) in outputs.iter().zip(graph.output_types()) {
            let ty = graph.type_of(declared);
            assert_eq!(t.shape(), ty.static_shape().unwrap().as_slice(), "{name}");
            assert!(t.to_f64_array().iter().all(|v| v.is_finite()), "{name}: non-finite output");
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let module = example("resnet_basic_block.qir");
    let in_pool = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| run(&module))
    };
    let (one, two) = (in_pool(1), in_pool(2));
    for ((_, a), (_, b)) in one.iter().zip(&two) {
        assert!(a.bit_eq(b), "outputs differ between 1 and 2 threads");
    }
    let again = in_pool(2);
    assert!(two.iter().zip(&again).all(|((_, a), (_, b))| a.bit_eq(b)), "two runs differ");
}

#[test]
fn intermediates_are_kept_on_request() {
    let module = example("small_cnn.qir");
    let graph = &module.graphs[0];
    let result =
        run_graph(&module, graph, inputs_for(&module), &RunOptions { keep_intermediates: true }, None).unwrap();
    assert_eq!(result.intermediates.len(), graph.num_ops());
    assert!(result.intermediates.iter().any(|(n, _)| n == "bn1"));
}

#[test]
fn npy_and_npz_round_trip_every_dtype() {
    let tensors = vec![
        (
            "f32".to_string(),
            Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.5, -1.0, f32::NAN, 3.0, -0.0, 1e-30]).unwrap()),
        ),
        ("f64".to_string(), Tensor::F64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.1, 0.2, 0.3]).unwrap())),
        (
            "f16".to_string(),
            Tensor::F16(ArrayD::from_shape_vec(IxDyn(&[2]), vec![half::f16::from_f32(0.5), half::f16::MAX]).unwrap()),
        ),
        ("i8".to_string(), Tensor::I8(ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![-128, 127]).unwrap())),
        ("u8".to_string(), Tensor::U8(ArrayD::from_shape_vec(IxDyn(&[]), vec![255]).unwrap())),
        ("i64".to_string(), Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![i64::MIN, 7]).unwrap())),
        ("bool".to_string(), Tensor::Bool(ArrayD::from_shape_vec(IxDyn(&[2]), vec![true, false]).unwrap())),
        ("empty".to_string(), Tensor::F32(ArrayD::zeros(IxDyn(&[0, 4])))),
    ];
    for (name, t) in &tensors {
        let back = read_npy(&write_npy(t)).unwrap();
        assert!(back.bit_eq(t), "{name} did not round-trip through .npy");
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    let named: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    write_npz(&mut buf, &named).unwrap();
    buf.set_position(0);
    let back = read_npz(buf).unwrap();
    assert_eq!(back.len(), tensors.len());
    for ((n1, a), (n2, b)) in back.iter().zip(&tensors) {
        assert_eq!(n1, n2);
        assert!(a.bit_eq(b), "{n1} did not round-trip through .npz");
    }
}

#[test]
fn bad_tensor_files_are_errors() {
    let good = write_npy(&Tensor::F32(ArrayD::zeros(IxDyn(&[4, 4]))));
    assert!(read_npy(&good[..good.len() - 3]).unwrap_err().contains("truncated"));
    assert!(read_npy(b"not numpy at all").unwrap_err().contains("magic"));
    let mut big_endian = good.clone();
    let pos = big_endian.windows(3).position(|w| w == b"<f4").unwrap();
    big_endian[pos] = b'>';
    assert!(read_npy(&big_endian).unwrap_err().contains("'>f4'"));
    assert!(read_npz(std::io::Cursor::new(b"PK garbage".to_vec())).is_err());
}

#[test]
fn wrong_inputs_are_diagnostics() {
    let module = example("small_cnn.qir");
    let graph = &module.graphs[0];
    let bind = |name: &str, t: Tensor| {
        bind_inputs(graph, [(name.to_string(), t)].into_iter().collect()).map(|_| ()).unwrap_err()
    };
    let wrong_shape = bind("x", Tensor::F32(ArrayD::zeros(IxDyn(&[1, 3, 32, 31]))));
    assert!(wrong_shape.message.contains("input `%x`") && wrong_shape.primary.is_some(), "{}", wrong_shape.message);
    let wrong_dtype = bind("x", Tensor::F64(ArrayD::zeros(IxDyn(&[1, 3, 32, 32]))));
    assert!(wrong_dtype.message.contains("f64"), "{}", wrong_dtype.message);
    let unknown = bind("y", Tensor::F32(ArrayD::zeros(IxDyn(&[1]))));
    assert!(unknown.message.contains("no input named `y`"), "{}", unknown.message);
    assert!(bind_inputs(graph, Default::default()).unwrap_err().message.contains("no data for input `%x`"));
    // A runtime kernel error (an embedding index out of range) names the op.
    let source = "module {\n  func @f(%w: f32[4,2], %i: i64[2]) -> f32[2,2] {\n    %e = embedding(%w, %i) : f32[2,2]\n    return %e\n  }\n}\n";
    let m = parse_module(source, None).unwrap();
    let inputs = vec![
        Tensor::F32(ArrayD::zeros(IxDyn(&[4, 2]))),
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1, 9]).unwrap()),
    ];
    let err = run_graph(&m, &m.graphs[0], inputs, &RunOptions::default(), None).err().unwrap();
    assert!(err.message.contains("index 9 is out of range"), "{}", err.message);
}
