//! What the QIR fuzz targets share: compile arbitrary bytes through a pipeline and check that qc
//! answers with a module or diagnostics, never a panic, a hang or IR a pass broke.

use qc::passes::manager::{is_invalid_ir, Instrumentation};

/// Compiles `data` (when it is UTF-8) through `pipeline`, verifying after every pass.
pub fn compile_through(data: &[u8], pipeline: &str) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let passes = qc::passes::registry::expand(&[pipeline.to_string()]).unwrap_or_default();
    let inst = Instrumentation { verify_each: true, ..Default::default() };
    if let Err(diags) = qc::driver::compile(text, None, &passes, &inst, &mut String::new()) {
        assert!(!diags.is_empty());
        assert!(!diags.iter().any(is_invalid_ir));
    }
}
