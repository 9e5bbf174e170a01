//! qc never loses a user's file: outputs that would overwrite an input are refused, a failed or
//! killed write leaves the previous files (or a new pair that refuses to load half-replaced), and
//! devices, FIFOs and symlinks are written through, never replaced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qc::driver::output::{Destination, Fault, Step, Transaction};

fn qc_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qc")).current_dir(dir).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh directory holding the shipped digits CNN, its weights and calibration data.
fn digits_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("outputs").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for file in ["digits_cnn.qir", "digits_cnn.safetensors", "digits_calib.npz"] {
        std::fs::copy(examples.join(file), dir.join(file)).unwrap();
    }
    dir
}

/// Every entry of `dir`: file contents, or a symlink's target.
fn listing(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display()).into_bytes()
            } else if meta.is_dir() {
                b"<dir>".to_vec()
            } else {
                std::fs::read(&path).unwrap()
            };
            (e.file_name().to_string_lossy().into_owned(), content)
        })
        .collect()
}

const QUANTIZE: &[&str] = &["digits_cnn.qir", "--calib", "digits_calib.npz"];

fn quantize_to(dir: &Path, output: &str) -> Output {
    let mut args = QUANTIZE.to_vec();
    args.extend(["-o", output]);
    qc_in(dir, &args)
}

#[test]
fn a_failed_qir_write_keeps_the_weights_file_beside_it() {
    let dir = digits_dir("failed_write");
    std::fs::create_dir(dir.join("out.qir")).unwrap();
    std::fs::write(dir.join("out.safetensors"), "PRECIOUS").unwrap();
    let before = listing(&dir);
    let out = quantize_to(&dir, "out.qir");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot write out.qir: it is a directory"), "{}", stderr(&out));
    assert_eq!(listing(&dir), before);
}

#[test]
fn the_input_module_and_its_weights_are_never_outputs() {
    let dir = digits_dir("inputs_refused");
    let before = listing(&dir);
    for (output, role) in [
        ("digits_cnn.qir", "the input module"),
        ("./digits_cnn.qir", "the input module"),
        ("digits_cnn.safetensors", "the module's weights file"),
        ("digits_calib.npz", "the calibration data"),
    ] {
        let out = quantize_to(&dir, output);
        assert_eq!(out.status.code(), Some(2), "-o {output}: {}", stderr(&out));
        assert!(stderr(&out).contains(&format!("it is {role}")), "-o {output}: {}", stderr(&out));
        assert_eq!(listing(&dir), before, "-o {output} changed a file");
    }
    // A hard link reaches the same file under another name.
    std::fs::hard_link(dir.join("digits_cnn.safetensors"), dir.join("alias.qir")).unwrap();
    let before = listing(&dir);
    let out = quantize_to(&dir, "alias.qir");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(listing(&dir), before);
}

#[test]
fn an_output_named_like_its_own_weights_is_refused() {
    let dir = digits_dir("own_weights");
    let before = listing(&dir);
    let out = quantize_to(&dir, "x.safetensors");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("would be overwritten by the weights written beside it"), "{}", stderr(&out));
    assert_eq!(listing(&dir), before);
}

#[test]
fn a_pair_names_its_weights_with_their_length_and_hash() {
    let dir = digits_dir("pair");
    let out = quantize_to(&dir, "out.qir");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(dir.join("out.qir")).unwrap();
    let weights = std::fs::read(dir.join("out.safetensors")).unwrap();
    let digest = qc::weights::WeightsDigest::of(&weights);
    let decl = format!("weights \"out.safetensors\" {{bytes = {}, xxh3 = \"{}\"}}", weights.len(), digest.hash_hex());
    assert!(text.contains(&decl), "{text}");
    // Weights from another run are refused, not read.
    let other = qc_in(&dir, &[QUANTIZE, &["--quantizer", "x86", "-o", "other.qir"]].concat());
    assert_eq!(other.status.code(), Some(0), "{}", stderr(&other));
    std::fs::rename(dir.join("other.safetensors"), dir.join("out.safetensors")).unwrap();
    let load = qc_in(&dir, &["out.qir", "-p", "none"]);
    assert_eq!(load.status.code(), Some(1));
    assert!(stderr(&load).contains("the weights file is not the one written with this module"), "{}", stderr(&load));
}

#[test]
fn relocated_weights_paths_resolve_through_dot_dot_and_symlinked_directories() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("outputs").join("relocate");
    let _ = std::fs::remove_dir_all(&root);
    let examples = root.join("examples");
    std::fs::create_dir_all(&examples).unwrap();
    std::fs::create_dir_all(root.join("elsewhere/deeper")).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for file in ["transformer_encoder_block.qir", "transformer_encoder_block.safetensors"] {
        std::fs::copy(shipped.join(file), examples.join(file)).unwrap();
    }
    std::os::unix::fs::symlink(root.join("elsewhere/deeper"), examples.join("link")).unwrap();
    for output in ["../t.qir", "link/t.qir", "link/../t.qir", "../elsewhere/./deeper/../t.qir"] {
        let out = qc_in(&examples, &["transformer_encoder_block.qir", "-o", output]);
        assert_eq!(out.status.code(), Some(0), "-o {output}: {}", stderr(&out));
        // The written module loads from any directory, through the path it was written to.
        let load = qc_in(&root, &[&format!("examples/{output}"), "-p", "none"]);
        assert_eq!(load.status.code(), Some(0), "-o {output}: {}", stderr(&load));
    }
}

#[test]
fn devices_are_written_into_and_symlinks_followed() {
    let dir = digits_dir("special");
    let out = qc_in(&dir, &["digits_cnn.qir", "-p", "none", "-o", "/dev/null"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_file().not());
    // A pair needs a regular file for its .qir: the weights cannot go beside a device.
    let out = quantize_to(&dir, "/dev/null");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a regular file"), "{}", stderr(&out));

    let target = dir.join("real");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("model.qir"), "old").unwrap();
    std::os::unix::fs::symlink(target.join("model.qir"), dir.join("link.qir")).unwrap();
    let out = quantize_to(&dir, "link.qir");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(dir.join("link.qir")).unwrap().file_type().is_symlink());
    // The pair lives where the .qir really is, and loads through the link and directly.
    assert!(target.join("model.safetensors").is_file());
    for path in ["link.qir", "real/model.qir"] {
        let load = qc_in(&dir, &[path, "-p", "none"]);
        assert_eq!(load.status.code(), Some(0), "{path}: {}", stderr(&load));
    }
}

#[cfg(unix)]
#[test]
fn a_replaced_file_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = digits_dir("mode");
    std::fs::write(dir.join("out.qir"), "old").unwrap();
    std::fs::set_permissions(dir.join("out.qir"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = quantize_to(&dir, "out.qir");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(dir.join("out.qir")).unwrap().permissions().mode() & 0o777, 0o640);
}

#[test]
fn options_no_pass_reads_are_usage_errors() {
    let dir = digits_dir("usage");
    let cases: &[(&[&str], &str)] = &[
        (&["digits_cnn.qir", "--quantizer", "xnnpak"], "unknown quantizer `xnnpak`; did you mean `xnnpack`?"),
        (&["digits_cnn.qir", "-p", "none", "--quantizer", "x86"], "--quantizer is read by the `annotate` pass"),
        (&["digits_cnn.qir", "-p", "cse", "--calib", "digits_calib.npz"], "--calib is read by the `calibrate` pass"),
        (&["digits_cnn.qir", "--verify-diagnostics", "-o", "x.qir"], "--verify-diagnostics"),
    ];
    let before = listing(&dir);
    for (args, message) in cases {
        let out = qc_in(&dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(listing(&dir), before);
}

/// The state a commit left: the old pair, the new pair, or a new `.qir` that refuses the old
/// weights. Never a `.qir` that loads weights it was not written with.
#[derive(Debug, PartialEq)]
enum Outcome {
    Old,
    New,
    Refused,
}

/// Commits the new pair over the old one in `dst`, injecting `fault` before `step`.
fn commit_pair(case: &Path, old: &Path, new: &Path, fault: Option<(Step, Fault)>) -> (Result<(), String>, Outcome) {
    let _ = std::fs::remove_dir_all(case);
    std::fs::create_dir_all(case).unwrap();
    for file in ["out.qir", "out.safetensors", "digits_cnn.safetensors"] {
        std::fs::copy(old.join(file), case.join(file)).unwrap();
    }
    let mut transaction = Transaction::new();
    // The weights first: the .qir, which names them, is committed before them.
    for file in ["out.safetensors", "out.qir"] {
        let bytes = std::fs::read(new.join(file)).unwrap();
        let destination = Destination::resolve(&case.join(file)).unwrap();
        transaction.stage(destination, |w| w.write_all(&bytes).map_err(|e| e.to_string())).unwrap();
    }
    let result = transaction.commit_with(&mut |step| fault.filter(|(at, _)| *at == step).map(|(_, f)| f));
    let pair =
        |dir: &Path| (std::fs::read(dir.join("out.qir")).unwrap(), std::fs::read(dir.join("out.safetensors")).unwrap());
    let outcome = if pair(case) == pair(old) {
        Outcome::Old
    } else if pair(case) == pair(new) {
        Outcome::New
    } else {
        let load = qc_in(case, &["out.qir", "-p", "none"]);
        assert_eq!(load.status.code(), Some(1), "a half-replaced pair loaded: {}", stderr(&load));
        assert!(stderr(&load).contains("not the one written with this module"), "{}", stderr(&load));
        Outcome::Refused
    };
    (result, outcome)
}

fn temporary_files(dir: &Path) -> Vec<String> {
    listing(dir).into_keys().filter(|name| name.ends_with(".qc-tmp")).collect()
}

use std::ops::Not as _;

#[test]
fn a_pair_commit_failed_or_killed_at_any_step_never_reads_the_wrong_weights() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("outputs").join("commit");
    let old = digits_dir("commit_old");
    let new = digits_dir("commit_new");
    assert_eq!(quantize_to(&old, "out.qir").status.code(), Some(0));
    let mut args = QUANTIZE.to_vec();
    args.extend(["--quantizer", "x86", "-o", "out.qir"]);
    assert_eq!(qc_in(&new, &args).status.code(), Some(0));

    let (result, outcome) = commit_pair(&root.join("clean"), &old, &new, None);
    assert_eq!((result, outcome), (Ok(()), Outcome::New));
    assert!(temporary_files(&root.join("clean")).is_empty());

    let steps = [Step::Name(0), Step::Name(1), Step::Backup(0), Step::Rename(0), Step::Rename(1), Step::Finish];
    for step in steps {
        let case = root.join(format!("{step:?}"));
        // A failed step rolls back completely and leaves no temporary file.
        let (result, outcome) = commit_pair(&case, &old, &new, Some((step, Fault::Fail)));
        if step == Step::Finish {
            assert_eq!((result, outcome), (Ok(()), Outcome::New));
        } else {
            assert!(result.is_err(), "{step:?}");
            assert_eq!(outcome, Outcome::Old, "failed at {step:?}");
        }
        assert!(temporary_files(&case).is_empty(), "failed at {step:?}: {:?}", temporary_files(&case));

        // A kill leaves the old pair, the new one, or a .qir that refuses the old weights.
        let (result, outcome) = commit_pair(&case, &old, &new, Some((step, Fault::Kill)));
        assert!(result.is_err(), "{step:?}");
        let expected = match step {
            Step::Name(_) | Step::Backup(_) | Step::Rename(0) => Outcome::Old,
            Step::Rename(_) => Outcome::Refused,
            Step::Finish => Outcome::New,
        };
        assert_eq!(outcome, expected, "killed at {step:?}");
        // Only a kill between naming the first temporary file and the last rename leaves
        // temporary files (as a real kill in those few system calls would).
        let leftovers = temporary_files(&case);
        assert_eq!(
            leftovers.is_empty(),
            matches!(step, Step::Name(0) | Step::Finish),
            "killed at {step:?}: {leftovers:?}"
        );
    }
}

#[test]
fn qc_run_never_writes_over_its_model_or_inputs() {
    let dir = digits_dir("run_inputs");
    std::os::unix::fs::symlink(dir.join("digits_calib.npz"), dir.join("alias.npz")).unwrap();
    let before = listing(&dir);
    for output in ["digits_calib.npz", "alias.npz", "./digits_calib.npz"] {
        let out = qc_in(&dir, &["run", "digits_cnn.qir", "--input", "x=digits_calib.npz:x", "-o", output]);
        assert_eq!(out.status.code(), Some(2), "-o {output}: {}", stderr(&out));
        assert!(stderr(&out).contains("it is an input"), "-o {output}: {}", stderr(&out));
    }
    assert_eq!(listing(&dir), before);
}
