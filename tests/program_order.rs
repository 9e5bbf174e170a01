//! The verifier checks the program order itself (invariant 4 of `ir::graph`): an op a pass
//! created but never linked would otherwise verify and print as if it did not exist.

use qc::diag::Span;
use qc::ir::graph::ResultSpec;
use qc::ir::verifier::verify;
use qc::ops::OpKind;
use qc::quant::OP_CHECKS;

const MODULE: &str = "module {\n  func @f(%x: f32[4]) -> f32[4] {\n    %a = relu(%x) : f32[4]\n    return %a\n  }\n}\n";

/// `%name = relu(%x)`, created in the module's graph but not linked into its order.
fn unlinked_relu(module: &mut qc::ir::Module, name: &str) -> qc::ir::OpId {
    let g = &mut module.graphs[0];
    let x = g.inputs()[0];
    let kind = OpKind::from_name("relu").expect("relu is registered");
    let attrs = g.intern_attrs(kind.def().complete_attrs(Vec::new()));
    let ty = g.value_type(x).clone();
    let result = ResultSpec { name, ty, span: Span::NONE };
    g.create_op(kind, &[x], attrs, vec![result], Span::NONE).expect("the name is free")
}

#[test]
fn a_live_op_missing_from_the_order_is_an_error() {
    let mut module = qc::syntax::parse_module(MODULE, None).unwrap();
    assert!(verify(&module, OP_CHECKS).is_empty());
    unlinked_relu(&mut module, "lost");
    let errors = verify(&module, OP_CHECKS);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("1 live op(s) of `@f` are not in the program order"), "{}", errors[0].message);
}

#[test]
fn a_linked_op_verifies() {
    let mut module = qc::syntax::parse_module(MODULE, None).unwrap();
    let op = unlinked_relu(&mut module, "found");
    module.graphs[0].append(op);
    assert!(verify(&module, OP_CHECKS).is_empty());
}
