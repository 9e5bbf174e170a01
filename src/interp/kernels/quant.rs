//! Quantization kernels, bit-exact with PyTorch's decomposed q/dq ops
//! (`quantized_decomposed.*`) and the fake-quantize kernel, and the integer requantization of
//! the reference representation.

use ndarray::{ArrayD, IxDyn};

use super::{as_f32, dim, from_f32, round_to, KernelCx, KernelResult};
use crate::ir::quant::QScheme;
use crate::ir::DType;
use crate::ops::AttrAccess;
use crate::quant::{
    calculate_qparams, dequantize_value, fake_quantize_value, float_to_int, inv_scale, quantize_value, QRange,
};
use crate::tensor::{map_channels, Tensor};

/// Float32 values (already rounded and clamped) → a tensor of the quantized `dtype`.
fn to_int_tensor(q: ArrayD<f32>, dtype: DType) -> Result<Tensor, String> {
    let cast = |v: f32| float_to_int(v, dtype);
    Ok(match dtype {
        DType::I8 => Tensor::I8(q.mapv(|v| cast(v) as i8)),
        DType::U8 => Tensor::U8(q.mapv(|v| cast(v) as u8)),
        DType::I16 => Tensor::I16(q.mapv(|v| cast(v) as i16)),
        DType::I32 => Tensor::I32(q.mapv(|v| cast(v) as i32)),
        DType::I64 => Tensor::I64(q.mapv(cast)),
        other => return Err(format!("cannot quantize to {other}")),
    })
}

/// Integer tensor elements widened to i64.
fn int_values(t: &Tensor) -> Result<ArrayD<i64>, String> {
    Ok(match t {
        Tensor::I8(a) => a.mapv(i64::from),
        Tensor::U8(a) => a.mapv(i64::from),
        Tensor::I16(a) => a.mapv(i64::from),
        Tensor::I32(a) => a.mapv(i64::from),
        Tensor::I64(a) => a.clone(),
        other => return Err(format!("expected an integer tensor, found {}", other.dtype())),
    })
}

fn quantize(cx: &KernelCx<'_>, x: &Tensor, scale: f64, zero_point: i64) -> KernelResult {
    let (qmin, qmax, dtype) = (cx.int("qmin")?, cx.int("qmax")?, cx.dtype("dtype")?);
    let inv = inv_scale(scale);
    let q = as_f32(x)?.mapv(|v| quantize_value(v, inv, zero_point, qmin, qmax));
    Ok(vec![to_int_tensor(q, dtype)?])
}

/// `(q - zp)·scale`, each step rounded to `out_dtype` (exact steps for f32).
fn dequantize(cx: &KernelCx<'_>, q: &Tensor, scale: f64, zero_point: i64) -> KernelResult {
    let (dtype, out) = (cx.dtype("dtype")?, cx.dtype("out_dtype")?);
    if q.dtype() != dtype {
        return Err(format!("the input is {} but `dtype` is {dtype}", q.dtype()));
    }
    let values = int_values(q)?;
    let scale = scale as f32;
    let result = match out {
        DType::F32 | DType::F64 => values.mapv(|v| dequantize_value(v, zero_point, scale)),
        _ => values.mapv(|v| round_to(round_to(v as f32 - zero_point as f32, out) * scale, out)),
    };
    Ok(vec![from_f32(result, out)])
}

pub fn quantize_per_tensor(cx: &KernelCx<'_>) -> KernelResult {
    quantize(cx, cx.input(0), cx.float("scale")?, cx.int("zero_point")?)
}

pub fn dequantize_per_tensor(cx: &KernelCx<'_>) -> KernelResult {
    dequantize(cx, cx.input(0), cx.float("scale")?, cx.int("zero_point")?)
}

/// Scale and zero point from one-element tensors (the `.tensor` overloads).
fn tensor_qparams(cx: &KernelCx<'_>) -> Result<(f64, i64), String> {
    let scale = cx.input(1).to_f64_array().iter().next().copied().ok_or("`scale` is empty")?;
    let zero_point = int_values(cx.input(2))?.iter().next().copied().ok_or("`zero_point` is empty")?;
    Ok((scale, zero_point))
}

pub fn quantize_per_tensor_dyn(cx: &KernelCx<'_>) -> KernelResult {
    let (scale, zero_point) = tensor_qparams(cx)?;
    quantize(cx, cx.input(0), scale, zero_point)
}

pub fn dequantize_per_tensor_dyn(cx: &KernelCx<'_>) -> KernelResult {
    let (scale, zero_point) = tensor_qparams(cx)?;
    dequantize(cx, cx.input(0), scale, zero_point)
}

/// The `axis` attribute and the number of channels of the input along it.
fn channel_axis(cx: &KernelCx<'_>) -> Result<(usize, usize), String> {
    let x = cx.input(0);
    let axis = dim(cx.int("axis")?, x.shape().len())?;
    Ok((axis, x.shape().get(axis).copied().unwrap_or(1)))
}

/// Per-channel scales (as float32) and zero points along `axis`.
fn channel_qparams(cx: &KernelCx<'_>) -> Result<(usize, Vec<f32>, Vec<i64>), String> {
    let (axis, channels) = channel_axis(cx)?;
    let scales: Vec<f32> = cx.input(1).to_f64_array().iter().map(|&s| s as f32).collect();
    let zps: Vec<i64> = match cx.input(2) {
        t if t.dtype().is_float() => t.to_f64_array().iter().map(|&z| z as i64).collect(),
        t => int_values(t)?.iter().copied().collect(),
    };
    if scales.len() != channels || zps.len() != channels {
        return Err(format!("{} scales and {} zero points for {channels} channels", scales.len(), zps.len()));
    }
    Ok((axis, scales, zps))
}

pub fn quantize_per_channel(cx: &KernelCx<'_>) -> KernelResult {
    let (axis, scales, zps) = channel_qparams(cx)?;
    let (qmin, qmax, dtype) = (cx.int("qmin")?, cx.int("qmax")?, cx.dtype("dtype")?);
    // `1.0 / scales` is a float32 reciprocal tensor.
    let inv: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
    let x = as_f32(cx.input(0))?;
    let q = map_channels(x.view(), axis, |c, v| quantize_value(v, inv[c], zps[c], qmin, qmax));
    Ok(vec![to_int_tensor(q, dtype)?])
}

pub fn dequantize_per_channel(cx: &KernelCx<'_>) -> KernelResult {
    let (axis, scales, zps) = channel_qparams(cx)?;
    let dtype = cx.dtype("dtype")?;
    if cx.input(0).dtype() != dtype {
        return Err(format!("the input is {} but `dtype` is {dtype}", cx.input(0).dtype()));
    }
    let values = int_values(cx.input(0))?;
    // (q - zp) in int64, then × float32 scale.
    let out = map_channels(values.view(), axis, |c, v| (v - zps[c]) as f32 * scales[c]);
    Ok(vec![from_f32(out, cx.dtype("out_dtype")?)])
}

/// One element of `requantize`: `clamp(round_half_even(x·scale) + zero_point, qmin, qmax)`
/// with the product in f64. For a product in i32's range the f64 product is within 2^-22 of
/// the exact one, so the result can only differ from exact rounding at a near-tie that the
/// multiplier (itself an f64 rounding of a ratio of scales) cannot resolve anyway.
fn requantize_value(x: i64, scale: f64, zero_point: i64, qmin: i64, qmax: i64) -> i64 {
    // `as` saturates, so an out-of-range product clamps instead of wrapping.
    ((x as f64 * scale).round_ties_even() as i64).saturating_add(zero_point).max(qmin).min(qmax)
}

/// The requantized values (already in `[qmin, qmax]`) as a tensor of `dtype`.
fn requantized(cx: &KernelCx<'_>, values: ArrayD<i64>) -> KernelResult {
    Ok(vec![Tensor::I64(values).cast(cx.dtype("dtype")?)])
}

pub fn requantize(cx: &KernelCx<'_>) -> KernelResult {
    let scale = cx.float("scale")?;
    let (zp, qmin, qmax) = (cx.int("zero_point")?, cx.int("qmin")?, cx.int("qmax")?);
    requantized(cx, int_values(cx.input(0))?.mapv(|x| requantize_value(x, scale, zp, qmin, qmax)))
}

pub fn requantize_per_channel(cx: &KernelCx<'_>) -> KernelResult {
    let (axis, channels) = channel_axis(cx)?;
    let scales: Vec<f64> = cx.input(1).to_f64_array().iter().copied().collect();
    if scales.len() != channels {
        return Err(format!("{} scales for {channels} channels", scales.len()));
    }
    let (zp, qmin, qmax) = (cx.int("zero_point")?, cx.int("qmin")?, cx.int("qmax")?);
    let values = int_values(cx.input(0))?;
    requantized(cx, map_channels(values.view(), axis, |c, x| requantize_value(x, scales[c], zp, qmin, qmax)))
}

/// Dynamic qparams of the whole input (`choose_qparams.tensor`): min/max → scale (f64[1]) and
/// zero point (i64[1]) by the default-range formula.
pub fn choose_qparams(cx: &KernelCx<'_>) -> KernelResult {
    let x = as_f32(cx.input(0))?;
    if x.is_empty() {
        return Err("cannot choose qparams of an empty tensor".into());
    }
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let scheme = if cx.boolean("symmetric")? { QScheme::PerTensorSymmetric } else { QScheme::PerTensorAffine };
    let range = QRange {
        qmin: cx.int("qmin")?,
        qmax: cx.int("qmax")?,
        qscheme: scheme,
        dtype: cx.dtype("dtype")?,
        eps: cx.float("eps")? as f32,
        customized_range: false,
    };
    let (scale, zero_point) = calculate_qparams(lo, hi, &range);
    Ok(vec![
        Tensor::F64(ArrayD::from_elem(IxDyn(&[1]), f64::from(scale))),
        Tensor::I64(ArrayD::from_elem(IxDyn(&[1]), zero_point)),
    ])
}

pub fn fake_quantize_per_tensor(cx: &KernelCx<'_>) -> KernelResult {
    let scale = cx.float("scale")? as f32;
    let (zp, qmin, qmax) = (cx.int("zero_point")?, cx.int("qmin")?, cx.int("qmax")?);
    let inv = 1.0 / scale;
    let out = as_f32(cx.input(0))?.mapv(|v| fake_quantize_value(v, inv, scale, zp, qmin, qmax));
    Ok(vec![from_f32(out, cx.out_dtype(0))])
}

pub fn fake_quantize_per_channel(cx: &KernelCx<'_>) -> KernelResult {
    let (axis, scales, zps) = channel_qparams(cx)?;
    let (qmin, qmax) = (cx.int("qmin")?, cx.int("qmax")?);
    let x = as_f32(cx.input(0))?;
    let out =
        map_channels(x.view(), axis, |c, v| fake_quantize_value(v, 1.0 / scales[c], scales[c], zps[c], qmin, qmax));
    Ok(vec![from_f32(out, cx.out_dtype(0))])
}

#[cfg(test)]
mod tests {
    use super::requantize_value;

    #[test]
    fn requantize_rounds_half_to_even_then_clamps() {
        let at_half = |x| requantize_value(x, 0.5, 0, -128, 127);
        assert_eq!([3, 5, -3, -5, 4].map(at_half), [2, 2, -2, -2, 2]);
        assert_eq!(requantize_value(-7, 1.0, 10, 0, 255), 3);
        assert_eq!(requantize_value(1000, 1.0, 0, -128, 127), 127);
        // Out-of-range products saturate rather than wrap.
        assert_eq!(requantize_value(i64::MAX, 1e30, 5, i64::MIN, i64::MAX), i64::MAX);
        assert_eq!(requantize_value(i32::MIN.into(), 1e30, 0, -128, 127), -128);
    }
}
