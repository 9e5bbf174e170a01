//! Passes: module → module rewrites, one per file, all listed in [`registry`].

pub mod annotate;
pub mod calibrate;
pub mod conv_bn;
pub mod convert;
pub mod cse;
pub mod dce;
pub mod duplicate_dq;
pub mod fold_quantize;
pub mod manager;
pub mod observer_instances;
pub mod port_metadata;
pub mod prepare;
pub mod reference_repr;
pub mod registry;
pub mod remap;

use crate::diag::{Diag, Diagnostics};
use crate::ir::Module;

/// What a pass run may read besides the module (options, data); grows with the passes.
#[derive(Default)]
pub struct PassContext {
    /// Non-fatal diagnostics (warnings) a pass wants the user to see.
    pub warnings: Diagnostics,
    /// The quantizer `annotate` runs (`--quantizer`); `None` means the default, `xnnpack`.
    pub quantizer: Option<String>,
    /// The data `calibrate` runs (`--calib`): an `.npz`/`.npy` file or a directory of them.
    pub calibration: Option<std::path::PathBuf>,
    /// `--explain-rewrites`: passes say, as notes among the warnings, why a pattern did not
    /// apply where it could have.
    pub explain_rewrites: bool,
}

impl PassContext {
    /// With `--explain-rewrites`, a note that `pass` left `subject` (at `span`) alone, and why.
    pub fn explain(&mut self, pass: &str, span: crate::diag::Span, subject: &str, why: &crate::ir::matching::Mismatch) {
        if self.explain_rewrites {
            self.warnings.push(Diag::remark(format!("{pass}: {subject}: {}", why.0)).at(span, "not rewritten"));
        }
    }
}

/// A registered pass. `run` returns whether it changed the module.
pub struct PassDef {
    /// The kebab-case name used by `-p` and in IR dumps.
    pub name: &'static str,
    /// One line for `--list-passes`.
    pub description: &'static str,
    pub run: fn(&mut Module, &mut PassContext) -> Result<bool, Diagnostics>,
}

/// Runs `f` on each graph of the module by index (so that it may also change module-level
/// state, such as created weights); whether any call changed something.
pub fn each_graph(
    module: &mut Module,
    mut f: impl FnMut(&mut Module, usize) -> Result<bool, Diagnostics>,
) -> Result<bool, Diagnostics> {
    let mut changed = false;
    for gi in 0..module.graphs.len() {
        changed |= f(module, gi)?;
    }
    Ok(changed)
}
