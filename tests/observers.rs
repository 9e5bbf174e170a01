//! Parity of qc's observers with PyTorch's: every `tests/observers/<case>.safetensors` (written
//! by `tools/gen_observer_fixtures.py`) holds an observer config (in the safetensors metadata), a
//! sequence of batches, and what PyTorch's observer ended with. Each case is replayed through
//! [`ObserverState`] and must match bit for bit: the min/max statistics, the float32 histogram,
//! and the scales and zero points `calculate_qparams()` returned.
//!
//! `percentile` and `entropy` have no PyTorch counterpart: their statistics come from PyTorch's
//! histogram machinery and their clipping ranges from the generator's Python reference
//! implementation of qc's definitions.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use qc::ir::attr::{Attr, Dict};
use qc::ir::DType;
use qc::quant::observer::{ObserverConfig, ObserverKind, ObserverState, QParams};
use qc::tensor::Tensor;
use qc::weights::WeightFile;

use common::files::files_with_extension;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/observers");
    files_with_extension(&dir, "safetensors")
}

fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).expect("readable fixture");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("a safetensors file");
    meta.metadata().clone().unwrap_or_default()
}

/// The `observer` op attributes the case's config stands for.
fn config_dict(meta: &HashMap<String, String>) -> Result<Dict, String> {
    let get = |k: &str| meta.get(k).ok_or_else(|| format!("metadata lacks `{k}`"));
    let int = |k: &str| -> Result<i64, String> { get(k)?.parse().map_err(|e| format!("`{k}`: {e}")) };
    let float = |k: &str| -> Result<f64, String> { get(k)?.parse().map_err(|e| format!("`{k}`: {e}")) };
    let mut d = Dict::new();
    d.insert("kind", Attr::Str(get("kind")?.as_str().into()));
    d.insert("dtype", Attr::DType(DType::from_name(get("dtype")?).ok_or("bad dtype")?));
    d.insert("qmin", Attr::Int(int("qmin")?));
    d.insert("qmax", Attr::Int(int("qmax")?));
    d.insert("qscheme", Attr::Str(get("qscheme")?.as_str().into()));
    if meta.contains_key("ch_axis") {
        d.insert("ch_axis", Attr::Int(int("ch_axis")?));
    }
    let mut options = Dict::new();
    for key in ["eps", "averaging_constant", "percentile", "scale"] {
        if meta.contains_key(key) {
            options.insert(key, Attr::Float(float(key)?));
        }
    }
    for key in ["bins", "zero_point"] {
        if meta.contains_key(key) {
            options.insert(key, Attr::Int(int(key)?));
        }
    }
    for key in ["reduce_range", "customized_range"] {
        if let Some(v) = meta.get(key) {
            options.insert(key, Attr::Bool(v == "true"));
        }
    }
    d.insert("options", Attr::Dict(options));
    Ok(d)
}

fn f32s(t: &Tensor) -> Vec<f32> {
    match t {
        Tensor::F32(a) => a.iter().copied().collect(),
        other => panic!("expected an f32 tensor, got {}", other.dtype()),
    }
}

fn i64s(t: &Tensor) -> Vec<i64> {
    match t {
        Tensor::I64(a) => a.iter().copied().collect(),
        other => panic!("expected an i64 tensor, got {}", other.dtype()),
    }
}

/// `None` when bit-identical, else a description of the first difference.
fn diff_f32(what: &str, got: &[f32], want: &[f32]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{what}: {} values, expected {}", got.len(), want.len()));
    }
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
    let &first = bad.first()?;
    Some(format!(
        "{what}: {} of {} values differ; first at {first}: {:e} vs PyTorch {:e}",
        bad.len(),
        got.len(),
        got[first],
        want[first]
    ))
}

#[derive(Default)]
struct Tally {
    cases: usize,
    stats_exact: usize,
    qparams_exact: usize,
}

/// Replays one case; returns (stats match, qparams match, problems).
fn replay(path: &Path) -> Result<(ObserverKind, bool, bool, Vec<String>), String> {
    let meta = metadata(path);
    let cfg = ObserverConfig::from_dict(&config_dict(&meta)?)?;
    let file = WeightFile::open(path)?;
    let batches: usize = meta.get("batches").ok_or("no `batches`")?.parse().map_err(|e| format!("{e}"))?;
    let mut state = ObserverState::new(&cfg);
    for i in 0..batches {
        state.observe(&cfg, &file.tensor(&format!("batch.{i}"))?).map_err(|e| format!("batch {i}: {e}"))?;
    }
    let mut problems = Vec::new();

    // Statistics.
    let expected = |key: &str| file.info(key).map(|_| file.tensor(key)).transpose();
    let (got_min, got_max, got_hist): (Vec<f32>, Vec<f32>, Option<Vec<f32>>) = match &state {
        ObserverState::MinMax { min_val, max_val } => (vec![*min_val], vec![*max_val], None),
        ObserverState::PerChannel { min_val, max_val } => (min_val.clone(), max_val.clone(), None),
        ObserverState::Histogram(h) | ObserverState::AbsHistogram(h) => {
            (vec![h.min_val], vec![h.max_val], Some(h.counts.clone()))
        }
        ObserverState::Stateless => (vec![], vec![], None),
    };
    let mut stats_ok = true;
    for (key, got) in
        [("expected.min_val", Some(got_min)), ("expected.max_val", Some(got_max)), ("expected.histogram", got_hist)]
    {
        if let (Some(want), Some(got)) = (expected(key)?, got) {
            if let Some(d) = diff_f32(key, &got, &f32s(&want)) {
                problems.push(d);
                stats_ok = false;
            }
        }
    }

    // qparams.
    let qparams = state.qparams(&cfg);
    let mut qparams_ok = true;
    match (meta.get("expect").map(String::as_str), &qparams) {
        (Some("error"), Err(_)) => {}
        (Some("error"), Ok(q)) => {
            problems.push(format!("PyTorch raises in calculate_qparams, qc returned {q:?}"));
            qparams_ok = false;
        }
        (_, Err(e)) => {
            problems.push(format!("qparams failed: {e}"));
            qparams_ok = false;
        }
        (_, Ok(q)) => {
            let scale = expected("expected.scale")?.ok_or("no expected.scale")?;
            let mut diffs = vec![diff_f32("scale", &q.scale, &f32s(&scale))];
            if let Some(zp) = expected("expected.float_zero_point")? {
                let got = q.float_zero_point.clone().unwrap_or_default();
                diffs.push(diff_f32("float zero point", &got, &f32s(&zp)));
            } else {
                let want = i64s(&expected("expected.zero_point")?.ok_or("no expected.zero_point")?);
                if q.zero_point != want {
                    diffs.push(Some(format!("zero point: {:?}, PyTorch {want:?}", q.zero_point)));
                }
            }
            for d in diffs.into_iter().flatten() {
                problems.push(d);
                qparams_ok = false;
            }
        }
    }

    // The statistics survive the trip through attributes.
    let back = ObserverState::from_dict(&cfg, &state.to_dict()).map_err(|e| format!("from_dict(to_dict): {e}"))?;
    if back != state {
        problems.push("from_dict(to_dict(state)) != state".into());
    }
    let same = |a: &Result<QParams, String>, b: &Result<QParams, String>| match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => true,
        _ => false,
    };
    if !same(&back.qparams(&cfg), &qparams) {
        problems.push("qparams changed after the dict round trip".into());
    }
    Ok((cfg.kind, stats_ok, qparams_ok, problems))
}

#[test]
fn observers_match_pytorch_bit_for_bit() {
    let files = fixtures();
    assert!(files.len() >= 50, "expected the observer fixtures, found {}", files.len());
    let mut tally: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    for path in &files {
        let case = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?").to_string();
        match replay(path) {
            Ok((kind, stats_ok, qparams_ok, problems)) => {
                let t = tally.entry(kind.name()).or_default();
                t.cases += 1;
                t.stats_exact += usize::from(stats_ok);
                t.qparams_exact += usize::from(qparams_ok);
                failures.extend(problems.into_iter().map(|p| format!("{case}: {p}")));
            }
            Err(e) => failures.push(format!("{case}: {e}")),
        }
    }
    for (kind, t) in &tally {
        eprintln!(
            "{kind:<36} {:>3} cases, statistics exact {:>3}, qparams exact {:>3}",
            t.cases, t.stats_exact, t.qparams_exact
        );
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}
