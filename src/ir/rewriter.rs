//! The rewriter: the one way passes change a graph once it is built (MLIR's `PatternRewriter`,
//! Cranelift's `FuncCursor`).
//!
//! A [`Rewriter`] holds one graph of a module, the module's created weights, an insertion point
//! and the span (and location) that new ops get. Everything a pass does to the IR is one of its
//! methods, each of which keeps the graph's invariants (use lists exact, every live op linked
//! exactly once, names unique):
//! - [`Rewriter::build`] creates an op and links it at the insertion point in one step; results
//!   are named after the bases given, made unique (`x_q`, `x_q_1`, …);
//! - [`Rewriter::constant`] builds a `const`, or a `weight` of a new key for a big tensor;
//! - [`Rewriter::replace_all_uses`], [`Rewriter::replace_op`] and [`Rewriter::erase`];
//! - [`Rewriter::update`] changes an existing op in place (operands, attributes, kind,
//!   location, metadata, annotation).
//!
//! It dereferences to the [`Graph`], so a pass reads through it as through the graph.
//!
//! ```text
//! let mut rw = Rewriter::new(module, gi);
//! rw.set_insertion_before(observer).set_span(span);
//! let q = rw.build1(ops::QUANTIZE_PER_TENSOR, &[x], &fields, "x_q", ty)?;
//! rw.replace_op(observer, &[q]);
//! ```

use std::ops::Deref;
use std::sync::Arc;

use smallvec::SmallVec;

use super::attr::{Attr, Attrs, Dict};
use super::graph::{AttrsId, Graph, Module, OpId, ResultSpec, Sym, ValueId};
use super::quant::Annotation;
use super::types::TensorType;
use crate::diag::{Diag, Diagnostics, Span};
use crate::ops::{self, OpKind};
use crate::tensor::Tensor;

/// A computed tensor with more elements than this is stored in the weights file; smaller ones
/// are printed inline as `const` literals.
pub const INLINE_LIMIT: usize = 256;

/// Where [`Rewriter::build`] links the ops it creates.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum InsertPoint {
    /// Right before this op: ops built one after another stay in build order.
    Before(OpId),
    /// Right after this op; each op built moves the point after itself, so ops built one after
    /// another stay in build order.
    After(OpId),
    /// At the top of the graph, before every op (then after the ops built there).
    Start,
    /// At the end of the graph.
    End,
}

/// The results of one built op; most ops have one.
pub type Results = SmallVec<[ValueId; 2]>;

/// Mutable access to one graph of a module and its created weights; see the module doc.
pub struct Rewriter<'m> {
    module: &'m mut Module,
    graph: usize,
    at: InsertPoint,
    span: Span,
    loc: Option<Sym>,
}

impl Deref for Rewriter<'_> {
    type Target = Graph;

    fn deref(&self) -> &Graph {
        &self.module.graphs[self.graph]
    }
}

impl<'m> Rewriter<'m> {
    /// A rewriter of graph `graph` of `module`, inserting at the end with no span or location.
    pub fn new(module: &'m mut Module, graph: usize) -> Rewriter<'m> {
        Rewriter { module, graph, at: InsertPoint::End, span: Span::NONE, loc: None }
    }

    /// The module, for what is not one graph's (its declarations, its other graphs).
    pub fn module(&self) -> &Module {
        self.module
    }

    fn g(&mut self) -> &mut Graph {
        &mut self.module.graphs[self.graph]
    }

    // ---- where and how new ops are made --------------------------------------------------

    pub fn insertion_point(&self) -> InsertPoint {
        self.at
    }

    pub fn set_insertion_point(&mut self, at: InsertPoint) -> &mut Self {
        self.at = at;
        self
    }

    pub fn set_insertion_before(&mut self, op: OpId) -> &mut Self {
        self.set_insertion_point(InsertPoint::Before(op))
    }

    pub fn set_insertion_after(&mut self, op: OpId) -> &mut Self {
        self.set_insertion_point(InsertPoint::After(op))
    }

    /// Right after the definition of `v`: after its op, or at the top for a graph input.
    pub fn set_insertion_after_def(&mut self, v: ValueId) -> &mut Self {
        let at = self.producer(v).map_or(InsertPoint::Start, InsertPoint::After);
        self.set_insertion_point(at)
    }

    /// The span new ops get (passes give them the span of the op they stand for).
    pub fn set_span(&mut self, span: Span) -> &mut Self {
        self.span = span;
        self
    }

    /// The location (`loc("...")`) new ops get, as the symbol of an existing op's location.
    pub fn set_loc(&mut self, loc: Option<Sym>) -> &mut Self {
        self.loc = loc;
        self
    }

    /// Span and location both taken from `op`, for ops that stand in for it.
    pub fn set_origin(&mut self, op: OpId) -> &mut Self {
        let (span, loc) = (self.op(op).span(), self.op(op).loc_sym());
        self.set_span(span).set_loc(loc)
    }

    // ---- building ------------------------------------------------------------------------

    /// The interned attribute set of a `kind` op with `fields` written and defaults for the
    /// rest.
    pub fn attrs(&mut self, kind: OpKind, fields: &[(&str, Attr)]) -> Result<AttrsId, Diagnostics> {
        let def = kind.def();
        let mut slots: Vec<Option<Attr>> = vec![None; def.attrs.len()];
        for (field, value) in fields {
            let i =
                def.attr_index(field).ok_or_else(|| internal(&format!("`{}` has no attribute `{field}`", def.name)))?;
            slots[i] = Some(value.clone());
        }
        Ok(self.g().intern_attrs(def.complete_attrs(slots)))
    }

    /// Interns a complete attribute set (in the kind's schema order), for
    /// [`Rewriter::build_with_attrs`] and [`OpUpdate::set_attrs`].
    pub fn intern_attrs(&mut self, attrs: Attrs) -> AttrsId {
        self.g().intern_attrs(attrs)
    }

    /// Creates `kind(operands) {fields}` at the insertion point, with results named after
    /// `results`' bases (made unique) and of their types; defaults fill the attributes not given.
    pub fn build(
        &mut self,
        kind: OpKind,
        operands: &[ValueId],
        fields: &[(&str, Attr)],
        results: &[(&str, TensorType)],
    ) -> Result<Results, Diagnostics> {
        let attrs = self.attrs(kind, fields)?;
        self.build_with_attrs(kind, operands, attrs, results)
    }

    /// [`Rewriter::build`] for an op with one result, which it returns.
    pub fn build1(
        &mut self,
        kind: OpKind,
        operands: &[ValueId],
        fields: &[(&str, Attr)],
        name: &str,
        ty: TensorType,
    ) -> Result<ValueId, Diagnostics> {
        let results = self.build(kind, operands, fields, &[(name, ty)])?;
        results.first().copied().ok_or_else(|| internal(&format!("`{}` has no result", kind.name())))
    }

    /// [`Rewriter::build`] with an interned attribute set (a copy of another op's).
    pub fn build_with_attrs(
        &mut self,
        kind: OpKind,
        operands: &[ValueId],
        attrs: AttrsId,
        results: &[(&str, TensorType)],
    ) -> Result<Results, Diagnostics> {
        let span = self.span;
        let names: Vec<String> = results.iter().map(|(base, _)| self.fresh_name(base)).collect();
        let specs =
            names.iter().zip(results).map(|(n, (_, ty))| ResultSpec { name: n, ty: ty.clone(), span }).collect();
        let op =
            self.g().create_op(kind, operands, attrs, specs, span).map_err(|_| internal("a fresh name is taken"))?;
        let loc = self.loc;
        self.g().op_data_mut(op).loc = loc;
        self.link(op);
        Ok(self.op(op).results().collect())
    }

    /// A copy of `op` (same kind, attributes, location, metadata and annotation) reading
    /// `operands`, at the insertion point, with results named after `op`'s.
    pub fn clone_op(&mut self, op: OpId, operands: &[ValueId]) -> Result<Results, Diagnostics> {
        let data = self.op(op);
        let (kind, attrs, loc, extra) = (data.kind(), data.attrs_id(), data.loc_sym(), data.extra().cloned());
        let results: Vec<(String, TensorType)> =
            data.results().map(|r| (self.value_name(r).to_string(), self.value_type(r).clone())).collect();
        let results: Vec<(&str, TensorType)> = results.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let saved = self.loc;
        self.loc = loc;
        let built = self.build_with_attrs(kind, operands, attrs, &results);
        self.loc = saved;
        let built = built?;
        if let Some(extra) = extra {
            let new = self.producer(built[0]).ok_or_else(|| internal("a built value has no op"))?;
            *self.g().extra_mut(new) = extra;
        }
        Ok(built)
    }

    /// A value holding `value` at the insertion point: a `const` literal when it is small, else
    /// a `weight` of a new key (`base`, made unique) in the module's created weights, which
    /// `qc -o` writes out. The value is named after `base`.
    pub fn constant(&mut self, base: &str, value: Tensor) -> Result<ValueId, Diagnostics> {
        let shape: Vec<u64> = value.shape().iter().map(|&d| d as u64).collect();
        let ty = TensorType::fixed(value.dtype(), &shape);
        let (kind, attrs) = self.constant_source(base, value)?;
        let results = self.build_with_attrs(kind, &[], attrs, &[(base, ty)])?;
        results.first().copied().ok_or_else(|| internal("a constant without a result"))
    }

    /// Rewrites `op` in place as the op [`Rewriter::constant`] would build for `value`, which
    /// must have its result's type: a folded op keeps its result's name, location and position.
    pub fn fold_to_constant(&mut self, op: OpId, value: Tensor) -> Result<(), Diagnostics> {
        let result = self.op(op).result(0).ok_or_else(|| internal("a folded op without a result"))?;
        let base = self.value_name(result).to_string();
        let (kind, attrs) = self.constant_source(&base, value)?;
        self.update(op).rewrite(kind, &[], attrs);
        Ok(())
    }

    /// How an op yields `value`: its kind and attributes (see [`Rewriter::constant`]).
    fn constant_source(&mut self, base: &str, value: Tensor) -> Result<(OpKind, AttrsId), Diagnostics> {
        if value.len() <= INLINE_LIMIT {
            let attrs = self.attrs(ops::CONST, &[("value", Attr::Tensor(Arc::new(value)))])?;
            return Ok((ops::CONST, attrs));
        }
        let key = self.new_weight(base, value);
        Ok((ops::WEIGHT, self.attrs(ops::WEIGHT, &[("key", Attr::Str(key.as_str().into()))])?))
    }

    /// Stores `value` in the module's created weights under `base` (made unique: a key neither
    /// the weights file nor the created weights use) and returns the key.
    pub fn new_weight(&mut self, base: &str, value: Tensor) -> String {
        self.new_weight_avoiding(base, value, |_| false)
    }

    /// Replaces a created weight's tensor (a pass that updates the tensor it created before).
    pub fn set_created_weight(&mut self, key: &str, value: Tensor) {
        self.module.created_weights_mut().insert(key.to_string(), Arc::new(value));
    }

    // ---- replacing and erasing -----------------------------------------------------------

    /// Redirects every use of `from` (op operands and graph outputs) to `to`.
    pub fn replace_all_uses(&mut self, from: ValueId, to: ValueId) {
        self.g().replace_all_uses(from, to);
    }

    /// Replaces each result of `op` by the value at the same position of `with`, then erases
    /// `op`.
    pub fn replace_op(&mut self, op: OpId, with: &[ValueId]) {
        let results: Results = self.op(op).results().collect();
        for (r, &v) in results.into_iter().zip(with) {
            self.replace_all_uses(r, v);
        }
        self.erase(op);
    }

    /// Erases an op whose results are unused.
    pub fn erase(&mut self, op: OpId) {
        self.g().erase_op(op);
    }

    /// Moves a linked op to the insertion point (keeping its results and their uses): a pass
    /// that reorders, such as a conv–bn rewrite moving a parameter above its first reader.
    pub fn move_op(&mut self, op: OpId) {
        self.g().unlink(op);
        self.link(op);
    }

    /// Links the unlinked `op` at the insertion point, moving an `After`/`Start` point past it.
    fn link(&mut self, op: OpId) {
        match self.at {
            InsertPoint::Before(anchor) => self.g().insert_before(anchor, op),
            InsertPoint::After(anchor) => {
                self.g().insert_after(anchor, op);
                self.at = InsertPoint::After(op);
            }
            InsertPoint::Start => {
                match self.first_op() {
                    Some(first) => self.g().insert_before(first, op),
                    None => self.g().append(op),
                }
                self.at = InsertPoint::After(op);
            }
            InsertPoint::End => self.g().append(op),
        }
    }

    /// Changes `op` in place.
    pub fn update(&mut self, op: OpId) -> OpUpdate<'_> {
        OpUpdate { graph: self.g(), op }
    }

    /// Sets operand `index` of `op` for many `(op, index, value)` at once: one pass over each
    /// old value's uses in all (see [`Graph::set_operands`]).
    pub fn set_operands(&mut self, changes: &[(OpId, usize, ValueId)]) {
        self.g().set_operands(changes);
    }

    /// Makes room for `ops` more ops and `values` more values.
    pub fn reserve(&mut self, ops: usize, values: usize) {
        self.g().reserve(ops, values);
    }

    /// The index of the graph in the module (what tables keyed by (graph, op) need).
    pub fn graph_index(&self) -> usize {
        self.graph
    }

    /// [`Rewriter::new_weight`], also avoiding the keys `also_taken` reports: keys a pass knows
    /// `weight` ops to read although neither the weights file nor the created weights hold them
    /// (a module whose weights file is not open).
    pub fn new_weight_avoiding(&mut self, base: &str, value: Tensor, also_taken: impl Fn(&str) -> bool) -> String {
        let taken = |k: &str| also_taken(k) || self.module.weights().has(k);
        let key = if taken(base) {
            (1..).map(|i| format!("{base}_{i}")).find(|k| !taken(k)).unwrap_or_default()
        } else {
            base.to_string()
        };
        self.module.created_weights_mut().insert(key.clone(), Arc::new(value));
        key
    }
}

/// In-place changes to one op: see [`Rewriter::update`].
pub struct OpUpdate<'g> {
    graph: &'g mut Graph,
    op: OpId,
}

impl OpUpdate<'_> {
    /// Sets operand `index`, keeping use lists exact.
    pub fn set_operand(&mut self, index: usize, v: ValueId) -> &mut Self {
        self.graph.set_operand(self.op, index, v);
        self
    }

    /// Appends an operand (an optional one the op did not have), recording its use.
    pub fn push_operand(&mut self, v: ValueId) -> &mut Self {
        self.graph.push_operand(self.op, v);
        self
    }

    /// Sets the attribute `name` (which the op's kind must have).
    pub fn set_attr(&mut self, name: &str, value: Attr) -> Result<&mut Self, Diagnostics> {
        self.put_attr(name, Some(value))
    }

    /// Removes the optional attribute `name` (which the op's kind must have).
    pub fn clear_attr(&mut self, name: &str) -> Result<&mut Self, Diagnostics> {
        self.put_attr(name, None)
    }

    fn put_attr(&mut self, name: &str, value: Option<Attr>) -> Result<&mut Self, Diagnostics> {
        let data = self.graph.op(self.op);
        let def = data.def();
        let index =
            def.attr_index(name).ok_or_else(|| internal(&format!("`{}` has no attribute `{name}`", def.name)))?;
        let mut attrs = self.graph.attrs_of(data.attrs_id()).to_vec();
        attrs[index] = value;
        let id = self.graph.intern_attrs(attrs.into_boxed_slice());
        self.graph.op_data_mut(self.op).attrs = id;
        Ok(self)
    }

    /// Sets the whole attribute set (complete, in the kind's schema order).
    pub fn set_attrs(&mut self, attrs: AttrsId) -> &mut Self {
        self.graph.op_data_mut(self.op).attrs = attrs;
        self
    }

    /// Makes the op another kind with new operands and attributes; its results (names and
    /// types), location, metadata and position stay.
    pub fn rewrite(&mut self, kind: OpKind, operands: &[ValueId], attrs: AttrsId) -> &mut Self {
        self.graph.rewrite_op(self.op, kind, operands, attrs);
        self
    }

    pub fn set_loc(&mut self, loc: Option<Sym>) -> &mut Self {
        self.graph.op_data_mut(self.op).loc = loc;
        self
    }

    /// Sets the metadata dictionary (`meta {...}`).
    pub fn set_meta(&mut self, meta: Dict) -> &mut Self {
        self.graph.extra_mut(self.op).meta = meta;
        self
    }

    pub fn set_annotation(&mut self, annotation: Option<Annotation>) -> &mut Self {
        self.graph.extra_mut(self.op).annotation = annotation;
        self
    }

    /// The annotation, for a quantizer that edits one it wrote.
    pub fn annotation_mut(&mut self) -> Option<&mut Annotation> {
        self.graph.extra_mut(self.op).annotation.as_mut()
    }

    /// Location, metadata and annotation copied from `from`: PT2E's `node.meta = other.meta`.
    pub fn copy_metadata_from(&mut self, from: OpId) -> &mut Self {
        let (loc, extra) = (self.graph.op(from).loc_sym(), self.graph.op(from).extra().cloned());
        self.graph.op_data_mut(self.op).loc = loc;
        self.graph.set_extra(self.op, extra);
        self
    }
}

/// A bug in qc (never the input's fault), as a diagnostic.
pub fn internal(message: &str) -> Diagnostics {
    vec![Diag::error(format!("internal error: {message}")).note("this is a bug in qc")]
}
