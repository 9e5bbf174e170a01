//! Declarative quantizer files: the shipped XNNPACK recipe reproduces `--quantizer xnnpack`,
//! and mistakes in a file are errors that say where and what.

use std::path::Path;

use qc::driver::compile_with;
use qc::ir::printer::print_module;
use qc::passes::manager::Instrumentation;
use qc::passes::registry::expand;
use qc::passes::PassContext;
use qc::quantizers::declarative::parse;

fn annotate(example: &str, quantizer: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("examples");
    let source = std::fs::read_to_string(dir.join(example)).unwrap();
    let passes = expand(&["fuse-conv-bn".into(), "annotate".into()]).unwrap();
    let cx = PassContext { quantizer: Some(quantizer.to_string()), ..PassContext::default() };
    let compiled = compile_with(&source, Some(&dir), &passes, &Instrumentation::default(), cx, &mut String::new());
    print_module(&compiled.unwrap_or_else(|e| panic!("{example}: {:?}", e[0].message)).module)
}

#[test]
fn the_xnnpack_recipes_match_the_builtin_quantizers() {
    for (file, builtin) in [("xnnpack.toml", "xnnpack"), ("xnnpack-qat.toml", "xnnpack-qat")] {
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quantizers").join(file);
        for example in [
            "small_cnn.qir",
            "resnet_basic_block.qir",
            "mobilenetv2_inverted_residual.qir",
            "transformer_encoder_block.qir",
        ] {
            let from_file = annotate(example, recipe.to_str().unwrap());
            assert_eq!(from_file, annotate(example, builtin), "{file}: {example}");
        }
    }
}

#[test]
fn rules_claim_ops_in_priority_order() {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quantizers/mixed.toml");
    let out = annotate("small_cnn.qir", recipe.to_str().unwrap());
    // The head is claimed and kept float; the pooling rule uses its own spec name.
    assert!(out.contains("loc(\"fc\") quant[]"), "{out}");
    assert!(out.contains("loc(\"avgpool\") quant[@act_u8]"), "{out}");
    assert!(out.contains("loc(\"conv1\") quant[@act, @weight, none]"), "{out}");
}

#[test]
fn mistakes_are_explained() {
    let err = |text: &str| parse(text).err().unwrap_or_else(|| panic!("accepted:\n{text}"));
    assert!(err("[globl]").contains("unknown key `globl`; did you mean `global`?"));
    assert!(err("[specs.a]\ndtype = \"i9\"").contains("unknown dtype \"i9\""));
    assert!(err("[specs.a]\ndtype = \"i8\"\nqmin = 5\n").contains("`specs.a`"));
    assert!(err("[specs.act]\ndtype = \"i8\"\n[global]\nweight = \"acts\"").contains("no spec `acts`"));
    assert!(err("[[module]]\nname = \"(\"\nmatch = \"regex\"\nconfig = \"float\"").contains("bad regex"));
    assert!(err("[[module]]\nname = \"a\"\nmatch = \"glob\"\nconfig = \"float\"")
        .contains("\"prefix\", \"exact\" or \"regex\""));
    assert!(err("[[operator]]\nop = \"lienar\"\nconfig = \"float\"").contains("did you mean `linear`?"));
    assert!(err("[global]\nconfig = 3").contains("unknown key `config`"));
    assert!(err("[specs.a\n").contains("line 1"));
    // Checked when the file is read, not when calibration first builds the observer.
    let observer = err("[specs.act]\ndtype = \"i8\"\nobserver = \"min_max\"");
    assert!(observer.contains("`specs.act`: unknown observer kind \"min_max\" (did you mean `minmax`?)"), "{observer}");
}
