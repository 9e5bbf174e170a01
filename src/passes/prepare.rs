//! `prepare`: turn quantization annotations into `observer` ops, with PT2E's rules.
//!
//! Follows `prepare()` of PT2E (`../shared/reference/pt2e.md` §1.6):
//! 1. Every annotated edge and output, in program order (an op's inputs in operand order, then
//!    its output), gets its spec.
//! 2. Specs are grouped with union-find: `shared(...)` joins its target; an input edge joins the
//!    other users' edges and the producer's output when their specs agree on dtype, range,
//!    qscheme, channel axis, dynamism and fixed qparams (implicit sharing; the observer kind is
//!    not compared, as in PT2E).
//! 3. Each group gets one observer instance, made from the spec of its first member in program
//!    order that is not itself `shared(...)`. PT2E instead takes the very first member and
//!    crashes when that one shares with something later (pytorch/ao#4421); qc gives the same
//!    result wherever PT2E works and a result, not a crash, where it does not.
//! 4. Observers are inserted: after a producer for an output spec (all users read the observer),
//!    and before a consumer for an input edge unless the producer's output observer is the
//!    same instance, or another consumer already observes that value with it. Two instances
//!    meeting on one edge give two observers in a row: a requantization.
//!
//! Observers are `observer` ops named `activation_post_process_N` in insertion order, as PT2E
//! names its observer modules; `instance` identifies the shared instance (ops with the same
//! instance pool their statistics). Derived specs become `kind = "derived"` observers listing
//! the instances they derive from; fixed specs `kind = "fixed_qparams"`.
//!
//! Requires: a verified, annotated module (`annotate`, or annotations written by hand).
//! Leaves: observers on every annotated edge and output; annotations stay (convert reads
//! them). Errors: a `shared(...)` target with no spec, a sharing cycle, a derived spec whose
//! sources are unobserved, an observer kind that cannot do the spec's qscheme, a spec that does
//! not fit the observed value (a channel axis past its rank). Not idempotent: run it once.
//! Linear in the graph: see `Readers` and `Groups::chain_end` for how PT2E's comparisons of
//! every reader with every other are kept to those that can change a group.
//!
//! ```qir before
//! module {
//!   qspec @act = {dtype = i8, qmin = -128, qmax = 127, qscheme = "per_tensor_affine", observer = "minmax"}
//!   qspec @weight = {dtype = i8, qmin = -127, qmax = 127, qscheme = "per_channel_symmetric", ch_axis = 0, observer = "per_channel_minmax"}
//!
//!   func @main(%x: f32[1,16], %w: f32[10,16]) -> f32[1,10] {
//!     %fc = linear(%x, %w) : f32[1,10] quant[@act, @weight] -> @act
//!     return %fc
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   qspec @act = {dtype = i8, qmin = -128, qmax = 127, qscheme = "per_tensor_affine", observer = "minmax"}
//!   qspec @weight = {dtype = i8, qmin = -127, qmax = 127, qscheme = "per_channel_symmetric", ch_axis = 0, observer = "per_channel_minmax"}
//!
//!   func @main(%x: f32[1,16], %w: f32[10,16]) -> f32[1,10] {
//!     %activation_post_process_0 = observer(%x) {kind = "minmax", dtype = i8, qmin = -128, qmax = 127} : f32[1,16]
//!     %activation_post_process_1 = observer(%w) {kind = "per_channel_minmax", dtype = i8, qmin = -127, qmax = 127, qscheme = "per_channel_symmetric", ch_axis = 0, instance = 1} : f32[10,16]
//!     %fc = linear(%activation_post_process_0, %activation_post_process_1) : f32[1,10] quant[@act, @weight] -> @act
//!     %activation_post_process_2 = observer(%fc) {kind = "minmax", dtype = i8, qmin = -128, qmax = 127, instance = 2} : f32[1,10]
//!     return %activation_post_process_2
//!   }
//! }
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{PassContext, PassDef};
use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::{Attr, Dict};
use crate::ir::graph::{Graph, OpId, Sym, User, ValueDef, ValueId};
use crate::ir::quant::{EdgeOrValue, QSpec, SpecRef};
use crate::ir::rewriter::{InsertPoint, Rewriter};
use crate::ir::{DType, Module};
use crate::ops;

pub const PASS: PassDef =
    PassDef { name: "prepare", description: "Insert observers for the annotations, sharing them as PT2E does.", run };

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    let qspecs: Vec<QSpec> = module.qspecs.iter().map(|q| q.spec.clone()).collect();
    for gi in 0..module.graphs.len() {
        changed |= prepare_graph(&mut Rewriter::new(module, gi), &qspecs)?;
    }
    Ok(changed)
}

/// A spec with named references resolved (borrowed from the module's named specs: a big graph
/// has one annotation per op and few distinct specs).
#[derive(Debug, PartialEq)]
enum Resolved<'q> {
    None,
    Spec(Cow<'q, QSpec>),
    Shared(EdgeOrValue),
    Derived { from: Vec<EdgeOrValue>, spec: Cow<'q, QSpec> },
}

fn resolve<'q>(spec: &SpecRef, qspecs: &'q [QSpec]) -> Resolved<'q> {
    let plain = |s: &SpecRef| match s {
        SpecRef::Named(i) => qspecs.get(*i).map(Cow::Borrowed),
        SpecRef::Inline(q) => Some(Cow::Owned(q.clone())),
        _ => None,
    };
    match spec {
        SpecRef::None => Resolved::None,
        SpecRef::Named(_) | SpecRef::Inline(_) => plain(spec).map_or(Resolved::None, Resolved::Spec),
        SpecRef::Shared(t) => Resolved::Shared(*t),
        SpecRef::Derived { from, spec } => match plain(spec) {
            Some(s) => Resolved::Derived { from: from.clone(), spec: s },
            None => Resolved::None,
        },
    }
}

/// The fields implicit sharing compares (PT2E's `_has_same_attr` over dtype, is_dynamic,
/// quant_min, quant_max, qscheme, ch_axis, scale, zero_point): a fixed spec has no `ch_axis`
/// field and the others no `scale`, so those never match each other.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SharingFields {
    dtype: DType,
    dynamic: bool,
    qmin: i64,
    qmax: i64,
    qscheme: crate::ir::quant::QScheme,
    ch_axis: Option<Option<i64>>,
    fixed: Option<(u64, i64)>,
}

fn sharing_fields(spec: &Resolved<'_>) -> Option<SharingFields> {
    let (s, derived) = match spec {
        Resolved::Spec(s) => (s, false),
        Resolved::Derived { spec, .. } => (spec, true),
        _ => return None,
    };
    let fixed = if derived { None } else { s.fixed.map(|(scale, zp)| (scale.to_bits(), zp)) };
    Some(SharingFields {
        dtype: s.dtype,
        dynamic: s.dynamic,
        qmin: s.qmin,
        qmax: s.qmax,
        qscheme: s.qscheme,
        ch_axis: if fixed.is_some() { None } else { Some(s.ch_axis) },
        fixed,
    })
}

/// Keys (edges and values) in program order with their specs, plus union-find over them.
struct Groups<'q> {
    keys: Vec<EdgeOrValue>,
    specs: Vec<Resolved<'q>>,
    index: FxHashMap<EdgeOrValue, usize>,
    parent: Vec<usize>,
    /// Per root with a `shared(...)` spec, once known: the key its chain of shared roots ends
    /// at (`None`: a cycle, or a target without a spec). A chain of forward `shared(%next)`
    /// references would otherwise be walked in full on every comparison (quadratic).
    chain_end: Vec<Option<Option<usize>>>,
    /// The roots whose `chain_end` was found through each root: when that root stops being
    /// one, their chains go elsewhere and are forgotten with it.
    chain_dependents: Vec<Vec<usize>>,
}

impl<'q> Groups<'q> {
    fn insert(&mut self, key: EdgeOrValue, spec: Resolved<'q>) {
        match self.index.get(&key) {
            // A value read twice by one op: the later entry wins, in the earlier position.
            Some(&i) => self.specs[i] = spec,
            None => {
                self.index.insert(key, self.keys.len());
                self.parent.push(self.keys.len());
                self.keys.push(key);
                self.specs.push(spec);
                self.chain_end.push(None);
                self.chain_dependents.push(Vec::new());
            }
        }
    }

    fn find(&mut self, mut i: usize) -> usize {
        let mut root = i;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        while self.parent[i] != root {
            let next = self.parent[i];
            self.parent[i] = root;
            i = next;
        }
        root
    }

    /// PT2E's `_union`: reversed when the parent's root shares exactly with the child's root.
    fn union(&mut self, parent: usize, child: usize) {
        let (rp, rc) = (self.find(parent), self.find(child));
        if rp == rc {
            return;
        }
        let demoted = if matches!(self.specs[rp], Resolved::Shared(t) if self.index.get(&t) == Some(&rc)) {
            self.parent[rp] = rc;
            rp
        } else {
            self.parent[rc] = rp;
            rc
        };
        self.forget_chains_through(demoted);
    }

    /// Forgets the chain ends found through `root`, which is no longer a root.
    fn forget_chains_through(&mut self, root: usize) {
        let mut stack = vec![root];
        while let Some(r) = stack.pop() {
            self.chain_end[r] = None;
            stack.append(&mut self.chain_dependents[r]);
        }
    }

    /// The concrete spec a (possibly shared) spec stands for, following current roots.
    fn unwrap(&mut self, i: usize) -> Option<&Resolved<'q>> {
        let end = match self.specs[i] {
            Resolved::Shared(t) => {
                let root = self.find(*self.index.get(&t)?);
                self.chain_end(root)?
            }
            _ => i,
        };
        Some(&self.specs[end])
    }

    /// Where the chain of shared roots from `root` ends: the first root with a spec of its own.
    /// Remembered for every root on the way, until one of the roots it passes stops being one.
    fn chain_end(&mut self, root: usize) -> Option<usize> {
        let mut path: Vec<usize> = Vec::new();
        let mut on_path: FxHashSet<usize> = FxHashSet::default();
        let mut r = root;
        let end = loop {
            let Resolved::Shared(target) = self.specs[r] else { break Some(r) };
            if let Some(known) = self.chain_end[r] {
                break known;
            }
            if !on_path.insert(r) {
                break None; // A cycle of shared specs.
            }
            path.push(r);
            let Some(&t) = self.index.get(&target) else { break None };
            let next = self.find(t);
            self.chain_dependents[next].push(r);
            r = next;
        };
        for r in path {
            self.chain_end[r] = Some(end);
        }
        end
    }
}

/// What implicit sharing compares a value's input edges with: the edges of its other readers
/// (each consumer once, in use order), then the value's own output. PT2E compares each edge
/// with all of them, which is quadratic in a value's readers; this gives the same unions
/// touching only the members that can change anything.
struct Readers {
    /// Keys (of `Groups`) in comparison order.
    members: Vec<usize>,
    /// Positions in `members` of keys with a plain spec, by the fields they compare with, and
    /// whether those keys are already one group.
    by_fields: FxHashMap<SharingFields, (Vec<usize>, bool)>,
    /// Positions in `members` of `shared(...)` keys: what they compare as depends on the
    /// groups so far, so they are compared again for each edge, but for those already in
    /// the edge's group (a union with them changes nothing).
    shared: Vec<usize>,
    /// The last edge compared, and the positions of the `shared(...)` keys that were not in
    /// its group then. Groups only grow, so for an edge in the same group only these need a
    /// look: one edge joins a value's readers, the others find nothing left to join.
    last: Option<usize>,
    outside_last: Vec<usize>,
}

impl Readers {
    fn of(g: &Graph, groups: &Groups<'_>, value: ValueId) -> Readers {
        let mut members = Vec::new();
        let mut seen = FxHashSet::default();
        let keys = g
            .uses(value)
            .iter()
            .filter_map(|u| match u.user {
                User::Op(user) => Some(EdgeOrValue::Edge { value, consumer: user }),
                User::Output => None,
            })
            .chain(std::iter::once(EdgeOrValue::Value(value)));
        for key in keys {
            if let Some(&j) = groups.index.get(&key) {
                if seen.insert(j) {
                    members.push(j);
                }
            }
        }
        let mut by_fields: FxHashMap<SharingFields, (Vec<usize>, bool)> = FxHashMap::default();
        let mut shared = Vec::new();
        for (position, &j) in members.iter().enumerate() {
            match &groups.specs[j] {
                Resolved::Shared(_) => shared.push(position),
                spec => {
                    if let Some(fields) = sharing_fields(spec) {
                        by_fields.entry(fields).or_default().0.push(position);
                    }
                }
            }
        }
        Readers { members, by_fields, shared, last: None, outside_last: Vec::new() }
    }

    /// Unions edge `i` (whose spec compares as `fields`) with each other member that compares
    /// the same, in member order. Members with a plain spec compare as they always will, so
    /// only those with `fields` can match; once an edge with a plain spec has joined them all,
    /// they stay one group and only the first of them can still change anything.
    fn share_implicitly(&mut self, groups: &mut Groups<'_>, i: usize, fields: &SharingFields) {
        let plain_edge = !matches!(groups.specs[i], Resolved::Shared(_));
        let same: &[usize] = match self.by_fields.get(fields) {
            None => &[],
            Some((same, true)) if plain_edge => &same[..0],
            Some((same, true)) => &same[..same.len().min(1)],
            Some((same, false)) => same,
        };
        let in_last_group = self.last.is_some_and(|last| groups.find(last) == groups.find(i));
        let shared: &[usize] = if in_last_group { &self.outside_last } else { &self.shared };
        // Both lists are in member order: merge them.
        let (mut a, mut b) = (same.iter().peekable(), shared.iter().peekable());
        loop {
            let position = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), None) => a.next(),
                (_, Some(_)) => b.next(),
                (None, None) => break,
            };
            let Some(&position) = position else { break };
            let j = self.members[position];
            if j != i && groups.unwrap(j).and_then(sharing_fields).as_ref() == Some(fields) {
                groups.union(j, i);
            }
        }
        let root = groups.find(i);
        let outside: Vec<usize> =
            shared.iter().copied().filter(|&position| groups.find(self.members[position]) != root).collect();
        self.outside_last = outside;
        self.last = Some(i);
        if plain_edge {
            if let Some((_, joined)) = self.by_fields.get_mut(fields) {
                *joined = true;
            }
        }
    }
}

fn describe(g: &Graph, key: EdgeOrValue) -> String {
    match key {
        EdgeOrValue::Value(v) => format!("`%{}`", g.value_name(v)),
        EdgeOrValue::Edge { value, consumer } => {
            let op = g.op(consumer).result(0).map_or("?", |r| g.value_name(r));
            format!("the edge `%{} -> %{op}`", g.value_name(value))
        }
    }
}

fn key_span(g: &Graph, key: EdgeOrValue) -> crate::diag::Span {
    match key {
        EdgeOrValue::Value(v) => g.producer(v).map_or(g.value(v).span(), |op| g.op(op).span()),
        EdgeOrValue::Edge { consumer, .. } => g.op(consumer).span(),
    }
}

/// Prepares one graph in four phases: collect the specs, group them, give each group an
/// observer instance, insert the observers.
fn prepare_graph(rw: &mut Rewriter<'_>, qspecs: &[QSpec]) -> Result<bool, Diagnostics> {
    let original: Vec<OpId> = rw.op_ids();
    let mut groups = collect_specs(rw, &original, qspecs);
    if groups.keys.is_empty() {
        return Ok(false);
    }
    share(rw, &mut groups)?;
    let plan = InstancePlan::new(rw, &mut groups)?;
    insert_observers(rw, &original, &groups, &plan)?;
    Ok(true)
}

/// Phase 1: the specs by edge and value, in program order.
fn collect_specs<'q>(g: &Graph, original: &[OpId], qspecs: &'q [QSpec]) -> Groups<'q> {
    let mut groups = Groups {
        keys: Vec::new(),
        specs: Vec::new(),
        index: FxHashMap::default(),
        parent: Vec::new(),
        chain_end: Vec::new(),
        chain_dependents: Vec::new(),
    };
    for &op in original {
        let Some(annotation) = g.annotation(op) else { continue };
        for (i, spec) in annotation.inputs.iter().enumerate() {
            let value = g.op(op).operands()[i];
            groups.insert(EdgeOrValue::Edge { value, consumer: op }, resolve(spec, qspecs));
        }
        if let (Some(out), Some(result)) = (&annotation.output, g.op(op).result(0)) {
            let resolved = resolve(out, qspecs);
            if resolved != Resolved::None {
                groups.insert(EdgeOrValue::Value(result), resolved);
            }
        }
    }
    groups
}

/// Phase 2: union-find, in dict order, as PT2E's `_get_edge_or_node_to_group_id`: explicit
/// `shared(...)` specs, and implicit sharing between a value's readers and its output.
fn share(g: &Graph, groups: &mut Groups<'_>) -> Result<(), Diagnostics> {
    let mut errors = Vec::new();
    let missing_target = |key: EdgeOrValue, target: EdgeOrValue| {
        Diag::error(format!(
            "{} shares the observer of {}, which has no quantization spec",
            describe(g, key),
            describe(g, target)
        ))
        .at(key_span(g, key), "annotated here")
        .help("annotate the target too (or share with something that is annotated)")
    };
    let mut fanouts: FxHashMap<ValueId, Readers> = FxHashMap::default();
    for i in 0..groups.keys.len() {
        let key = groups.keys[i];
        if let EdgeOrValue::Edge { value, .. } = key {
            if let Some(fields) = groups.unwrap(i).and_then(sharing_fields) {
                // Implicit sharing: other users of the value first, then its producer.
                let readers = fanouts.entry(value).or_insert_with(|| Readers::of(g, groups, value));
                readers.share_implicitly(groups, i, &fields);
            }
        }
        if let Resolved::Shared(target) = groups.specs[i] {
            match groups.index.get(&target) {
                Some(&t) => groups.union(t, i),
                None => errors.push(missing_target(key, target)),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Phase 3: one observer instance per group, from its first concrete member in program order, with
/// the attributes of its observers.
struct InstancePlan {
    /// Each key's group root.
    roots: Vec<usize>,
    /// Each root's instance (`None`: the group quantizes nothing).
    instance_of_root: FxHashMap<usize, Option<u32>>,
    /// The observer attributes of each instance.
    observer_attrs: Vec<Vec<(&'static str, Attr)>>,
}

impl InstancePlan {
    fn new(g: &Graph, groups: &mut Groups<'_>) -> Result<InstancePlan, Diagnostics> {
        let n = groups.keys.len();
        let roots: Vec<usize> = (0..n).map(|i| groups.find(i)).collect();
        let mut creator: FxHashMap<usize, usize> = FxHashMap::default();
        for (i, &root) in roots.iter().enumerate() {
            if !matches!(groups.specs[i], Resolved::Shared(_)) {
                creator.entry(root).or_insert(i);
            }
        }
        // Instance ids follow the order in which PT2E would create them: first member order.
        let mut instance_of_root: FxHashMap<usize, Option<u32>> = FxHashMap::default();
        let mut instances: Vec<usize> = Vec::new();
        for (i, &root) in roots.iter().enumerate() {
            if instance_of_root.contains_key(&root) {
                continue;
            }
            let Some(&c) = creator.get(&root) else {
                return Err(vec![Diag::error(format!(
                    "{} is in a cycle of shared specs with no concrete spec",
                    describe(g, groups.keys[i])
                ))
                .at(key_span(g, groups.keys[i]), "part of the cycle")
                .help("one member of a sharing group must have a spec of its own")]);
            };
            let id = match groups.specs[c] {
                Resolved::None => None,
                _ => {
                    instances.push(c);
                    Some(instances.len() as u32 - 1)
                }
            };
            instance_of_root.insert(root, id);
        }
        let mut plan = InstancePlan { roots, instance_of_root, observer_attrs: Vec::with_capacity(instances.len()) };
        for (id, &c) in instances.iter().enumerate() {
            let attrs = plan.observer_fields(g, groups, id as u32, c)?;
            plan.observer_attrs.push(attrs);
        }
        Ok(plan)
    }

    /// The instance observing `key`, if any.
    fn instance_of(&self, groups: &Groups<'_>, key: &EdgeOrValue) -> Option<u32> {
        groups.index.get(key).and_then(|&i| self.instance_of_root.get(&self.roots[i]).copied().flatten())
    }

    /// The observer attributes of instance `id`, created by key `c`.
    fn observer_fields(
        &self,
        g: &Graph,
        groups: &Groups<'_>,
        id: u32,
        c: usize,
    ) -> Result<Vec<(&'static str, Attr)>, Diagnostics> {
        Ok(match &groups.specs[c] {
            Resolved::Spec(spec) => observer_fields(spec, id).map_err(|m| {
                vec![Diag::error(format!("cannot observe {}: {m}", describe(g, groups.keys[c])))
                    .at(key_span(g, groups.keys[c]), "annotated here")]
            })?,
            Resolved::Derived { from, spec } => {
                let mut sources = Vec::new();
                for f in from {
                    match self.instance_of(groups, f) {
                        Some(s) => sources.push(Attr::Int(i64::from(s))),
                        None => {
                            return Err(vec![Diag::error(format!(
                                "{} derives its qparams from {}, which is not observed",
                                describe(g, groups.keys[c]),
                                describe(g, *f)
                            ))
                            .at(key_span(g, groups.keys[c]), "derived spec here")])
                        }
                    }
                }
                // No observer of its own: the range and scheme, and where the qparams come from.
                let mut fields: Vec<(&'static str, Attr)> = vec![
                    ("kind", Attr::Str("derived".into())),
                    ("dtype", Attr::DType(spec.dtype)),
                    ("qmin", Attr::Int(spec.qmin)),
                    ("qmax", Attr::Int(spec.qmax)),
                    ("qscheme", Attr::Str(spec.qscheme.name().into())),
                    ("instance", Attr::Int(i64::from(id))),
                ];
                if let (Some(axis), true) = (spec.ch_axis, spec.qscheme.is_per_channel()) {
                    fields.push(("ch_axis", Attr::Int(axis)));
                }
                let mut options = Dict::new();
                options.insert("derived_from", Attr::List(sources));
                fields.push(("options", Attr::Dict(options)));
                fields
            }
            Resolved::None | Resolved::Shared(_) => Vec::new(),
        })
    }
}

/// Phase 4: observers, over the original ops in order: one per observed input edge (shared by the
/// edges of one value and instance) and one per observed output.
fn insert_observers(
    rw: &mut Rewriter<'_>,
    original: &[OpId],
    groups: &Groups<'_>,
    plan: &InstancePlan,
) -> Result<(), Diagnostics> {
    let mut observers = ObserverMaker { plan, counter: 0, input_anchors: BTreeMap::new() };
    let mut inserted: FxHashMap<ValueId, u32> = FxHashMap::default(); // observer result → instance
                                                                      // The observer of each value per instance (there is at most one), and the operands to point
                                                                      // at observers, set together at the end: one at a time, both would search a use list per
                                                                      // reader, quadratic in a value's readers.
    let mut observer_of: FxHashMap<(ValueId, u32), ValueId> = FxHashMap::default();
    let mut new_operands: Vec<(OpId, usize, ValueId)> = Vec::new();
    for &op in original {
        if rw.annotation(op).is_none() {
            continue;
        }
        let loc = rw.op(op).loc_sym();
        for i in 0..rw.op(op).operands().len() {
            let arg = rw.op(op).operands()[i];
            let mut original_arg = arg;
            while let Some(p) = rw.producer(original_arg).filter(|_| inserted.contains_key(&original_arg)) {
                original_arg = rw.op(p).operands()[0];
            }
            let edge = EdgeOrValue::Edge { value: original_arg, consumer: op };
            let Some(id) = plan.instance_of(groups, &edge) else { continue };
            if plan.instance_of(groups, &EdgeOrValue::Value(original_arg)) == Some(id) {
                continue;
            }
            let observed = match observer_of.get(&(arg, id)) {
                Some(&r) => r,
                None => {
                    let r = observers.make(rw, arg, id, loc)?;
                    inserted.insert(r, id);
                    observer_of.insert((arg, id), r);
                    r
                }
            };
            new_operands.push((op, i, observed));
        }
        let Some(result) = rw.op(op).result(0) else { continue };
        let Some(id) = plan.instance_of(groups, &EdgeOrValue::Value(result)) else { continue };
        let observed = observers.make(rw, result, id, loc)?;
        inserted.insert(observed, id);
        observer_of.insert((result, id), observed);
        // Every reader of the result reads the observer, but the observer itself.
        rw.replace_all_uses(result, observed);
        if let Some(observer_op) = rw.producer(observed) {
            rw.update(observer_op).set_operand(0, result);
        }
    }
    rw.set_operands(&new_operands);
    Ok(())
}

/// Builds observers: names them `activation_post_process_<n>` as PT2E does, and places them.
struct ObserverMaker<'p> {
    plan: &'p InstancePlan,
    counter: usize,
    /// The last observer placed after each graph input, to keep input order at the top.
    input_anchors: BTreeMap<u32, OpId>,
}

impl ObserverMaker<'_> {
    /// An observer of `input` for instance `id`, right after `input`'s definition; its result.
    fn make(
        &mut self,
        rw: &mut Rewriter<'_>,
        input: ValueId,
        id: u32,
        loc: Option<Sym>,
    ) -> Result<ValueId, Diagnostics> {
        let def = ops::OBSERVER.def();
        let mut slots: Vec<Option<Attr>> = vec![None; def.attrs.len()];
        for (name, value) in &self.plan.observer_attrs[id as usize] {
            if let Some(i) = def.attr_index(name) {
                slots[i] = Some(value.clone());
            }
        }
        let attrs = def.complete_attrs(slots);
        let span = rw.producer(input).map_or(rw.value(input).span(), |p| rw.op(p).span());
        // A hand-written spec may not fit the value (a channel axis past its rank): say so
        // here rather than leave the verifier an invalid observer.
        if let Err(message) = def.infer(&[rw.value_type(input)], &attrs, &[]) {
            return Err(vec![Diag::error(format!(
                "cannot observe `%{}` ({}) with its spec: {message}",
                rw.value_name(input),
                rw.value_type(input)
            ))
            .at(span, "observed here")
            .help("check the spec's `ch_axis` (and dtype) against the annotated value")]);
        }
        let name = loop {
            let candidate = format!("activation_post_process_{}", self.counter);
            self.counter += 1;
            if rw.value_by_name(&candidate).is_none() {
                break candidate;
            }
        };
        let ty = rw.value_type(input).clone();
        // Observers of graph inputs go at the top in input order, as PT2E places them after each
        // placeholder.
        let input_index = match rw.value(input).def() {
            ValueDef::Input(index) => Some(index),
            ValueDef::Result(..) => None,
        };
        match input_index {
            None => rw.set_insertion_after_def(input),
            Some(index) => match self.input_anchors.range(..=index).next_back() {
                Some((_, &anchor)) => rw.set_insertion_after(anchor),
                None => rw.set_insertion_point(InsertPoint::Start),
            },
        };
        let attrs = rw.intern_attrs(attrs);
        let observed =
            rw.set_span(span).set_loc(loc).build_with_attrs(ops::OBSERVER, &[input], attrs, &[(&name, ty)])?;
        if let (Some(index), Some(op)) = (input_index, rw.producer(observed[0])) {
            self.input_anchors.insert(index, op);
        }
        Ok(observed[0])
    }
}

/// The `observer` op attributes for a spec: its kind, range, qscheme, channel axis (kept only
/// for per-channel observer kinds, as PT2E drops `ch_axis` for every other class) and options.
fn observer_fields(spec: &QSpec, instance: u32) -> Result<Vec<(&'static str, Attr)>, String> {
    let kind = match (spec.fixed, spec.dynamic) {
        (Some(_), _) => "fixed_qparams",
        (None, true) if spec.observer == "minmax" => "placeholder",
        _ => spec.observer.as_str(),
    };
    let per_channel_kind = kind.contains("per_channel");
    if spec.qscheme.is_per_channel() && !per_channel_kind && !matches!(kind, "fixed_qparams" | "placeholder") {
        return Err(format!(
            "the `{kind}` observer cannot compute {} qparams; use a per-channel observer",
            spec.qscheme
        ));
    }
    let mut fields: Vec<(&'static str, Attr)> = vec![
        ("kind", Attr::Str(kind.into())),
        ("dtype", Attr::DType(spec.dtype)),
        ("qmin", Attr::Int(spec.qmin)),
        ("qmax", Attr::Int(spec.qmax)),
        ("qscheme", Attr::Str(spec.qscheme.name().into())),
        ("instance", Attr::Int(i64::from(instance))),
    ];
    if let (Some(axis), true) = (spec.ch_axis, per_channel_kind) {
        fields.push(("ch_axis", Attr::Int(axis)));
    }
    let mut options = spec.options.clone();
    if let Some((scale, zp)) = spec.fixed {
        options.insert("scale", Attr::Float(scale));
        options.insert("zero_point", Attr::Int(zp));
    }
    if !options.is_empty() {
        fields.push(("options", Attr::Dict(options)));
    }
    Ok(fields)
}
