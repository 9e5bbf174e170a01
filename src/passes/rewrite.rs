//! Small building blocks the rewriting passes share: making ops by registry name, turning a
//! computed tensor into a `const` or a created `weight`, and recognising the quantization ops.

use std::sync::Arc;

use crate::diag::{Diag, Diagnostics, Span};
use crate::ir::attr::Attr;
use crate::ir::graph::{AttrsId, ResultSpec};
use crate::ir::{Graph, Module, OpId, TensorType, ValueId};
use crate::ops::OpKind;
use crate::tensor::Tensor;

/// A computed tensor with more elements than this is stored in the weights file; smaller ones
/// are printed inline as `const` literals.
pub const INLINE_LIMIT: usize = 256;

/// The registry entry `name`; its absence is a bug in qc, reported as such.
pub fn op_kind(name: &str) -> Result<OpKind, Diagnostics> {
    OpKind::from_name(name).ok_or_else(|| internal(&format!("no `{name}` op in the registry")))
}

pub fn internal(message: &str) -> Diagnostics {
    vec![Diag::error(format!("internal error: {message}")).note("this is a bug in qc")]
}

/// Creates an unlinked op `name(operands) {fields}` whose results are called after `bases`
/// (made unique) and typed `types`; defaults fill the attributes not given.
pub fn new_op(
    g: &mut Graph,
    name: &str,
    operands: &[ValueId],
    fields: &[(&str, Attr)],
    results: &[(&str, TensorType)],
    span: Span,
) -> Result<OpId, Diagnostics> {
    let kind = op_kind(name)?;
    let attrs = op_attrs(g, kind, fields)?;
    let names: Vec<String> = results.iter().map(|(base, _)| g.fresh_name(base)).collect();
    let specs = names.iter().zip(results).map(|(n, (_, ty))| ResultSpec { name: n, ty: ty.clone(), span }).collect();
    g.create_op(kind, operands, attrs, specs, span).map_err(|_| internal("a fresh name is taken"))
}

/// The interned attribute set of a `kind` op with `fields` written and defaults for the rest.
pub fn op_attrs(g: &mut Graph, kind: OpKind, fields: &[(&str, Attr)]) -> Result<AttrsId, Diagnostics> {
    let def = kind.def();
    let mut slots: Vec<Option<Attr>> = vec![None; def.attrs.len()];
    for (field, value) in fields {
        let i = def.attr_index(field).ok_or_else(|| internal(&format!("`{}` has no attribute `{field}`", def.name)))?;
        slots[i] = Some(value.clone());
    }
    Ok(g.intern_attrs(def.complete_attrs(slots)))
}

/// The `index`-th result of `op`.
pub fn result(g: &Graph, op: OpId, index: usize) -> Result<ValueId, Diagnostics> {
    g.op(op).result(index).ok_or_else(|| internal(&format!("`{}` has no result {index}", g.op(op).def().name)))
}

/// An unlinked op producing `value`: see [`constant_source`].
pub fn tensor_op(module: &mut Module, gi: usize, base: &str, value: Tensor, span: Span) -> Result<OpId, Diagnostics> {
    let shape: Vec<u64> = value.shape().iter().map(|&d| d as u64).collect();
    let ty = TensorType::fixed(value.dtype(), &shape);
    let (kind, field) = constant_source(module, base, value);
    new_op(&mut module.graphs[gi], kind, &[], &[field], &[(base, ty)], span)
}

/// How an op yields `value`: a `const` literal when it is small, else a `weight` of a new key
/// (`base`, made unique) in the module's created weights, which `qc -o` writes out. Returns the
/// op name and its one attribute.
pub fn constant_source(module: &mut Module, base: &str, value: Tensor) -> (&'static str, (&'static str, Attr)) {
    if value.len() <= INLINE_LIMIT {
        return ("const", ("value", Attr::Tensor(Arc::new(value))));
    }
    let key = fresh_weight_key(module, base);
    module.created_weights.insert(key.clone(), Arc::new(value));
    ("weight", ("key", Attr::Str(key.as_str().into())))
}

/// `base`, or `base_1`, `base_2`, …: a key neither the weights file nor the created weights use.
pub fn fresh_weight_key(module: &Module, base: &str) -> String {
    let taken = |k: &str| !matches!(module.weights().tensor_type(k), Ok(None));
    if !taken(base) {
        return base.to_string();
    }
    (1..).map(|i| format!("{base}_{i}")).find(|k| !taken(k)).unwrap_or_default()
}

/// The quantize ops convert creates (and `fold-quantize` folds).
pub const QUANTIZE_OPS: &[&str] = &["quantize_per_tensor", "quantize_per_tensor.tensor", "quantize_per_channel"];

/// The dequantize ops convert creates.
pub const DEQUANTIZE_OPS: &[&str] =
    &["dequantize_per_tensor", "dequantize_per_tensor.tensor", "dequantize_per_channel"];

pub fn is_op(g: &Graph, op: OpId, names: &[&str]) -> bool {
    names.contains(&g.op(op).def().name)
}

/// The op producing `v`, when it is one of `names`.
pub fn producer_in(g: &Graph, v: ValueId, names: &[&str]) -> Option<OpId> {
    g.producer(v).filter(|&p| is_op(g, p, names))
}
