//! `convert`: replace every observer with the quantize/dequantize ops its qparams call for —
//! PT2E's `_convert_to_reference_decomposed_fx`, the first step of `convert_pt2e`
//! (`../shared/reference/pt2e.md` §1.7).
//!
//! Each observer's instance gives its qparams, computed from the statistics `calibrate` stored,
//! with PyTorch's `calculate_qparams` (bit-identical; see [`crate::quant::observer`]):
//! * an integer per-tensor spec becomes `quantize_per_tensor` + `dequantize_per_tensor` with the
//!   scale (a float32, printed as its exact double) and zero point as attributes;
//! * an integer per-channel spec becomes `quantize_per_channel` + `dequantize_per_channel`
//!   reading two new constants, `<value>_scale` (f32) and `<value>_zero_point` (i64);
//! * a dynamic spec (a `placeholder` observer of an integer dtype) becomes `choose_qparams` +
//!   `quantize_per_tensor.tensor` + `dequantize_per_tensor.tensor`, so qparams are computed
//!   from each tensor at run time;
//! * a `derived` observer takes the product of its sources' scales (float32) and zero point 0;
//! * a float16/bfloat16 spec becomes two `convert_element_type` casts (there and back);
//! * a float32 spec quantizes nothing: its observer just disappears.
//!
//! The quantize op is named `<value>_q` and the dequantize `<value>_dq` after the observed
//! value; the dequantize replaces the observer's result for all its readers. New ops have no
//! location: `port-metadata` gives them the one of the op they belong to, as PT2E does.
//!
//! Requires: a calibrated module (an instance without statistics gets PyTorch's default qparams,
//! scale 1.0 and zero point 0, with a warning; a module where no instance has statistics is an
//! error). Leaves: no observers; annotations stay, for `duplicate-dq` and `port-metadata`.
//!
//! ```qir before
//! module {
//!   func @main(%x: f32[1,4]) -> f32[1,4] {
//!     %activation_post_process_0 = observer(%x) {kind = "minmax", dtype = i8, qmin = -128, qmax = 127, stats = {min_val = -1.0, max_val = 2.0}} : f32[1,4]
//!     %y = relu(%activation_post_process_0) : f32[1,4]
//!     return %y
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   func @main(%x: f32[1,4]) -> f32[1,4] {
//!     %x_q = quantize_per_tensor(%x) {scale = 0.0117647061124444, zero_point = -43, qmin = -128, qmax = 127, dtype = i8} : i8[1,4]
//!     %x_dq = dequantize_per_tensor(%x_q) {scale = 0.0117647061124444, zero_point = -43, qmin = -128, qmax = 127, dtype = i8} : f32[1,4]
//!     %y = relu(%x_dq) : f32[1,4]
//!     return %y
//!   }
//! }
//! ```

use ndarray::{Array1, ArrayD};
use rayon::prelude::*;

use super::observer_instances::{self, is_derived, Instances};
use super::{each_graph, PassContext, PassDef};
use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::Attr;
use crate::ir::matching::ops_of;
use crate::ir::quant::QScheme;
use crate::ir::rewriter::{internal, Rewriter};
use crate::ir::{DType, Graph, Module, OpId, ValueId};
use crate::ops::{self, OpKind};
use crate::quant::observer::{ObserverKind, QParams};
use crate::tensor::Tensor;

pub const PASS: PassDef = PassDef {
    name: "convert",
    description: "Replace observers with quantize/dequantize ops carrying their qparams (PT2E's convert).",
    run,
};

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    each_graph(module, |module, gi| convert_graph(module, gi, &mut cx.warnings))
}

/// What one observer becomes.
enum Rewrite {
    /// A float32 spec: nothing to quantize.
    Remove,
    /// A float16/bfloat16 spec: cast there and back.
    Cast(DType),
    Dynamic {
        qmin: i64,
        qmax: i64,
        dtype: DType,
        eps: f32,
        symmetric: bool,
    },
    PerTensor {
        scale: f32,
        zero_point: i64,
        qmin: i64,
        qmax: i64,
        dtype: DType,
    },
    PerChannel {
        axis: i64,
        scales: Vec<f32>,
        zero_points: Vec<i64>,
        qmin: i64,
        qmax: i64,
        dtype: DType,
    },
}

impl Rewrite {
    /// The ops and values [`apply`] creates for it.
    fn created(&self) -> (usize, usize) {
        match self {
            Rewrite::Remove => (0, 0),
            Rewrite::Cast(_) | Rewrite::PerTensor { .. } => (2, 2),
            Rewrite::Dynamic { .. } => (3, 4),
            Rewrite::PerChannel { .. } => (4, 4),
        }
    }
}

fn convert_graph(module: &mut Module, gi: usize, warnings: &mut Diagnostics) -> Result<bool, Diagnostics> {
    let g = &module.graphs[gi];
    let observers = ops_of(g, &[ops::OBSERVER]);
    if observers.is_empty() {
        return Ok(false);
    }
    let instances = observer_instances::configs(g)?;
    let qparams = instance_qparams(g, &instances, warnings)?;
    let mut errors = Vec::new();
    let mut plans = Vec::with_capacity(observers.len());
    for &op in &observers {
        match plan(g, op, &instances, &qparams) {
            Ok(p) => plans.push((op, p)),
            Err(m) => {
                errors.push(Diag::error(format!("cannot convert this observer: {m}")).at(g.op(op).span(), "here"))
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let (new_ops, new_values) = plans.iter().fold((0, 0), |(o, v), (_, plan)| {
        let (po, pv) = plan.created();
        (o + po, v + pv)
    });
    let mut rw = Rewriter::new(module, gi);
    rw.reserve(new_ops, new_values);
    for (op, plan) in plans {
        apply(&mut rw, op, plan)?;
    }
    Ok(true)
}

/// An instance's qparams from its statistics, and whether it saw any data.
type Computed = (bool, Result<QParams, String>);

/// Each instance's qparams (`None` for the stateless dynamic ones), with a warning for every
/// instance that never saw data; an error when none did (calibration was skipped).
fn instance_qparams(
    g: &Graph,
    instances: &Instances,
    warnings: &mut Diagnostics,
) -> Result<Vec<Option<QParams>>, Diagnostics> {
    let needs_data = |i: usize| {
        let c = &instances.list[i].config;
        !matches!(c.kind, ObserverKind::FixedQParams | ObserverKind::Placeholder)
    };
    // Reading the statistics and the histogram searches dominate; instances are independent, so
    // they run in parallel (each result is computed by one thread: nothing depends on the thread
    // count), and each instance's statistics are dropped as soon as its qparams are known.
    let computed: Vec<Result<Option<Computed>, Diag>> = instances
        .list
        .par_iter()
        .map(|inst| {
            if inst.config.kind == ObserverKind::Placeholder {
                return Ok(None);
            }
            let state = observer_instances::stored_state(g, inst)?;
            Ok(Some((state.is_initialized(), state.qparams(&inst.config))))
        })
        .collect();
    let mut errors = Vec::new();
    let computed: Vec<_> = computed
        .into_iter()
        .map(|c| {
            c.unwrap_or_else(|d| {
                errors.push(d);
                None
            })
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let calibrated = computed.iter().enumerate().any(|(i, c)| needs_data(i) && matches!(c, Some((true, _))));
    let mut out = Vec::with_capacity(instances.list.len());
    for ((i, inst), q) in instances.list.iter().enumerate().zip(computed) {
        let span = g.op(inst.first).span();
        let Some((initialized, q)) = q else {
            out.push(None);
            continue;
        };
        if needs_data(i) && !initialized {
            if !calibrated {
                return Err(vec![Diag::error("`convert` needs calibrated observers, and no observer has statistics")
                    .at(span, "observed here, never calibrated")
                    .help("run `calibrate` first: `-p calibrate,convert --calib data.npz`")]);
            }
            warnings.push(
                Diag::warning("this observer has no statistics")
                    .at(span, "never saw data")
                    .note("its qparams are PyTorch's defaults: scale 1.0, zero point 0"),
            );
        }
        let q = q.and_then(|q| q.check_finite().map(|()| q));
        out.push(Some(q.map_err(|m| vec![Diag::error(m).at(span, "in this observer")])?));
    }
    Ok(out)
}

fn plan(g: &Graph, op: OpId, instances: &Instances, qparams: &[Option<QParams>]) -> Result<Rewrite, String> {
    let int = |name: &str| g.attr(op, name).and_then(Attr::as_int).ok_or_else(|| format!("no integer `{name}`"));
    let dtype = g.attr(op, "dtype").and_then(Attr::as_dtype).ok_or("no `dtype`")?;
    let qscheme = g.attr(op, "qscheme").and_then(Attr::as_str).and_then(QScheme::from_name).ok_or("no `qscheme`")?;
    match dtype {
        DType::F32 => return Ok(Rewrite::Remove),
        DType::F16 | DType::BF16 => return Ok(Rewrite::Cast(dtype)),
        DType::F64 | DType::Bool | DType::I64 => return Err(format!("cannot quantize to {dtype}")),
        _ => {}
    }
    let (qmin, qmax) = (int("qmin")?, int("qmax")?);
    let q = if is_derived(g, op) {
        derived_qparams(g, op, instances, qparams)?
    } else {
        let i = *instances.by_op.get(&op).ok_or("not part of any instance")?;
        let inst = &instances.list[i];
        match &qparams[i] {
            Some(q) => q.clone(),
            None => {
                let symmetric = qscheme == QScheme::PerTensorSymmetric;
                if qscheme.is_per_channel() {
                    return Err("dynamic quantization is per-tensor only".into());
                }
                return Ok(Rewrite::Dynamic { qmin, qmax, dtype, eps: inst.config.eps, symmetric });
            }
        }
    };
    // A derived scale is a product of finite scales, which can still overflow.
    q.check_finite()?;
    if q.float_zero_point.is_some() {
        return Err(format!("{qscheme} (float zero points) has no quantize op yet"));
    }
    if qscheme.is_per_channel() {
        let axis = g.attr(op, "ch_axis").and_then(Attr::as_int).unwrap_or(0);
        Ok(Rewrite::PerChannel { axis, scales: q.scale, zero_points: q.zero_point, qmin, qmax, dtype })
    } else {
        match (q.scale.as_slice(), q.zero_point.as_slice()) {
            (&[scale], &[zero_point]) => Ok(Rewrite::PerTensor { scale, zero_point, qmin, qmax, dtype }),
            _ => Err(format!("{qscheme} needs one scale, but the qparams have {}", q.scale.len())),
        }
    }
}

/// The qparams of a `derived` observer: the elementwise float32 product of its sources' scales
/// (a per-tensor scale broadcasts over per-channel ones) and zero points 0 — what PT2E's
/// `derive_qparams_fn` computes for a bias from its input and weight.
fn derived_qparams(g: &Graph, op: OpId, instances: &Instances, qparams: &[Option<QParams>]) -> Result<QParams, String> {
    let sources = g
        .attr(op, "options")
        .and_then(Attr::as_dict)
        .and_then(|d| d.get("derived_from"))
        .and_then(Attr::as_ints)
        .ok_or("a derived observer needs `options = {derived_from = [...]}`")?;
    let mut scale: Vec<f32> = vec![1.0];
    for id in sources {
        let i =
            *instances.by_id.get(&id).ok_or_else(|| format!("it derives from instance {id}, which has no observer"))?;
        let src = qparams[i].as_ref().ok_or_else(|| format!("it derives from instance {id}, which is dynamic"))?;
        scale = match (scale.len(), src.scale.len()) {
            (1, _) => src.scale.iter().map(|&s| scale[0] * s).collect(),
            (_, 1) => scale.iter().map(|&s| s * src.scale[0]).collect(),
            (a, b) if a == b => scale.iter().zip(&src.scale).map(|(&x, &y)| x * y).collect(),
            (a, b) => return Err(format!("its sources have {a} and {b} channels")),
        };
    }
    let zero_point = vec![0; scale.len()];
    Ok(QParams { scale, zero_point, float_zero_point: None })
}

/// Rewrites observer `op` as planned.
fn apply(rw: &mut Rewriter<'_>, op: OpId, plan: Rewrite) -> Result<(), Diagnostics> {
    let input = rw.op(op).operands()[0];
    let span = rw.op(op).span();
    rw.set_insertion_before(op).set_span(span);
    let name = rw.value_name(input).to_string();
    let ty = rw.value_type(input).clone();
    let float = ty.dtype;
    let replacement = match plan {
        Rewrite::Remove => input,
        Rewrite::Cast(dtype) => {
            let cast = |dtype: DType| [("dtype", Attr::DType(dtype))];
            let there = rw.build1(
                ops::CONVERT_ELEMENT_TYPE,
                &[input],
                &cast(dtype),
                &format!("{name}_{dtype}"),
                ty.with_dtype(dtype),
            )?;
            rw.build1(ops::CONVERT_ELEMENT_TYPE, &[there], &cast(float), &format!("{name}_{float}"), ty.clone())?
        }
        Rewrite::Dynamic { qmin, qmax, dtype, eps, symmetric } => {
            let range = range_fields(qmin, qmax, dtype);
            let mut fields = range.clone();
            fields.push(("eps", Attr::Float(f64::from(eps))));
            fields.push(("symmetric", Attr::Bool(symmetric)));
            let scalar = |d: DType| crate::ir::TensorType::fixed(d, &[1]);
            let qparams = rw.build(
                ops::CHOOSE_QPARAMS,
                &[input],
                &fields,
                &[(&format!("{name}_scale"), scalar(DType::F64)), (&format!("{name}_zero_point"), scalar(DType::I64))],
            )?;
            let operands = [input, qparams[0], qparams[1]];
            let kinds = (ops::QUANTIZE_PER_TENSOR_TENSOR, ops::DEQUANTIZE_PER_TENSOR_TENSOR);
            quantize_dequantize(rw, kinds, &operands, &range, float)?
        }
        Rewrite::PerTensor { scale, zero_point, qmin, qmax, dtype } => {
            let mut fields = vec![("scale", Attr::Float(f64::from(scale))), ("zero_point", Attr::Int(zero_point))];
            fields.extend(range_fields(qmin, qmax, dtype));
            let kinds = (ops::QUANTIZE_PER_TENSOR, ops::DEQUANTIZE_PER_TENSOR);
            quantize_dequantize(rw, kinds, &[input], &fields, float)?
        }
        Rewrite::PerChannel { axis, scales, zero_points, qmin, qmax, dtype } => {
            let scales = rw.constant(&format!("{name}_scale"), Tensor::F32(vector(scales)))?;
            let zps = rw.constant(&format!("{name}_zero_point"), Tensor::I64(vector(zero_points)))?;
            let mut fields = vec![("axis", Attr::Int(axis))];
            fields.extend(range_fields(qmin, qmax, dtype));
            let kinds = (ops::QUANTIZE_PER_CHANNEL, ops::DEQUANTIZE_PER_CHANNEL);
            quantize_dequantize(rw, kinds, &[input, scales, zps], &fields, float)?
        }
    };
    rw.replace_op(op, &[replacement]);
    Ok(())
}

fn range_fields(qmin: i64, qmax: i64, dtype: DType) -> Vec<(&'static str, Attr)> {
    vec![("qmin", Attr::Int(qmin)), ("qmax", Attr::Int(qmax)), ("dtype", Attr::DType(dtype))]
}

fn vector<T>(v: Vec<T>) -> ArrayD<T> {
    Array1::from_vec(v).into_dyn()
}

/// `q = quantize(operands) {fields}` and `dq = dequantize(q, operands[1..]) {fields}` at the
/// insertion point; returns the dequantized value. The dequantize gives back the observed float
/// type.
fn quantize_dequantize(
    rw: &mut Rewriter<'_>,
    (quantize, dequantize): (OpKind, OpKind),
    operands: &[ValueId],
    fields: &[(&str, Attr)],
    float: DType,
) -> Result<ValueId, Diagnostics> {
    let input = operands[0];
    let name = rw.value_name(input).to_string();
    let ty = rw.value_type(input).clone();
    let dtype = fields
        .iter()
        .find_map(|(k, v)| (*k == "dtype").then(|| v.as_dtype()).flatten())
        .ok_or_else(|| internal("quantize without a dtype"))?;
    let q = rw.build1(quantize, operands, fields, &format!("{name}_q"), ty.with_dtype(dtype))?;
    let mut dq_operands = vec![q];
    dq_operands.extend_from_slice(&operands[1..]);
    let mut dq_fields = fields.to_vec();
    if float != DType::F32 {
        dq_fields.push(("out_dtype", Attr::DType(float)));
    }
    rw.build1(dequantize, &dq_operands, &dq_fields, &format!("{name}_dq"), ty)
}
