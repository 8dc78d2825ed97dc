"""Helpers shared by the retriever and generator exporters (torch side): quiet exports, graph export,
checkpoint files and identity, and the bundle folder (replaced only when empty or a bundle of the same kind).
The steps both exporters take in the same order are in colrag.export.steps."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import gc
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..errors import ColragError
from ..fsutil import fsync_dir
from ..vlm.bundle import MANIFEST

# Files of a checkpoint folder that the runtime needs besides the weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
CONFIG_FILES = (
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
    "chat_template.json",
    "chat_template.jinja",
)


# -- quiet by default ------------------------------------------------------------------------
# An export runs torch.onnx, onnxscript, transformers and onnxruntime's quantizer, which
# talk a lot: "[torch.onnx] ..." progress lines on stdout, "torchvision is not installed"
# warnings through torch's logging, ~100 INFO lines from onnxscript / onnx_ir (because
# importing onnxruntime's MatMulNBits quantizer calls logging.basicConfig(level=INFO)),
# FutureWarnings from torch.export's pytree, and tqdm bars from transformers. None of it
# is actionable for a user; colrag's own progress lines say what is happening. `verbose`
# lets all of it through (to stderr: stdout is for results).
_FOREIGN_LOGGERS = (
    "onnxscript",
    "onnx_ir",
    "torch.onnx",
    "torch.export",
    "torch._export",
    "onnxruntime",
    "transformers",
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
        import torch  # noqa: F401  (imported for its side effect on logging)
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


def export_graph(
    module, args: tuple, path: Path, *, input_names, output_names, dynamic_shapes, opset: int = 18
) -> float:
    """torch.onnx.export(dynamo=True) with weights in external data; returns seconds taken.

    After saving, the weights are released from the in-memory ONNX model: onnxscript's
    rewriter keeps its last pattern match in module-level rule objects, which keeps the
    optimised IR graph alive and, through its initializers, every weight of the module
    (the whole 6 GB decoder at full size, still resident while checks and quantization run).
    """

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


# -- the bundle folder: replaced only when it is empty or a colrag bundle of the same kind -------

# inside a work folder: the pid of the export writing it (.tmp: write_manifest leaves it out)
_PARTIAL_MARK = ".colrag-partial.tmp"


def bundle_kind(folder: Path) -> str | None:
    """The `kind` in a folder's colrag bundle manifest, or None when it holds none."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format"), int):
        return None
    kind = manifest.get("kind")
    return kind if isinstance(kind, str) else None


def check_target(out: Path, kind: str, *, force: bool) -> bool:
    """May an export of `kind` write `out`? True when it will replace a bundle, False when `out` is new or empty.

    Refused (one line, nothing touched): a link, a file, a folder holding anything but a colrag
    `kind` bundle — whatever `force` says — and, without `force`, an existing `kind` bundle."""
    if out.is_symlink():
        raise ColragError(f"{out} is a symbolic link: give the folder it points to, or another path")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ColragError(f"{out} is a file, not a bundle folder: choose another path")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return False
    found = bundle_kind(out)
    if found != kind:
        listing = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        what = f"a colrag {found} bundle" if found else f"files that are not a colrag bundle ({listing})"
        raise ColragError(
            f"{out} holds {what}: colrag replaces only an empty folder or a {kind} bundle; "
            "choose another path or move it away"
        )
    if not force:
        raise ColragError(f"{out} already holds a {kind} bundle; pass --force to replace it")
    return True


def new_work_dir(out: Path) -> Path:
    """A fresh sibling folder to build the bundle in (then swapped in by `replace_with`).

    Work folders of earlier exports that died (their pid is gone) are deleted first: only
    folders named `.<out>.partial-*` that hold colrag's mark file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f".{out.name}.partial-*"):
        mark = old / _PARTIAL_MARK
        if old.is_symlink() or not mark.is_file():
            continue
        try:
            pid = int(mark.read_text().strip())
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    (work / _PARTIAL_MARK).write_text(f"{os.getpid()}\n")
    return work


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_with(work: Path, out: Path, kind: str, *, force: bool) -> None:
    """Put the finished bundle `work` at `out`, checking `out` again (an export takes minutes).

    An existing bundle is swapped out in one step where the OS allows it (Linux renameat2
    RENAME_EXCHANGE): a reader sees the old bundle or the new one, never none; elsewhere it
    is renamed aside first. The old bundle is deleted after."""
    (work / _PARTIAL_MARK).unlink(missing_ok=True)
    replacing = check_target(out, kind, force=force)
    if out.is_dir() and not replacing:  # an empty folder
        out.rmdir()
    if not replacing:
        work.rename(out)
    elif _exchange(work, out):
        shutil.rmtree(work)  # now holds the old bundle
    else:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old)
    fsync_dir(out.parent)  # the rename survives a power loss


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # file system or kernel without it
        return False
    raise OSError(err, os.strerror(err), str(b))
