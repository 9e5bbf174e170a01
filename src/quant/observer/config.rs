//! An observer's configuration: its kind, target integer range and scheme, and options, read
//! from (and checked against) an `observer` op's attributes.

use super::{DEFAULT_AVERAGING_CONSTANT, DEFAULT_BINS, DEFAULT_PERCENTILE, MAX_BINS};
use crate::ir::attr::{Attr, Dict};
use crate::ir::graph::{Graph, OpId};
use crate::ir::quant::{QScheme, QSpec, QSpecError};
use crate::ir::DType;
use crate::quant::QRange;

/// Which observer collects the statistics.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObserverKind {
    MinMax,
    MovingAverageMinMax,
    PerChannelMinMax,
    MovingAveragePerChannelMinMax,
    Histogram,
    FixedQParams,
    Placeholder,
    Percentile,
    Entropy,
}

impl ObserverKind {
    pub const ALL: [ObserverKind; 9] = [
        ObserverKind::MinMax,
        ObserverKind::MovingAverageMinMax,
        ObserverKind::PerChannelMinMax,
        ObserverKind::MovingAveragePerChannelMinMax,
        ObserverKind::Histogram,
        ObserverKind::FixedQParams,
        ObserverKind::Placeholder,
        ObserverKind::Percentile,
        ObserverKind::Entropy,
    ];

    /// The name used in specs and `observer` ops.
    pub fn name(self) -> &'static str {
        match self {
            ObserverKind::MinMax => "minmax",
            ObserverKind::MovingAverageMinMax => "moving_average_minmax",
            ObserverKind::PerChannelMinMax => "per_channel_minmax",
            ObserverKind::MovingAveragePerChannelMinMax => "moving_average_per_channel_minmax",
            ObserverKind::Histogram => "histogram",
            ObserverKind::FixedQParams => "fixed_qparams",
            ObserverKind::Placeholder => "placeholder",
            ObserverKind::Percentile => "percentile",
            ObserverKind::Entropy => "entropy",
        }
    }

    pub fn from_name(name: &str) -> Option<ObserverKind> {
        ObserverKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Checks the observer a spec names, where the spec is read (a `qspec`, an inline spec, a
    /// quantizer file's spec): the IR reads specs without knowing the observer kinds, and an
    /// unknown one would otherwise surface only when calibration builds the observer.
    pub fn check_spec(spec: &QSpec) -> Result<(), QSpecError> {
        if ObserverKind::from_name(&spec.observer).is_some() {
            return Ok(());
        }
        let names = ObserverKind::ALL.map(ObserverKind::name);
        Err(QSpecError::at("observer", format!("unknown observer kind \"{}\"", spec.observer), "not an observer kind")
            .hint(crate::diag::suggest(&spec.observer, names.into_iter())))
    }

    /// Whether the kind keeps one range per channel.
    pub fn is_per_channel(self) -> bool {
        matches!(self, ObserverKind::PerChannelMinMax | ObserverKind::MovingAveragePerChannelMinMax)
    }

    /// Whether the kind computes qparams from observed statistics (a `UniformQuantizationObserverBase`).
    pub(super) fn is_uniform(self) -> bool {
        !matches!(self, ObserverKind::FixedQParams | ObserverKind::Placeholder)
    }

    pub(super) fn has_bins(self) -> bool {
        matches!(self, ObserverKind::Histogram | ObserverKind::Percentile | ObserverKind::Entropy)
    }

    /// The four min/max kinds (per-tensor or per-channel, moving average or not).
    pub(super) fn is_min_max(self) -> bool {
        matches!(
            self,
            ObserverKind::MinMax
                | ObserverKind::MovingAverageMinMax
                | ObserverKind::PerChannelMinMax
                | ObserverKind::MovingAveragePerChannelMinMax
        )
    }

    fn has_averaging_constant(self) -> bool {
        matches!(self, ObserverKind::MovingAverageMinMax | ObserverKind::MovingAveragePerChannelMinMax)
    }
}

impl std::fmt::Display for ObserverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How an observer changes the values flowing through it during calibration: PT2E's QAT
/// fake-quantize modules, which observe and then fake-quantize their input.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FakeQuant {
    /// `FusedMovingAvgObsFakeQuantize`: the forward's qparams come from ATen's
    /// `ChooseQuantizationParams` ([`crate::quant::choose_quantization_params`]: no eps, a
    /// 6.1e-5 floor), so they differ from the `calculate_qparams` ones convert uses.
    Fused,
    /// `FakeQuantize` (and `FixedQParamsFakeQuantize` for a `fixed_qparams` kind): the forward
    /// fake-quantizes with the observer's own `calculate_qparams`.
    Standard,
}

impl FakeQuant {
    /// The value of the `fake_quant` option.
    pub fn name(self) -> &'static str {
        match self {
            FakeQuant::Fused => "fused",
            FakeQuant::Standard => "fake_quantize",
        }
    }

    fn from_name(name: &str) -> Option<FakeQuant> {
        [FakeQuant::Fused, FakeQuant::Standard].into_iter().find(|f| f.name() == name)
    }
}

/// Everything an observer needs to know besides what it has seen.
#[derive(Clone, Debug, PartialEq)]
pub struct ObserverConfig {
    pub kind: ObserverKind,
    pub dtype: DType,
    /// The quantized range, after `reduce_range` (which halves it, rounding down).
    pub qmin: i64,
    pub qmax: i64,
    pub qscheme: QScheme,
    /// The channel dimension of per-channel kinds (PyTorch's default is 0).
    pub ch_axis: Option<usize>,
    /// The smallest scale: PyTorch's default is `f32::EPSILON`; every stock quantizer spec passes
    /// 2^-12 explicitly.
    pub eps: f32,
    /// The EMA weight of the moving-average kinds, as the float32 PyTorch multiplies by.
    pub averaging_constant: f32,
    /// Histogram bins of `histogram`, `percentile` and `entropy`.
    pub bins: usize,
    /// The kept percentage of the `percentile` observer, in (0, 100].
    pub percentile: f64,
    /// `(scale, zero_point)` of `fixed_qparams`.
    pub fixed: Option<(f64, i64)>,
    /// Whether qmin/qmax were given explicitly (always, for quantizer specs); only the uint8
    /// symmetric zero point depends on it (128 when not).
    pub customized_range: bool,
    /// Whether the observer is a QAT fake-quantize module (`None`: it only observes).
    pub fake_quant: Option<FakeQuant>,
}

/// Options an `observer` op's `options` dictionary may carry.
pub const OPTION_KEYS: &[&str] = &[
    "eps",
    "averaging_constant",
    "bins",
    "percentile",
    "reduce_range",
    "customized_range",
    "fake_quant",
    "scale",
    "zero_point",
];

/// Top-level keys [`ObserverConfig::from_dict`] reads (besides `instance` and `stats`, which
/// belong to the op and are ignored).
const CONFIG_KEYS: &[&str] = &["kind", "dtype", "qmin", "qmax", "qscheme", "ch_axis", "options"];

fn get_float(d: &Dict, key: &str, what: &str) -> Result<Option<f64>, String> {
    d.get(key)
        .map(|a| a.as_float().ok_or_else(|| format!("{what} `{key}` must be a number, found {}", a.kind_name())))
        .transpose()
}

fn get_int(d: &Dict, key: &str, what: &str) -> Result<Option<i64>, String> {
    d.get(key)
        .map(|a| a.as_int().ok_or_else(|| format!("{what} `{key}` must be an integer, found {}", a.kind_name())))
        .transpose()
}

fn get_bool(d: &Dict, key: &str, what: &str) -> Result<Option<bool>, String> {
    d.get(key)
        .map(|a| a.as_bool().ok_or_else(|| format!("{what} `{key}` must be true or false, found {}", a.kind_name())))
        .transpose()
}

impl ObserverConfig {
    /// A config with PyTorch's defaults for everything but the target range.
    pub fn new(
        kind: ObserverKind,
        dtype: DType,
        qmin: i64,
        qmax: i64,
        qscheme: QScheme,
    ) -> Result<ObserverConfig, String> {
        let cfg = ObserverConfig::with_defaults(kind, dtype, qmin, qmax, qscheme, kind.is_per_channel().then_some(0));
        if kind == ObserverKind::FixedQParams {
            return Err("a `fixed_qparams` observer needs its `scale` and `zero_point`".into());
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// PyTorch's defaults for every option; not validated.
    fn with_defaults(
        kind: ObserverKind,
        dtype: DType,
        qmin: i64,
        qmax: i64,
        qscheme: QScheme,
        ch_axis: Option<usize>,
    ) -> ObserverConfig {
        ObserverConfig {
            kind,
            dtype,
            qmin,
            qmax,
            qscheme,
            ch_axis,
            eps: f32::EPSILON,
            averaging_constant: DEFAULT_AVERAGING_CONSTANT,
            bins: DEFAULT_BINS,
            percentile: DEFAULT_PERCENTILE,
            fixed: None,
            customized_range: true,
            fake_quant: None,
        }
    }

    /// Reads a config from an `observer` op's attributes: `kind`, `dtype`, `qmin`, `qmax`,
    /// `qscheme` (default `per_tensor_affine`), `ch_axis`, and `options` — a dictionary of
    /// [`OPTION_KEYS`] (`eps`, `averaging_constant`, `bins`, `percentile`, `reduce_range`,
    /// `customized_range`, and `scale`/`zero_point` of a fixed-qparams observer). The op's
    /// `instance` and `stats` entries are ignored; anything else is an error.
    pub fn from_dict(attrs: &Dict) -> Result<ObserverConfig, String> {
        for (key, _) in attrs.iter() {
            if !CONFIG_KEYS.contains(&key) && key != "instance" && key != "stats" {
                return Err(format!("unknown observer attribute `{key}`"));
            }
        }
        let what = "observer attribute";
        let kind_name = match attrs.get("kind") {
            Some(a) => a
                .as_str()
                .ok_or_else(|| format!("observer attribute `kind` must be a string, found {}", a.kind_name()))?,
            None => return Err("an observer needs a `kind`".into()),
        };
        let kind = ObserverKind::from_name(kind_name).ok_or_else(|| {
            let names: Vec<String> = ObserverKind::ALL.iter().map(|k| format!("\"{k}\"")).collect();
            format!("unknown observer kind \"{kind_name}\" (expected one of {})", names.join(", "))
        })?;
        let dtype = match attrs.get("dtype") {
            Some(a) => a
                .as_dtype()
                .ok_or_else(|| format!("observer attribute `dtype` must be a dtype, found {}", a.kind_name()))?,
            None => return Err("an observer needs a `dtype`".into()),
        };
        let qmin = get_int(attrs, "qmin", what)?.ok_or("an observer needs `qmin`")?;
        let qmax = get_int(attrs, "qmax", what)?.ok_or("an observer needs `qmax`")?;
        let qscheme = match attrs.get("qscheme") {
            None => QScheme::PerTensorAffine,
            Some(a) => a
                .as_str()
                .and_then(QScheme::from_name)
                .ok_or_else(|| format!("observer attribute `qscheme` is not a quantization scheme: {a:?}"))?,
        };
        let ch_axis = match get_int(attrs, "ch_axis", what)? {
            None => None,
            Some(axis) => {
                Some(usize::try_from(axis).map_err(|_| format!("`ch_axis` must be non-negative, got {axis}"))?)
            }
        };
        let empty = Dict::new();
        let options = match attrs.get("options") {
            None => &empty,
            Some(a) => a
                .as_dict()
                .ok_or_else(|| format!("observer attribute `options` must be a dictionary, found {}", a.kind_name()))?,
        };
        let mut cfg = ObserverConfig::with_defaults(kind, dtype, qmin, qmax, qscheme, ch_axis);
        cfg.apply_options(options)?;
        if cfg.kind.is_per_channel() && cfg.ch_axis.is_none() {
            cfg.ch_axis = Some(0);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config of the observer a quantization spec asks for (`fixed` specs get a
    /// `fixed_qparams` observer whatever their `observer` says, as in PT2E).
    pub fn from_qspec(spec: &QSpec) -> Result<ObserverConfig, String> {
        let mut attrs = Dict::new();
        let kind = if spec.fixed.is_some() { ObserverKind::FixedQParams.name() } else { spec.observer.as_str() };
        attrs.insert("kind", Attr::Str(kind.into()));
        attrs.insert("dtype", Attr::DType(spec.dtype));
        attrs.insert("qmin", Attr::Int(spec.qmin));
        attrs.insert("qmax", Attr::Int(spec.qmax));
        attrs.insert("qscheme", Attr::Str(spec.qscheme.name().into()));
        if let Some(axis) = spec.ch_axis {
            attrs.insert("ch_axis", Attr::Int(axis));
        }
        let mut options = spec.options.clone();
        if let Some((scale, zp)) = spec.fixed {
            options.insert("scale", Attr::Float(scale));
            options.insert("zero_point", Attr::Int(zp));
        }
        attrs.insert("options", Attr::Dict(options));
        ObserverConfig::from_dict(&attrs)
    }

    fn apply_options(&mut self, options: &Dict) -> Result<(), String> {
        let what = "observer option";
        for (key, _) in options.iter() {
            if !OPTION_KEYS.contains(&key) {
                return Err(format!("unknown observer option `{key}` (known: {})", OPTION_KEYS.join(", ")));
            }
        }
        if let Some(eps) = get_float(options, "eps", what)? {
            if !(eps.is_finite() && eps >= 0.0) {
                return Err(format!("observer option `eps` must be finite and non-negative, got {eps:?}"));
            }
            // PyTorch stores eps as a float32 buffer.
            self.eps = eps as f32;
        }
        if let Some(c) = get_float(options, "averaging_constant", what)? {
            if !self.kind.has_averaging_constant() {
                return Err(format!("a `{}` observer takes no `averaging_constant`", self.kind));
            }
            if !(c > 0.0 && c <= 1.0) {
                return Err(format!("`averaging_constant` must be in (0, 1], got {c:?}"));
            }
            self.averaging_constant = c as f32;
        }
        if let Some(bins) = get_int(options, "bins", what)? {
            if !self.kind.has_bins() {
                return Err(format!("a `{}` observer takes no `bins`", self.kind));
            }
            self.bins = usize::try_from(bins)
                .ok()
                .filter(|b| (1..=MAX_BINS).contains(b))
                .ok_or_else(|| format!("`bins` must be between 1 and {MAX_BINS}, got {bins}"))?;
        }
        if let Some(p) = get_float(options, "percentile", what)? {
            if self.kind != ObserverKind::Percentile {
                return Err(format!("a `{}` observer takes no `percentile`", self.kind));
            }
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("`percentile` must be in (0, 100], got {p:?}"));
            }
            self.percentile = p;
        }
        if let Some(customized) = get_bool(options, "customized_range", what)? {
            self.customized_range = customized;
        }
        if let Some(a) = options.get("fake_quant") {
            let name = a.as_str().ok_or_else(|| format!("`fake_quant` must be a string, found {}", a.kind_name()))?;
            self.fake_quant =
                Some(FakeQuant::from_name(name).ok_or_else(|| {
                    format!("unknown `fake_quant` \"{name}\" (expected \"fused\" or \"fake_quantize\")")
                })?);
        }
        if get_bool(options, "reduce_range", what)? == Some(true) {
            // `calculate_qmin_qmax`: quant_min // 2, quant_max // 2 (floor division).
            self.qmin = self.qmin.div_euclid(2);
            self.qmax = self.qmax.div_euclid(2);
        }
        match (get_float(options, "scale", what)?, get_int(options, "zero_point", what)?) {
            (Some(scale), Some(zp)) => {
                if self.kind != ObserverKind::FixedQParams {
                    return Err(format!("a `{}` observer takes no fixed `scale`/`zero_point`", self.kind));
                }
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(format!("the fixed `scale` must be positive and finite, got {scale:?}"));
                }
                self.fixed = Some((scale, zp));
            }
            (None, None) => {}
            _ => return Err("a fixed-qparams observer needs both `scale` and `zero_point`".into()),
        }
        Ok(())
    }

    /// Checks the combination of kind, dtype, range and scheme as PyTorch's constructors do.
    pub fn validate(&self) -> Result<(), String> {
        let kind = self.kind;
        if self.qmin > self.qmax {
            return Err(format!("`qmin` ({}) is greater than `qmax` ({})", self.qmin, self.qmax));
        }
        if kind == ObserverKind::FixedQParams && self.fixed.is_none() {
            return Err("a `fixed_qparams` observer needs its `scale` and `zero_point`".into());
        }
        match self.fake_quant {
            Some(FakeQuant::Fused) if !kind.has_averaging_constant() => {
                return Err(format!(
                    "`fake_quant = \"fused\"` (FusedMovingAvgObsFakeQuantize) wraps a moving-average observer, not `{kind}`"
                ))
            }
            Some(FakeQuant::Standard) if !(kind.is_min_max() || kind == ObserverKind::FixedQParams) => {
                return Err(format!(
                    "`fake_quant = \"fake_quantize\"` supports the min/max and fixed-qparams observers, not `{kind}`"
                ))
            }
            _ => {}
        }
        if !kind.is_uniform() {
            return Ok(());
        }
        if !matches!(self.dtype, DType::I8 | DType::U8 | DType::I16 | DType::I32) {
            return Err(format!("a `{kind}` observer quantizes to i8, u8, i16 or i32, not {}", self.dtype));
        }
        if let Some((lo, hi)) = self.dtype.int_range() {
            if self.qmin < lo || self.qmax > hi {
                return Err(format!(
                    "the range [{}, {}] does not fit in {} [{lo}, {hi}]",
                    self.qmin, self.qmax, self.dtype
                ));
            }
        }
        // `validate_qmin_qmax`.
        if !(self.qmin <= 0 && 0 <= self.qmax && self.qmin < self.qmax) {
            return Err(format!("the range [{}, {}] must include 0 and have qmin < qmax", self.qmin, self.qmax));
        }
        match (kind.is_per_channel(), self.qscheme.is_per_channel()) {
            (true, false) => {
                return Err(format!("a `{kind}` observer needs a per-channel scheme, not {}", self.qscheme))
            }
            (false, true) => {
                return Err(format!("a `{kind}` observer supports per-tensor schemes only, not {}", self.qscheme))
            }
            _ => {}
        }
        if !kind.is_per_channel() && self.ch_axis.is_some() {
            return Err(format!("`ch_axis` only applies to per-channel observers, not `{kind}`"));
        }
        Ok(())
    }

    /// What `calculate_qparams` needs to know about the target range.
    pub fn qrange(&self) -> QRange {
        QRange {
            qmin: self.qmin,
            qmax: self.qmax,
            qscheme: self.qscheme,
            dtype: self.dtype,
            eps: self.eps,
            customized_range: self.customized_range,
        }
    }

    /// `2 ** torch.iinfo(dtype).bits`: the histogram search's destination bins.
    pub(super) fn dst_nbins(&self) -> f64 {
        let bits = match self.dtype {
            DType::I8 | DType::U8 => 8,
            DType::I16 => 16,
            _ => 32,
        };
        2f64.powi(bits)
    }
}

/// The observer attributes [`ObserverConfig::from_dict`] reads, as a dictionary.
pub fn observer_attrs(g: &Graph, op: OpId) -> Dict {
    let mut d = Dict::new();
    for &name in CONFIG_KEYS {
        if let Some(value) = g.attr(op, name) {
            d.insert(name, value.clone());
        }
    }
    d
}
