//! Dense tensor values over `ndarray`, one variant per QIR element type.
//!
//! Constants in the IR, weights loaded from safetensors and (later) interpreter values are all
//! [`Tensor`]s. Equality and hashing here are by bit pattern, as constant folding and CSE need.

use std::hash::{Hash, Hasher};

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

mod array;
mod bytes;
mod dtype;

pub(crate) use array::map_channels;
pub use array::FromF64;
pub use bytes::{decode, le_bytes};
pub use dtype::DType;

/// A dense tensor of one element type.
#[derive(Clone, Debug)]
pub enum Tensor {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    F16(ArrayD<f16>),
    BF16(ArrayD<bf16>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    I16(ArrayD<i16>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

/// Applies `$body` to the array inside any [`Tensor`] variant.
macro_rules! with_array {
    ($tensor:expr, $a:ident => $body:expr) => {
        match $tensor {
            Tensor::F32($a) => $body,
            Tensor::F64($a) => $body,
            Tensor::F16($a) => $body,
            Tensor::BF16($a) => $body,
            Tensor::I8($a) => $body,
            Tensor::U8($a) => $body,
            Tensor::I16($a) => $body,
            Tensor::I32($a) => $body,
            Tensor::I64($a) => $body,
            Tensor::Bool($a) => $body,
        }
    };
}

/// One scalar element, widened for printing and literal construction.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Scalar {
    /// A float element with its own dtype's bits (f16/bf16/f32/f64).
    Float {
        value: f64,
        bits: u64,
        dtype: DType,
    },
    Int(i64),
    Bool(bool),
}

impl Tensor {
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F64(_) => DType::F64,
            Tensor::F16(_) => DType::F16,
            Tensor::BF16(_) => DType::BF16,
            Tensor::I8(_) => DType::I8,
            Tensor::U8(_) => DType::U8,
            Tensor::I16(_) => DType::I16,
            Tensor::I32(_) => DType::I32,
            Tensor::I64(_) => DType::I64,
            Tensor::Bool(_) => DType::Bool,
        }
    }

    pub fn shape(&self) -> &[usize] {
        with_array!(self, a => a.shape())
    }

    pub fn len(&self) -> usize {
        with_array!(self, a => a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements in logical (row-major) order.
    pub fn scalars(&self) -> Vec<Scalar> {
        fn floats<T: Copy>(a: &ArrayD<T>, dtype: DType, f: impl Fn(T) -> (f64, u64)) -> Vec<Scalar> {
            a.iter()
                .map(|&x| {
                    let (value, bits) = f(x);
                    Scalar::Float { value, bits, dtype }
                })
                .collect()
        }
        match self {
            Tensor::F32(a) => floats(a, DType::F32, |x| (x as f64, x.to_bits() as u64)),
            Tensor::F64(a) => floats(a, DType::F64, |x| (x, x.to_bits())),
            Tensor::F16(a) => floats(a, DType::F16, |x| (x.to_f64(), x.to_bits() as u64)),
            Tensor::BF16(a) => floats(a, DType::BF16, |x| (x.to_f64(), x.to_bits() as u64)),
            Tensor::I8(a) => a.iter().map(|&x| Scalar::Int(x.into())).collect(),
            Tensor::U8(a) => a.iter().map(|&x| Scalar::Int(x.into())).collect(),
            Tensor::I16(a) => a.iter().map(|&x| Scalar::Int(x.into())).collect(),
            Tensor::I32(a) => a.iter().map(|&x| Scalar::Int(x.into())).collect(),
            Tensor::I64(a) => a.iter().map(|&x| Scalar::Int(x)).collect(),
            Tensor::Bool(a) => a.iter().map(|&x| Scalar::Bool(x)).collect(),
        }
    }

    /// Builds a tensor of `dtype` and `shape` from row-major literal elements. Errors name the
    /// first element that does not fit the dtype.
    pub fn from_literals(dtype: DType, shape: &[usize], elems: &[Literal]) -> Result<Tensor, LiteralError> {
        let expected: usize = shape.iter().product();
        if elems.len() != expected {
            return Err(LiteralError::Count { expected, found: elems.len() });
        }
        fn build<T>(
            shape: &[usize],
            elems: &[Literal],
            f: impl Fn(usize, Literal) -> Result<T, LiteralError>,
        ) -> Result<ArrayD<T>, LiteralError> {
            let data = elems.iter().enumerate().map(|(i, &e)| f(i, e)).collect::<Result<Vec<T>, _>>()?;
            ArrayD::from_shape_vec(IxDyn(shape), data)
                .map_err(|_| LiteralError::Count { expected: shape.iter().product(), found: elems.len() })
        }
        fn int<T: TryFrom<i64>>(dtype: DType) -> impl Fn(usize, Literal) -> Result<T, LiteralError> {
            move |index, lit| match lit {
                Literal::Int(v) => T::try_from(v).map_err(|_| LiteralError::OutOfRange { index, dtype }),
                _ => Err(LiteralError::Kind { index, dtype }),
            }
        }
        let float = |dtype: DType| {
            move |index: usize, lit: Literal| -> Result<f64, LiteralError> {
                match lit {
                    Literal::Float { value, .. } => Ok(value),
                    Literal::Int(v) => Ok(v as f64),
                    _ => Err(LiteralError::Kind { index, dtype }),
                }
            }
        };
        // A `nan(0x..)` literal carries raw bits of the element type itself.
        let bits = |index: usize, lit: Literal, width: u32| -> Option<Result<u64, LiteralError>> {
            match lit {
                Literal::NanBits(b) if width < 64 && b >> width != 0 => {
                    Some(Err(LiteralError::OutOfRange { index, dtype }))
                }
                Literal::NanBits(b) => Some(Ok(b)),
                _ => None,
            }
        };
        Ok(match dtype {
            DType::F32 => Tensor::F32(build(shape, elems, |i, e| match (bits(i, e, 32), e) {
                (Some(b), _) => b.map(|b| f32::from_bits(b as u32)),
                (None, Literal::Float { as_f32, .. }) => Ok(as_f32),
                (None, _) => float(dtype)(i, e).map(|v| v as f32),
            })?),
            DType::F64 => Tensor::F64(build(shape, elems, |i, e| match bits(i, e, 64) {
                Some(b) => b.map(f64::from_bits),
                None => float(dtype)(i, e),
            })?),
            DType::F16 => Tensor::F16(build(shape, elems, |i, e| match bits(i, e, 16) {
                Some(b) => b.map(|b| f16::from_bits(b as u16)),
                None => float(dtype)(i, e).map(|v| if v.is_nan() { f16::NAN } else { f16::from_f64(v) }),
            })?),
            DType::BF16 => Tensor::BF16(build(shape, elems, |i, e| match bits(i, e, 16) {
                Some(b) => b.map(|b| bf16::from_bits(b as u16)),
                None => float(dtype)(i, e).map(|v| if v.is_nan() { bf16::NAN } else { bf16::from_f64(v) }),
            })?),
            DType::I8 => Tensor::I8(build(shape, elems, int(dtype))?),
            DType::U8 => Tensor::U8(build(shape, elems, int(dtype))?),
            DType::I16 => Tensor::I16(build(shape, elems, int(dtype))?),
            DType::I32 => Tensor::I32(build(shape, elems, int(dtype))?),
            DType::I64 => Tensor::I64(build(shape, elems, int(dtype))?),
            DType::Bool => Tensor::Bool(build(shape, elems, |index, lit| match lit {
                Literal::Bool(b) => Ok(b),
                _ => Err(LiteralError::Kind { index, dtype }),
            })?),
        })
    }

    /// Bitwise equality: same dtype, shape and element bits.
    pub fn bit_eq(&self, other: &Tensor) -> bool {
        self.dtype() == other.dtype()
            && self.shape() == other.shape()
            && with_array!(self, a => a.iter().map(|&x| x.bits()).eq(other.element_bits()))
    }

    pub fn hash_bits<H: Hasher>(&self, state: &mut H) {
        self.dtype().hash(state);
        self.shape().hash(state);
        // Monomorphic per element type: constants and calibration statistics (histograms of
        // thousands of bins) are hashed whenever their attributes are interned.
        with_array!(self, a => {
            for &x in a.iter() {
                state.write_u64(x.bits());
            }
        })
    }

    fn element_bits(&self) -> Box<dyn Iterator<Item = u64> + '_> {
        with_array!(self, a => Box::new(a.iter().map(|&x| x.bits())))
    }
}

/// An element's bit pattern, for bitwise equality and hashing.
trait ElementBits: Copy {
    fn bits(self) -> u64;
}

macro_rules! element_bits {
    ($($t:ty => |$x:ident| $bits:expr),* $(,)?) => {
        $(impl ElementBits for $t {
            fn bits(self) -> u64 {
                let $x = self;
                $bits
            }
        })*
    };
}

element_bits! {
    f32 => |x| u64::from(x.to_bits()),
    f64 => |x| x.to_bits(),
    f16 => |x| u64::from(x.to_bits()),
    bf16 => |x| u64::from(x.to_bits()),
    i8 => |x| i64::from(x) as u64,
    u8 => |x| u64::from(x),
    i16 => |x| i64::from(x) as u64,
    i32 => |x| i64::from(x) as u64,
    i64 => |x| x as u64,
    bool => |x| u64::from(x),
}

/// One element of a tensor literal as written in the text.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Literal {
    Int(i64),
    /// A float, parsed as f64 and, separately, straight to f32 (going through f64 could
    /// round twice).
    Float {
        value: f64,
        as_f32: f32,
    },
    /// `nan(0x...)`: a NaN with an explicit bit pattern of the element type.
    NanBits(u64),
    Bool(bool),
}

/// Why a literal does not make a tensor of the declared type.
#[derive(Clone, Debug, PartialEq)]
pub enum LiteralError {
    Count { expected: usize, found: usize },
    Kind { index: usize, dtype: DType },
    OutOfRange { index: usize, dtype: DType },
}

impl std::fmt::Display for LiteralError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LiteralError::Count { expected, found } => {
                write!(f, "the literal has {found} elements but the type has {expected}")
            }
            LiteralError::Kind { index, dtype } => {
                write!(f, "element {index} of the literal is not a valid {dtype} value")
            }
            LiteralError::OutOfRange { index, dtype } => {
                write!(f, "element {index} of the literal does not fit in {dtype}")
            }
        }
    }
}

/// The multi-dimensional index of the `flat`-th element (row-major) of a tensor of `shape`.
pub fn unravel_index(flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    let mut rest = flat;
    for (i, &d) in index.iter_mut().zip(shape).rev() {
        *i = rest % d.max(1);
        rest /= d.max(1);
    }
    index
}

impl Tensor {
    /// The first element (in row-major order) that is a float NaN or ±inf: its index and
    /// value. `None` for integer tensors and finite data.
    pub fn first_nonfinite(&self) -> Option<(Vec<usize>, f64)> {
        fn find<T: Copy>(a: &ArrayD<T>, widen: impl Fn(T) -> f64) -> Option<(Vec<usize>, f64)> {
            let (flat, v) = a.iter().map(|&v| widen(v)).enumerate().find(|(_, v)| !v.is_finite())?;
            Some((unravel_index(flat, a.shape()), v))
        }
        match self {
            Tensor::F32(a) => find(a, f64::from),
            Tensor::F64(a) => find(a, |v| v),
            Tensor::F16(a) => find(a, f16::to_f64),
            Tensor::BF16(a) => find(a, bf16::to_f64),
            _ => None,
        }
    }

    /// Every element widened to f64 (exact for all QIR types but i64 beyond 2^53).
    pub fn to_f64_array(&self) -> ArrayD<f64> {
        match self {
            Tensor::F32(a) => a.mapv(f64::from),
            Tensor::F64(a) => a.clone(),
            Tensor::F16(a) => a.mapv(f16::to_f64),
            Tensor::BF16(a) => a.mapv(bf16::to_f64),
            Tensor::I8(a) => a.mapv(f64::from),
            Tensor::U8(a) => a.mapv(f64::from),
            Tensor::I16(a) => a.mapv(f64::from),
            Tensor::I32(a) => a.mapv(f64::from),
            Tensor::I64(a) => a.mapv(|v| v as f64),
            Tensor::Bool(a) => a.mapv(|v| f64::from(u8::from(v))),
        }
    }

    /// The elements converted to `dtype` as PyTorch's `.to(dtype)` does on CPU: floats round to
    /// nearest even, floats to integers truncate toward zero (saturating at the i64 range, NaN
    /// to 0) and then wrap like integer narrowing, integers wrap, and bool is 0/1.
    pub fn cast(&self, dtype: DType) -> Tensor {
        if self.dtype() == dtype {
            return self.clone();
        }
        // Integers go through i64 (exact); floats through f64 (exact for every float type).
        let ints = match self {
            Tensor::I8(a) => Some(a.mapv(i64::from)),
            Tensor::U8(a) => Some(a.mapv(i64::from)),
            Tensor::I16(a) => Some(a.mapv(i64::from)),
            Tensor::I32(a) => Some(a.mapv(i64::from)),
            Tensor::I64(a) => Some(a.clone()),
            Tensor::Bool(a) => Some(a.mapv(i64::from)),
            _ => None,
        };
        match ints {
            Some(i) => Tensor::from_i64(i, dtype),
            None => {
                let f = self.to_f64_array();
                match dtype {
                    DType::F32 => Tensor::F32(f.mapv(|v| v as f32)),
                    DType::F64 => Tensor::F64(f),
                    DType::F16 => Tensor::F16(f.mapv(f16::from_f64)),
                    DType::BF16 => Tensor::BF16(f.mapv(bf16::from_f64)),
                    DType::Bool => Tensor::Bool(f.mapv(|v| v != 0.0)),
                    _ => Tensor::from_i64(f.mapv(|v| v as i64), dtype),
                }
            }
        }
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        Tensor::from_i64(ArrayD::zeros(ndarray::IxDyn(shape)), dtype)
    }

    /// Integers converted to `dtype`: narrowing wraps, floats round to nearest even.
    fn from_i64(a: ArrayD<i64>, dtype: DType) -> Tensor {
        match dtype {
            DType::F32 => Tensor::F32(a.mapv(|v| v as f32)),
            DType::F64 => Tensor::F64(a.mapv(|v| v as f64)),
            DType::F16 => Tensor::F16(a.mapv(|v| f16::from_f64(v as f64))),
            DType::BF16 => Tensor::BF16(a.mapv(|v| bf16::from_f64(v as f64))),
            DType::I8 => Tensor::I8(a.mapv(|v| v as i8)),
            DType::U8 => Tensor::U8(a.mapv(|v| v as u8)),
            DType::I16 => Tensor::I16(a.mapv(|v| v as i16)),
            DType::I32 => Tensor::I32(a.mapv(|v| v as i32)),
            DType::I64 => Tensor::I64(a),
            DType::Bool => Tensor::Bool(a.mapv(|v| v != 0)),
        }
    }

    /// Applies a shape-only transformation (reshape, permute, slice, …) to the data, whatever
    /// its element type.
    pub fn map_layout(&self, f: impl LayoutFn) -> Result<Tensor, String> {
        Ok(match self {
            Tensor::F32(a) => Tensor::F32(f.apply(a)?),
            Tensor::F64(a) => Tensor::F64(f.apply(a)?),
            Tensor::F16(a) => Tensor::F16(f.apply(a)?),
            Tensor::BF16(a) => Tensor::BF16(f.apply(a)?),
            Tensor::I8(a) => Tensor::I8(f.apply(a)?),
            Tensor::U8(a) => Tensor::U8(f.apply(a)?),
            Tensor::I16(a) => Tensor::I16(f.apply(a)?),
            Tensor::I32(a) => Tensor::I32(f.apply(a)?),
            Tensor::I64(a) => Tensor::I64(f.apply(a)?),
            Tensor::Bool(a) => Tensor::Bool(f.apply(a)?),
        })
    }
}

/// A data-movement function that works for every element type.
pub trait LayoutFn {
    fn apply<T: Clone>(&self, a: &ArrayD<T>) -> Result<ArrayD<T>, String>;
}
