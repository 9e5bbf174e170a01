//! `port-metadata`: give the quantize, dequantize and `choose_qparams` ops the location and
//! metadata of the op they belong to — PT2E's `PortNodeMetaForQDQ`
//! (`../shared/reference/pt2e.md` §1.9), so per-module rules, reports and diagnostics still
//! point at the user's layer after convert.
//!
//! For every op whose annotation quantizes something:
//! * each annotated input read through a dequantize: the dequantize takes the consumer's
//!   location and metadata. For a dynamic input (`choose_qparams` → quantize → dequantize) all
//!   three do. Otherwise, when the quantize's input comes from a `weight` or `const` through
//!   data-movement ops only (view, reshape, permute, transpose, flatten, squeeze, slice), the
//!   quantize and those ops take the constant's;
//! * an annotated output read only by a quantize: the quantize takes the op's.
//!
//! PT2E ports only `stack_trace` and `quantization_tag`; qc ports the location (the module
//! path) and the whole `meta` dictionary, which is what its users key on. A location or
//! metadata already on the target is replaced.
//!
//! Requires: a converted module (ideally after `duplicate-dq`, so that each dequantize has one
//! owner; otherwise the last owner in program order wins). Leaves: the same graph with ported
//! locations. Idempotent.
//!
//! ```qir before
//! module {
//!   qspec @act = {dtype = i8, qmin = -128, qmax = 127, qscheme = "per_tensor_affine", observer = "minmax"}
//!
//!   func @main(%x: f32[1,4], %w: f32[2,4]) -> f32[1,2] {
//!     %x_q = quantize_per_tensor(%x) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : i8[1,4]
//!     %x_dq = dequantize_per_tensor(%x_q) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : f32[1,4]
//!     %fc = linear(%x_dq, %w) : f32[1,2] loc("fc") quant[@act]
//!     return %fc
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   qspec @act = {dtype = i8, qmin = -128, qmax = 127, qscheme = "per_tensor_affine", observer = "minmax"}
//!
//!   func @main(%x: f32[1,4], %w: f32[2,4]) -> f32[1,2] {
//!     %x_q = quantize_per_tensor(%x) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : i8[1,4]
//!     %x_dq = dequantize_per_tensor(%x_q) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : f32[1,4] loc("fc")
//!     %fc = linear(%x_dq, %w) : f32[1,2] loc("fc") quant[@act]
//!     return %fc
//!   }
//! }
//! ```

use super::rewrite::{is_op, producer_in, DEQUANTIZE_OPS, QUANTIZE_OPS};
use super::{PassContext, PassDef};
use crate::diag::Diagnostics;
use crate::ir::graph::User;
use crate::ir::quant::SpecRef;
use crate::ir::{Graph, Module, OpId};

pub const PASS: PassDef = PassDef {
    name: "port-metadata",
    description: "Give q/dq ops the location and metadata of the op they belong to (PT2E's PortNodeMetaForQDQ).",
    run,
};

/// Ops a weight reaches its quantize through whose location follows the weight's (PT2E's list,
/// with `reshape`, which export spells `view`).
const VIEW_OPS: &[&str] = &["view", "reshape", "permute", "transpose", "flatten", "squeeze", "slice"];

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for g in &mut module.graphs {
        let owners: Vec<OpId> =
            g.ops().filter(|&op| g.annotation(op).is_some_and(|a| a.quantizes_anything())).collect();
        for op in owners {
            changed |= port(g, op);
        }
    }
    Ok(changed)
}

fn port(g: &mut Graph, op: OpId) -> bool {
    let Some(annotation) = g.annotation(op) else { return false };
    let annotated_inputs: Vec<usize> =
        annotation.inputs.iter().enumerate().filter(|(_, s)| **s != SpecRef::None).map(|(i, _)| i).collect();
    let output_annotated = annotation.output.as_ref().is_some_and(|s| *s != SpecRef::None);
    let mut changed = false;
    for i in annotated_inputs {
        let Some(&input) = g.op(op).operands.get(i) else { continue };
        let Some(dq) = producer_in(g, input, DEQUANTIZE_OPS) else { continue };
        changed |= copy_meta(g, op, dq);
        let Some(q) = producer_in(g, g.op(dq).operands[0], QUANTIZE_OPS) else { continue };
        let choose = g.op(dq).operands.get(1).and_then(|&s| producer_in(g, s, &["choose_qparams"]));
        if let Some(choose) = choose {
            changed |= copy_meta(g, op, q);
            changed |= copy_meta(g, op, choose);
            continue;
        }
        // A weight's quantize (and the view ops before it) belongs to the weight.
        let mut chain = vec![q];
        let mut v = g.op(q).operands[0];
        while let Some(view) = producer_in(g, v, VIEW_OPS) {
            chain.push(view);
            v = g.op(view).operands[0];
        }
        if let Some(constant) = producer_in(g, v, &["weight", "const"]) {
            for target in chain {
                changed |= copy_meta(g, constant, target);
            }
        }
    }
    if output_annotated {
        if let Some(out) = g.op(op).result(0) {
            if let [u] = g.uses(out) {
                if let User::Op(q) = u.user {
                    if is_op(g, q, QUANTIZE_OPS) {
                        changed |= copy_meta(g, op, q);
                    }
                }
            }
        }
    }
    changed
}

/// Gives `to` the location and metadata of `from`; whether anything changed.
fn copy_meta(g: &mut Graph, from: OpId, to: OpId) -> bool {
    let loc = g.op(from).loc;
    let meta = g.meta(from).cloned().unwrap_or_default();
    let before = (g.op(to).loc, g.meta(to).cloned().unwrap_or_default());
    if before == (loc, meta.clone()) {
        return false;
    }
    g.op_mut(to).loc = loc;
    g.extra_mut(to).meta = meta;
    true
}
