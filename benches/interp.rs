//! Interpreter speed on realistic models: a ResNet-18-shaped graph (random weights, input
//! 1×3×224×224) and a BERT-base encoder layer (sequence 128, hidden 768, 12 heads), on the
//! machine's cores. `tools/bench_pytorch.py` times PyTorch eager on the same shapes for the
//! side-by-side numbers.

mod models;

use criterion::{criterion_group, criterion_main, Criterion};
use models::{bert_layer, input, load, resnet18};
use qc::interp::{run_graph, RunOptions};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("interp");
    group.sample_size(10);
    for (name, model, shape) in [
        ("resnet18_224", load("resnet18", resnet18()), vec![1, 3, 224, 224]),
        ("bert_layer_128", load("bert", bert_layer()), vec![1, 128, 768]),
    ] {
        let x = input(&shape);
        group.bench_function(name, |b| {
            b.iter(|| run_graph(&model, &model.graphs[0], vec![x.clone()], &RunOptions::default(), None).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
