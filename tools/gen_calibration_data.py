#!/usr/bin/env python3
"""Writes seeded calibration data for the examples (stdlib only).

    python3 tools/gen_calibration_data.py

For each example graph listed below, writes `examples/<name>_calib.npz` holding one array per
graph input, named like the input, with `SAMPLES` samples along the first axis (each sample is
the input's shape without its batch dimension). Values are standard-normal draws from a
generator seeded by the file name, so the files are reproducible byte for byte.
"""

import os
import random
import struct
import zipfile
import zlib

EXAMPLES = {
    # name: (input name, per-sample shape)
    "small_cnn": ("x", (3, 32, 32)),
    "transformer_encoder_block": ("hidden_states", (16, 64)),
}
SAMPLES = 16
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def npy_bytes(shape, values):
    """A version-1.0 little-endian float32 .npy image."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % (
        ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    )
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + struct.pack(f"<{len(values)}f", *values)


for name, (input_name, sample_shape) in EXAMPLES.items():
    rng = random.Random(zlib.crc32(name.encode()))
    shape = (SAMPLES,) + sample_shape
    count = 1
    for d in shape:
        count *= d
    values = [rng.gauss(0.0, 1.0) for _ in range(count)]
    path = os.path.join(ROOT, f"{name}_calib.npz")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        # A fixed timestamp keeps the archive byte-identical across runs.
        info = zipfile.ZipInfo(f"{input_name}.npy", date_time=(2020, 1, 1, 0, 0, 0))
        z.writestr(info, npy_bytes(shape, values))
    print(f"wrote {os.path.normpath(path)} ({SAMPLES} samples of {sample_shape})")
