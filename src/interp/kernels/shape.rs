//! Constants, weights and data movement: bit-exact by construction.

use ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::{dim, KernelCx, KernelResult};
use crate::ops::AttrAccess;
use crate::tensor::{LayoutFn, Tensor};

pub fn constant(cx: &KernelCx<'_>) -> KernelResult {
    let value = cx.attr("value").and_then(|a| a.as_tensor()).ok_or("`const` has no value")?;
    Ok(vec![value.clone()])
}

pub fn weight(cx: &KernelCx<'_>) -> KernelResult {
    let key = cx.string("key")?;
    Ok(vec![cx.weights.tensor(&key)?])
}

/// Identity (contiguous, dropout at inference, observers).
pub fn identity(cx: &KernelCx<'_>) -> KernelResult {
    Ok(vec![cx.input(0).clone()])
}

pub fn zeros_like(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    Ok(vec![Tensor::zeros(x.dtype(), x.shape())])
}

/// `.to(dtype)`; see [`Tensor::cast`].
pub fn convert_element_type(cx: &KernelCx<'_>) -> KernelResult {
    Ok(vec![cx.input(0).cast(cx.dtype("dtype")?)])
}

/// Row-major reshape to a fully known shape.
struct Reshape(Vec<usize>);
impl LayoutFn for Reshape {
    fn apply<T: Clone>(&self, a: &ArrayD<T>) -> Result<ArrayD<T>, String> {
        let v = a.as_standard_layout();
        v.to_shape(IxDyn(&self.0))
            .map(|c| c.into_owned())
            .map_err(|e| format!("cannot reshape {:?} to {:?}: {e}", a.shape(), self.0))
    }
}

/// Resolves a `-1` in a target shape against `numel`.
fn resolve_shape(target: &[i64], numel: usize) -> Result<Vec<usize>, String> {
    let known = target
        .iter()
        .filter(|&&d| d >= 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
        .ok_or_else(|| format!("the shape {target:?} has more elements than memory can address"))?;
    target
        .iter()
        .map(|&d| match d {
            -1 if known != 0 && numel % known == 0 => Ok(numel / known),
            -1 => Err(format!("cannot infer -1 in {target:?} for {numel} elements")),
            d if d >= 0 => Ok(d as usize),
            d => Err(format!("invalid size {d}")),
        })
        .collect()
}

pub fn reshape(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let shape = resolve_shape(&cx.ints("shape")?, x.len())?;
    Ok(vec![x.map_layout(Reshape(shape))?])
}

pub fn flatten(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let s = x.shape();
    if s.is_empty() {
        return Ok(vec![x.map_layout(Reshape(vec![1]))?]);
    }
    let (start, end) = (dim(cx.int("start_dim")?, s.len())?, dim(cx.int("end_dim")?, s.len())?);
    let mut shape = s[..start].to_vec();
    shape.push(s[start..=end].iter().product());
    shape.extend_from_slice(&s[end + 1..]);
    Ok(vec![x.map_layout(Reshape(shape))?])
}

struct Permute(Vec<usize>);
impl LayoutFn for Permute {
    fn apply<T: Clone>(&self, a: &ArrayD<T>) -> Result<ArrayD<T>, String> {
        Ok(a.view().permuted_axes(IxDyn(&self.0)).as_standard_layout().into_owned())
    }
}

pub fn permute(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let dims = cx.ints("dims")?.iter().map(|&d| dim(d, x.shape().len())).collect::<Result<Vec<_>, _>>()?;
    Ok(vec![x.map_layout(Permute(dims))?])
}

pub fn transpose(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let rank = x.shape().len();
    if rank == 0 {
        return Ok(vec![x.clone()]);
    }
    let mut dims: Vec<usize> = (0..rank).collect();
    dims.swap(dim(cx.int("dim0")?, rank)?, dim(cx.int("dim1")?, rank)?);
    Ok(vec![x.map_layout(Permute(dims))?])
}

struct SliceAxis {
    axis: usize,
    start: usize,
    end: usize,
    step: usize,
}
impl LayoutFn for SliceAxis {
    fn apply<T: Clone>(&self, a: &ArrayD<T>) -> Result<ArrayD<T>, String> {
        let s = Slice::new(self.start as isize, Some(self.end.max(self.start) as isize), self.step as isize);
        Ok(a.slice_axis(Axis(self.axis), s).as_standard_layout().into_owned())
    }
}

pub fn slice(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let axis = dim(cx.int("dim")?, x.shape().len())?;
    let n = x.shape()[axis] as i64;
    let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
    let start = cx.opt_int("start").map_or(0, clamp) as usize;
    let end = cx.opt_int("end").map_or(n, clamp) as usize;
    let step = usize::try_from(cx.int("step")?).map_err(|_| "`step` must be positive")?;
    Ok(vec![x.map_layout(SliceAxis { axis, start, end, step })?])
}

pub fn squeeze(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let s = x.shape();
    let dims = match cx.opt_ints("dims") {
        Some(d) => d.iter().map(|&d| dim(d, s.len())).collect::<Result<Vec<_>, _>>()?,
        None => (0..s.len()).collect(),
    };
    let shape = s.iter().enumerate().filter(|(i, &d)| !(dims.contains(i) && d == 1)).map(|(_, &d)| d).collect();
    Ok(vec![x.map_layout(Reshape(shape))?])
}

pub fn unsqueeze(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let mut shape = x.shape().to_vec();
    shape.insert(dim(cx.int("dim")?, shape.len() + 1)?, 1);
    Ok(vec![x.map_layout(Reshape(shape))?])
}

struct Expand(Vec<usize>);
impl LayoutFn for Expand {
    fn apply<T: Clone>(&self, a: &ArrayD<T>) -> Result<ArrayD<T>, String> {
        let view =
            a.broadcast(IxDyn(&self.0)).ok_or_else(|| format!("cannot expand {:?} to {:?}", a.shape(), self.0))?;
        Ok(view.as_standard_layout().into_owned())
    }
}

pub fn expand(cx: &KernelCx<'_>) -> KernelResult {
    let x = cx.input(0);
    let size = cx.ints("size")?;
    let lead = size.len().saturating_sub(x.shape().len());
    let shape = size
        .iter()
        .enumerate()
        .map(|(i, &s)| if s == -1 && i >= lead { x.shape()[i - lead] } else { s.max(0) as usize })
        .collect();
    Ok(vec![x.map_layout(Expand(shape))?])
}

/// Concatenates tensors of one element type along `axis`.
macro_rules! concat {
    ($inputs:expr, $axis:expr, [$($variant:ident),*]) => {{
        match $inputs[0] {
            $(Tensor::$variant(_) => {
                let views = $inputs
                    .iter()
                    .map(|t| match t {
                        Tensor::$variant(a) => Ok(a.view()),
                        other => Err(format!("cat inputs differ in dtype ({})", other.dtype())),
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Tensor::$variant(ndarray::concatenate(Axis($axis), &views).map_err(|e| format!("cannot concatenate: {e}"))?)
            })*
        }
    }};
}

pub fn cat(cx: &KernelCx<'_>) -> KernelResult {
    let first = cx.inputs.first().ok_or("cat needs at least one input")?;
    let axis = dim(cx.int("dim")?, first.shape().len())?;
    Ok(vec![concat!(cx.inputs, axis, [F32, F64, F16, BF16, I8, U8, I16, I32, I64, Bool])])
}

/// Gathers rows of `weight` ([V, D]) for each index.
struct Gather(Vec<usize>, Vec<usize>);
impl LayoutFn for Gather {
    fn apply<T: Clone>(&self, w: &ArrayD<T>) -> Result<ArrayD<T>, String> {
        let (rows, out_shape) = (&self.0, &self.1);
        let d = w.shape()[1];
        let w = w.as_standard_layout();
        let data = w.as_slice().ok_or("weight is not contiguous")?;
        let mut out = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            out.extend_from_slice(&data[r * d..(r + 1) * d]);
        }
        ArrayD::from_shape_vec(IxDyn(out_shape), out).map_err(|e| e.to_string())
    }
}

pub fn embedding(cx: &KernelCx<'_>) -> KernelResult {
    let (w, idx) = (cx.input(0), cx.input(1));
    let vocab = w.shape()[0];
    let indices: Vec<i64> = match idx {
        Tensor::I64(a) => a.iter().copied().collect(),
        Tensor::I32(a) => a.iter().map(|&v| v.into()).collect(),
        other => return Err(format!("indices must be i32 or i64, found {}", other.dtype())),
    };
    let rows = indices
        .iter()
        .map(|&i| {
            usize::try_from(i)
                .ok()
                .filter(|&r| r < vocab)
                .ok_or_else(|| format!("index {i} is out of range for {vocab} rows"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut shape = idx.shape().to_vec();
    shape.push(w.shape()[1]);
    Ok(vec![w.map_layout(Gather(rows, shape))?])
}
