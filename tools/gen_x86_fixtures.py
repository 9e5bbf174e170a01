"""Fixtures for tests/x86_parity.rs: what torchao's X86InductorQuantizer annotates, and the
observers prepare_pt2e inserts for it.

Usage: /work/venv/bin/python -m tools.gen_x86_fixtures [OUT_DIR]      (default tests/x86)

Needs torch 2.15 and torchao 0.18. Importing the x86 quantizer registers Inductor passes; that
does not affect prepare_pt2e.

For every model below (seeded, eval mode) this exports it with
`torch.export.export(..., strict=True)` (strict, so that every node carries
`source_fn_stack`, through which the quantizer finds its patterns — qc matches op kinds, which is
what a strict export of nn modules gives), runs torchao's `prepare_pt2e` with
`X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())` (model
`scoped` also sets module-name and operator-type configurations, listed under "configs"), and
writes `<model>.json` with:

* "annotations": for every call_function node in graph order, its
  `quantization_annotation` (null if it has none): the `input_qspec_map` in order (argument
  name → spec), the output spec, and `_is_output_of_quantized_pattern`. A spec is null (not
  quantized), {"spec": {dtype, qmin, qmax, qscheme, ch_axis, observer class, eps}},
  {"shared_edge": [producer, consumer]} or {"shared_node": name}.
* "observers": every observer module `activation_post_process_N` in graph order: the node it
  observes (which may be another observer: a requantization), that node with observers
  stripped, the call_function nodes (or "output") that read the observer, its class and
  config, and its instance (the lowest-numbered observer bound to the same module object).
* "nonstrict_agrees": whether a non-strict export gives the same annotations and observers.

The hand-written `tests/x86/<model>.qir` is the same model in QIR, its value names the FX node
names (weights and biases are function parameters named like their get_attr nodes). This
script checks that every FX node name appears in it as a value and that it has one op per
call_function node.

Deterministic: fixed seeds and thread count, sorted keys.
"""

import json
import os
import sys
import warnings

import torch
import torch.nn as nn
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from .fileio import read_qir
from .qir_bridge.exporter import OBSERVER_KINDS, QIR_DTYPES

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- the models -----------------------------------------------------------------------------


class ConvReluPoolLinear(nn.Module):
    """conv-relu -> maxpool -> flatten -> linear: the conv's output is never observed; the pool,
    the flatten and the linear input share one observer instance."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


class ConvAddRelu(nn.Module):
    """Residual conv+add+relu (extra operand: the graph input), conv+add (extra operand: the
    previous relu), conv + relu6/hardswish/silu, a conv with two users, cat, avg_pool2d,
    adaptive_avg_pool2d, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.relu6 = nn.ReLU6()
        self.conv4 = nn.Conv2d(4, 4, 1)
        self.hardswish = nn.Hardswish()
        self.conv5 = nn.Conv2d(4, 4, 1)
        self.silu = nn.SiLU()
        self.conv6 = nn.Conv2d(4, 4, 1)
        self.avgpool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        b = self.relu(self.conv1(x) + x)
        d = self.conv2(b) + b
        e = self.relu6(self.conv3(d))
        f = self.hardswish(self.conv4(e))
        g = self.silu(self.conv5(f))
        h = torch.cat([e, f, g], 1)
        k = torch.flatten(self.gap(self.avgpool(h)), 1)
        c6 = self.conv6(e)
        return self.fc(k), c6, c6 + e


class LinearMatmulMul(nn.Module):
    """linear+relu, linear+add, linear+gelu, matmul (not default-quantizable: the global
    config leaves it), mul of equal shapes (one of them x*x), broadcast mul, scalar mul,
    plain linear."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 16, bias=False)
        self.gelu = nn.GELU()
        self.w = nn.Parameter(torch.randn(16, 16))
        self.row = nn.Parameter(torch.randn(16))
        self.fc4 = nn.Linear(16, 8)

    def forward(self, x, y):
        a = self.relu(self.fc1(x))
        b = self.fc2(a) + y
        c = self.gelu(self.fc3(b))
        m = torch.matmul(c, self.w)
        p = m * m
        q = p * c
        r = q * self.row
        s = r * 2.0
        return self.fc4(s)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.relu(self.conv(x)))


class Tail(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(64, 6)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class Scoped(nn.Module):
    """Configuration priority: module `head` in float (None), module `tail` with
    reduce_range=True, operator type matmul with the default config, global default. tail's
    max_pool2d reads a value from outside tail, so tail's config cannot quantize it; the global
    one then does (x86's filters do not exclude configured modules), and tail's linear input
    needs a second observer (a requantization from [0, 255] to [0, 127])."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = Head()
        self.tail = Tail()

    def forward(self, x, m):
        y = self.relu(self.conv0(x))
        h = self.head(y)
        return torch.matmul(h, m), self.tail(y)


def default_config(reduce_range=False):
    return get_default_x86_inductor_quantization_config(reduce_range=reduce_range)


def global_only():
    return X86InductorQuantizer().set_global(default_config()), [["global", None, "default"]]


def scoped_quantizer():
    q = X86InductorQuantizer()
    q.set_module_name_qconfig("head", None)
    q.set_module_name_qconfig("tail", default_config(reduce_range=True))
    q.set_function_type_qconfig(torch.matmul, default_config())
    q.set_global(default_config())
    configs = [
        ["module_name", "head", None],
        ["module_name", "tail", "default_reduce_range"],
        ["operator_type", "matmul", "default"],
        ["global", None, "default"],
    ]
    return q, configs


MODELS = {
    "conv_relu_pool_linear": (ConvReluPoolLinear, lambda: (torch.randn(1, 3, 8, 8),), global_only),
    "conv_add_relu": (ConvAddRelu, lambda: (torch.randn(1, 4, 8, 8),), global_only),
    "linear_matmul_mul": (LinearMatmulMul, lambda: (torch.randn(2, 16), torch.randn(2, 16)), global_only),
    "scoped": (Scoped, lambda: (torch.randn(1, 3, 8, 8), torch.randn(4, 4)), scoped_quantizer),
}

# ---- recording ------------------------------------------------------------------------------


def observer_class(ctr):
    """The class an observer constructor (a `with_args` partial) builds."""
    func = getattr(ctr, "p", ctr)
    func = getattr(func, "func", func)
    return func.__name__


def ctr_kwargs(ctr):
    p = getattr(ctr, "p", None)
    return dict(p.keywords) if p is not None else {}


def describe_spec(spec):
    from torchao.quantization.pt2e.quantizer import QuantizationSpec, SharedQuantizationSpec

    if spec is None:
        return None
    if isinstance(spec, SharedQuantizationSpec):
        target = spec.edge_or_node
        if isinstance(target, tuple):
            return {"shared_edge": [target[0].name, target[1].name]}
        return {"shared_node": target.name}
    assert isinstance(spec, QuantizationSpec), type(spec)
    cls = observer_class(spec.observer_or_fake_quant_ctr)
    return {
        "spec": {
            "dtype": QIR_DTYPES[spec.dtype],
            "qmin": spec.quant_min,
            "qmax": spec.quant_max,
            "qscheme": str(spec.qscheme).replace("torch.", ""),
            "ch_axis": spec.ch_axis,
            "observer": OBSERVER_KINDS.get(cls, cls),
            "eps": ctr_kwargs(spec.observer_or_fake_quant_ctr).get("eps"),
            "dynamic": spec.is_dynamic,
        }
    }


def annotations(gm):
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        a = n.meta.get("quantization_annotation")
        record = {"name": n.name, "target": str(n.target)}
        if a is None:
            record["annotation"] = None
        else:
            record["annotation"] = {
                "inputs": [[k.name, describe_spec(v)] for k, v in a.input_qspec_map.items()],
                "output": describe_spec(a.output_qspec),
                "quantized_output": bool(getattr(a, "_is_output_of_quantized_pattern", False)),
            }
        out.append(record)
    return out


def observers(gm):
    obs_nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("activation_post_process_")]
    def number(name):
        return int(name.rsplit("_", 1)[1])

    first_name = {}
    for n in sorted(obs_nodes, key=lambda n: number(n.target)):
        first_name.setdefault(id(getattr(gm, n.target)), n.target)
    is_obs = {n.name for n in obs_nodes}
    out = []
    for n in obs_nodes:
        mod = getattr(gm, n.target)
        src = n.args[0]
        value = src
        while value.name in is_obs:
            value = value.args[0]
        users = sorted("output" if u.op == "output" else u.name for u in n.users)
        cls = type(mod).__name__
        out.append(
            {
                "name": n.target,
                "observes": src.name,
                "observes_value": value.name,
                "users": users,
                "observer": OBSERVER_KINDS.get(cls, cls),
                "dtype": QIR_DTYPES[mod.dtype],
                "qmin": mod.quant_min,
                "qmax": mod.quant_max,
                "qscheme": str(mod.qscheme).replace("torch.", ""),
                "ch_axis": getattr(mod, "ch_axis", None) if "PerChannel" in cls else None,
                "eps": float(mod.eps),
                "instance": first_name[id(mod)],
            }
        )
    return out


def prepared(model, example, make_quantizer, strict):
    ep = torch.export.export(model, example, strict=strict)
    quantizer, configs = make_quantizer()
    gm = prepare_pt2e(ep.module(), quantizer)
    return gm, configs


def check_qir(name, qir_path, gm):
    """The hand-written QIR names every FX node and has one op per call_function node."""
    if not os.path.exists(qir_path):
        sys.exit(f"{name}: missing hand-written {qir_path}")
    fn = read_qir(qir_path)
    values = {v for v, _ in fn.inputs} | {r for op in fn.ops for r in op.results}
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    names = [n.name for n in gm.graph.nodes if n.op in ("call_function", "placeholder", "get_attr")]
    missing = [n for n in names if n not in values and not n.startswith("activation_post_process_")]
    if missing:
        sys.exit(f"{name}: {qir_path} lacks values {missing}")
    ops = len(fn.ops)
    if ops != len(calls):
        sys.exit(f"{name}: {qir_path} has {ops} ops, the FX graph {len(calls)} call_function nodes")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "x86")
    os.makedirs(out_dir, exist_ok=True)
    for name, (cls, example_fn, make_quantizer) in MODELS.items():
        torch.manual_seed(0)
        model = cls().eval()
        example = example_fn()
        gm, configs = prepared(model, example, make_quantizer, strict=True)
        plain = torch.export.export(model, example, strict=True).module()
        check_qir(name, os.path.join(out_dir, f"{name}.qir"), plain)
        record = {
            "model": cls.__name__,
            "doc": " ".join(cls.__doc__.split()),
            "export": "strict",
            "quantizer": "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer.X86InductorQuantizer",
            "configs": configs,
            "annotations": annotations(gm),
            "observers": observers(gm),
            "versions": {"torch": torch.__version__, "torchao": __import__("torchao").__version__},
        }
        loose, _ = prepared(model, example, make_quantizer, strict=False)
        record["nonstrict_agrees"] = annotations(loose) == record["annotations"] and observers(loose) == record["observers"]
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
        annotated = sum(a["annotation"] is not None for a in record["annotations"])
        instances = len({o["instance"] for o in record["observers"]})
        print(
            f"{name}: {annotated}/{len(record['annotations'])} nodes annotated, "
            f"{len(record['observers'])} observers, {instances} instances, "
            f"non-strict agrees: {record['nonstrict_agrees']}"
        )


if __name__ == "__main__":
    main()
