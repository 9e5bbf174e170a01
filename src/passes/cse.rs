//! `cse`: common-subexpression elimination.
//!
//! Replaces a pure op by an earlier op of the same kind with the same operands, attributes,
//! result types and location, then deletes it. Ops carrying an annotation or metadata are left
//! alone (merging them could lose a quantization decision), as are ops with effects. The
//! location is part of the key so that per-module quantizer rules still see every op of their
//! module.
//!
//! Requires: a verified module. Leaves: a verified module with no two equivalent pure ops.
//! Idempotent. Linear: one forward sweep with a hash table (operands are already canonical when
//! an op is reached, so chains of duplicates collapse in one sweep).
//!
//! ```qir before
//! module {
//!   func @main(%x: f32[4]) -> f32[4] {
//!     %a = relu(%x) : f32[4]
//!     %b = relu(%x) : f32[4]
//!     %c = add(%a, %b) : f32[4]
//!     return %c
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   func @main(%x: f32[4]) -> f32[4] {
//!     %a = relu(%x) : f32[4]
//!     %c = add(%a, %a) : f32[4]
//!     return %c
//!   }
//! }
//! ```

use std::hash::{Hash, Hasher};

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use smallvec::SmallVec;

use super::{PassContext, PassDef};
use crate::diag::Diagnostics;
use crate::ir::graph::OpId;
use crate::ir::rewriter::Rewriter;
use crate::ir::{Graph, Module, ValueId};

pub const PASS: PassDef =
    PassDef { name: "cse", description: "Merge pure ops that compute the same value from the same operands.", run };

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for gi in 0..module.graphs.len() {
        changed |= eliminate_common_subexpressions(&mut Rewriter::new(module, gi));
    }
    Ok(changed)
}

/// Hashes what makes two ops interchangeable: kind, operands, attributes, result types and
/// location.
fn key_hash(graph: &Graph, op: OpId) -> u64 {
    let data = graph.op(op);
    let mut h = FxHasher::default();
    data.kind().hash(&mut h);
    data.operands().hash(&mut h);
    data.attrs_id().hash(&mut h);
    data.loc_sym().hash(&mut h);
    for r in data.results() {
        graph.value(r).type_id().hash(&mut h);
    }
    h.finish()
}

/// Whether `a` and `b` have equal keys (see [`key_hash`]).
fn same_key(graph: &Graph, a: OpId, b: OpId) -> bool {
    let (x, y) = (graph.op(a), graph.op(b));
    x.kind() == y.kind()
        && x.operands() == y.operands()
        && x.attrs_id() == y.attrs_id()
        && x.loc_sym() == y.loc_sym()
        && x.num_results() == y.num_results()
        && x.results().zip(y.results()).all(|(r, s)| graph.value(r).type_id() == graph.value(s).type_id())
}

/// Returns whether any op was merged.
pub fn eliminate_common_subexpressions(graph: &mut Rewriter<'_>) -> bool {
    // The ops seen so far, found by the hash of their key; the key is read from the graph, so a
    // table entry is just an id. An op's key never changes once it is in the table: merging
    // rewrites only the readers of the merged op, which come after it.
    let mut seen: HashTable<OpId> = HashTable::with_capacity(graph.num_ops());
    let mut changed = false;
    let mut cursor = graph.ops().next();
    while let Some(op) = cursor {
        cursor = graph.next_op(op);
        let data = graph.op(op);
        if !data.def().is_pure() || data.extra().is_some() {
            continue;
        }
        let hash = key_hash(graph, op);
        match seen.find(hash, |&earlier| same_key(graph, earlier, op)).copied() {
            Some(earlier) => {
                let results: SmallVec<[ValueId; 2]> = graph.op(earlier).results().collect();
                graph.replace_op(op, &results);
                changed = true;
            }
            None => {
                seen.insert_unique(hash, op, |&e| key_hash(graph, e));
            }
        }
    }
    changed
}
