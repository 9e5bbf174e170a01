//! The `qc` command line: read QIR, run a pipeline, print or write the result.

pub mod eval;
mod expectations;
mod run;
mod split;

pub use split::{split_cases, Case};

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use codespan_reporting::term::termcolor::{ColorChoice, StandardStream};

use crate::diag::{self, Diag, Diagnostics, Files};
use crate::ir::printer::write_module;
use crate::ir::Module;
use crate::ops::{OpKind, Presence};
use crate::passes::manager::{run_pipeline, Instrumentation, Timings};
use crate::passes::registry::{self, PASSES, PIPELINES};
use crate::passes::PassContext;

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
    let default = match crate::passes::annotate::quantizer_by_name(cli.quantizer.as_deref().unwrap_or("xnnpack")) {
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
    let mut pending_weights: Option<(PathBuf, Vec<u8>)> = None;
    for case in cases {
        let mut dumps = String::new();
        let cx =
            PassContext { quantizer: cli.quantizer.clone(), calibration: cli.calib.clone(), ..PassContext::default() };
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
        if let Some(mut module) = output {
            let new_weights = if module.created_weights.is_empty() {
                None
            } else {
                match (&cli.output, cli.split_input_file) {
                    (Some(path), false) => match weights_image(&module) {
                        Ok(bytes) => Some((weights_path_for(path), bytes)),
                        Err(message) => {
                            eprintln!("error: {message}");
                            return 1;
                        }
                    },
                    _ => {
                        eprintln!(
                            "error: the pipeline created {} weight tensor(s), which need a file: write the result with -o FILE (not with --split-input-file)",
                            module.created_weights.len()
                        );
                        return 1;
                    }
                }
            };
            match (&new_weights, &cli.output) {
                (Some((weights_path, _)), _) => {
                    let name = weights_path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                    module.weights = Some(crate::ir::graph::WeightsDecl { path: name, span: crate::diag::Span::NONE });
                }
                (None, Some(path)) => relocate_weights(&mut module, &input_dir, path),
                (None, None) => {}
            }
            if new_weights.is_some() {
                pending_weights = new_weights;
            }
            let mut text = String::new();
            write_module(&mut text, &module);
            outputs.push(text);
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
    let text = outputs.join(&format!("{SPLIT_MARKER}\n"));
    match &cli.output {
        None => {
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()).is_err() {
                return 1;
            }
        }
        Some(path) => {
            // The weights first, so the module never names a file that does not exist yet; a
            // failure removes what was written.
            if let Some((weights_path, bytes)) = &pending_weights {
                if let Err(e) = write_atomically(weights_path, bytes) {
                    eprintln!("error: cannot write {}: {e}", weights_path.display());
                    return 1;
                }
            }
            if let Err(e) = write_atomically(path, text.as_bytes()) {
                eprintln!("error: cannot write {}: {e}", path.display());
                if let Some((weights_path, _)) = &pending_weights {
                    let _ = std::fs::remove_file(weights_path);
                }
                return 1;
            }
        }
    }
    0
}

/// `out.qir` → `out.safetensors`, beside it.
fn weights_path_for(output: &Path) -> PathBuf {
    output.with_extension("safetensors")
}

/// The safetensors image of every tensor the module's `weight` ops read.
fn weights_image(module: &Module) -> Result<Vec<u8>, String> {
    let mut keys: Vec<&str> = module
        .graphs
        .iter()
        .flat_map(|g| {
            g.ops().filter(|&op| g.op(op).def().name == "weight").filter_map(move |op| g.attr(op, "key")?.as_str())
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    module.weights().to_safetensors(&keys)
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

pub(crate) fn read_input(input: &str) -> Result<(String, String, PathBuf), String> {
    if input == "-" {
        let mut source = String::new();
        std::io::stdin().read_to_string(&mut source).map_err(|e| format!("cannot read standard input: {e}"))?;
        return Ok(("<stdin>".into(), source, PathBuf::from(".")));
    }
    let path = Path::new(input);
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {input}: {e}"))?;
    let source = String::from_utf8(bytes)
        .map_err(|e| format!("{input} is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Ok((input.to_string(), source, dir))
}

/// Writes via a temporary file in the same directory and renames it into place, so readers
/// never see a half-written file and a failure leaves nothing behind.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    // Temporary files are created private (0600); the output gets the usual 0644, or the mode
    // of the file it replaces.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o777);
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Keeps the `weights` path valid when the output lands in another directory.
fn relocate_weights(module: &mut Module, input_dir: &Path, output: &Path) {
    let Some(weights) = &mut module.weights else {
        return;
    };
    let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (Ok(from), Ok(to_dir)) = (std::path::absolute(input_dir.join(&weights.path)), std::path::absolute(out_dir))
    else {
        return;
    };
    weights.path = relative_path(&to_dir, &from).to_string_lossy().into_owned();
}

/// The path of `target` relative to directory `base` (both absolute).
fn relative_path(base: &Path, target: &Path) -> PathBuf {
    let base: Vec<_> = base.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
    let target_parts: Vec<_> = target.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
    let common = base.iter().zip(&target_parts).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return target.to_path_buf();
    }
    let mut out = PathBuf::new();
    for _ in common..base.len() {
        out.push("..");
    }
    for part in &target_parts[common..] {
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
