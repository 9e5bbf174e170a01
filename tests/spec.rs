//! The examples in `spec/*.md` are tested: every ```qir block compiles and is a printer fixed
//! point; every ```qir-error block is rejected with a diagnostic.

use std::path::Path;

use qc::ir::printer::print_module;
use qc::syntax::parse_module;

fn blocks<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("```{tag}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let end = body.find("```").expect("unterminated code block");
        out.push(&body[..end]);
        rest = &body[end..];
    }
    out
}

#[test]
fn spec_examples_compile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("spec");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for block in blocks(&text, "qir") {
            let module = parse_module(block, Some(&dir)).unwrap_or_else(|e| panic!("{}: block does not compile: {e:?}\n{block}", path.display()));
            let printed = print_module(&module);
            let again = print_module(&parse_module(&printed, Some(&dir)).unwrap());
            assert_eq!(printed, again, "{}: not a printer fixed point", path.display());
            checked += 1;
        }
        for block in blocks(&text, "qir-error") {
            assert!(parse_module(block, Some(&dir)).is_err(), "{}: error example compiles:\n{block}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 5, "expected the spec to carry tested examples");
}
