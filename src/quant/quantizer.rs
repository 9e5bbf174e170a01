//! Quantizers: which ops get quantized and how, recorded as annotations on the IR.
//!
//! [`Quantizer::xnnpack`] mirrors ExecuTorch's `XNNPACKQuantizer` with
//! `get_symmetric_quantization_config` (see `../shared/reference/pt2e.md` §4.1): the same
//! pattern order, the same "first config to claim an op wins" rule, the same priority of
//! per-module-name, per-operator-type and global configs, and the share-observer propagation.

use std::sync::Arc;

use crate::diag::{Diag, Diagnostics};
use crate::ir::attr::Attr;
use crate::ir::graph::{Graph, Module, OpId, ResultSpec, ValueId};
use crate::ir::quant::{Annotation, EdgeOrValue, NamedQSpec, QScheme, QSpec, SpecRef};
use crate::ir::{DType, TensorType};
use crate::ops::OpKind;
use crate::quant::observer::FakeQuant;
use crate::tensor::Tensor;

/// PT2E's `QuantizationConfig`: the specs one configuration gives to an op's pieces.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizationConfig {
    pub input_activation: Option<QSpec>,
    pub output_activation: Option<QSpec>,
    pub weight: Option<QSpec>,
    pub bias: Option<QSpec>,
}

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

/// The observer eps every stock config passes.
pub const EPS: f64 = 1.0 / 4096.0;

fn spec(
    dtype: DType,
    qmin: i64,
    qmax: i64,
    qscheme: QScheme,
    ch_axis: Option<i64>,
    dynamic: bool,
    observer: &str,
) -> QSpec {
    let mut options = crate::ir::attr::Dict::new();
    options.insert("eps", Attr::Float(EPS));
    QSpec { dtype, qmin, qmax, qscheme, ch_axis, dynamic, observer: observer.to_string(), options, fixed: None }
}

/// `spec` observed by a QAT fake-quantize module of kind `fake_quant`.
pub(crate) fn fake_quantized(mut spec: QSpec, fake_quant: FakeQuant) -> QSpec {
    spec.options.insert("fake_quant", Attr::Str(fake_quant.name().into()));
    spec
}

impl QuantizationConfig {
    /// Whether this is a QAT configuration (PT2E's `is_qat`): its specs fake-quantize.
    pub fn is_qat(&self) -> bool {
        [&self.input_activation, &self.output_activation, &self.weight, &self.bias]
            .into_iter()
            .flatten()
            .any(|s| s.options.get("fake_quant").is_some())
    }

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

/// How a module rule matches op locations.
#[derive(Clone, Debug)]
pub enum ModuleMatch {
    /// The module and everything inside it (`features` matches `features` and `features.0.conv`):
    /// PT2E's `set_module_name`.
    Prefix,
    /// Exactly this location.
    Exact,
    /// A full match of the location.
    Regex(regex_lite::Regex),
}

/// Which ops a configuration applies to.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Ops in a module, by location.
    Module { name: String, matching: ModuleMatch },
    /// Ops of this kind, outside every module-name scope.
    OperatorType(String),
    /// Everything outside every module-name scope.
    Global,
}

/// A quantizer: configurations in priority order (module names, then operator types, then
/// global). A `None` config keeps matching ops in float.
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
        let mut specs = SpecTable::new(&module.qspecs, &self.spec_names);
        let mut changed = false;
        for graph in &mut module.graphs {
            changed |= convert_scalars_to_constants(graph);
            let annotated_before = graph.ops().filter(|&op| graph.annotation(op).is_some()).count();
            let mut cx = Annotator { graph, specs: &mut specs };
            for (scope, config) in &self.configs {
                let filter = |g: &Graph, op: OpId| in_scope(g, op, scope, &self.configs);
                cx.run_patterns(config.as_ref(), &filter);
            }
            cx.propagate();
            changed |= cx.graph.ops().filter(|&op| cx.graph.annotation(op).is_some()).count() != annotated_before;
        }
        module.qspecs = specs.into_named();
        Ok(changed)
    }
}

/// Whether `op` falls under `scope`, given every scope of the quantizer (operator-type and
/// global configs exclude ops inside any module-name scope, as PT2E's filters do).
fn in_scope(g: &Graph, op: OpId, scope: &Scope, all: &[(Scope, Option<QuantizationConfig>)]) -> bool {
    let loc = g.loc(op).unwrap_or_default();
    let inside = |name: &str, matching: &ModuleMatch| match matching {
        ModuleMatch::Prefix => loc == name || loc.strip_prefix(name).is_some_and(|rest| rest.starts_with('.')),
        ModuleMatch::Exact => loc == name,
        ModuleMatch::Regex(re) => re.is_match(loc),
    };
    let in_named_module =
        || all.iter().any(|(s, _)| matches!(s, Scope::Module { name, matching } if inside(name, matching)));
    match scope {
        Scope::Module { name, matching } => inside(name, matching),
        Scope::OperatorType(t) => g.op(op).def().name == t && !in_named_module(),
        Scope::Global => !in_named_module(),
    }
}

/// Named specs of the module plus the ones annotation adds, deduplicated by content.
pub(crate) struct SpecTable<'q> {
    named: Vec<NamedQSpec>,
    preferred: &'q [(String, QSpec)],
}

impl<'q> SpecTable<'q> {
    pub(crate) fn new(existing: &[NamedQSpec], preferred: &'q [(String, QSpec)]) -> Self {
        SpecTable { named: existing.to_vec(), preferred }
    }

    /// The index of a named spec equal to `spec`, adding one called by its preferred name, or
    /// `base` (then `base_N`).
    pub(crate) fn intern(&mut self, spec: &QSpec, base: &str) -> SpecRef {
        if let Some(i) = self.named.iter().position(|n| &n.spec == spec) {
            return SpecRef::Named(i);
        }
        let base = self.preferred.iter().find(|(_, s)| s == spec).map_or(base, |(n, _)| n.as_str());
        let taken = |n: &str| self.named.iter().any(|q| q.name == n);
        let name = if taken(base) {
            (1..).map(|i| format!("{base}_{i}")).find(|n| !taken(n)).unwrap_or_default()
        } else {
            base.to_string()
        };
        self.named.push(NamedQSpec { name, spec: spec.clone(), span: crate::diag::Span::NONE });
        SpecRef::Named(self.named.len() - 1)
    }

    pub(crate) fn into_named(self) -> Vec<NamedQSpec> {
        self.named
    }
}

/// XNNPACK's `transform_for_annotation`: a scalar operand of `add`/`mul` becomes an f32
/// constant so it can be observed and quantized (`x * 2` gets an int8 constant).
fn convert_scalars_to_constants(g: &mut Graph) -> bool {
    let kinds = ["add", "mul", "add.scalar", "mul.scalar", "const"].map(OpKind::from_name);
    let [Some(add), Some(mul), Some(add_scalar), Some(mul_scalar), Some(constant)] = kinds else {
        return false;
    };
    let mut changed = false;
    for op in g.op_ids() {
        let kind = g.op(op).kind;
        let tensor_kind = match kind {
            k if k == add_scalar => add,
            k if k == mul_scalar => mul,
            _ => continue,
        };
        let x = g.op(op).operands[0];
        let alpha = g.attr(op, "alpha").and_then(Attr::as_float).unwrap_or(1.0);
        let Some(other) = g.attr(op, "other").and_then(Attr::as_float) else { continue };
        // `alpha` has no equivalent in the tensor form here, and only float32 is rewritten.
        if alpha != 1.0 || g.value_type(x).dtype != DType::F32 {
            continue;
        }
        let value = Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), other as f32));
        let const_attrs = g.intern_attrs(constant.def().complete_attrs(vec![Some(Attr::Tensor(Arc::new(value)))]));
        let span = g.op(op).span;
        let name = g.fresh_name("_tensor_constant");
        let result = ResultSpec { name: &name, ty: TensorType::fixed(DType::F32, &[]), span };
        let Ok(c) = g.create_op(constant, &[], const_attrs, vec![result], span) else { continue };
        g.insert_before(op, c);
        let Some(c_value) = g.op(c).result(0) else { continue };
        let attrs = g.intern_attrs(tensor_kind.def().complete_attrs(vec![]));
        g.rewrite_op(op, tensor_kind, &[x, c_value], attrs);
        changed = true;
    }
    changed
}

/// The op kinds that share their input's observer (PT2E's `_is_share_obs_or_fq_op`).
/// `relu6` is not among them (`F.relu6` exports as `aten.relu6`, which ExecuTorch does not list;
/// `nn.ReLU6` exports as `hardtanh`, which it does), and `squeeze` shares only in its one-dim
/// form (`aten.squeeze.dim`): see [`shares_observer`].
pub const SHARE_OBSERVER_OPS: &[&str] = &[
    "relu",
    "hardtanh",
    "max_pool2d",
    "mean",
    "permute",
    "transpose",
    "squeeze",
    "adaptive_avg_pool2d",
    "view",
    "reshape",
    "slice",
    "flatten",
    "dropout",
];

/// Whether `op` shares its input's observer under XNNPACK's propagation.
fn shares_observer(g: &Graph, op: OpId) -> bool {
    let name = g.op(op).def().name;
    match name {
        "squeeze" => g.attr(op, "dims").and_then(Attr::as_ints).is_some_and(|d| d.len() == 1),
        _ => SHARE_OBSERVER_OPS.contains(&name),
    }
}

struct Annotator<'a, 'q> {
    graph: &'a mut Graph,
    specs: &'a mut SpecTable<'q>,
}

type Filter<'f> = dyn Fn(&Graph, OpId) -> bool + 'f;

impl Annotator<'_, '_> {
    fn name_of(&self, op: OpId) -> &'static str {
        self.graph.op(op).def().name
    }

    fn annotated(&self, op: OpId) -> bool {
        self.graph.annotation(op).is_some()
    }

    /// The single user op of `op`'s result, if it has exactly one use.
    fn single_user(&self, op: OpId) -> Option<OpId> {
        let r = self.graph.op(op).result(0)?;
        match self.graph.uses(r) {
            [u] => match u.user {
                crate::ir::graph::User::Op(user) => Some(user),
                crate::ir::graph::User::Output => None,
            },
            _ => None,
        }
    }

    fn named(&mut self, spec: &Option<QSpec>, base: &str) -> SpecRef {
        match spec {
            Some(s) => self.specs.intern(s, base),
            None => SpecRef::None,
        }
    }

    fn set(&mut self, op: OpId, inputs: Vec<SpecRef>, output: Option<SpecRef>) {
        self.graph.extra_mut(op).annotation = Some(Annotation { inputs, output });
    }

    /// Input, weight and bias specs of a linear or conv.
    fn weighted_inputs(&mut self, op: OpId, config: &QuantizationConfig, weight_axis: i64) -> Vec<SpecRef> {
        let mut weight = config.weight.clone();
        if let Some(w) = weight.as_mut().filter(|w| w.qscheme.is_per_channel()) {
            w.ch_axis = Some(weight_axis);
        }
        let base = if weight_axis == 0 { "weight".to_string() } else { format!("weight_axis{weight_axis}") };
        let mut inputs = vec![self.named(&config.input_activation, "act"), self.named(&weight, &base)];
        if self.graph.op(op).operands.len() > 2 {
            inputs.push(self.named(&config.bias, "bias"));
        }
        inputs
    }

    fn run_patterns(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        let none = QuantizationConfig { input_activation: None, output_activation: None, weight: None, bias: None };
        let config = config.unwrap_or(&none);
        let quantized = config.input_activation.is_some() || config.weight.is_some();
        let dynamic = is_dynamic(config);
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
            for op in self.graph.op_ids() {
                if !filter(self.graph, op) || self.annotated(op) {
                    continue;
                }
                if quantized {
                    self.apply(pattern, op, config, filter);
                } else if pattern.anchors(self.name_of(op)) {
                    // A `None` config claims the op so later configs leave it in float.
                    self.set(op, vec![], None);
                }
            }
        }
    }

    fn apply(&mut self, pattern: Pattern, op: OpId, config: &QuantizationConfig, filter: &Filter<'_>) {
        let name = self.name_of(op);
        // No output spec at all when the config has none (dynamic configs), as in PT2E.
        let out =
            |this: &mut Self| config.output_activation.as_ref().map(|_| this.named(&config.output_activation, "act"));
        match pattern {
            Pattern::ConvBnRelu | Pattern::ConvBn | Pattern::ConvTransposeBnRelu | Pattern::ConvTransposeBn => {
                let transposed = matches!(pattern, Pattern::ConvTransposeBnRelu | Pattern::ConvTransposeBn);
                let anchor_ok =
                    if transposed { name == "conv_transpose2d" } else { matches!(name, "conv1d" | "conv2d") };
                if !anchor_ok {
                    return;
                }
                // PT2E matches `F.batch_norm(training=True)` with `ignore_literals=True`: an
                // inference batch norm matches too (fuse-conv-bn-qat then makes it a training one).
                let Some(bn) = self.single_user(op).filter(|&u| self.name_of(u) == "batch_norm") else { return };
                let output = match pattern {
                    Pattern::ConvBnRelu | Pattern::ConvTransposeBnRelu => {
                        match self.single_user(bn).filter(|&u| self.name_of(u) == "relu") {
                            Some(relu) => relu,
                            None => return,
                        }
                    }
                    _ => bn,
                };
                // The partition PT2E checks is the conv (with its parameters); the output op
                // is annotated whatever it had.
                if !filter(self.graph, op) {
                    return;
                }
                // The weight spec keeps axis 0 even for a transposed conv: unlike the plain
                // conv_transpose pattern, PT2E's conv-bn annotator does not move it.
                let inputs = self.weighted_inputs(op, config, 0);
                self.set(op, inputs, None);
                let o = out(self);
                self.set(output, vec![], o);
            }
            Pattern::LinearRelu | Pattern::ConvRelu => {
                let anchor_ok = match pattern {
                    Pattern::LinearRelu => name == "linear",
                    _ => matches!(name, "conv1d" | "conv2d") || (name == "conv_transpose2d" && self.groups(op) == 1),
                };
                let Some(relu) = self.single_user(op).filter(|&u| self.name_of(u) == "relu") else { return };
                if !anchor_ok || self.annotated(relu) || !filter(self.graph, relu) {
                    return;
                }
                let axis = if name == "conv_transpose2d" { 1 } else { 0 };
                let inputs = self.weighted_inputs(op, config, axis);
                self.set(op, inputs, None);
                let o = out(self);
                self.set(relu, vec![], o);
            }
            Pattern::Linear if name == "linear" => {
                let inputs = self.weighted_inputs(op, config, 0);
                let o = out(self);
                self.set(op, inputs, o);
            }
            Pattern::Conv if matches!(name, "conv1d" | "conv2d" | "conv_transpose2d") => {
                if name == "conv_transpose2d" && self.groups(op) != 1 {
                    return;
                }
                // Dynamic quantization takes 2-D convs that are not depthwise only.
                if is_dynamic(config) && (name == "conv1d" || self.is_depthwise(op)) {
                    return;
                }
                // A conv followed only by relu is left to the conv-relu pattern.
                if self.single_user(op).is_some_and(|u| self.name_of(u) == "relu") {
                    return;
                }
                let inputs = self.weighted_inputs(op, config, if name == "conv_transpose2d" { 1 } else { 0 });
                let o = out(self);
                self.set(op, inputs, o);
            }
            Pattern::AdaptiveAvgPool if name == "adaptive_avg_pool2d" => {
                let x = self.graph.op(op).operands[0];
                let input = if self.has_output_spec(x) {
                    SpecRef::Shared(EdgeOrValue::Value(x))
                } else {
                    self.named(&config.input_activation, "act")
                };
                self.set(op, vec![input], Some(SpecRef::Shared(EdgeOrValue::Edge { value: x, consumer: op })));
            }
            Pattern::AddRelu | Pattern::MulRelu | Pattern::Add | Pattern::Mul => {
                let want = if matches!(pattern, Pattern::AddRelu | Pattern::Add) { "add" } else { "mul" };
                if name != want || !self.binary_operands_ok(op) {
                    return;
                }
                let fused_relu = if matches!(pattern, Pattern::AddRelu | Pattern::MulRelu) {
                    match self
                        .single_user(op)
                        .filter(|&u| self.name_of(u) == "relu" && !self.annotated(u) && filter(self.graph, u))
                    {
                        Some(relu) => Some(relu),
                        None => return,
                    }
                } else {
                    None
                };
                let n = self.graph.op(op).operands.len();
                let inputs = (0..n).map(|_| self.named(&config.input_activation, "act")).collect();
                let o = out(self);
                match fused_relu {
                    Some(relu) => {
                        self.set(op, inputs, None);
                        self.set(relu, vec![], o);
                    }
                    None => self.set(op, inputs, o),
                }
            }
            Pattern::Cat if name == "cat" => {
                let operands = self.graph.op(op).operands.to_vec();
                let Some(&first) = operands.first() else { return };
                let source = operands.iter().copied().find(|&v| self.traces_to_output_spec(v)).unwrap_or(first);
                let shared = SpecRef::Shared(EdgeOrValue::Edge { value: source, consumer: op });
                let inputs = operands
                    .iter()
                    .map(|&v| if v == source { self.named(&config.input_activation, "act") } else { shared.clone() })
                    .collect();
                self.set(op, inputs, Some(shared));
            }
            _ => {}
        }
    }

    fn groups(&self, op: OpId) -> i64 {
        self.graph.attr(op, "groups").and_then(Attr::as_int).unwrap_or(1)
    }

    /// A grouped conv with one input channel per group.
    fn is_depthwise(&self, op: OpId) -> bool {
        let Some(&weight) = self.graph.op(op).operands.get(1) else { return false };
        let per_group = self.graph.value_type(weight).shape.get(1).copied();
        self.groups(op) > 1 && per_group == Some(crate::ir::Dim::Known(1))
    }

    /// `add`/`mul` operands must be float32, and a constant scalar operand must fit histc's range.
    fn binary_operands_ok(&self, op: OpId) -> bool {
        self.graph.op(op).operands.iter().all(|&v| {
            if self.graph.value_type(v).dtype != DType::F32 {
                return false;
            }
            let Some(producer) = self.graph.producer(v) else { return true };
            match self.graph.attr(producer, "value").and_then(Attr::as_tensor) {
                Some(t) if t.len() == 1 => t.to_f64_array().iter().all(|x| x.abs() <= 3.402_823_5e15),
                _ => true,
            }
        })
    }

    /// Whether `v` is produced by an op whose annotation has an output spec.
    fn has_output_spec(&self, v: ValueId) -> bool {
        self.graph
            .producer(v)
            .and_then(|p| self.graph.annotation(p))
            .is_some_and(|a| a.output.as_ref().is_some_and(|o| *o != SpecRef::None))
    }

    /// Through share-observer ops back to an annotated output (executorch's cat source rule).
    fn traces_to_output_spec(&self, mut v: ValueId) -> bool {
        loop {
            if self.has_output_spec(v) {
                return true;
            }
            match self.graph.producer(v) {
                Some(p) if shares_observer(self.graph, p) => v = self.graph.op(p).operands[0],
                _ => return false,
            }
        }
    }

    /// `propagate_annotation`: share-observer ops inherit their input's output spec.
    fn propagate(&mut self) {
        for op in self.graph.op_ids() {
            if !shares_observer(self.graph, op) || self.annotated(op) {
                continue;
            }
            let prev = self.graph.op(op).operands[0];
            if !self.has_output_spec(prev) {
                continue;
            }
            let shared = SpecRef::Shared(EdgeOrValue::Value(prev));
            self.set(op, vec![shared.clone()], Some(shared));
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
    /// The op a pattern is anchored on (what a `None` config claims).
    fn anchors(self, op: &str) -> bool {
        match self {
            Pattern::LinearRelu | Pattern::Linear => op == "linear",
            Pattern::ConvRelu | Pattern::Conv => matches!(op, "conv1d" | "conv2d" | "conv_transpose2d"),
            Pattern::ConvBnRelu | Pattern::ConvBn => matches!(op, "conv1d" | "conv2d"),
            Pattern::ConvTransposeBnRelu | Pattern::ConvTransposeBn => op == "conv_transpose2d",
            Pattern::AdaptiveAvgPool => op == "adaptive_avg_pool2d",
            Pattern::AddRelu | Pattern::Add => op == "add",
            Pattern::MulRelu | Pattern::Mul => op == "mul",
            Pattern::Cat => op == "cat",
        }
    }
}

/// Whether the config quantizes activations dynamically (`get_symmetric_quantization_config(is_dynamic=True)`).
fn is_dynamic(config: &QuantizationConfig) -> bool {
    config.input_activation.as_ref().is_some_and(|s| s.dynamic)
}

/// The built-in quantizers `--quantizer` names.
pub const QUANTIZER_NAMES: &[&str] =
    &["xnnpack", "xnnpack-per-tensor", "xnnpack-dynamic", "xnnpack-qat", "xnnpack-qat-per-tensor", "x86", "x86-qat"];

/// A diagnostic for an unknown quantizer name.
pub fn unknown_quantizer(name: &str) -> Diag {
    Diag::error(format!("unknown quantizer `{name}`")).help(crate::diag::suggest(name, QUANTIZER_NAMES.iter().copied()))
}
