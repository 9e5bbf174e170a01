//! The one list of passes and named pipelines.

use super::conv_bn::{fold_qat, fuse, fuse_qat};
use super::{
    annotate, calibrate, convert, cse, dce, duplicate_dq, fold_quantize, port_metadata, prepare, reference_repr,
    PassDef,
};

/// Every pass, in the order `--list-passes` shows them.
pub static PASSES: &[PassDef] = &[
    fuse::PASS,
    annotate::PASS,
    fuse_qat::PASS,
    prepare::PASS,
    calibrate::PASS,
    convert::PASS,
    fold_qat::PASS,
    duplicate_dq::PASS,
    port_metadata::PASS,
    fold_quantize::PASS,
    reference_repr::PASS,
    cse::PASS,
    dce::PASS,
];

/// Named pipelines usable wherever a pass name is: `-p cleanup`. A member is a pass or another
/// pipeline.
pub static PIPELINES: &[(&str, &str, &[&str])] = &[
    (
        "default",
        "The pipeline `qc model.qir` runs: prepare-pt2e, calibrate (--calib), convert-pt2e.",
        &["prepare-pt2e", "calibrate", "convert-pt2e"],
    ),
    (
        "default-qat",
        "What `qc model.qir` runs with a QAT quantizer: prepare-qat-pt2e, calibrate (--calib), convert-pt2e.",
        &["prepare-qat-pt2e", "calibrate", "convert-pt2e"],
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

fn pipeline(name: &str) -> Option<&'static [&'static str]> {
    PIPELINES.iter().find(|(p, _, _)| *p == name).map(|&(_, _, members)| members)
}

/// Appends the passes of a pipeline's members, nested pipelines expanded. Every member names a
/// pass or a pipeline, and no pipeline contains itself (checked by the tests below).
fn expand_pipeline(members: &[&str], out: &mut Vec<&'static PassDef>) {
    for &member in members {
        match find(member) {
            Some(pass) => out.push(pass),
            None => expand_pipeline(pipeline(member).unwrap_or_default(), out),
        }
    }
}

/// Expands a comma-separated list of pass and pipeline names. Unknown names are returned as
/// errors with a suggestion.
pub fn expand(names: &[String]) -> Result<Vec<&'static PassDef>, String> {
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if let Some(pass) = find(name) {
            out.push(pass);
        } else if let Some(members) = pipeline(name) {
            expand_pipeline(members, &mut out);
        } else {
            let known = PASSES.iter().map(|p| p.name).chain(PIPELINES.iter().map(|p| p.0));
            return Err(format!("unknown pass or pipeline `{name}`; {}", crate::diag::suggest(name, known)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members of `name`, nested pipelines expanded, or the first member that is neither a pass
    /// nor a pipeline, or a pipeline that (directly or not) contains itself.
    fn flatten(name: &str, within: &mut Vec<String>) -> Result<Vec<&'static str>, String> {
        if within.iter().any(|p| p == name) {
            return Err(format!("pipeline `{name}` contains itself, through {within:?}"));
        }
        within.push(name.to_string());
        let mut passes = Vec::new();
        for &member in pipeline(name).ok_or_else(|| format!("`{name}` is not a pipeline"))? {
            match find(member) {
                Some(pass) => passes.push(pass.name),
                None => passes.extend(flatten(member, within)?),
            }
        }
        within.pop();
        Ok(passes)
    }

    #[test]
    fn every_pipeline_expands_to_known_passes() {
        for (name, _, _) in PIPELINES {
            let passes = flatten(name, &mut Vec::new()).unwrap_or_else(|e| panic!("{e}"));
            let expanded: Vec<&str> = expand(&[name.to_string()]).expect("a pipeline").iter().map(|p| p.name).collect();
            assert_eq!(expanded, passes, "{name}");
        }
    }

    #[test]
    fn default_pipelines_are_prepare_calibrate_convert() {
        let names = |list: &[&str]| -> Vec<&str> {
            expand(&list.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("known names")
                .iter()
                .map(|p| p.name)
                .collect()
        };
        assert_eq!(names(&["default"]), names(&["prepare-pt2e", "calibrate", "convert-pt2e"]));
        assert_eq!(names(&["default-qat"]), names(&["prepare-qat-pt2e", "calibrate", "convert-pt2e"]));
        assert_eq!(
            names(&["default"]),
            [
                "fuse-conv-bn",
                "annotate",
                "prepare",
                "calibrate",
                "convert",
                "fold-conv-bn-qat",
                "duplicate-dq",
                "port-metadata",
                "fold-quantize"
            ]
        );
    }
}
