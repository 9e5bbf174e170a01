//! Lowering: syntax tree → IR. Resolves names (values, specs, ops), converts attributes against
//! each op's schema and fills defaults. Shape and type rules are left to the verifier, which
//! runs right after and reports with the same spans.
//!
//! The same steps run in two orders. [`lower_module`] walks a whole syntax tree, declarations
//! first; a [`Sink`] in lowering mode is fed by the parser and lowers each statement as soon as
//! it is reduced, so that a big function never exists as a syntax tree (building, walking and
//! freeing one costs more than lowering from statements still in cache). The streaming order
//! cannot explain every error as well (a use before its definition does not know the
//! definition yet), so the front end streams for speed and, on any error, lowers the whole tree
//! to report it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;

use super::ast::{self, Spanned};
use crate::diag::{shown, Diag, Diagnostics, Span};
use crate::ir::attr::{Attr, Dict};
use crate::ir::builder::GraphBuilder;
use crate::ir::graph::{Graph, Module, OpId, ResultSpec, ValueId, WeightsDecl};
use crate::ir::quant::{Annotation, EdgeOrValue, NamedQSpec, QSpec, SpecRef};
use crate::ir::types::{DType, Dim, TensorType};
use crate::ir::verifier::{GraphSpans, OpSpans, SourceSpans};
use crate::ops::{check_attr_kind, Arity, AttrKind, OpKind, Presence};
use crate::quant::observer::ObserverKind;
use crate::tensor::{Literal, LiteralError, Tensor};
use crate::weights::{WeightFile, WeightsDigest};

/// Lowers a parsed module. `weights_dir` is where a relative `weights` path is resolved (the
/// `.qir` file's directory); `None` skips opening the weights file.
pub fn lower_module(ast: &ast::Module<'_>, weights_dir: Option<&Path>) -> Result<Module, Diagnostics> {
    lower(ast, weights_dir, false).map(|(module, _)| module)
}

/// [`lower_module`], also returning where each op's parts were written, for the verifier's
/// diagnostics.
pub fn lower_module_with_spans(
    ast: &ast::Module<'_>,
    weights_dir: Option<&Path>,
) -> Result<(Module, SourceSpans), Diagnostics> {
    lower(ast, weights_dir, true)
}

/// Recording op spans costs a hash-map entry and three vectors per op, so only the lowering done
/// to explain verifier errors records them.
fn lower(
    ast: &ast::Module<'_>,
    weights_dir: Option<&Path>,
    record_spans: bool,
) -> Result<(Module, SourceSpans), Diagnostics> {
    let mut cx = Lowerer::new(weights_dir, record_spans);
    // Declarations first, so that a function may use a spec declared after it.
    for item in &ast.items {
        if !matches!(item, ast::Item::Func(_)) {
            cx.decl(item);
        }
    }
    for item in &ast.items {
        if let ast::Item::Func(func) = item {
            let Some(mut f) = cx.begin_func(&func.head, &func.body, BodySize::of(&func.body)) else {
                continue;
            };
            for stmt in &func.body {
                let Some(op) = cx.stmt(&mut f, stmt) else {
                    continue;
                };
                if let Some(loc) = &stmt.loc {
                    f.graph.set_loc(op, &loc.node);
                }
                if let Some(clause) = &stmt.quant {
                    f.pending_quant.push((op, Cow::Borrowed(&**clause)));
                }
            }
            cx.end_func(f, &func.ret, func.span);
        }
    }
    cx.finish(ast)
}

/// What the parser does with declarations, function heads and statements as it reduces them.
pub enum Sink<'s> {
    /// Keeps them: the parser returns the whole syntax tree. Holds the statements of the
    /// function being read.
    Collect(ast::Body<'s>),
    /// Lowers them at once, in source order.
    Lower(Box<Streaming<'s>>),
}

/// The state of a streaming lowering: the module so far and the function being read.
pub struct Streaming<'s> {
    source: &'s str,
    cx: Lowerer<'s>,
    func: Option<FuncState<'s, 's>>,
}

impl<'s> Sink<'s> {
    pub fn collect() -> Self {
        Sink::Collect(Vec::new())
    }

    /// A sink that lowers the parse of `source`; `weights_dir` is as for [`lower_module`].
    pub fn lower(source: &'s str, weights_dir: Option<&Path>) -> Self {
        Sink::Lower(Box::new(Streaming { source, cx: Lowerer::new(weights_dir, false), func: None }))
    }

    /// A module-level declaration (`weights`, `qspec`), returned for the syntax tree.
    pub fn decl(&mut self, item: ast::Item<'s>) -> ast::Item<'s> {
        if let Sink::Lower(s) = self {
            s.cx.decl(&item);
        }
        item
    }

    /// A function head; its body starts at byte `body_start`.
    pub fn begin_func(&mut self, head: &ast::FuncHead<'s>, body_start: usize) {
        if let Sink::Lower(s) = self {
            if s.cx.errors.is_empty() {
                // The statements are not known yet (see `FuncScope`), but sizing the graph up
                // front matters: regrowing its name tables rehashes every name, and regrowing
                // its string buffer copies every name and location.
                let size = s.source.get(body_start..).map_or_else(BodySize::default, body_size);
                s.func = s.cx.begin_func(head, &[], size);
            }
        }
    }

    /// A result name of the statement being read, before the rest of it: lowering will
    /// define a value of that name once the statement is complete.
    pub fn result_name(&self, name: &str) {
        if let Sink::Lower(s) = self {
            if let Some(f) = &s.func {
                // The name's bucket in a big table is a cache miss; reading it now overlaps
                // the miss with parsing the rest of the statement.
                f.graph.prefetch_name(name);
            }
        }
    }

    pub fn stmt(&mut self, stmt: Box<ast::OpStmt<'s>>) {
        match self {
            Sink::Collect(body) => body.push(stmt),
            Sink::Lower(s) => {
                // After an error the result is thrown away: stop lowering.
                let Some(f) = s.func.as_mut().filter(|_| s.cx.errors.is_empty()) else {
                    return;
                };
                // Each location is interned one statement late, so that the bucket it is
                // looked up in (a cache miss in a big table) loads meanwhile.
                if let Some(loc) = &stmt.loc {
                    f.graph.prefetch_loc(&loc.node);
                }
                if let Some((op, loc)) = f.pending_loc.take() {
                    f.graph.set_loc(op, &loc);
                }
                let mut stmt = stmt;
                if let Some(op) = s.cx.stmt(f, &stmt) {
                    f.pending_loc = stmt.loc.take().map(|loc| (op, loc.node));
                    if let Some(clause) = stmt.quant.take() {
                        f.pending_quant.push((op, Cow::Owned(*clause)));
                    }
                }
            }
        }
    }

    /// Ends the function being read; returns its statements if they were kept.
    pub fn end_func(&mut self, ret: &Spanned<Vec<ast::Name<'s>>>, span: Span) -> ast::Body<'s> {
        match self {
            Sink::Collect(body) => std::mem::take(body),
            Sink::Lower(s) => {
                if let Some(f) = s.func.take().filter(|_| s.cx.errors.is_empty()) {
                    s.cx.end_func(f, ret, span);
                }
                Vec::new()
            }
        }
    }

    /// The lowered module, or `None` when the sink only collected or lowering found an error
    /// (lower the whole tree to report it).
    pub fn finish(self, ast: &ast::Module<'_>) -> Option<Module> {
        match self {
            Sink::Collect(_) => None,
            Sink::Lower(s) => s.cx.finish(ast).ok().map(|(module, _)| module),
        }
    }
}

struct Lowerer<'s> {
    errors: Diagnostics,
    /// Owned: the syntax tree is invariant in its lifetime, so a borrowed path would have to live
    /// exactly as long as the source text.
    weights_dir: Option<PathBuf>,
    module: Module,
    qspec_index: FxHashMap<&'s str, usize>,
    graph_names: FxHashMap<&'s str, Span>,
    /// Names of the current function whose definition failed to lower: their uses are not
    /// reported again, so one mistake gives one error.
    poisoned: FxHashSet<&'s str>,
    /// Names of `qspec`s that failed to lower: their uses are not reported again.
    invalid_qspecs: FxHashSet<&'s str>,
    spans: SourceSpans,
    record_spans: bool,
}

/// A function being lowered.
struct FuncState<'a, 's> {
    graph: GraphBuilder,
    spans: GraphSpans,
    scope: FuncScope<'a, 's>,
    /// Annotations may refer to ops later in the function, so they resolve once all exist.
    pending_quant: Vec<(OpId, Cow<'a, ast::QuantClause<'s>>)>,
    /// An op whose location is not interned yet (see `Sink::stmt`).
    pending_loc: Option<(OpId, Cow<'a, str>)>,
}

/// Where a name is defined in the function being lowered, for forward-reference diagnostics.
/// Built on the first undefined name, so that input without errors never pays for it. A
/// streaming lowering gives it no body: it reports nothing, it only detects that there is an
/// error.
struct FuncScope<'a, 's> {
    body: &'a [Box<ast::OpStmt<'s>>],
    defined_at: std::cell::OnceCell<FxHashMap<&'s str, Span>>,
}

impl<'s> FuncScope<'_, 's> {
    fn defined_at(&self, name: &str) -> Option<Span> {
        let map = self.defined_at.get_or_init(|| {
            let mut map = FxHashMap::default();
            for op in self.body {
                for r in &op.results {
                    map.entry(r.node).or_insert(r.span);
                }
            }
            map
        });
        map.get(name).copied()
    }
}

impl<'s> Lowerer<'s> {
    fn new(weights_dir: Option<&Path>, record_spans: bool) -> Self {
        Lowerer {
            errors: Vec::new(),
            weights_dir: weights_dir.map(Path::to_path_buf),
            module: Module::default(),
            qspec_index: FxHashMap::default(),
            graph_names: FxHashMap::default(),
            poisoned: FxHashSet::default(),
            invalid_qspecs: FxHashSet::default(),
            spans: SourceSpans::default(),
            record_spans,
        }
    }

    /// The `{bytes = N, xxh3 = "…"}` after a `weights` path: both keys, nothing else.
    fn weights_digest(&mut self, check: &Spanned<ast::Dict<'_>>) -> Option<WeightsDigest> {
        let (mut bytes, mut xxh3) = (None, None);
        let mut ok = true;
        for (key, value) in &check.node {
            match (key.node, &value.node) {
                ("bytes", ast::Value::Int(n)) if *n >= 0 => bytes = Some(*n as u64),
                ("xxh3", ast::Value::Str(hex)) if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    xxh3 = u128::from_str_radix(hex, 16).ok();
                }
                ("bytes" | "xxh3", _) => {
                    let expected = if key.node == "bytes" { "a byte count" } else { "32 hex digits in quotes" };
                    self.errors.push(
                        Diag::error(format!("bad `{}` in the weights check", key.node))
                            .at(value.span, format!("expected {expected}")),
                    );
                    ok = false;
                }
                (other, _) => {
                    self.errors.push(
                        Diag::error(format!("unknown key `{other}` in the weights check"))
                            .at(key.span, "not `bytes` or `xxh3`")
                            .suggest(other, ["bytes", "xxh3"]),
                    );
                    ok = false;
                }
            }
        }
        match (bytes, xxh3) {
            (Some(bytes), Some(xxh3)) => Some(WeightsDigest { bytes, xxh3 }),
            _ if !ok => None,
            _ => {
                self.errors.push(
                    Diag::error("the weights check needs both `bytes` and `xxh3`")
                        .at(check.span, "incomplete check")
                        .help("qc writes `{bytes = N, xxh3 = \"…\"}`; delete the braces to load the file unchecked"),
                );
                None
            }
        }
    }

    /// Reports a weights file that is not the one written with this module: a `.qir` must never
    /// silently read another run's weights (an interrupted `qc -o`, or a file replaced by hand).
    fn check_weights_digest(
        &mut self,
        file: &WeightFile,
        expected: WeightsDigest,
        path: &Spanned<String>,
        check: Option<&Spanned<ast::Dict<'_>>>,
    ) {
        let found = file.digest();
        if found == expected {
            return;
        }
        let mut d = Diag::error("the weights file is not the one written with this module")
            .at(path.span, format!("{} does not match the check", path.node));
        if let Some(check) = check {
            d = d.with(check.span, "recorded when qc wrote the pair");
        }
        self.errors.push(
            d.note(format!(
                "expected {} bytes with XXH3-128 {}; found {} bytes with {}",
                expected.bytes,
                expected.hash_hex(),
                found.bytes,
                found.hash_hex()
            ))
            .help("the pair was not written completely, or the file was replaced: run qc again to write both, or delete the `{…}` check to load this file anyway"),
        );
    }

    /// A `weights` or `qspec` declaration.
    fn decl(&mut self, item: &ast::Item<'s>) {
        match item {
            ast::Item::Weights { path, check } => {
                if let Some(previous) = &self.module.weights {
                    self.errors.push(
                        Diag::error("the module declares `weights` twice")
                            .at(path.span, "second declaration")
                            .with(previous.span, "first declared here"),
                    );
                    return;
                }
                let digest = check.as_ref().and_then(|check| self.weights_digest(check));
                if let Some(dir) = &self.weights_dir {
                    let full = dir.join(&path.node);
                    if full.is_dir() {
                        self.errors.push(
                            Diag::error("cannot load the weights file")
                                .at(path.span, format!("{} is a directory", full.display()))
                                .help("name a .safetensors file; the path is relative to the .qir file's directory"),
                        );
                    } else {
                        match WeightFile::open(&full) {
                            Ok(file) => {
                                if let Some(expected) = digest {
                                    self.check_weights_digest(&file, expected, path, check.as_ref());
                                }
                                self.module.set_weight_file(Arc::new(file));
                            }
                            Err(message) => self.errors.push(
                                Diag::error("cannot load the weights file")
                                    .at(path.span, message)
                                    .help("the path is relative to the .qir file's directory"),
                            ),
                        }
                    }
                }
                self.module.weights = Some(WeightsDecl { path: path.node.clone(), span: path.span, digest });
            }
            ast::Item::QSpec { name, dict } => {
                if let Some(&i) = self.qspec_index.get(name.node) {
                    let first: &NamedQSpec = &self.module.qspecs[i];
                    self.errors.push(
                        Diag::error(format!("quantization spec `@{}` is defined twice", shown(name.node)))
                            .at(name.span, "redefined here")
                            .with(first.span, "first defined here"),
                    );
                    return;
                }
                match self.qspec(dict) {
                    Some(spec) => {
                        self.qspec_index.insert(name.node, self.module.qspecs.len());
                        self.module.qspecs.push(NamedQSpec { name: name.node.to_string(), spec, span: name.span });
                    }
                    None => {
                        self.invalid_qspecs.insert(name.node);
                    }
                }
            }
            ast::Item::Func(_) => {}
        }
    }

    /// The module, once every item is lowered.
    fn finish(mut self, ast: &ast::Module<'_>) -> Result<(Module, SourceSpans), Diagnostics> {
        if self.module.graphs.is_empty() && self.errors.is_empty() {
            // `module @name`: the whole module would be a label over every line.
            let head = Span::new(ast.span.start as usize, ast.span.start as usize + "module".len());
            self.errors.push(
                Diag::error("the module has no functions")
                    .at(ast.name.as_ref().map_or(head, |n| head.to(n.span)), "this module has no `func`")
                    .help("add `func @main(%x: f32[4]) -> f32[4] { ... }`"),
            );
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        self.module.name = ast.name.as_ref().map(|n| n.node.to_string());
        self.module.span = ast.span;
        Ok((self.module, self.spans))
    }

    fn ty(&mut self, ty: &ast::Type<'_>) -> Option<TensorType> {
        let Some(dtype) = DType::from_name(ty.dtype.node) else {
            let mut d = Diag::error(format!("unknown element type `{}`", shown(ty.dtype.node)))
                .at(ty.dtype.span, "not an element type");
            d = match dtype_alias(ty.dtype.node) {
                Some(alias) => d.help(format!("did you mean `{alias}`?")),
                None => d.suggest(ty.dtype.node, DType::ALL.iter().map(|d| d.name())),
            };
            self.errors.push(d.note(format!("element types: {}", DType::ALL.map(|d| d.name()).join(", "))));
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

    /// Starts a function: its inputs and result types. `None` when the name is taken. `body`
    /// is the function's statements when they are known up front (see `FuncScope`); the graph
    /// is sized for a body of `size`.
    fn begin_func<'a>(
        &mut self,
        head: &ast::FuncHead<'s>,
        body: &'a [Box<ast::OpStmt<'s>>],
        size: BodySize,
    ) -> Option<FuncState<'a, 's>> {
        if let Some(&first) = self.graph_names.get(head.name.node) {
            self.errors.push(
                Diag::error(format!("function `@{}` is defined twice", shown(head.name.node)))
                    .at(head.name.span, "redefined here")
                    .with(first, "first defined here"),
            );
            return None;
        }
        self.graph_names.insert(head.name.node, head.name.span);
        let mut graph = GraphBuilder::new(head.name.node);
        graph.reserve(size.ops, head.params.len() + size.values);
        graph.reserve_text(head.params.iter().map(|(name, _)| name.node.len()).sum::<usize>() + size.text);
        graph.set_output_span(head.results_span);
        self.poisoned.clear();
        let spans = GraphSpans {
            ops: FxHashMap::default(),
            returns: Vec::new(),
            result_types: head.results.iter().map(|t| t.span).collect(),
        };
        for (name, ty) in &head.params {
            let Some(t) = self.ty(ty) else {
                self.poisoned.insert(name.node);
                continue;
            };
            if let Err(existing) = graph.add_input(name.node, t, name.span) {
                self.duplicate(&graph, name, existing);
            }
        }
        let output_types: Vec<_> = head.results.iter().filter_map(|t| self.ty(t)).collect();
        graph.set_output_types(output_types);
        let scope = FuncScope { body, defined_at: Default::default() };
        Some(FuncState { graph, spans, scope, pending_quant: Vec::new(), pending_loc: None })
    }

    /// Lowers one statement of `f`; the op, or `None` if the statement has an error.
    fn stmt(&mut self, f: &mut FuncState<'_, 's>, stmt: &ast::OpStmt<'s>) -> Option<OpId> {
        let op = self.op(&mut f.graph, stmt, &f.scope);
        match op {
            Some(id) if self.record_spans => {
                f.spans.ops.insert(id, op_spans(stmt));
            }
            Some(_) => {}
            None => self.poisoned.extend(stmt.results.iter().map(|r| r.node)),
        }
        op
    }

    /// Ends a function at its `return` (`ret`); `span` is the whole function.
    fn end_func(&mut self, mut f: FuncState<'_, 's>, ret: &Spanned<Vec<ast::Name<'s>>>, span: Span) {
        let graph = &mut f.graph;
        if let Some((op, loc)) = f.pending_loc.take() {
            graph.set_loc(op, &loc);
        }
        graph.set_span(span);
        f.spans.returns = ret.node.iter().map(|v| v.span).collect();
        let outputs: Option<Vec<ValueId>> = ret.node.iter().map(|v| self.use_value(graph, v, &f.scope)).collect();
        if let Some(outputs) = outputs {
            graph.set_outputs(outputs);
        }
        graph.set_output_span(ret.span);
        for (op, clause) in &f.pending_quant {
            if let Some(annotation) = self.annotation(graph, *op, clause) {
                graph.set_annotation(*op, annotation);
            }
        }
        self.spans.graphs.insert(f.graph.name().to_string(), f.spans);
        self.module.graphs.push(f.graph.finish());
    }

    fn duplicate(&mut self, graph: &Graph, name: &ast::Name<'_>, existing: ValueId) {
        self.errors.push(
            Diag::error(format!("value `%{}` is defined twice", shown(name.node)))
                .at(name.span, "redefined here")
                .with(graph.value(existing).span(), "first defined here")
                .help("every value has one definition (SSA); give this one a new name"),
        );
    }

    fn use_value(&mut self, graph: &Graph, name: &ast::Name<'_>, scope: &FuncScope<'_, '_>) -> Option<ValueId> {
        if let Some(v) = graph.value_by_name(name.node) {
            return Some(v);
        }
        if self.poisoned.contains(name.node) {
            // Its definition already has an error.
            return None;
        }
        let mut d = Diag::error(format!("use of undefined value `%{}`", shown(name.node)))
            .at(name.span, "not defined before this use");
        match scope.defined_at(name.node) {
            Some(later) => d = d.with(later, "defined later here").help("ops must come after the values they read"),
            None => d = undefined_help(d, name.node, graph),
        }
        self.errors.push(d);
        None
    }

    fn op(&mut self, graph: &mut GraphBuilder, stmt: &ast::OpStmt<'s>, scope: &FuncScope<'_, '_>) -> Option<OpId> {
        let Some(kind) = OpKind::from_name(stmt.op.node) else {
            let mut d = Diag::error(format!("unknown op `{}`", shown(stmt.op.node)))
                .at(stmt.op.span, "not in the op registry")
                .suggest(stmt.op.node, OpKind::all().map(OpKind::name));
            if let Some((base, overload)) = stmt.op.node.split_once('.') {
                if OpKind::from_name(base).is_some() {
                    let prefix = format!("{base}.");
                    let mut spellings = vec![format!("`{base}`")];
                    spellings.extend(
                        OpKind::all().map(OpKind::name).filter(|n| n.starts_with(&prefix)).map(|n| format!("`{n}`")),
                    );
                    d = d.note(format!(
                        "`{base}` has no overload `.{}`; it is written {}",
                        shown(overload),
                        spellings.join(" or ")
                    ));
                }
            }
            self.errors.push(d.note("`qc --list-ops` lists every op"));
            return None;
        };
        let def = kind.def();
        let errors_before = self.errors.len();

        // Inline, like the statement's own lists: an op is lowered without allocating for them.
        let mut operands: SmallVec<[ValueId; 3]> = SmallVec::new();
        let mut operands_ok = true;
        for v in &stmt.operands {
            match self.use_value(graph, v, scope) {
                Some(id) => operands.push(id),
                None => operands_ok = false,
            }
        }
        let (min, max) = def.operand_count_range();
        let n = stmt.operands.len();
        let count_ok = n >= min && max.is_none_or(|m| n <= m);
        if !count_ok {
            let want = match max {
                Some(m) if m == min => format!("{min}"),
                Some(m) => format!("{min} to {m}"),
                None => format!("at least {min}"),
            };
            let signature = def.signature();
            // Point at the surplus operands, or at the op when some are missing.
            let (span, label) = match max {
                Some(m) if n > m => {
                    let extra = &stmt.operands[m..];
                    let label =
                        if n - m == 1 { "an extra operand".to_string() } else { format!("{} extra operands", n - m) };
                    (extra[0].span.to(extra[extra.len() - 1].span), label)
                }
                _ => {
                    let missing: Vec<String> = def.operands[n.min(def.operands.len())..]
                        .iter()
                        .filter(|o| o.arity == Arity::One)
                        .map(|o| format!("`%{}`", o.name))
                        .collect();
                    (
                        stmt.op.span.to(stmt.operands.last().map_or(stmt.op.span, |o| o.span)),
                        format!("missing {}", missing.join(", ")),
                    )
                }
            };
            self.errors.push(
                Diag::error(format!(
                    "`{}` takes {want} operand{}, found {n}",
                    def.name,
                    if want == "1" { "" } else { "s" }
                ))
                .at(span, label)
                .note(format!("signature: {}({signature})", def.name)),
            );
        }

        // A statement without `: type` gets a help with the inferred type, once the attributes
        // are known.
        let mut missing_type: Option<usize> = None;
        if stmt.types.is_empty() {
            missing_type = Some(self.errors.len());
            self.errors.push(
                Diag::error("missing result type")
                    .at(Span { start: stmt.op.span.start, end: stmt.span.end }, "this op has no `: type`")
                    .help("every op states its result types: `%y = relu(%x) : f32[1,16]`"),
            );
        } else if stmt.types.len() != stmt.results.len() {
            self.errors.push(
                Diag::error(format!(
                    "{} but {}",
                    plural(stmt.results.len(), "result"),
                    plural(stmt.types.len(), "type")
                ))
                .at(stmt.types[0].span.to(stmt.types[stmt.types.len() - 1].span), "one type per result")
                .with(stmt.results[0].span.to(stmt.results[stmt.results.len() - 1].span), "the results"),
            );
        }
        if stmt.results.len() != def.num_results {
            let names: Vec<String> = (0..def.num_results).map(|i| format!("%r{i}")).collect();
            self.errors.push(
                Diag::error(format!(
                    "`{}` has {}, but {} named",
                    def.name,
                    plural(def.num_results, "result"),
                    match stmt.results.len() {
                        1 => "1 is".to_string(),
                        k => format!("{k} are"),
                    }
                ))
                .at(stmt.results[0].span.to(stmt.results[stmt.results.len() - 1].span), "result names")
                .help(format!("name every result: `{} = {}(...)`", names.join(", "), def.name)),
            );
        }
        let types: SmallVec<[TensorType; 1]> = stmt.types.iter().filter_map(|t| self.ty(t)).collect();
        let attrs = self.attrs(def, stmt, types.first(), stmt.types.first());
        if let (Some(index), Some(attrs), true, true) = (missing_type, &attrs, operands_ok, count_ok) {
            let operand_types: Vec<&TensorType> = operands.iter().map(|&v| graph.value_type(v)).collect();
            if let Ok(inferred) = def.infer(&operand_types, &def.complete_attrs(attrs.clone()), &[]) {
                if !inferred.is_empty() {
                    let written: Vec<String> = inferred.iter().map(|t| t.to_string()).collect();
                    let d = &mut self.errors[index];
                    d.notes.clear();
                    d.notes.push(format!("help: the result type is {0}: write `: {0}`", written.join(", ")));
                }
            }
        }
        if self.errors.len() > errors_before || !operands_ok || types.len() != stmt.results.len() {
            return None;
        }

        let attrs = graph.intern_attrs(def.complete_attrs(attrs?));
        let results = stmt
            .results
            .iter()
            .zip(types)
            .map(|(name, ty)| ResultSpec { name: name.node, ty, span: name.span })
            .collect();
        let op = match graph.push_op(kind, &operands, attrs, results, stmt.span) {
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
        // The location is set by the caller (see `GraphBuilder::set_loc`).
        if let Some(meta) = &stmt.meta {
            if let Some(dict) = self.dict(&meta.node) {
                graph.set_meta(op, dict);
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
        result_ast: Option<&ast::Type<'_>>,
    ) -> Option<Vec<Option<Attr>>> {
        let mut slots: Vec<Option<Attr>> = vec![None; def.attrs.len()];
        let mut spans: SmallVec<[Option<Span>; 8]> = smallvec::smallvec![None; def.attrs.len()];
        let mut ok = true;
        for (key, value) in stmt.attrs.iter().flat_map(|a| &a.node) {
            let Some(index) = def.attr_index(key.node) else {
                let mut d = Diag::error(format!("`{}` has no attribute `{}`", def.name, shown(key.node)))
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
                    Diag::error(format!("attribute `{}` is given twice", shown(key.node)))
                        .at(key.span, "again here")
                        .with(first, "first given here"),
                );
                ok = false;
                continue;
            }
            spans[index] = Some(key.span);
            let schema = def.attrs[index];
            let converted = if schema.kind == AttrKind::Tensor {
                match (result_ty, result_ast) {
                    (Some(ty), Some(written)) => self.tensor_literal(value, ty, written),
                    _ => None,
                }
            } else {
                self.value(value).and_then(|v| match check_attr_kind(schema.kind, v.clone()) {
                    Ok(v) => Some(v),
                    Err(message) => {
                        let mut d = Diag::error(format!("invalid value for `{}`", key.node)).at(value.span, message);
                        d = match (schema.kind, &v) {
                            (AttrKind::Str(choices), Attr::Str(s)) => {
                                match crate::diag::closest(s, choices.iter().copied()) {
                                    Some(best) => d.help(format!("did you mean \"{best}\"?")),
                                    None => d,
                                }
                            }
                            (AttrKind::Int, Attr::Float(f)) if f.fract() == 0.0 && f.abs() < 1e15 => {
                                d.help(format!("write the integer `{}`", *f as i64))
                            }
                            (AttrKind::Ints, Attr::Int(i)) => d.help(format!("write a list: `[{i}]`")),
                            (AttrKind::Str(_), Attr::DType(dt)) => d.help(format!("strings are quoted: \"{dt}\"")),
                            _ => d,
                        };
                        self.errors.push(d);
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
            ast::Value::Float(text) if overflows_f64(text) => {
                self.errors.push(
                    Diag::error("float literal out of range")
                        .at(value.span, "too large for f64")
                        .note(format!("the largest finite f64 is {:e}; write `inf` for infinity", f64::MAX)),
                );
                return None;
            }
            ast::Value::Float(text) => Attr::Float(parse_float(text)),
            ast::Value::NanBits(bits) if !f64::from_bits(*bits).is_nan() => {
                self.errors.push(
                    Diag::error("`nan(0x…)` does not hold a NaN")
                        .at(value.span, format!("these bits are the f64 {}", f64::from_bits(*bits)))
                        .note(NAN_BITS_NOTE),
                );
                return None;
            }
            ast::Value::NanBits(bits) => Attr::Float(f64::from_bits(*bits)),
            ast::Value::Bool(v) => Attr::Bool(*v),
            ast::Value::Str(v) => Attr::Str(v.as_str().into()),
            ast::Value::Ident(word) => match DType::from_name(word) {
                Some(d) => Attr::DType(d),
                None => {
                    let d = Diag::error(format!("unknown word `{}`", shown(word))).at(value.span, "not a dtype");
                    self.errors.push(match dtype_alias(word) {
                        Some(alias) => d.help(format!("did you mean the dtype `{alias}`?")),
                        None => d.help(format!("strings are quoted: \"{}\"", shown(word))),
                    });
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
                    Diag::error(format!("key `{}` is given twice", shown(key.node)))
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

    /// A `const` literal, shaped and typed by the declared result type (`written`).
    fn tensor_literal(
        &mut self,
        value: &Spanned<ast::Value<'_>>,
        ty: &TensorType,
        written: &ast::Type<'_>,
    ) -> Option<Attr> {
        let mut elems = Vec::new();
        let literal_shape = match flatten_literal(value, &mut elems) {
            Ok(shape) => shape,
            Err((span, message)) => {
                self.errors.push(Diag::error("malformed tensor literal").at(span, message));
                return None;
            }
        };
        let Some(shape) = ty.static_shape() else {
            let dynamic = written.dims.iter().find(|d| d.node.is_none()).map_or(written.span, |d| d.span);
            self.errors.push(
                Diag::error("a constant needs a static type")
                    .at(dynamic, "a `?` dimension")
                    .with(value.span, format!("this literal has shape {}", show_shape(&literal_shape)))
                    .help(format!("write `: {}{}`", ty.dtype, show_shape(&literal_shape))),
            );
            return None;
        };
        if literal_shape != shape {
            let mut d = Diag::error("the literal does not match the result type")
                .at(value.span, format!("this literal has shape {}", show_shape(&literal_shape)))
                .with(written.span, format!("the type needs shape {}", show_shape(&shape)));
            let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            if count == Some(elems.len()) && elems.len() <= 16 {
                d = d.help(format!("nest the elements by dimension: `{}`", nesting(&shape)));
            } else {
                d = d.help(format!(
                    "if the literal is right, its type is `{}{}`",
                    ty.dtype,
                    show_shape(&literal_shape)
                ));
            }
            self.errors.push(d);
            return None;
        }
        let literals: Vec<Literal> = elems.iter().map(|(l, _)| *l).collect();
        match Tensor::from_literals(ty.dtype, &shape, &literals).and_then(|t| check_float_elements(t, &literals)) {
            Ok(t) => Some(Attr::Tensor(Arc::new(t))),
            Err(e) => {
                let (span, label) = match e {
                    LiteralError::OutOfRange { index, dtype } => {
                        (elems.get(index).map(|(_, s)| *s), format!("does not fit in {dtype}"))
                    }
                    LiteralError::Kind { index, dtype } if matches!(literals.get(index), Some(Literal::NanBits(_))) => {
                        (elems.get(index).map(|(_, s)| *s), format!("these bits are not a NaN in {dtype}"))
                    }
                    LiteralError::Kind { index, dtype } => {
                        (elems.get(index).map(|(_, s)| *s), format!("not a valid {dtype} value"))
                    }
                    LiteralError::Count { .. } => (None, e.to_string()),
                };
                let mut d = Diag::error("invalid tensor literal").at(span.unwrap_or(value.span), label);
                if span.is_some() {
                    d = d.with(written.dtype.span, format!("the element type is {}", ty.dtype));
                    d = d.note(e.to_string());
                    if let Some((lo, hi)) = ty.dtype.int_range() {
                        d = d.note(format!("{} holds integers in [{lo}, {hi}]", ty.dtype));
                    }
                    match (&e, largest_finite(ty.dtype)) {
                        (LiteralError::OutOfRange { .. }, Some(max)) => {
                            d = d.note(format!("the largest finite {} is {max}; write `inf` for infinity", ty.dtype));
                        }
                        (LiteralError::Kind { index, .. }, _)
                            if matches!(literals.get(*index), Some(Literal::NanBits(_))) =>
                        {
                            d = d.note(NAN_BITS_NOTE);
                        }
                        _ => {}
                    }
                }
                self.errors.push(d);
                None
            }
        }
    }

    fn qspec(&mut self, dict: &Spanned<ast::Dict<'_>>) -> Option<QSpec> {
        let lowered = self.dict(&dict.node)?;
        match QSpec::from_dict(&lowered).and_then(|spec| ObserverKind::check_spec(&spec).map(|()| spec)) {
            Ok(spec) => Some(spec),
            Err(e) => {
                let entry = |key: &str| dict.node.iter().find(|(k, _)| k.node == key);
                let span = match e.key.as_deref().and_then(entry) {
                    Some((k, _)) if e.key_only => k.span,
                    Some((k, v)) => k.span.to(v.span),
                    None => dict.span,
                };
                let mut d = Diag::error(format!("invalid quantization spec: {}", e.message)).at(span, e.label);
                if let Some((key, label)) = e.related.as_deref() {
                    if let Some((k, v)) = entry(key) {
                        d = d.with(k.span.to(v.span), label.clone());
                    }
                }
                if let Some(hint) = e.hint {
                    d = d.help(hint);
                }
                self.errors.push(d);
                None
            }
        }
    }

    fn annotation(&mut self, graph: &Graph, op: OpId, clause: &ast::QuantClause<'_>) -> Option<Annotation> {
        let operands = graph.op(op).operands().len();
        if clause.inputs.len() > operands {
            let extra = &clause.inputs[operands..];
            self.errors.push(
                Diag::error(format!(
                    "the annotation lists {} but the op has {}",
                    plural(clause.inputs.len(), "input"),
                    plural(operands, "operand")
                ))
                .at(extra[0].span.to(extra[extra.len() - 1].span), "no operand for this entry")
                .with(
                    graph.op(op).result(0).map_or(Span::NONE, |r| graph.value(r).span()),
                    format!("`{}` takes {}", graph.op(op).def().name, plural(operands, "operand")),
                )
                .help("`quant[...]` has one entry per operand, in order; `-> ...` is the output"),
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
                // Its definition was reported already.
                None if self.invalid_qspecs.contains(name.node) => return None,
                None => {
                    let d = Diag::error(format!("unknown quantization spec `@{}`", shown(name.node)))
                        .at(name.span, "not defined in this module");
                    let d = match crate::diag::closest(name.node, self.qspec_index.keys().copied()) {
                        Some(best) => d.help(format!("did you mean `@{best}`?")),
                        None => d.help("define it at module level: `qspec @name = {dtype = i8, ...}`"),
                    };
                    self.errors.push(d);
                    return None;
                }
            },
            ast::SpecExpr::Inline(dict) => {
                SpecRef::Inline(self.qspec(&Spanned { node: dict.clone(), span: expr.span })?)
            }
            ast::SpecExpr::Shared(target) => SpecRef::Shared(self.edge_or_value(graph, target)?),
            ast::SpecExpr::Derived(from, spec) => {
                let from = from.iter().map(|e| self.edge_or_value(graph, e)).collect::<Option<Vec<_>>>()?;
                let spec_span = spec.span;
                let spec = self.spec_ref(graph, spec)?;
                if !matches!(spec, SpecRef::Named(_) | SpecRef::Inline(_)) {
                    self.errors.push(
                        Diag::error("a derived spec needs a plain spec after `;`")
                            .at(spec_span, "expected `@name` or `{...}`")
                            .help(
                                "write the spec the derived qparams are stored as: `derived(%a -> %y, %w -> %y; @i32)`",
                            ),
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
            None if this.poisoned.contains(name.node) => None,
            None => {
                this.errors.push(undefined_help(
                    Diag::error(format!("undefined value `%{}` in annotation", shown(name.node)))
                        .at(name.span, "not defined"),
                    name.node,
                    graph,
                ));
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
        if !crate::ir::verifier::reads_through_quant_ops(graph, consumer, value) {
            let reads: Vec<String> =
                graph.op(consumer).operands().iter().map(|&v| format!("`%{}`", graph.value_name(v))).collect();
            let reads = if reads.is_empty() { "no values".to_string() } else { reads.join(", ") };
            self.errors.push(
                Diag::error(format!("`%{}` does not read `%{}`", shown(consumer_name.node), shown(e.value.node)))
                    .at(e.value.span.to(consumer_name.span), "no such edge")
                    .with(graph.value(consumer_value).span(), format!("defined by an op that reads {reads}"))
                    .help("an edge `%v -> %r` is the value `%v` as read by the op that defines `%r`, directly or through observer and quantize/dequantize ops"),
            );
            return None;
        }
        Some(EdgeOrValue::Edge { value, consumer })
    }
}

/// What a function body holds, to size its graph up front.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct BodySize {
    ops: usize,
    /// Op results.
    values: usize,
    /// Bytes of result names and locations.
    text: usize,
}

impl BodySize {
    /// The size of parsed statements.
    fn of(body: &[Box<ast::OpStmt<'_>>]) -> BodySize {
        let mut size = BodySize { ops: body.len(), ..BodySize::default() };
        for stmt in body {
            size.values += stmt.results.len();
            size.text += stmt.results.iter().map(|r| r.node.len()).sum::<usize>();
            size.text += stmt.loc.as_ref().map_or(0, |l| l.node.len());
        }
        size
    }
}

/// About how big the function body at the start of `text` is: its statements are the lines
/// that start with a value name, up to the first that starts with `return`, `}` or `func`. Exact
/// for printed QIR (locations without escapes), a guess for other layouts.
fn body_size(text: &str) -> BodySize {
    let mut size = BodySize::default();
    for line in text.lines().map(str::trim_start) {
        if line.starts_with("return") || line.starts_with('}') || line.starts_with("func") {
            break;
        }
        let Some(stmt) = line.strip_prefix('%') else {
            continue;
        };
        size.ops += 1;
        // Single-byte searches only: this reads the whole text, so it must be cheap.
        // `%a = ...`, or `%a, %b = ...` with names separated by `, %`.
        let first = stmt.find(' ').unwrap_or(stmt.len());
        if stmt[..first].ends_with(',') {
            let results = stmt.find(" = ").map_or(stmt, |end| &stmt[..end]);
            let more = results.bytes().filter(|&b| b == b'%').count();
            size.values += 1 + more;
            size.text += results.len().saturating_sub(3 * more);
        } else {
            size.values += 1;
            size.text += first;
        }
        // `loc("...")`, found from the end: it is printed last but for an annotation and
        // metadata.
        let mut before = stmt;
        while let Some(open) = before.rfind('(') {
            before = &before[..open];
            if let Some(loc) = stmt[open + 1..].strip_prefix('"').filter(|_| before.ends_with("loc")) {
                size.text += loc.find('"').unwrap_or(0);
                break;
            }
        }
    }
    size
}

/// Where the parts of a lowered op statement were written.
fn op_spans(stmt: &ast::OpStmt<'_>) -> OpSpans {
    let def = OpKind::from_name(stmt.op.node).map(OpKind::def);
    let attrs = stmt
        .attrs
        .iter()
        .flat_map(|a| &a.node)
        .filter_map(|(key, value)| {
            let schema = def?.attrs.get(def?.attr_index(key.node)?)?;
            Some((schema.name, key.span, value.span))
        })
        .collect();
    OpSpans {
        name: stmt.op.span,
        operands: stmt.operands.iter().map(|o| o.span).collect(),
        attrs,
        types: stmt.types.iter().map(|t| t.span).collect(),
    }
}

/// `1 operand`, `2 operands`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Adds "did you mean `%x`?" to an undefined-value error or, with no close name, lists the
/// values defined so far when there are few.
fn undefined_help(d: Diag, name: &str, graph: &Graph) -> Diag {
    if let Some(best) = crate::diag::closest(name, graph.value_names()) {
        return d.help(format!("did you mean `%{best}`?"));
    }
    // Nine at most: enough to tell "few" from "many" without a pass over a big graph per error.
    let names: Vec<String> = graph.value_names().take(9).map(|n| format!("`%{}`", shown(n))).collect();
    match names.len() {
        0 => d,
        1..=8 => d.note(format!("defined so far: {}", names.join(", "))),
        _ => d,
    }
}

/// PyTorch and NumPy spellings of element types, for "did you mean".
fn dtype_alias(word: &str) -> Option<DType> {
    Some(match word.strip_prefix("torch.").unwrap_or(word) {
        "float" | "float32" | "fp32" => DType::F32,
        "double" | "float64" | "fp64" => DType::F64,
        "half" | "float16" | "fp16" => DType::F16,
        "bfloat16" => DType::BF16,
        "int8" | "qint8" => DType::I8,
        "uint8" | "quint8" => DType::U8,
        "int16" | "short" => DType::I16,
        "int32" | "int" | "qint32" => DType::I32,
        "int64" | "long" => DType::I64,
        "boolean" => DType::Bool,
        _ => return None,
    })
}

/// `[2,3]`, as shapes are written in types.
fn show_shape(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
}

/// A literal skeleton for `shape`: `[[_, _], [_, _]]` for `[2,2]`.
fn nesting(shape: &[usize]) -> String {
    match shape.split_first() {
        None => "_".to_string(),
        Some((&n, rest)) => format!("[{}]", vec![nesting(rest); n].join(", ")),
    }
}

/// Flattens a nested list literal row-major, with each element's span, and returns its shape
/// (taken from the leftmost path); errors on ragged rows or misplaced scalars.
fn flatten_literal(
    value: &Spanned<ast::Value<'_>>,
    out: &mut Vec<(Literal, Span)>,
) -> Result<Vec<usize>, (Span, String)> {
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
    out: &mut Vec<(Literal, Span)>,
) -> Result<(), (Span, String)> {
    let lit = match &value.node {
        ast::Value::List(items) => {
            if depth == shape.len() {
                return Err((value.span, "expected a number here, not a list".into()));
            }
            if items.len() != shape[depth] {
                return Err((
                    value.span,
                    format!("this row has {} where the first has {}", plural(items.len(), "element"), shape[depth]),
                ));
            }
            return items.iter().try_for_each(|item| check_literal(item, shape, depth + 1, out));
        }
        ast::Value::Int(v) => Literal::Int(*v),
        ast::Value::Float(text) if overflows_f64(text) => {
            return Err((value.span, "this number is too large for any float type".into()));
        }
        ast::Value::Float(text) => {
            Literal::Float { value: parse_float(text), as_f32: text.parse().unwrap_or(f32::NAN) }
        }
        ast::Value::NanBits(b) => Literal::NanBits(*b),
        ast::Value::Bool(b) => Literal::Bool(*b),
        _ => return Err((value.span, "tensor literals hold numbers or bools".into())),
    };
    if depth != shape.len() {
        return Err((value.span, format!("expected a list of {} here", plural(shape[depth], "element"))));
    }
    out.push((lit, value.span));
    Ok(())
}

/// Float token text (validated by the lexer) → f64.
fn parse_float(text: &str) -> f64 {
    text.parse().unwrap_or(f64::NAN)
}

/// A number written out (not `inf`) whose value is beyond f64's range.
fn overflows_f64(text: &str) -> bool {
    !matches!(text, "inf" | "-inf") && parse_float(text).is_infinite()
}

const NAN_BITS_NOTE: &str =
    "`nan(0x…)` gives the bits of a NaN of the element type: all exponent bits set and a nonzero mantissa";

/// The largest finite value of a float type, as messages write it.
fn largest_finite(dtype: DType) -> Option<String> {
    Some(match dtype {
        DType::F16 => half::f16::MAX.to_string(),
        DType::BF16 => format!("{:e}", half::bf16::MAX.to_f32()),
        DType::F32 => format!("{:e}", f32::MAX),
        DType::F64 => format!("{:e}", f64::MAX),
        _ => return None,
    })
}

/// Checks what `Tensor::from_literals` converts without complaint: a number written out must
/// stay finite in the element type (as `300` must fit in i8; `inf` stays allowed), and
/// `nan(0x…)` must be a NaN of it (else `nan(0x3f800000)` would be an f32 1.0).
fn check_float_elements(t: Tensor, literals: &[Literal]) -> Result<Tensor, LiteralError> {
    let dtype = t.dtype();
    if !dtype.is_float() {
        return Ok(t);
    }
    let values = t.to_f64_array();
    for (index, (literal, value)) in literals.iter().zip(values.iter()).enumerate() {
        match literal {
            Literal::Float { value: written, .. } if written.is_finite() && value.is_infinite() => {
                return Err(LiteralError::OutOfRange { index, dtype })
            }
            Literal::Int(_) if value.is_infinite() => return Err(LiteralError::OutOfRange { index, dtype }),
            Literal::NanBits(_) if !value.is_nan() => return Err(LiteralError::Kind { index, dtype }),
            _ => {}
        }
    }
    Ok(t)
}
