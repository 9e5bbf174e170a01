//! Runs a pipeline of passes with mlir-opt-style instrumentation: IR dumps before/after passes,
//! verification after each pass, timing.

use std::time::{Duration, Instant};

use super::{PassContext, PassDef};
use crate::diag::{Diag, Diagnostics};
use crate::ir::printer::write_module;
use crate::ir::verifier::verify;
use crate::ir::Module;
use crate::quant::OP_CHECKS;

/// What to print and check around each pass.
#[derive(Clone, Debug, Default)]
pub struct Instrumentation {
    pub print_before: Vec<String>,
    pub print_after: Vec<String>,
    pub print_after_all: bool,
    /// Print after a pass only when it changed the module.
    pub print_after_change: bool,
    pub verify_each: bool,
}

/// The heading of an IR dump section; snapshots and `--print-ir-*` share it.
pub fn dump_header(out: &mut String, when: &str, pass: &str) {
    out.push_str("// -----// IR Dump ");
    out.push_str(when);
    out.push(' ');
    out.push_str(pass);
    out.push_str(" //----- //\n");
}

/// Per-pass wall time of one run.
pub type Timings = Vec<(&'static str, Duration)>;

/// How the pass manager reports a pass that broke the IR: a bug in qc, never the input's fault.
const INVALID_IR: &str = "produced invalid IR";

/// Whether `d` is the pass manager's report of a pass that broke the IR (a quoted string in
/// another message may hold the same words, so the whole message shape is matched).
pub fn is_invalid_ir(d: &Diag) -> bool {
    d.message.starts_with("pass `") && d.message.ends_with(INVALID_IR)
}

/// Runs `passes` in order. IR dumps are appended to `dumps`; the first pass that fails (or
/// leaves invalid IR, with `verify_each`) stops the pipeline with its diagnostics.
pub fn run_pipeline(
    module: &mut Module,
    passes: &[&'static PassDef],
    inst: &Instrumentation,
    cx: &mut PassContext,
    dumps: &mut String,
) -> Result<Timings, Diagnostics> {
    let mut timings = Vec::with_capacity(passes.len());
    for pass in passes {
        if inst.print_before.iter().any(|p| p == pass.name) {
            dump_header(dumps, "Before", pass.name);
            write_module(dumps, module);
        }
        let start = Instant::now();
        let changed = (pass.run)(module, cx).map_err(|errors| {
            errors.into_iter().map(|d| d.note(format!("while running pass `{}`", pass.name))).collect::<Diagnostics>()
        })?;
        timings.push((pass.name, start.elapsed()));
        if inst.verify_each {
            let errors = verify(module, OP_CHECKS);
            if !errors.is_empty() {
                let mut out: Diagnostics = vec![Diag::error(format!("pass `{}` {INVALID_IR}", pass.name))
                    .note("this is a bug in qc; please report it with the input file")];
                out.extend(errors);
                return Err(out);
            }
        }
        let listed = inst.print_after_all || inst.print_after.iter().any(|p| p == pass.name);
        // `--print-ir-after-change` alone means: after every pass that changed something.
        let selected = listed || (inst.print_after_change && !inst.print_after_all && inst.print_after.is_empty());
        if selected && (changed || !inst.print_after_change) {
            dump_header(dumps, "After", pass.name);
            write_module(dumps, module);
        }
    }
    Ok(timings)
}
