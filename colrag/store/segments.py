"""Page token vectors: FAISS SQ8 segment files, page-major, one file version per commit.

A segment is a FAISS `IndexScalarQuantizer` (QT_8bit) whose rows are the token vectors of
consecutive pages (a page is rows [row_offset, row_offset + n_tokens) of its segment, as
the catalog records). The quantizer's range is fixed to [-1, 1] in every dimension: the
rows are unit vectors, so nothing is clipped and the codec needs no training (the first
page of an index is encoded like the millionth, and there is no codec to retrain or
migrate). FAISS decodes a code c as x = -1 + (c + 0.5) * 2/255; `decode` is the same
formula (tested equal to sa_decode), and the MaxSim kernel (colrag.search) applies it
after the product: q . x = SCALE * (q . c) + OFFSET * sum(q).

Files: vectors/seg-NNNNNN-vVVVVVV.faiss. The writer keeps the active segment in memory,
adds the new rows, writes the next version (temp + fsync + rename; colrag.store.faiss_io)
and commits the catalog row naming it; then deletes the previous version. Readers map
the version their snapshot names (IO_FLAG_MMAP_IFC: nothing is read until a search
touches it). A crash leaves at most an unreferenced version, which the next writer deletes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexStoreError
from . import faiss_io

SEGMENTS_DIR = "vectors"
SEGMENT_MAX_ROWS = 1 << 18  # ~335 pages of 783 tokens, 32 MiB: what one commit may rewrite
SCALE = np.float32(2.0 / 255.0)
OFFSET = np.float32(-1.0 + 1.0 / 255.0)
CODEC = "SQ8, range [-1, 1] per dimension (faiss.IndexScalarQuantizer QT_8bit)"
_NAME = re.compile(r"^seg-(\d{6})-v(\d{6})\.faiss$")


def segment_name(number: int, version: int) -> str:
    return f"seg-{number:06d}-v{version:06d}.faiss"


def parse_name(name: str) -> tuple[int, int] | None:
    m = _NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def new_segment(dim: int) -> Any:
    """An empty SQ8 index whose range is [-1, 1] in every dimension (trained on those two rows)."""
    faiss = faiss_io.faiss_module()
    index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(np.stack([np.full(dim, -1.0, np.float32), np.full(dim, 1.0, np.float32)]))
    return index


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(n, dim) float rows scaled to unit length (what colrag stores: the direction of each token)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0))


def encode(index: Any, x: np.ndarray) -> np.ndarray:
    """(n, dim) unit rows -> (n, dim) uint8 codes (FAISS's encoder)."""
    return np.asarray(index.sa_encode(np.ascontiguousarray(x, dtype=np.float32)))


def decode(codes: np.ndarray) -> np.ndarray:
    """(n, dim) uint8 codes -> (n, dim) float32: FAISS's SQ8 decode for the range [-1, 1], bit for bit."""
    x = np.asarray(codes, dtype=np.float32)
    x += np.float32(0.5)
    x /= np.float32(255.0)
    x *= np.float32(2.0)
    x += np.float32(-1.0)
    return x


class _CodesOwner:
    """Exposes a FAISS index's codes to numpy and keeps the index (and its mapping) alive
    as long as any array viewing them exists."""

    def __init__(self, index: Any, address: int, shape: tuple[int, int]):
        self.index = index
        self.__array_interface__ = {"shape": shape, "typestr": "|u1", "data": (address, True), "version": 3}


def codes_view(index: Any) -> np.ndarray:
    """The (ntotal, dim) uint8 codes of a segment index, read-only and without a copy (memory-mapped
    for readers); the array keeps the index alive."""
    n, size = int(index.ntotal), int(index.code_size)
    if n == 0:
        return np.zeros((0, size), dtype=np.uint8)
    address = faiss_io.faiss_module().rev_swig_ptr(index.codes.data(), n * size).ctypes.data
    return np.asarray(_CodesOwner(index, address, (n, size)))


class SegmentReader:
    """Memory-mapped segment versions, opened once each."""

    def __init__(self, root: Path, dim: int):
        self.root = root
        self.dim = dim
        self._open: dict[str, tuple[Any, np.ndarray]] = {}

    def rows(self, name: str, committed_rows: int) -> np.ndarray:
        """The (committed_rows, dim) uint8 codes of one segment version."""
        cached = self._open.get(name)
        if cached is None:
            index = faiss_io.read_index(self.root, name, mmap="codes")
            if int(index.d) != self.dim or int(index.code_size) != self.dim:
                raise IndexStoreError(
                    f"vector file {self.root / name} does not hold {self.dim}-d SQ8 codes: the index is damaged"
                )
            cached = (index, codes_view(index))
            self._open[name] = cached
        codes = cached[1]
        if len(codes) < committed_rows:
            raise IndexStoreError(
                f"vector file {self.root / name} holds {len(codes)} rows, the catalog "
                f"expects {committed_rows}: the index is damaged"
            )
        return codes[:committed_rows]

    def willneed(self, name: str, committed_rows: int, spans: list[tuple[int, int]]) -> None:
        """Ask the OS to read these (first_row, n_rows) spans now (faiss_io.willneed)."""
        codes = self.rows(name, committed_rows)
        base = codes.ctypes.data
        for first, n in spans:
            faiss_io.willneed(base + first * self.dim, n * self.dim)

    def forget(self, keep: set[str]) -> None:
        """Drop the mappings of versions no longer referenced."""
        for name in [n for n in self._open if n not in keep]:
            del self._open[name]

    def close(self) -> None:
        self._open.clear()


class SegmentWriter:
    """The active segment, in memory: rows are added, then a new version file is written.

    Nothing is visible until the catalog commits the version's name and row count."""

    def __init__(self, root: Path, dim: int, number: int, version: int, name: str | None, committed_rows: int):
        self.root = root
        self.dim = dim
        self.number = number
        self.version = version  # of the committed file (0: none yet)
        self.committed_name = name
        self.committed_rows = committed_rows
        if name is None:
            self.index = new_segment(dim)
        else:
            self.index = faiss_io.read_index(root, name, mmap=None)
            if int(self.index.ntotal) < committed_rows:
                raise IndexStoreError(
                    f"vector file {root / name} is shorter than the catalog says: the index is damaged"
                )
            if int(self.index.ntotal) > committed_rows:
                self._truncate(committed_rows)
        self.pending_name: str | None = None

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    @property
    def full(self) -> bool:
        return self.rows >= SEGMENT_MAX_ROWS

    def append(self, x: np.ndarray) -> int:
        """Add (n, dim) unit rows after the pending ones; returns their first row."""
        first = self.rows
        self.index.add(np.ascontiguousarray(x, dtype=np.float32))
        return first

    def write(self) -> str:
        """Write every row (committed + pending) as the next version; returns its name (not yet committed)."""
        name = segment_name(self.number, self.version + 1)
        faiss_io.write_index(self.index, self.root, name)
        self.pending_name = name
        return name

    def committed(self) -> str | None:
        """The catalog committed the pending version: it becomes current; returns the replaced file's name."""
        old = self.committed_name
        self.committed_name, self.pending_name = self.pending_name, None
        self.version += 1
        self.committed_rows = self.rows
        return old

    def rollback(self) -> None:
        """The commit failed: forget the pending rows and delete the pending version."""
        if self.pending_name is not None:
            (self.root / self.pending_name).unlink(missing_ok=True)
            self.pending_name = None
        self._truncate(self.committed_rows)

    def _truncate(self, rows: int) -> None:
        faiss = faiss_io.faiss_module()
        if self.rows > rows:
            self.index.remove_ids(faiss.IDSelectorRange(rows, self.rows))
