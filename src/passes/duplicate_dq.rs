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

use super::rewrite::{internal, is_op, producer_in, result, DEQUANTIZE_OPS};
use super::{PassContext, PassDef};
use crate::diag::Diagnostics;
use crate::ir::graph::{ResultSpec, User};
use crate::ir::{Graph, Module, OpId};

pub const PASS: PassDef = PassDef {
    name: "duplicate-dq",
    description: "Give each quantized consumer its own dequantize op (PT2E's DuplicateDQPass).",
    run,
};

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for g in &mut module.graphs {
        let dqs: Vec<OpId> = g.ops().filter(|&op| is_op(g, op, DEQUANTIZE_OPS)).collect();
        for dq in dqs {
            changed |= duplicate(g, dq)?;
        }
    }
    Ok(changed)
}

/// Whether the dequantize reads qparams computed at run time (`choose_qparams`).
fn is_dynamic(g: &Graph, dq: OpId) -> bool {
    g.op(dq).operands.get(1).is_some_and(|&scale| producer_in(g, scale, &["choose_qparams"]).is_some())
}

fn duplicate(g: &mut Graph, dq: OpId) -> Result<bool, Diagnostics> {
    let value = result(g, dq, 0)?;
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
    let (kind, attrs, span, loc) = (g.op(dq).kind, g.op(dq).attrs, g.op(dq).span, g.op(dq).loc);
    let extra = g.op(dq).extra.clone();
    let operands = g.op(dq).operands.clone();
    let ty = g.value_type(value).clone();
    let base = g.value_name(value).to_string();
    let mut anchor = dq;
    for owner in owners {
        let name = g.fresh_name(&base);
        let spec = ResultSpec { name: &name, ty: ty.clone(), span };
        let copy =
            g.create_op(kind, &operands, attrs, vec![spec], span).map_err(|_| internal("a fresh name is taken"))?;
        g.op_mut(copy).loc = loc;
        g.op_mut(copy).extra = extra.clone();
        g.insert_after(anchor, copy);
        anchor = copy;
        let copied = result(g, copy, 0)?;
        for i in 0..g.op(owner).operands.len() {
            if g.op(owner).operands[i] == value {
                g.set_operand(owner, i, copied);
            }
        }
    }
    Ok(true)
}
