//! Result type rules, following PyTorch ATen semantics. A rule that rejects an op says what it
//! blames — an operand, an attribute, or the op as a whole — in a [`TypeError`]; the verifier
//! labels that part of the source, and other callers use the message alone.

use std::fmt;

use super::{AttrAccess, OpDef};
use crate::ir::attr::Attr;
use crate::ir::types::{DType, Dim, TensorType};

/// What a type rule sees: operand types, the complete attribute set, the declared result types.
pub struct InferCx<'a> {
    pub def: &'static OpDef,
    pub operands: &'a [&'a TensorType],
    pub attrs: &'a [Option<Attr>],
    pub declared: &'a [TensorType],
}

/// The part of an op a type error is about.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Blame {
    /// Operand `i` as written (a variadic operand by its position).
    Operand(usize),
    /// An attribute of the op's schema, written or left at its default.
    Attr(&'static str),
    /// No single part: how the parts combine is wrong (the verifier shows the operand types).
    Op,
}

/// A type rule's rejection of an op: the message, and what it blames — first the part at
/// fault, then the parts that explain it (the other side of a mismatch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeError {
    pub message: String,
    /// Never empty.
    pub blame: Vec<Blame>,
}

impl TypeError {
    /// Also points at operand `i`, as context.
    pub fn and_operand(mut self, i: usize) -> Self {
        self.blame.push(Blame::Operand(i));
        self
    }

    /// Also points at the attribute `name`, as context.
    pub fn and_attr(mut self, name: &'static str) -> Self {
        self.blame.push(Blame::Attr(name));
        self
    }
}

impl fmt::Display for TypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

type R<T> = Result<T, TypeError>;

impl AttrAccess for InferCx<'_> {
    fn attr(&self, name: &str) -> Option<&Attr> {
        self.def.attr_index(name).and_then(|i| self.attrs.get(i)?.as_ref())
    }
}

impl InferCx<'_> {
    /// An error blaming operand `i`.
    pub fn err_operand(&self, i: usize, message: impl Into<String>) -> TypeError {
        debug_assert!(i < self.operands.len(), "`{}` blames operand {i}, which it does not have", self.def.name);
        TypeError { message: message.into(), blame: vec![Blame::Operand(i)] }
    }

    /// An error blaming the attribute `name`.
    pub fn err_attr(&self, name: &'static str, message: impl Into<String>) -> TypeError {
        debug_assert!(self.def.attr_index(name).is_some(), "`{}` has no attribute `{name}`", self.def.name);
        TypeError { message: message.into(), blame: vec![Blame::Attr(name)] }
    }

    /// An error about the op as a whole.
    pub fn err_op(&self, message: impl Into<String>) -> TypeError {
        TypeError { message: message.into(), blame: vec![Blame::Op] }
    }

    /// Reads the attribute `name` with one of [`AttrAccess`]'s getters, blaming the attribute
    /// when it is missing (the verifier checks presence first; other callers may not).
    fn get<T>(&self, name: &'static str, read: impl FnOnce(&Self, &str) -> Result<T, String>) -> R<T> {
        read(self, name).map_err(|message| self.err_attr(name, message))
    }

    /// The attribute `name`, one dimension index, normalised against `rank`.
    fn dim(&self, name: &'static str, rank: usize) -> R<usize> {
        self.dim_index(name, self.get(name, Self::int)?, rank)
    }

    /// [`norm_dim`] of a value of the attribute `name`, blaming the attribute.
    fn dim_index(&self, name: &'static str, dim: i64, rank: usize) -> R<usize> {
        norm_dim(dim, rank).map_err(|message| self.err_attr(name, message))
    }

    fn operand(&self, i: usize) -> &TensorType {
        self.operands[i]
    }
    fn opt_operand(&self, i: usize) -> Option<&TensorType> {
        self.operands.get(i).copied()
    }
    fn operand_name(&self, i: usize) -> &'static str {
        let ops = self.def.operands;
        ops.get(i).or(ops.last()).map_or("operand", |o| o.name)
    }
}

fn one(t: TensorType) -> R<Vec<TensorType>> {
    Ok(vec![t])
}

/// Normalises a possibly negative dimension index against `rank`.
pub fn norm_dim(dim: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let d = if dim < 0 { dim + r } else { dim };
    if (0..r.max(1)).contains(&d) && (rank > 0 || dim == 0 || dim == -1) {
        Ok(d as usize)
    } else {
        Err(format!("dimension {dim} is out of range for a tensor of rank {rank}"))
    }
}

fn require_float(cx: &InferCx<'_>, i: usize) -> R<()> {
    let t = cx.operand(i);
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(cx.err_operand(i, format!("`{}` must be a float tensor, found {}", cx.operand_name(i), t)))
    }
}

/// A float tensor, or i32 for the integer products of the reference representation (linear,
/// convolution, matmul), which accumulate in i32.
fn require_float_or_i32(cx: &InferCx<'_>, i: usize) -> R<()> {
    let t = cx.operand(i);
    if t.dtype.is_float() || t.dtype == DType::I32 {
        Ok(())
    } else {
        Err(cx.err_operand(i, format!("`{}` must be a float or i32 tensor, found {}", cx.operand_name(i), t)))
    }
}

/// A float or integer tensor (not bool).
fn require_numeric(cx: &InferCx<'_>, i: usize) -> R<()> {
    let t = cx.operand(i);
    if t.dtype.is_float() || t.dtype.is_int() {
        Ok(())
    } else {
        Err(cx.err_operand(i, format!("`{}` must be a float or integer tensor, found {}", cx.operand_name(i), t)))
    }
}

fn require_int(cx: &InferCx<'_>, i: usize) -> R<()> {
    let t = cx.operand(i);
    if t.dtype.is_int() {
        Ok(())
    } else {
        Err(cx.err_operand(i, format!("`{}` must be an integer tensor, found {}", cx.operand_name(i), t)))
    }
}

fn require_rank(cx: &InferCx<'_>, i: usize, ranks: &[usize]) -> R<()> {
    let t = cx.operand(i);
    if ranks.contains(&t.rank()) {
        Ok(())
    } else {
        let want = ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(" or ");
        Err(cx.err_operand(i, format!("`{}` must have rank {want}, found {}", cx.operand_name(i), t)))
    }
}

fn require_same_dtype(cx: &InferCx<'_>, a: usize, b: usize) -> R<()> {
    let (ta, tb) = (cx.operand(a), cx.operand(b));
    if ta.dtype == tb.dtype {
        Ok(())
    } else {
        let message = format!("`{}` is {} but `{}` is {}", cx.operand_name(a), ta.dtype, cx.operand_name(b), tb.dtype);
        Err(cx.err_operand(a, message).and_operand(b))
    }
}

/// Dims must agree where both are known.
fn unify<E>(a: Dim, b: Dim, what: impl FnOnce() -> E) -> Result<Dim, E> {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => Err(what()),
        (Dim::Known(x), _) | (_, Dim::Known(x)) => Ok(Dim::Known(x)),
        _ => Ok(Dim::Dynamic),
    }
}

/// NumPy/PyTorch broadcasting of two shapes.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let rank = a.len().max(b.len());
    let at = |s: &[Dim], i: usize| {
        if i + s.len() >= rank {
            s[i + s.len() - rank]
        } else {
            Dim::Known(1)
        }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (Dim::Known(1), d) | (d, Dim::Known(1)) => Ok(d),
            (x, y) => unify(x, y, || {
                format!("shapes {} and {} cannot be broadcast together (dimension {i})", show(a), show(b))
            }),
        })
        .collect()
}

fn show(shape: &[Dim]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
}

// ---- generic rules ---------------------------------------------------------------------------

/// Result type = declared type (`weight`: checked against the weights file instead).
pub fn declared(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    Ok(cx.declared.to_vec())
}

/// A dense literal: its own type.
pub fn constant(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let t = cx
        .attr("value")
        .and_then(Attr::as_tensor)
        .ok_or_else(|| cx.err_attr("value", "missing tensor attribute `value`"))?;
    one(TensorType::fixed(t.dtype(), &t.shape().iter().map(|&d| d as u64).collect::<Vec<_>>()))
}

/// Float elementwise: same type as the input.
pub fn unary_float(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    one(cx.operand(0).clone())
}

/// Any-dtype identity (contiguous, dropout, observers).
pub fn identity(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    one(cx.operand(0).clone())
}

pub fn convert_element_type(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    one(cx.operand(0).with_dtype(cx.get("dtype", InferCx::dtype)?))
}

/// Broadcasting binary op of one dtype.
pub fn binary(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_same_dtype(cx, 0, 1)?;
    if cx.operand(0).dtype == DType::Bool {
        return Err(cx.err_op("arithmetic on bool tensors is not supported"));
    }
    let shape = broadcast(&cx.operand(0).shape, &cx.operand(1).shape).map_err(|message| cx.err_op(message))?;
    one(TensorType::new(cx.operand(0).dtype, shape))
}

/// True division: integer operands give an f32 result, as in PyTorch.
pub fn div(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let mut result = binary(cx)?;
    if !result[0].dtype.is_float() {
        result[0].dtype = DType::F32;
    }
    Ok(result)
}

/// Tensor ⊕ scalar attribute. The scalar is a float, so integer tensors give an f32 result
/// (PyTorch's promotion of an integer tensor with a Python float).
pub fn scalar_binary(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    if x.dtype == DType::Bool {
        return Err(cx.err_op("arithmetic on bool tensors is not supported"));
    }
    one(if x.dtype.is_float() { x.clone() } else { x.with_dtype(DType::F32) })
}

pub fn softmax(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    cx.dim("dim", cx.operand(0).rank())?;
    one(cx.operand(0).clone())
}

pub fn hardtanh(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let (lo, hi) = (cx.get("min_val", InferCx::float)?, cx.get("max_val", InferCx::float)?);
    if lo.is_nan() || hi.is_nan() {
        let nan = if lo.is_nan() { "min_val" } else { "max_val" };
        return Err(cx.err_attr(nan, "`min_val` and `max_val` must be numbers, not nan"));
    }
    if lo > hi {
        return Err(cx
            .err_attr("min_val", format!("`min_val` ({lo:?}) is greater than `max_val` ({hi:?})"))
            .and_attr("max_val"));
    }
    unary_float(cx)
}

// ---- linear algebra ----------------------------------------------------------------------------

pub fn linear(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float_or_i32(cx, 0)?;
    require_same_dtype(cx, 0, 1)?;
    let (x, w) = (cx.operand(0), cx.operand(1));
    require_rank(cx, 1, &[1, 2])?;
    if x.rank() == 0 {
        return Err(cx.err_operand(0, format!("`input` must have rank at least 1, found {x}")));
    }
    let in_features = *w.shape.last().unwrap_or(&Dim::Dynamic);
    unify(*x.shape.last().unwrap_or(&Dim::Dynamic), in_features, || {
        let message =
            format!("`input` has {} features but `weight` {} expects {}", x.shape[x.rank() - 1], w, in_features);
        cx.err_operand(0, message).and_operand(1)
    })?;
    let mut shape = x.shape[..x.rank() - 1].to_vec();
    if w.rank() == 2 {
        shape.push(w.shape[0]);
    }
    if let Some(b) = cx.opt_operand(2) {
        require_same_dtype(cx, 0, 2)?;
        let out = if w.rank() == 2 { w.shape[0] } else { Dim::Known(1) };
        if b.rank() > 1 || (b.rank() == 1 && !b.shape[0].compatible(out) && b.shape[0] != Dim::Known(1)) {
            return Err(cx.err_operand(2, format!("`bias` {b} does not match the {out} output features")));
        }
    }
    one(TensorType::new(x.dtype, shape))
}

pub fn matmul(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float_or_i32(cx, 0)?;
    require_same_dtype(cx, 0, 1)?;
    let (a, b) = (cx.operand(0), cx.operand(1));
    if a.rank() == 0 || b.rank() == 0 {
        let message = "both operands of matmul must have rank at least 1";
        return Err(cx.err_operand(if a.rank() == 0 { 0 } else { 1 }, message));
    }
    let mismatch = || cx.err_op(format!("cannot multiply {a} by {b}: inner dimensions differ"));
    let a_k = a.shape[a.rank() - 1];
    let b_k = if b.rank() == 1 { b.shape[0] } else { b.shape[b.rank() - 2] };
    unify(a_k, b_k, mismatch)?;
    let a_batch = if a.rank() > 2 { &a.shape[..a.rank() - 2] } else { &[][..] };
    let b_batch = if b.rank() > 2 { &b.shape[..b.rank() - 2] } else { &[][..] };
    let mut shape = broadcast(a_batch, b_batch).map_err(|message| cx.err_op(message))?;
    if a.rank() >= 2 {
        shape.push(a.shape[a.rank() - 2]);
    }
    if b.rank() >= 2 {
        shape.push(b.shape[b.rank() - 1]);
    }
    one(TensorType::new(a.dtype, shape))
}

pub fn bmm(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_rank(cx, 0, &[3])?;
    require_rank(cx, 1, &[3])?;
    let (a, b) = (cx.operand(0), cx.operand(1));
    unify(a.shape[0], b.shape[0], || cx.err_op(format!("batch sizes of {a} and {b} differ")))?;
    matmul(cx)
}

pub fn addmm(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_rank(cx, 1, &[2])?;
    require_rank(cx, 2, &[2])?;
    require_same_dtype(cx, 0, 1)?;
    require_same_dtype(cx, 1, 2)?;
    let (bias, a, b) = (cx.operand(0), cx.operand(1), cx.operand(2));
    unify(a.shape[1], b.shape[0], || cx.err_op(format!("cannot multiply {a} by {b}: inner dimensions differ")))?;
    let out = [a.shape[0], b.shape[1]];
    let shape = broadcast(&bias.shape, &out).map_err(|message| cx.err_operand(0, message))?;
    if shape.len() != 2 || !shape[0].compatible(out[0]) || !shape[1].compatible(out[1]) {
        return Err(
            cx.err_operand(0, format!("`input` {bias} does not broadcast to the product's shape {}", show(&out)))
        );
    }
    one(TensorType::new(a.dtype, out.to_vec()))
}

// ---- convolution and pooling -----------------------------------------------------------------

fn spatial_list(cx: &InferCx<'_>, name: &'static str, n: usize) -> R<Vec<i64>> {
    let v = cx.get(name, InferCx::ints)?;
    if v.len() != n {
        return Err(cx.err_attr(name, format!("`{name}` must have {n} elements, found {}", v.len())));
    }
    Ok(v)
}

fn positive(cx: &InferCx<'_>, name: &'static str, v: &[i64]) -> R<()> {
    match v.iter().find(|&&x| x <= 0) {
        Some(x) => Err(cx.err_attr(name, format!("`{name}` must be positive, found {x}"))),
        None => Ok(()),
    }
}

fn non_negative(cx: &InferCx<'_>, name: &'static str, v: &[i64]) -> R<()> {
    match v.iter().find(|&&x| x < 0) {
        Some(x) => Err(cx.err_attr(name, format!("`{name}` must be non-negative, found {x}"))),
        None => Ok(()),
    }
}

/// Converts validated non-negative attribute values to sizes.
fn sizes(v: &[i64]) -> Vec<usize> {
    v.iter().map(|&x| usize::try_from(x).unwrap_or(usize::MAX)).collect()
}

const OVERFLOW: &str = "the sizes overflow";

/// Output length of a convolution window sweep, `floor((in + 2p - d(k-1) - 1) / s) + 1`, or an
/// error when the window does not fit. The interpreter uses the same function.
pub fn conv_output_size(input: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Result<usize, String> {
    let span = k.checked_sub(1).and_then(|k1| dil.checked_mul(k1)).and_then(|s| s.checked_add(1)).ok_or(OVERFLOW)?;
    let padded = pad.checked_mul(2).and_then(|p| p.checked_add(input)).ok_or(OVERFLOW)?;
    if padded < span {
        return Err(format!("the input size {input} with padding {pad} is smaller than the kernel extent {span}"));
    }
    Ok((padded - span) / stride.max(1) + 1)
}

/// Output length of a pooling window sweep with PyTorch's ceil_mode rule (the last window must
/// start inside the input or its left padding). The interpreter uses the same function.
pub fn pool_output_size(input: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> Result<usize, String> {
    pool_padding_fits(k, p)?;
    let span = k.checked_sub(1).and_then(|k1| d.checked_mul(k1)).and_then(|v| v.checked_add(1)).ok_or(OVERFLOW)?;
    let padded = input.checked_add(2 * p).ok_or(OVERFLOW)?;
    let Some(num) = padded.checked_sub(span) else {
        return Err(format!("the input size {input} is smaller than the pooling window {span}"));
    };
    let s = s.max(1);
    let mut out = if ceil { num.div_ceil(s) + 1 } else { num / s + 1 };
    if ceil && (out - 1) * s >= input + p {
        out -= 1;
    }
    Ok(out)
}

/// A pooling window's padding is at most half its size (PyTorch's rule).
pub fn pool_padding_fits(k: usize, p: usize) -> Result<(), String> {
    if p.checked_mul(2).is_none_or(|p2| p2 > k) {
        return Err(format!("padding {p} must be at most half the kernel size {k}"));
    }
    Ok(())
}

fn known_size(d: Dim) -> Option<usize> {
    d.known().and_then(|n| usize::try_from(n).ok())
}

fn dim_of(n: usize) -> Dim {
    Dim::Known(n as u64)
}

pub fn conv1d(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    conv(cx, 1)
}

pub fn conv2d(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    conv(cx, 2)
}

/// `n`-d convolution: `input [N,C,*] or [C,*]`, `weight [O, C/groups, *k]`, `bias [O]`.
fn conv(cx: &InferCx<'_>, n: usize) -> R<Vec<TensorType>> {
    require_rank(cx, 1, &[n + 2])?;
    let w = cx.operand(1);
    require_float_or_i32(cx, 0)?;
    require_same_dtype(cx, 0, 1)?;
    require_rank(cx, 0, &[n + 1, n + 2])?;
    let x = cx.operand(0);
    let (stride, padding, dilation) =
        (spatial_list(cx, "stride", n)?, spatial_list(cx, "padding", n)?, spatial_list(cx, "dilation", n)?);
    positive(cx, "stride", &stride)?;
    non_negative(cx, "padding", &padding)?;
    positive(cx, "dilation", &dilation)?;
    let groups = cx.get("groups", InferCx::int)?;
    if groups <= 0 {
        return Err(cx.err_attr("groups", format!("`groups` must be positive, found {groups}")));
    }
    let batched = x.rank() == n + 2;
    let c_in = x.shape[batched as usize];
    let out_ch = w.shape[0];
    if let Dim::Known(o) = out_ch {
        if o % groups as u64 != 0 {
            let message = format!("{o} output channels are not divisible by groups = {groups}");
            return Err(cx.err_attr("groups", message).and_operand(1));
        }
    }
    if let (Dim::Known(c), Dim::Known(wc)) = (c_in, w.shape[1]) {
        if c != wc * groups as u64 {
            let message = format!(
                "`input` has {c} channels but `weight` {w} with groups = {groups} expects {}",
                wc * groups as u64
            );
            return Err(cx.err_operand(0, message).and_operand(1).and_attr("groups"));
        }
    }
    if let Some(b) = cx.opt_operand(2) {
        if b.rank() != 1 || !b.shape[0].compatible(out_ch) {
            return Err(cx.err_operand(2, format!("`bias` {b} does not match the {out_ch} output channels")));
        }
        if x.dtype == DType::I32 {
            require_same_dtype(cx, 0, 2)?;
        }
    }
    let mut shape = Vec::with_capacity(x.rank());
    if batched {
        shape.push(x.shape[0]);
    }
    shape.push(out_ch);
    let (stride, padding, dilation) = (sizes(&stride), sizes(&padding), sizes(&dilation));
    for i in 0..n {
        shape.push(match (known_size(x.shape[x.rank() - n + i]), known_size(w.shape[2 + i])) {
            (Some(input), Some(k)) => {
                dim_of(conv_output_size(input, k, stride[i], padding[i], dilation[i]).map_err(|message| {
                    // The window is the kernel, spread by the dilation when there is one.
                    let error = cx.err_operand(0, message).and_operand(1).and_attr("padding");
                    if dilation[i] == 1 {
                        error
                    } else {
                        error.and_attr("dilation")
                    }
                })?)
            }
            _ => Dim::Dynamic,
        });
    }
    one(TensorType::new(x.dtype, shape))
}

/// conv_transpose2d: `weight [C_in, O/groups, kH, kW]`.
pub fn conv_transpose(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    require_same_dtype(cx, 0, 1)?;
    require_rank(cx, 1, &[4])?;
    require_rank(cx, 0, &[3, 4])?;
    let (x, w) = (cx.operand(0), cx.operand(1));
    let stride = spatial_list(cx, "stride", 2)?;
    let padding = spatial_list(cx, "padding", 2)?;
    let output_padding = spatial_list(cx, "output_padding", 2)?;
    let dilation = spatial_list(cx, "dilation", 2)?;
    positive(cx, "stride", &stride)?;
    non_negative(cx, "padding", &padding)?;
    positive(cx, "dilation", &dilation)?;
    non_negative(cx, "output_padding", &output_padding)?;
    for i in 0..2 {
        if output_padding[i] >= stride[i].max(dilation[i]) {
            let message = "`output_padding` must be smaller than either `stride` or `dilation`";
            return Err(cx.err_attr("output_padding", message).and_attr("stride").and_attr("dilation"));
        }
    }
    let groups = cx.get("groups", InferCx::int)?;
    if groups <= 0 {
        return Err(cx.err_attr("groups", format!("`groups` must be positive, found {groups}")));
    }
    let batched = x.rank() == 4;
    let c_in = x.shape[batched as usize];
    unify(c_in, w.shape[0], || {
        cx.err_operand(0, format!("`input` has {c_in} channels but `weight` {w} expects {}", w.shape[0])).and_operand(1)
    })?;
    if let Dim::Known(c) = w.shape[0] {
        if c % groups as u64 != 0 {
            let message = format!("{c} input channels are not divisible by groups = {groups}");
            return Err(cx.err_attr("groups", message).and_operand(1));
        }
    }
    let out_ch = match w.shape[1] {
        Dim::Known(c) => Dim::Known(c * groups as u64),
        Dim::Dynamic => Dim::Dynamic,
    };
    if let Some(b) = cx.opt_operand(2) {
        if b.rank() != 1 || !b.shape[0].compatible(out_ch) {
            return Err(cx.err_operand(2, format!("`bias` {b} does not match the {out_ch} output channels")));
        }
    }
    let mut shape = Vec::with_capacity(4);
    if batched {
        shape.push(x.shape[0]);
    }
    shape.push(out_ch);
    for i in 0..2 {
        let (input, k) = (x.shape[x.rank() - 2 + i], w.shape[2 + i]);
        shape.push(match (input, k) {
            (Dim::Known(n), Dim::Known(k)) => {
                let out =
                    (n as i64 - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k as i64 - 1) + output_padding[i] + 1;
                if out <= 0 {
                    return Err(cx.err_op(format!("the output size along spatial dim {i} would be {out}")));
                }
                Dim::Known(out as u64)
            }
            _ => Dim::Dynamic,
        });
    }
    one(TensorType::new(x.dtype, shape))
}

fn pool2d(cx: &InferCx<'_>, dilation: &[i64]) -> R<Vec<TensorType>> {
    require_numeric(cx, 0)?;
    require_rank(cx, 0, &[3, 4])?;
    let x = cx.operand(0);
    let kernel = spatial_list(cx, "kernel_size", 2)?;
    positive(cx, "kernel_size", &kernel)?;
    let stride = match cx.get("stride", InferCx::ints)? {
        s if s.is_empty() => kernel.clone(),
        _ => spatial_list(cx, "stride", 2)?,
    };
    positive(cx, "stride", &stride)?;
    let padding = spatial_list(cx, "padding", 2)?;
    non_negative(cx, "padding", &padding)?;
    let ceil = cx.get("ceil_mode", InferCx::boolean)?;
    let mut shape = x.shape.clone();
    let r = x.rank();
    let (kernel, stride, padding, dilation) = (sizes(&kernel), sizes(&stride), sizes(&padding), sizes(dilation));
    for i in 0..2 {
        if let Some(input) = known_size(x.shape[r - 2 + i]) {
            pool_padding_fits(kernel[i], padding[i])
                .map_err(|message| cx.err_attr("padding", message).and_attr("kernel_size"))?;
            let out = pool_output_size(input, kernel[i], stride[i], padding[i], dilation[i], ceil)
                .map_err(|message| cx.err_operand(0, message).and_attr("kernel_size"))?;
            shape[r - 2 + i] = dim_of(out);
        }
    }
    one(TensorType::new(x.dtype, shape))
}

pub fn max_pool2d(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let dilation = spatial_list(cx, "dilation", 2)?;
    positive(cx, "dilation", &dilation)?;
    pool2d(cx, &dilation)
}

pub fn avg_pool2d(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    if let Some(d) = cx.opt_int("divisor_override") {
        if d == 0 {
            return Err(cx.err_attr("divisor_override", "`divisor_override` must not be zero"));
        }
    }
    pool2d(cx, &[1, 1])
}

pub fn adaptive_avg_pool2d(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_numeric(cx, 0)?;
    require_rank(cx, 0, &[3, 4])?;
    let x = cx.operand(0);
    let size = spatial_list(cx, "output_size", 2)?;
    positive(cx, "output_size", &size)?;
    let mut shape = x.shape.clone();
    let r = x.rank();
    shape[r - 2] = Dim::Known(size[0] as u64);
    shape[r - 1] = Dim::Known(size[1] as u64);
    one(TensorType::new(x.dtype, shape))
}

// ---- normalisation ---------------------------------------------------------------------------

fn channel_vector(cx: &InferCx<'_>, i: usize, channels: Dim) -> R<()> {
    let t = cx.operand(i);
    if t.rank() == 1 && t.shape[0].compatible(channels) {
        Ok(())
    } else {
        Err(cx.err_operand(i, format!("`{}` must be a vector of {channels} channels, found {t}", cx.operand_name(i))))
    }
}

pub fn batch_norm(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    let x = cx.operand(0);
    if x.rank() < 2 {
        return Err(cx.err_operand(0, format!("`input` must have rank at least 2, found {x}")));
    }
    for i in 1..5 {
        channel_vector(cx, i, x.shape[1])?;
    }
    one(x.clone())
}

pub fn layer_norm(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    let x = cx.operand(0);
    let normalized = cx.get("normalized_shape", InferCx::ints)?;
    let misfit = |message: String| cx.err_attr("normalized_shape", message).and_operand(0);
    if normalized.is_empty() || normalized.len() > x.rank() {
        return Err(misfit(format!("`normalized_shape` {normalized:?} does not fit {x}")));
    }
    let tail = &x.shape[x.rank() - normalized.len()..];
    for (d, &n) in tail.iter().zip(&normalized) {
        if n < 0 || !d.compatible(Dim::Known(n as u64)) {
            return Err(misfit(format!("`normalized_shape` {normalized:?} does not match the trailing dims of {x}")));
        }
    }
    let expected = TensorType::new(x.dtype, normalized.iter().map(|&n| Dim::Known(n as u64)).collect());
    for i in 1..cx.operands.len() {
        if !cx.operand(i).compatible(&expected) {
            return Err(
                cx.err_operand(i, format!("`{}` must be {expected}, found {}", cx.operand_name(i), cx.operand(i)))
            );
        }
    }
    one(x.clone())
}

pub fn group_norm(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    let x = cx.operand(0);
    if x.rank() < 2 {
        return Err(cx.err_operand(0, format!("`input` must have rank at least 2, found {x}")));
    }
    let groups = cx.get("num_groups", InferCx::int)?;
    if groups <= 0 {
        return Err(cx.err_attr("num_groups", format!("`num_groups` must be positive, found {groups}")));
    }
    if let Dim::Known(c) = x.shape[1] {
        if c % groups as u64 != 0 {
            let message = format!("{c} channels are not divisible by num_groups = {groups}");
            return Err(cx.err_attr("num_groups", message).and_operand(0));
        }
    }
    for i in 1..cx.operands.len() {
        channel_vector(cx, i, x.shape[1])?;
    }
    one(x.clone())
}

// ---- reductions ------------------------------------------------------------------------------

/// `mean`: float tensors only (PyTorch rejects integer means).
pub fn mean(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    reduce(cx)
}

/// `sum`: integer and bool sums are i64, as in PyTorch.
pub fn sum(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let mut result = reduce(cx)?;
    if !result[0].dtype.is_float() {
        result[0].dtype = DType::I64;
    }
    Ok(result)
}

fn reduce(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    let dims = cx.get("dim", InferCx::ints)?;
    let keepdim = cx.get("keepdim", InferCx::boolean)?;
    let mut reduced = vec![false; x.rank()];
    if dims.is_empty() {
        reduced.fill(true);
    }
    for &d in &dims {
        let d = cx.dim_index("dim", d, x.rank())?;
        if x.rank() > 0 {
            if reduced[d] {
                return Err(cx.err_attr("dim", format!("dimension {d} appears twice in `dim`")));
            }
            reduced[d] = true;
        }
    }
    let shape = x
        .shape
        .iter()
        .zip(&reduced)
        .filter_map(|(&d, &r)| match (r, keepdim) {
            (false, _) => Some(d),
            (true, true) => Some(Dim::Known(1)),
            (true, false) => None,
        })
        .collect();
    one(TensorType::new(x.dtype, shape))
}

// ---- shape manipulation ----------------------------------------------------------------------

pub fn reshape(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    let target = cx.get("shape", InferCx::ints)?;
    if target.iter().filter(|&&d| d == -1).count() > 1 {
        return Err(cx.err_attr("shape", "at most one dimension of `shape` may be -1"));
    }
    if let Some(bad) = target.iter().find(|&&d| d < -1) {
        return Err(cx.err_attr("shape", format!("invalid dimension {bad} in `shape`")));
    }
    let known = target
        .iter()
        .filter(|&&d| d >= 0)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| cx.err_attr("shape", OVERFLOW))?;
    // The target does not fit the input's elements.
    let misfit = |message: String| cx.err_attr("shape", message).and_operand(0);
    let total = x.num_elements();
    let shape = target
        .iter()
        .map(|&d| {
            if d >= 0 {
                return Ok(Dim::Known(d as u64));
            }
            match total {
                Some(t) if known != 0 && t % known == 0 => Ok(Dim::Known(t / known)),
                Some(t) => Err(misfit(format!("cannot infer the -1 dimension: {t} elements do not divide by {known}"))),
                None => Ok(Dim::Dynamic),
            }
        })
        .collect::<R<Vec<_>>>()?;
    if let (Some(t), false) = (total, target.contains(&-1)) {
        if t != known {
            return Err(misfit(format!("cannot reshape {x} ({t} elements) into {target:?} ({known} elements)")));
        }
    }
    one(TensorType::new(x.dtype, shape))
}

pub fn flatten(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    if x.rank() == 0 {
        return one(TensorType::new(x.dtype, vec![Dim::Known(1)]));
    }
    let start = cx.dim("start_dim", x.rank())?;
    let end = cx.dim("end_dim", x.rank())?;
    if start > end {
        return Err(cx
            .err_attr("start_dim", format!("`start_dim` ({start}) comes after `end_dim` ({end})"))
            .and_attr("end_dim"));
    }
    let mut merged = Dim::Known(1);
    for d in &x.shape[start..=end] {
        merged = match (merged, d) {
            (Dim::Known(acc), Dim::Known(n)) => {
                Dim::Known(acc.checked_mul(*n).ok_or_else(|| cx.err_operand(0, OVERFLOW))?)
            }
            _ => Dim::Dynamic,
        };
    }
    let mut shape = x.shape[..start].to_vec();
    shape.push(merged);
    shape.extend_from_slice(&x.shape[end + 1..]);
    one(TensorType::new(x.dtype, shape))
}

pub fn permute(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    let dims = cx.get("dims", InferCx::ints)?;
    if dims.len() != x.rank() {
        let message = format!("`dims` has {} entries but the input has rank {}", dims.len(), x.rank());
        return Err(cx.err_attr("dims", message).and_operand(0));
    }
    let mut seen = vec![false; x.rank()];
    let mut shape = Vec::with_capacity(x.rank());
    for &d in &dims {
        let d = cx.dim_index("dims", d, x.rank())?;
        if std::mem::replace(&mut seen[d], true) {
            return Err(cx.err_attr("dims", format!("dimension {d} appears twice in `dims`")));
        }
        shape.push(x.shape[d]);
    }
    one(TensorType::new(x.dtype, shape))
}

pub fn transpose(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    let mut shape = x.shape.clone();
    if x.rank() > 0 {
        let a = cx.dim("dim0", x.rank())?;
        let b = cx.dim("dim1", x.rank())?;
        shape.swap(a, b);
    }
    one(TensorType::new(x.dtype, shape))
}

pub fn cat(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let Some(first) = cx.operands.first() else {
        return Err(cx.err_op("cat needs at least one input"));
    };
    let dim = cx.dim("dim", first.rank())?;
    let mut shape = first.shape.clone();
    for (i, t) in cx.operands.iter().enumerate().skip(1) {
        if t.dtype != first.dtype {
            return Err(cx
                .err_operand(i, format!("input {i} is {} but input 0 is {}", t.dtype, first.dtype))
                .and_operand(0));
        }
        if t.rank() != first.rank() {
            let message = format!("input {i} has rank {} but input 0 has rank {}", t.rank(), first.rank());
            return Err(cx.err_operand(i, message).and_operand(0));
        }
        for (d, (acc, &other)) in shape.iter_mut().zip(&t.shape).enumerate() {
            *acc = if d == dim {
                match (*acc, other) {
                    (Dim::Known(a), Dim::Known(b)) => Dim::Known(a.checked_add(b).ok_or_else(|| cx.err_op(OVERFLOW))?),
                    _ => Dim::Dynamic,
                }
            } else {
                unify(*acc, other, || {
                    cx.err_operand(i, format!("input {i} differs from input 0 in dimension {d}")).and_operand(0)
                })?
            };
        }
    }
    one(TensorType::new(first.dtype, shape))
}

pub fn slice(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    if x.rank() == 0 {
        return Err(cx.err_operand(0, "cannot slice a scalar"));
    }
    let dim = cx.dim("dim", x.rank())?;
    let step = cx.get("step", InferCx::int)?;
    if step <= 0 {
        return Err(cx.err_attr("step", format!("`step` must be positive, found {step}")));
    }
    let mut shape = x.shape.clone();
    if let Dim::Known(n) = x.shape[dim] {
        let n = n as i64;
        // PyTorch clamps out-of-range bounds rather than failing.
        let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
        let start = cx.opt_int("start").map_or(0, clamp);
        let end = cx.opt_int("end").map_or(n, clamp);
        let len = if end > start { (end - start - 1) / step + 1 } else { 0 };
        shape[dim] = Dim::Known(len as u64);
    }
    one(TensorType::new(x.dtype, shape))
}

pub fn squeeze(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    let dims = match cx.opt_ints("dims") {
        Some(d) => d.iter().map(|&d| cx.dim_index("dims", d, x.rank())).collect::<R<Vec<_>>>()?,
        None => (0..x.rank()).collect(),
    };
    let shape = x
        .shape
        .iter()
        .enumerate()
        .filter(|(i, d)| !(dims.contains(i) && **d == Dim::Known(1)))
        .map(|(_, &d)| d)
        .collect();
    one(TensorType::new(x.dtype, shape))
}

pub fn unsqueeze(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    let dim = cx.dim("dim", x.rank() + 1)?;
    let mut shape = x.shape.clone();
    shape.insert(dim, Dim::Known(1));
    one(TensorType::new(x.dtype, shape))
}

pub fn expand(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let x = cx.operand(0);
    let size = cx.get("size", InferCx::ints)?;
    if size.len() < x.rank() {
        let message = format!("`size` has {} entries but the input has rank {}", size.len(), x.rank());
        return Err(cx.err_attr("size", message).and_operand(0));
    }
    let lead = size.len() - x.rank();
    let shape = size
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let src = if i >= lead { Some(x.shape[i - lead]) } else { None };
            match (s, src) {
                (-1, Some(d)) => Ok(d),
                (-1, None) => Err(cx.err_attr("size", format!("-1 is not allowed for the new leading dimension {i}"))),
                (s, _) if s < 0 => Err(cx.err_attr("size", format!("invalid size {s} in `size`"))),
                (s, Some(Dim::Known(d))) if d != 1 && d != s as u64 => {
                    Err(cx.err_attr("size", format!("cannot expand dimension {i} of size {d} to {s}")).and_operand(0))
                }
                (s, _) => Ok(Dim::Known(s as u64)),
            }
        })
        .collect::<R<Vec<_>>>()?;
    one(TensorType::new(x.dtype, shape))
}

pub fn embedding(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_rank(cx, 0, &[2])?;
    let (w, idx) = (cx.operand(0), cx.operand(1));
    if !matches!(idx.dtype, DType::I32 | DType::I64) {
        return Err(cx.err_operand(1, format!("`indices` must be i32 or i64, found {idx}")));
    }
    let mut shape = idx.shape.clone();
    shape.push(w.shape[1]);
    one(TensorType::new(w.dtype, shape))
}

// ---- quantization ------------------------------------------------------------------------------

/// qmin/qmax fit the quantized dtype and are ordered.
fn quant_range(cx: &InferCx<'_>) -> R<DType> {
    let dtype = cx.get("dtype", InferCx::dtype)?;
    let Some((lo, hi)) = dtype.int_range() else {
        return Err(cx.err_attr("dtype", format!("`dtype` must be an integer type, found {dtype}")));
    };
    let (qmin, qmax) = ordered_range(cx)?;
    if qmin < lo || qmax > hi {
        let message = format!("the range [{qmin}, {qmax}] does not fit in {dtype} [{lo}, {hi}]");
        let outside = if qmin < lo { "qmin" } else { "qmax" };
        return Err(cx.err_attr(outside, message).and_attr("dtype"));
    }
    Ok(dtype)
}

/// `qmin` and `qmax`, checked to be in order.
fn ordered_range(cx: &InferCx<'_>) -> R<(i64, i64)> {
    let (qmin, qmax) = (cx.get("qmin", InferCx::int)?, cx.get("qmax", InferCx::int)?);
    if qmin > qmax {
        return Err(cx.err_attr("qmin", format!("`qmin` ({qmin}) is greater than `qmax` ({qmax})")).and_attr("qmax"));
    }
    Ok((qmin, qmax))
}

fn positive_scale(cx: &InferCx<'_>) -> R<()> {
    let scale = cx.get("scale", InferCx::float)?;
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(cx.err_attr("scale", format!("`scale` must be positive and finite, found {scale:?}")))
    }
}

pub fn quantize_per_tensor(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    positive_scale(cx)?;
    let dtype = quant_range(cx)?;
    one(cx.operand(0).with_dtype(dtype))
}

fn dequantize_result(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    let dtype = quant_range(cx)?;
    let x = cx.operand(0);
    if x.dtype != dtype {
        return Err(cx.err_operand(0, format!("the input is {} but `dtype` says {dtype}", x.dtype)).and_attr("dtype"));
    }
    let out = cx.get("out_dtype", InferCx::dtype)?;
    if !out.is_float() {
        return Err(cx.err_attr("out_dtype", format!("`out_dtype` must be a float type, found {out}")));
    }
    one(x.with_dtype(out))
}

pub fn dequantize_per_tensor(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    positive_scale(cx)?;
    dequantize_result(cx)
}

/// The `.tensor` overloads: scale f32/f64 and zero point int, one element each.
fn tensor_qparams(cx: &InferCx<'_>) -> R<()> {
    let (s, z) = (cx.operand(1), cx.operand(2));
    let single = |t: &TensorType| t.num_elements().is_none_or(|n| n == 1);
    if !(matches!(s.dtype, DType::F32 | DType::F64) && single(s)) {
        return Err(cx.err_operand(1, format!("`scale` must be a one-element f32 or f64 tensor, found {s}")));
    }
    if !(z.dtype.is_int() && single(z)) {
        return Err(cx.err_operand(2, format!("`zero_point` must be a one-element integer tensor, found {z}")));
    }
    Ok(())
}

pub fn quantize_per_tensor_dyn(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    tensor_qparams(cx)?;
    let dtype = quant_range(cx)?;
    one(cx.operand(0).with_dtype(dtype))
}

pub fn dequantize_per_tensor_dyn(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    tensor_qparams(cx)?;
    dequantize_result(cx)
}

/// Per-channel scales `[C]` (float) along `axis`; returns the axis and its channel count.
fn channel_scales(cx: &InferCx<'_>) -> R<(usize, Dim)> {
    let x = cx.operand(0);
    if x.rank() == 0 {
        let message = "per-channel quantization needs a tensor with a channel axis, not a scalar";
        return Err(cx.err_operand(0, message).and_attr("axis"));
    }
    let axis = cx.dim("axis", x.rank())?;
    let channels = x.shape.get(axis).copied().unwrap_or(Dim::Known(1));
    let s = cx.operand(1);
    if !(s.dtype.is_float() && s.rank() == 1 && s.shape[0].compatible(channels)) {
        let message =
            format!("`scales` must be a float vector of the {channels} channels along axis {axis}, found {s}");
        return Err(cx.err_operand(1, message).and_attr("axis"));
    }
    Ok((axis, channels))
}

/// Per-channel scales `[C]` (float) and zero points `[C]` (int, or float for float qparams).
fn channel_qparams(cx: &InferCx<'_>) -> R<()> {
    let (axis, channels) = channel_scales(cx)?;
    let z = cx.operand(2);
    if !(z.rank() == 1 && z.shape[0].compatible(channels) && z.dtype != DType::Bool) {
        let message = format!("`zero_points` must be a vector of the {channels} channels along axis {axis}, found {z}");
        return Err(cx.err_operand(2, message).and_attr("axis"));
    }
    Ok(())
}

pub fn quantize_per_channel(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    channel_qparams(cx)?;
    let dtype = quant_range(cx)?;
    one(cx.operand(0).with_dtype(dtype))
}

pub fn dequantize_per_channel(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    channel_qparams(cx)?;
    dequantize_result(cx)
}

pub fn requantize(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_int(cx, 0)?;
    positive_scale(cx)?;
    let dtype = quant_range(cx)?;
    one(cx.operand(0).with_dtype(dtype))
}

pub fn requantize_per_channel(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_int(cx, 0)?;
    channel_scales(cx)?;
    let dtype = quant_range(cx)?;
    one(cx.operand(0).with_dtype(dtype))
}

pub fn choose_qparams(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    quant_range(cx)?;
    let eps = cx.get("eps", InferCx::float)?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(cx.err_attr("eps", format!("`eps` must be positive and finite, found {eps:?}")));
    }
    Ok(vec![TensorType::fixed(DType::F64, &[1]), TensorType::fixed(DType::I64, &[1])])
}

pub fn fake_quantize_per_tensor(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    positive_scale(cx)?;
    ordered_range(cx)?;
    one(cx.operand(0).clone())
}

pub fn fake_quantize_per_channel(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    channel_qparams(cx)?;
    ordered_range(cx)?;
    one(cx.operand(0).clone())
}

pub fn observer(cx: &InferCx<'_>) -> R<Vec<TensorType>> {
    require_float(cx, 0)?;
    // A float `dtype` is a spec that quantizes nothing (f32) or casts (f16, bf16): PT2E's
    // float `PlaceholderObserver`s.
    if !matches!(cx.get("dtype", InferCx::dtype)?, DType::F32 | DType::F16 | DType::BF16) {
        quant_range(cx)?;
    }
    let x = cx.operand(0);
    if let Some(axis) = cx.opt_int("ch_axis") {
        cx.dim_index("ch_axis", axis, x.rank())?;
    }
    one(x.clone())
}
