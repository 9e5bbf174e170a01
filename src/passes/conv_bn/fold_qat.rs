//! `fold-conv-bn-qat`: fold the batch norm of each converted QAT conv-bn graph into its conv —
//! `_fold_conv_bn_qat` in torchao's `pt2e/qat_utils.py`, the step of `convert_pt2e` right after
//! observers become quantize/dequantize ops (reference §1.3, §5.2).
//!
//! It matches what `fuse-conv-bn-qat`, `prepare` and `convert` make of a conv → batch norm
//! (PT2E's `_get_quantized_qat_conv_bn_pattern`):
//!
//! ```text
//! %c_var_eps = add.scalar(%var)                      %c_scale_factor = div(%gamma, sqrt(%c_var_eps))
//! %c_scaled_weight = mul(%w, reshape(%c_scale_factor))
//! %q = quantize_per_channel(%c_scaled_weight, %s, %zp) ; %dq = dequantize_per_channel(%q, %s, %zp)
//!     (or quantize_per_tensor / dequantize_per_tensor)
//! %c_zero_bias = zeros_like(%b)                      (conv with bias; optionally through q/dq
//!                                                     of the weight's kind)
//! %c = conv(%x, %dq, %c_zero_bias)
//! %y = div(%c, reshape(%c_scale_factor))
//! %y2 = add(%y, reshape(%b))                         (conv with bias)
//! %bn = batch_norm(%y2, %gamma, %beta, %mean, %var)  (training or not)
//! ```
//!
//! and replaces it with PT2E's folded pattern: the same quantize/dequantize ops (same
//! attributes, same scale and zero-point operands: `_copy_over_q_dq_args`) on the weight `%w`
//! itself, then `conv(%x, %w_dq, %b')` with the conv's attributes, which the batch norm's
//! readers read; the bias q/dq, when there is one, reads `%b`. Then the weight and bias are
//! folded as PT2E's `fold_bn_weights_into_conv_node` does, with PyTorch's PTQ arithmetic
//! (`fuse_conv_bn_weights`, the code [`fuse`](super::fuse) folds with):
//! `W' = W · (γ · rsqrt(var + eps))` per output channel, `b' = ((b − mean) · rsqrt) · γ + β`, a
//! missing bias being zeros — with `rsqrt` and the batch norm's `eps`, not the `sqrt` and
//! `1e-5` of the training graph, so the weight quantize (which `fold-quantize` evaluates) sees
//! `W'` with the scale observed on `W · γ / sqrt(var + 1e-5)`. The tensors are written as
//! `fuse-conv-bn` writes them: a tensor created under the weight's key (shadowing the file) or
//! the `const`'s new value; a conv without bias reads a new `weight {key = "<weight key>_bias"}`
//! (a `const` for a `const` weight) placed right before it. The scale factor, scaled weight,
//! zero bias and their q/dq ops are deleted, and the function is then swept as by [`dce`]
//! (PT2E's `eliminate_dead_code`), which also drops the zero bias's per-channel qparams.
//!
//! Mirrored from PT2E besides the arithmetic: matching by structure only — literals (the eps
//! added to the variance, reshape shapes, `training`, `momentum`) are not compared, as PT2E
//! matches with `ignore_literals=True`; the weight and bias q/dq are of one kind (per-channel or
//! per-tensor, like `_append_qdq`), and a per-channel pair shares its scale and zero-point
//! operands; every matched value but the batch norm's result is read only inside the match; the
//! new ops go right before the batch norm's first reader, the conv keeping its name, location,
//! metadata and annotation, the new q/dq taking the old ones' (named `<weight>_q`/`_dq`,
//! `<bias>_q`/`_dq`); the weight op takes the scaled weight's location and metadata, the bias op
//! the zero bias's; a function without a batch norm is left alone, not even swept.
//!
//! Deliberately different: the `eps` is the batch norm's own. PT2E folds with the replacement
//! pattern's literal `1e-5`, which is what `fuse-conv-bn-qat` writes, so the two agree on every
//! graph the flow produces; a hand-written graph with another eps folds with that one. PT2E keeps
//! the conv's annotation as it is, naming the replaced scaled weight and zero bias; qc points
//! `shared`/`derived` references to the edges the conv now reads (`%w`, `%b`) and the batch norm's
//! result to the conv's, so the annotations stay valid. Skipped with a warning, the graph staying
//! as it is: a weight, bias or batch-norm parameter that is not a `weight`/`const` (PT2E fails);
//! a weight or bias read elsewhere too (PT2E folds into the shared tensor, changing the other
//! readers; a second match would fold the folded weight again); parameters that are not all
//! f32 or all f64.
//!
//! Requires: a verified module. Leaves: a verified module. Idempotent (nothing left to match);
//! a module without the pattern is unchanged.
//!
//! ```qir before
//! module {
//!   func @main(%x: f32[1,2,4,4]) -> f32[1,3,4,4] {
//!     %w = const {value = [[[[0.5]], [[-1.0]]], [[[0.25]], [[2.0]]], [[[-0.75]], [[1.5]]]]} : f32[3,2,1,1]
//!     %gamma = const {value = [1.0, 0.5, 2.0]} : f32[3]
//!     %beta = const {value = [0.0, 0.1, -0.1]} : f32[3]
//!     %mean = const {value = [0.1, -0.2, 0.0]} : f32[3]
//!     %var = const {value = [1.0, 0.25, 4.0]} : f32[3]
//!     %conv_var_eps = add.scalar(%var) {other = 1e-5} : f32[3]
//!     %conv_running_std = sqrt(%conv_var_eps) : f32[3]
//!     %conv_scale_factor = div(%gamma, %conv_running_std) : f32[3]
//!     %conv_scale_factor_w = reshape(%conv_scale_factor) {shape = [-1, 1, 1, 1]} : f32[3,1,1,1]
//!     %conv_scaled_weight = mul(%w, %conv_scale_factor_w) : f32[3,2,1,1]
//!     %conv_scaled_weight_q = quantize_per_tensor(%conv_scaled_weight) {scale = 0.015625, zero_point = 0, qmin = -127, qmax = 127, dtype = i8} : i8[3,2,1,1]
//!     %conv_scaled_weight_dq = dequantize_per_tensor(%conv_scaled_weight_q) {scale = 0.015625, zero_point = 0, qmin = -127, qmax = 127, dtype = i8} : f32[3,2,1,1]
//!     %conv = conv2d(%x, %conv_scaled_weight_dq) : f32[1,3,4,4] loc("conv")
//!     %conv_scale_factor_out = reshape(%conv_scale_factor) {shape = [1, -1, 1, 1]} : f32[1,3,1,1]
//!     %conv_unscaled = div(%conv, %conv_scale_factor_out) : f32[1,3,4,4]
//!     %bn = batch_norm(%conv_unscaled, %gamma, %beta, %mean, %var) {training = true} : f32[1,3,4,4] loc("bn")
//!     return %bn
//!   }
//! }
//! ```
//! becomes (`%w` folded; the conv, which had no bias, reads the new folded bias `%w_bias`)
//! ```qir after
//! module {
//!   func @main(%x: f32[1,2,4,4]) -> f32[1,3,4,4] {
//!     %w = const {value = [[[[0.4999975]], [[-0.999995]]], [[[0.249995]], [[1.99996]]], [[[-0.7499991]], [[1.4999982]]]]} : f32[3,2,1,1]
//!     %w_q = quantize_per_tensor(%w) {scale = 0.015625, zero_point = 0, qmin = -127, qmax = 127, dtype = i8} : i8[3,2,1,1]
//!     %w_dq = dequantize_per_tensor(%w_q) {scale = 0.015625, zero_point = 0, qmin = -127, qmax = 127, dtype = i8} : f32[3,2,1,1]
//!     %w_bias = const {value = [-0.0999995, 0.299996, -0.1]} : f32[3] loc("conv")
//!     %conv = conv2d(%x, %w_dq, %w_bias) : f32[1,3,4,4] loc("conv")
//!     return %conv
//!   }
//! }
//! ```

use rustc_hash::FxHashSet;

use super::fold::{fold, Layer};
use super::params::{add_bias, constant_source, read, store, weight_readers, Readers, Src};
use super::{built_op, insertion_point, only_result, Skip, CONVS};
use crate::diag::Diagnostics;
use crate::ir::attr::Attr;
use crate::ir::graph::User;
use crate::ir::matching::{ops_of, producer_of};
use crate::ir::rewriter::{internal, Rewriter};
use crate::ir::{DType, Graph, Module, OpId, ValueId};
use crate::ops::{self, OpKind};
use crate::passes::remap::Remap;
use crate::passes::{dce, each_graph, PassContext, PassDef};
use crate::tensor::Tensor;

pub const PASS: PassDef = PassDef {
    name: "fold-conv-bn-qat",
    description:
        "Fold the batch_norm of converted QAT conv-bn graphs into the conv (convert_pt2e's _fold_conv_bn_qat).",
    run,
};

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut readers = weight_readers(module);
    each_graph(module, |module, gi| fold_graph(&mut Rewriter::new(module, gi), &mut readers, &mut cx.warnings))
}

fn fold_graph(rw: &mut Rewriter<'_>, readers: &mut Readers, warnings: &mut Diagnostics) -> Result<bool, Diagnostics> {
    // PT2E returns early, without DCE, when there is no batch norm at all.
    if ops_of(rw, &[ops::BATCH_NORM]).is_empty() {
        return Ok(false);
    }
    let mut changed = false;
    for conv_kind in CONVS {
        for bn in ops_of(rw, &[ops::BATCH_NORM]) {
            if !rw.op(bn).is_alive() {
                continue;
            }
            let Some(m) = match_pattern(rw, bn).filter(|m| m.conv_kind == conv_kind) else { continue };
            match plan(rw, readers, &m)? {
                Ok(plan) => {
                    apply(rw, readers, &m, plan)?;
                    changed = true;
                }
                Err(skip) => warnings.push(skip.warning(rw, m.bn, "folded into", "the conv it follows")),
            }
        }
    }
    let swept = dce::eliminate_dead_ops(rw);
    Ok(changed || swept)
}

// ---- matching ------------------------------------------------------------------------------

/// A quantize/dequantize pair.
#[derive(Copy, Clone, Debug)]
struct QDq {
    q: OpId,
    dq: OpId,
}

/// One matched QAT conv-bn graph.
#[derive(Debug)]
struct Match {
    bn: OpId,
    conv: OpId,
    conv_kind: OpKind,
    /// The conv weight under the scale factor, and the bias (`None`: a conv without bias).
    w: ValueId,
    bias: Option<ValueId>,
    weight_qdq: QDq,
    bias_qdq: Option<QDq>,
    mul: OpId,
    zero_bias: Option<OpId>,
    /// Every matched op but the batch norm and the conv, readers before what they read.
    inner: Vec<OpId>,
}

fn operand(g: &Graph, op: OpId, i: usize) -> Option<ValueId> {
    g.op(op).operand(i)
}

/// `dq(q(v))` of one kind (`per_channel`, or `None` for either): the pair and `v`.
fn qdq(g: &Graph, v: ValueId, per_channel: Option<bool>) -> Option<(QDq, ValueId, bool)> {
    let kinds = [
        (false, ops::QUANTIZE_PER_TENSOR, ops::DEQUANTIZE_PER_TENSOR),
        (true, ops::QUANTIZE_PER_CHANNEL, ops::DEQUANTIZE_PER_CHANNEL),
    ];
    kinds.into_iter().filter(|(pc, _, _)| per_channel.is_none_or(|want| want == *pc)).find_map(
        |(pc, q_kind, dq_kind)| {
            let dq = producer_of(g, v, dq_kind)?;
            let q = producer_of(g, operand(g, dq, 0)?, q_kind)?;
            // `_append_qdq` passes the same scale and zero-point nodes to both ops.
            if pc && g.op(q).operands()[1..] != g.op(dq).operands()[1..] {
                return None;
            }
            Some((QDq { q, dq }, operand(g, q, 0)?, pc))
        },
    )
}

/// The QAT conv-bn graph ending in `bn`, if it is one.
fn match_pattern(g: &Graph, bn: OpId) -> Option<Match> {
    let gamma = operand(g, bn, 1)?;
    let var = operand(g, bn, 4)?;
    let mut inner = Vec::new();
    // y = y + reshape(bias), with bias; y = conv / reshape(scale_factor).
    let bn_in = operand(g, bn, 0)?;
    let (div_out, bias_reshape) = match producer_of(g, bn_in, ops::ADD) {
        Some(add) => {
            let reshape = producer_of(g, operand(g, add, 1)?, ops::RESHAPE)?;
            inner.extend([add, reshape]);
            (operand(g, add, 0)?, Some(reshape))
        }
        None => (bn_in, None),
    };
    let div = producer_of(g, div_out, ops::DIV)?;
    let conv_out = operand(g, div, 0)?;
    let conv = g.producer(conv_out)?;
    let conv_kind = g.op(conv).kind();
    if !CONVS.contains(&conv_kind) {
        return None;
    }
    let out_reshape = producer_of(g, operand(g, div, 1)?, ops::RESHAPE)?;
    let sf = operand(g, out_reshape, 0)?;
    inner.extend([div, out_reshape]);
    // The weight: dq(q(mul(w, reshape(scale_factor)))).
    let (weight_qdq, scaled, per_channel) = qdq(g, operand(g, conv, 1)?, None)?;
    let mul = producer_of(g, scaled, ops::MUL)?;
    let w = operand(g, mul, 0)?;
    let w_reshape = producer_of(g, operand(g, mul, 1)?, ops::RESHAPE)?;
    if operand(g, w_reshape, 0)? != sf {
        return None;
    }
    inner.extend([weight_qdq.dq, weight_qdq.q, mul, w_reshape]);
    // The bias: zeros_like(bias), possibly through q/dq of the weight's kind.
    let (bias, bias_qdq, zero_bias) = match (operand(g, conv, 2), bias_reshape) {
        (None, None) => (None, None, None),
        (Some(zb), Some(reshape)) => {
            let (bias_qdq, zb) = match qdq(g, zb, Some(per_channel)) {
                Some((pair, v, _)) => (Some(pair), v),
                None => (None, zb),
            };
            let zeros = producer_of(g, zb, ops::ZEROS_LIKE)?;
            let b = operand(g, zeros, 0)?;
            if operand(g, reshape, 0)? != b {
                return None;
            }
            inner.extend(bias_qdq.iter().flat_map(|p| [p.dq, p.q]));
            inner.push(zeros);
            (Some(b), bias_qdq, Some(zeros))
        }
        _ => return None,
    };
    // scale_factor = bn_weight / sqrt(running_var + eps).
    let sf_div = producer_of(g, sf, ops::DIV)?;
    let sqrt = producer_of(g, operand(g, sf_div, 1)?, ops::SQRT)?;
    let var_eps = producer_of(g, operand(g, sqrt, 0)?, ops::ADD_SCALAR)?;
    if operand(g, sf_div, 0)? != gamma || operand(g, var_eps, 0)? != var {
        return None;
    }
    inner.extend([sf_div, sqrt, var_eps]);
    // Nothing outside the match reads a matched value (the batch norm's result aside).
    let mut ops: FxHashSet<OpId> = inner.iter().copied().collect();
    ops.extend([bn, conv]);
    let contained = |op: OpId| {
        g.op(op).results().all(|r| g.uses(r).iter().all(|u| matches!(u.user, User::Op(o) if ops.contains(&o))))
    };
    if !contained(conv) || !inner.iter().all(|&op| contained(op)) {
        return None;
    }
    Some(Match { bn, conv, conv_kind, w, bias, weight_qdq, bias_qdq, mul, zero_bias, inner })
}

// ---- planning ------------------------------------------------------------------------------

/// What to write: the folded tensors and where the weight and bias come from.
struct Plan {
    weight_src: Src,
    bias_src: Option<Src>,
    weight: Tensor,
    bias: Tensor,
}

fn plan(rw: &Rewriter<'_>, readers: &Readers, m: &Match) -> Result<Result<Plan, Skip>, Diagnostics> {
    let g: &Graph = rw;
    let skip = |reason: String, note: Option<&'static str>| {
        Ok(Err(note.into_iter().fold(Skip::new(m.conv, reason), Skip::note)))
    };
    let source = |v: ValueId, what: &str| {
        constant_source(g, v).map_err(|how| {
            Skip::new(
                m.conv,
                format!(
                    "the {what} `%{}` is {how}, and folding needs constants (`weight` or `const`)",
                    g.value_name(v)
                ),
            )
            .note("PT2E's `fold_bn_weights_into_conv_node` fails on a parameter that is not a `get_attr`")
        })
    };
    let bn = g.op(m.bn);
    let mut sources = Vec::new();
    for (i, what) in [(1, "batch_norm weight"), (2, "batch_norm bias"), (3, "running mean"), (4, "running variance")] {
        match source(bn.operands()[i], what) {
            Ok(s) => sources.push(s),
            Err(s) => return Ok(Err(s)),
        }
    }
    let weight_src = match source(m.w, "weight") {
        Ok(s) => s,
        Err(s) => return Ok(Err(s)),
    };
    let bias_src = match m.bias.map(|b| source(b, "bias")).transpose() {
        Ok(s) => s,
        Err(s) => return Ok(Err(s)),
    };
    // The weight and bias are rewritten in place, so only this graph may read them.
    let mut allowed = vec![m.mul];
    allowed.extend(m.zero_bias);
    allowed.extend(m.inner.iter().copied().filter(|&op| g.op(op).kind() == ops::RESHAPE));
    for (src, v, what) in [(Some(&weight_src), m.w, "weight"), (bias_src.as_ref(), m.bias.unwrap_or(m.w), "bias")] {
        let Some(src) = src else { continue };
        let shared_key = match src {
            Src::Weight { op, key } => readers.get(key).into_iter().flatten().any(|&(rg, rop)| {
                (rg, rop) != (rw.graph_index(), *op)
                    && rw.module().graphs.get(rg).is_some_and(|other| other.op(rop).is_alive())
            }),
            Src::Const { .. } => false,
        };
        let other_reader = g.uses(v).iter().any(|u| !matches!(u.user, User::Op(o) if allowed.contains(&o)));
        if shared_key || other_reader {
            return skip(
                format!("its {what} `%{}` is also read elsewhere", g.value_name(v)),
                Some("PT2E folds into the shared tensor anyway, which silently changes what the other readers compute"),
            );
        }
    }
    let dtype = g.value_type(m.w).dtype;
    let mut values = vec![m.w];
    values.extend(m.bias);
    values.extend(bn.operands().iter().skip(1));
    if !matches!(dtype, DType::F32 | DType::F64) || values.iter().any(|&v| g.value_type(v).dtype != dtype) {
        let types: Vec<String> = values.iter().map(|&v| g.value_type(v).dtype.to_string()).collect();
        return skip(
            format!(
                "its parameters are {}; folding is implemented for parameters that are all f32 or all f64",
                types.join(", ")
            ),
            None,
        );
    }
    let layer = match m.conv_kind {
        ops::CONV_TRANSPOSE2D => {
            let groups = g.attr(m.conv, "groups").and_then(Attr::as_int).and_then(|n| usize::try_from(n).ok());
            Layer::ConvTranspose { groups: groups.filter(|&n| n > 0).unwrap_or(1) }
        }
        _ => Layer::Conv,
    };
    let Some(eps) = g.attr(m.bn, "eps").and_then(Attr::as_float) else {
        return skip("the batch_norm has no eps".into(), None);
    };
    let w = read(rw, &weight_src, m.bn)?;
    let b = bias_src.as_ref().map(|s| read(rw, s, m.bn)).transpose()?;
    let [gamma, beta, mean, var] = [0, 1, 2, 3].map(|i| read(rw, &sources[i], m.bn));
    let stats = [gamma?, beta?, mean?, var?];
    match fold(layer, &w, b.as_ref(), &stats, eps) {
        Ok((weight, bias)) => Ok(Ok(Plan { weight_src, bias_src, weight, bias })),
        Err(reason) => skip(reason, None),
    }
}

// ---- rewriting -----------------------------------------------------------------------------

fn apply(rw: &mut Rewriter<'_>, readers: &mut Readers, m: &Match, plan: Plan) -> Result<(), Diagnostics> {
    let conv_val = only_result(rw, m.conv)?;
    let bn_val = only_result(rw, m.bn)?;
    let at = insertion_point(rw, m.bn);
    rw.set_insertion_point(at);
    let (w_q, w_dq) = copy_qdq(rw, m.weight_qdq, m.w)?;
    let bias_qdq = match (m.bias, m.bias_qdq) {
        (Some(b), Some(pair)) => Some(copy_qdq(rw, pair, b)?),
        _ => None,
    };
    rw.move_op(m.conv);
    rw.update(m.conv).set_operand(1, w_dq);
    match (bias_qdq, m.bias) {
        (Some((_, b_dq)), _) => {
            rw.update(m.conv).set_operand(2, b_dq);
        }
        (None, Some(b)) => {
            rw.update(m.conv).set_operand(2, b);
        }
        (None, None) => {}
    }
    rw.replace_all_uses(bn_val, conv_val);

    // PT2E copies the matched nodes' meta onto their replacements: the weight op gets the scaled
    // weight's, the bias op the zero bias's.
    let weight_op = rw.producer(m.w);
    let bias_op = m.bias.and_then(|b| rw.producer(b));
    for (to, from) in [(weight_op, Some(m.mul)), (bias_op, m.zero_bias)] {
        if let (Some(to), Some(from)) = (to, from) {
            rw.update(to).copy_metadata_from(from);
        }
    }

    // References follow the conv's new operands: the scaled weight → the weight, the zero bias →
    // the bias, the old q/dq → the new ones; the batch norm's result → the conv's.
    let mut remap = Remap::default();
    remap.value(only_result(rw, m.mul)?, m.w);
    remap.value(bn_val, conv_val);
    remap.value(only_result(rw, m.weight_qdq.q)?, w_q);
    remap.value(only_result(rw, m.weight_qdq.dq)?, w_dq);
    if let (Some(b), Some(zb)) = (m.bias, m.zero_bias) {
        remap.value(only_result(rw, zb)?, b);
    }
    if let (Some(old), Some((q, dq))) = (m.bias_qdq, bias_qdq) {
        remap.value(only_result(rw, old.q)?, q);
        remap.value(only_result(rw, old.dq)?, dq);
    }
    remap.gone(m.bn, conv_val);

    // The batch norm and the training graph go (readers first); the conv stays, moved.
    rw.erase(m.bn);
    for &op in &m.inner {
        rw.erase(op);
    }
    remap.apply(rw);

    store(rw, readers, &plan.weight_src, plan.weight)?;
    match &plan.bias_src {
        Some(src) => store(rw, readers, src, plan.bias)?,
        None => add_bias(rw, readers, &[m.conv], &plan.weight_src, plan.bias)?,
    }
    Ok(())
}

/// A copy of the quantize/dequantize pair `pair` on `v`, at the insertion point: same kinds,
/// attributes, qparam operands, span, location and metadata; named `<v>_q`, `<v>_dq`. Returns
/// the new quantized and dequantized values.
fn copy_qdq(rw: &mut Rewriter<'_>, pair: QDq, v: ValueId) -> Result<(ValueId, ValueId), Diagnostics> {
    let base = rw.value_name(v).to_string();
    let mut input = v;
    let mut out = [v; 2];
    for (slot, (old, suffix)) in out.iter_mut().zip([(pair.q, "q"), (pair.dq, "dq")]) {
        let data = rw.op(old);
        let (kind, attrs, span) = (data.kind(), data.attrs_id(), data.span());
        let mut operands: Vec<ValueId> = data.operands().to_vec();
        if let Some(first) = operands.first_mut() {
            *first = input;
        }
        let ty = rw.value_type(only_result(rw, old)?).clone();
        rw.set_span(span);
        let results = rw.build_with_attrs(kind, &operands, attrs, &[(&format!("{base}_{suffix}"), ty)])?;
        input = *results.first().ok_or_else(|| internal("a q/dq copy without a result"))?;
        rw.update(built_op(rw, input)?).copy_metadata_from(old);
        *slot = input;
    }
    Ok((out[0], out[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    /// The folded tensors of `%w` and `%w_bias` after `pass` runs on `src`.
    fn folded(src: &str, pass: &PassDef) -> (Tensor, Tensor) {
        let mut module = crate::syntax::parse_module(src, None).expect("the test module parses");
        let mut cx = PassContext::default();
        assert!((pass.run)(&mut module, &mut cx).expect("the pass runs"), "{} changed nothing", pass.name);
        assert!(cx.warnings.is_empty(), "{} warned", pass.name);
        let errors = crate::ir::verifier::verify(&module, crate::quant::OP_CHECKS);
        assert!(errors.is_empty(), "the result does not verify: {errors:?}");
        let g = &module.graphs[0];
        let value = |name: &str| {
            let v = g.value_by_name(name).unwrap_or_else(|| panic!("no %{name}"));
            let op = g.producer(v).expect("a const");
            g.attr(op, "value").and_then(Attr::as_tensor).cloned().expect("a const value")
        };
        (value("w"), value("w_bias"))
    }

    // Awkward values: eps and variances where `sqrt` and `rsqrt` round differently from
    // `1/sqrt` done in f64, negative and tiny γ, a zero and a negative mean.
    const PARAMS: &str = r#"
    %gamma = const {value = [0.7310586, -1.25, 3.0e-7]} : f32[3]
    %beta = const {value = [0.1, -0.3, 2.5]} : f32[3]
    %mean = const {value = [0.0, -0.6931472, 12.5]} : f32[3]
    %var = const {value = [0.33333334, 1.0e-6, 7.0]} : f32[3]
    "#;
    const WEIGHT: &str = r#"
    %w = const {value = [[[[0.1, -0.2], [0.3, 0.4]], [[1.5, 2.5], [-3.5, 0.0625]]], [[[0.9, 0.8], [-0.7, 0.6]], [[1.0e-3, -2.0e3], [0.333, 0.667]]], [[[-0.01, 0.02], [0.03, -0.04]], [[5.0, 6.0], [7.0, 8.0]]]]} : f32[3,2,2,2]
    "#;

    #[test]
    fn the_folded_weight_is_fuse_conv_bn_s_bit_for_bit() {
        let eval = format!(
            r#"module {{
  func @f(%x: f32[1,2,4,4]) -> f32[1,3,3,3] {{
    {WEIGHT}
    %conv = conv2d(%x, %w) : f32[1,3,3,3]
    {PARAMS}
    %bn = batch_norm(%conv, %gamma, %beta, %mean, %var) {{eps = 0.001}} : f32[1,3,3,3]
    return %bn
  }}
}}"#
        );
        let qat = format!(
            r#"module {{
  func @f(%x: f32[1,2,4,4]) -> f32[1,3,3,3] {{
    {WEIGHT}
    {PARAMS}
    %c_var_eps = add.scalar(%var) {{other = 1e-5}} : f32[3]
    %c_running_std = sqrt(%c_var_eps) : f32[3]
    %c_scale_factor = div(%gamma, %c_running_std) : f32[3]
    %c_scale_factor_w = reshape(%c_scale_factor) {{shape = [-1, 1, 1, 1]}} : f32[3,1,1,1]
    %c_scaled_weight = mul(%w, %c_scale_factor_w) : f32[3,2,2,2]
    %q = quantize_per_tensor(%c_scaled_weight) {{scale = 0.05, zero_point = 0, qmin = -127, qmax = 127, dtype = i8}} : i8[3,2,2,2]
    %dq = dequantize_per_tensor(%q) {{scale = 0.05, zero_point = 0, qmin = -127, qmax = 127, dtype = i8}} : f32[3,2,2,2]
    %c = conv2d(%x, %dq) : f32[1,3,3,3]
    %c_scale_factor_out = reshape(%c_scale_factor) {{shape = [1, -1, 1, 1]}} : f32[1,3,1,1]
    %c_unscaled = div(%c, %c_scale_factor_out) : f32[1,3,3,3]
    %bn = batch_norm(%c_unscaled, %gamma, %beta, %mean, %var) {{eps = 0.001, training = true}} : f32[1,3,3,3]
    return %bn
  }}
}}"#
        );
        let (w_ptq, b_ptq) = folded(&eval, &super::super::fuse::PASS);
        let (w_qat, b_qat) = folded(&qat, &PASS);
        assert!(w_ptq.bit_eq(&w_qat), "weights differ:\n{w_ptq:?}\n{w_qat:?}");
        assert!(b_ptq.bit_eq(&b_qat), "biases differ:\n{b_ptq:?}\n{b_qat:?}");
        // The fold is the batch norm's (eps 1e-3, rsqrt), not the training graph's (1e-5, sqrt).
        let Tensor::F32(w) = &w_qat else { panic!("f32") };
        let expect = 0.1f32 * (0.7310586f32 * (1.0f32 / (0.33333334f32 + 0.001f32).sqrt()));
        assert_eq!(w.iter().next().map(|x| x.to_bits()), Some(expect.to_bits()));
    }
}
