//! The reference interpreter: evaluates a graph on concrete tensors with PyTorch's semantics.
//!
//! Ops run in program order; each op's kernel comes from its registry entry. A value is freed
//! right after its last use, so peak memory is the live activations plus the weights in use
//! (weights are read from the memory-mapped file when their `weight` op runs; from a module's
//! second run on, they are decoded once and kept with the module, see
//! [`crate::weights::WeightFile::shared`]: a large linear's weight is kept column-major instead
//! of row-major, so that its GEMM reads it without a strided repack). Identity ops
//! (`observer`, `contiguous`, `dropout`) pass their operand on without a copy. Kernels split
//! large ops across the rayon pool, but results are deterministic: every output element is
//! computed by one thread in a fixed order, with the same arithmetic whatever the split.

pub mod dataset;
pub mod io;
pub mod kernels;
pub mod memory;

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::diag::{Diag, Span};
use crate::ir::graph::{OpId, User, ValueId};
use crate::ir::{Graph, Module, TensorType};
use crate::ops::{self, Traits};
use crate::tensor::Tensor;
use crate::weights::Layout;
use kernels::KernelCx;

/// The most worker threads `--threads` accepts. Results are the same for any count, so more
/// threads than cores only cost memory and start-up; the cap stays far above the cores of any
/// machine qc runs on, and well below the per-user thread limits where thread creation fails
/// (a fixed number, so that a command line works the same on every machine).
pub const MAX_THREADS: usize = 256;

/// Parses `--threads`: a whole number up to [`MAX_THREADS`].
pub fn parse_threads(text: &str) -> Result<usize, String> {
    let n: usize = text.trim().parse().map_err(|_| format!("`{text}` is not a thread count"))?;
    if n > MAX_THREADS {
        return Err(format!(
            "{n} threads is more than the {MAX_THREADS} qc allows (results do not depend on the count)"
        ));
    }
    Ok(n)
}

/// What to keep besides the graph outputs.
#[derive(Default)]
pub struct RunOptions {
    /// Keep every intermediate value (by name), for debugging and numeric comparison.
    pub keep_intermediates: bool,
}

/// The outputs of one run, by the returned values' names, in return order.
pub struct RunResult {
    pub outputs: Vec<(String, Arc<Tensor>)>,
    /// Every op result, in program order (with [`RunOptions::keep_intermediates`]).
    pub intermediates: Vec<(String, Arc<Tensor>)>,
}

/// Called with each op that carries state across runs, and its operands: `observer` ops (their
/// statistics) and `batch_norm` ops (running statistics, updated in training mode). For an
/// observer the hook may return the tensor the op outputs instead of its input: a
/// fake-quantizing observer's. Calibration hooks in here.
pub type StatefulOpHook<'a> = dyn FnMut(OpId, &[&Tensor]) -> Result<Option<Tensor>, String> + 'a;

/// Checks `inputs` against the graph signature and orders them like the graph's inputs.
pub fn bind_inputs(graph: &Graph, mut inputs: FxHashMap<String, Tensor>) -> Result<Vec<Tensor>, Diag> {
    // An unknown name is most likely a typo of a missing one: report it first.
    let is_input = |name: &str| graph.inputs().iter().any(|&v| graph.value_name(v) == name);
    if let Some(extra) = inputs.keys().filter(|k| !is_input(k)).min() {
        let names: Vec<&str> = graph.inputs().iter().map(|&v| graph.value_name(v)).collect();
        let declared = graph.inputs().iter().map(|&v| graph.value(v).span()).reduce(Span::to).unwrap_or(graph.span());
        return Err(Diag::error(format!("`@{}` has no input named `{extra}`", graph.name()))
            .at(declared, "the inputs are declared here")
            .suggest(extra, names.iter().copied())
            .note(format!("its inputs: {}", names.iter().map(|n| format!("%{n}")).collect::<Vec<_>>().join(", "))));
    }
    let mut bound = Vec::with_capacity(graph.inputs().len());
    for &v in graph.inputs() {
        let name = graph.value_name(v);
        let ty = graph.value_type(v);
        let Some(t) = inputs.remove(name) else {
            return Err(Diag::error(format!("no data for input `%{name}` of `@{}`", graph.name()))
                .at(graph.value(v).span(), format!("expects {ty}"))
                .help(format!("pass it with `--input {name}=FILE.npy`")));
        };
        check_input(ty, &t).map_err(|m| {
            Diag::error(format!("input `%{name}`: {m}")).at(graph.value(v).span(), format!("declared {ty}"))
        })?;
        bound.push(t);
    }
    Ok(bound)
}

fn check_input(ty: &TensorType, t: &Tensor) -> Result<(), String> {
    if t.dtype() != ty.dtype {
        return Err(format!("the data is {} but the input is {}", t.dtype(), ty.dtype));
    }
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let actual = TensorType::fixed(t.dtype(), &shape);
    if !actual.compatible(ty) {
        return Err(format!("the data has shape {:?} but the input is {ty}", t.shape()));
    }
    Ok(())
}

/// Runs `graph` on `inputs` (ordered as the graph's inputs; see [`bind_inputs`]).
pub fn run_graph(
    module: &Module,
    graph: &Graph,
    inputs: Vec<Tensor>,
    options: &RunOptions,
    hook: Option<&mut StatefulOpHook<'_>>,
) -> Result<RunResult, Diag> {
    let mut hook = hook;
    let last_use = last_uses(graph);
    let mut values: FxHashMap<ValueId, Arc<Tensor>> = FxHashMap::default();
    for (&v, t) in graph.inputs().iter().zip(inputs) {
        values.insert(v, Arc::new(t));
    }
    let mut intermediates = Vec::new();
    let mut operand_refs: Vec<Arc<Tensor>> = Vec::new();
    for (position, op) in graph.ops().enumerate() {
        let data = graph.op(op);
        let def = data.def();
        operand_refs.clear();
        for &v in data.operands() {
            let t = values.get(&v).ok_or_else(|| internal(data.span(), "an operand has no value"))?;
            operand_refs.push(Arc::clone(t));
        }
        let operands: Vec<&Tensor> = operand_refs.iter().map(|t| &**t).collect();
        let mut replaced = None;
        if def.has(Traits::STATEFUL) {
            if let Some(hook) = hook.as_mut() {
                replaced = hook(op, &operands)
                    .map_err(|m| Diag::error(m).at(data.span(), format!("in this {}", def.name.replace('_', " "))))?;
            }
        }
        let results = match (replaced, shared_result(module, graph, op, &operand_refs)?) {
            (Some(t), _) if def.has(Traits::OBSERVER) => vec![Arc::new(t)],
            (_, Some(t)) => vec![t],
            _ => eval_op(module, graph, op, &operands)?.into_iter().map(Arc::new).collect(),
        };
        for (r, t) in data.results().zip(results) {
            if options.keep_intermediates {
                intermediates.push((graph.value_name(r).to_string(), Arc::clone(&t)));
            }
            values.insert(r, t);
        }
        drop(operands);
        operand_refs.clear();
        for &v in data.operands() {
            if last_use.get(&v) == Some(&position) {
                values.remove(&v);
            }
        }
    }
    let outputs = graph
        .outputs()
        .iter()
        .map(|&v| {
            let t = values.get(&v).ok_or_else(|| internal(graph.output_span(), "an output has no value"))?;
            Ok((graph.value_name(v).to_string(), Arc::clone(t)))
        })
        .collect::<Result<_, Diag>>()?;
    Ok(RunResult { outputs, intermediates })
}

/// Runs one op's kernel on `operands`, checking its results against the declared types.
pub fn eval_op(module: &Module, graph: &Graph, op: OpId, operands: &[&Tensor]) -> Result<Vec<Tensor>, Diag> {
    let data = graph.op(op);
    let def = data.def();
    let result_types: Vec<TensorType> = data.results().map(|r| graph.value_type(r).clone()).collect();
    check_result_memory(graph, op, operands, &result_types)?;
    let cx = KernelCx {
        def,
        inputs: operands,
        attrs: graph.attrs_of(data.attrs_id()),
        result_types: &result_types,
        weights: module.weights(),
    };
    let kernel =
        kernels::kernel(data.kind()).ok_or_else(|| internal(data.span(), &format!("`{}` has no kernel", def.name)))?;
    let results = kernel(&cx).map_err(|m| {
        let name = data.result(0).map(|r| graph.value_name(r)).unwrap_or(def.name);
        Diag::error(format!("`%{name} = {}` failed: {m}", def.name)).at(data.span(), "while running this op")
    })?;
    for (t, ty) in results.iter().zip(&result_types) {
        check_input(ty, t)
            .map_err(|m| internal(data.span(), &format!("result of `{}` disagrees with its type: {m}", def.name)))?;
    }
    Ok(results)
}

/// Checks that the results of `op` on these operands fit in the memory budget before its kernel
/// allocates them: their shapes are the type rule's on the operands' real shapes (the declared
/// types may have dynamic dims). An op whose rule rejects the real shapes is left to its
/// kernel, which reports the problem.
fn check_result_memory(graph: &Graph, op: OpId, operands: &[&Tensor], declared: &[TensorType]) -> Result<(), Diag> {
    let data = graph.op(op);
    let def = data.def();
    let actual: Vec<TensorType> = operands
        .iter()
        .map(|t| TensorType::fixed(t.dtype(), &t.shape().iter().map(|&d| d as u64).collect::<Vec<_>>()))
        .collect();
    let actual: Vec<&TensorType> = actual.iter().collect();
    let Ok(results) = def.infer(&actual, graph.attrs_of(data.attrs_id()), declared) else { return Ok(()) };
    let mut total = Some(0u64);
    let mut sized = Vec::with_capacity(results.len());
    for ty in &results {
        let Some(bytes) = memory::type_bytes(ty) else { return Ok(()) };
        total = total.zip(bytes).and_then(|(t, b)| t.checked_add(b));
        sized.push(ty.to_string());
    }
    memory::check(total, || format!("its result {}", sized.join(", "))).map_err(|m| {
        let name = data.result(0).map(|r| graph.value_name(r)).unwrap_or(def.name);
        Diag::error(format!("`%{name} = {}` cannot run: {m}", def.name))
            .at(data.span(), "this op")
            .help("raise the budget with `--max-memory SIZE` (default: 3/4 of physical memory), or use smaller shapes")
    })
}

/// The result of an op that needs no kernel call, shared instead of copied: a `weight` op's
/// tensor (decoded once per module, see [`crate::weights::WeightFile::shared`]) and the operand
/// of an identity op (`observer`, `contiguous`, `dropout`). `None` for every other op.
fn shared_result(
    module: &Module,
    graph: &Graph,
    op: OpId,
    operands: &[Arc<Tensor>],
) -> Result<Option<Arc<Tensor>>, Diag> {
    let data = graph.op(op);
    let def = data.def();
    let (Some(r), 1) = (data.result(0), data.results().count()) else { return Ok(None) };
    let t = match operands {
        [] if data.kind() == ops::WEIGHT => {
            let attrs = graph.attrs_of(data.attrs_id());
            let key = def.attr_index("key").and_then(|i| attrs.get(i)?.as_ref()).and_then(|a| a.as_str());
            let Some(key) = key else { return Ok(None) };
            module.weights().shared(key, weight_layout(graph, r)).map_err(|m| {
                Diag::error(format!("`%{} = weight` failed: {m}", graph.value_name(r)))
                    .at(data.span(), "while running this op")
            })?
        }
        [x] if def.has(Traits::ALIASES_INPUT) => Arc::clone(x),
        _ => return Ok(None),
    };
    check_input(graph.value_type(r), &t)
        .map_err(|m| internal(data.span(), &format!("result of `{}` disagrees with its type: {m}", def.name)))?;
    Ok(Some(t))
}

/// The layout to keep the weight `w` in: the one its readers want when they all agree (see
/// [`kernels::linalg::weight_layout`]; only `linear` has a preference), else row-major.
fn weight_layout(graph: &Graph, w: ValueId) -> Layout {
    let wanted = |u: &crate::ir::graph::Use| match u.user {
        User::Op(op) if u.index == 1 && graph.op(op).kind() == ops::LINEAR => {
            let x = graph.op(op).operands()[0];
            kernels::linalg::weight_layout(graph.value_type(x), graph.value_type(w))
        }
        _ => Layout::RowMajor,
    };
    let mut layouts = graph.uses(w).iter().map(wanted);
    let first = layouts.next().unwrap_or(Layout::RowMajor);
    if layouts.all(|l| l == first) {
        first
    } else {
        Layout::RowMajor
    }
}

/// For each value read by an op, the program position of its last reader (graph outputs are
/// never freed).
fn last_uses(graph: &Graph) -> FxHashMap<ValueId, usize> {
    let mut last = FxHashMap::default();
    let outputs: std::collections::HashSet<ValueId> = graph.outputs().iter().copied().collect();
    for (position, op) in graph.ops().enumerate() {
        for &v in graph.op(op).operands() {
            if !outputs.contains(&v) && !graph.uses(v).iter().any(|u| u.user == User::Output) {
                last.insert(v, position);
            }
        }
    }
    last
}

fn internal(span: Span, message: &str) -> Diag {
    Diag::error(format!("internal interpreter error: {message}")).at(span, "here").note("this is a bug in qc")
}
