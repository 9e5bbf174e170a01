"""Writes seeded calibration data for the examples (stdlib only).

    python3 -m tools.gen_calibration_data

For each example graph listed below, writes `examples/<name>_calib.npz` holding one array per
graph input, named like the input, with `SAMPLES` samples along the first axis (each sample is
the input's shape without its batch dimension). Values are standard-normal draws from a
generator seeded by the file name, so the files are reproducible byte for byte.
"""

import os
import random
import zlib

from .fileio import npy_f32_bytes, write_npz

EXAMPLES = {
    # name: (input name, per-sample shape)
    "small_cnn": ("x", (3, 32, 32)),
    "transformer_encoder_block": ("hidden_states", (16, 64)),
}
SAMPLES = 16
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def main():
    for name, (input_name, sample_shape) in EXAMPLES.items():
        rng = random.Random(zlib.crc32(name.encode()))
        shape = (SAMPLES,) + sample_shape
        count = 1
        for d in shape:
            count *= d
        values = [rng.gauss(0.0, 1.0) for _ in range(count)]
        path = os.path.join(ROOT, f"{name}_calib.npz")
        write_npz(path, {input_name: npy_f32_bytes(shape, values)}, compressed=False)
        print(f"wrote {os.path.normpath(path)} ({SAMPLES} samples of {sample_shape})")


if __name__ == "__main__":
    main()
