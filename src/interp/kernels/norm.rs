//! Normalisation: batch_norm, layer_norm, group_norm, with the operation order of PyTorch's CPU
//! kernels. Inference batch_norm computes per-channel `alpha = w·(1 / sqrt(var + eps))` in the
//! input's type, then `beta = b − mean·alpha` and `x·alpha + beta`, each one FMA as in ATen's
//! AVX2/AVX-512 kernels (compiled with FMA contraction): bit-exact with torch 2.15 on x86-64 for
//! f32 and f64 (`tests/batch_norm.rs`). A PyTorch without FMA (`ATEN_CPU_CAPABILITY=default`,
//! non-x86 builds) rounds those two steps twice and differs by up to a few hundred ulps on outputs
//! near zero.
//!
//! # Training-mode batch_norm
//!
//! With `training = true` the input is normalised by its own per-channel statistics over every
//! dim but 1, bit for bit as ATen's CPU kernels compute them for contiguous float32 and float64
//! inputs (`batch_norm_cpu_collect_stats_kernel`, `batch_norm_cpu_update_stats_template`,
//! `batch_norm_cpu_kernel`), measured against torch 2.15 on x86-64:
//! * The mean and the sum of squared deviations from it are reduced in one of two orders. With
//!   spatial elements (`[N, C, H, W]`, `[N, C, L]`) each channel is summed in f64, in memory order:
//!   the mean is the f64 sum over the count, rounded to the input type; each squared deviation of
//!   an f32 input is rounded to f32 before it is added (f64: see `add_plane_squares`). Without
//!   (`[N, C]`, `[N, C, 1, 1]`) the rows are added in the input's own type, the squares with one
//!   FMA each, and the mean is that sum divided in f64.
//! * The biased variance is `var_sum / count` in the input type, then `1 / sqrt(var + eps)` in
//!   f64, rounded to the input type. (`eps` must be positive, as `F.batch_norm` requires.)
//! * `alpha = invstd·w`, `beta = b − mean·alpha`, and `x·alpha + beta`, the last two each one
//!   FMA: ATen's AVX2 and AVX-512 kernels are compiled with FMA contraction.
//!
//! The running statistics are not results of the op; [`batch_norm_training_update`] computes
//! them from the same statistics, for the calibration pass.
//!
//! What is not matched: PyTorch running on more than one thread reduces an input without
//! spatial elements in per-thread blocks (qc matches `torch.set_num_threads(1)`, the convention
//! of every fixture generator); a PyTorch built without FMA (see above); f16 and bf16 inputs are
//! computed in f32 and rounded (PyTorch's reduced-precision kernels accumulate differently).

use ndarray::{ArrayD, ArrayViewD};
use rayon::prelude::*;

use super::{
    as_f32, float_array_as, float_map, from_f32, par_chunks_mut, row_folds, KernelCx, KernelResult, PAR_CHUNK,
    ROWS_AT_ONCE,
};
use crate::ir::DType;
use crate::ops::AttrAccess;
use crate::tensor::{FromF64, Tensor};

pub fn batch_norm(cx: &KernelCx<'_>) -> KernelResult {
    if cx.boolean("training")? {
        return batch_norm_training(cx);
    }
    let eps = cx.float("eps")?;
    let x = cx.input(0);
    Ok(vec![float_map!(x, cx.out_dtype(0), |a: T| {
        let [weight, bias, mean, var] = [1, 2, 3, 4].map(|i| float_array_as::<T>(cx.input(i)));
        let (weight, bias, mean, var) = (weight?, bias?, mean?, var?);
        let channels = a.shape()[1];
        let alpha: Vec<T> = (0..channels).map(|c| weight[[c]] * (1.0 / (var[[c]] + eps as T).sqrt())).collect();
        let beta: Vec<T> = (0..channels).map(|c| (-mean[[c]]).mul_add(alpha[c], bias[[c]])).collect();
        // Each channel plane of `[N, C, ...]` by one thread, planes in parallel.
        let a = a.as_standard_layout();
        let src = a.as_slice().ok_or("input not contiguous")?;
        let inner = a.shape()[2..].iter().product::<usize>().max(1);
        let mut out: Vec<T> = vec![0.0; src.len()];
        par_chunks_mut(&mut out, inner, |i, plane| {
            fused_affine(plane, &src[i * inner..], alpha[i % channels], beta[i % channels]);
        });
        ArrayD::from_shape_vec(a.raw_dim(), out).map_err(|e| e.to_string())?
    })?])
}

/// Training-mode batch_norm: the input normalised by its own batch statistics (see the module
/// documentation for the arithmetic).
fn batch_norm_training(cx: &KernelCx<'_>) -> KernelResult {
    let eps = cx.float("eps")?;
    // As `F.batch_norm` (ATen alone would take 0 and give a constant channel invstd 0).
    if eps.is_nan() || eps <= 0.0 {
        return Err(format!("training-mode batch_norm needs a positive `eps`, found {eps}"));
    }
    Ok(vec![float_map!(cx.input(0), cx.out_dtype(0), |a: T| {
        let a = a.as_standard_layout();
        let src = a.as_slice().ok_or("input not contiguous")?;
        let layout = BatchLayout::of(a.shape())?;
        let stats = batch_stats(src, layout);
        let [weight, bias] = [1, 2].map(|i| channel_vector::<T>(cx.input(i), layout.channels));
        let (weight, bias) = (weight?, bias?);
        let (alpha, beta): (Vec<T>, Vec<T>) = (0..layout.channels)
            .map(|c| {
                let alpha = stats.invstd(c, eps) * weight[c];
                (alpha, (-stats.mean[c]).mul_add(alpha, bias[c]))
            })
            .unzip();
        let mut out: Vec<T> = vec![0.0; src.len()];
        // Each channel plane of `[N, C, ...]` by one thread, planes in parallel.
        par_chunks_mut(&mut out, layout.inner, |i, plane| {
            let c = i % layout.channels;
            fused_affine(plane, &src[i * layout.inner..], alpha[c], beta[c]);
        });
        ArrayD::from_shape_vec(a.raw_dim(), out).map_err(|e| e.to_string())?
    })?])
}

/// The running statistics PyTorch holds after a train-mode forward of batch_norm on `input`:
/// `(new_running_mean, new_running_var)`, each of the dtype and shape of the old one.
///
/// `new_mean = momentum·batch_mean + (1 − momentum)·running_mean`, with `momentum` rounded to
/// the input's type and every step rounded in it; `new_var = momentum·unbiased + (1 −
/// momentum)·running_var`, where `unbiased = var_sum / (count − 1)` is computed in the input's
/// type and the sum is taken in f64 (ATen's `accscalar_t`), its last term the product
/// `(1 − momentum)·running_var` rounded in the input's type. The batch statistics are those the
/// training-mode kernel normalises by (one implementation of both). For PyTorch's
/// `momentum=None` (a cumulative average), pass `1 / num_batches_tracked`, as PyTorch does.
///
/// Errors: an input of rank < 2, one value per channel or none (PyTorch's `F.batch_norm`
/// refuses one with "Expected more than 1 value per channel when training"; ATen alone would
/// store NaN, `0/0`, as the running variance), running statistics that are not vectors of the
/// channel count, or whose dtype differs from the input's (f16/bf16 inputs may have f32
/// statistics, as PyTorch's mixed-type kernels allow).
pub fn batch_norm_training_update(
    input: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
) -> Result<(Tensor, Tensor), String> {
    for stat in [running_mean, running_var] {
        let mixed = matches!(input.dtype(), DType::F16 | DType::BF16) && stat.dtype() == DType::F32;
        if stat.dtype() != input.dtype() && !mixed {
            return Err(format!("the running statistics are {} but the input is {}", stat.dtype(), input.dtype()));
        }
    }
    match input {
        Tensor::F64(x) => update_running_stats::<f64>(x.view(), running_mean, running_var, momentum),
        other => update_running_stats::<f32>(as_f32(other)?.view(), running_mean, running_var, momentum),
    }
}

fn update_running_stats<T: BatchFloat>(
    x: ArrayViewD<'_, T>,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
) -> Result<(Tensor, Tensor), String> {
    let x = x.as_standard_layout();
    let src = x.as_slice().ok_or("input not contiguous")?;
    let layout = BatchLayout::of(x.shape())?;
    let stats = batch_stats(src, layout);
    let old_mean = channel_vector::<T>(running_mean, layout.channels)?;
    let old_var = channel_vector::<T>(running_var, layout.channels)?;
    // ATen: `momentum_ = static_cast<param_t>(momentum)`; `1 - momentum_` in that type.
    let momentum = T::from_f64(momentum);
    let keep = T::one() - momentum;
    let unbiased_count = T::from_f64((layout.count - 1) as f64);
    let new_mean: Vec<T> = stats.mean.iter().zip(&old_mean).map(|(&mean, &old)| momentum * mean + keep * old).collect();
    let new_var: Vec<T> = stats
        .var_sum
        .iter()
        .zip(&old_var)
        .map(|(&var_sum, &old)| {
            let unbiased = (var_sum / unbiased_count).widen();
            T::from_f64(momentum.widen() * unbiased + (keep * old).widen())
        })
        .collect();
    let shape = [layout.channels];
    let as_stat = |v: Vec<T>, like: &Tensor| {
        ArrayD::from_shape_vec(&shape[..], v).map(|a| T::to_tensor(a, like.dtype())).map_err(|e| e.to_string())
    };
    Ok((as_stat(new_mean, running_mean)?, as_stat(new_var, running_var)?))
}

/// The float types training-mode batch_norm computes in, with the parts of ATen's arithmetic
/// that differ between them.
trait BatchFloat: num_traits::Float + FromF64 + Send + Sync + 'static {
    /// Exact widening to f64.
    fn widen(self) -> f64;

    /// `acc` plus the squared deviations from `mean` of one `[H·W]` plane, as ATen's
    /// `batch_norm_cpu_collect_stats_contiguous_impl` adds them to its f64 accumulator.
    fn add_plane_squares(acc: f64, plane: &[Self], mean: Self) -> f64;

    /// The tensor of `dtype` holding `a` (rounded when `dtype` is narrower).
    fn to_tensor(a: ArrayD<Self>, dtype: DType) -> Tensor;
}

impl BatchFloat for f32 {
    fn widen(self) -> f64 {
        f64::from(self)
    }

    fn add_plane_squares(acc: f64, plane: &[f32], mean: f32) -> f64 {
        // `(x - mean) * (x - mean)` is a float product, rounded before the f64 addition: no FMA.
        plane.iter().fold(acc, |acc, &x| acc + f64::from((x - mean) * (x - mean)))
    }

    fn to_tensor(a: ArrayD<f32>, dtype: DType) -> Tensor {
        from_f32(a, dtype)
    }
}

impl BatchFloat for f64 {
    fn widen(self) -> f64 {
        self
    }

    fn add_plane_squares(acc: f64, plane: &[f64], mean: f64) -> f64 {
        // GCC vectorises ATen's loop two doubles at a time, adding the lanes in order (the
        // products rounded), and finishes an odd plane with a scalar step it contracts into an
        // FMA: measured, all-FMA and no-FMA both disagree on odd planes.
        let (pairs, tail) = plane.split_at(plane.len() / 2 * 2);
        let acc = pairs.iter().fold(acc, |acc, &x| acc + (x - mean) * (x - mean));
        tail.iter().fold(acc, |acc, &x| (x - mean).mul_add(x - mean, acc))
    }

    fn to_tensor(a: ArrayD<f64>, dtype: DType) -> Tensor {
        Tensor::F64(a).cast(dtype)
    }
}

/// The geometry of a batch_norm input `[N, C, ...]`.
#[derive(Clone, Copy)]
struct BatchLayout {
    batch: usize,
    channels: usize,
    /// Elements of a channel plane: the product of the dims after 1.
    inner: usize,
    /// Values per channel: `N · inner`.
    count: usize,
}

impl BatchLayout {
    /// The layout of `shape`, which must have more than one value per channel.
    fn of(shape: &[usize]) -> Result<BatchLayout, String> {
        let [batch, channels, rest @ ..] = shape else {
            return Err(format!("training-mode batch_norm needs an input of rank at least 2, found {shape:?}"));
        };
        let inner: usize = rest.iter().product();
        let count = batch * inner;
        if count <= 1 || *channels == 0 {
            return Err(format!(
                "training-mode batch_norm needs more than one value per channel, found input shape {shape:?}"
            ));
        }
        Ok(BatchLayout { batch: *batch, channels: *channels, inner, count })
    }
}

/// Per-channel statistics of a batch: the mean and the sum of squared deviations from it.
struct BatchStats<T> {
    mean: Vec<T>,
    var_sum: Vec<T>,
    count: usize,
}

impl<T: BatchFloat> BatchStats<T> {
    /// `1 / sqrt(var + eps)` of channel `c` (ATen's `InvStd<accscalar_t>`, `eps > 0`): the
    /// biased variance divided in `T`, the rest in f64.
    fn invstd(&self, c: usize, eps: f64) -> T {
        let var = (self.var_sum[c] / T::from_f64(self.count as f64)).widen();
        T::from_f64(1.0 / (var + eps).sqrt())
    }
}

/// The batch statistics of the contiguous data `src` of `layout`, in ATen's order (see the
/// module documentation). Channels are independent, so splitting them across threads changes
/// nothing.
fn batch_stats<T: BatchFloat>(src: &[T], layout: BatchLayout) -> BatchStats<T> {
    let BatchLayout { batch, channels, inner, count } = layout;
    let n = count as f64;
    if inner == 1 {
        // `batch_norm_cpu_collect_stats_channels_last_impl`: rows of `C` added into one buffer
        // row in `T` (one row: PyTorch on one thread), then divided in f64.
        let mut sums = vec![T::zero(); channels];
        for row in src.chunks_exact(channels) {
            sums.iter_mut().zip(row).for_each(|(s, &x)| *s = *s + x);
        }
        let mean: Vec<T> = sums.iter().map(|s| T::from_f64(s.widen() / n)).collect();
        let mut var_sum = vec![T::zero(); channels];
        for row in src.chunks_exact(channels) {
            // `y + (x - mean) * (x - mean)`, contracted into an FMA.
            var_sum.iter_mut().zip(row.iter().zip(&mean)).for_each(|(s, (&x, &m))| *s = (x - m).mul_add(x - m, *s));
        }
        return BatchStats { mean, var_sum, count };
    }
    let channel = |c: usize| {
        let planes = || (0..batch).map(move |b| &src[(b * channels + c) * inner..][..inner]);
        let sum = planes().flatten().fold(0.0, |acc, &x| acc + x.widen());
        let mean = T::from_f64(sum / n);
        (mean, T::from_f64(planes().fold(0.0, |acc, plane| T::add_plane_squares(acc, plane, mean))))
    };
    let (mean, var_sum) = if src.len() >= 2 * PAR_CHUNK {
        (0..channels).into_par_iter().map(channel).unzip()
    } else {
        (0..channels).map(channel).unzip()
    };
    BatchStats { mean, var_sum, count }
}

/// A per-channel operand as `channels` values of `T`.
fn channel_vector<T: FromF64>(t: &Tensor, channels: usize) -> Result<Vec<T>, String> {
    if t.shape() != [channels] {
        return Err(format!("expected a vector of {channels} channels, found shape {:?}", t.shape()));
    }
    Ok(float_array_as::<T>(t)?.into_iter().collect())
}

/// `out = x·alpha + beta` over one plane, each element one FMA (as ATen's vectorised kernel,
/// contracted by the compiler).
fn fused_affine<T: num_traits::Float>(out: &mut [T], src: &[T], alpha: T, beta: T) {
    // `mul_add` is a call to libm's `fma` unless the code is compiled for FMA hardware; both
    // give the one correctly rounded result.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above.
        return unsafe { fused_affine_fma(out, src, alpha, beta) };
    }
    fused_affine_loop(out, src, alpha, beta);
}

/// [`fused_affine`] compiled with FMA instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fused_affine_fma<T: num_traits::Float>(out: &mut [T], src: &[T], alpha: T, beta: T) {
    fused_affine_loop(out, src, alpha, beta);
}

#[inline(always)]
fn fused_affine_loop<T: num_traits::Float>(out: &mut [T], src: &[T], alpha: T, beta: T) {
    out.iter_mut().zip(src).for_each(|(o, &x)| *o = x.mul_add(alpha, beta));
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

fn group_norm_impl<T: num_traits::Float + FromF64 + 'static>(
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
