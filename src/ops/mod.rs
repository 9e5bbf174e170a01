//! The op registry: every op described once — operands, attribute schema with defaults, result
//! type rule, traits. The parser, lowering, verifier, printer, passes and interpreter all read
//! it; nothing about an op is written anywhere else.

mod defs;
pub mod infer;

use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use crate::ir::attr::{Attr, Attrs};
use crate::ir::types::{DType, TensorType};

pub use defs::*;
pub use infer::{Blame, InferCx, TypeError};

/// An op's identity: an index into [`OPS`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpKind(u16);

impl OpKind {
    pub fn def(self) -> &'static OpDef {
        &OPS[self.0 as usize]
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// Whether the op has any of `traits`.
    pub fn has(self, traits: Traits) -> bool {
        self.def().has(traits)
    }

    /// Looks an op up by its QIR name (a hash lookup: lowering does it once per op).
    pub fn from_name(name: &str) -> Option<OpKind> {
        static BY_NAME: OnceLock<FxHashMap<&'static str, OpKind>> = OnceLock::new();
        let by_name = BY_NAME.get_or_init(|| OpKind::all().map(|k| (k.name(), k)).collect());
        by_name.get(name).copied()
    }

    pub fn all() -> impl Iterator<Item = OpKind> {
        (0..OPS.len()).map(|i| OpKind(i as u16))
    }
}

/// How many values an operand slot takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arity {
    One,
    /// May be left out; only trailing slots are optional.
    Optional,
    /// Zero or more (the last slot only).
    Variadic,
}

#[derive(Copy, Clone, Debug)]
pub struct OperandDef {
    pub name: &'static str,
    pub arity: Arity,
}

/// The kind of value an attribute holds.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum AttrKind {
    Int,
    Float,
    Bool,
    /// A string; when the list is non-empty, one of those spellings.
    Str(&'static [&'static str]),
    Ints,
    DType,
    Dict,
    /// A dense tensor literal shaped by the op's result type (`const`).
    Tensor,
}

impl AttrKind {
    pub fn describe(self) -> String {
        match self {
            AttrKind::Int => "an integer".into(),
            AttrKind::Float => "a float".into(),
            AttrKind::Bool => "a bool".into(),
            AttrKind::Str([]) => "a string".into(),
            AttrKind::Str(choices) => {
                format!("one of {}", choices.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "))
            }
            AttrKind::Ints => "a list of integers".into(),
            AttrKind::DType => "a dtype".into(),
            AttrKind::Dict => "a dictionary".into(),
            AttrKind::Tensor => "a tensor literal".into(),
        }
    }
}

/// A default value, spelled so it can live in a `static` table.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum DefaultValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'static str),
    Ints(&'static [i64]),
    DType(DType),
}

impl DefaultValue {
    pub fn to_attr(self) -> Attr {
        match self {
            DefaultValue::Int(v) => Attr::Int(v),
            DefaultValue::Float(v) => Attr::Float(v),
            DefaultValue::Bool(v) => Attr::Bool(v),
            DefaultValue::Str(v) => Attr::Str(v.into()),
            DefaultValue::Ints(v) => Attr::List(v.iter().map(|&i| Attr::Int(i)).collect()),
            DefaultValue::DType(v) => Attr::DType(v),
        }
    }

    /// `self.to_attr() == *attr`, without building the attribute.
    pub fn matches(self, attr: &Attr) -> bool {
        match (self, attr) {
            (DefaultValue::Int(a), Attr::Int(b)) => a == *b,
            (DefaultValue::Float(a), Attr::Float(b)) => a.to_bits() == b.to_bits(),
            (DefaultValue::Bool(a), Attr::Bool(b)) => a == *b,
            (DefaultValue::Str(a), Attr::Str(b)) => a == &**b,
            (DefaultValue::Ints(a), Attr::List(items)) => {
                a.len() == items.len() && a.iter().zip(items).all(|(&x, y)| matches!(y, Attr::Int(v) if *v == x))
            }
            (DefaultValue::DType(a), Attr::DType(b)) => a == *b,
            _ => false,
        }
    }
}

/// Whether an attribute must be written, may be absent, or has a default.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Presence {
    Required,
    Optional,
    Default(DefaultValue),
}

#[derive(Copy, Clone, Debug)]
pub struct AttrDef {
    pub name: &'static str,
    pub kind: AttrKind,
    pub presence: Presence,
}

/// The result type rule: operand types and attributes in, result types out (or what is wrong,
/// and which part of the op it blames).
pub type InferFn = fn(&InferCx<'_>) -> Result<Vec<TensorType>, TypeError>;

/// Typed access to an op's attributes by name; the type rules and the kernels share it.
pub trait AttrAccess {
    /// The attribute `name` (its default when not written), if present.
    fn attr(&self, name: &str) -> Option<&Attr>;

    fn int(&self, name: &str) -> Result<i64, String> {
        self.attr(name).and_then(Attr::as_int).ok_or_else(|| format!("missing integer attribute `{name}`"))
    }
    fn opt_int(&self, name: &str) -> Option<i64> {
        self.attr(name).and_then(Attr::as_int)
    }
    fn float(&self, name: &str) -> Result<f64, String> {
        self.attr(name).and_then(Attr::as_float).ok_or_else(|| format!("missing float attribute `{name}`"))
    }
    fn opt_float(&self, name: &str) -> Option<f64> {
        self.attr(name).and_then(Attr::as_float)
    }
    fn ints(&self, name: &str) -> Result<Vec<i64>, String> {
        self.attr(name).and_then(Attr::as_ints).ok_or_else(|| format!("missing list attribute `{name}`"))
    }
    fn opt_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).and_then(Attr::as_ints)
    }
    fn dtype(&self, name: &str) -> Result<DType, String> {
        self.attr(name).and_then(Attr::as_dtype).ok_or_else(|| format!("missing dtype attribute `{name}`"))
    }
    fn boolean(&self, name: &str) -> Result<bool, String> {
        self.attr(name).and_then(Attr::as_bool).ok_or_else(|| format!("missing bool attribute `{name}`"))
    }
    fn string(&self, name: &str) -> Result<String, String> {
        self.attr(name)
            .and_then(Attr::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("missing string attribute `{name}`"))
    }
}

/// What passes, quantizers and the interpreter may assume about an op, as flags. Every
/// question of the form "is this one of the ops that …" is answered here, never by a list of
/// names.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Traits(u16);

impl Traits {
    pub const NONE: Traits = Traits(0);
    /// No side effects: DCE may delete it when unused and CSE may merge equal copies.
    pub const PURE: Traits = Traits(1);
    /// Yields a constant tensor from attributes alone (`const`, `weight`).
    pub const CONSTANT: Traits = Traits(1 << 1);
    /// A quantize op: float in, integer out, with its qparams (`fold-quantize` folds them).
    pub const QUANTIZE: Traits = Traits(1 << 2);
    /// A dequantize op: integer in, float out.
    pub const DEQUANTIZE: Traits = Traits(1 << 3);
    /// Quantizes and dequantizes in float, as QAT trains.
    pub const FAKE_QUANTIZE: Traits = Traits(1 << 4);
    /// Records statistics of what flows through it (`observer`).
    pub const OBSERVER: Traits = Traits(1 << 5);
    /// Its one result is its first operand, unchanged: the interpreter shares the tensor.
    pub const ALIASES_INPUT: Traits = Traits(1 << 6);
    /// Carries state a run may update (observer statistics, batch-norm running statistics):
    /// calibration hooks see these ops.
    pub const STATEFUL: Traits = Traits(1 << 7);

    /// The ops that `prepare` and `convert` put on a quantized edge: an annotation of the edge
    /// stays valid through them.
    pub const ON_QUANT_EDGE: Traits =
        Traits(Traits::QUANTIZE.0 | Traits::DEQUANTIZE.0 | Traits::FAKE_QUANTIZE.0 | Traits::OBSERVER.0);

    pub const fn with(self, other: Traits) -> Traits {
        Traits(self.0 | other.0)
    }

    const fn without(self, other: Traits) -> Traits {
        Traits(self.0 & !other.0)
    }

    /// Whether `self` has any of the flags of `any`.
    pub const fn intersects(self, any: Traits) -> bool {
        self.0 & any.0 != 0
    }
}

/// One op's description.
pub struct OpDef {
    pub name: &'static str,
    pub summary: &'static str,
    pub operands: &'static [OperandDef],
    pub num_results: usize,
    pub attrs: &'static [AttrDef],
    pub infer: InferFn,
    pub traits: Traits,
}

impl OpDef {
    /// A pure op with one result and no other traits; the builder methods below add the rest.
    pub const fn new(
        name: &'static str,
        summary: &'static str,
        operands: &'static [OperandDef],
        attrs: &'static [AttrDef],
        infer: InferFn,
    ) -> OpDef {
        OpDef { name, summary, operands, num_results: 1, attrs, infer, traits: Traits::PURE }
    }

    pub const fn results(mut self, count: usize) -> OpDef {
        self.num_results = count;
        self
    }

    pub const fn traits(mut self, traits: Traits) -> OpDef {
        self.traits = self.traits.with(traits);
        self
    }

    /// Has side effects: never deleted or merged.
    pub const fn impure(mut self) -> OpDef {
        self.traits = self.traits.without(Traits::PURE);
        self
    }

    /// Whether DCE may delete it and CSE merge it.
    pub fn is_pure(&self) -> bool {
        self.traits.intersects(Traits::PURE)
    }

    pub fn has(&self, traits: Traits) -> bool {
        self.traits.intersects(traits)
    }
}

impl OpDef {
    pub fn attr_index(&self, name: &str) -> Option<usize> {
        self.attrs.iter().position(|a| a.name == name)
    }

    /// The operand list as `--list-ops` and diagnostics show it: `%input, %weight, [%bias]`.
    pub fn signature(&self) -> String {
        let parts: Vec<String> = self
            .operands
            .iter()
            .map(|o| match o.arity {
                Arity::One => format!("%{}", o.name),
                Arity::Optional => format!("[%{}]", o.name),
                Arity::Variadic => format!("%{}...", o.name),
            })
            .collect();
        parts.join(", ")
    }

    /// The smallest and largest operand counts the op accepts (`None` = unbounded).
    pub fn operand_count_range(&self) -> (usize, Option<usize>) {
        let required = self.operands.iter().filter(|o| o.arity == Arity::One).count();
        let variadic = self.operands.iter().any(|o| o.arity == Arity::Variadic);
        (required, (!variadic).then_some(self.operands.len()))
    }

    /// The attribute set with every default filled in, from the attributes that were written.
    /// Positions follow `self.attrs`.
    pub fn complete_attrs(&self, mut written: Vec<Option<Attr>>) -> Attrs {
        written.resize(self.attrs.len(), None);
        for (slot, def) in written.iter_mut().zip(self.attrs) {
            if slot.is_none() {
                if let Presence::Default(d) = def.presence {
                    *slot = Some(d.to_attr());
                }
            }
        }
        written.into_boxed_slice()
    }

    /// Whether `value` is the attribute's default (the printer leaves defaults out).
    pub fn is_default(&self, index: usize, value: &Attr) -> bool {
        matches!(self.attrs[index].presence, Presence::Default(d) if d.matches(value))
    }

    /// Infers result types from operand types and the complete attribute set.
    pub fn infer(
        &'static self,
        operands: &[&TensorType],
        attrs: &[Option<Attr>],
        declared: &[TensorType],
    ) -> Result<Vec<TensorType>, TypeError> {
        (self.infer)(&InferCx { def: self, operands, attrs, declared })
    }
}

/// Checks that `value` is of `kind`, converting where the text is lenient (an integer where a
/// float is expected). Returns the attribute to store or a message.
pub fn check_attr_kind(kind: AttrKind, value: Attr) -> Result<Attr, String> {
    validate_attr_kind(kind, &value)?;
    Ok(match (kind, value) {
        (AttrKind::Float, Attr::Int(i)) => Attr::Float(i as f64),
        (_, v) => v,
    })
}

/// Whether [`check_attr_kind`] accepts `value` for `kind`, without taking (or copying) it.
pub fn validate_attr_kind(kind: AttrKind, value: &Attr) -> Result<(), String> {
    match (kind, value) {
        (AttrKind::Int, Attr::Int(_))
        | (AttrKind::Float, Attr::Int(_) | Attr::Float(_))
        | (AttrKind::Bool, Attr::Bool(_))
        | (AttrKind::DType, Attr::DType(_))
        | (AttrKind::Dict, Attr::Dict(_))
        | (AttrKind::Tensor, Attr::Tensor(_)) => Ok(()),
        (AttrKind::Str(choices), Attr::Str(s)) => {
            if choices.is_empty() || choices.contains(&&**s) {
                Ok(())
            } else {
                Err(format!("expected {}, found \"{s}\"", kind.describe()))
            }
        }
        (AttrKind::Ints, Attr::List(items)) => match items.iter().find(|i| !matches!(i, Attr::Int(_))) {
            Some(bad) => Err(format!("expected a list of integers, but an element is {}", bad.kind_name())),
            None => Ok(()),
        },
        (_, v) => Err(format!("expected {}, found {}", kind.describe(), v.kind_name())),
    }
}
