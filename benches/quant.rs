//! Quantization pass speed, against the PT2E figures of the issues (`tools/bench_pytorch.py`
//! measures PT2E itself on this machine):
//! - `annotate` + `prepare` on a chain of 1600 linear+relu blocks (PT2E's prepare: 10.6 s);
//! - one calibration batch of a ResNet-18-shaped graph with histogram observers (PT2E: 91 ms,
//!   43 ms of it the float forward);
//! - `convert-pt2e` (convert, duplicate-dq, port-metadata, fold-quantize) on the calibrated
//!   1600-block chain (PT2E's convert_pt2e: about 120 s; target < 50 ms);
//! - the default pipeline without calibration on a 100k-op chain (25,000 linear(8→8)+relu
//!   blocks): `prepare-pt2e`, then `convert-pt2e` on the calibrated graph (target: < 1 s in all).

mod models;

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use models::{input, linear_relu_chain, load, resnet18};
use qc::interp::io::write_npz;
use qc::ir::Module;
use qc::passes::manager::{run_pipeline, Instrumentation};
use qc::passes::registry::expand;
use qc::passes::{PassContext, PassDef};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("quant");
    group.sample_size(10);

    let chain = load("chain1600", linear_relu_chain(1600, 64));
    let annotate_prepare = expand(&["annotate".into(), "prepare".into()]).unwrap();
    group.bench_function("annotate_prepare_linear_relu_1600", |b| {
        b.iter_batched(
            || chain.clone(),
            |mut m| {
                run_pipeline(
                    &mut m,
                    &annotate_prepare,
                    &Instrumentation::default(),
                    &mut PassContext::default(),
                    &mut String::new(),
                )
                .unwrap()
            },
            BatchSize::LargeInput,
        )
    });

    let mut resnet = load("resnet18-calib", resnet18());
    let prepare = expand(&["prepare-pt2e".into()]).unwrap();
    run_pipeline(&mut resnet, &prepare, &Instrumentation::default(), &mut PassContext::default(), &mut String::new())
        .unwrap();
    let data = std::env::temp_dir().join("qc-bench-resnet18-calib/one_batch.npz");
    let x = input(&[1, 3, 224, 224]);
    write_npz(std::fs::File::create(&data).unwrap(), &[("x".to_string(), &x)]).unwrap();
    let calibrate = expand(&["calibrate".into()]).unwrap();
    group.bench_function("calibrate_resnet18_histogram_one_batch", |b| {
        b.iter_batched(
            || (resnet.clone(), PassContext { calibration: Some(data.clone()), ..PassContext::default() }),
            |(mut m, mut cx)| {
                run_pipeline(&mut m, &calibrate, &Instrumentation::default(), &mut cx, &mut String::new()).unwrap()
            },
            BatchSize::LargeInput,
        )
    });

    for (label, blocks, width) in [("linear_relu_1600", 1600, 64), ("100k_ops", 25_000, 8)] {
        let module = load(&format!("chain-{label}"), linear_relu_chain(blocks, width));
        let prepare = expand(&["prepare-pt2e".into()]).unwrap();
        group.bench_function(format!("prepare_pt2e_{label}"), |b| {
            b.iter_batched(|| module.clone(), |mut m| run_passes(&mut m, &prepare, None), BatchSize::LargeInput)
        });
        let mut calibrated = module.clone();
        let data = std::env::temp_dir().join(format!("qc-bench-chain-{label}/one_batch.npz"));
        write_npz(std::fs::File::create(&data).unwrap(), &[("x".to_string(), &input(&[1, width]))]).unwrap();
        let calibrate = expand(&["prepare-pt2e".into(), "calibrate".into()]).unwrap();
        run_passes(&mut calibrated, &calibrate, Some(data));
        let convert = expand(&["convert-pt2e".into()]).unwrap();
        group.bench_function(format!("convert_pt2e_{label}"), |b| {
            b.iter_batched(|| calibrated.clone(), |mut m| run_passes(&mut m, &convert, None), BatchSize::LargeInput)
        });
    }
    group.finish();
}

fn run_passes(module: &mut Module, passes: &[&'static PassDef], calibration: Option<PathBuf>) {
    let mut cx = PassContext { calibration, ..PassContext::default() };
    run_pipeline(module, passes, &Instrumentation::default(), &mut cx, &mut String::new()).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
