//! The one list of passes and named pipelines.

use super::{
    annotate, calibrate, convert, cse, dce, duplicate_dq, fold_conv_bn_qat, fold_quantize, fuse_conv_bn,
    fuse_conv_bn_qat, port_metadata, prepare, reference_repr, PassDef,
};

/// Every pass, in the order `--list-passes` shows them.
pub static PASSES: &[PassDef] = &[
    fuse_conv_bn::PASS,
    annotate::PASS,
    fuse_conv_bn_qat::PASS,
    prepare::PASS,
    calibrate::PASS,
    convert::PASS,
    fold_conv_bn_qat::PASS,
    duplicate_dq::PASS,
    port_metadata::PASS,
    fold_quantize::PASS,
    reference_repr::PASS,
    cse::PASS,
    dce::PASS,
];

/// Named pipelines usable wherever a pass name is: `-p cleanup`.
pub static PIPELINES: &[(&str, &str, &[&str])] = &[
    (
        "default",
        "The pipeline `qc model.qir` runs: prepare-pt2e, calibrate (--calib), convert-pt2e.",
        &[
            "fuse-conv-bn",
            "annotate",
            "prepare",
            "calibrate",
            "convert",
            "fold-conv-bn-qat",
            "duplicate-dq",
            "port-metadata",
            "fold-quantize",
        ],
    ),
    (
        "default-qat",
        "What `qc model.qir` runs with a QAT quantizer: prepare-qat-pt2e, calibrate (--calib), convert-pt2e.",
        &[
            "annotate",
            "fuse-conv-bn-qat",
            "prepare",
            "calibrate",
            "convert",
            "fold-conv-bn-qat",
            "duplicate-dq",
            "port-metadata",
            "fold-quantize",
        ],
    ),
    ("none", "No passes: parse, verify and print the module.", &[]),
    ("cleanup", "Merge duplicate pure ops, then delete unused ones.", &["cse", "dce"]),
    (
        "prepare-pt2e",
        "What PT2E's prepare_pt2e does: fold batch norms, annotate, insert observers.",
        &["fuse-conv-bn", "annotate", "prepare"],
    ),
    (
        "prepare-qat-pt2e",
        "What PT2E's prepare_qat_pt2e does: annotate, rewrite conv-bn for QAT, insert observers.",
        &["annotate", "fuse-conv-bn-qat", "prepare"],
    ),
    (
        "convert-pt2e",
        "What PT2E's convert_pt2e does: q/dq ops, QAT conv-bn folded, one dequantize per consumer, ported locations, folded weights.",
        &["convert", "fold-conv-bn-qat", "duplicate-dq", "port-metadata", "fold-quantize"],
    ),
];

pub fn find(name: &str) -> Option<&'static PassDef> {
    PASSES.iter().find(|p| p.name == name)
}

/// Expands a comma-separated list of pass and pipeline names. Unknown names are returned as
/// errors with a suggestion.
pub fn expand(names: &[String]) -> Result<Vec<&'static PassDef>, String> {
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if let Some(pass) = find(name) {
            out.push(pass);
        } else if let Some((_, _, members)) = PIPELINES.iter().find(|(p, _, _)| *p == name) {
            out.extend(members.iter().filter_map(|m| find(m)));
        } else {
            let known = PASSES.iter().map(|p| p.name).chain(PIPELINES.iter().map(|p| p.0));
            return Err(format!("unknown pass or pipeline `{name}`; {}", crate::diag::suggest(name, known)));
        }
    }
    Ok(out)
}
