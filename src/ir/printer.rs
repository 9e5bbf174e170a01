//! The canonical printer. `parse(print(m))` rebuilds `m` exactly: names are kept, floats print
//! in the shortest form that reads back to the same bits (`nan(0x…)` for non-canonical NaNs),
//! attributes equal to their defaults are left out, everything else is in schema order.

use std::fmt::Write;

use half::{bf16, f16};

use super::attr::{Attr, Dict};
use super::graph::{Graph, Module, OpId};
use super::quant::{EdgeOrValue, SpecRef};
use super::types::{DType, Dim, TensorType};
use crate::tensor::{Scalar, Tensor};

/// Prints a whole module.
pub fn print_module(module: &Module) -> String {
    // Regrowing the buffer of a big module copies all of it into fresh memory, so this errs on
    // the high side: room unused at the end is never touched, and costs no physical memory.
    // Each op prints its result names and location once and operand names about as often
    // again, plus its op name, types and punctuation; inline tensors may still regrow it.
    let estimate = |g: &Graph| 2 * g.strings.text_len() + 64 * g.num_ops();
    let mut out = String::with_capacity(module.graphs.iter().map(estimate).sum::<usize>() + 256);
    write_module(&mut out, module);
    out
}

pub fn write_module(out: &mut String, module: &Module) {
    out.push_str("module");
    if let Some(name) = &module.name {
        out.push_str(" @");
        out.push_str(name);
    }
    out.push_str(" {\n");
    let mut header = false;
    if let Some(w) = &module.weights {
        out.push_str("  weights ");
        write_str_literal(out, &w.path);
        if let Some(d) = &w.digest {
            let _ = write!(out, " {{bytes = {}, xxh3 = \"{}\"}}", d.bytes, d.hash_hex());
        }
        out.push('\n');
        header = true;
    }
    for q in &module.qspecs {
        let _ = write!(out, "  qspec @{} = ", q.name);
        write_dict(out, &q.spec.to_dict());
        out.push('\n');
        header = true;
    }
    for (i, graph) in module.graphs.iter().enumerate() {
        if header || i > 0 {
            out.push('\n');
        }
        write_graph(out, module, graph);
    }
    out.push_str("}\n");
}

fn write_graph(out: &mut String, module: &Module, g: &Graph) {
    let _ = write!(out, "  func @{}(", g.name);
    for (i, &v) in g.inputs().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('%');
        out.push_str(g.value_name(v));
        out.push_str(": ");
        write_type(out, g.value_type(v));
    }
    out.push_str(") -> ");
    if g.output_types.len() == 1 {
        write_type(out, g.type_of(g.output_types[0]));
    } else {
        out.push('(');
        for (i, &t) in g.output_types.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_type(out, g.type_of(t));
        }
        out.push(')');
    }
    out.push_str(" {\n");
    for op in g.ops() {
        out.push_str("    ");
        write_op(out, module, g, op);
        out.push('\n');
    }
    out.push_str("    return");
    for (i, &v) in g.outputs().iter().enumerate() {
        out.push_str(if i == 0 { " %" } else { ", %" });
        out.push_str(g.value_name(v));
    }
    out.push_str("\n  }\n");
}

/// One op statement, without indentation or newline.
pub fn write_op(out: &mut String, module: &Module, g: &Graph, op: OpId) {
    let data = g.op(op);
    let def = data.def();
    for (i, r) in data.results().enumerate() {
        out.push_str(if i == 0 { "%" } else { ", %" });
        out.push_str(g.value_name(r));
    }
    out.push_str(" = ");
    out.push_str(def.name);
    if !data.operands.is_empty() {
        out.push('(');
        for (i, &v) in data.operands.iter().enumerate() {
            out.push_str(if i == 0 { "%" } else { ", %" });
            out.push_str(g.value_name(v));
        }
        out.push(')');
    }
    let attrs = g.attrs_of(data.attrs);
    let mut first = true;
    for (index, value) in attrs.iter().enumerate() {
        let Some(value) = value else { continue };
        if def.is_default(index, value) {
            continue;
        }
        out.push_str(if first { " {" } else { ", " });
        first = false;
        out.push_str(def.attrs[index].name);
        out.push_str(" = ");
        write_attr(out, value);
    }
    if !first {
        out.push('}');
    }
    out.push_str(" : ");
    for (i, r) in data.results().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_type(out, g.value_type(r));
    }
    if let Some(loc) = g.loc(op) {
        out.push_str(" loc(");
        write_str_literal(out, loc);
        out.push(')');
    }
    if let Some(annotation) = g.annotation(op) {
        out.push_str(" quant[");
        for (i, spec) in annotation.inputs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_spec_ref(out, module, g, spec);
        }
        out.push(']');
        if let Some(output) = &annotation.output {
            out.push_str(" -> ");
            write_spec_ref(out, module, g, output);
        }
    }
    if let Some(meta) = g.meta(op) {
        out.push_str(" meta ");
        write_dict(out, meta);
    }
}

fn write_spec_ref(out: &mut String, module: &Module, g: &Graph, spec: &SpecRef) {
    match spec {
        SpecRef::None => out.push_str("none"),
        SpecRef::Named(i) => {
            out.push('@');
            out.push_str(module.qspecs.get(*i).map_or("?", |q| q.name.as_str()));
        }
        SpecRef::Inline(q) => write_dict(out, &q.to_dict()),
        SpecRef::Shared(target) => {
            out.push_str("shared(");
            write_edge_or_value(out, g, target);
            out.push(')');
        }
        SpecRef::Derived { from, spec } => {
            out.push_str("derived(");
            for (i, e) in from.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_edge_or_value(out, g, e);
            }
            out.push_str("; ");
            write_spec_ref(out, module, g, spec);
            out.push(')');
        }
    }
}

fn write_edge_or_value(out: &mut String, g: &Graph, e: &EdgeOrValue) {
    match *e {
        EdgeOrValue::Value(v) => {
            out.push('%');
            out.push_str(g.value_name(v));
        }
        EdgeOrValue::Edge { value, consumer } => {
            let _ = write!(out, "%{} -> %", g.value_name(value));
            match g.op(consumer).result(0) {
                Some(r) => out.push_str(g.value_name(r)),
                None => out.push('?'),
            }
        }
    }
}

pub fn write_dict(out: &mut String, dict: &Dict) {
    out.push('{');
    for (i, (key, value)) in dict.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(key);
        out.push_str(" = ");
        write_attr(out, value);
    }
    out.push('}');
}

pub fn write_attr(out: &mut String, attr: &Attr) {
    match attr {
        Attr::Int(v) => write_i64(out, *v),
        Attr::Float(v) => write_f64(out, *v),
        Attr::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
        Attr::Str(s) => write_str_literal(out, s),
        Attr::DType(d) => out.push_str(d.name()),
        Attr::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_attr(out, item);
            }
            out.push(']');
        }
        Attr::Dict(d) => write_dict(out, d),
        Attr::Tensor(t) => write_tensor(out, t),
    }
}

/// A tensor as nested lists (a bare scalar for rank 0).
pub fn write_tensor(out: &mut String, t: &Tensor) {
    let scalars = t.scalars();
    let shape = t.shape();
    fn rec(out: &mut String, shape: &[usize], scalars: &[Scalar], pos: &mut usize) {
        match shape.split_first() {
            None => {
                if let Some(s) = scalars.get(*pos) {
                    write_scalar(out, *s);
                }
                *pos += 1;
            }
            Some((&n, rest)) => {
                out.push('[');
                for i in 0..n {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    rec(out, rest, scalars, pos);
                }
                out.push(']');
            }
        }
    }
    rec(out, shape, &scalars, &mut 0);
}

fn write_scalar(out: &mut String, s: Scalar) {
    match s {
        Scalar::Int(v) => write_i64(out, v),
        Scalar::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Scalar::Float { value, bits, dtype } => {
            let canonical_nan = match dtype {
                DType::F32 => f32::NAN.to_bits() as u64,
                DType::F16 => f16::NAN.to_bits() as u64,
                DType::BF16 => bf16::NAN.to_bits() as u64,
                _ => f64::NAN.to_bits(),
            };
            if value.is_nan() {
                if bits == canonical_nan {
                    out.push_str("nan");
                } else {
                    let _ = write!(out, "nan(0x{bits:x})");
                }
            } else if dtype == DType::F64 {
                write_f64(out, value);
            } else {
                // f16/bf16/f32 values are exact in f32, whose shortest form reads back exactly.
                // Rust's shortest form always has `.` or `e` (or is `inf`/`-inf`), which QIR
                // needs to tell floats from ints.
                let _ = write!(out, "{:?}", value as f32);
            }
        }
    }
}

/// Shortest round-trip form of an f64, with `nan`/`inf` keywords and `nan(0x…)` for NaNs
/// other than the canonical one.
pub fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        if v.to_bits() == f64::NAN.to_bits() {
            out.push_str("nan");
        } else {
            let _ = write!(out, "nan(0x{:x})", v.to_bits());
        }
    } else {
        // Rust's shortest form always has `.` or `e` (or is `inf`/`-inf`), which QIR needs to
        // tell floats from ints.
        let _ = write!(out, "{v:?}");
    }
}

/// `f32[1,3,?,224]`: what `TensorType`'s `Display` writes, without the formatting machinery.
pub fn write_type(out: &mut String, t: &TensorType) {
    out.push_str(t.dtype.name());
    out.push('[');
    for (i, d) in t.shape.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match *d {
            Dim::Known(n) => write_u64(out, n),
            Dim::Dynamic => out.push('?'),
        }
    }
    out.push(']');
}

fn write_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    write_u64(out, v.unsigned_abs());
}

/// Decimal digits of `n`; dims are printed for every op, and `write!` costs more than they do.
fn write_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&b| char::from(b)));
}

pub fn write_str_literal(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    // Copy runs of plain characters whole; only quotes, backslashes and controls are escaped.
    while let Some((i, c)) = rest.char_indices().find(|&(_, c)| c == '"' || c == '\\' || c.is_control()) {
        out.push_str(&rest[..i]);
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}
