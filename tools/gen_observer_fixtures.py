"""Generates the observer parity fixtures (`tests/observers/<case>.safetensors`) from PyTorch.

Each case feeds a deterministic sequence of batches to one PT2E observer (torchao's
`torchao.quantization.pt2e.observer`, falling back to `torch.ao.quantization.observer`, which has
the same math) and records:

* `batch.<i>`: the batches, in order (any float dtype; empty batches allowed);
* `expected.min_val` / `expected.max_val`: the observer's final float32 statistics (0-dim for
  per-tensor observers, `[C]` for per-channel ones; absent for stateless observers);
* `expected.histogram`: the final float32 histogram (histogram-based observers);
* `expected.scale` (f32) and `expected.zero_point` (i64), or `expected.float_zero_point` (f32) for
  `per_channel_affine_float_qparams`: what `calculate_qparams()` returns.

The safetensors metadata holds the observer config as strings (`kind`, `dtype`, `qmin`, `qmax`,
`qscheme`, `ch_axis`, and the options `eps`, `averaging_constant`, `bins`, `percentile`,
`reduce_range`, `customized_range`, `scale`, `zero_point`), plus `batches` (the count),
`expect` (`ok`, or `error` when `calculate_qparams` raises) and `note`.

`percentile` and `entropy` are qc observers with no PyTorch counterpart (see the module doc of
`src/quant/observer/` for their definitions). Their statistics still come from PyTorch: the
percentile observer keeps exactly HistogramObserver's histogram, and the entropy observer's
histogram of |x| over [0, max|x|] is built below with HistogramObserver's own `torch.histc` and
`_combine_histograms`. Their clipping range is computed by the straightforward Python reference
implementation in this file (plain float64 loops), independent of the Rust code.

`cargo test --test observers` replays every case through `qc::quant::observer::ObserverState`
and requires bit-identical statistics and qparams. Nothing here is needed to run the tests: the
fixtures are committed.

Usage: /work/venv/bin/python -m tools.gen_observer_fixtures [OUT_DIR]   (torch, torchao, numpy)

The fixtures do not depend on the thread count (OMP_NUM_THREADS=1 gives identical files) nor on
ATEN_CPU_CAPABILITY=avx2 vs avx512 (the kernels involved dispatch to AVX2 either way); with
ATEN_CPU_CAPABILITY=default `linspace` loses its FMA and the upsampling merges change.
"""

import math
import os
import sys
import warnings

import torch

from .fileio import write_safetensors
from .qir_bridge.exporter import QIR_DTYPES, QSCHEMES

try:
    from torchao.quantization.pt2e import observer as obs_mod

    SOURCE = "torchao.quantization.pt2e.observer"
except ImportError:  # pragma: no cover - same math, older home
    from torch.ao.quantization import observer as obs_mod

    SOURCE = "torch.ao.quantization.observer"

warnings.filterwarnings("ignore")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "observers")

EPS12 = 2.0 ** -12


# ----------------------------------------------------------------------------------------------
# Reference implementations of qc's two non-PyTorch observers (float64, plain loops).

def calc_qparams(min_val, max_val, cfg):
    """PyTorch's `_calculate_qparams` on 0-dim float32 tensors, via a throwaway MinMaxObserver."""
    o = make_minmax_like(cfg)
    return o._calculate_qparams(min_val.reshape(()), max_val.reshape(()))


def make_minmax_like(cfg):
    return obs_mod.MinMaxObserver(dtype=cfg["torch_dtype"], qscheme=cfg["torch_qscheme"],
                                  quant_min=cfg.get("quant_min"), quant_max=cfg.get("quant_max"),
                                  eps=cfg.get("eps", torch.finfo(torch.float32).eps))


def percentile_range(hist, min_val, max_val, p):
    """Both tails clipped at (100 - p) / 2 percent of the histogram mass, at bin edges."""
    h = [float(v) for v in hist.tolist()]
    bins = len(h)
    total = 0.0
    for v in h:
        total += v
    tail = total * (100.0 - p) / 200.0
    lo, cum = 0, 0.0
    for i in range(bins):
        cum += h[i]
        if cum > tail:
            lo = i
            break
    hi, cum = bins - 1, 0.0
    for i in range(bins - 1, -1, -1):
        cum += h[i]
        if cum > tail:
            hi = i
            break
    hi = max(hi, lo)
    bin_width = (max_val - min_val) / bins
    new_min = min_val + bin_width * lo
    new_max = max_val if hi == bins - 1 else min_val + bin_width * (hi + 1)
    return new_min, new_max


def entropy_threshold_index(hist, nq):
    """TensorRT-style KL search over a histogram of |x|; returns the number of bins kept."""
    h = [float(v) for v in hist.tolist()]
    bins = len(h)
    total = 0.0
    for v in h:
        total += v
    if total == 0.0:
        return bins
    best_i, best_kl = bins, math.inf
    for i in range(nq, bins + 1):
        p = h[:i]
        outliers = 0.0
        for v in h[i:]:
            outliers += v
        p[i - 1] += outliers
        m = i // nq
        q = [0.0] * i
        for g in range(nq):
            start = g * m
            stop = start + m if g < nq - 1 else i
            s = 0.0
            for v in h[start:stop]:
                s += v
            nonzero = sum(1 for k in range(start, stop) if p[k] != 0.0)
            if nonzero:
                for k in range(start, stop):
                    if p[k] != 0.0:
                        q[k] = s / nonzero
        sp, sq = 0.0, 0.0
        for v in p:
            sp += v
        for v in q:
            sq += v
        kl = 0.0
        for k in range(i):
            if p[k] != 0.0:
                if q[k] == 0.0:
                    kl = math.inf
                    break
                pk, qk = p[k] / sp, q[k] / sq
                kl += pk * math.log(pk / qk)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


class EntropyRef:
    """qc's entropy observer statistics, built with HistogramObserver's own histc/combine."""

    def __init__(self, bins):
        self.h = obs_mod.HistogramObserver(bins=bins)
        self.bins = bins
        self.min_val = torch.tensor(float("inf"))
        self.max_val = torch.tensor(float("-inf"))
        self.hist = torch.zeros(bins)

    def abs_histc(self, a, hi):
        if hi.item() == 0.0:
            out = torch.zeros(self.bins)
            out[0] = float(a.numel())
            return out
        return torch.histc(a, self.bins, min=0.0, max=hi.item())

    def forward(self, x):
        if x.numel() == 0:
            return
        x = x.detach().float().flatten()
        x = x[x.abs() != torch.inf]
        if x.numel() == 0:
            return
        mn, mx = torch.aminmax(x)
        a = x.abs()
        first = self.min_val.item() == math.inf
        old_hi = torch.max(-self.min_val, self.max_val)
        self.min_val = torch.min(mn, self.min_val)
        self.max_val = torch.max(mx, self.max_val)
        hi = torch.max(-self.min_val, self.max_val)
        zero = torch.tensor(0.0)
        if first:
            self.hist = self.abs_histc(a, hi)
        elif hi.item() == old_hi.item():
            self.hist = self.hist + self.abs_histc(a, hi)
        else:
            upd = self.abs_histc(a, hi)
            self.hist = self.h._combine_histograms(self.hist, zero, old_hi, upd, zero, hi)


# ----------------------------------------------------------------------------------------------

CASES = []


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(g, *shape, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=g) * scale + shift


def make_cfg(dtype, qmin, qmax, qscheme, eps=EPS12, customized=True, reduce_range=False):
    cfg = {"torch_dtype": dtype, "torch_qscheme": qscheme, "eps": eps, "reduce_range": reduce_range}
    if customized:
        cfg["quant_min"], cfg["quant_max"] = qmin, qmax
    cfg["meta"] = {
        "dtype": QIR_DTYPES[dtype], "qmin": str(qmin), "qmax": str(qmax), "qscheme": QSCHEMES[qscheme],
        "eps": repr(float(eps)), "customized_range": "true" if customized else "false",
        "reduce_range": "true" if reduce_range else "false",
    }
    return cfg


I8A = make_cfg(torch.int8, -128, 127, torch.per_tensor_affine)
I8S = make_cfg(torch.int8, -127, 127, torch.per_tensor_symmetric)
I8S128 = make_cfg(torch.int8, -128, 127, torch.per_tensor_symmetric)
U8A = make_cfg(torch.uint8, 0, 255, torch.per_tensor_affine)
U8S = make_cfg(torch.uint8, 0, 255, torch.per_tensor_symmetric)
U8S_DEFAULT = make_cfg(torch.uint8, 0, 255, torch.per_tensor_symmetric, customized=False)
I8A_F32EPS = make_cfg(torch.int8, -128, 127, torch.per_tensor_affine, eps=torch.finfo(torch.float32).eps)
I8A_REDUCED = make_cfg(torch.int8, -128, 127, torch.per_tensor_affine, reduce_range=True)
I16A = make_cfg(torch.int16, -32768, 32767, torch.per_tensor_affine)
I32S = make_cfg(torch.int32, -(2 ** 31), 2 ** 31 - 1, torch.per_tensor_symmetric)
PC_I8S = make_cfg(torch.int8, -127, 127, torch.per_channel_symmetric)
PC_I8S128 = make_cfg(torch.int8, -128, 127, torch.per_channel_symmetric)
PC_I8A = make_cfg(torch.int8, -128, 127, torch.per_channel_affine)
PC_U8A = make_cfg(torch.uint8, 0, 255, torch.per_channel_affine)
PC_FLOAT = make_cfg(torch.uint8, 0, 255, torch.per_channel_affine_float_qparams)


def kwargs_of(cfg):
    kw = {"dtype": cfg["torch_dtype"], "qscheme": cfg["torch_qscheme"], "eps": cfg["eps"],
          "reduce_range": cfg["reduce_range"]}
    if "quant_min" in cfg:
        kw["quant_min"], kw["quant_max"] = cfg["quant_min"], cfg["quant_max"]
    return kw


def case(name, kind, cfg, batches, note, ch_axis=None, averaging_constant=None, bins=None,
         percentile=None):
    CASES.append((name, kind, cfg, batches, note, ch_axis, averaging_constant, bins, percentile))


def run_case(name, kind, cfg, batches, note, ch_axis, averaging_constant, bins, percentile):
    meta = {"kind": kind, "note": note, "batches": str(len(batches)), "expect": "ok", "source": SOURCE}
    meta.update(cfg["meta"])
    kw = kwargs_of(cfg)
    tensors = {f"batch.{i}": b for i, b in enumerate(batches)}
    stats = {}
    if kind == "minmax":
        o = obs_mod.MinMaxObserver(**kw)
    elif kind == "moving_average_minmax":
        o = obs_mod.MovingAverageMinMaxObserver(averaging_constant=averaging_constant, **kw)
        meta["averaging_constant"] = repr(averaging_constant)
    elif kind == "per_channel_minmax":
        o = obs_mod.PerChannelMinMaxObserver(ch_axis=ch_axis, **kw)
    elif kind == "moving_average_per_channel_minmax":
        o = obs_mod.MovingAveragePerChannelMinMaxObserver(
            averaging_constant=averaging_constant, ch_axis=ch_axis, **kw)
        meta["averaging_constant"] = repr(averaging_constant)
    elif kind in ("histogram", "percentile"):
        o = obs_mod.HistogramObserver(bins=bins, **kw)
        meta["bins"] = str(bins)
    elif kind == "entropy":
        o = EntropyRef(bins)
        meta["bins"] = str(bins)
    else:
        raise ValueError(kind)
    if ch_axis is not None:
        meta["ch_axis"] = str(ch_axis)
    if percentile is not None:
        meta["percentile"] = repr(percentile)
    for b in batches:
        o.forward(b)
    stats["min_val"] = o.min_val.clone()
    stats["max_val"] = o.max_val.clone()
    if kind in ("histogram", "percentile"):
        stats["histogram"] = o.histogram.clone()
    if kind == "entropy":
        stats["histogram"] = o.hist.clone()

    if kind == "percentile":
        if o.min_val.item() == math.inf and o.max_val.item() == -math.inf:
            scale, zp = torch.tensor([1.0]), torch.tensor([0])
        else:
            new_min, new_max = percentile_range(o.histogram, o.min_val, o.max_val, percentile)
            scale, zp = calc_qparams(new_min, new_max, cfg)
    elif kind == "entropy":
        if o.min_val.item() == math.inf and o.max_val.item() == -math.inf:
            scale, zp = torch.tensor([1.0]), torch.tensor([0])
        else:
            qmin, qmax = int(cfg["meta"]["qmin"]), int(cfg["meta"]["qmax"])
            nq = min(max((qmax - qmin + 1) // 2, 1), bins)
            i = entropy_threshold_index(o.hist, nq)
            amax = torch.max(-o.min_val, o.max_val)
            t = amax if i == bins else (amax / bins) * i
            lo = torch.max(o.min_val, -t)
            hi = torch.min(o.max_val, t)
            meta["entropy_bins_kept"] = str(i)
            scale, zp = calc_qparams(lo, hi, cfg)
    else:
        scale, zp = o.calculate_qparams()
    tensors["expected.scale"] = scale.to(torch.float32).reshape(-1)
    if cfg["torch_qscheme"] == torch.per_channel_affine_float_qparams:
        tensors["expected.float_zero_point"] = zp.to(torch.float32).reshape(-1)
    else:
        tensors["expected.zero_point"] = zp.to(torch.int64).reshape(-1)
    for k, v in stats.items():
        tensors[f"expected.{k}"] = v
    return tensors, meta


def stateless_case(name, kind, batches, note, scale=None, zero_point=None):
    meta = {"kind": kind, "note": note, "batches": str(len(batches)), "source": SOURCE,
            "dtype": "u8", "qmin": "0", "qmax": "255", "qscheme": "per_tensor_affine"}
    tensors = {f"batch.{i}": b for i, b in enumerate(batches)}
    if kind == "fixed_qparams":
        o = obs_mod.FixedQParamsObserver(scale=scale, zero_point=zero_point, dtype=torch.quint8,
                                         quant_min=0, quant_max=255)
        for b in batches:
            o(b)
        s, zp = o.calculate_qparams()
        meta["scale"], meta["zero_point"] = repr(scale), str(zero_point)
        meta["expect"] = "ok"
        tensors["expected.scale"] = s.reshape(-1)
        tensors["expected.zero_point"] = zp.to(torch.int64).reshape(-1)
    else:
        o = obs_mod.PlaceholderObserver(dtype=torch.uint8, quant_min=0, quant_max=255, is_dynamic=True)
        for b in batches:
            o(b)
        try:
            o.calculate_qparams()
            meta["expect"] = "ok"
        except Exception:  # noqa: BLE001 - PyTorch raises a bare Exception here
            meta["expect"] = "error"
    return tensors, meta


def define_cases():
    g = gen(1)
    # --- minmax -------------------------------------------------------------------------------
    grow = [randn(g, 4, 64, scale=s, shift=o) for s, o in ((0.5, 0.1), (1.0, -0.3), (2.0, 0.7))]
    for name, cfg in (("i8_affine", I8A), ("i8_sym127", I8S), ("i8_sym128", I8S128), ("u8_affine", U8A),
                      ("u8_sym_custom", U8S), ("u8_sym_default", U8S_DEFAULT), ("f32_eps", I8A_F32EPS),
                      ("reduce_range", I8A_REDUCED), ("i16_affine", I16A), ("i32_sym", I32S)):
        case(f"minmax_{name}", "minmax", cfg, grow, f"three growing normal batches, {name}")
    relu = [torch.relu(randn(g, 3, 100, scale=3.0)) for _ in range(2)]
    case("minmax_relu_u8", "minmax", U8A, relu, "non-negative (post-ReLU) data")
    case("minmax_relu_i8", "minmax", I8A, relu, "non-negative data, int8 affine")
    neg = [-torch.rand(2, 50, generator=g) * 5 - 1]
    case("minmax_all_negative", "minmax", I8A, neg, "strictly negative data")
    case("minmax_tiny", "minmax", I8A, [randn(g, 64, scale=1e-6)], "range below eps·255: scale = eps")
    case("minmax_tiny_sym", "minmax", I8S, [randn(g, 64, scale=3e-7)], "symmetric, scale = eps")
    case("minmax_constant", "minmax", I8A, [torch.full((5, 5), 0.37)] * 2, "a constant batch")
    case("minmax_zeros", "minmax", I8A, [torch.zeros(10)], "all zeros")
    case("minmax_empty_batch", "minmax", I8A, [randn(g, 7), torch.zeros(0, 3), randn(g, 5, scale=3.0)],
         "an empty batch is skipped")
    case("minmax_never_observed", "minmax", I8A, [], "no batch: scale 1.0, zero point 0")
    case("minmax_only_empty", "minmax", I8A, [torch.zeros(0)], "only an empty batch")
    case("minmax_f64", "minmax", I8A, [randn(g, 30, scale=1.7).double() + 1e-9], "float64 input, cast to f32")
    case("minmax_f16", "minmax", I8S, [randn(g, 30, scale=2.0).half()], "float16 input")
    case("minmax_bf16", "minmax", U8A, [randn(g, 30, scale=2.0).bfloat16()], "bfloat16 input")
    case("minmax_scalar", "minmax", I8A, [torch.tensor(2.5), torch.tensor(-0.5)], "0-dim batches")
    case("minmax_inf", "minmax", I8A, [torch.tensor([1.0, float("inf"), -2.0])], "+inf reaches max")
    case("minmax_inf_both", "minmax", I8S, [torch.tensor([float("-inf"), 1.0, float("inf")])],
         "infinite range, symmetric")
    case("minmax_large", "minmax", I8A, [randn(g, 50, scale=3e4)], "large magnitudes")
    # --- moving average -----------------------------------------------------------------------
    seq = [randn(g, 8, 32, scale=s, shift=o) for s, o in ((1.0, 0.0), (1.5, 0.2), (0.7, -0.4), (3.0, 0.1), (1.1, 0))]
    case("ma_i8_affine", "moving_average_minmax", I8A, seq, "EMA c=0.01", averaging_constant=0.01)
    case("ma_i8_sym", "moving_average_minmax", I8S, seq, "EMA c=0.01, symmetric", averaging_constant=0.01)
    case("ma_c_third", "moving_average_minmax", U8A, seq, "EMA c=1/3 (inexact in f32)",
         averaging_constant=1.0 / 3.0)
    case("ma_c_one", "moving_average_minmax", I8A, seq, "EMA c=1: last batch", averaging_constant=1.0)
    case("ma_with_empty", "moving_average_minmax", I8A, [torch.zeros(0)] + seq[:2], "leading empty batch",
         averaging_constant=0.01)
    case("ma_never_observed", "moving_average_minmax", I8A, [], "no batch", averaging_constant=0.01)
    # --- per-channel ----------------------------------------------------------------------------
    w = randn(g, 8, 4, 3, 3) * torch.linspace(0.01, 2.0, 8).reshape(8, 1, 1, 1)
    w[3] = 0.0  # an all-zero channel
    w[5] = w[5] * 1e-6  # a tiny channel
    case("pc_sym_axis0", "per_channel_minmax", PC_I8S, [w], "conv weight, int8 [-127,127]", ch_axis=0)
    case("pc_sym128_axis0", "per_channel_minmax", PC_I8S128, [w], "conv weight, int8 [-128,127]", ch_axis=0)
    case("pc_affine_axis0", "per_channel_minmax", PC_I8A, [w], "conv weight, affine", ch_axis=0)
    acts = [randn(g, 2, 6, 5, scale=s, shift=0.3) for s in (1.0, 2.0, 0.5)]
    case("pc_sym_axis1", "per_channel_minmax", PC_I8S, acts, "three batches, channels on axis 1", ch_axis=1)
    case("pc_u8_affine_axis1", "per_channel_minmax", PC_U8A, acts, "uint8 affine, axis 1", ch_axis=1)
    case("pc_affine_axis2", "per_channel_minmax", PC_I8A, acts, "axis 2 (swap with 0)", ch_axis=2)
    emb = randn(g, 10, 16, scale=0.5)
    emb[2] = 0.25  # constant row: float-qparams scale ≤ eps → 1.0
    emb[7] = emb[7] * 1e-5
    emb[9] = emb[9].abs() + 1.0  # strictly positive row
    case("pc_float_qparams", "per_channel_minmax", PC_FLOAT, [emb], "embedding table, float zero points",
         ch_axis=0)
    case("pc_float_qparams_axis1", "per_channel_minmax", PC_FLOAT, [emb], "float zero points, axis 1",
         ch_axis=1)
    case("pc_never_observed", "per_channel_minmax", PC_I8S, [], "no batch: one scale 1.0", ch_axis=0)
    case("pc_bf16", "per_channel_minmax", PC_I8S, [w.bfloat16()], "bfloat16 weight", ch_axis=0)
    case("mapc_sym_axis0", "moving_average_per_channel_minmax", PC_I8S, [w, w * 1.5, w * 0.25],
         "per-channel EMA", ch_axis=0, averaging_constant=0.01)
    case("mapc_affine_axis1", "moving_average_per_channel_minmax", PC_I8A, acts, "per-channel EMA, axis 1",
         ch_axis=1, averaging_constant=0.1)
    case("mapc_float_qparams", "moving_average_per_channel_minmax", PC_FLOAT, [emb, emb * 2.0 + 0.1],
         "per-channel EMA, float zero points", ch_axis=0, averaging_constant=0.3)
    # --- histogram --------------------------------------------------------------------------------
    B = 2048
    case("hist_single_i8", "histogram", I8A, [randn(g, 4096)], "one normal batch", bins=B)
    growing = [randn(g, 2048, scale=s, shift=o) for s, o in ((0.5, 0.0), (1.0, 0.2), (2.0, -0.5), (4.0, 1.0))]
    case("hist_growing", "histogram", I8A, growing, "ranges grow every batch: upsampling merges", bins=B)
    case("hist_growing_sym", "histogram", I8S, growing, "growing, symmetric [-127,127]", bins=B)
    case("hist_growing_sym128", "histogram", I8S128, growing, "growing, symmetric [-128,127]", bins=B)
    within = [randn(g, 2048, scale=3.0), randn(g, 2048, scale=0.3), randn(g, 2048, scale=0.2)]
    case("hist_within", "histogram", I8A, within, "later batches inside the range: plain sums", bins=B)
    mixed = [randn(g, 1024, scale=1.0), randn(g, 1024, scale=0.5), randn(g, 1024, scale=2.5),
             randn(g, 1024, scale=0.1), torch.rand(1024, generator=g) * 9 - 1]
    case("hist_mixed", "histogram", I8A, mixed, "grow, stay, grow, stay, grow one side", bins=B)
    case("hist_relu_u8", "histogram", U8A, [torch.relu(randn(g, 4096, scale=2.0)) for _ in range(3)],
         "post-ReLU activations, uint8", bins=B)
    heavy = randn(g, 8192, scale=0.2)
    heavy[:8] = torch.tensor([25.0, -20.0, 18.0, 30.0, -7.0, 12.0, 9.0, -11.0])
    case("hist_outliers", "histogram", I8A, [heavy], "rare outliers: the search clips them", bins=B)
    bimodal = torch.cat([randn(g, 3000, scale=0.1, shift=-2.0), randn(g, 1000, scale=0.3, shift=3.0)])
    case("hist_bimodal", "histogram", I8A, [bimodal], "two separated modes", bins=B)
    case("hist_constant_first", "histogram", I8A, [torch.full((100,), 0.75), randn(g, 1000)],
         "a constant batch, then a real one (single-value merge)", bins=B)
    case("hist_constant_only", "histogram", I8A, [torch.full((64,), -1.25), torch.full((32,), -1.25)],
         "constant batches only (histc ±1 range)", bins=B)
    case("hist_zeros_then_data", "histogram", I8A, [torch.zeros(50), randn(g, 500, scale=2.0)],
         "zeros then data", bins=B)
    inf_b = randn(g, 1000)
    inf_b[::97] = float("inf")
    inf_b[5] = float("-inf")
    case("hist_inf", "histogram", I8A, [inf_b, randn(g, 1000, scale=2.0)], "±inf elements are dropped",
         bins=B)
    case("hist_all_inf", "histogram", I8A,
         [torch.tensor([float("inf"), float("-inf")]), randn(g, 700), torch.full((3,), float("inf"))],
         "all-inf batches are skipped entirely", bins=B)
    case("hist_tiny", "histogram", I8A, [randn(g, 2000, scale=1e-7)], "tiny range: eps", bins=B)
    case("hist_tiny_growing", "histogram", I8S, [randn(g, 500, scale=1e-6), randn(g, 500, scale=1e-5)],
         "tiny growing range, symmetric", bins=B)
    case("hist_i16", "histogram", I16A, [randn(g, 3000)], "int16: 65536 destination bins", bins=B)
    case("hist_never_observed", "histogram", I8A, [], "no batch", bins=B)
    case("hist_empty_batches", "histogram", I8A, [torch.zeros(0), randn(g, 300), torch.zeros(0, 4)],
         "empty batches skipped", bins=B)
    many = [randn(g, 256, scale=float(torch.rand(1, generator=g)) * 3 + 0.1,
                  shift=float(torch.randn(1, generator=g))) for _ in range(12)]
    case("hist_many_batches", "histogram", I8A, many, "twelve batches of random range", bins=B)
    case("hist_bins_256", "histogram", I8A, growing[:3], "256 bins", bins=256)
    case("hist_bins_100", "histogram", U8A, [torch.rand(800, generator=g) * 4, torch.rand(800, generator=g) * 6],
         "100 bins (not a multiple of the vector width)", bins=100)
    case("hist_small_batch", "histogram", I8A, [torch.tensor([0.5, -0.25, 3.0]), torch.tensor([-4.0, 1.0])],
         "a handful of values", bins=B)
    case("hist_f32_eps", "histogram", I8A_F32EPS, [randn(g, 1000, scale=0.01)], "default f32 eps", bins=B)
    # --- stateless ------------------------------------------------------------------------------
    # --- percentile / entropy (qc definitions; stats from PyTorch's histogram machinery) -----------
    case("pct_i8_affine", "percentile", I8A, [heavy], "99.99th percentile, affine", bins=B, percentile=99.99)
    case("pct_sym_999", "percentile", I8S, growing, "99.9th percentile of growing batches, symmetric",
         bins=B, percentile=99.9)
    case("pct_u8_100", "percentile", U8A, [torch.relu(randn(g, 3000, scale=2.0))], "p = 100: full range",
         bins=B, percentile=100.0)
    case("pct_never_observed", "percentile", I8A, [], "no batch", bins=B, percentile=99.99)
    case("ent_i8_sym", "entropy", I8S, [heavy], "KL threshold, symmetric", bins=B)
    case("ent_i8_affine_growing", "entropy", I8A, growing[:3], "KL threshold, growing batches, affine",
         bins=B)
    case("ent_relu_u8", "entropy", U8A, [torch.relu(randn(g, 4000, scale=1.5)),
                                         torch.relu(randn(g, 4000, scale=1.0))], "post-ReLU, uint8", bins=B)
    case("ent_zeros_first", "entropy", I8S, [torch.zeros(20), randn(g, 2000)], "all-zero first batch",
         bins=B)
    case("ent_never_observed", "entropy", I8S, [], "no batch", bins=B)


def main():
    global OUT
    if len(sys.argv) > 1:  # an alternative output folder, to compare thread counts or CPU kernels
        OUT = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(OUT, f))
    define_cases()
    written = 0
    for c in CASES:
        tensors, meta = run_case(*c)
        write_safetensors(os.path.join(OUT, f"{c[0]}.safetensors"), tensors, meta)
        written += 1
    g = gen(7)
    stateless = [
        ("fixed_qparams_sigmoid", "fixed_qparams", [randn(g, 10)], "(1/256, 0) for [0,1] outputs", 1.0 / 256, 0),
        ("fixed_qparams_tanh", "fixed_qparams", [randn(g, 10)], "(2/256, 128) for [-1,1] outputs", 2.0 / 256, 128),
        ("fixed_qparams_inexact", "fixed_qparams", [], "scale 0.1 rounds to f32", 0.1, 3),
        ("placeholder_dynamic", "placeholder", [randn(g, 10)], "dynamic: qparams raise", None, None),
    ]
    for name, kind, batches, note, scale, zp in stateless:
        tensors, meta = stateless_case(name, kind, batches, note, scale, zp)
        write_safetensors(os.path.join(OUT, f"{name}.safetensors"), tensors, meta)
        written += 1
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {written} cases to {os.path.normpath(OUT)} ({total / 1e6:.2f} MB) from {SOURCE}")


if __name__ == "__main__":
    main()
