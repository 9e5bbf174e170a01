//! Reductions: softmax, log-softmax, mean, sum.

use ndarray::{ArrayD, ArrayViewD, Axis};

use super::{dim, float_map, par_chunks_mut, row_folds, KernelCx, KernelResult, ROWS_AT_ONCE};
use crate::ops::AttrAccess;
use crate::tensor::Tensor;

/// Softmax along `axis`: `exp(x - max)` scaled by the reciprocal of its sum.
fn softmax_lanes<T: num_traits::Float + Send + Sync>(a: ArrayViewD<'_, T>, axis: usize, log: bool) -> ArrayD<T> {
    let mut out = a.as_standard_layout().into_owned();
    let lane_len = out.shape()[axis];
    if lane_len == 0 {
        return out;
    }
    if axis + 1 == out.ndim() {
        // The last axis: each lane is a contiguous row; groups of rows in parallel, each by
        // one thread.
        if let Some(data) = out.as_slice_mut() {
            par_chunks_mut(data, ROWS_AT_ONCE * lane_len, |_, rows| softmax_rows(rows, lane_len, log));
            return out;
        }
    }
    for mut lane in out.lanes_mut(Axis(axis)) {
        let mut row = lane.to_vec();
        softmax_rows(&mut row, lane_len, log);
        lane.iter_mut().zip(row).for_each(|(v, r)| *v = r);
    }
    out
}

/// Softmax of each `len`-element row of `rows`, in place.
fn softmax_rows<T: num_traits::Float>(rows: &mut [T], len: usize, log: bool) {
    let units = vec![(); rows.len() / len];
    let maxes = row_folds(rows, len, &units, T::neg_infinity(), |m, x, ()| if x > m || x.is_nan() { x } else { m });
    if log {
        let sums = row_folds(rows, len, &maxes, T::zero(), |s, x, max| s + (x - max).exp());
        for ((row, max), sum) in rows.chunks_mut(len).zip(maxes).zip(sums) {
            let log_sum = sum.ln();
            row.iter_mut().for_each(|x| *x = *x - max - log_sum);
        }
    } else {
        for (row, &max) in rows.chunks_mut(len).zip(&maxes) {
            row.iter_mut().for_each(|x| *x = (*x - max).exp());
        }
        let sums = row_folds(rows, len, &units, T::zero(), |s, x, ()| s + x);
        for (row, sum) in rows.chunks_mut(len).zip(sums) {
            let inv = T::one() / sum;
            row.iter_mut().for_each(|x| *x = *x * inv);
        }
    }
}

fn softmax_kernel(cx: &KernelCx<'_>, log: bool) -> KernelResult {
    let x = cx.input(0);
    let axis = dim(cx.int("dim")?, x.shape().len())?;
    if x.shape().is_empty() {
        return Ok(vec![float_map!(x, cx.out_dtype(0), |a: T| a.mapv(|_| if log { 0.0 } else { 1.0 }))?]);
    }
    Ok(vec![float_map!(x, cx.out_dtype(0), |a: T| softmax_lanes(a, axis, log))?])
}

pub fn softmax(cx: &KernelCx<'_>) -> KernelResult {
    softmax_kernel(cx, false)
}

pub fn log_softmax(cx: &KernelCx<'_>) -> KernelResult {
    softmax_kernel(cx, true)
}

/// The reduced axes (all for an empty list), sorted descending so removing them keeps the
/// remaining indices valid.
fn reduced_axes(cx: &KernelCx<'_>, rank: usize) -> Result<Vec<usize>, String> {
    let dims = cx.ints("dim")?;
    let mut axes = if dims.is_empty() {
        (0..rank).collect()
    } else {
        dims.iter().map(|&d| dim(d, rank)).collect::<Result<Vec<_>, _>>()?
    };
    axes.sort_unstable_by(|a, b| b.cmp(a));
    axes.dedup();
    Ok(axes)
}

/// Sums over `axes` one axis at a time, `collapse` summing out one axis.
fn sum_axes<T: Clone>(
    a: ArrayViewD<'_, T>,
    axes: &[usize],
    keepdim: bool,
    collapse: impl Fn(&ArrayD<T>, Axis) -> ArrayD<T>,
) -> ArrayD<T> {
    let mut out = a.to_owned();
    for &axis in axes {
        out = collapse(&out, Axis(axis));
        if keepdim {
            out.insert_axis_inplace(Axis(axis));
        }
    }
    out
}

pub fn sum(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let axes = reduced_axes(cx, x.shape().len())?;
    let keepdim = cx.boolean("keepdim")?;
    if !x.dtype().is_float() {
        // Integer and bool sums accumulate in i64, wrapping, as PyTorch's do.
        let wide: ArrayD<i64> = match x {
            Tensor::I64(a) => a.clone(),
            Tensor::Bool(a) => a.mapv(i64::from),
            other => other.to_f64_array().mapv(|v| v as i64),
        };
        let summed = sum_axes(wide.view(), &axes, keepdim, |a, axis| a.fold_axis(axis, 0, |&s, &v| s.wrapping_add(v)));
        return Ok(vec![cast_int(summed, cx.out_dtype(0))]);
    }
    Ok(vec![float_map!(x, cx.out_dtype(0), |a: T| sum_axes(a, &axes, keepdim, |a, axis| a.sum_axis(axis)))?])
}

pub fn mean(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let axes = reduced_axes(cx, x.shape().len())?;
    let keepdim = cx.boolean("keepdim")?;
    let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
    Ok(vec![float_map!(x, cx.out_dtype(0), |a: T| {
        let n = count as T;
        sum_axes(a, &axes, keepdim, |a, axis| a.sum_axis(axis)).mapv(|s| s / n)
    })?])
}

fn cast_int(a: ArrayD<i64>, dtype: crate::ir::DType) -> Tensor {
    use crate::ir::DType;
    match dtype {
        DType::I32 => Tensor::I32(a.mapv(|v| v as i32)),
        _ => Tensor::I64(a),
    }
}
