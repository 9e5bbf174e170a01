//! The `x86` quantizer: torchao 0.18's `X86InductorQuantizer` with
//! `get_default_x86_inductor_quantization_config()` — post-training, static, or QAT (reference
//! `../shared/reference/pt2e.md` §4.2; source
//! `torchao/quantization/pt2e/quantizer/x86_inductor_quantizer.py`).
//!
//! **Specs.** Activations uint8 in [0, 255] (or [0, 127] with `reduce_range`), per-tensor
//! affine, histogram observer; weights int8 in [-128, 127], per-channel symmetric on axis 0
//! (scale = amax / 127.5), per-channel min/max observer; both with eps 2^-12; bias in float.
//!
//! **Recipe** (Intel's IPEX recipe): conv and linear get *input* annotations only (activation,
//! weight, `none` for a bias) and no output spec — their outputs are quantized only where a
//! quantized consumer annotates its input edge. Per configuration, in this order, each pattern
//! over the whole graph, an op claimed by an earlier pattern or configuration being left alone:
//! 1. conv2d + add + relu; conv2d + add (the conv must have a single user; the add's other
//!    operand gets the activation spec);
//! 2. conv + unary: conv2d with relu, hardtanh, hardswish, relu6, silu; conv1d with relu;
//! 3. conv2d alone (conv1d alone is not quantized);
//! 4. linear + add + relu; linear + add (single-user linear; the add is claimed but nothing
//!    on it is quantized); linear + relu, tanh or gelu; linear alone;
//! 5. matmul (every operand gets the activation spec) — not a default-quantizable op, so the
//!    global configuration never claims it (an operator-type or module-name one does);
//! 6. mul of two tensors of the same shape (both operands quantized);
//! 7. propagation over the int8-in-int8-out ops max_pool2d, cat, avg_pool2d,
//!    adaptive_avg_pool2d and flatten: an op's input is annotated only if every input comes
//!    from a quantized pattern (cat: first operand gets the activation spec, the others
//!    `shared(%in0 -> %cat)`); flatten only when it has no users or some user is a
//!    quantizable op.
//!
//! After all configurations, each int8-in-int8-out op annotated by step 7 gets the output
//! `shared(%in0 -> %op)`: one observer for its input and its output.
//!
//! **Priority and filters.** Module-name configurations (in the order set), then operator-type
//! ones, then the global one — PT2E's three dictionaries. A pattern (the list of ops it
//! claims) passes a module-name filter if every op is inside the module (by `loc`), an
//! operator-type filter if exactly one op is of that type, and the global filter if exactly one
//! op is in `default_quantizable_ops` (conv1d, conv2d, linear, mul and the five propagation
//! ops). Unlike XNNPACK's filters, the later filters do not exclude ops inside configured
//! modules: an op a module's configuration left unclaimed can be claimed by the global one. A
//! `None` configuration claims its patterns with an empty annotation (`quant[]`), which keeps
//! them in float.
//!
//! **Which ops are "quantized pattern outputs"** (PT2E's `_is_output_of_quantized_pattern`) is
//! tracked while annotating; an op annotated before the pass (by hand or an earlier run) counts
//! as one when its annotation has a non-`none` output spec. That keeps the pass idempotent.
//!
//! **QAT** (`get_default_x86_inductor_quantization_config(is_qat=True)`, `--quantizer x86-qat`):
//! the same ranges with fused fake-quantize observers, and before the recipe above the four QAT
//! patterns on conv2d → batch_norm (+ add + relu, + add, + unary, alone), whose last op gets
//! the output spec; they also run for a `None` configuration, as in PT2E.
//!
//! **Not mirrored.** Dynamic quantization (`is_dynamic`) is left out, and so is
//! `get_x86_inductor_linear_dynamic_fp16_config`. PT2E
//! finds patterns through `source_fn_stack`/`nn_module_stack` (module types and functions); qc
//! matches op kinds, which is what a strict export of `nn` modules gives. So qc also matches
//! where PT2E does not: `torch.relu(conv(x))` (PT2E matches `nn.ReLU` and `F.relu`, not
//! `torch.relu`) and, with non-strict export, functional activations. `add.scalar` and
//! `mul.scalar` never match (PT2E fails on a conv/linear + scalar add, and skips a scalar mul).
//! A module called twice (one partition with two outputs in PT2E) is two independent ops here.

use rustc_hash::FxHashSet;

use super::toolkit::{annotate_graphs, fake_quantized, spec, Annotator, ModuleMatch, QuantizationConfig, Scope};
use crate::diag::Diagnostics;
use crate::ir::graph::{Graph, Module, OpId, User, ValueId};
use crate::ir::matching::{ops_of, users_of, ProgramOrder};
use crate::ir::quant::{EdgeOrValue, QScheme, SpecRef};
use crate::ir::DType;
use crate::ops::{self, OpKind};
use crate::quant::observer::FakeQuant;

/// The int8-in-int8-out ops (PT2E's `int8_in_int8_out_ops` = `propagation_quantizable_ops`).
pub const INT8_IN_INT8_OUT_OPS: &[OpKind] =
    &[ops::MAX_POOL2D, ops::CAT, ops::AVG_POOL2D, ops::ADAPTIVE_AVG_POOL2D, ops::FLATTEN];

/// Ops an operator-type configuration may name (`quantizable_ops`): the default ones, then
/// matmul.
pub const QUANTIZABLE_OPS: &[OpKind] = &[
    ops::MAX_POOL2D,
    ops::CAT,
    ops::AVG_POOL2D,
    ops::ADAPTIVE_AVG_POOL2D,
    ops::FLATTEN,
    ops::CONV1D,
    ops::CONV2D,
    ops::LINEAR,
    ops::MUL,
    ops::MATMUL,
];

/// Ops the default recipe quantizes (`default_quantizable_ops`): the global filter, which is
/// [`QUANTIZABLE_OPS`] without matmul.
pub const DEFAULT_QUANTIZABLE_OPS: &[OpKind] = QUANTIZABLE_OPS.split_at(QUANTIZABLE_OPS.len() - 1).0;

/// Conv + unary fusions, in PT2E's order.
const CONV_UNARY: &[(OpKind, OpKind)] = &[
    (ops::CONV2D, ops::RELU),
    (ops::CONV2D, ops::HARDTANH),
    (ops::CONV2D, ops::HARDSWISH),
    (ops::CONV2D, ops::RELU6),
    (ops::CONV2D, ops::SILU),
    (ops::CONV1D, ops::RELU),
];

/// Linear + unary fusions, in PT2E's order (its `LeakyReLU` has no qc op).
const LINEAR_UNARY: &[(OpKind, OpKind)] =
    &[(ops::LINEAR, ops::RELU), (ops::LINEAR, ops::TANH), (ops::LINEAR, ops::GELU)];

/// The PT2E operator a qc op kind is: `mul.scalar` is `aten.mul.Tensor` with a scalar operand.
fn target(kind: OpKind) -> OpKind {
    match kind {
        ops::MUL_SCALAR => ops::MUL,
        other => other,
    }
}

impl QuantizationConfig {
    /// `get_default_x86_inductor_quantization_config(is_qat=False, is_dynamic=False,
    /// reduce_range)`: uint8 affine activations in [0, 255] ([0, 127] with `reduce_range`),
    /// histogram observer; int8 per-channel symmetric weights in [-128, 127] on axis 0; float
    /// bias.
    pub fn x86_inductor(reduce_range: bool) -> QuantizationConfig {
        let qmax = if reduce_range { 127 } else { 255 };
        let act = spec(DType::U8, 0, qmax, QScheme::PerTensorAffine, None, false, "histogram");
        let weight = spec(DType::I8, -128, 127, QScheme::PerChannelSymmetric, Some(0), false, "per_channel_minmax");
        QuantizationConfig {
            input_activation: Some(act.clone()),
            output_activation: Some(act),
            weight: Some(weight),
            bias: None,
        }
    }

    /// `get_default_x86_inductor_quantization_config(is_qat=True)`: the same ranges, observed
    /// by `FusedMovingAvgObsFakeQuantize` over moving-average min/max observers (per channel
    /// for the weights).
    pub fn x86_inductor_qat() -> QuantizationConfig {
        let act = spec(DType::U8, 0, 255, QScheme::PerTensorAffine, None, false, "moving_average_minmax");
        let weight = spec(
            DType::I8,
            -128,
            127,
            QScheme::PerChannelSymmetric,
            Some(0),
            false,
            "moving_average_per_channel_minmax",
        );
        let act = fake_quantized(act, FakeQuant::Fused);
        QuantizationConfig {
            input_activation: Some(act.clone()),
            output_activation: Some(act),
            weight: Some(fake_quantized(weight, FakeQuant::Fused)),
            bias: None,
        }
    }
}

/// `X86InductorQuantizer`: configurations by module name, operator type and globally.
#[derive(Clone, Debug, Default)]
pub struct X86InductorQuantizer {
    /// In the order set. [`annotate`](Self::annotate) runs the module scopes, then the operator
    /// types, then the global configuration, whatever their order here.
    pub configs: Vec<(Scope, Option<QuantizationConfig>)>,
}

impl X86InductorQuantizer {
    /// A quantizer without configurations (annotates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// `X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())`:
    /// what `--quantizer x86` runs.
    pub fn with_default_config() -> Self {
        Self::new().set_global(Some(QuantizationConfig::x86_inductor(false)))
    }

    /// `set_global(get_default_x86_inductor_quantization_config(is_qat=True))`: what
    /// `--quantizer x86-qat` runs.
    pub fn with_qat_config() -> Self {
        Self::new().set_global(Some(QuantizationConfig::x86_inductor_qat()))
    }

    /// `set_global`; `None` removes the global configuration.
    pub fn set_global(mut self, config: Option<QuantizationConfig>) -> Self {
        self.set(Scope::Global, config);
        self
    }

    /// `set_module_name_qconfig`: ops whose location is `name` or inside it; `None` keeps them
    /// in float.
    pub fn set_module_name(mut self, name: &str, config: Option<QuantizationConfig>) -> Self {
        self.set(Scope::Module { name: name.to_string(), matching: ModuleMatch::Prefix }, config);
        self
    }

    /// `set_module_type_qconfig`/`set_function_type_qconfig`, which map to one of
    /// [`QUANTIZABLE_OPS`] (PT2E warns and ignores other types; this is an error).
    pub fn set_operator_type(mut self, op: &str, config: Option<QuantizationConfig>) -> Result<Self, String> {
        let Some(kind) = OpKind::from_name(op).map(target).filter(|k| QUANTIZABLE_OPS.contains(k)) else {
            let names: Vec<&str> = QUANTIZABLE_OPS.iter().map(|k| k.name()).collect();
            return Err(format!("the x86 quantizer cannot configure `{op}`; operator types are {}", names.join(", ")));
        };
        self.set(Scope::OperatorType(kind), config);
        Ok(self)
    }

    /// Setting a scope again replaces its configuration in place (PT2E's dictionaries).
    fn set(&mut self, scope: Scope, config: Option<QuantizationConfig>) {
        let same = |s: &Scope| match (s, &scope) {
            (Scope::Global, Scope::Global) => true,
            (Scope::OperatorType(a), Scope::OperatorType(b)) => a == b,
            (Scope::Module { name: a, .. }, Scope::Module { name: b, .. }) => a == b,
            _ => false,
        };
        match self.configs.iter_mut().find(|(s, _)| same(s)) {
            Some(slot) => *slot = (scope, config),
            None => self.configs.push((scope, config)),
        }
    }

    /// The configurations in the order PT2E applies them. A `None` global configuration is
    /// skipped (`if self.global_config:`); `None` module and operator ones claim their ops.
    fn stages(&self) -> Vec<(&Scope, Option<&QuantizationConfig>)> {
        let rank = |s: &Scope| match s {
            Scope::Module { .. } => 0,
            Scope::OperatorType(_) => 1,
            Scope::Global => 2,
        };
        let mut stages: Vec<_> = self
            .configs
            .iter()
            .filter(|(s, c)| !matches!(s, Scope::Global) || c.is_some())
            .map(|(s, c)| (s, c.as_ref()))
            .collect();
        stages.sort_by_key(|(s, _)| rank(s));
        stages
    }

    /// Annotates every graph of `module`; returns whether anything was annotated.
    pub fn annotate(&self, module: &mut Module) -> Result<bool, Diagnostics> {
        let stages = self.stages();
        annotate_graphs(module, &[], |cx| {
            let mut cx = X86Annotator::new(cx);
            for &(scope, config) in &stages {
                let filter = |g: &Graph, ops: &[OpId]| passes_filter(g, ops, scope);
                cx.annotate_with_config(config, &filter);
            }
            cx.annotate_outputs();
            Ok(cx.changed)
        })
    }
}

/// PT2E's filter functions over the ops of one pattern.
fn passes_filter(g: &Graph, ops: &[OpId], scope: &Scope) -> bool {
    let kind = |op: OpId| target(g.op(op).kind());
    match scope {
        Scope::Module { name, matching } => {
            ops.iter().all(|&op| g.loc(op).is_some_and(|loc| matching.contains(name, loc)))
        }
        Scope::OperatorType(t) => ops.iter().filter(|&&op| kind(op) == target(*t)).count() == 1,
        Scope::Global => ops.iter().filter(|&&op| DEFAULT_QUANTIZABLE_OPS.contains(&kind(op))).count() == 1,
    }
}

type Filter<'f> = dyn Fn(&Graph, &[OpId]) -> bool + 'f;

struct X86Annotator<'m, 'q> {
    cx: Annotator<'m, 'q>,
    /// Program position of every op (the graph does not change while annotating).
    order: ProgramOrder,
    /// Ops annotated before this run.
    preexisting: FxHashSet<OpId>,
    /// Ops this run annotated as the output of a quantized pattern.
    quantized_output: FxHashSet<OpId>,
    changed: bool,
}

impl<'m, 'q> X86Annotator<'m, 'q> {
    fn new(cx: Annotator<'m, 'q>) -> Self {
        let order = ProgramOrder::of(cx.graph());
        let preexisting = cx.graph().ops().filter(|&op| cx.annotated(op)).collect();
        X86Annotator { cx, order, preexisting, quantized_output: FxHashSet::default(), changed: false }
    }

    /// `_skip_annotate`: some op already claimed, or the pattern fails the filter.
    fn skip(&self, ops: &[OpId], filter: &Filter<'_>) -> bool {
        ops.iter().any(|&op| self.cx.annotated(op)) || !filter(self.cx.graph(), ops)
    }

    /// Ops of the given kinds, in program order.
    fn ops_of(&self, kinds: &[OpKind]) -> Vec<OpId> {
        ops_of(self.cx.graph(), kinds)
    }

    /// The distinct `kind` ops reading `v`, in program order.
    fn users_of(&self, v: ValueId, kind: OpKind) -> Vec<OpId> {
        let mut users: Vec<OpId> = users_of(self.cx.graph(), v, kind).collect();
        users.sort_by_key(|&op| self.order.position_or_last(op));
        users.dedup();
        users
    }

    /// `len(node.users)`: distinct readers, the function's return counting as one.
    fn user_count(&self, v: ValueId) -> usize {
        let mut users: Vec<User> = self.cx.graph().uses(v).iter().map(|u| u.user).collect();
        users.sort_by_key(|u| match u {
            User::Op(op) => self.order.position_or_last(*op),
            User::Output => usize::MAX,
        });
        users.dedup();
        users.len()
    }

    /// Sets an annotation from PT2E's `input_qspec_map` (value → spec; a later entry for the
    /// same value replaces the earlier one). Operands not in the map are `none`, or left out
    /// at the end.
    fn set(&mut self, op: OpId, map: Vec<(ValueId, SpecRef)>, output: Option<SpecRef>, quantized_output: bool) {
        let mut inputs: Vec<Option<SpecRef>> = self
            .cx
            .graph()
            .op(op)
            .operands()
            .iter()
            .map(|v| map.iter().rev().find(|(m, _)| m == v).map(|(_, s)| s.clone()))
            .collect();
        while matches!(inputs.last(), Some(None)) {
            inputs.pop();
        }
        let inputs = inputs.into_iter().map(|s| s.unwrap_or(SpecRef::None)).collect();
        self.cx.set(op, inputs, output);
        if quantized_output {
            self.quantized_output.insert(op);
        } else {
            self.quantized_output.remove(&op);
        }
        self.changed = true;
    }

    /// Claims the ops of one pattern: the configuration to annotate them with, or `None` when the
    /// pattern is skipped (`_skip_annotate`) or kept in float by a `None` configuration, which
    /// claims its ops.
    fn claim<'c>(
        &mut self,
        ops: &[OpId],
        config: Option<&'c QuantizationConfig>,
        filter: &Filter<'_>,
    ) -> Option<&'c QuantizationConfig> {
        if self.skip(ops, filter) {
            return None;
        }
        if config.is_none() {
            self.not_quantized(ops);
        }
        config
    }

    /// `_annotate_nodes_not_quantize`: claimed, nothing quantized.
    fn not_quantized(&mut self, ops: &[OpId]) {
        for &op in ops {
            self.set(op, Vec::new(), None, false);
        }
    }

    /// `_annotate_conv_node_helper` / `_annotate_linear_node_helper`: activation, weight and
    /// bias specs, no output spec.
    fn weighted(&mut self, op: OpId, config: &QuantizationConfig, quantized_output: bool) {
        let operands = self.cx.graph().op(op).operands().to_vec();
        let mut map = vec![
            (operands[0], self.cx.named(&config.input_activation, "act")),
            (operands[1], self.cx.named(&config.weight, "weight")),
        ];
        if let Some(&bias) = operands.get(2) {
            map.push((bias, self.cx.named(&config.bias, "bias")));
        }
        self.set(op, map, None, quantized_output);
    }

    /// Whether `v` comes from a quantized pattern (`_is_quantized_op_pt2e` of its producer).
    fn is_quantized(&self, v: ValueId) -> bool {
        let Some(p) = self.cx.graph().producer(v) else { return false };
        self.quantized_output.contains(&p) || (self.preexisting.contains(&p) && self.cx.has_output_spec(p))
    }

    /// `_annotate_with_config`: the fusion recipes, then propagation.
    fn annotate_with_config(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        // QAT graphs keep their batch norms (`_annotate_qat_conv2d_fusion_pattern`); PT2E runs
        // these patterns for a `None` configuration too.
        if config.is_none_or(QuantizationConfig::is_qat) {
            self.qat_conv2d_bn_binary(config, filter, true);
            self.qat_conv2d_bn_binary(config, filter, false);
            self.qat_conv2d_bn_unary(config, filter);
            self.qat_conv2d_bn(config, filter);
        }
        self.conv2d_binary(config, filter, true);
        self.conv2d_binary(config, filter, false);
        self.weighted_unary(CONV_UNARY, config, filter);
        self.weighted_alone(ops::CONV2D, config, filter);
        self.linear_binary(config, filter, true);
        self.linear_binary(config, filter, false);
        self.weighted_unary(LINEAR_UNARY, config, filter);
        self.weighted_alone(ops::LINEAR, config, filter);
        self.matmul(config, filter);
        self.mul(config, filter);
        self.propagate(config, filter);
    }

    /// `layer → add [→ relu]` chains whose layer (of `kind`) has the add as its only user, in
    /// program order of the layers: the binary patterns' candidates.
    fn binary_chains(&self, kind: OpKind, with_relu: bool) -> Vec<(OpId, OpId, Option<OpId>)> {
        let mut chains = Vec::new();
        for layer in self.ops_of(&[kind]) {
            let Some(layer_out) = self.cx.result(layer) else { continue };
            if self.user_count(layer_out) != 1 {
                continue;
            }
            for add in self.users_of(layer_out, ops::ADD) {
                let Some(add_out) = self.cx.result(add) else { continue };
                if with_relu {
                    chains.extend(self.users_of(add_out, ops::RELU).into_iter().map(|relu| (layer, add, Some(relu))));
                } else {
                    chains.push((layer, add, None));
                }
            }
        }
        chains
    }

    /// `conv2d → batch_norm` pairs, convs in program order (PT2E's partitions are by module
    /// type, so the batch norm's mode does not matter).
    fn conv2d_bn_pairs(&self) -> Vec<(OpId, OpId)> {
        let mut pairs = Vec::new();
        for conv in self.ops_of(&[ops::CONV2D]) {
            let Some(conv_out) = self.cx.result(conv) else { continue };
            pairs.extend(self.users_of(conv_out, ops::BATCH_NORM).into_iter().map(|bn| (conv, bn)));
        }
        pairs
    }

    /// The output spec of a QAT pattern's last op (PT2E annotates it until its QAT utilities
    /// can match the fused pattern otherwise).
    fn close_qat_pattern(&mut self, op: OpId, map: Vec<(ValueId, SpecRef)>, config: &QuantizationConfig) {
        let out = self.cx.named(&config.output_activation, "act");
        self.set(op, map, Some(out), true);
    }

    /// `_annotate_qat_conv2d_bn_binary_unary` (with `relu`) and `_annotate_qat_conv2d_bn_binary`:
    /// the batch norm's only user is the add; its other operand gets the activation spec.
    fn qat_conv2d_bn_binary(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>, with_relu: bool) {
        for (conv, bn) in self.conv2d_bn_pairs() {
            let Some(bn_out) = self.cx.result(bn) else { continue };
            if self.user_count(bn_out) != 1 {
                continue;
            }
            for add in self.users_of(bn_out, ops::ADD) {
                let operands = self.cx.graph().op(add).operands().to_vec();
                let extra = if operands[0] == bn_out { operands[1] } else { operands[0] };
                // `_get_input_idx_for_binary_node`: the other operand must be another value.
                if extra == bn_out {
                    continue;
                }
                let Some(add_out) = self.cx.result(add) else { continue };
                let unaries = if with_relu { self.users_of(add_out, ops::RELU) } else { Vec::new() };
                if with_relu && unaries.is_empty() {
                    continue;
                }
                for unary in unaries.into_iter().map(Some).chain((!with_relu).then_some(None)) {
                    let ops: Vec<OpId> = unary.into_iter().chain([add, bn, conv]).collect();
                    let Some(config) = self.claim(&ops, config, filter) else { continue };
                    self.weighted(conv, config, false);
                    self.set(bn, Vec::new(), None, false);
                    let act = self.cx.named(&config.input_activation, "act");
                    match unary {
                        Some(unary) => {
                            self.set(add, vec![(extra, act)], None, false);
                            self.close_qat_pattern(unary, Vec::new(), config);
                        }
                        None => self.close_qat_pattern(add, vec![(extra, act)], config),
                    }
                }
            }
        }
    }

    /// `_annotate_qat_conv2d_bn_unary`: conv2d → batch_norm → one of the conv unary ops.
    fn qat_conv2d_bn_unary(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        for &(_, unary_kind) in CONV_UNARY.iter().filter(|(anchor, _)| *anchor == ops::CONV2D) {
            for (conv, bn) in self.conv2d_bn_pairs() {
                let Some(bn_out) = self.cx.result(bn) else { continue };
                for unary in self.users_of(bn_out, unary_kind) {
                    let ops = [unary, bn, conv];
                    let Some(config) = self.claim(&ops, config, filter) else { continue };
                    self.weighted(conv, config, false);
                    self.set(bn, Vec::new(), None, false);
                    self.close_qat_pattern(unary, Vec::new(), config);
                }
            }
        }
    }

    /// `_annotate_qat_conv2d_bn`: conv2d → batch_norm, the batch norm's output quantized.
    fn qat_conv2d_bn(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        for (conv, bn) in self.conv2d_bn_pairs() {
            let ops = [bn, conv];
            let Some(config) = self.claim(&ops, config, filter) else { continue };
            self.weighted(conv, config, false);
            self.close_qat_pattern(bn, Vec::new(), config);
        }
    }

    /// `_annotate_conv2d_binary_unary` (with `relu`) and `_annotate_conv2d_binary`.
    fn conv2d_binary(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>, with_relu: bool) {
        for (conv, add, unary) in self.binary_chains(ops::CONV2D, with_relu) {
            let Some(conv_out) = self.cx.result(conv) else { continue };
            let operands = self.cx.graph().op(add).operands().to_vec();
            let extra = if operands[0] == conv_out { operands[1] } else { operands[0] };
            let ops: Vec<OpId> = unary.into_iter().chain([add, conv]).collect();
            let Some(config) = self.claim(&ops, config, filter) else { continue };
            self.weighted(conv, config, false);
            let act = self.cx.named(&config.input_activation, "act");
            self.set(add, vec![(extra, act)], None, unary.is_none());
            if let Some(unary) = unary {
                self.set(unary, Vec::new(), None, true);
            }
        }
    }

    /// A weighted op followed by a unary op (`_annotate_conv2d_unary`, `_annotate_linear_unary`):
    /// each (anchor, unary) kind pair in turn, anchors in program order. The anchor gets its
    /// input specs, the unary op closes the pattern.
    fn weighted_unary(&mut self, pairs: &[(OpKind, OpKind)], config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        for &(anchor_kind, unary_kind) in pairs {
            for anchor in self.ops_of(&[anchor_kind]) {
                let Some(anchor_out) = self.cx.result(anchor) else { continue };
                for unary in self.users_of(anchor_out, unary_kind) {
                    let ops = [unary, anchor];
                    let Some(config) = self.claim(&ops, config, filter) else { continue };
                    self.weighted(anchor, config, false);
                    self.set(unary, Vec::new(), None, true);
                }
            }
        }
    }

    /// The remaining ops of one weighted kind (`_annotate_conv2d`, `_annotate_linear`).
    fn weighted_alone(&mut self, kind: OpKind, config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        for op in self.ops_of(&[kind]) {
            if let Some(config) = self.claim(&[op], config, filter) {
                self.weighted(op, config, true);
            }
        }
    }

    /// `_annotate_linear_binary_unary`: linear + add + relu, then linear + add. The add is
    /// claimed without quantizing its other operand.
    fn linear_binary(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>, with_relu: bool) {
        for (linear, add, unary) in self.binary_chains(ops::LINEAR, with_relu) {
            let ops: Vec<OpId> = unary.into_iter().chain([add, linear]).collect();
            let Some(config) = self.claim(&ops, config, filter) else { continue };
            self.weighted(linear, config, false);
            self.set(add, Vec::new(), None, unary.is_none());
            if let Some(unary) = unary {
                self.set(unary, Vec::new(), None, true);
            }
        }
    }

    /// `_annotate_matmul`: every operand gets the activation spec.
    fn matmul(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        for op in self.ops_of(&[ops::MATMUL]) {
            let Some(config) = self.claim(&[op], config, filter) else { continue };
            let operands = self.cx.graph().op(op).operands().to_vec();
            let map = operands.into_iter().map(|v| (v, self.cx.named(&config.input_activation, "act"))).collect();
            self.set(op, map, None, true);
        }
    }

    /// `_annotate_mul_tensor`: a mul of two tensors of the same shape (`mul.scalar` is PT2E's
    /// mul with a scalar operand: claimed by a `None` configuration, else skipped).
    fn mul(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        for op in self.ops_of(&[ops::MUL, ops::MUL_SCALAR]) {
            let Some(config) = self.claim(&[op], config, filter) else { continue };
            let operands = self.cx.graph().op(op).operands().to_vec();
            if operands.len() != 2
                || self.cx.graph().value_type(operands[0]).shape != self.cx.graph().value_type(operands[1]).shape
            {
                continue;
            }
            let map = operands.into_iter().map(|v| (v, self.cx.named(&config.input_activation, "act"))).collect();
            self.set(op, map, None, true);
        }
    }

    /// `_annotate_propagation_quantizable_pattern` over the program.
    fn propagate(&mut self, config: Option<&QuantizationConfig>, filter: &Filter<'_>) {
        for op in self.ops_of(INT8_IN_INT8_OUT_OPS) {
            let Some(config) = self.claim(&[op], config, filter) else { continue };
            let operands = self.cx.graph().op(op).operands().to_vec();
            let Some(&first) = operands.first() else { continue };
            let kind = self.cx.kind(op);
            if kind == ops::CAT {
                if !operands.iter().all(|&v| self.is_quantized(v)) {
                    continue;
                }
                let mut map = vec![(first, self.cx.named(&config.input_activation, "act"))];
                let shared = SpecRef::Shared(EdgeOrValue::Edge { value: first, consumer: op });
                for &v in &operands[1..] {
                    if !map.iter().any(|(m, _)| *m == v) {
                        map.push((v, shared.clone()));
                    }
                }
                self.set(op, map, None, true);
                continue;
            }
            if kind == ops::FLATTEN && !self.flatten_feeds_quantizable(op) {
                continue;
            }
            if !self.is_quantized(first) {
                continue;
            }
            let act = self.cx.named(&config.input_activation, "act");
            self.set(op, vec![(first, act)], None, true);
        }
    }

    /// A flatten is annotated only if it has no users or some user is a quantizable op.
    fn flatten_feeds_quantizable(&self, op: OpId) -> bool {
        let Some(out) = self.cx.result(op) else { return true };
        let uses = self.cx.graph().uses(out);
        uses.is_empty()
            || uses
                .iter()
                .any(|u| matches!(u.user, User::Op(user) if QUANTIZABLE_OPS.contains(&target(self.cx.kind(user)))))
    }

    /// `_annotate_output_for_int8_in_int8_out_pattern`: the int8-in-int8-out ops this run
    /// quantized share one observer between their first input edge and their output.
    fn annotate_outputs(&mut self) {
        for op in self.ops_of(INT8_IN_INT8_OUT_OPS) {
            if !self.quantized_output.contains(&op) {
                continue;
            }
            let Some(first) = self.cx.graph().op(op).operand(0) else { continue };
            if let Some(annotation) = self.cx.rw.update(op).annotation_mut() {
                annotation.output = Some(SpecRef::Shared(EdgeOrValue::Edge { value: first, consumer: op }));
                self.changed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(body: &str) -> Module {
        let source = format!("module {{\n{body}\n}}\n");
        crate::syntax::parse_module(&source, None).unwrap_or_else(|d| panic!("{d:?}"))
    }

    fn annotation(m: &Module, name: &str) -> Option<String> {
        let g = &m.graphs[0];
        let op = g.producer(g.value_by_name(name).unwrap()).unwrap();
        g.annotation(op).map(|a| {
            let spec = |s: &SpecRef| match s {
                SpecRef::None => "none".to_string(),
                SpecRef::Named(i) => format!("@{}", m.qspecs[*i].name),
                SpecRef::Shared(_) => "shared".to_string(),
                other => format!("{other:?}"),
            };
            let inputs: Vec<String> = a.inputs.iter().map(spec).collect();
            match &a.output {
                Some(o) => format!("[{}] -> {}", inputs.join(", "), spec(o)),
                None => format!("[{}]", inputs.join(", ")),
            }
        })
    }

    const CONV_RELU_POOL: &str = "
  func @f(%x: f32[1,4,8,8], %w: f32[4,4,1,1]) -> (f32[1,4,4,4], f32[1,4,4,4]) {
    %c0 = conv2d(%x, %w) : f32[1,4,8,8] loc(\"a.conv\")
    %r0 = relu(%c0) : f32[1,4,8,8] loc(\"a.relu\")
    %p0 = max_pool2d(%r0) {kernel_size = [2, 2]} : f32[1,4,4,4] loc(\"b.pool\")
    %c1 = conv2d(%x, %w) : f32[1,4,8,8] loc(\"b.conv\")
    %p1 = max_pool2d(%c1) {kernel_size = [2, 2]} : f32[1,4,4,4] loc(\"b.pool2\")
    return %p0, %p1
  }";

    #[test]
    fn module_name_none_keeps_float_and_leaves_unclaimed_ops_to_global() {
        let mut m = module(CONV_RELU_POOL);
        let q = X86InductorQuantizer::with_default_config().set_module_name("a", None).set_module_name("b", None);
        assert!(q.annotate(&mut m).unwrap());
        // Module `a`'s conv+relu is claimed in float; so is everything in `b`.
        assert_eq!(annotation(&m, "c0").as_deref(), Some("[]"));
        assert_eq!(annotation(&m, "r0").as_deref(), Some("[]"));
        assert_eq!(annotation(&m, "p0").as_deref(), Some("[]"));
        assert_eq!(annotation(&m, "c1").as_deref(), Some("[]"));

        // With a config for `b` instead, `b.pool` (reading `a`'s relu, not yet quantized when
        // `b` is annotated) is left to the global configuration, which quantizes it.
        let mut m = module(CONV_RELU_POOL);
        let reduced = QuantizationConfig::x86_inductor(true);
        let q = X86InductorQuantizer::with_default_config().set_module_name("b", Some(reduced));
        q.annotate(&mut m).unwrap();
        assert_eq!(annotation(&m, "c1").as_deref(), Some("[@act, @weight]"));
        assert_eq!(annotation(&m, "p1").as_deref(), Some("[@act] -> shared"));
        assert_eq!(annotation(&m, "c0").as_deref(), Some("[@act_1, @weight]"));
        assert_eq!(annotation(&m, "p0").as_deref(), Some("[@act_1] -> shared"));
        assert_eq!(m.qspecs.iter().find(|q| q.name == "act").map(|q| q.spec.qmax), Some(127));
    }

    #[test]
    fn operator_type_configs_come_before_global() {
        let mut m = module(CONV_RELU_POOL);
        let q = X86InductorQuantizer::with_default_config().set_operator_type("conv2d", None).unwrap();
        q.annotate(&mut m).unwrap();
        // conv+relu has exactly one conv2d: claimed in float with its relu; the pools' inputs
        // are then not quantized.
        assert_eq!(annotation(&m, "c0").as_deref(), Some("[]"));
        assert_eq!(annotation(&m, "r0").as_deref(), Some("[]"));
        assert_eq!(annotation(&m, "c1").as_deref(), Some("[]"));
        assert_eq!(annotation(&m, "p0"), None);
        assert_eq!(annotation(&m, "p1"), None);
    }

    #[test]
    fn operator_types_must_be_quantizable_and_setting_twice_replaces() {
        assert!(X86InductorQuantizer::new().set_operator_type("relu", None).is_err());
        let q = X86InductorQuantizer::new()
            .set_global(None)
            .set_operator_type("matmul", None)
            .unwrap()
            .set_module_name("a", None)
            .set_operator_type("matmul", Some(QuantizationConfig::x86_inductor(false)))
            .unwrap();
        assert_eq!(q.configs.len(), 3);
        assert!(q.configs[1].1.is_some());
        let stages: Vec<_> = q.stages().into_iter().map(|(s, _)| format!("{s:?}")).collect();
        // A `None` global configuration is no stage; module names come first.
        assert_eq!(stages.len(), 2);
        assert!(stages[0].starts_with("Module"));
    }

    #[test]
    fn annotating_twice_changes_nothing() {
        let mut m = module(CONV_RELU_POOL);
        let q = X86InductorQuantizer::with_default_config();
        assert!(q.annotate(&mut m).unwrap());
        let first =
            format!("{:?}", m.graphs[0].ops().map(|op| m.graphs[0].annotation(op).cloned()).collect::<Vec<_>>());
        assert!(!q.annotate(&mut m).unwrap());
        let second =
            format!("{:?}", m.graphs[0].ops().map(|op| m.graphs[0].annotation(op).cloned()).collect::<Vec<_>>());
        assert_eq!(first, second);
    }
}
