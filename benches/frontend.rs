//! Front-end throughput: parse + lower + verify, print, and the cleanup pipeline, on generated
//! graphs of 10k, 100k and 1M ops. `cargo bench --bench frontend`.

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use qc::ir::printer::print_module;
use qc::passes::manager::{run_pipeline, Instrumentation};
use qc::passes::registry;
use qc::passes::PassContext;
use qc::syntax::parse_module;

/// The `qc` binary's allocator (src/main.rs), so that the benchmarks time what `qc` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Fewer, longer samples for the big graphs so a run takes minutes, not hours.
fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, ops: usize) {
    if ops >= 1_000_000 {
        group.sample_size(10).measurement_time(Duration::from_secs(20));
    } else if ops >= 100_000 {
        group.sample_size(10).measurement_time(Duration::from_secs(5));
    } else {
        group.sample_size(30).measurement_time(Duration::from_secs(3));
    }
}

fn parse_lower_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_lower_verify");
    for (label, ops) in common::SIZES {
        let text = common::generate(ops);
        configure(&mut group, ops);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &text, |b, text| {
            // Each module is freed, untimed, before the next parse: freeing is not part of
            // building (a one-shot `qc` run exits instead), and every size then parses into memory
            // the allocator already holds. Keeping a batch of modules alive instead would let
            // small graphs reuse warm memory while big ones wait on the kernel to zero fresh pages,
            // which measures the allocator rather than the front end.
            b.iter_batched(
                || (),
                |()| parse_module(text, None).expect("generated QIR is valid"),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn print(c: &mut Criterion) {
    let mut group = c.benchmark_group("print");
    for (label, ops) in common::SIZES {
        let text = common::generate(ops);
        let module = parse_module(&text, None).expect("generated QIR is valid");
        // The generator writes canonical text, so printing reproduces it byte for byte.
        assert!(print_module(&module) == text, "the generator's text is not canonical");
        configure(&mut group, ops);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &module, |b, module| {
            b.iter(|| print_module(module));
        });
    }
    group.finish();
}

fn cleanup_pipeline(c: &mut Criterion) {
    let passes = registry::expand(&["cleanup".into()]).expect("the cleanup pipeline exists");
    let inst = Instrumentation::default();
    let mut group = c.benchmark_group("cleanup_pipeline");
    for (label, ops) in &common::SIZES[..2] {
        let text = common::generate(*ops);
        let module = parse_module(&text, None).expect("generated QIR is valid");
        configure(&mut group, *ops);
        group.throughput(Throughput::Elements(*ops as u64));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_batched(
                || module.clone(),
                |mut module| {
                    let mut cx = PassContext::default();
                    let mut dumps = String::new();
                    run_pipeline(&mut module, &passes, &inst, &mut cx, &mut dumps).expect("cleanup succeeds");
                    module
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, parse_lower_verify, print, cleanup_pipeline);
criterion_main!(benches);
