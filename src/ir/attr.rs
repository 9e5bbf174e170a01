//! Attribute values: the typed constants an op carries beside its operands.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::types::DType;
use crate::tensor::Tensor;

/// One attribute value.
///
/// Floats compare and hash by bit pattern, so interning and CSE treat `nan` payloads and `-0.0`
/// exactly as written.
#[derive(Clone, Debug)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Box<str>),
    DType(DType),
    List(Vec<Attr>),
    Dict(Dict),
    /// A dense constant (the `value` of `const`), shared because passes copy it around.
    Tensor(Arc<Tensor>),
}

impl Attr {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Attr::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// Floats, and ints where a float is expected.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Attr::Float(v) => Some(*v),
            Attr::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Attr::Bool(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Attr::Str(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_dtype(&self) -> Option<DType> {
        match self {
            Attr::DType(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_ints(&self) -> Option<Vec<i64>> {
        match self {
            Attr::List(items) => items.iter().map(Attr::as_int).collect(),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Attr::Dict(d) => Some(d),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Attr::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// A short name of the value's kind, for diagnostics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Attr::Int(_) => "an integer",
            Attr::Float(_) => "a float",
            Attr::Bool(_) => "a bool",
            Attr::Str(_) => "a string",
            Attr::DType(_) => "a dtype",
            Attr::List(_) => "a list",
            Attr::Dict(_) => "a dictionary",
            Attr::Tensor(_) => "a tensor",
        }
    }
}

impl PartialEq for Attr {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Attr::Int(a), Attr::Int(b)) => a == b,
            (Attr::Float(a), Attr::Float(b)) => a.to_bits() == b.to_bits(),
            (Attr::Bool(a), Attr::Bool(b)) => a == b,
            (Attr::Str(a), Attr::Str(b)) => a == b,
            (Attr::DType(a), Attr::DType(b)) => a == b,
            (Attr::List(a), Attr::List(b)) => a == b,
            (Attr::Dict(a), Attr::Dict(b)) => a == b,
            (Attr::Tensor(a), Attr::Tensor(b)) => Arc::ptr_eq(a, b) || a.bit_eq(b),
            _ => false,
        }
    }
}

impl Eq for Attr {}

impl Hash for Attr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Attr::Int(v) => v.hash(state),
            Attr::Float(v) => v.to_bits().hash(state),
            Attr::Bool(v) => v.hash(state),
            Attr::Str(v) => v.hash(state),
            Attr::DType(v) => v.hash(state),
            Attr::List(v) => v.hash(state),
            Attr::Dict(v) => v.hash(state),
            Attr::Tensor(t) => t.hash_bits(state),
        }
    }
}

/// An ordered dictionary of attributes (`{key = value, ...}`); keys are unique and keep the
/// order they were written in, so printing is deterministic and faithful.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dict {
    entries: Vec<(Box<str>, Attr)>,
}

impl Dict {
    pub fn new() -> Self {
        Dict::default()
    }

    pub fn get(&self, key: &str) -> Option<&Attr> {
        self.entries.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }

    /// Inserts or replaces `key`, keeping its position when it already exists.
    pub fn insert(&mut self, key: &str, value: Attr) {
        match self.entries.iter_mut().find(|(k, _)| &**k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key.into(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Attr> {
        let index = self.entries.iter().position(|(k, _)| &**k == key)?;
        Some(self.entries.remove(index).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Attr)> {
        self.entries.iter().map(|(k, v)| (&**k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The attributes of one op, positionally matching its [`crate::ops::OpDef::attrs`] schema; an
/// optional attribute without a default is `None` when absent.
pub type Attrs = Box<[Option<Attr>]>;
