//! Tensor bytes: the little-endian, row-major element layout that `.npy`, `.npz` and safetensors
//! data share, encoded from and decoded into [`Tensor`]s.

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use super::{DType, Tensor};

impl Tensor {
    /// Writes the elements' little-endian bytes in row-major order (the layout of `.npy` and
    /// safetensors data) through a small buffer, so a large tensor is never copied whole.
    pub fn write_le_bytes(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        fn put<T: Copy, const W: usize>(
            a: &ArrayD<T>,
            out: &mut dyn std::io::Write,
            f: impl Fn(T) -> [u8; W],
        ) -> std::io::Result<()> {
            const CHUNK: usize = 1 << 16;
            let mut buf = Vec::with_capacity(CHUNK.min(a.len() * W));
            for &v in a {
                buf.extend_from_slice(&f(v));
                if buf.len() + W > CHUNK {
                    out.write_all(&buf)?;
                    buf.clear();
                }
            }
            out.write_all(&buf)
        }
        match self {
            Tensor::F32(a) => put(a, out, f32::to_le_bytes),
            Tensor::F64(a) => put(a, out, f64::to_le_bytes),
            Tensor::F16(a) => put(a, out, |v: f16| v.to_bits().to_le_bytes()),
            Tensor::BF16(a) => put(a, out, |v: bf16| v.to_bits().to_le_bytes()),
            Tensor::I8(a) => put(a, out, i8::to_le_bytes),
            Tensor::U8(a) => put(a, out, u8::to_le_bytes),
            Tensor::I16(a) => put(a, out, i16::to_le_bytes),
            Tensor::I32(a) => put(a, out, i32::to_le_bytes),
            Tensor::I64(a) => put(a, out, i64::to_le_bytes),
            Tensor::Bool(a) => put(a, out, |v: bool| [u8::from(v)]),
        }
    }
}

/// Little-endian element bytes in row-major order.
pub fn le_bytes(t: &Tensor) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.len() * t.dtype().size_bytes());
    // Writing to a Vec cannot fail.
    let _ = t.write_le_bytes(&mut out);
    out
}

/// Little-endian bytes → tensor; `None` when the byte count does not match the shape.
pub fn decode(dtype: DType, shape: &[usize], bytes: &[u8]) -> Option<Tensor> {
    let size = shape.iter().try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d))?;
    if bytes.len() != size {
        return None;
    }
    fn arr<T, const W: usize>(shape: &[usize], bytes: &[u8], f: impl Fn([u8; W]) -> T) -> Option<ArrayD<T>> {
        let data = bytes.chunks_exact(W).map(|c| f(c.try_into().unwrap_or([0; W]))).collect();
        ArrayD::from_shape_vec(IxDyn(shape), data).ok()
    }
    Some(match dtype {
        DType::F32 => Tensor::F32(arr(shape, bytes, f32::from_le_bytes)?),
        DType::F64 => Tensor::F64(arr(shape, bytes, f64::from_le_bytes)?),
        DType::F16 => Tensor::F16(arr(shape, bytes, |b| f16::from_bits(u16::from_le_bytes(b)))?),
        DType::BF16 => Tensor::BF16(arr(shape, bytes, |b| bf16::from_bits(u16::from_le_bytes(b)))?),
        DType::I8 => Tensor::I8(arr(shape, bytes, i8::from_le_bytes)?),
        DType::U8 => Tensor::U8(arr(shape, bytes, u8::from_le_bytes)?),
        DType::I16 => Tensor::I16(arr(shape, bytes, i16::from_le_bytes)?),
        DType::I32 => Tensor::I32(arr(shape, bytes, i32::from_le_bytes)?),
        DType::I64 => Tensor::I64(arr(shape, bytes, i64::from_le_bytes)?),
        DType::Bool => Tensor::Bool(arr(shape, bytes, |b: [u8; 1]| b[0] != 0)?),
    })
}
