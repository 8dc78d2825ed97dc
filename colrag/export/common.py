"""Helpers shared by the retriever and generator exporters (torch side)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

# Files of a checkpoint folder that the runtime needs besides the weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
CONFIG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "generation_config.json", "chat_template.json", "chat_template.jinja")


# -- quiet by default ------------------------------------------------------------------------
# An export runs torch.onnx, onnxscript, transformers and onnxruntime's quantizer, which
# talk a lot: "[torch.onnx] ..." progress lines on stdout, "torchvision is not installed"
# warnings through torch's logging, ~100 INFO lines from onnxscript / onnx_ir (because
# importing onnxruntime's MatMulNBits quantizer calls logging.basicConfig(level=INFO)),
# FutureWarnings from torch.export's pytree, and tqdm bars from transformers. None of it
# is actionable for a user; colrag's own progress lines say what is happening. `verbose`
# lets all of it through (to stderr: stdout is for results).
_FOREIGN_LOGGERS = (
    "onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export", "onnxruntime", "transformers",
)
_FOREIGN_MODULES = r"(torch|transformers|onnxscript|onnx_ir|onnx|copyreg)\b"  # where their warnings are raised
_torch_progress: TextIO | None = None  # where export_graph sends torch.onnx's stdout chatter; None = stderr


@contextlib.contextmanager
def quiet_export(verbose: bool = False) -> Iterator[None]:
    """Silence the libraries an export runs (logs, warnings, progress bars) unless `verbose`."""
    global _torch_progress
    if verbose:
        yield
        return
    with contextlib.suppress(ImportError):  # torch sets its loggers' levels when imported: let it do so first
        import torch  # noqa: F401
    root = logging.getLogger()
    guard = logging.NullHandler()  # a handler on root makes a library's logging.basicConfig() a no-op
    saved = {name: logging.getLogger(name).level for name in ("", *_FOREIGN_LOGGERS)}
    root.addHandler(guard)
    root.setLevel(max(root.level, logging.ERROR))
    for name in _FOREIGN_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    bars = _transformers_progress_bars(False)
    previous, _torch_progress = _torch_progress, io.StringIO()
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category, module=_FOREIGN_MODULES)
            warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec", category=FutureWarning)
            yield
    finally:
        _torch_progress = previous
        if bars:
            _transformers_progress_bars(True)
        root.removeHandler(guard)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _transformers_progress_bars(enable: bool) -> bool:
    """Turn transformers' tqdm bars on or off; returns whether they were on (False when it is not imported)."""
    module: Any = sys.modules.get("transformers.utils.logging")
    if module is None:
        try:
            from transformers.utils import logging as module
        except ImportError:
            return False
    was = bool(module.is_progress_bar_enabled())
    (module.enable_progress_bar if enable else module.disable_progress_bar)()
    return was


def quiet_unless_verbose(export: Callable[..., Any]) -> Callable[..., Any]:
    """Run an exporter inside `quiet_export`; it gains a `verbose=False` keyword."""

    @functools.wraps(export)
    def run(*args: Any, verbose: bool = False, **kwargs: Any) -> Any:
        with quiet_export(verbose):
            return export(*args, **kwargs)

    return run


def vision_hash(visual) -> str:
    """sha256 over the vision tower's weights as fp32, in name order.

    Two checkpoints with the same vision tower (ColQwen2's LoRA leaves it untouched)
    get the same hash, whatever dtype they were stored in, so bundles can share it.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(visual.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def save_embedding_table(weight, path: Path) -> None:
    """The token-embedding table as a plain fp32 .npy, memory-mapped at run time."""
    np.save(path, weight.detach().float().cpu().numpy(), allow_pickle=False)


def copy_checkpoint_files(src: Path, out: Path, names: tuple[str, ...]) -> list[str]:
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
            copied.append(name)
    return copied


def read_source_identity(src: Path) -> dict:
    """Best-effort source id and revision: a Hugging Face cache snapshot path carries both."""
    info: dict = {"source": str(src)}
    parts = src.resolve().parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i >= 1 and parts[i - 1].startswith("models--"):
            info["source"] = parts[i - 1][len("models--") :].replace("--", "/")
        if i + 1 < len(parts):
            info["revision"] = parts[i + 1]
    meta = src / "colrag_source.json"  # written by `colrag models install`
    if meta.is_file():
        info.update(json.loads(meta.read_text()))
    return info


def export_graph(module, args: tuple, path: Path, *, input_names, output_names, dynamic_shapes, opset: int = 18) -> float:
    """torch.onnx.export(dynamo=True) with weights in external data; returns seconds taken.

    After saving, the weights are released from the in-memory ONNX model: onnxscript's
    rewriter keeps its last pattern match in module-level rule objects, which keeps the
    optimised IR graph alive and, through its initializers, every weight of the module
    (the whole 6 GB decoder at full size, still resident while checks and quantization run).
    """
    import gc

    import torch

    start = time.perf_counter()
    module.eval()
    # torch.onnx prints its progress on stdout; stdout is for results (paths, JSON).
    with torch.no_grad(), contextlib.redirect_stdout(_torch_progress or sys.stderr):
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            external_data=True,
            optimize=True,
            verify=False,
        )
    if program is None:  # torch returns None only when exporting to a file-like without a program
        raise RuntimeError(f"torch.onnx.export returned no program for {path.name}")
    program.save(str(path), external_data=True)
    graph = program.model.graph
    values = set(graph.initializers.values()) | set(graph.inputs) | set(getattr(graph.inputs, "_ref_counter", ()))
    for node in graph:
        values.update(v for v in node.inputs if v is not None)
    for value in values:
        value.const_value = None
    graph.initializers.clear()
    del program, graph, values
    gc.collect()
    return time.perf_counter() - start


def max_abs_diff(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0
