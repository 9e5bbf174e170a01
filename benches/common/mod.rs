//! Synthetic QIR in the shape exported models have: repeated layers whose values are named after
//! module paths (`%layers.12.fc`), every op carrying a `loc`. Weights are function parameters
//! shared by all layers, so no weights file is needed.

use std::fmt::Write;

/// Ops in one generated layer.
pub const OPS_PER_LAYER: usize = 10;

/// The benchmark sizes: label and op count.
pub const SIZES: [(&str, usize); 3] = [("10k", 10_000), ("100k", 100_000), ("1m", 1_000_000)];

/// QIR text with `ops` ops (rounded up to whole layers), in canonical printed form.
///
/// Each layer is linear → relu → layer_norm → mul → reshape → conv2d → permute → reshape → add
/// (a residual), plus one extra op: a duplicate of the relu that `cse` merges, or, in every
/// eighth layer, an unused sigmoid that `dce` deletes.
pub fn generate(ops: usize) -> String {
    let layers = ops.div_ceil(OPS_PER_LAYER);
    let mut s = String::with_capacity(layers * OPS_PER_LAYER * 110 + 512);
    s.push_str("module @bench {\n");
    s.push_str(
        "  func @main(%x: f32[4,64], %w: f32[64,64], %b: f32[64], %g: f32[64], %beta: f32[64], \
         %cw: f32[4,4,3,3], %cb: f32[4]) -> f32[4,64] {\n",
    );
    let mut h = String::from("x");
    for i in 0..layers {
        let p = format!("layers.{i}");
        let _ = writeln!(s, "    %{p}.fc = linear(%{h}, %w, %b) : f32[4,64] loc(\"model.{p}.fc\")");
        let _ = writeln!(s, "    %{p}.act = relu(%{p}.fc) : f32[4,64] loc(\"model.{p}.act\")");
        let gate_rhs = if i % 8 == 7 {
            let _ = writeln!(s, "    %{p}.probe = sigmoid(%{p}.fc) : f32[4,64] loc(\"model.{p}.probe\")");
            format!("{p}.act")
        } else {
            let _ = writeln!(s, "    %{p}.act_1 = relu(%{p}.fc) : f32[4,64] loc(\"model.{p}.act\")");
            format!("{p}.act_1")
        };
        let _ = writeln!(
            s,
            "    %{p}.norm = layer_norm(%{p}.act, %g, %beta) {{normalized_shape = [64], eps = 1e-6}} : f32[4,64] \
             loc(\"model.{p}.norm\")"
        );
        let _ = writeln!(s, "    %{p}.gate = mul(%{p}.norm, %{gate_rhs}) : f32[4,64] loc(\"model.{p}.gate\")");
        let _ = writeln!(
            s,
            "    %{p}.view = reshape(%{p}.gate) {{shape = [1, 4, 8, 8]}} : f32[1,4,8,8] loc(\"model.{p}.view\")"
        );
        let _ = writeln!(
            s,
            "    %{p}.conv = conv2d(%{p}.view, %cw, %cb) {{padding = [1, 1]}} : f32[1,4,8,8] loc(\"model.{p}.conv\")"
        );
        let _ = writeln!(
            s,
            "    %{p}.perm = permute(%{p}.conv) {{dims = [0, 1, 3, 2]}} : f32[1,4,8,8] loc(\"model.{p}.perm\")"
        );
        let _ =
            writeln!(s, "    %{p}.flat = reshape(%{p}.perm) {{shape = [4, 64]}} : f32[4,64] loc(\"model.{p}.flat\")");
        let _ = writeln!(s, "    %{p}.res = add(%{p}.flat, %{h}) : f32[4,64] loc(\"model.{p}.res\")");
        h = format!("{p}.res");
    }
    let _ = writeln!(s, "    return %{h}");
    s.push_str("  }\n}\n");
    s
}
