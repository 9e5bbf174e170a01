//! Readers of data files and of the module text, given lying or hostile input: each case is
//! the smallest crafted file, and each must give a diagnostic naming the file (and array or
//! sample) with exit status 1 (2 for usage errors) — never a panic, an allocation sized by a
//! header's claim, or a read without end. (Issue 13, sections 2, 4 and 5.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ndarray::{ArrayD, IxDyn};
use qc::interp::io::{read_npy, write_npy};
use qc::tensor::Tensor;

/// A module whose `linear` gets an observer, so `--calib` reads its data.
const LINEAR: &str = "module @m {\n  func @f(%x: f32[1,2]) -> f32[1,2] {\n    %w = const {value = [[1.0, 0.0], [0.0, 1.0]]} : f32[2,2]\n    %y = linear(%x, %w) : f32[1,2]\n    return %y\n  }\n}\n";

fn qc_with(args: &[&str], stdin: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn qc(args: &[&str]) -> Output {
    qc_with(args, Stdio::null())
}

/// [`qc`] in 2 GB of address space (on Unix), so that an allocation sized by a lying header
/// aborts the run (and fails the test) instead of succeeding lazily on a large machine.
fn qc_bounded(args: &[&str]) -> Output {
    if !cfg!(unix) {
        return qc(args);
    }
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2000000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_qc"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts the exit status and that stderr holds every phrase; returns stderr.
fn fails(out: &Output, status: i32, phrases: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(status), "{err}");
    for phrase in phrases {
        assert!(err.contains(phrase), "no `{phrase}` in:\n{err}");
    }
    err
}

/// A fresh scratch directory under the target dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("readers-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A module file in `dir` (the linear one with `batch` as its first dimension).
fn module(dir: &Path, batch: &str) -> PathBuf {
    let path = dir.join("m.qir");
    std::fs::write(&path, LINEAR.replace("[1,2]", &format!("[{batch},2]"))).unwrap();
    path
}

fn f32s(shape: &[usize], values: &[f32]) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).unwrap())
}

/// A version-1.0 `.npy` image with a hand-written header dictionary.
fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

/// An `.npz` of raw `.npy` images.
fn npz(path: &Path, entries: &[(&str, Vec<u8>)], deflated: bool) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if deflated { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in entries {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Rewrites the uncompressed size an archive of one entry declares, in its local and central
/// headers, so that the archive lies about it.
fn declare_size(path: &Path, size: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    let find = |sig: &[u8]| bytes.windows(4).position(|w| w == sig).unwrap();
    let (local, central) = (find(b"PK\x03\x04"), find(b"PK\x01\x02"));
    bytes[local + 22..local + 26].copy_from_slice(&size.to_le_bytes());
    bytes[central + 24..central + 28].copy_from_slice(&size.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[test]
fn an_npy_descr_that_is_empty_or_starts_with_a_multibyte_char_is_an_error() {
    let dir = scratch("descr");
    let m = module(&dir, "1");
    for descr in ["", "é4", "€"] {
        let bad = dir.join("x.npy");
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1, 2), }}\n");
        std::fs::write(&bad, npy(&dict, &[0; 8])).unwrap();
        let phrase = format!("unsupported .npy element type '{descr}'");
        fails(&qc(&["run", s(&m), "--input", &format!("x={}", s(&bad))]), 1, &[&phrase]);
        fails(&qc(&[s(&m), "--calib", s(&bad)]), 1, &[&phrase, "x.npy"]);
        fails(&qc(&[s(&m), "-p", "none", "--eval", s(&bad)]), 1, &[&phrase, "x.npy"]);
    }
}

#[test]
fn a_header_claiming_2_pow_40_rows_is_an_error_before_any_allocation() {
    let dir = scratch("rows");
    // `?` batch: the whole array would be one batch of 2^40 rows (8 TiB).
    let m = module(&dir, "?");
    let data = dir.join("d.npz");
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 2), }\n";
    npz(&data, &[("x", npy(dict, &[0; 8]))], false);
    fails(&qc_bounded(&[s(&m), "-p", "none", "--eval", s(&data)]), 1, &["d.npz", "`x`", "truncated .npy data"]);
    fails(&qc_bounded(&[s(&m), "--calib", s(&data)]), 1, &["d.npz", "truncated .npy data"]);
    fails(&qc_bounded(&["run", s(&m), "--input", s(&data)]), 1, &["d.npz", "truncated .npy data"]);
}

#[test]
fn an_npz_entry_declaring_more_than_its_header_implies_is_an_error() {
    let dir = scratch("declared");
    let m = module(&dir, "1");
    let data = dir.join("d.npz");
    npz(&data, &[("x", write_npy(&f32s(&[1, 2], &[1.0, 2.0])))], false);
    declare_size(&data, 0xFFFF_FFF0);
    fails(
        &qc_bounded(&["run", s(&m), "--input", s(&data)]),
        1,
        &["d.npz", "`x`", "the archive declares 4294967280 bytes"],
    );
    fails(&qc_bounded(&[s(&m), "--calib", s(&data)]), 1, &["d.npz", "`x`", "past the end of the file"]);
}

#[test]
fn an_npy_header_claiming_4_gib_is_an_error_before_any_allocation() {
    let dir = scratch("header");
    let m = module(&dir, "1");
    // 136 bytes: a version-3.0 preamble whose header length says 4 GiB.
    let mut bytes = b"\x93NUMPY\x03\x00".to_vec();
    bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    bytes.resize(136, b' ');
    let bad = dir.join("x.npy");
    std::fs::write(&bad, &bytes).unwrap();
    fails(&qc_bounded(&["run", s(&m), "--input", &format!("x={}", s(&bad))]), 1, &["x.npy", "truncated .npy header"]);
    fails(&qc_bounded(&[s(&m), "-p", "none", "--eval", s(&bad)]), 1, &["x.npy", "truncated .npy header"]);
}

#[test]
fn decompression_stops_at_the_size_the_header_implies() {
    let dir = scratch("bomb");
    let m = module(&dir, "1");
    let data = dir.join("d.npz");
    // The header promises 8 bytes of data; the deflated entry expands to 8 MiB more, and the
    // archive is made to declare only what the header implies: reading must stop there.
    let mut image = write_npy(&f32s(&[1, 2], &[1.0, 2.0]));
    let implied = image.len() as u32;
    image.resize(image.len() + (8 << 20), 0);
    npz(&data, &[("x", image.clone())], true);
    // As written, the archive tells the truth, which the header contradicts.
    fails(&qc_bounded(&["run", s(&m), "--input", s(&data)]), 1, &["d.npz", "the archive declares"]);
    declare_size(&data, implied);
    fails(&qc_bounded(&["run", s(&m), "--input", s(&data)]), 1, &["d.npz", "`x`", "holds more than"]);
    fails(&qc_bounded(&[s(&m), "-p", "none", "--eval", s(&data)]), 1, &["d.npz", "`x`", "holds more than"]);
}

#[test]
fn the_npy_writer_uses_version_2_when_the_header_outgrows_version_1() {
    // Rank 22 000: the shape alone takes over 64 KiB of header text.
    let shape = vec![1usize; 22_000];
    let t = Tensor::F32(ArrayD::from_elem(IxDyn(&shape), 1.5));
    let bytes = write_npy(&t);
    assert_eq!(bytes[6], 2, "version 2.0");
    let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    assert_eq!((12 + header_len) % 64, 0, "data aligned to 64 bytes");
    let back = read_npy(&bytes).unwrap();
    assert_eq!(back.shape(), &shape[..]);
    assert_eq!(back.to_f64_array().iter().copied().collect::<Vec<_>>(), vec![1.5]);
    // Small shapes stay version 1.0.
    assert_eq!(write_npy(&f32s(&[2], &[1.0, 2.0]))[6], 1);
}

#[cfg(unix)]
#[test]
fn devices_are_refused_as_module_text() {
    for device in ["/dev/zero", "/dev/urandom"] {
        fails(&qc(&[device]), 1, &[device, "is a device"]);
        let stdin = std::fs::File::open(device).unwrap();
        fails(&qc_with(&["-"], stdin.into()), 1, &["standard input is a device"]);
    }
}

#[test]
fn an_endless_stream_that_is_not_utf8_fails_at_its_first_bad_bytes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qc"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Never closed: qc must stop by itself, at the first invalid byte (the write fails then).
    let writer = std::thread::spawn(move || {
        let chunk = [b'm', 0xFF, 0xFE, 0xFD].repeat(1 << 14);
        while stdin.write_all(&chunk).is_ok() {}
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    fails(&out, 1, &["standard input is not UTF-8 text (invalid byte at offset 1)"]);
}

#[test]
fn a_module_text_over_4_gib_is_refused_before_reading() {
    let dir = scratch("huge");
    let path = dir.join("huge.qir");
    // Sparse: no disk space is used, and qc must not read it.
    std::fs::File::create(&path).unwrap().set_len(5 << 30).unwrap();
    fails(&qc(&[s(&path)]), 1, &["huge.qir is 5368709120 bytes", "at most 4294967295 bytes"]);
}

#[cfg(unix)]
#[test]
fn fifos_are_refused_as_weights_and_data() {
    let dir = scratch("fifo");
    mkfifo(&dir.join("w.safetensors"));
    let m = dir.join("w.qir");
    std::fs::write(&m, LINEAR.replace("module @m {", "module @m {\n  weights \"w.safetensors\"")).unwrap();
    // Opening the FIFO would block forever: qc must check before opening.
    fails(&qc(&[s(&m)]), 1, &["cannot load the weights file", "not a regular file"]);

    let m = module(&dir, "1");
    let (npz, npy) = (dir.join("d.npz"), dir.join("x.npy"));
    mkfifo(&npz);
    mkfifo(&npy);
    fails(&qc(&[s(&m), "--calib", s(&npz)]), 1, &["d.npz is not a regular file"]);
    fails(&qc(&[s(&m), "-p", "none", "--eval", s(&npz)]), 1, &["d.npz is not a regular file"]);
    fails(&qc(&["run", s(&m), "--input", s(&npz)]), 1, &["d.npz is not a regular file"]);
    fails(&qc(&["run", s(&m), "--input", &format!("x={}", s(&npy))]), 1, &["x.npy is not a regular file"]);
    // In a directory of data, a FIFO among the files is refused by name too.
    let data = dir.join("calib");
    std::fs::create_dir(&data).unwrap();
    mkfifo(&data.join("a.npz"));
    fails(&qc(&[s(&m), "--calib", s(&data)]), 1, &["a.npz is not a regular file"]);
    // A quantizer file is read whole, so it must be a regular file too.
    let recipe = dir.join("recipe.toml");
    mkfifo(&recipe);
    fails(&qc(&[s(&m), "--quantizer", s(&recipe)]), 1, &["recipe.toml is not a regular file"]);
}

#[test]
fn a_compressed_array_must_fit_the_memory_budget() {
    // A deflated entry whose headers agree is held whole once decompressed: 64 KiB of f32 zeros
    // (a few hundred bytes on disk) is over a 16 KiB budget before anything is decompressed.
    let dir = scratch("budget");
    let m = module(&dir, "?");
    let data = dir.join("d.npz");
    npz(&data, &[("x", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4096, 4), }", &[0; 65536]))], true);
    fails(
        &qc(&[s(&m), "--calib", s(&data), "--max-memory", "16K"]),
        1,
        &["the f32 array of shape [4096, 4] needs 65536 bytes (64.0 KiB), more than the memory budget"],
    );
}

#[test]
fn run_checks_its_output_name_before_running_the_graph() {
    let dir = scratch("run-output");
    let m = module(&dir, "1");
    // No --input: running the graph would fail on the missing input; the name is checked first.
    let out = dir.join("out.txt");
    fails(&qc(&["run", s(&m), "-o", s(&out)]), 2, &["out.txt: the output must be a .npz or .npy file"]);
    let missing = dir.join("no/such/dir/out.npz");
    fails(&qc(&["run", s(&m), "-o", s(&missing)]), 2, &["no directory"]);
    let npy = dir.join("out.npy");
    fails(&qc(&["run", s(&m), "-o", s(&npy), "--save-intermediates"]), 2, &["use a .npz file"]);
    assert!(!out.exists() && !npy.exists());
}

#[test]
fn non_finite_calibration_data_is_reported_where_it_enters() {
    let dir = scratch("non-finite");
    let m = module(&dir, "1");
    let data = dir.join("c.npz");
    for (value, shown) in [(f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf"), (f32::NAN, "NaN")] {
        npz(&data, &[("x", write_npy(&f32s(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, value])))], false);
        let phrase = format!("`x` sample 2 holds {shown} (the first non-finite value)");
        fails(&qc(&[s(&m), "--calib", s(&data)]), 1, &["c.npz", &phrase]);
    }
    // ±3e38 is finite data, read as it is.
    npz(&data, &[("x", write_npy(&f32s(&[1, 2], &[3e38, -3e38])))], false);
    let out = qc(&[s(&m), "--calib", s(&data)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("non-finite value"), "{err}");
}

/// A module whose output is NaN for negative input.
const SQRT: &str =
    "module @m {\n  func @f(%x: f32[1,2]) -> f32[1,2] {\n    %y = sqrt(%x) : f32[1,2]\n    return %y\n  }\n}\n";

#[test]
fn eval_refuses_non_finite_outputs() {
    let dir = scratch("eval-nan");
    let m = dir.join("m.qir");
    std::fs::write(&m, SQRT).unwrap();
    let data = dir.join("e.npz");
    npz(&data, &[("x", write_npy(&f32s(&[2, 2], &[1.0, 4.0, 9.0, -1.0])))], false);
    fails(
        &qc(&[s(&m), "-p", "none", "--eval", s(&data)]),
        1,
        &[
            "the float graph's output `%y` is NaN",
            "batch starting at sample 1",
            "e.npz",
            "SQNR and accuracy are undefined",
        ],
    );
}

#[test]
fn eval_labels_out_of_range_are_an_error_and_any_integer_type_is_accepted() {
    let dir = scratch("eval-labels");
    let m = module(&dir, "1");
    let data = dir.join("e.npz");
    let x = write_npy(&f32s(&[2, 2], &[1.0, 0.0, 0.0, 1.0]));
    let labels =
        |values: &[i64]| write_npy(&Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2]), values.to_vec()).unwrap()));
    for bad in [5, -1] {
        npz(&data, &[("x", x.clone()), ("labels", labels(&[0, bad]))], false);
        let phrase = format!("label {bad} of sample 1");
        fails(&qc(&[s(&m), "-p", "none", "--eval", s(&data)]), 1, &[&phrase, "e.npz", "has 2 classes (0 to 1)"]);
    }
    for t in [
        Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![0, 1]).unwrap()),
        Tensor::U8(ArrayD::from_shape_vec(IxDyn(&[2]), vec![0, 1]).unwrap()),
    ] {
        npz(&data, &[("x", x.clone()), ("labels", write_npy(&t))], false);
        let out = qc(&[s(&m), "-p", "none", "--eval", s(&data)]);
        let err = fails(&out, 0, &["top-1: float 100.00% (2/2)"]);
        assert!(!err.contains("input `%labels`"), "{err}");
    }
    npz(&data, &[("x", x), ("labels", write_npy(&f32s(&[2], &[0.0, 1.0])))], false);
    fails(
        &qc(&[s(&m), "-p", "none", "--eval", s(&data)]),
        1,
        &["`labels` is f32, but labels are integer class indices"],
    );
}

#[test]
fn directory_calibration_errors_name_the_failing_file() {
    let dir = scratch("calib-dir");
    let m = module(&dir, "1");
    let data = dir.join("calib");
    std::fs::create_dir(&data).unwrap();
    npz(&data.join("a.npz"), &[("x", write_npy(&f32s(&[1, 2], &[1.0, 2.0])))], false);
    // b.npz: the header promises two samples, the entry holds one.
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n";
    npz(&data.join("b.npz"), &[("x", npy(dict, &[0; 8]))], false);
    fails(&qc(&[s(&m), "--calib", s(&data)]), 1, &["b.npz", "`x`", "truncated"]);
    npz(&data.join("b.npz"), &[("x", write_npy(&f32s(&[2, 2], &[1.0, 2.0, f32::NAN, 4.0])))], false);
    fails(&qc(&[s(&m), "--calib", s(&data)]), 1, &["b.npz", "`x` sample 1 holds NaN"]);
}
