//! `annotate`: run a quantizer over the graph and record its decisions as annotations.
//!
//! The quantizer (`--quantizer`, default `xnnpack`) decides, per op, how each input edge and
//! the output are to be quantized; the decisions become `quant[...] -> ...` clauses that
//! `prepare` turns into observers. Specs are added to the module as named `qspec`s (`@act`,
//! `@weight`), so the output reads like a hand-written annotation and can be edited.
//!
//! Quantizers: `xnnpack` (XNNPACKQuantizer, per-channel symmetric int8 weights, int8 affine
//! activations with histogram observers), `xnnpack-per-tensor`, `xnnpack-dynamic` (activations
//! of linears and 2-D convs quantized at run time), `x86` (torchao's
//! X86InductorQuantizer: uint8 activations, int8 weights in [-128, 127], conv/linear inputs
//! only; see [`crate::quant::x86`]), and declarative quantizer files (`--quantizer
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
use crate::quant::quantizer::{unknown_quantizer, Mode, Quantizer, SymmetricOptions};
use crate::quant::x86::X86InductorQuantizer;

pub const PASS: PassDef =
    PassDef { name: "annotate", description: "Record a quantizer's decisions (--quantizer) as annotations.", run };

/// A quantizer `--quantizer` can name: XNNPACK's patterns (`xnnpack`, `xnnpack-per-tensor`
/// and quantizer files) or the x86 Inductor recipe (`x86`).
pub enum NamedQuantizer {
    Xnnpack(Quantizer),
    X86(X86InductorQuantizer),
}

impl NamedQuantizer {
    /// Whether any configuration is a QAT one (see [`crate::quant::quantizer::QuantizationConfig::is_qat`]).
    pub fn is_qat(&self) -> bool {
        let configs = match self {
            NamedQuantizer::Xnnpack(q) => &q.configs,
            NamedQuantizer::X86(q) => &q.configs,
        };
        configs.iter().any(|(_, c)| c.as_ref().is_some_and(|c| c.is_qat()))
    }

    /// Annotates every graph of `module`; returns whether anything was annotated.
    pub fn annotate(&self, module: &mut Module) -> Result<bool, Diagnostics> {
        match self {
            NamedQuantizer::Xnnpack(q) => q.annotate(module),
            NamedQuantizer::X86(q) => q.annotate(module),
        }
    }
}

impl From<Quantizer> for NamedQuantizer {
    fn from(q: Quantizer) -> Self {
        NamedQuantizer::Xnnpack(q)
    }
}

impl From<X86InductorQuantizer> for NamedQuantizer {
    fn from(q: X86InductorQuantizer) -> Self {
        NamedQuantizer::X86(q)
    }
}

/// The quantizer named on the command line.
pub fn quantizer_by_name(name: &str) -> Result<NamedQuantizer, Diagnostics> {
    match name {
        "xnnpack" => Ok(Quantizer::xnnpack(SymmetricOptions::default()).into()),
        "xnnpack-per-tensor" => {
            Ok(Quantizer::xnnpack(SymmetricOptions { per_channel: false, ..SymmetricOptions::default() }).into())
        }
        "xnnpack-dynamic" => {
            Ok(Quantizer::xnnpack(SymmetricOptions { mode: Mode::Dynamic, ..SymmetricOptions::default() }).into())
        }
        "xnnpack-qat" => {
            Ok(Quantizer::xnnpack(SymmetricOptions { mode: Mode::Qat, ..SymmetricOptions::default() }).into())
        }
        "xnnpack-qat-per-tensor" => Ok(Quantizer::xnnpack(SymmetricOptions {
            per_channel: false,
            mode: Mode::Qat,
            ..SymmetricOptions::default()
        })
        .into()),
        "x86" => Ok(X86InductorQuantizer::with_default_config().into()),
        "x86-qat" => Ok(X86InductorQuantizer::with_qat_config().into()),
        path if path.ends_with(".toml") => crate::quant::declarative::load(std::path::Path::new(path))
            .map(Into::into)
            .map_err(|m| vec![crate::diag::Diag::error(m)]),
        other => Err(vec![unknown_quantizer(other)]),
    }
}

/// A usage error unless `name` is a built-in quantizer or a `.toml` quantizer file (whose
/// contents are checked when `annotate` loads it).
pub fn check_quantizer_name(name: &str) -> Result<(), String> {
    if name.ends_with(".toml") || crate::quant::quantizer::QUANTIZER_NAMES.contains(&name) {
        return Ok(());
    }
    Err(format!(
        "unknown quantizer `{name}`; {}",
        crate::diag::suggest(name, crate::quant::quantizer::QUANTIZER_NAMES.iter().copied())
    ))
}

fn run(module: &mut Module, cx: &mut PassContext) -> Result<bool, Diagnostics> {
    let quantizer = quantizer_by_name(cx.quantizer.as_deref().unwrap_or("xnnpack"))?;
    quantizer.annotate(module)
}
