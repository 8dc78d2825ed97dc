"""FAISS files of an index: each version written once (temp + fsync + rename), read memory-mapped.

colrag never rewrites a FAISS file in place: a new version gets a new name, the catalog
transaction that names it is the commit, and the writer deletes the version it replaced
afterwards (a reader that still maps the old file keeps a valid mapping). Every name
passed here is one colrag makes (`check_name`), so a catalog row cannot point outside the
index folder, and a symlink is never followed.
"""

from __future__ import annotations

import ctypes
import mmap as _mmap
import re
from pathlib import Path
from typing import Any

from ..errors import IndexStoreError
from ..fsutil import atomic_write, temp_name_pattern

# seg-000001-v000003.faiss (vectors), coarse-000001.faiss (centroids), lists-g000000042.faiss (page lists)
_NAMES = r"seg-\d{6}-v\d{6}|coarse-\d{6}|lists-g\d{9}"
FAISS_NAME = re.compile(rf"^({_NAMES})\.faiss$")
# fsutil.atomic_write's temp files (.NAME.faiss.RANDOM.tmp), and those of colrag before it (.NAME.faiss.tmp)
_TEMP_NAME = temp_name_pattern(rf"(?:{_NAMES})\.faiss").pattern
TEMP_NAME = re.compile(rf"{_TEMP_NAME}|^\.(?:{_NAMES})\.faiss\.tmp$")


def faiss_module() -> Any:
    """The faiss package, or one clear error line."""
    try:
        import faiss
    except ImportError as exc:
        raise IndexStoreError(
            f"faiss cannot be imported ({exc}); it stores and searches the vectors: pip install faiss-cpu"
        ) from None
    return faiss


def check_name(name: str) -> str:
    if not isinstance(name, str) or not FAISS_NAME.match(name):
        raise IndexStoreError(
            f"the catalog names a vector file {name!r} that colrag does not write: the index is damaged"
        )
    return name


def write_index(index: Any, folder: Path, name: str) -> None:
    """faiss.write_index through fsutil.atomic_write (temp + fsync + rename + folder fsync)."""
    faiss = faiss_module()
    check_name(name)
    atomic_write(folder / name, lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))


def read_index(folder: Path, name: str, *, mmap: str | None) -> Any:
    """A FAISS file of the index; mmap="codes" maps a flat index's codes, "lists" an inverted file's lists
    (read-only, nothing read until used), None reads it all into memory."""
    faiss = faiss_module()
    path = folder / check_name(name)
    if path.is_symlink() or not path.is_file():
        raise IndexStoreError(f"missing vector file {path}: the index is damaged; rebuild it")
    flags = {"codes": faiss.IO_FLAG_MMAP_IFC, "lists": faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY, None: 0}[mmap]
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise IndexStoreError(
            f"unreadable vector file {path} ({str(exc).splitlines()[0][:120]}): the index is damaged"
        ) from None


_LIBC: list[Any] = []


def willneed(address: int, length: int) -> None:
    """madvise(MADV_WILLNEED) on a span of a memory mapping (best effort).

    A search reads a few hundred pages scattered over the index; when they are not in the
    page cache, announcing them all first lets the disk serve them in parallel instead of
    one page fault after another (281 ms instead of 9.2 s per search on an evicted
    100,000-page index, docs/INDEX_FORMAT.md)."""
    if length <= 0 or not hasattr(_mmap, "MADV_WILLNEED"):
        return
    if not _LIBC:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _LIBC.append(libc)
        except (OSError, AttributeError):
            _LIBC.append(None)
    libc = _LIBC[0]
    if libc is None:
        return
    start = address - address % _mmap.PAGESIZE
    libc.madvise(start, address + length - start, _mmap.MADV_WILLNEED)
