"""A missing export dependency is reported without importing torch, with the CPU-wheel hint."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import importlib.util, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "transformers" else real(name, *a)
from colrag.errors import ColragError
from colrag.export import require_export_deps
try:
    require_export_deps()
except ColragError as exc:
    print(exc)
print("torch imported:", "torch" in sys.modules)
"""


def test_missing_export_dependency_is_named_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60).stdout
    assert "exporting needs transformers" in out
    assert "--index-url https://download.pytorch.org/whl/cpu" in out
    assert "torch imported: False" in out
