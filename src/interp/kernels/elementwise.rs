//! Elementwise kernels: activations and broadcasting arithmetic, with the formulas (and
//! operation order) of PyTorch's CPU kernels.

use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};

use rayon::prelude::*;

use super::{broadcast_shape, float_map, float_zip, par_mapv, KernelCx, KernelResult, PAR_CHUNK};
use crate::ir::DType;
use crate::ops::AttrAccess;
use crate::tensor::Tensor;

/// Defines a float unary kernel from a per-element expression generic over the compute type.
macro_rules! unary {
    ($(#[$doc:meta])* $name:ident, |$x:ident: $T:ident| $expr:expr) => {
        $(#[$doc])*
        pub fn $name(cx: &KernelCx<'_>) -> KernelResult {
            Ok(vec![float_map!(cx.input(0), cx.out_dtype(0), |a: $T| par_mapv(a, |$x: $T| $expr))?])
        }
    };
}

unary!(
    /// `clamp_min(x, 0)`: NaN and -0.0 pass through, as in PyTorch.
    relu, |x: T| if x < 0.0 { 0.0 } else { x }
);
unary!(
    /// `clamp(x, 0, 6)`; NaN propagates.
    relu6, |x: T| clamp(x, 0.0, 6.0)
);
unary!(
    /// `x * min(max(x + 3, 0), 6) / 6`.
    hardswish, |x: T| x * clamp(x + 3.0, 0.0, 6.0) / 6.0
);
unary!(
    /// `min(max(x + 3, 0), 6) / 6`.
    hardsigmoid, |x: T| clamp(x + 3.0, 0.0, 6.0) / 6.0
);
unary!(
    /// `1 / (1 + exp(-x))`.
    sigmoid, |x: T| 1.0 / (1.0 + (-x).exp())
);
unary!(tanh, |x: T| x.tanh());
unary!(
    /// IEEE square root. PyTorch's CPU `torch.sqrt` (MKL's vector path) is off by one ulp on
    /// some float32 inputs; qc computes the correctly rounded value.
    sqrt, |x: T| x.sqrt()
);
unary!(
    /// `x / (1 + exp(-x))`.
    silu, |x: T| x / (1.0 + (-x).exp())
);

/// `clamp(x, lo, hi)` as `torch.clamp`: NaN (and -0.0 when 0 is a bound) pass through.
fn clamp<T: PartialOrd + Copy>(x: T, lo: T, hi: T) -> T {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

pub fn hardtanh(cx: &KernelCx<'_>) -> KernelResult {
    let (lo, hi) = (cx.float("min_val")?, cx.float("max_val")?);
    Ok(vec![float_map!(cx.input(0), cx.out_dtype(0), |a: T| par_mapv(a, |x| clamp(x, lo as T, hi as T)))?])
}

/// Exact GELU `x/2 · (1 + erf(x/√2))`, or the tanh approximation.
pub fn gelu(cx: &KernelCx<'_>) -> KernelResult {
    let tanh_form = cx.string("approximate")? == "tanh";
    Ok(vec![float_map!(cx.input(0), cx.out_dtype(0), |a: T| {
        if tanh_form {
            let k = (std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2) as T;
            par_mapv(a, |x| 0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh()))
        } else {
            par_mapv(a, |x| x * 0.5 * (1.0 + Erf::erf(x * std::f64::consts::FRAC_1_SQRT_2 as T)))
        }
    })?])
}

/// The error function at the compute precision.
trait Erf {
    fn erf(self) -> Self;
}
impl Erf for f32 {
    fn erf(self) -> f32 {
        libm::erff(self)
    }
}
impl Erf for f64 {
    fn erf(self) -> f64 {
        libm::erf(self)
    }
}

/// Combines two arrays elementwise with broadcasting.
pub fn zip_broadcast<A: Copy + Sync, B: Copy + Sync, C: Send>(
    a: ArrayViewD<'_, A>,
    b: ArrayViewD<'_, B>,
    f: impl Fn(A, B) -> C + Sync + Send,
) -> Result<ArrayD<C>, String> {
    if a.shape() == b.shape() {
        if let (Some(xs), Some(ys)) = (a.as_slice(), b.as_slice()) {
            // Same shape, both row-major: a flat loop the compiler can vectorise, split across
            // threads for large tensors (each element computed alike by whichever thread).
            let out: Vec<C> = if xs.len() >= 2 * PAR_CHUNK {
                xs.par_iter().zip(ys).with_min_len(PAR_CHUNK).map(|(&x, &y)| f(x, y)).collect()
            } else {
                xs.iter().zip(ys).map(|(&x, &y)| f(x, y)).collect()
            };
            return ArrayD::from_shape_vec(IxDyn(a.shape()), out).map_err(|e| e.to_string());
        }
    }
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let (a, b) = (a.broadcast(IxDyn(&shape)), b.broadcast(IxDyn(&shape)));
    let (Some(a), Some(b)) = (a, b) else { return Err("operands do not broadcast".into()) };
    Ok(Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)))
}

#[derive(Copy, Clone)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// Integer arithmetic wraps, as PyTorch's integer tensors do.
macro_rules! int_arith {
    ($x:expr, $y:expr, $op:expr, $alpha:expr, [$($variant:ident),*]) => {
        match ($x, $y) {
            $((Tensor::$variant(a), Tensor::$variant(b)) => {
                let alpha = $alpha as _;
                Some(Tensor::$variant(zip_broadcast(a.view(), b.view(), |p, q| match $op {
                    Arith::Add => p.wrapping_add(q.wrapping_mul(alpha)),
                    Arith::Sub => p.wrapping_sub(q.wrapping_mul(alpha)),
                    _ => p.wrapping_mul(q),
                })?))
            })*
            _ => None,
        }
    };
}

fn arith(cx: &KernelCx<'_>, op: Arith) -> KernelResult {
    let (x, y) = (cx.input(0), cx.input(1));
    let alpha = cx.opt_float("alpha").unwrap_or(1.0);
    let out = cx.out_dtype(0);
    if !out.is_float() {
        if alpha.fract() != 0.0 {
            return Err("an integer `alpha` is needed for integer tensors".into());
        }
        if let Some(t) = int_arith!(x, y, op, alpha as i64, [I8, U8, I16, I32, I64]) {
            return Ok(vec![t]);
        }
        return Err(format!("unsupported operand types {} and {}", x.dtype(), y.dtype()));
    }
    let (x, y) = (promote_to_float(x), promote_to_float(y));
    Ok(vec![float_zip!(&*x, &*y, out, |a, b: T| {
        let alpha = alpha as T;
        // One closure per operation, so that each loop is a plain (vectorisable) one.
        match op {
            // PyTorch's vectorised kernel fuses `a + alpha*b` into one FMA.
            Arith::Add if alpha == 1.0 => zip_broadcast(a, b, |p: T, q: T| p + q)?,
            Arith::Add => zip_broadcast(a, b, |p: T, q: T| q.mul_add(alpha, p))?,
            Arith::Sub if alpha == 1.0 => zip_broadcast(a, b, |p: T, q: T| p - q)?,
            Arith::Sub => zip_broadcast(a, b, |p: T, q: T| (-q).mul_add(alpha, p))?,
            Arith::Mul => zip_broadcast(a, b, |p: T, q: T| p * q)?,
            Arith::Div => zip_broadcast(a, b, |p: T, q: T| p / q)?,
        }
    })?])
}

/// Integer operands of an op with a float result are computed in f32 (true division).
fn promote_to_float(t: &Tensor) -> std::borrow::Cow<'_, Tensor> {
    if t.dtype().is_float() {
        std::borrow::Cow::Borrowed(t)
    } else {
        std::borrow::Cow::Owned(Tensor::F32(t.to_f64_array().mapv(|v| v as f32)))
    }
}

pub fn add(cx: &KernelCx<'_>) -> KernelResult {
    arith(cx, Arith::Add)
}
pub fn sub(cx: &KernelCx<'_>) -> KernelResult {
    arith(cx, Arith::Sub)
}
pub fn mul(cx: &KernelCx<'_>) -> KernelResult {
    arith(cx, Arith::Mul)
}
pub fn div(cx: &KernelCx<'_>) -> KernelResult {
    arith(cx, Arith::Div)
}

/// Tensor ⊕ scalar: the scalar is rounded to the compute type first, as PyTorch wraps a Python
/// number into a tensor of the operand's type.
fn scalar_arith(cx: &KernelCx<'_>, op: Arith) -> KernelResult {
    let other = cx.float("other")?;
    let alpha = cx.opt_float("alpha").unwrap_or(1.0);
    let x = promote_to_float(cx.input(0));
    let half = matches!(x.dtype(), DType::F16 | DType::BF16);
    Ok(vec![float_map!(&*x, cx.out_dtype(0), |a: T| {
        let (s, alpha) = (other as T, alpha as T);
        match op {
            Arith::Add if alpha == 1.0 => par_mapv(a, |p| p + s),
            Arith::Add => par_mapv(a, |p| s.mul_add(alpha, p)),
            Arith::Sub if alpha == 1.0 => par_mapv(a, |p| p - s),
            Arith::Sub => par_mapv(a, |p| (-s).mul_add(alpha, p)),
            Arith::Mul => par_mapv(a, |p| p * s),
            // For reduced-precision tensors PyTorch multiplies by the reciprocal of a scalar.
            Arith::Div if half => {
                let inv = 1.0 / s;
                par_mapv(a, |p| p * inv)
            }
            Arith::Div => par_mapv(a, |p| p / s),
        }
    })?])
}

pub fn add_scalar(cx: &KernelCx<'_>) -> KernelResult {
    scalar_arith(cx, Arith::Add)
}
pub fn sub_scalar(cx: &KernelCx<'_>) -> KernelResult {
    scalar_arith(cx, Arith::Sub)
}
pub fn mul_scalar(cx: &KernelCx<'_>) -> KernelResult {
    scalar_arith(cx, Arith::Mul)
}
pub fn div_scalar(cx: &KernelCx<'_>) -> KernelResult {
    scalar_arith(cx, Arith::Div)
}
