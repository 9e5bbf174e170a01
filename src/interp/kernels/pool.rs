//! Pooling: max, average and adaptive average over the last two dims, with PyTorch's window
//! rules (ceil_mode, count_include_pad, divisor_override, NaN propagation in max).
//!
//! Integer tensors pool in their own type: max is exact, and an average is the exact integer
//! sum (in i128) divided by the divisor and rounded half to even, as PyTorch's quantized
//! average pooling rounds its result.

use std::cmp::Ordering;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::conv::valid_range;
use super::{numeric_map, par_chunks_mut, KernelCx, KernelResult};
use crate::ops::infer::pool_output_size;
use crate::ops::AttrAccess;

/// What pooling needs of an element type: a float compute type (f32, f64) or an integer type.
trait Pooled: Copy + Default + PartialOrd {
    /// The identity of max: -inf, or the type's minimum.
    const LOWEST: Self;
    /// The running sum of a window: the float itself, or an exact i128.
    type Sum: Copy;
    const ZERO_SUM: Self::Sum;
    fn is_nan(self) -> bool;
    fn add(sum: Self::Sum, v: Self) -> Self::Sum;
    /// `sum / divisor`: float division, or the integer quotient rounded half to even
    /// (saturating at the type's range, which only a `divisor_override` smaller than the
    /// window can leave).
    fn average(sum: Self::Sum, divisor: i64) -> Self;
}

macro_rules! float_pooled {
    ($($t:ty),*) => {$(
        impl Pooled for $t {
            const LOWEST: $t = <$t>::NEG_INFINITY;
            type Sum = $t;
            const ZERO_SUM: $t = 0.0;
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn add(sum: $t, v: $t) -> $t {
                sum + v
            }
            fn average(sum: $t, divisor: i64) -> $t {
                sum / divisor as $t
            }
        }
    )*};
}
float_pooled!(f32, f64);

macro_rules! int_pooled {
    ($($t:ty),*) => {$(
        impl Pooled for $t {
            const LOWEST: $t = <$t>::MIN;
            type Sum = i128;
            const ZERO_SUM: i128 = 0;
            fn is_nan(self) -> bool {
                false
            }
            fn add(sum: i128, v: $t) -> i128 {
                sum.wrapping_add(i128::from(v))
            }
            fn average(sum: i128, divisor: i64) -> $t {
                let q = div_round_half_even(sum, divisor.into());
                <$t>::try_from(q).unwrap_or(if q < 0 { <$t>::MIN } else { <$t>::MAX })
            }
        }
    )*};
}
int_pooled!(i8, u8, i16, i32, i64);

/// `n / d` rounded half to even (0 for `d = 0`, which the type rules exclude).
fn div_round_half_even(n: i128, d: i128) -> i128 {
    if d == 0 {
        return 0;
    }
    let (n, d) = if d < 0 { (n.wrapping_neg(), d.wrapping_neg()) } else { (n, d) };
    let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
    match (2 * r).cmp(&d) {
        Ordering::Less => q,
        Ordering::Greater => q + 1,
        Ordering::Equal => q + (q & 1),
    }
}

struct Window {
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil: bool,
}

fn window(cx: &KernelCx<'_>, dilation: [usize; 2]) -> Result<Window, String> {
    let two = |v: Vec<i64>| -> Result<[usize; 2], String> {
        match v.as_slice() {
            [a, b] if *a >= 0 && *b >= 0 => Ok([*a as usize, *b as usize]),
            _ => Err(format!("expected two non-negative sizes, found {v:?}")),
        }
    };
    let kernel = two(cx.ints("kernel_size")?)?;
    let stride = match cx.ints("stride")? {
        s if s.is_empty() => kernel,
        s => two(s)?,
    };
    Ok(Window { kernel, stride, padding: two(cx.ints("padding")?)?, dilation, ceil: cx.boolean("ceil_mode")? })
}

/// Applies `f(planes, h, w, oh, ow)` to the data viewed as `[planes, H, W]` and reshapes the
/// `[planes, OH, OW]` result back to the input's leading dims.
fn over_planes<T: Copy + Default + Send + Sync>(
    a: ArrayViewD<'_, T>,
    oh: usize,
    ow: usize,
    f: impl Fn(&[T], usize, usize, &mut [T]) + Sync + Send,
) -> Result<ArrayD<T>, String> {
    let shape = a.shape().to_vec();
    let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let a = a.as_standard_layout();
    let data = a.as_slice().ok_or("input not contiguous")?;
    // Counted from the leading dims, not `len / (h·w)`, which is 0 for an empty plane.
    let planes = shape[..shape.len() - 2].iter().product::<usize>();
    let mut out = vec![T::default(); planes * oh * ow];
    if h * w > 0 && oh * ow > 0 {
        // Planes in parallel, each pooled by one thread.
        par_chunks_mut(&mut out, oh * ow, |p, dst| f(&data[p * h * w..(p + 1) * h * w], h, w, dst));
    }
    let mut out_shape = shape[..shape.len() - 2].to_vec();
    out_shape.extend([oh, ow]);
    ArrayD::from_shape_vec(IxDyn(&out_shape), out).map_err(|e| e.to_string())
}

fn output_dims(x: &[usize], win: &Window) -> Result<(usize, usize), String> {
    let r = x.len();
    let oh = pool_output_size(x[r - 2], win.kernel[0], win.stride[0], win.padding[0], win.dilation[0], win.ceil)?;
    let ow = pool_output_size(x[r - 1], win.kernel[1], win.stride[1], win.padding[1], win.dilation[1], win.ceil)?;
    Ok((oh, ow))
}

pub fn max_pool2d(cx: &KernelCx<'_>) -> KernelResult {
    let d = cx.ints("dilation")?;
    let win = window(cx, [d[0] as usize, d[1] as usize])?;
    let (oh, ow) = output_dims(cx.input(0).shape(), &win)?;
    Ok(vec![numeric_map!(cx.input(0), cx.out_dtype(0), |a: T| over_planes(a, oh, ow, |src, h, w, dst| {
        // Each output row is swept once per window tap (ki, kj) inside the input, in the window's
        // row-major order, so every output sees its taps in that order and padding is skipped.
        let [sy, sx] = win.stride;
        let [dy, dx] = win.dilation;
        let [py, px] = win.padding;
        if ow == 0 {
            return;
        }
        for (y, out) in dst.chunks_mut(ow).enumerate() {
            out.fill(T::LOWEST);
            for ki in valid_range(win.kernel[0], dy, y * sy, py, h) {
                let iy = y * sy + ki * dy - py;
                let row = &src[iy * w..(iy + 1) * w];
                for kj in 0..win.kernel[1] {
                    let xs = valid_range(ow, sx, kj * dx, px, w);
                    if xs.is_empty() {
                        continue;
                    }
                    let ix0 = xs.start * sx + kj * dx - px;
                    let update = |best: &mut T, v: T| {
                        // NaN propagates: a NaN in the window wins (the last one, if several).
                        *best = if v > *best || Pooled::is_nan(v) { v } else { *best };
                    };
                    let out = &mut out[xs];
                    match sx {
                        0 => out.iter_mut().for_each(|b| update(b, row[ix0])),
                        1 => out.iter_mut().zip(&row[ix0..]).for_each(|(b, &v)| update(b, v)),
                        // Every `sx`-th input: the first element of each `sx`-long chunk.
                        _ => out.iter_mut().zip(row[ix0..].chunks(sx)).for_each(|(b, c)| update(b, c[0])),
                    }
                }
            }
        }
    })?)?])
}

pub fn avg_pool2d(cx: &KernelCx<'_>) -> KernelResult {
    let win = window(cx, [1, 1])?;
    let count_include_pad = cx.boolean("count_include_pad")?;
    let divisor_override = cx.opt_int("divisor_override");
    let (oh, ow) = output_dims(cx.input(0).shape(), &win)?;
    Ok(vec![numeric_map!(cx.input(0), cx.out_dtype(0), |a: T| over_planes(a, oh, ow, |src, h, w, dst| {
        for y in 0..oh {
            for x in 0..ow {
                let hstart = (y * win.stride[0]) as isize - win.padding[0] as isize;
                let wstart = (x * win.stride[1]) as isize - win.padding[1] as isize;
                let hend = (hstart + win.kernel[0] as isize).min((h + win.padding[0]) as isize);
                let wend = (wstart + win.kernel[1] as isize).min((w + win.padding[1]) as isize);
                let pool_size = (hend - hstart) * (wend - wstart);
                let (hs, ws) = (hstart.max(0), wstart.max(0));
                let (he, we) = (hend.min(h as isize), wend.min(w as isize));
                if hs >= he || ws >= we {
                    dst[y * ow + x] = T::default();
                    continue;
                }
                let mut sum = T::ZERO_SUM;
                for iy in hs..he {
                    for ix in ws..we {
                        sum = T::add(sum, src[iy as usize * w + ix as usize]);
                    }
                }
                let divisor = match divisor_override {
                    Some(d) => d,
                    None if count_include_pad => pool_size as i64,
                    None => ((he - hs) * (we - ws)) as i64,
                };
                dst[y * ow + x] = T::average(sum, divisor);
            }
        }
    })?)?])
}

pub fn adaptive_avg_pool2d(cx: &KernelCx<'_>) -> KernelResult {
    let size = cx.ints("output_size")?;
    let (oh, ow) = (size[0] as usize, size[1] as usize);
    let x = cx.input(0).shape();
    if let [.., h, w] = x {
        if *h == 0 || *w == 0 {
            // PyTorch refuses too: an output element would average an empty window.
            return Err(format!("the input's spatial size is {h}x{w}: adaptive pooling needs a non-empty plane"));
        }
    }
    Ok(vec![numeric_map!(cx.input(0), cx.out_dtype(0), |a: T| over_planes(a, oh, ow, |src, h, w, dst| {
        for y in 0..oh {
            let (hs, he) = (y * h / oh, ((y + 1) * h).div_ceil(oh));
            for x in 0..ow {
                let (ws, we) = (x * w / ow, ((x + 1) * w).div_ceil(ow));
                let mut sum = T::ZERO_SUM;
                for iy in hs..he {
                    for ix in ws..we {
                        sum = T::add(sum, src[iy * w + ix]);
                    }
                }
                dst[y * ow + x] = T::average(sum, ((he - hs) * (we - ws)) as i64);
            }
        }
    })?)?])
}

#[cfg(test)]
mod tests {
    use super::div_round_half_even;

    #[test]
    fn integer_averages_round_half_to_even() {
        let cases = [(5, 2, 2), (7, 2, 4), (-5, 2, -2), (-7, 2, -4), (5, -2, -2), (10, 4, 2), (11, 4, 3), (9, 4, 2)];
        for (n, d, q) in cases {
            assert_eq!(div_round_half_even(n, d), q, "{n} / {d}");
        }
        assert_eq!(div_round_half_even(i128::from(i64::MAX) * 3, 3), i128::from(i64::MAX));
    }
}
