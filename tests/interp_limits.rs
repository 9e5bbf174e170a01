//! The interpreter's limits and non-finite values in quantization (issue 13, §4–§6), through the
//! `qc` binary: an oversized op is a diagnostic naming it (not an allocation abort), `--threads`
//! and `--max-memory` are checked, degenerate shapes give PyTorch's answer or a QIR-level
//! error, and an infinity that would be quantized is reported where it is first seen.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{ArrayD, IxDyn};
use qc::interp::io::write_npy;
use qc::tensor::Tensor;

fn qc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qc")).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit status and that stderr holds every one of `phrases`.
fn expect(out: &Output, status: i32, phrases: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(status), "{err}");
    for p in phrases {
        assert!(err.contains(p), "missing {p:?} in:\n{err}");
    }
}

/// A scratch directory under the target dir, fresh for each test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interp_limits").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn f32s(shape: &[usize], values: Vec<f32>) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), values).unwrap())
}

/// Writes `t` as `name.npy` and returns the `--input` binding `name=PATH`.
fn npy(dir: &Path, name: &str, t: &Tensor) -> String {
    let path = dir.join(format!("{name}.npy"));
    std::fs::write(&path, write_npy(t)).unwrap();
    format!("{name}={}", path.display())
}

/// A safetensors file of f32 tensors.
fn safetensors(path: &Path, tensors: &[(&str, &[usize], &[f32])]) {
    let mut header = Vec::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.push(format!(
            "\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{start},{}]}}",
            data.len()
        ));
    }
    let header = format!("{{{}}}", header.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

/// A calibration `.npz` with one array `x`.
fn calib(dir: &Path, x: &Tensor) -> String {
    let path = dir.join("calib.npz");
    let file = std::fs::File::create(&path).unwrap();
    qc::interp::io::write_npz(file, &[("x".to_string(), x)]).unwrap();
    path.to_str().unwrap().to_string()
}

const EXPAND: &str = "module {
  func @main(%x: f32[1]) -> f32[100000,100000,100] {
    %y = expand(%x) {size = [100000, 100000, 100]} : f32[100000,100000,100]
    return %y
  }
}
";

#[test]
fn an_oversized_result_is_a_diagnostic_naming_the_op() {
    let dir = scratch("oversized_result");
    let model = write(&dir, "expand.qir", EXPAND);
    let x = npy(&dir, "x", &f32s(&[1], vec![1.0]));
    // 4 TB: over any default budget (3/4 of physical memory), and over an explicit one.
    let needs = ["`%y = expand` cannot run", "f32[100000,100000,100]", "4000000000000 bytes", "--max-memory"];
    expect(&qc(&["run", &model, "--input", &x]), 1, &needs);
    expect(&qc(&["run", &model, "--input", &x, "--max-memory", "8G"]), 1, &needs);
}

#[test]
fn the_budget_applies_to_products_and_padding() {
    let dir = scratch("products");
    let model = write(
        &dir,
        "mm.qir",
        "module {
  func @main(%a: f32[1000,1], %b: f32[1,1000]) -> f32[1000,1000] {
    %y = matmul(%a, %b) : f32[1000,1000]
    return %y
  }
}
",
    );
    let a = npy(&dir, "a", &f32s(&[1000, 1], vec![1.0; 1000]));
    let b = npy(&dir, "b", &f32s(&[1, 1000], vec![2.0; 1000]));
    // 4 MB of result: within 8M, not within 1M.
    expect(&qc(&["run", &model, "--input", &a, "--input", &b, "--max-memory", "8M"]), 0, &[]);
    expect(
        &qc(&["run", &model, "--input", &a, "--input", &b, "--max-memory", "1M"]),
        1,
        &["`%y = matmul` cannot run", "f32[1000,1000]", "4000000 bytes"],
    );
    // Padding 100000 on a 1x1 image: a 200001x200001 output.
    let conv = write(
        &dir,
        "pad.qir",
        "module {
  func @main(%x: f32[1,1,1,1], %w: f32[1,1,1,1]) -> f32[1,1,200001,200001] {
    %y = conv2d(%x, %w) {padding = [100000, 100000]} : f32[1,1,200001,200001]
    return %y
  }
}
",
    );
    let (x, w) = (npy(&dir, "x", &f32s(&[1, 1, 1, 1], vec![1.0])), npy(&dir, "w", &f32s(&[1, 1, 1, 1], vec![1.0])));
    expect(
        &qc(&["run", &conv, "--input", &x, "--input", &w, "--max-memory", "1G"]),
        1,
        &["`%y = conv2d` cannot run", "f32[1,1,200001,200001]"],
    );
}

#[test]
fn the_budget_covers_the_im2col_buffer() {
    let dir = scratch("im2col");
    // A 4 KiB result, but 64·3·3 columns of 32·32 positions: 2.25 MiB of im2col buffer.
    let model = write(
        &dir,
        "conv.qir",
        "module {
  func @main(%x: f32[1,64,32,32], %w: f32[1,64,3,3]) -> f32[1,1,32,32] {
    %y = conv2d(%x, %w) {padding = [1, 1]} : f32[1,1,32,32]
    return %y
  }
}
",
    );
    let x = npy(&dir, "x", &f32s(&[1, 64, 32, 32], vec![0.5; 64 * 32 * 32]));
    let w = npy(&dir, "w", &f32s(&[1, 64, 3, 3], vec![0.25; 64 * 9]));
    expect(&qc(&["run", &model, "--input", &x, "--input", &w, "--max-memory", "4M"]), 0, &[]);
    expect(
        &qc(&["run", &model, "--input", &x, "--input", &w, "--max-memory", "1M"]),
        1,
        &["`%y = conv2d` failed", "im2col buffer", "2359296 bytes"],
    );
}

#[test]
fn flag_values_out_of_range_are_usage_errors() {
    let dir = scratch("flags");
    let model = write(&dir, "expand.qir", EXPAND);
    expect(&qc(&["run", &model, "--threads", "100000"]), 2, &["100000 threads", "256"]);
    expect(&qc(&["run", &model, "--threads", "5000"]), 2, &["256"]);
    expect(&qc(&["run", &model, "--max-memory", "12X"]), 2, &["not a size"]);
    expect(&qc(&["run", &model, "--max-memory", "0"]), 2, &["more than 0 bytes"]);
    expect(&qc(&[&model, "--max-memory", "lots"]), 2, &["not a size"]);
}

#[test]
fn linear_without_input_features_is_its_bias() {
    let dir = scratch("linear_k0");
    let model = write(
        &dir,
        "k0.qir",
        "module {
  func @main(%x: f32[3,0], %w: f32[2,0], %b: f32[2]) -> f32[3,2] {
    %y = linear(%x, %w, %b) : f32[3,2]
    return %y
  }
}
",
    );
    let x = npy(&dir, "x", &f32s(&[3, 0], vec![]));
    let w = npy(&dir, "w", &f32s(&[2, 0], vec![]));
    let b = npy(&dir, "b", &f32s(&[2], vec![0.5, -1.5]));
    let out = qc(&["run", &model, "--input", &x, "--input", &w, "--input", &b]);
    expect(&out, 0, &[]);
    // Each row is the bias, as torch.nn.functional.linear gives.
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("f32[3, 2]  min -1.500000  max 0.500000  mean -0.500000"), "{summary}");
}

#[test]
fn adaptive_pooling_of_an_empty_plane_is_an_error_in_qir_terms() {
    let dir = scratch("adaptive_empty");
    let model = write(
        &dir,
        "ap.qir",
        "module {
  func @main(%x: f32[1,2,0,0]) -> f32[1,2,1,1] {
    %y = adaptive_avg_pool2d(%x) {output_size = [1, 1]} : f32[1,2,1,1]
    return %y
  }
}
",
    );
    let x = npy(&dir, "x", &f32s(&[1, 2, 0, 0], vec![]));
    let out = qc(&["run", &model, "--input", &x]);
    expect(&out, 1, &["`%y = adaptive_avg_pool2d` failed", "spatial size is 0x0", "non-empty plane"]);
    assert!(!stderr(&out).contains("ShapeError"));
}

const LINEAR: &str = "module {
  weights \"w.safetensors\"
  func @main(%x: f32[1,4]) -> f32[1,2] {
    %w = weight {key = \"w\"} : f32[2,4]
    %b = weight {key = \"b\"} : f32[2]
    %y = linear(%x, %w, %b) : f32[1,2]
    return %y
  }
}
";

/// A linear model whose weight is `w`, and three calibration samples.
fn linear_model(dir: &Path, w: &[f32]) -> (String, String) {
    safetensors(&dir.join("w.safetensors"), &[("w", &[2, 4], w), ("b", &[2], &[0.5, -0.5])]);
    let model = write(dir, "lin.qir", LINEAR);
    let data = calib(dir, &f32s(&[3, 4], (0..12).map(|i| 1.0 + i as f32 * 0.1).collect()));
    (model, data)
}

#[test]
fn an_infinite_weight_is_reported_by_every_quantizer() {
    let dir = scratch("inf_weight");
    let (model, data) = linear_model(&dir, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, f32::INFINITY]);
    let before = std::fs::read(dir.join("w.safetensors")).unwrap();
    for quantizer in ["xnnpack", "x86", "xnnpack-per-tensor"] {
        let output = dir.join(format!("out_{quantizer}.qir"));
        let out = qc(&[&model, "--calib", &data, "--quantizer", quantizer, "-o", output.to_str().unwrap()]);
        expect(&out, 1, &["calibration batch 0", "`%w` (weight `w`)", "1 infinite value", "index [1, 3]"]);
        assert!(!stderr(&out).contains("bug in qc"), "{quantizer}: {}", stderr(&out));
        assert!(!output.exists(), "{quantizer}: nothing is written");
    }
    assert_eq!(std::fs::read(dir.join("w.safetensors")).unwrap(), before);
}

#[test]
fn an_infinity_inside_the_graph_is_reported_at_its_observer() {
    let dir = scratch("inf_activation");
    // Finite weights whose products overflow: the output `%y` is inf, which the histogram
    // observer of xnnpack's static flow would drop silently (as PyTorch's does).
    let (model, data) = linear_model(&dir, &[3e38, 3e38, 3e38, 3e38, 1.0, 1.0, 1.0, 1.0]);
    let output = dir.join("out.qir");
    let out = qc(&[&model, "--calib", &data, "-o", output.to_str().unwrap()]);
    expect(&out, 1, &["calibration batch 0", "`%y`", "`histogram` observer got", "infinite value"]);
    assert!(!output.exists());
}

/// A calibrated linear, with statistics written by hand.
fn calibrated(x_stats: &str, w_stats: &str, w: &str) -> String {
    format!(
        "module {{
  func @main(%x: f32[1,4]) -> f32[1,2] {{
    %w = const {{value = {w}}} : f32[2,4]
    %x_obs = observer(%x) {{kind = \"minmax\", dtype = i8, qmin = -128, qmax = 127, stats = {x_stats}}} : f32[1,4]
    %w_obs = observer(%w) {{kind = \"per_channel_minmax\", dtype = i8, qmin = -127, qmax = 127, qscheme = \"per_channel_symmetric\", ch_axis = 0, instance = 1, stats = {w_stats}}} : f32[2,4]
    %y = linear(%x_obs, %w_obs) : f32[1,2]
    return %y
  }}
}}
"
    )
}

const X_STATS: &str = "{min_val = -1.0, max_val = 2.0}";
const W_STATS: &str = "{min_val = [-2.0, -0.125], max_val = [1.0, 4.0]}";
const W: &str = "[[1.0, -2.0, 0.5, 0.0], [0.25, 0.25, -0.125, 4.0]]";

#[test]
fn statistics_convert_cannot_use_are_rejected_by_the_verifier() {
    let dir = scratch("bad_stats");
    let good = write(&dir, "good.qir", &calibrated(X_STATS, W_STATS, W));
    expect(&qc(&[&good, "-p", "convert"]), 0, &[]);
    let cases = [
        (
            "channels.qir",
            calibrated(X_STATS, "{min_val = [-2.0, -0.1, 1.0], max_val = [1.0, 4.0, 2.0]}", W),
            "3 channels, but the observed value has 2",
        ),
        ("wide.qir", calibrated("{min_val = -3e38, max_val = 3e38}", W_STATS, W), "give scale inf"),
        ("infinite.qir", calibrated("{min_val = -1.0, max_val = inf}", W_STATS, W), "give scale inf"),
    ];
    for (name, source, phrase) in cases {
        let path = write(&dir, name, &source);
        // Rejected when the file is read, whatever the passes.
        for passes in ["convert", "none"] {
            let out = qc(&[&path, "-p", passes]);
            expect(&out, 1, &["invalid observer statistics", phrase, "in these statistics"]);
            assert!(!stderr(&out).contains("bug in qc"), "{name}: {}", stderr(&out));
        }
    }
}

#[test]
fn a_non_finite_constant_is_not_quantized() {
    let dir = scratch("fold_inf");
    let path =
        write(&dir, "fold.qir", &calibrated(X_STATS, W_STATS, "[[1.0, -2.0, 0.5, 0.0], [0.25, 0.25, -0.125, inf]]"));
    expect(&qc(&[&path, "-p", "convert,fold-quantize"]), 1, &["cannot quantize `%w`", "element [1, 3] is inf"]);
}

/// The entropy observer's search over 65 536 bins: the exhaustive search this replaced took
/// 18 s in a release build (quadratic in bins: minutes in this debug build); the pruned search
/// takes well under a second. (Its results are the exhaustive search's: see the observer's
/// unit tests and the PyTorch-derived fixtures.)
#[test]
fn the_entropy_search_is_not_quadratic_in_bins() {
    use qc::ir::quant::QScheme;
    use qc::quant::observer::{ObserverConfig, ObserverKind, ObserverState};
    let mut cfg = ObserverConfig::new(ObserverKind::Entropy, qc::ir::DType::I8, -128, 127, QScheme::PerTensorSymmetric)
        .expect("a valid config");
    cfg.bins = 1 << 16;
    let mut state = ObserverState::new(&cfg);
    // A bell-shaped batch with a long tail.
    let x: Vec<f32> = (0..1 << 16).map(|i| ((i as f32 * 0.618_034).fract() - 0.5).powi(3) * 8.0).collect();
    state.observe_finite(&cfg, &f32s(&[1 << 16], x)).unwrap();
    let q = state.qparams(&cfg).unwrap();
    assert!(q.scale[0].is_finite() && q.scale[0] > 0.0, "{q:?}");
}
