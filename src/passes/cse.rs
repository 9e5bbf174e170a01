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
//! ```text
//! %a = relu(%x) : f32[4]
//! %b = relu(%x) : f32[4]
//! %c = add(%a, %b) : f32[4]
//! ```
//! becomes
//! ```text
//! %a = relu(%x) : f32[4]
//! %c = add(%a, %a) : f32[4]
//! ```

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::{PassContext, PassDef};
use crate::diag::Diagnostics;
use crate::ir::graph::{AttrsId, OpId, Sym, TypeId};
use crate::ir::{Graph, Module, ValueId};
use crate::ops::OpKind;

pub const PASS: PassDef =
    PassDef { name: "cse", description: "Merge pure ops that compute the same value from the same operands.", run };

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for graph in &mut module.graphs {
        changed |= eliminate_common_subexpressions(graph);
    }
    Ok(changed)
}

#[derive(PartialEq, Eq, Hash)]
struct OpKey {
    kind: OpKind,
    operands: SmallVec<[ValueId; 3]>,
    attrs: AttrsId,
    types: SmallVec<[TypeId; 1]>,
    loc: Option<Sym>,
}

/// Returns whether any op was merged.
pub fn eliminate_common_subexpressions(graph: &mut Graph) -> bool {
    let mut seen: FxHashMap<OpKey, OpId> = FxHashMap::default();
    let mut changed = false;
    for op in graph.op_ids() {
        let data = graph.op(op);
        if !data.def().pure || data.extra.is_some() {
            continue;
        }
        let key = OpKey {
            kind: data.kind,
            operands: data.operands.clone(),
            attrs: data.attrs,
            types: data.results().map(|r| graph.value(r).ty).collect(),
            loc: data.loc,
        };
        match seen.get(&key) {
            Some(&earlier) => {
                let pairs: SmallVec<[(ValueId, ValueId); 2]> =
                    graph.op(op).results().zip(graph.op(earlier).results()).collect();
                for (from, to) in pairs {
                    graph.replace_all_uses(from, to);
                }
                graph.erase_op(op);
                changed = true;
            }
            None => {
                seen.insert(key, op);
            }
        }
    }
    changed
}
