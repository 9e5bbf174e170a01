//! Weight files: safetensors, memory-mapped so that opening a large file reads only its header.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use ndarray::ArrayD;
use rustc_hash::FxHashMap;
use safetensors::{Dtype, SafeTensors};

use crate::tensor::DType;
use crate::tensor::{decode, Tensor};

/// One tensor's entry in the header.
#[derive(Clone, Debug)]
pub struct WeightInfo {
    /// `Err` holds the safetensors dtype name when QIR has no such element type.
    pub dtype: Result<DType, String>,
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub range: std::ops::Range<usize>,
}

/// An opened safetensors file.
pub struct WeightFile {
    pub path: PathBuf,
    map: Option<Mmap>,
    data_start: usize,
    entries: FxHashMap<String, WeightInfo>,
    /// Tensors decoded by [`WeightFile::shared`] (`None`: requested once, not kept), by key and
    /// layout, kept while the file (its module) lives so that repeated interpreter runs
    /// (calibration batches, benchmarks) decode each weight at most twice per layout asked for.
    decoded: std::sync::Mutex<Decoded>,
}

/// Decoded tensors by key and layout (`None`: requested once, not kept).
type Decoded = FxHashMap<(String, Layout), Option<Arc<Tensor>>>;

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile").field("path", &self.path).field("tensors", &self.entries.len()).finish()
    }
}

fn qir_dtype(d: Dtype) -> Result<DType, String> {
    Ok(match d {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BOOL => DType::Bool,
        other => return Err(format!("{other:?}")),
    })
}

impl WeightFile {
    /// Maps `path` and reads its header. Errors are one-line messages for a diagnostic.
    pub fn open(path: &Path) -> Result<WeightFile, String> {
        let file = crate::regular_file::open(path)?;
        let len = file.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
        // SAFETY: the map is read-only and qc never writes the file it maps; another process
        // truncating it while we run is outside what any mmap-based reader can defend against.
        let map = if len == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map {}: {e}", path.display()))?)
        };
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let (header_len, metadata) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("{} is not a valid safetensors file: {e}", path.display()))?;
        let entries = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = WeightInfo {
                    dtype: qir_dtype(info.dtype),
                    shape: info.shape.clone(),
                    range: info.data_offsets.0..info.data_offsets.1,
                };
                (name, entry)
            })
            .collect();
        Ok(WeightFile {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header_len,
            entries,
            decoded: Default::default(),
        })
    }

    /// The length and hash of the whole file (reads every byte once).
    pub fn digest(&self) -> WeightsDigest {
        WeightsDigest::of(self.map.as_deref().unwrap_or(&[]))
    }

    pub fn info(&self, key: &str) -> Option<&WeightInfo> {
        self.entries.get(key)
    }

    /// Tensor names, sorted (for suggestions and listings).
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// Raw little-endian bytes of `key`.
    pub fn bytes(&self, key: &str) -> Option<&[u8]> {
        let info = self.entries.get(key)?;
        let data = self.map.as_deref()?;
        data.get(self.data_start + info.range.start..self.data_start + info.range.end)
    }

    /// Decodes `key` into a tensor (a copy: data in the file may be unaligned).
    pub fn tensor(&self, key: &str) -> Result<Tensor, String> {
        let info = self.entries.get(key).ok_or_else(|| format!("no tensor `{key}` in {}", self.path.display()))?;
        let dtype = info.dtype.clone().map_err(|d| format!("tensor `{key}` has unsupported dtype {d}"))?;
        let bytes = self.bytes(key).unwrap_or(&[]);
        decode(dtype, &info.shape, bytes)
            .ok_or_else(|| format!("tensor `{key}` has {} bytes, which does not match its shape", bytes.len()))
    }

    /// `key` decoded, and shared from the second request on: the first request only decodes
    /// (a single run keeps its peak memory: each weight is freed after its last use), the
    /// second keeps the tensor, in `layout`, and later ones return it without decoding. (Only
    /// kept tensors are laid out: a single run reads the file's layout rather than pay a copy.)
    pub fn shared(&self, key: &str, layout: Layout) -> Result<Arc<Tensor>, String> {
        let mut decoded = self.decoded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = (key.to_string(), layout);
        let seen = match decoded.get(&entry) {
            Some(Some(t)) => return Ok(Arc::clone(t)),
            Some(None) => true,
            None => false,
        };
        let t = self.tensor(key)?;
        let t = Arc::new(match layout {
            Layout::ColumnMajor if seen && t.shape().len() == 2 => t.map_layout(Transposed)?,
            _ => t,
        });
        decoded.insert(entry, seen.then(|| Arc::clone(&t)));
        Ok(t)
    }
}

/// How [`WeightFile::shared`] stores a tensor in memory; the values are the same either way.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Row-major (C order), as in the file.
    RowMajor,
    /// For a matrix, column-major (Fortran order: its transpose's data, row-major): how `linear`
    /// reads its `[out, in]` weight without a strided repack (see
    /// [`crate::interp::kernels::linalg::weight_layout`]). Other ranks stay row-major.
    ColumnMajor,
}

/// A copy of a matrix in column-major order (the same values, its transpose's memory).
struct Transposed;
impl crate::tensor::LayoutFn for Transposed {
    fn apply<T: Clone>(&self, a: &ArrayD<T>) -> Result<ArrayD<T>, String> {
        Ok(a.t().as_standard_layout().into_owned().reversed_axes())
    }
}

/// What a module's `weight` ops can read: tensors created by passes, then the weights file.
#[derive(Copy, Clone)]
pub struct Weights<'a> {
    pub file: Option<&'a WeightFile>,
    pub created: &'a std::collections::BTreeMap<String, std::sync::Arc<Tensor>>,
}

impl Weights<'_> {
    /// Whether a created tensor or the file (with any element type) has `key`.
    pub fn has(&self, key: &str) -> bool {
        self.created.contains_key(key) || self.file.is_some_and(|f| f.info(key).is_some())
    }

    pub fn tensor(&self, key: &str) -> Result<Tensor, String> {
        if let Some(t) = self.created.get(key) {
            return Ok((**t).clone());
        }
        self.file.ok_or("the module has no weights file")?.tensor(key)
    }

    /// Like [`Weights::tensor`], shared instead of copied (see [`WeightFile::shared`]). `layout`
    /// is a preference: tensors created by passes are shared as they are.
    pub fn shared(&self, key: &str, layout: Layout) -> Result<Arc<Tensor>, String> {
        if let Some(t) = self.created.get(key) {
            return Ok(Arc::clone(t));
        }
        self.file.ok_or("the module has no weights file")?.shared(key, layout)
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.created.keys().map(String::as_str).collect();
        if let Some(f) = self.file {
            keys.extend(f.keys().into_iter().filter(|k| !self.created.contains_key(*k)));
        }
        keys.sort_unstable();
        keys
    }

    /// Writes the safetensors file holding `keys` to `out`, one tensor at a time (raw bytes are
    /// copied from the mapped file for the file's tensors, so unchanged weights are
    /// bit-identical and nothing is held in memory twice). Returns the digest of what it wrote.
    pub fn write_safetensors(&self, keys: &[&str], out: &mut dyn Write) -> Result<WeightsDigest, String> {
        enum Source<'t> {
            Created(&'t Tensor),
            File(&'t [u8]),
        }
        let mut header = String::from("{");
        let mut sources = Vec::with_capacity(keys.len());
        let mut offset = 0usize;
        for (i, key) in keys.iter().enumerate() {
            let (dtype, shape, source) = match self.created.get(*key) {
                Some(t) => (t.dtype(), t.shape().to_vec(), Source::Created(t)),
                None => {
                    let file = self.file.ok_or_else(|| format!("no tensor `{key}`"))?;
                    let info = file.info(key).ok_or_else(|| format!("no tensor `{key}` in {}", file.path.display()))?;
                    let dtype = info.dtype.clone().map_err(|d| format!("tensor `{key}` has unsupported dtype {d}"))?;
                    (dtype, info.shape.clone(), Source::File(file.bytes(key).unwrap_or(&[])))
                }
            };
            let len = match &source {
                Source::Created(t) => t.len() * dtype.size_bytes(),
                Source::File(bytes) => bytes.len(),
            };
            let _ = write!(
                header,
                "{}\"{}\":{{\"dtype\":\"{}\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
                if i > 0 { "," } else { "" },
                json_escape(key),
                safetensors_dtype(dtype),
                offset + len
            );
            offset += len;
            sources.push(source);
        }
        header.push('}');
        // Pad the header so the data is 8-byte aligned, as the safetensors writer does.
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut out = DigestWriter::new(out);
        let io = |e: std::io::Error| e.to_string();
        out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        out.write_all(header.as_bytes()).map_err(io)?;
        for source in sources {
            match source {
                Source::Created(t) => t.write_le_bytes(&mut out).map_err(io)?,
                Source::File(bytes) => out.write_all(bytes).map_err(io)?,
            }
        }
        Ok(out.digest())
    }
}

/// What a module records of the weights file qc wrote beside it (`weights "w.safetensors"
/// {bytes = N, xxh3 = "…"}`), so that a `.qir` never silently reads weights from another run:
/// the file's length and its XXH3-128 hash.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WeightsDigest {
    pub bytes: u64,
    pub xxh3: u128,
}

impl WeightsDigest {
    /// The digest of a whole file image.
    pub fn of(bytes: &[u8]) -> WeightsDigest {
        WeightsDigest { bytes: bytes.len() as u64, xxh3: xxhash_rust::xxh3::xxh3_128(bytes) }
    }

    /// The hash as QIR writes it: 32 lowercase hex digits.
    pub fn hash_hex(&self) -> String {
        format!("{:032x}", self.xxh3)
    }
}

/// A writer that hashes and counts what passes through it.
struct DigestWriter<'w> {
    inner: &'w mut dyn Write,
    hasher: xxhash_rust::xxh3::Xxh3,
    bytes: u64,
}

impl<'w> DigestWriter<'w> {
    fn new(inner: &'w mut dyn Write) -> Self {
        DigestWriter { inner, hasher: xxhash_rust::xxh3::Xxh3::new(), bytes: 0 }
    }

    fn digest(&self) -> WeightsDigest {
        WeightsDigest { bytes: self.bytes, xxh3: self.hasher.digest128() }
    }
}

impl Write for DigestWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn safetensors_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F64 => "F64",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I8 => "I8",
        DType::U8 => "U8",
        DType::I16 => "I16",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::Bool => "BOOL",
    }
}

/// A JSON string body for a tensor name.
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
