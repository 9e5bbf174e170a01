//! Bounded, deterministic mutation testing of every reader: shipped files (and small ones built
//! here) are mutated by a fixed-seed generator (bit flips, byte writes, truncations, insertions,
//! deletions, size fields set to extremes, decimal numbers bumped) and each mutant is given to
//! the reader qc uses for that format. Each reader must return (`Ok` or `Err`): a panic fails
//! the test, and an allocation sized by a lying header would abort it. The fuzz targets (fuzz/)
//! search further; this runs in CI, a few thousand cases in a few seconds.

use std::io::Cursor;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use qc::interp::dataset::Dataset;
use qc::interp::io::{read_npy, read_npz, write_npy, write_npz};
use qc::ir::{DType, Dim, TensorType};
use qc::tensor::Tensor;
use qc::weights::WeightFile;

/// Mutants per seed file.
const CASES: usize = 500;

/// xorshift64: a fixed seed gives the same mutants on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A position, half the time near either end, where formats keep their headers and
    /// directories.
    fn position(&mut self, len: usize) -> usize {
        match self.below(4) {
            0 => self.below(len.min(64)),
            1 => len.saturating_sub(1 + self.below(len.min(128))),
            _ => self.below(len),
        }
    }
}

/// Sizes a lying header might state.
const EXTREMES: [u64; 9] = [0, 1, 0x7F, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 32, 1 << 40, u64::MAX];
/// Numbers a lying text header (a `.npy` shape, a QIR type) might state.
const NUMBERS: [&str; 6] =
    ["0", "-1", "4294967296", "1099511627776", "18446744073709551616", "999999999999999999999999"];

/// One to three mutations of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        if b.is_empty() {
            b.push(rng.next() as u8);
        }
        let at = rng.position(b.len());
        match rng.below(7) {
            0 => b[at] ^= 1 << rng.below(8),
            6 => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            1 => b[at] = rng.next() as u8,
            2 => b.truncate(at),
            3 => {
                let extra: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                b.splice(at..at, extra);
            }
            4 => {
                let value = match rng.below(EXTREMES.len() + 1) {
                    i if i < EXTREMES.len() => EXTREMES[i],
                    _ => b.len() as u64 + 1,
                };
                let width = [2, 4, 8][rng.below(3)];
                let end = (at + width).min(b.len());
                let len = end - at;
                b[at..end].copy_from_slice(&value.to_le_bytes()[..len]);
            }
            _ => {
                // Replace a run of decimal digits with another number.
                let starts: Vec<usize> =
                    (0..b.len()).filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit())).collect();
                if starts.is_empty() {
                    continue;
                }
                let start = starts[rng.below(starts.len())];
                let end = (start..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
                b.splice(start..end, NUMBERS[rng.below(NUMBERS.len())].bytes());
            }
        }
    }
    b
}

/// Feeds `CASES` mutants of `seed` to `read`.
fn each_mutant(seed: &[u8], salt: u64, mut read: impl FnMut(&[u8])) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ salt);
    read(seed);
    for _ in 0..CASES {
        read(&mutate(&mut rng, seed));
    }
}

fn shipped(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// Reads batches of `path` as `--calib`/`--eval` do (a few: the point is the reading).
fn read_dataset(path: &Path, inputs: &[(String, TensorType)]) {
    let Ok(mut dataset) = Dataset::open_with(path, inputs.to_vec(), Some("labels")) else { return };
    for _ in 0..4 {
        let Some(Ok(_)) = dataset.next_batch() else { return };
    }
}

#[test]
fn npy_mutants() {
    let t = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![1.0, -2.0, 0.5, 3.0, 4.0, 5.0]).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let inputs = [("x".to_string(), TensorType::new(DType::F32, vec![Dim::Known(1), Dim::Dynamic]))];
    each_mutant(&write_npy(&t), 1, |bytes| {
        let _ = read_npy(bytes);
        std::fs::write(&path, bytes).unwrap();
        read_dataset(&path, &inputs);
    });
}

#[test]
fn npz_mutants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.npz");
    // Deflated (NumPy's savez_compressed), as shipped.
    let digits = [("x".to_string(), TensorType::fixed(DType::F32, &[1, 1, 8, 8]))];
    // Stored (NumPy's savez), with labels, built here.
    let x = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[4, 2]), (0..8).map(|i| i as f32).collect()).unwrap());
    let labels = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[4]), vec![0, 1, 1, 0]).unwrap());
    let mut stored = Cursor::new(Vec::new());
    write_npz(&mut stored, &[("x".to_string(), &x), ("labels".to_string(), &labels)]).unwrap();
    let pairs = [("x".to_string(), TensorType::new(DType::F32, vec![Dim::Dynamic, Dim::Known(2)]))];
    for (salt, (seed, inputs)) in
        [(shipped("examples/digits_calib.npz"), &digits[..]), (stored.into_inner(), &pairs[..])].iter().enumerate()
    {
        each_mutant(seed, 2 + salt as u64, |bytes| {
            let _ = read_npz(Cursor::new(bytes));
            std::fs::write(&path, bytes).unwrap();
            read_dataset(&path, inputs);
        });
    }
}

#[test]
fn safetensors_mutants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    each_mutant(&shipped("tests/golden/add_scalar.safetensors"), 4, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        if let Ok(file) = WeightFile::open(&path) {
            for key in file.keys() {
                let _ = file.tensor(key);
            }
        }
    });
}

#[test]
fn qir_mutants() {
    // Parsing, lowering and the verifier (weights are not loaded: no directory is given).
    each_mutant(&shipped("examples/digits_cnn.qir"), 5, |bytes| {
        let _ = qc::syntax::parse_module(&String::from_utf8_lossy(bytes), None);
    });
}

#[test]
fn quantizer_file_mutants() {
    each_mutant(&shipped("examples/quantizers/mixed.toml"), 6, |bytes| {
        let _ = qc::quantizers::declarative::parse(&String::from_utf8_lossy(bytes));
    });
}
