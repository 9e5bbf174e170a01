"""Fixtures for tests/pt2e_parity.rs: what PT2E's prepare_pt2e + calibration computes.

Usage: /work/venv/bin/python -m tools.gen_pt2e_fixtures [OUT_DIR]     (default tests/pt2e)

Needs torch 2.15, torchao 0.18 and ExecuTorch's XNNPACKQuantizer
(`pip install --no-deps executorch` + its import-time dependencies ruamel.yaml, flatbuffers,
tabulate). Without ExecuTorch it falls back to torchao's deprecated copy
(`torchao.testing.pt2e._xnnpack_quantizer`), which anchors `cat` on inputs[0] and finds cats
through `source_fn_stack` (reference pt2e.md §4.1): model `branch_cat` then differs from qc by
design, and expected.json says which quantizer made it.

Each model of MODELS (seeded, eval mode) is made in one or two variants: `<model>/` with
random parameters and data, and `<model>_exact/` whose parameters and data sit on coarse
dyadic grids so that every float32 operation is exact in any summation order (see
`make_exact`): there qc's interpreter must feed every observer exactly PyTorch's tensors,
whatever order its conv and linear kernels sum in. The last four models are minimal cases of
the differences tests/pt2e_parity.rs lists as known. For each variant this:
1. exports the model with `torch.export.export(..., strict=True)` (strict, so that
   `source_fn_stack` exists for the annotators that look for it) and writes `model.qir` +
   `model.safetensors` with tools/qir_bridge (its exporter);
2. writes `calib.npz`: one array per graph input, BATCHES batches of the export batch size
   concatenated along axis 0 (seeded; each batch has a different scale and offset, so the
   histogram observers' ranges grow and their histograms get re-binned);
3. runs torchao's `prepare_pt2e` (which folds BN first) with
   `XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))` on
   `export(...).module()`, feeds the same batches one by one through an FX interpreter, and
   records in `expected.json`, for every observer module `activation_post_process_N` in graph
   order: its class and config, the FX name of the node it observes (`observes`, which may be
   another observer: a requantization) and of that node with observers stripped
   (`observes_value`), its `instance` (the smallest observer name bound to the same module
   object: observers of one instance share statistics), `calculate_qparams()` (scales as
   float32 bit patterns, zero points), and per batch a CRC-32 and the min/max bits of the
   tensor it saw (`seen_*`); `call_order` is the order of observer calls in one forward;
4. writes `stats.npz` with each instance's final statistics (`<instance>.min_val`,
   `.max_val`, and `.histogram` for HistogramObserver), so the test can tell differences in
   what the observers saw from differences in how qparams are computed;
5. checks that a non-strict export gives the same observers, sharing and qparams
   (`nonstrict_agrees` in expected.json). True for all of these with torch 2.15: for a
   module call, `get_source_partitions` falls back to the `nn_module_stack` type when
   `source_fn_stack` is absent. A functional `F.adaptive_avg_pool2d` on an unannotated input
   would still be annotated only with strict export (qc always annotates it).

tools/gen_convert_fixtures.py runs `generate` for every fixture (rewriting the files above
byte for byte) and then adds what torchao's `convert_pt2e(prepared)` (fold_quantize=True)
makes of the calibrated module, for tests of qc's convert pass (its docstring has the
details):
6. `converted.json`: every quantize op of the converted graph in graph order (the value it
   quantizes, named as `observes_value` above, the observer it replaced, its consumers
   through its dequantize ops, qscheme, dtype, range, scales as float32 bits, zero points,
   and whether constant folding froze it into an int tensor), every dequantize op after
   DuplicateDQPass (`of_value`, consumers; `num_dq`), and `float_outputs_sqnr`, the SQNR of
   the converted model's outputs against the float model's on the held-out batches;
7. `int_weights.npz`: the int8 tensors constant folding computed (`_frozen_param<i>`), keyed
   by the FX name of the parameter or constant each quantized (e.g. `conv1_weight`,
   `_tensor_constant_0`);
8. `heldout.npz`: HELDOUT (4) seeded batches unlike the calibration ones, laid out as
   `calib.npz`, and `heldout_expected.npz`: `float.<i>` and `converted.<i>`, output i of the
   float model and of the converted model, batches concatenated along axis 0.
Run that script rather than this one to regenerate everything.

Deterministic: fixed seeds and a fixed thread count; safetensors and npz keys are sorted.
"""

import os
import sys
import warnings
import zlib

import numpy as np
import torch
import torch.nn as nn

from .fileio import records_json
from .qir_bridge import write_qir

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = 6

try:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    QUANTIZER = "executorch.backends.xnnpack.quantizer.xnnpack_quantizer.XNNPACKQuantizer"
except ImportError:  # pragma: no cover - the fallback described in the docstring
    from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    QUANTIZER = "torchao.testing.pt2e._xnnpack_quantizer.XNNPACKQuantizer"
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e  # noqa: E402


def randomize_bn(bn, g):
    """Non-trivial BN statistics (a fresh BatchNorm is the identity)."""
    with torch.no_grad():
        n = bn.num_features
        bn.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=g))
        bn.bias.copy_(torch.empty(n).uniform_(-0.5, 0.5, generator=g))
        bn.running_mean.copy_(torch.empty(n).uniform_(-0.5, 0.5, generator=g))
        bn.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=g))
    return bn


# ---- the models -----------------------------------------------------------------------------


class SmallCnn(nn.Module):
    """conv-bn-relu -> maxpool -> conv(no bias)-bn -> relu -> adaptive avgpool -> flatten -> linear."""

    def __init__(self, g):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = randomize_bn(nn.BatchNorm2d(8), g)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = randomize_bn(nn.BatchNorm2d(16), g)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResidualMlp(nn.Module):
    """linear -> relu -> linear, plus the input (residual add), times 2.0 (a scalar mul)."""

    def __init__(self, g):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        return (self.fc2(self.relu(self.fc1(x))) + x) * 2.0


class BranchCat(nn.Module):
    """Three branches concatenated on channels, then a conv. The first cat input (a max pool of
    the graph input) carries no quantization annotation, so ExecuTorch's cat annotator takes
    the second one (conv_a -> relu) as the observer source; the third is a plain conv."""

    def __init__(self, g):
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv_b = nn.Conv2d(3, 4, 1)
        self.conv_c = nn.Conv2d(11, 6, 3)

    def forward(self, x):
        p = self.pool(x)
        a = self.relu(self.conv_a(x))
        b = self.conv_b(x)
        return self.conv_c(torch.cat([p, a, b], dim=1))


class DwPw(nn.Module):
    """MobileNet block: depthwise conv-bn-relu6 -> pointwise conv-bn-relu6 -> mean -> linear
    (relu6 exports as hardtanh(0, 6))."""

    def __init__(self, g):
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = randomize_bn(nn.BatchNorm2d(8), g)
        self.act = nn.ReLU6()
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.pw_bn = randomize_bn(nn.BatchNorm2d(16), g)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.act(self.dw_bn(self.dw(x)))
        x = self.act(self.pw_bn(self.pw(x)))
        return self.fc(x.mean(dim=[2, 3]))


class HeadMix(nn.Module):
    """linear + input -> relu (add-relu), view/permute/reshape, mean, linear, softmax: the
    share-observer chain through shape ops, and an op XNNPACK leaves in float."""

    def __init__(self, g):
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.relu = nn.ReLU()
        self.out = nn.Linear(16, 6)

    def forward(self, x):
        h = self.relu(self.proj(x) + x)
        h = h.view(2, 4, 4, 4).permute(0, 2, 1, 3).reshape(2, 4, 16)
        return torch.softmax(self.out(h.mean(dim=1)), dim=-1)


# Minimal models for the differences tests/pt2e_parity.rs lists as known (`KNOWN` there).


class ReusedModules(nn.Module):
    """One conv and one linear module, each called twice (both calls read one weight node,
    which PT2E's annotators mark as annotated with the first pattern that claims a call)."""

    def __init__(self, g):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x = self.conv(torch.relu(self.conv(x))).mean(dim=[2, 3])
        return torch.relu(self.fc(torch.relu(self.fc(x))))


class Relu6Functional(nn.Module):
    """linear -> F.relu6 -> linear (F.relu6 exports as aten.relu6, nn.ReLU6 as hardtanh)."""

    def __init__(self, g):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(nn.functional.relu6(self.fc1(x)))


class SqueezeAll(nn.Module):
    """conv -> squeeze() (every size-1 dim: aten.squeeze.default) -> linear."""

    def __init__(self, g):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.conv(x).squeeze())


class DropoutEval(nn.Module):
    """linear -> dropout (eval mode: aten.dropout.default(x, 0.1, False)) -> linear."""

    def __init__(self, g):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(self.drop(self.fc1(x)))


RANDOM_AND_EXACT = (False, True)
EXACT = (True,)
# (name, model, input shape, variants: False = random arithmetic, True = exact)
MODELS = [
    ("small_cnn", SmallCnn, (2, 3, 16, 16), RANDOM_AND_EXACT),
    ("residual_mlp", ResidualMlp, (4, 16), RANDOM_AND_EXACT),
    ("branch_cat", BranchCat, (2, 3, 10, 10), RANDOM_AND_EXACT),
    ("dw_pw", DwPw, (2, 8, 8, 8), RANDOM_AND_EXACT),
    ("head_mix", HeadMix, (2, 4, 16), RANDOM_AND_EXACT),
    ("reused_modules", ReusedModules, (2, 4, 5, 5), EXACT),
    ("relu6_functional", Relu6Functional, (4, 8), EXACT),
    ("squeeze_all", SqueezeAll, (2, 3, 3, 3), EXACT),
    ("dropout_eval", DropoutEval, (4, 8), EXACT),
]


# ---- PT2E -----------------------------------------------------------------------------------


def f32_bits(t):
    return [int(b) for b in t.detach().to(torch.float32).reshape(-1).numpy().view(np.uint32)]


def is_observer(node):
    return node.op == "call_module" and str(node.target).startswith("activation_post_process_")


class Recorder(torch.fx.Interpreter):
    """Runs the prepared module and notes what each observer call sees: per call, in call
    order, (observer name, CRC-32 of the tensor's little-endian float32 bytes, min, max), with
    negative zeros made positive (their sign depends on summation order and does not matter
    to any observer)."""

    def __init__(self, gm):
        super().__init__(gm)
        self.calls = []

    def call_module(self, target, args, kwargs):
        if str(target).startswith("activation_post_process_"):
            x = args[0].detach().to(torch.float32).contiguous() + 0.0  # -0.0 -> +0.0
            self.calls.append((target, zlib.crc32(x.numpy().tobytes()), f32_bits(x.min())[0], f32_bits(x.max())[0]))
        return super().call_module(target, args, kwargs)


def prepare_and_calibrate(gm, batches):
    """prepare_pt2e, then one forward per batch; returns the module and the observer calls of
    each batch."""
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(gm, quantizer)
    calls = []
    with torch.no_grad():
        for b in batches:
            rec = Recorder(prepared)
            rec.run(*b)
            calls.append(rec.calls)
    return prepared, calls


def observers(prepared, calls):
    """Observer records in graph order, and each instance's module (keyed by its name)."""
    nodes = [n for n in prepared.graph.nodes if is_observer(n)]
    number = lambda name: int(name.rsplit("_", 1)[1])  # noqa: E731
    by_object = {}
    for n in nodes:
        by_object.setdefault(id(getattr(prepared, n.target)), []).append(n.target)
    records, instances = [], {}
    for n in nodes:
        mod = getattr(prepared, n.target)
        instance = min(by_object[id(mod)], key=number)
        instances[instance] = mod
        src = n.args[0]
        while is_observer(src):
            src = src.args[0]
        scale, zp = mod.calculate_qparams()
        seen = [[c[1:] for c in batch if c[0] == n.target] for batch in calls]
        assert all(len(b) == 1 for b in seen), "one call per observer node and batch"
        records.append(
            {
                "name": n.target,
                "class": type(mod).__name__,
                "observes": n.args[0].name,
                "observes_value": src.name,
                "instance": instance,
                "dtype": str(mod.dtype).replace("torch.", ""),
                "quant_min": mod.quant_min,
                "quant_max": mod.quant_max,
                "qscheme": str(mod.qscheme).replace("torch.", ""),
                "ch_axis": mod.ch_axis if "PerChannel" in type(mod).__name__ else None,
                "eps_bits": f32_bits(mod.eps)[0],
                "scale_bits": f32_bits(scale),
                "zero_point": [int(z) for z in zp.reshape(-1)],
                "seen_crc32": [b[0][0] for b in seen],
                "seen_min_bits": [b[0][1] for b in seen],
                "seen_max_bits": [b[0][2] for b in seen],
            }
        )
    return records, instances


def stats_arrays(instances):
    arrays = {}
    for name, mod in instances.items():
        arrays[f"{name}.min_val"] = mod.min_val.detach().to(torch.float32).numpy()
        arrays[f"{name}.max_val"] = mod.max_val.detach().to(torch.float32).numpy()
        if hasattr(mod, "histogram"):
            arrays[f"{name}.histogram"] = mod.histogram.detach().to(torch.float32).numpy()
    return arrays


def calibration(shape, seed, exact):
    """BATCHES batches with growing scale and varying offset; multiples of 1/2 when `exact`."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(BATCHES):
        scale, offset = 0.5 + 0.3 * i, 0.1 * (i % 3) - 0.1
        x = torch.randn(*shape, generator=g) * scale + offset
        batches.append((torch.round(x * 2) / 2 if exact else x,))
    return batches


def make_exact(model, g):
    """Parameters on coarse dyadic grids, so that every float32 operation of the model on
    data that is a multiple of 1/2 is exact (no rounding, in any summation order):
    weights are multiples of 1/8 (-1/4..1/4 mostly), biases of 1/8; batch norms have
    eps = 0, variances 0.25, 1 or 4 (exact rsqrt), weights 0.5, 1 or 2, and biases and means
    multiples of 1/4, so the folded parameters are exact too. tests/pt2e_parity.rs checks that
    qc's interpreter then feeds every observer exactly PyTorch's tensors."""
    pick = lambda values, n: torch.tensor(values)[torch.randint(0, len(values), (n,), generator=g)]  # noqa: E731
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.eps = 0.0
                m.weight.copy_(pick([0.5, 1.0, 2.0], n))
                m.bias.copy_(torch.randint(-2, 3, (n,), generator=g) / 4)
                m.running_mean.copy_(torch.randint(-2, 3, (n,), generator=g) / 4)
                m.running_var.copy_(pick([0.25, 1.0, 4.0], n))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.round(m.weight * 8) / 8)
                if m.bias is not None:
                    m.bias.copy_(torch.round(m.bias * 8) / 8)
    return model


def cases():
    """(fixture name, model class, input shape, seed, exact) of every fixture, in order."""
    for i, (name, cls, shape, variants) in enumerate(MODELS):
        for exact in variants:
            yield name + ("_exact" if exact else ""), cls, shape, 20260900 + 10 * i, exact


def build(cls, shape, seed, exact):
    """The seeded float model (eval mode), the export example and the calibration batches."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = cls(g).eval()
    if exact:
        model = make_exact(model, g)
    example = (torch.randn(*shape, generator=g),)
    return model, example, calibration(shape, seed + 2, exact)


def generate(name, cls, shape, out_dir, seed, exact):
    """Writes the fixture `name` (suffixed `_exact` by `cases`) and returns what
    tools/gen_convert_fixtures.py needs: the float model, the export example, the calibration
    batches, the graph input names and the calibrated prepared module."""
    model, example, batches = build(cls, shape, seed, exact)

    case = os.path.join(out_dir, name)
    os.makedirs(case, exist_ok=True)
    ep = torch.export.export(model, example, strict=True)
    write_qir(ep, os.path.join(case, "model.qir"), module_name=name)
    input_names = [n.name for n in ep.module().graph.nodes if n.op == "placeholder"]
    np.savez(
        os.path.join(case, "calib.npz"),
        **{k: torch.cat([b[i] for b in batches]).numpy() for i, k in enumerate(input_names)},
    )

    prepared, calls = prepare_and_calibrate(ep.module(), batches)
    records, instances = observers(prepared, calls)
    np.savez_compressed(os.path.join(case, "stats.npz"), **stats_arrays(instances))

    loose, loose_calls = prepare_and_calibrate(torch.export.export(model, example, strict=False).module(), batches)
    nonstrict_agrees = observers(loose, loose_calls)[0] == records

    expected = {
        "model": name,
        "doc": cls.__doc__.split("\n")[0] if cls.__doc__ else "",
        "torch": torch.__version__,
        "torchao": __import__("torchao").__version__,
        "quantizer": QUANTIZER,
        "config": "get_symmetric_quantization_config(is_per_channel=True)",
        "export": "strict",
        "arithmetic": "exact" if exact else "random",
        "nonstrict_agrees": nonstrict_agrees,
        "batches": BATCHES,
        "inputs": input_names,
        "call_order": [c[0] for c in calls[0]],
        "observers": records,
    }
    with open(os.path.join(case, "expected.json"), "w") as f:
        f.write(records_json(expected, ("observers",)))
    groups = len({r["instance"] for r in records})
    print(f"{name}: {len(records)} observers, {groups} instances, non-strict agrees: {nonstrict_agrees}")
    return dict(model=model, example=example, batches=batches, inputs=input_names, prepared=prepared)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "pt2e")
    for name, cls, shape, seed, exact in cases():
        generate(name, cls, shape, out_dir, seed, exact)


if __name__ == "__main__":
    main()
