//! How a pass keeps annotations valid across a replacement: every `shared(...)`/`derived(...)`
//! reference in the function that named a replaced value, op or edge names its replacement
//! (PT2E's `_update_special_qspecs_after_replacement`). The QAT conv–bn passes and
//! `reference-repr` use it.

use rustc_hash::FxHashMap;

use crate::ir::quant::{EdgeOrValue, SpecRef};
use crate::ir::rewriter::Rewriter;
use crate::ir::{OpId, ValueId};

/// How `shared(...)`/`derived(...)` references to replaced values and edges are rewritten: a
/// value by `values`; an edge by `edges`, else, when its consumer is gone, by the value that
/// took the consumer's place (`gone`), else it stays (reading the value's replacement). Edges
/// name the value before any observer or q/dq on them, so they are matched by consumer rather
/// than by the operand the consumer reads. The conv and batch norm a rewrite keeps are moved,
/// not copied, so edges into them need no entry.
#[derive(Default)]
pub struct Remap {
    values: FxHashMap<ValueId, ValueId>,
    gone: FxHashMap<OpId, ValueId>,
    edges: FxHashMap<(ValueId, OpId), EdgeOrValue>,
}

impl Remap {
    pub fn value(&mut self, from: ValueId, to: ValueId) {
        self.values.insert(from, to);
    }

    /// Edges into `op`, which is erased, become the value `to`, which its readers now read.
    pub fn gone(&mut self, op: OpId, to: ValueId) {
        self.gone.insert(op, to);
    }

    pub fn edge(&mut self, value: ValueId, consumer: OpId, to: EdgeOrValue) {
        self.edges.insert((value, consumer), to);
    }

    fn target(&self, t: &EdgeOrValue) -> EdgeOrValue {
        let value = |v: ValueId| self.values.get(&v).copied().unwrap_or(v);
        match *t {
            EdgeOrValue::Value(v) => EdgeOrValue::Value(value(v)),
            EdgeOrValue::Edge { value: v, consumer } => {
                match (self.edges.get(&(v, consumer)), self.gone.get(&consumer)) {
                    (Some(&to), _) => to,
                    (None, Some(&to)) => EdgeOrValue::Value(to),
                    // A reader that stays reads the replacement value (the new batch norm's).
                    (None, None) => EdgeOrValue::Edge { value: value(v), consumer },
                }
            }
        }
    }

    fn spec(&self, s: &SpecRef) -> SpecRef {
        match s {
            SpecRef::Shared(t) => SpecRef::Shared(self.target(t)),
            SpecRef::Derived { from, spec } => SpecRef::Derived {
                from: from.iter().map(|t| self.target(t)).collect(),
                spec: Box::new(self.spec(spec)),
            },
            other => other.clone(),
        }
    }

    /// Rewrites every annotation of the function.
    pub fn apply(&self, rw: &mut Rewriter<'_>) {
        for op in rw.op_ids() {
            let Some(a) = rw.annotation(op) else { continue };
            let inputs: Vec<SpecRef> = a.inputs.iter().map(|s| self.spec(s)).collect();
            let output = a.output.as_ref().map(|s| self.spec(s));
            if inputs != a.inputs || output != a.output {
                if let Some(a) = rw.update(op).annotation_mut() {
                    a.inputs = inputs;
                    a.output = output;
                }
            }
        }
    }
}
