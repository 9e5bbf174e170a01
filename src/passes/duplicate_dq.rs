//! `duplicate-dq`: give every quantized consumer of a dequantized value its own dequantize —
//! PT2E's `DuplicateDQPass` (`../shared/reference/pt2e.md` §1.8), run by `convert_pt2e` so
//! that each quantized op sits in its own `dq → op → q` group for a backend to match.
//!
//! For each dequantize op read by more than one op (or by an op and the graph's return), every
//! reader whose annotation quantizes something gets a copy of the dequantize, placed right
//! after it and named `<dq>_1`, `<dq>_2`, …; readers without such an annotation (and the return)
//! share the original. When every reader is annotated, the first keeps the original, so no
//! dequantize is left unused. A dequantize whose qparams come from `choose_qparams` (dynamic
//! quantization) stays shared, as in PT2E.
//!
//! Requires: a converted module (quantize/dequantize ops; annotations kept). Leaves: each
//! annotated op reading its own dequantize ops. Idempotent.
//!
//! ```qir before
//! module {
//!   qspec @act = {dtype = i8, qmin = -128, qmax = 127, qscheme = "per_tensor_affine", observer = "minmax"}
//!
//!   func @main(%x: f32[4]) -> (f32[4], f32[4]) {
//!     %x_q = quantize_per_tensor(%x) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : i8[4]
//!     %x_dq = dequantize_per_tensor(%x_q) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : f32[4]
//!     %a = relu(%x_dq) : f32[4] quant[@act] -> @act
//!     %b = sigmoid(%x_dq) : f32[4] quant[@act] -> @act
//!     return %a, %b
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   qspec @act = {dtype = i8, qmin = -128, qmax = 127, qscheme = "per_tensor_affine", observer = "minmax"}
//!
//!   func @main(%x: f32[4]) -> (f32[4], f32[4]) {
//!     %x_q = quantize_per_tensor(%x) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : i8[4]
//!     %x_dq = dequantize_per_tensor(%x_q) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : f32[4]
//!     %x_dq_1 = dequantize_per_tensor(%x_q) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : f32[4]
//!     %a = relu(%x_dq) : f32[4] quant[@act] -> @act
//!     %b = sigmoid(%x_dq_1) : f32[4] quant[@act] -> @act
//!     return %a, %b
//!   }
//! }
//! ```

use super::{PassContext, PassDef};
use crate::diag::Diagnostics;
use crate::ir::graph::User;
use crate::ir::matching::producer_of;
use crate::ir::rewriter::{internal, Rewriter};
use crate::ir::{Graph, Module, OpId};
use crate::ops::{self, Traits};

pub const PASS: PassDef = PassDef {
    name: "duplicate-dq",
    description: "Give each quantized consumer its own dequantize op (PT2E's DuplicateDQPass).",
    run,
};

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for gi in 0..module.graphs.len() {
        let mut rw = Rewriter::new(module, gi);
        let dqs: Vec<OpId> = rw.ops().filter(|&op| rw.op(op).kind().has(Traits::DEQUANTIZE)).collect();
        for dq in dqs {
            changed |= duplicate(&mut rw, dq)?;
        }
    }
    Ok(changed)
}

/// Whether the dequantize reads qparams computed at run time (`choose_qparams`).
fn is_dynamic(g: &Graph, dq: OpId) -> bool {
    g.op(dq).operand(1).is_some_and(|scale| producer_of(g, scale, ops::CHOOSE_QPARAMS).is_some())
}

fn duplicate(rw: &mut Rewriter<'_>, dq: OpId) -> Result<bool, Diagnostics> {
    let g: &Graph = rw;
    let value = g.op(dq).result(0).ok_or_else(|| internal("a dequantize without a result"))?;
    // Distinct readers in use order; the return counts as one unannotated reader.
    let mut readers: Vec<Option<OpId>> = Vec::new();
    for u in g.uses(value) {
        let reader = match u.user {
            User::Op(op) => Some(op),
            User::Output => None,
        };
        if !readers.contains(&reader) {
            readers.push(reader);
        }
    }
    if readers.len() < 2 || is_dynamic(g, dq) {
        return Ok(false);
    }
    let annotated = |op: &Option<OpId>| op.and_then(|op| g.annotation(op)).is_some_and(|a| a.quantizes_anything());
    let mut owners: Vec<OpId> = readers.iter().filter(|r| annotated(r)).flatten().copied().collect();
    if owners.is_empty() {
        return Ok(false);
    }
    if readers.iter().all(annotated) {
        owners.remove(0); // keeps the original
    }
    let operands = g.op(dq).operands().to_vec();
    let span = g.op(dq).span();
    rw.set_insertion_after(dq).set_span(span);
    for owner in owners {
        let copied = rw.clone_op(dq, &operands)?[0];
        let reads: Vec<usize> =
            (0..rw.op(owner).operands().len()).filter(|&i| rw.op(owner).operands()[i] == value).collect();
        for i in reads {
            rw.update(owner).set_operand(i, copied);
        }
    }
    Ok(true)
}
