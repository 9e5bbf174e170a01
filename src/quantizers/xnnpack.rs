//! The XNNPACK quantizer: ExecuTorch's `XNNPACKQuantizer` with
//! `get_symmetric_quantization_config` (see `../shared/reference/pt2e.md` §4.1): the same
//! pattern order, the same "first config to claim an op wins" rule, the same priority of
//! per-module-name, per-operator-type and global configs, and the share-observer propagation.
//! Declarative quantizer files ([`super::declarative`]) are configurations of it.
//!
//! Requires: a verified module. Leaves: the patterns' ops annotated (ops annotated before are
//! left alone), and, first, XNNPACK's `transform_for_annotation`: `add.scalar`/`mul.scalar` of
//! f32 tensors become `add`/`mul` of an f32 constant.

use super::toolkit::{annotate_graphs, fake_quantized, spec, Annotator, QuantizationConfig, Scope};
use crate::diag::Diagnostics;
use crate::ir::attr::Attr;
use crate::ir::graph::{Graph, Module, OpId, ValueId};
use crate::ir::quant::{EdgeOrValue, QScheme, QSpec, SpecRef};
use crate::ir::rewriter::Rewriter;
use crate::ir::DType;
use crate::ops::{self, OpKind};
use crate::quant::observer::FakeQuant;
use crate::tensor::Tensor;

/// When activations are quantized: `get_symmetric_quantization_config`'s `is_dynamic` and
/// `is_qat` (dynamic QAT, `FakeQuantize` over a per-batch moving average, is not supported).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Post-training, static: histogram observers on activations.
    Static,
    /// Post-training, dynamic: activations quantized at run time (`placeholder` observers).
    Dynamic,
    /// Quantization-aware training, static: `FusedMovingAvgObsFakeQuantize` everywhere, and
    /// the conv–batch_norm patterns.
    Qat,
}

/// Options of `get_symmetric_quantization_config`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct SymmetricOptions {
    pub per_channel: bool,
    pub mode: Mode,
    pub act_qmin: i64,
    pub act_qmax: i64,
    pub weight_qmin: i64,
    pub weight_qmax: i64,
}

impl Default for SymmetricOptions {
    fn default() -> Self {
        SymmetricOptions {
            per_channel: true,
            mode: Mode::Static,
            act_qmin: -128,
            act_qmax: 127,
            weight_qmin: -127,
            weight_qmax: 127,
        }
    }
}

impl QuantizationConfig {
    /// `get_symmetric_quantization_config(...)`. QAT specs observe with the moving-average
    /// kinds of `FusedMovingAvgObsFakeQuantize` (averaging constant 0.01).
    pub fn xnnpack_symmetric(o: SymmetricOptions) -> QuantizationConfig {
        let dynamic = o.mode == Mode::Dynamic;
        let act_observer = match o.mode {
            Mode::Static => "histogram",
            Mode::Dynamic => "placeholder",
            Mode::Qat => "moving_average_minmax",
        };
        let act = spec(DType::I8, o.act_qmin, o.act_qmax, QScheme::PerTensorAffine, None, dynamic, act_observer);
        let (weight_qscheme, weight_axis) =
            if o.per_channel { (QScheme::PerChannelSymmetric, Some(0)) } else { (QScheme::PerTensorSymmetric, None) };
        let weight_observer = match (o.per_channel, o.mode == Mode::Qat) {
            (true, false) => "per_channel_minmax",
            (true, true) => "moving_average_per_channel_minmax",
            (false, false) => "minmax",
            (false, true) => "moving_average_minmax",
        };
        let weight = spec(DType::I8, o.weight_qmin, o.weight_qmax, weight_qscheme, weight_axis, false, weight_observer);
        let (act, weight) = match o.mode {
            Mode::Qat => (fake_quantized(act, FakeQuant::Fused), fake_quantized(weight, FakeQuant::Fused)),
            Mode::Static | Mode::Dynamic => (act, weight),
        };
        QuantizationConfig {
            input_activation: Some(act.clone()),
            output_activation: (!dynamic).then_some(act),
            weight: Some(weight),
            bias: None,
        }
    }
}

/// A quantizer: configurations in priority order (module names, then operator types, then
/// global). A `None` config keeps matching ops in float. Operator-type and global configs
/// exclude ops inside any module-name scope, as PT2E's filters do.
#[derive(Clone, Debug)]
pub struct Quantizer {
    pub name: String,
    pub configs: Vec<(Scope, Option<QuantizationConfig>)>,
    /// Names for the specs the configs use (a quantizer file's `[specs.NAME]`); specs without
    /// one are named after their role (`act`, `weight`).
    pub spec_names: Vec<(String, QSpec)>,
}

impl Quantizer {
    /// XNNPACKQuantizer with a global `get_symmetric_quantization_config`.
    pub fn xnnpack(options: SymmetricOptions) -> Quantizer {
        Quantizer {
            name: "xnnpack".into(),
            configs: vec![(Scope::Global, Some(QuantizationConfig::xnnpack_symmetric(options)))],
            spec_names: Vec::new(),
        }
    }

    /// Annotates every graph of `module`; returns whether anything was annotated.
    pub fn annotate(&self, module: &mut Module) -> Result<bool, Diagnostics> {
        annotate_graphs(module, &self.spec_names, |cx| {
            let mut cx = XnnpackAnnotator { cx };
            let converted = convert_scalars_to_constants(&mut cx.cx.rw)?;
            let annotated_before = cx.annotated_count();
            for (scope, config) in &self.configs {
                let filter = |g: &Graph, op: OpId| in_scope(g, op, scope, &self.configs);
                cx.run_patterns(config.as_ref(), &filter);
            }
            cx.propagate();
            Ok(converted || cx.annotated_count() != annotated_before)
        })
    }
}

/// Whether `op` falls under `scope`, given every scope of the quantizer (operator-type and
/// global configs exclude ops inside any module-name scope, as PT2E's filters do).
fn in_scope(g: &Graph, op: OpId, scope: &Scope, all: &[(Scope, Option<QuantizationConfig>)]) -> bool {
    let loc = g.loc(op).unwrap_or_default();
    let in_named_module =
        || all.iter().any(|(s, _)| matches!(s, Scope::Module { name, matching } if matching.contains(name, loc)));
    match scope {
        Scope::Module { name, matching } => matching.contains(name, loc),
        Scope::OperatorType(kind) => g.op(op).kind() == *kind && !in_named_module(),
        Scope::Global => !in_named_module(),
    }
}

/// XNNPACK's `transform_for_annotation`: a scalar operand of `add`/`mul` becomes an f32
/// constant so it can be observed and quantized (`x * 2` gets an int8 constant).
fn convert_scalars_to_constants(rw: &mut Rewriter<'_>) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for op in rw.op_ids() {
        let tensor_kind = match rw.op(op).kind() {
            ops::ADD_SCALAR => ops::ADD,
            ops::MUL_SCALAR => ops::MUL,
            _ => continue,
        };
        let Some(x) = rw.op(op).operand(0) else { continue };
        let alpha = rw.attr(op, "alpha").and_then(Attr::as_float).unwrap_or(1.0);
        let Some(other) = rw.attr(op, "other").and_then(Attr::as_float) else { continue };
        // `alpha` has no equivalent in the tensor form here, and only float32 is rewritten.
        if alpha != 1.0 || rw.value_type(x).dtype != DType::F32 {
            continue;
        }
        let value = Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), other as f32));
        let span = rw.op(op).span();
        // The lifted constant has no location: it belongs to no module.
        rw.set_insertion_before(op).set_span(span).set_loc(None);
        let constant = rw.constant("_tensor_constant", value)?;
        let attrs = rw.attrs(tensor_kind, &[])?;
        rw.update(op).rewrite(tensor_kind, &[x, constant], attrs);
        changed = true;
    }
    Ok(changed)
}

/// The op kinds that share their input's observer (PT2E's `_is_share_obs_or_fq_op`).
/// `relu6` is not among them (`F.relu6` exports as `aten.relu6`, which ExecuTorch does not list;
/// `nn.ReLU6` exports as `hardtanh`, which it does), and `squeeze` shares only in its one-dim
/// form (`aten.squeeze.dim`): see [`shares_observer`].
pub const SHARE_OBSERVER_OPS: &[OpKind] = &[
    ops::RELU,
    ops::HARDTANH,
    ops::MAX_POOL2D,
    ops::MEAN,
    ops::PERMUTE,
    ops::TRANSPOSE,
    ops::SQUEEZE,
    ops::ADAPTIVE_AVG_POOL2D,
    ops::VIEW,
    ops::RESHAPE,
    ops::SLICE,
    ops::FLATTEN,
    ops::DROPOUT,
];

/// Whether `op` shares its input's observer under XNNPACK's propagation.
fn shares_observer(g: &Graph, op: OpId) -> bool {
    match g.op(op).kind() {
        ops::SQUEEZE => g.attr(op, "dims").and_then(Attr::as_ints).is_some_and(|d| d.len() == 1),
        kind => SHARE_OBSERVER_OPS.contains(&kind),
    }
}

/// The convolutions the conv patterns anchor on.
const CONVS: &[OpKind] = &[ops::CONV1D, ops::CONV2D, ops::CONV_TRANSPOSE2D];

struct XnnpackAnnotator<'m, 'q> {
    cx: Annotator<'m, 'q>,
}

type Filter<'f> = dyn Fn(&Graph, OpId) -> bool + 'f;

impl XnnpackAnnotator<'_, '_> {
    fn annotated_count(&self) -> usize {
        self.cx.graph().ops().filter(|&op| self.cx.annotated(op)).count()
    }

    /// The single user of `op`'s result, when it is of `kind`.
    fn single_user_of_kind(&self, op: OpId, kind: OpKind) -> Option<OpId> {
        self.cx.single_user(op).filter(|&u| self.cx.kind(u) == kind)
    }

    /// Input, weight and bias specs of a linear or conv.
    fn weighted_inputs(&mut self, op: OpId, config: &QuantizationConfig, weight_axis: i64) -> Vec<SpecRef> {
        let mut weight = config.weight.clone();
        if let Some(w) = weight.as_mut().filter(|w| w.qscheme.is_per_channel()) {
            w.ch_axis = Some(weight_axis);
        }
        let base = if weight_axis == 0 { "weight".to_string() } else { format!("weight_axis{weight_axis}") };
        let mut inputs = vec![self.cx.named(&config.input_activation, "act"), self.cx.named(&weight, &base)];
        if self.cx.graph().op(op).operands().len() > 2 {
            inputs.push(self.cx.named(&config.bias, "bias"));
        }
        inputs
    }

    fn run_patterns(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        let none = QuantizationConfig { input_activation: None, output_activation: None, weight: None, bias: None };
        let config = config.unwrap_or(&none);
        let quantized = config.input_activation.is_some() || config.weight.is_some();
        let dynamic = config.is_dynamic();
        let qat = config.is_qat();
        // In PT2E's pattern order, each pattern over the whole graph.
        for pattern in [
            Pattern::ConvBnRelu,
            Pattern::ConvBn,
            Pattern::ConvTransposeBnRelu,
            Pattern::ConvTransposeBn,
            Pattern::LinearRelu,
            Pattern::Linear,
            Pattern::ConvRelu,
            Pattern::Conv,
            Pattern::AdaptiveAvgPool,
            Pattern::AddRelu,
            Pattern::Add,
            Pattern::MulRelu,
            Pattern::Mul,
            Pattern::Cat,
        ] {
            // A dynamic config runs only the patterns PT2E marks dynamic; every other config
            // runs all of them, except that a pattern marked QAT needs a QAT config or a
            // static one (ExecuTorch's rule; a static config meets a batch norm only where
            // fuse-conv-bn left one).
            let runs = match pattern {
                Pattern::Linear | Pattern::Conv => true,
                Pattern::ConvBnRelu | Pattern::ConvBn | Pattern::ConvTransposeBnRelu | Pattern::ConvTransposeBn => {
                    qat || !dynamic
                }
                _ => !dynamic,
            };
            if !runs {
                continue;
            }
            for op in self.cx.graph().op_ids() {
                if !filter(self.cx.graph(), op) || self.cx.annotated(op) {
                    continue;
                }
                if quantized {
                    self.apply(pattern, op, config, filter);
                } else if pattern.anchors(self.cx.kind(op)) {
                    // A `None` config claims the op so later configs leave it in float.
                    self.cx.set(op, vec![], None);
                }
            }
        }
    }

    fn apply(&mut self, pattern: Pattern, op: OpId, config: &QuantizationConfig, filter: &Filter<'_>) {
        let kind = self.cx.kind(op);
        // No output spec at all when the config has none (dynamic configs), as in PT2E.
        let out = |this: &mut Self| {
            config.output_activation.as_ref().map(|_| this.cx.named(&config.output_activation, "act"))
        };
        match pattern {
            Pattern::ConvBnRelu | Pattern::ConvBn | Pattern::ConvTransposeBnRelu | Pattern::ConvTransposeBn => {
                if !pattern.anchors(kind) {
                    return;
                }
                // PT2E matches `F.batch_norm(training=True)` with `ignore_literals=True`: an
                // inference batch norm matches too (fuse-conv-bn-qat then makes it a training one).
                let Some(bn) = self.single_user_of_kind(op, ops::BATCH_NORM) else { return };
                let output = match pattern {
                    Pattern::ConvBnRelu | Pattern::ConvTransposeBnRelu => {
                        match self.single_user_of_kind(bn, ops::RELU) {
                            Some(relu) => relu,
                            None => return,
                        }
                    }
                    _ => bn,
                };
                // The partition PT2E checks is the conv (with its parameters); the output op
                // is annotated whatever it had.
                if !filter(self.cx.graph(), op) {
                    return;
                }
                // The weight spec keeps axis 0 even for a transposed conv: unlike the plain
                // conv_transpose pattern, PT2E's conv-bn annotator does not move it.
                let inputs = self.weighted_inputs(op, config, 0);
                self.cx.set(op, inputs, None);
                let o = out(self);
                self.cx.set(output, vec![], o);
            }
            Pattern::LinearRelu | Pattern::ConvRelu => {
                let anchor_ok = match pattern {
                    Pattern::LinearRelu => kind == ops::LINEAR,
                    _ => matches!(kind, ops::CONV1D | ops::CONV2D) || self.is_ungrouped_transposed_conv(op),
                };
                let Some(relu) = self.single_user_of_kind(op, ops::RELU) else { return };
                if !anchor_ok || self.cx.annotated(relu) || !filter(self.cx.graph(), relu) {
                    return;
                }
                let axis = if kind == ops::CONV_TRANSPOSE2D { 1 } else { 0 };
                let inputs = self.weighted_inputs(op, config, axis);
                self.cx.set(op, inputs, None);
                let o = out(self);
                self.cx.set(relu, vec![], o);
            }
            Pattern::Linear if kind == ops::LINEAR => {
                let inputs = self.weighted_inputs(op, config, 0);
                let o = out(self);
                self.cx.set(op, inputs, o);
            }
            Pattern::Conv if CONVS.contains(&kind) => {
                if kind == ops::CONV_TRANSPOSE2D && !self.is_ungrouped_transposed_conv(op) {
                    return;
                }
                // Dynamic quantization takes 2-D convs that are not depthwise only.
                if config.is_dynamic() && (kind == ops::CONV1D || self.is_depthwise(op)) {
                    return;
                }
                // A conv followed only by relu is left to the conv-relu pattern.
                if self.single_user_of_kind(op, ops::RELU).is_some() {
                    return;
                }
                let inputs = self.weighted_inputs(op, config, if kind == ops::CONV_TRANSPOSE2D { 1 } else { 0 });
                let o = out(self);
                self.cx.set(op, inputs, o);
            }
            Pattern::AdaptiveAvgPool if kind == ops::ADAPTIVE_AVG_POOL2D => {
                let Some(x) = self.cx.graph().op(op).operand(0) else { return };
                let input = if self.has_output_spec(x) {
                    SpecRef::Shared(EdgeOrValue::Value(x))
                } else {
                    self.cx.named(&config.input_activation, "act")
                };
                self.cx.set(op, vec![input], Some(SpecRef::Shared(EdgeOrValue::Edge { value: x, consumer: op })));
            }
            Pattern::AddRelu | Pattern::MulRelu | Pattern::Add | Pattern::Mul => {
                if !pattern.anchors(kind) || !self.binary_operands_ok(op) {
                    return;
                }
                let fused_relu = if matches!(pattern, Pattern::AddRelu | Pattern::MulRelu) {
                    match self
                        .single_user_of_kind(op, ops::RELU)
                        .filter(|&u| !self.cx.annotated(u) && filter(self.cx.graph(), u))
                    {
                        Some(relu) => Some(relu),
                        None => return,
                    }
                } else {
                    None
                };
                let n = self.cx.graph().op(op).operands().len();
                let inputs = (0..n).map(|_| self.cx.named(&config.input_activation, "act")).collect();
                let o = out(self);
                match fused_relu {
                    Some(relu) => {
                        self.cx.set(op, inputs, None);
                        self.cx.set(relu, vec![], o);
                    }
                    None => self.cx.set(op, inputs, o),
                }
            }
            Pattern::Cat if kind == ops::CAT => {
                let operands = self.cx.graph().op(op).operands().to_vec();
                let Some(&first) = operands.first() else { return };
                let source = operands.iter().copied().find(|&v| self.traces_to_output_spec(v)).unwrap_or(first);
                let shared = SpecRef::Shared(EdgeOrValue::Edge { value: source, consumer: op });
                let inputs = operands
                    .iter()
                    .map(|&v| if v == source { self.cx.named(&config.input_activation, "act") } else { shared.clone() })
                    .collect();
                self.cx.set(op, inputs, Some(shared));
            }
            _ => {}
        }
    }

    fn groups(&self, op: OpId) -> i64 {
        self.cx.graph().attr(op, "groups").and_then(Attr::as_int).unwrap_or(1)
    }

    /// A `conv_transpose2d` with one group (the only transposed convs the patterns take).
    fn is_ungrouped_transposed_conv(&self, op: OpId) -> bool {
        self.cx.kind(op) == ops::CONV_TRANSPOSE2D && self.groups(op) == 1
    }

    /// A grouped conv with one input channel per group.
    fn is_depthwise(&self, op: OpId) -> bool {
        let g = self.cx.graph();
        let Some(weight) = g.op(op).operand(1) else { return false };
        let per_group = g.value_type(weight).shape.get(1).copied();
        self.groups(op) > 1 && per_group == Some(crate::ir::Dim::Known(1))
    }

    /// `add`/`mul` operands must be float32, and a constant scalar operand must fit histc's range.
    fn binary_operands_ok(&self, op: OpId) -> bool {
        let g = self.cx.graph();
        g.op(op).operands().iter().all(|&v| {
            if g.value_type(v).dtype != DType::F32 {
                return false;
            }
            let Some(producer) = g.producer(v) else { return true };
            match g.attr(producer, "value").and_then(Attr::as_tensor) {
                Some(t) if t.len() == 1 => t.to_f64_array().iter().all(|x| x.abs() <= 3.402_823_5e15),
                _ => true,
            }
        })
    }

    /// Whether `v` is produced by an op whose annotation has an output spec.
    fn has_output_spec(&self, v: ValueId) -> bool {
        self.cx.graph().producer(v).is_some_and(|p| self.cx.has_output_spec(p))
    }

    /// Through share-observer ops back to an annotated output (executorch's cat source rule).
    fn traces_to_output_spec(&self, mut v: ValueId) -> bool {
        let g = self.cx.graph();
        loop {
            if self.has_output_spec(v) {
                return true;
            }
            match g.producer(v) {
                Some(p) if shares_observer(g, p) => match g.op(p).operand(0) {
                    Some(input) => v = input,
                    None => return false,
                },
                _ => return false,
            }
        }
    }

    /// `propagate_annotation`: share-observer ops inherit their input's output spec.
    fn propagate(&mut self) {
        for op in self.cx.graph().op_ids() {
            if !shares_observer(self.cx.graph(), op) || self.cx.annotated(op) {
                continue;
            }
            let Some(prev) = self.cx.graph().op(op).operand(0) else { continue };
            if !self.has_output_spec(prev) {
                continue;
            }
            let shared = SpecRef::Shared(EdgeOrValue::Value(prev));
            self.cx.set(op, vec![shared.clone()], Some(shared));
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq)]
enum Pattern {
    ConvBnRelu,
    ConvBn,
    ConvTransposeBnRelu,
    ConvTransposeBn,
    LinearRelu,
    Linear,
    ConvRelu,
    Conv,
    AdaptiveAvgPool,
    AddRelu,
    Add,
    MulRelu,
    Mul,
    Cat,
}

impl Pattern {
    /// Whether the pattern is anchored on ops of `kind` (what a `None` config claims).
    fn anchors(self, kind: OpKind) -> bool {
        match self {
            Pattern::LinearRelu | Pattern::Linear => kind == ops::LINEAR,
            Pattern::ConvRelu | Pattern::Conv => CONVS.contains(&kind),
            Pattern::ConvBnRelu | Pattern::ConvBn => matches!(kind, ops::CONV1D | ops::CONV2D),
            Pattern::ConvTransposeBnRelu | Pattern::ConvTransposeBn => kind == ops::CONV_TRANSPOSE2D,
            Pattern::AdaptiveAvgPool => kind == ops::ADAPTIVE_AVG_POOL2D,
            Pattern::AddRelu | Pattern::Add => kind == ops::ADD,
            Pattern::MulRelu | Pattern::Mul => kind == ops::MUL,
            Pattern::Cat => kind == ops::CAT,
        }
    }
}
