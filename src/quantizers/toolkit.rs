//! The annotator toolkit every quantizer is written with: the configuration vocabulary (PT2E's
//! `QuantizationConfig`, and the scopes a configuration applies to), the table that names the
//! specs annotations use, and [`Annotator`], which reads one graph and writes annotations
//! through its [`Rewriter`].
//!
//! Requires: a verified module. [`annotate_graphs`] leaves every spec an annotation names in
//! `Module::qspecs`, equal specs under one name.

use crate::diag::{Diagnostics, Span};
use crate::ir::attr::{Attr, Dict};
use crate::ir::graph::{Graph, Module, OpId, ValueId};
use crate::ir::matching::sole_user;
use crate::ir::quant::{Annotation, NamedQSpec, QScheme, QSpec, SpecRef};
use crate::ir::rewriter::Rewriter;
use crate::ir::DType;
use crate::ops::OpKind;
use crate::quant::observer::FakeQuant;

/// PT2E's `QuantizationConfig`: the specs one configuration gives to an op's pieces.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizationConfig {
    pub input_activation: Option<QSpec>,
    pub output_activation: Option<QSpec>,
    pub weight: Option<QSpec>,
    pub bias: Option<QSpec>,
}

impl QuantizationConfig {
    /// Whether this is a QAT configuration (PT2E's `is_qat`): its specs fake-quantize.
    pub fn is_qat(&self) -> bool {
        [&self.input_activation, &self.output_activation, &self.weight, &self.bias]
            .into_iter()
            .flatten()
            .any(|s| s.options.get("fake_quant").is_some())
    }

    /// Whether activations are quantized dynamically (`get_symmetric_quantization_config(is_dynamic=True)`).
    pub fn is_dynamic(&self) -> bool {
        self.input_activation.as_ref().is_some_and(|s| s.dynamic)
    }
}

/// The observer eps every stock config passes.
pub const EPS: f64 = 1.0 / 4096.0;

/// A stock config's spec: the given range, scheme and observer, with eps [`EPS`].
pub(crate) fn spec(
    dtype: DType,
    qmin: i64,
    qmax: i64,
    qscheme: QScheme,
    ch_axis: Option<i64>,
    dynamic: bool,
    observer: &str,
) -> QSpec {
    let mut options = Dict::new();
    options.insert("eps", Attr::Float(EPS));
    QSpec { dtype, qmin, qmax, qscheme, ch_axis, dynamic, observer: observer.to_string(), options, fixed: None }
}

/// `spec` observed by a QAT fake-quantize module of kind `fake_quant`.
pub(crate) fn fake_quantized(mut spec: QSpec, fake_quant: FakeQuant) -> QSpec {
    spec.options.insert("fake_quant", Attr::Str(fake_quant.name().into()));
    spec
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

impl ModuleMatch {
    /// Whether an op located at `loc` is inside the module `name`.
    pub fn contains(&self, name: &str, loc: &str) -> bool {
        match self {
            ModuleMatch::Prefix => loc == name || loc.strip_prefix(name).is_some_and(|rest| rest.starts_with('.')),
            ModuleMatch::Exact => loc == name,
            ModuleMatch::Regex(re) => re.is_match(loc),
        }
    }
}

/// Which ops a configuration applies to.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Ops in a module, by location.
    Module { name: String, matching: ModuleMatch },
    /// Ops of this kind (each quantizer says how it treats module-name scopes).
    OperatorType(OpKind),
    /// Everything (each quantizer says how it treats module-name scopes).
    Global,
}

/// Named specs of the module plus the ones annotation adds, deduplicated by content.
struct SpecTable<'q> {
    named: Vec<NamedQSpec>,
    preferred: &'q [(String, QSpec)],
}

impl<'q> SpecTable<'q> {
    fn new(existing: &[NamedQSpec], preferred: &'q [(String, QSpec)]) -> Self {
        SpecTable { named: existing.to_vec(), preferred }
    }

    /// The index of a named spec equal to `spec`, adding one called by its preferred name, or
    /// `base` (then `base_N`).
    fn intern(&mut self, spec: &QSpec, base: &str) -> SpecRef {
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
        self.named.push(NamedQSpec { name, spec: spec.clone(), span: Span::NONE });
        SpecRef::Named(self.named.len() - 1)
    }
}

/// Runs `annotate_graph` over an [`Annotator`] of each graph of `module` in turn, all sharing one
/// spec table (specs of `preferred` are named as there), then stores the table's specs in
/// `module.qspecs`. Returns whether any call reported a change.
pub(crate) fn annotate_graphs(
    module: &mut Module,
    preferred: &[(String, QSpec)],
    mut annotate_graph: impl FnMut(Annotator<'_, '_>) -> Result<bool, Diagnostics>,
) -> Result<bool, Diagnostics> {
    let mut specs = SpecTable::new(&module.qspecs, preferred);
    let mut changed = false;
    for gi in 0..module.graphs.len() {
        changed |= annotate_graph(Annotator { rw: Rewriter::new(module, gi), specs: &mut specs })?;
    }
    module.qspecs = specs.named;
    Ok(changed)
}

/// One graph being annotated: what quantizers ask about its ops, and the one way they write
/// annotations.
pub(crate) struct Annotator<'m, 'q> {
    /// The graph (it dereferences to it) and the changes a quantizer makes before annotating.
    pub(crate) rw: Rewriter<'m>,
    specs: &'m mut SpecTable<'q>,
}

impl Annotator<'_, '_> {
    pub(crate) fn graph(&self) -> &Graph {
        &self.rw
    }

    pub(crate) fn kind(&self, op: OpId) -> OpKind {
        self.rw.op(op).kind()
    }

    pub(crate) fn annotated(&self, op: OpId) -> bool {
        self.rw.annotation(op).is_some()
    }

    /// Whether `op`'s annotation has an output spec other than `none`.
    pub(crate) fn has_output_spec(&self, op: OpId) -> bool {
        self.rw.annotation(op).is_some_and(|a| a.output.as_ref().is_some_and(|o| *o != SpecRef::None))
    }

    /// The first result of `op`.
    pub(crate) fn result(&self, op: OpId) -> Option<ValueId> {
        self.rw.op(op).result(0)
    }

    /// The one op reading `op`'s result, when it has exactly one use and that is not an output.
    pub(crate) fn single_user(&self, op: OpId) -> Option<OpId> {
        sole_user(&self.rw, self.result(op)?).map(|(user, _)| user)
    }

    /// `spec` as a reference to a named spec (named `base` if new), or `none` when absent.
    pub(crate) fn named(&mut self, spec: &Option<QSpec>, base: &str) -> SpecRef {
        match spec {
            Some(s) => self.specs.intern(s, base),
            None => SpecRef::None,
        }
    }

    /// Annotates `op` (replacing any annotation it had).
    pub(crate) fn set(&mut self, op: OpId, inputs: Vec<SpecRef>, output: Option<SpecRef>) {
        self.rw.update(op).set_annotation(Some(Annotation { inputs, output }));
    }
}
