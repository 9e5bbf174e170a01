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
pub const OBSERVER_OPTIONS: &[&str] =
    &["eps", "averaging_constant", "bins", "percentile", "reduce_range", "customized_range", "fake_quant"];

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

impl Annotation {
    /// Whether it quantizes anything: an input spec or an output spec that is not `none`
    /// (PT2E's `_is_valid_annotation`, which the passes after convert key on).
    pub fn quantizes_anything(&self) -> bool {
        self.inputs.iter().any(|s| *s != SpecRef::None) || self.output.as_ref().is_some_and(|s| *s != SpecRef::None)
    }
}

/// Why a dictionary is not a valid [`QSpec`]; `key` names the offending entry.
#[derive(Clone, Debug, PartialEq)]
pub struct QSpecError {
    /// The offending entry; `None` for the spec as a whole (a missing field).
    pub key: Option<String>,
    pub message: String,
    /// A short label for the offending entry (or the spec).
    pub label: String,
    /// The label belongs on the key alone (an unknown field), not on `key = value`.
    pub key_only: bool,
    /// Another entry involved, and what to say at it (`qmax` when `qmin` > `qmax`).
    pub related: Option<Box<(String, String)>>,
    pub hint: Option<String>,
}

impl QSpecError {
    pub fn at(key: &str, message: impl Into<String>, label: impl Into<String>) -> Self {
        QSpecError {
            key: Some(key.to_string()),
            message: message.into(),
            label: label.into(),
            key_only: false,
            related: None,
            hint: None,
        }
    }

    fn related(mut self, key: &str, label: impl Into<String>) -> Self {
        self.related = Some(Box::new((key.to_string(), label.into())));
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
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
                let mut e = QSpecError::at(key, format!("unknown quantization spec field `{key}`"), "unknown field")
                    .hint(crate::diag::suggest(key, known.iter().copied()));
                e.key_only = true;
                return Err(e);
            }
        }
        let get_int = |key: &str| -> Result<Option<i64>, QSpecError> {
            dict.get(key)
                .map(|a| {
                    a.as_int().ok_or_else(|| {
                        QSpecError::at(
                            key,
                            format!("`{key}` must be an integer"),
                            format!("expected an integer, found {}", a.kind_name()),
                        )
                    })
                })
                .transpose()
        };
        let int_dtypes = "i8, u8, i16, i32 or i64";
        let dtype = match dict.get("dtype") {
            Some(a) => a.as_dtype().ok_or_else(|| {
                let e = QSpecError::at(
                    "dtype",
                    "`dtype` must be a dtype such as i8",
                    format!("expected a dtype, found {}", a.kind_name()),
                );
                match a.as_str().and_then(DType::from_name) {
                    Some(d) => e.hint(format!("dtypes are written without quotes: `dtype = {d}`")),
                    None => e.hint(format!("quantized dtypes: {int_dtypes}")),
                }
            })?,
            None => {
                return Err(QSpecError {
                    key: None,
                    message: "a quantization spec needs a `dtype`".into(),
                    label: "this spec has no `dtype`".into(),
                    key_only: false,
                    related: None,
                    hint: Some(format!("add `dtype = i8` (quantized dtypes: {int_dtypes})")),
                });
            }
        };
        let full_range = |d: DType| match d.int_range() {
            Some((lo, hi)) => format!("the full {d} range is `qmin = {lo}, qmax = {hi}`"),
            None => format!("{d} is not an integer type"),
        };
        let (qmin, qmax) = match (get_int("qmin")?, get_int("qmax")?, dtype.int_range()) {
            (Some(lo), Some(hi), _) => (lo, hi),
            (None, None, Some(range)) => range,
            (None, None, None) => (0, 0),
            (Some(_), None, _) => {
                return Err(QSpecError::at(
                    "qmin",
                    "`qmin` and `qmax` go together: give both or neither",
                    "`qmin` without `qmax`",
                )
                .hint(full_range(dtype)))
            }
            (None, Some(_), _) => {
                return Err(QSpecError::at(
                    "qmax",
                    "`qmin` and `qmax` go together: give both or neither",
                    "`qmax` without `qmin`",
                )
                .hint(full_range(dtype)))
            }
        };
        if qmin > qmax {
            return Err(QSpecError::at(
                "qmin",
                format!("`qmin` ({qmin}) is greater than `qmax` ({qmax})"),
                "greater than `qmax`",
            )
            .related("qmax", "`qmax` is here"));
        }
        if let Some((lo, hi)) = dtype.int_range() {
            if qmin < lo || qmax > hi {
                let (bad, other) = if qmin < lo { ("qmin", "qmax") } else { ("qmax", "qmin") };
                let mut e = QSpecError::at(
                    bad,
                    format!("the range [{qmin}, {qmax}] does not fit in {dtype} [{lo}, {hi}]"),
                    format!("outside the {dtype} range [{lo}, {hi}]"),
                )
                .related("dtype", format!("{dtype} holds [{lo}, {hi}]"))
                .hint(full_range(dtype));
                if qmin < lo && qmax > hi {
                    e = e.related(other, "also outside it");
                }
                return Err(e);
            }
        }
        let qscheme = match dict.get("qscheme") {
            None => QScheme::PerTensorAffine,
            Some(a) => a.as_str().and_then(QScheme::from_name).ok_or_else(|| {
                let names = QScheme::ALL.map(|q| q.name());
                let label = match a.as_str() {
                    Some(_) => "not a quantization scheme".to_string(),
                    None => format!("expected a string, found {}", a.kind_name()),
                };
                let written = a.as_str().unwrap_or_default();
                let prefixed: Vec<String> = names
                    .iter()
                    .filter(|n| !written.is_empty() && n.starts_with(written))
                    .map(|n| format!("\"{n}\""))
                    .collect();
                let hint = match crate::diag::closest(written, names.iter().copied()) {
                    Some(best) => format!("did you mean \"{best}\"?"),
                    None if !prefixed.is_empty() => format!("did you mean {}?", prefixed.join(" or ")),
                    None => format!("expected one of: {}", names.map(|n| format!("\"{n}\"")).join(", ")),
                };
                QSpecError::at("qscheme", "`qscheme` must name a quantization scheme", label).hint(hint)
            })?,
        };
        let ch_axis = get_int("ch_axis")?;
        match (qscheme.is_per_channel(), ch_axis) {
            (true, None) => {
                return Err(QSpecError::at("qscheme", "a per-channel spec needs `ch_axis`", "a per-channel scheme")
                    .hint("add `ch_axis = 0`: the dimension the channels are on"))
            }
            (false, Some(_)) => {
                return Err(QSpecError::at(
                    "ch_axis",
                    "`ch_axis` only applies to per-channel schemes",
                    format!("the scheme is {qscheme}"),
                )
                .hint("use a per-channel `qscheme` such as \"per_channel_symmetric\", or remove `ch_axis`"))
            }
            (_, Some(axis)) if axis < 0 => {
                return Err(QSpecError::at("ch_axis", "`ch_axis` must be non-negative", "negative axis")
                    .hint("count the axis from the front: 0 is the outermost dimension"))
            }
            _ => {}
        }
        let dynamic = match dict.get("dynamic") {
            None => false,
            Some(a) => a.as_bool().ok_or_else(|| {
                QSpecError::at(
                    "dynamic",
                    "`dynamic` must be true or false",
                    format!("expected `true` or `false`, found {}", a.kind_name()),
                )
            })?,
        };
        let observer = match dict.get("observer") {
            None => "minmax".to_string(),
            Some(a) => a
                .as_str()
                .ok_or_else(|| {
                    QSpecError::at(
                        "observer",
                        "`observer` must be a string",
                        format!("expected a string, found {}", a.kind_name()),
                    )
                    .hint("name the observer kind in quotes, such as `observer = \"histogram\"`")
                })?
                .to_string(),
        };
        let fixed = match (dict.get("scale"), get_int("zero_point")?) {
            (Some(s), Some(zp)) => {
                let scale = s.as_float().ok_or_else(|| {
                    QSpecError::at(
                        "scale",
                        "`scale` must be a float",
                        format!("expected a float, found {}", s.kind_name()),
                    )
                })?;
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(QSpecError::at(
                        "scale",
                        "`scale` must be positive and finite",
                        format!("{scale:?} is not a valid scale"),
                    ));
                }
                Some((scale, zp))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(QSpecError::at(
                    "scale",
                    "a fixed spec needs both `scale` and `zero_point`",
                    "`scale` without `zero_point`",
                )
                .hint("add `zero_point = 0` (or the fixed zero point)"))
            }
            (None, Some(_)) => {
                return Err(QSpecError::at(
                    "zero_point",
                    "a fixed spec needs both `scale` and `zero_point`",
                    "`zero_point` without `scale`",
                )
                .hint("add the fixed `scale`, such as `scale = 0.0078125`"))
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
