//! Tensor files: `.npy` (NumPy format 1.0–3.0), `.npz` (zip of `.npy`, stored or deflated) and
//! safetensors, read into [`Tensor`]s and written back.

use std::io::{Read, Seek, Write};
use std::path::Path;

use half::bf16;

use crate::ir::DType;
use crate::regular_file;
use crate::tensor::{decode, le_bytes, Tensor};
use crate::weights::WeightFile;

/// The `.npy` descr for a dtype (little-endian). NumPy has no bf16: bf16 tensors are written
/// widened (exactly) to f32.
fn descr(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::BF16 => "<f4",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::Bool => "|b1",
    }
}

fn dtype_of_descr(descr: &str) -> Option<DType> {
    // Byte order: '<' little, '|' not applicable, '=' native (little on every machine qc targets).
    let mut chars = descr.chars();
    let order = chars.next()?;
    if order == '>' {
        return None;
    }
    Some(match chars.as_str() {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "b1" => DType::Bool,
        _ => return None,
    })
}

/// A `.npy` header: what the array is and where its data lies.
#[derive(Clone, Debug)]
pub struct NpyHeader {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Bytes from the start of the image to the data (preamble and header).
    pub data_start: u64,
    /// The data's size the shape implies.
    pub data_bytes: u64,
}

impl NpyHeader {
    /// The byte size of one sample (the shape without its first axis).
    pub fn row_bytes(&self) -> Result<usize, String> {
        let row_shape = self.shape.get(1..).unwrap_or_default();
        checked_bytes(self.dtype, row_shape).ok_or_else(|| "the .npy shape is too large".to_string())
    }
}

/// `dtype` bytes times every dimension, `None` on overflow.
fn checked_bytes(dtype: DType, shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d))
}

/// Reads a `.npy` preamble and header from `reader`, an image of `available` bytes in all. Every
/// size the header states is checked against `available` before anything is allocated, so a
/// header that claims more than the image holds is an error, not an allocation.
pub fn read_npy_header(reader: &mut impl Read, available: u64) -> Result<NpyHeader, String> {
    let mut prefix = [0u8; 12];
    let truncated = |_| "truncated .npy header".to_string();
    reader.read_exact(&mut prefix[..10]).map_err(truncated)?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_start, header_len) = match prefix[6] {
        1 => (10u64, u64::from(u16::from_le_bytes([prefix[8], prefix[9]]))),
        2 | 3 => {
            reader.read_exact(&mut prefix[10..]).map_err(truncated)?;
            (12, u64::from(u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]])))
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let data_start = header_start + header_len;
    if data_start > available {
        return Err(format!(
            "truncated .npy header: it claims {header_len} bytes, but only {} remain",
            available.saturating_sub(header_start)
        ));
    }
    let mut header = Vec::new();
    reader.take(header_len).read_to_end(&mut header).map_err(|e| format!("cannot read the .npy header: {e}"))?;
    if (header.len() as u64) < header_len {
        return Err("truncated .npy header".into());
    }
    let (dtype, shape) = parse_header_text(&header)?;
    let data_bytes = checked_bytes(dtype, &shape).ok_or("the .npy shape is too large")? as u64;
    if data_bytes > available - data_start {
        return Err(format!(
            "truncated .npy data: {} bytes for shape {shape:?}, expected {data_bytes}",
            available - data_start
        ));
    }
    Ok(NpyHeader { dtype, shape, data_start, data_bytes })
}

/// The element type and shape from a `.npy` header's dictionary text.
fn parse_header_text(header: &[u8]) -> Result<(DType, Vec<usize>), String> {
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let quoted = format!("'{key}'");
        let at = header.find(&quoted).ok_or_else(|| format!("the .npy header has no '{key}'"))?;
        let rest = header.get(at + quoted.len()..).unwrap_or_default().trim_start();
        Ok(rest.strip_prefix(':').ok_or("malformed .npy header")?.trim_start())
    };
    let descr_text = field("descr")?;
    let descr =
        descr_text.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or("malformed 'descr' in .npy header")?;
    let dtype = dtype_of_descr(descr).ok_or_else(|| format!("unsupported .npy element type '{descr}'"))?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered .npy arrays are not supported; save with np.ascontiguousarray".into());
    }
    let shape_text = field("shape")?;
    let inner =
        shape_text.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("malformed 'shape' in .npy header")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dimension '{s}' in .npy shape")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dtype, shape))
}

/// Reads one `.npy` image (bytes after its data are ignored).
pub fn read_npy(bytes: &[u8]) -> Result<Tensor, String> {
    let header = read_npy_header(&mut &bytes[..], bytes.len() as u64)?;
    // Both bounds were checked against `bytes.len()` by `read_npy_header`.
    let data = &bytes[header.data_start as usize..(header.data_start + header.data_bytes) as usize];
    decode(header.dtype, &header.shape, data).ok_or_else(|| "the .npy data does not match its shape".to_string())
}

/// An archive entry's `.npy` image is exactly what its header implies: NumPy writes no more, and
/// a mismatch means the archive or the header lies.
pub fn check_entry_size(header: &NpyHeader, declared: u64) -> Result<(), String> {
    let implied = header.data_start + header.data_bytes;
    if implied != declared {
        return Err(format!(
            "the archive declares {declared} bytes for this array, but its .npy header (shape {:?}) implies {implied}",
            header.shape
        ));
    }
    Ok(())
}

/// Reads the `.npy` image of an archive entry that declares `declared` bytes (uncompressed):
/// the header must account for exactly that many, and reading stops there, so neither a lying
/// header nor a lying archive (a decompression bomb) makes qc allocate more than the array's
/// real size. Returns the header and the data bytes.
pub fn read_npy_entry(entry: &mut impl Read, declared: u64) -> Result<(NpyHeader, Vec<u8>), String> {
    let header = read_npy_header(entry, declared)?;
    check_entry_size(&header, declared)?;
    // A compressed array is held whole: it must fit the memory budget like any other tensor.
    super::memory::check(Some(header.data_bytes), || format!("the {} array of shape {:?}", header.dtype, header.shape))
        .map_err(|m| format!("{m} (raise it with `--max-memory`)"))?;
    // Growing as data arrives (from at most a modest first reservation) rather than reserving
    // what the archive claims: memory follows the bytes really decompressed. One byte past the
    // end detects an entry longer than declared; reaching the end also checks its CRC.
    const FIRST_RESERVATION: u64 = 1 << 26;
    let mut data = Vec::with_capacity(header.data_bytes.min(FIRST_RESERVATION) as usize);
    entry.take(header.data_bytes + 1).read_to_end(&mut data).map_err(|e| format!("cannot read the array: {e}"))?;
    match (data.len() as u64).cmp(&header.data_bytes) {
        std::cmp::Ordering::Less => Err(format!(
            "truncated .npy data: {} bytes for shape {:?}, expected {}",
            data.len(),
            header.shape,
            header.data_bytes
        )),
        std::cmp::Ordering::Greater => Err(format!("the entry holds more than the {declared} bytes it declares")),
        std::cmp::Ordering::Equal => Ok((header, data)),
    }
}

/// Encodes a tensor as a `.npy` image (bf16 is widened to f32, which NumPy lacks): version 1.0,
/// or 2.0 (a 4-byte header length) when the header outgrows 1.0's 2-byte one, as NumPy does.
pub fn write_npy(t: &Tensor) -> Vec<u8> {
    let t = match t {
        Tensor::BF16(a) => Tensor::F32(a.mapv(bf16::to_f32)),
        other => other.clone(),
    };
    let shape = t.shape();
    let shape_text = match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}", descr(t.dtype()));
    // Pad so the data starts on a 64-byte boundary, ending the header with a newline.
    let pad = |header: &mut String, preamble: usize| {
        let total = preamble + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
    };
    let mut v1 = header.clone();
    pad(&mut v1, 10);
    let mut out = Vec::new();
    match u16::try_from(v1.len()) {
        Ok(len) => {
            out.extend_from_slice(b"\x93NUMPY\x01\x00");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(v1.as_bytes());
        }
        Err(_) => {
            pad(&mut header, 12);
            // A header over 4 GiB would need a shape of hundreds of millions of dimensions,
            // which no tensor has.
            let len = u32::try_from(header.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(b"\x93NUMPY\x02\x00");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(header.as_bytes());
        }
    }
    out.extend_from_slice(&le_bytes(&t));
    out
}

/// Every array of an `.npz` archive, in archive order (names without the `.npy` suffix).
pub fn read_npz(reader: impl Read + Seek) -> Result<Vec<(String, Tensor)>, String> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| format!("not a valid .npz archive: {e}"))?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| format!("cannot read .npz entry {i}: {e}"))?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        let in_npz = |e: String| format!("`{name}` in the .npz: {e}");
        let declared = entry.size();
        let (header, data) = read_npy_entry(&mut entry, declared).map_err(in_npz)?;
        let tensor = decode(header.dtype, &header.shape, &data)
            .ok_or_else(|| in_npz("the .npy data does not match its shape".into()))?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// Writes named tensors as an uncompressed `.npz` archive.
pub fn write_npz(writer: impl Write + Seek, tensors: &[(String, &Tensor)]) -> Result<(), String> {
    let mut zip = zip::ZipWriter::new(writer);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, t) in tensors {
        zip.start_file(format!("{name}.npy"), options).map_err(|e| e.to_string())?;
        zip.write_all(&write_npy(t)).map_err(|e| e.to_string())?;
    }
    zip.finish().map_err(|e| e.to_string())?;
    Ok(())
}

/// Reads named tensors from a `.npy` (one tensor, named after the file), `.npz` or
/// `.safetensors` file.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    let display = path.display();
    match ext {
        "npy" => {
            let mut bytes = Vec::new();
            regular_file::open(path)?.read_to_end(&mut bytes).map_err(|e| format!("cannot read {display}: {e}"))?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("array").to_string();
            Ok(vec![(stem, read_npy(&bytes).map_err(|e| format!("{display}: {e}"))?)])
        }
        "npz" => read_npz(std::io::BufReader::new(regular_file::open(path)?)).map_err(|e| format!("{display}: {e}")),
        "safetensors" => {
            let file = WeightFile::open(path)?;
            file.keys().into_iter().map(|k| Ok((k.to_string(), file.tensor(k)?))).collect()
        }
        _ => Err(format!("{display}: unknown tensor file type (expected .npy, .npz or .safetensors)")),
    }
}
