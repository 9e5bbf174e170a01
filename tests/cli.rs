//! The `qc` command line as users drive it: exit statuses, output files, stdin, pass control.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const GOOD: &str = "module {\n  func @f(%x: f32[4]) -> f32[4] {\n    %a = relu(%x) : f32[4]\n    %b = relu(%x) : f32[4]\n    %c = add(%a, %b) : f32[4]\n    return %c\n  }\n}\n";
const BAD: &str = "module {\n  func @f(%x: f32[4]) -> f32[4] {\n    %a = relu(%y) : f32[4]\n    return %a\n  }\n}\n";

fn qc(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // qc may exit before reading (usage errors); a closed pipe is fine.
    let _ = input.write_all(stdin.unwrap_or_default().as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch directory under the target dir, fresh for each test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn stdin_to_stdout() {
    let out = qc(&["-", "-p", "none"], Some(GOOD));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), GOOD);
    assert!(out.stderr.is_empty());
}

#[test]
fn diagnostics_exit_1_without_colour_when_piped() {
    let out = qc(&["-"], Some(BAD));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error: use of undefined value `%y`"), "{err}");
    assert!(err.contains("<stdin>:3:"), "{err}");
    assert!(!err.contains('\u{1b}'), "no ANSI colour when stderr is not a terminal");
    assert!(out.stdout.is_empty());
    let coloured = qc(&["-", "--color", "always"], Some(BAD));
    assert!(text(&coloured.stderr).contains('\u{1b}'));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(qc(&[], None).status.code(), Some(2));
    assert_eq!(qc(&["-", "--no-such-flag"], Some(GOOD)).status.code(), Some(2));
    let out = qc(&["-", "-p", "dec"], Some(GOOD));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("did you mean `dce`?"), "{}", text(&out.stderr));
    assert_eq!(qc(&["-", "--print-ir-after", "nope"], Some(GOOD)).status.code(), Some(2));
}

#[test]
fn unreadable_input_exits_1() {
    let out = qc(&["/nonexistent/model.qir"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/model.qir"));
    let dir = scratch("binary_input");
    let path = dir.join("bin.qir");
    std::fs::write(&path, [0x6d, 0xff, 0xfe]).unwrap();
    let out = qc(&[path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not UTF-8"));
}

#[test]
fn output_file_is_written_only_on_success() {
    let dir = scratch("output_file");
    let input = dir.join("in.qir");
    let output = dir.join("out.qir");
    std::fs::write(&input, GOOD).unwrap();
    let out = qc(&[input.to_str().unwrap(), "-p", "cleanup", "-o", output.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let written = std::fs::read_to_string(&output).unwrap();
    assert!(written.contains("%c = add(%a, %a)"), "{written}");

    std::fs::write(&input, BAD).unwrap();
    std::fs::remove_file(&output).unwrap();
    let out = qc(&[input.to_str().unwrap(), "-o", output.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(!output.exists(), "a failed run must not leave an output file");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind: {leftovers:?}");
}

#[test]
fn weights_path_follows_the_output() {
    let dir = scratch("weights_path");
    std::fs::create_dir_all(dir.join("model")).unwrap();
    std::fs::create_dir_all(dir.join("out/deep")).unwrap();
    // A minimal safetensors file with one f32[2] tensor.
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 8]);
    std::fs::write(dir.join("model/w.safetensors"), bytes).unwrap();
    let source = "module {\n  weights \"w.safetensors\"\n\n  func @f(%x: f32[2]) -> f32[2] {\n    %w = weight {key = \"w\"} : f32[2]\n    %y = add(%x, %w) : f32[2]\n    return %y\n  }\n}\n";
    std::fs::write(dir.join("model/m.qir"), source).unwrap();
    let output = dir.join("out/deep/m.qir");
    let out = qc(&[dir.join("model/m.qir").to_str().unwrap(), "-o", output.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&output).unwrap();
    assert!(written.contains("weights \"../../model/w.safetensors\""), "{written}");
    // And the written file compiles where it is.
    assert_eq!(qc(&[output.to_str().unwrap()], None).status.code(), Some(0));
}

#[test]
fn ir_dumps_go_to_stderr_in_snapshot_format() {
    let out = qc(&["-", "-p", "cse,dce", "--print-ir-after-all"], Some(GOOD));
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("// -----// IR Dump After cse //----- //\n"), "{err}");
    assert!(err.contains("// -----// IR Dump After dce //----- //\n"), "{err}");
    // Only passes that changed something, under --print-ir-after-change.
    let out = qc(&["-", "-p", "cse,dce", "--print-ir-after-all", "--print-ir-after-change"], Some(GOOD));
    let err = text(&out.stderr);
    assert!(err.contains("After cse"), "{err}");
    assert!(!err.contains("After dce"), "dce changes nothing after cse: {err}");
    let out = qc(&["-", "-p", "cse,dce", "--print-ir-before", "dce"], Some(GOOD));
    assert!(text(&out.stderr).starts_with("// -----// IR Dump Before dce //----- //\n"));
}

#[test]
fn a_module_rule_that_matches_nothing_is_a_warning() {
    // The shipped mixed recipe keeps `fc` in float; misspelt, the rule used to be dropped silently.
    let dir = scratch("module_rule");
    let recipe = std::fs::read_to_string("examples/quantizers/mixed.toml").unwrap();
    assert!(recipe.contains("name = \"fc\"\n"));
    for (name, help) in [("fcc", "did you mean `fc`?"), ("classifier", "the module paths here are `avgpool`, `bn1`")] {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, recipe.replace("name = \"fc\"\n", &format!("name = \"{name}\"\n"))).unwrap();
        let out = qc(&["examples/small_cnn.qir", "-p", "annotate", "--quantizer", path.to_str().unwrap()], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("warning: the module rule `{name}` matches no op")), "{err}");
        assert!(err.contains(help), "{err}");
    }
    let out = qc(&["examples/small_cnn.qir", "-p", "annotate", "--quantizer", "examples/quantizers/mixed.toml"], None);
    assert!(!text(&out.stderr).contains("matches no op"), "{}", text(&out.stderr));
}

#[test]
fn explain_rewrites_says_why_a_quantize_stays() {
    // A converted graph: the relu's quantize is rewritten; the sigmoid's stays (no integer form),
    // and so does the input's (a graph input).
    let module = "module {\n  func @f(%x: f32[4]) -> f32[4] {\n\
        %x_q = quantize_per_tensor(%x) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : i8[4]\n\
        %x_dq = dequantize_per_tensor(%x_q) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : f32[4]\n\
        %s = sigmoid(%x_dq) : f32[4]\n\
        %s_q = quantize_per_tensor(%s) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : i8[4]\n\
        %s_dq = dequantize_per_tensor(%s_q) {scale = 0.5, zero_point = 0, qmin = -128, qmax = 127, dtype = i8} : f32[4]\n\
        return %s_dq\n  }\n}\n";
    let out = qc(&["-", "-p", "reference-repr", "--explain-rewrites"], Some(module));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("note: reference-repr: `%s_q` stays in q/dq form: `sigmoid` has no integer form"), "{err}");
    assert!(err.contains("note: reference-repr: `%x_q` stays in q/dq form: it quantizes a graph input"), "{err}");
    let quiet = qc(&["-", "-p", "reference-repr"], Some(module));
    assert!(text(&quiet.stderr).is_empty(), "{}", text(&quiet.stderr));
}

#[test]
fn timing_report() {
    let out = qc(&["-", "-p", "cleanup", "--timing"], Some(GOOD));
    let err = text(&out.stderr);
    assert!(err.contains("pass timing") && err.contains(" cse\n") && err.contains(" total\n"), "{err}");
}

#[test]
fn split_input_file_keeps_line_numbers_and_joins_outputs() {
    let source = format!("{GOOD}// -----\n{BAD}// -----\n{GOOD}");
    let out = qc(&["-", "-p", "none", "--split-input-file"], Some(&source));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    // BAD's line 3 is line 12 of the whole file (8 lines of GOOD, the marker, then 3).
    assert!(err.contains("<stdin>:12:"), "{err}");
    let ok = format!("{GOOD}// -----\n{GOOD}");
    let out = qc(&["-", "-p", "none", "--split-input-file"], Some(&ok));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("{GOOD}// -----\n{GOOD}"));
}

#[test]
fn listings() {
    let out = qc(&["--list-passes"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("cse"));
    let out = qc(&["--list-ops"], None);
    assert!(text(&out.stdout).contains("conv2d(%input, %weight, [%bias])"));
}

#[test]
fn output_is_deterministic() {
    let a = qc(&["-", "-p", "cleanup"], Some(GOOD));
    let b = qc(&["-", "-p", "cleanup"], Some(GOOD));
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn run_subcommand_writes_outputs() {
    use ndarray::{ArrayD, IxDyn};
    use qc::interp::io::{read_npz, write_npy};
    use qc::tensor::Tensor;

    let dir = scratch("run");
    let x = Tensor::F32(ArrayD::from_shape_fn(IxDyn(&[1, 3, 32, 32]), |i| (i[2] as f32 - i[3] as f32) / 32.0));
    std::fs::write(dir.join("x.npy"), write_npy(&x)).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/small_cnn.qir");
    let out = dir.join("out.npz");
    let x_arg = format!("x={}", dir.join("x.npy").display());
    let status = qc(
        &["run", model.to_str().unwrap(), "--input", &x_arg, "-o", out.to_str().unwrap(), "--save-intermediates"],
        None,
    );
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let arrays = read_npz(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(arrays[0].0, "fc");
    assert_eq!(arrays[0].1.shape(), &[1, 10]);
    assert!(arrays.iter().any(|(n, _)| n == "relu_1"));

    // Without -o: a summary line per output.
    let summary = qc(&["run", model.to_str().unwrap(), "--input", &x_arg], None);
    assert!(text(&summary.stdout).starts_with("%fc: f32[1, 10]"), "{}", text(&summary.stdout));

    // A missing input is a diagnostic pointing at the signature; a bad file a plain error.
    let missing = qc(&["run", model.to_str().unwrap()], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("no data for input `%x`"));
    std::fs::write(dir.join("bad.npy"), b"\x93NUMPY").unwrap();
    let bad = format!("x={}", dir.join("bad.npy").display());
    let truncated = qc(&["run", model.to_str().unwrap(), "--input", &bad], None);
    assert_eq!(truncated.status.code(), Some(1));
    assert!(text(&truncated.stderr).starts_with("error: "), "{}", text(&truncated.stderr));
}

#[test]
fn default_pipeline_without_data_stops_after_prepare() {
    let target = scratch("no_data").join("prepared.qir");
    let out = qc(&["examples/small_cnn.qir", "-o", target.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let qir = std::fs::read_to_string(&target).unwrap();
    assert!(qir.contains("= observer(") && !qir.contains("quantize_per_tensor"));
    assert!(text(&out.stderr).contains("stopped after `prepare`"), "{}", text(&out.stderr));
}

#[test]
fn quantize_and_evaluate_a_trained_model() {
    let dir = scratch("eval");
    let target = dir.join("digits.int8.qir");
    let out = qc(
        &[
            "examples/digits_cnn.qir",
            "--calib",
            "examples/digits_calib.npz",
            "--eval",
            "examples/digits_test.npz",
            "-o",
            target.to_str().unwrap(),
        ],
        None,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("eval on 500 samples") && err.contains("SQNR") && err.contains("top-1: float"), "{err}");
    let qir = std::fs::read_to_string(&target).unwrap();
    assert!(qir.contains("quantize_per_tensor") && !qir.contains("observer("));
    assert!(dir.join("digits.int8.safetensors").is_file());

    // Evaluation data that does not fit the graph is an error, and nothing is written.
    let target = dir.join("bad.qir");
    let out = qc(
        &[
            "examples/digits_cnn.qir",
            "--calib",
            "examples/digits_calib.npz",
            "--eval",
            "examples/small_cnn_calib.npz",
            "-o",
            target.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--eval data"), "{}", text(&out.stderr));
    assert!(!target.exists() && !dir.join("bad.safetensors").exists());
}

#[test]
fn quantized_output_reads_back() {
    let dir = scratch("reads_back");
    let target = dir.join("small_cnn.int8.qir");
    let t = target.to_str().unwrap();
    let out = qc(&["examples/small_cnn.qir", "--calib", "examples/small_cnn_calib.npz", "-o", t], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A fixed point of the printer, weights file included, and a valid input to later passes.
    let out = qc(&[t, "-p", "none"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), std::fs::read_to_string(&target).unwrap());
    let reference = dir.join("small_cnn.reference.qir");
    let out = qc(&[t, "-p", "reference-repr", "-o", reference.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
