"""Fixtures for qc's QAT parity tests: what PT2E's `prepare_qat_pt2e`, train-mode calibration,
a few QAT training steps and `convert_pt2e` compute.

Usage: /work/venv/bin/python -m tools.gen_qat_fixtures [OUT_DIR]      (default tests/qat)
       /work/venv/bin/python -m tools.gen_qat_fixtures --sqrt-study  (prints the sqrt numerics)
       either with `--only CASE[,CASE...]` for some fixtures only

Needs what tools/gen_pt2e_fixtures.py needs (torch 2.15, torchao 0.18, ExecuTorch's
XNNPACKQuantizer) and reuses its and tools/gen_convert_fixtures.py's functions.

Each case of CASES is one seeded model (MODELS: `conv_bn_relu`, `residual`,
`conv_transpose_bn`, `mlp`; batch 4) with one quantizer (QUANTIZERS):
* `xnnpack-qat`: ExecuTorch's `XNNPACKQuantizer().set_global(get_symmetric_quantization_config(
  is_per_channel=True, is_qat=True))` — every model, case `<model>`;
* `xnnpack-qat-per-tensor`: the same with `is_per_channel=False` — case `<model>_per_tensor`;
* `x86-qat`: torchao's `X86InductorQuantizer().set_global(
  get_default_x86_inductor_quantization_config(is_qat=True))` — case `<model>_x86`.
The float model (parameters from `G.build`, BN statistics randomised by `G.randomize_bn`) is
built afresh from its seed for every use below, so no step sees another's in-place updates.
`residual`'s downsample BN has eps 1e-3 and momentum 0.3 (the others PyTorch's defaults), to
show what PT2E's QAT rewrite does with them (see `batch_norms` below).

Every case directory tests/qat/<case>/ holds:

`model.qir`, `model.safetensors`
  the float model exported in TRAIN mode, `torch.export.export(model.train(), example,
  strict=True)`, through tools/qir_bridge: batch norms are `batch_norm(...) {training = true}`
  (with `eps` / `momentum` when not 1e-5 / 0.1), their running statistics `weight`s; the
  `num_batches_tracked` counters are not exported (tools/qir_bridge/README.md).
`calib.npz`
  K (3) seeded calibration batches, one array per graph input named like it (`x`), batches
  concatenated along axis 0 — the first K batches of tools/gen_pt2e_fixtures.py's `calibration`
  (scales 0.5, 0.8, 1.1; offsets -0.1, 0, 0.1).
`expected.json`
  After `prepare_qat_pt2e(export(model.train(), strict=True).module(), quantizer)` and one
  forward per calibration batch (train mode, `torch.no_grad()`, through an FX interpreter):
  * `fake_quants`: every fake-quant node `activation_post_process_N`, in graph order, one line
    each: `name`; `class` (FusedMovingAvgObsFakeQuantize, FakeQuantize or
    FixedQParamsFakeQuantize) and `observer` (the class of the observer it wraps); `observes` (the
    FX name of its input) and `observes_value` (the same with fake-quant nodes stripped): for a
    conv weight after PT2E's conv-bn QAT rewrite this is the `mul` that scales the weight by
    `bn_w / sqrt(running_var + 1e-5)`; `instance` (the smallest fake-quant name bound to the same
    module object); `dtype`, `quant_min`, `quant_max`, `qscheme`; `ch_axis` (the module's, -1
    per tensor), `is_per_channel`, `is_symmetric_quant` (FusedMovingAvgObsFakeQuantize's flags,
    null for the other classes); `averaging_constant` and `eps_bits` (float32 bits) of the
    observer; `fake_quant_enabled`, `observer_enabled` (as prepared); `scale_bits` /
    `zero_point`: `calculate_qparams()` after calibration (the observer's Python formula, what
    convert uses — not the fake-quant buffers, which the fused C++ kernel computes with
    `ChooseQuantizationParams`, see calibrated.npz); per calibration batch `seen_crc32`,
    `seen_min_bits`, `seen_max_bits` of the tensor it saw (tools/gen_pt2e_fixtures.py's
    `Recorder`: CRC-32 of the float32 bytes with -0.0 made +0.0, min and max as float32 bits).
  * `call_order`: the fake-quant calls of one forward, in call order.
  * `prepared_graph`: every node of the prepared graph in graph order, one line each: `name`,
    `op` (placeholder, get_attr, call_function, call_module, output), `target` (aten overload
    such as `aten.conv2d.default`, `getitem`, the get_attr path such as `bn1.running_var`, the
    module name for call_module) and `args` (node references as `"%name"`, literals as JSON
    values: 1e-05, [-1, 1, 1, 1], true, null), plus `kwargs` when there are any. The guard
    module `_guards_fn` that `torch.export` adds is left out.
  * `batch_norms`: per BatchNorm2d module: its `running_mean` / `running_var` keys, the model's
    `eps` / `momentum`, and `prepared`: the prepared graph's batch_norm node reading those
    statistics with its `training`, `momentum`, `eps` literals (PT2E's QAT rewrite replaces
    them by 0.1 and 1e-5 — pytorch/ao#4107).
  * `nonstrict_agrees`: a non-strict export gives the same fake-quant records (true / false),
    or the error `prepare_qat_pt2e` raised on it (a string).
  * header fields: `model`, `doc`, `torch`, `torchao`, `quantizer` (class), `config` (the call),
    `export`, `calib_batches`, `inputs`, `outputs` (count).
`calibrated.npz`
  After those K forwards: per fake-quant instance `<instance>.min_val`, `.max_val` (its
  observer's running statistics, float32 as PyTorch holds them), `<instance>.scale`,
  `<instance>.zero_point` (the fake-quant buffers the fused kernel last wrote: float32,
  int32); per batch norm its `running_mean` / `running_var` under their QIR weight keys
  (`bn1.running_mean`, ...: after K momentum updates with PT2E's momentum); `out.<b>`: the
  prepared model's (fake-quantized, train-mode) output for calibration batch b.
`train.npz`
  For reference (qc does not train): `x`, the S (5) seeded training batches, and `target`, the
  seeded random targets, each concatenated along axis 0.
`trained.safetensors`
  From a fresh `prepare_qat_pt2e` of the same model: S steps of `torch.optim.SGD(lr=0.05)` on
  `mse_loss(prepared(x), target)` (train mode, fake quant and observers on). Every tensor of
  model.safetensors, under the same keys: the trained parameters and the BN running
  statistics after the S training forwards.
`trained_stats.npz`
  The trained module's fake-quant instances: `<instance>.min_val`, `.max_val` (float32 as
  PyTorch holds them), `.scale`, `.zero_point` (buffers, as in calibrated.npz).
`converted.json`, `int_weights.npz`, `heldout.npz`, `heldout_expected.npz`
  `convert_pt2e(trained)` (fold_quantize=True), in tools/gen_convert_fixtures.py's formats (its
  docstring), made by its `q_records` / `dq_records` / `to_json`, with these differences:
  `observer` names the fake-quant module; a conv weight's quantize op quantizes the conv's
  weight parameter (`value` e.g. `conv1_weight`), which `_fold_conv_bn_qat` overwrote with
  the BN-folded weight `w * bn_w * rsqrt(running_var + eps)`, with the qparams observed on the
  `mul` above; `_fold_conv_bn_qat` gives a bias-less conv the bias `<weight>_bias`. Each
  `qdq` record also has `key`: the get_attr path of the parameter a folded op quantized
  (`conv1.weight`), else null, and `value_module`: the module path of the value (its QIR
  `loc`, e.g. `conv1` for the conv that replaced conv1-bn1, null for ops of the root module and
  for graph inputs, to which PT2E's QAT rewrite gives the module stack of the conv they feed) — the quantized value's FX name after the fold is PT2E's (`conv2d_5`), which qc
  need not reproduce. The quantize op of a fake-quant that observed a folded batch norm's output
  reads that conv (checked by module path). Names are those of `convert_pt2e(trained)`. The header has `trained_steps`, `lr` and `float` (what
  `float.<i>` is: the float model with the trained parameters and running statistics, in eval
  mode). int_weights.npz is keyed by `value`, as there (after the BN fold).
`converted_params.npz`
  Every float tensor the converted graph reads, except PT2E's qparam tensors (`_scale_<i>`,
  `_zero_point_<i>`), keyed by get_attr path, from the unfolded conversion: the BN-folded conv
  weights (`conv1.weight`) and biases (`conv1.weight_bias`, `conv2.bias`), the other biases.

Deterministic: fixed seeds, one thread (set by gen_pt2e_fixtures), sorted npz keys, the
repository's safetensors writer.
"""

import copy
import json
import os
import sys
import warnings
import zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from . import gen_convert_fixtures as C
from . import gen_pt2e_fixtures as G
from .fileio import records_json, write_safetensors
from .qir_bridge import write_qir

warnings.filterwarnings("ignore")


def _memoize_pattern_graphs():
    """PT2E builds every pattern graph it matches with `torch.export` on every call:
    `_fold_conv_bn_qat` exports 96 (4 conv kinds x 12 variants x pattern and replacement) per
    `convert_pt2e`, `_fuse_conv_bn_qat` and ExecuTorch's conv-bn annotator dozens more per
    prepare. This memoises torchao's `_get_aten_graph_module_for_pattern` in this process, keyed
    by the pattern's code and closure values, the shapes and dtypes of its example tensors
    (their random values are not part of the exported graph), `is_cuda` and the other
    arguments; each call gets a deep copy. The fixtures are byte-identical without it (checked
    on conv_bn_relu); it only saves minutes."""
    import executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils as xnn_utils
    import torchao.quantization.pt2e.qat_utils as qat_utils
    import torchao.quantization.pt2e.utils as pt2e_utils

    original = pt2e_utils._get_aten_graph_module_for_pattern
    cache = {}

    def key_of(v, values):
        if isinstance(v, torch.Tensor):
            return ("tensor", tuple(v.shape), str(v.dtype)) + ((v.detach().numpy().tobytes(),) if values else ())
        if isinstance(v, (list, tuple)):
            return (type(v).__name__,) + tuple(key_of(e, values) for e in v)
        if isinstance(v, dict):
            return ("dict",) + tuple((k, key_of(e, values)) for k, e in sorted(v.items()))
        try:
            hash(v)
            return v
        except TypeError:
            return ("id", id(v))

    def memoized(pattern, example_inputs, is_cuda=False, **kwargs):
        if not hasattr(pattern, "__code__"):
            return original(pattern, example_inputs, is_cuda, **kwargs)
        cells = tuple(c.cell_contents for c in (pattern.__closure__ or ()))
        key = (
            pattern.__code__,
            key_of(cells, True),
            key_of(getattr(pattern, "__defaults__", None), True),
            key_of(tuple(example_inputs), False),
            is_cuda,
            key_of(kwargs, False),
        )
        if key not in cache:
            cache[key] = original(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(cache[key])

    for module in (pt2e_utils, qat_utils, xnn_utils):
        assert module._get_aten_graph_module_for_pattern is original
        module._get_aten_graph_module_for_pattern = memoized


if os.environ.get("QAT_FIXTURES_NO_MEMO") != "1":
    _memoize_pattern_graphs()

K = 3  # calibration batches
STEPS = 5  # SGD steps of the trained variant
LR = 0.05


# ---- the models -----------------------------------------------------------------------------


class ConvBnRelu(nn.Module):
    """conv(no bias)-bn-relu -> conv(bias)-bn -> adaptive avgpool -> flatten -> linear."""

    def __init__(self, g):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, bias=False)
        self.bn1 = G.randomize_bn(nn.BatchNorm2d(8), g)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, bias=True)
        self.bn2 = G.randomize_bn(nn.BatchNorm2d(8), g)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Residual(nn.Module):
    """Two basic blocks, then maxpool: block 1 conv-bn-relu, conv-bn, plus a 1x1 conv-bn
    downsample of its input (BN eps 1e-3, momentum 0.3), relu; block 2 the same with the identity
    shortcut."""

    def __init__(self, g):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = G.randomize_bn(nn.BatchNorm2d(8), g)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = G.randomize_bn(nn.BatchNorm2d(8), g)
        self.down = nn.Conv2d(3, 8, 1, bias=False)
        self.down_bn = G.randomize_bn(nn.BatchNorm2d(8, eps=1e-3, momentum=0.3), g)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=True)
        self.bn3 = G.randomize_bn(nn.BatchNorm2d(8), g)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn4 = G.randomize_bn(nn.BatchNorm2d(8), g)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)) + self.down_bn(self.down(x)))
        z = self.relu(self.bn3(self.conv3(y)))
        z = self.relu(self.bn4(self.conv4(z)) + y)
        return self.pool(z)


class ConvTransposeBn(nn.Module):
    """conv-bn-relu -> conv_transpose(stride 2, no bias)-bn-relu."""

    def __init__(self, g):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = G.randomize_bn(nn.BatchNorm2d(8), g)
        self.relu = nn.ReLU()
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.bn2 = G.randomize_bn(nn.BatchNorm2d(4), g)

    def forward(self, x):
        return self.relu(self.bn2(self.up(self.relu(self.bn1(self.conv(x))))))


class Mlp(nn.Module):
    """linear -> relu -> linear (no batch norm)."""

    def __init__(self, g):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


# name -> (class, input shape, seed)
MODELS = {
    "conv_bn_relu": (ConvBnRelu, (4, 3, 8, 8), 20261100),
    "residual": (Residual, (4, 3, 8, 8), 20261110),
    "conv_transpose_bn": (ConvTransposeBn, (4, 3, 8, 8), 20261120),
    "mlp": (Mlp, (4, 16), 20261130),
}


def _xnnpack(per_channel):
    def make():
        return G.XNNPACKQuantizer().set_global(
            G.get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=True)
        )

    return make


# quantizer -> (case-name suffix, class path, config text, factory)
QUANTIZERS = {
    "xnnpack-qat": (
        "",
        G.QUANTIZER,
        "get_symmetric_quantization_config(is_per_channel=True, is_qat=True)",
        _xnnpack(True),
    ),
    "xnnpack-qat-per-tensor": (
        "_per_tensor",
        G.QUANTIZER,
        "get_symmetric_quantization_config(is_per_channel=False, is_qat=True)",
        _xnnpack(False),
    ),
    "x86-qat": (
        "_x86",
        "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer.X86InductorQuantizer",
        "get_default_x86_inductor_quantization_config(is_qat=True)",
        lambda: X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True)),
    ),
}

# (model, quantizer), in generation order
CASES = [
    ("conv_bn_relu", "xnnpack-qat"),
    ("conv_bn_relu", "xnnpack-qat-per-tensor"),
    ("conv_bn_relu", "x86-qat"),
    ("residual", "xnnpack-qat"),
    ("residual", "x86-qat"),
    ("conv_transpose_bn", "xnnpack-qat"),
    ("mlp", "xnnpack-qat"),
]


def case_name(model, quantizer):
    return model + QUANTIZERS[quantizer][0]


# ---- helpers --------------------------------------------------------------------------------


def build(model_name):
    """A fresh float model in train mode, the export example and the K calibration batches
    (gen_pt2e_fixtures's `build` with random arithmetic; its first K batches)."""
    cls, shape, seed = MODELS[model_name]
    model, example, batches = G.build(cls, shape, seed, False)
    return model.train(), example, batches[:K]


def export(model, example, strict=True):
    """Train-mode export; checks that exporting left the model's state untouched."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ep = torch.export.export(model.train(), example, strict=strict)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "export changed the model"
    return ep


def prepare(model_name, quantizer, strict=True):
    model, example, _ = build(model_name)
    return prepare_qat_pt2e(export(model, example, strict).module(), QUANTIZERS[quantizer][3]())


def is_fq(node):
    return G.is_observer(node)  # call_module activation_post_process_<n>: fake-quant modules in QAT


def number(name):
    return int(name.rsplit("_", 1)[1])


def instances_of(prepared):
    """fake-quant node name -> instance name (smallest name bound to the same module)."""
    by_object = {}
    for n in prepared.graph.nodes:
        if is_fq(n):
            by_object.setdefault(id(getattr(prepared, n.target)), []).append(n.target)
    return {name: min(names, key=number) for names in by_object.values() for name in names}


def strip(node):
    while is_fq(node):
        node = node.args[0]
    return node


def target_text(n):
    if n.op == "call_function":
        return "getitem" if n.target.__name__ == "getitem" else str(n.target)
    return str(n.target)


def arg_json(a):
    if isinstance(a, torch.fx.Node):
        return "%" + a.name
    if isinstance(a, (list, tuple)):
        return [arg_json(e) for e in a]
    if isinstance(a, torch.dtype):
        return str(a).replace("torch.", "")
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    return str(a)


def graph_records(gm):
    rows = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and str(n.target).startswith("_guards"):
            continue
        r = {"name": n.name, "op": n.op, "target": target_text(n), "args": arg_json(n.args)}
        if n.kwargs:
            r["kwargs"] = {k: arg_json(v) for k, v in n.kwargs.items()}
        rows.append(r)
    return rows


def fq_records(prepared, calls):
    """The `fake_quants` records (module docstring)."""
    inst = instances_of(prepared)
    records = []
    for n in prepared.graph.nodes:
        if not is_fq(n):
            continue
        mod = getattr(prepared, n.target)
        obs = mod.activation_post_process
        fused = type(mod).__name__ == "FusedMovingAvgObsFakeQuantize"
        scale, zp = mod.calculate_qparams()
        seen = [[c[1:] for c in batch if c[0] == n.target] for batch in calls]
        assert all(len(b) == 1 for b in seen), "one call per fake-quant node and batch"
        eps = getattr(obs, "eps", None)
        records.append(
            {
                "name": n.target,
                "class": type(mod).__name__,
                "observer": type(obs).__name__,
                "observes": n.args[0].name,
                "observes_value": strip(n.args[0]).name,
                "instance": inst[n.target],
                "dtype": str(mod.dtype).replace("torch.", ""),
                "quant_min": int(mod.quant_min),
                "quant_max": int(mod.quant_max),
                "qscheme": str(mod.qscheme).replace("torch.", ""),
                "ch_axis": int(mod.ch_axis),
                "is_per_channel": bool(mod.is_per_channel) if fused else None,
                "is_symmetric_quant": bool(mod.is_symmetric_quant) if fused else None,
                "averaging_constant": float(obs.averaging_constant) if hasattr(obs, "averaging_constant") else None,
                "eps_bits": G.f32_bits(eps)[0] if eps is not None else None,
                "fake_quant_enabled": int(mod.fake_quant_enabled[0]),
                "observer_enabled": int(mod.observer_enabled[0]),
                "scale_bits": G.f32_bits(scale),
                "zero_point": [int(z) for z in zp.reshape(-1)],
                "seen_crc32": [b[0][0] for b in seen],
                "seen_min_bits": [b[0][1] for b in seen],
                "seen_max_bits": [b[0][2] for b in seen],
            }
        )
    return records


def fq_arrays(prepared):
    """`<instance>.min_val`, `.max_val`, `.scale`, `.zero_point` of every fake-quant instance."""
    arrays = {}
    for name in sorted(set(instances_of(prepared).values()), key=number):
        mod = getattr(prepared, name)
        obs = mod.activation_post_process
        arrays[f"{name}.min_val"] = obs.min_val.detach().to(torch.float32).numpy().copy()
        arrays[f"{name}.max_val"] = obs.max_val.detach().to(torch.float32).numpy().copy()
        arrays[f"{name}.scale"] = mod.scale.detach().numpy().copy()
        arrays[f"{name}.zero_point"] = mod.zero_point.detach().numpy().copy()
    return arrays


def bn_modules(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def bn_records(model, prepared):
    rows = []
    bns = [n for n in prepared.graph.nodes if n.op == "call_function" and target_text(n) == "aten.batch_norm.default"]
    for name, m in bn_modules(model):
        rm, rv = f"{name}.running_mean", f"{name}.running_var"
        nodes = [n for n in bns if n.args[3].target == rm and n.args[4].target == rv]
        assert len(nodes) == 1, (name, [n.name for n in nodes])
        n = nodes[0]
        rows.append(
            {
                "module": name,
                "running_mean": rm,
                "running_var": rv,
                "eps": m.eps,
                "momentum": m.momentum,
                "prepared": {"node": n.name, "training": n.args[5], "momentum": n.args[6], "eps": n.args[7]},
            }
        )
    return rows


def bn_arrays(model, module):
    arrays = {}
    for name, _ in bn_modules(model):
        for s in ("running_mean", "running_var"):
            arrays[f"{name}.{s}"] = C.attr(module, f"{name}.{s}").detach().numpy().copy()
    return arrays


def calibrate(prepared, batches):
    """One train-mode forward per batch (no gradients); the fake-quant calls and outputs."""
    calls, outs = [], []
    with torch.no_grad():
        for b in batches:
            rec = G.Recorder(prepared)
            out = rec.run(*b)
            calls.append(rec.calls)
            outs.append([t.detach().clone() for t in torch.utils._pytree.tree_flatten(out)[0]])
    return calls, outs


def training_data(model_name, out_shape):
    _, shape, seed = MODELS[model_name]
    g = torch.Generator().manual_seed(seed + 4)
    xs, ts = [], []
    for i in range(STEPS):
        scale, offset = 0.7 + 0.2 * i, 0.05 * (i % 3) - 0.05
        xs.append(torch.randn(*shape, generator=g) * scale + offset)
        ts.append(torch.randn(*out_shape, generator=g))
    return xs, ts


def train(prepared, xs, ts):
    opt = torch.optim.SGD(prepared.parameters(), lr=LR)
    for x, t in zip(xs, ts):
        opt.zero_grad()
        loss = F.mse_loss(prepared(x), t)
        loss.backward()
        opt.step()
    return prepared


def module_path(node):
    """The module path of the node's innermost `nn_module_stack` entry (`conv1`), None if it
    has none (as the `loc` the QIR exporter writes)."""
    stack = node.meta.get("nn_module_stack")
    if not stack or node.op == "placeholder":
        return None  # PT2E's QAT rewrite gives a conv's input node the conv's stack, inputs too
    path = list(stack.values())[-1][0]
    path = path[len("L['self']") :].lstrip(".") if path.startswith("L['self']") else path
    return path or None


def qat_weight_source(prepared, node):
    """For a weight fake-quant reading PT2E's QAT `mul(w, reshape(div(bn_w, sqrt(...))))`, the
    conv weight get_attr `w` (what the converted graph quantizes); else None."""
    v = strip(node.args[0])
    if v.op == "call_function" and target_text(v) == "aten.mul.Tensor" and v.args[0].op == "get_attr":
        return v.args[0]
    return None


# ---- one case -------------------------------------------------------------------------------


def generate(model_name, quantizer, out_dir):
    name = case_name(model_name, quantizer)
    _, qclass, config, _ = QUANTIZERS[quantizer]
    cls = MODELS[model_name][0]
    case = os.path.join(out_dir, name)
    os.makedirs(case, exist_ok=True)

    # a. the float model, exported in train mode
    model, example, batches = build(model_name)
    ep = export(model, example)
    weights = write_qir(ep, os.path.join(case, "model.qir"), module_name=name)
    input_names = [n.name for n in ep.module().graph.nodes if n.op == "placeholder"]
    np.savez(
        os.path.join(case, "calib.npz"),
        **{k: torch.cat([b[i] for b in batches]).numpy() for i, k in enumerate(input_names)},
    )

    # b, c. prepare_qat_pt2e + K train-mode forwards
    prepared = prepare(model_name, quantizer)
    graph = graph_records(prepared)
    calls, outs = calibrate(prepared, batches)
    records = fq_records(prepared, calls)
    try:
        loose = prepare(model_name, quantizer, strict=False)
        nonstrict_agrees = fq_records(loose, calibrate(loose, batches)[0]) == records
    except ValueError as e:  # recorded, not worked around (residual_x86)
        nonstrict_agrees = f"prepare_qat_pt2e on the non-strict export raised ValueError: {e}"
    calibrated = {**fq_arrays(prepared), **bn_arrays(model, prepared)}
    for b, out in enumerate(outs):
        for i, t in enumerate(out):
            calibrated[f"out.{b}" if len(out) == 1 else f"out.{b}.{i}"] = t.numpy()
    np.savez_compressed(os.path.join(case, "calibrated.npz"), **dict(sorted(calibrated.items())))

    expected = {
        "model": name,
        "doc": cls.__doc__.split("\n")[0],
        "torch": torch.__version__,
        "torchao": __import__("torchao").__version__,
        "quantizer": qclass,
        "config": config,
        "export": "torch.export.export(model.train(), example, strict=True)",
        "calib_batches": K,
        "inputs": input_names,
        "outputs": len(outs[0]),
        "nonstrict_agrees": nonstrict_agrees,
        "call_order": [c[0] for c in calls[0]],
        "fake_quants": records,
        "batch_norms": bn_records(model, prepared),
        "prepared_graph": graph,
    }
    with open(os.path.join(case, "expected.json"), "w") as f:
        f.write(records_json(expected, ("fake_quants", "prepared_graph", "batch_norms")))

    # d. the trained variant
    trained = prepare(model_name, quantizer)
    xs, ts = training_data(model_name, outs[0][0].shape)
    np.savez(os.path.join(case, "train.npz"), target=torch.cat(ts).numpy(), x=torch.cat(xs).numpy())
    train(trained, xs, ts)
    state = {k: C.attr(trained, k).detach().clone() for k in weights}
    for k, v in state.items():
        assert v.dtype == weights[k].dtype and v.shape == weights[k].shape, k
    write_safetensors(os.path.join(case, "trained.safetensors"), state)
    np.savez_compressed(os.path.join(case, "trained_stats.npz"), **dict(sorted(fq_arrays(trained).items())))
    convert(name, model_name, trained, state, input_names, case)

    n_inst = len({r["instance"] for r in records})
    print(
        f"{name}: {len(records)} fake-quant nodes, {n_inst} instances "
        f"({', '.join(sorted({r['class'] + '/' + r['observer'] for r in records}))}); "
        f"non-strict agrees: {nonstrict_agrees}"
    )


def convert(name, model_name, trained, state, input_names, case):
    """converted.json, int_weights.npz, converted_params.npz, heldout*.npz (module docstring)."""
    cls, shape, seed = MODELS[model_name]
    # What convert's q/dq records are checked against: per fake-quant node, the value its
    # quantize op reads after _fold_conv_bn_qat and calculate_qparams() of the trained module.
    # A fake-quant of a QAT batch norm's output quantizes the conv that replaces the conv-bn
    # pair: its name is known after conversion, its module path (the conv's) before.
    observers, folded_bn = {}, {}
    for n in trained.graph.nodes:
        if is_fq(n):
            mod = getattr(trained, n.target)
            scale, zp = mod.calculate_qparams()
            w = qat_weight_source(trained, n)
            v = strip(n.args[0])
            if target_text(v) == "aten.batch_norm.default":
                conv = v.args[0]
                while target_text(conv) in ("aten.add.Tensor", "aten.div.Tensor"):
                    conv = conv.args[0]
                assert target_text(conv).startswith("aten.conv"), (name, n.target, conv.name)
                folded_bn[n.target] = module_path(conv)
            observers[n.target] = {
                "observes_value": (w if w is not None else v).name,
                "dtype": str(mod.dtype).replace("torch.", ""),
                "quant_min": int(mod.quant_min),
                "quant_max": int(mod.quant_max),
                "ch_axis": int(mod.ch_axis),
                "scale_bits": G.f32_bits(scale),
                "zero_point": [int(z) for z in zp.reshape(-1)],
            }

    unfolded = convert_pt2e(copy.deepcopy(trained), fold_quantize=False)
    converted = convert_pt2e(trained)
    # Folding only turns quantize ops of constants into get_attrs and drops what fed them. The
    # convs `_fold_conv_bn_qat` creates are named by the graph's name counter, which a deep copy
    # resets (`conv2d_4` in the copy is `conv2d_5` in the original): names are compared for
    # everything else. The records use the original's names (what `convert_pt2e(prepared)` gives).
    frozen = {n.name for n in converted.graph.nodes if n.op == "get_attr"}
    kept = [n for n in unfolded.graph.nodes if n.op != "get_attr" and not (C.is_q(n) and n.name in frozen)]
    got = [n for n in converted.graph.nodes if n.op != "get_attr"]
    assert len(kept) == len(got), name
    for a, b in zip(kept, got):
        assert (a.op, a.target) == (b.op, b.target), (name, a.name, b.name)
        assert a.name == b.name or target_text(a).startswith("aten.conv"), (name, a.name, b.name)
        a.name = b.name  # the copy's records in the original's names
    for n in unfolded.graph.nodes:
        if C.is_q(n) and C.observer_of(n) in folded_bn:
            src = n.args[0]
            assert target_text(src).startswith("aten.conv"), (name, n.name, src.name)
            assert module_path(src) == folded_bn[C.observer_of(n)], (name, n.name, src.name)
            observers[C.observer_of(n)]["observes_value"] = src.name

    qdq, ints = C.q_records(unfolded, converted, observers)
    dq = C.dq_records(converted, {r["name"]: r["value"] for r in qdq})
    assert len(dq) == sum(1 for n in unfolded.graph.nodes if C.is_dq(n)), name
    by_name = {n.name: n for n in unfolded.graph.nodes}
    for r in qdq:
        src = by_name[r["value"]]
        r["key"] = src.target if r["folded"] else None
        r["value_module"] = module_path(src)

    params = {}
    for n in unfolded.graph.nodes:
        if n.op == "get_attr" and not n.target.startswith(("_scale_", "_zero_point_")):
            t = C.attr(unfolded, n.target)
            if t.dtype.is_floating_point:
                params[n.target] = t.detach().numpy().copy()

    # The float reference: the model with the trained parameters and statistics, eval mode.
    float_model = build(model_name)[0]
    missing, unexpected = float_model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    float_model.eval()

    batches = C.heldout(shape, seed + 3, False)
    sqnr = C.write_heldout(case, name, batches, input_names, (float_model, converted, unfolded), ints)
    np.savez_compressed(os.path.join(case, "converted_params.npz"), **dict(sorted(params.items())))
    convert = "convert_pt2e(trained) (fold_quantize=True, use_reference_representation=False)"
    details = {
        "trained_steps": STEPS,
        "lr": LR,
        "float": "the float model with trained.safetensors loaded, eval mode",
    }
    C.write_converted_json(case, name, convert, details, sqnr, qdq, dq)


def main():
    args = sys.argv[1:]
    only = None
    if "--only" in args:  # --only CASE[,CASE...]: just those fixtures
        i = args.index("--only")
        only = set(args[i + 1].split(","))
        del args[i : i + 2]
    if "--sqrt-study" in args:
        return sqrt_study(only)
    out_dir = args[0] if args else os.path.join(G.ROOT, "tests", "qat")
    for model_name, quantizer in CASES:
        if only is None or case_name(model_name, quantizer) in only:
            generate(model_name, quantizer, out_dir)


def ieee_sqrt(x):
    """Correctly rounded float32 square root (float64 sqrt, then one rounding: exact, since
    53 >= 2 * 24 + 2)."""
    return torch.sqrt(x.to(torch.float64)).to(x.dtype)


class SqrtCount:
    """What `counting_sqrt` saw: elements computed, and those not correctly rounded."""

    total = wrong = 0


def counting_sqrt(x):
    """`torch.sqrt` (the kernel `aten.sqrt` runs), counting into `SqrtCount`."""
    y = torch.sqrt(x)
    SqrtCount.total += y.numel()
    SqrtCount.wrong += int((y != ieee_sqrt(x)).sum())
    return y


def patched(prepared, fn):
    """`prepared` with every `aten.sqrt` (PT2E's QAT conv-bn graph) computed by `fn`."""
    count = 0
    for n in prepared.graph.nodes:
        if n.op == "call_function" and n.target is torch.ops.aten.sqrt.default:
            n.target = fn
            count += 1
    prepared.recompile()
    return prepared, count


def sqrt_study(only=None):
    """Prints how far PyTorch's `torch.sqrt` is from the correctly rounded square root, and
    what that changes in the fixtures' statistics: each BN case is prepared twice, once as
    PT2E makes it and once with its sqrt nodes correctly rounded, and both are calibrated (K
    batches) and trained (S steps) exactly as above; the fake-quant statistics (min_val /
    max_val, and the fused kernel's scale buffers) and the BN running statistics are compared
    element by element."""
    g = torch.Generator().manual_seed(0)
    print("torch.sqrt vs the correctly rounded sqrt (float32), random inputs:")
    for lo, hi in ((0.5, 2.0), (1e-3, 1e3)):
        for n in (1, 4, 8, 16, 17, 64, 1 << 20):
            x = torch.empty(n).uniform_(lo, hi, generator=g)
            d = int((torch.sqrt(x) != ieee_sqrt(x)).sum())
            assert torch.equal(ieee_sqrt(x), torch.from_numpy(np.sqrt(x.numpy())))
            print(f"  n={n:>7} in [{lo}, {hi}]: {d} differ ({100 * d / n:.2f} %)")
    for model_name, quantizer in CASES:
        cls, shape, seed = MODELS[model_name]
        name = case_name(model_name, quantizer)
        if only is not None and name not in only:
            continue
        _, _, batches = build(model_name)
        runs = {}
        for variant in ("torch", "ieee"):
            fn = counting_sqrt if variant == "torch" else ieee_sqrt
            counts = []
            SqrtCount.total = SqrtCount.wrong = 0
            p, n_sqrt = patched(prepare(model_name, quantizer), fn)
            calls, outs = calibrate(p, batches)
            counts.append((SqrtCount.wrong, SqrtCount.total))
            cal = fq_arrays(p)
            cal.update(bn_arrays(build(model_name)[0], p))
            SqrtCount.total = SqrtCount.wrong = 0
            t, _ = patched(prepare(model_name, quantizer), fn)
            xs, ts = training_data(model_name, outs[0][0].shape)
            train(t, xs, ts)
            counts.append((SqrtCount.wrong, SqrtCount.total))
            tr = fq_arrays(t)
            runs[variant] = (p, cal, tr, counts, n_sqrt)
        if runs["ieee"][4] == 0:
            print(f"{name}: no sqrt in the prepared graph")
            continue
        p = runs["torch"][0]
        weight_inst = {instances_of(p)[n.target] for n in p.graph.nodes if is_fq(n) and qat_weight_source(p, n) is not None}
        (cw, ct), (tw, tt) = runs["torch"][3]
        print(
            f"{name}: {runs['ieee'][4]} sqrt nodes; torch.sqrt results not correctly rounded: "
            f"{cw}/{ct} in the {K} calibration forwards, {tw}/{tt} in the {STEPS} training forwards"
        )
        fixture = os.path.join(G.ROOT, "tests", "qat", name)
        if os.path.exists(os.path.join(fixture, "calibrated.npz")):
            # The counting wrapper computes what the unpatched graph computes ...
            with np.load(os.path.join(fixture, "calibrated.npz")) as z:
                same = all(np.array_equal(z[k], v) and z[k].dtype == v.dtype for k, v in runs["torch"][1].items())
            # ... and the weight fake-quant's first input is w * (bn_w / torch.sqrt(rv + 1e-5)).
            with open(os.path.join(fixture, "expected.json")) as f:
                seen = {r["name"]: r["seen_crc32"][0] for r in json.load(f)["fake_quants"]}
            fresh = prepare(model_name, quantizer)
            checked = 0
            for n in fresh.graph.nodes:
                if is_fq(n) and qat_weight_source(fresh, n) is not None:
                    mul = strip(n.args[0])
                    reshape = mul.args[1]
                    div = reshape.args[0]
                    rv = C.attr(fresh, div.args[1].args[0].args[0].target)
                    w, bn_w = C.attr(fresh, mul.args[0].target), C.attr(fresh, div.args[0].target)
                    with torch.no_grad():
                        v = w * (bn_w / torch.sqrt(rv + 1e-5)).reshape(reshape.args[1])
                    assert zlib.crc32((v.contiguous() + 0.0).numpy().tobytes()) == seen[n.target], (name, n.target)
                    checked += 1
            print(f"  torch.sqrt run = fixture's calibrated.npz: {same}; weight fake-quant inputs of batch 0 = "
                  f"w * (bn_w / torch.sqrt(running_var + 1e-5)) bit for bit: {checked} checked")
        for label, idx in (("calibrated", 1), ("trained", 2)):
            a, b = runs["torch"][idx], runs["ieee"][idx]
            groups = {"weight min/max": [], "activation min/max": [], "weight scale": [], "activation scale": [], "bn stats": []}
            for k in sorted(a):
                inst, field = k.rsplit(".", 1)
                diff = int((a[k] != b[k]).sum())
                if field in ("min_val", "max_val"):
                    g_ = "weight min/max" if inst in weight_inst else "activation min/max"
                elif field == "scale":
                    g_ = "weight scale" if inst in weight_inst else "activation scale"
                elif field in ("running_mean", "running_var"):
                    g_ = "bn stats"
                else:
                    continue
                groups[g_].append((diff, a[k].size, k))
            text = "; ".join(
                f"{g_} {sum(d for d, _, _ in v)}/{sum(n for _, n, _ in v)}" for g_, v in groups.items() if v
            )
            print(f"  {label}: elements that differ with IEEE sqrt: {text}")
            for g_ in ("weight min/max",):
                for d, n, k in groups[g_]:
                    if d:
                        ulps = np.abs(a[k].view(np.int32).astype(np.int64) - b[k].view(np.int32).astype(np.int64)).max()
                        print(f"    {k}: {d}/{n} differ, max {ulps} ulp")


if __name__ == "__main__":
    main()
