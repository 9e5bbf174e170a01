//! The `observer` ops of a graph as PT2E's observer modules: ops with the same `instance`
//! attribute are one shared observer with one config and one state (its statistics, stored on
//! the instance's first op). `calibrate` fills the states; `convert` reads their qparams.

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::Attr;
use crate::ir::graph::{Graph, OpId};
use crate::quant::observer::{observer_attrs, ObserverConfig, ObserverState};

/// One shared observer instance: its config, its state, and the op that holds its statistics.
pub struct Instance {
    pub config: ObserverConfig,
    /// Empty (`Stateless`) from [`configs`]; the stored statistics from [`collect`].
    pub state: ObserverState,
    /// The instance's first op in program order: the one that holds its `stats`.
    pub first: OpId,
}

/// Every observer instance of a graph (`derived` observers excepted: they have no state).
pub struct Instances {
    /// In the order of their first ops.
    pub list: Vec<Instance>,
    /// Each observer op's index into `list`.
    pub by_op: FxHashMap<OpId, usize>,
    /// Each `instance` attribute's index into `list`.
    pub by_id: FxHashMap<i64, usize>,
}

/// Whether `op` is an observer whose qparams derive from other instances'.
pub fn is_derived(g: &Graph, op: OpId) -> bool {
    g.attr(op, "kind").and_then(Attr::as_str) == Some("derived")
}

/// Observer instances in first-op order, with any statistics already in the IR.
pub fn collect(g: &Graph) -> Result<Instances, Diagnostics> {
    let mut instances = configs(g)?;
    // Reading the statistics (histograms of thousands of bins) is most of the work, and
    // independent per instance.
    let states: Vec<Result<ObserverState, Diag>> =
        instances.list.par_iter().map(|inst| stored_state(g, inst)).collect();
    let mut errors = Vec::new();
    for (inst, state) in instances.list.iter_mut().zip(states) {
        match state {
            Ok(s) => inst.state = s,
            Err(d) => errors.push(d),
        }
    }
    if errors.is_empty() {
        Ok(instances)
    } else {
        Err(errors)
    }
}

/// The statistics stored on `inst`'s first op as a state; an empty state when there are none.
pub fn stored_state(g: &Graph, inst: &Instance) -> Result<ObserverState, Diag> {
    match g.attr(inst.first, "stats").and_then(Attr::as_dict) {
        Some(d) => ObserverState::from_dict(&inst.config, d).map_err(|m| {
            Diag::error(format!("invalid observer statistics: {m}")).at(g.op(inst.first).span(), "this observer")
        }),
        None => Ok(ObserverState::new(&inst.config)),
    }
}

/// Observer instances in first-op order with their configs, their states left empty: for a
/// pass that reads each instance's statistics once ([`stored_state`]) and can drop them after.
pub fn configs(g: &Graph) -> Result<Instances, Diagnostics> {
    let mut instances: Vec<Instance> = Vec::new();
    let mut by_id: FxHashMap<i64, usize> = FxHashMap::default();
    let mut op_instance = FxHashMap::default();
    let mut errors = Vec::new();
    for op in g.ops() {
        let data = g.op(op);
        if data.kind() != crate::ops::OBSERVER || is_derived(g, op) {
            continue;
        }
        let config = match ObserverConfig::from_dict(&observer_attrs(g, op)) {
            Ok(c) => c,
            Err(m) => {
                errors.push(Diag::error(format!("invalid observer: {m}")).at(data.span(), "this observer"));
                continue;
            }
        };
        let id = g.attr(op, "instance").and_then(Attr::as_int).unwrap_or(0);
        let index = match by_id.get(&id) {
            Some(&i) => {
                if instances[i].config != config {
                    errors.push(
                        Diag::error(format!("observers of instance {id} are configured differently"))
                            .at(data.span(), "this one")
                            .with(g.op(instances[i].first).span(), "differs from this one")
                            .help("ops sharing an instance share one observer: give them equal attributes"),
                    );
                    continue;
                }
                if g.attr(op, "stats").and_then(Attr::as_dict).is_some() {
                    errors.push(
                        Diag::error(format!("instance {id} has statistics on more than one observer"))
                            .at(data.span(), "statistics here")
                            .with(g.op(instances[i].first).span(), "and on the instance's first observer")
                            .help("keep them on the first observer of the instance"),
                    );
                }
                i
            }
            None => {
                by_id.insert(id, instances.len());
                instances.push(Instance { state: ObserverState::Stateless, config, first: op });
                instances.len() - 1
            }
        };
        op_instance.insert(op, index);
    }
    if errors.is_empty() {
        Ok(Instances { list: instances, by_op: op_instance, by_id })
    } else {
        Err(errors)
    }
}
