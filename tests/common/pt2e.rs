//! The PT2E fixtures of `tests/pt2e/` (made by `tools/gen_pt2e_fixtures.py` and
//! `tools/gen_convert_fixtures.py`): where they are and how their names map to qc's.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

/// `tests/pt2e/*`, or the directories under `$QC_PT2E_FIXTURES` (to try fixtures made with
/// `python -m tools.gen_pt2e_fixtures OUT_DIR` without adding them to the suite); and whether these
/// are the suite's own.
pub fn fixture_dirs() -> (Vec<PathBuf>, bool) {
    let custom = std::env::var_os("QC_PT2E_FIXTURES");
    let own = custom.is_none();
    let root = custom.map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pt2e"), PathBuf::from);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    dirs.sort();
    (dirs, own)
}

/// The PT2E (FX) name of a qc value. One renaming: XNNPACK's `transform_for_annotation` names
/// the tensors it makes of `add`/`mul` scalars `_tensor_constant_0`, `_tensor_constant_1`, …
/// (`get_new_attr_name_with_prefix` starts at 0), while qc's `annotate` calls the first one
/// `_tensor_constant` (`Graph::fresh_name` appends a suffix only on a clash) and then
/// `_tensor_constant_1`, …
pub fn pt2e_name(qc: &str) -> String {
    if qc == "_tensor_constant" {
        "_tensor_constant_0".into()
    } else {
        qc.into()
    }
}

/// A fixture whose difference from PT2E is understood. Its failures are reported, not
/// failed on; but the difference must still be there (a fixed bug fails the test until its
/// entry is removed). Each of these models is minimal: the difference is all there is.
pub struct Known {
    pub model: &'static str,
    /// Why PT2E behaves inconsistently here and what qc does instead.
    pub why: &'static str,
}

pub const KNOWN: &[Known] = &[Known {
    model: "reused_modules_exact",
    why: "a conv or linear module called twice: both calls read one weight `get_attr` node. \
              ExecuTorch's annotators put that node in each pattern's partition and mark it `_annotated`; \
              `_do_annotate_conv`, `_do_annotate_conv_relu` and `_annotate_linear_relu` skip a pattern \
              when any node of its partition is annotated, `_annotate_linear` checks the linear node \
              only. Here the `conv` pattern, which runs before `conv_relu`, claims the second call \
              (conv2d_1 -> mean); `conv_relu` then skips the first (conv2d -> relu), which stays in \
              float: the graph input `x` is not observed at all and `relu` only as conv2d_1's input. \
              `linear_relu` claims the first linear call; the second fails `linear_relu` (weight \
              annotated) and is taken by `linear`: an output observer on linear_1, shared by relu_2 \
              through propagation. So whether a call is quantized depends on the pattern order and on \
              the other calls of the module. qc annotates each call on its own, as if the module were \
              called once. Evidence (expected.json vs qc): PT2E observes relu, conv_weight, conv2d_1, \
              mean, fc_weight, relu_1, linear_1 (+ relu_2, same instance); qc observes x, conv_weight, \
              relu, conv2d_1 (+ mean, same instance), fc_weight, relu_1, relu_2.",
}];
