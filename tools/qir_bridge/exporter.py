"""Export a ``torch.export`` program (float, PT2E-prepared or PT2E-converted) to QIR text and a
safetensors weights file.

It reads the aten graph that PT2E quantization works on — ``torch.export.export(model,
args).module()``, or the ``ExportedProgram`` itself, whose ``.module()`` is taken — or a
``GraphModule`` that torchao's ``prepare_pt2e`` / ``prepare_qat_pt2e`` / ``convert_pt2e``
returned, and writes one QIR function:

* placeholders become the function's inputs, named like the FX nodes (``%x``);
* parameters, buffers and constants (``get_attr`` nodes) become
  ``%<fx name> = weight {key = "<state dict name>"}`` ops, emitted right before their first
  user; unused ones are left out, and the tensors go to the safetensors file;
* every ``call_function`` on an aten op in :data:`SUPPORTED` becomes the QIR op of the same
  meaning, with the FX node name as its value name, the result type from ``meta["val"]`` and
  ``loc("<fqn>")`` from the last entry of ``meta["nn_module_stack"]`` (none for ops of the
  root module);
* ``getitem(bn, 0)`` of the tuple-returning batch norm is the batch norm's own result, which
  takes the ``getitem``'s name (that is the value the rest of the graph reads); the
  ``getitem``s of ``choose_qparams`` name its two results;
* PT2E's own nodes: an observer module (``activation_post_process_N`` of a prepared model)
  becomes an ``observer`` op with its kind, target range, scheme and options, its
  ``instance`` (observer nodes bound to one module object share one instance, numbered in
  graph order) and, on the instance's first observer, the statistics it collected as
  ``stats`` (so a calibrated PT2E model reads into qc as a calibrated module); a fake-quant
  module (QAT) becomes ``fake_quantize_per_tensor`` / ``fake_quantize_per_channel`` with its
  current (trained) scale and zero point (or, with fake quantization disabled, an ``observer``
  of the observer it wraps); the ``quantized_decomposed`` quantize / dequantize /
  choose_qparams ops of a converted model become QIR's ops of the same names (folded int
  weights and per-channel qparams are ``weight`` ops like any other tensor);
* the graph output becomes ``return``.

Attributes equal to QIR's defaults are left out. Guard and assertion nodes that
``torch.export`` adds (``_guards_fn``, ``_assert_*``) are skipped. Anything else — an aten op
not in :data:`SUPPORTED`, a scalar where a tensor is needed, a symbolic argument, an unused
result other than the batch norm's statistics — raises :class:`ExportError` naming the node,
the op and the module it came from: nothing is dropped silently.

Both files are deterministic (tools/fileio.py writes the tensors sorted by name).
"""

from __future__ import annotations

import math
import os
import re
import operator
from typing import Any, Callable

import torch
from torch.fx import GraphModule, Node

from ..fileio import write_safetensors

__all__ = ["ExportError", "SUPPORTED", "export_qir", "write_qir"]


class ExportError(Exception):
    """A node the exporter cannot translate."""


# torch dtype -> QIR element type.
QIR_DTYPES = {
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
# Quantized dtypes of observer and fake-quant modules (PyTorch's `torch.qint8` & co.).
_QDTYPES = {torch.qint8: "i8", torch.quint8: "u8", torch.qint32: "i32"}

# Ops torch.export inserts that check things and compute nothing the graph uses.
_SKIPPED_OPS = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range_for_size"}


class DType(str):
    """An attribute printed as a bare element type (``i8``), not as a string."""


def _dtype_attr(dt: Any) -> DType:
    name = QIR_DTYPES.get(dt) or _QDTYPES.get(dt)
    if name is None:
        raise ExportError(f"element type {dt} has no QIR equivalent")
    return DType(name)


# ---- formatting -----------------------------------------------------------------------------


def _name(raw: str) -> str:
    """A QIR value name: ``[A-Za-z0-9_][A-Za-z0-9_.]*``."""
    name = re.sub(r"[^A-Za-z0-9_.]", "_", raw)
    return "_" + name if not name or name[0] == "." else name


def _float(v: float) -> str:
    """The shortest round-trip form, as qc's printer writes it (Rust's `{:?}`: the same digits
    as Python's `repr`, with the exponent written `1e-5`, `1e16` rather than `1e-05`, `1e+16`)."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    text = _tie_up(float(v), repr(float(v)))  # shortest round-trip form: always has a '.' or an exponent
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), text)


def _tie_up(v: float, text: str) -> str:
    """Python's `repr` and Rust's `{:?}` both print the shortest digits that read back, but when
    the double is exactly halfway between two such candidates (its exact decimal expansion is
    one digit longer and ends in 5: 8.2740631103515625) Python rounds half to even and Rust
    rounds the last digit up. Returns Rust's form."""
    from decimal import Decimal

    mant = text.split("e")[0].lstrip("-")
    digits = mant.replace(".", "").lstrip("0")
    exact = Decimal(v)
    ed = exact.as_tuple().digits
    if not digits or len(ed) != len(digits) + 1 or ed[-1] != 5 or v == 0:
        return text
    n = len(digits)
    trunc = int("".join(map(str, ed[:n])))
    if int(digits) != trunc:  # Python rounded up already
        return text
    up = str(trunc + 1)
    if len(up) != n:  # a carry into a new digit: leave it
        return text
    # Replace the significant digits in place (same '.', leading zeros and exponent).
    out, i = [], 0
    lead = len(mant) - len(mant.lstrip("0."))
    for ch in mant[lead:]:
        if ch == ".":
            out.append(ch)
        else:
            out.append(up[i])
            i += 1
    cand = ("-" if text.startswith("-") else "") + mant[:lead] + "".join(out) + (("e" + text.split("e")[1]) if "e" in text else "")
    return cand if float(cand) == v else text


def _attr(v: Any) -> str:
    if isinstance(v, DType):
        return str(v)
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
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_attr(e)}" for k, e in v.items()) + "}"
    raise TypeError(f"no QIR attribute form for {v!r}")


def qir_type(val: Any) -> str:
    """The QIR type of a tensor (`f32[2,3]`; `?` for a symbolic dimension)."""
    if not isinstance(val, torch.Tensor):
        raise TypeError(f"not a tensor: {type(val).__name__}")
    if val.dtype not in QIR_DTYPES:
        raise TypeError(f"element type {val.dtype} has no QIR equivalent")
    dims = [str(d) if isinstance(d, int) else "?" for d in val.shape]
    return f"{QIR_DTYPES[val.dtype]}[{','.join(dims)}]"


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


_BN_DEFAULTS = {"eps": 1e-5, "momentum": 0.1, "training": False}


# `batch_norm.default` is what `torch.export` (training IR) gives for `nn.BatchNorm*d` in both
# modes; in train mode it updates the running statistics in place. After
# `run_decompositions()` train mode is `_native_batch_norm_legit_functional` (new running
# statistics as tuple elements 3 and 4, written back by `copy_`) and eval mode
# `_native_batch_norm_legit_no_training`; `_native_batch_norm_legit` is the in-place training form.
@_op("aten.batch_norm.default", defaults=_BN_DEFAULTS)
def _batch_norm(a):
    return _bn_common(a)


@_op("aten._native_batch_norm_legit_no_training.default", defaults=_BN_DEFAULTS)
def _native_batch_norm(a):
    return _bn_common(a)


@_op(
    "aten._native_batch_norm_legit.default",
    "aten._native_batch_norm_legit_functional.default",
    defaults=_BN_DEFAULTS,
)
def _native_batch_norm_train(a):
    return _bn_common(a)


def _bn_common(a):
    if a["weight"] is None or a["bias"] is None:
        raise ExportError("batch_norm without affine weight/bias (QIR's batch_norm requires both)")
    if a["running_mean"] is None or a["running_var"] is None:
        raise ExportError("batch_norm without running statistics (track_running_stats=False) has no QIR form")
    operands = [a["input"], a["weight"], a["bias"], a["running_mean"], a["running_var"]]
    attrs = {"eps": float(a["eps"]), "momentum": float(a["momentum"])}
    attrs["training"] = bool(a.get("training", False))  # printed only when true (default false)
    return "batch_norm", operands, attrs


def _bn_bookkeeping(gm: GraphModule) -> set:
    """The nodes of a training-mode graph that only maintain batch-norm state QIR does not
    model, to be left out of the export:

    * ``add_(<bn>.num_batches_tracked, 1)`` without users (training IR; export always bakes a
      constant momentum into the batch norm — ``momentum=None``, the cumulative average that
      reads the counter, does not export — so the counter is never read);
    * after ``run_decompositions()``: ``copy_(<bn>.num_batches_tracked, add(<same>, 1))``, and
      ``copy_(running_mean | running_var, getitem(bn, 3 | 4))`` that write a functional
      training batch norm's new running statistics back to the buffers it read (QIR's
      ``batch_norm {training = true}`` updates its running-statistics weights itself).
    Anything else that writes a buffer is not recognised and fails the export."""

    def counter(n: Any) -> bool:
        return (
            isinstance(n, Node)
            and n.op == "get_attr"
            and str(n.target).rsplit(".", 1)[-1] == "num_batches_tracked"
            and not _get_attr(gm, n.target).dtype.is_floating_point
        )

    def only_user(n: Node, user: Node) -> bool:
        return list(n.users) == [user]

    dropped: set = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.users:
            continue
        target = str(node.target)
        if target == "aten.add_.Tensor" and counter(node.args[0]) and node.args[1:] == (1,) and not node.kwargs:
            dropped.add(node)
        elif target == "aten.copy_.default" and len(node.args) == 2 and not node.kwargs:
            dst, src = node.args
            if not isinstance(src, Node) or not only_user(src, node):
                continue
            if counter(dst) and str(src.target) == "aten.add.Tensor" and src.args == (dst, 1):
                dropped.update((node, src))
            elif (
                src.target is operator.getitem
                and src.args[1] in (3, 4)
                and isinstance(src.args[0], Node)
                and str(src.args[0].target) == "aten._native_batch_norm_legit_functional.default"
                and src.args[0].args[src.args[1]] is dst
            ):
                dropped.update((node, src))
    return dropped


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
    ("aten.sqrt.default", "sqrt"),  # PT2E's QAT conv-bn graph: sqrt(running_var + 1e-5)
]:
    _unary(_t, _q)


@_op("aten.zeros_like.default")
def _zeros_like(a):
    """PT2E's QAT conv-bn graph gives the scaled conv `zeros_like(bias, dtype=float32,
    pin_memory=False)` as its bias."""
    src = a["self"]
    same = src.meta["val"].dtype if isinstance(src, Node) and isinstance(src.meta.get("val"), torch.Tensor) else None
    if (
        a.get("dtype") not in (None, same)
        or a.get("layout") not in (None, torch.strided)
        or a.get("memory_format") not in (None, torch.preserve_format)
    ):
        raise ExportError("zeros_like with a dtype, layout or memory-format conversion")
    return "zeros_like", [src], {}


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


# In-place variants that torch.export keeps in its pre-dispatch graph (`relu_`, `x += y`):
# the graph is functional in meaning (PT2E treats them as their out-of-place forms).
for _t, _q in [
    ("aten.silu_.default", "silu"),
    ("aten.hardswish_.default", "hardswish"),
    ("aten.hardsigmoid_.default", "hardsigmoid"),
    ("aten.sigmoid_.default", "sigmoid"),
    ("aten.tanh_.default", "tanh"),
    ("aten.relu6_.default", "relu6"),
]:
    _unary(_t, _q)
for _q, _alpha in [("add", True), ("sub", True), ("mul", False), ("div", False)]:
    _op(f"aten.{_q}_.Tensor", f"aten.{_q}_.Scalar", defaults={"alpha": 1.0})(_binary(_q, _alpha))


@_op("aten.dropout_.default", defaults={"p": 0.5, "train": False})
def _dropout_(a):
    return "dropout", [a["input"]], {"p": float(a["p"]), "train": bool(a["train"])}


@_op("aten.addmm.default", defaults={"beta": 1.0, "alpha": 1.0})
def _addmm(a):
    return "addmm", [a["self"], a["mat1"], a["mat2"]], {"beta": float(a["beta"]), "alpha": float(a["alpha"])}


@_op("aten.expand.default")
def _expand_op(a):
    if a.get("implicit"):
        raise ExportError("expand with implicit=True")
    return "expand", [a["self"]], {"size": list(a["size"])}


@_op("aten.group_norm.default", defaults={"eps": 1e-5})
def _group_norm(a):
    return "group_norm", [a["input"], a["weight"], a["bias"]], {"num_groups": a["num_groups"], "eps": float(a["eps"])}


@_op("aten.embedding.default", defaults={"padding_idx": -1})
def _embedding(a):
    if a["scale_grad_by_freq"] or a["sparse"]:
        raise ExportError("embedding with scale_grad_by_freq or sparse")
    return "embedding", [a["weight"], a["indices"]], {"padding_idx": a["padding_idx"]}


@_op("aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default")
def _adaptive_avg_pool2d_any(a):
    return "adaptive_avg_pool2d", [a["self"]], {"output_size": _expand(a["output_size"], 2)}


# ---- PT2E's quantize / dequantize ops (`torch.ops.quantized_decomposed`, convert_pt2e) -------


def _qrange(a: dict) -> dict:
    return {"qmin": int(a["quant_min"]), "qmax": int(a["quant_max"]), "dtype": _dtype_attr(a["dtype"])}


def _out_dtype(a: dict) -> dict:
    od = a.get("out_dtype")
    return {} if od is None or od == torch.float32 else {"out_dtype": _dtype_attr(od)}


@_op("quantized_decomposed.quantize_per_tensor.default")
def _q_per_tensor(a):
    return "quantize_per_tensor", [a["input"]], {"scale": float(a["scale"]), "zero_point": int(a["zero_point"]), **_qrange(a)}


@_op("quantized_decomposed.dequantize_per_tensor.default")
def _dq_per_tensor(a):
    attrs = {"scale": float(a["scale"]), "zero_point": int(a["zero_point"]), **_qrange(a), **_out_dtype(a)}
    return "dequantize_per_tensor", [a["input"]], attrs


@_op("quantized_decomposed.quantize_per_tensor.tensor", "quantized_decomposed.quantize_per_tensor.tensor2")
def _q_per_tensor_t(a):
    return "quantize_per_tensor.tensor", [a["input"], a["scale"], a["zero_point"]], _qrange(a)


@_op("quantized_decomposed.dequantize_per_tensor.tensor", "quantized_decomposed.dequantize_per_tensor.tensor2")
def _dq_per_tensor_t(a):
    return "dequantize_per_tensor.tensor", [a["input"], a["scale"], a["zero_point"]], {**_qrange(a), **_out_dtype(a)}


@_op("quantized_decomposed.quantize_per_channel.default")
def _q_per_channel(a):
    return "quantize_per_channel", [a["input"], a["scales"], a["zero_points"]], {"axis": int(a["axis"]), **_qrange(a)}


@_op("quantized_decomposed.dequantize_per_channel.default")
def _dq_per_channel(a):
    if a["zero_points"] is None:
        raise ExportError("dequantize_per_channel without zero points (float qparams) has no QIR form")
    attrs = {"axis": int(a["axis"]), **_qrange(a), **_out_dtype(a)}
    return "dequantize_per_channel", [a["input"], a["scales"], a["zero_points"]], attrs


@_op("quantized_decomposed.choose_qparams.tensor", defaults={"symmetric": False})
def _choose_qparams(a):
    return "choose_qparams", [a["input"]], {**_qrange(a), "eps": float(a["eps"]), "symmetric": False}


@_op("quantized_decomposed.choose_qparams_symmetric.tensor", defaults={"symmetric": False})
def _choose_qparams_sym(a):
    return "choose_qparams", [a["input"]], {**_qrange(a), "eps": float(a["eps"]), "symmetric": True}


@_op("aten.fake_quantize_per_tensor_affine.default")
def _fq_per_tensor(a):
    attrs = {"scale": float(a["scale"]), "zero_point": int(a["zero_point"])}
    return "fake_quantize_per_tensor", [a["self"]], {**attrs, "qmin": a["quant_min"], "qmax": a["quant_max"]}


@_op("aten.fake_quantize_per_channel_affine.default")
def _fq_per_channel(a):
    attrs = {"axis": a["axis"], "qmin": a["quant_min"], "qmax": a["quant_max"]}
    return "fake_quantize_per_channel", [a["self"], a["scale"], a["zero_point"]], attrs


# Ops whose result has their first operand's shape (checked against `meta["val"]`).
_SHAPE_PRESERVING = {
    "relu", "relu6", "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid", "contiguous", "sqrt",
    "zeros_like", "hardtanh", "gelu", "dropout",
}

# Ops whose tuple result is several QIR results (named by their `getitem`s).
_MULTI_RESULT = {"choose_qparams": 2}


# ---- PT2E's observer and fake-quant modules (prepare_pt2e, prepare_qat_pt2e) ------------------

# Observer class name -> QIR observer kind (torchao's and torch.ao's classes have the same names).
OBSERVER_KINDS = {
    "MinMaxObserver": "minmax",
    "MovingAverageMinMaxObserver": "moving_average_minmax",
    "PerChannelMinMaxObserver": "per_channel_minmax",
    "MovingAveragePerChannelMinMaxObserver": "moving_average_per_channel_minmax",
    "HistogramObserver": "histogram",
    "PlaceholderObserver": "placeholder",
    "FixedQParamsObserver": "fixed_qparams",
}
FAKE_QUANTIZE_CLASSES = {"FakeQuantize", "FusedMovingAvgObsFakeQuantize", "FixedQParamsFakeQuantize"}
# torch qscheme -> QIR qscheme name.
QSCHEMES = {
    torch.per_tensor_affine: "per_tensor_affine",
    torch.per_tensor_symmetric: "per_tensor_symmetric",
    torch.per_channel_affine: "per_channel_affine",
    torch.per_channel_symmetric: "per_channel_symmetric",
    torch.per_channel_affine_float_qparams: "per_channel_affine_float_qparams",
}


def _f32(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


def observer_attrs(mod: torch.nn.Module) -> dict:
    """The `observer` op attributes (without `instance` and `stats`) of a PT2E observer module."""
    cls = type(mod).__name__
    kind = OBSERVER_KINDS.get(cls)
    if kind is None:
        raise ExportError(f"observer class `{cls}` has no QIR observer kind (known: {', '.join(OBSERVER_KINDS)})")
    attrs: dict = {"kind": kind, "dtype": _dtype_attr(mod.dtype)}
    if kind == "placeholder":
        # A dynamic (or float) placeholder: qmin/qmax are required by the op, default them.
        qmin = getattr(mod, "quant_min", None)
        qmax = getattr(mod, "quant_max", None)
        if qmin is None or qmax is None:
            info = torch.iinfo(mod.dtype) if not mod.dtype.is_floating_point else None
            qmin, qmax = (info.min, info.max) if info else (0, 0)
        attrs.update(qmin=int(qmin), qmax=int(qmax))
    else:
        attrs.update(qmin=int(mod.quant_min), qmax=int(mod.quant_max))
    qscheme = QSCHEMES[mod.qscheme] if hasattr(mod, "qscheme") else "per_tensor_affine"
    if qscheme != "per_tensor_affine":
        attrs["qscheme"] = qscheme
    if "per_channel" in kind:
        attrs["ch_axis"] = int(mod.ch_axis)
    options: dict = {}
    if hasattr(mod, "eps") and kind != "placeholder":
        options["eps"] = float(mod.eps.reshape(-1)[0]) if isinstance(mod.eps, torch.Tensor) else float(mod.eps)
    if "moving_average" in kind:
        options["averaging_constant"] = float(mod.averaging_constant)
    if kind == "histogram" and int(mod.bins) != 2048:
        options["bins"] = int(mod.bins)
    if kind == "fixed_qparams":
        options["scale"] = float(mod.scale.reshape(-1)[0])
        options["zero_point"] = int(mod.zero_point.reshape(-1)[0])
    # quant_min/quant_max already have reduce_range applied (`calculate_qmin_qmax`), so
    # `reduce_range` is not repeated; only the uint8 symmetric zero point needs to know
    # whether the range was given explicitly.
    if kind not in ("placeholder", "fixed_qparams") and not getattr(mod, "has_customized_qrange", True):
        options["customized_range"] = False
    if options:
        attrs["options"] = options
    return attrs


def observer_stats(mod: torch.nn.Module) -> dict | None:
    """The `stats` dictionary of a PT2E observer module, None if it never saw a tensor."""
    kind = OBSERVER_KINDS.get(type(mod).__name__)
    if kind in (None, "placeholder", "fixed_qparams") or not hasattr(mod, "min_val"):
        return None
    lo, hi = mod.min_val, mod.max_val
    if lo.numel() == 0:
        return None
    if "per_channel" in kind:
        return {"min_val": _f32(lo), "max_val": _f32(hi)}
    if math.isinf(float(lo)) and float(lo) > 0:  # never observed: (+inf, -inf)
        return None
    stats = {"min_val": _f32(lo)[0], "max_val": _f32(hi)[0]}
    if kind == "histogram":
        stats["histogram"] = _f32(mod.histogram)
    return stats


def is_observer(mod: Any) -> bool:
    return type(mod).__name__ in OBSERVER_KINDS


def is_fake_quantize(mod: Any) -> bool:
    return type(mod).__name__ in FAKE_QUANTIZE_CLASSES
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
        self.types: dict[Node, str] = {}  # FX node -> QIR type of its value
        self.weights: dict[str, torch.Tensor] = {}
        self.inputs: list[str] = []
        self.body: list[str] = []
        self.results: list[tuple[str, str]] = []  # (value, type)
        self.instances: dict[int, int] = {}  # id(observer module) -> instance number
        # Tuple-returning batch norms: the result is named like the getitem reading element 0.
        self.element0: dict[Node, Node] = {}
        self.elements: dict[Node, dict[int, Node]] = {}  # tuple node -> index -> getitem
        # Training-mode batch-norm bookkeeping (num_batches_tracked, running-stat write-backs).
        self.dropped: set[Node] = _bn_bookkeeping(gm)
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], int):
                self.elements.setdefault(node.args[0], {}).setdefault(node.args[1], node)
                if node.args[1] == 0:
                    self.element0.setdefault(node.args[0], node)

    def run(self, module_name, func_name, weights_file) -> tuple[str, dict[str, torch.Tensor]]:
        for node in self.gm.graph.nodes:
            try:
                self.node(node)
            except ExportError:
                raise
            except (TypeError, ValueError, AttributeError) as e:
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
            self.types[node] = qir_type(tensor)
            self.body.append(f"%{self.names[node]} = weight {{key = {_attr(node.target)}}} : {qir_type(tensor)}")
        if node not in self.names:
            raise ExportError(f"{_where(user)} reads `{node.name}`, which has no QIR value")
        return "%" + self.names[node]

    def node(self, node: Node) -> None:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                raise ExportError(f"input `{node.name}` is not a tensor ({type(val).__name__})")
            self.names[node] = _name(node.name)
            self.types[node] = qir_type(val)
            self.inputs.append(f"%{self.names[node]}: {qir_type(val)}")
        elif node.op == "get_attr":
            pass  # emitted before its first user; unused ones are left out
        elif node.op == "call_module":
            mod = self.gm.get_submodule(str(node.target))
            if is_observer(mod):
                self.observer(node, mod)
            elif is_fake_quantize(mod):
                self.fake_quantize(node, mod)
            elif not (str(node.target).startswith("_guards") and not node.users):
                raise ExportError(
                    f"{_where(node)}: call_module of `{type(mod).__name__}` is not supported "
                    "(export with torch.export; PT2E observers and fake-quant modules are)"
                )
        elif node.op == "call_function":
            self.call(node)
        elif node.op == "output":
            outs = node.args[0]
            for o in outs if isinstance(outs, (list, tuple)) else [outs]:
                self.value(o, node)
                self.results.append((self.value(o, node), self.types.get(o) or qir_type(o.meta["val"])))
        else:
            raise ExportError(f"{_where(node)}: unsupported FX node kind `{node.op}`")

    def emit(self, node: Node, op: str, operands: list, attrs: dict, types: list[str], results: list[str]):
        operand_text = ", ".join(self.value(o, node) for o in operands)
        attr_text = " {" + ", ".join(f"{k} = {_attr(v)}" for k, v in attrs.items()) + "}" if attrs else ""
        fqn = _fqn(node)
        loc = f" loc({_attr(fqn)})" if fqn else ""
        operand_part = f"({operand_text})" if operands else ""
        lhs = ", ".join("%" + r for r in results)
        self.body.append(f"{lhs} = {op}{operand_part}{attr_text} : {', '.join(types)}{loc}")

    def observer(self, node: Node, mod: torch.nn.Module) -> None:
        """A PT2E observer module call: an `observer` op, identity on its operand."""
        (src,) = node.args
        attrs = observer_attrs(mod)
        first = id(mod) not in self.instances
        instance = self.instances.setdefault(id(mod), len(self.instances))
        options = attrs.pop("options", None)
        if instance:
            attrs["instance"] = instance
        if options:
            attrs["options"] = options  # schema order: ..., instance, options, stats
        stats = observer_stats(mod) if first else None
        if stats:
            attrs["stats"] = stats
        self.value(src, node)
        ty = self.types[src]
        self.names[node] = _name(node.name)
        self.types[node] = ty
        self.emit(node, "observer", [src], attrs, [ty], [self.names[node]])

    def fake_quantize(self, node: Node, mod: torch.nn.Module) -> None:
        """A fake-quant module call (QAT): fake_quantize with its current qparams, or, with fake
        quantization disabled, the observer it wraps."""
        (src,) = node.args
        enabled = bool(int(mod.fake_quant_enabled.reshape(-1)[0])) if hasattr(mod, "fake_quant_enabled") else True
        if not enabled:
            return self.observer(node, mod.activation_post_process)
        self.value(src, node)
        ty = self.types[src]
        qmin, qmax = int(mod.quant_min), int(mod.quant_max)
        self.names[node] = _name(node.name)
        self.types[node] = ty
        per_channel = mod.qscheme in (torch.per_channel_affine, torch.per_channel_symmetric)
        if per_channel:
            scale_key, zp_key = f"{node.target}.scale", f"{node.target}.zero_point"
            operands = []
            for key, t in ((scale_key, mod.scale.detach().to(torch.float32)), (zp_key, mod.zero_point.detach())):
                vname = _name(key)
                self.weights[key] = t.clone().contiguous()
                self.body.append(f"%{vname} = weight {{key = {_attr(key)}}} : {qir_type(t)}")
                operands.append(vname)
            attrs = {"axis": int(mod.ch_axis), "qmin": qmin, "qmax": qmax}
            fqn = _fqn(node)
            loc = f" loc({_attr(fqn)})" if fqn else ""
            self.body.append(
                f"%{self.names[node]} = fake_quantize_per_channel({self.value(src, node)}, %{operands[0]}, %{operands[1]})"
                f" {_attr(attrs)} : {ty}{loc}"
            )
        else:
            attrs = {
                "scale": float(mod.scale.reshape(-1)[0]),
                "zero_point": int(mod.zero_point.reshape(-1)[0]),
                "qmin": qmin,
                "qmax": qmax,
            }
            self.emit(node, "fake_quantize_per_tensor", [src], attrs, [ty], [self.names[node]])

    def call(self, node: Node) -> None:
        target = node.target
        if _packet(target) in _SKIPPED_OPS and not node.users or node in self.dropped:
            return
        if target is operator.getitem:
            src, index = node.args
            if self.element0.get(src) is node and src in self.names:
                self.names[node] = self.names[src]
                self.types[node] = self.types[src]
                return
            if (src, index) in getattr(self, "multi", {}):
                self.names[node], self.types[node] = self.multi[(src, index)]
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
        attrs = {k: v for k, v in attrs.items() if v is not None and not (k in defaults and v == defaults[k])}
        val = node.meta.get("val")
        if val is None:
            val = self.infer_type(node, op, operands, attrs)
        if (op in _SHAPE_PRESERVING or op.endswith(".scalar")) and isinstance(val, torch.Tensor) and operands:
            self.value(operands[0], node)
            shape = self.types[operands[0]].split("[", 1)[1]
            if shape != qir_type(val).split("[", 1)[1]:
                raise ExportError(
                    f"{_where(node)}: its `val` metadata has shape {list(val.shape)}, its operand "
                    f"`{self.types[operands[0]]}` (stale metadata: PT2E's QAT conv-bn rewrite leaves its "
                    "pattern's example shapes on the nodes it inserts)"
                )
        if op in _MULTI_RESULT:
            n = _MULTI_RESULT[op]
            items = self.elements.get(node, {})
            results = [_name(items[i].name) if i in items else _name(f"{node.name}_{i}") for i in range(n)]
            types = [qir_type(v) for v in val]
            self.multi = getattr(self, "multi", {})
            for i in range(n):
                self.multi[(node, i)] = (results[i], types[i])
            self.names[node] = results[0]
            self.types[node] = types[0]
            self.emit(node, op, operands, attrs, types, results)
            return
        if isinstance(val, (tuple, list)):  # the batch norm variants: (out, mean, invstd)
            getitem = self.element0.get(node)
            if getitem is None or any(u is not getitem and u not in self.dropped for u in node.users):
                raise ExportError(f"{_where(node)}: a tuple result used other than through element 0")
            val, result = val[0], _name(getitem.name)
        else:
            result = _name(node.name)
        self.names[node] = result
        ty = val if isinstance(val, str) else qir_type(val)
        self.types[node] = ty
        self.emit(node, op, operands, attrs, [ty], [result])

    def infer_type(self, node: Node, op: str, operands: list, attrs: dict):
        """The result type of a node without ``meta["val"]`` (convert_pt2e leaves it out on
        some quantize/dequantize nodes): the operand's shape, with the quantized dtype, f32
        or ``out_dtype``."""
        if op.startswith(("quantize_per", "dequantize_per", "fake_quantize_per")) and operands:
            src = operands[0]
            self.value(src, node)
            shape = self.types[src][self.types[src].index("[") :]
            if op.startswith("quantize"):
                dtype = str(attrs["dtype"])
            elif op.startswith("dequantize"):
                dtype = str(attrs.get("out_dtype", "f32"))
            else:
                dtype = self.types[src][: self.types[src].index("[")]
            return dtype + shape
        raise ExportError(f"{_where(node)}: no `val` metadata to type its result")


def _where(node: Node) -> str:
    return f"node `{node.name}` ({node.target}) in module `{_fqn(node) or '<root>'}`"


def write_qir(program, qir_path: str, weights_path: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
    """Writes ``qir_path`` and (if the graph reads any tensor) its weights, by default
    ``<qir_path without .qir>.safetensors`` beside it. Returns the tensors written."""
    if weights_path is None:
        weights_path = os.path.splitext(qir_path)[0] + ".safetensors"
    rel = os.path.relpath(weights_path, os.path.dirname(os.path.abspath(qir_path)))
    text, weights = export_qir(program, weights_file=rel, **kwargs)
    if weights:
        write_safetensors(weights_path, weights)
    with open(qir_path, "w") as f:
        f.write(text)
    return weights
