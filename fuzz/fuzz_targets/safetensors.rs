//! Fuzzes the safetensors reader as a module's `weights` file is read: `WeightFile::open` on a
//! file holding the bytes, then every tensor decoded. Any bytes must give tensors or errors,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qc::weights::WeightFile;

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::Builder::new().suffix(".safetensors").tempfile() else { return };
    if std::io::Write::write_all(&mut file, data).is_err() {
        return;
    }
    let Ok(weights) = WeightFile::open(file.path()) else { return };
    for key in weights.keys() {
        let _ = weights.tensor(key);
    }
});
