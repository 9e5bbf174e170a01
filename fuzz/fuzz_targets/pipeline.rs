//! Fuzzes the front end followed by the default passes as `qc model.qir` runs them without
//! calibration data (fuse-conv-bn, annotate, prepare), with verification after each: any input
//! must give a module or diagnostics, never a panic, a hang or an invalid module.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz::compile_through(data, "prepare-pt2e"));
