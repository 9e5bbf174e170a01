//! Calibration data, streamed batch by batch so memory does not grow with the sample count.
//!
//! Two layouts:
//! - one `.npz` (or `.npy` for a single-input graph) holding one array per graph input, samples
//!   along the first axis; batches are cut to the graph input's first dimension (or the whole
//!   array when that dimension is `?`). Arrays stored uncompressed (NumPy's `savez`) are read
//!   straight from the file a batch at a time; compressed ones are decompressed per array.
//! - a directory of such files, read one file at a time in name order.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use super::io::read_npy;
use crate::ir::{Dim, TensorType};
use crate::tensor::Tensor;
use crate::weights::decode;

/// One graph input: its name and declared type.
pub type InputSpec = (String, TensorType);

/// A source of calibration batches.
pub struct Dataset {
    inputs: Vec<InputSpec>,
    /// Arrays read when a file has them (evaluation labels), after the inputs.
    optional: Vec<InputSpec>,
    files: Vec<PathBuf>,
    current: Option<FileBatches>,
    next_file: usize,
}

impl Dataset {
    /// Opens `path` (a file or a directory) for a graph with `inputs`.
    pub fn open(path: &Path, inputs: Vec<InputSpec>) -> Result<Dataset, String> {
        Dataset::open_with(path, inputs, Vec::new())
    }

    /// [`Dataset::open`], also reading the `optional` arrays of the files that have them
    /// (batched like the inputs; a batch then holds them by name too).
    pub fn open_with(path: &Path, inputs: Vec<InputSpec>, optional: Vec<InputSpec>) -> Result<Dataset, String> {
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
            files
        } else {
            vec![path.to_path_buf()]
        };
        Ok(Dataset { inputs, optional, files, current: None, next_file: 0 })
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
                    return Some(batch);
                }
                self.current = None;
            }
            let path = self.files.get(self.next_file)?.clone();
            self.next_file += 1;
            match FileBatches::open(&path, &self.inputs, &self.optional) {
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
    dtype: crate::ir::DType,
    rows: usize,
    /// Shape of one sample (the array shape without its first axis).
    row_shape: Vec<usize>,
}

enum RowSource {
    /// Uncompressed data at a file offset, read on demand.
    File { file: File, offset: u64 },
    /// The little-endian data of a decompressed array.
    Memory(Vec<u8>),
}

struct FileBatches {
    arrays: Vec<ArrayReader>,
    rows: usize,
    batch: usize,
    batches: usize,
    next: usize,
}

impl FileBatches {
    fn open(path: &Path, inputs: &[InputSpec], optional: &[InputSpec]) -> Result<FileBatches, String> {
        let is_npy = path.extension().is_some_and(|e| e == "npy");
        let mut arrays = Vec::with_capacity(inputs.len());
        let mut present: Vec<InputSpec> = inputs.to_vec();
        if is_npy {
            let [(name, _)] = inputs else {
                return Err(format!("a .npy file feeds one input, but the graph has {}: use an .npz", inputs.len()));
            };
            let mut file = File::open(path).map_err(|e| e.to_string())?;
            arrays.push(array_at(name, &mut file, 0)?);
        } else {
            let file = File::open(path).map_err(|e| e.to_string())?;
            let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a valid .npz archive: {e}"))?;
            let names: Vec<String> = zip.file_names().map(|n| n.trim_end_matches(".npy").to_string()).collect();
            present.extend(optional.iter().filter(|(name, _)| names.contains(name)).cloned());
            for (name, _) in &present {
                let entry_name = format!("{name}.npy");
                let mut entry = zip.by_name(&entry_name).map_err(|_| {
                    let known = names.iter().map(String::as_str);
                    format!("no array `{name}` for input `%{name}`; {}", crate::diag::suggest(name, known))
                })?;
                if entry.compression() == zip::CompressionMethod::Stored {
                    let offset = entry.data_start();
                    drop(entry);
                    let mut file = File::open(path).map_err(|e| e.to_string())?;
                    arrays.push(array_at(name, &mut file, offset)?);
                } else {
                    let mut bytes = Vec::new();
                    entry.read_to_end(&mut bytes).map_err(|e| format!("cannot read `{name}`: {e}"))?;
                    let t = read_npy(&bytes).map_err(|e| format!("`{name}`: {e}"))?;
                    let Some((&rows, row_shape)) = t.shape().split_first() else {
                        return Err(format!("`{name}` is a scalar; calibration data has samples along its first axis"));
                    };
                    arrays.push(ArrayReader {
                        name: name.clone(),
                        dtype: t.dtype(),
                        rows,
                        row_shape: row_shape.to_vec(),
                        source: RowSource::Memory(super::io::le_bytes(&t)),
                    });
                }
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
            if a.dtype != ty.dtype {
                return Err(format!("`{name}` is {} but input `%{name}` is {}", a.dtype, ty.dtype));
            }
            let want: Vec<Dim> = ty.shape.get(1..).unwrap_or_default().to_vec();
            let compatible = want.len() == a.row_shape.len()
                && want.iter().zip(&a.row_shape).all(|(d, &n)| d.compatible(Dim::Known(n as u64)));
            if !compatible {
                return Err(format!(
                    "`{name}` has samples of shape {:?}, but input `%{name}` is {ty} (samples along the first axis)",
                    a.row_shape
                ));
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

/// Parses the `.npy` header at `offset` and returns a reader of its rows.
fn array_at(name: &str, file: &mut File, offset: u64) -> Result<ArrayReader, String> {
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut prefix = [0u8; 12];
    file.read_exact(&mut prefix).map_err(|_| format!("`{name}`: truncated .npy header"))?;
    let header_end = super::io::npy_header_end(&prefix).map_err(|e| format!("`{name}`: {e}"))?;
    let mut header = vec![0u8; header_end];
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    file.read_exact(&mut header).map_err(|_| format!("`{name}`: truncated .npy header"))?;
    let (dtype, shape) = super::io::parse_npy_header(&header).map_err(|e| format!("`{name}`: {e}"))?;
    let Some((&rows, row_shape)) = shape.split_first() else {
        return Err(format!("`{name}` is a scalar; calibration data has samples along its first axis"));
    };
    let file = file.try_clone().map_err(|e| e.to_string())?;
    Ok(ArrayReader {
        name: name.to_string(),
        dtype,
        rows,
        row_shape: row_shape.to_vec(),
        source: RowSource::File { file, offset: offset + header_end as u64 },
    })
}

impl ArrayReader {
    fn read(&mut self, start: usize, count: usize) -> Result<Tensor, String> {
        let width = self.row_shape.iter().product::<usize>() * self.dtype.size_bytes();
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
        decode(self.dtype, &shape, &bytes).ok_or_else(|| format!("`{}`: bad data", self.name))
    }
}
