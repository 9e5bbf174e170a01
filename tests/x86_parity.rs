//! Parity of qc's `annotate --quantizer x86` (and `prepare` after it) with torchao 0.18's
//! `X86InductorQuantizer` + `prepare_pt2e`, on small models exported from PyTorch.
//!
//! `tools/gen_x86_fixtures.py` exports each model with `torch.export(strict=True)`, runs
//! `prepare_pt2e` with `X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())`
//! (model `scoped` adds module-name and operator-type configurations, listed under `configs`),
//! and records in `tests/x86/<model>.json` every call_function node's annotation and every
//! observer module. `tests/x86/<model>.qir` is the same model written by hand in QIR, with the
//! FX node names as value names.
//!
//! Checked, node by node: annotated or not; the quantized inputs (argument → spec: dtype,
//! range, qscheme, channel axis, observer, eps — or the edge or value it shares); the output
//! spec. Then, observer by observer (qc names its observer ops as PT2E names its modules): the
//! value it observes, the ops that read it, its class and config, and which observers share
//! its instance.
//!
//! `cargo test --test x86_parity -- --nocapture` prints a line per model.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::json::Json;
use qc::driver::compile_with;
use qc::ir::attr::Attr;
use qc::ir::graph::{Graph, Module, User};
use qc::ir::quant::{EdgeOrValue, QSpec, SpecRef};
use qc::passes::manager::Instrumentation;
use qc::passes::PassContext;
use qc::quantizers::{QuantizationConfig, X86InductorQuantizer};

// ---- running qc -----------------------------------------------------------------------------

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/x86")
}

fn fixtures() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("tests/x86")
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "json").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    names
}

fn named_config(name: &Json) -> Option<QuantizationConfig> {
    match name {
        Json::Null => None,
        Json::Str(s) if s == "default" => Some(QuantizationConfig::x86_inductor(false)),
        Json::Str(s) if s == "default_reduce_range" => Some(QuantizationConfig::x86_inductor(true)),
        other => panic!("unknown config {other:?}"),
    }
}

/// The quantizer the fixture's `configs` describe; `None` for `--quantizer x86` itself.
fn quantizer(configs: &Json) -> Option<X86InductorQuantizer> {
    let configs = configs.arr();
    if let [only] = configs {
        if only.arr()[0].str() == "global" && only.arr()[2] == Json::Str("default".into()) {
            return None;
        }
    }
    let mut q = X86InductorQuantizer::new();
    for c in configs {
        let [kind, key, config] = c.arr() else { panic!("a config is [kind, key, config]") };
        let config = named_config(config);
        q = match kind.str() {
            "module_name" => q.set_module_name(key.str(), config),
            "operator_type" => q.set_operator_type(key.str(), config).unwrap(),
            "global" => q.set_global(config),
            other => panic!("unknown config kind {other}"),
        };
    }
    Some(q)
}

/// The model after `annotate` (and `prepare` if `prepare`), through the driver for the plain
/// `x86` quantizer and through the API for configured ones.
fn run(model: &str, configs: &Json, prepare: bool) -> Module {
    let path = fixture_dir().join(format!("{model}.qir"));
    let source = std::fs::read_to_string(&path).unwrap();
    let dir = fixture_dir();
    match quantizer(configs) {
        None => {
            let mut passes = vec![&qc::passes::annotate::PASS];
            if prepare {
                passes.push(&qc::passes::prepare::PASS);
            }
            let cx = PassContext { quantizer: Some("x86".into()), ..Default::default() };
            let inst = Instrumentation { verify_each: true, ..Default::default() };
            let mut dumps = String::new();
            compile_with(&source, Some(&dir), &passes, &inst, cx, &mut dumps)
                .unwrap_or_else(|d| panic!("{model}: {d:?}"))
                .module
        }
        Some(q) => {
            let mut module = qc::syntax::parse_module(&source, Some(&dir)).unwrap_or_else(|d| panic!("{model}: {d:?}"));
            q.annotate(&mut module).unwrap();
            if prepare {
                (qc::passes::prepare::PASS.run)(&mut module, &mut PassContext::default()).unwrap();
            }
            module
        }
    }
}

// ---- descriptions both sides are reduced to -------------------------------------------------

/// [`describe_fields`] of a spec or observer record of the fixture.
fn describe_json(j: &Json) -> String {
    describe_fields(
        j.get("dtype").str(),
        j.get("qmin").int(),
        j.get("qmax").int(),
        j.get("qscheme").str(),
        j.get("ch_axis").opt_int(),
        j.get("observer").str(),
        j.get("eps").float(),
    )
}

fn describe_fields(
    dtype: &str,
    qmin: i64,
    qmax: i64,
    qscheme: &str,
    ch_axis: Option<i64>,
    observer: &str,
    eps: Option<f64>,
) -> String {
    format!("{dtype} [{qmin}, {qmax}] {qscheme} axis {ch_axis:?} {observer} eps {eps:?}")
}

fn describe_json_spec(spec: &Json) -> Option<String> {
    match spec {
        Json::Null => None,
        _ => Some(if let Some(s) = spec.opt("spec") {
            assert_eq!(s.get("dynamic"), &Json::Bool(false));
            describe_json(s)
        } else if let Some(e) = spec.opt("shared_edge") {
            format!("shared({} -> {})", e.arr()[0].str(), e.arr()[1].str())
        } else {
            format!("shared({})", spec.get("shared_node").str())
        }),
    }
}

fn describe_qspec(q: &QSpec) -> String {
    assert!(!q.dynamic && q.fixed.is_none());
    let eps = q.options.get("eps").and_then(Attr::as_float);
    describe_fields(q.dtype.name(), q.qmin, q.qmax, q.qscheme.name(), q.ch_axis, &q.observer, eps)
}

fn describe_spec_ref(module: &Module, g: &Graph, spec: &SpecRef) -> Option<String> {
    match spec {
        SpecRef::None => None,
        SpecRef::Named(i) => Some(describe_qspec(&module.qspecs[*i].spec)),
        SpecRef::Inline(q) => Some(describe_qspec(q)),
        SpecRef::Shared(EdgeOrValue::Edge { value, consumer }) => {
            let op = g.op(*consumer).result(0).map_or("?", |r| g.value_name(r));
            Some(format!("shared({} -> {op})", g.value_name(*value)))
        }
        SpecRef::Shared(EdgeOrValue::Value(v)) => Some(format!("shared({})", g.value_name(*v))),
        SpecRef::Derived { .. } => Some("derived".into()),
    }
}

/// One node's annotation: `None` if unannotated, else (quantized inputs, output).
type Described = Option<(BTreeMap<String, String>, Option<String>)>;

fn pt2e_annotation(node: &Json) -> Described {
    let a = node.get("annotation");
    if *a == Json::Null {
        return None;
    }
    let inputs = a
        .get("inputs")
        .arr()
        .iter()
        .filter_map(|entry| {
            let [arg, spec] = entry.arr() else { panic!("an input is [arg, spec]") };
            describe_json_spec(spec).map(|d| (arg.str().to_string(), d))
        })
        .collect();
    Some((inputs, describe_json_spec(a.get("output"))))
}

fn qc_annotation(module: &Module, g: &Graph, name: &str) -> Described {
    let value = g.value_by_name(name).unwrap_or_else(|| panic!("no value %{name} in the QIR"));
    let op = g.producer(value).unwrap_or_else(|| panic!("%{name} is not an op result"));
    let a = g.annotation(op)?;
    let operands = &g.op(op).operands();
    let mut inputs = BTreeMap::new();
    for (i, spec) in a.inputs.iter().enumerate() {
        if let Some(d) = describe_spec_ref(module, g, spec) {
            let arg = g.value_name(operands[i]).to_string();
            if let Some(previous) = inputs.insert(arg.clone(), d.clone()) {
                assert_eq!(previous, d, "%{name}: operand %{arg} read twice with different specs");
            }
        }
    }
    let output = a.output.as_ref().and_then(|o| describe_spec_ref(module, g, o));
    Some((inputs, output))
}

/// An observer: what it observes (directly, and with observers stripped), who reads it, its
/// config and its instance (the lowest-numbered observer of the same instance).
type ObserverRecord = (String, String, Vec<String>, String, String);

fn observer_number(name: &str) -> u64 {
    name.rsplit('_').next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

fn pt2e_observers(fixture: &Json) -> BTreeMap<String, ObserverRecord> {
    fixture
        .get("observers")
        .arr()
        .iter()
        .map(|o| {
            let config = describe_json(o);
            let users = o.get("users").arr().iter().map(|u| u.str().to_string()).collect();
            let record = (
                o.get("observes").str().to_string(),
                o.get("observes_value").str().to_string(),
                users,
                config,
                o.get("instance").str().to_string(),
            );
            (o.get("name").str().to_string(), record)
        })
        .collect()
}

fn qc_observers(g: &Graph) -> BTreeMap<String, ObserverRecord> {
    let attr_int = |op, key| g.attr(op, key).and_then(Attr::as_int);
    let observers: Vec<_> = g.ops().filter(|&op| g.op(op).def().name == "observer").collect();
    let instance_of = |op| attr_int(op, "instance").unwrap_or(0);
    let name_of = |op: qc::ir::graph::OpId| g.value_name(g.op(op).result(0).unwrap()).to_string();
    let mut first: BTreeMap<i64, String> = BTreeMap::new();
    for &op in &observers {
        let name = name_of(op);
        let slot = first.entry(instance_of(op)).or_insert_with(|| name.clone());
        if observer_number(&name) < observer_number(slot) {
            *slot = name;
        }
    }
    let is_observer = |v| g.producer(v).is_some_and(|p| g.op(p).def().name == "observer");
    observers
        .iter()
        .map(|&op| {
            let observed = g.op(op).operands()[0];
            let mut value = observed;
            while is_observer(value) {
                value = g.op(g.producer(value).unwrap()).operands()[0];
            }
            let result = g.op(op).result(0).unwrap();
            let mut users: Vec<String> = g
                .uses(result)
                .iter()
                .map(|u| match u.user {
                    User::Op(user) => name_of(user),
                    User::Output => "output".to_string(),
                })
                .collect();
            users.sort();
            users.dedup();
            let kind = g.attr(op, "kind").and_then(Attr::as_str).unwrap_or_default().to_string();
            let dtype = match g.attr(op, "dtype") {
                Some(Attr::DType(d)) => d.name(),
                _ => "?",
            };
            let qscheme = g.attr(op, "qscheme").and_then(Attr::as_str).unwrap_or("per_tensor_affine").to_string();
            let eps = match g.attr(op, "options") {
                Some(Attr::Dict(d)) => d.get("eps").and_then(Attr::as_float),
                _ => None,
            };
            let config = describe_fields(
                dtype,
                attr_int(op, "qmin").unwrap(),
                attr_int(op, "qmax").unwrap(),
                &qscheme,
                attr_int(op, "ch_axis"),
                &kind,
                eps,
            );
            let record = (
                g.value_name(observed).to_string(),
                g.value_name(value).to_string(),
                users,
                config,
                first[&instance_of(op)].clone(),
            );
            (name_of(op), record)
        })
        .collect()
}

#[test]
fn x86_annotations_and_observers_match_torchao() {
    let models = fixtures();
    assert!(models.len() >= 3, "expected the fixtures of tools/gen_x86_fixtures.py in tests/x86");
    let mut failures = Vec::new();
    for model in &models {
        let text = std::fs::read_to_string(fixture_dir().join(format!("{model}.json"))).unwrap();
        let fixture = Json::parse(&text);
        let configs = fixture.get("configs");

        let module = run(model, configs, false);
        let g = &module.graphs[0];
        let nodes = fixture.get("annotations").arr();
        let mut annotated = 0;
        for node in nodes {
            let name = node.get("name").str();
            let expected = pt2e_annotation(node);
            let actual = qc_annotation(&module, g, name);
            annotated += usize::from(expected.is_some());
            if expected != actual {
                failures.push(format!("{model}: %{name}\n  torchao: {expected:?}\n  qc:      {actual:?}"));
            }
        }
        // Every op qc annotated is a node torchao has.
        for op in g.ops() {
            let name = g.value_name(g.op(op).result(0).unwrap());
            if g.annotation(op).is_some() && !nodes.iter().any(|n| n.get("name").str() == name) {
                failures.push(format!("{model}: qc annotates %{name}, which torchao's graph lacks"));
            }
        }

        let prepared = run(model, configs, true);
        let expected = pt2e_observers(&fixture);
        let actual = qc_observers(&prepared.graphs[0]);
        for name in expected.keys().chain(actual.keys().filter(|k| !expected.contains_key(*k))) {
            if expected.get(name) != actual.get(name) {
                failures.push(format!(
                    "{model}: observer {name}\n  torchao: {:?}\n  qc:      {:?}",
                    expected.get(name),
                    actual.get(name)
                ));
            }
        }
        let instances: std::collections::BTreeSet<_> = expected.values().map(|r| &r.4).collect();
        println!(
            "{model}: {annotated}/{} nodes annotated, {} observers in {} instances; non-strict export agrees: {:?}",
            nodes.len(),
            expected.len(),
            instances.len(),
            fixture.get("nonstrict_agrees")
        );
    }
    assert!(failures.is_empty(), "{} differences from torchao:\n{}", failures.len(), failures.join("\n"));
}

/// The fixtures' QIR files are what `gen_x86_fixtures.py` checked them against: they compile.
#[test]
fn fixture_models_compile() {
    for model in fixtures() {
        let source = std::fs::read_to_string(fixture_dir().join(format!("{model}.qir"))).unwrap();
        qc::syntax::parse_module(&source, Some(&fixture_dir())).unwrap_or_else(|d| panic!("{model}: {d:?}"));
    }
}
