"""Compatibility shim: the exporter now lives in the `qir_bridge` package (tools/qir_bridge/).

``from qir_export import write_qir, export_qir`` keeps working for the fixture generators
(tools/gen_pt2e_fixtures.py, tools/gen_convert_fixtures.py, tools/train_digits.py), which put
tools/ on ``sys.path``. See tools/qir_bridge/README.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qir_bridge.exporter import SUPPORTED, ExportError, export_qir, write_qir  # noqa: E402,F401

__all__ = ["ExportError", "SUPPORTED", "export_qir", "write_qir"]
