//! Matrix products (linear, matmul, bmm, addmm) on a fast GEMM.
//!
//! The `gemm` crate provides SIMD kernels for f32 and f64 with rayon parallelism that splits the
//! output into blocks, each reduced over k by one thread in a fixed order, so results do not
//! depend on the thread count. i32 products (the reference representation's accumulators,
//! PT2E's `out_dtype(linear, int32, ...)`) run as plain loops with wrapping i32 arithmetic,
//! which is exact in any order.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use rayon::prelude::*;

use super::{broadcast_shape, float_array_as, float_zip, gemm_zip, par_chunks_mut, KernelCx, KernelResult};
use crate::interp::memory::{check_scratch, product};
use crate::ir::TensorType;
use crate::ops::AttrAccess;
use crate::tensor::Tensor;
use crate::weights::Layout;

/// Element types the GEMM supports.
pub trait GemmScalar: Copy + Default + Send + Sync + 'static + num_traits::Zero {
    /// `out = [out +] a·b` for shapes [`gemm_into`] has checked, with `out` m×n row-major;
    /// `parallel`: whether the product may itself use the thread pool (not when the caller
    /// already runs independent products in parallel). The result is the same either way.
    fn gemm(out: &mut [Self], a: Mat<'_, Self>, b: Mat<'_, Self>, accumulate: bool, parallel: bool);

    /// A further operand of the op (a bias) in this compute type.
    fn operand(t: &Tensor) -> Result<ArrayD<Self>, String>;
}

/// The `gemm` crate's SIMD kernels.
macro_rules! simd_gemm {
    ($($t:ty),*) => {$(
        impl GemmScalar for $t {
            fn gemm(out: &mut [$t], a: Mat<'_, $t>, b: Mat<'_, $t>, accumulate: bool, parallel: bool) {
                let (m, k, n) = (a.rows, a.cols, b.cols);
                // SAFETY: every index the kernel touches is inside the slices: `gemm_into`
                // checked the largest offset of both operands (`Mat::fits`), and `out` is
                // exactly m×n row-major.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        accumulate,
                        a.data.as_ptr(),
                        a.col_stride as isize,
                        a.row_stride as isize,
                        b.data.as_ptr(),
                        b.col_stride as isize,
                        b.row_stride as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None },
                    );
                }
            }

            fn operand(t: &Tensor) -> Result<ArrayD<$t>, String> {
                float_array_as::<$t>(t)
            }
        }
    )*};
}
simd_gemm!(f32, f64);

impl GemmScalar for i32 {
    fn gemm(out: &mut [i32], a: Mat<'_, i32>, b: Mat<'_, i32>, accumulate: bool, _parallel: bool) {
        let (k, n) = (a.cols, b.cols);
        for (i, row) in out.chunks_exact_mut(n).enumerate() {
            if !accumulate {
                row.fill(0);
            }
            if b.col_stride == 1 {
                // Row-major `b`: add a[i,p]·(row p of b) to the output row, a contiguous sweep.
                for p in 0..k {
                    let x = a.at(i, p);
                    let b_row = &b.data[p * b.row_stride..][..n];
                    row.iter_mut().zip(b_row).for_each(|(o, &y)| *o = o.wrapping_add(x.wrapping_mul(y)));
                }
            } else {
                // A transposed `b` (linear's weight): one dot product per output.
                for (j, o) in row.iter_mut().enumerate() {
                    let dot = (0..k).fold(0i32, |s, p| s.wrapping_add(a.at(i, p).wrapping_mul(b.at(p, j))));
                    *o = o.wrapping_add(dot);
                }
            }
        }
    }

    fn operand(t: &Tensor) -> Result<ArrayD<i32>, String> {
        match t {
            Tensor::I32(a) => Ok(a.clone()),
            other => Err(format!("expected an i32 tensor, found {}", other.dtype())),
        }
    }
}

/// A row-major-or-strided matrix operand: data plus (row stride, column stride) in elements.
#[derive(Copy, Clone)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A contiguous row-major matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose, as a view of the same data.
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// The element at (`row`, `col`).
    fn at(&self, row: usize, col: usize) -> T
    where
        T: Copy,
    {
        self.data[row * self.row_stride + col * self.col_stride]
    }

    /// Rows `start..start + len`, as a view of the same data.
    fn rows(self, start: usize, len: usize) -> Self {
        Mat { data: &self.data[(start * self.row_stride).min(self.data.len())..], rows: len, ..self }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `out = acc·out + a·b` into the row-major `m×n` buffer `out` (`acc` is 0 or 1: whether `out`
/// already holds something to add, such as a bias).
pub fn gemm_into<T: GemmScalar>(out: &mut [T], a: Mat<'_, T>, b: Mat<'_, T>, accumulate: bool) -> Result<(), String> {
    gemm_into_with(out, a, b, accumulate, true)
}

/// [`gemm_into`] on the calling thread only (for products that run in parallel with others).
pub fn gemm_into_serial<T: GemmScalar>(
    out: &mut [T],
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    accumulate: bool,
) -> Result<(), String> {
    gemm_into_with(out, a, b, accumulate, false)
}

fn gemm_into_with<T: GemmScalar>(
    out: &mut [T],
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    accumulate: bool,
    parallel: bool,
) -> Result<(), String> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || out.len() != m * n || !a.fits() || !b.fits() {
        return Err(format!("internal: matrix shapes {m}x{k} · {}x{n} into {} elements", b.rows, out.len()));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            out.fill(T::zero());
        }
        return Ok(());
    }
    T::gemm(out, a, b, accumulate, parallel);
    Ok(())
}

/// `x[..., in] · weight[out, in]ᵀ + bias[out]`.
pub fn linear(cx: &KernelCx<'_>) -> KernelResult {
    let (x, w) = (cx.input(0), cx.input(1));
    let bias = cx.opt_input(2);
    let out_dtype = cx.out_dtype(0);
    let result = gemm_zip!(x, w, out_dtype, |xa, wa: T| {
        let bias = bias.map(T::operand).transpose()?;
        linear_impl(xa, wa, bias.as_ref().map(|b| b.view()))?
    })?;
    Ok(vec![result])
}

/// Output features per parallel block of a linear: a multiple of every micro-tile height of the
/// `gemm` crate's f32/f64 kernels (12 to 64 rows on AVX2 and AVX-512), so blocks start where
/// the one-product micro-tiles start (see [`linear_impl`]).
const LINEAR_BLOCK: usize = 192;

/// Whether a linear of these sizes runs as parallel blocks of [`LINEAR_BLOCK`] output features
/// (see [`linear_impl`]).
fn runs_in_blocks(rows: usize, in_features: usize, out_features: usize) -> bool {
    rows > 64 && in_features > 2 && out_features > LINEAR_BLOCK
}

/// Whether a linear of these sizes reads a column-major weight in place, with the bits it
/// computes from a row-major one. In blocks the GEMM takes its general path, where strides
/// decide only how operands are packed, never the arithmetic; a block of one feature would
/// take a matrix-vector path whose summation order depends on the strides, so a last block of
/// one feature (`out_features % LINEAR_BLOCK == 1`) rules it out.
fn reads_column_major(rows: usize, in_features: usize, out_features: usize) -> bool {
    runs_in_blocks(rows, in_features, out_features) && out_features % LINEAR_BLOCK != 1
}

/// The layout in which a `linear` with input type `x` wants its weight of type `w` stored. The
/// GEMM works on `outᵀ = w·xᵀ` and packs `w` into panels of consecutive output features for
/// each input feature: from a row-major `[out, in]` weight that is a gather with a stride of
/// `in` elements on every call (a fifth of a BERT layer's time), from a column-major one a
/// contiguous copy. Column-major only where [`reads_column_major`] holds for the static shapes.
pub fn weight_layout(x: &TensorType, w: &TensorType) -> Layout {
    let (Some(x), Some(w)) = (x.static_shape(), w.static_shape()) else { return Layout::RowMajor };
    match (x.split_last(), w.as_slice()) {
        (Some((&in_features, batch)), &[out_features, _])
            if reads_column_major(batch.iter().product(), in_features, out_features) =>
        {
            Layout::ColumnMajor
        }
        _ => Layout::RowMajor,
    }
}

fn linear_impl<T: GemmScalar>(
    x: ArrayViewD<'_, T>,
    w: ArrayViewD<'_, T>,
    bias: Option<ArrayViewD<'_, T>>,
) -> Result<ArrayD<T>, String> {
    let in_features = *x.shape().last().ok_or("linear needs a non-scalar input")?;
    let vector_weight = w.ndim() == 1;
    let out_features = if vector_weight { 1 } else { w.shape()[0] };
    if w.shape() != [out_features, in_features] && w.shape() != [in_features] {
        return Err(format!("a weight of shape {:?} for {in_features} input features", w.shape()));
    }
    // Counted from the leading dims, not `len / in_features`: with no input features (K = 0)
    // every output is the bias (or 0), as in PyTorch.
    let rows = x.shape()[..x.ndim() - 1].iter().product();
    let x = x.as_standard_layout();
    let xs = x.as_slice().ok_or("input not contiguous")?;
    let input = Mat::row_major(xs, rows, in_features);
    // The weight as an out×in matrix: a column-major one (see `weight_layout`) in place where
    // that gives the same bits, anything else as a row-major copy.
    let in_place = !vector_weight && w.t().is_standard_layout() && reads_column_major(rows, in_features, out_features);
    let w = if in_place { w.reversed_axes().into() } else { w.as_standard_layout() };
    let ws = w.as_slice().ok_or("weight not contiguous")?;
    let weight = if in_place {
        Mat::row_major(ws, in_features, out_features).t()
    } else {
        Mat::row_major(ws, out_features, in_features)
    };
    let accumulate = bias.is_some();
    let bias = match &bias {
        Some(b) => Some(b.broadcast(IxDyn(&[out_features])).ok_or("bias does not match the output features")?),
        None => None,
    };
    let bias = bias.as_ref().map(|b| b.as_standard_layout());
    let bias = bias.as_ref().map(|b| b.as_slice().ok_or("bias not contiguous")).transpose()?;
    // `out[rows, cols]` for the output features `j0..j0 + cols`, starting from the bias.
    let block = |j0: usize, cols: usize, gemm: GemmFn<T>| -> Result<Vec<T>, String> {
        let mut out = vec![T::zero(); rows * cols];
        if let Some(b) = bias {
            for row in out.chunks_mut(cols.max(1)) {
                row.copy_from_slice(&b[j0..j0 + cols]);
            }
        }
        gemm(&mut out, input, weight.rows(j0, cols).t(), accumulate)?;
        Ok(out)
    };
    let out = if runs_in_blocks(rows, in_features, out_features) {
        // The blocks are a second copy of the output.
        check_scratch::<T>("output blocks", product(&[rows, out_features]))?;
        // Blocks of output features in parallel, each one product on one thread (the GEMM
        // packs the weight rows it reads, so this also spreads the packing over the threads).
        // The GEMM's per-element arithmetic depends only on `in_features` (its k blocking) and
        // on the element's place in its micro-tile, which blocks of `LINEAR_BLOCK` features
        // keep: the result is the one-product result, bit for bit. (With 64 rows or fewer, or
        // tiny products, the GEMM takes other paths whose choice depends on the sizes: those
        // stay one product.)
        let blocks: Vec<Vec<T>> = (0..out_features.div_ceil(LINEAR_BLOCK))
            .into_par_iter()
            .map(|b| {
                let j0 = b * LINEAR_BLOCK;
                block(j0, LINEAR_BLOCK.min(out_features - j0), gemm_into_serial)
            })
            .collect::<Result<_, String>>()?;
        let mut out = vec![T::zero(); rows * out_features];
        par_chunks_mut(&mut out, out_features, |row, dst| {
            for (dst, block) in dst.chunks_mut(LINEAR_BLOCK).zip(&blocks) {
                dst.copy_from_slice(&block[row * dst.len()..][..dst.len()]);
            }
        });
        out
    } else {
        block(0, out_features, gemm_into)?
    };
    let mut shape = x.shape()[..x.ndim() - 1].to_vec();
    if !vector_weight {
        shape.push(out_features);
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())
}

/// `torch.matmul`: 1-D operands are promoted and the added dim removed; batch dims broadcast.
pub fn matmul(cx: &KernelCx<'_>) -> KernelResult {
    let out_dtype = cx.out_dtype(0);
    Ok(vec![gemm_zip!(cx.input(0), cx.input(1), out_dtype, |a, b: T| matmul_impl(a, b)?)?])
}

/// `bmm` is `matmul` restricted (by its type rule) to rank-3 operands.
pub fn bmm(cx: &KernelCx<'_>) -> KernelResult {
    matmul(cx)
}

pub fn matmul_impl<T: GemmScalar>(a: ArrayViewD<'_, T>, b: ArrayViewD<'_, T>) -> Result<ArrayD<T>, String> {
    let (a1, b1) = (a.ndim() == 1, b.ndim() == 1);
    let a = if a1 { a.insert_axis(Axis(0)) } else { a };
    let b = if b1 { b.insert_axis(Axis(1)) } else { b };
    let (m, k) = (a.shape()[a.ndim() - 2], a.shape()[a.ndim() - 1]);
    let (k2, n) = (b.shape()[b.ndim() - 2], b.shape()[b.ndim() - 1]);
    if k != k2 {
        return Err(format!("inner dimensions differ: {k} and {k2}"));
    }
    let batch = broadcast_shape(&a.shape()[..a.ndim() - 2], &b.shape()[..b.ndim() - 2])?;
    let mut a_shape = batch.clone();
    a_shape.extend([m, k]);
    let mut b_shape = batch.clone();
    b_shape.extend([k, n]);
    let a = a.broadcast(IxDyn(&a_shape)).ok_or("batch dims do not broadcast")?;
    let b = b.broadcast(IxDyn(&b_shape)).ok_or("batch dims do not broadcast")?;
    // A broadcast operand is copied out to the full batch.
    for (x, name) in [(&a, "broadcast copy of the first operand"), (&b, "broadcast copy of the second operand")] {
        if !x.is_standard_layout() {
            check_scratch::<T>(name, Some(x.len()))?;
        }
    }
    let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
    let (asl, bsl) = (a.as_slice().ok_or("not contiguous")?, b.as_slice().ok_or("not contiguous")?);
    let batches: usize = batch.iter().product();
    let mut out = vec![T::zero(); batches * m * n];
    let product = |i: usize, dst: &mut [T], gemm: GemmFn<T>| {
        gemm(
            dst,
            Mat::row_major(&asl[i * m * k..(i + 1) * m * k], m, k),
            Mat::row_major(&bsl[i * k * n..(i + 1) * k * n], k, n),
            false,
        )
    };
    if batches > 1 && m * n > 0 {
        // Several products (attention heads): one per task, each on one thread.
        out.par_chunks_mut(m * n).enumerate().try_for_each(|(i, dst)| product(i, dst, gemm_into_serial))?;
    } else {
        for (i, dst) in out.chunks_mut((m * n).max(1)).enumerate() {
            product(i, dst, gemm_into)?;
        }
    }
    let mut shape = batch;
    if !a1 {
        shape.push(m);
    }
    if !b1 {
        shape.push(n);
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())
}

type GemmFn<T> = fn(&mut [T], Mat<'_, T>, Mat<'_, T>, bool) -> Result<(), String>;

/// `beta·input + alpha·(mat1 @ mat2)`.
pub fn addmm(cx: &KernelCx<'_>) -> KernelResult {
    let (beta, alpha) = (cx.float("beta")?, cx.float("alpha")?);
    let out_dtype = cx.out_dtype(0);
    let bias = cx.input(0);
    Ok(vec![float_zip!(cx.input(1), cx.input(2), out_dtype, |a, b: T| {
        let input = float_array_as::<T>(bias)?;
        let product = matmul_impl(a, b)?;
        check_scratch::<T>("broadcast copy of `input`", Some(product.len()))?;
        let input =
            input.broadcast(IxDyn(product.shape())).ok_or("`input` does not broadcast to the product")?.to_owned();
        let (beta, alpha) = (beta as T, alpha as T);
        let mut out = product;
        out.zip_mut_with(&input, |p, &c| {
            *p = if beta == 1.0 && alpha == 1.0 { c + *p } else { beta * c + alpha * *p };
        });
        out
    })?])
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn, ShapeBuilder};

    use super::{linear_impl, reads_column_major};

    fn values(shape: &[usize], seed: f32) -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n).map(|i| ((i as f32 * 0.618_034 + seed).fract() - 0.5) * 2.0).collect()
    }

    /// A linear reads a column-major weight in place only where the bits are those of the
    /// row-major weight; elsewhere it copies it. Either way the results match bit for bit.
    #[test]
    fn column_major_weights_give_the_row_major_bits() {
        let shapes = [(128, 768, 768), (65, 64, 385), (100, 3, 1000), (130, 70, 193), (65, 33, 576), (64, 96, 400)];
        for (rows, in_features, out_features) in shapes {
            let x = ArrayD::from_shape_vec(IxDyn(&[rows, in_features]), values(&[rows, in_features], 0.1)).unwrap();
            let data = values(&[out_features, in_features], 0.7);
            let w = ArrayD::from_shape_vec(IxDyn(&[out_features, in_features]), data.clone()).unwrap();
            let mut wf = ArrayD::zeros(IxDyn(&[out_features, in_features]).f());
            wf.assign(&w);
            let b = ArrayD::from_shape_vec(IxDyn(&[out_features]), values(&[out_features], 0.3)).unwrap();
            let expected = linear_impl(x.view(), w.view(), Some(b.view())).unwrap();
            let actual = linear_impl(x.view(), wf.view(), Some(b.view())).unwrap();
            let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&expected) == bits(&actual),
                "{rows}x{in_features} -> {out_features} (in place: {})",
                reads_column_major(rows, in_features, out_features)
            );
        }
    }
}
