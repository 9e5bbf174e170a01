//! The conv–batch-norm passes, PT2E's three rewrites of a conv (or linear) followed by a batch
//! norm:
//! - [`fuse`] (`fuse-conv-bn`): fold an inference batch norm into the layer (PTQ, first step of
//!   `prepare_pt2e`);
//! - [`fuse_qat`] (`fuse-conv-bn-qat`): rewrite conv → batch norm into PT2E's
//!   quantization-aware-training graph (`prepare_qat_pt2e`);
//! - [`fold_qat`] (`fold-conv-bn-qat`): fold the batch norm of that graph, once converted, into
//!   the conv (`convert_pt2e`).
//!
//! What they share lives beside them: `fold`, PyTorch's fold arithmetic; `params`, the
//! constant parameters a fold reads and where it writes the results; `remap`, how annotation
//! references follow a replacement. Here: the warning for a batch norm that stays (`Skip`),
//! the convolutions PT2E rewrites, and where a replacement graph goes.
//!
//! Each pass holds a [`Rewriter`](crate::ir::rewriter::Rewriter) of one graph at a time; the
//! created weights and the other graphs (which a shared weight key may reach) are read through
//! it.

mod fold;
pub mod fold_qat;
pub mod fuse;
pub mod fuse_qat;
mod params;

use crate::diag::{Diag, Diagnostics};
use crate::ir::rewriter::{internal, InsertPoint};
use crate::ir::{Graph, OpId, ValueId};
use crate::ops::{self, OpKind};

/// The convolutions PT2E's QAT passes rewrite, in the order `_fuse_conv_bn_qat` and
/// `_fold_conv_bn_qat` replace them (qc has no `conv_transpose1d`).
const CONVS: [OpKind; 3] = [ops::CONV1D, ops::CONV2D, ops::CONV_TRANSPOSE2D];

/// The label of the layer in a [`Skip`] warning of `fuse-conv-bn` and `fuse-conv-bn-qat`.
const THE_LAYER: &str = "the layer it follows";

/// Why a batch norm stays: the warning's reason and notes.
struct Skip {
    layer_op: OpId,
    reason: String,
    notes: Vec<String>,
}

impl Skip {
    fn new(layer_op: OpId, reason: impl Into<String>) -> Skip {
        Skip { layer_op, reason: reason.into(), notes: Vec::new() }
    }

    fn note(mut self, note: impl Into<String>) -> Skip {
        self.notes.push(note.into());
        self
    }

    /// The warning at `bn`: "`%bn` is not {undone} `%layer`: {reason}", the layer labelled
    /// `layer_label`.
    fn warning(self, g: &Graph, bn: OpId, undone: &str, layer_label: &str) -> Diag {
        let mut d = Diag::warning(format!(
            "`{}` is not {undone} `{}`: {}",
            result_name(g, bn),
            result_name(g, self.layer_op),
            self.reason
        ))
        .at(g.op(bn).span(), "this batch_norm stays")
        .with(g.op(self.layer_op).span(), layer_label);
        for n in self.notes {
            d = d.note(n);
        }
        d
    }
}

/// `%name` of the op's first result (its kind when it has none), for messages.
fn result_name(g: &Graph, op: OpId) -> String {
    g.op(op).result(0).map_or_else(|| g.op(op).def().name.to_string(), |r| format!("%{}", g.value_name(r)))
}

/// The result of a one-result op.
fn only_result(g: &Graph, op: OpId) -> Result<ValueId, Diagnostics> {
    g.op(op).result(0).ok_or_else(|| internal(&format!("`{}` has no result", g.op(op).def().name)))
}

/// The op defining `v`, a value the rewriter just built.
fn built_op(g: &Graph, v: ValueId) -> Result<OpId, Diagnostics> {
    g.producer(v).ok_or_else(|| internal("a built value has no op"))
}

/// Where PyTorch's subgraph rewriter inserts a replacement ending in `bn`: before the first op
/// that reads the batch norm; at the end when only the function's outputs do; right after the
/// batch norm when nothing reads it.
fn insertion_point(g: &Graph, bn: OpId) -> InsertPoint {
    let results: Vec<ValueId> = g.op(bn).results().collect();
    let mut op = g.next_op(bn);
    if results.iter().all(|&r| !g.has_uses(r)) {
        return op.map_or(InsertPoint::End, InsertPoint::Before);
    }
    while let Some(o) = op {
        if g.op(o).operands().iter().any(|v| results.contains(v)) {
            return InsertPoint::Before(o);
        }
        op = g.next_op(o);
    }
    InsertPoint::End
}
