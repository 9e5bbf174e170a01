//! Lowering: syntax tree → IR. Resolves names (values, specs, ops), converts attributes against
//! each op's schema and fills defaults. Shape and type rules are left to the verifier, which
//! runs right after and reports with the same spans.

use std::path::Path;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::ast::{self, Spanned};
use crate::diag::{Diag, Diagnostics, Span};
use crate::ir::attr::{Attr, Dict};
use crate::ir::graph::{Graph, Module, OpId, ResultSpec, ValueId, WeightsDecl};
use crate::ir::quant::{Annotation, EdgeOrValue, NamedQSpec, QSpec, SpecRef};
use crate::ir::types::{DType, Dim, TensorType};
use crate::ops::{check_attr_kind, Arity, AttrKind, OpKind, Presence};
use crate::tensor::{Literal, Tensor};
use crate::weights::WeightFile;

/// Lowers a parsed module. `weights_dir` is where a relative `weights` path is resolved (the
/// `.qir` file's directory); `None` skips opening the weights file.
pub fn lower_module(ast: &ast::Module<'_>, weights_dir: Option<&Path>) -> Result<Module, Diagnostics> {
    let mut cx = Lowerer { errors: Vec::new(), qspec_index: FxHashMap::default() };
    let mut module =
        Module { name: ast.name.as_ref().map(|n| n.node.to_string()), span: ast.span, ..Module::default() };

    for item in &ast.items {
        match item {
            ast::Item::Weights(path) => {
                if let Some(previous) = &module.weights {
                    cx.errors.push(
                        Diag::error("the module declares `weights` twice")
                            .at(path.span, "second declaration")
                            .with(previous.span, "first declared here"),
                    );
                    continue;
                }
                if let Some(dir) = weights_dir {
                    match WeightFile::open(&dir.join(&path.node)) {
                        Ok(file) => module.weight_file = Some(Arc::new(file)),
                        Err(message) => cx.errors.push(
                            Diag::error("cannot load the weights file")
                                .at(path.span, message)
                                .help("the path is relative to the .qir file's directory"),
                        ),
                    }
                }
                module.weights = Some(WeightsDecl { path: path.node.clone(), span: path.span });
            }
            ast::Item::QSpec { name, dict } => {
                if let Some(&i) = cx.qspec_index.get(name.node) {
                    let first: &NamedQSpec = &module.qspecs[i];
                    cx.errors.push(
                        Diag::error(format!("quantization spec `@{}` is defined twice", name.node))
                            .at(name.span, "redefined here")
                            .with(first.span, "first defined here"),
                    );
                    continue;
                }
                if let Some(spec) = cx.qspec(dict) {
                    cx.qspec_index.insert(name.node, module.qspecs.len());
                    module.qspecs.push(NamedQSpec { name: name.node.to_string(), spec, span: name.span });
                }
            }
            ast::Item::Func(_) => {}
        }
    }

    let mut graph_names: FxHashMap<&str, Span> = FxHashMap::default();
    for item in &ast.items {
        if let ast::Item::Func(func) = item {
            if let Some(&first) = graph_names.get(func.name.node) {
                cx.errors.push(
                    Diag::error(format!("function `@{}` is defined twice", func.name.node))
                        .at(func.name.span, "redefined here")
                        .with(first, "first defined here"),
                );
                continue;
            }
            graph_names.insert(func.name.node, func.name.span);
            module.graphs.push(cx.func(func));
        }
    }
    if module.graphs.is_empty() && cx.errors.is_empty() {
        cx.errors.push(
            Diag::error("the module has no functions")
                .at(ast.span, "this module is empty")
                .help("add `func @main(%x: f32[4]) -> f32[4] { ... }`"),
        );
    }
    if cx.errors.is_empty() {
        Ok(module)
    } else {
        Err(cx.errors)
    }
}

struct Lowerer<'s> {
    errors: Diagnostics,
    qspec_index: FxHashMap<&'s str, usize>,
}

/// Where a name is defined in the function being lowered, for forward-reference diagnostics.
struct FuncScope<'s> {
    defined_at: FxHashMap<&'s str, Span>,
}

impl<'s> Lowerer<'s> {
    fn ty(&mut self, ty: &ast::Type<'_>) -> Option<TensorType> {
        let Some(dtype) = DType::from_name(ty.dtype.node) else {
            self.errors.push(
                Diag::error(format!("unknown element type `{}`", ty.dtype.node))
                    .at(ty.dtype.span, "not an element type")
                    .suggest(ty.dtype.node, DType::ALL.iter().map(|d| d.name()))
                    .note(format!("element types: {}", DType::ALL.map(|d| d.name()).join(", "))),
            );
            return None;
        };
        let mut shape = Vec::with_capacity(ty.dims.len());
        for dim in &ty.dims {
            match dim.node {
                None => shape.push(Dim::Dynamic),
                Some(n) if n >= 0 => shape.push(Dim::Known(n as u64)),
                Some(n) => {
                    self.errors.push(
                        Diag::error(format!("negative dimension {n}"))
                            .at(dim.span, "dimensions are sizes")
                            .help("write `?` for a dimension whose size is not known"),
                    );
                    return None;
                }
            }
        }
        Some(TensorType::new(dtype, shape))
    }

    fn func(&mut self, func: &ast::Func<'s>) -> Graph {
        let mut graph = Graph::new(func.name.node);
        graph.span = func.span;
        graph.output_span = func.results_span;

        // Every name the body defines, so a use before its definition can say where it is.
        let mut scope = FuncScope { defined_at: FxHashMap::default() };
        for op in &func.body {
            for r in &op.results {
                scope.defined_at.entry(r.node).or_insert(r.span);
            }
        }

        for (name, ty) in &func.params {
            let Some(t) = self.ty(ty) else { continue };
            if let Err(existing) = graph.add_input(name.node, t, name.span) {
                self.duplicate(&graph, name, existing);
            }
        }
        let output_types: Vec<_> = func.results.iter().filter_map(|t| self.ty(t)).collect();
        graph.output_types = output_types.into_iter().map(|t| graph.intern_type(t)).collect();

        let mut pending_quant: Vec<(OpId, &ast::QuantClause<'s>)> = Vec::new();
        for stmt in &func.body {
            if let Some(id) = self.op(&mut graph, stmt, &scope) {
                if let Some(q) = &stmt.quant {
                    pending_quant.push((id, q));
                }
            }
        }
        let outputs: Option<Vec<ValueId>> = func.ret.node.iter().map(|v| self.use_value(&graph, v, &scope)).collect();
        if let Some(outputs) = outputs {
            graph.set_outputs(outputs);
        }
        graph.output_span = func.ret.span;
        // Annotations may refer to ops later in the function, so they resolve once all exist.
        for (op, clause) in pending_quant {
            if let Some(annotation) = self.annotation(&graph, op, clause) {
                graph.extra_mut(op).annotation = Some(annotation);
            }
        }
        graph
    }

    fn duplicate(&mut self, graph: &Graph, name: &ast::Name<'_>, existing: ValueId) {
        self.errors.push(
            Diag::error(format!("value `%{}` is defined twice", name.node))
                .at(name.span, "redefined here")
                .with(graph.value(existing).span, "first defined here")
                .help("every value has one definition (SSA); give this one a new name"),
        );
    }

    fn use_value(&mut self, graph: &Graph, name: &ast::Name<'_>, scope: &FuncScope<'_>) -> Option<ValueId> {
        if let Some(v) = graph.value_by_name(name.node) {
            return Some(v);
        }
        let mut d = Diag::error(format!("use of undefined value `%{}`", name.node))
            .at(name.span, "not defined before this use");
        match scope.defined_at.get(name.node) {
            Some(&later) => d = d.with(later, "defined later here").help("ops must come after the values they read"),
            None => d = d.suggest(name.node, graph.value_names()),
        }
        self.errors.push(d);
        None
    }

    fn op(&mut self, graph: &mut Graph, stmt: &ast::OpStmt<'s>, scope: &FuncScope<'_>) -> Option<OpId> {
        let Some(kind) = OpKind::from_name(stmt.op.node) else {
            self.errors.push(
                Diag::error(format!("unknown op `{}`", stmt.op.node))
                    .at(stmt.op.span, "not in the op registry")
                    .suggest(stmt.op.node, OpKind::all().map(OpKind::name))
                    .note("`qc --list-ops` lists every op"),
            );
            return None;
        };
        let def = kind.def();
        let errors_before = self.errors.len();

        let operands: Vec<ValueId> = stmt.operands.iter().filter_map(|v| self.use_value(graph, v, scope)).collect();
        let (min, max) = def.operand_count_range();
        let n = stmt.operands.len();
        if n < min || max.is_some_and(|m| n > m) {
            let want = match max {
                Some(m) if m == min => format!("{min}"),
                Some(m) => format!("{min} to {m}"),
                None => format!("at least {min}"),
            };
            let signature: Vec<String> = def
                .operands
                .iter()
                .map(|o| match o.arity {
                    Arity::One => format!("%{}", o.name),
                    Arity::Optional => format!("[%{}]", o.name),
                    Arity::Variadic => format!("%{}...", o.name),
                })
                .collect();
            self.errors.push(
                Diag::error(format!(
                    "`{}` takes {want} operand{}, found {n}",
                    def.name,
                    if want == "1" { "" } else { "s" }
                ))
                .at(stmt.op.span.to(stmt.operands.last().map_or(stmt.op.span, |o| o.span)), "wrong number of operands")
                .note(format!("signature: {}({})", def.name, signature.join(", "))),
            );
        }

        if stmt.types.is_empty() {
            self.errors.push(
                Diag::error("missing result type")
                    .at(stmt.span, "this op has no `: type`")
                    .help("every op states its result types: `%y = relu(%x) : f32[1,16]`"),
            );
        } else if stmt.types.len() != stmt.results.len() {
            self.errors.push(
                Diag::error(format!("{} results but {} types", stmt.results.len(), stmt.types.len()))
                    .at(stmt.types[0].span.to(stmt.types[stmt.types.len() - 1].span), "one type per result"),
            );
        }
        if stmt.results.len() != def.num_results {
            self.errors.push(
                Diag::error(format!(
                    "`{}` has {} result{}, but {} are named",
                    def.name,
                    def.num_results,
                    if def.num_results == 1 { "" } else { "s" },
                    stmt.results.len()
                ))
                .at(stmt.results[0].span.to(stmt.results[stmt.results.len() - 1].span), "result names"),
            );
        }
        let types: Vec<TensorType> = stmt.types.iter().filter_map(|t| self.ty(t)).collect();
        let attrs = self.attrs(def, stmt, types.first());
        if self.errors.len() > errors_before || types.len() != stmt.results.len() {
            return None;
        }

        let attrs = graph.intern_attrs(def.complete_attrs(attrs?));
        let results = stmt
            .results
            .iter()
            .zip(types)
            .map(|(name, ty)| ResultSpec { name: name.node, ty, span: name.span })
            .collect();
        let op = match graph.create_op(kind, &operands, attrs, results, stmt.span) {
            Ok(op) => op,
            Err(existing) => {
                let name = stmt
                    .results
                    .iter()
                    .find(|r| graph.value_by_name(r.node) == Some(existing))
                    .unwrap_or(&stmt.results[0]);
                let name = name.clone();
                self.duplicate(graph, &name, existing);
                return None;
            }
        };
        graph.append(op);
        if let Some(loc) = &stmt.loc {
            let sym = graph.strings.intern(&loc.node);
            graph.op_mut(op).loc = Some(sym);
        }
        if let Some(meta) = &stmt.meta {
            if let Some(dict) = self.dict(&meta.node) {
                graph.extra_mut(op).meta = dict;
            }
        }
        Some(op)
    }

    /// The op's written attributes, positionally by schema (defaults are filled in later).
    fn attrs(
        &mut self,
        def: &'static crate::ops::OpDef,
        stmt: &ast::OpStmt<'_>,
        result_ty: Option<&TensorType>,
    ) -> Option<Vec<Option<Attr>>> {
        let mut slots: Vec<Option<Attr>> = vec![None; def.attrs.len()];
        let mut spans: Vec<Option<Span>> = vec![None; def.attrs.len()];
        let mut ok = true;
        for (key, value) in stmt.attrs.iter().flat_map(|a| &a.node) {
            let Some(index) = def.attr_index(key.node) else {
                let mut d = Diag::error(format!("`{}` has no attribute `{}`", def.name, key.node))
                    .at(key.span, "unknown attribute");
                d = if def.attrs.is_empty() {
                    d.note(format!("`{}` takes no attributes", def.name))
                } else {
                    d.suggest(key.node, def.attrs.iter().map(|a| a.name)).note(format!(
                        "attributes of `{}`: {}",
                        def.name,
                        def.attrs.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
                    ))
                };
                self.errors.push(d);
                ok = false;
                continue;
            };
            if let Some(first) = spans[index] {
                self.errors.push(
                    Diag::error(format!("attribute `{}` is given twice", key.node))
                        .at(key.span, "again here")
                        .with(first, "first given here"),
                );
                ok = false;
                continue;
            }
            spans[index] = Some(key.span);
            let schema = def.attrs[index];
            let converted = if schema.kind == AttrKind::Tensor {
                result_ty.and_then(|ty| self.tensor_literal(value, ty))
            } else {
                self.value(value).and_then(|v| match check_attr_kind(schema.kind, v) {
                    Ok(v) => Some(v),
                    Err(message) => {
                        self.errors
                            .push(Diag::error(format!("invalid value for `{}`", key.node)).at(value.span, message));
                        None
                    }
                })
            };
            match converted {
                Some(v) => slots[index] = Some(v),
                None => ok = false,
            }
        }
        for (index, schema) in def.attrs.iter().enumerate() {
            if schema.presence == Presence::Required && slots[index].is_none() && ok {
                self.errors.push(
                    Diag::error(format!("`{}` requires attribute `{}`", def.name, schema.name))
                        .at(stmt.op.span, format!("missing `{}`", schema.name))
                        .help(format!("add `{{{} = ...}}` ({})", schema.name, schema.kind.describe())),
                );
                ok = false;
            }
        }
        ok.then_some(slots)
    }

    /// A generic attribute value (anything but tensor literals).
    fn value(&mut self, value: &Spanned<ast::Value<'_>>) -> Option<Attr> {
        Some(match &value.node {
            ast::Value::Int(v) => Attr::Int(*v),
            ast::Value::Float(text) => Attr::Float(parse_float(text)),
            ast::Value::NanBits(bits) => Attr::Float(f64::from_bits(*bits)),
            ast::Value::Bool(v) => Attr::Bool(*v),
            ast::Value::Str(v) => Attr::Str(v.as_str().into()),
            ast::Value::Ident(word) => match DType::from_name(word) {
                Some(d) => Attr::DType(d),
                None => {
                    self.errors.push(
                        Diag::error(format!("unknown word `{word}`"))
                            .at(value.span, "not a dtype")
                            .help(format!("strings are quoted: \"{word}\"")),
                    );
                    return None;
                }
            },
            ast::Value::List(items) => Attr::List(items.iter().map(|i| self.value(i)).collect::<Option<Vec<_>>>()?),
            ast::Value::Dict(entries) => Attr::Dict(self.dict(entries)?),
        })
    }

    fn dict(&mut self, entries: &ast::Dict<'_>) -> Option<Dict> {
        let mut dict = Dict::new();
        let mut seen: FxHashMap<&str, Span> = FxHashMap::default();
        let mut ok = true;
        for (key, value) in entries {
            if let Some(&first) = seen.get(key.node) {
                self.errors.push(
                    Diag::error(format!("key `{}` is given twice", key.node))
                        .at(key.span, "again here")
                        .with(first, "first given here"),
                );
                ok = false;
                continue;
            }
            seen.insert(key.node, key.span);
            match self.value(value) {
                Some(v) => dict.insert(key.node, v),
                None => ok = false,
            }
        }
        ok.then_some(dict)
    }

    /// A `const` literal, shaped and typed by the declared result type.
    fn tensor_literal(&mut self, value: &Spanned<ast::Value<'_>>, ty: &TensorType) -> Option<Attr> {
        let Some(shape) = ty.static_shape() else {
            self.errors.push(
                Diag::error("a constant needs a static type")
                    .at(value.span, format!("the type {ty} has a `?` dimension")),
            );
            return None;
        };
        let mut elems = Vec::new();
        let literal_shape = match flatten_literal(value, &mut elems) {
            Ok(shape) => shape,
            Err((span, message)) => {
                self.errors.push(Diag::error("malformed tensor literal").at(span, message));
                return None;
            }
        };
        if literal_shape != shape {
            self.errors.push(
                Diag::error("the literal does not match the result type")
                    .at(value.span, format!("this literal has shape {literal_shape:?}, the type {ty} needs {shape:?}")),
            );
            return None;
        }
        match Tensor::from_literals(ty.dtype, &shape, &elems) {
            Ok(t) => Some(Attr::Tensor(Arc::new(t))),
            Err(e) => {
                self.errors.push(Diag::error("invalid tensor literal").at(value.span, e.to_string()));
                None
            }
        }
    }

    fn qspec(&mut self, dict: &Spanned<ast::Dict<'_>>) -> Option<QSpec> {
        let lowered = self.dict(&dict.node)?;
        match QSpec::from_dict(&lowered) {
            Ok(spec) => Some(spec),
            Err(e) => {
                let span = e
                    .key
                    .as_deref()
                    .and_then(|k| dict.node.iter().find(|(key, _)| key.node == k))
                    .map_or(dict.span, |(k, v)| k.span.to(v.span));
                let mut d = Diag::error(format!("invalid quantization spec: {}", e.message)).at(span, "here");
                if let Some(hint) = e.hint {
                    d = d.help(hint);
                }
                self.errors.push(d);
                None
            }
        }
    }

    fn annotation(&mut self, graph: &Graph, op: OpId, clause: &ast::QuantClause<'_>) -> Option<Annotation> {
        let operands = graph.op(op).operands.len();
        if clause.inputs.len() > operands {
            self.errors.push(
                Diag::error(format!(
                    "the annotation lists {} inputs but the op has {operands} operands",
                    clause.inputs.len()
                ))
                .at(clause.span, "one entry per operand"),
            );
            return None;
        }
        let inputs = clause.inputs.iter().map(|s| self.spec_ref(graph, s)).collect::<Option<Vec<_>>>()?;
        let output = match &clause.output {
            Some(s) => Some(self.spec_ref(graph, s)?),
            None => None,
        };
        Some(Annotation { inputs, output })
    }

    fn spec_ref(&mut self, graph: &Graph, expr: &Spanned<ast::SpecExpr<'_>>) -> Option<SpecRef> {
        Some(match &expr.node {
            ast::SpecExpr::None => SpecRef::None,
            ast::SpecExpr::Named(name) => match self.qspec_index.get(name.node) {
                Some(&i) => SpecRef::Named(i),
                None => {
                    self.errors.push(
                        Diag::error(format!("unknown quantization spec `@{}`", name.node))
                            .at(name.span, "not defined in this module")
                            .suggest(name.node, self.qspec_index.keys().copied())
                            .help("define it at module level: `qspec @name = {dtype = i8, ...}`"),
                    );
                    return None;
                }
            },
            ast::SpecExpr::Inline(dict) => {
                SpecRef::Inline(self.qspec(&Spanned { node: dict.clone(), span: expr.span })?)
            }
            ast::SpecExpr::Shared(target) => SpecRef::Shared(self.edge_or_value(graph, target)?),
            ast::SpecExpr::Derived(from, spec) => {
                let from = from.iter().map(|e| self.edge_or_value(graph, e)).collect::<Option<Vec<_>>>()?;
                let spec = self.spec_ref(graph, spec)?;
                if !matches!(spec, SpecRef::Named(_) | SpecRef::Inline(_)) {
                    self.errors.push(
                        Diag::error("a derived spec needs a plain spec after `;`")
                            .at(expr.span, "expected `@name` or `{...}`"),
                    );
                    return None;
                }
                SpecRef::Derived { from, spec: Box::new(spec) }
            }
        })
    }

    fn edge_or_value(&mut self, graph: &Graph, e: &ast::EdgeOrValue<'_>) -> Option<EdgeOrValue> {
        let resolve = |this: &mut Self, name: &ast::Name<'_>| match graph.value_by_name(name.node) {
            Some(v) => Some(v),
            None => {
                this.errors.push(
                    Diag::error(format!("undefined value `%{}` in annotation", name.node))
                        .at(name.span, "not defined")
                        .suggest(name.node, graph.value_names()),
                );
                None
            }
        };
        let value = resolve(self, &e.value)?;
        let Some(consumer_name) = &e.consumer else {
            return Some(EdgeOrValue::Value(value));
        };
        let consumer_value = resolve(self, consumer_name)?;
        let Some(consumer) = graph.producer(consumer_value) else {
            self.errors.push(
                Diag::error("an edge must end at an op")
                    .at(consumer_name.span, "this is a graph input")
                    .help("name the op by its (first) result"),
            );
            return None;
        };
        if !graph.op(consumer).operands.contains(&value) {
            self.errors.push(
                Diag::error(format!("`%{}` does not read `%{}`", consumer_name.node, e.value.node))
                    .at(e.value.span.to(consumer_name.span), "no such edge"),
            );
            return None;
        }
        Some(EdgeOrValue::Edge { value, consumer })
    }
}

/// Flattens a nested list literal row-major and returns its shape (taken from the leftmost
/// path); errors on ragged rows or misplaced scalars.
fn flatten_literal(value: &Spanned<ast::Value<'_>>, out: &mut Vec<Literal>) -> Result<Vec<usize>, (Span, String)> {
    let mut shape = Vec::new();
    let mut probe = value;
    while let ast::Value::List(items) = &probe.node {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    check_literal(value, &shape, 0, out)?;
    Ok(shape)
}

fn check_literal(
    value: &Spanned<ast::Value<'_>>,
    shape: &[usize],
    depth: usize,
    out: &mut Vec<Literal>,
) -> Result<(), (Span, String)> {
    let lit = match &value.node {
        ast::Value::List(items) => {
            if depth == shape.len() {
                return Err((value.span, "expected a number here, not a list".into()));
            }
            if items.len() != shape[depth] {
                return Err((
                    value.span,
                    format!("this row has {} elements where the first has {}", items.len(), shape[depth]),
                ));
            }
            return items.iter().try_for_each(|item| check_literal(item, shape, depth + 1, out));
        }
        ast::Value::Int(v) => Literal::Int(*v),
        ast::Value::Float(text) => {
            Literal::Float { value: parse_float(text), as_f32: text.parse().unwrap_or(f32::NAN) }
        }
        ast::Value::NanBits(b) => Literal::NanBits(*b),
        ast::Value::Bool(b) => Literal::Bool(*b),
        _ => return Err((value.span, "tensor literals hold numbers or bools".into())),
    };
    if depth != shape.len() {
        return Err((value.span, format!("expected a list of {} elements here", shape[depth])));
    }
    out.push(lit);
    Ok(())
}

/// Float token text (validated by the lexer) → f64.
fn parse_float(text: &str) -> f64 {
    text.parse().unwrap_or(f64::NAN)
}
