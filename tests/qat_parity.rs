//! Parity of qc's QAT flow with torchao's `prepare_qat_pt2e` and `convert_pt2e`, on the models
//! of `tests/qat/` (made by `tools/gen_qat_fixtures.py`; its docstring says what each file
//! holds). Per model:
//! 1. **prepare** — `prepare-qat-pt2e` with the fixture's quantizer gives PT2E's fake-quantize
//!    modules: the same names, observed values (through the QAT conv–bn rewrite), sharing,
//!    observer kinds and ranges;
//! 2. **calibration in train mode** — running `calib.npz` through the prepared graph
//!    (fake-quantizing observers, training batch norms updating their running statistics)
//!    gives each instance PyTorch's running min/max. qc's convolutions sum in another order
//!    than oneDNN, and `torch.sqrt` (MKL) is not correctly rounded, so values downstream of
//!    them may differ in the last bits: they must agree to 1e-5 relative, and the bit-exact
//!    count is printed;
//! 3. **convert of a trained model** — the model's parameters and fake-quantize statistics after
//!    five SGD steps in PyTorch (`trained.safetensors`, `trained_stats.npz`) are put into qc's
//!    prepared graph, and `convert-pt2e` (which folds the QAT conv–bn pattern) must freeze
//!    exactly PyTorch's int8 weights (`int_weights.npz`), bit for bit.
//!
//! `cargo test --test qat_parity -- --nocapture` prints the per-model numbers.

mod common;

use std::path::{Path, PathBuf};

use common::json::Json;
use qc::driver::compile_with;
use qc::interp::eval_op;
use qc::interp::io::read_tensors;
use qc::ir::attr::Attr;
use qc::ir::graph::User;
use qc::ir::rewriter::Rewriter;
use qc::ir::{Module, OpId};
use qc::passes::manager::Instrumentation;
use qc::passes::registry::{expand, find};
use qc::passes::PassContext;
use qc::quant::observer::ObserverState;
use qc::tensor::Tensor;

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qat");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/qat")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "expected the QAT fixtures in {}", root.display());
    dirs
}

fn expected(dir: &Path) -> Json {
    Json::parse(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
}

/// The qc quantizer named by the fixture's PT2E config.
fn quantizer(expected: &Json) -> &'static str {
    let config = expected.get("config").str();
    match (config.contains("x86"), config.contains("is_per_channel=True")) {
        (true, _) => "x86-qat",
        (false, true) => "xnnpack-qat",
        (false, false) => "xnnpack-qat-per-tensor",
    }
}

/// `model.qir` (reading `weights` instead of its own file) through `passes`.
fn compile(dir: &Path, weights: &str, passes: &[&str], calib: Option<&str>) -> Module {
    let source = std::fs::read_to_string(dir.join("model.qir"))
        .unwrap()
        .replace("weights \"model.safetensors\"", &format!("weights \"{weights}\""));
    let passes = expand(&passes.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap();
    let cx = PassContext {
        quantizer: Some(quantizer(&expected(dir)).into()),
        calibration: calib.map(|c| dir.join(c)),
        ..PassContext::default()
    };
    compile_with(&source, Some(dir), &passes, &Instrumentation::default(), cx, &mut String::new())
        .unwrap_or_else(|e| panic!("{}: {:?}", dir.display(), e[0].message))
        .module
}

fn torch_dtype(qc: &str) -> &'static str {
    match qc {
        "i8" => "int8",
        "u8" => "uint8",
        other => panic!("unexpected dtype {other}"),
    }
}

/// The observer kind qc uses for a PT2E fake-quantize module's wrapped observer.
fn observer_kind(pt2e: &str) -> &'static str {
    match pt2e {
        "MovingAverageMinMaxObserver" => "moving_average_minmax",
        "MovingAveragePerChannelMinMaxObserver" => "moving_average_per_channel_minmax",
        other => panic!("unexpected observer class {other}"),
    }
}

/// Each observer op: its name, the name of its instance's first observer, and the op.
fn observers(m: &Module) -> Vec<(String, String, OpId)> {
    let g = &m.graphs[0];
    let mut first_of_instance: Vec<(i64, String)> = Vec::new();
    let mut out = Vec::new();
    for op in g.ops() {
        if g.op(op).def().name != "observer" {
            continue;
        }
        let name = g.value_name(g.op(op).result(0).unwrap()).to_string();
        let instance = g.attr(op, "instance").and_then(Attr::as_int).unwrap_or(0);
        let leader = match first_of_instance.iter().find(|(i, _)| *i == instance) {
            Some((_, n)) => n.clone(),
            None => {
                first_of_instance.push((instance, name.clone()));
                name.clone()
            }
        };
        out.push((name, leader, op));
    }
    out
}

#[test]
fn prepare_qat_gives_pt2e_fake_quantize_modules() {
    for dir in fixtures() {
        let e = expected(&dir);
        let m = compile(&dir, "model.safetensors", &["prepare-qat-pt2e"], None);
        let qc = observers(&m);
        let pt = e.get("fake_quants").arr();
        assert_eq!(qc.len(), pt.len(), "{}: observer count", dir.display());
        for f in pt {
            let name = f.get("name").str();
            let &(_, ref leader, op) =
                qc.iter().find(|(n, ..)| n == name).unwrap_or_else(|| panic!("{}: no `{name}` in qc", dir.display()));
            let g = &m.graphs[0];
            let what = format!("{}: {name}", dir.display());
            assert_eq!(leader, f.get("instance").str(), "{what}: instance");
            assert_eq!(f.get("class").str(), "FusedMovingAvgObsFakeQuantize", "{what}");
            assert_eq!(
                g.attr(op, "kind").and_then(Attr::as_str),
                Some(observer_kind(f.get("observer").str())),
                "{what}"
            );
            let options = g.attr(op, "options").and_then(Attr::as_dict).expect("options");
            assert_eq!(options.get("fake_quant").and_then(Attr::as_str), Some("fused"), "{what}");
            let dtype = g.attr(op, "dtype").and_then(Attr::as_dtype).unwrap().to_string();
            assert_eq!(torch_dtype(&dtype), f.get("dtype").str(), "{what}: dtype");
            assert_eq!(g.attr(op, "qmin").and_then(Attr::as_int), Some(f.get("quant_min").int()), "{what}");
            assert_eq!(g.attr(op, "qmax").and_then(Attr::as_int), Some(f.get("quant_max").int()), "{what}");
            assert_eq!(g.attr(op, "qscheme").and_then(Attr::as_str), Some(f.get("qscheme").str()), "{what}");
        }
    }
}

/// |a − b| relative to the larger magnitude.
fn relative_error(a: f32, b: f32) -> f64 {
    if a == b {
        0.0
    } else {
        ((f64::from(a) - f64::from(b)) / f64::from(a.abs().max(b.abs()))).abs()
    }
}

/// A `stats` entry: a float, a list of floats, or a dense tensor of them.
fn stat_floats(a: &Attr) -> Vec<f32> {
    match (a.as_float(), a.as_tensor(), a) {
        (Some(v), _, _) => vec![v as f32],
        (_, Some(t), _) => floats(t),
        (_, _, Attr::List(items)) => items.iter().map(|i| i.as_float().expect("a float") as f32).collect(),
        _ => panic!("unexpected statistics {a:?}"),
    }
}

fn floats(t: &Tensor) -> Vec<f32> {
    t.to_f64_array().iter().map(|&v| v as f32).collect()
}

#[test]
fn train_mode_calibration_matches_pt2e() {
    for dir in fixtures() {
        let m = compile(&dir, "model.safetensors", &["prepare-qat-pt2e", "calibrate"], Some("calib.npz"));
        let pt = read_tensors(&dir.join("calibrated.npz")).expect("calibrated.npz");
        let (mut exact, mut total, mut worst) = (0, 0, 0.0f64);
        let g = &m.graphs[0];
        for (name, leader, op) in observers(&m) {
            if name != leader {
                continue;
            }
            let stats = g.attr(op, "stats").and_then(Attr::as_dict).unwrap_or_else(|| panic!("{name}: no stats"));
            for key in ["min_val", "max_val"] {
                let ours = stat_floats(stats.get(key).expect("stats"));
                let theirs = &pt.iter().find(|(k, _)| *k == format!("{name}.{key}")).expect("PT2E stats").1;
                let theirs = floats(theirs);
                assert_eq!(ours.len(), theirs.len(), "{name}.{key}");
                for (&a, &b) in ours.iter().zip(&theirs) {
                    let e = relative_error(a, b);
                    assert!(e <= 1e-5, "{}: {name}.{key}: qc {a} vs PT2E {b}", dir.display());
                    worst = worst.max(e);
                    total += 1;
                    exact += usize::from(e == 0.0);
                }
            }
        }
        println!("{}: {exact}/{total} running min/max bit-identical, worst relative {worst:.1e}", dir.display());
    }
}

#[test]
fn converting_a_trained_model_freezes_pt2e_int_weights() {
    for dir in fixtures() {
        let mut m = compile(&dir, "trained.safetensors", &["prepare-qat-pt2e"], None);
        let stats = read_tensors(&dir.join("trained_stats.npz")).expect("trained_stats.npz");
        let stat =
            |name: &str, key: &str| floats(&stats.iter().find(|(k, _)| *k == format!("{name}.{key}")).unwrap().1);
        let mut g = Rewriter::new(&mut m, 0);
        for op in g.op_ids() {
            if g.op(op).kind() != qc::ops::OBSERVER {
                continue;
            }
            let name = g.value_name(g.op(op).result(0).unwrap()).to_string();
            if !stats.iter().any(|(k, _)| *k == format!("{name}.min_val")) {
                continue;
            }
            let (min_val, max_val) = (stat(&name, "min_val"), stat(&name, "max_val"));
            let per_channel = g.attr(op, "kind").and_then(Attr::as_str).is_some_and(|k| k.contains("per_channel"));
            let state = if per_channel {
                ObserverState::PerChannel { min_val, max_val }
            } else {
                ObserverState::MinMax { min_val: min_val[0], max_val: max_val[0] }
            };
            g.update(op).set_attr("stats", Attr::Dict(state.to_dict())).expect("observers have stats");
        }
        for pass in ["convert", "fold-conv-bn-qat"] {
            (find(pass).unwrap().run)(&mut m, &mut PassContext::default())
                .unwrap_or_else(|e| panic!("{pass}: {:?}", e[0].message));
        }
        let expected = read_tensors(&dir.join("int_weights.npz")).expect("int_weights.npz");
        let g = &m.graphs[0];
        for (key, want) in &expected {
            let w = g.value_by_name(key).unwrap_or_else(|| panic!("{}: no `%{key}`", dir.display()));
            let quantize = g
                .uses(w)
                .iter()
                .find_map(|u| match u.user {
                    User::Op(op) if g.op(op).def().name.starts_with("quantize_per") => Some(op),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{}: `%{key}` is not quantized", dir.display()));
            let operands: Vec<Tensor> = g
                .op(quantize)
                .operands()
                .iter()
                .map(|&v| {
                    let p = g.producer(v).expect("constant operand");
                    eval_op(&m, g, p, &[]).expect("constant").remove(0)
                })
                .collect();
            let refs: Vec<&Tensor> = operands.iter().collect();
            let got = eval_op(&m, g, quantize, &refs).expect("quantize").remove(0);
            assert!(got.bit_eq(want), "{}: the int8 `{key}` differs from PT2E's", dir.display());
        }
        println!("{}: {} int8 weights bit-identical", dir.display(), expected.len());
    }
}
