"""Generates the fixtures of tests/batch_norm.rs: batch_norm from PyTorch, in both modes.

For every case this writes `tests/batch_norm/<case>.safetensors` holding the operands
(`input.x`, `input.weight`, `input.bias`, `input.running_mean`, `input.running_var`), what
`F.batch_norm(..., training=True)` returns (`expected.y`) and the running statistics it leaves
(`expected.running_mean`, `expected.running_var`), what `F.batch_norm(..., training=False)`
returns from the same operands (`expected.y_eval`), with `eps` and `momentum` (Python reprs) in
the metadata. The test compares qc's results with them bit for bit. Nothing here is needed to
run the tests: the fixtures are committed.

Deterministic: a fixed seed and one thread (with more, PyTorch reduces `[N, C]` inputs in
per-thread blocks, and qc mirrors one thread, as every fixture generator here uses). The
expected values need a PyTorch whose CPU kernels use FMA (the x86-64 AVX2/AVX-512 builds, the
ones users run); `ATEN_CPU_CAPABILITY=default` rounds the affine step twice and is refused.

Usage: ~/venv/bin/python -m tools.gen_batch_norm_fixtures
"""

import os

import torch
import torch.nn.functional as F

from .fileio import write_safetensors

torch.manual_seed(0)
torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "batch_norm")

# (name, shape, dtype, eps, momentum, data): `data` is "normal" (scaled, shifted N(0,1) per
# channel), "offset" (a large mean and a small spread: the mean/variance cancellation cases) or
# "constant" (normal, with channel 0 constant: a zero variance).
CASES = [
    ("conv_f32_2x8x6x6", (2, 8, 6, 6), torch.float32, 1e-5, 0.1, "normal"),
    ("conv_f32_4x16x3x3", (4, 16, 3, 3), torch.float32, 1e-5, 0.1, "normal"),
    ("conv_f32_1x4x5x5", (1, 4, 5, 5), torch.float32, 1e-3, 0.01, "normal"),
    ("conv_f32_3x6x7x5_offset", (3, 6, 7, 5), torch.float32, 1e-5, 0.1, "offset"),
    ("conv_f32_2x5x4x4_constant", (2, 5, 4, 4), torch.float32, 1e-5, 0.3, "constant"),
    ("conv_f32_2x3x1x1", (2, 3, 1, 1), torch.float32, 1e-5, 0.1, "normal"),
    ("conv1d_f32_3x5x7", (3, 5, 7), torch.float32, 1e-5, 0.1, "normal"),
    ("conv1d_f32_2x4x1", (2, 4, 1), torch.float32, 1e-5, 1.0 / 3.0, "normal"),
    ("linear_f32_8x32", (8, 32), torch.float32, 1e-5, 0.1, "normal"),
    ("linear_f32_16x12", (16, 12), torch.float32, 1e-3, 0.5, "normal"),
    ("linear_f32_64x40_offset", (64, 40), torch.float32, 1e-5, 0.1, "offset"),
    ("linear_f32_2x9", (2, 9), torch.float32, 1e-5, 0.1, "normal"),
    ("conv_f64_2x4x5x5", (2, 4, 5, 5), torch.float64, 1e-5, 0.1, "normal"),
    ("conv_f64_4x3x4x4", (4, 3, 4, 4), torch.float64, 1e-5, 0.1, "normal"),
    ("conv1d_f64_3x5x7", (3, 5, 7), torch.float64, 1e-5, 0.1, "offset"),
    ("linear_f64_8x6", (8, 6), torch.float64, 1e-5, 0.1, "normal"),
]


def data(shape, dtype, kind):
    c = shape[1]
    per_channel = [1, c] + [1] * (len(shape) - 2)
    x = torch.randn(shape, dtype=torch.float64)
    if kind == "offset":
        x = x * 0.01 + 100.0 * torch.rand(per_channel, dtype=torch.float64) + 50.0
    else:
        x = x * (0.1 + 5.0 * torch.rand(per_channel, dtype=torch.float64)) + 4.0 * torch.rand(per_channel) - 2.0
    if kind == "constant":
        x[:, 0] = 0.75
    return x.to(dtype)


def main():
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "DEFAULT":
        raise SystemExit("this PyTorch runs its CPU kernels without FMA; see the docstring")
    os.makedirs(OUT, exist_ok=True)
    for name, shape, dtype, eps, momentum, kind in CASES:
        c = shape[1]
        x = data(shape, dtype, kind)
        weight = torch.randn(c, dtype=dtype)
        bias = torch.randn(c, dtype=dtype)
        running_mean = torch.randn(c, dtype=dtype)
        running_var = (torch.rand(c, dtype=torch.float64) * 3.0 + 0.1).to(dtype)
        y_eval = F.batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)
        new_mean, new_var = running_mean.clone(), running_var.clone()
        y = F.batch_norm(x, new_mean, new_var, weight, bias, training=True, momentum=momentum, eps=eps)
        tensors = {
            "input.x": x, "input.weight": weight, "input.bias": bias,
            "input.running_mean": running_mean, "input.running_var": running_var,
            "expected.y": y, "expected.running_mean": new_mean, "expected.running_var": new_var,
            "expected.y_eval": y_eval,
        }
        metadata = {"eps": repr(eps), "momentum": repr(momentum), "torch": torch.__version__, "cpu": capability}
        write_safetensors(os.path.join(OUT, f"{name}.safetensors"), tensors, metadata)
        print(f"{name}: {list(shape)} {dtype}")


if __name__ == "__main__":
    main()
