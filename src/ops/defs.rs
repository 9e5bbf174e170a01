//! The table of ops. Semantics follow PyTorch ATen; `spec/ops.md` documents each entry.

use super::infer as rule;
use super::{Arity, AttrDef, AttrKind, DefaultValue as D, OpDef, OperandDef, Presence};
use crate::interp::kernels as k;
use crate::ir::types::DType;

const fn one(name: &'static str) -> OperandDef {
    OperandDef { name, arity: Arity::One }
}
const fn opt(name: &'static str) -> OperandDef {
    OperandDef { name, arity: Arity::Optional }
}
const fn many(name: &'static str) -> OperandDef {
    OperandDef { name, arity: Arity::Variadic }
}
const fn req(name: &'static str, kind: AttrKind) -> AttrDef {
    AttrDef { name, kind, presence: Presence::Required }
}
const fn maybe(name: &'static str, kind: AttrKind) -> AttrDef {
    AttrDef { name, kind, presence: Presence::Optional }
}
const fn dflt(name: &'static str, kind: AttrKind, value: D) -> AttrDef {
    AttrDef { name, kind, presence: Presence::Default(value) }
}

use AttrKind::{Bool, Dict, Float, Int, Ints, Str, Tensor};

const X: &[OperandDef] = &[one("input")];
const XY: &[OperandDef] = &[one("input"), one("other")];
const XWB: &[OperandDef] = &[one("input"), one("weight"), opt("bias")];
const NORM: &[OperandDef] = &[one("input"), opt("weight"), opt("bias")];
const QPARAMS: &[OperandDef] = &[one("input"), one("scale"), one("zero_point")];
const CHANNEL_QPARAMS: &[OperandDef] = &[one("input"), one("scales"), one("zero_points")];
const NONE: &[AttrDef] = &[];
const ALPHA: &[AttrDef] = &[dflt("alpha", Float, D::Float(1.0))];
const SCALAR: &[AttrDef] = &[req("other", Float)];
const SCALAR_ALPHA: &[AttrDef] = &[req("other", Float), dflt("alpha", Float, D::Float(1.0))];
const DIM: &[AttrDef] = &[req("dim", Int)];
const REDUCE: &[AttrDef] = &[dflt("dim", Ints, D::Ints(&[])), dflt("keepdim", Bool, D::Bool(false))];
const SHAPE: &[AttrDef] = &[req("shape", Ints)];
const QUANT_RANGE: [AttrDef; 3] = [req("qmin", Int), req("qmax", Int), req("dtype", AttrKind::DType)];
const Q_TENSOR: &[AttrDef] =
    &[req("scale", Float), req("zero_point", Int), QUANT_RANGE[0], QUANT_RANGE[1], QUANT_RANGE[2]];
const DQ_TENSOR: &[AttrDef] = &[
    req("scale", Float),
    req("zero_point", Int),
    QUANT_RANGE[0],
    QUANT_RANGE[1],
    QUANT_RANGE[2],
    dflt("out_dtype", AttrKind::DType, D::DType(DType::F32)),
];
const REQ_CHANNEL: &[AttrDef] =
    &[req("axis", Int), req("zero_point", Int), QUANT_RANGE[0], QUANT_RANGE[1], QUANT_RANGE[2]];
const Q_DYN: &[AttrDef] = &[QUANT_RANGE[0], QUANT_RANGE[1], QUANT_RANGE[2]];
const DQ_DYN: &[AttrDef] =
    &[QUANT_RANGE[0], QUANT_RANGE[1], QUANT_RANGE[2], dflt("out_dtype", AttrKind::DType, D::DType(DType::F32))];
const Q_CHANNEL: &[AttrDef] = &[req("axis", Int), QUANT_RANGE[0], QUANT_RANGE[1], QUANT_RANGE[2]];
const DQ_CHANNEL: &[AttrDef] = &[
    req("axis", Int),
    QUANT_RANGE[0],
    QUANT_RANGE[1],
    QUANT_RANGE[2],
    dflt("out_dtype", AttrKind::DType, D::DType(DType::F32)),
];
const CONV1D: &[AttrDef] = &[
    dflt("stride", Ints, D::Ints(&[1])),
    dflt("padding", Ints, D::Ints(&[0])),
    dflt("dilation", Ints, D::Ints(&[1])),
    dflt("groups", Int, D::Int(1)),
];
const CONV2D: &[AttrDef] = &[
    dflt("stride", Ints, D::Ints(&[1, 1])),
    dflt("padding", Ints, D::Ints(&[0, 0])),
    dflt("dilation", Ints, D::Ints(&[1, 1])),
    dflt("groups", Int, D::Int(1)),
];
const CONV_T2D: &[AttrDef] = &[
    dflt("stride", Ints, D::Ints(&[1, 1])),
    dflt("padding", Ints, D::Ints(&[0, 0])),
    dflt("output_padding", Ints, D::Ints(&[0, 0])),
    dflt("groups", Int, D::Int(1)),
    dflt("dilation", Ints, D::Ints(&[1, 1])),
];

macro_rules! op {
    ($name:literal, $summary:literal, $operands:expr, $attrs:expr, $infer:expr, $kernel:expr) => {
        op!($name, $summary, $operands, $attrs, $infer, $kernel, results = 1, pure = true)
    };
    ($name:literal, $summary:literal, $operands:expr, $attrs:expr, $infer:expr, $kernel:expr, results = $n:literal, pure = $pure:literal) => {
        OpDef {
            name: $name,
            summary: $summary,
            operands: $operands,
            num_results: $n,
            attrs: $attrs,
            infer: $infer,
            kernel: $kernel,
            pure: $pure,
        }
    };
}

/// Every op QIR knows, in the order `spec/ops.md` lists them.
pub static OPS: &[OpDef] = &[
    // Constants.
    op!("const", "A dense constant written inline.", &[], &[req("value", Tensor)], rule::constant, k::shape::constant),
    op!(
        "weight",
        "A tensor read from the module's safetensors file under `key`.",
        &[],
        &[req("key", Str(&[]))],
        rule::declared,
        k::shape::weight
    ),
    // Convolution and linear algebra.
    op!("conv1d", "1-D convolution over [N,C,L] (or unbatched [C,L]) input.", XWB, CONV1D, rule::conv1d, k::conv::conv),
    op!(
        "conv2d",
        "2-D convolution over [N,C,H,W] (or unbatched [C,H,W]) input.",
        XWB,
        CONV2D,
        rule::conv2d,
        k::conv::conv
    ),
    op!(
        "conv_transpose2d",
        "2-D transposed convolution; weight is [C_in, C_out/groups, kH, kW].",
        XWB,
        CONV_T2D,
        rule::conv_transpose,
        k::conv::conv_transpose
    ),
    op!("linear", "y = x·Wᵀ + b over the last dimension.", XWB, NONE, rule::linear, k::linalg::linear),
    op!("matmul", "Matrix product with torch.matmul broadcasting.", XY, NONE, rule::matmul, k::linalg::matmul),
    op!("bmm", "Batched matrix product of two rank-3 tensors.", XY, NONE, rule::bmm, k::linalg::bmm),
    op!(
        "addmm",
        "beta·input + alpha·(mat1 @ mat2).",
        &[one("input"), one("mat1"), one("mat2")],
        &[dflt("beta", Float, D::Float(1.0)), dflt("alpha", Float, D::Float(1.0))],
        rule::addmm,
        k::linalg::addmm
    ),
    // Normalisation.
    op!(
        "batch_norm",
        "Batch normalisation: by the running statistics, or by the batch's with `training`.",
        &[one("input"), one("weight"), one("bias"), one("running_mean"), one("running_var")],
        &[
            dflt("eps", Float, D::Float(1e-5)),
            dflt("momentum", Float, D::Float(0.1)),
            dflt("training", Bool, D::Bool(false)),
        ],
        rule::batch_norm,
        k::norm::batch_norm
    ),
    op!(
        "layer_norm",
        "Layer normalisation over the trailing `normalized_shape` dims.",
        NORM,
        &[req("normalized_shape", Ints), dflt("eps", Float, D::Float(1e-5))],
        rule::layer_norm,
        k::norm::layer_norm
    ),
    op!(
        "group_norm",
        "Group normalisation over channel groups.",
        NORM,
        &[req("num_groups", Int), dflt("eps", Float, D::Float(1e-5))],
        rule::group_norm,
        k::norm::group_norm
    ),
    // Activations.
    op!("relu", "max(x, 0).", X, NONE, rule::unary_float, k::elementwise::relu),
    op!("relu6", "min(max(x, 0), 6).", X, NONE, rule::unary_float, k::elementwise::relu6),
    op!(
        "hardtanh",
        "clamp(x, min_val, max_val).",
        X,
        &[dflt("min_val", Float, D::Float(-1.0)), dflt("max_val", Float, D::Float(1.0))],
        rule::hardtanh,
        k::elementwise::hardtanh
    ),
    op!("hardswish", "x · relu6(x + 3) / 6.", X, NONE, rule::unary_float, k::elementwise::hardswish),
    op!("hardsigmoid", "relu6(x + 3) / 6.", X, NONE, rule::unary_float, k::elementwise::hardsigmoid),
    op!("sigmoid", "1 / (1 + exp(-x)).", X, NONE, rule::unary_float, k::elementwise::sigmoid),
    op!("tanh", "Hyperbolic tangent.", X, NONE, rule::unary_float, k::elementwise::tanh),
    op!("sqrt", "Square root, correctly rounded.", X, NONE, rule::unary_float, k::elementwise::sqrt),
    op!(
        "gelu",
        "Gaussian error linear unit, exact (erf) or tanh approximation.",
        X,
        &[dflt("approximate", Str(&["none", "tanh"]), D::Str("none"))],
        rule::unary_float,
        k::elementwise::gelu
    ),
    op!("silu", "x · sigmoid(x).", X, NONE, rule::unary_float, k::elementwise::silu),
    op!("softmax", "Softmax along `dim`.", X, DIM, rule::softmax, k::reduce::softmax),
    op!("log_softmax", "Log-softmax along `dim`.", X, DIM, rule::softmax, k::reduce::log_softmax),
    // Elementwise arithmetic.
    op!("add", "input + alpha·other, broadcasting.", XY, ALPHA, rule::binary, k::elementwise::add),
    op!("sub", "input - alpha·other, broadcasting.", XY, ALPHA, rule::binary, k::elementwise::sub),
    op!("mul", "input · other, broadcasting.", XY, NONE, rule::binary, k::elementwise::mul),
    op!(
        "div",
        "input / other (true division; integer operands give f32), broadcasting.",
        XY,
        NONE,
        rule::div,
        k::elementwise::div
    ),
    op!(
        "add.scalar",
        "input + alpha·other for a scalar `other`.",
        X,
        SCALAR_ALPHA,
        rule::scalar_binary,
        k::elementwise::add_scalar
    ),
    op!(
        "sub.scalar",
        "input - alpha·other for a scalar `other`.",
        X,
        SCALAR_ALPHA,
        rule::scalar_binary,
        k::elementwise::sub_scalar
    ),
    op!(
        "mul.scalar",
        "input · other for a scalar `other`.",
        X,
        SCALAR,
        rule::scalar_binary,
        k::elementwise::mul_scalar
    ),
    op!(
        "div.scalar",
        "input / other for a scalar `other`.",
        X,
        SCALAR,
        rule::scalar_binary,
        k::elementwise::div_scalar
    ),
    // Reductions and pooling.
    op!("mean", "Mean over `dim` (all dims when empty).", X, REDUCE, rule::mean, k::reduce::mean),
    op!("sum", "Sum over `dim` (all dims when empty).", X, REDUCE, rule::sum, k::reduce::sum),
    op!(
        "max_pool2d",
        "2-D max pooling; an empty `stride` means the kernel size.",
        X,
        &[
            req("kernel_size", Ints),
            dflt("stride", Ints, D::Ints(&[])),
            dflt("padding", Ints, D::Ints(&[0, 0])),
            dflt("dilation", Ints, D::Ints(&[1, 1])),
            dflt("ceil_mode", Bool, D::Bool(false)),
        ],
        rule::max_pool2d,
        k::pool::max_pool2d
    ),
    op!(
        "avg_pool2d",
        "2-D average pooling; an empty `stride` means the kernel size.",
        X,
        &[
            req("kernel_size", Ints),
            dflt("stride", Ints, D::Ints(&[])),
            dflt("padding", Ints, D::Ints(&[0, 0])),
            dflt("ceil_mode", Bool, D::Bool(false)),
            dflt("count_include_pad", Bool, D::Bool(true)),
            maybe("divisor_override", Int),
        ],
        rule::avg_pool2d,
        k::pool::avg_pool2d
    ),
    op!(
        "adaptive_avg_pool2d",
        "Average pooling to a fixed `output_size`.",
        X,
        &[req("output_size", Ints)],
        rule::adaptive_avg_pool2d,
        k::pool::adaptive_avg_pool2d
    ),
    // Shape and data movement.
    op!("reshape", "Reshape to `shape` (one entry may be -1).", X, SHAPE, rule::reshape, k::shape::reshape),
    op!("view", "Reshape to `shape` as a view (one entry may be -1).", X, SHAPE, rule::reshape, k::shape::reshape),
    op!(
        "flatten",
        "Merge dims `start_dim..=end_dim` into one.",
        X,
        &[dflt("start_dim", Int, D::Int(0)), dflt("end_dim", Int, D::Int(-1))],
        rule::flatten,
        k::shape::flatten
    ),
    op!("permute", "Reorder dims by `dims`.", X, &[req("dims", Ints)], rule::permute, k::shape::permute),
    op!(
        "transpose",
        "Swap dims `dim0` and `dim1`.",
        X,
        &[req("dim0", Int), req("dim1", Int)],
        rule::transpose,
        k::shape::transpose
    ),
    op!(
        "cat",
        "Concatenate inputs along `dim`.",
        &[many("inputs")],
        &[dflt("dim", Int, D::Int(0))],
        rule::cat,
        k::shape::cat
    ),
    op!(
        "slice",
        "Elements start..end by step along `dim`; bounds clamp as in PyTorch.",
        X,
        &[dflt("dim", Int, D::Int(0)), maybe("start", Int), maybe("end", Int), dflt("step", Int, D::Int(1)),],
        rule::slice,
        k::shape::slice
    ),
    op!(
        "squeeze",
        "Drop size-1 dims (those in `dims`, or all).",
        X,
        &[maybe("dims", Ints)],
        rule::squeeze,
        k::shape::squeeze
    ),
    op!("unsqueeze", "Insert a size-1 dim at `dim`.", X, DIM, rule::unsqueeze, k::shape::unsqueeze),
    op!("expand", "Broadcast to `size` (-1 keeps a dim).", X, &[req("size", Ints)], rule::expand, k::shape::expand),
    op!("contiguous", "Identity on values (memory layout only).", X, NONE, rule::identity, k::shape::identity),
    op!("zeros_like", "Zeros of the input's type and shape.", X, NONE, rule::identity, k::shape::zeros_like),
    op!(
        "convert_element_type",
        "Elements converted to `dtype` as `.to(dtype)`: floats round, float to int truncates.",
        X,
        &[req("dtype", AttrKind::DType)],
        rule::convert_element_type,
        k::shape::convert_element_type
    ),
    op!(
        "dropout",
        "Identity at inference.",
        X,
        &[dflt("p", Float, D::Float(0.5)), dflt("train", Bool, D::Bool(false))],
        rule::identity,
        k::shape::identity
    ),
    op!(
        "embedding",
        "Rows of `weight` selected by integer `indices`.",
        &[one("weight"), one("indices")],
        &[dflt("padding_idx", Int, D::Int(-1))],
        rule::embedding,
        k::shape::embedding
    ),
    // Quantization.
    op!(
        "quantize_per_tensor",
        "clamp(round(x · (1/scale)) + zero_point, qmin, qmax) as `dtype`.",
        X,
        Q_TENSOR,
        rule::quantize_per_tensor,
        k::quant::quantize_per_tensor
    ),
    op!(
        "dequantize_per_tensor",
        "(q - zero_point) · scale as `out_dtype`.",
        X,
        DQ_TENSOR,
        rule::dequantize_per_tensor,
        k::quant::dequantize_per_tensor
    ),
    op!(
        "quantize_per_tensor.tensor",
        "quantize_per_tensor with scale and zero point as one-element tensors.",
        QPARAMS,
        Q_DYN,
        rule::quantize_per_tensor_dyn,
        k::quant::quantize_per_tensor_dyn
    ),
    op!(
        "dequantize_per_tensor.tensor",
        "dequantize_per_tensor with scale and zero point as one-element tensors.",
        QPARAMS,
        DQ_DYN,
        rule::dequantize_per_tensor_dyn,
        k::quant::dequantize_per_tensor_dyn
    ),
    op!(
        "quantize_per_channel",
        "Per-channel quantize along `axis` with vector scales and zero points.",
        CHANNEL_QPARAMS,
        Q_CHANNEL,
        rule::quantize_per_channel,
        k::quant::quantize_per_channel
    ),
    op!(
        "dequantize_per_channel",
        "Per-channel dequantize along `axis`.",
        CHANNEL_QPARAMS,
        DQ_CHANNEL,
        rule::dequantize_per_channel,
        k::quant::dequantize_per_channel
    ),
    op!(
        "requantize",
        "clamp(round(x · scale) + zero_point, qmin, qmax) of an integer x, as `dtype`.",
        X,
        Q_TENSOR,
        rule::requantize,
        k::quant::requantize
    ),
    op!(
        "requantize_per_channel",
        "requantize with one scale per channel along `axis`.",
        &[one("input"), one("scales")],
        REQ_CHANNEL,
        rule::requantize_per_channel,
        k::quant::requantize_per_channel
    ),
    op!(
        "choose_qparams",
        "Dynamic per-tensor qparams of the input: (scale f64[1], zero_point i64[1]).",
        X,
        &[QUANT_RANGE[0], QUANT_RANGE[1], QUANT_RANGE[2], req("eps", Float), dflt("symmetric", Bool, D::Bool(false))],
        rule::choose_qparams,
        k::quant::choose_qparams,
        results = 2,
        pure = true
    ),
    op!(
        "fake_quantize_per_tensor",
        "Quantize then dequantize in float (straight-through in training).",
        X,
        &[req("scale", Float), req("zero_point", Int), req("qmin", Int), req("qmax", Int)],
        rule::fake_quantize_per_tensor,
        k::quant::fake_quantize_per_tensor
    ),
    op!(
        "fake_quantize_per_channel",
        "Per-channel fake quantization along `axis`.",
        CHANNEL_QPARAMS,
        &[req("axis", Int), req("qmin", Int), req("qmax", Int)],
        rule::fake_quantize_per_channel,
        k::quant::fake_quantize_per_channel
    ),
    op!(
        "observer",
        "Records statistics of the values flowing through it; identity on values.",
        X,
        &[
            req("kind", Str(&[])),
            QUANT_RANGE[2],
            QUANT_RANGE[0],
            QUANT_RANGE[1],
            dflt(
                "qscheme",
                Str(&[
                    "per_tensor_affine",
                    "per_tensor_symmetric",
                    "per_channel_affine",
                    "per_channel_symmetric",
                    "per_channel_affine_float_qparams"
                ]),
                D::Str("per_tensor_affine")
            ),
            maybe("ch_axis", Int),
            dflt("instance", Int, D::Int(0)),
            maybe("options", Dict),
            maybe("stats", Dict),
        ],
        rule::observer,
        k::shape::identity,
        results = 1,
        pure = false
    ),
];
