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

use std::borrow::Cow;

use smallvec::SmallVec;

use super::attr::{Attr, Attrs, Dict};
use super::entity::{fx_hash, prefetch_write, Arena, EntityId, HashIndex, Interner, AHEAD_BYTES};
pub use super::entity::{AttrsId, OpId, Sym, TypeId, ValueId};
use super::quant::Annotation;
use super::types::TensorType;
use crate::diag::Span;
use crate::ops::{OpDef, OpKind};
use crate::tensor::Tensor;
use crate::weights::{WeightFile, Weights, WeightsDigest};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Interns strings (locations, value names). All strings live back to back in one buffer and a
/// hash table of ids finds them by content, so a string costs its bytes plus about a dozen bytes
/// of bookkeeping and no allocation of its own.
#[derive(Clone, Default)]
pub struct StrInterner {
    /// Every string, back to back.
    text: String,
    /// `ends[i]` is where string `i` ends in `text`; it starts where string `i - 1` ends.
    ends: Vec<u32>,
    /// The interned (deduplicated) strings, by the hash of their text.
    table: HashIndex<Sym>,
}

impl StrInterner {
    /// The id of `s`; equal strings get equal ids.
    pub fn intern(&mut self, s: &str) -> Sym {
        let hash = fx_hash(s);
        if let Some(sym) = self.table.find(hash, |sym| self.resolve(sym) == s) {
            return sym;
        }
        let sym = self.push(s);
        let (text, ends) = (&self.text, &self.ends);
        self.table.insert_unique(hash, sym, |sym| fx_hash(slice(text, ends, sym)));
        sym
    }

    /// The id of `s` if it was interned. Value names are stored without interning (the graph
    /// finds values by name itself), so this does not find them.
    pub fn get(&self, s: &str) -> Option<Sym> {
        self.table.find(fx_hash(s), |sym| self.resolve(sym) == s)
    }

    /// Starts loading what interning `s` will read, for a caller that knows `s` a while before
    /// it interns it. Only a hint: it changes nothing.
    #[inline]
    pub fn prefetch(&self, s: &str) {
        self.table.prefetch(fx_hash(s));
    }

    pub fn resolve(&self, sym: Sym) -> &str {
        slice(&self.text, &self.ends, sym)
    }

    /// Bytes of all stored strings together.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Gives back the text buffer's unused room, as after reserving for strings that turned out
    /// to be duplicates.
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
    }

    /// Stores `s` under a new id, without looking for an equal string.
    fn push(&mut self, s: &str) -> Sym {
        // Grow by a quarter rather than doubling: for a big graph this buffer is tens of
        // megabytes, and doubling would leave up to half of it unused.
        if self.text.capacity() - self.text.len() < s.len() {
            self.text.reserve_exact(s.len().max(self.text.len() / 4).max(4096));
        }
        prefetch_write(self.text.as_ptr().wrapping_add(self.text.len() + AHEAD_BYTES));
        self.text.push_str(s);
        self.ends.push(u32::try_from(self.text.len()).expect("the strings of one graph exceed 4 GiB"));
        Sym::from_index(self.ends.len() - 1)
    }

    /// Makes room for `additional` more interned strings.
    pub(super) fn reserve(&mut self, additional: usize) {
        self.ends.reserve(additional);
        let (text, ends) = (&self.text, &self.ends);
        self.table.reserve(additional, |sym| fx_hash(slice(text, ends, sym)));
    }

    /// Makes room for `strings` more strings stored without interning (value names) and for
    /// `bytes` more bytes of text in all.
    fn reserve_stored(&mut self, strings: usize, bytes: usize) {
        self.ends.reserve(strings);
        self.text.reserve_exact(bytes);
    }
}

#[inline]
fn slice<'a>(text: &'a str, ends: &[u32], sym: Sym) -> &'a str {
    let i = sym.index();
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &text[start..ends[i] as usize]
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

/// The readers of a value; most values have one or two, which are stored inline.
pub type UseList = SmallVec<[Use; 2]>;

/// An SSA value.
#[derive(Clone, Debug)]
pub struct ValueData {
    pub(super) name: Sym,
    pub(super) ty: TypeId,
    pub(super) def: ValueDef,
    pub(super) uses: UseList,
    pub(super) span: Span,
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
    pub(super) kind: OpKind,
    pub(super) operands: SmallVec<[ValueId; 3]>,
    /// Results are allocated contiguously: `first_result .. first_result + num_results`.
    first_result: ValueId,
    /// At most 255 (the registry's ops have one or two); a byte keeps `OpData` at 64 bytes.
    num_results: u8,
    pub(super) attrs: AttrsId,
    /// The module path this op came from (`loc("layer1.0.conv1")`).
    pub(super) loc: Option<Sym>,
    pub(super) extra: Option<Box<OpExtra>>,
    /// Where the op was written; passes give new ops the span of the op they replace.
    pub(super) span: Span,
    prev: Option<OpId>,
    next: Option<OpId>,
    pub(super) alive: bool,
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

    pub fn kind(&self) -> OpKind {
        self.kind
    }

    pub fn operands(&self) -> &[ValueId] {
        &self.operands
    }

    /// The `index`-th operand, if the op has it (optional operands may be absent).
    pub fn operand(&self, index: usize) -> Option<ValueId> {
        self.operands.get(index).copied()
    }

    /// The interned attribute set (see [`Graph::attrs_of`]).
    pub fn attrs_id(&self) -> AttrsId {
        self.attrs
    }

    /// The interned location (see [`Graph::loc`] for its text).
    pub fn loc_sym(&self) -> Option<Sym> {
        self.loc
    }

    /// Metadata and annotation, when the op has either.
    pub fn extra(&self) -> Option<&OpExtra> {
        self.extra.as_deref()
    }

    pub fn span(&self) -> Span {
        self.span
    }

    /// Whether the op is still in the graph (erased ops keep their ids but are dead).
    pub fn is_alive(&self) -> bool {
        self.alive
    }
}

impl ValueData {
    pub fn name_sym(&self) -> Sym {
        self.name
    }

    pub fn type_id(&self) -> TypeId {
        self.ty
    }

    pub fn def(&self) -> ValueDef {
        self.def
    }

    pub fn uses(&self) -> &[Use] {
        &self.uses
    }

    pub fn span(&self) -> Span {
        self.span
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
    pub(super) name: String,
    pub(super) span: Span,
    ops: Arena<OpId, OpData>,
    values: Arena<ValueId, ValueData>,
    first: Option<OpId>,
    last: Option<OpId>,
    live_ops: usize,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
    /// Declared output types of the signature.
    pub(super) output_types: Vec<TypeId>,
    pub(super) output_span: Span,
    /// Live values, found by the hash of their name.
    names: HashIndex<ValueId>,
    pub(super) strings: StrInterner,
    types: Interner<TypeId, TensorType>,
    attr_sets: Interner<AttrsId, Attrs>,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph { name: name.to_string(), ..Graph::default() }
    }

    /// The function's name (`@name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the whole function was written.
    pub fn span(&self) -> Span {
        self.span
    }

    /// The declared result types of the signature.
    pub fn output_types(&self) -> &[TypeId] {
        &self.output_types
    }

    /// Where the result types (or the `return`) were written.
    pub fn output_span(&self) -> Span {
        self.output_span
    }

    /// The interned strings: locations and value names.
    pub fn strings(&self) -> &StrInterner {
        &self.strings
    }

    /// Makes room for `ops` more ops and `values` more values (inputs and results). A builder
    /// that knows the size up front, as lowering does, avoids regrowing the arenas and tables
    /// and leaves them tight.
    pub fn reserve(&mut self, ops: usize, values: usize) {
        self.ops.reserve(ops);
        self.values.reserve(values);
        let (arena, strings) = (&self.values, &self.strings);
        self.names.reserve(values, |v| fx_hash(strings.resolve(arena[v].name)));
        // Value names are stored without interning; locations are interned, about one per op.
        self.strings.reserve(ops);
        self.strings.reserve_stored(values, 0);
    }

    /// Makes room for `bytes` more bytes of value names and locations: a builder that knows
    /// them up front spares the string buffer its regrowth (each one copies every string).
    pub(super) fn reserve_text(&mut self, bytes: usize) {
        self.strings.reserve_stored(0, bytes);
    }

    /// Starts loading what defining or looking up a value called `name` will read, for a builder
    /// that knows the name a while before it creates the value. Only a hint: it changes nothing.
    #[inline]
    pub fn prefetch_name(&self, name: &str) {
        self.names.prefetch(fx_hash(name));
    }

    // ---- interning -------------------------------------------------------------------------

    pub(super) fn intern_type(&mut self, ty: TensorType) -> TypeId {
        self.types.intern(ty)
    }

    pub fn type_of(&self, id: TypeId) -> &TensorType {
        &self.types[id]
    }

    pub(super) fn intern_attrs(&mut self, attrs: Attrs) -> AttrsId {
        self.attr_sets.intern(attrs)
    }

    pub fn attrs_of(&self, id: AttrsId) -> &[Option<Attr>] {
        &self.attr_sets[id]
    }

    // ---- values ----------------------------------------------------------------------------

    pub fn value(&self, v: ValueId) -> &ValueData {
        &self.values[v]
    }

    /// Whether `v` is still in the graph: inputs always are, and results live as long as their
    /// op (erasing an op erases its results; keeping no flag of their own keeps values small).
    pub fn value_is_live(&self, v: ValueId) -> bool {
        match self.values[v].def {
            ValueDef::Input(_) => true,
            ValueDef::Result(op, _) => self.ops[op].alive,
        }
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
        self.find_name(fx_hash(name), name)
    }

    fn find_name(&self, hash: u64, name: &str) -> Option<ValueId> {
        self.names.find(hash, |v| self.strings.resolve(self.values[v].name) == name)
    }

    /// The op that defines `v`, if it is not a graph input.
    pub fn producer(&self, v: ValueId) -> Option<OpId> {
        match self.values[v].def {
            ValueDef::Result(op, _) => Some(op),
            ValueDef::Input(_) => None,
        }
    }

    /// The names of the live values, for suggestions ("did you mean").
    pub fn value_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.values.iter().filter(|&(v, _)| self.value_is_live(v)).map(|(_, v)| self.strings.resolve(v.name))
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
        let hash = fx_hash(name);
        if let Some(existing) = self.find_name(hash, name) {
            return Err(existing);
        }
        Ok(self.insert_value(hash, name, ty, def, span))
    }

    /// Adds a value whose name (with hash `hash`) is known to be free.
    fn insert_value(&mut self, hash: u64, name: &str, ty: TensorType, def: ValueDef, span: Span) -> ValueId {
        let name = self.strings.push(name);
        let ty = self.types.intern(ty);
        let id = self.values.push(ValueData { name, ty, def, uses: UseList::new(), span });
        let (values, strings) = (&self.values, &self.strings);
        self.names.insert_unique(hash, id, |v| fx_hash(strings.resolve(values[v].name)));
        id
    }

    pub(super) fn add_input(&mut self, name: &str, ty: TensorType, span: Span) -> Result<ValueId, ValueId> {
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

    pub(super) fn set_outputs(&mut self, outputs: Vec<ValueId>) {
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

    pub(super) fn extra_mut(&mut self, op: OpId) -> &mut OpExtra {
        self.ops[op].extra.get_or_insert_with(Default::default)
    }

    pub(super) fn set_extra(&mut self, op: OpId, extra: Option<OpExtra>) {
        self.ops[op].extra = extra.map(Box::new);
    }

    pub(super) fn op_data_mut(&mut self, op: OpId) -> &mut OpData {
        &mut self.ops[op]
    }

    /// The first live op in program order.
    pub fn first_op(&self) -> Option<OpId> {
        self.first
    }

    pub fn num_ops(&self) -> usize {
        self.live_ops
    }

    /// How many op ids have been handed out, erased ops included: every `OpId::index()` is below
    /// it, so it sizes dense side tables ([`super::entity::SideTable`]).
    pub fn num_op_ids(&self) -> usize {
        self.ops.len()
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
    ///
    /// # Panics
    /// With more than 255 results.
    pub(super) fn create_op(
        &mut self,
        kind: OpKind,
        operands: &[ValueId],
        attrs: AttrsId,
        results: Vec<ResultSpec<'_>>,
        span: Span,
    ) -> Result<OpId, ValueId> {
        let mut hashes: SmallVec<[u64; 2]> = SmallVec::with_capacity(results.len());
        for r in &results {
            let hash = fx_hash(r.name);
            if let Some(existing) = self.find_name(hash, r.name) {
                return Err(existing);
            }
            hashes.push(hash);
        }
        let op = OpId::from_index(self.ops.len());
        let first_result = ValueId::from_index(self.values.len());
        let num_results = u8::try_from(results.len()).expect("an op has at most 255 results");
        for (i, (r, hash)) in results.into_iter().zip(hashes).enumerate() {
            let def = ValueDef::Result(op, i as u32);
            // Names were checked above and result names within one op are distinct by the
            // caller's contract; a clash here falls back to a fresh name rather than panicking.
            let (hash, name) = if i > 0 && self.find_name(hash, r.name).is_some() {
                let fresh = self.fresh_name(r.name);
                (fx_hash(fresh.as_str()), Cow::Owned(fresh))
            } else {
                (hash, Cow::Borrowed(r.name))
            };
            self.insert_value(hash, &name, r.ty, def, r.span);
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
    pub(super) fn append(&mut self, op: OpId) {
        self.ops[op].prev = self.last;
        self.ops[op].next = None;
        match self.last {
            Some(last) => self.ops[last].next = Some(op),
            None => self.first = Some(op),
        }
        self.last = Some(op);
    }

    /// Links an unlinked op right before `anchor`.
    pub(super) fn insert_before(&mut self, anchor: OpId, op: OpId) {
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
    pub(super) fn insert_after(&mut self, anchor: OpId, op: OpId) {
        match self.ops[anchor].next {
            Some(next) => self.insert_before(next, op),
            None => self.append(op),
        }
    }

    pub(super) fn unlink(&mut self, op: OpId) {
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
        // From the back: the readers erased most often (by DCE's backward sweep) are the latest
        // ones, whose uses were recorded last.
        if let Some(pos) = uses.iter().rposition(|x| *x == u) {
            uses.swap_remove(pos);
        }
    }

    /// Erases an op whose results are unused: drops its uses of its operands, unlinks it and
    /// frees its result names.
    pub(super) fn erase_op(&mut self, op: OpId) {
        debug_assert!(self.ops[op].results().all(|r| self.values[r].uses.is_empty()));
        let operands = std::mem::take(&mut self.ops[op].operands);
        for (i, &v) in operands.iter().enumerate() {
            self.remove_use(v, Use { user: User::Op(op), index: i as u32 });
        }
        self.unlink(op);
        for r in self.ops[op].results() {
            let hash = fx_hash(self.strings.resolve(self.values[r].name));
            self.names.remove(hash, r);
        }
        self.ops[op].alive = false;
        self.live_ops -= 1;
    }

    /// Appends operand `v` to `op`, recording its use.
    pub(super) fn push_operand(&mut self, op: OpId, v: ValueId) {
        let index = self.ops[op].operands.len() as u32;
        self.values[v].uses.push(Use { user: User::Op(op), index });
        self.ops[op].operands.push(v);
    }

    /// Sets operand `index` of `op` to `v`, keeping use lists exact.
    pub(super) fn set_operand(&mut self, op: OpId, index: usize, v: ValueId) {
        let old = self.ops[op].operands[index];
        let u = Use { user: User::Op(op), index: index as u32 };
        self.remove_use(old, u);
        self.values[v].uses.push(u);
        self.ops[op].operands[index] = v;
    }

    /// [`Graph::set_operand`] for many operands at once: each `(op, index, value)` in order. One
    /// pass over each old value's uses in all, where one `set_operand` at a time searches the
    /// use list each time (quadratic in a value's readers).
    pub(super) fn set_operands(&mut self, changes: &[(OpId, usize, ValueId)]) {
        let mut removed: rustc_hash::FxHashSet<(ValueId, Use)> = rustc_hash::FxHashSet::default();
        for &(op, index, v) in changes {
            let u = Use { user: User::Op(op), index: index as u32 };
            removed.insert((self.ops[op].operands[index], u));
            self.values[v].uses.push(u);
            self.ops[op].operands[index] = v;
        }
        let mut old_values: Vec<ValueId> = removed.iter().map(|&(v, _)| v).collect();
        old_values.sort_unstable();
        old_values.dedup();
        for v in old_values {
            self.values[v].uses.retain(|u| !removed.contains(&(v, *u)));
        }
    }

    /// Rewrites `op` in place as another kind with new operands and attributes; its results
    /// (names and types), location, metadata and position stay.
    pub(super) fn rewrite_op(&mut self, op: OpId, kind: OpKind, operands: &[ValueId], attrs: AttrsId) {
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
    pub(super) fn replace_all_uses(&mut self, from: ValueId, to: ValueId) {
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

/// Which uses are recorded: see [`Graph::recorded_uses`].
pub struct RecordedUses {
    /// Per op (by id), the index of its first operand slot in `recorded`, then the number of
    /// operand slots (so op `i`'s slots are `first_slot[i]..first_slot[i + 1]`). 32 bits, like
    /// the ids: this is built for every verification, and a big graph's table is fresh memory.
    first_slot: Vec<u32>,
    /// Per operand slot of every op, then per graph output: whether the value there lists it,
    /// one bit each.
    recorded: Vec<u64>,
}

impl RecordedUses {
    /// Whether `u` appears in the use list of the value it reads (false for a slot that does
    /// not exist).
    pub fn contains(&self, u: Use) -> bool {
        let index = u.index as usize;
        let slot = match u.user {
            User::Op(op) => match self.first_slot.get(op.index()..op.index() + 2) {
                Some(&[first, end]) if first as usize + index < end as usize => first as usize + index,
                _ => return false,
            },
            User::Output => self.first_slot[self.first_slot.len() - 1] as usize + index,
        };
        self.recorded.get(slot / 64).is_some_and(|word| word >> (slot % 64) & 1 == 1)
    }
}

impl Graph {
    /// Checks every use list against the operands and outputs in one pass over both (linear in
    /// the size of the graph), for the verifier: searching a value's use list for each of its
    /// readers would be quadratic for a value read by many ops, such as a shared weight.
    pub fn recorded_uses(&self) -> RecordedUses {
        let mut first_slot = Vec::with_capacity(self.ops.len() + 1);
        let mut slots = 0;
        let slot32 = |slots: usize| u32::try_from(slots).expect("a graph has fewer than 2^32 operands");
        for (_, data) in self.ops.iter() {
            first_slot.push(slot32(slots));
            slots += data.operands.len();
        }
        first_slot.push(slot32(slots));
        let mut recorded = vec![0u64; (slots + self.outputs.len()).div_ceil(64)];
        for (v, data) in self.values.iter() {
            for u in &data.uses {
                let slot = match u.user {
                    User::Op(op) => match self.ops.get(op) {
                        Some(reader) if reader.operands.get(u.index as usize) == Some(&v) => {
                            first_slot[op.index()] as usize + u.index as usize
                        }
                        _ => continue,
                    },
                    User::Output if self.outputs.get(u.index as usize) == Some(&v) => slots + u.index as usize,
                    User::Output => continue,
                };
                recorded[slot / 64] |= 1 << (slot % 64);
            }
        }
        RecordedUses { first_slot, recorded }
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
    pub(super) weight_file: Option<Arc<WeightFile>>,
    /// Tensors created by passes (folded or quantized weights), by key; they shadow the file's
    /// and are written to the output's weights file. Only the rewriter adds to them.
    pub(super) created_weights: BTreeMap<String, Arc<Tensor>>,
    /// Named quantization specs (`qspec @name = {...}`) that annotations refer to.
    pub qspecs: Vec<super::quant::NamedQSpec>,
    pub graphs: Vec<Graph>,
}

impl Module {
    /// Every tensor a `weight` op can read: created ones first, then the file's.
    pub fn weights(&self) -> Weights<'_> {
        Weights { file: self.weight_file.as_deref(), created: &self.created_weights }
    }

    /// The opened weights file, if the module declares one.
    pub fn weight_file(&self) -> Option<&WeightFile> {
        self.weight_file.as_deref()
    }

    /// Attaches the opened weights file (the front end, once it has read the declaration).
    pub fn set_weight_file(&mut self, file: Arc<WeightFile>) {
        self.weight_file = Some(file);
    }

    /// The tensors passes created, by key.
    pub fn created_weights(&self) -> &BTreeMap<String, Arc<Tensor>> {
        &self.created_weights
    }

    pub(super) fn created_weights_mut(&mut self) -> &mut BTreeMap<String, Arc<Tensor>> {
        &mut self.created_weights
    }
}

/// `weights "file.safetensors"`.
#[derive(Clone, Debug)]
pub struct WeightsDecl {
    pub path: String,
    pub span: Span,
    /// The file's expected length and hash, when qc wrote it together with this module.
    pub digest: Option<WeightsDigest>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::types::DType;

    fn vector(n: u64) -> TensorType {
        TensorType::fixed(DType::F32, &[n])
    }

    /// `%name = relu(%input)`, appended.
    fn relu(g: &mut Graph, input: ValueId, name: &str) -> OpId {
        let kind = crate::ops::RELU;
        let attrs = g.intern_attrs(kind.def().complete_attrs(Vec::new()));
        let result = ResultSpec { name, ty: vector(4), span: Span::NONE };
        let op = g.create_op(kind, &[input], attrs, vec![result], Span::NONE).expect("the name is free");
        g.append(op);
        op
    }

    #[test]
    fn interning_deduplicates_and_resolves() {
        let mut s = StrInterner::default();
        let a = s.intern("layers.0.fc");
        let b = s.intern("layers.1.fc");
        let empty = s.intern("");
        assert_ne!(a, b);
        assert_eq!(s.intern("layers.0.fc"), a);
        assert_eq!(s.get("layers.1.fc"), Some(b));
        assert_eq!(s.get("layers.2.fc"), None);
        assert_eq!([s.resolve(a), s.resolve(b), s.resolve(empty)], ["layers.0.fc", "layers.1.fc", ""]);
    }

    #[test]
    fn names_and_uses_follow_erasure() {
        let mut g = Graph::new("main");
        g.reserve(2, 3);
        let x = g.add_input("x", vector(4), Span::NONE).expect("the name is free");
        assert_eq!(g.add_input("x", vector(4), Span::NONE), Err(x));
        let op = relu(&mut g, x, "y");
        let y = g.op(op).result(0);
        assert_eq!(g.value_by_name("y"), y);
        assert_eq!(g.uses(x), &[Use { user: User::Op(op), index: 0 }]);
        g.erase_op(op);
        assert_eq!(g.value_by_name("y"), None);
        assert!(g.uses(x).is_empty());
        // The name is free again.
        let again = relu(&mut g, x, "y");
        assert_eq!(g.value_by_name("y"), g.op(again).result(0));
        assert_eq!(g.value_by_name("x"), Some(x));
    }

    #[test]
    fn recorded_uses_find_exactly_the_listed_readers() {
        let mut g = Graph::new("main");
        let x = g.add_input("x", vector(4), Span::NONE).expect("the name is free");
        let a = relu(&mut g, x, "a");
        let b = relu(&mut g, x, "b");
        let out = g.op(b).result(0).expect("relu has a result");
        g.set_outputs(vec![out]);
        let recorded = g.recorded_uses();
        for u in [Use { user: User::Op(a), index: 0 }, Use { user: User::Op(b), index: 0 }] {
            assert!(recorded.contains(u));
        }
        assert!(recorded.contains(Use { user: User::Output, index: 0 }));
        assert!(!recorded.contains(Use { user: User::Op(a), index: 1 }), "relu has one operand");
        assert!(!recorded.contains(Use { user: User::Output, index: 1 }));

        g.values[x].uses.retain(|u| u.user != User::Op(a));
        let recorded = g.recorded_uses();
        assert!(!recorded.contains(Use { user: User::Op(a), index: 0 }));
        assert!(recorded.contains(Use { user: User::Op(b), index: 0 }));
    }
}
