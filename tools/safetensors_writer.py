"""A safetensors writer for torch tensors, shared by the fixture generators.

Writes exactly what qc's reader expects, without the `safetensors` package: an 8-byte
little-endian header length, the JSON header (`__metadata__` first when given, then the
tensors sorted by name, compact separators, space-padded to a multiple of 8), then the data.
"""

import json
import struct

import torch

# torch dtype -> safetensors dtype name.
ST_DTYPES = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
    torch.bool: "BOOL",
}


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} to `path`; `metadata` ({str: str}) becomes `__metadata__`."""
    header = {} if metadata is None else {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        # numpy has no bfloat16: write the 16-bit patterns (the same bytes for float16).
        if t.dtype in (torch.bfloat16, torch.float16):
            data = t.view(torch.int16).numpy().tobytes()
        else:
            data = t.numpy().tobytes()
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
