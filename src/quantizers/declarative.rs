//! Declarative quantizers: a TOML file says which ops are quantized and how, without Python.
//!
//! ```toml
//! name = "int8-mobile"
//!
//! [specs.act]                 # named specs: the keys of a QIR `qspec` dictionary
//! dtype = "i8"
//! qmin = -128
//! qmax = 127
//! observer = "histogram"
//! eps = 0.000244140625
//!
//! [specs.w8]
//! dtype = "i8"
//! qmin = -127
//! qmax = 127
//! qscheme = "per_channel_symmetric"
//! ch_axis = 0
//! observer = "per_channel_minmax"
//!
//! [global]                    # the configuration for everything not matched below
//! input_activation = "act"
//! output_activation = "act"
//! weight = "w8"               # bias left out: kept in float
//!
//! [[module]]                  # per-module rules, matched against op locations
//! name = "classifier"
//! match = "prefix"            # "prefix" (the module and everything inside it; the default),
//!                             # "exact", or "regex" (a full match of the location)
//! config = "float"            # keep in float, or a table like [global]
//!
//! [[operator]]                # per-op-kind rules, for ops outside every module rule
//! op = "add"
//! config = "float"
//! ```
//!
//! Priority is PT2E's: module rules (in file order), then operator rules, then `global`; the
//! first rule to claim an op wins. The patterns are XNNPACK's (see [`super::xnnpack`]), so
//! `examples/quantizers/xnnpack.toml` reproduces `--quantizer xnnpack` exactly.

use std::io::Read;
use std::path::Path;

use toml::{Table, Value};

use super::toolkit::{ModuleMatch, QuantizationConfig, Scope};
use super::xnnpack::Quantizer;
use crate::ir::attr::{Attr, Dict};
use crate::ir::quant::QSpec;
use crate::ir::DType;
use crate::ops::OpKind;
use crate::quant::observer::ObserverKind;

/// Reads a quantizer file. Errors name the file and the offending entry.
pub fn load(path: &Path) -> Result<Quantizer, String> {
    let mut text = String::new();
    crate::regular_file::open(path)?
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a quantizer from TOML text.
pub fn parse(text: &str) -> Result<Quantizer, String> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())?;
    check_keys(&table, &["name", "specs", "global", "module", "operator"], "the file")?;
    let name = match table.get("name") {
        Some(v) => v.as_str().ok_or("`name` must be a string")?.to_string(),
        None => "declarative".to_string(),
    };
    let mut specs: Vec<(String, QSpec)> = Vec::new();
    if let Some(v) = table.get("specs") {
        let t = v.as_table().ok_or("`specs` must be a table of named specs")?;
        for (spec_name, body) in t {
            let body = body.as_table().ok_or_else(|| format!("`specs.{spec_name}` must be a table"))?;
            let spec =
                QSpec::from_dict(&to_dict(body)?).and_then(|spec| ObserverKind::check_spec(&spec).map(|()| spec));
            let spec = spec.map_err(|e| {
                let hint = e.hint.map(|h| format!(" ({h})")).unwrap_or_default();
                format!("`specs.{spec_name}`: {}{hint}", e.message)
            })?;
            specs.push((spec_name.clone(), spec));
        }
    }
    let config = |v: &Value, what: &str| -> Result<Option<QuantizationConfig>, String> {
        match v {
            Value::String(s) if s == "float" => Ok(None),
            Value::Table(t) => {
                check_keys(t, &["input_activation", "output_activation", "weight", "bias"], what)?;
                let get = |key: &str| -> Result<Option<QSpec>, String> {
                    let Some(v) = t.get(key) else { return Ok(None) };
                    let spec_name = v.as_str().ok_or_else(|| format!("{what}: `{key}` must name a spec"))?;
                    specs.iter().find(|(n, _)| n == spec_name).map(|(_, s)| Some(s.clone())).ok_or_else(|| {
                        let known: Vec<&str> = specs.iter().map(|(n, _)| n.as_str()).collect();
                        format!(
                            "{what}: no spec `{spec_name}` in [specs]; {}",
                            crate::diag::suggest(spec_name, known.into_iter())
                        )
                    })
                };
                Ok(Some(QuantizationConfig {
                    input_activation: get("input_activation")?,
                    output_activation: get("output_activation")?,
                    weight: get("weight")?,
                    bias: get("bias")?,
                }))
            }
            _ => Err(format!("{what}: a config is \"float\" or a table of spec names")),
        }
    };
    let mut configs = Vec::new();
    for (i, rule) in rules(&table, "module")?.iter().enumerate() {
        let what = format!("[[module]] #{}", i + 1);
        check_keys(rule, &["name", "match", "config"], &what)?;
        let module = rule.get("name").and_then(Value::as_str).ok_or_else(|| format!("{what} needs a `name`"))?;
        let matching = match rule
            .get("match")
            .map(|v| v.as_str().ok_or_else(|| format!("{what}: `match` must be a string")))
        {
            None => ModuleMatch::Prefix,
            Some(m) => match m? {
                "prefix" => ModuleMatch::Prefix,
                "exact" => ModuleMatch::Exact,
                "regex" => ModuleMatch::Regex(
                    regex_lite::Regex::new(&format!("^(?:{module})$"))
                        .map_err(|e| format!("{what}: bad regex: {e}"))?,
                ),
                other => return Err(format!("{what}: `match` is \"prefix\", \"exact\" or \"regex\", not \"{other}\"")),
            },
        };
        let cfg = config(rule.get("config").ok_or_else(|| format!("{what} needs a `config`"))?, &what)?;
        configs.push((Scope::Module { name: module.to_string(), matching }, cfg));
    }
    for (i, rule) in rules(&table, "operator")?.iter().enumerate() {
        let what = format!("[[operator]] #{}", i + 1);
        check_keys(rule, &["op", "config"], &what)?;
        let op = rule.get("op").and_then(Value::as_str).ok_or_else(|| format!("{what} needs an `op`"))?;
        let Some(kind) = OpKind::from_name(op) else {
            let names: Vec<&str> = OpKind::all().map(|k| k.name()).collect();
            return Err(format!("{what}: unknown op `{op}`; {}", crate::diag::suggest(op, names.into_iter())));
        };
        let cfg = config(rule.get("config").ok_or_else(|| format!("{what} needs a `config`"))?, &what)?;
        configs.push((Scope::OperatorType(kind), cfg));
    }
    if let Some(g) = table.get("global") {
        configs.push((Scope::Global, config(g, "[global]")?));
    }
    Ok(Quantizer { name, configs, spec_names: specs })
}

fn rules<'t>(table: &'t Table, key: &str) -> Result<Vec<&'t Table>, String> {
    match table.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_table().ok_or_else(|| format!("each [[{key}]] must be a table"))).collect()
        }
        Some(_) => Err(format!("`{key}` must be written as [[{key}]] tables")),
    }
}

fn check_keys(table: &Table, known: &[&str], what: &str) -> Result<(), String> {
    match table.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("{what}: unknown key `{k}`; {}", crate::diag::suggest(k, known.iter().copied()))),
        None => Ok(()),
    }
}

/// A spec table as the attribute dictionary `QSpec::from_dict` reads (`dtype` is a string
/// here, a bare word in QIR).
fn to_dict(table: &Table) -> Result<Dict, String> {
    let mut d = Dict::new();
    for (key, value) in table {
        let attr = match (key.as_str(), value) {
            ("dtype", Value::String(s)) => {
                Attr::DType(DType::from_name(s).ok_or_else(|| format!("unknown dtype \"{s}\""))?)
            }
            (_, Value::String(s)) => Attr::Str(s.as_str().into()),
            (_, Value::Integer(i)) => Attr::Int(*i),
            (_, Value::Float(f)) => Attr::Float(*f),
            (_, Value::Boolean(b)) => Attr::Bool(*b),
            (k, _) => return Err(format!("spec key `{k}` must be a string, number or bool")),
        };
        d.insert(key, attr);
    }
    Ok(d)
}
