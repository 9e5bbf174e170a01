//! The IR: arena graphs of typed SSA values and ops, their attributes and quantization
//! annotations, plus the printer and verifier.

pub mod attr;
pub mod builder;
pub mod entity;
pub mod graph;
pub mod matching;
pub mod printer;
pub mod quant;
pub mod rewriter;
pub mod types;
pub mod verifier;

pub use graph::{Graph, Module, OpId, ValueId};
pub use types::{DType, Dim, TensorType};
