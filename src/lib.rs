//! qc — a quantization compiler for neural-network graphs written in QIR.
//!
//! The pipeline: QIR text is lexed and parsed ([`syntax`]) into a syntax tree, lowered to the
//! arena graph IR ([`ir`]) using the op registry ([`ops`]), verified, transformed by passes
//! ([`passes`]) and printed back out. Diagnostics ([`diag`]) carry spans into the source text.

pub mod diag;
pub mod driver;
pub mod interp;
pub mod ir;
pub mod ops;
pub mod passes;
pub mod quant;
pub mod quantizers;
pub mod regular_file;
pub mod syntax;
pub mod tensor;
pub mod weights;
