//! `reference-repr`: rewrite the `dequantize → op → quantize` groups of a converted graph as
//! explicit integer arithmetic — PT2E's reference representation
//! (`convert_pt2e(use_reference_representation=True)`, `../shared/reference/pt2e.md` §1.11) —
//! which the interpreter runs, so a quantized model can be evaluated in integers end to end.
//!
//! A group is an op X whose float operands each come from a static `dequantize_per_tensor` (a
//! linear or conv weight may also come from a `dequantize_per_channel` on its output channels,
//! axis 0, with constant scales and zero points) and whose f32 result, possibly through a
//! `relu`, is read only by one `quantize_per_tensor`. That quantize is rewritten in place (same
//! name, type and location) into the op computing its integers; the new ops before it take X's
//! location; the dequantize and float ops left unused are deleted, as by `dce`. With
//! `x_c = x_q − zx` in i32 (the subtraction left out for a zero point of 0), s the f32 scales
//! and o the output:
//!
//! | X | integer form |
//! |---|---|
//! | linear, conv1d, conv2d | `acc = X(x_c, w_c, b) : i32`, `requantize(acc) {scale = sx·sw/so}`, or `requantize_per_channel(acc, [sx·sw_c/so])` for per-channel weights |
//! | mul, matmul, bmm | `p = X(x_c, y_c) : i32`, `requantize(p) {scale = sx·sy/so}` |
//! | add, sub (alpha 1) | each operand `requantize(x_c) {scale = 2^k·sx/so} : i32`, `s = X(…) : i32`, `requantize(s) {scale = 2^-k}` |
//! | max_pool2d, avg_pool2d, adaptive_avg_pool2d, view, reshape, permute, transpose, flatten, squeeze, unsqueeze, slice, contiguous, dropout, expand | `X(x_q)` when input and output have the same qparams and X commutes with the zero point; else `requantize(X(x_c)) {scale = sx/so}` |
//! | mean | `requantize(sum(x_c)) {scale = sx/(so·n)}` over the n averaged elements |
//! | cat | `cat` of the inputs, each first requantized to the output's qparams unless it has them |
//!
//! The last requantize carries the output's zero point, range and dtype; a relu between X and
//! the quantize folds into it as `qmin = max(qmin, zo)` (exact: relu then quantize is the
//! quantize clamped at the zero point). Multipliers are computed in f64. A float constant bias
//! becomes, at pass time, the i32 constant `round(b / (sx·sw_c))`; a bias dequantized from a
//! constant i32 with zero point 0 and scale `fl32(sx)·fl32(sw_c)` (a `derived` spec) is already
//! in the accumulator's unit and used as it is. The accumulation is exact: a group is rewritten
//! only when `K·max|x_c|·max|w_c| + max|b|` fits i32 for its K-term dot products.
//!
//! Rounding: PT2E's reference form truncates toward zero when it quantizes the bias and
//! requantizes (its `out_dtype(..., int32, ...)` casts); qc rounds half to even everywhere, as
//! the quantize ops do, so the integer graph tracks the q/dq graph: group by group within one
//! unit (LSB) of the output and equal on all but a few elements in 10^4
//! (`tests/reference_repr.rs`).
//!
//! Deliberately unlike PT2E's rewrite:
//! * conv1d/conv2d, per-channel weights, linear/conv followed by relu, mul, matmul, pooling,
//!   mean, cat and data movement are rewritten too; PT2E's patterns match only linear with
//!   per-tensor weights, add and add+relu in today's export IR.
//! * add and sub rescale their operands to 2^-k units of the output (k ≤ 16, as large as keeps
//!   each addend within ±2^30, so the sum fits i32) instead of PT2E's whole units: rounding each
//!   addend to whole units put 3–25% of the examples' sums one unit off the q/dq graph, 2^-16
//!   units none.
//! * mean is `sum` then one requantize: `mean` stays float-only (as in PyTorch), and one
//!   rounding tracks the q/dq graph more closely than an integer mean would.
//!
//! Left in q/dq form (never wrong, just not rewritten): dynamic quantization (the `.tensor`
//! dequantize), float types other than f32, ops without an integer form, a result read by
//! anything besides its quantize, an accumulation that could leave i32, centered values that do
//! not fit i32, any other bias, per-channel quantization of anything but a weight.
//!
//! Requires: a converted module (`convert`, ideally through `fold-quantize`). Leaves: the
//! rewritten groups as integer ops, everything else unchanged. Idempotent.
//!
//! ```qir before
//! module {
//!   func @main(%x: f32[1,4]) -> f32[1,2] {
//!     %x_q = quantize_per_tensor(%x) {scale = 0.5, zero_point = 3, qmin = -128, qmax = 127, dtype = i8} : i8[1,4]
//!     %x_dq = dequantize_per_tensor(%x_q) {scale = 0.5, zero_point = 3, qmin = -128, qmax = 127, dtype = i8} : f32[1,4]
//!     %w_q = const {value = [[2, -1, 0, 4], [1, 1, -3, 0]]} : i8[2,4]
//!     %w_dq = dequantize_per_tensor(%w_q) {scale = 0.25, zero_point = 0, qmin = -127, qmax = 127, dtype = i8} : f32[2,4]
//!     %fc = linear(%x_dq, %w_dq) : f32[1,2]
//!     %fc_q = quantize_per_tensor(%fc) {scale = 0.5, zero_point = -5, qmin = -128, qmax = 127, dtype = i8} : i8[1,2]
//!     %fc_dq = dequantize_per_tensor(%fc_q) {scale = 0.5, zero_point = -5, qmin = -128, qmax = 127, dtype = i8} : f32[1,2]
//!     return %fc_dq
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   func @main(%x: f32[1,4]) -> f32[1,2] {
//!     %x_q = quantize_per_tensor(%x) {scale = 0.5, zero_point = 3, qmin = -128, qmax = 127, dtype = i8} : i8[1,4]
//!     %w_q = const {value = [[2, -1, 0, 4], [1, 1, -3, 0]]} : i8[2,4]
//!     %x_q_i32 = convert_element_type(%x_q) {dtype = i32} : i32[1,4]
//!     %x_q_zero_point = const {value = 3} : i32[]
//!     %x_q_centered = sub(%x_q_i32, %x_q_zero_point) : i32[1,4]
//!     %w_q_i32 = convert_element_type(%w_q) {dtype = i32} : i32[2,4]
//!     %fc_i32 = linear(%x_q_centered, %w_q_i32) : i32[1,2]
//!     %fc_q = requantize(%fc_i32) {scale = 0.25, zero_point = -5, qmin = -128, qmax = 127, dtype = i8} : i8[1,2]
//!     %fc_dq = dequantize_per_tensor(%fc_q) {scale = 0.5, zero_point = -5, qmin = -128, qmax = 127, dtype = i8} : f32[1,2]
//!     return %fc_dq
//!   }
//! }
//! ```

use ndarray::{ArrayD, IxDyn};

use super::dce::eliminate_dead_ops;
use super::remap::Remap;
use super::{each_graph, PassContext, PassDef};
use crate::diag::Diagnostics;
use crate::interp::eval_op;
use crate::ir::attr::Attr;
use crate::ir::graph::AttrsId;
use crate::ir::matching::{ops_of, producer_of, producer_with, require, sole_user, Match, Mismatch};
use crate::ir::rewriter::{internal, Rewriter};
use crate::ir::{DType, Dim, Graph, Module, OpId, TensorType, ValueId};
use crate::ops::infer::norm_dim;
use crate::ops::{self, OpKind, Traits};
use crate::tensor::Tensor;

pub const PASS: PassDef = PassDef {
    name: "reference-repr",
    description: "Rewrite dq → op → q groups as integer arithmetic (PT2E's reference representation).",
    run,
};

/// Ops rewritten on the integers of their one input: pooling and data movement.
const UNARY_OPS: &[OpKind] = &[
    ops::MAX_POOL2D,
    ops::AVG_POOL2D,
    ops::ADAPTIVE_AVG_POOL2D,
    ops::VIEW,
    ops::RESHAPE,
    ops::PERMUTE,
    ops::TRANSPOSE,
    ops::FLATTEN,
    ops::SQUEEZE,
    ops::UNSQUEEZE,
    ops::SLICE,
    ops::CONTIGUOUS,
    ops::DROPOUT,
    ops::EXPAND,
];

/// At most this many bits of fraction below the output's unit in add/sub's rescaled operands.
const MAX_FRACTION_BITS: i32 = 16;

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    each_graph(module, |module, gi| rewrite_graph(module, gi, cx))
}

fn rewrite_graph(module: &mut Module, gi: usize, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let g = &module.graphs[gi];
    let quantizes = ops_of(g, &[ops::QUANTIZE_PER_TENSOR]);
    let mut changed = false;
    let mut remap = Remap::default();
    for q in quantizes {
        match match_group(module, &module.graphs[gi], q)? {
            Ok(group) => {
                rewrite(&mut Rewriter::new(module, gi), group, &mut remap)?;
                changed = true;
            }
            Err(why) => {
                let g = &module.graphs[gi];
                let name = g.op(q).result(0).map_or("?", |r| g.value_name(r));
                cx.explain(PASS.name, g.op(q).span(), &format!("`%{name}` stays in q/dq form"), &why);
            }
        }
    }
    if changed {
        let mut rw = Rewriter::new(module, gi);
        remap.apply(&mut rw);
        eliminate_dead_ops(&mut rw);
    }
    Ok(changed)
}

/// Static per-tensor qparams.
#[derive(Copy, Clone, Debug, PartialEq)]
struct QParams {
    scale: f64,
    zero_point: i64,
    qmin: i64,
    qmax: i64,
    dtype: DType,
}

impl QParams {
    /// The qparams of a quantize or dequantize op; the scale as the float32 the ops compute with.
    fn of(g: &Graph, op: OpId) -> Option<QParams> {
        let int = |name: &str| g.attr(op, name).and_then(Attr::as_int);
        Some(QParams {
            scale: f64::from(g.attr(op, "scale")?.as_float()? as f32),
            zero_point: int("zero_point")?,
            qmin: int("qmin")?,
            qmax: int("qmax")?,
            dtype: g.attr(op, "dtype")?.as_dtype()?,
        })
    }

    /// The largest |q − zero_point| over the range.
    fn centered_bound(&self) -> i128 {
        centered_bound(self.qmin, self.qmax, self.zero_point)
    }

    /// Whether `x − zero_point` fits i32 for every x in the range.
    fn centers_in_i32(&self) -> bool {
        fits_i32(self.centered_bound()) && fits_i32(self.zero_point.into())
    }

    /// Whether values quantized with `self` are the same integers quantized with `out`: same
    /// scale (bit for bit), zero point and dtype, and a range inside `out`'s.
    fn passes_through(&self, out: &QParams) -> bool {
        self.scale.to_bits() == out.scale.to_bits()
            && self.zero_point == out.zero_point
            && self.dtype == out.dtype
            && self.qmin >= out.qmin
            && self.qmax <= out.qmax
    }
}

fn centered_bound(qmin: i64, qmax: i64, zero_point: i64) -> i128 {
    let z = i128::from(zero_point);
    (i128::from(qmin) - z).abs().max((i128::from(qmax) - z).abs())
}

fn fits_i32(v: i128) -> bool {
    i32::try_from(v).is_ok()
}

/// A per-tensor dequantized operand: the integer value the dequantize reads, and its qparams.
#[derive(Copy, Clone)]
struct Quantized {
    value: ValueId,
    qp: QParams,
}

/// A weight (or bias) dequantized per tensor, or per channel along axis 0.
struct Weight {
    value: ValueId,
    /// One scale (per tensor) or one per channel, the f32 scales widened.
    scales: Vec<f64>,
    zero_points: Vec<i64>,
    qmin: i64,
    qmax: i64,
    dtype: DType,
}

impl Weight {
    fn scale(&self, channel: usize) -> f64 {
        self.scales.get(channel).or(self.scales.last()).copied().unwrap_or(1.0)
    }

    fn centered_bound(&self) -> i128 {
        self.zero_points.iter().map(|&z| centered_bound(self.qmin, self.qmax, z)).max().unwrap_or(0)
    }
}

/// The integers a linear or conv adds to its accumulator.
enum Bias {
    /// A quantized bias already in the accumulator's unit.
    Existing(ValueId),
    /// A float bias quantized at pass time.
    Constant(Vec<i32>),
}

/// How a group is computed in integers (see the module doc).
enum Form {
    Layer { x: Quantized, w: Weight, bias: Option<Bias> },
    Product { x: Quantized, y: Quantized },
    Sum { x: Quantized, y: Quantized, fraction_bits: i32 },
    Unary { x: Quantized },
    Mean { x: Quantized, count: u64 },
    Cat { inputs: Vec<Quantized> },
}

struct Group {
    /// The quantize the group ends in; it becomes the group's last integer op.
    q: OpId,
    /// The float op X.
    op: OpId,
    /// The output qparams, with a folded relu's clamp.
    out: QParams,
    form: Form,
}

/// The group ending in quantize `q`, or why it is not one this pass rewrites.
fn match_group(module: &Module, g: &Graph, q: OpId) -> Result<Match<Group>, Diagnostics> {
    let Some(mut out) = QParams::of(g, q) else { return Ok(Err(Mismatch::new("its qparams are not static"))) };
    let mut op = match sole_producer(g, g.op(q).operand(0)) {
        Ok(op) => op,
        Err(why) => return Ok(Err(why)),
    };
    if g.op(op).kind() == ops::RELU {
        let Ok(x) = sole_producer(g, g.op(op).operand(0)) else {
            return Ok(Err(Mismatch::new("the input of its relu has other readers, or is a graph input")));
        };
        op = x;
        out.qmin = out.zero_point.clamp(out.qmin, out.qmax);
    }
    let data = g.op(op);
    if data.num_results() != 1 || data.results().any(|r| g.value_type(r).dtype != DType::F32) {
        return Ok(Err(Mismatch::new(format!("`{}` does not compute one f32 result", data.def().name))));
    }
    let form = match (data.kind(), data.operands()) {
        (ops::LINEAR | ops::CONV1D | ops::CONV2D, [x, w, rest @ ..]) => {
            layer(module, g, op, *x, *w, rest.first().copied())?
        }
        (ops::MUL | ops::MATMUL | ops::BMM, &[x, y]) => product(g, op, x, y),
        (ops::ADD | ops::SUB, &[x, y]) => sum(g, op, x, y, &out),
        (ops::MEAN, &[x]) => mean(g, op, x),
        (ops::CAT, inputs) => {
            inputs.iter().map(|&v| dequantized(g, v)).collect::<Option<_>>().map(|inputs| Form::Cat { inputs })
        }
        (kind, &[x]) if UNARY_OPS.contains(&kind) => dequantized(g, x).map(|x| Form::Unary { x }),
        _ => None,
    };
    let Some(form) = form else {
        let name = data.def().name;
        let has_form = matches!(
            data.kind(),
            ops::LINEAR | ops::CONV1D | ops::CONV2D | ops::MUL | ops::MATMUL | ops::BMM | ops::ADD | ops::SUB
        ) || [ops::MEAN, ops::CAT].contains(&data.kind())
            || UNARY_OPS.contains(&data.kind());
        return Ok(Err(Mismatch::new(if has_form {
            format!(
                "the operands of `{name}` are not all static per-tensor dequantized f32 values (a weight may be \
                 per-channel on axis 0), or its accumulation could leave i32"
            )
        } else {
            format!("`{name}` has no integer form")
        })));
    };
    if !centered_inputs(&form, &out).iter().all(QParams::centers_in_i32) {
        return Ok(Err(Mismatch::new("an input minus its zero point would not fit i32")));
    }
    Ok(Ok(Group { q, op, out, form }))
}

/// The producer of the operand `v` when one op (the one asking) is its only reader.
fn sole_producer(g: &Graph, v: Option<ValueId>) -> Match<OpId> {
    let v = require(v, "it has no operand")?;
    let producer = require(g.producer(v), "it quantizes a graph input")?;
    require(sole_user(g, v), "the value it quantizes has other readers")?;
    Ok(producer)
}

/// `v` as a static per-tensor dequantize to f32.
fn dequantized(g: &Graph, v: ValueId) -> Option<Quantized> {
    let dq = producer_of(g, v, ops::DEQUANTIZE_PER_TENSOR)?;
    let value = g.op(dq).operand(0)?;
    (g.value_type(v).dtype == DType::F32).then_some(Quantized { value, qp: QParams::of(g, dq)? })
}

/// The qparams of the inputs the form centers (`x − zero_point` in i32).
fn centered_inputs(form: &Form, out: &QParams) -> Vec<QParams> {
    match form {
        Form::Layer { x, .. } | Form::Mean { x, .. } => vec![x.qp],
        Form::Product { x, y } | Form::Sum { x, y, .. } => vec![x.qp, y.qp],
        Form::Unary { x } => vec![x.qp],
        Form::Cat { inputs } => inputs.iter().map(|x| x.qp).filter(|qp| !qp.passes_through(out)).collect(),
    }
}

/// The value of `v` when a `weight` or `const` op produces it.
fn constant(module: &Module, g: &Graph, v: ValueId) -> Result<Option<Tensor>, Diagnostics> {
    let Some(p) = producer_with(g, v, Traits::CONSTANT) else { return Ok(None) };
    let mut values = eval_op(module, g, p, &[]).map_err(|d| vec![d])?;
    Ok(values.pop())
}

/// `v` as a dequantize per tensor, or per channel along axis 0 with constant qparams.
fn weight(module: &Module, g: &Graph, v: ValueId) -> Result<Option<Weight>, Diagnostics> {
    if let Some(Quantized { value, qp }) = dequantized(g, v) {
        let QParams { scale, zero_point, qmin, qmax, dtype } = qp;
        return Ok(Some(Weight { value, scales: vec![scale], zero_points: vec![zero_point], qmin, qmax, dtype }));
    }
    let Some(dq) = producer_of(g, v, ops::DEQUANTIZE_PER_CHANNEL) else { return Ok(None) };
    let &[value, scales, zero_points] = g.op(dq).operands() else { return Ok(None) };
    let int = |name: &str| g.attr(dq, name).and_then(Attr::as_int);
    let (Some(axis), Some(qmin), Some(qmax), Some(dtype)) =
        (int("axis"), int("qmin"), int("qmax"), g.attr(dq, "dtype").and_then(Attr::as_dtype))
    else {
        return Ok(None);
    };
    let rank = g.value_type(v).rank();
    if norm_dim(axis, rank) != Ok(0) || g.value_type(v).dtype != DType::F32 {
        return Ok(None);
    }
    let (Some(scales), Some(zero_points)) = (constant(module, g, scales)?, constant(module, g, zero_points)?) else {
        return Ok(None);
    };
    // dequantize_per_channel computes with float32 scales.
    let scales = scales.to_f64_array().iter().map(|&s| f64::from(s as f32)).collect();
    let zero_points = zero_points.to_f64_array().iter().map(|&z| z as i64).collect();
    Ok(Some(Weight { value, scales, zero_points, qmin, qmax, dtype }))
}

/// Output channels of a linear or conv weight (1 for linear's vector weight), when known.
fn out_channels(weight: &TensorType) -> Option<usize> {
    match weight.rank() {
        1 => Some(1),
        _ => weight.shape[0].known().and_then(|c| usize::try_from(c).ok()),
    }
}

fn layer(
    module: &Module,
    g: &Graph,
    op: OpId,
    x: ValueId,
    w: ValueId,
    bias: Option<ValueId>,
) -> Result<Option<Form>, Diagnostics> {
    let (Some(xq), Some(wq)) = (dequantized(g, x), weight(module, g, w)?) else { return Ok(None) };
    let w_type = g.value_type(w);
    let Some(channels) = out_channels(w_type) else { return Ok(None) };
    let per_channel = wq.scales.len() > 1 || wq.zero_points.len() > 1;
    let zero_points_fit = wq.zero_points.iter().all(|&z| fits_i32(z.into()));
    if (per_channel && (w_type.rank() < 2 || wq.scales.len() != channels || wq.zero_points.len() != channels))
        || !zero_points_fit
    {
        return Ok(None);
    }
    // Terms per output: in_features for linear, C/groups·k for a conv.
    let first = if g.op(op).kind() == ops::LINEAR { w_type.rank() - 1 } else { 1 };
    let Some(terms) = w_type.shape[first..].iter().try_fold(1i128, |n, d| n.checked_mul(d.known()?.into())) else {
        return Ok(None);
    };
    let (bias, bias_bound) = match bias {
        None => (None, 0),
        Some(b) => match layer_bias(module, g, b, &xq, &wq, channels)? {
            Some((bias, bound)) => (Some(bias), bound),
            None => return Ok(None),
        },
    };
    let worst =
        terms.saturating_mul(xq.qp.centered_bound()).saturating_mul(wq.centered_bound()).saturating_add(bias_bound);
    Ok(fits_i32(worst).then_some(Form::Layer { x: xq, w: wq, bias }))
}

/// The bias of a linear or conv in its accumulator's unit `sx·sw_c`, and its largest magnitude.
fn layer_bias(
    module: &Module,
    g: &Graph,
    b: ValueId,
    x: &Quantized,
    w: &Weight,
    channels: usize,
) -> Result<Option<(Bias, i128)>, Diagnostics> {
    let bound = |values: &[i64]| values.iter().map(|v| i128::from(*v).abs()).max().unwrap_or(0);
    if let Some(t) = constant(module, g, b)?.filter(|t| t.dtype().is_float()) {
        let floats = t.to_f64_array();
        let floats: Vec<f64> = floats.iter().copied().collect();
        if floats.len() != channels && floats.len() != 1 {
            return Ok(None);
        }
        let mut ints = Vec::with_capacity(channels);
        for c in 0..channels {
            let v = floats.get(c).or(floats.last()).copied().unwrap_or(0.0);
            let q = (v / (x.qp.scale * w.scale(c))).round_ties_even();
            // `as` saturates, so an out-of-range quotient fails the check below.
            match i32::try_from(q as i64) {
                Ok(q) => ints.push(q),
                Err(_) => return Ok(None),
            }
        }
        let wide: Vec<i64> = ints.iter().map(|&v| v.into()).collect();
        return Ok(Some((Bias::Constant(ints), bound(&wide))));
    }
    // A bias quantized as PT2E's `derived` spec: i32, zero point 0, scale fl32(sx)·fl32(sw_c).
    let Some(bq) = weight(module, g, b)? else { return Ok(None) };
    let unit = |c: usize| (x.qp.scale as f32 * w.scale(c) as f32).to_bits();
    let in_unit = (0..channels).all(|c| (bq.scale(c) as f32).to_bits() == unit(c));
    let shape_ok = g.value_type(bq.value).shape == [Dim::Known(channels as u64)];
    if bq.dtype != DType::I32 || bq.zero_points.iter().any(|&z| z != 0) || !in_unit || !shape_ok {
        return Ok(None);
    }
    let Some(values) = constant(module, g, bq.value)? else { return Ok(None) };
    let values: Vec<i64> = values.to_f64_array().iter().map(|&v| v as i64).collect();
    Ok(Some((Bias::Existing(bq.value), bound(&values))))
}

fn product(g: &Graph, op: OpId, x: ValueId, y: ValueId) -> Option<Form> {
    let (xq, yq) = (dequantized(g, x)?, dequantized(g, y)?);
    // Terms per output: 1 for mul, the inner dimension for matmul/bmm.
    let terms = match g.op(op).kind() {
        ops::MUL => 1,
        _ => i128::from(g.value_type(x).shape.last()?.known()?),
    };
    let worst = terms.saturating_mul(xq.qp.centered_bound()).saturating_mul(yq.qp.centered_bound());
    fits_i32(worst).then_some(Form::Product { x: xq, y: yq })
}

fn sum(g: &Graph, op: OpId, x: ValueId, y: ValueId, out: &QParams) -> Option<Form> {
    if g.attr(op, "alpha").and_then(Attr::as_float) != Some(1.0) {
        return None;
    }
    let (xq, yq) = (dequantized(g, x)?, dequantized(g, y)?);
    // Each addend, in units of the output, stays within ±(2^30 − 1) so that the sum fits i32.
    let worst = [xq, yq].iter().map(|a| a.qp.centered_bound() as f64 * (a.qp.scale / out.scale)).fold(0.0, f64::max);
    let limit = f64::from((1 << 30) - 2);
    let fraction_bits = (0..=MAX_FRACTION_BITS).rev().find(|&k| worst * f64::from(1 << k) <= limit)?;
    Some(Form::Sum { x: xq, y: yq, fraction_bits })
}

fn mean(g: &Graph, op: OpId, x: ValueId) -> Option<Form> {
    let xq = dequantized(g, x)?;
    let shape = &g.value_type(x).shape;
    let dims = g.attr(op, "dim").and_then(Attr::as_ints)?;
    let reduced: Vec<usize> = if dims.is_empty() {
        (0..shape.len()).collect()
    } else {
        dims.iter().map(|&d| norm_dim(d, shape.len()).ok()).collect::<Option<_>>()?
    };
    let count = reduced.iter().try_fold(1u64, |n, &d| n.checked_mul(shape.get(d)?.known()?))?;
    (count > 0).then_some(Form::Mean { x: xq, count })
}

/// Whether `op` commutes with adding a constant to its input, so that it can run on `x_q`
/// instead of `x_q − zero_point`: all unary ops but an average pool whose divisor is not the
/// number of input elements it sums (padding counted, or an override).
fn commutes_with_offset(g: &Graph, op: OpId) -> bool {
    if g.op(op).kind() != ops::AVG_POOL2D {
        return true;
    }
    let padded = g.attr(op, "padding").and_then(Attr::as_ints).is_none_or(|p| p.iter().any(|&v| v != 0));
    let counts_padding = g.attr(op, "count_include_pad").and_then(Attr::as_bool) != Some(false);
    g.attr(op, "divisor_override").is_none() && !(padded && counts_padding)
}

/// Creates the group's new ops right before its float op, with that op's location and span.
struct Builder<'r, 'm> {
    rw: &'r mut Rewriter<'m>,
}

impl Builder<'_, '_> {
    /// An op of `kind` with the attributes `attrs` of an existing op.
    fn op_like(
        &mut self,
        kind: OpKind,
        attrs: AttrsId,
        operands: &[ValueId],
        base: &str,
        ty: TensorType,
    ) -> Result<ValueId, Diagnostics> {
        Ok(self.rw.build_with_attrs(kind, operands, attrs, &[(base, ty)])?[0])
    }

    fn name(&self, v: ValueId) -> String {
        self.rw.value_name(v).to_string()
    }

    fn ty(&self, v: ValueId) -> TensorType {
        self.rw.value_type(v).clone()
    }

    /// `value − zero_points` in i32; per-channel zero points run along axis 0.
    fn centered(&mut self, value: ValueId, zero_points: &[i64]) -> Result<ValueId, Diagnostics> {
        let (name, ty) = (self.name(value), self.ty(value));
        let wide = match ty.dtype {
            DType::I32 => value,
            _ => self.rw.build1(
                ops::CONVERT_ELEMENT_TYPE,
                &[value],
                &[("dtype", Attr::DType(DType::I32))],
                &format!("{name}_i32"),
                ty.with_dtype(DType::I32),
            )?,
        };
        if zero_points.iter().all(|&z| z == 0) {
            return Ok(wide);
        }
        // Along axis 0: shaped [C, 1, …] to broadcast against the value.
        let mut shape = vec![1; if zero_points.len() > 1 { ty.rank() } else { 0 }];
        if let Some(first) = shape.first_mut() {
            *first = zero_points.len();
        }
        let data = zero_points.iter().map(|&z| z as i32).collect();
        let zps = ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| internal(&e.to_string()))?;
        let zps = self.rw.constant(&format!("{name}_zero_point"), Tensor::I32(zps))?;
        self.rw.build1(ops::SUB, &[wide, zps], &[], &format!("{name}_centered"), ty.with_dtype(DType::I32))
    }

    fn centered_input(&mut self, x: &Quantized) -> Result<ValueId, Diagnostics> {
        self.centered(x.value, &[x.qp.zero_point])
    }

    /// `requantize(value) {scale, out}`, its result called after `base`.
    fn requantize(&mut self, value: ValueId, scale: f64, out: &QParams, base: &str) -> Result<ValueId, Diagnostics> {
        let ty = self.ty(value).with_dtype(out.dtype);
        self.rw.build1(ops::REQUANTIZE, &[value], &requantize_fields(Attr::Float(scale), out), base, ty)
    }
}

/// The fields of `requantize` (`lead` a scale) or `requantize_per_channel` (`lead` an axis)
/// producing `out`.
fn requantize_fields(lead: Attr, out: &QParams) -> Vec<(&'static str, Attr)> {
    let lead_name = if matches!(lead, Attr::Float(_)) { "scale" } else { "axis" };
    vec![
        (lead_name, lead),
        ("zero_point", Attr::Int(out.zero_point)),
        ("qmin", Attr::Int(out.qmin)),
        ("qmax", Attr::Int(out.qmax)),
        ("dtype", Attr::DType(out.dtype)),
    ]
}

/// What the quantize is rewritten into: an op kind, its operands and attributes.
type Final = (OpKind, Vec<ValueId>, AttrsId);

/// The quantize rewritten as `requantize` (`lead` a scale) or `requantize_per_channel` (`lead`
/// an axis) of `operands`.
fn final_requantize(
    rw: &mut Rewriter<'_>,
    operands: Vec<ValueId>,
    lead: Attr,
    out: &QParams,
) -> Result<Final, Diagnostics> {
    let kind = if matches!(lead, Attr::Float(_)) { ops::REQUANTIZE } else { ops::REQUANTIZE_PER_CHANNEL };
    let attrs = rw.attrs(kind, &requantize_fields(lead, out))?;
    Ok((kind, operands, attrs))
}

/// Rewrites the group: new integer ops before X, and the quantize turned into the last one.
/// Annotations that named X's result or a folded relu's (`shared(%x)`, an edge into X) are to
/// name the quantize's instead, which stands for both once they are gone: `remap` records that.
fn rewrite(rw: &mut Rewriter<'_>, group: Group, remap: &mut Remap) -> Result<(), Diagnostics> {
    let Group { q, op, out, form } = group;
    let g: &Graph = rw;
    let q_out = g.op(q).result(0).ok_or_else(|| internal("a quantize without a result"))?;
    let mut replaced = g.op(q).operand(0);
    while let Some(v) = replaced {
        remap.value(v, q_out);
        let Some(p) = g.producer(v) else { break };
        remap.gone(p, q_out);
        replaced = if p == op { None } else { g.op(p).operand(0) };
    }
    let (kind, attrs) = (g.op(op).kind(), g.op(op).attrs_id());
    let x_out = g.op(op).result(0).ok_or_else(|| internal("a rewritten op without a result"))?;
    let name = g.value_name(x_out).to_string();
    let int_type = g.value_type(x_out).with_dtype(DType::I32);
    let direct = |x: &Quantized| x.qp.passes_through(&out) && (x.qp.zero_point == 0 || commutes_with_offset(g, op));
    let unary_direct = matches!(&form, Form::Unary { x } if direct(x));
    rw.set_insertion_before(op).set_origin(op);
    let mut b = Builder { rw };
    let (final_kind, operands, final_attrs) = match form {
        Form::Layer { x, w, bias } => {
            let mut operands = vec![b.centered_input(&x)?, b.centered(w.value, &w.zero_points)?];
            match bias {
                Some(Bias::Existing(v)) => operands.push(v),
                Some(Bias::Constant(ints)) => {
                    let ints = vector(ints)?;
                    operands.push(b.rw.constant(&format!("{name}_bias_i32"), Tensor::I32(ints))?);
                }
                None => {}
            }
            let acc = b.op_like(kind, attrs, &operands, &format!("{name}_i32"), int_type.clone())?;
            if let [scale] = w.scales[..] {
                final_requantize(b.rw, vec![acc], Attr::Float(x.qp.scale * scale / out.scale), &out)?
            } else {
                let multipliers = w.scales.iter().map(|&s| x.qp.scale * s / out.scale).collect();
                let multipliers = b.rw.constant(&format!("{name}_multiplier"), Tensor::F64(vector(multipliers)?))?;
                // The channel axis of the accumulator: the last for linear, 1 for a batched conv.
                let axis = match kind {
                    ops::LINEAR => int_type.rank() - 1,
                    _ => usize::from(b.ty(x.value).rank() == b.ty(w.value).rank()),
                };
                final_requantize(b.rw, vec![acc, multipliers], Attr::Int(axis as i64), &out)?
            }
        }
        Form::Product { x, y } => {
            let operands = [b.centered_input(&x)?, b.centered_input(&y)?];
            let p = b.op_like(kind, attrs, &operands, &format!("{name}_i32"), int_type)?;
            final_requantize(b.rw, vec![p], Attr::Float(x.qp.scale * y.qp.scale / out.scale), &out)?
        }
        Form::Sum { x, y, fraction_bits } => {
            let unit = f64::from(1 << fraction_bits);
            let wide =
                QParams { scale: 1.0, zero_point: 0, qmin: i32::MIN.into(), qmax: i32::MAX.into(), dtype: DType::I32 };
            let mut operands = Vec::with_capacity(2);
            for a in [x, y] {
                let centered = b.centered_input(&a)?;
                let base = format!("{}_rescaled", b.name(a.value));
                operands.push(b.requantize(centered, unit * a.qp.scale / out.scale, &wide, &base)?);
            }
            let s = b.op_like(kind, attrs, &operands, &format!("{name}_i32"), int_type)?;
            final_requantize(b.rw, vec![s], Attr::Float(1.0 / unit), &out)?
        }
        Form::Unary { x } if unary_direct => (kind, vec![x.value], attrs),
        Form::Unary { x } => {
            let centered = b.centered_input(&x)?;
            let y = b.op_like(kind, attrs, &[centered], &format!("{name}_i32"), int_type)?;
            final_requantize(b.rw, vec![y], Attr::Float(x.qp.scale / out.scale), &out)?
        }
        Form::Mean { x, count } => {
            let centered = b.centered_input(&x)?;
            // `sum` has mean's attributes (dim, keepdim); integer sums are i64.
            let sum_type = int_type.with_dtype(DType::I64);
            let sum = b.op_like(ops::SUM, attrs, &[centered], &format!("{name}_sum"), sum_type)?;
            let scale = x.qp.scale / (out.scale * count as f64);
            final_requantize(b.rw, vec![sum], Attr::Float(scale), &out)?
        }
        Form::Cat { inputs } => {
            let mut operands = Vec::with_capacity(inputs.len());
            for x in inputs {
                if x.qp.passes_through(&out) {
                    operands.push(x.value);
                } else {
                    let centered = b.centered_input(&x)?;
                    let base = format!("{}_requantized", b.name(x.value));
                    operands.push(b.requantize(centered, x.qp.scale / out.scale, &out, &base)?);
                }
            }
            (kind, operands, attrs)
        }
    };
    b.rw.update(q).rewrite(final_kind, &operands, final_attrs);
    Ok(())
}

fn vector<T>(v: Vec<T>) -> Result<ArrayD<T>, Diagnostics> {
    let n = v.len();
    ArrayD::from_shape_vec(IxDyn(&[n]), v).map_err(|e| internal(&e.to_string()))
}
