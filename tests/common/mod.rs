//! Code shared by the integration tests (each `tests/*.rs` that needs it says `mod common;`).

pub mod files;
pub mod json;
pub mod pt2e;
