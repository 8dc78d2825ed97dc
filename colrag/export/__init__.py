"""Checkpoint → ONNX bundle exporters. Needs the `export` extra (torch, transformers, onnx)."""

from __future__ import annotations


def require_export_deps() -> None:
    """Fail with an install hint when the optional export dependencies are missing."""
    from ..errors import ColragError

    missing = []
    for mod in ("torch", "transformers", "onnx", "onnxscript"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ColragError(
            f"exporting needs {', '.join(missing)}: pip install 'colrag[export]' (torch==2.13.0 is the CPU wheel)"
        )
