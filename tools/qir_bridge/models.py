"""The models the parity harness runs: seeded, eval mode, with calibration and held-out data.

* ``digits_cnn`` — the trained example of ``examples/`` (tools/train_digits.py's ``DigitsCnn``
  with ``examples/digits_cnn.safetensors``), its 128 calibration images and the first
  ``DIGITS_HELDOUT`` test images with their labels;
* ``small_cnn``, ``residual_mlp``, ``branch_cat``, ``dw_pw``, ``head_mix`` — the random-weight
  models of tools/gen_pt2e_fixtures.py, with the very calibration and held-out batches of the
  committed fixtures (tests/pt2e/<model>/);
* ``resnet18``, ``mobilenet_v2`` — torchvision's, random weights (``torch.manual_seed``) and
  random batch-norm statistics (a fresh BatchNorm is the identity, which would make BN folding
  trivial), input 1x3x224x224;
* ``bert_layer`` — a BERT-style encoder block (Hugging Face ``BertLayer`` without mask:
  q/k/v linears, scaled dot-product attention written out with matmul + softmax, output dense
  + residual + LayerNorm, GELU MLP + residual + LayerNorm), hidden 256, 4 heads, sequence 64.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS_HELDOUT = 200


@dataclass
class Case:
    name: str
    model: nn.Module
    example: tuple
    calib: list  # of argument tuples (one per batch)
    heldout: list
    labels: np.ndarray | None = None
    doc: str = ""
    extra: dict = field(default_factory=dict)


def _randomize_bn(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Non-trivial statistics for every BatchNorm2d, as the fixtures' models get them."""
    from .. import gen_pt2e_fixtures as G  # imported when used: it sets up PT2E (one thread, ExecuTorch)

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            G.randomize_bn(m, g)
    return model


def _batches(shape, n, seed, scale0=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g) * (scale0 + 0.1 * i),) for i in range(n)]


def fixture_model(name: str) -> Case:
    from .. import gen_convert_fixtures as C
    from .. import gen_pt2e_fixtures as G

    for case_name, cls, shape, seed, exact in G.cases():
        if case_name == name:
            model, example, batches = G.build(cls, shape, seed, exact)
            heldout = C.heldout(shape, seed + 3, exact)
            doc = cls.__doc__.split("\n")[0] if cls.__doc__ else ""
            return Case(name, model, example, batches, heldout, doc=doc)
    raise KeyError(name)


def digits_cnn() -> Case:
    from safetensors.torch import load_file

    from .. import train_digits

    model = train_digits.DigitsCnn()
    state = load_file(os.path.join(ROOT, "examples", "digits_cnn.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    model.eval()
    calib = np.load(os.path.join(ROOT, "examples", "digits_calib.npz"))["x"]
    test = np.load(os.path.join(ROOT, "examples", "digits_test.npz"))
    x, labels = test["x"][:DIGITS_HELDOUT], test["labels"][:DIGITS_HELDOUT]
    to_batches = lambda a: [(torch.from_numpy(a[i : i + 1].copy()),) for i in range(len(a))]  # noqa: E731
    return Case(
        "digits_cnn", model, (torch.from_numpy(calib[:1].copy()),), to_batches(calib), to_batches(x), labels,
        doc="trained CNN on sklearn digits (examples/)",
    )


def _torchvision(name: str, seed: int, calib: int, heldout: int) -> Case:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None).eval()
    _randomize_bn(model, torch.Generator().manual_seed(seed + 1))
    shape = (1, 3, 224, 224)
    return Case(
        name, model, _batches(shape, 1, seed + 2)[0], _batches(shape, calib, seed + 3), _batches(shape, heldout, seed + 4),
        doc=f"torchvision {name}, random weights (seed {seed}), 1x3x224x224",
    )


class BertSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.head_size = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(0.1)

    def split(self, x):
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, h):
        q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.reshape(h.shape[0], h.shape[1], -1)


class BertLayer(nn.Module):
    """BERT encoder layer (post-norm): self-attention, dense + residual + LayerNorm, GELU MLP +
    residual + LayerNorm."""

    def __init__(self, hidden=256, heads=4, intermediate=1024):
        super().__init__()
        self.attention = BertSelfAttention(hidden, heads)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.act = nn.GELU()
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, h):
        a = self.attention_norm(self.dropout(self.attention_output(self.attention(h))) + h)
        return self.output_norm(self.dropout(self.output(self.act(self.intermediate(a)))) + a)


def bert_layer() -> Case:
    torch.manual_seed(7)
    model = BertLayer().eval()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        g = torch.Generator().manual_seed(8)
        for ln in (model.attention_norm, model.output_norm):
            ln.weight.copy_(torch.empty(ln.normalized_shape).uniform_(0.5, 1.5, generator=g))
            ln.bias.copy_(torch.empty(ln.normalized_shape).uniform_(-0.2, 0.2, generator=g))
    shape = (1, 64, 256)
    return Case(
        "bert_layer", model, _batches(shape, 1, 9)[0], _batches(shape, 6, 10), _batches(shape, 4, 11),
        doc="BERT-style encoder layer, hidden 256, 4 heads, seq 64, random weights",
    )


# The fixtures of tests/pt2e (tools/gen_pt2e_fixtures.py's `cases()`), random and `_exact`.
FIXTURES = [
    "small_cnn", "small_cnn_exact", "residual_mlp", "residual_mlp_exact", "branch_cat", "branch_cat_exact",
    "dw_pw", "dw_pw_exact", "head_mix", "head_mix_exact", "reused_modules_exact", "relu6_functional_exact",
    "squeeze_all_exact", "dropout_eval_exact",
]
SMALL = ["digits_cnn"] + FIXTURES
LARGE = ["bert_layer", "mobilenet_v2", "resnet18"]
MODELS = SMALL + LARGE


def build(name: str) -> Case:
    if name == "digits_cnn":
        return digits_cnn()
    if name == "bert_layer":
        return bert_layer()
    if name == "resnet18":
        return _torchvision("resnet18", 18, calib=4, heldout=2)
    if name == "mobilenet_v2":
        return _torchvision("mobilenet_v2", 2, calib=4, heldout=2)
    return fixture_model(name)
