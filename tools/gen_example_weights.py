#!/usr/bin/env python3
"""Generate deterministic safetensors weight files for hand-written QIR examples.

Usage: python3 tools/gen_example_weights.py examples/*.qir

For every .qir file given, this reads the `weights "F"` declaration and every
`%v = weight {key = "K"} : f32[d0,...]` statement, and writes F (resolved relative to
the .qir file) in the safetensors format: an 8-byte little-endian header length, a JSON
header (sorted keys; dtype "F32", shape, data_offsets), padded with spaces to a multiple
of 8 bytes, then the raw little-endian float32 data in key order.

Values are pseudo-random but deterministic: each tensor draws from
random.Random(zlib.crc32(key)), so running the script twice gives byte-identical files.
How a tensor is initialised depends on how the graph uses it (which operand of which op
reads it), falling back to its state-dict name:

  conv / linear weight       U(-b, b), b = 1/sqrt(fan_in)  (PyTorch's kaiming_uniform(a=sqrt(5)))
  conv / linear bias         U(-b, b), b = 1/sqrt(fan_in)  (PyTorch's default bias init)
  batch_norm weight          U(0.5, 1.5)
  batch_norm bias            U(-0.1, 0.1)
  batch_norm running_mean    U(-0.1, 0.1)
  batch_norm running_var     U(0.5, 1.5)                   (always positive)
  layer/group_norm weight    U(0.9, 1.1)
  layer/group_norm bias      U(-0.02, 0.02)
  embedding table            U(-1, 1)
  anything else              U(-0.1, 0.1)

Pure Python standard library: no numpy, no torch.
"""

import json
import math
import os
import random
import re
import struct
import sys
import zlib

# `weights "path"` at module level.
WEIGHTS_RE = re.compile(r'^\s*weights\s+"((?:[^"\\]|\\.)*)"')
# `%name = weight {key = "K"} : f32[1,2,3]` (anything may follow: loc, meta, ...).
WEIGHT_RE = re.compile(
    r'^\s*%([A-Za-z0-9_][A-Za-z0-9_.]*)\s*=\s*weight\s*'
    r'\{\s*key\s*=\s*"((?:[^"\\]|\\.)*)"\s*\}\s*:\s*([A-Za-z0-9]+)\[([^\]]*)\]'
)
# Any other op statement with operands: `%r = opname(%a, %b)`.
OP_RE = re.compile(r'^\s*%[A-Za-z0-9_.,%\s]*=\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\(([^)]*)\)')

# op name -> role of each operand position (None: not a parameter slot).
OPERAND_ROLES = {
    "conv1d": (None, "matmul_weight", "matmul_bias"),
    "conv2d": (None, "matmul_weight", "matmul_bias"),
    "conv_transpose2d": (None, "matmul_weight", "matmul_bias"),
    "linear": (None, "matmul_weight", "matmul_bias"),
    "batch_norm": (None, "bn_weight", "bn_bias", "bn_mean", "bn_var"),
    "layer_norm": (None, "norm_weight", "norm_bias"),
    "group_norm": (None, "norm_weight", "norm_bias"),
    "embedding": ("embedding", None),
}


def unescape(s):
    """Undo QIR string escapes (\\", \\\\, \\n, \\t, \\u{...})."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = s[i + 1]
        if nxt == "u":
            end = s.index("}", i)
            out.append(chr(int(s[i + 3:end], 16)))
            i = end + 1
            continue
        out.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
        i += 2
    return "".join(out)


def strip_comment(line):
    """Drops a `//` comment that is not inside a string literal."""
    in_str = escaped = False
    for i, c in enumerate(line):
        if in_str:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif line.startswith("//", i):
            return line[:i]
    return line


class Tensor:
    def __init__(self, key, shape, where):
        self.key = key
        self.shape = shape
        self.where = where
        self.role = None
        self.fan_in = None  # set for biases from their op's weight


def parse_qir(path):
    """Returns (weights file path or None, {key: Tensor}) for one .qir file."""
    with open(path, encoding="utf-8") as f:
        lines = [strip_comment(l) for l in f.read().splitlines()]
    weights_path = None
    tensors = {}
    value_key = {}  # value name -> weight key
    for n, line in enumerate(lines, 1):
        where = "%s:%d" % (path, n)
        m = WEIGHTS_RE.match(line)
        if m:
            if weights_path is not None:
                sys.exit("%s: the module declares `weights` twice" % where)
            weights_path = unescape(m.group(1))
            continue
        m = WEIGHT_RE.match(line)
        if not m:
            continue
        name, key, dtype, dims = m.group(1), unescape(m.group(2)), m.group(3), m.group(4)
        if dtype != "f32":
            sys.exit("%s: weight `%s` is %s; only f32 weights are supported" % (where, key, dtype))
        try:
            shape = [int(d) for d in dims.split(",") if d.strip()]
        except ValueError:
            sys.exit("%s: weight `%s` needs a static shape, found [%s]" % (where, key, dims))
        if any(d < 0 for d in shape):
            sys.exit("%s: weight `%s` has a negative dimension" % (where, key))
        old = tensors.get(key)
        if old is not None and old.shape != shape:
            sys.exit("%s: weight `%s` is %s here but %s at %s" % (where, key, shape, old.shape, old.where))
        tensors.setdefault(key, Tensor(key, shape, where))
        value_key[name] = key

    # Second pass: what reads each weight decides how it is initialised.
    for line in lines:
        m = OP_RE.match(line)
        if not m or m.group(1) not in OPERAND_ROLES:
            continue
        roles = OPERAND_ROLES[m.group(1)]
        operands = [o.strip().lstrip("%") for o in m.group(2).split(",") if o.strip()]
        keys = [value_key.get(o) for o in operands]
        for i, key in enumerate(keys):
            if key is None or i >= len(roles) or roles[i] is None:
                continue
            t = tensors[key]
            t.role = t.role or roles[i]
            if roles[i] == "matmul_bias" and len(keys) > 1 and keys[1] is not None:
                t.fan_in = t.fan_in or fan_in(tensors[keys[1]].shape)
    return weights_path, tensors


def fan_in(shape):
    """PyTorch's fan_in: dim 1 times the receptive field (linear: in_features)."""
    if len(shape) < 2:
        return max(shape[0], 1) if shape else 1
    return max(shape[1] * math.prod(shape[2:]), 1)


def role_from_name(t):
    """Fallback when no known op reads the tensor."""
    leaf = t.key.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        return "bn_mean"
    if leaf == "running_var":
        return "bn_var"
    if leaf == "weight" and len(t.shape) >= 2:
        return "matmul_weight"
    return "other"


def values(t):
    rng = random.Random(zlib.crc32(t.key.encode("utf-8")))
    n = math.prod(t.shape)
    role = t.role or role_from_name(t)
    if role == "matmul_weight":
        lo, hi = -1.0 / math.sqrt(fan_in(t.shape)), 1.0 / math.sqrt(fan_in(t.shape))
    elif role == "matmul_bias":
        b = 1.0 / math.sqrt(t.fan_in or 64)
        lo, hi = -b, b
    elif role in ("bn_weight", "bn_var"):
        lo, hi = 0.5, 1.5
    elif role in ("bn_bias", "bn_mean"):
        lo, hi = -0.1, 0.1
    elif role == "norm_weight":
        lo, hi = 0.9, 1.1
    elif role == "norm_bias":
        lo, hi = -0.02, 0.02
    elif role == "embedding":
        lo, hi = -1.0, 1.0
    else:
        lo, hi = -0.1, 0.1
    return [rng.uniform(lo, hi) for _ in range(n)]


def serialize(tensors):
    """The safetensors bytes for {key: Tensor}."""
    header = {}
    chunks = []
    offset = 0
    for key in sorted(tensors):
        t = tensors[key]
        data = struct.pack("<%df" % math.prod(t.shape), *values(t))
        header[key] = {"dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def main(argv):
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0 if argv else 2
    # Several .qir files may share one weights file: merge their tensors.
    outputs = {}
    for qir in argv:
        weights_path, tensors = parse_qir(qir)
        if weights_path is None:
            if tensors:
                sys.exit("%s: `weight` ops but no `weights \"...\"` declaration" % qir)
            print("%s: no weights declared, skipped" % qir)
            continue
        out = os.path.normpath(os.path.join(os.path.dirname(qir), weights_path))
        merged = outputs.setdefault(out, {})
        for key, t in tensors.items():
            old = merged.get(key)
            if old is not None and old.shape != t.shape:
                sys.exit("%s: weight `%s` is %s here but %s at %s" % (t.where, key, t.shape, old.shape, old.where))
            if old is None or (old.role is None and t.role is not None):
                merged[key] = t
    for out, tensors in outputs.items():
        blob = serialize(tensors)
        tmp = out + ".tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, out)
        params = sum(math.prod(t.shape) for t in tensors.values())
        print("%s: %d tensors, %d parameters, %d bytes" % (out, len(tensors), params, len(blob)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
