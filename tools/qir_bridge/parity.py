"""The parity harness: torchao's PT2E (prepare_pt2e + calibration + convert_pt2e) against qc's
default pipeline, on the models of :mod:`.models`, with the XNNPACK and/or the x86 quantizer.

For each model and quantizer:

1. the model is exported once with ``torch.export.export(..., strict=True)`` and written as
   ``model.qir`` + ``model.safetensors`` (this package's exporter); the calibration batches
   go to ``calib.npz`` (concatenated along axis 0, as qc cuts them back);
2. **PT2E**: ``prepare_pt2e(ep.module(), quantizer)``, one forward per calibration batch,
   ``convert_pt2e`` (default ``fold_quantize=True``); timed together (the export is not).
   Untimed: a second conversion with ``fold_quantize=False`` tells which parameter each
   frozen int tensor quantized (the nodes keep their names), and the calibrated prepared
   module is exported to QIR (observers with their statistics);
3. **qc**: ``qc model.qir --calib calib.npz --quantizer Q -o converted.qir``, timed (the whole
   process: parse, passes, print, write). Untimed: ``-p prepare-pt2e,calibrate`` (the
   observers' statistics) and ``convert,duplicate-dq,port-metadata`` on that (the quantize
   ops before folding), and ``qc run`` of the converted graph on each held-out batch;
4. comparison, as tests/convert_parity.rs does: quantize ops keyed by the float value they
   quantize (PT2E's FX names are the QIR value names; a requantization is a second record of
   the same value), each with scheme, dtype, range, qparams (scales as float32 bits, zero
   points) and the consumers of its dequantize ops. *Quantized edges* are the (value,
   consumer) pairs; *edges that differ* are in one side only. qparams are compared per value,
   int weights per folded parameter, outputs on the held-out batches in LSBs of the output's
   dequantize scale (absolute for a float output), and both against the float model (SQNR).
5. every qparam difference is explained: the statistics each side's observer instance
   collected are compared (min/max as float32 bits, histogram bins), and qc's own convert is
   run on PT2E's statistics (the exported prepared module) — if that reproduces PT2E's qparams
   bit for bit while the statistics differ, the difference is what the observer saw (qc's
   interpreter sums conv/linear in another order than oneDNN/MKL), not how qparams are
   computed. A difference with identical statistics is reported as UNEXPLAINED.

Both sides run single-threaded (``torch.set_num_threads(1)``, ``RAYON_NUM_THREADS=1``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from . import models as M
from ..fileio import QirFunc, read_qir
from .exporter import write_qir

warnings.filterwarnings("ignore")

# Models whose difference from PT2E is a documented PT2E inconsistency (tests/common/pt2e.rs,
# `KNOWN`): reported, not counted as failures.
KNOWN = {
    ("reused_modules_exact", "xnnpack"): "known PT2E inconsistency (tests/common/pt2e.rs KNOWN): a module called "
    "twice shares one weight node, and ExecuTorch's annotators skip a pattern whose weight is already annotated; "
    "qc annotates each call on its own",
}

QUANT_OPS = {"quantize_per_tensor", "quantize_per_channel", "quantize_per_tensor.tensor"}
DEQUANT_OPS = {"dequantize_per_tensor", "dequantize_per_channel", "dequantize_per_tensor.tensor"}
_TORCH_DTYPES = {"int8": "i8", "uint8": "u8", "int16": "i16", "int32": "i32"}


def make_quantizer(name: str):
    if name == "xnnpack":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if name == "x86":
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    raise ValueError(f"unknown quantizer {name!r} (xnnpack, x86)")


def f32_bits(values) -> list[int]:
    return [int(b) for b in np.asarray(values, dtype=np.float64).astype(np.float32).reshape(-1).view(np.uint32)]


@dataclass
class QRec:
    """One quantize op, described the same way for both sides."""

    value: str
    per_channel: bool
    dtype: str
    qmin: int
    qmax: int
    scale_bits: list
    zero_point: list
    consumers: list
    name: str = ""

    def structure(self):
        return (self.per_channel, self.dtype, self.qmin, self.qmax, tuple(self.consumers))

    def qparams(self):
        return (tuple(self.scale_bits), tuple(self.zero_point))


# ---- PT2E -----------------------------------------------------------------------------------


def _attr(module, target):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _is_observer_node(n):
    return n.op == "call_module" and str(n.target).startswith("activation_post_process_")


def pt2e_observers(prepared):
    """Per observed value (observers stripped): the statistics of each observer instance that
    observes it, in graph order, as float32 arrays."""
    out = {}
    for n in prepared.graph.nodes:
        if not _is_observer_node(n):
            continue
        mod = getattr(prepared, n.target)
        src = n.args[0]
        while _is_observer_node(src):
            src = src.args[0]
        stats = {}
        for k in ("min_val", "max_val", "histogram"):
            if hasattr(mod, k):
                stats[k] = getattr(mod, k).detach().to(torch.float32).numpy().reshape(-1).copy()
        out.setdefault(src.name, []).append({"observer": n.target, "class": type(mod).__name__, "stats": stats})
    return out


def pt2e_qrecords(unfolded, converted):
    """QRecs by value, and the frozen int tensors keyed by the value they quantize."""
    QD = torch.ops.quantized_decomposed
    q_targets = {QD.quantize_per_tensor.default: False, QD.quantize_per_channel.default: True}
    dq_targets = {QD.dequantize_per_tensor.default, QD.dequantize_per_channel.default}
    by_name = {n.name: n for n in converted.graph.nodes}
    recs, ints, num_dq = {}, {}, 0
    for n in unfolded.graph.nodes:
        if n.op == "call_function" and n.target in dq_targets:
            num_dq += 1
        if not (n.op == "call_function" and n.target in q_targets):
            continue
        per_channel = q_targets[n.target]
        src = n.args[0]
        while src.op == "call_function" and src.target in dq_targets:
            src = src.args[0].args[0]
        if per_channel:
            _, scale, zp, axis, qmin, qmax, dtype = n.args
            scale_bits = f32_bits(_attr(unfolded, scale.target).numpy())
            zps = [int(z) for z in _attr(unfolded, zp.target)]
        else:
            _, scale, zp, qmin, qmax, dtype = n.args
            scale_bits, zps = f32_bits([scale]), [int(zp)]
        consumers = sorted({("output" if u.op == "output" else u.name) for d in n.users for u in d.users})
        rec = QRec(src.name, per_channel, _TORCH_DTYPES[str(dtype).replace("torch.", "")], qmin, qmax, scale_bits, zps,
                   consumers, n.name)
        recs.setdefault(src.name, []).append(rec)
        m = by_name.get(n.name)
        if m is not None and m.op == "get_attr":
            ints[src.name] = _attr(converted, m.target).detach().numpy()
    return recs, ints, num_dq


def outputs(module, args):
    with torch.no_grad():
        out = module(*args)
    leaves = torch.utils._pytree.tree_flatten(out)[0]
    return [t.detach().to(torch.float32).numpy() for t in leaves]


def run_pt2e(case, ep, quantizer_name, work):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = make_quantizer(quantizer_name)
    t0 = time.perf_counter()
    prepared = prepare_pt2e(ep.module(), quantizer)
    tp = time.perf_counter()
    with torch.no_grad():
        for b in case.calib:
            prepared(*b)
    t1 = time.perf_counter()
    observers = pt2e_observers(prepared)
    write_qir(prepared, os.path.join(work, "pt2e_prepared.qir"), module_name="pt2e_prepared")
    unfolded = convert_pt2e(copy.deepcopy(prepared), fold_quantize=False)
    t2 = time.perf_counter()
    converted = convert_pt2e(prepared)
    t3 = time.perf_counter()
    recs, ints, num_dq = pt2e_qrecords(unfolded, converted)
    outs = [outputs(converted, b) for b in case.heldout]
    return {"time": (t1 - t0) + (t3 - t2), "split": (tp - t0, t1 - tp, t3 - t2), "recs": recs, "ints": ints, "num_dq": num_dq, "observers": observers,
            "outputs": outs}


# ---- qc -------------------------------------------------------------------------------------


class QcError(Exception):
    pass


def qc_cmd(qc, args, env):
    p = subprocess.run([qc, *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise QcError(f"`qc {' '.join(args)}` exited with {p.returncode}:\n{p.stderr.strip()}")
    return p


def qc_qrecords(fn: QirFunc):
    """QRecs by value (pt2e names) of an unfolded converted module, and the quantize op's
    result name per value (the name its folded int tensor keeps)."""
    recs = {}
    for op in fn.ops:
        if op.name not in QUANT_OPS:
            continue
        v = op.operands[0]
        while True:
            dq = fn.producer.get(v)
            if dq is None or dq.name not in DEQUANT_OPS:
                break
            q = fn.producer.get(dq.operands[0])
            if q is None or q.name not in QUANT_OPS:
                break
            v = q.operands[0]
        per_channel = op.name == "quantize_per_channel"
        if per_channel:
            scale_bits = f32_bits(fn.tensor(op.operands[1]))
            zps = [int(z) for z in fn.tensor(op.operands[2]).reshape(-1)]
        elif op.name == "quantize_per_tensor":
            scale_bits, zps = f32_bits([op.attrs["scale"]]), [int(op.attrs["zero_point"])]
        else:
            scale_bits, zps = [], []  # dynamic
        consumers = set()
        for d in fn.users.get(op.results[0], []):
            if d == "output" or d.name not in DEQUANT_OPS:
                continue
            for u in fn.users.get(d.results[0], []):
                consumers.add("output" if u == "output" else u.results[0])
        name = "_tensor_constant_0" if v == "_tensor_constant" else v
        recs.setdefault(name, []).append(
            QRec(name, per_channel, str(op.attrs["dtype"]), int(op.attrs["qmin"]), int(op.attrs["qmax"]), scale_bits, zps,
                 sorted(consumers), op.results[0]))
    return recs


def qc_observers(fn: QirFunc):
    """Per observed value: the statistics of the instance of each observer observing it."""
    first = {}
    for op in fn.ops:
        if op.name == "observer" and "stats" in op.attrs:
            first.setdefault(op.attrs.get("instance", 0), op.attrs["stats"])
    out = {}
    for op in fn.ops:
        if op.name != "observer":
            continue
        v = op.operands[0]
        while fn.producer.get(v) is not None and fn.producer[v].name == "observer":
            v = fn.producer[v].operands[0]
        stats = {k: np.asarray(s, dtype=np.float64).astype(np.float32).reshape(-1)
                 for k, s in first.get(op.attrs.get("instance", 0), {}).items()}
        name = "_tensor_constant_0" if v == "_tensor_constant" else v
        out.setdefault(name, []).append({"observer": op.results[0], "stats": stats})
    return out


def run_qc(qc, case, quantizer_name, work, input_names):
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    model, calib = os.path.join(work, "model.qir"), os.path.join(work, "calib.npz")
    q = ["--quantizer", quantizer_name]
    t0 = time.perf_counter()
    qc_cmd(qc, [model, "--calib", calib, *q, "-o", os.path.join(work, f"qc_{quantizer_name}.qir")], env)
    elapsed = time.perf_counter() - t0
    cal = os.path.join(work, f"qc_{quantizer_name}_calibrated.qir")
    unf = os.path.join(work, f"qc_{quantizer_name}_unfolded.qir")
    qc_cmd(qc, [model, "-p", "prepare-pt2e,calibrate", "--calib", calib, *q, "-o", cal], env)
    qc_cmd(qc, [cal, "-p", "convert,duplicate-dq,port-metadata", "-o", unf], env)
    folded = read_qir(os.path.join(work, f"qc_{quantizer_name}.qir"))
    unfolded = read_qir(unf)
    recs = qc_qrecords(unfolded)
    ints = {}
    for v, lst in recs.items():
        for r in lst:
            op = folded.producer.get(r.name)
            if op is not None and op.name in ("const", "weight"):
                ints[v] = folded.tensor(r.name)
    num_dq = sum(1 for op in folded.ops if op.name in DEQUANT_OPS)
    outs = []
    for i, b in enumerate(case.heldout):
        path = os.path.join(work, f"heldout_{i}.npz")
        np.savez(path, **{k: t.numpy() for k, t in zip(input_names, b)})
        out_path = os.path.join(work, f"qc_{quantizer_name}_out_{i}.npz")
        qc_cmd(qc, ["run", os.path.join(work, f"qc_{quantizer_name}.qir"), "--input", path, "-o", out_path], env)
        with np.load(out_path) as z:
            outs.append([z[r] for r in folded.returns])
    scales = []
    for r in folded.returns:
        op = folded.producer.get(r)
        scales.append(op.attrs["scale"] if op is not None and op.name == "dequantize_per_tensor" else None)
    observers = qc_observers(read_qir(cal))
    # qc's convert on PT2E's statistics (the exported calibrated prepared module).
    pt_unf = os.path.join(work, f"pt2e_stats_qc_{quantizer_name}.qir")
    qc_cmd(qc, [os.path.join(work, "pt2e_prepared.qir"), "-p", "convert,duplicate-dq,port-metadata", "-o", pt_unf], env)
    on_pt2e_stats = qc_qrecords(read_qir(pt_unf))
    return {"time": elapsed, "recs": recs, "ints": ints, "num_dq": num_dq, "outputs": outs, "scales": scales,
            "observers": observers, "on_pt2e_stats": on_pt2e_stats}


# ---- comparison -----------------------------------------------------------------------------


def sqnr_db(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    noise = float(np.sum((ref - got) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref**2)) / noise)


def _ulps(a, b):
    ia = np.asarray(a, np.float32).view(np.int32).astype(np.int64)
    ib = np.asarray(b, np.float32).view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return np.abs(ia - ib)


def explain(value, pt, qc):
    """Why `value`'s qparams differ: compare what each side's observers collected."""
    po, qo = pt["observers"].get(value, []), qc["observers"].get(value, [])
    same_math = qc["on_pt2e_stats"].get(value)
    math_ok = same_math is not None and sorted(r.qparams() for r in same_math) == sorted(
        r.qparams() for r in pt["recs"][value])
    if not po or not qo:
        return "UNEXPLAINED: no observer of this value on " + ("PT2E" if not po else "qc"), False
    parts, differ = [], False
    for a, b in zip(po, qo):
        sa, sb = a["stats"], b["stats"]
        for k in ("min_val", "max_val"):
            if k in sa and k in sb and sa[k].shape == sb[k].shape and sa[k].size:
                u = _ulps(sa[k], sb[k])
                if u.max() > 0:
                    differ = True
                    parts.append(f"{k} differs by {int(u.max())} ulp" + (f" in {int((u > 0).sum())}/{u.size} channels" if u.size > 1 else ""))
        if "histogram" in sa and "histogram" in sb and sa["histogram"].shape == sb["histogram"].shape:
            d = np.abs(sa["histogram"].astype(np.float64) - sb["histogram"].astype(np.float64))
            if d.max() > 0:
                differ = True
                parts.append(f"histogram differs in {int((d > 0).sum())} bins (total |Δ| {d.sum():.3g} of {sa['histogram'].sum():.0f})")
    math_text = ("qc's convert on PT2E's statistics gives PT2E's qparams" if math_ok
                 else "qc's convert on PT2E's statistics does NOT give PT2E's qparams")
    if differ and math_ok:
        return "observer saw different tensors: " + "; ".join(parts) + f" ({math_text})", True
    if differ:
        return "observer saw different tensors: " + "; ".join(parts) + f" — but {math_text}: UNEXPLAINED", False
    return f"UNEXPLAINED: identical statistics ({math_text})", False


def _s(rec):
    scales = np.array(rec.scale_bits, np.uint32).view(np.float32)
    return str(scales[0]) if len(scales) == 1 else f"[{len(scales)} channels]"


def warm_up(quantizer_name):
    """One untimed prepare/calibrate/convert of a tiny model, so that the timed runs do not
    pay for first-call costs (imports, pattern compilation)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
    x = torch.randn(1, 3, 4, 4)
    p = prepare_pt2e(torch.export.export(m, (x,), strict=True).module(), make_quantizer(quantizer_name))
    with torch.no_grad():
        p(x)
    convert_pt2e(p)(x)


def compare(case, pt, qc):
    r = {"notes": [], "struct_diffs": []}
    pe = {(v, c) for v, lst in pt["recs"].items() for x in lst for c in x.consumers}
    qe = {(v, c) for v, lst in qc["recs"].items() for x in lst for c in x.consumers}
    r["q_ops"] = (sum(map(len, pt["recs"].values())), sum(map(len, qc["recs"].values())))
    r["edges"] = (len(pe), len(qe))
    r["edge_diff"] = sorted(pe ^ qe)
    r["dq_ops"] = (pt["num_dq"], qc["num_dq"])
    values = sorted(set(pt["recs"]) | set(qc["recs"]))
    same_q, explained, unexplained = 0, 0, 0
    for v in values:
        a, b = pt["recs"].get(v), qc["recs"].get(v)
        if a is None or b is None:
            r["struct_diffs"].append(f"`{v}` quantized by {'qc' if a is None else 'PT2E'} only")
            continue
        if sorted(x.structure() for x in a) != sorted(x.structure() for x in b):
            r["struct_diffs"].append(f"`{v}`: PT2E {[x.structure() for x in a]} vs qc {[x.structure() for x in b]}")
        if sorted(x.qparams() for x in a) == sorted(x.qparams() for x in b):
            same_q += 1
        else:
            why, ok = explain(v, pt, qc)
            explained += ok
            unexplained += not ok
            sa = ", ".join(f"{_s(x)}/{x.zero_point[0]}" for x in a)
            sb = ", ".join(f"{_s(x)}/{x.zero_point[0]}" for x in b)
            r["notes"].append(f"`{v}` scale/zp PT2E {sa} vs qc {sb}: {why}")
    r["qparams"] = (same_q, len(values))
    # qc's convert on PT2E's own statistics: must reproduce every PT2E qparam.
    ps = qc["on_pt2e_stats"]
    r["on_pt2e_stats"] = (
        sum(1 for v, a in pt["recs"].items()
            if v in ps and sorted(x.qparams() for x in a) == sorted(x.qparams() for x in ps[v])),
        len(pt["recs"]),
    )
    if r["on_pt2e_stats"][0] != r["on_pt2e_stats"][1]:
        r["notes"].append(f"qc's convert on PT2E's statistics matches PT2E on only {r['on_pt2e_stats'][0]}/{r['on_pt2e_stats'][1]} values")
    r["explained"], r["unexplained"] = explained, unexplained
    wkeys = sorted(set(pt["ints"]) | set(qc["ints"]))
    same_w = 0
    for k in wkeys:
        a, b = pt["ints"].get(k), qc["ints"].get(k)
        if a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b):
            same_w += 1
        else:
            r["notes"].append(f"int weight `{k}` differs" + ("" if a is not None and b is not None else " (folded on one side only)"))
    r["int_weights"] = (same_w, len(wkeys))
    # Held-out outputs.
    n_out = len(pt["outputs"][0])
    float_outs = [outputs(case.model, b) for b in case.heldout]
    max_lsb, max_abs, float_out = 0.0, 0.0, False
    sq_pt, sq_qc = [], []
    for i in range(n_out):
        f = np.concatenate([o[i].reshape(-1) for o in float_outs])
        p = np.concatenate([o[i].reshape(-1) for o in pt["outputs"]])
        q = np.concatenate([o[i].reshape(-1) for o in qc["outputs"]])
        diff = float(np.max(np.abs(p.astype(np.float64) - q.astype(np.float64))))
        scale = qc["scales"][i] if i < len(qc["scales"]) else None
        if scale:
            max_lsb = max(max_lsb, diff / scale)
        else:
            float_out = True
            max_abs = max(max_abs, diff)
        sq_pt.append(sqnr_db(f, p))
        sq_qc.append(sqnr_db(f, q))
    r["max_lsb"], r["max_abs_float"], r["float_out"] = max_lsb, max_abs, float_out
    r["sqnr"] = (min(sq_pt), min(sq_qc))
    if case.labels is not None:
        lab = case.labels
        top = lambda outs: float(np.mean(np.concatenate([o[0].argmax(-1) for o in outs]) == lab))  # noqa: E731
        r["top1"] = (top(float_outs), top(pt["outputs"]), top(qc["outputs"]))
    r["time"] = (pt["time"], qc["time"])
    r["pt2e_split"] = pt["split"]
    return r


# ---- driver ---------------------------------------------------------------------------------


def fmt_row(model, q, r):
    if "error" in r:
        return f"| {model} | {q} | — | — | — | — | — | — | — | — | {r['error_short']} |"
    out = f"{r['max_lsb']:.2f} LSB" if not r["float_out"] else f"{r['max_abs_float']:.2e} abs (float out)"
    if r["float_out"] and r["max_lsb"]:
        out += f", {r['max_lsb']:.2f} LSB"
    expl = f"{r['explained']} explained" + (f", **{r['unexplained']} unexplained**" if r["unexplained"] else "")
    expl += f"; on PT2E stats {r['on_pt2e_stats'][0]}/{r['on_pt2e_stats'][1]}"
    return (f"| {model} | {q} | {r['q_ops'][0]} / {r['q_ops'][1]} | {r['edges'][0]} / {r['edges'][1]} | "
            f"{len(r['edge_diff'])} | {r['qparams'][0]}/{r['qparams'][1]} ({expl}) | {r['int_weights'][0]}/{r['int_weights'][1]} | "
            f"{out} | {r['sqnr'][0]:.2f} / {r['sqnr'][1]:.2f} | {r['time'][0]:.2f} / {r['time'][1]:.2f} | "
            + ("" if "top1" not in r else f"top-1 float {r['top1'][0]:.1%}, PT2E {r['top1'][1]:.1%}, qc {r['top1'][2]:.1%}")
            + ("known PT2E inconsistency (see tests/common/pt2e.rs)" if "known" in r else "")
            + " |")


HEADER = ("| model | quantizer | quantize ops PT2E / qc | quantized edges PT2E / qc | edges that differ | "
          "qparams bit-identical | int weights bit-identical | max output diff (held-out) | SQNR vs float PT2E / qc (dB) | "
          "wall time PT2E / qc (s) | notes |\n|---|---|---|---|---|---|---|---|---|---|---|")


def detail(model, q, r):
    lines = [f"{model} ({q}):"]
    if "error" in r:
        return lines + ["  " + l for l in r["error"].splitlines()]
    lines.append(f"  quantize ops PT2E {r['q_ops'][0]}, qc {r['q_ops'][1]}; dequantize ops PT2E {r['dq_ops'][0]}, qc {r['dq_ops'][1]}")
    lines.append(f"  quantized edges PT2E {r['edges'][0]}, qc {r['edges'][1]}; differ: {len(r['edge_diff'])}")
    for v, c in r["edge_diff"][:20]:
        lines.append(f"    edge {v} -> {c}")
    for s in r["struct_diffs"][:20]:
        lines.append(f"    {s}")
    lines.append(f"  qparams bit-identical {r['qparams'][0]}/{r['qparams'][1]}; int weights {r['int_weights'][0]}/{r['int_weights'][1]}; "
                 f"qc's convert on PT2E's statistics reproduces {r['on_pt2e_stats'][0]}/{r['on_pt2e_stats'][1]} of PT2E's qparams")
    lines.append(f"  max output diff {r['max_lsb']:.3f} LSB" + (f", float outputs {r['max_abs_float']:.3e} abs" if r["float_out"] else ""))
    lines.append(f"  SQNR vs float: PT2E {r['sqnr'][0]:.2f} dB, qc {r['sqnr'][1]:.2f} dB")
    if "top1" in r:
        lines.append(f"  top-1: float {r['top1'][0]:.2%}, PT2E {r['top1'][1]:.2%}, qc {r['top1'][2]:.2%}")
    sp = r["pt2e_split"]
    lines.append(f"  wall time: PT2E {r['time'][0]:.3f} s (prepare {sp[0]:.3f}, calibrate {sp[1]:.3f}, convert {sp[2]:.3f}), "
                 f"qc {r['time'][1]:.3f} s (whole process)")
    lines += ["  " + n for n in r["notes"]]
    return lines


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tools.qir_bridge parity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="small", help=f"comma-separated, or `small`, `large`, `all` ({', '.join(M.MODELS)})")
    ap.add_argument("--quantizer", default="both", choices=["xnnpack", "x86", "both"])
    ap.add_argument("--qc", default=os.path.join(M.ROOT, "target", "release", "qc"), help="the qc binary")
    ap.add_argument("--out", default=os.path.join(M.ROOT, "target", "qc-models"), help="work directory (exports, qc outputs)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = {"small": M.SMALL, "large": M.LARGE, "all": M.MODELS}.get(args.models, args.models.split(","))
    quantizers = ["xnnpack", "x86"] if args.quantizer == "both" else [args.quantizer]
    if not os.path.exists(args.qc):
        sys.exit(f"qc binary not found at {args.qc} (cargo build --release, or --qc PATH)")
    results = {}
    for q in quantizers:
        warm_up(q)
    for name in names:
        case = M.build(name)
        work = os.path.join(args.out, name)
        os.makedirs(work, exist_ok=True)
        ep = torch.export.export(case.model, case.example, strict=True)
        write_qir(ep, os.path.join(work, "model.qir"), module_name=name)
        input_names = [n.name for n in ep.module().graph.nodes if n.op == "placeholder"]
        np.savez(os.path.join(work, "calib.npz"),
                 **{k: torch.cat([b[i] for b in case.calib]).numpy() for i, k in enumerate(input_names)})
        for q in quantizers:
            qwork = os.path.join(work, q)
            os.makedirs(qwork, exist_ok=True)
            for f in ("model.qir", "model.safetensors", "calib.npz"):
                shutil.copyfile(os.path.join(work, f), os.path.join(qwork, f))
            try:
                pt = run_pt2e(case, ep, q, qwork)
                qc = run_qc(args.qc, case, q, qwork, input_names)
                r = compare(case, pt, qc)
            except QcError as e:
                r = {"error": str(e), "error_short": "qc failed: " + str(e).splitlines()[-1][:120]}
            except Exception as e:  # noqa: BLE001 - reported in the table
                r = {"error": f"{type(e).__name__}: {e}", "error_short": f"{type(e).__name__}: {str(e)[:120]}"}
            if (name, q) in KNOWN and "error" not in r:
                r["known"] = KNOWN[(name, q)]
                r["notes"].insert(0, "KNOWN: " + KNOWN[(name, q)])
            results[(name, q)] = r
            print("\n".join(detail(name, q, r)), flush=True)
    print()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs), "
          f"Python {platform.python_version()}, torch {torch.__version__}, torchao {__import__('torchao').__version__}, "
          f"executorch {_version('executorch')}, torchvision {_version('torchvision')}; both sides single-threaded")
    print(HEADER)
    for (name, q), r in results.items():
        print(fmt_row(name, q, r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{n}/{q}": {k: v for k, v in r.items() if k != "error_short"} for (n, q), r in results.items()},
                      f, indent=1, default=str)
    bad = [k for k, r in results.items() if "known" not in r and (
        "error" in r or r.get("unexplained") or r["on_pt2e_stats"][0] != r["on_pt2e_stats"][1] or r.get("edge_diff") or r.get("struct_diffs")
        or (r.get("int_weights") and r["int_weights"][0] != r["int_weights"][1]))]
    print(f"\n{len(results) - len(bad)}/{len(results)} green (every difference explained or known)"
          + (": failing " + ", ".join(f"{n}/{q}" for n, q in bad) if bad else ""))
    return 1 if bad else 0


def _version(pkg):
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:  # noqa: BLE001
        return "n/a"
