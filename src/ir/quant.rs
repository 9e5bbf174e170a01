//! Quantization vocabulary of the IR: quantization specs and per-op annotations.
//!
//! These mirror PT2E's `QuantizationSpec`, `SharedQuantizationSpec`, `DerivedQuantizationSpec`
//! and `FixedQParamsQuantizationSpec`, attached to an op as its `QuantizationAnnotation`
//! (one spec per input edge, one for the output). Text form (see `spec/language.md`):
//!
//! ```text
//! qspec @act = {dtype = i8, qmin = -128, qmax = 127, observer = "histogram", eps = 0.000244140625}
//! %y = linear(%x, %w, %b) : f32[1,10] quant[@act, @w8, none] -> @act
//! ```

use std::fmt;

use super::attr::{Attr, Dict};
use super::graph::{OpId, ValueId};
use super::types::DType;

/// How quantization parameters are laid out over a tensor.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum QScheme {
    PerTensorAffine,
    PerTensorSymmetric,
    PerChannelAffine,
    PerChannelSymmetric,
    PerChannelAffineFloatQParams,
}

impl QScheme {
    pub const ALL: [QScheme; 5] = [
        QScheme::PerTensorAffine,
        QScheme::PerTensorSymmetric,
        QScheme::PerChannelAffine,
        QScheme::PerChannelSymmetric,
        QScheme::PerChannelAffineFloatQParams,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QScheme::PerTensorAffine => "per_tensor_affine",
            QScheme::PerTensorSymmetric => "per_tensor_symmetric",
            QScheme::PerChannelAffine => "per_channel_affine",
            QScheme::PerChannelSymmetric => "per_channel_symmetric",
            QScheme::PerChannelAffineFloatQParams => "per_channel_affine_float_qparams",
        }
    }

    pub fn from_name(name: &str) -> Option<QScheme> {
        QScheme::ALL.into_iter().find(|q| q.name() == name)
    }

    pub fn is_per_channel(self) -> bool {
        matches!(self, QScheme::PerChannelAffine | QScheme::PerChannelSymmetric | QScheme::PerChannelAffineFloatQParams)
    }

    pub fn is_symmetric(self) -> bool {
        matches!(self, QScheme::PerTensorSymmetric | QScheme::PerChannelSymmetric)
    }
}

/// Observer options a spec may carry beside its core fields.
pub const OBSERVER_OPTIONS: &[&str] = &["eps", "averaging_constant", "bins", "reduce_range"];

/// A quantization spec: how one edge or value is to be quantized and observed.
#[derive(Clone, Debug, PartialEq)]
pub struct QSpec {
    pub dtype: DType,
    pub qmin: i64,
    pub qmax: i64,
    pub qscheme: QScheme,
    pub ch_axis: Option<i64>,
    pub dynamic: bool,
    /// The observer kind (`"minmax"`, `"histogram"`, …).
    pub observer: String,
    /// Observer options ([`OBSERVER_OPTIONS`]), in written order.
    pub options: Dict,
    /// Fixed qparams `(scale, zero_point)`: PT2E's `FixedQParamsQuantizationSpec`.
    pub fixed: Option<(f64, i64)>,
}

/// A spec definition at module level: `qspec @name = {...}`.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedQSpec {
    pub name: String,
    pub spec: QSpec,
    pub span: crate::diag::Span,
}

/// An edge (the value `value` as read by op `consumer`) or a value (an op's output).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EdgeOrValue {
    Edge { value: ValueId, consumer: OpId },
    Value(ValueId),
}

/// What an annotation says about one edge or output.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecRef {
    /// `none`: explicitly not quantized.
    None,
    /// `@name`: an index into `Module::qspecs`.
    Named(usize),
    /// `{...}`: an inline spec.
    Inline(QSpec),
    /// `shared(%v)` / `shared(%v -> %op)`: use the same observer as that value or edge.
    Shared(EdgeOrValue),
    /// `derived(%a -> %op, %w -> %op; @spec)`: qparams derived from others' (scale product, zp 0).
    Derived { from: Vec<EdgeOrValue>, spec: Box<SpecRef> },
}

/// The quantization annotation of one op: one entry per operand, plus its output.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotation {
    pub inputs: Vec<SpecRef>,
    pub output: Option<SpecRef>,
}

/// Why a dictionary is not a valid [`QSpec`]; `key` names the offending entry.
#[derive(Clone, Debug, PartialEq)]
pub struct QSpecError {
    pub key: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl QSpecError {
    fn at(key: &str, message: impl Into<String>) -> Self {
        QSpecError { key: Some(key.to_string()), message: message.into(), hint: None }
    }
}

const CORE_KEYS: &[&str] =
    &["dtype", "qmin", "qmax", "qscheme", "ch_axis", "dynamic", "observer", "scale", "zero_point"];

impl QSpec {
    /// Reads a spec from its dictionary form, checking every field.
    pub fn from_dict(dict: &Dict) -> Result<QSpec, QSpecError> {
        for (key, _) in dict.iter() {
            if !CORE_KEYS.contains(&key) && !OBSERVER_OPTIONS.contains(&key) {
                let known: Vec<&str> = CORE_KEYS.iter().chain(OBSERVER_OPTIONS).copied().collect();
                return Err(QSpecError {
                    key: Some(key.to_string()),
                    message: format!("unknown quantization spec field `{key}`"),
                    hint: Some(crate::diag::suggest(key, known.iter().copied())),
                });
            }
        }
        let get_int = |key: &str| -> Result<Option<i64>, QSpecError> {
            dict.get(key)
                .map(|a| a.as_int().ok_or_else(|| QSpecError::at(key, format!("`{key}` must be an integer"))))
                .transpose()
        };
        let dtype = match dict.get("dtype") {
            Some(a) => a.as_dtype().ok_or_else(|| QSpecError::at("dtype", "`dtype` must be a dtype such as i8"))?,
            None => {
                return Err(QSpecError { key: None, message: "a quantization spec needs a `dtype`".into(), hint: None })
            }
        };
        let (qmin, qmax) = match (get_int("qmin")?, get_int("qmax")?, dtype.int_range()) {
            (Some(lo), Some(hi), _) => (lo, hi),
            (None, None, Some(range)) => range,
            (None, None, None) => (0, 0),
            _ => {
                return Err(QSpecError::at(
                    if dict.get("qmin").is_some() { "qmin" } else { "qmax" },
                    "`qmin` and `qmax` go together: give both or neither",
                ))
            }
        };
        if qmin > qmax {
            return Err(QSpecError::at("qmin", format!("`qmin` ({qmin}) is greater than `qmax` ({qmax})")));
        }
        if let Some((lo, hi)) = dtype.int_range() {
            if qmin < lo || qmax > hi {
                return Err(QSpecError::at(
                    "qmin",
                    format!("the range [{qmin}, {qmax}] does not fit in {dtype} [{lo}, {hi}]"),
                ));
            }
        }
        let qscheme = match dict.get("qscheme") {
            None => QScheme::PerTensorAffine,
            Some(a) => a.as_str().and_then(QScheme::from_name).ok_or_else(|| QSpecError {
                key: Some("qscheme".into()),
                message: "`qscheme` must name a quantization scheme".into(),
                hint: Some(format!(
                    "expected one of: {}",
                    QScheme::ALL.map(|q| format!("\"{}\"", q.name())).join(", ")
                )),
            })?,
        };
        let ch_axis = get_int("ch_axis")?;
        match (qscheme.is_per_channel(), ch_axis) {
            (true, None) => return Err(QSpecError::at("qscheme", "a per-channel spec needs `ch_axis`")),
            (false, Some(_)) => return Err(QSpecError::at("ch_axis", "`ch_axis` only applies to per-channel schemes")),
            (_, Some(axis)) if axis < 0 => return Err(QSpecError::at("ch_axis", "`ch_axis` must be non-negative")),
            _ => {}
        }
        let dynamic = match dict.get("dynamic") {
            None => false,
            Some(a) => a.as_bool().ok_or_else(|| QSpecError::at("dynamic", "`dynamic` must be true or false"))?,
        };
        let observer = match dict.get("observer") {
            None => "minmax".to_string(),
            Some(a) => a.as_str().ok_or_else(|| QSpecError::at("observer", "`observer` must be a string"))?.to_string(),
        };
        let fixed = match (dict.get("scale"), get_int("zero_point")?) {
            (Some(s), Some(zp)) => {
                let scale = s.as_float().ok_or_else(|| QSpecError::at("scale", "`scale` must be a float"))?;
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(QSpecError::at("scale", "`scale` must be positive and finite"));
                }
                Some((scale, zp))
            }
            (None, None) => None,
            (Some(_), None) => return Err(QSpecError::at("scale", "a fixed spec needs both `scale` and `zero_point`")),
            (None, Some(_)) => {
                return Err(QSpecError::at("zero_point", "a fixed spec needs both `scale` and `zero_point`"))
            }
        };
        let mut options = Dict::new();
        for (key, value) in dict.iter().filter(|(k, _)| OBSERVER_OPTIONS.contains(k)) {
            options.insert(key, value.clone());
        }
        Ok(QSpec { dtype, qmin, qmax, qscheme, ch_axis, dynamic, observer, options, fixed })
    }

    /// The canonical dictionary form (the inverse of [`QSpec::from_dict`]).
    pub fn to_dict(&self) -> Dict {
        let mut d = Dict::new();
        d.insert("dtype", Attr::DType(self.dtype));
        d.insert("qmin", Attr::Int(self.qmin));
        d.insert("qmax", Attr::Int(self.qmax));
        d.insert("qscheme", Attr::Str(self.qscheme.name().into()));
        if let Some(axis) = self.ch_axis {
            d.insert("ch_axis", Attr::Int(axis));
        }
        if self.dynamic {
            d.insert("dynamic", Attr::Bool(true));
        }
        d.insert("observer", Attr::Str(self.observer.as_str().into()));
        for (key, value) in self.options.iter() {
            d.insert(key, value.clone());
        }
        if let Some((scale, zp)) = self.fixed {
            d.insert("scale", Attr::Float(scale));
            d.insert("zero_point", Attr::Int(zp));
        }
        d
    }
}

impl fmt::Display for QScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
