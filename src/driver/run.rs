//! `qc run`: evaluate a graph on real data and write its outputs.

use std::path::{Path, PathBuf};

use codespan_reporting::term::termcolor::StandardStream;
use rustc_hash::FxHashMap;

use super::output::Destination;
use super::{color_choice, read_input, refuse_overwriting_inputs, write_atomically, Color};
use crate::diag::{self, Files};
use crate::interp::io::{read_tensors, write_npy, write_npz};
use crate::interp::{bind_inputs, run_graph, RunOptions};
use crate::tensor::Tensor;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The .qir file holding the graph.
    pub model: String,
    /// Input data: `NAME=FILE.npy`, `NAME=FILE.npz:ARRAY`, or a whole `.npz`/`.safetensors` file
    /// whose arrays are bound to the inputs of the same names. Repeatable.
    #[arg(short, long = "input", value_name = "NAME=FILE")]
    pub inputs: Vec<String>,
    /// Write the outputs here: `.npz` (every output by name) or `.npy` (a single output).
    /// Without it, a summary of each output is printed.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write every intermediate value into the `.npz`.
    #[arg(long)]
    pub save_intermediates: bool,
    /// The function to run (default: the module's first).
    #[arg(long, value_name = "NAME")]
    pub func: Option<String>,
    /// Worker threads for the kernels (results are identical for any count; at most 256).
    #[arg(long, value_name = "N", value_parser = crate::interp::parse_threads)]
    pub threads: Option<usize>,
    /// The most memory one op may allocate, such as `512M` or `8G` (default: 3/4 of physical memory).
    #[arg(long, value_name = "SIZE", value_parser = crate::interp::memory::parse_size)]
    pub max_memory: Option<u64>,
    /// When to colour diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
}

/// Runs `qc run`; returns the exit status.
pub fn run(args: &RunArgs) -> i32 {
    match execute(args) {
        Ok(()) => 0,
        Err(Failure::Message(m)) => {
            eprintln!("error: {m}");
            1
        }
        Err(Failure::Reported) => 1,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            2
        }
    }
}

enum Failure {
    /// Diagnostics were already rendered.
    Reported,
    Message(String),
    Usage(String),
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Message(m)
    }
}

fn execute(args: &RunArgs) -> Result<(), Failure> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| format!("cannot start {n} worker threads: {e}; try a smaller --threads"))?;
    }
    if let Some(bytes) = args.max_memory {
        crate::interp::memory::set_max_memory(bytes);
    }
    let (name, source, dir) = read_input(&args.model)?;
    let mut files = Files::new();
    let file = files.add(name, diag::printable_source(&source).into_owned());
    let stderr = StandardStream::stderr(color_choice(args.color));
    let report = |diags: &[crate::diag::Diag]| {
        let _ = diag::emit(&mut stderr.lock(), &files, file, diags);
        Failure::Reported
    };
    let module = crate::syntax::parse_module(&source, Some(&dir)).map_err(|d| report(&d))?;
    let graph = match &args.func {
        None => module.graphs.first().ok_or_else(|| Failure::Message("the module has no functions".into()))?,
        Some(f) => module.graphs.iter().find(|g| g.name() == f).ok_or_else(|| {
            let names: Vec<&str> = module.graphs.iter().map(|g| g.name()).collect();
            Failure::Usage(format!("no function `@{f}`; {}", diag::suggest(f, names.iter().copied())))
        })?,
    };
    let destination = match &args.output {
        Some(path) => {
            check_output(path, graph.outputs().len(), args.save_intermediates)?;
            let destination = Destination::resolve(path)?;
            let mut read = vec![("the model", PathBuf::from(&args.model))];
            read.extend(module.weight_file().map(|f| ("the model's weights file", f.path.clone())));
            read.extend(args.inputs.iter().map(|spec| ("an input", PathBuf::from(split_input_spec(spec).1))));
            refuse_overwriting_inputs(&destination, &read).map_err(Failure::Usage)?;
            Some(destination)
        }
        None => None,
    };
    let mut inputs = FxHashMap::default();
    for spec in &args.inputs {
        for (name, tensor) in load_input(spec)? {
            if inputs.insert(name.clone(), tensor).is_some() {
                return Err(Failure::Usage(format!("input `{name}` is given twice")));
            }
        }
    }
    let bound = bind_inputs(graph, inputs).map_err(|d| report(&[d]))?;
    let options = RunOptions { keep_intermediates: args.save_intermediates };
    let result = run_graph(&module, graph, bound, &options, None).map_err(|d| report(&[d]))?;

    let Some(destination) = destination else {
        print!("{}", summary(&result.outputs));
        return Ok(());
    };
    let mut named: Vec<(String, &Tensor)> = result.outputs.iter().map(|(n, t)| (n.clone(), &**t)).collect();
    named.extend(
        result
            .intermediates
            .iter()
            .filter(|(n, _)| !result.outputs.iter().any(|(o, _)| o == n))
            .map(|(n, t)| (n.clone(), &**t)),
    );
    let bytes = match named.as_slice() {
        [(_, only)] if is_npy(&destination.requested) => write_npy(only),
        _ => {
            let mut buf = std::io::Cursor::new(Vec::new());
            write_npz(&mut buf, &named)?;
            buf.into_inner()
        }
    };
    write_atomically(destination, &bytes)?;
    Ok(())
}

fn is_npy(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "npy")
}

/// Checks `-o` before anything runs, so a bad name costs no time: a `.npz`, or a `.npy` when
/// exactly one value is written, in a directory that exists.
fn check_output(path: &Path, outputs: usize, save_intermediates: bool) -> Result<(), Failure> {
    let usage = |m: String| Err(Failure::Usage(format!("{}: {m}", path.display())));
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => {}
        Some("npy") if outputs == 1 && !save_intermediates => {}
        Some("npy") if save_intermediates => {
            return usage("--save-intermediates writes several values: use a .npz file".into())
        }
        Some("npy") => return usage(format!("the function returns {outputs} values: use a .npz file")),
        _ => return usage("the output must be a .npz or .npy file".into()),
    }
    if path.is_dir() {
        return usage("is a directory".into());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return usage(format!("no directory {} to write into", dir.display()));
    }
    Ok(())
}

/// `NAME=FILE[:ARRAY]` binds one array; a bare `.npz`/`.safetensors` path binds all of its
/// arrays by name.
fn load_input(spec: &str) -> Result<Vec<(String, Tensor)>, Failure> {
    let (Some(name), path, key) = split_input_spec(spec) else {
        let all = read_tensors(Path::new(spec))?;
        if spec.ends_with(".npy") {
            return Err(Failure::Usage(format!("`{spec}`: name the input a .npy file feeds: NAME={spec}")));
        }
        return Ok(all);
    };
    let tensors = read_tensors(Path::new(path))?;
    let tensor = match key {
        Some(k) => tensors
            .into_iter()
            .find(|(n, _)| n == k)
            .map(|(_, t)| t)
            .ok_or_else(|| format!("{path} has no array `{k}`"))?,
        None if tensors.len() == 1 => {
            tensors.into_iter().next().map(|(_, t)| t).ok_or_else(|| format!("{path} is empty"))?
        }
        None => {
            let names: Vec<String> = tensors.into_iter().map(|(n, _)| n).collect();
            return Err(Failure::Usage(format!(
                "{path} holds {} arrays ({}): pick one with {name}={path}:ARRAY",
                names.len(),
                names.join(", ")
            )));
        }
    };
    Ok(vec![(name.to_string(), tensor)])
}

/// `NAME=FILE[:ARRAY]` or a bare `FILE` → (name, file, array).
fn split_input_spec(spec: &str) -> (Option<&str>, &str, Option<&str>) {
    let Some((name, file)) = spec.split_once('=') else {
        return (None, spec, None);
    };
    match file.rsplit_once(':') {
        Some((path, key)) if path.ends_with(".npz") || path.ends_with(".safetensors") => (Some(name), path, Some(key)),
        _ => (Some(name), file, None),
    }
}

/// One line per output: name, type, and min/max/mean of its elements.
fn summary(outputs: &[(String, std::sync::Arc<Tensor>)]) -> String {
    let mut out = String::new();
    for (name, t) in outputs {
        let values = t.to_f64_array();
        let n = values.len().max(1) as f64;
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
        let mean = values.iter().sum::<f64>() / n;
        out.push_str(&format!("%{name}: {}{:?}  min {lo:.6}  max {hi:.6}  mean {mean:.6}\n", t.dtype(), t.shape()));
    }
    out
}
