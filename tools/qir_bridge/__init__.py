"""qir_bridge: bring PyTorch models into qc.

* :func:`export` — ``torch.export`` a model (or take an ``ExportedProgram`` / PT2E
  ``GraphModule``) and write ``model.qir`` + ``model.safetensors`` (see :mod:`.exporter`);
* ``python -m tools.qir_bridge export ...`` — the same from the command line;
* ``python -m tools.qir_bridge parity ...`` — torchao's PT2E vs qc on real models
  (see :mod:`.parity` and README.md).
"""

from __future__ import annotations

from .exporter import SUPPORTED, ExportError, export_qir, write_qir

__all__ = ["ExportError", "SUPPORTED", "export", "export_qir", "write_qir"]


def export(model, example_inputs, path: str, *, strict: bool = True, module_name: str | None = None, weights_path=None):
    """Writes ``path`` (QIR) and its weights (``<path without .qir>.safetensors``) for ``model``.

    ``model`` is an ``nn.Module`` (exported here with ``torch.export.export(model,
    example_inputs, strict=strict)``; put it in eval mode first), an ``ExportedProgram``, or a
    ``torch.fx.GraphModule`` such as ``prepare_pt2e`` / ``convert_pt2e`` return (exported as
    is: observers become ``observer`` ops with their statistics, q/dq ops QIR's quantize ops).
    Returns the ``ExportedProgram`` (or the ``GraphModule`` given)."""
    import os

    import torch

    if isinstance(model, (torch.export.ExportedProgram, torch.fx.GraphModule)):
        program = model
    else:
        program = torch.export.export(model, tuple(example_inputs), strict=strict)
    if module_name is None:
        module_name = _module_name(os.path.splitext(os.path.basename(path))[0])
    write_qir(program, path, weights_path, module_name=module_name)
    return program


def _module_name(stem: str) -> str | None:
    import re

    name = re.sub(r"[^A-Za-z0-9_.]", "_", stem)
    return name if name and (name[0].isalpha() or name[0] == "_") else None
