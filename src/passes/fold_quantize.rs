//! `fold-quantize`: evaluate every quantize op whose input is constant and store the integer
//! result — PT2E's `constant_fold(model, _quant_node_constraint)`, the last step of
//! `convert_pt2e` (`../shared/reference/pt2e.md` §1.10).
//!
//! A value is constant when it is computed from `weight` and `const` ops through pure ops only
//! (the view/permute chains between a weight and its quantize, for example); dequantize ops
//! never count, as PT2E marks them impure. Each quantize op (`quantize_per_tensor`,
//! `quantize_per_tensor.tensor`, `quantize_per_channel`) of constant operands is run once by the
//! interpreter's own kernel, so the integers are exactly what the q/dq graph computes at run
//! time, and the op becomes, in place (same name, type and location), a `const` holding them
//! or, above 256 elements, a `weight` of a new key named like the value (written to the output
//! weights file by `qc -o`). Then dead code goes: float weights no longer read vanish from the
//! graph and so from the written weights file.
//!
//! Requires: a converted module. Leaves: no quantize op with constant operands. Idempotent.
//!
//! ```qir before
//! module {
//!   func @main(%x: f32[1,4]) -> f32[1,2] {
//!     %w = const {value = [[1.0, -0.5, 0.0, 2.0], [0.5, 0.5, -1.5, 0.0]]} : f32[2,4]
//!     %w_q = quantize_per_tensor(%w) {scale = 0.5, zero_point = 0, qmin = -127, qmax = 127, dtype = i8} : i8[2,4]
//!     %w_dq = dequantize_per_tensor(%w_q) {scale = 0.5, zero_point = 0, qmin = -127, qmax = 127, dtype = i8} : f32[2,4]
//!     %fc = linear(%x, %w_dq) : f32[1,2]
//!     return %fc
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   func @main(%x: f32[1,4]) -> f32[1,2] {
//!     %w_q = const {value = [[2, -1, 0, 4], [1, 1, -3, 0]]} : i8[2,4]
//!     %w_dq = dequantize_per_tensor(%w_q) {scale = 0.5, zero_point = 0, qmin = -127, qmax = 127, dtype = i8} : f32[2,4]
//!     %fc = linear(%x, %w_dq) : f32[1,2]
//!     return %fc
//!   }
//! }
//! ```

use std::sync::Arc;

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

use super::dce::eliminate_dead_ops;
use super::{each_graph, PassContext, PassDef};
use crate::diag::{Diag, Diagnostics};
use crate::interp::eval_op;
use crate::ir::matching::producer_of;
use crate::ir::rewriter::{internal, Rewriter};
use crate::ir::{Graph, Module, OpId, ValueId};
use crate::ops::{self, Traits};
use crate::tensor::Tensor;

pub const PASS: PassDef = PassDef {
    name: "fold-quantize",
    description: "Constant-fold the quantize ops of weights into integer constants (PT2E's constant_fold).",
    run,
};

fn run(module: &mut Module, _cx: &mut PassContext) -> Result<bool, Diagnostics> {
    each_graph(module, fold_graph)
}

fn fold_graph(module: &mut Module, gi: usize) -> Result<bool, Diagnostics> {
    let g = &module.graphs[gi];
    let constant = constant_values(g);
    let targets: Vec<OpId> = g
        .ops()
        .filter(|&op| g.op(op).kind().has(Traits::QUANTIZE) && g.op(op).operands().iter().all(|v| constant.contains(v)))
        .collect();
    if targets.is_empty() {
        return Ok(false);
    }
    let folded = evaluate(module, &module.graphs[gi], &targets)?;
    let mut rw = Rewriter::new(module, gi);
    for (q, value) in targets.into_iter().zip(folded) {
        rw.fold_to_constant(q, value)?;
    }
    eliminate_dead_ops(&mut rw);
    Ok(true)
}

/// Values computable from constants alone.
fn constant_values(g: &Graph) -> FxHashSet<ValueId> {
    let mut constant = FxHashSet::default();
    for op in g.ops() {
        let data = g.op(op);
        let def = data.def();
        let is_source = def.has(Traits::CONSTANT);
        let derived = def.is_pure()
            && !data.operands().is_empty()
            && !def.has(Traits::DEQUANTIZE)
            && data.operands().iter().all(|v| constant.contains(v));
        if is_source || derived {
            constant.extend(data.results());
        }
    }
    constant
}

/// The first result of each of `targets`, each in parallel with the ops it depends on.
fn evaluate(module: &Module, g: &Graph, targets: &[OpId]) -> Result<Vec<Tensor>, Diagnostics> {
    targets.par_iter().map(|&target| evaluate_one(module, g, target)).collect()
}

/// A constant about to be quantized must be finite: the quantize op would clamp ±inf to the
/// ends of the integer range and turn NaN into the zero point, silently.
fn check_finite(g: &Graph, quantize: OpId, operands: &[&Tensor]) -> Result<(), Diagnostics> {
    let data = g.op(quantize);
    let (Some(v), Some(x)) = (data.operand(0), operands.first()) else { return Ok(()) };
    let Some((index, value)) = x.first_nonfinite() else { return Ok(()) };
    let key = producer_of(g, v, ops::WEIGHT)
        .and_then(|p| g.attr(p, "key").and_then(|a| a.as_str()).map(|k| format!(" (weight `{k}`)")));
    Err(vec![Diag::error(format!(
        "cannot quantize `%{}`{}: its element {index:?} is {value}",
        g.value_name(v),
        key.unwrap_or_default()
    ))
    .at(data.span(), "quantized here")
    .note("a quantized constant must be finite: ±inf would become the ends of the integer range, NaN the zero point")])
}

/// `target`'s first result. Its dependencies are evaluated in a post-order walk with an
/// explicit stack (a long chain of constant ops cannot exhaust the stack), into values of its
/// own: they die with it, so folding thousands of weights holds a few decoded at a time and
/// the allocator reuses their memory instead of faulting in fresh pages for all of them. (A
/// dependency shared by several targets, which is rare, is evaluated for each.)
fn evaluate_one(module: &Module, g: &Graph, target: OpId) -> Result<Tensor, Diagnostics> {
    let mut values: FxHashMap<ValueId, Arc<Tensor>> = FxHashMap::default();
    let mut stack = vec![(target, false)];
    while let Some((op, operands_ready)) = stack.pop() {
        let data = g.op(op);
        if !operands_ready {
            stack.push((op, true));
            for &v in data.operands() {
                if let Some(p) = g.producer(v).filter(|_| !values.contains_key(&v)) {
                    stack.push((p, false));
                }
            }
            continue;
        }
        if data.result(0).is_some_and(|r| values.contains_key(&r)) {
            continue; // reached twice, evaluated once
        }
        let operands: Vec<Arc<Tensor>> = data
            .operands()
            .iter()
            .map(|v| values.get(v).cloned().ok_or_else(|| internal("a constant operand was not evaluated")))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Tensor> = operands.iter().map(|t| &**t).collect();
        if op == target {
            check_finite(g, op, &refs)?;
        }
        let results = eval_op(module, g, op, &refs).map_err(|d| vec![d])?;
        if op == target {
            return results.into_iter().next().ok_or_else(|| internal("a quantize op without a result"));
        }
        for (r, t) in data.results().zip(results) {
            values.insert(r, Arc::new(t));
        }
    }
    Err(internal("a quantize op was not evaluated"))
}
