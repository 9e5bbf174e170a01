"""Command line: ``python -m tools.qir_bridge {export,parity} ...``, run from the repository
root (``python -m`` puts the current directory on the import path, so ``MODULE:FACTORY`` finds
modules there)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def _factory(spec: str):
    """`MODULE:FACTORY` (a callable returning an nn.Module), or a torchvision model name."""
    if ":" in spec:
        mod, fn = spec.split(":", 1)
        obj = getattr(importlib.import_module(mod), fn)
        import torch

        return obj if isinstance(obj, torch.nn.Module) else obj()
    import torchvision

    return torchvision.models.get_model(spec, weights=None)


def export_main(argv):
    ap = argparse.ArgumentParser(prog="python -m tools.qir_bridge export",
                                 description="Export a PyTorch model to QIR (+ safetensors).")
    ap.add_argument("model", help="MODULE:FACTORY (a callable returning an nn.Module, or an nn.Module), "
                                  "or a torchvision model name (resnet18, mobilenet_v2, ...)")
    ap.add_argument("--input-shape", action="append", required=True,
                    help="shape of an example input, e.g. 1,3,224,224 (repeat for several inputs)")
    ap.add_argument("-o", "--output", required=True, help="the .qir file (weights go beside it, .safetensors)")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building the model and inputs")
    ap.add_argument("--non-strict", action="store_true", help="torch.export with strict=False")
    ap.add_argument("--module-name", help="the QIR module name (default: the output file's stem)")
    args = ap.parse_args(argv)

    import torch

    from . import export

    torch.manual_seed(args.seed)
    model = _factory(args.model)
    if isinstance(model, torch.nn.Module):
        model = model.eval()
    inputs = tuple(torch.randn(*[int(d) for d in s.split(",")]) for s in args.input_shape)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    try:
        export(model, inputs, args.output, strict=not args.non_strict, module_name=args.module_name)
    except Exception as e:
        from .exporter import ExportError

        if isinstance(e, ExportError):
            sys.exit(f"error: {e}")
        raise
    print(f"wrote {args.output}", file=sys.stderr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nsubcommands:\n  export   export a model to QIR\n  parity   PT2E vs qc parity table")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "export":
        return export_main(rest)
    if cmd == "parity":
        from .parity import main as parity_main

        return parity_main(rest)
    sys.exit(f"unknown subcommand {cmd!r} (export, parity)")


if __name__ == "__main__":
    sys.exit(main())
