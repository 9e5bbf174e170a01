//! Fuzzes the declarative quantizer reader (`--quantizer recipe.toml`): any text must give a
//! quantizer or an error, never a panic, and a quantizer that loads must annotate a small module
//! (a conv, a linear, adds, located ops for the module rules) into IR the verifier accepts.
//! Seed the corpus with `examples/quantizers/*.toml`.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MODULE: &str = r#"module {
  func @main(%x: f32[1,2,4,4], %w: f32[3,2,3,3], %b: f32[3], %fw: f32[5,48]) -> f32[1,5] {
    %c = conv2d(%x, %w, %b) {padding = [1, 1]} : f32[1,3,4,4] loc("features.conv")
    %r = relu(%c) : f32[1,3,4,4] loc("features.relu")
    %s = add(%r, %c) : f32[1,3,4,4] loc("features.add")
    %f = flatten(%s) {start_dim = 1} : f32[1,48]
    %y = linear(%f, %fw) : f32[1,5] loc("classifier")
    return %y
  }
}
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(quantizer) = qc::quantizers::declarative::parse(text) else { return };
    let mut module = qc::syntax::parse_module(MODULE, None).expect("the fixed module is valid");
    if quantizer.annotate(&mut module).is_ok() {
        let errors = qc::ir::verifier::verify(&module, qc::quant::OP_CHECKS);
        assert!(errors.is_empty(), "annotation produced invalid IR: {:?}", errors[0].message);
    }
});
