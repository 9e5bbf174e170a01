//! Quantizers: which ops get quantized and how, recorded as annotations on the IR (PT2E's
//! `Quantizer.annotate`); the `annotate` pass runs the one `--quantizer` names.
//!
//! - [`xnnpack`]: ExecuTorch's `XNNPACKQuantizer` (`xnnpack`, `xnnpack-per-tensor`,
//!   `xnnpack-dynamic`, `xnnpack-qat`, `xnnpack-qat-per-tensor`);
//! - [`x86`]: torchao's `X86InductorQuantizer` (`x86`, `x86-qat`);
//! - [`declarative`]: quantizer files (`--quantizer recipe.toml`), configurations of the
//!   XNNPACK patterns;
//! - [`toolkit`]: what they are written with (configurations, scopes, spec naming, the
//!   annotator over one graph).
//!
//! Every quantizer requires a verified module and leaves one: ops annotated before are left as
//! they are, so annotating is idempotent.

pub mod declarative;
pub mod toolkit;
pub mod x86;
pub mod xnnpack;

pub use toolkit::{ModuleMatch, QuantizationConfig, Scope};
pub use x86::X86InductorQuantizer;
pub use xnnpack::{Mode, Quantizer, SymmetricOptions};

use crate::diag::{Diag, Diagnostics};
use crate::ir::Module;

/// A quantizer `--quantizer` can name: XNNPACK's patterns (`xnnpack`, `xnnpack-per-tensor`
/// and quantizer files) or the x86 Inductor recipe (`x86`).
pub enum NamedQuantizer {
    Xnnpack(Quantizer),
    X86(X86InductorQuantizer),
}

impl NamedQuantizer {
    /// The configurations and the scopes they apply to, in the quantizer's order.
    pub fn configs(&self) -> &[(Scope, Option<QuantizationConfig>)] {
        match self {
            NamedQuantizer::Xnnpack(q) => &q.configs,
            NamedQuantizer::X86(q) => &q.configs,
        }
    }

    /// Whether any configuration is a QAT one (see [`QuantizationConfig::is_qat`]).
    pub fn is_qat(&self) -> bool {
        self.configs().iter().any(|(_, c)| c.as_ref().is_some_and(QuantizationConfig::is_qat))
    }

    /// A warning for each module rule that matches no op's location, with the nearest module
    /// path: a misspelt module would otherwise leave its ops to the other rules, silently.
    pub fn unmatched_module_rules(&self, module: &Module) -> Diagnostics {
        let locs: std::collections::BTreeSet<&str> =
            module.graphs.iter().flat_map(|g| g.ops().filter_map(move |op| g.loc(op))).collect();
        // Every module path: a location and each of its enclosing modules.
        let paths: std::collections::BTreeSet<&str> = locs
            .iter()
            .flat_map(|loc| loc.match_indices('.').map(|(i, _)| &loc[..i]).chain(std::iter::once(*loc)))
            .collect();
        self.configs()
            .iter()
            .filter_map(|(scope, _)| match scope {
                Scope::Module { name, matching } if !locs.iter().any(|loc| matching.contains(name, loc)) => {
                    let d = Diag::warning(format!("the module rule `{name}` matches no op"))
                        .note("its configuration applies nowhere: those ops keep what the other rules decide");
                    Some(match crate::diag::closest(name, paths.iter().copied()) {
                        Some(best) => d.help(format!("did you mean `{best}`?")),
                        None if paths.is_empty() => d.help("no op of this module has a location (`loc(...)`)"),
                        None => {
                            let shown: Vec<String> = paths.iter().take(8).map(|p| format!("`{p}`")).collect();
                            let more =
                                if paths.len() > 8 { format!(", … ({} in all)", paths.len()) } else { String::new() };
                            d.help(format!("the module paths here are {}{more}", shown.join(", ")))
                        }
                    })
                }
                _ => None,
            })
            .collect()
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

/// The built-in quantizers `--quantizer` names.
pub const QUANTIZER_NAMES: &[&str] =
    &["xnnpack", "xnnpack-per-tensor", "xnnpack-dynamic", "xnnpack-qat", "xnnpack-qat-per-tensor", "x86", "x86-qat"];

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
        path if path.ends_with(".toml") => {
            declarative::load(std::path::Path::new(path)).map(Into::into).map_err(|m| vec![Diag::error(m)])
        }
        other => Err(vec![unknown_quantizer(other)]),
    }
}

/// A diagnostic for an unknown quantizer name.
fn unknown_quantizer(name: &str) -> Diag {
    Diag::error(format!("unknown quantizer `{name}`")).help(crate::diag::suggest(name, QUANTIZER_NAMES.iter().copied()))
}

/// A usage error unless `name` is a built-in quantizer or a `.toml` quantizer file (whose
/// contents are checked when `annotate` loads it).
pub fn check_quantizer_name(name: &str) -> Result<(), String> {
    if name.ends_with(".toml") || QUANTIZER_NAMES.contains(&name) {
        return Ok(());
    }
    Err(format!("unknown quantizer `{name}`; {}", crate::diag::suggest(name, QUANTIZER_NAMES.iter().copied())))
}
