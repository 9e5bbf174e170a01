//! PT2E's prepare and calibration on every example: `fuse-conv-bn,annotate,prepare,calibrate`
//! with each built-in quantizer, on seeded random calibration data, keeps the module valid after
//! every pass, leaves statistics on every stateful observer instance, and prints text that
//! parses again.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use qc::driver::compile_with;
use qc::interp::io::write_npz;
use qc::ir::attr::Attr;
use qc::ir::printer::print_module;
use qc::passes::manager::Instrumentation;
use qc::passes::registry::expand;
use qc::passes::PassContext;
use qc::tensor::Tensor;

const EXAMPLES: [&str; 4] =
    ["small_cnn.qir", "resnet_basic_block.qir", "mobilenetv2_inverted_residual.qir", "transformer_encoder_block.qir"];

/// Two batches of seeded values for every input of the example's first function.
fn calibration_data(module: &qc::ir::Module, path: &Path) {
    let g = &module.graphs[0];
    let mut state = 0x9E37_79B9u64;
    let arrays: Vec<(String, Tensor)> = g
        .inputs()
        .iter()
        .map(|&v| {
            let mut shape = g.value_type(v).static_shape().unwrap();
            shape[0] *= 2;
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
                })
                .collect();
            (g.value_name(v).to_string(), Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()))
        })
        .collect();
    let named: Vec<(String, &Tensor)> = arrays.iter().map(|(n, t)| (n.clone(), t)).collect();
    write_npz(std::fs::File::create(path).unwrap(), &named).unwrap();
}

#[test]
fn every_example_prepares_and_calibrates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("examples");
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let passes = expand(&["prepare-pt2e".into(), "calibrate".into()]).unwrap();
    for example in EXAMPLES {
        let source = std::fs::read_to_string(dir.join(example)).unwrap();
        let float = qc::syntax::parse_module(&source, Some(&dir)).unwrap();
        let data = scratch.join(format!("{example}.calib.npz"));
        calibration_data(&float, &data);
        for quantizer in ["xnnpack", "xnnpack-per-tensor", "x86"] {
            let cx = PassContext {
                quantizer: Some(quantizer.into()),
                calibration: Some(data.clone()),
                ..PassContext::default()
            };
            let inst = Instrumentation { verify_each: true, ..Default::default() };
            let compiled = compile_with(&source, Some(&dir), &passes, &inst, cx, &mut String::new())
                .unwrap_or_else(|e| panic!("{example} / {quantizer}: {}", e[0].message));
            assert!(compiled.warnings.is_empty(), "{example} / {quantizer}: {:?}", compiled.warnings[0].message);
            let g = &compiled.module.graphs[0];
            let mut instances = std::collections::BTreeMap::new();
            for op in g.ops().filter(|&op| g.op(op).def().name == "observer") {
                let kind = g.attr(op, "kind").and_then(Attr::as_str).unwrap_or_default();
                let id = g.attr(op, "instance").and_then(Attr::as_int).unwrap_or(0);
                let has_stats = g.attr(op, "stats").is_some();
                let entry = instances.entry(id).or_insert((kind.to_string(), false));
                entry.1 |= has_stats;
            }
            assert!(!instances.is_empty(), "{example} / {quantizer}: nothing was observed");
            for (id, (kind, has_stats)) in &instances {
                let stateless = matches!(kind.as_str(), "derived" | "fixed_qparams" | "placeholder");
                assert_eq!(*has_stats, !stateless, "{example} / {quantizer}: instance {id} ({kind})");
            }
            // The calibrated module prints as text qc reads back (its folded weights live in
            // memory until `-o` writes them, so only the syntax is checked here).
            let printed = print_module(&compiled.module);
            assert!(qc::syntax::parse(&printed).is_ok(), "{example} / {quantizer}: the output does not parse");
        }
    }
}
