//! The verifier: checks every invariant of a module and reports all violations, not just the
//! first. It runs after lowering and (by default) after every pass.
//!
//! Checked, per graph:
//! - every operand is a live value defined earlier in program order;
//! - use lists match the operands and outputs exactly;
//! - operand counts, attribute presence and kinds follow the op's registry entry;
//! - declared result types agree with the registry's type rule;
//! - `weight` ops name a tensor of the weights file with the declared dtype and shape;
//! - annotations refer to live values and edges, and have at most one entry per operand;
//! - returned values are live and match the signature's types.

use rustc_hash::FxHashMap;

use super::graph::{Graph, Module, OpId, Use, User, ValueDef, ValueId};
use super::quant::{EdgeOrValue, SpecRef};
use super::types::TensorType;
use crate::diag::{Diag, Diagnostics};
use crate::ops::{check_attr_kind, Presence};

/// Verifies a module; the result is empty when it is well-formed.
pub fn verify(module: &Module) -> Diagnostics {
    let mut errors = Vec::new();
    for graph in &module.graphs {
        verify_graph(module, graph, &mut errors);
    }
    errors
}

fn verify_graph(module: &Module, g: &Graph, errors: &mut Diagnostics) {
    // Position of each defining op in program order; inputs come before everything.
    let mut position: FxHashMap<OpId, usize> = FxHashMap::default();
    position.reserve(g.num_ops());
    for (i, op) in g.ops().enumerate() {
        position.insert(op, i + 1);
    }
    let def_position = |v: ValueId| -> Option<usize> {
        if !g.value(v).alive {
            return None;
        }
        match g.value(v).def {
            ValueDef::Input(_) => Some(0),
            ValueDef::Result(op, _) => position.get(&op).copied(),
        }
    };

    let mut operand_types: Vec<&TensorType> = Vec::new();
    for op in g.ops() {
        let data = g.op(op);
        let def = data.def();
        let here = position[&op];
        let name = data.result(0).map_or_else(|| def.name.to_string(), |r| format!("%{}", g.value_name(r)));
        let mut bad_operands = false;
        for (i, &v) in data.operands.iter().enumerate() {
            match def_position(v) {
                Some(p) if p < here => {}
                Some(_) => {
                    bad_operands = true;
                    errors.push(
                        Diag::error(format!("`{name}` reads `%{}` before it is defined", g.value_name(v)))
                            .at(data.span, format!("operand {i} is defined later"))
                            .with(g.value(v).span, "defined here"),
                    );
                }
                None => {
                    bad_operands = true;
                    errors.push(
                        Diag::error(format!("`{name}` reads an erased value (operand {i})"))
                            .at(data.span, "in this op"),
                    );
                }
            }
            if !g.uses(v).contains(&Use { user: User::Op(op), index: i as u32 }) {
                errors.push(
                    Diag::error(format!("internal: the use of `%{}` by `{name}` is not recorded", g.value_name(v)))
                        .at(data.span, "in this op"),
                );
            }
        }

        let (min, max) = def.operand_count_range();
        let n = data.operands.len();
        if n < min || max.is_some_and(|m| n > m) {
            errors.push(
                Diag::error(format!("`{}` has {n} operands, which its signature does not allow", def.name))
                    .at(data.span, "here"),
            );
            continue;
        }
        if data.num_results() != def.num_results {
            errors.push(
                Diag::error(format!("`{}` must have {} results", def.name, def.num_results)).at(data.span, "here"),
            );
            continue;
        }

        let attrs = g.attrs_of(data.attrs);
        let mut attrs_ok = attrs.len() == def.attrs.len();
        for (schema, value) in def.attrs.iter().zip(attrs) {
            match value {
                None if schema.presence != Presence::Optional => {
                    attrs_ok = false;
                    errors
                        .push(Diag::error(format!("`{name}` lacks attribute `{}`", schema.name)).at(data.span, "here"));
                }
                Some(v) => {
                    if let Err(message) = check_attr_kind(schema.kind, v.clone()) {
                        attrs_ok = false;
                        errors.push(
                            Diag::error(format!("invalid attribute `{}` on `{name}`", schema.name))
                                .at(data.span, message),
                        );
                    }
                }
                None => {}
            }
        }
        if bad_operands || !attrs_ok {
            continue;
        }

        operand_types.clear();
        operand_types.extend(data.operands.iter().map(|&v| g.value_type(v)));
        let declared: Vec<TensorType> = data.results().map(|r| g.value_type(r).clone()).collect();
        match def.infer(&operand_types, attrs, &declared) {
            Err(message) => {
                errors.push(Diag::error(format!("invalid `{}`: {message}", def.name)).at(data.span, "in this op"))
            }
            Ok(inferred) => {
                for (i, (want, have)) in inferred.iter().zip(&declared).enumerate() {
                    if !want.compatible(have) {
                        let which = if declared.len() > 1 { format!("result {i}") } else { "the result".to_string() };
                        errors.push(
                            Diag::error(format!(
                                "type mismatch: {which} of `{}` is {want}, but it is declared {have}",
                                def.name
                            ))
                            .at(data.span, format!("declared {have}"))
                            .help(format!(
                                "write `: {}`",
                                inferred.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
                            )),
                        );
                    }
                }
            }
        }

        if def.name == "weight" {
            verify_weight(module, g, op, &declared, errors);
        }
        if let Some(annotation) = g.annotation(op) {
            if annotation.inputs.len() > n {
                errors.push(
                    Diag::error(format!("the annotation of `{name}` has more entries than operands"))
                        .at(data.span, "here"),
                );
            }
            let specs = annotation.inputs.iter().chain(&annotation.output);
            for spec in specs {
                verify_spec_ref(module, g, &name, op, spec, errors);
            }
        }
    }

    for (i, &v) in g.outputs().iter().enumerate() {
        if def_position(v).is_none() {
            errors.push(Diag::error(format!("`@{}` returns an erased value", g.name)).at(g.output_span, "here"));
            continue;
        }
        if !g.uses(v).contains(&Use { user: User::Output, index: i as u32 }) {
            errors.push(
                Diag::error(format!("internal: output {i} of `@{}` is not recorded as a use", g.name))
                    .at(g.output_span, "here"),
            );
        }
    }
    if g.outputs().len() != g.output_types.len() {
        errors.push(
            Diag::error(format!(
                "`@{}` returns {} values but its signature declares {}",
                g.name,
                g.outputs().len(),
                g.output_types.len()
            ))
            .at(g.output_span, "here"),
        );
    } else {
        for (i, (&v, &t)) in g.outputs().iter().zip(&g.output_types).enumerate() {
            let (have, want) = (g.value_type(v), g.type_of(t));
            if !have.compatible(want) {
                errors.push(
                    Diag::error(format!("output {i} of `@{}` is {have}, but the signature declares {want}", g.name))
                        .at(g.output_span, format!("`%{}` is {have}", g.value_name(v)))
                        .with(g.value(v).span, "defined here"),
                );
            }
        }
    }
}

fn verify_weight(module: &Module, g: &Graph, op: OpId, declared: &[TensorType], errors: &mut Diagnostics) {
    let data = g.op(op);
    let key = g.attr(op, "key").and_then(|a| a.as_str()).unwrap_or_default();
    let Some(file) = &module.weight_file else {
        if module.weights.is_none() {
            errors.push(
                Diag::error(format!("weight `{key}` but the module declares no weights file"))
                    .at(data.span, "needs a weights file")
                    .help("declare one at the top of the module: `weights \"model.safetensors\"`"),
            );
        }
        return;
    };
    let Some(info) = file.info(key) else {
        errors.push(
            Diag::error(format!("no tensor `{key}` in {}", file.path.display()))
                .at(data.span, "unknown weight key")
                .suggest(key, file.keys()),
        );
        return;
    };
    match (info.tensor_type(), declared.first()) {
        (None, _) => errors.push(
            Diag::error(format!(
                "weight `{key}` has element type {} which QIR does not support",
                info.dtype.clone().err().unwrap_or_default()
            ))
            .at(data.span, "here"),
        ),
        (Some(actual), Some(want)) if !actual.compatible(want) => errors.push(
            Diag::error(format!("weight `{key}` is {actual} in the file, but declared {want}"))
                .at(data.span, "declared type differs from the file")
                .help(format!("write `: {actual}`")),
        ),
        _ => {}
    }
}

fn verify_spec_ref(module: &Module, g: &Graph, name: &str, op: OpId, spec: &SpecRef, errors: &mut Diagnostics) {
    let span = g.op(op).span;
    let check = |target: &EdgeOrValue, errors: &mut Diagnostics| match *target {
        EdgeOrValue::Value(v) => {
            if !g.value(v).alive {
                errors.push(
                    Diag::error(format!("the annotation of `{name}` refers to an erased value")).at(span, "here"),
                );
            }
        }
        EdgeOrValue::Edge { value, consumer } => {
            if !g.value(value).alive || !g.op(consumer).alive || !g.op(consumer).operands.contains(&value) {
                errors.push(
                    Diag::error(format!("the annotation of `{name}` refers to an edge that no longer exists"))
                        .at(span, "here"),
                );
            }
        }
    };
    match spec {
        SpecRef::None | SpecRef::Inline(_) => {}
        SpecRef::Named(i) => {
            if *i >= module.qspecs.len() {
                errors
                    .push(Diag::error(format!("the annotation of `{name}` refers to a missing spec")).at(span, "here"));
            }
        }
        SpecRef::Shared(target) => check(target, errors),
        SpecRef::Derived { from, spec } => {
            for target in from {
                check(target, errors);
            }
            verify_spec_ref(module, g, name, op, spec, errors);
        }
    }
}
