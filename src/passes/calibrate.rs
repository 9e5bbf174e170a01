//! `calibrate`: run the prepared graph on calibration data and store each observer's
//! statistics in the IR.
//!
//! Batches come from `--calib` (an `.npz` with one array per graph input, samples along the
//! first axis, or a directory of such files; see [`crate::interp::dataset`]) and run through
//! the interpreter; every `observer` op records what flows through it into the state of its
//! `instance`, so observers sharing an instance pool their statistics, as PT2E's shared
//! observer modules do. The statistics are written as the `stats` attribute of the first op
//! (in program order) of each instance, so a calibrated graph is a file you can inspect, diff
//! and calibrate further: statistics already present are the starting state (resuming), and
//! new batches are added to them.
//!
//! Requires: a prepared module (observers), and calibration data whose arrays are named like
//! the first function's inputs. Leaves: the same graph with `stats` on observers that saw
//! data. The interpreter runs only the first function. Data errors (names, shapes, dtypes,
//! NaN values, truncated files) are diagnostics; nothing is written on failure.
//!
//! ```qir before
//! module {
//!   func @main(%x: f32[1,4]) -> f32[1,4] {
//!     %activation_post_process_0 = observer(%x) {kind = "minmax", dtype = i8, qmin = -128, qmax = 127} : f32[1,4]
//!     %y = relu(%activation_post_process_0) : f32[1,4]
//!     return %y
//!   }
//! }
//! ```
//! becomes, after batches whose values span [-1.5, 2.25],
//! ```qir after
//! module {
//!   func @main(%x: f32[1,4]) -> f32[1,4] {
//!     %activation_post_process_0 = observer(%x) {kind = "minmax", dtype = i8, qmin = -128, qmax = 127, stats = {min_val = -1.5, max_val = 2.25}} : f32[1,4]
//!     %y = relu(%activation_post_process_0) : f32[1,4]
//!     return %y
//!   }
//! }
//! ```

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::observer_instances::{self, Instance, Instances};
use super::{PassContext, PassDef};
use crate::diag::{Diag, Diagnostics};
use crate::interp::dataset::Dataset;
use crate::interp::kernels::norm::batch_norm_training_update;
use crate::interp::{bind_inputs, run_graph, RunOptions};
use crate::ir::attr::Attr;
use crate::ir::graph::{Graph, OpId, ValueId};
use crate::ir::matching::producer_of;
use crate::ir::rewriter::Rewriter;
use crate::ir::Module;
use crate::ops;
use crate::tensor::Tensor;

pub const PASS: PassDef = PassDef {
    name: "calibrate",
    description: "Run calibration data (--calib) through the graph and store observer statistics in the IR.",
    run,
};

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let Some(path) = cx.calibration.clone() else {
        return Err(vec![Diag::error("`calibrate` needs calibration data")
            .help("pass `--calib data.npz` (one array per graph input, samples along the first axis) or a directory of .npz files")]);
    };
    let Some(graph) = module.graphs.first() else { return Ok(false) };
    let Instances { list: mut instances, by_op: op_instance, .. } = observer_instances::collect(graph)?;
    let running_stats = training_batch_norms(graph)?;
    if instances.is_empty() && running_stats.is_empty() {
        return Ok(false);
    }
    let graph = &module.graphs[0];
    let inputs =
        graph.inputs().iter().map(|&v| (graph.value_name(v).to_string(), graph.value_type(v).clone())).collect();
    let mut data = Dataset::open(&path, inputs).map_err(|m| vec![Diag::error(format!("calibration data: {m}"))])?;
    let progress = indicatif::ProgressBar::new(data.batches_hint().unwrap_or(0) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("calibrating {bar:30} {pos}/{len} batches {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut batches = 0usize;
    while let Some(batch) = data.next_batch() {
        let batch = batch.map_err(|m| vec![Diag::error(format!("calibration data: {m}"))])?;
        let graph = &module.graphs[0];
        let file = data.current_file().map_or_else(String::new, |p| format!(" (from {})", p.display()));
        let bound =
            bind_inputs(graph, batch).map_err(|d| vec![d.note(format!("in calibration batch {batches}{file}"))])?;
        let mut updates = Vec::new();
        let mut hook = |op: OpId, operands: &[&Tensor]| -> Result<Option<Tensor>, String> {
            let in_batch = |m: String| format!("calibration batch {batches}{file}: {m}");
            if let Some(&i) = op_instance.get(&op) {
                let inst = &mut instances[i];
                inst.state
                    .observe_finite(&inst.config, operands[0])
                    .map_err(|m| in_batch(format!("{}: {m}", observed_value(graph, op))))?;
                return inst.state.fake_quantize(&inst.config, operands[0]).map_err(in_batch);
            }
            if let (Some(&(mean, var)), [x, _, _, running_mean, running_var]) = (running_stats.get(&op), operands) {
                let momentum = graph.attr(op, "momentum").and_then(Attr::as_float).unwrap_or(0.1);
                let (new_mean, new_var) =
                    batch_norm_training_update(x, running_mean, running_var, momentum).map_err(in_batch)?;
                updates.push((mean, new_mean));
                updates.push((var, new_var));
            }
            Ok(None)
        };
        run_graph(module, graph, bound, &RunOptions::default(), Some(&mut hook)).map_err(|d| vec![d])?;
        // Between batches, as PyTorch's in-place buffer updates: the next batch reads them.
        let mut rw = Rewriter::new(module, 0);
        for (holder, value) in updates {
            holder.store(&mut rw, value)?;
        }
        batches += 1;
        progress.inc(1);
    }
    progress.finish_and_clear();
    if batches == 0 {
        return Err(vec![Diag::error(format!("calibration data in {} holds no batches", path.display()))]);
    }
    cx.warnings.extend(unobserved_warnings(module, &instances));
    write_stats(&mut Rewriter::new(module, 0), &instances, &op_instance)?;
    Ok(true)
}

/// How an error names what the observer `op` observes: `%value`, and the weights-file key when
/// the value is a weight (so that a bad element can be found in the file).
fn observed_value(g: &Graph, op: OpId) -> String {
    let Some(v) = g.op(op).operand(0) else { return "the observed value".into() };
    let key = producer_of(g, v, ops::WEIGHT).and_then(|p| g.attr(p, "key").and_then(Attr::as_str).map(str::to_string));
    match key {
        Some(key) => format!("`%{}` (weight `{key}`)", g.value_name(v)),
        None => format!("`%{}`", g.value_name(v)),
    }
}

/// Where a training-mode batch norm's running statistic lives, so that calibration can update it.
#[derive(Copy, Clone)]
enum StatHolder {
    /// A `weight` op: the new tensor shadows the file's under its key.
    Weight(OpId),
    /// A `const` op: its value is replaced.
    Const(OpId),
}

impl StatHolder {
    fn store(self, rw: &mut Rewriter<'_>, value: Tensor) -> Result<(), Diagnostics> {
        match self {
            StatHolder::Weight(op) => {
                if let Some(key) = rw.attr(op, "key").and_then(Attr::as_str).map(str::to_string) {
                    rw.set_created_weight(&key, value);
                }
            }
            StatHolder::Const(op) => {
                rw.update(op).set_attr("value", Attr::Tensor(Arc::new(value)))?;
            }
        }
        Ok(())
    }
}

/// The running mean and variance holders of every `batch_norm {training = true}`: PyTorch's
/// forward in train mode updates them, and so does calibration.
fn training_batch_norms(g: &Graph) -> Result<FxHashMap<OpId, (StatHolder, StatHolder)>, Diagnostics> {
    let mut stats = FxHashMap::default();
    let mut errors = Vec::new();
    for op in g.ops() {
        let data = g.op(op);
        if data.kind() != ops::BATCH_NORM || g.attr(op, "training").and_then(Attr::as_bool) != Some(true) {
            continue;
        }
        let holder = |v: ValueId| match g.producer(v).map(|p| (p, g.op(p).kind())) {
            Some((p, ops::WEIGHT)) => Some(StatHolder::Weight(p)),
            Some((p, ops::CONST)) => Some(StatHolder::Const(p)),
            _ => None,
        };
        match (holder(data.operands()[3]), holder(data.operands()[4])) {
            (Some(mean), Some(var)) => {
                stats.insert(op, (mean, var));
            }
            _ => errors.push(
                Diag::error("calibration cannot update this batch norm's running statistics")
                    .at(data.span(), "a training-mode batch_norm")
                    .note("its `running_mean` and `running_var` must be read from `weight` or `const` ops")
                    .help("export the model in eval mode, or fold the batch norm first"),
            ),
        }
    }
    if errors.is_empty() {
        Ok(stats)
    } else {
        Err(errors)
    }
}

fn unobserved_warnings(module: &Module, instances: &[Instance]) -> Diagnostics {
    let g = &module.graphs[0];
    instances
        .iter()
        .filter(|i| !i.state.is_initialized())
        .map(|i| {
            Diag::warning("an observer saw no data during calibration")
                .at(g.op(i.first).span(), "this observer")
                .note("its qparams will be PyTorch's defaults (scale 1.0, zero point 0)")
        })
        .collect()
}

/// Statistics on each instance's first op; none on the others.
fn write_stats(
    rw: &mut Rewriter<'_>,
    instances: &[Instance],
    op_instance: &FxHashMap<OpId, usize>,
) -> Result<(), Diagnostics> {
    let mut observers: Vec<(OpId, usize)> = op_instance.iter().map(|(&op, &i)| (op, i)).collect();
    observers.sort_unstable();
    for (op, i) in observers {
        let inst = &instances[i];
        match (inst.first == op && inst.state.is_initialized()).then(|| Attr::Dict(inst.state.to_dict())) {
            Some(stats) => rw.update(op).set_attr("stats", stats)?,
            None => rw.update(op).clear_attr("stats")?,
        };
    }
    Ok(())
}
