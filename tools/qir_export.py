"""Export a ``torch.export`` program to QIR text and a safetensors weights file.

A minimal, reusable exporter (the seed of the PyTorch bridge): it reads the aten graph that
PT2E quantization works on — ``torch.export.export(model, args).module()``, or the
``ExportedProgram`` itself, whose ``.module()`` is taken — and writes one QIR function:

* placeholders become the function's inputs, named like the FX nodes (``%x``);
* parameters, buffers and constants (``get_attr`` nodes) become
  ``%<fx name> = weight {key = "<state dict name>"}`` ops, emitted right before their first
  user; unused ones are left out, and the tensors go to the safetensors file;
* every ``call_function`` on an aten op in :data:`SUPPORTED` becomes the QIR op of the same
  meaning, with the FX node name as its value name, the result type from ``meta["val"]`` and
  ``loc("<fqn>")`` from the last entry of ``meta["nn_module_stack"]`` (none for ops of the
  root module);
* ``getitem(bn, 0)`` of the tuple-returning batch norm is the batch norm's own result, which
  takes the ``getitem``'s name (that is the value the rest of the graph reads);
* the graph output becomes ``return``.

Attributes equal to QIR's defaults are left out. Guard and assertion nodes that
``torch.export`` adds (``_guards_fn``, ``_assert_*``) are skipped. Anything else — an aten op
not in :data:`SUPPORTED`, a scalar where a tensor is needed, a symbolic argument, an unused
result other than the batch norm's statistics — raises :class:`ExportError` naming the node,
the op and the module it came from.

Usage::

    from qir_export import write_qir
    ep = torch.export.export(model.eval(), (x,))
    write_qir(ep, "model.qir", module_name="model")   # also writes model.safetensors

Both files are deterministic (safetensors sorts its keys).
"""

from __future__ import annotations

import math
import os
import re
import operator
from typing import Any, Callable

import torch
from torch.fx import GraphModule, Node

__all__ = ["ExportError", "SUPPORTED", "export_qir", "write_qir"]


class ExportError(Exception):
    """A node the exporter cannot translate."""


_DTYPES = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.int16: "i16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.bool: "bool",
}

# Ops torch.export inserts that check things and compute nothing the graph uses.
_SKIPPED_OPS = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range_for_size"}


# ---- formatting -----------------------------------------------------------------------------


def _name(raw: str) -> str:
    """A QIR value name: ``[A-Za-z0-9_][A-Za-z0-9_.]*``."""
    name = re.sub(r"[^A-Za-z0-9_.]", "_", raw)
    return "_" + name if not name or name[0] == "." else name


def _float(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    text = repr(float(v))  # shortest round-trip form: always has a '.' or an exponent
    return text


def _attr(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_attr(e) for e in v) + "]"
    raise TypeError(f"no QIR attribute form for {v!r}")


def _type(val: Any) -> str:
    if not isinstance(val, torch.Tensor):
        raise TypeError(f"not a tensor: {type(val).__name__}")
    if val.dtype not in _DTYPES:
        raise TypeError(f"element type {val.dtype} has no QIR equivalent")
    dims = [str(d) if isinstance(d, int) else "?" for d in val.shape]
    return f"{_DTYPES[val.dtype]}[{','.join(dims)}]"


def _fqn(node: Node) -> str:
    """The module path of the innermost ``nn_module_stack`` entry ('' for the root module)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['self'\]\.?", "", path)  # strict (dynamo) exports prefix the root
    return path


# ---- op translation -------------------------------------------------------------------------

# A handler gets the node's arguments bound to its schema names and returns
# (qir op, operand nodes, attributes); attributes equal to the QIR default are dropped.
Handler = Callable[[dict], tuple]
_HANDLERS: dict[str, tuple[Handler, dict]] = {}


def _op(*targets: str, defaults: dict | None = None):
    def register(fn: Handler) -> Handler:
        for t in targets:
            _HANDLERS[t] = (fn, defaults or {})
        return fn

    return register


def _expand(v: Any, n: int) -> list:
    """PyTorch's ``int[n]`` arguments: a scalar or a one-element list stands for n copies."""
    if isinstance(v, (list, tuple)):
        v = list(v)
        return v * n if len(v) == 1 else v
    return [v] * n


def _same_padding(weight: Node, dilation: list, spatial: int) -> list:
    kernel = weight.meta["val"].shape[2:]
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (int(k) - 1)
        if total % 2:
            raise ExportError("padding='same' with an even effective kernel pads asymmetrically")
        pads.append(total // 2)
    return pads


def _conv(spatial: int, name: str) -> Handler:
    def handler(a: dict) -> tuple:
        dilation = _expand(a["dilation"], spatial)
        padding = a["padding"]
        if padding == "valid":
            padding = [0] * spatial
        elif padding == "same":
            padding = _same_padding(a["weight"], dilation, spatial)
        attrs = {
            "stride": _expand(a["stride"], spatial),
            "padding": _expand(padding, spatial),
            "dilation": dilation,
            "groups": a["groups"],
        }
        return name, [a["input"], a["weight"], a["bias"]], attrs

    return handler


_conv_defaults = lambda n: {"stride": [1] * n, "padding": [0] * n, "dilation": [1] * n, "groups": 1}  # noqa: E731
_op("aten.conv1d.default", "aten.conv1d.padding", defaults=_conv_defaults(1))(_conv(1, "conv1d"))
_op("aten.conv2d.default", "aten.conv2d.padding", defaults=_conv_defaults(2))(_conv(2, "conv2d"))


@_op(
    "aten.conv_transpose2d.input",
    defaults={"stride": [1, 1], "padding": [0, 0], "output_padding": [0, 0], "groups": 1, "dilation": [1, 1]},
)
def _conv_transpose2d(a):
    attrs = {k: _expand(a[k], 2) for k in ("stride", "padding", "output_padding", "dilation")}
    attrs["groups"] = a["groups"]
    return "conv_transpose2d", [a["input"], a["weight"], a["bias"]], attrs


@_op("aten.linear.default")
def _linear(a):
    return "linear", [a["input"], a["weight"], a["bias"]], {}


@_op("aten.matmul.default")
def _matmul(a):
    return "matmul", [a["self"], a["other"]], {}


@_op("aten.bmm.default")
def _bmm(a):
    return "bmm", [a["self"], a["mat2"]], {}


@_op("aten.batch_norm.default", defaults={"eps": 1e-5, "momentum": 0.1})
def _batch_norm(a):
    if a["training"]:
        raise ExportError("batch_norm in training mode (export the model in eval mode)")
    return _bn_common(a)


@_op("aten._native_batch_norm_legit_no_training.default", defaults={"eps": 1e-5, "momentum": 0.1})
def _native_batch_norm(a):
    return _bn_common(a)


def _bn_common(a):
    if a["weight"] is None or a["bias"] is None:
        raise ExportError("batch_norm without affine weight/bias (QIR's batch_norm requires both)")
    operands = [a["input"], a["weight"], a["bias"], a["running_mean"], a["running_var"]]
    return "batch_norm", operands, {"eps": float(a["eps"]), "momentum": float(a["momentum"])}


@_op("aten.layer_norm.default", defaults={"eps": 1e-5})
def _layer_norm(a):
    return "layer_norm", [a["input"], a["weight"], a["bias"]], {
        "normalized_shape": list(a["normalized_shape"]),
        "eps": float(a["eps"]),
    }


def _unary(target: str, qir: str, arg: str = "self"):
    _op(target)(lambda a: (qir, [a[arg]], {}))


for _t, _q in [
    ("aten.relu.default", "relu"),
    ("aten.relu_.default", "relu"),
    ("aten.relu6.default", "relu6"),
    ("aten.sigmoid.default", "sigmoid"),
    ("aten.tanh.default", "tanh"),
    ("aten.silu.default", "silu"),
    ("aten.hardswish.default", "hardswish"),
    ("aten.hardsigmoid.default", "hardsigmoid"),
    ("aten.contiguous.default", "contiguous"),
]:
    _unary(_t, _q)


@_op("aten.hardtanh.default", "aten.hardtanh_.default", defaults={"min_val": -1.0, "max_val": 1.0})
def _hardtanh(a):
    return "hardtanh", [a["self"]], {"min_val": float(a["min_val"]), "max_val": float(a["max_val"])}


@_op("aten.gelu.default", defaults={"approximate": "none"})
def _gelu(a):
    return "gelu", [a["self"]], {"approximate": a["approximate"]}


@_op("aten.dropout.default", defaults={"p": 0.5, "train": False})
def _dropout(a):
    return "dropout", [a["input"]], {"p": float(a["p"]), "train": bool(a["train"])}


def _softmax(qir: str):
    def handler(a: dict) -> tuple:
        if a.get("dtype") is not None or a.get("half_to_float"):
            raise ExportError(f"{qir} with a dtype conversion")
        return qir, [a["self"]], {"dim": a["dim"]}

    return handler


for _q in ("softmax", "log_softmax"):
    _op(f"aten.{_q}.int", f"aten._{_q}.default")(_softmax(_q))


def _binary(qir: str, has_alpha: bool):
    def handler(a: dict) -> tuple:
        x, other = a["self"], a["other"]
        attrs = {"alpha": float(a["alpha"])} if has_alpha else {}
        if not isinstance(x, Node):
            raise ExportError(f"{qir} with a scalar first operand")
        if isinstance(other, Node):
            return qir, [x, other], attrs
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            raise ExportError(f"{qir} with a non-numeric scalar {other!r}")
        return qir + ".scalar", [x], {"other": float(other), **attrs}

    return handler


for _q, _alpha in [("add", True), ("sub", True), ("mul", False), ("div", False)]:
    _op(f"aten.{_q}.Tensor", f"aten.{_q}.Scalar", defaults={"alpha": 1.0})(_binary(_q, _alpha))


@_op("aten.cat.default", defaults={"dim": 0})
def _cat(a):
    return "cat", list(a["tensors"]), {"dim": a["dim"]}


def _reduce(qir: str):
    def handler(a: dict) -> tuple:
        if a.get("dtype") is not None:
            raise ExportError(f"{qir} with a dtype conversion")
        dim = a.get("dim")
        return qir, [a["self"]], {"dim": [] if dim is None else list(dim), "keepdim": bool(a.get("keepdim", False))}

    return handler


_op("aten.mean.dim", "aten.mean.default", defaults={"dim": [], "keepdim": False})(_reduce("mean"))
_op("aten.sum.dim_IntList", "aten.sum.default", defaults={"dim": [], "keepdim": False})(_reduce("sum"))


@_op(
    "aten.max_pool2d.default",
    defaults={"stride": [], "padding": [0, 0], "dilation": [1, 1], "ceil_mode": False},
)
def _max_pool2d(a):
    kernel = _expand(a["kernel_size"], 2)
    stride = _expand(a["stride"], 2) if a["stride"] else []
    return "max_pool2d", [a["self"]], {
        "kernel_size": kernel,
        "stride": [] if stride == kernel else stride,
        "padding": _expand(a["padding"], 2),
        "dilation": _expand(a["dilation"], 2),
        "ceil_mode": bool(a["ceil_mode"]),
    }


@_op(
    "aten.avg_pool2d.default",
    defaults={"stride": [], "padding": [0, 0], "ceil_mode": False, "count_include_pad": True, "divisor_override": None},
)
def _avg_pool2d(a):
    kernel = _expand(a["kernel_size"], 2)
    stride = _expand(a["stride"], 2) if a["stride"] else []
    return "avg_pool2d", [a["self"]], {
        "kernel_size": kernel,
        "stride": [] if stride == kernel else stride,
        "padding": _expand(a["padding"], 2),
        "ceil_mode": bool(a["ceil_mode"]),
        "count_include_pad": bool(a["count_include_pad"]),
        "divisor_override": a["divisor_override"],
    }


@_op("aten.adaptive_avg_pool2d.default")
def _adaptive_avg_pool2d(a):
    return "adaptive_avg_pool2d", [a["self"]], {"output_size": _expand(a["output_size"], 2)}


@_op("aten.flatten.using_ints", defaults={"start_dim": 0, "end_dim": -1})
def _flatten(a):
    return "flatten", [a["self"]], {"start_dim": a["start_dim"], "end_dim": a["end_dim"]}


@_op("aten.view.default", "aten.reshape.default")
def _view(a):
    shape = a.get("size", a.get("shape"))
    return None, [a["self"]], {"shape": list(shape)}  # the op name comes from the target


@_op("aten.permute.default")
def _permute(a):
    return "permute", [a["self"]], {"dims": list(a["dims"])}


@_op("aten.transpose.int")
def _transpose(a):
    return "transpose", [a["self"]], {"dim0": a["dim0"], "dim1": a["dim1"]}


@_op("aten.unsqueeze.default")
def _unsqueeze(a):
    return "unsqueeze", [a["self"]], {"dim": a["dim"]}


@_op("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(a):
    dims = a.get("dim", a.get("dims"))  # one dim, a list of dims, or none (all size-1 dims)
    attrs = {} if dims is None else {"dims": [dims] if isinstance(dims, int) else list(dims)}
    return "squeeze", [a["self"]], attrs


@_op("aten.slice.Tensor", defaults={"dim": 0, "start": None, "end": None, "step": 1})
def _slice(a):
    end = a["end"]
    if end is not None and end >= 2**62:  # `x[a:]` exports as end = sys.maxsize
        end = None
    return "slice", [a["self"]], {"dim": a["dim"], "start": a["start"], "end": end, "step": a["step"]}


#: The aten overloads the exporter translates.
SUPPORTED = tuple(sorted(_HANDLERS))


def _packet(target: Any) -> str:
    """`aten.view.default` -> `view`."""
    parts = str(target).split(".")
    return parts[1] if len(parts) > 2 else str(target)


def _bind(node: Node) -> dict:
    """The node's arguments by schema name, defaults filled in."""
    schema = node.target._schema
    bound = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            bound[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            raise ExportError(f"missing argument `{arg.name}`")
    return bound


def _get_attr(gm: torch.nn.Module, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, torch.Tensor):
        raise ExportError(f"get_attr `{target}` is not a tensor")
    return obj.detach()


# ---- the exporter ---------------------------------------------------------------------------


def export_qir(
    program: torch.export.ExportedProgram | GraphModule,
    *,
    module_name: str | None = None,
    func_name: str = "main",
    weights_file: str = "model.safetensors",
) -> tuple[str, dict[str, torch.Tensor]]:
    """QIR text for ``program`` and the tensors its ``weight`` ops read (by key)."""
    gm = program.module() if isinstance(program, torch.export.ExportedProgram) else program
    return _Exporter(gm).run(module_name, func_name, weights_file)


class _Exporter:
    def __init__(self, gm: GraphModule):
        self.gm = gm
        self.names: dict[Node, str] = {}  # FX node -> QIR value name (getitem aliases included)
        self.weights: dict[str, torch.Tensor] = {}
        self.inputs: list[str] = []
        self.body: list[str] = []
        self.results: list[tuple[str, str]] = []  # (value, type)
        # Tuple-returning batch norms: the result is named like the getitem reading element 0.
        self.element0: dict[Node, Node] = {}
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
                self.element0.setdefault(node.args[0], node)

    def run(self, module_name, func_name, weights_file) -> tuple[str, dict[str, torch.Tensor]]:
        for node in self.gm.graph.nodes:
            try:
                self.node(node)
            except ExportError:
                raise
            except (TypeError, ValueError) as e:
                raise ExportError(f"{_where(node)}: {e}") from None
        types = [t for _, t in self.results]
        ret_ty = types[0] if len(types) == 1 else "(" + ", ".join(types) + ")"
        lines = ["module" + (f" @{module_name}" if module_name else "") + " {"]
        if self.weights:
            lines += [f"  weights {_attr(weights_file)}", ""]
        lines.append(f"  func @{func_name}({', '.join(self.inputs)}) -> {ret_ty} {{")
        lines += ["    " + b for b in self.body]
        lines += ["    return " + ", ".join(v for v, _ in self.results), "  }", "}", ""]
        return "\n".join(lines), self.weights

    def value(self, node: Any, user: Node) -> str:
        """The QIR value of an operand; a parameter's `weight` op is emitted at its first use."""
        if not isinstance(node, Node):
            raise ExportError(f"{_where(user)}: a non-tensor operand {node!r} where QIR needs a value")
        if node.op == "get_attr" and node not in self.names:
            tensor = _get_attr(self.gm, node.target)
            self.weights[node.target] = tensor.clone().contiguous()  # clone: no shared storage
            self.names[node] = _name(node.name)
            self.body.append(f"%{self.names[node]} = weight {{key = {_attr(node.target)}}} : {_type(tensor)}")
        if node not in self.names:
            raise ExportError(f"{_where(user)} reads `{node.name}`, which has no QIR value")
        return "%" + self.names[node]

    def node(self, node: Node) -> None:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                raise ExportError(f"input `{node.name}` is not a tensor ({type(val).__name__})")
            self.names[node] = _name(node.name)
            self.inputs.append(f"%{self.names[node]}: {_type(val)}")
        elif node.op == "get_attr":
            pass  # emitted before its first user; unused ones are left out
        elif node.op == "call_module":
            if not (str(node.target).startswith("_guards") and not node.users):
                raise ExportError(f"{_where(node)}: call_module is not supported (export with torch.export)")
        elif node.op == "call_function":
            self.call(node)
        elif node.op == "output":
            outs = node.args[0]
            for o in outs if isinstance(outs, (list, tuple)) else [outs]:
                self.results.append((self.value(o, node), _type(o.meta["val"])))
        else:
            raise ExportError(f"{_where(node)}: unsupported FX node kind `{node.op}`")

    def call(self, node: Node) -> None:
        target = node.target
        if _packet(target) in _SKIPPED_OPS and not node.users:
            return
        if target is operator.getitem:
            src, index = node.args
            if self.element0.get(src) is node and src in self.names:
                self.names[node] = self.names[src]
                return
            raise ExportError(f"{_where(node)}: element {index} of `{src.name}` is used (only element 0 is supported)")
        handler = _HANDLERS.get(str(target))
        if handler is None:
            raise ExportError(f"{_where(node)}: no QIR op for `{target}`")
        fn, defaults = handler
        try:
            op, operands, attrs = fn(_bind(node))
        except ExportError as e:
            raise ExportError(f"{_where(node)}: {e}") from None
        op = op or _packet(target)
        while operands and operands[-1] is None:  # optional operands come last
            operands.pop()
        if any(o is None for o in operands):
            raise ExportError(f"{_where(node)}: an optional operand is missing before a present one")
        operand_text = ", ".join(self.value(o, node) for o in operands)
        attrs = {k: v for k, v in attrs.items() if v is not None and not (k in defaults and v == defaults[k])}
        attr_text = " {" + ", ".join(f"{k} = {_attr(v)}" for k, v in attrs.items()) + "}" if attrs else ""
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):  # the batch norm variants: (out, mean, invstd)
            getitem = self.element0.get(node)
            if getitem is None or any(u is not getitem for u in node.users):
                raise ExportError(f"{_where(node)}: a tuple result used other than through element 0")
            val, result = val[0], _name(getitem.name)
        else:
            result = _name(node.name)
        self.names[node] = result
        fqn = _fqn(node)
        loc = f" loc({_attr(fqn)})" if fqn else ""
        operand_part = f"({operand_text})" if operands else ""
        self.body.append(f"%{result} = {op}{operand_part}{attr_text} : {_type(val)}{loc}")


def _where(node: Node) -> str:
    return f"node `{node.name}` ({node.target}) in module `{_fqn(node) or '<root>'}`"


def write_qir(program, qir_path: str, weights_path: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
    """Writes ``qir_path`` and (if the graph reads any tensor) its weights, by default
    ``<qir_path without .qir>.safetensors`` beside it. Returns the tensors written."""
    from safetensors.torch import save_file

    if weights_path is None:
        weights_path = os.path.splitext(qir_path)[0] + ".safetensors"
    rel = os.path.relpath(weights_path, os.path.dirname(os.path.abspath(qir_path)))
    text, weights = export_qir(program, weights_file=rel, **kwargs)
    if weights:
        save_file(weights, weights_path)
    with open(qir_path, "w") as f:
        f.write(text)
    return weights
