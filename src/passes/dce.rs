//! `dce`: dead-code elimination.
//!
//! Deletes every pure op none of whose results is used (transitively: an op that only fed
//! deleted ops goes too). Ops with effects (`observer`) always stay, as do graph inputs.
//!
//! Requires: a verified module. Leaves: a verified module in which every pure op has a used
//! result. Idempotent. Linear: one sweep in reverse program order, since an op's producers
//! come before it.
//!
//! ```qir before
//! module {
//!   func @main(%x: f32[4]) -> f32[4] {
//!     %a = relu(%x) : f32[4]  // unused: deleted
//!     %b = sigmoid(%x) : f32[4]
//!     return %b
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   func @main(%x: f32[4]) -> f32[4] {
//!     %b = sigmoid(%x) : f32[4]
//!     return %b
//!   }
//! }
//! ```

use super::{PassContext, PassDef};
use crate::diag::Diagnostics;
use crate::ir::rewriter::Rewriter;
use crate::ir::Module;

pub const PASS: PassDef = PassDef { name: "dce", description: "Delete pure ops whose results are unused.", run };

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for gi in 0..module.graphs.len() {
        changed |= eliminate_dead_ops(&mut Rewriter::new(module, gi));
    }
    Ok(changed)
}

/// Returns whether anything was deleted.
pub fn eliminate_dead_ops(graph: &mut Rewriter<'_>) -> bool {
    let mut changed = false;
    let mut cursor = graph.ops().last();
    while let Some(op) = cursor {
        cursor = graph.prev_op(op);
        let data = graph.op(op);
        if data.def().is_pure() && data.results().all(|r| !graph.has_uses(r)) {
            graph.erase(op);
            changed = true;
        }
    }
    changed
}
