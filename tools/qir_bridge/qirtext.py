"""A small reader for the QIR that qc prints: enough to compare a converted module with PT2E's
(op statements with results, operands, attributes, types and location; the return; the
weights file). Annotations and metadata are skipped."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

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


class DType(str):
    pass


@dataclass
class Op:
    results: list
    name: str
    operands: list
    attrs: dict
    types: list
    loc: str | None = None


@dataclass
class Func:
    inputs: list  # (name, type)
    ops: list
    returns: list
    weights_file: str | None = None
    producer: dict = field(default_factory=dict)  # value -> Op
    users: dict = field(default_factory=dict)  # value -> [Op or "output"]
    path: str = ""
    _weights: dict | None = None

    def weight(self, key: str) -> np.ndarray:
        if self._weights is None:
            from safetensors.numpy import load_file

            self._weights = load_file(os.path.join(os.path.dirname(self.path), self.weights_file))
        return self._weights[key]

    def tensor(self, value: str) -> np.ndarray:
        """The constant a `const` or `weight` op defines."""
        op = self.producer[value]
        dtype = _np_dtype(op.types[0][0])
        if op.name == "const":
            return np.array(op.attrs["value"], dtype=dtype).reshape(op.types[0][1])
        if op.name == "weight":
            return self.weight(op.attrs["key"])
        raise ValueError(f"%{value} is not a constant ({op.name})")


def _np_dtype(name):
    return {"f32": np.float32, "f64": np.float64, "i8": np.int8, "u8": np.uint8, "i16": np.int16,
            "i32": np.int32, "i64": np.int64, "bool": np.bool_, "f16": np.float16}[name]


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


class _P:
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
            return {"true": True, "false": False}.get(v, DType(v))
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


def parse_op(line: str) -> Op:
    p = _P(_tokens(line))
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
    return Op(results, name, operands, attrs, types, loc)


def read(path: str) -> Func:
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
                ops.append(parse_op(line))
    fn = Func(inputs, ops, returns, weights, path=path)
    for op in ops:
        for r in op.results:
            fn.producer[r] = op
        for o in op.operands:
            fn.users.setdefault(o, []).append(op)
    for r in returns:
        fn.users.setdefault(r, []).append("output")
    return fn
