//! Normalisation: batch_norm (inference), layer_norm, group_norm, with the operation order of
//! PyTorch's CPU kernels (per-channel `alpha = w / sqrt(var + eps)`, `beta = b - mean·alpha`,
//! then `x·alpha + beta`).

use ndarray::{ArrayD, ArrayViewD};

use super::{float_array_as, float_map, par_chunks_mut, KernelCx, KernelResult};
use crate::ops::AttrAccess;

pub fn batch_norm(cx: &KernelCx<'_>) -> KernelResult {
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

/// Mean and `1/sqrt(var + eps)` (biased variance) of a slice.
fn moments<T: num_traits::Float>(values: &[T], eps: T) -> (T, T) {
    let n = T::from(values.len().max(1)).unwrap_or_else(T::one);
    let mean = values.iter().fold(T::zero(), |s, &v| s + v) / n;
    let var = values.iter().fold(T::zero(), |s, &v| s + (v - mean) * (v - mean)) / n;
    (mean, T::one() / (var.max(T::zero()) + eps).sqrt())
}

pub fn layer_norm(cx: &KernelCx<'_>) -> KernelResult {
    let eps = cx.float("eps")?;
    let normalized: usize = cx.ints("normalized_shape")?.iter().map(|&d| d as usize).product();
    Ok(vec![float_map!(cx.input(0), cx.out_dtype(0), |a: T| {
        let gamma = cx.opt_input(1).map(float_array_as::<T>).transpose()?;
        let beta = cx.opt_input(2).map(float_array_as::<T>).transpose()?;
        let gamma = gamma.as_ref().map(|g| g.as_standard_layout().into_owned());
        let beta = beta.as_ref().map(|b| b.as_standard_layout().into_owned());
        let mut out = a.as_standard_layout().into_owned();
        if let Some(data) = out.as_slice_mut() {
            // Rows in parallel: each row is normalised by one thread.
            par_chunks_mut(data, normalized.max(1), |_, row| {
                let (mean, rstd) = moments(row, eps as T);
                let shift = -rstd * mean;
                for (i, v) in row.iter_mut().enumerate() {
                    let y = *v * rstd + shift;
                    let y = match &gamma {
                        Some(g) => y * g.as_slice().map_or(1.0, |g| g[i]),
                        None => y,
                    };
                    *v = match &beta {
                        Some(b) => y + b.as_slice().map_or(0.0, |b| b[i]),
                        None => y,
                    };
                }
            });
        }
        out
    })?])
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
    for (g, chunk) in data.chunks_mut(per_group.max(1)).enumerate().take(n * groups) {
        let (mean, rstd) = moments(chunk, eps);
        for (i, v) in chunk.iter_mut().enumerate() {
            let ch = (g % groups) * (c / groups) + i / inner.max(1);
            let scale = gamma.as_ref().map_or(rstd, |w| rstd * w[[ch]]);
            let shift = -scale * mean + beta.as_ref().map_or(T::zero(), |b| b[[ch]]);
            *v = *v * scale + shift;
        }
    }
    Ok(out)
}
