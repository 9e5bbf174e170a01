//! Opening the files qc reads whole or maps (weights, data, quantizer recipes): only regular
//! files (or symlinks to them), checked before opening, since opening a FIFO blocks until a
//! writer comes and a device such as `/dev/zero` never ends.

use std::path::Path;

/// Opens `path` for reading if it is a regular file.
pub fn open(path: &Path) -> Result<std::fs::File, String> {
    check(path)?;
    std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// The check of [`open`], without opening.
pub fn check(path: &Path) -> Result<(), String> {
    let display = path.display();
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot open {display}: {e}"))?;
    if !metadata.is_file() {
        let kind = if metadata.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(format!("{display} is {kind}; qc reads data from regular files"));
    }
    Ok(())
}
