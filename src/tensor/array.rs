//! Element-level helpers over `ndarray` arrays that the interpreter's kernels, the passes and the
//! observers all need: the f32/f64 compute-type conversion and per-channel mapping.

use ndarray::{ArrayD, ArrayViewD, Axis, Zip};

/// Exact conversion from f64 for values that came from the compute type itself.
pub trait FromF64: Copy {
    fn from_f64(v: f64) -> Self;
}
impl FromF64 for f32 {
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}
impl FromF64 for f64 {
    fn from_f64(v: f64) -> f64 {
        v
    }
}

/// Applies `f(channel, value)` along `axis`.
pub(crate) fn map_channels<A: Copy, B: Copy + Default>(
    a: ArrayViewD<'_, A>,
    axis: usize,
    f: impl Fn(usize, A) -> B,
) -> ArrayD<B> {
    // Row-major input (weights, the case constant folding runs on every weight): each run of
    // `inner` elements is one channel's, so the loop is flat instead of a lane walk per channel.
    if let Some(data) = a.as_slice() {
        let channels = a.shape()[axis].max(1);
        let inner: usize = a.shape()[axis + 1..].iter().product();
        let mut out = Vec::with_capacity(data.len());
        for (run, chunk) in data.chunks(inner.max(1)).enumerate() {
            let c = run % channels;
            out.extend(chunk.iter().map(|&v| f(c, v)));
        }
        if let Ok(out) = ArrayD::from_shape_vec(a.raw_dim(), out) {
            return out;
        }
    }
    let mut out = ArrayD::<B>::from_elem(a.raw_dim(), B::default());
    for (c, (lane, mut lane_out)) in a.axis_iter(Axis(axis)).zip(out.axis_iter_mut(Axis(axis))).enumerate() {
        Zip::from(&mut lane_out).and(&lane).for_each(|o, &v| *o = f(c, v));
    }
    out
}
