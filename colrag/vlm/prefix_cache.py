"""A bounded cache of prompt-prefix k/v, so a follow-up question on a page already seen
starts answering in seconds instead of re-running the vision tower and the page's prefill.

The chat prompt is `system turn + "<|im_start|>user\n" + images + question + assistant
header`. Everything up to the last `<|vision_end|>` (the *prefix*) depends only on the
images and the system prompt; the decoder is causal, so the prefix's k/v are the same
whatever question follows. A prefix is stored under a key that hashes everything the
prefix's k/v depend on: the generator's identity (bundle id, vision graph, quantization,
image processor settings), the request's settings (pixel budget, system prompt), the
prefix's token ids, and every image's grid *and* preprocessed pixels (two blank pages of
transposed shapes have the same pixel bytes but not the same grid, hence other rotary
positions and other k/v). A hit is exact by construction.

Two levels, both bounded by bytes: a small in-memory LRU (follow-ups in one process)
and an optional folder of `.npz` files (follow-ups across `colrag ask` runs). Files are
written atomically (colrag.fsutil: temp file + rename), read with `allow_pickle=False`, checked
against the request (ids and shapes) and dropped when anything is off: a damaged cache
is a miss, never a wrong answer. Each file also stores a sha256 of its key, ids and k/v
bytes; a file whose arrays were altered (valid format, other numbers) fails that check,
is reported in one line on stderr, and is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_write
from .image_features import ImageFeatures

FORMAT = 2  # 2: grid and settings in the key, a checksum in each file
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


def _update_array(h: Any, array: np.ndarray) -> None:
    """Feed an array to a hash with its dtype and shape, so no two arrays hash alike by layout."""
    array = np.ascontiguousarray(array)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.tobytes())


def image_cache_input(pre: Any) -> np.ndarray:
    """What a prefix's k/v depend on for one image: its preprocessed pixels, or its precomputed features
    (a (n, hidden) array can never equal a (4n, 1176) pixel array, so the two kinds never share a key)."""
    if isinstance(pre, ImageFeatures):
        return np.ascontiguousarray(pre.embeds, dtype=np.float32)  # (n_image_tokens, H)
    return pre.pixel_values  # (N, 1176)


def prefix_key(
    identity: Mapping[str, Any], prefix_ids: np.ndarray, images: Sequence[tuple[np.ndarray, np.ndarray]]
) -> str:
    """sha256 over everything the prefix's k/v depend on.

    identity: the generator's and the request's settings (JSON-serialisable: bundle id,
    vision graph, quantization, image processor, pixel budget, system prompt);
    prefix_ids: (P,) int64; images: one (pixel_values, grid_thw) pair per image.
    """
    h = hashlib.sha256()
    h.update(f"colrag-prefix/{FORMAT}/".encode())
    h.update(json.dumps(identity, sort_keys=True, default=str).encode())
    _update_array(h, np.asarray(prefix_ids, dtype=np.int64))
    h.update(f"/{len(images)} images/".encode())
    for pixels, grid in images:
        _update_array(h, np.asarray(grid, dtype=np.int64))  # (3,): (t, h, w) patches
        _update_array(h, pixels)  # (n_patches, 1176) float32
    return h.hexdigest()


def prefix_checksum(key: str, ids: np.ndarray, past: Sequence[np.ndarray]) -> str:
    """sha256 of a stored entry: its key, ids and every k/v array (dtype, shape and bytes)."""
    h = hashlib.sha256(f"colrag-prefix-entry/{FORMAT}/{key}/".encode())
    _update_array(h, np.asarray(ids, dtype=np.int64))
    for array in past:
        _update_array(h, np.asarray(array, dtype=np.float32))
    return h.hexdigest()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class PrefixCache:
    def __init__(
        self,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        folder: str | os.PathLike | None = None,
        disk_bytes: int = DEFAULT_DISK_BYTES,
    ):
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
    def _disk(self) -> Path:
        assert self.folder is not None, "only called when the cache has a folder"
        return self.folder

    def _path(self, key: str) -> Path:
        return self._disk() / f"{key}.npz"

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
                stored = str(data["checksum"])
            want = (1, kv_heads, len(ids), head_dim)
            if ids.ndim != 1 or any(a.shape != want for a in past):
                raise ValueError("shape mismatch")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            path.unlink(missing_ok=True)  # damaged or foreign: a miss, and not kept
            return None
        if stored != prefix_checksum(key, ids, past):
            _warn(
                f"prefix cache file {path.name} fails its checksum (altered or damaged): "
                "ignored, the page is recomputed"
            )
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # least recently used goes first
        return Prefix(ids, past)

    def _write(self, key: str, prefix: Prefix) -> None:
        try:
            self._disk().mkdir(parents=True, exist_ok=True)
            self._evict(self.disk_bytes - prefix.nbytes)
            arrays: dict[str, Any] = {f"past_{i}": a for i, a in enumerate(prefix.past)}
            arrays.update(
                format=np.int64(FORMAT),
                checksum=np.str_(prefix_checksum(key, prefix.ids, prefix.past)),
                ids=prefix.ids,
            )
            # not fsynced: a file lost or torn by a crash is a miss (its checksum says so), and the
            # cache is the user's alone (0600)
            atomic_write(self._path(key), lambda f: np.savez(f, **arrays), mode=0o600, durable=False)
        except OSError:
            pass  # a cache that cannot be written (disk full, read-only home) only costs speed

    def _evict(self, budget: int) -> None:
        """Delete the least recently used files until the folder holds at most `budget` bytes."""
        files = []
        # cache files, and temp files a killed process left (fsutil.atomic_write: .KEY.npz.RANDOM.tmp)
        for path in [*self._disk().glob("*.npz"), *self._disk().glob(".*.npz.*.tmp")]:
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
