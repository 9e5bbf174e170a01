//! `fuse-conv-bn-qat`: rewrite each conv → batch norm into PT2E's quantization-aware-training
//! graph — `_fuse_conv_bn_qat` in torchao's `pt2e/qat_utils.py`, the step of
//! `prepare_qat_pt2e` between annotating and inserting observers (reference §1.2, §5.1). It
//! runs after `annotate`, so the ops it creates are not annotated, and before `prepare`, which
//! then observes the BN-scaled weight.
//!
//! For a `conv1d`, `conv2d` or `conv_transpose2d` whose result only a `batch_norm` reads, the pair
//! becomes PT2E's replacement graph (`_get_qat_conv_bn_pattern`, `nniqat.ConvBn2d`'s
//! `_forward_approximate`), op for op and in its order:
//!
//! ```text
//! running_std   = sqrt(running_var + 1e-5)             add.scalar, sqrt
//! scale_factor  = bn_weight / running_std              div
//! scaled_weight = weight * reshape(scale_factor, ws)   reshape, mul
//! zero_bias     = zeros_like(bias)                     (conv with bias only)
//! y = conv(x, scaled_weight, zero_bias)                the conv's own attributes
//! y = y / reshape(scale_factor, [1, -1, 1, …])         reshape, div
//! y = y + reshape(bias, [1, -1, 1, …])                 (conv with bias only) reshape, add
//! y = batch_norm(y, …) {training = true, eps = 1e-5, momentum = 0.1}
//! ```
//!
//! with `ws` = `[-1, 1, …]` (`[1, -1, 1, …]` for `conv_transpose2d`), as long as the weight's rank.
//! The `1e-5` is PT2E's hard-coded `bn_eps`, and the new batch norm carries the replacement
//! pattern's literals (`F.batch_norm(..., training=True, eps=bn_eps)`, momentum defaulted to
//! 0.1): PT2E drops the model's own eps and momentum (pytorch/ao#4107), and so does this pass.
//!
//! Mirrored from PT2E besides the graph:
//! - matching: the batch norm reads the conv's result, and nothing else does (the subgraph
//!   matcher rejects a match whose inner node has outside users); the batch norm's `training`
//!   flag is not looked at — PT2E matches with `ignore_literals=True`, so an inference batch norm
//!   (a model exported in eval mode) is rewritten too and becomes a training-mode one. qc does
//!   the same and says so in a warning;
//! - the order: patterns are replaced per conv kind (conv1d, conv2d, conv_transpose2d), first
//!   convs with bias then without, each in program order of the batch norms; the new ops go right
//!   before the batch norm's first reader (at the end when only the function returns it), where
//!   the subgraph rewriter inserts them. `prepare` numbers observers in program order, so this
//!   order gives PT2E's observer names;
//! - locations, from PT2E's meta copying: the conv and batch norm keep theirs (and their
//!   metadata and annotations); `mul` (the scaled weight) takes the weight op's, or the conv's when
//!   the weight is a parameter without one — which the parameter op (`weight`/`const`) then gets
//!   as well, as does a parameter conv input (PT2E copies the conv's `nn_module_stack` into the
//!   meta dict it shares with them); `zeros_like` takes the bias op's; the other new ops, of the
//!   replacement pattern's root module, have none;
//! - annotations: the conv's input specs stay positional (input, weight, bias:
//!   `_update_conv_input_qspec_map_after_replacement`), and every `shared(...)`/`derived(...)`
//!   in the function that named a replaced value or op names its replacement
//!   (`_update_special_qspecs_after_replacement`): the weight → the scaled weight, the bias →
//!   the zero bias, the conv and batch norm → the new ones;
//! - a function with any `batch_norm` is swept as by [`dce`] first (PT2E's
//!   `eliminate_dead_code`); one without is left alone.
//!
//! Deliberately different, where PT2E's rewrite produces a broken reference or graph: an edge
//! `%w -> %other` to another reader of the weight stays (PT2E would point it at the scaled weight,
//! which `%other` does not read), and the edge from the conv into the batch norm becomes the edge
//! from the new batch norm's input. Skipped with a warning, the pair staying as it is: a conv
//! result with other readers (PT2E does not match it either), a grouped `conv_transpose2d`, a
//! conv on unbatched input (PT2E rewrites both, and the reshaped scale factor does not fit),
//! parameters that are not all of the conv result's float type, and a batch norm after a
//! `linear` (PT2E only fuses convolutions, so it stays unfused through convert).
//!
//! New values are named after the conv's result `%c`: `%c_var_eps`, `%c_running_std`,
//! `%c_scale_factor`, `%c_scale_factor_w`, `%c_scaled_weight`, `%c_zero_bias`, then
//! `%c_scale_factor_out`, `%c_unscaled`, `%c_bias_out`, `%c_with_bias`; the conv and batch norm
//! keep their names. Requires: a verified module. Leaves: a verified module. Idempotent: the
//! new batch norm reads an `add` or `div`, not a conv.
//!
//! ```qir before
//! module {
//!   qspec @act = {dtype = i8, qmin = -128, qmax = 127, qscheme = "per_tensor_affine", observer = "minmax"}
//!   qspec @w8 = {dtype = i8, qmin = -127, qmax = 127, qscheme = "per_channel_symmetric", ch_axis = 0, observer = "per_channel_minmax"}
//!
//!   func @main(%x: f32[1,3,4,4], %w: f32[8,3,3,3], %b: f32[8], %gamma: f32[8], %beta: f32[8], %mean: f32[8], %var: f32[8]) -> f32[1,8,4,4] {
//!     %conv = conv2d(%x, %w, %b) {padding = [1, 1]} : f32[1,8,4,4] loc("conv") quant[@act, @w8]
//!     %bn = batch_norm(%conv, %gamma, %beta, %mean, %var) {training = true} : f32[1,8,4,4] loc("bn") quant[] -> @act
//!     return %bn
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   qspec @act = {dtype = i8, qmin = -128, qmax = 127, qscheme = "per_tensor_affine", observer = "minmax"}
//!   qspec @w8 = {dtype = i8, qmin = -127, qmax = 127, qscheme = "per_channel_symmetric", ch_axis = 0, observer = "per_channel_minmax"}
//!
//!   func @main(%x: f32[1,3,4,4], %w: f32[8,3,3,3], %b: f32[8], %gamma: f32[8], %beta: f32[8], %mean: f32[8], %var: f32[8]) -> f32[1,8,4,4] {
//!     %conv_var_eps = add.scalar(%var) {other = 1e-5} : f32[8]
//!     %conv_running_std = sqrt(%conv_var_eps) : f32[8]
//!     %conv_scale_factor = div(%gamma, %conv_running_std) : f32[8]
//!     %conv_scale_factor_w = reshape(%conv_scale_factor) {shape = [-1, 1, 1, 1]} : f32[8,1,1,1]
//!     %conv_scaled_weight = mul(%w, %conv_scale_factor_w) : f32[8,3,3,3] loc("conv")
//!     %conv_zero_bias = zeros_like(%b) : f32[8]
//!     %conv = conv2d(%x, %conv_scaled_weight, %conv_zero_bias) {padding = [1, 1]} : f32[1,8,4,4] loc("conv") quant[@act, @w8]
//!     %conv_scale_factor_out = reshape(%conv_scale_factor) {shape = [1, -1, 1, 1]} : f32[1,8,1,1]
//!     %conv_unscaled = div(%conv, %conv_scale_factor_out) : f32[1,8,4,4]
//!     %conv_bias_out = reshape(%b) {shape = [1, -1, 1, 1]} : f32[1,8,1,1]
//!     %conv_with_bias = add(%conv_unscaled, %conv_bias_out) : f32[1,8,4,4]
//!     %bn = batch_norm(%conv_with_bias, %gamma, %beta, %mean, %var) {training = true} : f32[1,8,4,4] loc("bn") quant[] -> @act
//!     return %bn
//!   }
//! }
//! ```

use super::{built_op, insertion_point, only_result, result_name, Skip, CONVS, THE_LAYER};
use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::Attr;
use crate::ir::graph::Sym;
use crate::ir::matching::{ops_of, sole_user};
use crate::ir::quant::EdgeOrValue;
use crate::ir::rewriter::Rewriter;
use crate::ir::{Dim, Graph, Module, OpId, TensorType, ValueId};
use crate::ops::{self, OpKind, Traits};
use crate::passes::remap::Remap;
use crate::passes::{dce, PassContext, PassDef};

pub const PASS: PassDef = PassDef {
    name: "fuse-conv-bn-qat",
    description: "Rewrite conv → batch_norm into PT2E's QAT conv-bn graph (prepare_qat_pt2e's _fuse_conv_bn_qat).",
    run,
};

/// PT2E's hard-coded batch-norm eps in the QAT graphs (`bn_eps = 1e-5` in `qat_utils.py`).
const QAT_EPS: f64 = 1e-5;
/// The momentum of the replacement's `F.batch_norm` (its default).
const QAT_MOMENTUM: f64 = 0.1;

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for gi in 0..module.graphs.len() {
        changed |= fuse_graph(&mut Rewriter::new(module, gi), &mut cx.warnings)?;
    }
    Ok(changed)
}

fn fuse_graph(rw: &mut Rewriter<'_>, warnings: &mut Diagnostics) -> Result<bool, Diagnostics> {
    // PT2E returns early, without DCE, when there is no batch norm at all.
    if ops_of(rw, &[ops::BATCH_NORM]).is_empty() {
        return Ok(false);
    }
    let mut changed = dce::eliminate_dead_ops(rw);
    for conv in CONVS {
        for with_bias in [true, false] {
            for bn in ops_of(rw, &[ops::BATCH_NORM]) {
                let Some(Ok(m)) = check(rw, bn) else { continue };
                if m.conv_kind != conv || m.bias.is_some() != with_bias {
                    continue;
                }
                if rw.attr(bn, "training").and_then(Attr::as_bool) != Some(true) {
                    warnings.push(
                        Diag::warning(format!(
                            "`{}` is an inference batch_norm (`training = false`); fused for QAT as PT2E does, it becomes a training-mode one",
                            result_name(rw, bn)
                        ))
                        .at(rw.op(bn).span(), "normalises by batch statistics after the rewrite")
                        .note("PT2E's `_fuse_conv_bn_qat` matches with `ignore_literals=True`, whatever the `training` flag")
                        .note("for post-training quantization, fold it with `fuse-conv-bn` (`prepare-pt2e`) instead"),
                    );
                }
                let remap = replace(rw, &m)?;
                remap.apply(rw);
                changed = true;
            }
        }
    }
    for bn in rw.op_ids() {
        if let Some(Err(skip)) = check(rw, bn) {
            warnings.push(skip.warning(rw, bn, "fused for QAT with", THE_LAYER));
        }
    }
    Ok(changed)
}

// ---- matching ------------------------------------------------------------------------------

/// A conv → batch norm pair to rewrite.
struct Match {
    bn: OpId,
    conv: OpId,
    conv_kind: OpKind,
    x: ValueId,
    w: ValueId,
    bias: Option<ValueId>,
    /// The batch norm's weight (γ) and running variance.
    gamma: ValueId,
    var: ValueId,
}

/// `None` when `bn` is not a batch norm reading a conv or linear result.
fn check(g: &Graph, bn: OpId) -> Option<Result<Match, Skip>> {
    if g.op(bn).kind() != ops::BATCH_NORM {
        return None;
    }
    let layer = g.producer(g.op(bn).operand(0)?)?;
    let data = g.op(layer);
    let skip = |reason: String, notes: Vec<&'static str>| {
        Some(Err(notes.into_iter().fold(Skip::new(layer, reason), Skip::note)))
    };
    if data.kind() == ops::LINEAR {
        return skip(
            "PT2E's QAT fusion only rewrites convolutions".into(),
            vec!["the batch_norm stays as it is, and `fold-conv-bn-qat` does not fold it at convert"],
        );
    }
    let conv_kind = data.kind();
    if !CONVS.contains(&conv_kind) {
        return None;
    }
    let (x, w) = (data.operand(0)?, data.operand(1)?);
    let bias = data.operand(2);
    let out = data.result(0)?;
    if sole_user(g, out) != Some((bn, 0)) {
        return skip(
            format!("`%{}` has other users besides the batch_norm", g.value_name(out)),
            vec![
                "PT2E's subgraph matcher does not match it either: the batch_norm stays, and convert does not fold it",
            ],
        );
    }
    let groups = g.attr(layer, "groups").and_then(Attr::as_int).unwrap_or(1);
    if conv_kind == ops::CONV_TRANSPOSE2D && groups != 1 {
        return skip(
            format!("it is a grouped conv_transpose2d (groups = {groups}), whose weight the scale factor does not fit"),
            vec!["PT2E rewrites it anyway, into a graph whose weight scaling fails to broadcast"],
        );
    }
    let (x_rank, w_rank) = (g.value_type(x).rank(), g.value_type(w).rank());
    if x_rank != w_rank {
        return skip(
            format!("the conv input `%{}` is unbatched, so batch_norm's channel dimension is not the conv's output channels", g.value_name(x)),
            vec!["PT2E rewrites it anyway, and the reshaped scale factor changes the result's shape"],
        );
    }
    let bn_data = g.op(bn);
    let (gamma, var) = (bn_data.operand(1)?, bn_data.operand(4)?);
    let dtype = g.value_type(out).dtype;
    let mut values = vec![x, w];
    values.extend(bias);
    values.extend(bn_data.operands().iter().skip(1));
    if !dtype.is_float() || values.iter().any(|&v| g.value_type(v).dtype != dtype) {
        let types: Vec<String> = values.iter().map(|&v| g.value_type(v).dtype.to_string()).collect();
        return skip(
            format!(
                "the conv result is {dtype} but its operands and the batch_norm's parameters are {}",
                types.join(", ")
            ),
            vec!["the rewrite needs them all of one float type"],
        );
    }
    Some(Ok(Match { bn, conv: layer, conv_kind, x, w, bias, gamma, var }))
}

// ---- rewriting -----------------------------------------------------------------------------

/// Replaces one pair by the QAT graph; returns how references to the old values map.
fn replace(rw: &mut Rewriter<'_>, m: &Match) -> Result<Remap, Diagnostics> {
    let conv_val = only_result(rw, m.conv)?;
    let c = rw.value_name(conv_val).to_string();
    let conv_loc = rw.op(m.conv).loc_sym();
    let w_ty = rw.value_type(m.w).clone();
    let var_ty = rw.value_type(m.var).clone();
    let dtype = var_ty.dtype;
    let channels = rw.value_type(m.gamma).shape.first().copied().unwrap_or(Dim::Dynamic);
    let rank = w_ty.rank();
    let transposed = m.conv_kind == ops::CONV_TRANSPOSE2D;
    // `[-1, 1, …]` (`[1, -1, 1, …]` for a transposed weight) and `[1, -1, 1, …]`.
    let shaped = |axis: usize| {
        let shape: Vec<i64> = (0..rank).map(|i| if i == axis { -1 } else { 1 }).collect();
        let dims = (0..rank).map(|i| if i == axis { channels } else { Dim::Known(1) }).collect();
        (Attr::List(shape.into_iter().map(Attr::Int).collect()), TensorType::new(dtype, dims))
    };
    // The new ops have the conv's span and, being of the replacement pattern's root module, no
    // location (unless copied below); the conv and batch norm move there too.
    let at = insertion_point(rw, m.bn);
    let span = rw.op(m.conv).span();
    rw.set_insertion_point(at).set_span(span).set_loc(None);

    let var_eps = rw.build1(
        ops::ADD_SCALAR,
        &[m.var],
        &[("other", Attr::Float(QAT_EPS))],
        &format!("{c}_var_eps"),
        var_ty.clone(),
    )?;
    let std = rw.build1(ops::SQRT, &[var_eps], &[], &format!("{c}_running_std"), var_ty.clone())?;
    let sf = rw.build1(ops::DIV, &[m.gamma, std], &[], &format!("{c}_scale_factor"), var_ty)?;
    let (shape, ty) = shaped(usize::from(transposed));
    let sf_w = rw.build1(ops::RESHAPE, &[sf], &[("shape", shape)], &format!("{c}_scale_factor_w"), ty)?;
    let scaled = rw.build1(ops::MUL, &[m.w, sf_w], &[], &format!("{c}_scaled_weight"), w_ty)?;
    // PT2E: the scaled weight takes the weight's meta dict, completed by the conv's module stack
    // when the weight is a parameter without one (the dict is shared, so the parameter gets it).
    copy_meta(rw, m.w, built_op(rw, scaled)?, conv_loc, true);
    let zero_bias = match m.bias {
        Some(b) => {
            let ty = rw.value_type(b).clone();
            let zb = rw.build1(ops::ZEROS_LIKE, &[b], &[], &format!("{c}_zero_bias"), ty)?;
            copy_meta(rw, b, built_op(rw, zb)?, conv_loc, false);
            Some(zb)
        }
        None => None,
    };
    if let Some(p) = rw.producer(m.x).filter(|&p| is_parameter(rw, p) && rw.op(p).loc_sym().is_none()) {
        rw.update(p).set_loc(conv_loc);
    }
    rw.move_op(m.conv);
    rw.update(m.conv).set_operand(1, scaled);
    if let Some(zb) = zero_bias {
        rw.update(m.conv).set_operand(2, zb);
    }
    let out_ty = rw.value_type(conv_val).clone();
    let (shape, ty) = shaped(1);
    let sf_out =
        rw.build1(ops::RESHAPE, &[sf], &[("shape", shape.clone())], &format!("{c}_scale_factor_out"), ty.clone())?;
    let mut y = rw.build1(ops::DIV, &[conv_val, sf_out], &[], &format!("{c}_unscaled"), out_ty.clone())?;
    if let Some(b) = m.bias {
        let b_out = rw.build1(ops::RESHAPE, &[b], &[("shape", shape)], &format!("{c}_bias_out"), ty)?;
        y = rw.build1(ops::ADD, &[y, b_out], &[], &format!("{c}_with_bias"), out_ty)?;
    }
    rw.move_op(m.bn);
    let fields =
        [("eps", Attr::Float(QAT_EPS)), ("momentum", Attr::Float(QAT_MOMENTUM)), ("training", Attr::Bool(true))];
    let attrs = rw.attrs(ops::BATCH_NORM, &fields)?;
    rw.update(m.bn).set_operand(0, y).set_attrs(attrs);

    // PT2E's original → replacement map: the weight → the scaled weight, the bias → the zero
    // bias (the input maps to itself; the conv and batch norm are the same ops, moved).
    let mut remap = Remap::default();
    remap.value(m.w, scaled);
    if let (Some(b), Some(zb)) = (m.bias, zero_bias) {
        remap.value(b, zb);
    }
    // PT2E maps this edge to (conv → batch norm), which no longer exists.
    remap.edge(conv_val, m.bn, EdgeOrValue::Edge { value: y, consumer: m.bn });
    Ok(remap)
}

fn is_parameter(g: &Graph, op: OpId) -> bool {
    g.op(op).kind().has(Traits::CONSTANT)
}

/// PT2E's `replacement_node.meta = original_node.meta` for the weight and bias: `to` takes the
/// location, metadata and annotation of the op defining `from`. With `fill`, a parameter (or
/// graph input) without a location gets `conv_loc`, and so does the parameter op.
fn copy_meta(rw: &mut Rewriter<'_>, from: ValueId, to: OpId, conv_loc: Option<Sym>, fill: bool) {
    let producer = rw.producer(from);
    // A graph input has no location or metadata, as `to` has now.
    if let Some(p) = producer {
        rw.update(to).copy_metadata_from(p);
    }
    let parameter = producer.is_none_or(|p| is_parameter(rw, p));
    if fill && parameter && rw.op(to).loc_sym().is_none() {
        rw.update(to).set_loc(conv_loc);
        if let Some(p) = producer {
            rw.update(p).set_loc(conv_loc);
        }
    }
}
