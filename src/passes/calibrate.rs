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
//! ```text
//! %activation_post_process_0 = observer(%x) {kind = "minmax", dtype = i8, qmin = -128, qmax = 127} : f32[1,4]
//! ```
//! becomes, after batches whose values span [-1.5, 2.25],
//! ```text
//! %activation_post_process_0 = observer(%x) {kind = "minmax", dtype = i8, qmin = -128, qmax = 127, stats = {min_val = -1.5, max_val = 2.25}} : f32[1,4]
//! ```

use rustc_hash::FxHashMap;

use super::observer_instances::{self, Instance, Instances};
use super::{PassContext, PassDef};
use crate::diag::{Diag, Diagnostics};
use crate::interp::dataset::Dataset;
use crate::interp::{bind_inputs, run_graph, RunOptions};
use crate::ir::attr::Attr;
use crate::ir::graph::{Graph, OpId};
use crate::ir::Module;

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
    if instances.is_empty() {
        return Ok(false);
    }
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
        let bound = bind_inputs(graph, batch).map_err(|d| vec![d.note(format!("in calibration batch {batches}"))])?;
        let mut hook = |op: OpId, t: &crate::tensor::Tensor| -> Result<(), String> {
            let Some(&i) = op_instance.get(&op) else { return Ok(()) };
            let inst = &mut instances[i];
            inst.state.observe(&inst.config, t).map_err(|m| format!("calibration batch {batches}: {m}"))
        };
        run_graph(module, graph, bound, &RunOptions::default(), Some(&mut hook)).map_err(|d| vec![d])?;
        batches += 1;
        progress.inc(1);
    }
    progress.finish_and_clear();
    if batches == 0 {
        return Err(vec![Diag::error(format!("calibration data in {} holds no batches", path.display()))]);
    }
    cx.warnings.extend(unobserved_warnings(module, &instances));
    write_stats(&mut module.graphs[0], &instances, &op_instance);
    Ok(true)
}

fn unobserved_warnings(module: &Module, instances: &[Instance]) -> Diagnostics {
    let g = &module.graphs[0];
    instances
        .iter()
        .filter(|i| !i.state.is_initialized())
        .map(|i| {
            Diag::warning("an observer saw no data during calibration")
                .at(g.op(i.first).span, "this observer")
                .note("its qparams will be PyTorch's defaults (scale 1.0, zero point 0)")
        })
        .collect()
}

/// Statistics on each instance's first op; none on the others.
fn write_stats(g: &mut Graph, instances: &[Instance], op_instance: &FxHashMap<OpId, usize>) {
    let mut ops: Vec<(OpId, usize)> = op_instance.iter().map(|(&op, &i)| (op, i)).collect();
    ops.sort_unstable();
    for (op, i) in ops {
        let def = g.op(op).def();
        let Some(slot) = def.attr_index("stats") else { continue };
        let mut attrs = g.attrs_of(g.op(op).attrs).to_vec();
        let inst = &instances[i];
        attrs[slot] = (inst.first == op && inst.state.is_initialized()).then(|| Attr::Dict(inst.state.to_dict()));
        let id = g.intern_attrs(attrs.into_boxed_slice());
        g.op_mut(op).attrs = id;
    }
}
