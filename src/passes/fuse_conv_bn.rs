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
//!   `const` of more than [`INLINE_LIMIT`] elements becomes, in place, a `weight` of a created
//!   tensor keyed by the value's name;
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

use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use num_traits::Float;
use rustc_hash::FxHashMap;

use super::rewrite::INLINE_LIMIT;
use super::{dce, PassContext, PassDef};
use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::Attr;
use crate::ir::graph::{ResultSpec, Use, User};
use crate::ir::{DType, Graph, Module, OpId, TensorType, ValueId};
use crate::ops::OpKind;
use crate::tensor::{FromF64, Tensor};

pub const PASS: PassDef = PassDef {
    name: "fuse-conv-bn",
    description: "Fold batch_norm into the conv or linear before it (PT2E's PTQ BN folding).",
    run,
};

/// Every `weight` op of the module by key: (graph index, op). Entries may be dead ops.
pub(super) type Readers = FxHashMap<String, Vec<(usize, OpId)>>;

/// The module's `weight` ops by key.
pub(super) fn weight_readers(module: &Module) -> Readers {
    let mut readers: Readers = FxHashMap::default();
    for (gi, g) in module.graphs.iter().enumerate() {
        for op in g.ops() {
            if let Some(key) = weight_key(g, op) {
                readers.entry(key.to_string()).or_default().push((gi, op));
            }
        }
    }
    readers
}

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let mut readers = weight_readers(module);
    let mut changed = false;
    for gi in 0..module.graphs.len() {
        let graph = &module.graphs[gi];
        // PT2E returns early, without DCE, when there is no batch norm at all.
        if !graph.ops().any(|op| is_op(graph, op, "batch_norm")) {
            continue;
        }
        for bn in graph.op_ids() {
            let graph = &module.graphs[gi];
            if !graph.op(bn).alive || !is_op(graph, bn, "batch_norm") {
                continue;
            }
            let pair = match match_pair(graph, bn) {
                None => continue,
                Some(Ok(pair)) => pair,
                Some(Err(skip)) => {
                    cx.warnings.push(skip.warning(graph, bn, FOLDED));
                    continue;
                }
            };
            match plan_group(module, gi, &readers, pair)? {
                Ok(plan) => {
                    apply(module, gi, &mut readers, plan)?;
                    changed = true;
                }
                Err(skip) => cx.warnings.push(skip.warning(&module.graphs[gi], bn, FOLDED)),
            }
        }
        changed |= dce::eliminate_dead_ops(&mut crate::ir::rewriter::Rewriter::new(module, gi));
    }
    Ok(changed)
}

// ---- matching ------------------------------------------------------------------------------

/// The layer a batch norm folds into.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Layer {
    /// `conv1d`/`conv2d`: output channels on weight dim 0.
    Conv,
    /// `conv_transpose2d`: weight `[C_in, C_out/groups, …]`.
    ConvTranspose { groups: usize },
    /// `linear`: output features on weight dim 0; PT2E's linear bias formula.
    Linear,
}

/// Where a constant parameter comes from.
#[derive(Clone, Debug)]
pub(super) enum Src {
    Weight { op: OpId, key: String },
    Const { op: OpId },
}

impl Src {
    pub(super) fn op(&self) -> OpId {
        match self {
            Src::Weight { op, .. } | Src::Const { op } => *op,
        }
    }

    /// The parameter's identity: every `weight` op with one key reads one tensor.
    fn identity(&self) -> Param {
        match self {
            Src::Weight { key, .. } => Param::Key(key.clone()),
            Src::Const { op } => Param::Const(*op),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Param {
    Key(String),
    Const(OpId),
}

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

/// Why a batch norm stays: the warning's reason and notes (also `fuse-conv-bn-qat`'s).
pub(super) struct Skip {
    layer_op: OpId,
    reason: String,
    notes: Vec<String>,
}

impl Skip {
    pub(super) fn new(layer_op: OpId, reason: impl Into<String>) -> Skip {
        Skip { layer_op, reason: reason.into(), notes: Vec::new() }
    }

    pub(super) fn note(mut self, note: impl Into<String>) -> Skip {
        self.notes.push(note.into());
        self
    }

    /// The warning at `bn`: "`%bn` is not {undone} `%layer`: {reason}".
    pub(super) fn warning(self, graph: &Graph, bn: OpId, undone: &str) -> Diag {
        let mut d = Diag::warning(format!(
            "`{}` is not {undone} `{}`: {}",
            result_name(graph, bn),
            result_name(graph, self.layer_op),
            self.reason
        ))
        .at(graph.op(bn).span, "this batch_norm stays")
        .with(graph.op(self.layer_op).span, "the layer it follows");
        for n in self.notes {
            d = d.note(n);
        }
        d
    }
}

/// What a skipped batch norm is not, in the warning.
const FOLDED: &str = "folded into";

const PT2E_FOLDS_ANYWAY: &str = "PT2E folds it anyway, which silently changes the model's results";

/// `None` when `bn` does not follow a conv or linear; otherwise the pair or why it is skipped.
fn match_pair(g: &Graph, bn: OpId) -> Option<Result<Pair, Skip>> {
    let input = *g.op(bn).operands.first()?;
    let layer_op = g.producer(input)?;
    let data = g.op(layer_op);
    let layer = match data.def().name {
        "conv1d" | "conv2d" => Layer::Conv,
        "conv_transpose2d" => {
            let groups = g.attr(layer_op, "groups").and_then(Attr::as_int).and_then(|n| usize::try_from(n).ok());
            Layer::ConvTranspose { groups: groups.filter(|&n| n > 0)? }
        }
        "linear" => Layer::Linear,
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
    let (Some(&x), Some(&w)) = (data.operands.first(), data.operands.get(1)) else {
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
    if g.uses(out) != [Use { user: User::Op(bn), index: 0 }].as_slice() {
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
    let bias = data.operands.get(2).map(|&b| source(b, "bias")).transpose()?;
    let bn_data = g.op(bn);
    let operand =
        |i: usize| bn_data.operands.get(i).copied().ok_or_else(|| skip("the batch_norm lacks an operand".into()));
    let stats = [
        source(operand(1)?, "batch_norm weight")?,
        source(operand(2)?, "batch_norm bias")?,
        source(operand(3)?, "running mean")?,
        source(operand(4)?, "running variance")?,
    ];
    let mut values = vec![w];
    values.extend(data.operands.get(2));
    values.extend(bn_data.operands.iter().skip(1));
    let dtype = g.value_type(w).dtype;
    if !matches!(dtype, DType::F32 | DType::F64) || values.iter().any(|&v| g.value_type(v).dtype != dtype) {
        let types: Vec<String> = values.iter().map(|&v| g.value_type(v).dtype.to_string()).collect();
        return Err(skip(format!(
            "its parameters are {}; folding is implemented for parameters that are all f32 or all f64",
            types.join(", ")
        )));
    }
    if let (Layer::Linear, Some(&b)) = (layer, data.operands.get(2)) {
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

/// The `weight` or `const` op defining `v`, or how `v` is made instead.
pub(super) fn constant_source(g: &Graph, v: ValueId) -> Result<Src, String> {
    let Some(op) = g.producer(v) else {
        return Err("a graph input".into());
    };
    if let Some(key) = weight_key(g, op) {
        return Ok(Src::Weight { op, key: key.to_string() });
    }
    if is_op(g, op, "const") {
        return Ok(Src::Const { op });
    }
    Err(format!("computed by `{}`", g.op(op).def().name))
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
fn param_reads(module: &Module, gi: usize, readers: &Readers, param: &Param) -> Vec<(usize, ValueId)> {
    let result = |g: &Graph, op: OpId| g.op(op).result(0).filter(|_| g.op(op).alive);
    match param {
        Param::Key(key) => readers
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|&(g, op)| module.graphs.get(g).and_then(|graph| Some((g, result(graph, op)?))))
            .collect(),
        Param::Const(op) => result(&module.graphs[gi], *op).map(|v| vec![(gi, v)]).unwrap_or_default(),
    }
}

/// Gathers every pair that reads `first`'s weight and computes the fold, or says why not.
/// `Err` is a hard error (a weight that cannot be read); `Ok(Err)` a skip.
fn plan_group(module: &Module, gi: usize, readers: &Readers, first: Pair) -> Result<Result<Plan, Skip>, Diagnostics> {
    let g = &module.graphs[gi];
    let layer_op = first.layer_op;
    let shared = |reason: String| {
        Skip::new(layer_op, reason).note(
            "PT2E folds it into the shared parameter anyway, which silently changes what the other readers compute",
        )
    };
    let weight_param = first.weight.identity();
    let mut pairs = vec![first];
    for (reader_graph, v) in param_reads(module, gi, readers, &weight_param) {
        if reader_graph != gi {
            return Ok(Err(shared(format!(
                "its weight is also read by function `@{}`",
                module.graphs[reader_graph].name
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
                .and_then(|r| match g.uses(r) {
                    [Use { user: User::Op(bn), index: 0 }] if is_op(g, *bn, "batch_norm") => match_pair(g, *bn),
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
        for (reader_graph, v) in param_reads(module, gi, readers, bias_param) {
            let ok = reader_graph == gi
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
        let (w, b) = match fold_pair(module, g, pair)? {
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
        pairs.sort_by_key(|p| position(g, p.bn));
    }
    let Some((weight, bias)) = folded else {
        return Ok(Err(Skip::new(layer_op, "nothing to fold")));
    };
    Ok(Ok(Plan { pairs, weight, bias }))
}

/// Program position of a live op (only used to order the few pairs of a shared weight).
fn position(g: &Graph, op: OpId) -> usize {
    g.ops().position(|o| o == op).unwrap_or(usize::MAX)
}

pub(super) fn read(module: &Module, g: &Graph, src: &Src, bn: OpId) -> Result<Tensor, Diagnostics> {
    match src {
        Src::Weight { op, key } => module.weights().tensor(key).map_err(|e| {
            vec![Diag::error(format!("cannot read weight `{key}` to fold `{}`: {e}", result_name(g, bn)))
                .at(g.op(*op).span, "read here")]
        }),
        Src::Const { op } => g.attr(*op, "value").and_then(Attr::as_tensor).cloned().ok_or_else(|| {
            vec![Diag::error("a `const` without a value").at(g.op(*op).span, "here").note("this is a bug in qc")]
        }),
    }
}

/// The folded weight and bias of one pair; `Ok(Err)` when the tensors do not fit.
fn fold_pair(module: &Module, g: &Graph, p: &Pair) -> Result<Result<(Tensor, Tensor), String>, Diagnostics> {
    let w = read(module, g, &p.weight, p.bn)?;
    let b = p.bias.as_ref().map(|b| read(module, g, b, p.bn)).transpose()?;
    let [gamma, beta, mean, var] = [0, 1, 2, 3].map(|i| read(module, g, &p.stats[i], p.bn));
    let stats = [gamma?, beta?, mean?, var?];
    Ok(fold(p.layer, &w, b.as_ref(), &stats, p.eps))
}

// ---- arithmetic ----------------------------------------------------------------------------

/// The folded weight and bias, or why the tensors do not fit together.
pub(super) fn fold(
    layer: Layer,
    w: &Tensor,
    b: Option<&Tensor>,
    stats: &[Tensor; 4],
    eps: f64,
) -> Result<(Tensor, Tensor), String> {
    fn all<'a, T>(ts: &'a [Tensor; 4], f: impl Fn(&'a Tensor) -> Option<&'a ArrayD<T>>) -> Option<[&'a ArrayD<T>; 4]> {
        Some([f(&ts[0])?, f(&ts[1])?, f(&ts[2])?, f(&ts[3])?])
    }
    let mismatch = || "its parameters do not share one element type".to_string();
    match w {
        Tensor::F32(w) => {
            let b = b.map(|b| if let Tensor::F32(b) = b { Some(b) } else { None }).map(|b| b.ok_or_else(mismatch));
            let stats = all(stats, |t| if let Tensor::F32(a) = t { Some(a) } else { None }).ok_or_else(mismatch)?;
            // `eps` as PyTorch adds it to a tensor: rounded to the tensor's element type first.
            let (w, b) = fold_arrays(layer, w, b.transpose()?, stats, f32::from_f64(eps))?;
            Ok((Tensor::F32(w), Tensor::F32(b)))
        }
        Tensor::F64(w) => {
            let b = b.map(|b| if let Tensor::F64(b) = b { Some(b) } else { None }).map(|b| b.ok_or_else(mismatch));
            let stats = all(stats, |t| if let Tensor::F64(a) = t { Some(a) } else { None }).ok_or_else(mismatch)?;
            let (w, b) = fold_arrays(layer, w, b.transpose()?, stats, f64::from_f64(eps))?;
            Ok((Tensor::F64(w), Tensor::F64(b)))
        }
        other => Err(format!("its weight is {}; folding is implemented for f32 and f64", other.dtype())),
    }
}

/// PyTorch's `fuse_conv_bn_weights` / `fuse_linear_bn_weights`, operation by operation.
fn fold_arrays<T: Float + FromF64>(
    layer: Layer,
    w: &ArrayD<T>,
    b: Option<&ArrayD<T>>,
    [gamma, beta, mean, var]: [&ArrayD<T>; 4],
    eps: T,
) -> Result<(ArrayD<T>, ArrayD<T>), String> {
    let shape = w.shape();
    let channels = gamma.len();
    // Output channel of the weight element at row-major index `i`.
    let (block, per_group, group_block) = match layer {
        Layer::Conv | Layer::Linear => (shape.iter().skip(1).product::<usize>(), 0, 0),
        Layer::ConvTranspose { groups } => {
            let kernel: usize = shape.iter().skip(2).product();
            let per_group = shape.get(1).copied().unwrap_or(0);
            (kernel, per_group, (shape.first().copied().unwrap_or(0) / groups.max(1)).max(1))
        }
    };
    let out_channels = match layer {
        Layer::Conv | Layer::Linear => shape.first().copied().unwrap_or(0),
        Layer::ConvTranspose { groups } => shape.get(1).copied().unwrap_or(0) * groups,
    };
    let lens = [gamma.len(), beta.len(), mean.len(), var.len(), b.map_or(channels, |b| b.len())];
    if out_channels != channels || lens.iter().any(|&n| n != channels) {
        return Err(format!(
            "the layer has {out_channels} output channels but its bias and batch_norm parameters have {lens:?} elements"
        ));
    }
    let channel = |i: usize| -> usize {
        let i = i / block.max(1);
        match layer {
            Layer::Conv | Layer::Linear => i,
            // i = ci · per_group + c, and input channel ci belongs to group ci / group_block.
            Layer::ConvTranspose { .. } => (i / per_group.max(1)) / group_block * per_group + i % per_group.max(1),
        }
    };
    let (gamma, beta, mean, var) = (flat(gamma), flat(beta), flat(mean), flat(var));
    // torch.rsqrt(bn_rv + bn_eps): the scalar is rounded to T, then IEEE sqrt and divide.
    let rsqrt: Vec<T> = var.iter().map(|&v| T::one() / (v + eps).sqrt()).collect();
    // (bn_w * bn_var_rsqrt)
    let scale: Vec<T> = gamma.iter().zip(&rsqrt).map(|(&g, &r)| g * r).collect();
    let mut data = Vec::with_capacity(w.len());
    for (i, &x) in w.iter().enumerate() {
        let s = scale.get(channel(i)).ok_or("a weight element has no output channel")?;
        data.push(x * *s);
    }
    let weight = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| e.to_string())?;
    // conv_b = zeros_like(bn_rm) when absent.
    let b: Vec<T> = b.map_or_else(|| vec![T::zero(); channels], flat);
    let bias: Vec<T> = (0..channels)
        .map(|c| match layer {
            // (linear_b - bn_rm) * bn_scale + bn_b
            Layer::Linear => (b[c] - mean[c]) * scale[c] + beta[c],
            // (conv_b - bn_rm) * bn_var_rsqrt * bn_w + bn_b
            Layer::Conv | Layer::ConvTranspose { .. } => (b[c] - mean[c]) * rsqrt[c] * gamma[c] + beta[c],
        })
        .collect();
    let bias = ArrayD::from_shape_vec(IxDyn(&[channels]), bias).map_err(|e| e.to_string())?;
    Ok((weight, bias))
}

fn flat<T: Copy>(a: &ArrayD<T>) -> Vec<T> {
    a.iter().copied().collect()
}

// ---- rewriting -----------------------------------------------------------------------------

fn apply(module: &mut Module, gi: usize, readers: &mut Readers, plan: Plan) -> Result<(), Diagnostics> {
    let Plan { pairs, weight, bias } = plan;
    let Some(first) = pairs.first() else { return Ok(()) };
    let (weight_src, bias_src) = (first.weight.clone(), first.bias.clone());
    store(module, gi, readers, &weight_src, weight)?;
    match bias_src {
        Some(src) => store(module, gi, readers, &src, bias)?,
        None => {
            let layers: Vec<OpId> = pairs.iter().map(|p| p.layer_op).collect();
            add_bias(module, gi, readers, &layers, &weight_src, bias)?
        }
    }
    let g = &mut module.graphs[gi];
    for pair in &pairs {
        let (Some(bn_out), Some(out)) = (g.op(pair.bn).result(0), g.op(pair.layer_op).result(0)) else {
            return Err(internal(g, pair.bn, "a batch_norm or layer without a result"));
        };
        g.replace_all_uses(bn_out, out);
        g.erase_op(pair.bn);
    }
    Ok(())
}

/// Writes a folded parameter back where it came from (PT2E: `_assign_attr` on the same name).
pub(super) fn store(
    module: &mut Module,
    gi: usize,
    readers: &mut Readers,
    src: &Src,
    value: Tensor,
) -> Result<(), Diagnostics> {
    match src {
        Src::Weight { key, .. } => {
            module.created_weights.insert(key.clone(), Arc::new(value));
        }
        Src::Const { op } if value.len() <= INLINE_LIMIT => {
            let g = &mut module.graphs[gi];
            let attrs = g.op(*op).def().complete_attrs(vec![Some(Attr::Tensor(Arc::new(value)))]);
            g.op_mut(*op).attrs = g.intern_attrs(attrs);
        }
        Src::Const { op } => {
            // Too large to print inline: the same op becomes a `weight` read of a new key.
            let g = &module.graphs[gi];
            let name = g.op(*op).result(0).map(|r| g.value_name(r).to_string()).unwrap_or_default();
            let key = fresh_key(module, readers, &name);
            let kind = op_kind("weight", g, *op)?;
            module.created_weights.insert(key.clone(), Arc::new(value));
            let g = &mut module.graphs[gi];
            let attrs = kind.def().complete_attrs(vec![Some(Attr::Str(key.as_str().into()))]);
            let attrs = g.intern_attrs(attrs);
            let data = g.op_mut(*op);
            data.kind = kind;
            data.attrs = attrs;
            readers.entry(key).or_default().push((gi, *op));
        }
    }
    Ok(())
}

/// Gives every layer in `layers` the new bias `value`, in a new op right before it: a `weight`
/// of `<weight key>_bias` (PT2E's `conv.weight_bias`), or a `const` when the weight is one.
pub(super) fn add_bias(
    module: &mut Module,
    gi: usize,
    readers: &mut Readers,
    layers: &[OpId],
    weight: &Src,
    value: Tensor,
) -> Result<(), Diagnostics> {
    let g = &module.graphs[gi];
    let weight_name = g.op(weight.op()).result(0).map(|r| g.value_name(r).to_string()).unwrap_or_default();
    let key = match weight {
        Src::Weight { key, .. } => Some(fresh_key(module, readers, &format!("{key}_bias"))),
        Src::Const { .. } if value.len() > INLINE_LIMIT => {
            Some(fresh_key(module, readers, &format!("{weight_name}_bias")))
        }
        Src::Const { .. } => None,
    };
    let ty = TensorType::fixed(value.dtype(), &value.shape().iter().map(|&d| d as u64).collect::<Vec<_>>());
    let value = Arc::new(value);
    let (kind_name, attr, name) = match &key {
        Some(key) => {
            module.created_weights.insert(key.clone(), Arc::clone(&value));
            ("weight", Attr::Str(key.as_str().into()), key.clone())
        }
        None => ("const", Attr::Tensor(value), format!("{weight_name}_bias")),
    };
    let g = &mut module.graphs[gi];
    for &layer_op in layers {
        let kind = op_kind(kind_name, g, layer_op)?;
        let attrs = g.intern_attrs(kind.def().complete_attrs(vec![Some(attr.clone())]));
        let (loc, span) = (g.op(layer_op).loc, g.op(layer_op).span);
        let fresh = g.fresh_name(&name);
        let spec = ResultSpec { name: &fresh, ty: ty.clone(), span };
        let op = g.create_op(kind, &[], attrs, vec![spec], span).map_err(|_| internal(g, layer_op, "a name clash"))?;
        g.op_mut(op).loc = loc;
        g.insert_before(layer_op, op);
        let Some(v) = g.op(op).result(0) else {
            return Err(internal(g, layer_op, "a new op without a result"));
        };
        append_operand(g, layer_op, v);
        if let Some(key) = &key {
            readers.entry(key.clone()).or_default().push((gi, op));
        }
    }
    Ok(())
}

/// Appends `v` as the last operand of `op`, keeping use lists exact. (The graph API can only
/// replace operands: the new slot is first filled with `v` without a use, then `set_operand`
/// records the use — its removal of the old use finds nothing to remove.)
fn append_operand(g: &mut Graph, op: OpId, v: ValueId) {
    let index = g.op(op).operands.len();
    g.op_mut(op).operands.push(v);
    g.set_operand(op, index, v);
}

/// `base`, or `base_1`, `base_2`, …: a key no tensor and no `weight` op uses.
fn fresh_key(module: &Module, readers: &Readers, base: &str) -> String {
    let taken = |k: &str| readers.contains_key(k) || !matches!(module.weights().tensor_type(k), Ok(None));
    if !taken(base) {
        return base.to_string();
    }
    (1..).map(|i| format!("{base}_{i}")).find(|k| !taken(k)).unwrap_or_default()
}

// ---- small helpers -------------------------------------------------------------------------

pub(super) fn is_op(g: &Graph, op: OpId, name: &str) -> bool {
    g.op(op).def().name == name
}

pub(super) fn weight_key(g: &Graph, op: OpId) -> Option<&str> {
    if is_op(g, op, "weight") {
        g.attr(op, "key").and_then(Attr::as_str)
    } else {
        None
    }
}

pub(super) fn result_name(g: &Graph, op: OpId) -> String {
    g.op(op).result(0).map_or_else(|| g.op(op).def().name.to_string(), |r| format!("%{}", g.value_name(r)))
}

fn op_kind(name: &str, g: &Graph, at: OpId) -> Result<OpKind, Diagnostics> {
    OpKind::from_name(name).ok_or_else(|| internal(g, at, &format!("no `{name}` op in the registry")))
}

fn internal(g: &Graph, op: OpId, message: &str) -> Diagnostics {
    vec![Diag::error(format!("internal error in fuse-conv-bn: {message}"))
        .at(g.op(op).span, "while folding here")
        .note("this is a bug in qc")]
}
