//! Fuzzes the `.npz` readers through the entry points qc uses: `read_npz` (`qc run --input`)
//! and the streaming [`Dataset`] (`--calib`, `--eval`, with labels). Any bytes must give arrays,
//! batches or an error, never a panic or an allocation sized by a header's claim.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qc::interp::dataset::Dataset;
use qc::ir::{DType, Dim, TensorType};

fuzz_target!(|data: &[u8]| {
    let _ = qc::interp::io::read_npz(std::io::Cursor::new(data));
    let Ok(mut file) = tempfile::Builder::new().suffix(".npz").tempfile() else { return };
    if std::io::Write::write_all(&mut file, data).is_err() {
        return;
    }
    // A fixed batch of one and a whole-array batch, so both batching paths run.
    for batch in [Dim::Known(1), Dim::Dynamic] {
        let inputs = vec![("x".to_string(), TensorType::new(DType::F32, vec![batch, Dim::Dynamic]))];
        let Ok(mut dataset) = Dataset::open_with(file.path(), inputs, Some("labels")) else { continue };
        // Bounded: a well-formed file may hold many batches.
        for _ in 0..64 {
            match dataset.next_batch() {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    }
});
