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
//! The pieces: `config` (kinds, options, the op's attributes), `state` (observing and qparams),
//! `stats_dict` (statistics as the `stats` attribute, and the verifier's check of them), and the
//! PyTorch kernels they follow: `minmax` (aminmax), `histogram` (histc and histogram merging),
//! `search` (the histogram searches) and `aten` (sum, cumsum, linspace, floor division).
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

mod aten;
mod config;
mod histogram;
mod minmax;
mod search;
mod state;
mod stats_dict;

pub use config::{observer_attrs, FakeQuant, ObserverConfig, ObserverKind, OPTION_KEYS};
pub use state::{HistogramStats, ObserverState, QParams};
pub use stats_dict::verify_stats;

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

/// Inputs at least this long are split across rayon threads. Only order-independent work is
/// split — min/max (the sign of a zero extreme is fixed afterwards, in element order) and integer
/// counts — so results do not depend on the thread count.
const PAR_MIN_LEN: usize = 1 << 17;
/// The elements one rayon task takes.
const PAR_CHUNK: usize = 1 << 16;

// The observer's behaviour through its API (configs, states, stats dictionaries); the kernels'
// own tests live with them.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attr::{Attr, Dict};
    use crate::ir::quant::QScheme;
    use crate::ir::DType;
    use crate::tensor::Tensor;
    use ndarray::{ArrayD, IxDyn};

    fn t(values: &[f32]) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap())
    }

    fn cfg(kind: ObserverKind, qscheme: QScheme) -> ObserverConfig {
        let mut c = ObserverConfig::new(kind, DType::I8, -128, 127, qscheme).unwrap();
        c.eps = 2f32.powi(-12);
        c
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
}
