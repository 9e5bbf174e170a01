//! The `observer` ops of a graph as PT2E's observer modules: ops with the same `instance`
//! attribute are one shared observer with one config and one state (its statistics, stored on
//! the instance's first op). `calibrate` fills the states; `convert` reads their qparams.

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::{Attr, Dict};
use crate::ir::graph::{Graph, OpId};
use crate::quant::observer::{ObserverConfig, ObserverState};

/// The observer attributes [`ObserverConfig::from_dict`] reads, as a dictionary.
pub fn observer_attrs(g: &Graph, op: OpId) -> Dict {
    let mut d = Dict::new();
    for name in ["kind", "dtype", "qmin", "qmax", "qscheme", "ch_axis", "options"] {
        if let Some(value) = g.attr(op, name) {
            d.insert(name, value.clone());
        }
    }
    d
}

/// One shared observer instance: its config, its state, and the op that holds its statistics.
pub struct Instance {
    pub config: ObserverConfig,
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
    let mut instances: Vec<Instance> = Vec::new();
    let mut by_id: FxHashMap<i64, usize> = FxHashMap::default();
    let mut op_instance = FxHashMap::default();
    let mut errors = Vec::new();
    let mut with_stats: Vec<(usize, &Dict)> = Vec::new();
    for op in g.ops() {
        let data = g.op(op);
        if data.def().name != "observer" || is_derived(g, op) {
            continue;
        }
        let config = match ObserverConfig::from_dict(&observer_attrs(g, op)) {
            Ok(c) => c,
            Err(m) => {
                errors.push(Diag::error(format!("invalid observer: {m}")).at(data.span, "this observer"));
                continue;
            }
        };
        let id = g.attr(op, "instance").and_then(Attr::as_int).unwrap_or(0);
        let stats = g.attr(op, "stats").and_then(Attr::as_dict);
        let index = match by_id.get(&id) {
            Some(&i) => {
                if instances[i].config != config {
                    errors.push(
                        Diag::error(format!("observers of instance {id} are configured differently"))
                            .at(data.span, "this one")
                            .with(g.op(instances[i].first).span, "differs from this one")
                            .help("ops sharing an instance share one observer: give them equal attributes"),
                    );
                    continue;
                }
                if stats.is_some() {
                    errors.push(
                        Diag::error(format!("instance {id} has statistics on more than one observer"))
                            .at(data.span, "statistics here")
                            .with(g.op(instances[i].first).span, "and on the instance's first observer")
                            .help("keep them on the first observer of the instance"),
                    );
                }
                i
            }
            None => {
                if let Some(d) = stats {
                    with_stats.push((instances.len(), d));
                }
                by_id.insert(id, instances.len());
                instances.push(Instance { state: ObserverState::new(&config), config, first: op });
                instances.len() - 1
            }
        };
        op_instance.insert(op, index);
    }
    // Reading the statistics (histograms of thousands of bins) is most of the work, and
    // independent per instance.
    let states: Vec<Result<ObserverState, String>> =
        with_stats.par_iter().map(|&(i, d)| ObserverState::from_dict(&instances[i].config, d)).collect();
    for ((i, _), state) in with_stats.iter().zip(states) {
        match state {
            Ok(s) => instances[*i].state = s,
            Err(m) => errors.push(
                Diag::error(format!("invalid observer statistics: {m}"))
                    .at(g.op(instances[*i].first).span, "this observer"),
            ),
        }
    }
    if errors.is_empty() {
        Ok(Instances { list: instances, by_op: op_instance, by_id })
    } else {
        Err(errors)
    }
}
