//! Every snapshot belongs to an input that still exists: a deleted or renamed case must not
//! leave a stale `.snap` behind (cargo-insta's `--unreferenced=reject`, without needing it).

use std::path::Path;

#[test]
fn every_snapshot_has_its_input() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/snapshots");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    let mut orphans = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "snap") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // The header sits between the first two `---` lines.
        let input = text.lines().skip(1).take_while(|l| *l != "---").find_map(|l| l.strip_prefix("input_file: "));
        match input {
            Some(input) if root.join(input.trim()).exists() => {}
            Some(input) => orphans.push(format!("{} (input {} is gone)", path.display(), input.trim())),
            None => orphans.push(format!("{} (no input_file header)", path.display())),
        }
    }
    assert!(orphans.is_empty(), "stale snapshots:\n{}", orphans.join("\n"));
}
