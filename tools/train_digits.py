"""Train a small CNN on scikit-learn's 8x8 digits and export it as the `digits_cnn` example.

Usage: /work/venv/bin/python -m tools.train_digits     (needs torch, safetensors, scikit-learn)

Writes, and prints only the float model's test top-1 accuracy:

* examples/digits_cnn.qir + examples/digits_cnn.safetensors — the eval-mode model, exported
  with ``torch.export.export(..., strict=True)`` and tools/qir_bridge; one graph input
  ``%x: f32[1,1,8,8]`` (batch 1, like the other examples) and one output, the logits
  ``f32[1,10]``;
* examples/digits_calib.npz — calibration data for ``qc ... -p prepare-pt2e,calibrate
  --calib``: one array ``x``, float32 [128,1,8,8] (samples along axis 0; qc cuts them into
  batches of the graph's batch size, 1);
* examples/digits_test.npz — the held-out test set: ``x``, float32 [500,1,8,8], and
  ``labels``, int64 [500] (the digit 0-9 of each sample).

Data: ``sklearn.datasets.load_digits`` (1797 images, 8x8 pixels of 17 gray levels 0..16, 10
classes; bundled with scikit-learn, no download). Each pixel p becomes
``(p / 16 - MEAN) / STD`` in float32, with the fixed constants MEAN = 0.3 and STD = 0.375 (the
whole dataset's mean and standard deviation of p / 16 are 0.305 and 0.376); images are shaped
[N,1,8,8]. The split is a seeded permutation (numpy ``default_rng(SEED)``): the first 500
images are the test set, the remaining 1297 the training set; the calibration set is the first
128 images of the (permuted) training set, as PTQ calibrates on training data.

Model (``DigitsCnn``; every conv is followed by a batch norm, so fuse-conv-bn folds four of
them; conv1 has a bias, the others none, so both folding cases appear)::

    conv1 (1->16, 3x3, pad 1, bias) -> bn1 -> relu1                      [16,8,8]
    conv2 (16->16, 3x3, pad 1) -> bn2 -> relu2 -> conv3 (16->16) -> bn3
        + the block's input (residual add) -> relu3                      [16,8,8]
    pool (2x2 max)                                                       [16,4,4]
    conv4 (16->32, 3x3, pad 1) -> bn4 -> relu4                           [32,4,4]
    avgpool (adaptive, 1x1) -> torch.flatten(x, 1) -> fc (32->10)        [10]

Training: Adam (lr 0.01, cosine decay to 0 over EPOCHS epochs), batch 32, cross-entropy, on
CPU with one thread, ``torch.manual_seed(SEED)`` and ``torch.use_deterministic_algorithms``:
a few seconds, and the same weights on every run on the same machine and torch version. The
npz files hold fixed timestamps (and safetensors sorts its keys), so every output is
reproducible byte for byte under those conditions.
"""

import os
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .fileio import npy_bytes, write_npz, write_safetensors
from .qir_bridge import export_qir

warnings.filterwarnings("ignore")

SEED = 0
MEAN, STD = 0.3, 0.375
TEST, CALIB = 500, 128
EPOCHS, BATCH, LR = 30, 32, 0.01
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

HEADER = """\
// A small CNN trained on scikit-learn's 8x8 digits (1297 training images; made by
// tools/train_digits.py, which documents the preprocessing and the split):
//
//   conv1 (1->16, 3x3, pad 1, bias) -> bn1 -> relu1
//   conv2 (16->16, 3x3, pad 1) -> bn2 -> relu2 -> conv3 (16->16) -> bn3, + residual -> relu3
//   pool (2x2 max) -> conv4 (16->32, 3x3, pad 1) -> bn4 -> relu4
//   avgpool (adaptive, 1x1) -> torch.flatten(x, 1) -> fc (32->10)
//
// Exported from the eval-mode model with torch.export (strict) and tools/qir_bridge.
// Input: (pixel/16 - 0.3)/0.375. Data: digits_calib.npz (calibration, `x`) and
// digits_test.npz (held-out `x` and int64 `labels`).
"""


class DigitsCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.relu3 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(32)
        self.relu4 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(y)) + x)
        x = self.relu4(self.bn4(self.conv4(self.pool(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def load():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = ((digits.data / 16.0 - MEAN) / STD).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    test, train = order[:TEST], order[TEST:]
    return (x[train], y[train]), (x[test], y[test])


def train(x, y):
    torch.manual_seed(SEED)
    model = DigitsCnn()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    steps = EPOCHS * ((len(ys) + BATCH - 1) // BATCH)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(ys), generator=g)
        for i in range(0, len(ys), BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    (x_train, y_train), (x_test, y_test) = load()
    model = train(x_train, y_train)
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    accuracy = float((pred == y_test).mean())

    ep = torch.export.export(model, (torch.from_numpy(x_test[:1]),), strict=True)
    text, weights = export_qir(ep, module_name="digits_cnn", weights_file="digits_cnn.safetensors")
    write_safetensors(os.path.join(ROOT, "digits_cnn.safetensors"), weights)
    with open(os.path.join(ROOT, "digits_cnn.qir"), "w") as f:
        f.write(HEADER + text)
    write_npz(os.path.join(ROOT, "digits_calib.npz"), {"x": npy_bytes(x_train[:CALIB])}, compressed=True)
    write_npz(os.path.join(ROOT, "digits_test.npz"), {"x": npy_bytes(x_test), "labels": npy_bytes(y_test)}, compressed=True)
    print(f"float test top-1: {accuracy:.4f} ({int((pred == y_test).sum())}/{len(y_test)})")


if __name__ == "__main__":
    main()
