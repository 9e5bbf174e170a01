//! Model graphs for the benchmarks: a ResNet-18-shaped CNN and a BERT-base encoder layer,
//! built as QIR text with seeded random weights written to a temporary safetensors file.

use std::fmt::Write;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use qc::ir::Module;
use qc::tensor::Tensor;

/// The `qc` binary's allocator (src/main.rs), so that the benchmarks time what `qc` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Builds QIR text and its weights (name → shape) for a model.
#[allow(dead_code)] // each bench uses a different part
pub struct Builder {
    text: String,
    weights: Vec<(String, Vec<usize>)>,
    counter: usize,
}

impl Builder {
    pub fn new() -> Self {
        Builder { text: String::new(), weights: Vec::new(), counter: 0 }
    }

    fn ty(shape: &[usize]) -> String {
        format!("f32[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
    }

    pub fn weight(&mut self, key: &str, shape: &[usize]) -> String {
        let _ = writeln!(self.text, "    %{key} = weight {{key = \"{key}\"}} : {}", Self::ty(shape));
        self.weights.push((key.to_string(), shape.to_vec()));
        key.to_string()
    }

    pub fn op(&mut self, name: &str, op: &str, operands: &[&str], attrs: &str, shape: &[usize]) -> String {
        self.counter += 1;
        let value = format!("{name}_{}", self.counter);
        let args = operands.iter().map(|o| format!("%{o}")).collect::<Vec<_>>().join(", ");
        let attrs = if attrs.is_empty() { String::new() } else { format!(" {{{attrs}}}") };
        let _ = writeln!(self.text, "    %{value} = {op}({args}){attrs} : {} loc(\"{name}\")", Self::ty(shape));
        value
    }

    #[allow(clippy::too_many_arguments)] // the conv's geometry, spelled out at each call
    fn conv_bn(
        &mut self,
        name: &str,
        x: &str,
        shape: &[usize],
        out_c: usize,
        k: usize,
        stride: usize,
        relu: bool,
    ) -> (String, Vec<usize>) {
        let w = self.weight(&format!("{name}.conv.weight"), &[out_c, shape[1], k, k]);
        let pad = k / 2;
        let out = vec![shape[0], out_c, (shape[2] + 2 * pad - k) / stride + 1, (shape[3] + 2 * pad - k) / stride + 1];
        let c = self.op(
            &format!("{name}.conv"),
            "conv2d",
            &[x, &w],
            &format!("stride = [{stride}, {stride}], padding = [{pad}, {pad}]"),
            &out,
        );
        let stats: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .map(|s| self.weight(&format!("{name}.bn.{s}"), &[out_c]))
            .collect();
        let refs: Vec<&str> = std::iter::once(c.as_str()).chain(stats.iter().map(String::as_str)).collect();
        let mut y = self.op(&format!("{name}.bn"), "batch_norm", &refs, "", &out);
        if relu {
            y = self.op(&format!("{name}.relu"), "relu", &[&y], "", &out);
        }
        (y, out)
    }

    pub fn finish(self, signature: &str, ret: &str) -> (String, Vec<(String, Vec<usize>)>) {
        (format!("module {{\n  weights \"w.safetensors\"\n\n  func @main({signature} {{\n{}    return %{ret}\n  }}\n}}\n", self.text), self.weights)
    }
}

pub fn resnet18() -> (String, Vec<(String, Vec<usize>)>) {
    let mut b = Builder::new();
    let (mut x, _) = b.conv_bn("conv1", "x", &[1, 3, 224, 224], 64, 7, 2, true);
    let mut shape = vec![1, 64, 56, 56];
    x = b.op("maxpool", "max_pool2d", &[&x], "kernel_size = [3, 3], stride = [2, 2], padding = [1, 1]", &shape);
    for (stage, channels) in [64usize, 128, 256, 512].iter().enumerate() {
        for block in 0..2 {
            let name = format!("layer{}.{block}", stage + 1);
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let (h, s1) = b.conv_bn(&format!("{name}.1"), &x, &shape, *channels, 3, stride, true);
            let (h, s2) = b.conv_bn(&format!("{name}.2"), &h, &s1, *channels, 3, 1, false);
            let shortcut = if stride != 1 || shape[1] != *channels {
                b.conv_bn(&format!("{name}.down"), &x, &shape, *channels, 1, stride, false).0
            } else {
                x.clone()
            };
            let sum = b.op(&name, "add", &[&h, &shortcut], "", &s2);
            x = b.op(&format!("{name}.relu"), "relu", &[&sum], "", &s2);
            shape = s2;
        }
    }
    let pooled = b.op("avgpool", "adaptive_avg_pool2d", &[&x], "output_size = [1, 1]", &[1, 512, 1, 1]);
    let flat = b.op("flatten", "flatten", &[&pooled], "start_dim = 1", &[1, 512]);
    let w = b.weight("fc.weight", &[1000, 512]);
    let bias = b.weight("fc.bias", &[1000]);
    let logits = b.op("fc", "linear", &[&flat, &w, &bias], "", &[1, 1000]);
    b.finish("%x: f32[1,3,224,224]) -> f32[1,1000]", &logits)
}

#[allow(dead_code)] // used by the interp bench only
pub fn bert_layer() -> (String, Vec<(String, Vec<usize>)>) {
    let (s, d, h, f) = (128usize, 768usize, 12usize, 3072usize);
    let hd = d / h;
    let mut b = Builder::new();
    let lin = |b: &mut Builder, name: &str, x: &str, i: usize, o: usize| {
        let w = b.weight(&format!("{name}.weight"), &[o, i]);
        let bias = b.weight(&format!("{name}.bias"), &[o]);
        b.op(name, "linear", &[x, &w, &bias], "", &[1, s, o])
    };
    let heads = |b: &mut Builder, name: &str, x: &str| {
        let v = b.op(name, "view", &[x], &format!("shape = [1, {s}, {h}, {hd}]"), &[1, s, h, hd]);
        b.op(name, "permute", &[&v], "dims = [0, 2, 1, 3]", &[1, h, s, hd])
    };
    let q = lin(&mut b, "attn.query", "x", d, d);
    let k = lin(&mut b, "attn.key", "x", d, d);
    let v = lin(&mut b, "attn.value", "x", d, d);
    let (q, k, v) = (heads(&mut b, "attn.q", &q), heads(&mut b, "attn.k", &k), heads(&mut b, "attn.v", &v));
    let kt = b.op("attn", "transpose", &[&k], "dim0 = -1, dim1 = -2", &[1, h, hd, s]);
    let scores = b.op("attn", "matmul", &[&q, &kt], "", &[1, h, s, s]);
    let scaled = b.op("attn", "mul.scalar", &[&scores], "other = 0.125", &[1, h, s, s]);
    let probs = b.op("attn", "softmax", &[&scaled], "dim = -1", &[1, h, s, s]);
    let ctx = b.op("attn", "matmul", &[&probs, &v], "", &[1, h, s, hd]);
    let ctx = b.op("attn", "permute", &[&ctx], "dims = [0, 2, 1, 3]", &[1, s, h, hd]);
    let ctx = b.op("attn", "reshape", &[&ctx], &format!("shape = [1, {s}, {d}]"), &[1, s, d]);
    let out = lin(&mut b, "attn.output", &ctx, d, d);
    let res = b.op("attn", "add", &[&out, "x"], "", &[1, s, d]);
    let g = b.weight("ln1.weight", &[d]);
    let be = b.weight("ln1.bias", &[d]);
    let n1 = b.op("ln1", "layer_norm", &[&res, &g, &be], &format!("normalized_shape = [{d}], eps = 1e-12"), &[1, s, d]);
    let up = lin(&mut b, "ffn.up", &n1, d, f);
    let act = b.op("ffn", "gelu", &[&up], "", &[1, s, f]);
    let down = lin(&mut b, "ffn.down", &act, f, d);
    let res2 = b.op("ffn", "add", &[&down, &n1], "", &[1, s, d]);
    let g2 = b.weight("ln2.weight", &[d]);
    let be2 = b.weight("ln2.bias", &[d]);
    let n2 =
        b.op("ln2", "layer_norm", &[&res2, &g2, &be2], &format!("normalized_shape = [{d}], eps = 1e-12"), &[1, s, d]);
    b.finish(&format!("%x: f32[1,{s},{d}]) -> f32[1,{s},{d}]"), &n2)
}

/// Writes seeded uniform weights as safetensors (running_var kept positive).
fn write_weights(path: &Path, weights: &[(String, Vec<usize>)]) {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut created = std::collections::BTreeMap::new();
    for (name, shape) in weights {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                if name.ends_with("running_var") {
                    0.5 + u
                } else {
                    (2.0 * u - 1.0) * bound
                }
            })
            .collect();
        let tensor = Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap());
        created.insert(name.clone(), std::sync::Arc::new(tensor));
    }
    let keys: Vec<&str> = created.keys().map(String::as_str).collect();
    let mut bytes = Vec::new();
    qc::weights::Weights { file: None, created: &created }.write_safetensors(&keys, &mut bytes).unwrap();
    std::fs::write(path, bytes).unwrap();
}

pub fn load(name: &str, (text, weights): (String, Vec<(String, Vec<usize>)>)) -> Module {
    let dir = std::env::temp_dir().join(format!("qc-bench-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    write_weights(&dir.join("w.safetensors"), &weights);
    std::fs::write(dir.join("model.qir"), &text).unwrap();
    qc::syntax::parse_module(&text, Some(&dir))
        .unwrap_or_else(|e| panic!("{name}: {:?}", e.first().map(|d| &d.message)))
}

/// A deterministic input tensor of `shape`.
pub fn input(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| ((i * 7919 % 17) as f32 - 8.0) / 8.0).collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

/// PT2E's prepare and convert benchmark: a chain of `blocks` linear(width→width)+relu blocks
/// (4 ops each: weight, bias, linear, relu).
#[allow(dead_code)] // used by the quant bench only
pub fn linear_relu_chain(blocks: usize, width: usize) -> (String, Vec<(String, Vec<usize>)>) {
    let mut b = Builder::new();
    let mut x = "x".to_string();
    for i in 0..blocks {
        let w = b.weight(&format!("layers.{i}.weight"), &[width, width]);
        let bias = b.weight(&format!("layers.{i}.bias"), &[width]);
        let y = b.op(&format!("layers.{i}"), "linear", &[&x, &w, &bias], "", &[1, width]);
        x = b.op(&format!("layers.{i}.act"), "relu", &[&y], "", &[1, width]);
    }
    b.finish(&format!("%x: f32[1,{width}]) -> f32[1,{width}]"), &x)
}
