"""Writing files so that a crash leaves the old version or the new one, never half of one.

`atomic_write` is the one way colrag replaces a file: write a temporary file in the same
folder (`.<name>.<random>.tmp`, created with O_EXCL so no link is followed), flush and
fsync it, rename it over the target, then fsync the folder so that the rename itself
survives a power loss. Used for bundle and index manifests, the index's FAISS files,
verification stamps, explain heatmaps and the prefix cache (which skips the fsyncs: a
cache file lost in a crash is a miss, and its checksum catches a torn one).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


def temp_name_pattern(name_pattern: str) -> re.Pattern[str]:
    """The names `atomic_write` gives its temp files for targets matching `name_pattern` (a regex
    without anchors), e.g. to let a writer clean up what a killed process left behind."""
    return re.compile(rf"^\.(?:{name_pattern})\.\w+{re.escape(TEMP_SUFFIX)}$")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in `folder` durable (best effort where folders cannot be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL on file systems that do not support it
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], object], *, mode: int = 0o644, durable: bool = True
) -> None:
    """Replace `path` with what `write(file)` writes, atomically (and durably unless `durable=False`)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; bundles and indexes are meant to be shared read-only
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
