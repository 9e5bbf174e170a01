//! Deep, wide and huge inputs to the front end and `prepare`, through the built binary: each
//! gives a diagnostic and exit status 1 (or compiles), never a stack overflow or a hang.
//!
//! The "linear" tests use sizes that took minutes (or gigabytes) when the code was quadratic
//! and take seconds in a debug build now; they assert results, not times.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn qc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qc")).arg("--color=never").args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `source` to a fresh scratch file named `name`.
fn input(name: &str, source: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("frontend_limits");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path
}

/// Runs `qc <args> <file>` and checks exit status 1 and `message` on standard error.
fn fails_with(name: &str, source: &[u8], args: &[&str], message: &str) -> String {
    let path = input(name, source);
    let mut all = args.to_vec();
    all.push(path.to_str().unwrap());
    let out = qc(&all);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {}", &stderr[..stderr.len().min(2000)]);
    assert!(stderr.contains(message), "{name}: expected `{message}` in:\n{}", &stderr[..stderr.len().min(2000)]);
    stderr
}

/// A one-function module whose body is `body` (statements reading `%x: f32[4]`, returning `%y`).
fn module(body: &str) -> String {
    format!("module @m {{\n  func @main(%x: f32[4]) -> f32[4] {{\n{body}    return %y\n  }}\n}}\n")
}

const DEEP: usize = 100_000;

#[test]
fn deeply_nested_lists_are_a_diagnostic() {
    let value = format!("{}1{}", "[".repeat(DEEP), "]".repeat(DEEP));
    let source = module(&format!("    %y = relu(%x) : f32[4] meta {{k = {value}}}\n"));
    let stderr = fails_with("deep_list.qir", source.as_bytes(), &["-p", "none"], "too deeply nested");
    // At the first bracket past the limit: the module's `{`, the function's `{`, `meta {`, and
    // 253 list brackets are allowed; the error is on line 3 at the 254th.
    let column = "    %y = relu(%x) : f32[4] meta {k = ".len() + 254;
    assert!(stderr.contains(&format!("deep_list.qir:3:{column}")), "{}", &stderr[..300]);
}

#[test]
fn deeply_nested_dicts_are_a_diagnostic() {
    let value = format!("{}1{}", "{a = ".repeat(DEEP), "}".repeat(DEEP));
    let source = module(&format!("    %y = relu(%x) : f32[4] meta {{k = {value}}}\n"));
    fails_with("deep_dict.qir", source.as_bytes(), &["-p", "none"], "too deeply nested");
}

#[test]
fn deeply_nested_derived_specs_are_a_diagnostic() {
    let spec = format!("{}@s{}", "derived(%x; ".repeat(DEEP), ")".repeat(DEEP));
    let source = format!(
        "module @m {{\n  qspec @s = {{dtype = i8}}\n  func @main(%x: f32[4]) -> f32[4] {{\n    %y = relu(%x) : f32[4] quant[{spec}]\n    return %y\n  }}\n}}\n"
    );
    fails_with("deep_derived.qir", source.as_bytes(), &["-p", "none"], "too deeply nested");
}

/// Nesting right at the limit is lowered, printed and dropped in a thread with the default
/// (2 MB) stack of a spawned thread.
#[test]
fn nesting_at_the_limit_fits_a_thread_stack() {
    // The module's `{`, the function's `{` and `meta {` count too.
    let depth = qc::syntax::lexer::MAX_NESTING - 3;
    let value = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let source = module(&format!("    %y = relu(%x) : f32[4] meta {{k = {value}}}\n"));
    let printed = std::thread::spawn(move || {
        let compiled = qc::driver::compile(&source, None, &[], &Default::default(), &mut String::new());
        let module = compiled.map_err(|d| format!("{d:?}")).unwrap().module;
        let mut text = String::new();
        qc::ir::printer::write_module(&mut text, &module);
        text
    })
    .join()
    .expect("no stack overflow");
    assert!(printed.contains(&"[".repeat(depth)));
}

/// Cases are slices of the file: 30 000 cases used to copy ~10^9 padding newlines.
#[test]
fn split_input_file_is_linear_and_points_at_the_whole_file() {
    const CASES: usize = 30_000;
    let good = module("    %y = relu(%x) : f32[4]\n");
    let bad = module("    %y = rleu(%x) : f32[4]\n");
    let mut source = vec![good.as_str(); CASES - 1].join("// -----\n");
    source.push_str("// -----\n");
    source.push_str(&bad);
    // The bad op is on the third line of the last case.
    let line = (good.lines().count() + 1) * (CASES - 1) + 3;
    let stderr = fails_with("split.qir", source.as_bytes(), &["-p", "none", "--split-input-file"], "unknown op `rleu`");
    assert!(stderr.contains(&format!("split.qir:{line}:10")), "{stderr}");
}

#[test]
fn a_trailing_separator_is_named() {
    let source = format!("{}// -----\n", module("    %y = relu(%x) : f32[4]\n"));
    fails_with(
        "trailing.qir",
        source.as_bytes(),
        &["-p", "none", "--split-input-file"],
        "the file ends with a `// -----` separator",
    );
}

#[test]
fn expected_remark_is_rejected() {
    let source = format!("// expected-remark {{{{anything}}}}\n{}", module("    %y = relu(%x) : f32[4]\n"));
    fails_with("remark.qir", source.as_bytes(), &["--verify-diagnostics"], "unknown expectation `expected-remark`");
}

#[test]
fn a_huge_line_offset_does_not_wrap() {
    let source =
        format!("// expected-error@+9223372036854775807 {{{{x}}}}\n{}", module("    %y = relu(%x) : f32[4]\n"));
    fails_with("offset.qir", source.as_bytes(), &["--verify-diagnostics"], "after the end of the file");
}

/// A 4 MB op name: the "did you mean" search used to compare all of it with every op name
/// (about a minute); the message quotes its start and length.
#[test]
fn a_huge_unknown_name_is_cut_and_not_compared() {
    let name = format!("r{}lu", "e".repeat(4 << 20));
    let source = module(&format!("    %y = {name}(%x) : f32[4]\n"));
    let stderr = fails_with("long_op.qir", source.as_bytes(), &["-p", "none"], "… (4194307 bytes)`");
    assert!(!stderr.contains("did you mean"));
}

/// 300 names of 20 000 characters and a typo of one: each suggestion compared 300 long names.
#[test]
fn long_value_names_get_no_costly_suggestion() {
    let names: Vec<String> = (0..300).map(|i| format!("{}{i}", "n".repeat(20_000))).collect();
    let mut body: String = names.iter().map(|n| format!("    %{n} = relu(%x) : f32[4]\n")).collect();
    body.push_str(&format!("    %y = relu(%{}x) : f32[4]\n", &names[7][1..]));
    fails_with("long_names.qir", module(&body).as_bytes(), &["-p", "none"], "use of undefined value");
}

#[test]
fn control_characters_are_not_echoed() {
    let source =
        module("    %y = gelu(%x) {approximate = \"no\u{1b}[2J\u{0}\"} : f32[4]\n    %z = relu\u{1b}(%x) : f32[4]\n");
    let path = input("control.qir", source.as_bytes());
    let out = qc(&["-p", "none", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.iter().any(|&b| b == 0x1b || b == 0), "{:?}", text(&out.stderr));
    assert!(text(&out.stderr).contains("\\u{1b}"));
}

#[test]
fn a_lone_carriage_return_is_rejected() {
    let source = module("    // a comment\n    %y = relu(%x) : f32[4]\n").replace('\n', "\r");
    let stderr = fails_with("cr.qir", source.as_bytes(), &["-p", "none"], "carriage return without a line feed");
    assert!(!stderr.contains('\r'));
    // CRLF stays fine.
    let crlf = module("    // a comment\n    %y = relu(%x) : f32[4]\n").replace('\n', "\r\n");
    let out = qc(&["-p", "none", input("crlf.qir", crlf.as_bytes()).to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// 40 000 `linear`s sharing one weight: `prepare` compared every reader with every other one
/// (72 s in a release build) and searched the weight's use list per reader.
#[test]
fn prepare_is_linear_in_fan_out() {
    const READERS: usize = 40_000;
    let mut source = String::from("module @m {\n  func @main(%x: f32[1,16], %w: f32[8,16]) -> f32[1,8] {\n");
    for k in 0..READERS {
        source.push_str(&format!("    %y{k} = linear(%x, %w) : f32[1,8]\n"));
    }
    source.push_str("    %s = add(%y0, %y1) : f32[1,8]\n    return %s\n  }\n}\n");
    let path = input("fan_out.qir", source.as_bytes());
    let out = qc(&["-p", "prepare-pt2e", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    // One observer for `%x` and one for `%w`, shared by all readers; one per output.
    let observers = printed.lines().filter(|l| l.contains("= observer(")).count();
    assert_eq!(observers, 2 + READERS + 1);
    assert_eq!(printed.lines().filter(|l| l.contains("= observer(%w)")).count(), 1);
}

/// Found by the `pipeline` fuzz target: a hand-written per-channel spec whose channel axis is
/// past the value's rank made `prepare` build an invalid observer ("this is a bug in qc").
#[test]
fn a_spec_that_does_not_fit_the_value_is_a_diagnostic() {
    let source = "module {\n  qspec @w8 = {dtype = i8, qmin = -127, qmax = 127, qscheme = \"per_channel_symmetric\", ch_axis = 5, observer = \"per_channel_minmax\"}\n  func @main(%x: f32[1,16], %w: f32[8,16]) -> f32[1,8] {\n    %fc = linear(%x, %w) : f32[1,8] quant[none, @w8]\n    return %fc\n  }\n}\n";
    let stderr = fails_with("ch_axis.qir", source.as_bytes(), &["-p", "prepare"], "cannot observe `%w` (f32[8,16])");
    assert!(stderr.contains("dimension 5 is out of range"), "{stderr}");
    assert!(!stderr.contains("bug in qc"), "{stderr}");
}

/// 40 000 ops, each sharing its output's observer with the next op's (`shared(%next)`, a
/// forward reference): every comparison walked the rest of the chain.
#[test]
fn prepare_is_linear_in_forward_sharing_chains() {
    const LENGTH: usize = 40_000;
    let mut source = String::from(
        "module {\n  qspec @act = {dtype = i8, observer = \"histogram\"}\n  func @main(%x: f32[4]) -> f32[4] {\n",
    );
    let mut previous = "%x".to_string();
    for k in 0..LENGTH {
        source.push_str(&format!("    %a{k} = relu({previous}) : f32[4] quant[@act] -> shared(%a{})\n", k + 1));
        previous = format!("%a{k}");
    }
    source.push_str(&format!("    %a{LENGTH} = relu({previous}) : f32[4] quant[@act] -> @act\n"));
    source.push_str(&format!("    return %a{LENGTH}\n  }}\n}}\n"));
    let path = input("chain.qir", source.as_bytes());
    let out = qc(&["-p", "prepare", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The whole chain is one group (instance 1; `%x`'s edge is instance 0, printed without it).
    let printed = text(&out.stdout);
    assert_eq!(printed.matches("instance = 1}").count(), LENGTH + 1);
    assert!(!printed.contains("instance = 2"), "one sharing group");
}

/// 20 000 `cat`s reading one value as their second input, whose spec shares the first
/// input's observer (as the XNNPACK quantizer annotates `cat`): each such edge was compared
/// with every other one (4 000 took 17 s in a debug build).
#[test]
fn prepare_is_linear_in_fan_out_of_shared_edges() {
    const READERS: usize = 20_000;
    let mut source = String::from("module {\n  func @main(%x: f32[1,4], %v: f32[1,4]) -> f32[2,4] {\n");
    for k in 0..READERS {
        source
            .push_str(&format!("    %r{k} = relu(%x) : f32[1,4]\n    %c{k} = cat(%r{k}, %v) {{dim = 0}} : f32[2,4]\n"));
    }
    source.push_str("    return %c0\n  }\n}\n");
    let path = input("fan_out_shared.qir", source.as_bytes());
    let out = qc(&["-p", "prepare-pt2e", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // All the `cat`s share one instance, so `%v` has one observer.
    assert_eq!(text(&out.stdout).lines().filter(|l| l.contains("= observer(%v)")).count(), 1);
}
