//! The graph builder: how a front end makes a new graph, statement by statement, before any
//! pass sees it (passes change graphs only through [`super::rewriter::Rewriter`]).
//!
//! A [`GraphBuilder`] owns the graph under construction: it declares inputs, appends ops in
//! source order under the names written (a taken name is an error the caller reports), and
//! records each op's location, metadata and annotation; [`GraphBuilder::finish`] hands the
//! graph over. It dereferences to the [`Graph`] for lookups while building.

use std::ops::Deref;

use super::attr::{Attrs, Dict};
use super::graph::{AttrsId, Graph, OpId, ResultSpec, TypeId, ValueId};
use super::quant::Annotation;
use super::types::TensorType;
use crate::diag::Span;
use crate::ops::OpKind;

/// A graph under construction; see the module doc.
pub struct GraphBuilder {
    graph: Graph,
}

impl Deref for GraphBuilder {
    type Target = Graph;

    fn deref(&self) -> &Graph {
        &self.graph
    }
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder { graph: Graph::new(name) }
    }

    /// Makes room for `ops` more ops and `values` more values (see [`Graph::reserve`]).
    pub fn reserve(&mut self, ops: usize, values: usize) {
        self.graph.reserve(ops, values);
    }

    /// Makes room for `bytes` more bytes of value names and locations.
    pub fn reserve_text(&mut self, bytes: usize) {
        self.graph.reserve_text(bytes);
    }

    /// Starts loading what interning `loc` will read (a hint; see [`GraphBuilder::set_loc`]).
    pub fn prefetch_loc(&self, loc: &str) {
        self.graph.strings.prefetch(loc);
    }

    pub fn intern_type(&mut self, ty: TensorType) -> TypeId {
        self.graph.intern_type(ty)
    }

    pub fn intern_attrs(&mut self, attrs: Attrs) -> AttrsId {
        self.graph.intern_attrs(attrs)
    }

    /// Declares the next input; `Err` with the existing value if the name is taken.
    pub fn add_input(&mut self, name: &str, ty: TensorType, span: Span) -> Result<ValueId, ValueId> {
        self.graph.add_input(name, ty, span)
    }

    /// The declared result types of the signature.
    pub fn set_output_types(&mut self, types: Vec<TensorType>) {
        self.graph.output_types = types.into_iter().map(|t| self.graph.intern_type(t)).collect();
    }

    /// Where the signature's result types (then the `return`) were written.
    pub fn set_output_span(&mut self, span: Span) {
        self.graph.output_span = span;
    }

    /// Where the whole function was written.
    pub fn set_span(&mut self, span: Span) {
        self.graph.span = span;
    }

    /// Appends `kind(operands) {attrs}` with results named and typed as `results`; `Err` with
    /// the clashing value if a result name is taken.
    pub fn push_op(
        &mut self,
        kind: OpKind,
        operands: &[ValueId],
        attrs: AttrsId,
        results: Vec<ResultSpec<'_>>,
        span: Span,
    ) -> Result<OpId, ValueId> {
        let op = self.graph.create_op(kind, operands, attrs, results, span)?;
        self.graph.append(op);
        Ok(op)
    }

    /// Sets `op`'s location (`loc("layer1.0.conv1")`), interning it.
    pub fn set_loc(&mut self, op: OpId, loc: &str) {
        let sym = self.graph.strings.intern(loc);
        self.graph.op_data_mut(op).loc = Some(sym);
    }

    pub fn set_meta(&mut self, op: OpId, meta: Dict) {
        self.graph.extra_mut(op).meta = meta;
    }

    pub fn set_annotation(&mut self, op: OpId, annotation: Annotation) {
        self.graph.extra_mut(op).annotation = Some(annotation);
    }

    /// The returned values.
    pub fn set_outputs(&mut self, outputs: Vec<ValueId>) {
        self.graph.set_outputs(outputs);
    }

    /// The finished graph, its string buffer trimmed.
    pub fn finish(mut self) -> Graph {
        self.graph.strings.shrink_to_fit();
        self.graph
    }
}
