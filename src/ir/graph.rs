//! The graph IR: one function body as arenas of ops and values plus a separate program order.
//!
//! Invariants (checked by [`crate::ir::verifier`]):
//! - every operand of a live op is a live value defined earlier in program order (an input of
//!   the graph or a result of an earlier op);
//! - `uses(v)` lists exactly the (user, operand index) pairs that read `v`, the graph outputs
//!   included; a value's def is the op or input slot that produces it;
//! - value names are unique within the graph and kept verbatim from the source text;
//! - the order list links every live op exactly once.
//!
//! Ops and values are never moved: erasing marks them dead and unlinks them from the order, so
//! ids held by a pass stay meaningful. Def→use is O(1) (`uses`), replace-all-uses is O(uses).

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::attr::{Attr, Attrs, Dict};
use super::entity::{entity_id, Arena, EntityId, Interner};
use super::quant::Annotation;
use super::types::TensorType;
use crate::diag::Span;
use crate::ops::{OpDef, OpKind};

entity_id!(
    /// An op in a [`Graph`].
    OpId,
    "op"
);
entity_id!(
    /// An SSA value in a [`Graph`].
    ValueId,
    "v"
);
entity_id!(
    /// An interned string (value names, locations).
    Sym,
    "sym"
);
entity_id!(
    /// An interned [`TensorType`].
    TypeId,
    "ty"
);
entity_id!(
    /// An interned attribute set.
    AttrsId,
    "attrs"
);

/// Interns strings; each distinct string is stored once per map key and once for lookup by id.
#[derive(Clone, Default)]
pub struct StrInterner {
    strings: Vec<Box<str>>,
    lookup: FxHashMap<Box<str>, Sym>,
}

impl StrInterner {
    pub fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.lookup.get(s) {
            return sym;
        }
        let sym = Sym::from_index(self.strings.len());
        self.strings.push(s.into());
        self.lookup.insert(s.into(), sym);
        sym
    }

    pub fn get(&self, s: &str) -> Option<Sym> {
        self.lookup.get(s).copied()
    }

    pub fn resolve(&self, sym: Sym) -> &str {
        &self.strings[sym.index()]
    }
}

/// Who reads a value: an op operand, or the graph's return list.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum User {
    Op(OpId),
    Output,
}

/// One read of a value: the reader and the operand (or output) position.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Use {
    pub user: User,
    pub index: u32,
}

/// What defines a value.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ValueDef {
    /// The `index`-th input of the graph.
    Input(u32),
    /// The `index`-th result of an op.
    Result(OpId, u32),
}

/// An SSA value.
#[derive(Clone, Debug)]
pub struct ValueData {
    pub name: Sym,
    pub ty: TypeId,
    pub def: ValueDef,
    pub uses: Vec<Use>,
    pub span: Span,
    pub alive: bool,
}

/// Optional per-op data that most ops lack, boxed so common ops stay small.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpExtra {
    /// Free-form metadata (`meta {...}`) that passes port to the ops they create.
    pub meta: Dict,
    /// A quantization annotation (`quant[...] -> ...`).
    pub annotation: Option<Annotation>,
}

/// An operation.
#[derive(Clone, Debug)]
pub struct OpData {
    pub kind: OpKind,
    pub operands: SmallVec<[ValueId; 3]>,
    /// Results are allocated contiguously: `first_result .. first_result + num_results`.
    first_result: ValueId,
    num_results: u32,
    pub attrs: AttrsId,
    /// The module path this op came from (`loc("layer1.0.conv1")`).
    pub loc: Option<Sym>,
    pub extra: Option<Box<OpExtra>>,
    /// Where the op was written; passes give new ops the span of the op they replace.
    pub span: Span,
    prev: Option<OpId>,
    next: Option<OpId>,
    pub alive: bool,
}

impl OpData {
    pub fn results(&self) -> impl ExactSizeIterator<Item = ValueId> + Clone {
        let first = self.first_result.index();
        (first..first + self.num_results as usize).map(ValueId::from_index)
    }

    pub fn result(&self, index: usize) -> Option<ValueId> {
        (index < self.num_results as usize).then(|| ValueId::from_index(self.first_result.index() + index))
    }

    pub fn num_results(&self) -> usize {
        self.num_results as usize
    }

    pub fn def(&self) -> &'static OpDef {
        self.kind.def()
    }
}

/// What a new op's results are called and typed as.
pub struct ResultSpec<'a> {
    pub name: &'a str,
    pub ty: TensorType,
    pub span: Span,
}

/// A graph (function): typed inputs, ops in program order, returned values.
#[derive(Clone, Default)]
pub struct Graph {
    pub name: String,
    pub span: Span,
    ops: Arena<OpId, OpData>,
    values: Arena<ValueId, ValueData>,
    first: Option<OpId>,
    last: Option<OpId>,
    live_ops: usize,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
    /// Declared output types of the signature.
    pub output_types: Vec<TypeId>,
    pub output_span: Span,
    names: FxHashMap<Sym, ValueId>,
    pub strings: StrInterner,
    types: Interner<TypeId, TensorType>,
    attr_sets: Interner<AttrsId, Attrs>,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph { name: name.to_string(), ..Graph::default() }
    }

    // ---- interning -------------------------------------------------------------------------

    pub fn intern_type(&mut self, ty: TensorType) -> TypeId {
        self.types.intern(ty)
    }

    pub fn type_of(&self, id: TypeId) -> &TensorType {
        &self.types[id]
    }

    pub fn intern_attrs(&mut self, attrs: Attrs) -> AttrsId {
        self.attr_sets.intern(attrs)
    }

    pub fn attrs_of(&self, id: AttrsId) -> &[Option<Attr>] {
        &self.attr_sets[id]
    }

    // ---- values ----------------------------------------------------------------------------

    pub fn value(&self, v: ValueId) -> &ValueData {
        &self.values[v]
    }

    pub fn value_type(&self, v: ValueId) -> &TensorType {
        &self.types[self.values[v].ty]
    }

    pub fn value_name(&self, v: ValueId) -> &str {
        self.strings.resolve(self.values[v].name)
    }

    pub fn uses(&self, v: ValueId) -> &[Use] {
        &self.values[v].uses
    }

    pub fn has_uses(&self, v: ValueId) -> bool {
        !self.values[v].uses.is_empty()
    }

    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.names.get(&self.strings.get(name)?).copied()
    }

    /// The op that defines `v`, if it is not a graph input.
    pub fn producer(&self, v: ValueId) -> Option<OpId> {
        match self.values[v].def {
            ValueDef::Result(op, _) => Some(op),
            ValueDef::Input(_) => None,
        }
    }

    /// All value names in use, live or not, for suggestions ("did you mean").
    pub fn value_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.values.iter().filter(|(_, v)| v.alive).map(|(_, v)| self.strings.resolve(v.name))
    }

    /// `base` if unused, else `base_1`, `base_2`, … (the FX convention).
    pub fn fresh_name(&self, base: &str) -> String {
        if self.value_by_name(base).is_none() {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}_{i}")).find(|n| self.value_by_name(n).is_none()).unwrap_or_default()
    }

    /// Declares a value name; `Err` with the existing value if it is already taken.
    fn new_value(&mut self, name: &str, ty: TensorType, def: ValueDef, span: Span) -> Result<ValueId, ValueId> {
        let sym = self.strings.intern(name);
        if let Some(&existing) = self.names.get(&sym) {
            return Err(existing);
        }
        let ty = self.types.intern(ty);
        let id = self.values.push(ValueData { name: sym, ty, def, uses: Vec::new(), span, alive: true });
        self.names.insert(sym, id);
        Ok(id)
    }

    pub fn add_input(&mut self, name: &str, ty: TensorType, span: Span) -> Result<ValueId, ValueId> {
        let index = self.inputs.len() as u32;
        let id = self.new_value(name, ty, ValueDef::Input(index), span)?;
        self.inputs.push(id);
        Ok(id)
    }

    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    pub fn set_outputs(&mut self, outputs: Vec<ValueId>) {
        for (i, v) in std::mem::take(&mut self.outputs).into_iter().enumerate() {
            self.remove_use(v, Use { user: User::Output, index: i as u32 });
        }
        for (i, &v) in outputs.iter().enumerate() {
            self.values[v].uses.push(Use { user: User::Output, index: i as u32 });
        }
        self.outputs = outputs;
    }

    pub fn num_values(&self) -> usize {
        self.values.len()
    }

    // ---- ops -------------------------------------------------------------------------------

    pub fn op(&self, op: OpId) -> &OpData {
        &self.ops[op]
    }

    pub fn op_mut(&mut self, op: OpId) -> &mut OpData {
        &mut self.ops[op]
    }

    /// The attribute `name` of `op` (its default when omitted in the text).
    pub fn attr(&self, op: OpId, name: &str) -> Option<&Attr> {
        let data = &self.ops[op];
        let index = data.def().attr_index(name)?;
        self.attr_sets[data.attrs][index].as_ref()
    }

    pub fn loc(&self, op: OpId) -> Option<&str> {
        self.ops[op].loc.map(|s| self.strings.resolve(s))
    }

    pub fn annotation(&self, op: OpId) -> Option<&Annotation> {
        self.ops[op].extra.as_ref()?.annotation.as_ref()
    }

    pub fn meta(&self, op: OpId) -> Option<&Dict> {
        self.ops[op].extra.as_ref().map(|e| &e.meta).filter(|m| !m.is_empty())
    }

    pub fn extra_mut(&mut self, op: OpId) -> &mut OpExtra {
        self.ops[op].extra.get_or_insert_with(Default::default)
    }

    pub fn num_ops(&self) -> usize {
        self.live_ops
    }

    /// Live ops in program order.
    pub fn ops(&self) -> OpIter<'_> {
        OpIter { graph: self, next: self.first }
    }

    /// Live ops in program order, collected so the graph can be mutated while walking them.
    pub fn op_ids(&self) -> Vec<OpId> {
        self.ops().collect()
    }

    pub fn next_op(&self, op: OpId) -> Option<OpId> {
        self.ops[op].next
    }

    pub fn prev_op(&self, op: OpId) -> Option<OpId> {
        self.ops[op].prev
    }

    /// Creates an op (unlinked), registering its uses and results. Fails with the clashing value
    /// if a result name is taken.
    pub fn create_op(
        &mut self,
        kind: OpKind,
        operands: &[ValueId],
        attrs: AttrsId,
        results: Vec<ResultSpec<'_>>,
        span: Span,
    ) -> Result<OpId, ValueId> {
        for r in &results {
            if let Some(existing) = self.value_by_name(r.name) {
                return Err(existing);
            }
        }
        let op = OpId::from_index(self.ops.len());
        let first_result = ValueId::from_index(self.values.len());
        let num_results = results.len() as u32;
        for (i, r) in results.into_iter().enumerate() {
            // Names were checked above and result names within one op are distinct by the
            // caller's contract; a clash here falls back to a fresh name rather than panicking.
            let name = if self.value_by_name(r.name).is_some() { self.fresh_name(r.name) } else { r.name.to_string() };
            let _ = self.new_value(&name, r.ty, ValueDef::Result(op, i as u32), r.span);
        }
        for (i, &v) in operands.iter().enumerate() {
            self.values[v].uses.push(Use { user: User::Op(op), index: i as u32 });
        }
        let pushed = self.ops.push(OpData {
            kind,
            operands: operands.into(),
            first_result,
            num_results,
            attrs,
            loc: None,
            extra: None,
            span,
            prev: None,
            next: None,
            alive: true,
        });
        debug_assert_eq!(pushed, op);
        self.live_ops += 1;
        Ok(op)
    }

    /// Links an unlinked op at the end of the program order.
    pub fn append(&mut self, op: OpId) {
        self.ops[op].prev = self.last;
        self.ops[op].next = None;
        match self.last {
            Some(last) => self.ops[last].next = Some(op),
            None => self.first = Some(op),
        }
        self.last = Some(op);
    }

    /// Links an unlinked op right before `anchor`.
    pub fn insert_before(&mut self, anchor: OpId, op: OpId) {
        let prev = self.ops[anchor].prev;
        self.ops[op].prev = prev;
        self.ops[op].next = Some(anchor);
        self.ops[anchor].prev = Some(op);
        match prev {
            Some(p) => self.ops[p].next = Some(op),
            None => self.first = Some(op),
        }
    }

    /// Links an unlinked op right after `anchor`.
    pub fn insert_after(&mut self, anchor: OpId, op: OpId) {
        match self.ops[anchor].next {
            Some(next) => self.insert_before(next, op),
            None => self.append(op),
        }
    }

    /// Links an unlinked op right after the definition of `v` (at the top for graph inputs).
    pub fn insert_after_def(&mut self, v: ValueId, op: OpId) {
        match self.producer(v) {
            Some(def) => self.insert_after(def, op),
            None => match self.first {
                Some(first) => self.insert_before(first, op),
                None => self.append(op),
            },
        }
    }

    fn unlink(&mut self, op: OpId) {
        let (prev, next) = (self.ops[op].prev, self.ops[op].next);
        match prev {
            Some(p) => self.ops[p].next = next,
            None => self.first = next,
        }
        match next {
            Some(n) => self.ops[n].prev = prev,
            None => self.last = prev,
        }
        self.ops[op].prev = None;
        self.ops[op].next = None;
    }

    fn remove_use(&mut self, v: ValueId, u: Use) {
        let uses = &mut self.values[v].uses;
        if let Some(pos) = uses.iter().position(|x| *x == u) {
            uses.swap_remove(pos);
        }
    }

    /// Erases an op whose results are unused: drops its uses of its operands, unlinks it and
    /// frees its result names.
    pub fn erase_op(&mut self, op: OpId) {
        debug_assert!(self.ops[op].results().all(|r| self.values[r].uses.is_empty()));
        let operands = std::mem::take(&mut self.ops[op].operands);
        for (i, &v) in operands.iter().enumerate() {
            self.remove_use(v, Use { user: User::Op(op), index: i as u32 });
        }
        self.unlink(op);
        for r in self.ops[op].results() {
            let name = self.values[r].name;
            self.names.remove(&name);
            self.values[r].alive = false;
        }
        self.ops[op].alive = false;
        self.live_ops -= 1;
    }

    /// Sets operand `index` of `op` to `v`, keeping use lists exact.
    pub fn set_operand(&mut self, op: OpId, index: usize, v: ValueId) {
        let old = self.ops[op].operands[index];
        let u = Use { user: User::Op(op), index: index as u32 };
        self.remove_use(old, u);
        self.values[v].uses.push(u);
        self.ops[op].operands[index] = v;
    }

    /// Rewrites `op` in place as another kind with new operands and attributes; its results
    /// (names and types), location, metadata and position stay.
    pub fn rewrite_op(&mut self, op: OpId, kind: OpKind, operands: &[ValueId], attrs: AttrsId) {
        let old = std::mem::take(&mut self.ops[op].operands);
        for (i, &v) in old.iter().enumerate() {
            self.remove_use(v, Use { user: User::Op(op), index: i as u32 });
        }
        for (i, &v) in operands.iter().enumerate() {
            self.values[v].uses.push(Use { user: User::Op(op), index: i as u32 });
        }
        let data = &mut self.ops[op];
        data.operands = operands.into();
        data.kind = kind;
        data.attrs = attrs;
    }

    /// Redirects every use of `from` to `to`.
    pub fn replace_all_uses(&mut self, from: ValueId, to: ValueId) {
        if from == to {
            return;
        }
        let uses = std::mem::take(&mut self.values[from].uses);
        for u in &uses {
            match u.user {
                User::Op(op) => self.ops[op].operands[u.index as usize] = to,
                User::Output => self.outputs[u.index as usize] = to,
            }
        }
        self.values[to].uses.extend(uses);
    }
}

/// Iterator over live ops in program order.
pub struct OpIter<'g> {
    graph: &'g Graph,
    next: Option<OpId>,
}

impl Iterator for OpIter<'_> {
    type Item = OpId;
    fn next(&mut self) -> Option<OpId> {
        let op = self.next?;
        self.next = self.graph.ops[op].next;
        Some(op)
    }
}

/// A module: graphs plus the module-level declarations they share.
#[derive(Clone, Default)]
pub struct Module {
    pub name: Option<String>,
    pub span: Span,
    /// The safetensors file holding `weight` data, relative to the `.qir` file.
    pub weights: Option<WeightsDecl>,
    /// The opened weights file, when `weights` was declared and could be read.
    pub weight_file: Option<std::sync::Arc<crate::weights::WeightFile>>,
    /// Tensors created by passes (folded or quantized weights), by key; they shadow the file's
    /// and are written to the output's weights file.
    pub created_weights: std::collections::BTreeMap<String, std::sync::Arc<crate::tensor::Tensor>>,
    /// Named quantization specs (`qspec @name = {...}`) that annotations refer to.
    pub qspecs: Vec<super::quant::NamedQSpec>,
    pub graphs: Vec<Graph>,
}

impl Module {
    /// Every tensor a `weight` op can read: created ones first, then the file's.
    pub fn weights(&self) -> crate::weights::Weights<'_> {
        crate::weights::Weights { file: self.weight_file.as_deref(), created: &self.created_weights }
    }
}

/// `weights "file.safetensors"`.
#[derive(Clone, Debug)]
pub struct WeightsDecl {
    pub path: String,
    pub span: Span,
}
