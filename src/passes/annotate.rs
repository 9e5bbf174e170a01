//! `annotate`: run a quantizer over the graph and record its decisions as annotations.
//!
//! The quantizer (`--quantizer`, default `xnnpack`) decides, per op, how each input edge and
//! the output are to be quantized; the decisions become `quant[...] -> ...` clauses that
//! `prepare` turns into observers. Specs are added to the module as named `qspec`s (`@act`,
//! `@weight`), so the output reads like a hand-written annotation and can be edited.
//!
//! Quantizers ([`crate::quantizers`]): `xnnpack` (XNNPACKQuantizer, per-channel symmetric int8
//! weights, int8 affine activations with histogram observers), `xnnpack-per-tensor`,
//! `xnnpack-dynamic` (activations of linears and 2-D convs quantized at run time), `x86`
//! (torchao's X86InductorQuantizer: uint8 activations, int8 weights in [-128, 127], conv/linear
//! inputs only; see [`crate::quantizers::x86`]), and declarative quantizer files (`--quantizer
//! recipe.toml`, `spec/quantizers.md`).
//!
//! Requires: a verified module. Leaves: a verified module in which the quantizer's patterns
//! carry annotations; ops already annotated (by hand or an earlier run) are left as they are,
//! so the pass is idempotent. Before annotating, XNNPACK's `transform_for_annotation` turns
//! `add.scalar`/`mul.scalar` of f32 tensors into `add`/`mul` of an f32 constant (not with
//! `x86`, whose transform is the identity).
//!
//! ```qir before
//! module {
//!   func @main(%x: f32[1,16], %w: f32[10,16]) -> f32[1,10] {
//!     %fc = linear(%x, %w) : f32[1,10]
//!     %act = relu(%fc) : f32[1,10]
//!     return %act
//!   }
//! }
//! ```
//! becomes
//! ```qir after
//! module {
//!   qspec @act = {dtype = i8, qmin = -128, qmax = 127, qscheme = "per_tensor_affine", observer = "histogram", eps = 0.000244140625}
//!   qspec @weight = {dtype = i8, qmin = -127, qmax = 127, qscheme = "per_channel_symmetric", ch_axis = 0, observer = "per_channel_minmax", eps = 0.000244140625}
//!
//!   func @main(%x: f32[1,16], %w: f32[10,16]) -> f32[1,10] {
//!     %fc = linear(%x, %w) : f32[1,10] quant[@act, @weight]
//!     %act = relu(%fc) : f32[1,10] quant[] -> @act
//!     return %act
//!   }
//! }
//! ```

use super::{PassContext, PassDef};
use crate::diag::Diagnostics;
use crate::ir::Module;
use crate::quantizers::quantizer_by_name;

pub const PASS: PassDef =
    PassDef { name: "annotate", description: "Record a quantizer's decisions (--quantizer) as annotations.", run };

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let quantizer = quantizer_by_name(cx.quantizer.as_deref().unwrap_or("xnnpack"))?;
    cx.warnings.extend(quantizer.unmatched_module_rules(module));
    quantizer.annotate(module)
}
