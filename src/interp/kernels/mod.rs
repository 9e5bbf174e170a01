//! Kernels: one function per op, attached to the op's registry entry (`OpDef::kernel`).
//!
//! Float kernels compute in f32 (f16 and bf16 are widened exactly and the result rounded back,
//! as PyTorch's CPU kernels do) or in f64 for f64 tensors. Data movement and quantization
//! kernels are bit-exact, and so are the integer kernels of the reference representation
//! (wrapping where PyTorch's integer arithmetic wraps).

pub mod conv;
pub mod elementwise;
pub mod linalg;
pub mod norm;
pub mod pool;
pub mod quant;
pub mod reduce;
pub mod shape;

use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};
use rayon::prelude::*;

use crate::ir::attr::Attr;
use crate::ir::TensorType;
use crate::ops::{self, AttrAccess, OpDef, OpKind};
use crate::tensor::{FromF64, Tensor};

/// What a kernel sees: operand tensors, the op's complete attributes, its declared result types.
pub struct KernelCx<'a> {
    pub def: &'static OpDef,
    pub inputs: &'a [&'a Tensor],
    pub attrs: &'a [Option<Attr>],
    pub result_types: &'a [TensorType],
    pub weights: crate::weights::Weights<'a>,
}

impl AttrAccess for KernelCx<'_> {
    fn attr(&self, name: &str) -> Option<&Attr> {
        self.def.attr_index(name).and_then(|i| self.attrs.get(i)?.as_ref())
    }
}

impl KernelCx<'_> {
    pub fn input(&self, i: usize) -> &Tensor {
        self.inputs[i]
    }

    pub fn opt_input(&self, i: usize) -> Option<&Tensor> {
        self.inputs.get(i).copied()
    }

    /// The declared element type of result `i`.
    pub fn out_dtype(&self, i: usize) -> crate::ir::DType {
        self.result_types[i].dtype
    }
}

/// A kernel's result: its result tensors, or a message for the diagnostic.
pub type KernelResult = Result<Vec<Tensor>, String>;

/// The kernel type stored in the registry.
pub type KernelFn = fn(&KernelCx<'_>) -> KernelResult;

/// The kernel that evaluates `kind`: the interpreter's side of the op registry. Every op has
/// one (checked by the test below); `None` would mean an op was registered without it.
pub fn kernel(kind: OpKind) -> Option<KernelFn> {
    Some(match kind {
        ops::CONST => shape::constant,
        ops::WEIGHT => shape::weight,
        ops::CONV1D => conv::conv,
        ops::CONV2D => conv::conv,
        ops::CONV_TRANSPOSE2D => conv::conv_transpose,
        ops::LINEAR => linalg::linear,
        ops::MATMUL => linalg::matmul,
        ops::BMM => linalg::bmm,
        ops::ADDMM => linalg::addmm,
        ops::BATCH_NORM => norm::batch_norm,
        ops::LAYER_NORM => norm::layer_norm,
        ops::GROUP_NORM => norm::group_norm,
        ops::RELU => elementwise::relu,
        ops::RELU6 => elementwise::relu6,
        ops::HARDTANH => elementwise::hardtanh,
        ops::HARDSWISH => elementwise::hardswish,
        ops::HARDSIGMOID => elementwise::hardsigmoid,
        ops::SIGMOID => elementwise::sigmoid,
        ops::TANH => elementwise::tanh,
        ops::SQRT => elementwise::sqrt,
        ops::GELU => elementwise::gelu,
        ops::SILU => elementwise::silu,
        ops::SOFTMAX => reduce::softmax,
        ops::LOG_SOFTMAX => reduce::log_softmax,
        ops::ADD => elementwise::add,
        ops::SUB => elementwise::sub,
        ops::MUL => elementwise::mul,
        ops::DIV => elementwise::div,
        ops::ADD_SCALAR => elementwise::add_scalar,
        ops::SUB_SCALAR => elementwise::sub_scalar,
        ops::MUL_SCALAR => elementwise::mul_scalar,
        ops::DIV_SCALAR => elementwise::div_scalar,
        ops::MEAN => reduce::mean,
        ops::SUM => reduce::sum,
        ops::MAX_POOL2D => pool::max_pool2d,
        ops::AVG_POOL2D => pool::avg_pool2d,
        ops::ADAPTIVE_AVG_POOL2D => pool::adaptive_avg_pool2d,
        ops::RESHAPE => shape::reshape,
        ops::VIEW => shape::reshape,
        ops::FLATTEN => shape::flatten,
        ops::PERMUTE => shape::permute,
        ops::TRANSPOSE => shape::transpose,
        ops::CAT => shape::cat,
        ops::SLICE => shape::slice,
        ops::SQUEEZE => shape::squeeze,
        ops::UNSQUEEZE => shape::unsqueeze,
        ops::EXPAND => shape::expand,
        ops::CONTIGUOUS => shape::identity,
        ops::ZEROS_LIKE => shape::zeros_like,
        ops::CONVERT_ELEMENT_TYPE => shape::convert_element_type,
        ops::DROPOUT => shape::identity,
        ops::EMBEDDING => shape::embedding,
        ops::QUANTIZE_PER_TENSOR => quant::quantize_per_tensor,
        ops::DEQUANTIZE_PER_TENSOR => quant::dequantize_per_tensor,
        ops::QUANTIZE_PER_TENSOR_TENSOR => quant::quantize_per_tensor_dyn,
        ops::DEQUANTIZE_PER_TENSOR_TENSOR => quant::dequantize_per_tensor_dyn,
        ops::QUANTIZE_PER_CHANNEL => quant::quantize_per_channel,
        ops::DEQUANTIZE_PER_CHANNEL => quant::dequantize_per_channel,
        ops::REQUANTIZE => quant::requantize,
        ops::REQUANTIZE_PER_CHANNEL => quant::requantize_per_channel,
        ops::CHOOSE_QPARAMS => quant::choose_qparams,
        ops::FAKE_QUANTIZE_PER_TENSOR => quant::fake_quantize_per_tensor,
        ops::FAKE_QUANTIZE_PER_CHANNEL => quant::fake_quantize_per_channel,
        ops::OBSERVER => shape::identity,
        _ => return None,
    })
}

/// The tensor's data as f32, borrowed when it is f32 and widened exactly from f16/bf16.
pub fn as_f32(t: &Tensor) -> Result<CowArray<'_, f32, IxDyn>, String> {
    match t {
        Tensor::F32(a) => Ok(a.view().into()),
        Tensor::F16(a) => Ok(a.mapv(f16::to_f32).into()),
        Tensor::BF16(a) => Ok(a.mapv(bf16::to_f32).into()),
        other => Err(format!("expected a float tensor, found {}", other.dtype())),
    }
}

/// An f32 result rounded to the float `dtype` the op declares.
pub fn from_f32(a: ArrayD<f32>, dtype: crate::ir::DType) -> Tensor {
    match dtype {
        crate::ir::DType::F16 => Tensor::F16(a.mapv(f16::from_f32)),
        crate::ir::DType::BF16 => Tensor::BF16(a.mapv(bf16::from_f32)),
        crate::ir::DType::F64 => Tensor::F64(a.mapv(f64::from)),
        _ => Tensor::F32(a),
    }
}

/// Rounds an f32 to the precision of the float `dtype` (f16/bf16), as a reduced-precision
/// PyTorch op does after each step.
pub fn round_to(v: f32, dtype: crate::ir::DType) -> f32 {
    match dtype {
        crate::ir::DType::F16 => f16::from_f32(v).to_f32(),
        crate::ir::DType::BF16 => bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Evaluates `$body` with `$a` bound to the float data of `$t` as an array view of element
/// type `$T` (f64 for f64 tensors, f32 otherwise); `$body` yields an `ArrayD<$T>`, which is
/// converted to the dtype `$out`.
macro_rules! float_map {
    ($t:expr, $out:expr, |$a:ident: $T:ident| $body:expr) => {{
        match $t {
            $crate::tensor::Tensor::F64(data) => {
                #[allow(dead_code)]
                type $T = f64;
                let $a = data.view();
                Ok::<_, String>($crate::tensor::Tensor::F64($body))
            }
            other => {
                #[allow(dead_code)]
                type $T = f32;
                let owned = $crate::interp::kernels::as_f32(other)?;
                let $a = owned.view();
                Ok::<_, String>($crate::interp::kernels::from_f32($body, $out))
            }
        }
    }};
}
pub(crate) use float_map;

/// Like [`float_map`] for two float operands of the same dtype.
macro_rules! float_zip {
    ($x:expr, $y:expr, $out:expr, |$a:ident, $b:ident: $T:ident| $body:expr) => {{
        match ($x, $y) {
            ($crate::tensor::Tensor::F64(da), $crate::tensor::Tensor::F64(db)) => {
                #[allow(dead_code)]
                type $T = f64;
                let ($a, $b) = (da.view(), db.view());
                Ok::<_, String>($crate::tensor::Tensor::F64($body))
            }
            (x, y) => {
                #[allow(dead_code)]
                type $T = f32;
                let (oa, ob) = ($crate::interp::kernels::as_f32(x)?, $crate::interp::kernels::as_f32(y)?);
                let ($a, $b) = (oa.view(), ob.view());
                Ok::<_, String>($crate::interp::kernels::from_f32($body, $out))
            }
        }
    }};
}
pub(crate) use float_zip;

/// Like [`float_zip`], with a third case: two i32 operands bound as `$T = i32` (the integer
/// products of the reference representation, accumulated in i32 with wrapping).
macro_rules! gemm_zip {
    ($x:expr, $y:expr, $out:expr, |$a:ident, $b:ident: $T:ident| $body:expr) => {{
        match ($x, $y) {
            ($crate::tensor::Tensor::I32(da), $crate::tensor::Tensor::I32(db)) => {
                #[allow(dead_code)]
                type $T = i32;
                let ($a, $b) = (da.view(), db.view());
                Ok::<_, String>($crate::tensor::Tensor::I32($body))
            }
            (x, y) => $crate::interp::kernels::float_zip!(x, y, $out, |$a, $b: $T| $body),
        }
    }};
}
pub(crate) use gemm_zip;

/// Like [`float_map`], and for integer tensors `$body` runs on the data in its own element type
/// (`$T = i8`, `u8`, …) and yields an array of that type.
macro_rules! numeric_map {
    ($t:expr, $out:expr, |$a:ident: $T:ident| $body:expr) => {
        $crate::interp::kernels::numeric_map!(@ints $t, $out, |$a: $T| $body, [I8 i8, U8 u8, I16 i16, I32 i32, I64 i64])
    };
    (@ints $t:expr, $out:expr, |$a:ident: $T:ident| $body:expr, [$($variant:ident $ty:ident),*]) => {{
        match $t {
            $($crate::tensor::Tensor::$variant(data) => {
                #[allow(dead_code)]
                type $T = $ty;
                let $a = data.view();
                Ok::<_, String>($crate::tensor::Tensor::$variant($body))
            })*
            other => $crate::interp::kernels::float_map!(other, $out, |$a: $T| $body),
        }
    }};
}
pub(crate) use numeric_map;

/// The broadcast shape of two shapes (validated by the type rule; re-checked here because the
/// data may carry dynamic dims).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
            let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
            }
        })
        .collect()
}

/// Normalises a possibly negative dim against `rank`.
pub fn dim(d: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let n = if d < 0 { d + r } else { d };
    if (0..r.max(1)).contains(&n) {
        Ok(n as usize)
    } else {
        Err(format!("dimension {d} is out of range for rank {rank}"))
    }
}

/// A float operand converted to the compute type `T` chosen for the op's main operands (a bias
/// follows its input's precision).
pub fn float_array_as<T: FromF64>(t: &Tensor) -> Result<ArrayD<T>, String> {
    if !t.dtype().is_float() {
        return Err(format!("expected a float tensor, found {}", t.dtype()));
    }
    Ok(match t {
        Tensor::F64(a) => a.mapv(T::from_f64),
        other => as_f32(other)?.mapv(|v| T::from_f64(f64::from(v))),
    })
}

/// Elements per parallel task in the elementwise helpers below. Every element is computed by
/// the same scalar code whichever task runs it, so the split (and the thread count) never
/// changes a result; tensors smaller than two chunks run on the calling thread.
pub const PAR_CHUNK: usize = 1 << 14;

/// `a.mapv(f)`, split across threads for contiguous arrays.
pub fn par_mapv<A, B>(a: ArrayViewD<'_, A>, f: impl Fn(A) -> B + Sync + Send) -> ArrayD<B>
where
    A: Copy + Sync,
    B: Send,
{
    match a.as_slice() {
        Some(xs) if xs.len() >= 2 * PAR_CHUNK => {
            let out: Vec<B> = xs.par_iter().with_min_len(PAR_CHUNK).map(|&x| f(x)).collect();
            ArrayD::from_shape_vec(a.raw_dim(), out).unwrap_or_else(|_| a.mapv(f))
        }
        _ => a.mapv(f),
    }
}

/// Calls `f(index, chunk)` for each `len`-element chunk of `data` (the last may be shorter), in
/// parallel when there is enough work; each chunk is processed by one thread.
pub fn par_chunks_mut<T: Send>(data: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let len = len.max(1);
    if data.len() >= 2 * PAR_CHUNK && data.len() > len {
        let per_task = PAR_CHUNK.div_ceil(len);
        data.par_chunks_mut(len).enumerate().with_min_len(per_task).for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Rows folded together by [`row_folds`].
pub const ROWS_AT_ONCE: usize = 8;

/// `f` folded from `init` over each `len`-element row of `data` (a last partial row is
/// ignored), in element order, with the row's entry of `params`: the result of a plain
/// `row.iter().fold(..)`. Rows go [`ROWS_AT_ONCE`] at a time, so that the steps of different
/// rows overlap instead of each waiting for the previous one (a sum is latency-bound).
pub fn row_folds<T: Copy, P: Copy>(data: &[T], len: usize, params: &[P], init: T, f: impl Fn(T, T, P) -> T) -> Vec<T> {
    let len = len.max(1);
    let mut folds = Vec::with_capacity(params.len());
    for (group, params) in data.chunks(ROWS_AT_ONCE * len).zip(params.chunks(ROWS_AT_ONCE)) {
        let rows: Vec<&[T]> = group.chunks_exact(len).collect();
        match (<&[&[T]; ROWS_AT_ONCE]>::try_from(rows.as_slice()), <&[P; ROWS_AT_ONCE]>::try_from(params)) {
            (Ok(rows), Ok(params)) => {
                let mut acc = [init; ROWS_AT_ONCE];
                for i in 0..len {
                    for ((a, row), &p) in acc.iter_mut().zip(rows).zip(params) {
                        *a = f(*a, row[i], p);
                    }
                }
                folds.extend(acc);
            }
            _ => folds.extend(rows.iter().zip(params).map(|(row, &p)| row.iter().fold(init, |a, &v| f(a, v, p)))),
        }
    }
    folds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_op_has_a_kernel() {
        let missing: Vec<&str> = OpKind::all().filter(|&k| kernel(k).is_none()).map(OpKind::name).collect();
        assert!(missing.is_empty(), "ops without a kernel: {missing:?}");
    }
}
