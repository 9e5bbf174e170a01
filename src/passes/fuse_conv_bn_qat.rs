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

use rustc_hash::FxHashMap;

use super::fuse_conv_bn::{is_op, result_name, Skip};
use super::rewrite::{self, internal, new_op};
use super::{dce, PassContext, PassDef};
use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::Attr;
use crate::ir::graph::{ResultSpec, Sym, User};
use crate::ir::quant::{EdgeOrValue, SpecRef};
use crate::ir::{Dim, Graph, Module, OpId, TensorType, ValueId};

pub const PASS: PassDef = PassDef {
    name: "fuse-conv-bn-qat",
    description: "Rewrite conv → batch_norm into PT2E's QAT conv-bn graph (prepare_qat_pt2e's _fuse_conv_bn_qat).",
    run,
};

/// PT2E's hard-coded batch-norm eps in the QAT graphs (`bn_eps = 1e-5` in `qat_utils.py`).
pub(super) const QAT_EPS: f64 = 1e-5;
/// The momentum of the replacement's `F.batch_norm` (its default).
const QAT_MOMENTUM: f64 = 0.1;

/// The convolutions PT2E fuses, in the order `_fuse_conv_bn_qat` replaces them (qc has no
/// `conv_transpose1d`).
pub(super) const CONVS: [&str; 3] = ["conv1d", "conv2d", "conv_transpose2d"];

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for gi in 0..module.graphs.len() {
        changed |= fuse_graph(module, gi, &mut cx.warnings)?;
    }
    Ok(changed)
}

fn fuse_graph(module: &mut Module, gi: usize, warnings: &mut Diagnostics) -> Result<bool, Diagnostics> {
    // PT2E returns early, without DCE, when there is no batch norm at all.
    if !module.graphs[gi].ops().any(|op| is_op(&module.graphs[gi], op, "batch_norm")) {
        return Ok(false);
    }
    let mut changed = dce::eliminate_dead_ops(&mut crate::ir::rewriter::Rewriter::new(module, gi));
    let g = &mut module.graphs[gi];
    for conv in CONVS {
        for with_bias in [true, false] {
            let bns: Vec<OpId> = g.ops().filter(|&op| is_op(g, op, "batch_norm")).collect();
            for bn in bns {
                let Some(Ok(m)) = check(g, bn) else { continue };
                if m.conv_name != conv || m.bias.is_some() != with_bias {
                    continue;
                }
                if g.attr(bn, "training").and_then(Attr::as_bool) != Some(true) {
                    warnings.push(
                        Diag::warning(format!(
                            "`{}` is an inference batch_norm (`training = false`); fused for QAT as PT2E does, it becomes a training-mode one",
                            result_name(g, bn)
                        ))
                        .at(g.op(bn).span, "normalises by batch statistics after the rewrite")
                        .note("PT2E's `_fuse_conv_bn_qat` matches with `ignore_literals=True`, whatever the `training` flag")
                        .note("for post-training quantization, fold it with `fuse-conv-bn` (`prepare-pt2e`) instead"),
                    );
                }
                let remap = replace(g, &m)?;
                remap.apply(g);
                changed = true;
            }
        }
    }
    for bn in g.op_ids() {
        if let Some(Err(skip)) = check(g, bn) {
            warnings.push(skip.warning(g, bn, "fused for QAT with"));
        }
    }
    Ok(changed)
}

// ---- matching ------------------------------------------------------------------------------

/// A conv → batch norm pair to rewrite.
struct Match {
    bn: OpId,
    conv: OpId,
    conv_name: &'static str,
    x: ValueId,
    w: ValueId,
    bias: Option<ValueId>,
    /// The batch norm's weight (γ) and running variance.
    gamma: ValueId,
    var: ValueId,
}

/// `None` when `bn` is not a batch norm reading a conv or linear result.
fn check(g: &Graph, bn: OpId) -> Option<Result<Match, Skip>> {
    if !g.op(bn).alive || !is_op(g, bn, "batch_norm") {
        return None;
    }
    let input = *g.op(bn).operands.first()?;
    let layer = g.producer(input)?;
    let name = g.op(layer).def().name;
    let skip = |reason: String, notes: Vec<&'static str>| {
        Some(Err(notes.into_iter().fold(Skip::new(layer, reason), Skip::note)))
    };
    if name == "linear" {
        return skip(
            "PT2E's QAT fusion only rewrites convolutions".into(),
            vec!["the batch_norm stays as it is, and `fold-conv-bn-qat` does not fold it at convert"],
        );
    }
    let conv_name = CONVS.into_iter().find(|&c| c == name)?;
    let data = g.op(layer);
    let (&x, &w) = (data.operands.first()?, data.operands.get(1)?);
    let bias = data.operands.get(2).copied();
    let out = data.result(0)?;
    if g.uses(out).len() != 1 || g.uses(out)[0].user != User::Op(bn) || g.uses(out)[0].index != 0 {
        return skip(
            format!("`%{}` has other users besides the batch_norm", g.value_name(out)),
            vec![
                "PT2E's subgraph matcher does not match it either: the batch_norm stays, and convert does not fold it",
            ],
        );
    }
    let groups = g.attr(layer, "groups").and_then(Attr::as_int).unwrap_or(1);
    if conv_name == "conv_transpose2d" && groups != 1 {
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
    let operand = |i: usize| bn_data.operands.get(i).copied();
    let (gamma, var) = (operand(1)?, operand(4)?);
    let dtype = g.value_type(out).dtype;
    let mut values = vec![x, w];
    values.extend(bias);
    values.extend(bn_data.operands.iter().skip(1));
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
    Some(Ok(Match { bn, conv: layer, conv_name, x, w, bias, gamma, var }))
}

// ---- rewriting -----------------------------------------------------------------------------

/// Replaces one pair by the QAT graph; returns how references to the old values map.
fn replace(g: &mut Graph, m: &Match) -> Result<Remap, Diagnostics> {
    let conv_val = rewrite::result(g, m.conv, 0)?;
    let bn_val = rewrite::result(g, m.bn, 0)?;
    let c = g.value_name(conv_val).to_string();
    let (span, conv_loc) = (g.op(m.conv).span, g.op(m.conv).loc);
    let at = insertion_point(g, m.bn);
    let w_ty = g.value_type(m.w).clone();
    let var_ty = g.value_type(m.var).clone();
    let dtype = var_ty.dtype;
    let channels = g.value_type(m.gamma).shape.first().copied().unwrap_or(Dim::Dynamic);
    let rank = w_ty.rank();
    let transposed = m.conv_name == "conv_transpose2d";
    // `[-1, 1, …]` (`[1, -1, 1, …]` for a transposed weight) and `[1, -1, 1, …]`.
    let shaped = |axis: usize| {
        let shape: Vec<i64> = (0..rank).map(|i| if i == axis { -1 } else { 1 }).collect();
        let dims = (0..rank).map(|i| if i == axis { channels } else { Dim::Known(1) }).collect();
        (Attr::List(shape.into_iter().map(Attr::Int).collect()), TensorType::new(dtype, dims))
    };
    let place = |g: &mut Graph, op: OpId| {
        match at {
            Some(anchor) => g.insert_before(anchor, op),
            None => g.append(op),
        }
        rewrite::result(g, op, 0)
    };

    let op = new_op(
        g,
        "add.scalar",
        &[m.var],
        &[("other", Attr::Float(QAT_EPS))],
        &[(&format!("{c}_var_eps"), var_ty.clone())],
        span,
    )?;
    let var_eps = place(g, op)?;
    let op = new_op(g, "sqrt", &[var_eps], &[], &[(&format!("{c}_running_std"), var_ty.clone())], span)?;
    let std = place(g, op)?;
    let op = new_op(g, "div", &[m.gamma, std], &[], &[(&format!("{c}_scale_factor"), var_ty.clone())], span)?;
    let sf = place(g, op)?;
    let (shape, ty) = shaped(usize::from(transposed));
    let op = new_op(g, "reshape", &[sf], &[("shape", shape)], &[(&format!("{c}_scale_factor_w"), ty)], span)?;
    let sf_w = place(g, op)?;
    let mul = new_op(g, "mul", &[m.w, sf_w], &[], &[(&format!("{c}_scaled_weight"), w_ty)], span)?;
    let scaled = place(g, mul)?;
    // PT2E: the scaled weight takes the weight's meta dict, completed by the conv's module stack
    // when the weight is a parameter without one (the dict is shared, so the parameter gets it).
    copy_meta(g, m.w, mul, conv_loc, true);
    let zero_bias = match m.bias {
        Some(b) => {
            let op = new_op(g, "zeros_like", &[b], &[], &[(&format!("{c}_zero_bias"), g.value_type(b).clone())], span)?;
            let zb = place(g, op)?;
            copy_meta(g, b, op, conv_loc, false);
            Some(zb)
        }
        None => None,
    };
    if let Some(p) = g.producer(m.x).filter(|&p| is_parameter(g, p) && g.op(p).loc.is_none()) {
        g.op_mut(p).loc = conv_loc;
    }
    let conv = recreate(g, m.conv, at)?;
    g.set_operand(conv, 1, scaled);
    if let Some(zb) = zero_bias {
        g.set_operand(conv, 2, zb);
    }
    let new_conv_val = rewrite::result(g, conv, 0)?;
    let out_ty = g.value_type(new_conv_val).clone();
    let (shape, ty) = shaped(1);
    let op = new_op(
        g,
        "reshape",
        &[sf],
        &[("shape", shape.clone())],
        &[(&format!("{c}_scale_factor_out"), ty.clone())],
        span,
    )?;
    let sf_out = place(g, op)?;
    let op = new_op(g, "div", &[new_conv_val, sf_out], &[], &[(&format!("{c}_unscaled"), out_ty.clone())], span)?;
    let mut y = place(g, op)?;
    if let Some(b) = m.bias {
        let op = new_op(g, "reshape", &[b], &[("shape", shape)], &[(&format!("{c}_bias_out"), ty)], span)?;
        let b_out = place(g, op)?;
        let op = new_op(g, "add", &[y, b_out], &[], &[(&format!("{c}_with_bias"), out_ty)], span)?;
        y = place(g, op)?;
    }
    let bn = recreate(g, m.bn, at)?;
    g.set_operand(bn, 0, y);
    let fields =
        [("eps", Attr::Float(QAT_EPS)), ("momentum", Attr::Float(QAT_MOMENTUM)), ("training", Attr::Bool(true))];
    let attrs = rewrite::op_attrs(g, g.op(bn).kind, &fields)?;
    g.op_mut(bn).attrs = attrs;
    let new_bn_val = rewrite::result(g, bn, 0)?;

    // PT2E's original → replacement map: the weight → the scaled weight, the bias → the zero
    // bias, the conv and batch norm → the new ones (the input maps to itself).
    let mut remap = Remap::default();
    remap.value(m.w, scaled);
    if let (Some(b), Some(zb)) = (m.bias, zero_bias) {
        remap.value(b, zb);
    }
    remap.value(conv_val, new_conv_val);
    remap.value(bn_val, new_bn_val);
    remap.consumer(m.conv, Consumer::Op(conv));
    remap.consumer(m.bn, Consumer::Op(bn));
    // PT2E maps this edge to (new conv → new batch norm), which does not exist.
    remap.edge(conv_val, m.bn, EdgeOrValue::Edge { value: y, consumer: bn });
    Ok(remap)
}

/// Where the subgraph rewriter inserts a replacement ending in `bn`: before the first op that
/// reads the batch norm; at the end when only the function's outputs do; right after the batch
/// norm when nothing reads it. `None` means at the end.
pub(super) fn insertion_point(g: &Graph, bn: OpId) -> Option<OpId> {
    let results: Vec<ValueId> = g.op(bn).results().collect();
    let mut op = g.next_op(bn);
    if results.iter().all(|&r| !g.has_uses(r)) {
        return op;
    }
    while let Some(o) = op {
        if g.op(o).operands.iter().any(|v| results.contains(v)) {
            return Some(o);
        }
        op = g.next_op(o);
    }
    None
}

/// Moves the one-result op `op` before `at` (the end for `None`): a new op with the same name,
/// operands, attributes, type, location, metadata and annotation, which every reader of `op`'s
/// result now reads. `op` is erased; the new op is returned.
pub(super) fn recreate(g: &mut Graph, op: OpId, at: Option<OpId>) -> Result<OpId, Diagnostics> {
    let old = rewrite::result(g, op, 0)?;
    let data = g.op(op);
    let (kind, attrs, span, loc, extra) = (data.kind, data.attrs, data.span, data.loc, data.extra.clone());
    let operands: Vec<ValueId> = data.operands.to_vec();
    let name = g.value_name(old).to_string();
    let ty = g.value_type(old).clone();
    let make = |g: &mut Graph, name: &str| {
        let spec = ResultSpec { name, ty: ty.clone(), span };
        g.create_op(kind, &operands, attrs, vec![spec], span).map_err(|_| internal("a fresh name is taken"))
    };
    // The name is only free once `op` is gone, so the move goes through a temporary op.
    let tmp_name = g.fresh_name(&format!("{name}_moving"));
    let tmp = make(g, &tmp_name)?;
    match at {
        Some(anchor) => g.insert_before(anchor, tmp),
        None => g.append(tmp),
    }
    let tmp_val = rewrite::result(g, tmp, 0)?;
    g.replace_all_uses(old, tmp_val);
    g.erase_op(op);
    let new = make(g, &name)?;
    g.insert_before(tmp, new);
    let new_val = rewrite::result(g, new, 0)?;
    g.replace_all_uses(tmp_val, new_val);
    g.erase_op(tmp);
    let data = g.op_mut(new);
    data.loc = loc;
    data.extra = extra;
    Ok(new)
}

fn is_parameter(g: &Graph, op: OpId) -> bool {
    is_op(g, op, "weight") || is_op(g, op, "const")
}

/// PT2E's `replacement_node.meta = original_node.meta` for the weight and bias: `to` takes the
/// location, metadata and annotation of the op defining `from`. With `fill`, a parameter (or
/// graph input) without a location gets `conv_loc`, and so does the parameter op.
fn copy_meta(g: &mut Graph, from: ValueId, to: OpId, conv_loc: Option<Sym>, fill: bool) {
    let producer = g.producer(from);
    let (mut loc, extra) = producer.map_or((None, None), |p| (g.op(p).loc, g.op(p).extra.clone()));
    let parameter = producer.is_none_or(|p| is_parameter(g, p));
    if fill && parameter && loc.is_none() {
        loc = conv_loc;
        if let Some(p) = producer {
            g.op_mut(p).loc = conv_loc;
        }
    }
    let data = g.op_mut(to);
    data.loc = loc;
    data.extra = extra;
}

// ---- annotation references -----------------------------------------------------------------

/// What an edge into a replaced op becomes.
#[derive(Copy, Clone)]
pub(super) enum Consumer {
    /// An edge into the op that replaces it, from the value's replacement (or the value).
    Op(OpId),
    /// This value (the op is gone and its readers read the value).
    Value(ValueId),
}

/// How `shared(...)`/`derived(...)` references to replaced values and edges are rewritten: a
/// value by `values`; an edge by `edges`, else by what its consumer became (`consumers`), else
/// it stays. Edges name the value before any observer or q/dq on them, so they are matched by
/// consumer rather than by the operand the consumer reads.
#[derive(Default)]
pub(super) struct Remap {
    values: FxHashMap<ValueId, ValueId>,
    consumers: FxHashMap<OpId, Consumer>,
    edges: FxHashMap<(ValueId, OpId), EdgeOrValue>,
}

impl Remap {
    pub(super) fn value(&mut self, from: ValueId, to: ValueId) {
        self.values.insert(from, to);
    }

    pub(super) fn consumer(&mut self, from: OpId, to: Consumer) {
        self.consumers.insert(from, to);
    }

    pub(super) fn edge(&mut self, value: ValueId, consumer: OpId, to: EdgeOrValue) {
        self.edges.insert((value, consumer), to);
    }

    fn target(&self, t: &EdgeOrValue) -> EdgeOrValue {
        let value = |v: ValueId| self.values.get(&v).copied().unwrap_or(v);
        match *t {
            EdgeOrValue::Value(v) => EdgeOrValue::Value(value(v)),
            EdgeOrValue::Edge { value: v, consumer } => {
                match (self.edges.get(&(v, consumer)), self.consumers.get(&consumer)) {
                    (Some(&to), _) => to,
                    (None, Some(&Consumer::Op(op))) => EdgeOrValue::Edge { value: value(v), consumer: op },
                    (None, Some(&Consumer::Value(to))) => EdgeOrValue::Value(to),
                    // A reader that stays reads the replacement value (the new batch norm's).
                    (None, None) => EdgeOrValue::Edge { value: value(v), consumer },
                }
            }
        }
    }

    fn spec(&self, s: &SpecRef) -> SpecRef {
        match s {
            SpecRef::Shared(t) => SpecRef::Shared(self.target(t)),
            SpecRef::Derived { from, spec } => SpecRef::Derived {
                from: from.iter().map(|t| self.target(t)).collect(),
                spec: Box::new(self.spec(spec)),
            },
            other => other.clone(),
        }
    }

    /// Rewrites every annotation of the function.
    pub(super) fn apply(&self, g: &mut Graph) {
        for op in g.op_ids() {
            let Some(a) = g.annotation(op) else { continue };
            let inputs: Vec<SpecRef> = a.inputs.iter().map(|s| self.spec(s)).collect();
            let output = a.output.as_ref().map(|s| self.spec(s));
            if inputs != a.inputs || output != a.output {
                if let Some(a) = g.extra_mut(op).annotation.as_mut() {
                    a.inputs = inputs;
                    a.output = output;
                }
            }
        }
    }
}
