//! Observer statistics in the IR: the `stats` dictionary of an `observer` op, written and read
//! back exactly ([`ObserverState::to_dict`], [`ObserverState::from_dict`]), and the verifier's
//! check that hand-written statistics are ones `convert` can use ([`verify_stats`]).

use std::borrow::Cow;

use super::config::{observer_attrs, ObserverConfig, ObserverKind};
use super::state::{is_ordered, HistogramStats, ObserverState};
use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::{Attr, Dict};
use crate::ir::graph::{Graph, OpId};
use crate::ir::verifier::Locator;
use crate::tensor::Tensor;

impl ObserverState {
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

/// An observer's `stats` must be statistics `convert` can turn into qparams: readable, one
/// range per channel of the observed value, and finite scales. (They are usually written by
/// `calibrate`, which cannot produce bad ones, but may be written by hand.)
pub fn verify_stats(g: &Graph, op: OpId, at: &Locator<'_>, errors: &mut Diagnostics) {
    let Some(stats) = g.attr(op, "stats").and_then(|a| a.as_dict()) else { return };
    // An invalid config is reported by the passes that read it, with their context.
    let Ok(config) = ObserverConfig::from_dict(&observer_attrs(g, op)) else { return };
    let channels = || {
        let axis = config.ch_axis.unwrap_or(0);
        let observed = g.value_type(*g.op(op).operands().first()?);
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
