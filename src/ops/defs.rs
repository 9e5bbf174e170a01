//! The table of ops. Semantics follow PyTorch ATen; `spec/ops.md` documents each entry.

use super::infer as rule;
use super::{Arity, AttrDef, AttrKind, DefaultValue as D, OpDef, OpKind, OperandDef, Presence, Traits as T};
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
const CONV1D_ATTRS: &[AttrDef] = &[
    dflt("stride", Ints, D::Ints(&[1])),
    dflt("padding", Ints, D::Ints(&[0])),
    dflt("dilation", Ints, D::Ints(&[1])),
    dflt("groups", Int, D::Int(1)),
];
const CONV2D_ATTRS: &[AttrDef] = &[
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

/// Declares the table: each entry `(NAME, def)` becomes `OPS[i]` and the typed kind `ops::NAME`
/// (an [`OpKind`] whose index is the entry's position, so the two cannot disagree).
macro_rules! registry {
    ($(($kind:ident, $def:expr)),* $(,)?) => {
        /// The position of each entry, which is its kind's index.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[repr(u16)]
        enum Index {
            $($kind),*
        }
        $(
            #[doc = concat!("The `", stringify!($kind), "` op (see [`OPS`]).")]
            pub const $kind: OpKind = OpKind(Index::$kind as u16);
        )*
        /// Every op QIR knows, in the order `spec/ops.md` lists them.
        pub static OPS: &[OpDef] = &[$($def),*];
    };
}

registry![
    // Constants.
    (
        CONST,
        OpDef::new("const", "A dense constant written inline.", &[], &[req("value", Tensor)], rule::constant)
            .traits(T::CONSTANT)
    ),
    (
        WEIGHT,
        OpDef::new(
            "weight",
            "A tensor read from the module's safetensors file under `key`.",
            &[],
            &[req("key", Str(&[]))],
            rule::declared
        )
        .traits(T::CONSTANT)
    ),
    // Convolution and linear algebra.
    (
        CONV1D,
        OpDef::new(
            "conv1d",
            "1-D convolution over [N,C,L] (or unbatched [C,L]) input.",
            XWB,
            CONV1D_ATTRS,
            rule::conv1d
        )
    ),
    (
        CONV2D,
        OpDef::new(
            "conv2d",
            "2-D convolution over [N,C,H,W] (or unbatched [C,H,W]) input.",
            XWB,
            CONV2D_ATTRS,
            rule::conv2d
        )
    ),
    (
        CONV_TRANSPOSE2D,
        OpDef::new(
            "conv_transpose2d",
            "2-D transposed convolution; weight is [C_in, C_out/groups, kH, kW].",
            XWB,
            CONV_T2D,
            rule::conv_transpose
        )
    ),
    (LINEAR, OpDef::new("linear", "y = x·Wᵀ + b over the last dimension.", XWB, NONE, rule::linear)),
    (MATMUL, OpDef::new("matmul", "Matrix product with torch.matmul broadcasting.", XY, NONE, rule::matmul)),
    (BMM, OpDef::new("bmm", "Batched matrix product of two rank-3 tensors.", XY, NONE, rule::bmm)),
    (
        ADDMM,
        OpDef::new(
            "addmm",
            "beta·input + alpha·(mat1 @ mat2).",
            &[one("input"), one("mat1"), one("mat2")],
            &[dflt("beta", Float, D::Float(1.0)), dflt("alpha", Float, D::Float(1.0))],
            rule::addmm
        )
    ),
    // Normalisation.
    (
        BATCH_NORM,
        OpDef::new(
            "batch_norm",
            "Batch normalisation: by the running statistics, or by the batch's with `training`.",
            &[one("input"), one("weight"), one("bias"), one("running_mean"), one("running_var")],
            &[
                dflt("eps", Float, D::Float(1e-5)),
                dflt("momentum", Float, D::Float(0.1)),
                dflt("training", Bool, D::Bool(false)),
            ],
            rule::batch_norm
        )
        .traits(T::STATEFUL)
    ),
    (
        LAYER_NORM,
        OpDef::new(
            "layer_norm",
            "Layer normalisation over the trailing `normalized_shape` dims.",
            NORM,
            &[req("normalized_shape", Ints), dflt("eps", Float, D::Float(1e-5))],
            rule::layer_norm
        )
    ),
    (
        GROUP_NORM,
        OpDef::new(
            "group_norm",
            "Group normalisation over channel groups.",
            NORM,
            &[req("num_groups", Int), dflt("eps", Float, D::Float(1e-5))],
            rule::group_norm
        )
    ),
    // Activations.
    (RELU, OpDef::new("relu", "max(x, 0).", X, NONE, rule::unary_float)),
    (RELU6, OpDef::new("relu6", "min(max(x, 0), 6).", X, NONE, rule::unary_float)),
    (
        HARDTANH,
        OpDef::new(
            "hardtanh",
            "clamp(x, min_val, max_val).",
            X,
            &[dflt("min_val", Float, D::Float(-1.0)), dflt("max_val", Float, D::Float(1.0))],
            rule::hardtanh
        )
    ),
    (HARDSWISH, OpDef::new("hardswish", "x · relu6(x + 3) / 6.", X, NONE, rule::unary_float)),
    (HARDSIGMOID, OpDef::new("hardsigmoid", "relu6(x + 3) / 6.", X, NONE, rule::unary_float)),
    (SIGMOID, OpDef::new("sigmoid", "1 / (1 + exp(-x)).", X, NONE, rule::unary_float)),
    (TANH, OpDef::new("tanh", "Hyperbolic tangent.", X, NONE, rule::unary_float)),
    (SQRT, OpDef::new("sqrt", "Square root, correctly rounded.", X, NONE, rule::unary_float)),
    (
        GELU,
        OpDef::new(
            "gelu",
            "Gaussian error linear unit, exact (erf) or tanh approximation.",
            X,
            &[dflt("approximate", Str(&["none", "tanh"]), D::Str("none"))],
            rule::unary_float
        )
    ),
    (SILU, OpDef::new("silu", "x · sigmoid(x).", X, NONE, rule::unary_float)),
    (SOFTMAX, OpDef::new("softmax", "Softmax along `dim`.", X, DIM, rule::softmax)),
    (LOG_SOFTMAX, OpDef::new("log_softmax", "Log-softmax along `dim`.", X, DIM, rule::softmax)),
    // Elementwise arithmetic.
    (ADD, OpDef::new("add", "input + alpha·other, broadcasting.", XY, ALPHA, rule::binary)),
    (SUB, OpDef::new("sub", "input - alpha·other, broadcasting.", XY, ALPHA, rule::binary)),
    (MUL, OpDef::new("mul", "input · other, broadcasting.", XY, NONE, rule::binary)),
    (
        DIV,
        OpDef::new(
            "div",
            "input / other (true division; integer operands give f32), broadcasting.",
            XY,
            NONE,
            rule::div
        )
    ),
    (
        ADD_SCALAR,
        OpDef::new("add.scalar", "input + alpha·other for a scalar `other`.", X, SCALAR_ALPHA, rule::scalar_binary)
    ),
    (
        SUB_SCALAR,
        OpDef::new("sub.scalar", "input - alpha·other for a scalar `other`.", X, SCALAR_ALPHA, rule::scalar_binary)
    ),
    (MUL_SCALAR, OpDef::new("mul.scalar", "input · other for a scalar `other`.", X, SCALAR, rule::scalar_binary)),
    (DIV_SCALAR, OpDef::new("div.scalar", "input / other for a scalar `other`.", X, SCALAR, rule::scalar_binary)),
    // Reductions and pooling.
    (MEAN, OpDef::new("mean", "Mean over `dim` (all dims when empty).", X, REDUCE, rule::mean)),
    (SUM, OpDef::new("sum", "Sum over `dim` (all dims when empty).", X, REDUCE, rule::sum)),
    (
        MAX_POOL2D,
        OpDef::new(
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
            rule::max_pool2d
        )
    ),
    (
        AVG_POOL2D,
        OpDef::new(
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
            rule::avg_pool2d
        )
    ),
    (
        ADAPTIVE_AVG_POOL2D,
        OpDef::new(
            "adaptive_avg_pool2d",
            "Average pooling to a fixed `output_size`.",
            X,
            &[req("output_size", Ints)],
            rule::adaptive_avg_pool2d
        )
    ),
    // Shape and data movement.
    (RESHAPE, OpDef::new("reshape", "Reshape to `shape` (one entry may be -1).", X, SHAPE, rule::reshape)),
    (VIEW, OpDef::new("view", "Reshape to `shape` as a view (one entry may be -1).", X, SHAPE, rule::reshape)),
    (
        FLATTEN,
        OpDef::new(
            "flatten",
            "Merge dims `start_dim..=end_dim` into one.",
            X,
            &[dflt("start_dim", Int, D::Int(0)), dflt("end_dim", Int, D::Int(-1))],
            rule::flatten
        )
    ),
    (PERMUTE, OpDef::new("permute", "Reorder dims by `dims`.", X, &[req("dims", Ints)], rule::permute)),
    (
        TRANSPOSE,
        OpDef::new(
            "transpose",
            "Swap dims `dim0` and `dim1`.",
            X,
            &[req("dim0", Int), req("dim1", Int)],
            rule::transpose
        )
    ),
    (
        CAT,
        OpDef::new(
            "cat",
            "Concatenate inputs along `dim`.",
            &[many("inputs")],
            &[dflt("dim", Int, D::Int(0))],
            rule::cat
        )
    ),
    (
        SLICE,
        OpDef::new(
            "slice",
            "Elements start..end by step along `dim`; bounds clamp as in PyTorch.",
            X,
            &[dflt("dim", Int, D::Int(0)), maybe("start", Int), maybe("end", Int), dflt("step", Int, D::Int(1)),],
            rule::slice
        )
    ),
    (
        SQUEEZE,
        OpDef::new("squeeze", "Drop size-1 dims (those in `dims`, or all).", X, &[maybe("dims", Ints)], rule::squeeze)
    ),
    (UNSQUEEZE, OpDef::new("unsqueeze", "Insert a size-1 dim at `dim`.", X, DIM, rule::unsqueeze)),
    (EXPAND, OpDef::new("expand", "Broadcast to `size` (-1 keeps a dim).", X, &[req("size", Ints)], rule::expand)),
    (
        CONTIGUOUS,
        OpDef::new("contiguous", "Identity on values (memory layout only).", X, NONE, rule::identity)
            .traits(T::ALIASES_INPUT)
    ),
    (ZEROS_LIKE, OpDef::new("zeros_like", "Zeros of the input's type and shape.", X, NONE, rule::identity)),
    (
        CONVERT_ELEMENT_TYPE,
        OpDef::new(
            "convert_element_type",
            "Elements converted to `dtype` as `.to(dtype)`: floats round, float to int truncates.",
            X,
            &[req("dtype", AttrKind::DType)],
            rule::convert_element_type
        )
    ),
    (
        DROPOUT,
        OpDef::new(
            "dropout",
            "Identity at inference.",
            X,
            &[dflt("p", Float, D::Float(0.5)), dflt("train", Bool, D::Bool(false))],
            rule::identity
        )
        .traits(T::ALIASES_INPUT)
    ),
    (
        EMBEDDING,
        OpDef::new(
            "embedding",
            "Rows of `weight` selected by integer `indices`.",
            &[one("weight"), one("indices")],
            &[dflt("padding_idx", Int, D::Int(-1))],
            rule::embedding
        )
    ),
    // Quantization.
    (
        QUANTIZE_PER_TENSOR,
        OpDef::new(
            "quantize_per_tensor",
            "clamp(round(x · (1/scale)) + zero_point, qmin, qmax) as `dtype`.",
            X,
            Q_TENSOR,
            rule::quantize_per_tensor
        )
        .traits(T::QUANTIZE)
    ),
    (
        DEQUANTIZE_PER_TENSOR,
        OpDef::new(
            "dequantize_per_tensor",
            "(q - zero_point) · scale as `out_dtype`.",
            X,
            DQ_TENSOR,
            rule::dequantize_per_tensor
        )
        .traits(T::DEQUANTIZE)
    ),
    (
        QUANTIZE_PER_TENSOR_TENSOR,
        OpDef::new(
            "quantize_per_tensor.tensor",
            "quantize_per_tensor with scale and zero point as one-element tensors.",
            QPARAMS,
            Q_DYN,
            rule::quantize_per_tensor_dyn
        )
        .traits(T::QUANTIZE)
    ),
    (
        DEQUANTIZE_PER_TENSOR_TENSOR,
        OpDef::new(
            "dequantize_per_tensor.tensor",
            "dequantize_per_tensor with scale and zero point as one-element tensors.",
            QPARAMS,
            DQ_DYN,
            rule::dequantize_per_tensor_dyn
        )
        .traits(T::DEQUANTIZE)
    ),
    (
        QUANTIZE_PER_CHANNEL,
        OpDef::new(
            "quantize_per_channel",
            "Per-channel quantize along `axis` with vector scales and zero points.",
            CHANNEL_QPARAMS,
            Q_CHANNEL,
            rule::quantize_per_channel
        )
        .traits(T::QUANTIZE)
    ),
    (
        DEQUANTIZE_PER_CHANNEL,
        OpDef::new(
            "dequantize_per_channel",
            "Per-channel dequantize along `axis`.",
            CHANNEL_QPARAMS,
            DQ_CHANNEL,
            rule::dequantize_per_channel
        )
        .traits(T::DEQUANTIZE)
    ),
    (
        REQUANTIZE,
        OpDef::new(
            "requantize",
            "clamp(round(x · scale) + zero_point, qmin, qmax) of an integer x, as `dtype`.",
            X,
            Q_TENSOR,
            rule::requantize
        )
    ),
    (
        REQUANTIZE_PER_CHANNEL,
        OpDef::new(
            "requantize_per_channel",
            "requantize with one scale per channel along `axis`.",
            &[one("input"), one("scales")],
            REQ_CHANNEL,
            rule::requantize_per_channel
        )
    ),
    (
        CHOOSE_QPARAMS,
        OpDef::new(
            "choose_qparams",
            "Dynamic per-tensor qparams of the input: (scale f64[1], zero_point i64[1]).",
            X,
            &[
                QUANT_RANGE[0],
                QUANT_RANGE[1],
                QUANT_RANGE[2],
                req("eps", Float),
                dflt("symmetric", Bool, D::Bool(false))
            ],
            rule::choose_qparams
        )
        .results(2)
    ),
    (
        FAKE_QUANTIZE_PER_TENSOR,
        OpDef::new(
            "fake_quantize_per_tensor",
            "Quantize then dequantize in float (straight-through in training).",
            X,
            &[req("scale", Float), req("zero_point", Int), req("qmin", Int), req("qmax", Int)],
            rule::fake_quantize_per_tensor
        )
        .traits(T::FAKE_QUANTIZE)
    ),
    (
        FAKE_QUANTIZE_PER_CHANNEL,
        OpDef::new(
            "fake_quantize_per_channel",
            "Per-channel fake quantization along `axis`.",
            CHANNEL_QPARAMS,
            &[req("axis", Int), req("qmin", Int), req("qmax", Int)],
            rule::fake_quantize_per_channel
        )
        .traits(T::FAKE_QUANTIZE)
    ),
    (
        OBSERVER,
        OpDef::new(
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
            rule::observer
        )
        .traits(T::OBSERVER.with(T::ALIASES_INPUT).with(T::STATEFUL))
        .impure()
    ),
];
