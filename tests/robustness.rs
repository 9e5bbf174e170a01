//! Robustness: thousands of deterministic random mutations (byte flips, truncations, token
//! deletions and duplications, line swaps) of every example and pass case must never panic the
//! front end, the cleanup passes or the convert passes; when a mutant still compiles, the
//! passes must keep it valid.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use qc::driver::compile;
use qc::passes::manager::Instrumentation;
use qc::passes::registry::expand;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const ALPHABET: &[u8] = b"%@{}[]()=,:;->?\"0123456789.e-abcdefghijklmnopqrstuvwxyz_ \n\t\\/";

fn mutate(source: &str, rng: &mut Rng) -> Vec<u8> {
    let mut bytes = source.as_bytes().to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        if bytes.is_empty() {
            break;
        }
        match rng.below(6) {
            0 => {
                let i = rng.below(bytes.len());
                bytes[i] = ALPHABET[rng.below(ALPHABET.len())];
            }
            1 => bytes.truncate(rng.below(bytes.len())),
            2 | 3 => {
                // Delete or duplicate one whitespace-delimited token.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let tokens: Vec<(usize, &str)> =
                    text.split_whitespace().map(|t| (t.as_ptr() as usize - text.as_ptr() as usize, t)).collect();
                if tokens.is_empty() {
                    continue;
                }
                let (at, tok) = tokens[rng.below(tokens.len())];
                let mut next = text[..at].to_string();
                if rng.below(2) == 0 {
                    next.push_str(tok);
                    next.push(' ');
                }
                next.push_str(&text[at + tok.len()..]);
                bytes = next.into_bytes();
            }
            4 => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = text.lines().collect();
                let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                lines.swap(a, b);
                bytes = lines.join("\n").into_bytes();
            }
            _ => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
        }
    }
    bytes
}

fn corpus(dirs: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "qir")));
        }
    }
    files.sort();
    files
}

/// Compiles `per_file` mutants of every `.qir` in `dirs` through `pipeline`; none may panic,
/// fail without a diagnostic, or be turned into invalid IR by a pass.
fn mutants_survive(dirs: &[&str], pipeline: &[&str], per_file: usize) {
    let names: Vec<String> = pipeline.iter().map(|s| s.to_string()).collect();
    let passes = expand(&names).unwrap();
    let inst = Instrumentation { verify_each: true, ..Default::default() };
    let files = corpus(dirs);
    assert!(!files.is_empty());
    let (mut total, mut compiled) = (0, 0);
    for path in &files {
        let source = std::fs::read_to_string(path).unwrap();
        let dir = path.parent().unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ source.len() as u64);
        for i in 0..per_file {
            let bytes = mutate(&source, &mut rng);
            // Non-UTF-8 input is rejected by the driver before the front end sees it.
            let Ok(text) = String::from_utf8(bytes) else { continue };
            total += 1;
            let outcome =
                catch_unwind(AssertUnwindSafe(|| compile(&text, Some(dir), &passes, &inst, &mut String::new())));
            match outcome {
                Err(_) => panic!("mutant {i} of {} panicked:\n{text}", path.display()),
                Ok(Ok(_)) => compiled += 1,
                Ok(Err(diags)) => {
                    assert!(!diags.is_empty(), "mutant {i} of {} failed without a diagnostic", path.display());
                    assert!(
                        !diags.iter().any(|d| d.message.contains("produced invalid IR")),
                        "mutant {i} of {}: a pass broke a valid graph:\n{text}",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(total > 1000, "only {total} mutants were tried");
    eprintln!("{pipeline:?}: {total} mutants, {compiled} still compiled");
}

#[test]
fn mutations_never_panic() {
    mutants_survive(&["examples", "tests/passes/cse", "tests/passes/dce"], &["cleanup"], 400);
}

/// Calibrated observers and hand-written q/dq graphs, mutated, through everything after
/// calibration.
#[test]
fn convert_passes_survive_mutations() {
    mutants_survive(
        &[
            "tests/passes/convert",
            "tests/passes/duplicate-dq",
            "tests/passes/port-metadata",
            "tests/passes/fold-quantize",
            "tests/passes/reference-repr",
        ],
        &["convert-pt2e", "reference-repr", "cleanup"],
        150,
    );
}
