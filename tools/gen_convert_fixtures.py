"""Fixtures for qc's convert pass: what PT2E's `convert_pt2e` makes of the calibrated models.

Usage: /work/venv/bin/python -m tools.gen_convert_fixtures [OUT_DIR]     (default tests/pt2e)

Runs tools/gen_pt2e_fixtures.py's `generate` for every fixture (which rewrites `model.qir`,
`model.safetensors`, `calib.npz`, `expected.json` and `stats.npz` byte for byte as that script
does) and then converts its calibrated prepared module with torchao's
`convert_pt2e(prepared)` (default arguments: `fold_quantize=True`, no reference
representation). A second conversion of a copy with `fold_quantize=False` gives, for every
quantize op that constant folding replaced with a frozen int tensor, the parameter it
quantized: folding keeps the quantize node's name (now a `get_attr _frozen_param<i>`), so
the two graphs are matched by node name (and checked to be otherwise identical). Each
fixture directory gets:

`converted.json`
  `model`, `torch`, `torchao`, `convert` (the call), `heldout_batches`, `num_q`, `num_folded`,
  `num_dq`, `float_outputs_sqnr`, then `qdq` and `dq` (one record a line):
  * `qdq`: every quantize op of the converted graph (`quantize_per_tensor.default|.tensor|
    .tensor2`, `quantize_per_channel.default`), in graph order: `name` (its FX name), `observer`
    (the `activation_post_process_N` of expected.json it replaced, from `meta["from_node"]`),
    `op`, `value` (the FX name of the float value quantized, with observers stripped exactly
    as `observes_value` in expected.json: a requantization — a dq feeding a q — is a second
    record of the same value; checked equal to that observer's `observes_value`),
    `consumers` (sorted FX names of the nodes reading any of its dequantize ops after
    DuplicateDQPass; `output` is the graph output), `qscheme` (`per_tensor` | `per_channel`),
    `dtype`, `qmin`, `qmax`; per tensor: `scale_bits` (the float32 bit pattern of the scale:
    the graph holds a Python double widened from a float32, checked to round-trip) and
    `zero_point`; per channel: `axis`, `scale_bits` and `zero_point` (lists); `folded` (constant
    folding replaced it with a frozen int tensor: it quantized a parameter or constant). The
    qparams are checked equal to the observer's `calculate_qparams()` in expected.json.
    `.tensor` (dynamic) quantize ops would get `scale_bits`/`zero_point` null (none occur).
  * `dq`: every dequantize op after DuplicateDQPass, in graph order: `name`, `observer`,
    `of_value` (the `value` of its quantize op) and sorted `consumers`; `num_dq` is its length.
  * `float_outputs_sqnr`: per graph output, the SQNR in dB of the converted model's output
    against the float model's (the seeded eval-mode `nn.Module`, BN not folded) over all
    held-out batches: `10 log10(sum f^2 / sum (f - c)^2)` in float64.
`int_weights.npz`
  every folded int tensor (torchao's `_frozen_param<i>` buffers), keyed by the `value` of its
  quantize op (the parameter's FX name, e.g. `conv1_weight`; after PT2E's BN folding it is the
  folded weight), with its integer dtype (int8); checked equal to the quantize op of the
  unfolded graph applied to the parameter.
`heldout.npz`
  HELDOUT seeded batches of the export batch size, different from the calibration batches,
  one array per graph input named like it, batches concatenated along axis 0 (as calib.npz;
  multiples of 1/2 in the `_exact` fixtures).
`heldout_expected.npz`
  `float.<i>` and `converted.<i>`: output i of the float model and of the converted model,
  batch by batch, concatenated along axis 0 (float32). The unfolded conversion is checked to
  give bit-identical outputs.

Deterministic: fixed seeds and one thread (set by gen_pt2e_fixtures), sorted npz keys (numpy
writes zip entries with a fixed timestamp).
"""

import copy
import json
import math
import os
import sys

import numpy as np
import torch
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from . import gen_pt2e_fixtures as G
from .fileio import records_json

HELDOUT = 4
QD = torch.ops.quantized_decomposed
# quantize op -> (qscheme, dynamic)
QUANTIZE = {
    QD.quantize_per_tensor.default: ("per_tensor", False),
    QD.quantize_per_tensor.tensor: ("per_tensor", True),
    QD.quantize_per_tensor.tensor2: ("per_tensor", True),
    QD.quantize_per_channel.default: ("per_channel", False),
}
DEQUANTIZE = {
    QD.dequantize_per_tensor.default,
    QD.dequantize_per_tensor.tensor,
    QD.dequantize_per_tensor.tensor2,
    QD.dequantize_per_channel.default,
}


def attr(module, target):
    """The tensor a get_attr target (dotted path) names."""
    for part in target.split("."):
        module = getattr(module, part)
    return module


def is_q(n):
    return n.op == "call_function" and n.target in QUANTIZE


def is_dq(n):
    return n.op == "call_function" and n.target in DEQUANTIZE


def op_name(target):
    return f"{target._schema.name.split('::')[1]}.{target._overloadname}"


def observer_of(n):
    """The observer module a q or dq node replaced (convert records it in `from_node`)."""
    src = n.meta["from_node"][0].name
    assert src.startswith("activation_post_process_"), (n.name, src)
    return src


def heldout(shape, seed, exact):
    """HELDOUT batches unlike the calibration ones (other seed, scales and offsets, mostly
    inside the calibrated ranges); multiples of 1/2 when `exact`."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(HELDOUT):
        scale, offset = 0.6 + 0.4 * i, 0.05 - 0.05 * (i % 3)
        x = torch.randn(*shape, generator=g) * scale + offset
        batches.append((torch.round(x * 2) / 2 if exact else x,))
    return batches


def outputs(module, args):
    with torch.no_grad():
        out = module(*args)
    leaves = torch.utils._pytree.tree_flatten(out)[0]
    assert all(isinstance(t, torch.Tensor) for t in leaves)
    return [t.detach().to(torch.float32).contiguous() for t in leaves]


def sqnr_db(ref, got):
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    noise = float(np.sum((ref - got) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref**2)) / noise)


def f32_scale_bits(scale):
    bits = G.f32_bits(torch.tensor(scale, dtype=torch.float64))[0]
    assert float(np.float32(scale)) == scale, f"scale {scale!r} is not a widened float32"
    return bits


def q_records(unfolded, converted, observers):
    """The quantize records (see the module docstring) and the int tensors folding made,
    keyed by the value quantized."""
    by_name = {n.name: n for n in converted.graph.nodes}
    records, ints = [], {}
    for n in unfolded.graph.nodes:
        if not is_q(n):
            continue
        qscheme, dynamic = QUANTIZE[n.target]
        obs = observer_of(n)
        src = n.args[0]
        while is_dq(src):  # a requantization: quantize(dequantize(quantize(x)))
            src = src.args[0].args[0]
        rec = observers[obs]
        assert src.name == rec["observes_value"], (n.name, src.name, rec["observes_value"])
        # The same node after folding: the quantize op itself, or a get_attr of the int tensor.
        m = by_name[n.name]
        folded = m.op == "get_attr"
        assert folded or m.target == n.target, (n.name, m.op, m.target)
        dqs = list(m.users)
        assert dqs and all(is_dq(u) for u in dqs), (n.name, [u.name for u in dqs])
        r = {"name": n.name, "observer": obs, "op": op_name(n.target), "value": src.name}
        r["consumers"] = sorted({u.name for d in dqs for u in d.users})
        r["qscheme"] = qscheme
        if qscheme == "per_channel":
            _, scale, zp, axis, qmin, qmax, dtype = n.args
            scale, zp = attr(unfolded, scale.target), attr(unfolded, zp.target)
            assert scale.dtype == torch.float32
            r.update(dtype=str(dtype).replace("torch.", ""), qmin=qmin, qmax=qmax, axis=axis)
            r.update(scale_bits=G.f32_bits(scale), zero_point=[int(z) for z in zp])
            assert rec["ch_axis"] == axis
        else:
            _, scale, zp, qmin, qmax, dtype = n.args
            r.update(dtype=str(dtype).replace("torch.", ""), qmin=qmin, qmax=qmax)
            if dynamic:
                r.update(scale_bits=None, zero_point=None)
            else:
                r.update(scale_bits=f32_scale_bits(scale), zero_point=int(zp))
        if not dynamic:
            config = (rec["dtype"], rec["quant_min"], rec["quant_max"])
            assert (r["dtype"], qmin, qmax) == config, (n.name, config)
            bits, zps = r["scale_bits"], r["zero_point"]
            assert (bits if isinstance(bits, list) else [bits]) == rec["scale_bits"], n.name
            assert (zps if isinstance(zps, list) else [zps]) == rec["zero_point"], n.name
        r["folded"] = folded
        if folded:
            assert src.op == "get_attr" and n.args[0] is src, f"{n.name} folded from more than a get_attr"
            t = attr(converted, m.target)
            param = attr(unfolded, src.target)
            args = [attr(unfolded, a.target) if isinstance(a, torch.fx.Node) else a for a in n.args[1:]]
            again = n.target(param, *args)
            assert t.dtype == again.dtype and torch.equal(t, again), f"{n.name}: folded tensor differs"
            assert src.name not in ints, f"{src.name} quantized twice"
            ints[src.name] = t.detach().numpy()
        records.append(r)
    return records, ints


def dq_records(converted, values):
    return [
        {
            "name": n.name,
            "observer": observer_of(n),
            "of_value": values[n.args[0].name],
            "consumers": sorted(u.name for u in n.users),
        }
        for n in converted.graph.nodes
        if is_dq(n)
    ]


def write_heldout(case, name, batches, input_names, models, ints):
    """Runs the held-out `batches` through `models` (float, converted, unfolded), checks that
    both conversions give the same outputs, and writes `heldout.npz`, `heldout_expected.npz` and
    `int_weights.npz` into `case`. Returns the SQNR of each output, converted against float."""
    float_model, converted, unfolded = models
    per_batch = [(outputs(float_model, b), outputs(converted, b), outputs(unfolded, b)) for b in batches]
    for fl, cv, uf in per_batch:
        assert len(fl) == len(cv) and all(torch.equal(a, b) for a, b in zip(cv, uf)), name
    expected, sqnr = {}, []
    for i in range(len(per_batch[0][0])):
        expected[f"float.{i}"] = torch.cat([p[0][i] for p in per_batch]).numpy()
        expected[f"converted.{i}"] = torch.cat([p[1][i] for p in per_batch]).numpy()
        sqnr.append(sqnr_db(expected[f"float.{i}"], expected[f"converted.{i}"]))
    assert all(math.isfinite(s) for s in sqnr), (name, sqnr)  # JSON has no infinity

    held = {k: torch.cat([b[i] for b in batches]).numpy() for i, k in enumerate(input_names)}
    np.savez(os.path.join(case, "heldout.npz"), **dict(sorted(held.items())))
    np.savez_compressed(os.path.join(case, "heldout_expected.npz"), **dict(sorted(expected.items())))
    np.savez_compressed(os.path.join(case, "int_weights.npz"), **dict(sorted(ints.items())))
    return sqnr


def write_converted_json(case, name, convert, details, sqnr, qdq, dq):
    """Writes `converted.json` into `case` and returns its fields: `convert` is the call that
    made the converted model, `details` (how its parameters came about) follow it."""
    doc = {
        "model": name,
        "torch": torch.__version__,
        "torchao": __import__("torchao").__version__,
        "convert": convert,
        **details,
        "heldout_batches": HELDOUT,
        "num_q": len(qdq),
        "num_folded": sum(r["folded"] for r in qdq),
        "num_dq": len(dq),
        "float_outputs_sqnr": sqnr,
        "qdq": qdq,
        "dq": dq,
    }
    with open(os.path.join(case, "converted.json"), "w") as f:
        f.write(records_json(doc, ("qdq", "dq")))
    return doc


def convert_case(name, cls, shape, seed, exact, out_dir, ctx):
    case = os.path.join(out_dir, name)
    with open(os.path.join(case, "expected.json")) as f:
        observers = {r["name"]: r for r in json.load(f)["observers"]}
    float_model = G.build(cls, shape, seed, exact)[0]  # untouched by export and BN folding

    prepared = ctx["prepared"]
    unfolded = convert_pt2e(copy.deepcopy(prepared), fold_quantize=False)
    converted = convert_pt2e(prepared)
    # Folding only turns quantize ops of constants into get_attrs and drops what fed them.
    frozen = {n.name for n in converted.graph.nodes if n.op == "get_attr"}
    kept = [n.name for n in unfolded.graph.nodes if n.op != "get_attr" and not (is_q(n) and n.name in frozen)]
    assert kept == [n.name for n in converted.graph.nodes if n.op != "get_attr"], name

    qdq, ints = q_records(unfolded, converted, observers)
    dq = dq_records(converted, {r["name"]: r["value"] for r in qdq})
    assert len(dq) == sum(1 for n in unfolded.graph.nodes if is_dq(n)), name

    batches = heldout(shape, seed + 3, exact)
    sqnr = write_heldout(case, name, batches, ctx["inputs"], (float_model, converted, unfolded), ints)
    convert = "convert_pt2e(prepared) (fold_quantize=True, use_reference_representation=False)"
    doc = write_converted_json(case, name, convert, {}, sqnr, qdq, dq)
    print(
        f"{name}: {len(qdq)} quantize ops ({doc['num_folded']} folded), {len(dq)} dequantize ops, "
        f"SQNR {', '.join(f'{s:.2f}' for s in sqnr)} dB"
    )


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(G.ROOT, "tests", "pt2e")
    for name, cls, shape, seed, exact in G.cases():
        ctx = G.generate(name, cls, shape, out_dir, seed, exact)
        convert_case(name, cls, shape, seed, exact, out_dir, ctx)


if __name__ == "__main__":
    main()
