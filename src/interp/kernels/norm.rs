//! Normalisation: batch_norm (inference), layer_norm, group_norm, with the operation order of
//! PyTorch's CPU kernels (per-channel `alpha = w / sqrt(var + eps)`, `beta = b - mean·alpha`,
//! then `x·alpha + beta`).

use ndarray::{ArrayD, ArrayViewD};

use super::{float_array_as, float_map, par_chunks_mut, row_folds, KernelCx, KernelResult, ROWS_AT_ONCE};
use crate::ops::AttrAccess;

pub fn batch_norm(cx: &KernelCx<'_>) -> KernelResult {
    if cx.boolean("training")? {
        return Err("training-mode batch_norm is not implemented yet".into());
    }
    let eps = cx.float("eps")?;
    let x = cx.input(0);
    Ok(vec![float_map!(x, cx.out_dtype(0), |a: T| {
        let [weight, bias, mean, var] = [1, 2, 3, 4].map(|i| float_array_as::<T>(cx.input(i)));
        let (weight, bias, mean, var) = (weight?, bias?, mean?, var?);
        let channels = a.shape()[1];
        let alpha: Vec<T> = (0..channels).map(|c| weight[[c]] * (1.0 / (var[[c]] + eps as T).sqrt())).collect();
        let beta: Vec<T> = (0..channels).map(|c| bias[[c]] - mean[[c]] * alpha[c]).collect();
        // Each channel plane of `[N, C, ...]` by one thread, planes in parallel.
        let a = a.as_standard_layout();
        let src = a.as_slice().ok_or("input not contiguous")?;
        let inner = a.shape()[2..].iter().product::<usize>().max(1);
        let mut out: Vec<T> = vec![0.0; src.len()];
        par_chunks_mut(&mut out, inner, |i, plane| {
            let (alpha, beta) = (alpha[i % channels], beta[i % channels]);
            plane.iter_mut().zip(&src[i * inner..]).for_each(|(v, &x)| *v = x * alpha + beta);
        });
        ArrayD::from_shape_vec(a.raw_dim(), out).map_err(|e| e.to_string())?
    })?])
}

/// Mean and `1/sqrt(var + eps)` (biased variance) of each `len`-element row of `data`.
fn row_moments<T: num_traits::Float>(data: &[T], len: usize, eps: T) -> Vec<(T, T)> {
    let len = len.max(1);
    let n = T::from(len).unwrap_or_else(T::one);
    let rows = vec![(); data.len() / len];
    let means: Vec<T> = row_folds(data, len, &rows, T::zero(), |s, v, ()| s + v).into_iter().map(|s| s / n).collect();
    let vars = row_folds(data, len, &means, T::zero(), |s, v, mean| s + (v - mean) * (v - mean));
    means.iter().zip(vars).map(|(&mean, var)| (mean, T::one() / ((var / n).max(T::zero()) + eps).sqrt())).collect()
}

pub fn layer_norm(cx: &KernelCx<'_>) -> KernelResult {
    let eps = cx.float("eps")?;
    let normalized: usize = cx.ints("normalized_shape")?.iter().map(|&d| d as usize).product();
    Ok(vec![float_map!(cx.input(0), cx.out_dtype(0), |a: T| {
        let gamma = cx.opt_input(1).map(float_array_as::<T>).transpose()?;
        let beta = cx.opt_input(2).map(float_array_as::<T>).transpose()?;
        let gamma = gamma.as_ref().map(|g| g.as_standard_layout().into_owned());
        let beta = beta.as_ref().map(|b| b.as_standard_layout().into_owned());
        let len = normalized.max(1);
        let (gamma, beta) = (affine(gamma.as_ref(), len)?, affine(beta.as_ref(), len)?);
        let mut out = a.as_standard_layout().into_owned();
        if let Some(data) = out.as_slice_mut() {
            // Groups of rows in parallel, each normalised by one thread.
            par_chunks_mut(data, ROWS_AT_ONCE * len, |_, rows| {
                let moments = row_moments(rows, len, eps as T);
                for (row, (mean, rstd)) in rows.chunks_mut(len).zip(moments) {
                    let shift = -rstd * mean;
                    let normal = |v: T| v * rstd + shift;
                    match (gamma, beta) {
                        (Some(g), Some(b)) => {
                            row.iter_mut().zip(g.iter().zip(b)).for_each(|(v, (&g, &b))| *v = normal(*v) * g + b)
                        }
                        (Some(g), None) => row.iter_mut().zip(g).for_each(|(v, &g)| *v = normal(*v) * g),
                        (None, Some(b)) => row.iter_mut().zip(b).for_each(|(v, &b)| *v = normal(*v) + b),
                        (None, None) => row.iter_mut().for_each(|v| *v = normal(*v)),
                    }
                }
            });
        }
        out
    })?])
}

/// A layer norm's weight or bias as a slice of the `len` normalised elements.
fn affine<T>(t: Option<&ArrayD<T>>, len: usize) -> Result<Option<&[T]>, String> {
    match t.map(|t| t.as_slice()) {
        Some(Some(s)) if s.len() == len => Ok(Some(s)),
        Some(_) => Err(format!("the weight and bias must have {len} contiguous elements")),
        None => Ok(None),
    }
}

pub fn group_norm(cx: &KernelCx<'_>) -> KernelResult {
    let eps = cx.float("eps")?;
    let groups = usize::try_from(cx.int("num_groups")?).map_err(|_| "`num_groups` must be positive")?;
    Ok(vec![float_map!(cx.input(0), cx.out_dtype(0), |a: T| group_norm_impl(a, groups, eps as T, cx)?)?])
}

fn group_norm_impl<T: num_traits::Float + super::FromF64 + 'static>(
    a: ArrayViewD<'_, T>,
    groups: usize,
    eps: T,
    cx: &KernelCx<'_>,
) -> Result<ArrayD<T>, String> {
    let gamma = cx.opt_input(1).map(float_array_as::<T>).transpose()?;
    let beta = cx.opt_input(2).map(float_array_as::<T>).transpose()?;
    let (n, c) = (a.shape()[0], a.shape()[1]);
    let inner: usize = a.shape()[2..].iter().product();
    let per_group = c / groups * inner;
    let mut out = a.as_standard_layout().into_owned();
    let data = out.as_slice_mut().ok_or("not contiguous")?;
    let moments = row_moments(data, per_group, eps);
    for (g, (chunk, (mean, rstd))) in data.chunks_mut(per_group.max(1)).zip(moments).enumerate().take(n * groups) {
        for (i, v) in chunk.iter_mut().enumerate() {
            let ch = (g % groups) * (c / groups) + i / inner.max(1);
            let scale = gamma.as_ref().map_or(rstd, |w| rstd * w[[ch]]);
            let shift = -scale * mean + beta.as_ref().map_or(T::zero(), |b| b[[ch]]);
            *v = *v * scale + shift;
        }
    }
    Ok(out)
}
