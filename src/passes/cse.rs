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
use crate::ir::{Graph, Module, ValueId};

pub const PASS: PassDef =
    PassDef { name: "cse", description: "Merge pure ops that compute the same value from the same operands.", run };

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for graph in &mut module.graphs {
        changed |= eliminate_common_subexpressions(graph);
    }
    Ok(changed)
}

/// Hashes what makes two ops interchangeable: kind, operands, attributes, result types and
/// location.
fn key_hash(graph: &Graph, op: OpId) -> u64 {
    let data = graph.op(op);
    let mut h = FxHasher::default();
    data.kind.hash(&mut h);
    data.operands.hash(&mut h);
    data.attrs.hash(&mut h);
    data.loc.hash(&mut h);
    for r in data.results() {
        graph.value(r).ty.hash(&mut h);
    }
    h.finish()
}

/// Whether `a` and `b` have equal keys (see [`key_hash`]).
fn same_key(graph: &Graph, a: OpId, b: OpId) -> bool {
    let (x, y) = (graph.op(a), graph.op(b));
    x.kind == y.kind
        && x.operands == y.operands
        && x.attrs == y.attrs
        && x.loc == y.loc
        && x.num_results() == y.num_results()
        && x.results().zip(y.results()).all(|(r, s)| graph.value(r).ty == graph.value(s).ty)
}

/// Returns whether any op was merged.
pub fn eliminate_common_subexpressions(graph: &mut Graph) -> bool {
    // The ops seen so far, found by the hash of their key; the key is read from the graph, so a
    // table entry is just an id. An op's key never changes once it is in the table: merging
    // rewrites only the readers of the merged op, which come after it.
    let mut seen: HashTable<OpId> = HashTable::with_capacity(graph.num_ops());
    let mut changed = false;
    let mut cursor = graph.ops().next();
    while let Some(op) = cursor {
        cursor = graph.next_op(op);
        let data = graph.op(op);
        if !data.def().pure || data.extra.is_some() {
            continue;
        }
        let hash = key_hash(graph, op);
        match seen.find(hash, |&earlier| same_key(graph, earlier, op)).copied() {
            Some(earlier) => {
                let pairs: SmallVec<[(ValueId, ValueId); 2]> =
                    graph.op(op).results().zip(graph.op(earlier).results()).collect();
                for (from, to) in pairs {
                    graph.replace_all_uses(from, to);
                }
                graph.erase_op(op);
                changed = true;
            }
            None => {
                seen.insert_unique(hash, op, |&e| key_hash(graph, e));
            }
        }
    }
    changed
}
