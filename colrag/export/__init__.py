"""Checkpoint → ONNX bundle exporters. Needs the `export` extra (torch, transformers, onnx);
quantizing an exported fp32 bundle (`quantize_bundle`) needs only onnx."""

from __future__ import annotations

import importlib.util
import os


def require_export_deps() -> None:
    """Fail with an install hint when the optional export dependencies are missing."""
    from ..errors import ColragError

    # find_spec looks the packages up without importing them: importing torch + transformers
    # takes ~10 s, too long to wait for an error that says they are missing.
    missing = [mod for mod in ("torch", "transformers", "onnx", "onnxscript") if importlib.util.find_spec(mod) is None]
    if missing:
        raise ColragError(
            f"exporting needs {', '.join(missing)} (only to convert checkpoints; indexing and asking never do): "
            "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && pip install 'colrag[export]'"
        )


def quantize_bundle(
    src: str | os.PathLike, dst: str | os.PathLike, scheme: str = "int8", *, force: bool = False
) -> dict:
    """Quantize the fp32 bundle at `src` into `dst`: the export's own quantize step (colrag.export.quantize_step)."""
    from .quantize_step import quantize_bundle as run

    return run(src, dst, scheme, force=force)
