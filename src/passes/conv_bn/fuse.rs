//! `fuse-conv-bn`: fold inference batch norms into the conv or linear that feeds them — PT2E's
//! PTQ BN folding (`_fuse_conv_bn_` then `_fuse_linear_bn_` in torchao's `pt2e/utils.py`, with
//! the arithmetic of `torch.nn.utils.fusion.fuse_{conv,linear}_bn_weights`), the first step of
//! `prepare_pt2e`.
//!
//! For each `batch_norm` whose input is the result of `conv1d`, `conv2d`, `conv_transpose2d` or
//! `linear`, with `r = 1 / sqrt(running_var + eps)` and `s = γ · r`:
//!
//! - conv: `W' = W · s` per output channel (weight dim 0; for `conv_transpose2d` dim 1, PT2E's
//!   `reshape([1, -1, 1, 1])`), `b' = ((b − running_mean) · r) · γ + β`;
//! - linear: `W' = W · s` per output feature, `b' = (b − running_mean) · s + β`;
//!
//! each operation rounded to the parameters' element type (f32 or f64), in exactly that order
//! and association: `eps` is rounded to that type before the add (a Python scalar added to a
//! tensor), `sqrt` and the divide are IEEE (`torch.rsqrt` equals `1 / sqrt` correctly rounded,
//! observed on f32 and f64), and a missing conv bias is `zeros_like(running_mean)`, so the
//! bias starts as `0 − running_mean` (`+0` for a zero mean, not `−0`). The results are
//! bit-identical to torchao's: `tests/fuse_conv_bn.rs` checks them against fixtures that
//! `tools/gen_fuse_fixtures.py` makes with torchao, the examples' weights included.
//!
//! Where the results go (PT2E assigns them to the same parameter, `_assign_attr`):
//! - a parameter read by `weight {key = K}`: a tensor created under `K`
//!   (`Module::created_weights`), which shadows the weights file's; `qc -o` writes it to the
//!   output's weights file;
//! - a parameter written inline as `const`: the new value, in place (same op, same name); a
//!   `const` of more than [`INLINE_LIMIT`](crate::ir::rewriter::INLINE_LIMIT) elements becomes,
//!   in place, a `weight` of a created tensor keyed by the value's name;
//! - a conv without bias gains one, in a new op right before the conv: `weight {key = "<weight
//!   key>_bias"}` (PT2E's `conv.weight_bias` `get_attr`; another key if that one is taken), or a
//!   `const` when the weight is one. The new op takes the conv's location and span and no
//!   metadata (PT2E's new `get_attr` carries only `val`, which is the type here).
//!
//! Then every use of the batch norm reads the layer instead and the batch norm is deleted, with
//! its annotation and metadata (PT2E folds before annotating, so it has none there). The layer
//! keeps its name, location, metadata and annotation. Finally the graph is swept by [`dce`]:
//! PT2E runs `eliminate_dead_code` on any graph with a batch norm, which deletes the statistics'
//! `weight` ops — and any other dead pure op.
//!
//! Mirrored from PT2E besides the arithmetic: the matching (the batch norm's input must be the
//! layer's result itself); the `_bias` key; a graph without any `batch_norm` is left alone, not
//! even swept; linear + batch norm is skipped with a warning when the linear input has rank
//! above 2 (linear maps the last dim, batch norm dim 1: pytorch/ao#4116); "fake_fuse": several
//! batch norms over one shared weight fold into it once, the others being dropped — but only
//! where that drops nothing (below).
//!
//! Deliberately not mirrored, because PT2E silently changes the model's results or fails there
//! (each observed with torch 2.15 + torchao 0.18). These are skipped with a warning saying why,
//! and the batch norm stays:
//! - the layer's result has users besides the batch norm (other ops, a second batch norm, the
//!   graph outputs): PT2E folds anyway, so the other users see normalised values, and a second
//!   batch norm's statistics are dropped (its users read the first one's result);
//! - the weight or bias is shared with other readers (another op reads the value, another
//!   `weight` op or function reads the key): PT2E rewrites the shared parameter for the first
//!   batch norm and `fake_fuse`s the next one, changing the other readers. qc folds a shared
//!   weight only when every reader is a layer followed by its own batch norm and all of them
//!   fold to bit-identical tensors (one conv + bn module applied twice) — a case PT2E gets wrong
//!   too when the conv has no bias: its `fake_fuse` overwrites the shared `<weight>_bias` with
//!   zeros;
//! - a conv on unbatched input: batch norm's channel dim is then not the conv's output channels
//!   (PT2E fails on a shape mismatch, or folds the wrong dim when the sizes agree);
//! - a training-mode batch norm (`training = true`, a model exported in train mode): it
//!   normalises by each batch's statistics, so folding the running statistics changes its
//!   results (PT2E's `_fuse_conv_bn_` folds it: it matches `aten.batch_norm` whatever its
//!   `training` flag). Quantization-aware training goes through `fuse-conv-bn-qat` instead.
//!
//! Also deliberately different: a chain conv → bn1 → bn2 folds both, in program order (`W·s1·s2`),
//! where PT2E `fake_fuse`s bn2 and drops it; `conv_transpose2d` with `groups > 1` is folded with
//! output channel `g · C_out/groups + c` for the weight rows of group `g`, where PT2E's reshape
//! fails to broadcast. Skipped with a warning as well: parameters that are not constants (graph
//! inputs, computed values; PT2E raises "Expected get_attr node"), parameters of mixed or other
//! element types than f32/f64, a linear bias that broadcasts (one value for every feature). A
//! weight that cannot be read is an error (unreachable for a verified module: the weights file
//! is validated when it is opened).
//!
//! Requires: a verified module. Leaves: a verified module in which every batch norm left after
//! a conv or linear is one that is skipped with a warning, and (in graphs that had a batch norm)
//! no dead pure op. Idempotent: what is left is exactly what a second run skips again. Linear in
//! the graph size, plus the parameter arithmetic.
//!
//! ```qir before
//! module {
//!   weights "weights.safetensors"
//!
//!   func @main(%x: f32[1,2,4,4]) -> f32[1,3,4,4] {
//!     %conv1.weight = weight {key = "conv1.weight"} : f32[3,2,1,1]
//!     %conv1 = conv2d(%x, %conv1.weight) : f32[1,3,4,4] loc("conv1")
//!     %bn1.weight = weight {key = "bn1.weight"} : f32[3]
//!     %bn1.bias = weight {key = "bn1.bias"} : f32[3]
//!     %bn1.running_mean = weight {key = "bn1.running_mean"} : f32[3]
//!     %bn1.running_var = weight {key = "bn1.running_var"} : f32[3]
//!     %bn1 = batch_norm(%conv1, %bn1.weight, %bn1.bias, %bn1.running_mean, %bn1.running_var) : f32[1,3,4,4] loc("bn1")
//!     %relu = relu(%bn1) : f32[1,3,4,4] loc("relu")
//!     return %relu
//!   }
//! }
//! ```
//! becomes (`conv1.weight` and `conv1.weight_bias` are created tensors)
//! ```qir after
//! module {
//!   weights "weights.safetensors"
//!
//!   func @main(%x: f32[1,2,4,4]) -> f32[1,3,4,4] {
//!     %conv1.weight = weight {key = "conv1.weight"} : f32[3,2,1,1]
//!     %conv1.weight_bias = weight {key = "conv1.weight_bias"} : f32[3] loc("conv1")
//!     %conv1 = conv2d(%x, %conv1.weight, %conv1.weight_bias) : f32[1,3,4,4] loc("conv1")
//!     %relu = relu(%conv1) : f32[1,3,4,4] loc("relu")
//!     return %relu
//!   }
//! }
//! ```

use super::fold::{fold, Layer};
use super::params::{add_bias, constant_source, read, store, weight_readers, Param, Readers, Src};
use super::{only_result, result_name, Skip, THE_LAYER};
use crate::diag::Diagnostics;
use crate::ir::attr::Attr;
use crate::ir::graph::User;
use crate::ir::matching::{ops_of, sole_user, ProgramOrder};
use crate::ir::rewriter::Rewriter;
use crate::ir::{DType, Graph, Module, OpId, ValueId};
use crate::ops;
use crate::passes::{dce, each_graph, PassContext, PassDef};
use crate::tensor::Tensor;

pub const PASS: PassDef = PassDef {
    name: "fuse-conv-bn",
    description: "Fold batch_norm into the conv or linear before it (PT2E's PTQ BN folding).",
    run,
};

/// What a skipped batch norm is not, in the warning.
const FOLDED: &str = "folded into";

const PT2E_FOLDS_ANYWAY: &str = "PT2E folds it anyway, which silently changes the model's results";

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut readers = weight_readers(module);
    each_graph(module, |module, gi| fuse_graph(&mut Rewriter::new(module, gi), &mut readers, &mut cx.warnings))
}

fn fuse_graph(rw: &mut Rewriter<'_>, readers: &mut Readers, warnings: &mut Diagnostics) -> Result<bool, Diagnostics> {
    let batch_norms = ops_of(rw, &[ops::BATCH_NORM]);
    // PT2E returns early, without DCE, when there is no batch norm at all.
    if batch_norms.is_empty() {
        return Ok(false);
    }
    // Batch norms are never moved, so positions taken now order them for the whole walk.
    let order = ProgramOrder::of(rw);
    let mut changed = false;
    for bn in batch_norms {
        if !rw.op(bn).is_alive() {
            continue;
        }
        let pair = match match_pair(rw, bn) {
            None => continue,
            Some(Ok(pair)) => pair,
            Some(Err(skip)) => {
                warnings.push(skip.warning(rw, bn, FOLDED, THE_LAYER));
                continue;
            }
        };
        match plan_group(rw, readers, &order, pair)? {
            Ok(plan) => {
                apply(rw, readers, plan)?;
                changed = true;
            }
            Err(skip) => warnings.push(skip.warning(rw, bn, FOLDED, THE_LAYER)),
        }
    }
    let swept = dce::eliminate_dead_ops(rw);
    Ok(changed || swept)
}

// ---- matching ------------------------------------------------------------------------------

/// A batch norm and the layer it follows, with every parameter a constant.
#[derive(Clone, Debug)]
struct Pair {
    bn: OpId,
    layer_op: OpId,
    layer: Layer,
    weight: Src,
    bias: Option<Src>,
    /// γ, β, running mean, running variance.
    stats: [Src; 4],
    eps: f64,
}

/// `None` when `bn` does not follow a conv or linear; otherwise the pair or why it is skipped.
fn match_pair(g: &Graph, bn: OpId) -> Option<Result<Pair, Skip>> {
    let layer_op = g.producer(g.op(bn).operand(0)?)?;
    let layer = match g.op(layer_op).kind() {
        ops::CONV1D | ops::CONV2D => Layer::Conv,
        ops::CONV_TRANSPOSE2D => {
            let groups = g.attr(layer_op, "groups").and_then(Attr::as_int).and_then(|n| usize::try_from(n).ok());
            Layer::ConvTranspose { groups: groups.filter(|&n| n > 0)? }
        }
        ops::LINEAR => Layer::Linear,
        _ => return None,
    };
    Some(check_pair(g, bn, layer_op, layer))
}

fn check_pair(g: &Graph, bn: OpId, layer_op: OpId, layer: Layer) -> Result<Pair, Skip> {
    let data = g.op(layer_op);
    let skip = |reason: String| Skip::new(layer_op, reason);
    if g.attr(bn, "training").and_then(Attr::as_bool) == Some(true) {
        return Err(skip(
            "it is a training-mode batch_norm (`training = true`), which normalises by each batch's statistics: \
             folding the running statistics into the layer would change its results"
                .into(),
        )
        .note(PT2E_FOLDS_ANYWAY)
        .note(
            "for quantization-aware training use the `prepare-qat-pt2e` pipeline (`fuse-conv-bn-qat`); \
             for post-training quantization export the model in eval mode",
        ));
    }
    let (Some(x), Some(w)) = (data.operand(0), data.operand(1)) else {
        return Err(skip("the layer has no weight".into()));
    };
    let x_rank = g.value_type(x).rank();
    let w_rank = g.value_type(w).rank();
    match layer {
        Layer::Linear if x_rank > 2 => {
            return Err(skip(format!(
                "the linear input is {x_rank}-D, so linear and batch_norm act on different dimensions"
            ))
            .note("PT2E's `_fuse_linear_bn_` skips it too, with a warning (pytorch/ao#4116)"));
        }
        Layer::Linear if w_rank != 2 => return Err(skip("the linear weight is not a matrix".into())),
        Layer::Conv | Layer::ConvTranspose { .. } if x_rank != w_rank => {
            return Err(skip(format!(
                "the conv input `%{}` is unbatched, so batch_norm's channel dimension is not the conv's output channels",
                g.value_name(x)
            ))
            .note("PT2E folds anyway: it fails on a shape mismatch, or silently folds the wrong dimension when the sizes agree"));
        }
        _ => {}
    }
    let Some(out) = data.result(0) else {
        return Err(skip("the layer has no result".into()));
    };
    if sole_user(g, out) != Some((bn, 0)) {
        return Err(skip(format!("`%{}` has other users besides the batch_norm", g.value_name(out)))
            .note(PT2E_FOLDS_ANYWAY)
            .note(
                "the other users would see the normalised values (a second batch_norm's statistics would be dropped)",
            ));
    }
    let source = |v: ValueId, what: &str| {
        constant_source(g, v).map_err(|how| {
            skip(format!(
                "the {what} `%{}` is {how}, and folding needs constants (`weight` or `const`)",
                g.value_name(v)
            ))
            .note("PT2E's `_fuse_conv_bn_` raises an error for a parameter that is not a `get_attr`")
        })
    };
    let weight = source(w, "weight")?;
    let bias = data.operand(2).map(|b| source(b, "bias")).transpose()?;
    let bn_data = g.op(bn);
    let operand = |i: usize| bn_data.operand(i).ok_or_else(|| skip("the batch_norm lacks an operand".into()));
    let stats = [
        source(operand(1)?, "batch_norm weight")?,
        source(operand(2)?, "batch_norm bias")?,
        source(operand(3)?, "running mean")?,
        source(operand(4)?, "running variance")?,
    ];
    let mut values = vec![w];
    values.extend(data.operand(2));
    values.extend(bn_data.operands().iter().skip(1));
    let dtype = g.value_type(w).dtype;
    if !matches!(dtype, DType::F32 | DType::F64) || values.iter().any(|&v| g.value_type(v).dtype != dtype) {
        let types: Vec<String> = values.iter().map(|&v| g.value_type(v).dtype.to_string()).collect();
        return Err(skip(format!(
            "its parameters are {}; folding is implemented for parameters that are all f32 or all f64",
            types.join(", ")
        )));
    }
    if let (Layer::Linear, Some(b)) = (layer, data.operand(2)) {
        let (bt, wt) = (g.value_type(b), g.value_type(w));
        if bt.rank() != 1 || bt.shape[0] != wt.shape[0] {
            return Err(skip(format!(
                "the linear bias `%{}` is {bt} and broadcasts over the output features",
                g.value_name(b)
            )));
        }
    }
    let eps = g.attr(bn, "eps").and_then(Attr::as_float).ok_or_else(|| skip("the batch_norm has no eps".into()))?;
    Ok(Pair { bn, layer_op, layer, weight, bias, stats, eps })
}

// ---- groups: one weight, every batch norm that folds into it ------------------------------

/// What to write: the folded tensors, where they go, and the pairs they replace.
struct Plan {
    pairs: Vec<Pair>,
    weight: Tensor,
    bias: Tensor,
}

/// The ops that read `param`, with the value they read: every `weight` op with the key
/// (any graph), or the `const` op itself.
fn param_reads(rw: &Rewriter<'_>, readers: &Readers, param: &Param) -> Vec<(usize, ValueId)> {
    let result = |g: &Graph, op: OpId| g.op(op).result(0).filter(|_| g.op(op).is_alive());
    match param {
        Param::Key(key) => readers
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|&(g, op)| rw.module().graphs.get(g).and_then(|graph| Some((g, result(graph, op)?))))
            .collect(),
        Param::Const(op) => result(rw, *op).map(|v| vec![(rw.graph_index(), v)]).unwrap_or_default(),
    }
}

/// Gathers every pair that reads `first`'s weight and computes the fold, or says why not.
/// `Err` is a hard error (a weight that cannot be read); `Ok(Err)` a skip.
fn plan_group(
    rw: &Rewriter<'_>,
    readers: &Readers,
    order: &ProgramOrder,
    first: Pair,
) -> Result<Result<Plan, Skip>, Diagnostics> {
    let g: &Graph = rw;
    let layer_op = first.layer_op;
    let shared = |reason: String| {
        Skip::new(layer_op, reason).note(
            "PT2E folds it into the shared parameter anyway, which silently changes what the other readers compute",
        )
    };
    let weight_param = first.weight.identity();
    let mut pairs = vec![first];
    for (reader_graph, v) in param_reads(rw, readers, &weight_param) {
        if reader_graph != rw.graph_index() {
            return Ok(Err(shared(format!(
                "its weight is also read by function `@{}`",
                rw.module().graphs[reader_graph].name()
            ))));
        }
        for u in g.uses(v) {
            let User::Op(user) = u.user else {
                return Ok(Err(shared(format!("its weight `%{}` is also returned", g.value_name(v)))));
            };
            if user == layer_op && u.index == 1 {
                continue;
            }
            let other = g.op(user);
            let pair = other
                .result(0)
                .filter(|_| u.index == 1)
                .and_then(|r| match sole_user(g, r) {
                    Some((bn, 0)) if g.op(bn).kind() == ops::BATCH_NORM => match_pair(g, bn),
                    _ => None,
                })
                .and_then(Result::ok);
            match pair {
                Some(pair) if pair.layer_op == user => pairs.push(pair),
                _ => {
                    return Ok(Err(shared(format!(
                        "its weight is also read by `{} = {}`, which does not fold a batch_norm of its own",
                        result_name(g, user),
                        other.def().name
                    ))))
                }
            }
        }
    }
    let bias_param = pairs[0].bias.as_ref().map(Src::identity);
    if pairs.iter().any(|p| p.layer != pairs[0].layer || p.bias.as_ref().map(Src::identity) != bias_param) {
        return Ok(Err(shared("its weight is shared with layers of another kind or with another bias".into())));
    }
    if let Some(bias_param) = &bias_param {
        for (reader_graph, v) in param_reads(rw, readers, bias_param) {
            let ok = reader_graph == rw.graph_index()
                && g.uses(v)
                    .iter()
                    .all(|u| u.index == 2 && matches!(u.user, User::Op(op) if pairs.iter().any(|p| p.layer_op == op)));
            if !ok {
                return Ok(Err(shared(format!("its bias `%{}` is also read by other ops", g.value_name(v)))));
            }
        }
    }
    // Folding happens once per shared weight, so every batch norm must fold to the same bits.
    let mut folded: Option<(Tensor, Tensor)> = None;
    for pair in &pairs {
        let (w, b) = match fold_pair(rw, pair)? {
            Ok(wb) => wb,
            Err(reason) => return Ok(Err(Skip::new(layer_op, reason))),
        };
        match &folded {
            None => folded = Some((w, b)),
            Some((w0, b0)) if w0.bit_eq(&w) && b0.bit_eq(&b) => {}
            Some(_) => {
                return Ok(Err(shared(format!(
                    "its weight is shared with `{}`, whose batch_norm `{}` has other parameters",
                    result_name(g, pair.layer_op),
                    result_name(g, pair.bn)
                ))
                .note("PT2E `fake_fuse`s the later batch_norm: it is dropped and its statistics ignored")))
            }
        }
    }
    if pairs.len() > 1 {
        pairs.sort_by_key(|p| order.position_or_last(p.bn));
    }
    let Some((weight, bias)) = folded else {
        return Ok(Err(Skip::new(layer_op, "nothing to fold")));
    };
    Ok(Ok(Plan { pairs, weight, bias }))
}

/// The folded weight and bias of one pair; `Ok(Err)` when the tensors do not fit.
fn fold_pair(rw: &Rewriter<'_>, p: &Pair) -> Result<Result<(Tensor, Tensor), String>, Diagnostics> {
    let w = read(rw, &p.weight, p.bn)?;
    let b = p.bias.as_ref().map(|b| read(rw, b, p.bn)).transpose()?;
    let [gamma, beta, mean, var] = [0, 1, 2, 3].map(|i| read(rw, &p.stats[i], p.bn));
    let stats = [gamma?, beta?, mean?, var?];
    Ok(fold(p.layer, &w, b.as_ref(), &stats, p.eps))
}

// ---- rewriting -----------------------------------------------------------------------------

/// Writes the folded tensors, then every reader of a batch norm reads its layer instead.
fn apply(rw: &mut Rewriter<'_>, readers: &mut Readers, plan: Plan) -> Result<(), Diagnostics> {
    let Plan { pairs, weight, bias } = plan;
    let Some(first) = pairs.first() else { return Ok(()) };
    let (weight_src, bias_src) = (first.weight.clone(), first.bias.clone());
    store(rw, readers, &weight_src, weight)?;
    match bias_src {
        Some(src) => store(rw, readers, &src, bias)?,
        None => {
            let layers: Vec<OpId> = pairs.iter().map(|p| p.layer_op).collect();
            add_bias(rw, readers, &layers, &weight_src, bias)?
        }
    }
    for pair in &pairs {
        let layer_out = only_result(rw, pair.layer_op)?;
        rw.replace_op(pair.bn, &[layer_out]);
    }
    Ok(())
}
