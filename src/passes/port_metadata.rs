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

use super::{PassContext, PassDef};
use crate::diag::Diagnostics;
use crate::ir::matching::{producer_of, producer_with, sole_user};
use crate::ir::quant::SpecRef;
use crate::ir::rewriter::Rewriter;
use crate::ir::{Graph, Module, OpId, ValueId};
use crate::ops::{self, OpKind, Traits};

pub const PASS: PassDef = PassDef {
    name: "port-metadata",
    description: "Give q/dq ops the location and metadata of the op they belong to (PT2E's PortNodeMetaForQDQ).",
    run,
};

/// Ops a weight reaches its quantize through whose location follows the weight's (PT2E's list,
/// with `reshape`, which export spells `view`).
const VIEW_OPS: &[OpKind] =
    &[ops::VIEW, ops::RESHAPE, ops::PERMUTE, ops::TRANSPOSE, ops::FLATTEN, ops::SQUEEZE, ops::SLICE];

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for gi in 0..module.graphs.len() {
        let mut rw = Rewriter::new(module, gi);
        let owners: Vec<OpId> =
            rw.ops().filter(|&op| rw.annotation(op).is_some_and(|a| a.quantizes_anything())).collect();
        for op in owners {
            changed |= port(&mut rw, op);
        }
    }
    Ok(changed)
}

/// The op producing `v`, when it is a view op of [`VIEW_OPS`].
fn view_producer(g: &Graph, v: ValueId) -> Option<OpId> {
    g.producer(v).filter(|&p| VIEW_OPS.contains(&g.op(p).kind()))
}

fn port(g: &mut Rewriter<'_>, op: OpId) -> bool {
    let Some(annotation) = g.annotation(op) else { return false };
    let annotated_inputs: Vec<usize> =
        annotation.inputs.iter().enumerate().filter(|(_, s)| **s != SpecRef::None).map(|(i, _)| i).collect();
    let output_annotated = annotation.output.as_ref().is_some_and(|s| *s != SpecRef::None);
    let mut changed = false;
    for i in annotated_inputs {
        let Some(input) = g.op(op).operand(i) else { continue };
        let Some(dq) = producer_with(g, input, Traits::DEQUANTIZE) else { continue };
        changed |= copy_meta(g, op, dq);
        let Some(q) = producer_with(g, g.op(dq).operands()[0], Traits::QUANTIZE) else { continue };
        let choose = g.op(dq).operand(1).and_then(|s| producer_of(g, s, ops::CHOOSE_QPARAMS));
        if let Some(choose) = choose {
            changed |= copy_meta(g, op, q);
            changed |= copy_meta(g, op, choose);
            continue;
        }
        // A weight's quantize (and the view ops before it) belongs to the weight.
        let mut chain = vec![q];
        let mut v = g.op(q).operands()[0];
        while let Some(view) = view_producer(g, v) {
            chain.push(view);
            v = g.op(view).operands()[0];
        }
        if let Some(constant) = producer_with(g, v, Traits::CONSTANT) {
            for target in chain {
                changed |= copy_meta(g, constant, target);
            }
        }
    }
    if output_annotated {
        let sole_quantize = g.op(op).result(0).and_then(|out| sole_user(g, out)).map(|(user, _)| user);
        if let Some(q) = sole_quantize.filter(|&q| g.op(q).kind().has(Traits::QUANTIZE)) {
            changed |= copy_meta(g, op, q);
        }
    }
    changed
}

/// Gives `to` the location and metadata of `from`; whether anything changed.
fn copy_meta(g: &mut Rewriter<'_>, from: OpId, to: OpId) -> bool {
    let loc = g.op(from).loc_sym();
    let meta = g.meta(from).cloned().unwrap_or_default();
    let before = (g.op(to).loc_sym(), g.meta(to).cloned().unwrap_or_default());
    if before == (loc, meta.clone()) {
        return false;
    }
    g.update(to).set_loc(loc).set_meta(meta);
    true
}
