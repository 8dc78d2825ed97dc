"""Page vectors: append-only segment files of int8 rows, plus their centroid codes.

A segment is two headerless files sharing row numbers:
    vectors/seg-NNNNNN.i8     (rows, dim) int8: each token vector quantized symmetrically
    vectors/seg-NNNNNN.codes  (rows,) little-endian uint16: each row's centroid id
                              (only once the index has a codebook; see codebook.py)

Quantization: q = round(127 * x / max|x|) per row. No scale is stored: the retriever's
rows are L2-normalised, so the row is recovered as q / ||q|| (the direction is all
that was stored; renormalising is at least as accurate as multiplying by a stored
max|x| / 127 scale, and saves 2 bytes per token).

Writers append rows past the committed length, fsync, then commit the catalog
transaction that references them (its `segments.committed_rows`); readers map only the
committed prefix with np.memmap (read-only). Bytes past the committed length are the
remains of an interrupted write: the next writer truncates them before appending.
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path

import numpy as np

from ..errors import IndexStoreError
from .codebook import CODEBOOK_FILE

VECTOR_DTYPE = np.dtype("i1")
CODE_DTYPE = np.dtype("<u2")
SEGMENTS_DIR = "vectors"
SEGMENT_MAX_BYTES = 1 << 30  # start a new segment past 1 GiB (~10,000 pages of 783 x 128 int8)
CODES_SUFFIX = ".codes"
_SEGMENT_RE = re.compile(r"seg-(\d{6,9})\.i8")  # the only segment names colrag writes


def segment_name(number: int) -> str:
    return f"seg-{number:06d}.i8"


def codes_name(segment: str) -> str:
    return segment[: -len(".i8")] + CODES_SUFFIX


def segment_number(name: str) -> int | None:
    m = _SEGMENT_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def check_segment_name(name: object, source: str = "the catalog") -> str:
    """A segment name read from the catalog, refused unless it is exactly one colrag writes
    (so that no catalog row can make colrag open, truncate or write another file)."""
    if not isinstance(name, str) or not _SEGMENT_RE.fullmatch(name):
        raise IndexStoreError(f"{source}: segment name {name!r} is not one colrag writes: the index is damaged")
    return name


def is_own_file(name: str) -> bool:
    """A name colrag writes in vectors/: a segment, its codes, the codebook (or its temp file)."""
    if name.endswith(CODES_SUFFIX):
        name = name[: -len(CODES_SUFFIX)] + ".i8"
    return bool(_SEGMENT_RE.fullmatch(name)) or name in (CODEBOOK_FILE, CODEBOOK_FILE + ".tmp")


def quantize(x: np.ndarray) -> np.ndarray:
    """(n, dim) float rows -> (n, dim) int8, symmetric per row (max |value| -> 127)."""
    x = np.asarray(x, dtype=np.float32)  # (n, dim)
    peak = np.abs(x).max(axis=1, keepdims=True)  # (n, 1)
    scale = np.where(peak > 0, 127.0 / np.maximum(peak, 1e-30), 0.0).astype(np.float32)
    return np.rint(x * scale).astype(VECTOR_DTYPE)  # (n, dim)


def dequantize(q: np.ndarray) -> np.ndarray:
    """(n, dim) int8 -> (n, dim) float32 unit rows (an all-zero row stays zero)."""
    x = np.asarray(q, dtype=np.float32)  # (n, dim)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # (n,)
    x *= (1.0 / np.where(norms > 0, norms, 1.0))[:, None]
    return x


class SegmentReader:
    """Read-only memmaps of committed segment prefixes (vectors and codes), cached per (file, rows)."""

    def __init__(self, root: Path, dim: int):
        self.root = root
        self.dim = dim
        self._maps: dict[str, tuple[int, np.ndarray]] = {}

    def _map(self, name: str, committed_rows: int, dtype: np.dtype, shape_tail: tuple) -> np.ndarray:
        cached = self._maps.get(name)
        if cached is not None and cached[0] == committed_rows:
            return cached[1]
        if committed_rows == 0:
            arr = np.zeros((0, *shape_tail), dtype=dtype)
        elif not is_own_file(name) or name.startswith("codebook"):
            raise IndexStoreError(f"{name!r} is not a segment file colrag writes: the index is damaged")
        else:
            path = self.root / name
            need = committed_rows * dtype.itemsize * int(np.prod(shape_tail, dtype=np.int64))
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise IndexStoreError(f"missing segment file {path}: the index is damaged; rebuild it") from None
            if size < need:
                raise IndexStoreError(
                    f"segment file {path} has {size} bytes, the catalog expects at least {need}: the index is damaged; rebuild it"
                )
            arr = np.memmap(path, dtype=dtype, mode="r", shape=(committed_rows, *shape_tail))
        self._maps[name] = (committed_rows, arr)
        return arr

    def rows(self, name: str, committed_rows: int) -> np.ndarray:
        """The (committed_rows, dim) int8 matrix of one segment."""
        return self._map(name, committed_rows, VECTOR_DTYPE, (self.dim,))

    def codes(self, name: str, committed_rows: int) -> np.ndarray:
        """The (committed_rows,) uint16 centroid ids of one segment (it must have codes)."""
        return self._map(codes_name(name), committed_rows, CODE_DTYPE, ())

    def willneed(self, name: str, committed_rows: int, spans: list[tuple[int, int]]) -> None:
        """Ask the OS to start reading these (first_row, n_rows) spans of a segment's rows now (see willneed)."""
        row_bytes = self.dim * VECTOR_DTYPE.itemsize
        willneed(self.rows(name, committed_rows), [(first * row_bytes, n * row_bytes) for first, n in spans])

    def close(self) -> None:
        self._maps.clear()


def willneed(arr: np.ndarray, spans: list[tuple[int, int]]) -> None:
    """Hint that these (byte offset, length) spans of a memory-mapped array are about to be read.

    Best effort (madvise MADV_WILLNEED; a no-op where unsupported or for arrays in memory):
    a search reads a few hundred pages, or inverted lists, scattered over the index; when
    they are not in the page cache, faulting them in one at a time waits for one disk
    read after another, while announcing them all first lets the disk serve them in
    parallel (a 100,000-page index whose rows had left the page cache: 281 ms instead of
    9.2 s per search, docs/INDEX_FORMAT.md)."""
    mm = getattr(arr, "_mmap", None)  # np.memmap's mmap.mmap object (np.load(mmap_mode=...) too)
    if mm is None or not spans or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_WILLNEED"):
        return
    base = arr.ctypes.data - np.frombuffer(mm, dtype=np.uint8).ctypes.data  # the array's start within the mapping
    for offset, length in spans:
        start = base + offset
        aligned = start - start % mmap.PAGESIZE  # madvise wants a page-aligned start
        try:
            mm.madvise(mmap.MADV_WILLNEED, aligned, start + length - aligned)
        except (OSError, ValueError):
            return


class _AppendFile:
    def __init__(self, path: Path, row_bytes: int, committed_rows: int):
        self.path = path
        self.row_bytes = row_bytes
        try:  # never through a symbolic link: a link named like a segment must not make colrag write elsewhere
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise IndexStoreError(f"cannot open {path} for writing: {exc.strerror or exc}") from None
        self._f = os.fdopen(fd, "r+b")
        self._f.truncate(committed_rows * row_bytes)  # drop what an interrupted writer left

    def write_at(self, row: int, data: bytes) -> None:
        self._f.seek(row * self.row_bytes)
        self._f.write(data)

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def truncate(self, rows: int) -> None:
        self._f.truncate(rows * self.row_bytes)

    def close(self) -> None:
        self._f.close()


class SegmentWriter:
    """Appends rows (and their codes, once the index has a codebook) to one segment.

    Nothing is visible until the catalog commits the new row count.
    """

    def __init__(self, root: Path, dim: int, name: str, committed_rows: int, with_codes: bool):
        check_segment_name(name)
        self.root = root
        self.dim = dim
        self.name = name
        self.committed_rows = committed_rows
        self.pending_rows = 0
        self.path = root / name
        self.row_bytes = dim * VECTOR_DTYPE.itemsize
        self._vec = _AppendFile(self.path, self.row_bytes, committed_rows)
        self._codes = _AppendFile(root / codes_name(name), CODE_DTYPE.itemsize, committed_rows) if with_codes else None

    @property
    def with_codes(self) -> bool:
        return self._codes is not None

    def start_codes(self, codes: np.ndarray) -> None:
        """The index just got a codebook: write the codes of the rows already committed."""
        if len(codes) != self.committed_rows or self.pending_rows:
            raise ValueError("start_codes needs the codes of exactly the committed rows, before any append")
        self._codes = _AppendFile(self.root / codes_name(self.name), CODE_DTYPE.itemsize, 0)
        self._codes.write_at(0, np.ascontiguousarray(codes, dtype=CODE_DTYPE).tobytes())

    @property
    def full(self) -> bool:
        return (self.committed_rows + self.pending_rows) * self.row_bytes >= SEGMENT_MAX_BYTES

    def append(self, rows: np.ndarray, codes: np.ndarray | None) -> int:
        """Write int8 rows (and codes) after the pending ones; returns their row offset in the segment."""
        arr = np.ascontiguousarray(rows, dtype=VECTOR_DTYPE)  # (n_tokens, dim)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {arr.shape}, expected (n, {self.dim})")
        if (codes is None) != (self._codes is None):
            raise ValueError("codes must be given exactly when the segment has a codes file")
        offset = self.committed_rows + self.pending_rows
        self._vec.write_at(offset, arr.tobytes())
        if self._codes is not None:
            self._codes.write_at(offset, np.ascontiguousarray(codes, dtype=CODE_DTYPE).tobytes())
        self.pending_rows += len(arr)
        return offset

    def sync(self) -> int:
        """fsync the appended rows and codes; returns the row count to record as committed."""
        self._vec.sync()
        if self._codes is not None:
            self._codes.sync()
        return self.committed_rows + self.pending_rows

    def committed(self) -> None:
        """The catalog transaction recording the pending rows has committed."""
        self.committed_rows += self.pending_rows
        self.pending_rows = 0

    def rollback(self, drop_codes: bool = False) -> None:
        self.pending_rows = 0
        self._vec.truncate(self.committed_rows)
        if self._codes is not None:
            self._codes.truncate(self.committed_rows)
            if drop_codes:  # the codebook these codes refer to was never committed
                self._codes.close()
                self._codes.path.unlink(missing_ok=True)
                self._codes = None

    def close(self) -> None:
        self._vec.close()
        if self._codes is not None:
            self._codes.close()
