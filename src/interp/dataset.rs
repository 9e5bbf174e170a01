//! Calibration data, streamed batch by batch so memory does not grow with the sample count.
//!
//! Two layouts:
//! - one `.npz` (or `.npy` for a single-input graph) holding one array per graph input, samples
//!   along the first axis; batches are cut to the graph input's first dimension (or the whole
//!   array when that dimension is `?`). Arrays stored uncompressed (NumPy's `savez`) are read
//!   straight from the file a batch at a time; compressed ones are decompressed per array.
//! - a directory of such files, read one file at a time in name order.
//!
//! Sizes in headers are checked against the file before anything is allocated: an array's data
//! must fit in the file (a stored array in its archive entry, whose size must be exactly what its
//! header implies), so memory follows the data really present. Float samples must be finite: the
//! first NaN or infinity is reported with its file, array and sample index, where it enters,
//! rather than as a NaN statistic downstream.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use super::io::{check_entry_size, read_npy_entry, read_npy_header, NpyHeader};
use crate::ir::{DType, Dim, TensorType};
use crate::regular_file;
use crate::tensor::{decode, Tensor};

/// One graph input: its name and declared type.
pub type InputSpec = (String, TensorType);

/// A source of calibration batches.
pub struct Dataset {
    inputs: Vec<InputSpec>,
    /// An array read when a file has it (evaluation labels), after the inputs.
    labels: Option<String>,
    files: Vec<PathBuf>,
    current: Option<FileBatches>,
    next_file: usize,
}

impl Dataset {
    /// Opens `path` (a file or a directory) for a graph with `inputs`.
    pub fn open(path: &Path, inputs: Vec<InputSpec>) -> Result<Dataset, String> {
        Dataset::open_with(path, inputs, None)
    }

    /// [`Dataset::open`], also reading the array named `labels` from the files that have it:
    /// one integer class index per sample, of any integer type, batched like the inputs and
    /// given as i64 under its name.
    pub fn open_with(path: &Path, inputs: Vec<InputSpec>, labels: Option<&str>) -> Result<Dataset, String> {
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "npz" || e == "npy"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(format!("{} holds no .npz or .npy files", path.display()));
            }
            files.iter().try_for_each(|f| regular_file::check(f))?;
            files
        } else {
            regular_file::check(path)?;
            vec![path.to_path_buf()]
        };
        Ok(Dataset { inputs, labels: labels.map(str::to_string), files, current: None, next_file: 0 })
    }

    /// The file the last batch came from (for messages about it).
    pub fn current_file(&self) -> Option<&Path> {
        self.next_file.checked_sub(1).and_then(|i| self.files.get(i)).map(PathBuf::as_path)
    }

    /// The number of batches, when it can be known without reading data.
    pub fn batches_hint(&self) -> Option<usize> {
        match (&self.current, self.files.len()) {
            (Some(c), 1) => Some(c.batches),
            _ => None,
        }
    }

    /// The next batch, by input name.
    pub fn next_batch(&mut self) -> Option<Result<FxHashMap<String, Tensor>, String>> {
        loop {
            if let Some(current) = &mut self.current {
                if let Some(batch) = current.next() {
                    let path = self.files[self.next_file - 1].display();
                    return Some(batch.map_err(|e| format!("{path}: {e}")));
                }
                self.current = None;
            }
            let path = self.files.get(self.next_file)?.clone();
            self.next_file += 1;
            match FileBatches::open(&path, &self.inputs, self.labels.as_deref()) {
                Ok(b) => self.current = Some(b),
                Err(e) => return Some(Err(format!("{}: {e}", path.display()))),
            }
        }
    }
}

/// One input's array in a file: where its rows are and how to read them.
struct ArrayReader {
    name: String,
    source: RowSource,
    dtype: DType,
    rows: usize,
    /// Shape of one sample (the array shape without its first axis).
    row_shape: Vec<usize>,
    /// Bytes of one sample; `rows * row_bytes` bytes of data are known to be present.
    row_bytes: usize,
    /// Labels: any integer type, given as i64.
    is_labels: bool,
}

enum RowSource {
    /// Uncompressed data at a file offset, read on demand.
    File { file: File, offset: u64 },
    /// The little-endian data of a decompressed array.
    Memory(Vec<u8>),
}

impl ArrayReader {
    fn new(name: &str, header: &NpyHeader, source: RowSource) -> Result<ArrayReader, String> {
        let Some((&rows, row_shape)) = header.shape.split_first() else {
            return Err(format!("`{name}` is a scalar; calibration data has samples along its first axis"));
        };
        Ok(ArrayReader {
            name: name.to_string(),
            dtype: header.dtype,
            rows,
            row_shape: row_shape.to_vec(),
            row_bytes: header.row_bytes().map_err(|e| format!("`{name}`: {e}"))?,
            is_labels: false,
            source,
        })
    }
}

struct FileBatches {
    arrays: Vec<ArrayReader>,
    rows: usize,
    batch: usize,
    batches: usize,
    next: usize,
}

impl FileBatches {
    fn open(path: &Path, inputs: &[InputSpec], labels: Option<&str>) -> Result<FileBatches, String> {
        let is_npy = path.extension().is_some_and(|e| e == "npy");
        let mut arrays = Vec::with_capacity(inputs.len());
        let mut present: Vec<InputSpec> = inputs.to_vec();
        let file_len = |file: &File| file.metadata().map(|m| m.len()).map_err(|e| e.to_string());
        if is_npy {
            let [(name, _)] = inputs else {
                return Err(format!("a .npy file feeds one input, but the graph has {}: use an .npz", inputs.len()));
            };
            let mut file = regular_file::open(path)?;
            let len = file_len(&file)?;
            let header = header_at(name, &mut file, 0, len)?;
            arrays.push(ArrayReader::new(name, &header, RowSource::File { file, offset: header.data_start })?);
        } else {
            let file = regular_file::open(path)?;
            let len = file_len(&file)?;
            let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a valid .npz archive: {e}"))?;
            let names: Vec<String> = zip.file_names().map(|n| n.trim_end_matches(".npy").to_string()).collect();
            if let Some(labels) = labels.filter(|l| names.iter().any(|n| n == l)) {
                // The dtype is checked below, as an integer type (any), not as this i64.
                present.push((labels.to_string(), TensorType::new(DType::I64, vec![Dim::Dynamic])));
            }
            for (name, _) in &present {
                let entry_name = format!("{name}.npy");
                let mut entry = zip.by_name(&entry_name).map_err(|_| {
                    let known = names.iter().map(String::as_str);
                    format!("no array `{name}` for input `%{name}`; {}", crate::diag::suggest(name, known))
                })?;
                let declared = entry.size();
                let mut array = if entry.compression() == zip::CompressionMethod::Stored {
                    let offset = entry.data_start();
                    drop(entry);
                    // The entry's data, header included, is exactly what the header implies and
                    // lies inside the file.
                    if offset.checked_add(declared).is_none_or(|end| end > len) {
                        return Err(format!(
                            "`{name}`: the archive says its data ends past the end of the file (truncated)"
                        ));
                    }
                    let mut file = regular_file::open(path)?;
                    let header = header_at(name, &mut file, offset, declared)?;
                    check_entry_size(&header, declared).map_err(|e| format!("`{name}`: {e}"))?;
                    ArrayReader::new(name, &header, RowSource::File { file, offset: offset + header.data_start })?
                } else {
                    let (header, data) = read_npy_entry(&mut entry, declared).map_err(|e| format!("`{name}`: {e}"))?;
                    ArrayReader::new(name, &header, RowSource::Memory(data))?
                };
                array.is_labels = Some(name.as_str()) == labels;
                arrays.push(array);
            }
            let extra: Vec<&String> = names.iter().filter(|n| !present.iter().any(|(i, _)| i == *n)).collect();
            if let Some(e) = extra.first() {
                return Err(format!(
                    "array `{e}` matches no graph input (inputs: {})",
                    inputs.iter().map(|(n, _)| format!("%{n}")).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        // Every array holds the same number of samples; batches follow the first input's batch dim.
        let mut rows = None;
        for (a, (name, ty)) in arrays.iter().zip(&present) {
            let n = a.rows;
            if *rows.get_or_insert(n) != n {
                return Err(format!("`{name}` has {n} samples but `{}` has {}", inputs[0].0, rows.unwrap_or(0)));
            }
            if a.is_labels {
                if !a.dtype.is_int() {
                    return Err(format!("`{name}` is {}, but labels are integer class indices", a.dtype));
                }
                if !a.row_shape.is_empty() {
                    return Err(format!(
                        "`{name}` has samples of shape {:?}, but labels are one class index per sample",
                        a.row_shape
                    ));
                }
                continue;
            }
            if a.dtype != ty.dtype {
                return Err(format!("`{name}` is {} but input `%{name}` is {}", a.dtype, ty.dtype));
            }
            let want: Vec<Dim> = ty.shape.get(1..).unwrap_or_default().to_vec();
            if !fits(&want, &a.row_shape) {
                return Err(layout_mismatch(name, ty, &want, a.rows, &a.row_shape));
            }
        }
        let rows = rows.unwrap_or(0);
        let batch = match inputs.first().and_then(|(_, t)| t.shape.first()) {
            Some(Dim::Known(b)) => *b as usize,
            _ => rows.max(1),
        };
        if batch == 0 || rows % batch != 0 {
            return Err(format!("{rows} samples do not split into batches of {batch} (the inputs' first dimension)"));
        }
        Ok(FileBatches { arrays, rows, batch, batches: rows / batch, next: 0 })
    }

    fn next(&mut self) -> Option<Result<FxHashMap<String, Tensor>, String>> {
        if self.next * self.batch >= self.rows {
            return None;
        }
        let start = self.next * self.batch;
        self.next += 1;
        let mut batch = FxHashMap::default();
        for a in &mut self.arrays {
            match a.read(start, self.batch) {
                Ok(t) => {
                    batch.insert(a.name.clone(), t);
                }
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(batch))
    }
}

/// The `.npy` header at `offset` of `file`, an image of `available` bytes.
fn header_at(name: &str, file: &mut File, offset: u64, available: u64) -> Result<NpyHeader, String> {
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    read_npy_header(&mut std::io::BufReader::new(&*file), available).map_err(|e| format!("`{name}`: {e}"))
}

impl ArrayReader {
    /// Samples `start..start + count` (within `rows`, whose bytes are known to be present).
    fn read(&mut self, start: usize, count: usize) -> Result<Tensor, String> {
        let width = self.row_bytes;
        let mut shape = vec![count];
        shape.extend_from_slice(&self.row_shape);
        let bytes = match &mut self.source {
            RowSource::Memory(data) => data[start * width..(start + count) * width].to_vec(),
            RowSource::File { file, offset } => {
                let mut bytes = vec![0u8; width * count];
                file.seek(SeekFrom::Start(*offset + (start * width) as u64)).map_err(|e| e.to_string())?;
                file.read_exact(&mut bytes)
                    .map_err(|_| format!("`{}`: the file ends before its data does (truncated)", self.name))?;
                bytes
            }
        };
        let t = decode(self.dtype, &shape, &bytes).ok_or_else(|| format!("`{}`: bad data", self.name))?;
        if self.is_labels {
            return Ok(t.cast(DType::I64));
        }
        if let Some((index, value)) = first_non_finite(&t) {
            let per_sample = self.row_shape.iter().product::<usize>().max(1);
            return Err(format!(
                "`{}` sample {} holds {value} (the first non-finite value): data must be finite",
                self.name,
                start + index / per_sample
            ));
        }
        Ok(t)
    }
}

/// The flat index and value of the first NaN or infinity of a float tensor.
fn first_non_finite(t: &Tensor) -> Option<(usize, f64)> {
    fn find<T: Copy>(a: &ndarray::ArrayD<T>, widen: impl Fn(T) -> f64) -> Option<(usize, f64)> {
        a.iter().map(|&v| widen(v)).enumerate().find(|(_, v)| !v.is_finite())
    }
    match t {
        Tensor::F32(a) => find(a, f64::from),
        Tensor::F64(a) => find(a, |v| v),
        Tensor::F16(a) => find(a, half::f16::to_f64),
        Tensor::BF16(a) => find(a, half::bf16::to_f64),
        _ => None,
    }
}

/// Whether samples of shape `row` fit an input whose dims after the batch are `want`.
fn fits(want: &[Dim], row: &[usize]) -> bool {
    want.len() == row.len() && want.iter().zip(row).all(|(d, &n)| d.compatible(Dim::Known(n as u64)))
}

/// Says what layout input `%name` takes and what the array holds: `[N, …]` with samples along
/// the first axis, N a multiple of the input's batch size; and, when one size-1 axis too many
/// (or a missing leading axis) is all that is wrong, which.
fn layout_mismatch(name: &str, ty: &TensorType, want: &[Dim], rows: usize, row: &[usize]) -> String {
    let dims = |d: &[Dim]| d.iter().map(ToString::to_string).collect::<Vec<_>>();
    let expected = std::iter::once("N".to_string()).chain(dims(want)).collect::<Vec<_>>().join(", ");
    let batch = match ty.shape.first() {
        Some(Dim::Known(b)) => format!("N a multiple of {b}"),
        _ => "any N".to_string(),
    };
    let found: Vec<usize> = std::iter::once(rows).chain(row.iter().copied()).collect();
    let drop_axis = (1..found.len()).find(|&i| found[i] == 1 && fits(want, &[&found[1..i], &found[i + 1..]].concat()));
    let hint = match drop_axis {
        Some(i) => format!(" — drop axis {i}?"),
        None if fits(want, &found) => " — one sample without its leading axis? add one".to_string(),
        None => String::new(),
    };
    format!(
        "`{name}` does not fit input `%{name}` ({ty}): expected [{expected}] with {batch} (samples along the \
         first axis, batched by the input's first dimension); found {found:?}{hint}"
    )
}
