//! PT2E observers: the statistics calibration collects and the qparams derived from them, with
//! PyTorch's exact float32 arithmetic (`../shared/reference/pt2e.md` §2; the traps of §8 items
//! 2, 3, 4 and 8 are the ones that matter here).
//!
//! An observer is an [`ObserverConfig`] (what to compute: the kind, the target integer range and
//! scheme, and options) plus an [`ObserverState`] (what has been seen so far). The calibration
//! pass calls [`ObserverState::observe`] with every tensor that flows through an `observer` op,
//! then [`ObserverState::qparams`]; statistics travel in the IR as the op's `stats` dictionary
//! ([`ObserverState::to_dict`] / [`ObserverState::from_dict`]).
//!
//! # The kinds
//!
//! * `minmax` — `MinMaxObserver` (§2.3): the input is cast to float32 (`x.detach().to(float32)`:
//!   float64 rounds, float16/bfloat16 widen exactly), empty inputs are skipped, and the running
//!   `min = torch.min(aminmax(x).min, min)` (likewise max) starts at (+inf, -inf). Per-tensor
//!   schemes only.
//! * `moving_average_minmax` — `MovingAverageMinMaxObserver` (§2.3): the first non-empty batch
//!   (state still (+inf, -inf)) sets min/max; later ones do `min + c·(cur − min)` in float32 with
//!   `c = averaging_constant` rounded to float32 (default 0.01).
//! * `per_channel_minmax` — `PerChannelMinMaxObserver` (§2.3): dimensions `ch_axis` and 0 are
//!   swapped (a swap, not a move), the rest flattened, and each channel's running min/max kept.
//!   Per-channel schemes only; a later batch must have the same channel count.
//! * `moving_average_per_channel_minmax` — the per-channel EMA.
//! * `histogram` — `HistogramObserver` (§2.4): `bins` (2048) float32 counts over the running
//!   [min, max]. ±inf elements are dropped (a batch of only infinities is skipped). The first batch
//!   is binned with `torch.histc` over its own range; a later batch is binned over the union
//!   range, and when that range grew the old histogram is mapped into it by 16× upsampling
//!   (`_combine_histograms`: `repeat_interleave(16)/16`, sub-bin midpoints from `linspace`,
//!   `bucketize(right=True) − 1`, float32 `bincount`), or, when the old range was a single value,
//!   by binning that value with the old total as its weight. qparams run `_non_linear_param_search`
//!   (the L2 search over `2^bits` destination bins — 256 for every 8-bit dtype whatever qmin/qmax
//!   — with its drifting 1e-5 steps in float64 and its early stop on the first increase) and then
//!   the ordinary `_calculate_qparams` on the range it returns.
//! * `fixed_qparams` — `FixedQParamsObserver`: observes nothing; qparams are its fixed scale
//!   (rounded to float32 as `torch.tensor([scale])` does) and zero point.
//! * `placeholder` — `PlaceholderObserver` (dynamic quantization): observes nothing; asking it for
//!   qparams is an error, they are computed at run time.
//! * `percentile` (qc, no PyTorch counterpart) — keeps exactly the `histogram` state. qparams clip
//!   each tail of the histogram at `(100 − percentile)/2` percent of the mass: with `total` the
//!   float64 sum of the counts and `tail = total·(100 − p)/200`, the kept bins are `lo..=hi` where
//!   `lo` is the first bin whose running sum from the left exceeds `tail` and `hi` the last bin
//!   whose running sum from the right exceeds `tail` (sums in float64, in bin order). The range is
//!   `[min + w·lo, min + w·(hi + 1)]` with `w = (max − min)/bins` in float32 (`max` itself when
//!   `hi` is the last bin), then `_calculate_qparams` (a symmetric scheme then takes the larger
//!   side). `percentile = 100` keeps the full observed range.
//! * `entropy` (qc; TensorRT's KL-divergence calibration) — keeps the signed running min/max (as
//!   `minmax`, ±inf dropped) and a `bins`-bin float32 histogram of |x| over `[0, A]`,
//!   `A = max(−min, max)`, built and merged with the same `histc`/upsampling machinery as
//!   `histogram` (lower edge pinned at 0; while `A = 0` every element counts in bin 0). qparams
//!   try every cut `i` in `nq..=bins`, `nq = clamp((qmax − qmin + 1)/2, 1, bins)` quantized
//!   levels (128 for 8-bit ranges; `bins = 2048` gives 1921 candidates, unlike ONNX Runtime's
//!   degenerate 128-bin default): the reference `P` is bins `0..i` with the mass of bins `i..`
//!   added to bin `i − 1`; `Q` merges bins `0..i` into `nq` groups of `i / nq` bins (the last group
//!   takes the remainder) and spreads each group's sum evenly over the group's bins where `P` is
//!   non-zero; `KL(P‖Q) = Σ_{P_k>0} p_k ln(p_k/q_k)` on the normalised distributions, +∞ when some
//!   `P_k > 0` has `Q_k = 0` (no ε-smoothing: MXNet's smoothing goes negative on the fractional
//!   counts upsampling produces). All sums are float64 in index order. The first `i` with the
//!   smallest divergence gives the threshold `T = (A/bins)·i` in float32 (`A` itself for
//!   `i = bins`), and qparams are `_calculate_qparams(max(min, −T), min(max, T))`.
//!
//! Never-observed statistics give scale 1.0 and zero point 0, as PyTorch does (for per-channel
//! observers a single such pair, the channel count being unknown). Statistics PyTorch would
//! reject in `calculate_qparams` (min > max, NaN) are errors.
//!
//! # Non-finite values
//!
//! PyTorch's `aminmax` propagates NaN into the statistics and `histc` skips NaN silently, so a
//! single NaN either poisons the range or vanishes without a trace; an infinity makes a min/max
//! range infinite (scale inf: everything quantizes to the zero point) and is dropped silently by
//! the histogram observers. qc refuses NaN: [`ObserverState::observe`] returns an error naming
//! how many NaN values the batch had, and leaves the state unchanged. Infinities it handles as
//! PyTorch does (the fixtures check that too), while calibration records with
//! [`ObserverState::observe_finite`], which refuses them as well (saying where the first one
//! is), and `convert` refuses qparams with an infinite scale ([`QParams::check_finite`]), which a
//! finite range too wide for float32 (such as [-3e38, 3e38]) also gives.
//!
//! # Bit-exactness
//!
//! Every float32 operation is done in the order PyTorch's CPU kernels do it, which for three
//! kernels is not the obvious one:
//! * float32 `torch.sum` (the histogram total and the search's error norm) is ATen's cascade sum
//!   over [`F32_LANES`]-wide vectors (`SumKernel.cpp`). The kernel has no AVX-512 variant
//!   (`REGISTER_DISPATCH`), so AVX-512 machines run the AVX2 one: 8 lanes (measured: 8 lanes match
//!   torch 2.15 on an AVX-512 machine, 16 do not; `ATEN_CPU_CAPABILITY=avx2` gives the same).
//! * `linspace` (the upsampling midpoints and edges) computes `start + step·i` and
//!   `end − step·(n − 1 − i)` with one rounding: the AVX2 build contracts them into FMAs. (A
//!   PyTorch forced to `ATEN_CPU_CAPABILITY=default`, or built for another architecture, rounds
//!   twice, and a few upsampled histogram bins then differ.)
//! * `torch.div(rounding_mode="floor")` is `c10::div_floor_floating` (fmod, then a floor with a
//!   half-correction), not `floor(a / b)`.
//!
//! The sign of a zero minimum or maximum can differ from PyTorch's when one batch holds both
//! `+0.0` and `-0.0`: which one `aminmax` returns depends on their positions and the vector width.
//! Scales and integer zero points do not depend on it (only the sign of the float zero point of
//! an all-zero channel does).
//!
//! Histogram counts are float32 and exact while every bin holds fewer than 2^24 elements per batch
//! (beyond that PyTorch's per-thread float32 counters saturate in a thread-count-dependent way;
//! qc counts in integers, on several threads for large batches, and stores `min(count, 2^24)`,
//! what a single float32 counter incremented by 1.0 ends with).
//! Non-float32 inputs to the histogram kinds are converted to float32 first (PyTorch bins them in
//! their own dtype; the PT2E flow observes float32 activations). Where PyTorch's `histc` has
//! undefined behaviour — a constant batch so large that `value ± 1` rounds back to `value` in
//! float32 — qc counts the batch in the middle bin, where smaller constants land.

use std::borrow::Cow;
use std::sync::OnceLock;

use super::{
    calculate_float_qparams, calculate_qparams, choose_quantization_params, fake_quantize_value, torch_maximum,
    torch_minimum, QRange,
};
use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::{Attr, Dict};
use crate::ir::graph::{Graph, OpId};
use crate::ir::quant::{QScheme, QSpec};
use crate::ir::verifier::Locator;
use crate::ir::DType;
use crate::tensor::{map_channels, Tensor};

/// Float32 lanes of the ATen vector kernels being matched (x86-64 AVX2 dispatch; see the module
/// doc).
pub const F32_LANES: usize = 8;
/// `HistogramObserver.upsample_rate`.
pub const UPSAMPLE_RATE: usize = 16;
/// `HistogramObserver`'s default bin count.
pub const DEFAULT_BINS: usize = 2048;
/// The largest accepted bin count.
pub const MAX_BINS: usize = 1 << 16;
/// PyTorch's default `averaging_constant`.
pub const DEFAULT_AVERAGING_CONSTANT: f32 = 0.01;
/// The default clipping percentile of the `percentile` observer.
pub const DEFAULT_PERCENTILE: f64 = 99.99;

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

    /// Whether the kind keeps one range per channel.
    pub fn is_per_channel(self) -> bool {
        matches!(self, ObserverKind::PerChannelMinMax | ObserverKind::MovingAveragePerChannelMinMax)
    }

    /// Whether the kind computes qparams from observed statistics (a `UniformQuantizationObserverBase`).
    fn is_uniform(self) -> bool {
        !matches!(self, ObserverKind::FixedQParams | ObserverKind::Placeholder)
    }

    fn has_bins(self) -> bool {
        matches!(self, ObserverKind::Histogram | ObserverKind::Percentile | ObserverKind::Entropy)
    }

    /// The four min/max kinds (per-tensor or per-channel, moving average or not).
    fn is_min_max(self) -> bool {
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
    fn dst_nbins(&self) -> f64 {
        let bits = match self.dtype {
            DType::I8 | DType::U8 => 8,
            DType::I16 => 16,
            _ => 32,
        };
        2f64.powi(bits)
    }
}

/// Quantization parameters: one entry per channel (one in all for per-tensor schemes).
#[derive(Clone, Debug, PartialEq)]
pub struct QParams {
    pub scale: Vec<f32>,
    /// Integer zero points. For `per_channel_affine_float_qparams` these are the float zero points
    /// rounded half-to-even; the exact values are in `float_zero_point`.
    pub zero_point: Vec<i64>,
    /// The float zero points of `per_channel_affine_float_qparams`.
    pub float_zero_point: Option<Vec<f32>>,
}

impl QParams {
    /// qc's rule on top of PyTorch's arithmetic: every scale must be finite. An infinite range,
    /// or one whose width overflows float32 (such as [-3e38, 3e38]), gives scale inf in PyTorch,
    /// which quantizes everything to the zero point.
    pub fn check_finite(&self) -> Result<(), String> {
        let Some((c, s)) = self.scale.iter().enumerate().find(|(_, s)| !s.is_finite()) else { return Ok(()) };
        let which = if self.scale.len() > 1 { format!(" for channel {c}") } else { String::new() };
        Err(format!(
            "the observer statistics give scale {s:?}{which}: a range must be finite and its width must fit in float32"
        ))
    }

    fn per_tensor(scale: f32, zero_point: i64) -> QParams {
        QParams { scale: vec![scale], zero_point: vec![zero_point], float_zero_point: None }
    }
}

/// A float32 histogram over `[lo, hi]` plus the observed signed range.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramStats {
    /// The running minimum and maximum (+inf/-inf until the first batch).
    pub min_val: f32,
    pub max_val: f32,
    /// `bins` float32 counts: over `[min_val, max_val]` for `histogram`/`percentile`, over
    /// `[0, max(-min_val, max_val)]` of |x| for `entropy`.
    pub counts: Vec<f32>,
}

impl HistogramStats {
    fn new(bins: usize) -> Self {
        HistogramStats { min_val: f32::INFINITY, max_val: f32::NEG_INFINITY, counts: vec![0.0; bins] }
    }

    fn is_initialized(&self) -> bool {
        !(self.min_val == f32::INFINITY && self.max_val == f32::NEG_INFINITY)
    }

    /// The entropy histogram's upper edge.
    fn abs_max(&self) -> f32 {
        torch_maximum(-self.min_val, self.max_val)
    }
}

/// What an observer has seen.
#[derive(Clone, Debug, PartialEq)]
pub enum ObserverState {
    /// `minmax` and `moving_average_minmax`: (+inf, -inf) until the first non-empty batch.
    MinMax { min_val: f32, max_val: f32 },
    /// The per-channel kinds: empty until the first non-empty batch.
    PerChannel { min_val: Vec<f32>, max_val: Vec<f32> },
    /// `histogram` and `percentile`.
    Histogram(HistogramStats),
    /// `entropy`: the signed range and the histogram of |x|.
    AbsHistogram(HistogramStats),
    /// `fixed_qparams` and `placeholder` observe nothing.
    Stateless,
}

/// The input as float32 values in logical (row-major) order, the way PyTorch's observers convert
/// it (`x.detach().to(float32)`): borrowed when it already is a contiguous float32 tensor.
fn float32_values(x: &Tensor) -> Result<Cow<'_, [f32]>, String> {
    use half::slice::HalfFloatSliceExt;
    Ok(match x {
        Tensor::F32(a) => match a.as_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(a.iter().copied().collect()),
        },
        Tensor::F64(a) => Cow::Owned(a.iter().map(|&v| v as f32).collect()),
        Tensor::F16(a) => Cow::Owned(match a.as_slice() {
            Some(s) => s.to_f32_vec(),
            None => a.iter().map(|v| v.to_f32()).collect(),
        }),
        Tensor::BF16(a) => Cow::Owned(match a.as_slice() {
            Some(s) => s.to_f32_vec(),
            None => a.iter().map(|v| v.to_f32()).collect(),
        }),
        other => return Err(format!("observers take float tensors, not {}", other.dtype())),
    })
}

fn nan_error(kind: ObserverKind, nans: usize, len: usize) -> Result<(), String> {
    if nans > 0 {
        return Err(format!(
            "the `{kind}` observer got {nans} NaN value{} (of {len} elements): NaN has no place in a quantization \
             range (PyTorch would record NaN statistics or drop them silently)",
            if nans == 1 { "" } else { "s" },
        ));
    }
    Ok(())
}

/// The error for a batch holding `count` infinities (NaN already excluded): PyTorch's min/max
/// observers would record an infinite range (scale inf) and its histogram observers drop them
/// silently. The message says where the first one is, as an index into the tensor of `shape`.
fn infinity_error(kind: ObserverKind, count: usize, data: &[f32], shape: &[usize]) -> String {
    let first = data.iter().position(|v| v.is_infinite()).unwrap_or(0);
    let index = crate::tensor::unravel_index(first, shape);
    format!(
        "the `{kind}` observer got {count} infinite value{} (of {} elements), the first, {:?}, at index {index:?}: \
         an infinite value has no place in a quantization range",
        if count == 1 { "" } else { "s" },
        data.len(),
        data[first],
    )
}

/// `torch.aminmax` of NaN-free, non-empty data. Between `+0.0` and `-0.0` the later element wins,
/// as in PyTorch's scalar loop (its vectorised loop picks by lane; see the module doc).
///
/// This is the reference definition; [`scan`] plus [`Scan::fix_zeros`] compute the same thing
/// faster.
fn aminmax<'a>(values: impl IntoIterator<Item = &'a f32>) -> (f32, f32) {
    values.into_iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (if v <= lo { v } else { lo }, if v >= hi { v } else { hi })
    })
}

/// One moving-average step in float32: `running + c·(current − running)`.
fn ema(running: f32, current: f32, c: f32) -> f32 {
    running + c * (current - running)
}

impl ObserverState {
    /// The empty state of `cfg`'s kind.
    pub fn new(cfg: &ObserverConfig) -> ObserverState {
        match cfg.kind {
            ObserverKind::MinMax | ObserverKind::MovingAverageMinMax => {
                ObserverState::MinMax { min_val: f32::INFINITY, max_val: f32::NEG_INFINITY }
            }
            ObserverKind::PerChannelMinMax | ObserverKind::MovingAveragePerChannelMinMax => {
                ObserverState::PerChannel { min_val: Vec::new(), max_val: Vec::new() }
            }
            ObserverKind::Histogram | ObserverKind::Percentile => {
                ObserverState::Histogram(HistogramStats::new(cfg.bins))
            }
            ObserverKind::Entropy => ObserverState::AbsHistogram(HistogramStats::new(cfg.bins)),
            ObserverKind::FixedQParams | ObserverKind::Placeholder => ObserverState::Stateless,
        }
    }

    fn matches(&self, cfg: &ObserverConfig) -> bool {
        use ObserverKind as K;
        match (self, cfg.kind) {
            (ObserverState::MinMax { .. }, K::MinMax | K::MovingAverageMinMax)
            | (ObserverState::PerChannel { .. }, K::PerChannelMinMax | K::MovingAveragePerChannelMinMax)
            | (ObserverState::Stateless, K::FixedQParams | K::Placeholder) => true,
            (ObserverState::Histogram(h), K::Histogram | K::Percentile)
            | (ObserverState::AbsHistogram(h), K::Entropy) => h.counts.len() == cfg.bins,
            _ => false,
        }
    }

    fn check_matches(&self, cfg: &ObserverConfig) -> Result<(), String> {
        if self.matches(cfg) {
            Ok(())
        } else {
            Err(format!("these observer statistics do not belong to a `{}` observer with {} bins", cfg.kind, cfg.bins))
        }
    }

    /// Whether any non-empty batch has been recorded (always true for stateless kinds).
    pub fn is_initialized(&self) -> bool {
        match self {
            ObserverState::MinMax { min_val, max_val } => !(*min_val == f32::INFINITY && *max_val == f32::NEG_INFINITY),
            ObserverState::PerChannel { min_val, .. } => !min_val.is_empty(),
            ObserverState::Histogram(h) | ObserverState::AbsHistogram(h) => h.is_initialized(),
            ObserverState::Stateless => true,
        }
    }

    /// Records one tensor (the observer's `forward`) as PyTorch does, infinities included: a
    /// min/max kind records them, a histogram kind drops them. Errors (NaN) leave the state
    /// unchanged.
    pub fn observe(&mut self, cfg: &ObserverConfig, x: &Tensor) -> Result<(), String> {
        self.record(cfg, x, false)
    }

    /// [`ObserverState::observe`], refusing infinities as it refuses NaN: what calibration
    /// records (see the module doc).
    pub fn observe_finite(&mut self, cfg: &ObserverConfig, x: &Tensor) -> Result<(), String> {
        self.record(cfg, x, true)
    }

    fn record(&mut self, cfg: &ObserverConfig, x: &Tensor, refuse_infinities: bool) -> Result<(), String> {
        self.check_matches(cfg)?;
        if matches!(self, ObserverState::Stateless) {
            return Ok(());
        }
        if x.is_empty() {
            return Ok(());
        }
        let data = float32_values(x)?;
        let data: &[f32] = &data;
        if let ObserverState::PerChannel { min_val, max_val } = self {
            let axis = cfg.ch_axis.unwrap_or(0);
            let shape = x.shape();
            if axis >= shape.len() {
                nan_error(cfg.kind, scan(data).nans, data.len())?;
                return Err(format!(
                    "`ch_axis` {axis} is out of range for a {}-d input of the `{}` observer",
                    shape.len(),
                    cfg.kind
                ));
            }
            let (lo, hi, nans) = per_channel_aminmax(data, shape, axis);
            nan_error(cfg.kind, nans, data.len())?;
            // Without NaN, an infinite element is some channel's extreme.
            if refuse_infinities && lo.iter().chain(&hi).any(|v| v.is_infinite()) {
                let count = data.iter().filter(|v| v.is_infinite()).count();
                return Err(infinity_error(cfg.kind, count, data, shape));
            }
            if min_val.is_empty() {
                (*min_val, *max_val) = (lo, hi);
            } else if min_val.len() != lo.len() {
                return Err(format!(
                    "the `{}` observer has seen {} channels, but this input has {} on axis {axis}",
                    cfg.kind,
                    min_val.len(),
                    lo.len()
                ));
            } else if cfg.kind == ObserverKind::MovingAveragePerChannelMinMax {
                let c = cfg.averaging_constant;
                min_val.iter_mut().zip(&lo).for_each(|(m, &v)| *m = ema(*m, v, c));
                max_val.iter_mut().zip(&hi).for_each(|(m, &v)| *m = ema(*m, v, c));
            } else {
                min_val.iter_mut().zip(&lo).for_each(|(m, &v)| *m = torch_minimum(v, *m));
                max_val.iter_mut().zip(&hi).for_each(|(m, &v)| *m = torch_maximum(v, *m));
            }
            return Ok(());
        }
        let summary = scan(data);
        nan_error(cfg.kind, summary.nans, data.len())?;
        if refuse_infinities && summary.nonfinite > summary.nans {
            return Err(infinity_error(cfg.kind, summary.nonfinite - summary.nans, data, x.shape()));
        }
        match self {
            ObserverState::MinMax { min_val, max_val } => {
                let (lo, hi) = summary.fix_zeros(data);
                if cfg.kind == ObserverKind::MovingAverageMinMax
                    && !(*min_val == f32::INFINITY && *max_val == f32::NEG_INFINITY)
                {
                    *min_val = ema(*min_val, lo, cfg.averaging_constant);
                    *max_val = ema(*max_val, hi, cfg.averaging_constant);
                } else if cfg.kind == ObserverKind::MovingAverageMinMax {
                    (*min_val, *max_val) = (lo, hi);
                } else {
                    *min_val = torch_minimum(lo, *min_val);
                    *max_val = torch_maximum(hi, *max_val);
                }
            }
            ObserverState::Histogram(h) | ObserverState::AbsHistogram(h) => {
                // `x[x.abs() != inf]`: the data itself when it has no infinities.
                let finite: Cow<'_, [f32]> = if summary.nonfinite == 0 {
                    Cow::Borrowed(data)
                } else {
                    Cow::Owned(data.iter().copied().filter(|v| v.is_finite()).collect())
                };
                if finite.is_empty() {
                    return Ok(());
                }
                let range = if summary.nonfinite == 0 { summary } else { scan(&finite) };
                let (xmin, xmax) = range.fix_zeros(&finite);
                if cfg.kind == ObserverKind::Entropy {
                    abs_histogram_observe(h, &finite, xmin, xmax);
                } else {
                    histogram_observe(h, &finite, xmin, xmax);
                }
            }
            ObserverState::PerChannel { .. } | ObserverState::Stateless => {}
        }
        Ok(())
    }

    /// `calculate_qparams()`.
    pub fn qparams(&self, cfg: &ObserverConfig) -> Result<QParams, String> {
        self.check_matches(cfg)?;
        let range = cfg.qrange();
        match self {
            ObserverState::Stateless => match (cfg.kind, cfg.fixed) {
                // `torch.tensor([scale], dtype=torch.float)`, `torch.tensor([zero_point], dtype=torch.int)`.
                (ObserverKind::FixedQParams, Some((scale, zp))) => Ok(QParams::per_tensor(scale as f32, zp)),
                (ObserverKind::FixedQParams, None) => Err("the `fixed_qparams` observer has no fixed qparams".into()),
                _ => Err(format!(
                    "a `{}` observer has no qparams of its own: they are computed at run time (dynamic quantization)",
                    cfg.kind
                )),
            },
            ObserverState::MinMax { min_val, max_val } => per_tensor_qparams(*min_val, *max_val, &range),
            ObserverState::PerChannel { min_val, max_val } => per_channel_qparams(min_val, max_val, &range),
            ObserverState::Histogram(h) => {
                if !h.is_initialized() {
                    return Ok(QParams::per_tensor(1.0, 0));
                }
                let (lo, hi) = if cfg.kind == ObserverKind::Percentile {
                    percentile_range(h, cfg.percentile)
                } else {
                    non_linear_param_search(h, cfg.dst_nbins())
                };
                per_tensor_qparams(lo, hi, &range)
            }
            ObserverState::AbsHistogram(h) => {
                if !h.is_initialized() {
                    return Ok(QParams::per_tensor(1.0, 0));
                }
                let levels = usize::try_from((cfg.qmax - cfg.qmin + 1) / 2).unwrap_or(1).clamp(1, h.counts.len());
                let kept = entropy_bins_kept(&h.counts, levels);
                let amax = h.abs_max();
                let bins = h.counts.len();
                let threshold = if kept == bins { amax } else { amax / bins as f32 * kept as f32 };
                let lo = torch_maximum(h.min_val, -threshold);
                let hi = torch_minimum(h.max_val, threshold);
                per_tensor_qparams(lo, hi, &range)
            }
        }
    }

    /// Checks, without the histogram searches, that [`ObserverState::qparams`] will give finite
    /// qparams of the right shape: one range per channel of the observed value (`channels`,
    /// its size along `ch_axis` when known) and a finite scale for each. A histogram's searched
    /// range lies inside its full one, whose scale bounds the searched scale.
    pub fn check_convertible(&self, cfg: &ObserverConfig, channels: Option<usize>) -> Result<(), String> {
        let range = cfg.qrange();
        match self {
            ObserverState::PerChannel { min_val, .. } => {
                if let Some(c) = channels.filter(|&c| !min_val.is_empty() && c != min_val.len()) {
                    return Err(format!(
                        "the statistics have {} channels, but the observed value has {c} along `ch_axis` {}",
                        min_val.len(),
                        cfg.ch_axis.unwrap_or(0)
                    ));
                }
                self.qparams(cfg)?.check_finite()
            }
            ObserverState::MinMax { .. } => self.qparams(cfg)?.check_finite(),
            ObserverState::Histogram(h) | ObserverState::AbsHistogram(h) if h.is_initialized() => {
                per_tensor_qparams(h.min_val, h.max_val, &range)?.check_finite()
            }
            ObserverState::Histogram(_) | ObserverState::AbsHistogram(_) | ObserverState::Stateless => Ok(()),
        }
    }

    /// What a fake-quantizing observer (`cfg.fake_quant`) outputs for `x`, which it has just
    /// observed: `x` quantized and dequantized in float32 with the qparams of its current state
    /// (per channel along `ch_axis` for per-channel kinds). `None` when the observer only
    /// observes, or has seen nothing yet (an empty input).
    pub fn fake_quantize(&self, cfg: &ObserverConfig, x: &Tensor) -> Result<Option<Tensor>, String> {
        let Some(fake_quant) = cfg.fake_quant else { return Ok(None) };
        if !self.is_initialized() {
            return Ok(None);
        }
        let symmetric = cfg.qscheme.is_symmetric();
        let choose = |lo: f32, hi: f32| choose_quantization_params(lo, hi, cfg.qmin, cfg.qmax, symmetric);
        let QParams { scale, zero_point, .. } = match (fake_quant, self) {
            (FakeQuant::Fused, ObserverState::MinMax { min_val, max_val }) => {
                let (s, zp) = choose(*min_val, *max_val);
                QParams::per_tensor(s, zp)
            }
            (FakeQuant::Fused, ObserverState::PerChannel { min_val, max_val }) => {
                let (scale, zero_point) = min_val.iter().zip(max_val).map(|(&lo, &hi)| choose(lo, hi)).unzip();
                QParams { scale, zero_point, float_zero_point: None }
            }
            _ => self.qparams(cfg)?,
        };
        let Tensor::F32(a) = x else {
            return Err(format!("a fake-quantizing observer needs float32 input, not {}", x.dtype()));
        };
        let (qmin, qmax) = (cfg.qmin, cfg.qmax);
        let out = match (cfg.kind.is_per_channel(), scale.as_slice(), zero_point.as_slice()) {
            (false, &[s], &[zp]) => a.mapv(|v| fake_quantize_value(v, 1.0 / s, s, zp, qmin, qmax)),
            (true, _, _) => {
                let axis = cfg.ch_axis.unwrap_or(0);
                if a.shape().get(axis) != Some(&scale.len()) {
                    return Err(format!(
                        "the `{}` observer has qparams for {} channels, but its input has shape {:?}",
                        cfg.kind,
                        scale.len(),
                        a.shape()
                    ));
                }
                map_channels(a.view(), axis, |c, v| {
                    fake_quantize_value(v, 1.0 / scale[c], scale[c], zero_point[c], qmin, qmax)
                })
            }
            _ => return Err(format!("a per-tensor `{}` observer has {} scales", cfg.kind, scale.len())),
        };
        Ok(Some(Tensor::F32(out)))
    }

    /// The statistics as attributes: `min_val`/`max_val` floats (lists for per-channel kinds),
    /// plus `histogram` (a list of `bins` floats) for the histogram kinds. Every float is a
    /// float32 widened exactly. Stateless kinds give an empty dictionary.
    pub fn to_dict(&self) -> Dict {
        // A dense f64 vector prints exactly as a list of the widened floats, but clones, hashes
        // and drops as one buffer: histograms have 2048 entries.
        let floats = |v: &[f32]| {
            Attr::Tensor(std::sync::Arc::new(Tensor::F64(
                ndarray::Array1::from_iter(v.iter().map(|&x| f64::from(x))).into_dyn(),
            )))
        };
        let mut d = Dict::new();
        match self {
            ObserverState::MinMax { min_val, max_val } => {
                d.insert("min_val", Attr::Float(f64::from(*min_val)));
                d.insert("max_val", Attr::Float(f64::from(*max_val)));
            }
            ObserverState::PerChannel { min_val, max_val } => {
                d.insert("min_val", floats(min_val));
                d.insert("max_val", floats(max_val));
            }
            ObserverState::Histogram(h) | ObserverState::AbsHistogram(h) => {
                d.insert("min_val", Attr::Float(f64::from(h.min_val)));
                d.insert("max_val", Attr::Float(f64::from(h.max_val)));
                d.insert("histogram", floats(&h.counts));
            }
            ObserverState::Stateless => {}
        }
        d
    }

    /// Reads statistics written by [`ObserverState::to_dict`] (or by hand): every key must be
    /// present and known, floats may be written as integers and are rounded to float32, and the
    /// values must be consistent (min ≤ max or the never-observed (+inf, -inf); equal channel
    /// counts; `bins` finite non-negative counts, all zero when never observed).
    pub fn from_dict(cfg: &ObserverConfig, d: &Dict) -> Result<ObserverState, String> {
        let expected: &[&str] = match cfg.kind {
            ObserverKind::FixedQParams | ObserverKind::Placeholder => &[],
            k if k.has_bins() => &["min_val", "max_val", "histogram"],
            _ => &["min_val", "max_val"],
        };
        for (key, _) in d.iter() {
            if !expected.contains(&key) {
                return Err(format!("unknown `{}` observer statistic `{key}`", cfg.kind));
            }
        }
        for key in expected {
            if d.get(key).is_none() {
                return Err(format!("the `{}` observer statistics lack `{key}`", cfg.kind));
            }
        }
        let state = match cfg.kind {
            ObserverKind::FixedQParams | ObserverKind::Placeholder => ObserverState::Stateless,
            kind if kind.has_bins() => {
                let (min_val, max_val) = (stat_float(d, "min_val")?, stat_float(d, "max_val")?);
                let counts = stat_floats(d, "histogram")?;
                let h = HistogramStats { min_val, max_val, counts };
                check_histogram(&h, cfg.bins)?;
                if kind == ObserverKind::Entropy {
                    ObserverState::AbsHistogram(h)
                } else {
                    ObserverState::Histogram(h)
                }
            }
            kind if kind.is_per_channel() => {
                let (min_val, max_val) = (stat_floats(d, "min_val")?, stat_floats(d, "max_val")?);
                if min_val.len() != max_val.len() {
                    return Err(format!(
                        "`min_val` has {} channels but `max_val` has {}",
                        min_val.len(),
                        max_val.len()
                    ));
                }
                for (c, (&lo, &hi)) in min_val.iter().zip(&max_val).enumerate() {
                    if !is_ordered(lo, hi) {
                        return Err(format!("channel {c}: `min_val` {lo:?} is greater than `max_val` {hi:?}"));
                    }
                }
                ObserverState::PerChannel { min_val, max_val }
            }
            _ => {
                let (min_val, max_val) = (stat_float(d, "min_val")?, stat_float(d, "max_val")?);
                check_range(min_val, max_val, "")?;
                ObserverState::MinMax { min_val, max_val }
            }
        };
        Ok(state)
    }
}

/// A statistic as float32; `name` (called only on error) says which one.
fn to_f32_stat(v: f64, name: impl FnOnce() -> String) -> Result<f32, String> {
    if v.is_nan() {
        return Err(format!("`{}` is NaN", name()));
    }
    let f = v as f32;
    if f.is_infinite() && v.is_finite() {
        return Err(format!("`{}` {v:e} does not fit in float32", name()));
    }
    Ok(f)
}

fn stat_float(d: &Dict, key: &str) -> Result<f32, String> {
    let a = d.get(key).ok_or_else(|| format!("missing `{key}`"))?;
    let v = a.as_float().ok_or_else(|| format!("`{key}` must be a float, found {}", a.kind_name()))?;
    to_f32_stat(v, || key.to_string())
}

fn stat_floats(d: &Dict, key: &str) -> Result<Vec<f32>, String> {
    let a = d.get(key).ok_or_else(|| format!("missing `{key}`"))?;
    let items = match a {
        Attr::List(items) => items,
        // What `to_dict` stores in memory.
        Attr::Tensor(t) if t.shape().len() == 1 => {
            let values: Cow<'_, [f64]> = match &**t {
                Tensor::F64(a) => a.as_slice().map_or_else(|| Cow::Owned(a.iter().copied().collect()), Cow::Borrowed),
                t if t.dtype().is_float() => Cow::Owned(t.to_f64_array().into_raw_vec_and_offset().0),
                _ => return Err(format!("`{key}` must be a list of floats, found {} values", t.dtype())),
            };
            // One vectorisable pass when every value is valid; the per-element check (for the
            // message) only when one is not.
            let narrowed: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            let valid = values
                .iter()
                .zip(&narrowed)
                .fold(true, |ok, (v, n)| ok & !v.is_nan() & (n.is_finite() | v.is_infinite()));
            if valid {
                return Ok(narrowed);
            }
            return values.iter().enumerate().map(|(i, &v)| to_f32_stat(v, || format!("{key}[{i}]"))).collect();
        }
        _ => return Err(format!("`{key}` must be a list of floats, found {}", a.kind_name())),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let v = item
                .as_float()
                .ok_or_else(|| format!("`{key}` element {i} must be a float, found {}", item.kind_name()))?;
            to_f32_stat(v, || format!("{key}[{i}]"))
        })
        .collect()
}

/// `min ≤ max`, false when either is NaN (PyTorch's `assert min_val <= max_val`).
fn is_ordered(min_val: f32, max_val: f32) -> bool {
    matches!(min_val.partial_cmp(&max_val), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal))
}

/// A per-tensor range is valid when never observed (+inf, -inf) or min ≤ max.
fn check_range(min_val: f32, max_val: f32, what: &str) -> Result<(), String> {
    if (min_val == f32::INFINITY && max_val == f32::NEG_INFINITY) || min_val <= max_val {
        Ok(())
    } else {
        Err(format!("{what}`min_val` {min_val:?} is greater than `max_val` {max_val:?}"))
    }
}

fn check_histogram(h: &HistogramStats, bins: usize) -> Result<(), String> {
    if h.counts.len() != bins {
        return Err(format!("`histogram` has {} bins but the observer has {bins}", h.counts.len()));
    }
    if let Some((i, v)) = h.counts.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
        return Err(format!("`histogram` bin {i} is {v:?}: counts must be finite and non-negative"));
    }
    if !h.is_initialized() {
        if h.counts.iter().any(|&v| v != 0.0) {
            return Err("a never-observed histogram (min +inf, max -inf) must have all counts zero".into());
        }
        return Ok(());
    }
    if !(h.min_val.is_finite() && h.max_val.is_finite()) {
        return Err(format!(
            "a histogram range must be finite (or +inf/-inf before any batch), got [{:?}, {:?}]",
            h.min_val, h.max_val
        ));
    }
    check_range(h.min_val, h.max_val, "histogram: ")
}

/// `_calculate_qparams` of a 0-dim range, with `check_min_max_valid`'s assertion as an error.
fn per_tensor_qparams(min_val: f32, max_val: f32, range: &QRange) -> Result<QParams, String> {
    if min_val == f32::INFINITY && max_val == f32::NEG_INFINITY {
        return Ok(QParams::per_tensor(1.0, 0));
    }
    if !is_ordered(min_val, max_val) {
        return Err(format!("invalid observer range: min {min_val:?} is not ≤ max {max_val:?}"));
    }
    let (scale, zero_point) = calculate_qparams(min_val, max_val, range);
    Ok(QParams::per_tensor(scale, zero_point))
}

/// `_calculate_qparams` of per-channel ranges.
fn per_channel_qparams(min_val: &[f32], max_val: &[f32], range: &QRange) -> Result<QParams, String> {
    if min_val.is_empty() || max_val.is_empty() {
        return Ok(QParams::per_tensor(1.0, 0));
    }
    if let Some(c) = (0..min_val.len()).find(|&c| !is_ordered(min_val[c], max_val[c])) {
        return Err(format!(
            "invalid observer range in channel {c}: min {:?} is not ≤ max {:?}",
            min_val[c], max_val[c]
        ));
    }
    if range.qscheme == QScheme::PerChannelAffineFloatQParams {
        let (scale, zp): (Vec<f32>, Vec<f32>) =
            min_val.iter().zip(max_val).map(|(&lo, &hi)| calculate_float_qparams(lo, hi, range)).unzip();
        let rounded = zp.iter().map(|&z| z.round_ties_even() as i64).collect();
        return Ok(QParams { scale, zero_point: rounded, float_zero_point: Some(zp) });
    }
    let (scale, zero_point) = min_val.iter().zip(max_val).map(|(&lo, &hi)| calculate_qparams(lo, hi, range)).unzip();
    Ok(QParams { scale, zero_point, float_zero_point: None })
}

// ---------------------------------------------------------------------------------------------
// PyTorch CPU kernels, float32, in their exact evaluation order.

/// Inputs at least this long are split across rayon threads. Only order-independent work is
/// split — min/max (the sign of a zero extreme is fixed afterwards, in element order) and integer
/// counts — so results do not depend on the thread count.
const PAR_MIN_LEN: usize = 1 << 17;
/// The elements one rayon task takes.
const PAR_CHUNK: usize = 1 << 16;
/// Lanes of the min/max scan (wide enough for the compiler to vectorise it).
const SCAN_LANES: usize = 8;
/// Per-channel runs shorter than this are folded in one pass over the data instead of being
/// scanned channel by channel.
const SMALL_INNER: usize = 64;

/// What one pass over a batch finds: its minimum and maximum (ignoring NaN; the sign of a zero
/// extreme is arbitrary until [`Scan::fix_zeros`]), how many elements are NaN, and how many are
/// not finite (NaN or ±inf).
#[derive(Copy, Clone, Debug)]
struct Scan {
    min: f32,
    max: f32,
    nans: usize,
    nonfinite: usize,
}

impl Scan {
    const EMPTY: Scan = Scan { min: f32::INFINITY, max: f32::NEG_INFINITY, nans: 0, nonfinite: 0 };

    fn merge(self, other: Scan) -> Scan {
        Scan {
            min: if other.min < self.min { other.min } else { self.min },
            max: if other.max > self.max { other.max } else { self.max },
            nans: self.nans + other.nans,
            nonfinite: self.nonfinite + other.nonfinite,
        }
    }

    /// [`aminmax`] of the scanned NaN-free data `x`: a zero minimum or maximum takes the sign of
    /// the last zero in `x` (where [`aminmax`]'s fold ends up; no element is below a zero minimum,
    /// so every zero after the first replaces it).
    fn fix_zeros(self, x: &[f32]) -> (f32, f32) {
        self.fix_zeros_with(|| x.iter().rev().copied().find(|&v| v == 0.0))
    }

    fn fix_zeros_with(self, last_zero: impl FnOnce() -> Option<f32>) -> (f32, f32) {
        let (mut lo, mut hi) = (self.min, self.max);
        if lo == 0.0 || hi == 0.0 {
            let zero = last_zero().unwrap_or(0.0);
            if lo == 0.0 {
                lo = zero;
            }
            if hi == 0.0 {
                hi = zero;
            }
        }
        (lo, hi)
    }
}

/// [`Scan`] of `x`, split across threads when long.
fn scan(x: &[f32]) -> Scan {
    if x.len() >= PAR_MIN_LEN {
        use rayon::prelude::*;
        x.par_chunks(PAR_CHUNK).map(scan_serial).reduce(|| Scan::EMPTY, Scan::merge)
    } else {
        scan_serial(x)
    }
}

/// Zero for a finite `v` (`v − v` is +0.0), non-zero (NaN's bits) for NaN and ±inf: or-ing these
/// flags non-finite elements without counting them in the hot loop.
#[allow(clippy::eq_op)]
fn nonfinite_bits(v: f32) -> u32 {
    (v - v).to_bits()
}

fn scan_serial(x: &[f32]) -> Scan {
    let mut lo = [f32::INFINITY; SCAN_LANES];
    let mut hi = [f32::NEG_INFINITY; SCAN_LANES];
    let mut bad = [0u32; SCAN_LANES];
    let mut chunks = x.chunks_exact(SCAN_LANES);
    for c in &mut chunks {
        let c: &[f32; SCAN_LANES] = c.try_into().expect("exact chunk");
        for k in 0..SCAN_LANES {
            let v = c[k];
            lo[k] = if v < lo[k] { v } else { lo[k] };
            hi[k] = if v > hi[k] { v } else { hi[k] };
            bad[k] |= nonfinite_bits(v);
        }
    }
    for &v in chunks.remainder() {
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
        bad[0] |= nonfinite_bits(v);
    }
    let mut total = Scan::EMPTY;
    for k in 0..SCAN_LANES {
        total = total.merge(Scan { min: lo[k], max: hi[k], nans: 0, nonfinite: 0 });
    }
    if bad.iter().any(|&b| b != 0) {
        total.nans = x.iter().filter(|v| v.is_nan()).count();
        total.nonfinite = x.iter().filter(|v| !v.is_finite()).count();
    }
    total
}

/// Per-channel [`aminmax`] of row-major `data` of `shape` along `axis` (PyTorch swaps `axis` with
/// dimension 0 and flattens the rest, so each channel's elements are taken in row-major order of
/// the other dimensions), and the number of NaN values (the extremes are meaningless when there
/// are any). Channels are split across threads for large inputs.
fn per_channel_aminmax(data: &[f32], shape: &[usize], axis: usize) -> (Vec<f32>, Vec<f32>, usize) {
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    if inner < SMALL_INNER {
        // Short runs per channel: one pass in memory order updating every channel's fold (each
        // channel still sees its elements in order, so this is `aminmax` itself).
        let mut lo = vec![f32::INFINITY; channels];
        let mut hi = vec![f32::NEG_INFINITY; channels];
        let mut nans = 0;
        let fold = |l: &mut f32, h: &mut f32, v: f32| {
            *l = if v <= *l { v } else { *l };
            *h = if v >= *h { v } else { *h };
        };
        for row in data.chunks_exact(channels * inner) {
            if inner == 1 {
                lo.iter_mut().zip(&mut hi).zip(row).for_each(|((l, h), &v)| fold(l, h, v));
            } else {
                for ((l, h), run) in lo.iter_mut().zip(&mut hi).zip(row.chunks_exact(inner)) {
                    run.iter().for_each(|&v| fold(l, h, v));
                }
            }
            nans += row.iter().filter(|v| v.is_nan()).count();
        }
        return (lo, hi, nans);
    }
    // Channel `c` is the segments `data[(o·channels + c)·inner ..][..inner]` for `o` in order.
    let segment = |o: usize, c: usize| &data[(o * channels + c) * inner..][..inner];
    let channel = |c: usize| -> (f32, f32, usize) {
        let s = (0..outer).map(|o| scan_serial(segment(o, c))).fold(Scan::EMPTY, Scan::merge);
        let (lo, hi) =
            s.fix_zeros_with(|| (0..outer).rev().find_map(|o| segment(o, c).iter().rev().copied().find(|&v| v == 0.0)));
        (lo, hi, s.nans)
    };
    let per_channel: Vec<(f32, f32, usize)> = if data.len() >= PAR_MIN_LEN && channels > 1 {
        use rayon::prelude::*;
        let min_len = (PAR_CHUNK / inner.max(1) / outer.max(1)).max(1);
        (0..channels).into_par_iter().with_min_len(min_len).map(channel).collect()
    } else {
        (0..channels).map(channel).collect()
    };
    let nans = per_channel.iter().map(|c| c.2).sum();
    let (lo, hi) = per_channel.into_iter().map(|(lo, hi, _)| (lo, hi)).unzip();
    (lo, hi, nans)
}

/// `torch.sum` of a contiguous float32 vector: ATen's cascade sum (`SumKernel.cpp`,
/// `vectorized_inner_sum`) over `F32_LANES`-wide vectors, in float32.
pub(crate) fn torch_sum_f32(x: &[f32]) -> f32 {
    let body = x.len() / F32_LANES * F32_LANES;
    lanes_sum(x.len(), x[body..].iter().copied(), |lane| {
        let (elements, stride) = if x.len() < F32_LANES { (x, 1) } else { (&x[lane..body], F32_LANES) };
        elements.iter().step_by(stride).copied().enumerate()
    })
}

/// The cascade of [`torch_sum_f32`] over a vector of `len` elements: the tail beyond the last
/// whole `F32_LANES` vector is added first, then each lane's [`row_sum`] over its elements
/// (`lane(l)`: `(position in the lane, value)`), or, below one vector, one `row_sum` over all.
fn lanes_sum<I: Iterator<Item = (usize, f32)>>(
    len: usize,
    tail: impl Iterator<Item = f32>,
    lane: impl Fn(usize) -> I,
) -> f32 {
    if len < F32_LANES {
        return row_sum(len, lane(0));
    }
    let mut total = 0.0f32;
    for value in tail {
        total += value;
    }
    for l in 0..F32_LANES {
        total += row_sum(len / F32_LANES, lane(l));
    }
    total
}

/// Where the elements of a float32 vector go in [`torch_sum_f32`]'s reduction, for the ones
/// that can be nonzero: it sums in O(those) instead of O(len), with the dense sum's bits. An
/// accumulator starts at +0.0 and no float sum turns it into -0.0, so adding a +0.0 element
/// never changes it.
struct SumOrder {
    len: usize,
    /// Element indices of the tail, in order.
    tail: Vec<usize>,
    /// Per lane, `(position in the lane, element index)` in order (one lane holding every
    /// element when `len < F32_LANES`).
    lanes: Vec<Vec<(usize, usize)>>,
}

impl SumOrder {
    /// The order of the elements `indices` (increasing, each `< len`).
    fn new(len: usize, indices: impl Iterator<Item = usize>) -> SumOrder {
        let mut order = SumOrder { len, tail: Vec::new(), lanes: vec![Vec::new(); F32_LANES] };
        let body = len / F32_LANES * F32_LANES;
        for i in indices {
            if len < F32_LANES {
                order.lanes[0].push((i, i));
            } else if i < body {
                order.lanes[i % F32_LANES].push((i / F32_LANES, i));
            } else {
                order.tail.push(i);
            }
        }
        order
    }

    /// The sum of the vector whose element `i` is `value(i)` at the indices this order was built
    /// over and +0.0 elsewhere.
    fn sum(&self, value: impl Fn(usize) -> f32) -> f32 {
        lanes_sum(self.len, self.tail.iter().map(|&i| value(i)), |l| {
            self.lanes[l].iter().map(|&(position, i)| (position, value(i)))
        })
    }
}

/// `row_sum` over `n` elements given as `(index, value)` in increasing index order (elements not
/// given are +0.0): four interleaved accumulators (`ilp_factor`), each a `multi_row_sum`
/// cascade, then the leftovers into the first, then the four summed in order.
fn row_sum(n: usize, elements: impl Iterator<Item = (usize, f32)>) -> f32 {
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    let rows = n / ILP;
    let ceil_log2 = |x: usize| if x <= 2 { 1 } else { usize::BITS - (x - 1).leading_zeros() } as usize;
    let level_power = (ceil_log2(rows) / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut elements = elements.peekable();
    // Element `r·ILP + k` of the rows before `end` goes to accumulator `k`, rows in order.
    let mut add_rows_before = |acc: &mut [f32; ILP], end: usize| {
        while let Some((index, value)) = elements.next_if(|&(index, _)| index < end * ILP) {
            acc[index % ILP] += value;
        }
    };
    let mut acc = [[0.0f32; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= rows {
        i += level_step;
        add_rows_before(&mut acc[0], i);
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (a, b) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                *a += *b;
                *b = 0.0;
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    add_rows_before(&mut acc[0], rows);
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (a, b) in first[0].iter_mut().zip(level) {
            *a += *b;
        }
    }
    let mut partial = acc[0];
    for (_, value) in elements {
        partial[0] += value;
    }
    partial[0] + partial[1] + partial[2] + partial[3]
}

/// `torch.cumsum` of float32 on CPU: accumulated in float64, stored as float32.
fn torch_cumsum_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 0.0f64;
    x.iter()
        .map(|&v| {
            acc += f64::from(v);
            acc as f32
        })
        .collect()
}

/// `torch.linspace(start, end, steps)` in float32 (`steps ≥ 2`): the first half counts up from
/// `start`, the second half down from `end`, each element one fused multiply-add.
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    // `mul_add` is a call to libm's `fmaf` unless the code is compiled for FMA hardware; the
    // upsampling merge needs 2^15 of them per histogram. Both give the one correctly rounded
    // result.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above.
        return unsafe { linspace_fma(start, end, steps) };
    }
    linspace(start, end, steps)
}

/// [`linspace`] compiled with FMA instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn linspace_fma(start: f32, end: f32, steps: usize) -> Vec<f32> {
    linspace(start, end, steps)
}

#[inline(always)]
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    // A plain loop (not an iterator adapter, which may be compiled out of line, without FMA).
    let mut out = vec![0.0f32; steps];
    for (i, o) in out.iter_mut().enumerate() {
        *o = if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) };
    }
    out
}

/// `c10::div_floor_floating`: Python's `//` on floats.
fn div_floor(a: f32, b: f32) -> f32 {
    if b == 0.0 {
        return a / b;
    }
    let m = fmod(a, b);
    let mut div = (a - m) / b;
    if m != 0.0 && (b < 0.0) != (m < 0.0) {
        div -= 1.0;
    }
    if div != 0.0 {
        let mut floor = div.floor();
        if div - floor > 0.5 {
            floor += 1.0;
        }
        floor
    } else {
        0.0f32.copysign(a / b)
    }
}

/// `fmodf(a, b)` (C's `%`, exact), without the slow software `fmodf` in the usual case: in
/// f64, `trunc(a/b)` is the exact truncated quotient of two float32s below 2^24 (the
/// quotient's rounding error, under 2^-29, is less than its distance to any other integer,
/// at least 2^-24), and `a − q·b` is then exact (`q·b` needs at most 48 bits, and the
/// remainder fits in b's precision).
fn fmod(a: f32, b: f32) -> f32 {
    let (x, y) = (f64::from(a), f64::from(b));
    let q = (x / y).trunc();
    if q.abs() < 16_777_216.0 && y.is_finite() {
        // `copysign`: C's fmod keeps the dividend's sign on a zero remainder.
        ((x - q * y) as f32).copysign(a)
    } else {
        a % b
    }
}

/// `torch.histc(x, bins, min=lo, max=hi)` on CPU (`histogramdd` with linear-interpolation bins):
/// an equal `lo`/`hi` falls back to the data's range, and to `lo − 1, hi + 1` (in float64) if that
/// is a single value too; elements outside the float32 edges are skipped; the bin is
/// `int((x − left)·bins / (right − left))` in float32, the last bin closed.
fn torch_histc(x: &[f32], bins: usize, lo: f32, hi: f32) -> Vec<f32> {
    let (mut left, mut right) = (f64::from(lo), f64::from(hi));
    if left == right && !x.is_empty() {
        let (a, b) = aminmax(x);
        (left, right) = (f64::from(a), f64::from(b));
    }
    if left == right {
        left -= 1.0;
        right += 1.0;
    }
    // The edges are float32 `linspace` endpoints, which are exact.
    counts_to_f32(&histc_counts(x, false, bins, left as f32, right as f32))
}

/// Float32 histogram counts from exact integer ones. PyTorch's kernel (and this module's
/// definition) adds 1.0 per element to a float32 bin, which is exact up to 2^24 and then stays
/// at 2^24 (2^24 + 1 rounds back to even), so a count `n` is `min(n, 2^24)`.
fn counts_to_f32(counts: &[u64]) -> Vec<f32> {
    counts.iter().map(|&n| n.min(1 << 24) as f32).collect()
}

/// The integer bin counts of `torch.histc` with float32 edges `left`, `right` (of `|x|` when
/// `abs`): counting is order-independent, so long inputs are split across threads.
fn histc_counts(x: &[f32], abs: bool, bins: usize, left: f32, right: f32) -> Vec<u64> {
    if x.len() >= PAR_MIN_LEN {
        use rayon::prelude::*;
        // Each task allocates its own sub-histograms: give it enough elements to fill them.
        let chunk = PAR_CHUNK.max(8 * bins);
        x.par_chunks(chunk).map(|c| histc_counts_serial(c, abs, bins, left, right)).reduce(
            || vec![0; bins],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
    } else {
        histc_counts_serial(x, abs, bins, left, right)
    }
}

/// Interleaved sub-histograms of [`histc_counts_serial`]: consecutive elements landing in the
/// same bin (the zeros after a ReLU) do not wait on each other's increments.
const SUB_HISTOGRAMS: usize = 4;
/// Elements whose bins are computed together (a vectorised loop) before they are counted.
const HISTC_BLOCK: usize = 256;
/// 2^23: adding and subtracting it rounds a float32 in [0, 2^23) to an integer.
const ROUNDING_MAGIC: f32 = 8_388_608.0;

fn histc_counts_serial(x: &[f32], abs: bool, bins: usize, left: f32, right: f32) -> Vec<u64> {
    if abs {
        histc_counts_impl::<true>(x, bins, left, right)
    } else {
        histc_counts_impl::<false>(x, bins, left, right)
    }
}

/// The bins of `x` (of `|x|` when `ABS`) over float32 edges `left < right`, written to `out`:
/// `int((v − left)·bins / (right − left))` (truncated, NaN to 0) limited to the last bin, and
/// `bins` — a slot that is thrown away — for values outside `[left, right]`.
///
/// The quotient is clamped to `[0, bins − 1]` in float32 first (NaN to 0, as `as usize` does) and
/// then truncated with float32 arithmetic that the compiler vectorises (a saturating `as` cast is
/// not): `r = (q + 2^23) − 2^23` rounds `q` to an integer, `r − 1` when that rounded up, and the
/// low mantissa bits of `floor(q) + 2^23` are `floor(q)`; all exact for `0 ≤ q < 2^23`.
fn bin_indices<const ABS: bool>(x: &[f32], out: &mut [u32], bins: usize, left: f32, right: f32) {
    let n = bins as f32;
    let width = right - left;
    let last = (bins - 1) as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        let v = if ABS { v.abs() } else { v };
        let q = (v - left) * n / width;
        let inside = (v >= left) & (v <= right);
        let q = if q > last { last } else { q };
        let q = if q >= 0.0 { q } else { 0.0 };
        let q = if inside { q } else { n };
        let r = (q + ROUNDING_MAGIC) - ROUNDING_MAGIC;
        let floor = if r > q { r - 1.0 } else { r };
        *o = (floor + ROUNDING_MAGIC).to_bits() - ROUNDING_MAGIC.to_bits();
    }
}

fn histc_counts_impl<const ABS: bool>(x: &[f32], bins: usize, left: f32, right: f32) -> Vec<u64> {
    let mut out = vec![0u64; bins];
    if right == left {
        // PyTorch divides 0 by 0 here (undefined behaviour); see the module doc.
        out[bins / 2] = x.iter().filter(|&&v| (if ABS { v.abs() } else { v }) == left).count() as u64;
        return out;
    }
    let stride = bins + 1;
    let mut sub = vec![0u32; SUB_HISTOGRAMS * stride];
    let mut idx = [0u32; HISTC_BLOCK];
    // Groups of blocks keep the u32 sub-counts from overflowing.
    for group in x.chunks(1 << 30) {
        for block in group.chunks(HISTC_BLOCK) {
            let idx = &mut idx[..block.len()];
            bin_indices::<ABS>(block, idx, bins, left, right);
            let (s0, rest) = sub.split_at_mut(stride);
            let (s1, rest) = rest.split_at_mut(stride);
            let (s2, s3) = rest.split_at_mut(stride);
            let mut quads = idx.chunks_exact(SUB_HISTOGRAMS);
            for q in &mut quads {
                s0[q[0] as usize] += 1;
                s1[q[1] as usize] += 1;
                s2[q[2] as usize] += 1;
                s3[q[3] as usize] += 1;
            }
            for &i in quads.remainder() {
                s0[i as usize] += 1;
            }
        }
        for part in sub.chunks_exact_mut(stride) {
            out.iter_mut().zip(&*part).for_each(|(o, &p)| *o += u64::from(p));
            part.fill(0);
        }
    }
    out
}

/// `HistogramObserver._upscale_histogram`: the old histogram (over `[orig_min, orig_max]`) in the
/// bins of `[new_min, new_max]`.
fn upscale_histogram(hist: &[f32], orig_min: f32, orig_max: f32, new_min: f32, new_max: f32) -> Vec<f32> {
    let bins = hist.len();
    let fine = bins * UPSAMPLE_RATE;
    let bin_size = (orig_max - orig_min) / fine as f32;
    let half = 0.5 * bin_size;
    let mids = torch_linspace_f32(orig_min, orig_max, fine + 1);
    let edges = torch_linspace_f32(new_min, new_max, bins + 1);
    // bucketize(right=True): the number of edges ≤ the midpoint. The midpoints normally rise, so
    // over sorted edges a cursor that only moves forward finds it; anything else (NaN, a
    // midpoint below its predecessor, unsorted edges) takes the binary search.
    let sorted = edges.windows(2).all(|w| w[0] <= w[1]);
    let mut cursor: Option<(f32, usize)> = None;
    let mut out = vec![0.0f32; bins];
    for (i, &m) in mids[..fine].iter().enumerate() {
        let mid = m + half;
        let above = match cursor {
            Some((prev, mut j)) if sorted && mid >= prev => {
                while j < edges.len() && edges[j] <= mid {
                    j += 1;
                }
                j
            }
            _ => edges.partition_point(|&e| e <= mid),
        };
        cursor = (sorted && !mid.is_nan()).then_some((mid, above));
        // bucketize(right=True) − 1, clamped to the bins.
        let bucket = above.saturating_sub(1).min(bins - 1);
        out[bucket] += hist[i / UPSAMPLE_RATE] / UPSAMPLE_RATE as f32;
    }
    out
}

/// `HistogramObserver._combine_histograms` (the equal-range case is handled by the caller).
fn combine_histograms(
    orig: &[f32],
    orig_min: f32,
    orig_max: f32,
    update: &[f32],
    new_min: f32,
    new_max: f32,
) -> Vec<f32> {
    let bins = orig.len();
    if orig_min == orig_max {
        let weight = torch_sum_f32(orig);
        let single = torch_histc(&[orig_min], bins, new_min, new_max);
        return single.iter().zip(update).map(|(&s, &u)| s * weight + u).collect();
    }
    let upscaled = upscale_histogram(orig, orig_min, orig_max, new_min, new_max);
    update.iter().zip(&upscaled).map(|(&u, &t)| u + t).collect()
}

/// `HistogramObserver.forward` on finite, non-empty data whose [`aminmax`] is `(xmin, xmax)`.
fn histogram_observe(h: &mut HistogramStats, x: &[f32], xmin: f32, xmax: f32) {
    let bins = h.counts.len();
    if !h.is_initialized() {
        h.min_val = xmin;
        h.max_val = xmax;
        h.counts = torch_histc(x, bins, xmin, xmax);
        return;
    }
    let new_min = torch_minimum(h.min_val, xmin);
    let new_max = torch_maximum(h.max_val, xmax);
    let update = torch_histc(x, bins, new_min, new_max);
    if new_min == h.min_val && new_max == h.max_val {
        h.counts.iter_mut().zip(&update).for_each(|(c, &u)| *c += u);
    } else {
        h.counts = combine_histograms(&h.counts, h.min_val, h.max_val, &update, new_min, new_max);
        h.min_val = new_min;
        h.max_val = new_max;
    }
}

/// The entropy observer's histogram of |x| over `[0, hi]` (all in bin 0 while `hi` is 0).
fn abs_histc(x: &[f32], bins: usize, hi: f32) -> Vec<f32> {
    if hi == 0.0 {
        let mut out = vec![0.0f32; bins];
        out[0] = x.len() as f32;
        return out;
    }
    // `torch_histc(|x|, bins, 0.0, hi)`: hi > 0, so the edges are 0 and hi.
    counts_to_f32(&histc_counts(x, true, bins, 0.0, hi))
}

/// The entropy observer's `forward` on finite, non-empty data whose [`aminmax`] is
/// `(xmin, xmax)`.
fn abs_histogram_observe(h: &mut HistogramStats, x: &[f32], xmin: f32, xmax: f32) {
    let bins = h.counts.len();
    let first = !h.is_initialized();
    let old_hi = h.abs_max();
    h.min_val = torch_minimum(xmin, h.min_val);
    h.max_val = torch_maximum(xmax, h.max_val);
    let hi = h.abs_max();
    let update = abs_histc(x, bins, hi);
    if first {
        h.counts = update;
    } else if hi == old_hi {
        h.counts.iter_mut().zip(&update).for_each(|(c, &u)| *c += u);
    } else {
        h.counts = combine_histograms(&h.counts, 0.0, old_hi, &update, 0.0, hi);
    }
}

/// `HistogramObserver._compute_quantization_error(next_start_bin, next_end_bin)`. `nonempty`
/// is the sum order of the histogram's nonempty bins: an empty bin's density is 0 and each of
/// its terms ±0, so its norm is +0 and only the others need computing.
fn quantization_error(h: &HistogramStats, nonempty: &SumOrder, start: usize, end: usize, dst_nbins: f64) -> f64 {
    let bins = h.counts.len();
    // Python floats.
    let bin_width = (f64::from(h.max_val) - f64::from(h.min_val)) / bins as f64;
    let dst_bin_width = bin_width * (end - start + 1) as f64 / dst_nbins;
    if dst_bin_width == 0.0 {
        return 0.0;
    }
    // Python scalars entering float32 tensor ops become float32.
    let bw = bin_width as f32;
    let dbw = dst_bin_width as f32;
    let half = (dst_bin_width / 2.0) as f32;
    let neg_half = (-dst_bin_width / 2.0) as f32;
    let last_dst = (dst_nbins - 1.0) as f32;
    let clamp = |v: f32| v.max(0.0).min(last_dst);
    // `_get_norm(tensor(-dbw/2), tensor(dbw/2), density)` before the density factor.
    let mid_norm = (half * half * half - neg_half * neg_half * neg_half) / 3.0;
    let neg_half_cubed = neg_half * neg_half * neg_half;
    let norm = |i: usize| {
        let count = h.counts[i];
        let src_begin = (i as i64 - start as i64) as f32 * bw;
        let src_end = src_begin + bw;
        let dst_begin = clamp(div_floor(src_begin, dbw));
        let dst_begin_center = (dst_begin + 0.5) * dbw;
        let dst_end = clamp(div_floor(src_end, dbw));
        let density = count / bw;
        let delta_begin = src_begin - dst_begin_center;
        let mut norm = 0.0f32;
        norm += density * ((half * half * half - delta_begin * delta_begin * delta_begin) / 3.0);
        norm += (dst_end - dst_begin - 1.0) * (density * mid_norm);
        let dst_end_center = dst_end * dbw + half;
        let delta_end = src_end - dst_end_center;
        norm += density * ((delta_end * delta_end * delta_end - neg_half_cubed) / 3.0);
        norm
    };
    f64::from(nonempty.sum(norm))
}

/// `HistogramObserver._non_linear_param_search`'s step: its quantile bounds move in steps of 1e-5.
const SEARCH_STEP: f64 = 1e-5;

/// The values the search's `alpha` takes (`alpha += stepsize` from 0, each sum rounded) and those
/// of `beta` (`beta -= stepsize` from 1), by step count. Every search walks the same two
/// sequences, only interleaved differently, so they are computed once. The search runs while
/// `alpha < beta`, so `a` steps of one and `b` of the other have `a + b ≤ 1/stepsize`: the
/// tables end one step beyond, where `beta` is below every `alpha`.
fn search_steps() -> &'static (Vec<f64>, Vec<f64>) {
    static STEPS: OnceLock<(Vec<f64>, Vec<f64>)> = OnceLock::new();
    STEPS.get_or_init(|| {
        let n = (1.0 / SEARCH_STEP) as usize + 3;
        let (mut alpha, mut beta) = (0.0f64, 1.0f64);
        let (mut alphas, mut betas) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            alphas.push(alpha);
            betas.push(beta);
            alpha += SEARCH_STEP;
            beta -= SEARCH_STEP;
        }
        (alphas, betas)
    })
}

/// `HistogramObserver._non_linear_param_search`: the (min, max) that minimise the L2
/// quantization error, found by shrinking the histogram's quantile bounds in 1e-5 steps.
///
/// PyTorch takes every step, up to 10^5 of them; most move neither bound and only lower `beta`.
/// Such a run ends at the first step whose `beta` moves the upper bound or ends the search,
/// which both only get likelier as `beta` falls: a binary search over the step tables finds it
/// and the result is the same, step for step.
fn non_linear_param_search(h: &HistogramStats, dst_nbins: f64) -> (f32, f32) {
    let bins = h.counts.len();
    let bin_width = (h.max_val - h.min_val) / bins as f32;
    let total = f64::from(torch_sum_f32(&h.counts));
    let csum = torch_cumsum_f32(&h.counts);
    let nonempty = SumOrder::new(bins, (0..bins).filter(|&i| h.counts[i] != 0.0));
    let (alphas, betas) = search_steps();
    // Past the tables (unreachable, see `search_steps`) the comparisons with NaN end the search.
    let at = |steps: &[f64], k: usize| steps.get(k).copied().unwrap_or(f64::NAN);
    // `cSum[r] > next_beta * total` with `beta` at step `b`: the Python float rounded to float32.
    let upper_at = |b: usize| (at(betas, b + 1) * total) as f32;
    // `alpha` and `beta` as step counts.
    let (mut a, mut b) = (0usize, 0usize);
    let (mut start, mut end) = (0usize, bins - 1);
    let mut norm_min = f64::INFINITY;
    while at(alphas, a) < at(betas, b) {
        // `cSum[l] < next_alpha * total`: likewise.
        let (lower, upper) = ((at(alphas, a + 1) * total) as f32, upper_at(b));
        let mut l = start;
        while l < end && csum[l] < lower {
            l += 1;
        }
        let mut r = end;
        while r > start && csum[r] > upper {
            r -= 1;
        }
        if l == start && r == end {
            // Nothing moves: skip the steps of `beta` that still move nothing.
            let alpha = at(alphas, a);
            // `alpha < beta` fails (or beta is past the tables, NaN) or the upper bound moves.
            let moves_or_ends = |b: usize| {
                alpha.partial_cmp(&at(betas, b)) != Some(std::cmp::Ordering::Less)
                    || (end > start && csum[end] > upper_at(b))
            };
            let (mut lo, mut hi) = (b + 1, betas.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if moves_or_ends(mid) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            b = lo;
            continue;
        }
        let (mut next_start, mut next_end) = (start, end);
        if l - start > end - r {
            next_start = l;
            a += 1;
        } else {
            next_end = r;
            b += 1;
        }
        let norm = quantization_error(h, &nonempty, next_start, next_end, dst_nbins);
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        start = next_start;
        end = next_end;
    }
    (h.min_val + bin_width * start as f32, h.min_val + bin_width * (end + 1) as f32)
}

/// The `percentile` observer's clipping range (see the module doc).
fn percentile_range(h: &HistogramStats, percentile: f64) -> (f32, f32) {
    let bins = h.counts.len();
    let total: f64 = h.counts.iter().fold(0.0, |acc, &c| acc + f64::from(c));
    let tail = total * (100.0 - percentile) / 200.0;
    let mut cum = 0.0f64;
    let lo = h
        .counts
        .iter()
        .position(|&c| {
            cum += f64::from(c);
            cum > tail
        })
        .unwrap_or(0);
    cum = 0.0;
    let hi = h
        .counts
        .iter()
        .rposition(|&c| {
            cum += f64::from(c);
            cum > tail
        })
        .unwrap_or(bins - 1)
        .max(lo);
    let bin_width = (h.max_val - h.min_val) / bins as f32;
    let new_min = h.min_val + bin_width * lo as f32;
    let new_max = if hi == bins - 1 { h.max_val } else { h.min_val + bin_width * (hi + 1) as f32 };
    (new_min, new_max)
}

/// The entropy observer's cut: how many |x| bins to keep (see the module doc).
///
/// The definition tries every cut with an O(bins) divergence: O(bins²) in all (18 s for 65 536
/// bins). Here each cut's divergence is first estimated from prefix sums and group sums shared
/// by the cuts of one group width, with a bound on how far both the estimate and the defined
/// float64 sum can be from the exact divergence: only the cuts whose lower bound reaches the
/// smallest upper bound can hold the first minimum of the defined sums, and only those are
/// evaluated as defined ([`entropy_divergence`]). The result is the definition's, bit for bit:
/// every other cut's defined divergence is strictly larger than the minimum. (Group sums cost
/// O(bins²/levels) in all, a 128th of the definition's work for 8-bit ranges.)
fn entropy_bins_kept(counts: &[f32], levels: usize) -> usize {
    let bins = counts.len();
    let h: Vec<f64> = counts.iter().map(|&c| f64::from(c)).collect();
    if h.iter().fold(0.0, |acc, &v| acc + v) == 0.0 {
        return bins;
    }
    let sums = EntropySums::new(&h);
    let mut groups: Vec<f64> = Vec::with_capacity(levels);
    let mut bounds = Vec::with_capacity(bins + 1 - levels);
    for i in levels..=bins {
        let merged = i / levels;
        if groups.is_empty() || i % levels == 0 {
            // The sums of the groups before the last one, the same for every cut of this width.
            groups.clear();
            groups.extend((0..levels - 1).map(|g| h[g * merged..(g + 1) * merged].iter().fold(0.0, |a, &v| a + v)));
        }
        bounds.push(sums.divergence_bounds(&h, i, levels, &groups));
    }
    let cutoff = bounds.iter().map(|&(_, hi)| hi).fold(f64::INFINITY, f64::min);
    let (mut best, mut best_kl) = (bins, f64::INFINITY);
    let (mut p, mut q) = (Vec::with_capacity(bins), Vec::with_capacity(bins));
    for (i, &(lo, _)) in (levels..).zip(&bounds) {
        if lo <= cutoff {
            let kl = entropy_divergence(&h, levels, i, &mut p, &mut q);
            if kl < best_kl {
                best_kl = kl;
                best = i;
            }
        }
    }
    best
}

/// The divergence of cut `i` as defined (see the module doc), in its float64 operation order;
/// `p` and `q` are scratch buffers.
fn entropy_divergence(h: &[f64], levels: usize, i: usize, p: &mut Vec<f64>, q: &mut Vec<f64>) -> f64 {
    p.clear();
    p.extend_from_slice(&h[..i]);
    let outliers = h[i..].iter().fold(0.0, |acc, &v| acc + v);
    p[i - 1] += outliers;
    q.clear();
    q.resize(i, 0.0);
    let merged = i / levels;
    for g in 0..levels {
        let begin = g * merged;
        let stop = if g + 1 < levels { begin + merged } else { i };
        let sum = h[begin..stop].iter().fold(0.0, |acc, &v| acc + v);
        let nonzero = p[begin..stop].iter().filter(|&&v| v != 0.0).count();
        if nonzero > 0 {
            let share = sum / nonzero as f64;
            for k in begin..stop {
                if p[k] != 0.0 {
                    q[k] = share;
                }
            }
        }
    }
    let sp = p.iter().fold(0.0, |acc, &v| acc + v);
    let sq = q.iter().fold(0.0, |acc, &v| acc + v);
    let mut kl = 0.0f64;
    for (&pk, &qk) in p.iter().zip(q.iter()) {
        if pk != 0.0 {
            if qk == 0.0 {
                return f64::INFINITY;
            }
            let (pk, qk) = (pk / sp, qk / sq);
            kl += pk * (pk / qk).ln();
        }
    }
    kl
}

/// Sums over a histogram `h` for [`EntropySums::divergence_bounds`]: entry `k` of a prefix
/// covers bins `0..k`, of a suffix bins `k..`.
struct EntropySums {
    /// Σ h·ln h (0 for empty bins), prefix.
    mass_log: Vec<f64>,
    /// Σ |h·ln h|, prefix.
    mass_log_abs: Vec<f64>,
    /// Non-zero bins, prefix.
    nonzero: Vec<usize>,
    /// Σ h, suffix (summed from the end: no cancellation).
    tail: Vec<f64>,
}

impl EntropySums {
    fn new(h: &[f64]) -> EntropySums {
        let n = h.len();
        let mut sums = EntropySums {
            mass_log: Vec::with_capacity(n + 1),
            mass_log_abs: Vec::with_capacity(n + 1),
            nonzero: Vec::with_capacity(n + 1),
            tail: vec![0.0; n + 1],
        };
        let (mut ml, mut mla, mut nz) = (0.0, 0.0, 0);
        for &v in h {
            sums.mass_log.push(ml);
            sums.mass_log_abs.push(mla);
            sums.nonzero.push(nz);
            let t = if v != 0.0 { v * v.ln() } else { 0.0 };
            (ml, mla, nz) = (ml + t, mla + t.abs(), nz + usize::from(v != 0.0));
        }
        sums.mass_log.push(ml);
        sums.mass_log_abs.push(mla);
        sums.nonzero.push(nz);
        for k in (0..n).rev() {
            sums.tail[k] = sums.tail[k + 1] + h[k];
        }
        sums
    }

    /// Bounds `(lo, hi)` on the defined divergence of cut `i` ([`entropy_divergence`]), given
    /// the sums of its groups but the last (`groups`): `(inf, inf)` exactly when it is infinite,
    /// `(-inf, inf)` when no bound can be given. With `P` the reference and `Q` the merged
    /// distribution (see the module doc), `KL = (Σ p ln p − Σ_g S_g ln share_g)/sp − ln sp +
    /// ln sq`, where `S_g` is the mass of `P` in group `g`, `share_g` the value `Q` spreads over
    /// the group's non-zero bins, `sp` the mass of `P` (all of `h`) and `sq` that of `Q`.
    fn divergence_bounds(&self, h: &[f64], i: usize, levels: usize, groups: &[f64]) -> (f64, f64) {
        let n = h.len();
        let merged = i / levels;
        let outliers = self.tail[i];
        // The last bin of P carries the outliers.
        let last = h[i - 1] + outliers;
        let last_begin = (levels - 1) * merged;
        let last_sum = h[last_begin..i].iter().fold(0.0, |a, &v| a + v);
        let (mut cross, mut cross_abs, mut sq) = (0.0f64, 0.0f64, 0.0f64);
        for g in 0..levels {
            let (begin, stop, sum) = match groups.get(g) {
                Some(&sum) => (g * merged, (g + 1) * merged, sum),
                None => (last_begin, i, last_sum),
            };
            let h_nonzero = self.nonzero[stop] - self.nonzero[begin];
            let p_nonzero = if stop == i {
                self.nonzero[i - 1] - self.nonzero[begin] + usize::from(last != 0.0)
            } else {
                h_nonzero
            };
            if p_nonzero == 0 {
                continue;
            }
            if h_nonzero == 0 {
                // Q is 0 where P is not (the outliers' bin): the divergence is infinite.
                return (f64::INFINITY, f64::INFINITY);
            }
            let share = sum / p_nonzero as f64;
            let mass = if stop == i { sum + outliers } else { sum };
            cross += mass * share.ln();
            cross_abs += mass * share.ln().abs();
            sq += sum;
        }
        let sp = self.tail[0];
        let last_log = if last != 0.0 { last * last.ln() } else { 0.0 };
        let plogp = self.mass_log[i - 1] + last_log;
        let plogp_abs = self.mass_log_abs[i - 1] + last_log.abs();
        let kl = (plogp - cross) / sp - sp.ln() + sq.ln();
        // Every sum here and in the definition has at most `n + levels` terms, and every other
        // quantity a few roundings: each is within (n + levels + 16)·2⁻⁵³ of the magnitudes it
        // combines (relative for sums of non-negative terms). The bound takes 64 times that.
        let magnitude = (plogp_abs + cross_abs + sp + sq) / sp + sp.ln().abs() + sq.ln().abs() + 1.0;
        let err = 64.0 * (n + levels + 16) as f64 * (f64::EPSILON / 2.0) * magnitude;
        if !(kl.is_finite() && err.is_finite()) {
            return (f64::NEG_INFINITY, f64::INFINITY);
        }
        (kl - err, kl + err)
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

/// An observer's `stats` must be statistics `convert` can turn into qparams: readable, one
/// range per channel of the observed value, and finite scales. (They are usually written by
/// `calibrate`, which cannot produce bad ones, but may be written by hand.)
pub fn verify_stats(g: &Graph, op: OpId, at: &Locator<'_>, errors: &mut Diagnostics) {
    let Some(stats) = g.attr(op, "stats").and_then(|a| a.as_dict()) else { return };
    // An invalid config is reported by the passes that read it, with their context.
    let Ok(config) = ObserverConfig::from_dict(&observer_attrs(g, op)) else { return };
    let channels = || {
        let axis = config.ch_axis.unwrap_or(0);
        let observed = g.value_type(*g.op(op).operands.first()?);
        usize::try_from(observed.shape.get(axis)?.known()?).ok()
    };
    let checked = ObserverState::from_dict(&config, stats).and_then(|state| {
        state.check_convertible(&config, if config.kind.is_per_channel() { channels() } else { None })
    });
    if let Err(message) = checked {
        let here = at.attr("stats").map_or(at.whole, |(_, v)| v);
        errors.push(
            Diag::error(format!("invalid observer statistics: {message}"))
                .at(here, "in these statistics")
                .help("let `calibrate` write them (`--calib data.npz`), or fix them by hand"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn t(values: &[f32]) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap())
    }

    fn cfg(kind: ObserverKind, qscheme: QScheme) -> ObserverConfig {
        let mut c = ObserverConfig::new(kind, DType::I8, -128, 127, qscheme).unwrap();
        c.eps = 2f32.powi(-12);
        c
    }

    #[test]
    fn fast_fmod_equals_fmodf() {
        // Bit patterns from a fixed LCG: every sign, magnitude and quotient range, plus edges.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            f32::from_bits((state >> 32) as u32)
        };
        let edges = [0.0, -0.0, 1.0, -1.0, 3.0, 0.1, 1e-30, 1e30, f32::INFINITY, f32::NAN, f32::MIN_POSITIVE];
        let mut pairs: Vec<(f32, f32)> = edges.iter().flat_map(|&a| edges.iter().map(move |&b| (a, b))).collect();
        pairs.extend((0..200_000).map(|_| (next(), next())));
        // Quotients near the 2^24 switch and exact multiples.
        pairs.extend((0..2_000).map(|i| (16_777_216.0 * 0.37 + i as f32, 0.37)));
        pairs.extend((1..2_000).map(|i| (0.125 * i as f32, 0.125)));
        for (a, b) in pairs {
            if b == 0.0 {
                continue;
            }
            let (fast, libm) = (fmod(a, b), a % b);
            assert!(fast.to_bits() == libm.to_bits() || (fast.is_nan() && libm.is_nan()), "fmod({a:e}, {b:e})");
        }
    }

    fn base_attrs(kind: &str) -> Dict {
        let mut d = Dict::new();
        d.insert("kind", Attr::Str(kind.into()));
        d.insert("dtype", Attr::DType(DType::I8));
        d.insert("qmin", Attr::Int(-128));
        d.insert("qmax", Attr::Int(127));
        d
    }

    fn observed_states() -> Vec<(ObserverConfig, ObserverState)> {
        let mut out = Vec::new();
        for kind in ObserverKind::ALL {
            let qscheme = if kind.is_per_channel() { QScheme::PerChannelSymmetric } else { QScheme::PerTensorAffine };
            let c = if kind == ObserverKind::FixedQParams {
                let mut d = base_attrs("fixed_qparams");
                let mut o = Dict::new();
                o.insert("scale", Attr::Float(0.5));
                o.insert("zero_point", Attr::Int(3));
                d.insert("options", Attr::Dict(o));
                ObserverConfig::from_dict(&d).unwrap()
            } else {
                cfg(kind, qscheme)
            };
            let mut s = ObserverState::new(&c);
            out.push((c.clone(), s.clone()));
            let x = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.1, -0.7, 2.5, 3.25, -1.0, 0.0]).unwrap());
            s.observe(&c, &x).unwrap();
            s.observe(&c, &Tensor::F32(x.to_f64_array().mapv(|v| (v * 3.0) as f32))).unwrap();
            out.push((c, s));
        }
        out
    }

    #[test]
    fn names_round_trip() {
        for kind in ObserverKind::ALL {
            assert_eq!(ObserverKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ObserverKind::from_name("kl"), None);
    }

    #[test]
    fn stats_round_trip_through_dicts() {
        for (c, s) in observed_states() {
            let d = s.to_dict();
            let back = ObserverState::from_dict(&c, &d).unwrap_or_else(|e| panic!("{}: {e}", c.kind));
            assert_eq!(back, s, "{}", c.kind);
            assert_eq!(back.to_dict(), d);
            match (s.qparams(&c), back.qparams(&c)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a, b),
                other => panic!("{}: {other:?}", c.kind),
            }
        }
    }

    #[test]
    fn malformed_stats_are_rejected() {
        let minmax = cfg(ObserverKind::MinMax, QScheme::PerTensorAffine);
        let reject = |c: &ObserverConfig, d: Dict, needle: &str| {
            let err = ObserverState::from_dict(c, &d).expect_err(needle);
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        let mut d = Dict::new();
        d.insert("min_val", Attr::Float(1.0));
        reject(&minmax, d.clone(), "lack `max_val`");
        d.insert("max_val", Attr::Float(0.5));
        reject(&minmax, d.clone(), "greater than");
        d.insert("max_val", Attr::Float(f64::NAN));
        reject(&minmax, d.clone(), "NaN");
        d.insert("max_val", Attr::Str("big".into()));
        reject(&minmax, d.clone(), "must be a float");
        d.insert("max_val", Attr::Float(1e300));
        reject(&minmax, d.clone(), "does not fit");
        d.insert("max_val", Attr::Int(2));
        assert_eq!(
            ObserverState::from_dict(&minmax, &d).unwrap(),
            ObserverState::MinMax { min_val: 1.0, max_val: 2.0 }
        );
        d.insert("histogram", Attr::List(vec![]));
        reject(&minmax, d, "unknown");

        let pc = cfg(ObserverKind::PerChannelMinMax, QScheme::PerChannelSymmetric);
        let mut d = Dict::new();
        d.insert("min_val", Attr::List(vec![Attr::Float(0.0), Attr::Float(1.0)]));
        d.insert("max_val", Attr::List(vec![Attr::Float(1.0)]));
        reject(&pc, d.clone(), "channels");
        d.insert("max_val", Attr::List(vec![Attr::Float(1.0), Attr::Float(0.5)]));
        reject(&pc, d.clone(), "channel 1");
        d.insert("max_val", Attr::Float(1.0));
        reject(&pc, d, "list of floats");

        let hist = cfg(ObserverKind::Histogram, QScheme::PerTensorAffine);
        let mut d = Dict::new();
        d.insert("min_val", Attr::Float(-1.0));
        d.insert("max_val", Attr::Float(1.0));
        d.insert("histogram", Attr::List(vec![Attr::Float(1.0); 10]));
        reject(&hist, d.clone(), "has 10 bins");
        let mut counts = vec![Attr::Float(0.0); DEFAULT_BINS];
        counts[7] = Attr::Float(-1.0);
        d.insert("histogram", Attr::List(counts.clone()));
        reject(&hist, d.clone(), "bin 7");
        counts[7] = Attr::Float(3.0);
        d.insert("histogram", Attr::List(counts.clone()));
        assert!(ObserverState::from_dict(&hist, &d).is_ok());
        d.insert("min_val", Attr::Float(f64::INFINITY));
        d.insert("max_val", Attr::Float(f64::NEG_INFINITY));
        reject(&hist, d.clone(), "all counts zero");
        d.insert("max_val", Attr::Float(f64::INFINITY));
        reject(&hist, d, "finite");

        let fixed = observed_states().into_iter().find(|(c, _)| c.kind == ObserverKind::FixedQParams).unwrap().0;
        let mut d = Dict::new();
        d.insert("min_val", Attr::Float(0.0));
        reject(&fixed, d, "unknown");
    }

    #[test]
    fn state_of_another_kind_is_rejected() {
        let minmax = cfg(ObserverKind::MinMax, QScheme::PerTensorAffine);
        let hist = cfg(ObserverKind::Histogram, QScheme::PerTensorAffine);
        let mut s = ObserverState::new(&hist);
        assert!(s.observe(&minmax, &t(&[1.0])).is_err());
        assert!(s.qparams(&minmax).is_err());
    }

    #[test]
    fn malformed_configs_are_rejected() {
        let reject = |d: &Dict, needle: &str| {
            let err = ObserverConfig::from_dict(d).expect_err(needle);
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        let mut d = base_attrs("minmaxx");
        reject(&d, "unknown observer kind");
        d.insert("kind", Attr::Str("minmax".into()));
        assert!(ObserverConfig::from_dict(&d).is_ok());
        d.insert("qscheme", Attr::Str("per_channel_symmetric".into()));
        reject(&d, "per-tensor schemes only");
        let mut d = base_attrs("per_channel_minmax");
        reject(&d, "needs a per-channel scheme");
        d.insert("qscheme", Attr::Str("per_channel_symmetric".into()));
        let c = ObserverConfig::from_dict(&d).unwrap();
        assert_eq!(c.ch_axis, Some(0));
        d.insert("ch_axis", Attr::Int(-1));
        reject(&d, "non-negative");
        let mut d = base_attrs("histogram");
        d.insert("qmin", Attr::Int(1));
        reject(&d, "include 0");
        let mut d = base_attrs("histogram");
        d.insert("qmax", Attr::Int(300));
        reject(&d, "does not fit");
        let mut d = base_attrs("histogram");
        d.insert("dtype", Attr::DType(DType::F32));
        reject(&d, "quantizes to");
        let mut d = base_attrs("histogram");
        let mut o = Dict::new();
        o.insert("bins", Attr::Int(0));
        d.insert("options", Attr::Dict(o.clone()));
        reject(&d, "`bins` must be");
        o.insert("bins", Attr::Int(64));
        o.insert("averaging_constant", Attr::Float(0.1));
        d.insert("options", Attr::Dict(o.clone()));
        reject(&d, "takes no `averaging_constant`");
        o.remove("averaging_constant");
        o.insert("colour", Attr::Int(1));
        d.insert("options", Attr::Dict(o.clone()));
        reject(&d, "unknown observer option");
        let mut d = base_attrs("fixed_qparams");
        reject(&d, "needs its `scale`");
        let mut o = Dict::new();
        o.insert("scale", Attr::Float(-1.0));
        o.insert("zero_point", Attr::Int(0));
        d.insert("options", Attr::Dict(o));
        reject(&d, "positive");
        let mut d = base_attrs("percentile");
        let mut o = Dict::new();
        o.insert("percentile", Attr::Float(0.0));
        d.insert("options", Attr::Dict(o));
        reject(&d, "(0, 100]");
        let mut d = base_attrs("minmax");
        d.insert("colour", Attr::Int(1));
        reject(&d, "unknown observer attribute");
    }

    #[test]
    fn fake_quantizing_observers() {
        let with_options = |kind: &str, entries: &[(&str, Attr)]| {
            let mut d = base_attrs(kind);
            let mut o = Dict::new();
            entries.iter().for_each(|(k, v)| o.insert(k, v.clone()));
            d.insert("options", Attr::Dict(o));
            ObserverConfig::from_dict(&d)
        };
        let fused = Attr::Str("fused".into());
        let standard = Attr::Str("fake_quantize".into());
        assert!(with_options("minmax", &[("fake_quant", fused.clone())]).unwrap_err().contains("moving-average"));
        assert!(with_options("histogram", &[("fake_quant", standard.clone())]).unwrap_err().contains("min/max"));
        assert!(with_options("minmax", &[("fake_quant", Attr::Str("yes".into()))]).unwrap_err().contains("unknown"));

        // Fused: the forward uses ChooseQuantizationParams (no eps), so the tiny range gets
        // the 6.1e-5 scale (not 2^-12): 1e-4 rounds to 2 steps.
        let c = with_options("moving_average_minmax", &[("fake_quant", fused)]).unwrap();
        let mut s = ObserverState::new(&c);
        let x = t(&[0.0, 1e-4, -1e-5]);
        s.observe(&c, &x).unwrap();
        let Some(Tensor::F32(out)) = s.fake_quantize(&c, &x).unwrap() else { panic!("no fake-quantized output") };
        assert_eq!(out.as_slice().unwrap(), &[0.0, 2.0 * 6.1e-5, -0.0]);

        // FixedQParamsFakeQuantize: the fixed scale and zero point, clamped to the range.
        let c = with_options(
            "fixed_qparams",
            &[("fake_quant", standard), ("scale", Attr::Float(0.25)), ("zero_point", Attr::Int(-128))],
        )
        .unwrap();
        let s = ObserverState::new(&c);
        let Some(Tensor::F32(out)) = s.fake_quantize(&c, &t(&[0.3, -1.0, 100.0])).unwrap() else { panic!() };
        assert_eq!(out.as_slice().unwrap(), &[0.25, 0.0, 63.75]);

        // A plain observer passes values through unchanged.
        let c = cfg(ObserverKind::MinMax, QScheme::PerTensorAffine);
        assert!(ObserverState::new(&c).fake_quantize(&c, &t(&[1.0])).unwrap().is_none());
    }

    #[test]
    fn reduce_range_halves_the_range() {
        let mut d = base_attrs("minmax");
        let mut o = Dict::new();
        o.insert("reduce_range", Attr::Bool(true));
        d.insert("options", Attr::Dict(o));
        let c = ObserverConfig::from_dict(&d).unwrap();
        assert_eq!((c.qmin, c.qmax), (-64, 63));
    }

    #[test]
    fn nan_inputs_are_errors_that_leave_the_state_alone() {
        for kind in [ObserverKind::MinMax, ObserverKind::Histogram, ObserverKind::Entropy] {
            let c = cfg(kind, QScheme::PerTensorAffine);
            let mut s = ObserverState::new(&c);
            s.observe(&c, &t(&[1.0, 2.0])).unwrap();
            let before = s.clone();
            let err = s.observe(&c, &t(&[1.0, f32::NAN, 3.0, f32::NAN])).unwrap_err();
            assert!(err.contains("2 NaN values"), "{err}");
            assert_eq!(s, before);
        }
    }

    #[test]
    fn infinite_inputs_are_errors_that_leave_the_state_alone() {
        for kind in ObserverKind::ALL.into_iter().filter(|k| k.is_min_max() || k.has_bins()) {
            let qscheme = if kind.is_per_channel() { QScheme::PerChannelAffine } else { QScheme::PerTensorAffine };
            let c = cfg(kind, qscheme);
            let mut s = ObserverState::new(&c);
            s.observe(&c, &t(&[1.0, 2.0])).unwrap();
            let before = s.clone();
            let err = s.observe_finite(&c, &t(&[1.0, f32::NEG_INFINITY, 3.0, f32::INFINITY])).unwrap_err();
            assert!(err.contains("2 infinite values") && err.contains("-inf, at index [1]"), "{kind}: {err}");
            assert_eq!(s, before, "{kind}");
        }
    }

    #[test]
    fn ranges_too_wide_for_a_finite_scale_are_errors() {
        let c = cfg(ObserverKind::MinMax, QScheme::PerTensorAffine);
        let mut s = ObserverState::new(&c);
        s.observe(&c, &t(&[-3e38, 3e38])).unwrap();
        let err = s.qparams(&c).unwrap().check_finite().unwrap_err();
        assert!(err.contains("give scale inf"), "{err}");
    }

    #[test]
    fn never_observed_and_dynamic() {
        for kind in ObserverKind::ALL {
            if !kind.is_uniform() {
                continue;
            }
            let qscheme = if kind.is_per_channel() { QScheme::PerChannelAffine } else { QScheme::PerTensorAffine };
            let c = cfg(kind, qscheme);
            assert_eq!(ObserverState::new(&c).qparams(&c).unwrap(), QParams::per_tensor(1.0, 0), "{kind}");
        }
        let c = ObserverConfig::new(ObserverKind::Placeholder, DType::I8, -128, 127, QScheme::PerTensorAffine).unwrap();
        let mut s = ObserverState::new(&c);
        s.observe(&c, &t(&[1.0])).unwrap();
        assert!(s.qparams(&c).unwrap_err().contains("run time"));
    }

    #[test]
    fn histc_matches_pytorch_rules() {
        // The last bin is closed; a constant input spans [c - 1, c + 1].
        assert_eq!(torch_histc(&[0.0, 1.0, 0.5], 4, 0.0, 1.0), vec![1.0, 0.0, 1.0, 1.0]);
        let h = torch_histc(&[2.0, 2.0], 4, 2.0, 2.0);
        assert_eq!(h, vec![0.0, 0.0, 2.0, 0.0]);
        // Python's floor division: -0.5 // 0.25 = -2, 0.7 // 0.1 = 6 (0.7 - fmod is 0.6000001).
        assert_eq!(div_floor(-0.5, 0.25), -2.0);
        assert_eq!(div_floor(0.7, 0.1), 6.0);
        assert_eq!((0.7f32 / 0.1).floor(), 7.0);
        assert_eq!(div_floor(0.0, -1.0).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn cascade_sum_differs_from_a_running_sum() {
        let x: Vec<f32> = (0..2048).map(|i| 1.0 + (i as f32) * 1e-3).collect();
        let sequential = x.iter().fold(0.0f32, |a, &v| a + v);
        let exact: f64 = x.iter().map(|&v| f64::from(v)).sum();
        let cascade = torch_sum_f32(&x);
        assert!((f64::from(cascade) - exact).abs() <= (f64::from(sequential) - exact).abs());
        assert_eq!(torch_sum_f32(&[1.0, 2.0, 3.0]), 6.0);
        // torch 2.15 `torch.sum` of this vector on an AVX-512 machine (the 8-lane AVX2 kernel);
        // a 16-lane cascade gives 1249554349.
        let x: Vec<f32> = (0..2048)
            .map(|i| {
                let v = ((i * 7919) % 1009) as f32 / 13.0;
                v * v
            })
            .collect();
        assert_eq!(torch_sum_f32(&x).to_bits(), 1249554348);
    }

    /// The pruned entropy search returns the cut of the full one (every candidate evaluated
    /// as defined) on histograms built to have ties, zeros, fractional counts and tails.
    #[test]
    fn entropy_search_matches_the_exhaustive_one() {
        let exhaustive = |counts: &[f32], levels: usize| {
            let h: Vec<f64> = counts.iter().map(|&c| f64::from(c)).collect();
            if h.iter().sum::<f64>() == 0.0 {
                return counts.len();
            }
            let (mut p, mut q) = (Vec::new(), Vec::new());
            let (mut best, mut best_kl) = (counts.len(), f64::INFINITY);
            for i in levels..=counts.len() {
                let kl = entropy_divergence(&h, levels, i, &mut p, &mut q);
                if kl < best_kl {
                    (best, best_kl) = (i, kl);
                }
            }
            best
        };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400 {
            let bins = 1 + (next() % 300) as usize;
            let levels = [1, 2, 3, 7, 128][case % 5].min(bins);
            let counts: Vec<f32> = (0..bins)
                .map(|k| match case % 4 {
                    // Gaussian-like with a sparse tail.
                    0 => (1e4 * (-((k as f32) / (bins as f32 / 4.0)).powi(2)).exp()).floor(),
                    // Flat: many exact ties.
                    1 => 5.0,
                    // Sparse with zeros and outliers.
                    2 => [0.0, 0.0, 1.0, 0.0, 3.0, 0.0, 0.0, 1e6][(next() % 8) as usize],
                    // Fractional counts, as upsampling makes.
                    _ => (next() % 64) as f32 / 16.0,
                })
                .collect();
            assert_eq!(entropy_bins_kept(&counts, levels), exhaustive(&counts, levels), "case {case}: {counts:?}");
        }
    }
}
