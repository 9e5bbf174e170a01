//! What an observer has seen ([`ObserverState`]), how a batch updates it, and the qparams it
//! gives ([`QParams`]), fake-quantizing included.

use std::borrow::Cow;

use super::config::{FakeQuant, ObserverConfig, ObserverKind};
use super::histogram::{abs_histogram_observe, histogram_observe};
use super::minmax::{ema, per_channel_aminmax, scan};
use super::search::{entropy_bins_kept, non_linear_param_search, percentile_range};
use crate::ir::quant::QScheme;
use crate::quant::{
    calculate_float_qparams, calculate_qparams, choose_quantization_params, fake_quantize_value, torch_maximum,
    torch_minimum, QRange,
};
use crate::tensor::{map_channels, Tensor};

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

    pub(super) fn per_tensor(scale: f32, zero_point: i64) -> QParams {
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

    pub(super) fn is_initialized(&self) -> bool {
        !(self.min_val == f32::INFINITY && self.max_val == f32::NEG_INFINITY)
    }

    /// The entropy histogram's upper edge.
    pub(super) fn abs_max(&self) -> f32 {
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
}

/// `min ≤ max`, false when either is NaN (PyTorch's `assert min_val <= max_val`).
pub(super) fn is_ordered(min_val: f32, max_val: f32) -> bool {
    matches!(min_val.partial_cmp(&max_val), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal))
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
