"""The file formats the tools write and read: safetensors, .npy / .npz, and QIR text.

Every writer here is deterministic (sorted tensor names, fixed zip timestamps), so the committed
fixtures regenerate byte for byte. Nothing at module level needs torch or numpy: the stdlib-only
tools (tools/gen_example_weights.py, tools/gen_calibration_data.py) use this module too, and
the functions that take tensors or arrays import what they need.

* safetensors: :func:`safetensors_bytes` lays out a file (an 8-byte little-endian header
  length, the JSON header — ``__metadata__`` first when given, then the tensors sorted by name,
  compact separators, space-padded to a multiple of 8 — then the data in the same order);
  :func:`write_safetensors` writes torch tensors that way. Reading goes through the
  ``safetensors`` package (:meth:`QirFunc.weight`).
* JSON: :func:`records_json` (the parity fixtures' expected.json / converted.json layout).
* .npy / .npz: :func:`npy_f32_bytes` (stdlib) and :func:`npy_bytes` (numpy) make version-1.0
  .npy images; :func:`write_npz` zips them with a fixed timestamp.
* QIR: :func:`read_qir` reads the first function of a QIR file as qc prints it (op statements
  with results, operands, attributes, types and location; the return; the weights file).
  Annotations and metadata are skipped.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field

# ---- safetensors ------------------------------------------------------------------------------

# torch dtype (as `str(tensor.dtype)`) -> safetensors dtype name.
_ST_DTYPES = {
    "torch.float32": "F32", "torch.float64": "F64", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.int8": "I8", "torch.uint8": "U8", "torch.int16": "I16", "torch.int32": "I32", "torch.int64": "I64",
    "torch.bool": "BOOL",
}


def safetensors_bytes(entries: dict, metadata: dict | None = None, *, sorted_fields: bool = False) -> bytes:
    """A safetensors file of ``entries`` ({name: (dtype name, shape, little-endian data)});
    ``metadata`` ({str: str}) becomes ``__metadata__``. ``sorted_fields`` writes each tensor's
    header fields in key order (``data_offsets``, ``dtype``, ``shape``: the layout of the
    examples' weight files) instead of ``dtype``, ``shape``, ``data_offsets``."""
    header = {} if metadata is None else {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(entries):
        dtype, shape, data = entries[name]
        info = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        header[name] = dict(sorted(info.items())) if sorted_fields else info
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _torch_entry(tensor) -> tuple:
    import torch

    t = tensor.detach().contiguous()
    # numpy has no bfloat16: write the 16-bit patterns (the same bytes for float16).
    data = t.view(torch.int16).numpy().tobytes() if t.dtype in (torch.bfloat16, torch.float16) else t.numpy().tobytes()
    return _ST_DTYPES[str(t.dtype)], tuple(t.shape), data


def write_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Writes {name: torch tensor} to ``path``; ``metadata`` ({str: str}) becomes ``__metadata__``."""
    blob = safetensors_bytes({name: _torch_entry(t) for name, t in tensors.items()}, metadata)
    with open(path, "wb") as f:
        f.write(blob)


# ---- JSON -------------------------------------------------------------------------------------


def records_json(doc: dict, record_fields) -> str:
    """``doc`` as JSON, one line per field, except that each list field named in
    ``record_fields`` gets one line per record (so a fixture's diff shows which record changed)."""
    fields = []
    for k, v in doc.items():
        if k in record_fields:
            rows = ",\n".join("  " + json.dumps(r) for r in v)
            fields.append(f" {json.dumps(k)}: [\n{rows}\n ]")
        else:
            fields.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


# ---- .npy / .npz ------------------------------------------------------------------------------

# Every zip entry gets this timestamp, so an archive is byte-identical across runs.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def npy_f32_bytes(shape: tuple, values: list) -> bytes:
    """A version-1.0 little-endian float32 .npy image of ``values`` (row-major), without numpy."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % (
        ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    )
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + struct.pack(f"<{len(values)}f", *values)


def npy_bytes(array) -> bytes:
    """The .npy image numpy writes for ``array`` (made contiguous; no pickles)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_npz(path: str, members: dict, *, compressed: bool) -> None:
    """Writes {name: .npy bytes} as ``<name>.npy`` entries, in the given order, stored or
    deflated, with a fixed timestamp."""
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME), data, method)


# ---- QIR text ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
     (?P<val>%[A-Za-z0-9_][A-Za-z0-9_.]*)
    |(?P<sym>@[A-Za-z_][A-Za-z0-9_.]*)
    |(?P<str>"(?:[^"\\]|\\.)*")
    |(?P<nanb>nan\(0x[0-9a-fA-F]+\))
    |(?P<num>-?(?:(?:inf|nan)\b|\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+))
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    |(?P<arrow>->)
    |(?P<p>[()\[\]{},:=?;]))""",
    re.X,
)


class QirDType(str):
    """An attribute written as a bare element type (``i8``), not as a string."""


@dataclass
class QirOp:
    results: list
    name: str
    operands: list
    attrs: dict
    types: list  # (element type, dims), -1 for `?`
    loc: str | None = None


@dataclass
class QirFunc:
    inputs: list  # (name, type)
    ops: list
    returns: list
    weights_file: str | None = None
    producer: dict = field(default_factory=dict)  # value -> QirOp
    users: dict = field(default_factory=dict)  # value -> [QirOp or "output"]
    path: str = ""
    _weights: dict | None = None

    def weight(self, key: str):
        """The numpy array stored under ``key`` in the function's weights file."""
        if self._weights is None:
            from safetensors.numpy import load_file

            self._weights = load_file(os.path.join(os.path.dirname(self.path), self.weights_file))
        return self._weights[key]

    def tensor(self, value: str):
        """The constant a `const` or `weight` op defines."""
        import numpy as np

        op = self.producer[value]
        dtype = {"f32": np.float32, "f64": np.float64, "i8": np.int8, "u8": np.uint8, "i16": np.int16,
                 "i32": np.int32, "i64": np.int64, "bool": np.bool_, "f16": np.float16}[op.types[0][0]]
        if op.name == "const":
            return np.array(op.attrs["value"], dtype=dtype).reshape(op.types[0][1])
        if op.name == "weight":
            return self.weight(op.attrs["key"])
        raise ValueError(f"%{value} is not a constant ({op.name})")


def _tokens(line):
    out, pos = [], 0
    n = len(line)
    while pos < n:
        m = _TOKEN.match(line, pos)
        if not m or m.end() == pos:
            if line[pos:].strip() == "" or line[pos:].lstrip().startswith("//"):
                break
            raise ValueError(f"cannot tokenize at {line[pos:pos + 40]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, toks):
        self.t, self.i = toks, 0

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, text):
        k, v = self.next()
        if v != text:
            raise ValueError(f"expected {text!r}, found {v!r}")

    def attr(self):
        k, v = self.next()
        if v == "[":
            items = []
            while self.peek()[1] != "]":
                items.append(self.attr())
                if self.peek()[1] == ",":
                    self.next()
            self.next()
            return items
        if v == "{":
            return self.dict_body()
        if k == "num":
            if v in ("inf", "-inf", "nan", "-nan"):
                return float(v)
            return float(v) if ("." in v or "e" in v or "E" in v) else int(v)
        if k == "nanb":
            return float("nan")
        if k == "str":
            return bytes(v[1:-1], "utf-8").decode("unicode_escape")
        if k == "ident":
            return {"true": True, "false": False}.get(v, QirDType(v))
        raise ValueError(f"unexpected {v!r} in an attribute")

    def dict_body(self):
        d = {}
        while self.peek()[1] != "}":
            _, key = self.next()
            self.expect("=")
            d[key] = self.attr()
            if self.peek()[1] == ",":
                self.next()
        self.next()
        return d

    def type(self):
        _, dt = self.next()
        self.expect("[")
        dims = []
        while self.peek()[1] != "]":
            _, d = self.next()
            dims.append(-1 if d == "?" else int(d))
            if self.peek()[1] == ",":
                self.next()
        self.next()
        return (dt, dims)


def parse_qir_op(line: str) -> QirOp:
    """One op statement: ``%r, ... = name(%a, ...) {attrs} : types loc("...")``."""
    p = _Parser(_tokens(line))
    results = []
    while True:
        k, v = p.next()
        results.append(v[1:])
        if p.peek()[1] == ",":
            p.next()
            continue
        p.expect("=")
        break
    _, name = p.next()
    operands, attrs, types, loc = [], {}, [], None
    if p.peek()[1] == "(":
        p.next()
        while p.peek()[1] != ")":
            operands.append(p.next()[1][1:])
            if p.peek()[1] == ",":
                p.next()
        p.next()
    if p.peek()[1] == "{":
        p.next()
        attrs = p.dict_body()
    if p.peek()[1] == ":":
        p.next()
        types.append(p.type())
        while p.peek()[1] == ",":
            p.next()
            types.append(p.type())
    if p.peek()[1] == "loc":
        p.next()
        p.expect("(")
        loc = p.next()[1][1:-1]
        p.expect(")")
    return QirOp(results, name, operands, attrs, types, loc)


def read_qir(path: str) -> QirFunc:
    """The first function of a QIR file."""
    inputs, ops, returns, weights = [], [], [], None
    in_func = False
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("//"):
                continue
            if line.startswith("weights "):
                weights = line.split('"')[1]
            elif line.startswith("func "):
                if in_func:
                    break
                in_func = True
                params = line[line.index("(") + 1 : line.index("->")].rsplit(")", 1)[0]
                for m in re.finditer(r"%([A-Za-z0-9_.]+)\s*:\s*([a-z0-9]+)\[([^\]]*)\]", params):
                    dims = [int(d) if d != "?" else -1 for d in m.group(3).split(",") if d]
                    inputs.append((m.group(1), (m.group(2), dims)))
            elif in_func and line.startswith("return"):
                returns = [v.strip()[1:] for v in line[len("return") :].split(",") if v.strip()]
            elif in_func and line.startswith("%"):
                ops.append(parse_qir_op(line))
    fn = QirFunc(inputs, ops, returns, weights, path=path)
    for op in ops:
        for r in op.results:
            fn.producer[r] = op
        for o in op.operands:
            fn.users.setdefault(o, []).append(op)
    for r in returns:
        fn.users.setdefault(r, []).append("output")
    return fn
