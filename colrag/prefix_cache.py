"""A bounded cache of prompt-prefix k/v, so a follow-up question on a page already seen
starts answering in seconds instead of re-running the vision tower and the page's prefill.

The chat prompt is `system turn + "<|im_start|>user\n" + images + question + assistant
header`. Everything up to the last `<|vision_end|>` (the *prefix*) depends only on the
images and the system prompt; the decoder is causal, so the prefix's k/v are the same
whatever question follows. A prefix is stored under a key that hashes the bundle, the
prefix's token ids and the preprocessed pixels of every image, so a hit is exact by
construction.

Two levels, both bounded by bytes: a small in-memory LRU (follow-ups in one process)
and an optional folder of `.npz` files (follow-ups across `colrag ask` runs). Files are
written atomically (temp file + rename), read with `allow_pickle=False`, checked
against the request (ids and shapes) and dropped when anything is off: a damaged cache
is a miss, never a wrong answer.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 1
DEFAULT_MEMORY_BYTES = 1 << 30  # ~13 pages of 1,300 tokens for Qwen2-VL-2B (75 MB each, fp32)
DEFAULT_DISK_BYTES = 2 << 30


@dataclass
class Prefix:
    """The k/v of a prompt prefix: 2 × layers arrays, each (1, kv_heads, P, head_dim) float32."""

    ids: np.ndarray  # (P,) int64
    past: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + sum(a.nbytes for a in self.past))


def prefix_key(bundle_id: str, prefix_ids: np.ndarray, pixel_arrays: list[np.ndarray]) -> str:
    """sha256 over everything the prefix's k/v depend on."""
    h = hashlib.sha256()
    h.update(f"colrag-prefix/{FORMAT}/{bundle_id}/".encode())
    h.update(np.ascontiguousarray(prefix_ids, dtype=np.int64).tobytes())
    for pixels in pixel_arrays:
        h.update(str(pixels.shape).encode())
        h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


class PrefixCache:
    def __init__(self, memory_bytes: int = DEFAULT_MEMORY_BYTES, folder: str | os.PathLike | None = None,
                 disk_bytes: int = DEFAULT_DISK_BYTES):
        self.memory_bytes = int(memory_bytes)
        self.folder = Path(folder).expanduser() if folder else None
        self.disk_bytes = int(disk_bytes)
        self._memory: OrderedDict[str, Prefix] = OrderedDict()
        self.hits = 0
        self.misses = 0

    # -- lookups ---------------------------------------------------------------------
    def get(self, key: str, ids: np.ndarray, past_shape: tuple[int, int, int]) -> Prefix | None:
        """The prefix stored under `key` if it covers exactly `ids`; past_shape = (2·layers, kv_heads, head_dim)."""
        prefix = self._memory.get(key)
        if prefix is not None:
            self._memory.move_to_end(key)
        elif self.folder is not None:
            prefix = self._read(key, past_shape)
            if prefix is not None:
                self._remember(key, prefix)
        if prefix is None or not np.array_equal(prefix.ids, ids):
            self.misses += 1
            return None
        self.hits += 1
        return prefix

    def put(self, key: str, prefix: Prefix) -> None:
        self._remember(key, prefix)
        if self.folder is not None and prefix.nbytes <= self.disk_bytes:
            self._write(key, prefix)

    # -- memory ----------------------------------------------------------------------
    def _remember(self, key: str, prefix: Prefix) -> None:
        if prefix.nbytes > self.memory_bytes:
            return
        self._memory[key] = prefix
        self._memory.move_to_end(key)
        while sum(p.nbytes for p in self._memory.values()) > self.memory_bytes:
            self._memory.popitem(last=False)

    # -- disk ------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def _read(self, key: str, past_shape: tuple[int, int, int]) -> Prefix | None:
        path = self._path(key)
        if not path.is_file():
            return None
        n_past, kv_heads, head_dim = past_shape
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != FORMAT:
                    raise ValueError("other format")
                ids = np.asarray(data["ids"], dtype=np.int64)
                past = [np.ascontiguousarray(data[f"past_{i}"], dtype=np.float32) for i in range(n_past)]
            want = (1, kv_heads, len(ids), head_dim)
            if ids.ndim != 1 or any(a.shape != want for a in past):
                raise ValueError("shape mismatch")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            path.unlink(missing_ok=True)  # damaged or foreign: a miss, and not kept
            return None
        os.utime(path)  # least recently used goes first
        return Prefix(ids, past)

    def _write(self, key: str, prefix: Prefix) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._evict(self.disk_bytes - prefix.nbytes)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".npz")
            try:
                with os.fdopen(fd, "wb") as f:
                    arrays = {f"past_{i}": a for i, a in enumerate(prefix.past)}
                    np.savez(f, format=np.int64(FORMAT), ids=prefix.ids, **arrays)
                os.replace(tmp, self._path(key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a cache that cannot be written (disk full, read-only home) only costs speed

    def _evict(self, budget: int) -> None:
        """Delete the least recently used files until the folder holds at most `budget` bytes."""
        files = []
        for path in self.folder.glob("*.npz"):
            try:
                st = path.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= budget:
                break
            path.unlink(missing_ok=True)
            total -= size
