//! Fuzzes the front end followed by the default passes as `qc model.qir` runs them without
//! calibration data (fuse-conv-bn, annotate, prepare), with verification after each: any input
//! must give a module or diagnostics, never a panic, a hang or an invalid module.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qc::passes::manager::Instrumentation;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let passes = qc::passes::registry::expand(&["prepare-pt2e".to_string()]).unwrap_or_default();
    let inst = Instrumentation { verify_each: true, ..Default::default() };
    if let Err(diags) = qc::driver::compile(text, None, &passes, &inst, &mut String::new()) {
        assert!(!diags.is_empty());
        assert!(!diags.iter().any(qc::passes::manager::is_invalid_ir));
    }
});
