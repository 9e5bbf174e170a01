//! Convolutions: conv1d/conv2d by im2col + GEMM, conv_transpose2d by GEMM + col2im.
//!
//! conv1d runs as conv2d over a height-1 image. Bias initialises the output and the GEMM adds
//! the products to it, as a BLAS `beta = 1` call would. conv1d/conv2d also take all-i32
//! operands (the reference representation's accumulators), accumulated in i32 with wrapping.

use std::mem::MaybeUninit;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::linalg::{gemm_into, GemmScalar, Mat};
use super::{float_array_as, float_zip, gemm_zip, par_chunks_mut, KernelCx, KernelResult};
use crate::interp::memory::{check_scratch, product};
use crate::ops::AttrAccess;

/// Convolution geometry in 2-D (conv1d uses height 1).
#[derive(Clone, Debug)]
pub struct Geometry {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

fn pair(v: &[i64], fill: i64) -> [usize; 2] {
    match v {
        [a] => [fill as usize, *a as usize],
        [a, b] => [*a as usize, *b as usize],
        _ => [fill as usize, fill as usize],
    }
}

fn geometry(cx: &KernelCx<'_>) -> Result<Geometry, String> {
    // conv1d lists have one entry: the height axis gets stride 1, padding 0, dilation 1.
    Ok(Geometry {
        stride: pair(&cx.ints("stride")?, 1),
        padding: pair(&cx.ints("padding")?, 0),
        dilation: pair(&cx.ints("dilation")?, 1),
        groups: usize::try_from(cx.int("groups")?).map_err(|_| "`groups` must be positive")?,
    })
}

/// conv1d and conv2d.
pub fn conv(cx: &KernelCx<'_>) -> KernelResult {
    let g = geometry(cx)?;
    let (x, w) = (cx.input(0), cx.input(1));
    let bias = cx.opt_input(2);
    let spatial = w.shape().len() - 2;
    Ok(vec![gemm_zip!(x, w, cx.out_dtype(0), |xa, wa: T| {
        let bias = bias.map(T::operand).transpose()?;
        // Lift to batched 2-D: [N, C, H, W] and [O, C/g, kh, kw].
        let batched = xa.ndim() == spatial + 2;
        let mut xs = xa.shape().to_vec();
        if !batched {
            xs.insert(0, 1);
        }
        let mut ws = wa.shape().to_vec();
        if spatial == 1 {
            xs.insert(2, 1);
            ws.insert(2, 1);
        }
        let x4 = xa.to_shape(IxDyn(&xs)).map_err(|e| e.to_string())?;
        let w4 = wa.to_shape(IxDyn(&ws)).map_err(|e| e.to_string())?;
        let out = conv2d_impl(x4.view(), w4.view(), bias.as_ref().map(|b| b.view()), &g)?;
        let mut shape = out.shape().to_vec();
        if spatial == 1 {
            shape.remove(2);
        }
        if !batched {
            shape.remove(0);
        }
        out.into_shape_with_order(IxDyn(&shape)).map_err(|e| e.to_string())?
    })?])
}

fn out_size(input: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Result<usize, String> {
    crate::ops::infer::conv_output_size(input, k, stride, pad, dil)
}

/// `x [N,C,H,W]`, `w [O, C/g, kh, kw]` → `[N, O, OH, OW]`.
pub fn conv2d_impl<T: GemmScalar>(
    x: ArrayViewD<'_, T>,
    w: ArrayViewD<'_, T>,
    bias: Option<ArrayViewD<'_, T>>,
    g: &Geometry,
) -> Result<ArrayD<T>, String> {
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let groups = g.groups;
    if cg * groups != c || o % groups != 0 {
        return Err(format!("channels {c} and weight {:?} do not fit groups = {groups}", w.shape()));
    }
    let oh = out_size(h, kh, g.stride[0], g.padding[0], g.dilation[0])?;
    let ow = out_size(wd, kw, g.stride[1], g.padding[1], g.dilation[1])?;
    let og = o / groups;
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let (xs, ws) = (x.as_slice().ok_or("input not contiguous")?, w.as_slice().ok_or("weight not contiguous")?);
    let plane = oh * ow;
    let kdim = cg * kh * kw;
    let pointwise = kh == 1 && kw == 1 && g.stride == [1, 1] && g.padding == [0, 0];
    if !pointwise {
        check_scratch::<T>("im2col buffer", product(&[cg, kh, kw, oh, ow]))?;
    }
    // The output starts as the bias (each channel's plane filled with it), or zeros.
    let mut out = match &bias {
        Some(bias) => {
            let mut out = Vec::with_capacity(n * o * plane);
            for _ in 0..n {
                for ch in 0..o {
                    out.extend(std::iter::repeat_n(bias[[ch]], plane));
                }
            }
            out
        }
        None => vec![T::zero(); n * o * plane],
    };
    let mut col = Vec::with_capacity(if pointwise { 0 } else { kdim * plane });
    for b in 0..n {
        for grp in 0..groups {
            let x_group = &xs[(b * c + grp * cg) * h * wd..(b * c + (grp + 1) * cg) * h * wd];
            let cols: &[T] = if pointwise {
                x_group
            } else {
                im2col(x_group, cg, h, wd, kh, kw, oh, ow, g, &mut col);
                &col
            };
            let dst = &mut out[(b * o + grp * og) * plane..(b * o + (grp + 1) * og) * plane];
            let weights = Mat::row_major(&ws[grp * og * kdim..(grp + 1) * og * kdim], og, kdim);
            gemm_into(dst, weights, Mat::row_major(cols, kdim, plane), bias.is_some())?;
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[n, o, oh, ow]), out).map_err(|e| e.to_string())
}

/// The positions `o` in `0..count` whose input index `o·step + offset − pad` lies in `0..len`,
/// as a range (output positions for a kernel tap, or kernel taps for an output position).
pub(crate) fn valid_range(count: usize, step: usize, offset: usize, pad: usize, len: usize) -> std::ops::Range<usize> {
    if step == 0 {
        return if offset >= pad && offset - pad < len { 0..count } else { 0..0 };
    }
    // o·step + offset ≥ pad  ⇔  o ≥ ceil((pad − offset) / step)
    let lo = pad.saturating_sub(offset).div_ceil(step).min(count);
    // o·step + offset < pad + len  ⇔  o < ceil((pad + len − offset) / step)
    let hi = (pad + len).saturating_sub(offset).div_ceil(step).clamp(lo, count);
    lo..hi
}

/// Unfolds one group's input planes into `[C/g·kh·kw, OH·OW]` columns (zeros for padding),
/// replacing the contents of `col`. Channels are unfolded in parallel, each by one thread
/// (pure data movement).
#[allow(clippy::too_many_arguments)]
fn im2col<T: GemmScalar>(
    x: &[T],
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    g: &Geometry,
    col: &mut Vec<T>,
) {
    let block = kh * kw * oh * ow;
    let len = c * block;
    col.clear();
    col.reserve(len);
    if block > 0 {
        let dst = &mut col.spare_capacity_mut()[..len];
        par_chunks_mut(dst, block, |ch, dst| {
            im2col_channel(&x[ch * h * w..(ch + 1) * h * w], h, w, kh, kw, oh, ow, g, dst)
        });
    }
    // SAFETY: `im2col_channel` initialised every element of the first `len`: each channel's
    // block is `kh·kw·oh` rows of `ow`, and it writes each row whole (zeros, the valid run,
    // zeros). With `block == 0`, `len` is 0.
    unsafe { col.set_len(len) };
}

/// One channel of [`im2col`]: `plane [H, W]` → `dst [kh·kw, OH·OW]`, every element written
/// (the columns are written without first being zeroed).
#[allow(clippy::too_many_arguments)]
fn im2col_channel<T: GemmScalar>(
    plane: &[T],
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    g: &Geometry,
    dst: &mut [MaybeUninit<T>],
) {
    let zero = |s: &mut [MaybeUninit<T>]| {
        s.iter_mut().for_each(|o| {
            o.write(T::zero());
        })
    };
    let (sy, sx) = (g.stride[0], g.stride[1]);
    let mut rows_out = dst.chunks_exact_mut(ow);
    for ki in 0..kh {
        let rows = valid_range(oh, sy, ki * g.dilation[0], g.padding[0], h);
        for kj in 0..kw {
            let offset = kj * g.dilation[1];
            let cols = valid_range(ow, sx, offset, g.padding[1], w);
            for oy in 0..oh {
                let Some(out) = rows_out.next() else { return };
                if !rows.contains(&oy) || cols.is_empty() {
                    zero(out);
                    continue;
                }
                let iy = oy * sy + ki * g.dilation[0] - g.padding[0];
                let src = &plane[iy * w..(iy + 1) * w];
                zero(&mut out[..cols.start]);
                // The first input column of the valid run, then every `sx`-th.
                let ix0 = cols.start * sx + offset - g.padding[1];
                let run = &mut out[cols.start..cols.end];
                // (Indexing, not zipping, so that every element of the run is written.)
                if sx == 1 {
                    let n = run.len();
                    run.iter_mut().zip(&src[ix0..ix0 + n]).for_each(|(o, &v)| {
                        o.write(v);
                    });
                } else {
                    run.iter_mut().enumerate().for_each(|(i, o)| {
                        o.write(src[ix0 + i * sx]);
                    });
                }
                zero(&mut out[cols.end..]);
            }
        }
    }
}

/// conv_transpose2d: `x [N, Cin, H, W]`, `w [Cin, Cout/g, kh, kw]`.
pub fn conv_transpose(cx: &KernelCx<'_>) -> KernelResult {
    let mut g = geometry(cx)?;
    let output_padding = pair(&cx.ints("output_padding")?, 0);
    g.groups = usize::try_from(cx.int("groups")?).map_err(|_| "`groups` must be positive")?;
    let bias = cx.opt_input(2);
    Ok(vec![float_zip!(cx.input(0), cx.input(1), cx.out_dtype(0), |xa, wa: T| {
        let bias = bias.map(float_array_as::<T>).transpose()?;
        let batched = xa.ndim() == 4;
        let x4 = if batched { xa.to_owned() } else { xa.insert_axis(ndarray::Axis(0)).to_owned() };
        let out = conv_transpose2d_impl(x4.view(), wa, bias.as_ref().map(|b| b.view()), &g, output_padding)?;
        if batched {
            out
        } else {
            out.index_axis_move(ndarray::Axis(0), 0)
        }
    })?])
}

fn conv_transpose2d_impl<T: GemmScalar>(
    x: ArrayViewD<'_, T>,
    w: ArrayViewD<'_, T>,
    bias: Option<ArrayViewD<'_, T>>,
    g: &Geometry,
    output_padding: [usize; 2],
) -> Result<ArrayD<T>, String> {
    let (n, cin, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (wc, og, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let groups = g.groups;
    if wc != cin || cin % groups != 0 {
        return Err(format!("input channels {cin} and weight {:?} do not fit groups = {groups}", w.shape()));
    }
    let cg = cin / groups;
    let o = og * groups;
    let size = |i: usize, k: usize, a: usize| -> Result<usize, String> {
        ((i - 1) * g.stride[a] + g.dilation[a] * (k - 1) + output_padding[a] + 1)
            .checked_sub(2 * g.padding[a])
            .filter(|&v| v > 0)
            .ok_or_else(|| "the output would be empty".to_string())
    };
    let (oh, ow) = (size(h, kh, 0)?, size(wd, kw, 1)?);
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let (xs, ws) = (x.as_slice().ok_or("input not contiguous")?, w.as_slice().ok_or("weight not contiguous")?);
    let kdim = og * kh * kw;
    check_scratch::<T>("column buffer", product(&[kdim, h, wd]))?;
    let mut out = vec![T::zero(); n * o * oh * ow];
    let mut cols = vec![T::zero(); kdim * h * wd];
    for b in 0..n {
        for grp in 0..groups {
            // cols[og·kh·kw, H·W] = W_gᵀ [og·kh·kw, cg] · X_g [cg, H·W]
            let wg = Mat::row_major(&ws[grp * cg * kdim..(grp + 1) * cg * kdim], cg, kdim).t();
            let xg =
                Mat::row_major(&xs[(b * cin + grp * cg) * h * wd..(b * cin + (grp + 1) * cg) * h * wd], cg, h * wd);
            gemm_into(&mut cols, wg, xg, false)?;
            let dst = &mut out[(b * o + grp * og) * oh * ow..(b * o + (grp + 1) * og) * oh * ow];
            for oc in 0..og {
                for ki in 0..kh {
                    for kj in 0..kw {
                        let row = &cols[((oc * kh + ki) * kw + kj) * h * wd..][..h * wd];
                        for iy in 0..h {
                            let y = (iy * g.stride[0] + ki * g.dilation[0]) as isize - g.padding[0] as isize;
                            if y < 0 || y >= oh as isize {
                                continue;
                            }
                            for ix in 0..wd {
                                let xo = (ix * g.stride[1] + kj * g.dilation[1]) as isize - g.padding[1] as isize;
                                if xo >= 0 && xo < ow as isize {
                                    dst[(oc * oh + y as usize) * ow + xo as usize] =
                                        dst[(oc * oh + y as usize) * ow + xo as usize] + row[iy * wd + ix];
                                }
                            }
                        }
                    }
                }
                if let Some(bias) = &bias {
                    let b = bias[[grp * og + oc]];
                    dst[oc * oh * ow..(oc + 1) * oh * ow].iter_mut().for_each(|v| *v = *v + b);
                }
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[n, o, oh, ow]), out).map_err(|e| e.to_string())
}
