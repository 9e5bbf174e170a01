"""Fixtures for tests/fuse_conv_bn.rs: PT2E's PTQ batch-norm folding, computed by torchao.

Usage: /work/venv/bin/python -m tools.gen_fuse_fixtures      (torch 2.15 + torchao 0.18)

For every case this builds a small eval-mode model, exports it with torch.export, runs
torchao's `_fuse_conv_bn_` and `_fuse_linear_bn_` (torchao.quantization.pt2e.utils, exactly as
`prepare_pt2e` does) on `export(...).module()`, and writes into tests/fuse_conv_bn/:

  <case>.safetensors   the ORIGINAL parameters under their state-dict keys, plus, under
                       `expected.<key>`, every tensor the folded graph reads (`get_attr`
                       targets: the folded weight and bias, e.g. `expected.conv.weight` and
                       `expected.conv.weight_bias` for a conv without bias);
  <case>.qir           the exported (unfolded) graph in QIR, written by tools/qir_bridge's
                       exporter: `weight` ops reading the original tensors, the conv/linear
                       and its batch_norm, with PT2E's module paths as locations.

For the examples (examples/{small_cnn,resnet_basic_block,mobilenetv2_inverted_residual}.qir)
only `example_<name>.safetensors` is written, with the `expected.<key>` tensors: each conv ->
batch_norm pair of the example is rebuilt in PyTorch from the example's own weights (with the
same state-dict paths, so the keys match), exported and folded; the test runs the pass on the
example itself.

Deterministic: fixed seeds, and tools/fileio.py writes sorted keys.
"""

import os
import warnings

import torch
import torch.nn as nn
from torchao.quantization.pt2e.utils import _fuse_conv_bn_, _fuse_linear_bn_

from .fileio import read_qir, write_safetensors
from .qir_bridge import export_qir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fuse_conv_bn")


def randomize_bn(bn, gen, var_log_range=(-1.0, 1.0)):
    """Non-trivial statistics (a fresh BatchNorm is the identity: w=1, b=0, mean=0, var=1)."""
    with torch.no_grad():
        n = bn.num_features
        dt = bn.weight.dtype
        bn.weight.copy_(torch.empty(n, dtype=dt).uniform_(-1.5, 1.5, generator=gen))
        bn.bias.copy_(torch.empty(n, dtype=dt).uniform_(-1.0, 1.0, generator=gen))
        bn.running_mean.copy_(torch.empty(n, dtype=dt).uniform_(-2.0, 2.0, generator=gen))
        lo, hi = var_log_range
        bn.running_var.copy_(torch.exp(torch.empty(n, dtype=dt).uniform_(lo, hi, generator=gen)))
    return bn


class Seq(nn.Module):
    """layer -> bn, optionally -> relu (the relu keeps a user after the batch norm)."""

    def __init__(self, layer, bn, relu=False):
        super().__init__()
        self.layer = layer
        self.bn = bn
        self.relu = relu

    def forward(self, x):
        y = self.bn(self.layer(x))
        return torch.relu(y) if self.relu else y


def synthetic_cases():
    # The layers below are built (initialised from the global generator) in this order.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(20260822)

    def case(name, layer, bn, shape, dtype=torch.float32, relu=False, var_log_range=(-1.0, 1.0)):
        model = Seq(layer, randomize_bn(bn, g, var_log_range), relu).to(dtype).eval()
        x = torch.randn(*shape, generator=g, dtype=dtype)
        return name, model, x

    return [
        case("conv2d_bias", nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), (2, 3, 8, 8), relu=True),
        case("conv2d_nobias", nn.Conv2d(4, 6, 3, stride=2, bias=False), nn.BatchNorm2d(6), (1, 4, 9, 9)),
        case(
            "conv2d_depthwise",
            nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
            nn.BatchNorm2d(6, eps=1e-3),
            (1, 6, 7, 7),
        ),
        case("conv1d_bias", nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), (2, 3, 16)),
        case("conv1d_nobias", nn.Conv1d(4, 7, 1, bias=False), nn.BatchNorm1d(7, eps=0.1), (2, 4, 10)),
        case("conv_transpose2d_bias", nn.ConvTranspose2d(4, 6, 3, stride=2), nn.BatchNorm2d(6), (1, 4, 5, 5)),
        case(
            "conv_transpose2d_nobias",
            nn.ConvTranspose2d(3, 5, 2, stride=2, bias=False),
            nn.BatchNorm2d(5),
            (1, 3, 4, 4),
        ),
        case("linear_bias", nn.Linear(16, 8), nn.BatchNorm1d(8), (4, 16)),
        case("linear_nobias", nn.Linear(12, 10, bias=False), nn.BatchNorm1d(10, eps=1e-3), (3, 12)),
        case("conv2d_f64", nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), (1, 3, 6, 6), dtype=torch.float64),
        case("linear_f64", nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), (2, 6), dtype=torch.float64),
        # Many channels with variances over 40 binades (down to 1e-9, far below eps): every
        # rounding step of rsqrt and the bias formula is exercised.
        case(
            "conv2d_wide_range",
            nn.Conv2d(2, 2048, 1),
            nn.BatchNorm2d(2048),
            (1, 2, 2, 2),
            var_log_range=(-21.0, 21.0),
        ),
        case(
            "linear_wide_range",
            nn.Linear(3, 2048, bias=False),
            nn.BatchNorm1d(2048, eps=1e-7),
            (2, 3),
            var_log_range=(-21.0, 21.0),
        ),
    ]


def export(model, x):
    return torch.export.export(model, (x,)).module()


def fold(gm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fuse_conv_bn_(gm)
        _fuse_linear_bn_(gm)
    return gm


def folded_tensors(gm):
    """Every tensor the folded graph reads, by get_attr target."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            out[node.target] = getattr_path(gm, node.target).detach().clone().contiguous()
    return out


def getattr_path(m, path):
    for atom in path.split("."):
        m = getattr(m, atom)
    return m


def write_synthetic(name, model, x):
    gm = export(model, x)
    originals = {k: v.detach().clone().contiguous() for k, v in gm.state_dict().items() if "num_batches" not in k}
    text, _ = export_qir(gm, module_name=name, weights_file=f"{name}.safetensors")
    qir = (
        f"// Generated by tools/gen_fuse_fixtures.py: the torch.export graph of `{name}`, before\n"
        f"// PT2E's batch-norm folding; the expected.* tensors beside it are torchao's fold.\n" + text
    )
    fold(gm)
    expected = folded_tensors(gm)
    # The folded graph reads only the layer's weight and bias.
    assert all(k.startswith("layer.") for k in expected), expected.keys()
    tensors = dict(originals)
    tensors.update({f"expected.{k}": v for k, v in expected.items()})
    write_safetensors(os.path.join(OUT, f"{name}.safetensors"), tensors)
    with open(os.path.join(OUT, f"{name}.qir"), "w") as f:
        f.write(qir)
    with torch.no_grad():
        diff = (model(x) - gm(x)).abs().max().item()
    print(f"{name}: {len(expected)} folded tensors, torch fused-vs-unfused max diff {diff:.3g}")


# ---- the examples ---------------------------------------------------------------------------

def set_path(root, path, module):
    """root.<path> = module, creating plain parent modules (so get_attr targets are `path.weight`)."""
    parent = root
    atoms = path.split(".")
    for atom in atoms[:-1]:
        if not hasattr(parent, atom):
            parent.add_module(atom, nn.Module())
        parent = getattr(parent, atom)
    parent.add_module(atoms[-1], module)


class Pair(nn.Module):
    def __init__(self, conv_path, conv, bn_path, bn):
        super().__init__()
        set_path(self, conv_path, conv)
        set_path(self, bn_path, bn)
        self.conv_path, self.bn_path = conv_path, bn_path

    def forward(self, x):
        return getattr_path(self, self.bn_path)(getattr_path(self, self.conv_path)(x))


def write_example(qir_name):
    fn = read_qir(os.path.join(ROOT, "examples", f"{qir_name}.qir"))

    def key(value):
        return fn.producer[value].attrs["key"]

    def weight(k):
        return torch.from_numpy(fn.weight(k).copy())

    expected = {}
    for op in fn.ops:
        layer = fn.producer.get(op.operands[0]) if op.name == "batch_norm" else None
        if layer is None or layer.name not in ("conv1d", "conv2d", "conv_transpose2d"):
            continue
        kind = layer.name
        w_key = key(layer.operands[1])
        b_key = key(layer.operands[2]) if len(layer.operands) > 2 else None
        stat_keys = [key(o) for o in op.operands[1:5]]
        w = weight(w_key)
        groups = layer.attrs.get("groups", 1)
        cls = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv_transpose2d": nn.ConvTranspose2d}[kind]
        if kind == "conv_transpose2d":
            conv = cls(w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), groups=groups, bias=b_key is not None)
        else:
            conv = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), groups=groups, bias=b_key is not None)
        bn_cls = nn.BatchNorm1d if kind == "conv1d" else nn.BatchNorm2d
        bn = bn_cls(len(weight(stat_keys[0])), eps=op.attrs.get("eps", 1e-5))
        conv_path = w_key.rsplit(".", 1)[0]
        bn_path = stat_keys[0].rsplit(".", 1)[0]
        assert [k.rsplit(".", 1)[0] for k in stat_keys] == [bn_path] * 4
        with torch.no_grad():
            conv.weight.copy_(w)
            if b_key:
                assert b_key == conv_path + ".bias"
                conv.bias.copy_(weight(b_key))
            bn.weight.copy_(weight(stat_keys[0]))
            bn.bias.copy_(weight(stat_keys[1]))
            bn.running_mean.copy_(weight(stat_keys[2]))
            bn.running_var.copy_(weight(stat_keys[3]))
        model = Pair(conv_path, conv, bn_path, bn).eval()
        c_in = conv.in_channels
        x = torch.randn(1, c_in, *[k + 2 for k in w.shape[2:]])
        gm = fold(export(model, x))
        for k, v in folded_tensors(gm).items():
            assert k not in expected
            expected[k] = v
    tensors = {f"expected.{k}": v for k, v in expected.items()}
    write_safetensors(os.path.join(OUT, f"example_{qir_name}.safetensors"), tensors)
    print(f"example {qir_name}: {len(expected)} folded tensors")


# ---- weights for the snapshot cases -------------------------------------------------------


def write_pass_case_weights():
    """tests/passes/fuse-conv-bn/weights.safetensors: small tensors for the cases that read a
    weights file (their folded values are not in the snapshots; the parity test covers those).
    `conv3.weight_bias` exists so that the new bias of conv3 needs another key."""
    g = torch.Generator().manual_seed(7)

    def t(*shape, lo=-1.0, hi=1.0):
        return torch.empty(*shape).uniform_(lo, hi, generator=g)

    tensors = {
        "conv1.weight": t(3, 2, 1, 1),
        "conv2.weight": t(3, 3, 1, 1),
        "conv2.bias": t(3),
        "conv3.weight": t(3, 2, 1, 1),
        "conv3.weight_bias": t(3),
    }
    for bn in ["bn1", "bn2"]:
        tensors[f"{bn}.weight"] = t(3, lo=0.5, hi=1.5)
        tensors[f"{bn}.bias"] = t(3)
        tensors[f"{bn}.running_mean"] = t(3)
        tensors[f"{bn}.running_var"] = t(3, lo=0.5, hi=2.0)
    write_safetensors(os.path.join(ROOT, "tests", "passes", "fuse-conv-bn", "weights.safetensors"), tensors)


def main():
    os.makedirs(OUT, exist_ok=True)
    write_pass_case_weights()
    for name, model, x in synthetic_cases():
        write_synthetic(name, model, x)
    for name in ["small_cnn", "resnet_basic_block", "mobilenetv2_inverted_residual"]:
        write_example(name)


if __name__ == "__main__":
    main()
