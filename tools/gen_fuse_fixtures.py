#!/usr/bin/env python3
"""Fixtures for tests/fuse_conv_bn.rs: PT2E's PTQ batch-norm folding, computed by torchao.

Usage: /work/venv/bin/python tools/gen_fuse_fixtures.py      (torch 2.15 + torchao 0.18)

For every case this builds a small eval-mode model, exports it with torch.export, runs
torchao's `_fuse_conv_bn_` and `_fuse_linear_bn_` (torchao.quantization.pt2e.utils, exactly as
`prepare_pt2e` does) on `export(...).module()`, and writes into tests/fuse_conv_bn/:

  <case>.safetensors   the ORIGINAL parameters under their state-dict keys, plus, under
                       `expected.<key>`, every tensor the folded graph reads (`get_attr`
                       targets: the folded weight and bias, e.g. `expected.conv.weight` and
                       `expected.conv.weight_bias` for a conv without bias);
  <case>.qir           the exported (unfolded) graph in QIR: `weight` ops reading the original
                       tensors, the conv/linear and its batch_norm, with PT2E's module paths
                       as locations.

For the examples (examples/{small_cnn,resnet_basic_block,mobilenetv2_inverted_residual}.qir)
only `example_<name>.safetensors` is written, with the `expected.<key>` tensors: each conv ->
batch_norm pair of the example is rebuilt in PyTorch from the example's own weights (with the
same state-dict paths, so the keys match), exported and folded; the test runs the pass on the
example itself.

Deterministic: fixed seeds, and safetensors writes sorted keys.
"""

import ast
import os
import re
import warnings

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torchao.quantization.pt2e.utils import _fuse_conv_bn_, _fuse_linear_bn_

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fuse_conv_bn")

DTYPES = {torch.float32: "f32", torch.float64: "f64"}


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


# ---- torch.export graph -> QIR ----------------------------------------------------------------


def qir_type(t):
    return f"{DTYPES[t.dtype]}[{','.join(str(d) for d in t.shape)}]"


def ints(v):
    return "[" + ", ".join(str(int(i)) for i in v) + "]"


def loc_of(node):
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return f' loc("{path}")' if path else ""


# Positional schema of the ops we translate: (qir name, [(arg name, default, formatter)]).
CONV_ATTRS = [("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)]
CONV_T_ATTRS = [("stride", 1), ("padding", 0), ("output_padding", 0), ("groups", 1), ("dilation", 1)]
OPS = {
    "aten.conv1d.default": ("conv1d", CONV_ATTRS, 1),
    "aten.conv2d.default": ("conv2d", CONV_ATTRS, 2),
    "aten.conv_transpose2d.input": ("conv_transpose2d", CONV_T_ATTRS, 2),
    "aten.linear.default": ("linear", [], 0),
}


def to_qir(gm, name, weights_file):
    names = {}
    lines = []
    inputs = []
    outputs = []

    def val(n):
        return "%" + names[n]

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            names[node] = node.name
            inputs.append(f"%{node.name}: {qir_type(node.meta['val'])}")
        elif node.op == "get_attr":
            if not node.users:
                continue
            names[node] = node.target
            t = getattr_path(gm, node.target)
            lines.append(f'%{node.target} = weight {{key = "{node.target}"}} : {qir_type(t)}')
        elif node.op == "call_function":
            target = str(node.target)
            names[node] = node.name
            ty = qir_type(node.meta["val"])
            if target == "aten.batch_norm.default":
                operands = ", ".join(val(a) for a in node.args[:5])
                eps = node.args[7]
                attrs = "" if eps == 1e-5 else f" {{eps = {eps!r}}}"
                lines.append(f"%{node.name} = batch_norm({operands}){attrs} : {ty}{loc_of(node)}")
            elif target == "aten.relu.default":
                lines.append(f"%{node.name} = relu({val(node.args[0])}) : {ty}{loc_of(node)}")
            elif target in OPS:
                op, schema, spatial = OPS[target]
                args = list(node.args)
                operands = [val(args[0]), val(args[1])]
                if len(args) > 2 and args[2] is not None:
                    operands.append(val(args[2]))
                attrs = []
                for i, (attr, default) in enumerate(schema):
                    v = args[3 + i] if len(args) > 3 + i else default
                    if attr == "groups":
                        if v != 1:
                            attrs.append(f"groups = {v}")
                        continue
                    v = list(v) if isinstance(v, (list, tuple)) else [v] * spatial
                    if any(e != default for e in v):
                        attrs.append(f"{attr} = {ints(v)}")
                attr_text = f" {{{', '.join(attrs)}}}" if attrs else ""
                lines.append(f"%{node.name} = {op}({', '.join(operands)}){attr_text} : {ty}{loc_of(node)}")
            else:
                raise ValueError(f"no QIR translation for {target}")
        elif node.op == "output":
            outs = node.args[0]
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            outputs = [(val(o), qir_type(o.meta["val"])) for o in outs]
        # call_module `_guards_fn` (input guards) has no QIR counterpart.
    result_types = outputs[0][1] if len(outputs) == 1 else "(" + ", ".join(t for _, t in outputs) + ")"
    body = "\n".join("    " + l for l in lines)
    return (
        f"// Generated by tools/gen_fuse_fixtures.py: the torch.export graph of `{name}`, before\n"
        f"// PT2E's batch-norm folding; the expected.* tensors beside it are torchao's fold.\n"
        f"module @{name} {{\n"
        f'  weights "{weights_file}"\n\n'
        f"  func @main({', '.join(inputs)}) -> {result_types} {{\n"
        f"{body}\n"
        f"    return {', '.join(v for v, _ in outputs)}\n"
        f"  }}\n"
        f"}}\n"
    )


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
    qir = to_qir(gm, name, f"{name}.safetensors")
    fold(gm)
    expected = folded_tensors(gm)
    # The folded graph reads only the layer's weight and bias.
    assert all(k.startswith("layer.") for k in expected), expected.keys()
    tensors = dict(originals)
    tensors.update({f"expected.{k}": v for k, v in expected.items()})
    save_file(tensors, os.path.join(OUT, f"{name}.safetensors"))
    with open(os.path.join(OUT, f"{name}.qir"), "w") as f:
        f.write(qir)
    with torch.no_grad():
        diff = (model(x) - gm(x)).abs().max().item()
    print(f"{name}: {len(expected)} folded tensors, torch fused-vs-unfused max diff {diff:.3g}")


# ---- the examples ---------------------------------------------------------------------------

WEIGHT_RE = re.compile(r'%(\S+) = weight \{key = "([^"]+)"\}')
LAYER_RE = re.compile(r"%(\S+) = (conv1d|conv2d|conv_transpose2d)\(([^)]*)\)(?: \{([^}]*)\})?")
BN_RE = re.compile(r"%(\S+) = batch_norm\(([^)]*)\)(?: \{([^}]*)\})?")


def attr(text, key, default):
    m = re.search(rf"\b{key} = (\[[^\]]*\]|[^,}}]+)", text or "")
    return ast.literal_eval(m.group(1).strip()) if m else default


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
    path = os.path.join(ROOT, "examples", f"{qir_name}.qir")
    text = open(path).read()
    weights = load_file(os.path.join(ROOT, "examples", f"{qir_name}.safetensors"))
    keys = {m.group(1): m.group(2) for m in WEIGHT_RE.finditer(text)}
    layers = {}
    for m in LAYER_RE.finditer(text):
        operands = [o.strip().lstrip("%") for o in m.group(3).split(",")]
        layers[m.group(1)] = (m.group(2), operands, m.group(4))
    expected = {}
    for m in BN_RE.finditer(text):
        operands = [o.strip().lstrip("%") for o in m.group(2).split(",")]
        if operands[0] not in layers:
            continue
        kind, conv_operands, conv_attrs = layers[operands[0]]
        w_key = keys[conv_operands[1]]
        b_key = keys[conv_operands[2]] if len(conv_operands) > 2 else None
        stat_keys = [keys[o] for o in operands[1:5]]
        w = weights[w_key]
        groups = attr(conv_attrs, "groups", 1)
        cls = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv_transpose2d": nn.ConvTranspose2d}[kind]
        if kind == "conv_transpose2d":
            conv = cls(w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), groups=groups, bias=b_key is not None)
        else:
            conv = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), groups=groups, bias=b_key is not None)
        bn_cls = nn.BatchNorm1d if kind == "conv1d" else nn.BatchNorm2d
        bn = bn_cls(len(weights[stat_keys[0]]), eps=attr(m.group(3), "eps", 1e-5))
        conv_path = w_key.rsplit(".", 1)[0]
        bn_path = stat_keys[0].rsplit(".", 1)[0]
        assert [k.rsplit(".", 1)[0] for k in stat_keys] == [bn_path] * 4
        with torch.no_grad():
            conv.weight.copy_(w)
            if b_key:
                assert b_key == conv_path + ".bias"
                conv.bias.copy_(weights[b_key])
            bn.weight.copy_(weights[stat_keys[0]])
            bn.bias.copy_(weights[stat_keys[1]])
            bn.running_mean.copy_(weights[stat_keys[2]])
            bn.running_var.copy_(weights[stat_keys[3]])
        model = Pair(conv_path, conv, bn_path, bn).eval()
        c_in = conv.in_channels
        x = torch.randn(1, c_in, *[k + 2 for k in w.shape[2:]])
        gm = fold(export(model, x))
        for k, v in folded_tensors(gm).items():
            assert k not in expected
            expected[k] = v
    tensors = {f"expected.{k}": v for k, v in expected.items()}
    save_file(tensors, os.path.join(OUT, f"example_{qir_name}.safetensors"))
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
    save_file(tensors, os.path.join(ROOT, "tests", "passes", "fuse-conv-bn", "weights.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    write_pass_case_weights()
    for name, model, x in synthetic_cases():
        write_synthetic(name, model, x)
    for name in ["small_cnn", "resnet_basic_block", "mobilenetv2_inverted_residual"]:
        write_example(name)


if __name__ == "__main__":
    main()
