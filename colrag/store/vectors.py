"""Page vectors: append-only segment files of raw little-endian float16 rows.

A segment `vectors/seg-NNNNNN.f16` is a (rows, dim) float16 matrix with no header
(its shape lives in the catalog: `segments.committed_rows`). Writers append rows
past the committed length, fsync, then commit the catalog transaction that
references them; readers map only the committed prefix with np.memmap (read-only).
Bytes past the committed length are the remains of an interrupted write: the next
writer truncates them before appending.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import IndexStoreError

VECTOR_DTYPE = np.dtype("<f2")
SEGMENTS_DIR = "vectors"
SEGMENT_MAX_BYTES = 1 << 30  # start a new segment past 1 GiB (~5,000 pages of 768 x 128 fp16)
_SEGMENT_RE = re.compile(r"^seg-(\d{6})\.f16$")


def segment_name(number: int) -> str:
    return f"seg-{number:06d}.f16"


def segment_number(name: str) -> int | None:
    m = _SEGMENT_RE.match(name)
    return int(m.group(1)) if m else None


class SegmentReader:
    """Read-only memmaps of committed segment prefixes, cached per (segment, rows)."""

    def __init__(self, root: Path, dim: int):
        self.root = root
        self.dim = dim
        self._maps: dict[str, tuple[int, np.ndarray]] = {}

    def rows(self, name: str, committed_rows: int) -> np.ndarray:
        """The (committed_rows, dim) float16 matrix of one segment."""
        cached = self._maps.get(name)
        if cached is not None and cached[0] == committed_rows:
            return cached[1]
        if committed_rows == 0:
            arr = np.zeros((0, self.dim), dtype=VECTOR_DTYPE)
        else:
            path = self.root / name
            need = committed_rows * self.dim * VECTOR_DTYPE.itemsize
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise IndexStoreError(f"missing vector segment {path}: the index is damaged; rebuild it") from None
            if size < need:
                raise IndexStoreError(
                    f"vector segment {path} has {size} bytes, the catalog expects at least {need}: the index is damaged; rebuild it"
                )
            arr = np.memmap(path, dtype=VECTOR_DTYPE, mode="r", shape=(committed_rows, self.dim))
        self._maps[name] = (committed_rows, arr)
        return arr

    def close(self) -> None:
        self._maps.clear()


class SegmentWriter:
    """Appends rows to one segment file; nothing is visible until the catalog commits."""

    def __init__(self, root: Path, dim: int, name: str, committed_rows: int):
        self.root = root
        self.dim = dim
        self.name = name
        self.committed_rows = committed_rows
        self.pending_rows = 0
        self.path = root / name
        self._f = open(self.path, "r+b" if self.path.exists() else "w+b")
        self.row_bytes = dim * VECTOR_DTYPE.itemsize
        # drop whatever an interrupted writer left past the committed length
        self._f.truncate(committed_rows * self.row_bytes)

    @property
    def full(self) -> bool:
        return (self.committed_rows + self.pending_rows) * self.row_bytes >= SEGMENT_MAX_BYTES

    def append(self, vectors: np.ndarray) -> int:
        """Write rows after the pending ones; returns their row offset in the segment."""
        arr = np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE)  # (n_tokens, dim)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {arr.shape}, expected (n, {self.dim})")
        offset = self.committed_rows + self.pending_rows
        self._f.seek(offset * self.row_bytes)
        self._f.write(arr.tobytes())
        self.pending_rows += len(arr)
        return offset

    def sync(self) -> int:
        """fsync the appended rows; returns the row count to record as committed."""
        self._f.flush()
        os.fsync(self._f.fileno())
        return self.committed_rows + self.pending_rows

    def committed(self) -> None:
        """The catalog transaction recording the pending rows has committed."""
        self.committed_rows += self.pending_rows
        self.pending_rows = 0

    def rollback(self) -> None:
        self.pending_rows = 0
        self._f.truncate(self.committed_rows * self.row_bytes)

    def close(self) -> None:
        self._f.close()
