//! Quantization pass speed, against the PT2E figures of the issues (`tools/bench_pytorch.py`
//! measures PT2E itself on this machine):
//! - `annotate` + `prepare` on a chain of 1600 linear+relu blocks (PT2E's prepare: 10.6 s);
//! - one calibration batch of a ResNet-18-shaped graph with histogram observers (PT2E: 91 ms,
//!   43 ms of it the float forward).

mod models;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use models::{input, linear_relu_chain, load, resnet18};
use qc::interp::io::write_npz;
use qc::passes::manager::{run_pipeline, Instrumentation};
use qc::passes::registry::expand;
use qc::passes::PassContext;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("quant");
    group.sample_size(10);

    let chain = load("chain1600", linear_relu_chain(1600));
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
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
