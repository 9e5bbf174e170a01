"""Writes the safetensors fixtures of tests/errors/ (run from that directory).

weights.safetensors           valid: fc.weight f32[2,4], fc.bias f32[2], u16.table U16[2]
truncated.safetensors         valid header, data section cut short
bad_header_length.safetensors header length larger than the file
garbage.safetensors           not safetensors at all
empty.safetensors             zero bytes
"""
import json
import struct


def safetensors(tensors):
    header, data = {}, b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


valid = safetensors({
    "fc.weight": ("F32", [2, 4], struct.pack("<8f", *range(8))),
    "fc.bias": ("F32", [2], struct.pack("<2f", 0.5, -0.5)),
    "u16.table": ("U16", [2], struct.pack("<2H", 1, 2)),
})
with open("weights.safetensors", "wb") as f:
    f.write(valid)
with open("truncated.safetensors", "wb") as f:
    f.write(valid[:-6])
with open("bad_header_length.safetensors", "wb") as f:
    f.write(struct.pack("<Q", 4096) + b'{"a":')
with open("garbage.safetensors", "wb") as f:
    f.write(b"this is not a safetensors file\n")
with open("empty.safetensors", "wb") as f:
    pass
