//! Tensor files: `.npy` (NumPy format 1.0–3.0), `.npz` (zip of `.npy`, stored or deflated) and
//! safetensors, read into [`Tensor`]s and written back.

use std::io::{Read, Seek, Write};
use std::path::Path;

use half::{bf16, f16};
use ndarray::ArrayD;

use crate::ir::DType;
use crate::tensor::Tensor;
use crate::weights::{decode, WeightFile};

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
    let (order, kind) = descr.split_at(1);
    if order == ">" {
        return None;
    }
    Some(match (order, kind) {
        (_, "f4") => DType::F32,
        (_, "f8") => DType::F64,
        (_, "f2") => DType::F16,
        (_, "i1") => DType::I8,
        (_, "u1") => DType::U8,
        (_, "i2") => DType::I16,
        (_, "i4") => DType::I32,
        (_, "i8") => DType::I64,
        (_, "b1") => DType::Bool,
        _ => return None,
    })
}

/// The length of the `.npy` preamble plus header, from its first 12 bytes.
pub fn npy_header_end(prefix: &[u8]) -> Result<usize, String> {
    if prefix.len() < 10 || &prefix[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    match prefix[6] {
        1 => Ok(10 + u16::from_le_bytes([prefix[8], prefix[9]]) as usize),
        2 | 3 if prefix.len() >= 12 => {
            Ok(12 + u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize)
        }
        v => Err(format!("unsupported .npy version {v}")),
    }
}

/// The element type and shape from a `.npy` preamble and header (`bytes` holds at least
/// [`npy_header_end`] bytes).
pub fn parse_npy_header(bytes: &[u8]) -> Result<(DType, Vec<usize>), String> {
    let end = npy_header_end(bytes)?;
    let start = if bytes[6] == 1 { 10 } else { 12 };
    let header = bytes.get(start..end).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or_else(|| format!("the .npy header has no '{key}'"))?;
        let rest = header[at + key.len() + 2..].trim_start();
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

/// Reads one `.npy` image.
pub fn read_npy(bytes: &[u8]) -> Result<Tensor, String> {
    let (dtype, shape) = parse_npy_header(bytes)?;
    let data = &bytes[npy_header_end(bytes)?..];
    let expected =
        shape.iter().try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d)).ok_or("the .npy shape is too large")?;
    if data.len() < expected {
        return Err(format!("truncated .npy data: {} bytes for shape {shape:?}, expected {expected}", data.len()));
    }
    decode(dtype, &shape, &data[..expected]).ok_or_else(|| "the .npy data does not match its shape".to_string())
}

/// Encodes a tensor as a version-1.0 `.npy` image (bf16 is widened to f32, which NumPy lacks).
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
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&le_bytes(&t));
    out
}

/// Little-endian element bytes in row-major order.
pub fn le_bytes(t: &Tensor) -> Vec<u8> {
    fn bytes<T: Copy, const W: usize>(a: &ArrayD<T>, f: impl Fn(T) -> [u8; W]) -> Vec<u8> {
        a.iter().flat_map(|&v| f(v)).collect()
    }
    match t {
        Tensor::F32(a) => bytes(a, f32::to_le_bytes),
        Tensor::F64(a) => bytes(a, f64::to_le_bytes),
        Tensor::F16(a) => bytes(a, |v: f16| v.to_bits().to_le_bytes()),
        Tensor::BF16(a) => bytes(a, |v: bf16| v.to_bits().to_le_bytes()),
        Tensor::I8(a) => bytes(a, i8::to_le_bytes),
        Tensor::U8(a) => bytes(a, u8::to_le_bytes),
        Tensor::I16(a) => bytes(a, i16::to_le_bytes),
        Tensor::I32(a) => bytes(a, i32::to_le_bytes),
        Tensor::I64(a) => bytes(a, i64::to_le_bytes),
        Tensor::Bool(a) => bytes(a, |v: bool| [u8::from(v)]),
    }
}

/// Every array of an `.npz` archive, in archive order (names without the `.npy` suffix).
pub fn read_npz(reader: impl Read + Seek) -> Result<Vec<(String, Tensor)>, String> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| format!("not a valid .npz archive: {e}"))?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).map_err(|e| format!("cannot read .npz entry {i}: {e}"))?;
        let name = file.name().trim_end_matches(".npy").to_string();
        let mut bytes = Vec::with_capacity(file.size() as usize);
        file.read_to_end(&mut bytes).map_err(|e| format!("cannot read .npz entry `{name}`: {e}"))?;
        out.push((name.clone(), read_npy(&bytes).map_err(|e| format!("`{name}` in the .npz: {e}"))?));
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
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {display}: {e}"))?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("array").to_string();
            Ok(vec![(stem, read_npy(&bytes).map_err(|e| format!("{display}: {e}"))?)])
        }
        "npz" => {
            let file = std::fs::File::open(path).map_err(|e| format!("cannot read {display}: {e}"))?;
            read_npz(std::io::BufReader::new(file)).map_err(|e| format!("{display}: {e}"))
        }
        "safetensors" => {
            let file = WeightFile::open(path)?;
            file.keys().into_iter().map(|k| Ok((k.to_string(), file.tensor(k)?))).collect()
        }
        _ => Err(format!("{display}: unknown tensor file type (expected .npy, .npz or .safetensors)")),
    }
}
