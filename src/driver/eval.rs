//! `qc model.qir --eval DATA`: how close the compiled graph stays to the float graph it came
//! from, on held-out data — SQNR per output and, when the data carries `labels`, top-1
//! accuracy of both.
//!
//! The data is laid out like calibration data (see [`crate::interp::dataset`]), plus an
//! optional `labels` array of class indices (any integer type), one per sample; top-1 compares
//! the argmax of the first output's last dimension with them. A label outside that dimension's
//! range is an error, and so is a NaN or infinite output of either graph: SQNR and accuracy
//! would mean nothing.

use std::fmt::Write as _;
use std::path::Path;

use crate::diag::{Diag, Diagnostics};
use crate::interp::dataset::Dataset;
use crate::interp::{bind_inputs, run_graph, RunOptions};
use crate::ir::{Module, TensorType};
use crate::tensor::Tensor;

/// The evaluation array holding class labels.
pub const LABELS: &str = "labels";

/// Running sums for one output's SQNR.
#[derive(Default)]
struct Sqnr {
    signal: f64,
    noise: f64,
}

impl Sqnr {
    fn add(&mut self, float: &[f64], quantized: &[f64]) {
        for (&f, &q) in float.iter().zip(quantized) {
            self.signal += f * f;
            self.noise += (f - q) * (f - q);
        }
    }

    /// 10·log10(signal / noise) in dB; infinite when the outputs are identical.
    fn db(&self) -> f64 {
        10.0 * (self.signal / self.noise).log10()
    }
}

#[derive(Default)]
struct Top1 {
    float: usize,
    quantized: usize,
    agree: usize,
    samples: usize,
}

/// What `--eval` measured.
pub struct Report {
    pub samples: usize,
    /// Per output of the first function: its name and the SQNR in dB of the compiled graph's
    /// values against the float graph's.
    pub sqnr: Vec<(String, f64)>,
    /// (float correct, compiled correct, same prediction, samples) when labels were given.
    pub top1: Option<(usize, usize, usize, usize)>,
}

impl Report {
    pub fn render(&self, data: &Path) -> String {
        let mut out = format!("eval on {} samples from {}:\n", self.samples, data.display());
        for (name, db) in &self.sqnr {
            let _ = writeln!(out, "  %{name}: SQNR {db:.2} dB (compiled vs float)");
        }
        if let Some((float, quantized, agree, n)) = self.top1 {
            let pct = |k: usize| 100.0 * k as f64 / n.max(1) as f64;
            let _ = writeln!(
                out,
                "  top-1: float {:.2}% ({float}/{n}), compiled {:.2}% ({quantized}/{n}); same prediction on {:.2}%",
                pct(float),
                pct(quantized),
                pct(agree)
            );
        }
        out
    }
}

/// Runs `float` and `compiled` (first functions, same signature) over every batch of `data`.
pub fn evaluate(float: &Module, compiled: &Module, data: &Path) -> Result<Report, Diagnostics> {
    let (Some(fg), Some(cg)) = (float.graphs.first(), compiled.graphs.first()) else {
        return Err(vec![Diag::error("--eval: the module has no function to run")]);
    };
    let inputs: Vec<(String, TensorType)> =
        fg.inputs().iter().map(|&v| (fg.value_name(v).to_string(), fg.value_type(v).clone())).collect();
    let error = |m: String| vec![Diag::error(format!("--eval data: {m}"))];
    let mut dataset = Dataset::open_with(data, inputs, Some(LABELS)).map_err(error)?;
    let names: Vec<String> = fg.outputs().iter().map(|&v| fg.value_name(v).to_string()).collect();
    let mut sqnr: Vec<Sqnr> = names.iter().map(|_| Sqnr::default()).collect();
    let mut top1: Option<Top1> = None;
    let mut samples = 0;
    while let Some(batch) = dataset.next_batch() {
        let mut batch = batch.map_err(error)?;
        let labels = batch.remove(LABELS);
        let float_out =
            run_graph(float, fg, bind_inputs(fg, batch.clone()).map_err(|d| vec![d])?, &RunOptions::default(), None)
                .map_err(|d| vec![d.note("while running the float graph for --eval")])?;
        let compiled_out =
            run_graph(compiled, cg, bind_inputs(cg, batch).map_err(|d| vec![d])?, &RunOptions::default(), None)
                .map_err(|d| vec![d.note("while running the compiled graph for --eval")])?;
        if compiled_out.outputs.len() != float_out.outputs.len() {
            return Err(vec![Diag::error("--eval: the compiled graph returns a different number of values")]);
        }
        // Sample indices count from the start of the data; the file says where that batch is.
        let file = dataset.current_file().map_or_else(String::new, |p| format!(" (in {})", p.display()));
        let values = |t: &Tensor| t.to_f64_array().iter().copied().collect::<Vec<f64>>();
        for (i, ((name, f), (_, q))) in float_out.outputs.iter().zip(&compiled_out.outputs).enumerate() {
            let (f, q) = (values(f), values(q));
            for (graph, v) in [("float", &f), ("compiled", &q)] {
                if let Some(at) = v.iter().position(|x| !x.is_finite()) {
                    return Err(vec![Diag::error(format!(
                        "--eval: the {graph} graph's output `%{name}` is {} (element {at} of the batch starting at \
                         sample {samples}{file}): SQNR and accuracy are undefined",
                        v[at]
                    ))
                    .help("the data is finite (qc checks it), so the graph itself produced it")]);
                }
            }
            sqnr[i].add(&f, &q);
        }
        let rows = float_out.outputs.first().map_or(0, |(_, t)| t.shape().first().copied().unwrap_or(1));
        if let (Some(labels), Some((name, f)), Some((_, q))) =
            (labels, float_out.outputs.first(), compiled_out.outputs.first())
        {
            let classes = f.shape().last().copied().unwrap_or(1);
            let labels: Vec<i64> = labels.to_f64_array().iter().map(|&l| l as i64).collect();
            if let Some((i, label)) =
                labels.iter().enumerate().find(|(_, &l)| usize::try_from(l).map_or(true, |l| l >= classes))
            {
                return Err(error(format!(
                    "label {label} of sample {}{file} is out of range: the first output `%{name}` has {classes} \
                     classes (0 to {})",
                    samples + i,
                    classes.saturating_sub(1)
                )));
            }
            let (pf, pq) = (argmax_rows(f), argmax_rows(q));
            let t = top1.get_or_insert_with(Top1::default);
            for ((&label, &a), &b) in labels.iter().zip(&pf).zip(&pq) {
                t.float += usize::from(a as i64 == label);
                t.quantized += usize::from(b as i64 == label);
                t.agree += usize::from(a == b);
                t.samples += 1;
            }
        }
        samples += rows;
    }
    if samples == 0 {
        return Err(error(format!("{} holds no samples", data.display())));
    }
    Ok(Report {
        samples,
        sqnr: names.into_iter().zip(sqnr.iter().map(Sqnr::db)).collect(),
        top1: top1.map(|t| (t.float, t.quantized, t.agree, t.samples)),
    })
}

/// The index of the largest value along the last dimension, per row (the first on ties).
fn argmax_rows(t: &Tensor) -> Vec<usize> {
    let values = t.to_f64_array();
    let width = values.shape().last().copied().unwrap_or(1).max(1);
    let flat: Vec<f64> = values.iter().copied().collect();
    flat.chunks(width)
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best }))
        .collect()
}
