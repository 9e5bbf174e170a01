//! Calibration data: batches cut along the first axis, streamed from .npz (stored or
//! deflated), .npy and directories, with clear errors for data that does not fit the graph.

use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use qc::interp::dataset::Dataset;
use qc::interp::io::write_npy;
use qc::ir::{DType, TensorType};
use qc::tensor::Tensor;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dataset-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ramp(shape: &[usize], offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f32 + offset).collect()).unwrap())
}

fn npz(path: &Path, arrays: &[(&str, &Tensor)], compressed: bool) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if compressed { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, t) in arrays {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(&write_npy(t)).unwrap();
    }
    zip.finish().unwrap();
}

fn inputs(batch: u64) -> Vec<(String, TensorType)> {
    vec![
        ("x".into(), TensorType::fixed(DType::F32, &[batch, 3])),
        ("y".into(), TensorType::fixed(DType::F32, &[batch, 2])),
    ]
}

fn collect(mut d: Dataset) -> Result<Vec<(Tensor, Tensor)>, String> {
    let mut out = Vec::new();
    while let Some(batch) = d.next_batch() {
        let mut b = batch?;
        out.push((b.remove("x").unwrap(), b.remove("y").unwrap()));
    }
    Ok(out)
}

#[test]
fn batches_follow_the_inputs_first_dimension() {
    for compressed in [false, true] {
        let dir = scratch(if compressed { "deflated" } else { "stored" });
        let (x, y) = (ramp(&[6, 3], 0.0), ramp(&[6, 2], 100.0));
        npz(&dir.join("calib.npz"), &[("x", &x), ("y", &y)], compressed);
        let batches = collect(Dataset::open(&dir.join("calib.npz"), inputs(2)).unwrap()).unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[1].0.shape(), &[2, 3]);
        assert_eq!(batches[1].0.to_f64_array().iter().next().copied(), Some(6.0));
        assert_eq!(batches[2].1.to_f64_array().iter().last().copied(), Some(111.0));
    }
}

#[test]
fn a_directory_is_read_file_by_file() {
    let dir = scratch("directory");
    for (i, name) in ["b.npz", "a.npz"].iter().enumerate() {
        npz(&dir.join(name), &[("x", &ramp(&[1, 3], i as f32)), ("y", &ramp(&[1, 2], 0.0))], false);
    }
    std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
    let batches = collect(Dataset::open(&dir, inputs(1)).unwrap()).unwrap();
    assert_eq!(batches.len(), 2);
    // Name order: a.npz (offset 1) first.
    assert_eq!(batches[0].0.to_f64_array().iter().next().copied(), Some(1.0));
}

#[test]
fn data_that_does_not_fit_is_an_error() {
    let dir = scratch("errors");
    let path = dir.join("bad.npz");
    let error = |arrays: &[(&str, &Tensor)], batch: u64| {
        npz(&path, arrays, false);
        collect(Dataset::open(&path, inputs(batch)).unwrap()).unwrap_err()
    };
    let (x, y) = (ramp(&[4, 3], 0.0), ramp(&[4, 2], 0.0));
    assert!(error(&[("x", &x)], 2).contains("no array `y`"));
    assert!(error(&[("x", &x), ("y", &y), ("z", &y)], 2).contains("`z` matches no graph input"));
    assert!(error(&[("x", &x), ("y", &ramp(&[3, 2], 0.0))], 1).contains("samples"));
    assert!(error(&[("x", &x), ("y", &y)], 3).contains("do not split into batches of 3"));
    let wrong = error(&[("x", &ramp(&[4, 5], 0.0)), ("y", &y)], 2);
    assert!(
        wrong.contains(
            "`x` does not fit input `%x` (f32[2,3]): expected [N, 3] with N a multiple of 2 (samples along the \
             first axis, batched by the input's first dimension); found [4, 5]"
        ),
        "{wrong}"
    );
    // The two layout mistakes users make most get a hint: a size-1 axis too many, and one
    // sample saved without its leading axis.
    let extra_axis = error(&[("x", &ramp(&[4, 1, 3], 0.0)), ("y", &y)], 2);
    assert!(extra_axis.ends_with("found [4, 1, 3] — drop axis 1?"), "{extra_axis}");
    let one_sample = error(&[("x", &ramp(&[3], 0.0)), ("y", &y)], 2);
    assert!(one_sample.ends_with("found [3] — one sample without its leading axis? add one"), "{one_sample}");
    let ints = Tensor::I32(ArrayD::zeros(IxDyn(&[4, 3])));
    assert!(error(&[("x", &ints), ("y", &y)], 2).contains("is i32"));
    // A truncated .npy is found when the file is opened, before its first batch runs.
    let npy = dir.join("x.npy");
    let bytes = write_npy(&ramp(&[4, 3], 0.0));
    std::fs::write(&npy, &bytes[..bytes.len() - 5]).unwrap();
    let one = vec![("x".to_string(), TensorType::fixed(DType::F32, &[2, 3]))];
    let mut d = Dataset::open(&npy, one).unwrap();
    assert!(d.next_batch().unwrap().unwrap_err().contains("truncated"));
}
