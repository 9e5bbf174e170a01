//! Tensor types: an element type ([`DType`], defined with the tensors below the IR and
//! re-exported here) and a shape of known or dynamic dims.

use std::fmt;

pub use crate::tensor::DType;

/// One dimension of a tensor shape: a known size or `?`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(u64),
    Dynamic,
}

impl Dim {
    pub fn known(self) -> Option<u64> {
        match self {
            Dim::Known(n) => Some(n),
            Dim::Dynamic => None,
        }
    }

    /// Two dims are compatible when equal or when either is dynamic.
    pub fn compatible(self, other: Dim) -> bool {
        match (self, other) {
            (Dim::Known(a), Dim::Known(b)) => a == b,
            _ => true,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Dynamic => f.write_str("?"),
        }
    }
}

/// A ranked tensor type: element type plus shape (`f32[1,3,?,224]`; a scalar is `f32[]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> Self {
        TensorType { dtype, shape }
    }

    pub fn fixed(dtype: DType, shape: &[u64]) -> Self {
        TensorType { dtype, shape: shape.iter().map(|&n| Dim::Known(n)).collect() }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements, when every dim is known (and the product fits).
    pub fn num_elements(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(d.known()?))
    }

    /// The shape as known sizes, when fully static.
    pub fn static_shape(&self) -> Option<Vec<usize>> {
        self.shape.iter().map(|d| d.known().and_then(|n| usize::try_from(n).ok())).collect()
    }

    /// Same dtype and pairwise-compatible dims.
    pub fn compatible(&self, other: &TensorType) -> bool {
        self.dtype == other.dtype
            && self.rank() == other.rank()
            && self.shape.iter().zip(&other.shape).all(|(a, b)| a.compatible(*b))
    }

    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType { dtype, shape: self.shape.clone() }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
