"""PyTorch eager timings for the shapes of `benches/interp.rs`, for side-by-side numbers.

    ~/venv/bin/python -m tools.bench_pytorch   # then: cargo bench --bench interp

Same graphs: a ResNet-18 (conv-bn-relu, unfused BN, 1x3x224x224) and a BERT-base encoder layer
(sequence 128, hidden 768, 12 heads, exact GELU). Reports the median of 30 runs after warm-up,
with torch's intra-op threads set to the machine's core count.
"""

import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(os.cpu_count() or 1)
torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = self.b2(self.c2(h))
        return F.relu(h + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False); self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, c in enumerate([64, 128, 256, 512]):
            layers += [Block(cin, c, 2 if i > 0 else 1), Block(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1)
        return self.fc(x)


class BertLayer(nn.Module):
    def __init__(self, d=768, h=12, f=3072):
        super().__init__()
        self.h = h
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
        self.up, self.down = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        b, s, d = x.shape
        heads = lambda t: t.view(b, s, self.h, d // self.h).permute(0, 2, 1, 3)
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        p = F.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.125, -1)
        ctx = torch.matmul(p, v).permute(0, 2, 1, 3).reshape(b, s, d)
        x = self.ln1(self.o(ctx) + x)
        return self.ln2(self.down(F.gelu(self.up(x))) + x)


def bench(name, model, x, runs=30):
    model.eval()
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    print(f"{name:16s} median {statistics.median(times) * 1e3:8.2f} ms   min {min(times) * 1e3:8.2f} ms   ({torch.get_num_threads()} threads)")


bench("resnet18_224", ResNet18(), torch.randn(1, 3, 224, 224))
bench("bert_layer_128", BertLayer(), torch.randn(1, 128, 768))


def bench_pt2e():
    """PT2E's prepare on 1600 linear+relu blocks and one calibration batch of ResNet-18 with the
    XNNPACK quantizer's histogram observers (the figures `benches/quant.rs` compares with)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))

    class Chain(nn.Module):
        def __init__(self, blocks=1600):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(blocks))

        def forward(self, x):
            for layer in self.layers:
                x = F.relu(layer(x))
            return x

    x = torch.randn(1, 64)
    exported = torch.export.export(Chain().eval(), (x,)).module()
    t = time.perf_counter()
    prepare_pt2e(exported, quantizer)
    print(f"{'pt2e prepare 1600 linear+relu':34s} {time.perf_counter() - t:8.2f} s")

    img = torch.randn(1, 3, 224, 224)
    prepared = prepare_pt2e(torch.export.export(ResNet18().eval(), (img,)).module(), quantizer)
    times = []
    with torch.no_grad():
        for _ in range(10):
            t = time.perf_counter()
            prepared(torch.randn(1, 3, 224, 224))
            times.append(time.perf_counter() - t)
    print(f"{'pt2e calibration batch resnet18':34s} {statistics.median(times) * 1e3:8.2f} ms (median of 10)")


if __name__ == "__main__" and os.environ.get("QC_BENCH_PT2E", "1") == "1":
    bench_pt2e()
