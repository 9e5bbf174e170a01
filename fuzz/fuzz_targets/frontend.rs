//! Fuzzes the whole front end (lexer, parser, lowering, verifier) and the cleanup passes with
//! verification after each: any input must give a module or diagnostics, never a panic, and a
//! module that compiles must stay valid through the passes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz::compile_through(data, "cleanup"));
