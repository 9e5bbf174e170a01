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
//!
//! Diagnostics point at the whole op statement unless [`SourceSpans`] says where its parts were
//! written; lowering records them, so errors in source text land on the exact operand,
//! attribute or type.
//!
//! Invariants that belong to a layer above the IR come in as [`OpCheck`]s from the caller: the
//! IR knows an `observer` op's attributes, not what its statistics mean, so quantization hands
//! its check to the verifier ([`crate::quant::OP_CHECKS`]) instead of the verifier importing
//! quantization. The front end and the pass manager pass them; an extra check runs on each op
//! of its kind that passed the registry's checks, after the `weight` check and before the
//! annotation checks.

use rustc_hash::FxHashMap;

use super::entity::SideTable;
use super::graph::{Graph, Module, OpData, OpId, Use, User, ValueDef, ValueId};
use super::quant::{EdgeOrValue, SpecRef};
use super::types::TensorType;
use crate::diag::{Diag, Diagnostics, Span};
use crate::ops::{self, validate_attr_kind, Arity, Blame, OpDef, OpKind, Presence, Traits, TypeError};

/// Where the parts of each op were written: a side table that lowering fills so that verifier
/// diagnostics can label an operand, attribute or type rather than the whole statement. Ops
/// created by passes have no entry and are labelled by their own span.
#[derive(Clone, Debug, Default)]
pub struct SourceSpans {
    /// Per graph, by name.
    pub graphs: FxHashMap<String, GraphSpans>,
}

/// The spans of one function.
#[derive(Clone, Debug, Default)]
pub struct GraphSpans {
    pub ops: FxHashMap<OpId, OpSpans>,
    /// Each value name of the `return` statement.
    pub returns: Vec<Span>,
    /// Each result type of the signature.
    pub result_types: Vec<Span>,
}

/// The spans of one op statement.
#[derive(Clone, Debug, Default)]
pub struct OpSpans {
    /// The op name (`conv2d`).
    pub name: Span,
    /// Each operand as written (`%x`).
    pub operands: Vec<Span>,
    /// Each written attribute: its schema name, the key's span and the value's span.
    pub attrs: Vec<(&'static str, Span, Span)>,
    /// Each result type after the `:`.
    pub types: Vec<Span>,
}

/// A check of one kind of op that a layer above the IR adds to the verifier (see the module
/// doc): `check` runs on every `op` op that passed the verifier's own checks and pushes its
/// diagnostics, placed with the [`Locator`].
#[derive(Copy, Clone)]
pub struct OpCheck {
    /// The kind of op it applies to.
    pub op: OpKind,
    pub check: fn(&Graph, OpId, &Locator<'_>, &mut Diagnostics),
}

/// Verifies a module, running `checks` too; the result is empty when it is well-formed.
pub fn verify(module: &Module, checks: &[OpCheck]) -> Diagnostics {
    verify_with_spans(module, &SourceSpans::default(), checks)
}

/// Verifies a module, labelling diagnostics with the finer spans of `spans` where known.
pub fn verify_with_spans(module: &Module, spans: &SourceSpans, checks: &[OpCheck]) -> Diagnostics {
    let mut errors = Vec::new();
    let none = GraphSpans::default();
    for graph in &module.graphs {
        verify_graph(module, graph, spans.graphs.get(&graph.name).unwrap_or(&none), checks, &mut errors);
    }
    errors
}

/// Finds the written parts of one op, falling back to the statement's span.
pub struct Locator<'a> {
    /// The whole op statement.
    pub whole: Span,
    parts: Option<&'a OpSpans>,
}

impl Locator<'_> {
    fn name(&self) -> Span {
        self.parts.map_or(self.whole, |p| p.name)
    }

    fn operand(&self, i: usize) -> Option<Span> {
        self.parts.and_then(|p| p.operands.get(i).copied())
    }

    /// `key = value` of a written attribute.
    pub fn attr(&self, name: &str) -> Option<(Span, Span)> {
        self.parts?.attrs.iter().find(|(n, _, _)| *n == name).map(|&(_, k, v)| (k, v))
    }

    fn ty(&self, i: usize) -> Span {
        self.parts.and_then(|p| p.types.get(i).copied()).unwrap_or(self.whole)
    }
}

/// Numbers the ops in program order (from 1) and checks the order list's invariant: it links
/// every live op exactly once and no erased one. A pass that created an op without linking it, or
/// linked one twice (which would make the walk loop), is caught here; `false` stops the graph's
/// verification, since nothing else can be checked against a broken order.
fn link_positions(g: &Graph, position: &mut SideTable<OpId, u32>, errors: &mut Diagnostics) -> bool {
    let mut linked = 0usize;
    for op in g.ops() {
        let data = g.op(op);
        if *position.get(op) != 0 {
            errors.push(
                Diag::error(format!("internal: `{}` is linked twice in the program order", OpLabel(g, data)))
                    .at(data.span, "this op"),
            );
            return false;
        }
        if !data.alive {
            errors.push(
                Diag::error(format!("internal: the erased op `{}` is still in the program order", OpLabel(g, data)))
                    .at(data.span, "this op"),
            );
            return false;
        }
        linked += 1;
        position.set(op, linked as u32);
    }
    if linked != g.num_ops() {
        errors.push(Diag::error(format!(
            "internal: {} live op(s) of `@{}` are not in the program order",
            g.num_ops() - linked.min(g.num_ops()),
            g.name
        )));
        return false;
    }
    true
}

fn verify_graph(module: &Module, g: &Graph, spans: &GraphSpans, checks: &[OpCheck], errors: &mut Diagnostics) {
    // Position of each defining op in program order; inputs come before everything.
    // A dense table (0: not a live op), since every op is looked up.
    let mut position: SideTable<OpId, u32> = SideTable::with_capacity(g.num_op_ids());
    if !link_positions(g, &mut position, errors) {
        return;
    }
    // Searching each operand's use list would be quadratic for a value read by many ops (a
    // shared weight); this checks every use list in one pass.
    let recorded = g.recorded_uses();
    let def_position = |v: ValueId| -> Option<u32> {
        if !g.value_is_live(v) {
            return None;
        }
        match g.value(v).def {
            ValueDef::Input(_) => Some(0),
            ValueDef::Result(op, _) => Some(*position.get(op)).filter(|&p| p > 0),
        }
    };

    let mut operand_types: Vec<&TensorType> = Vec::new();
    for op in g.ops() {
        let data = g.op(op);
        let def = data.def();
        let at = Locator { whole: data.span, parts: spans.ops.get(&op) };
        let here = *position.get(op);
        let name = OpLabel(g, data);
        let mut bad_operands = false;
        for (i, &v) in data.operands.iter().enumerate() {
            match def_position(v) {
                Some(p) if p < here => {}
                Some(_) => {
                    bad_operands = true;
                    errors.push(
                        Diag::error(format!("`{name}` reads `%{}` before it is defined", g.value_name(v)))
                            .at(at.operand(i).unwrap_or(data.span), format!("operand {i} is defined later"))
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
            if !recorded.contains(Use { user: User::Op(op), index: i as u32 }) {
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
                    if let Err(message) = validate_attr_kind(schema.kind, v) {
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
            Err(error) => errors.push(infer_error(g, data, &at, &error)),
            Ok(inferred) => {
                for (i, (want, have)) in inferred.iter().zip(&declared).enumerate() {
                    if !want.compatible(have) {
                        let which = if declared.len() > 1 { format!("result {i}") } else { "the result".to_string() };
                        errors.push(
                            Diag::error(format!(
                                "type mismatch: {which} of `{}` is {want}, but it is declared {have}",
                                def.name
                            ))
                            .at(at.ty(i), format!("expected {want}"))
                            .with(at.name(), format!("`{}` produces {want}", def.name))
                            .help(format!(
                                "write `: {}`",
                                inferred.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
                            )),
                        );
                    }
                }
            }
        }

        if data.kind() == ops::WEIGHT {
            verify_weight(module, g, op, &at, &declared, errors);
        }
        for extra in checks.iter().filter(|c| c.op == data.kind()) {
            (extra.check)(g, op, &at, errors);
        }
        if let Some(annotation) = g.annotation(op) {
            if annotation.inputs.len() > n {
                errors.push(
                    Diag::error(format!("the annotation of `{name}` has more entries than operands"))
                        .at(data.span, "here"),
                );
            }
            let name = name.to_string();
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
        if !recorded.contains(Use { user: User::Output, index: i as u32 }) {
            errors.push(
                Diag::error(format!("internal: output {i} of `@{}` is not recorded as a use", g.name))
                    .at(g.output_span, "here"),
            );
        }
    }
    let (returned, declared) = (g.outputs().len(), g.output_types.len());
    if returned != declared {
        let signature = match (spans.result_types.first(), spans.result_types.last()) {
            (Some(first), Some(last)) => first.to(*last),
            _ => Span::NONE,
        };
        let values = |n: usize| if n == 1 { "1 value".to_string() } else { format!("{n} values") };
        let mut d = Diag::error(format!(
            "`@{}` returns {} but its signature declares {}",
            g.name,
            values(returned),
            values(declared)
        ));
        d = match spans.returns.get(declared..).filter(|extra| !extra.is_empty()) {
            Some(extra) => d.at(extra[0].to(extra[extra.len() - 1]), "not in the signature"),
            None => d.at(g.output_span, format!("returns {}", values(returned))),
        };
        d = d.with(signature, format!("the signature declares {}", values(declared)));
        errors.push(d);
    } else {
        for (i, (&v, &t)) in g.outputs().iter().zip(&g.output_types).enumerate() {
            let (have, want) = (g.value_type(v), g.type_of(t));
            if !have.compatible(want) {
                let here = spans.returns.get(i).copied().unwrap_or(g.output_span);
                errors.push(
                    Diag::error(format!("output {i} of `@{}` is {have}, but the signature declares {want}", g.name))
                        .at(here, format!("`%{}` is {have}", g.value_name(v)))
                        .with(spans.result_types.get(i).copied().unwrap_or(Span::NONE), format!("declared {want}"))
                        .with(g.value(v).span, "defined here"),
                );
            }
        }
    }
}

/// How messages name an op: `%` and its first result, or the op name when it has none. It is
/// formatted only when a message needs it.
struct OpLabel<'a>(&'a Graph, &'a OpData);

impl std::fmt::Display for OpLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1.result(0) {
            Some(r) => write!(f, "%{}", self.0.value_name(r)),
            None => f.write_str(self.1.def().name),
        }
    }
}

fn verify_weight(
    module: &Module,
    g: &Graph,
    op: OpId,
    at: &Locator<'_>,
    declared: &[TensorType],
    errors: &mut Diagnostics,
) {
    let key = g.attr(op, "key").and_then(|a| a.as_str()).unwrap_or_default();
    let key_span = at.attr("key").map_or(at.whole, |(_, v)| v);
    if let Some(created) = module.created_weights().get(key) {
        let shape: Vec<u64> = created.shape().iter().map(|&d| d as u64).collect();
        let actual = TensorType::fixed(created.dtype(), &shape);
        if let Some(want) = declared.first().filter(|want| !actual.compatible(want)) {
            errors.push(
                Diag::error(format!("weight `{key}` is {actual}, but declared {want}"))
                    .at(at.ty(0), format!("the tensor is {actual}")),
            );
        }
        return;
    }
    let Some(file) = module.weight_file() else {
        if module.weights.is_none() {
            errors.push(
                Diag::error(format!("weight `{key}` but the module declares no weights file"))
                    .at(at.name(), "needs a weights file")
                    .help("declare one at the top of the module: `weights \"model.safetensors\"`"),
            );
        }
        return;
    };
    let Some(info) = file.info(key) else {
        let mut d = Diag::error(format!("no tensor `{key}` in {}", file.path.display()))
            .at(key_span, "unknown weight key")
            .suggest(key, file.keys());
        let keys = file.keys();
        if crate::diag::closest(key, keys.iter().copied()).is_none() && !keys.is_empty() && keys.len() <= 8 {
            d = d.note(format!(
                "the file holds: {}",
                keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ));
        }
        errors.push(d);
        return;
    };
    let stored = info.dtype.clone().ok().map(|dtype| {
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        TensorType::fixed(dtype, &shape)
    });
    match (stored, declared.first()) {
        (None, _) => errors.push(
            Diag::error(format!(
                "weight `{key}` has element type {} which QIR does not support",
                info.dtype.clone().err().unwrap_or_default()
            ))
            .at(key_span, "stored with an unsupported element type")
            .note(format!("QIR element types: {}", super::types::DType::ALL.map(|d| d.name()).join(", "))),
        ),
        (Some(actual), Some(want)) if !actual.compatible(want) => errors.push(
            Diag::error(format!("weight `{key}` is {actual} in the file, but declared {want}"))
                .at(at.ty(0), format!("the file has {actual}"))
                .with(key_span, "read from here")
                .help(format!("write `: {actual}`")),
        ),
        _ => {}
    }
}

/// A type rule's error as a diagnostic. The first part it blames carries the primary label, the
/// others secondary ones; a blamed attribute left at its default gets a note instead. When nothing
/// blamed was written (the op as a whole, or an op a pass created), the label goes on the op,
/// with the types of its operands.
fn infer_error(g: &Graph, data: &OpData, at: &Locator<'_>, error: &TypeError) -> Diag {
    let def = data.def();
    let mut d = Diag::error(format!("invalid `{}`: {}", def.name, error.message));
    let mut primary = false;
    let mut notes = Vec::new();
    for blame in &error.blame {
        let (span, label) = match *blame {
            Blame::Operand(i) => match data.operands.get(i) {
                Some(&v) => (at.operand(i), format!("{} is {}", operand_role(def, i), g.value_type(v))),
                None => (None, String::new()),
            },
            Blame::Attr(name) => {
                let index = def.attr_index(name);
                let value = index.and_then(|i| g.attrs_of(data.attrs).get(i)?.as_ref());
                match (at.attr(name), value) {
                    // The source shows the value; the underline is enough.
                    (Some((k, v)), Some(_)) => (Some(k.to(v)), String::new()),
                    (None, Some(value))
                        if index.is_some_and(|i| matches!(def.attrs[i].presence, Presence::Default(_)))
                            && at.parts.is_some() =>
                    {
                        let mut text = String::new();
                        crate::ir::printer::write_attr(&mut text, value);
                        notes.push(format!("`{name}` is not written, so it has its default value {text}"));
                        (None, String::new())
                    }
                    _ => (None, String::new()),
                }
            }
            Blame::Op => (None, String::new()),
        };
        let Some(span) = span else { continue };
        if primary {
            d = d.with(span, label);
        } else {
            d = d.at(span, label);
            primary = true;
        }
    }
    if !primary {
        // Nothing specific: point at the op and show what it was given.
        d = d.at(at.name(), format!("in this `{}`", def.name));
        if data.operands.len() <= 4 {
            for (i, &v) in data.operands.iter().enumerate() {
                if let Some(span) = at.operand(i) {
                    d = d.with(span, format!("{} is {}", operand_role(def, i), g.value_type(v)));
                }
            }
        }
    }
    for note in notes {
        d = d.note(note);
    }
    d
}

/// `input`, `weight`, …, or `input 2` of a variadic op.
fn operand_role(def: &OpDef, i: usize) -> String {
    match def.operands.get(i) {
        Some(o) if o.arity != Arity::Variadic => format!("`{}`", o.name),
        _ => format!("input {i}"),
    }
}

fn verify_spec_ref(module: &Module, g: &Graph, name: &str, op: OpId, spec: &SpecRef, errors: &mut Diagnostics) {
    let span = g.op(op).span;
    let check = |target: &EdgeOrValue, errors: &mut Diagnostics| match *target {
        EdgeOrValue::Value(v) => {
            if !g.value_is_live(v) {
                errors.push(
                    Diag::error(format!("the annotation of `{name}` refers to an erased value")).at(span, "here"),
                );
            }
        }
        EdgeOrValue::Edge { value, consumer } => {
            if !g.value_is_live(value) || !g.op(consumer).alive || !reads_through_quant_ops(g, consumer, value) {
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

/// Whether `consumer` reads `value` directly or through the observer and quantize/dequantize
/// ops that `prepare` and `convert` put on the edge (an annotated edge survives them).
pub fn reads_through_quant_ops(g: &Graph, consumer: OpId, value: ValueId) -> bool {
    g.op(consumer).operands.iter().any(|&operand| {
        let mut v = operand;
        // Each step moves to an earlier op, so the walk ends.
        loop {
            if v == value {
                return true;
            }
            match g.producer(v) {
                Some(p) if g.op(p).kind().has(Traits::ON_QUANT_EDGE) => v = g.op(p).operands()[0],
                _ => return false,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    //! The verifier checks the program order itself (invariant 4 of `ir::graph`): an op created
    //! but never linked would otherwise verify and print as if it did not exist. Only code
    //! inside `ir` can make such a graph (passes build through the rewriter, which links every
    //! op it creates), so the check is tested here.

    use super::*;
    use crate::ir::builder::GraphBuilder;
    use crate::ir::graph::ResultSpec;
    use crate::ir::types::DType;

    /// `@f(%x) { %a = relu(%x); return %a }`, plus `%name = relu(%x)` created but not linked.
    fn module_with_unlinked_relu(name: &str) -> (Module, OpId) {
        let ty = TensorType::fixed(DType::F32, &[4]);
        let mut b = GraphBuilder::new("f");
        let x = b.add_input("x", ty.clone(), Span::NONE).expect("a fresh name");
        b.set_output_types(vec![ty.clone()]);
        let attrs = b.intern_attrs(ops::RELU.def().complete_attrs(Vec::new()));
        let a = b.push_op(
            ops::RELU,
            &[x],
            attrs,
            vec![ResultSpec { name: "a", ty: ty.clone(), span: Span::NONE }],
            Span::NONE,
        );
        let a = b.op(a.expect("a fresh name")).result(0).expect("relu has a result");
        b.set_outputs(vec![a]);
        let mut module = Module { graphs: vec![b.finish()], ..Module::default() };
        let g = &mut module.graphs[0];
        let result = ResultSpec { name, ty, span: Span::NONE };
        let lost = g.create_op(ops::RELU, &[x], attrs, vec![result], Span::NONE).expect("the name is free");
        (module, lost)
    }

    #[test]
    fn a_live_op_missing_from_the_order_is_an_error() {
        let (module, _) = module_with_unlinked_relu("lost");
        let errors = verify(&module, &[]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.contains("1 live op(s) of `@f` are not in the program order"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn a_linked_op_verifies() {
        let (mut module, op) = module_with_unlinked_relu("found");
        module.graphs[0].append(op);
        assert!(verify(&module, &[]).is_empty());
    }
}
