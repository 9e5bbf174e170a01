"""Generate deterministic safetensors weight files for hand-written QIR examples.

Usage: python3 -m tools.gen_example_weights examples/small_cnn.qir ...   (the hand-written examples)

For every .qir file given, this reads the `weights "F"` declaration and every
`%v = weight {key = "K"} : f32[d0,...]` statement, and writes F (resolved relative to
the .qir file) in the safetensors format (tools/fileio.py; header fields in key order),
float32 data in key order.

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

import math
import os
import random
import struct
import sys
import zlib

from .fileio import read_qir, safetensors_bytes

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


class Tensor:
    def __init__(self, key, shape, where):
        self.key = key
        self.shape = shape
        self.where = where
        self.role = None
        self.fan_in = None  # set for biases from their op's weight


def parse_qir(path):
    """Returns (weights file path or None, {key: Tensor}) for one .qir file."""
    fn = read_qir(path)
    tensors = {}
    value_key = {}  # value name -> weight key
    for op in fn.ops:
        if op.name != "weight":
            continue
        name, key, (dtype, shape) = op.results[0], op.attrs["key"], op.types[0]
        where = "%s: %%%s" % (path, name)
        if dtype != "f32":
            sys.exit("%s: weight `%s` is %s; only f32 weights are supported" % (where, key, dtype))
        if any(d < 0 for d in shape):
            sys.exit("%s: weight `%s` needs a static shape" % (where, key))
        old = tensors.get(key)
        if old is not None and old.shape != shape:
            sys.exit("%s: weight `%s` is %s here but %s at %s" % (where, key, shape, old.shape, old.where))
        tensors.setdefault(key, Tensor(key, shape, where))
        value_key[name] = key

    # What reads each weight decides how it is initialised.
    for op in fn.ops:
        roles = OPERAND_ROLES.get(op.name)
        if roles is None:
            continue
        keys = [value_key.get(o) for o in op.operands]
        for i, key in enumerate(keys):
            if key is None or i >= len(roles) or roles[i] is None:
                continue
            t = tensors[key]
            t.role = t.role or roles[i]
            if roles[i] == "matmul_bias" and len(keys) > 1 and keys[1] is not None:
                t.fan_in = t.fan_in or fan_in(tensors[keys[1]].shape)
    return fn.weights_file, tensors


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
    """The safetensors bytes for {key: Tensor} (header fields in key order, as first written)."""
    entries = {
        key: ("F32", t.shape, struct.pack("<%df" % math.prod(t.shape), *values(t))) for key, t in tensors.items()
    }
    return safetensors_bytes(entries, sorted_fields=True)


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
