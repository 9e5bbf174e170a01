//! The fold arithmetic: PyTorch's `fuse_conv_bn_weights` / `fuse_linear_bn_weights`
//! (`torch.nn.utils.fusion`), operation by operation, so the results are bit-identical to
//! PT2E's. Both folding passes use it: `fuse-conv-bn` on inference batch norms,
//! `fold-conv-bn-qat` on converted QAT graphs.
//!
//! With `r = 1 / sqrt(running_var + eps)` and `s = γ · r`: `W' = W · s` per output channel; a
//! conv's bias `b' = ((b − running_mean) · r) · γ + β`, a linear's
//! `b' = (b − running_mean) · s + β`; a missing bias is zeros. Each operation is rounded to the
//! parameters' element type (f32 or f64); `eps` is rounded to that type before the add (a
//! Python scalar added to a tensor).

use ndarray::{ArrayD, IxDyn};
use num_traits::Float;

use crate::tensor::FromF64;
use crate::tensor::Tensor;

/// The layer a batch norm folds into.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Layer {
    /// `conv1d`/`conv2d`: output channels on weight dim 0.
    Conv,
    /// `conv_transpose2d`: weight `[C_in, C_out/groups, …]`.
    ConvTranspose { groups: usize },
    /// `linear`: output features on weight dim 0; PT2E's linear bias formula.
    Linear,
}

/// The folded weight and bias, or why the tensors do not fit together.
pub(super) fn fold(
    layer: Layer,
    w: &Tensor,
    b: Option<&Tensor>,
    stats: &[Tensor; 4],
    eps: f64,
) -> Result<(Tensor, Tensor), String> {
    fn all<'a, T>(ts: &'a [Tensor; 4], f: impl Fn(&'a Tensor) -> Option<&'a ArrayD<T>>) -> Option<[&'a ArrayD<T>; 4]> {
        Some([f(&ts[0])?, f(&ts[1])?, f(&ts[2])?, f(&ts[3])?])
    }
    let mismatch = || "its parameters do not share one element type".to_string();
    match w {
        Tensor::F32(w) => {
            let b = b.map(|b| if let Tensor::F32(b) = b { Some(b) } else { None }).map(|b| b.ok_or_else(mismatch));
            let stats = all(stats, |t| if let Tensor::F32(a) = t { Some(a) } else { None }).ok_or_else(mismatch)?;
            // `eps` as PyTorch adds it to a tensor: rounded to the tensor's element type first.
            let (w, b) = fold_arrays(layer, w, b.transpose()?, stats, f32::from_f64(eps))?;
            Ok((Tensor::F32(w), Tensor::F32(b)))
        }
        Tensor::F64(w) => {
            let b = b.map(|b| if let Tensor::F64(b) = b { Some(b) } else { None }).map(|b| b.ok_or_else(mismatch));
            let stats = all(stats, |t| if let Tensor::F64(a) = t { Some(a) } else { None }).ok_or_else(mismatch)?;
            let (w, b) = fold_arrays(layer, w, b.transpose()?, stats, f64::from_f64(eps))?;
            Ok((Tensor::F64(w), Tensor::F64(b)))
        }
        other => Err(format!("its weight is {}; folding is implemented for f32 and f64", other.dtype())),
    }
}

/// PyTorch's `fuse_conv_bn_weights` / `fuse_linear_bn_weights`, operation by operation.
fn fold_arrays<T: Float + FromF64>(
    layer: Layer,
    w: &ArrayD<T>,
    b: Option<&ArrayD<T>>,
    [gamma, beta, mean, var]: [&ArrayD<T>; 4],
    eps: T,
) -> Result<(ArrayD<T>, ArrayD<T>), String> {
    let shape = w.shape();
    let channels = gamma.len();
    // Output channel of the weight element at row-major index `i`.
    let (block, per_group, group_block) = match layer {
        Layer::Conv | Layer::Linear => (shape.iter().skip(1).product::<usize>(), 0, 0),
        Layer::ConvTranspose { groups } => {
            let kernel: usize = shape.iter().skip(2).product();
            let per_group = shape.get(1).copied().unwrap_or(0);
            (kernel, per_group, (shape.first().copied().unwrap_or(0) / groups.max(1)).max(1))
        }
    };
    let out_channels = match layer {
        Layer::Conv | Layer::Linear => shape.first().copied().unwrap_or(0),
        Layer::ConvTranspose { groups } => shape.get(1).copied().unwrap_or(0) * groups,
    };
    let lens = [gamma.len(), beta.len(), mean.len(), var.len(), b.map_or(channels, |b| b.len())];
    if out_channels != channels || lens.iter().any(|&n| n != channels) {
        return Err(format!(
            "the layer has {out_channels} output channels but its bias and batch_norm parameters have {lens:?} elements"
        ));
    }
    let channel = |i: usize| -> usize {
        let i = i / block.max(1);
        match layer {
            Layer::Conv | Layer::Linear => i,
            // i = ci · per_group + c, and input channel ci belongs to group ci / group_block.
            Layer::ConvTranspose { .. } => (i / per_group.max(1)) / group_block * per_group + i % per_group.max(1),
        }
    };
    let (gamma, beta, mean, var) = (flat(gamma), flat(beta), flat(mean), flat(var));
    // torch.rsqrt(bn_rv + bn_eps): the scalar is rounded to T, then IEEE sqrt and divide.
    let rsqrt: Vec<T> = var.iter().map(|&v| T::one() / (v + eps).sqrt()).collect();
    // (bn_w * bn_var_rsqrt)
    let scale: Vec<T> = gamma.iter().zip(&rsqrt).map(|(&g, &r)| g * r).collect();
    let mut data = Vec::with_capacity(w.len());
    for (i, &x) in w.iter().enumerate() {
        let s = scale.get(channel(i)).ok_or("a weight element has no output channel")?;
        data.push(x * *s);
    }
    let weight = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| e.to_string())?;
    // conv_b = zeros_like(bn_rm) when absent.
    let b: Vec<T> = b.map_or_else(|| vec![T::zero(); channels], flat);
    let bias: Vec<T> = (0..channels)
        .map(|c| match layer {
            // (linear_b - bn_rm) * bn_scale + bn_b
            Layer::Linear => (b[c] - mean[c]) * scale[c] + beta[c],
            // (conv_b - bn_rm) * bn_var_rsqrt * bn_w + bn_b
            Layer::Conv | Layer::ConvTranspose { .. } => (b[c] - mean[c]) * rsqrt[c] * gamma[c] + beta[c],
        })
        .collect();
    let bias = ArrayD::from_shape_vec(IxDyn(&[channels]), bias).map_err(|e| e.to_string())?;
    Ok((weight, bias))
}

fn flat<T: Copy>(a: &ArrayD<T>) -> Vec<T> {
    a.iter().copied().collect()
}
