//! The constant parameters of a fold (`fuse-conv-bn`, `fold-conv-bn-qat`): where each comes
//! from, reading it, and writing a folded tensor back where it came from (PT2E's `_assign_attr`
//! on the same name):
//! - a parameter read by `weight {key = K}`: a tensor created under `K`
//!   (`Module::created_weights`), which shadows the weights file's; `qc -o` writes it to the
//!   output's weights file;
//! - a parameter written inline as `const`: the new value, in place (same op, same name); a
//!   `const` of more than [`INLINE_LIMIT`] elements becomes, in place, a `weight` of a created
//!   tensor keyed by the value's name;
//! - a conv without bias gains one, in a new op right before the conv: `weight {key = "<weight
//!   key>_bias"}`, or a `const` when the weight is one.
//!
//! New keys are unused by the weights file, the created tensors and every `weight` op of the
//! module ([`Readers`], kept up to date as ops are added).

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{built_op, result_name};
use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::Attr;
use crate::ir::rewriter::{Rewriter, INLINE_LIMIT};
use crate::ir::{Graph, Module, OpId, TensorType, ValueId};
use crate::ops;
use crate::tensor::Tensor;

/// Every `weight` op of the module by key: (graph index, op). Entries may be dead ops.
pub(super) type Readers = FxHashMap<String, Vec<(usize, OpId)>>;

/// The module's `weight` ops by key.
pub(super) fn weight_readers(module: &Module) -> Readers {
    let mut readers: Readers = FxHashMap::default();
    for (gi, g) in module.graphs.iter().enumerate() {
        for op in g.ops() {
            if let Some(key) = weight_key(g, op) {
                readers.entry(key.to_string()).or_default().push((gi, op));
            }
        }
    }
    readers
}

fn weight_key(g: &Graph, op: OpId) -> Option<&str> {
    if g.op(op).kind() == ops::WEIGHT {
        g.attr(op, "key").and_then(Attr::as_str)
    } else {
        None
    }
}

/// Where a constant parameter comes from.
#[derive(Clone, Debug)]
pub(super) enum Src {
    Weight { op: OpId, key: String },
    Const { op: OpId },
}

impl Src {
    pub(super) fn op(&self) -> OpId {
        match self {
            Src::Weight { op, .. } | Src::Const { op } => *op,
        }
    }

    /// The parameter's identity: every `weight` op with one key reads one tensor.
    pub(super) fn identity(&self) -> Param {
        match self {
            Src::Weight { key, .. } => Param::Key(key.clone()),
            Src::Const { op } => Param::Const(*op),
        }
    }
}

/// A parameter's identity: see [`Src::identity`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Param {
    Key(String),
    Const(OpId),
}

/// The `weight` or `const` op defining `v`, or how `v` is made instead.
pub(super) fn constant_source(g: &Graph, v: ValueId) -> Result<Src, String> {
    let Some(op) = g.producer(v) else {
        return Err("a graph input".into());
    };
    if let Some(key) = weight_key(g, op) {
        return Ok(Src::Weight { op, key: key.to_string() });
    }
    if g.op(op).kind() == ops::CONST {
        return Ok(Src::Const { op });
    }
    Err(format!("computed by `{}`", g.op(op).def().name))
}

/// The tensor of a parameter of the fold of `bn`.
pub(super) fn read(rw: &Rewriter<'_>, src: &Src, bn: OpId) -> Result<Tensor, Diagnostics> {
    match src {
        Src::Weight { op, key } => rw.module().weights().tensor(key).map_err(|e| {
            vec![Diag::error(format!("cannot read weight `{key}` to fold `{}`: {e}", result_name(rw, bn)))
                .at(rw.op(*op).span(), "read here")]
        }),
        Src::Const { op } => rw.attr(*op, "value").and_then(Attr::as_tensor).cloned().ok_or_else(|| {
            vec![Diag::error("a `const` without a value").at(rw.op(*op).span(), "here").note("this is a bug in qc")]
        }),
    }
}

/// Writes a folded parameter back where it came from.
pub(super) fn store(rw: &mut Rewriter<'_>, readers: &mut Readers, src: &Src, value: Tensor) -> Result<(), Diagnostics> {
    match src {
        Src::Weight { key, .. } => rw.set_created_weight(key, value),
        Src::Const { op } if value.len() <= INLINE_LIMIT => {
            rw.update(*op).set_attr("value", Attr::Tensor(Arc::new(value)))?;
        }
        Src::Const { op } => {
            // Too large to print inline: the same op becomes a `weight` read of a new key.
            let name = rw.op(*op).result(0).map(|r| rw.value_name(r).to_string()).unwrap_or_default();
            let key = new_weight(rw, readers, &name, value);
            let attrs = rw.attrs(ops::WEIGHT, &[("key", Attr::Str(key.as_str().into()))])?;
            rw.update(*op).rewrite(ops::WEIGHT, &[], attrs);
            readers.entry(key).or_default().push((rw.graph_index(), *op));
        }
    }
    Ok(())
}

/// Gives every layer in `layers` the new bias `value`, in a new op right before it (with the
/// layer's location and span, and no metadata: PT2E's new `get_attr` carries only `val`): a
/// `weight` of `<weight key>_bias` (PT2E's `conv.weight_bias`), or a `const` when the weight is
/// one.
pub(super) fn add_bias(
    rw: &mut Rewriter<'_>,
    readers: &mut Readers,
    layers: &[OpId],
    weight: &Src,
    value: Tensor,
) -> Result<(), Diagnostics> {
    let weight_name = rw.op(weight.op()).result(0).map(|r| rw.value_name(r).to_string()).unwrap_or_default();
    let key_base = match weight {
        Src::Weight { key, .. } => Some(format!("{key}_bias")),
        Src::Const { .. } if value.len() > INLINE_LIMIT => Some(format!("{weight_name}_bias")),
        Src::Const { .. } => None,
    };
    let ty = TensorType::fixed(value.dtype(), &value.shape().iter().map(|&d| d as u64).collect::<Vec<_>>());
    let (kind, field, name) = match key_base {
        Some(base) => {
            let key = new_weight(rw, readers, &base, value);
            (ops::WEIGHT, ("key", Attr::Str(key.as_str().into())), key)
        }
        None => (ops::CONST, ("value", Attr::Tensor(Arc::new(value))), format!("{weight_name}_bias")),
    };
    for &layer in layers {
        rw.set_insertion_before(layer).set_origin(layer);
        let bias = rw.build1(kind, &[], std::slice::from_ref(&field), &name, ty.clone())?;
        rw.update(layer).push_operand(bias);
        if kind == ops::WEIGHT {
            let op = built_op(rw, bias)?;
            readers.entry(name.clone()).or_default().push((rw.graph_index(), op));
        }
    }
    Ok(())
}

/// Stores `value` as a created weight under `base` or `base_1`, `base_2`, …: the first key no
/// tensor and no `weight` op uses.
fn new_weight(rw: &mut Rewriter<'_>, readers: &Readers, base: &str, value: Tensor) -> String {
    rw.new_weight_avoiding(base, value, |key| readers.contains_key(key))
}
