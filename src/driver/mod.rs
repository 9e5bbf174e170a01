//! The `qc` command line: read QIR, run a pipeline, print or write the result.

pub mod eval;
mod expectations;
pub mod output;
mod run;
mod split;

pub use split::{split_cases, Case};

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use codespan_reporting::term::termcolor::{ColorChoice, StandardStream};

use crate::diag::Span;
use crate::diag::{self, Diag, Diagnostics, Files};
use crate::ir::graph::WeightsDecl;
use crate::ir::printer::write_module;
use crate::ir::Module;
use crate::ops::{OpKind, Presence};
use crate::passes::manager::{run_pipeline, Instrumentation, Timings};
use crate::passes::registry::{self, PASSES, PIPELINES};
use crate::passes::PassContext;
use output::{Destination, FileId, Transaction};

/// The line that separates cases under `--split-input-file`.
pub const SPLIT_MARKER: &str = "// -----";

#[derive(Parser, Debug)]
#[command(
    name = "qc",
    version,
    about = "A quantization compiler for neural-network graphs written in QIR.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub compile: CompileArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Evaluate a graph on real data with the reference interpreter.
    Run(run::RunArgs),
}

/// `qc model.qir [OPTIONS]`: compile a module through a pass pipeline.
#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// The .qir file to compile (`-` reads standard input).
    #[arg(required_unless_present_any = ["list_passes", "list_ops"])]
    pub input: Option<String>,
    /// Write the result here (atomically) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Passes and pipelines to run, comma-separated (default: the `default` pipeline).
    #[arg(short, long, value_delimiter = ',', value_name = "PASSES")]
    pub passes: Option<Vec<String>>,
    /// List the passes and pipelines, then exit.
    #[arg(long)]
    pub list_passes: bool,
    /// List the ops of the registry with their operands and attributes, then exit.
    #[arg(long)]
    pub list_ops: bool,
    /// Print the IR (to stderr) before these passes.
    #[arg(long, value_delimiter = ',', value_name = "PASS")]
    pub print_ir_before: Vec<String>,
    /// Print the IR (to stderr) after these passes.
    #[arg(long, value_delimiter = ',', value_name = "PASS")]
    pub print_ir_after: Vec<String>,
    /// Print the IR (to stderr) after every pass.
    #[arg(long)]
    pub print_ir_after_all: bool,
    /// With --print-ir-after(-all): print only after passes that changed the IR; alone: after
    /// every pass that changed it.
    #[arg(long)]
    pub print_ir_after_change: bool,
    /// Verify the IR after each pass.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", action = clap::ArgAction::Set)]
    pub verify_each: bool,
    /// Report the time each pass took (to stderr).
    #[arg(long)]
    pub timing: bool,
    /// Say (as notes on stderr) why a pass left an op alone where its pattern could have
    /// applied, such as each quantize `reference-repr` keeps in q/dq form.
    #[arg(long)]
    pub explain_rewrites: bool,
    /// Treat the input as independent cases separated by `// -----` lines.
    #[arg(long)]
    pub split_input_file: bool,
    /// Check diagnostics against `expected-error` comments in the input instead of reporting them.
    #[arg(long)]
    pub verify_diagnostics: bool,
    /// The quantizer `annotate` runs: `xnnpack` (default), `xnnpack-per-tensor`, `xnnpack-dynamic`, `xnnpack-qat`,
    /// `xnnpack-qat-per-tensor`, `x86`, `x86-qat`, or a quantizer file (`recipe.toml`, see spec/quantizers.md). With a
    /// QAT quantizer the default pipeline is `default-qat`.
    #[arg(long, value_name = "NAME")]
    pub quantizer: Option<String>,
    /// Calibration data for `calibrate`: an .npz with one array per graph input (samples along
    /// the first axis), or a directory of them.
    #[arg(long, value_name = "DATA")]
    pub calib: Option<PathBuf>,
    /// Held-out data to evaluate the result on (laid out like --calib, plus an optional i64
    /// `labels` array): prints the SQNR of each output against the float graph and, with
    /// labels, top-1 accuracy of both.
    #[arg(long, value_name = "DATA")]
    pub eval: Option<PathBuf>,
    /// What the quantized graph is made of: `qdq` (float ops between quantize/dequantize ops,
    /// as PT2E's convert_pt2e) or `reference` (explicit integer arithmetic: adds the
    /// `reference-repr` pass at the end).
    #[arg(long, value_enum, default_value_t = Emit::Qdq)]
    pub emit: Emit,
    /// The most memory one op may allocate while calibrating or evaluating, such as `512M` or
    /// `8G` (default: 3/4 of physical memory).
    #[arg(long, value_name = "SIZE", value_parser = crate::interp::memory::parse_size)]
    pub max_memory: Option<u64>,
    /// When to colour diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
}

#[derive(Copy, Clone, Debug, PartialEq, ValueEnum)]
pub enum Emit {
    Qdq,
    Reference,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// The process entry point; returns the exit status (0 ok, 1 diagnostics, 2 usage).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    run(&cli)
}

pub(crate) fn color_choice(color: Color) -> ColorChoice {
    match color {
        Color::Always => ColorChoice::Always,
        Color::Never => ColorChoice::Never,
        // termcolor's Auto does not check for a terminal; we do.
        Color::Auto if std::io::stderr().is_terminal() => ColorChoice::Auto,
        Color::Auto => ColorChoice::Never,
    }
}

/// Runs the command line; returns the exit status.
pub fn run(cli: &Cli) -> i32 {
    match &cli.command {
        Some(Command::Run(args)) => run::run(args),
        None => compile_command(&cli.compile),
    }
}

fn compile_command(cli: &CompileArgs) -> i32 {
    if let Some(bytes) = cli.max_memory {
        crate::interp::memory::set_max_memory(bytes);
    }
    if cli.list_passes {
        print!("{}", list_passes());
        return 0;
    }
    if cli.list_ops {
        print!("{}", list_ops());
        return 0;
    }
    let stderr = StandardStream::stderr(color_choice(cli.color));
    let usage = |message: String| {
        eprintln!("error: {message}");
        2
    };
    // A QAT quantizer needs PT2E's QAT prepare (no BN folding; conv-bn rewritten for QAT).
    let default = match crate::quantizers::quantizer_by_name(cli.quantizer.as_deref().unwrap_or("xnnpack")) {
        Ok(q) if q.is_qat() => "default-qat",
        _ => "default",
    };
    let names = cli.passes.clone().unwrap_or_else(|| vec![default.to_string()]);
    let mut passes = match registry::expand(&names) {
        Ok(p) => p,
        Err(message) => return usage(message),
    };
    // Without data there are no statistics to convert: stop where PT2E hands over to the user.
    let stops_after_prepare =
        matches!(names.as_slice(), [n] if n == "default" || n == "default-qat") && cli.calib.is_none();
    if stops_after_prepare {
        passes.truncate(passes.iter().position(|p| p.name == "calibrate").unwrap_or(passes.len()));
    }
    if cli.emit == Emit::Reference {
        passes.extend(registry::find("reference-repr"));
    }
    if let Err(message) = check_options_are_used(cli, &passes) {
        return usage(message);
    }
    for name in cli.print_ir_before.iter().chain(&cli.print_ir_after) {
        if registry::find(name).is_none() {
            return usage(format!(
                "--print-ir-before/after: unknown pass `{name}`; {}",
                diag::suggest(name, PASSES.iter().map(|p| p.name))
            ));
        }
    }
    let Some(input) = cli.input.as_deref() else {
        return usage("no input file".into());
    };
    // The output is checked before any work is done, and again once the module's own weights
    // file and the weights the pipeline creates are known.
    let destination = match cli.output.as_deref().map(Destination::resolve).transpose() {
        Ok(d) => d,
        Err(message) => {
            eprintln!("error: {message}");
            return 1;
        }
    };
    let mut inputs_read = options_read(cli, input);
    if let Some(d) = &destination {
        if let Err(message) = refuse_overwriting_inputs(d, &inputs_read) {
            return usage(message);
        }
    }
    let (display_name, source, input_dir) = match read_input(input) {
        Ok(x) => x,
        Err(message) => {
            eprintln!("error: {message}");
            return 1;
        }
    };
    let instrumentation = Instrumentation {
        print_before: cli.print_ir_before.clone(),
        print_after: cli.print_ir_after.clone(),
        print_after_all: cli.print_ir_after_all,
        print_after_change: cli.print_ir_after_change,
        verify_each: cli.verify_each,
    };

    let mut files = Files::new();
    let file = files.add(display_name.clone(), diag::printable_source(&source).into_owned());
    let cases = if cli.split_input_file { split_cases(&source) } else { vec![Case::whole(&source)] };
    let mut outputs = Vec::with_capacity(cases.len());
    let mut failed = false;
    let mut all_timings: Timings = Vec::new();
    for case in cases {
        let mut dumps = String::new();
        let cx = PassContext {
            quantizer: cli.quantizer.clone(),
            calibration: cli.calib.clone(),
            explain_rewrites: cli.explain_rewrites,
            ..PassContext::default()
        };
        let result = match case.empty_case_error() {
            Some(empty) => Err(empty),
            None => compile_with(case.text, Some(&input_dir), &passes, &instrumentation, cx, &mut dumps),
        };
        if !dumps.is_empty() {
            eprint!("{dumps}");
        }
        let (output, diags) = match result {
            Ok(Compiled { module, warnings, timings }) => {
                all_timings.extend(timings);
                (Some(module), warnings)
            }
            Err(diags) => (None, diags),
        };
        let diags = case.place(diags);
        let to_report = if cli.verify_diagnostics {
            match expectations::parse_expectations(&case) {
                Ok(expected) => expectations::check(&case, expected, diags),
                Err(bad) => vec![bad],
            }
        } else {
            diags
        };
        if !to_report.is_empty() {
            let _ = diag::emit(&mut stderr.lock(), &files, file, &to_report);
        }
        failed |= to_report.iter().any(Diag::is_error);
        if let (Some(module), Some(data), false) = (&output, &cli.eval, failed) {
            let report = crate::syntax::parse_module(case.text, Some(&input_dir))
                .and_then(|float| eval::evaluate(&float, module, data));
            match report {
                Ok(report) => eprint!("{}", report.render(data)),
                Err(diags) => {
                    let _ = diag::emit(&mut stderr.lock(), &files, file, &case.place(diags));
                    failed = true;
                }
            }
        }
        if let Some(module) = output {
            if let Some(file) = module.weight_file() {
                inputs_read.push(("the module's weights file", file.path.clone()));
            }
            if !module.created_weights().is_empty() && (cli.output.is_none() || cli.split_input_file) {
                eprintln!(
                    "error: the pipeline created {} weight tensor(s), which need a file: write the result with -o FILE (not with --split-input-file)",
                    module.created_weights().len()
                );
                return 1;
            }
            outputs.push(module);
        }
    }
    if cli.timing {
        eprint!("{}", format_timings(&all_timings));
    }
    if failed {
        return 1;
    }
    if cli.verify_diagnostics {
        return 0;
    }
    if stops_after_prepare {
        eprintln!(
            "note: no calibration data: stopped after `prepare`, so the output holds observers, not quantized ops\n  = help: pass `--calib data.npz` (one array per graph input, samples along the first axis) to calibrate and convert"
        );
    }
    let Some(destination) = destination else {
        let text = print_modules(&outputs);
        let mut stdout = std::io::stdout().lock();
        return if stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()).is_err() { 1 } else { 0 };
    };
    match write_outputs(destination, outputs, &input_dir, &inputs_read) {
        Ok(()) => 0,
        Err(WriteFailure::Refused(message)) => usage(message),
        Err(WriteFailure::Io(message)) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// Why the result was not written.
enum WriteFailure {
    /// Writing would overwrite an input, or the output is no place for what must be written.
    Refused(String),
    Io(String),
}

fn print_modules(modules: &[Module]) -> String {
    let mut text = String::new();
    for (i, module) in modules.iter().enumerate() {
        if i > 0 {
            text.push_str(SPLIT_MARKER);
            text.push('\n');
        }
        write_module(&mut text, module);
    }
    text
}

/// Writes the compiled module(s) to `destination`, and the weights the pipeline created to a
/// `.safetensors` file beside it, as one transaction (see [`output`]).
fn write_outputs(
    destination: Destination,
    mut modules: Vec<Module>,
    input_dir: &Path,
    inputs_read: &[(&str, PathBuf)],
) -> Result<(), WriteFailure> {
    refuse_overwriting_inputs(&destination, inputs_read).map_err(WriteFailure::Refused)?;
    let mut transaction = Transaction::new();
    match modules.as_mut_slice() {
        [module] if !module.created_weights().is_empty() => {
            let weights_path = weights_path_for(destination.path());
            let weights = weights_destination(&destination, &weights_path, module.created_weights().len())?;
            refuse_overwriting_inputs(&weights, inputs_read).map_err(WriteFailure::Refused)?;
            let keys = weight_keys(module);
            let digest = transaction
                .stage(weights, |out| module.weights().write_safetensors(&keys, out))
                .map_err(WriteFailure::Io)?;
            let name = weights_path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            module.weights = Some(WeightsDecl { path: name, span: Span::NONE, digest: Some(digest) });
        }
        modules => {
            for module in modules {
                relocate_weights(module, input_dir, destination.path());
            }
        }
    }
    let text = print_modules(&modules);
    transaction
        .stage(destination, |out| out.write_all(text.as_bytes()).map_err(|e| e.to_string()))
        .map_err(WriteFailure::Io)?;
    transaction.commit().map_err(WriteFailure::Io)
}

/// Where the weights created for the module written to `qir` go, if they can go there.
fn weights_destination(qir: &Destination, weights_path: &Path, count: usize) -> Result<Destination, WriteFailure> {
    let shown = qir.requested.display();
    if !qir.is_regular() {
        return Err(WriteFailure::Refused(format!(
            "the pipeline created {count} weight tensor(s), which are written beside the output as {}; {shown} is not a regular file: name a .qir file",
            weights_path.display()
        )));
    }
    let weights = Destination::resolve(weights_path).map_err(WriteFailure::Io)?;
    if weights.same_file(qir) {
        return Err(WriteFailure::Refused(format!(
            "-o {shown} would be overwritten by the weights written beside it: name the .qir file (e.g. -o {})",
            qir.requested.with_extension("qir").display()
        )));
    }
    if !weights.is_regular() {
        return Err(WriteFailure::Refused(format!(
            "the weights go to {}, which exists and is not a regular file",
            weights_path.display()
        )));
    }
    Ok(weights)
}

/// The files a compile reads besides its input text's weights (added once parsed), by role.
fn options_read(cli: &CompileArgs, input: &str) -> Vec<(&'static str, PathBuf)> {
    let mut read = Vec::new();
    if input != "-" {
        read.push(("the input module", PathBuf::from(input)));
    }
    read.extend(cli.calib.clone().map(|p| ("the calibration data", p)));
    read.extend(cli.eval.clone().map(|p| ("the evaluation data", p)));
    read.extend(cli.quantizer.as_ref().filter(|q| q.ends_with(".toml")).map(|q| ("the quantizer file", q.into())));
    read
}

/// Refuses a destination that is a file the run reads: writing it would destroy the input.
fn refuse_overwriting_inputs(destination: &Destination, inputs_read: &[(&str, PathBuf)]) -> Result<(), String> {
    let Some(target) = destination.existing() else { return Ok(()) };
    match inputs_read.iter().find(|(_, path)| FileId::of(path) == Some(target)) {
        Some((role, path)) => Err(format!(
            "refusing to write {}: it is {role} ({}); qc never overwrites a file it reads, write the result elsewhere",
            destination.requested.display(),
            path.display()
        )),
        None => Ok(()),
    }
}

/// Usage errors for options that no pass of the pipeline reads.
fn check_options_are_used(cli: &CompileArgs, passes: &[&crate::passes::PassDef]) -> Result<(), String> {
    let runs = |pass: &crate::passes::PassDef| passes.iter().any(|p| p.name == pass.name);
    let pipeline = cli.passes.as_ref().map_or_else(|| "default".to_string(), |p| p.join(","));
    let unused = |flag: &str, pass: &crate::passes::PassDef| {
        format!("{flag} is read by the `{}` pass, which `-p {pipeline}` does not run", pass.name)
    };
    if let Some(name) = &cli.quantizer {
        crate::quantizers::check_quantizer_name(name)?;
        if !runs(&crate::passes::annotate::PASS) {
            return Err(unused("--quantizer", &crate::passes::annotate::PASS));
        }
    }
    if cli.calib.is_some() && !runs(&crate::passes::calibrate::PASS) {
        return Err(unused("--calib", &crate::passes::calibrate::PASS));
    }
    if cli.verify_diagnostics && cli.output.is_some() {
        return Err("--verify-diagnostics checks the expected diagnostics and writes no module: drop -o".into());
    }
    Ok(())
}

/// `out.qir` → `out.safetensors`, beside it.
fn weights_path_for(output: &Path) -> PathBuf {
    output.with_extension("safetensors")
}

/// Every tensor key the module's `weight` ops read, sorted.
fn weight_keys(module: &Module) -> Vec<&str> {
    let mut keys: Vec<&str> = module
        .graphs
        .iter()
        .flat_map(|g| {
            g.ops()
                .filter(|&op| g.op(op).kind() == crate::ops::WEIGHT)
                .filter_map(move |op| g.attr(op, "key")?.as_str())
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// A successfully compiled module with what the run noticed along the way.
pub struct Compiled {
    pub module: Module,
    pub warnings: Diagnostics,
    pub timings: Timings,
}

/// The whole job on one source text: parse, lower, verify, run `passes`. IR dumps requested by
/// `instrumentation` are appended to `dumps`.
pub fn compile(
    source: &str,
    weights_dir: Option<&Path>,
    passes: &[&'static crate::passes::PassDef],
    instrumentation: &Instrumentation,
    dumps: &mut String,
) -> Result<Compiled, Diagnostics> {
    compile_with(source, weights_dir, passes, instrumentation, PassContext::default(), dumps)
}

/// [`compile`] with pass options (quantizer, calibration data, …).
pub fn compile_with(
    source: &str,
    weights_dir: Option<&Path>,
    passes: &[&'static crate::passes::PassDef],
    instrumentation: &Instrumentation,
    mut cx: PassContext,
    dumps: &mut String,
) -> Result<Compiled, Diagnostics> {
    let mut module = crate::syntax::parse_module(source, weights_dir)?;
    let timings = run_pipeline(&mut module, passes, instrumentation, &mut cx, dumps)?;
    Ok(Compiled { module, warnings: cx.warnings, timings })
}

/// The most QIR text qc reads: spans are 32-bit byte offsets.
pub const MAX_INPUT_BYTES: u64 = u32::MAX as u64;

/// Reads the module text from a file or `-` (standard input). Regular files, pipes and
/// terminals are read (at most [`MAX_INPUT_BYTES`], checked before reading when the size is
/// known); devices such as `/dev/zero` are refused, and a stream stops at its first byte that
/// is not UTF-8, so neither makes qc read without end.
pub(crate) fn read_input(input: &str) -> Result<(String, String, PathBuf), String> {
    if input == "-" {
        let stdin = std::io::stdin();
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            let fd = stdin.as_fd().try_clone_to_owned().map_err(|e| format!("cannot read standard input: {e}"))?;
            check_text_source(&std::fs::File::from(fd), "standard input")?;
        }
        let source = read_text(stdin.lock(), "standard input")?;
        return Ok(("<stdin>".into(), source, PathBuf::from(".")));
    }
    let path = Path::new(input);
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {input}: {e}"))?;
    check_text_source(&file, input)?;
    let source = read_text(file, input)?;
    // A module's `weights` path is relative to where the .qir really is (a symlink's target), as
    // qc writes it.
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let real =
        if is_link { std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()) } else { path.to_path_buf() };
    let dir = real.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Ok((input.to_string(), source, dir))
}

/// Refuses what cannot be QIR text: a regular file larger than [`MAX_INPUT_BYTES`], or a device
/// (`/dev/zero` and `/dev/urandom` never end). Pipes and terminals are streams and are read.
fn check_text_source(file: &std::fs::File, name: &str) -> Result<(), String> {
    let metadata = file.metadata().map_err(|e| format!("cannot read {name}: {e}"))?;
    let file_type = metadata.file_type();
    if file_type.is_file() {
        if metadata.len() > MAX_INPUT_BYTES {
            return Err(format!(
                "{name} is {} bytes; qc reads QIR files of at most {MAX_INPUT_BYTES} bytes (4 GiB)",
                metadata.len()
            ));
        }
        return Ok(());
    }
    if file_type.is_dir() {
        return Err(format!("cannot read {name}: it is a directory"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() || file.is_terminal() {
            return Ok(());
        }
        if file_type.is_char_device() || file_type.is_block_device() || file_type.is_socket() {
            return Err(format!("{name} is a device or socket, not QIR text; give a .qir file, a pipe or `-`"));
        }
    }
    Ok(())
}

/// Reads UTF-8 text from `reader`, chunk by chunk: invalid UTF-8 is reported at its offset as
/// soon as it arrives, and more than [`MAX_INPUT_BYTES`] is an error, not an allocation.
fn read_text(reader: impl Read, name: &str) -> Result<String, String> {
    const CHUNK: usize = 1 << 16;
    let mut reader = reader.take(MAX_INPUT_BYTES + 1);
    let mut bytes = Vec::new();
    // Bytes before `checked` are valid UTF-8; a character may straddle two chunks.
    let mut checked = 0;
    loop {
        let start = bytes.len();
        bytes.resize(start + CHUNK, 0);
        let read = reader.read(&mut bytes[start..]);
        bytes.truncate(start + *read.as_ref().unwrap_or(&0));
        let at_end = match read {
            Ok(n) => n == 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read {name}: {e}")),
        };
        if bytes.len() as u64 > MAX_INPUT_BYTES {
            return Err(format!("{name} is larger than {MAX_INPUT_BYTES} bytes (4 GiB), the most QIR text qc reads"));
        }
        match std::str::from_utf8(&bytes[checked..]) {
            Ok(_) => checked = bytes.len(),
            // A character cut by the end of a chunk may complete in the next one.
            Err(e) if e.error_len().is_none() && !at_end => checked += e.valid_up_to(),
            Err(e) => {
                return Err(format!("{name} is not UTF-8 text (invalid byte at offset {})", checked + e.valid_up_to()))
            }
        }
        if at_end {
            break;
        }
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("{name} is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
}

/// Writes one output file as a transaction of its own (see [`output`]).
pub fn write_atomically(destination: Destination, bytes: &[u8]) -> Result<(), String> {
    let mut transaction = Transaction::new();
    transaction.stage(destination, |out| out.write_all(bytes).map_err(|e| e.to_string()))?;
    transaction.commit()
}

/// Keeps the `weights` path valid when the output lands in another directory: the path is
/// taken between the real (symlink- and `..`-resolved) directories, as the kernel resolves it
/// when the output is read.
fn relocate_weights(module: &mut Module, input_dir: &Path, output: &Path) {
    let Some(weights) = &mut module.weights else {
        return;
    };
    let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (Ok(from), Ok(to_dir)) = (std::fs::canonicalize(input_dir.join(&weights.path)), std::fs::canonicalize(out_dir))
    else {
        return;
    };
    weights.path = relative_path(&to_dir, &from).to_string_lossy().into_owned();
}

/// The path of `target` relative to directory `base` (both canonical).
fn relative_path(base: &Path, target: &Path) -> PathBuf {
    let common = base.components().zip(target.components()).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..base.components().count() {
        out.push("..");
    }
    for part in target.components().skip(common) {
        out.push(part);
    }
    out
}

pub fn list_passes() -> String {
    let mut out = String::from("passes:\n");
    for p in PASSES {
        out.push_str(&format!("  {:<24}{}\n", p.name, p.description));
    }
    out.push_str("pipelines:\n");
    for (name, description, _) in PIPELINES {
        let passes = registry::expand(&[name.to_string()]).unwrap_or_default();
        let passes: Vec<&str> = passes.iter().map(|p| p.name).collect();
        out.push_str(&format!("  {:<24}{} [{}]\n", name, description, passes.join(",")));
    }
    out
}

pub fn list_ops() -> String {
    let mut out = String::new();
    for kind in OpKind::all() {
        let def = kind.def();
        let operands = def.signature();
        let attrs: Vec<String> = def
            .attrs
            .iter()
            .map(|a| match a.presence {
                Presence::Required => format!("{}: {}", a.name, a.kind.describe()),
                Presence::Optional => format!("{}?: {}", a.name, a.kind.describe()),
                Presence::Default(d) => {
                    let mut v = String::new();
                    crate::ir::printer::write_attr(&mut v, &d.to_attr());
                    format!("{} = {}", a.name, v)
                }
            })
            .collect();
        out.push_str(def.name);
        if !operands.is_empty() {
            out.push_str(&format!("({operands})"));
        }
        if !attrs.is_empty() {
            out.push_str(&format!(" {{{}}}", attrs.join(", ")));
        }
        out.push_str(&format!("\n    {}\n", def.summary));
    }
    out
}

fn format_timings(timings: &Timings) -> String {
    let total: Duration = timings.iter().map(|(_, d)| *d).sum();
    let mut out = String::from("===- pass timing -===\n");
    for (name, d) in timings {
        out.push_str(&format!("  {:>10.3} ms  {name}\n", d.as_secs_f64() * 1e3));
    }
    out.push_str(&format!("  {:>10.3} ms  total\n", total.as_secs_f64() * 1e3));
    out
}
