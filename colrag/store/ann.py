"""Centroid -> pages inverted file for candidate generation: a cache, rebuildable from the codes.

Every stored token has a centroid code (colrag.store.codebook). For each centroid c the
inverted file lists, once each and in increasing order, the positions (into `page_ids`)
of the visible pages holding at least one token coded c. Search (colrag.search) probes
a few centroids per query token and scores the pages on those lists.

Layout (CSR): `offsets` (n_centroids + 1,) int64, `entries` (nnz,) uint32 page positions,
`page_ids` (n_pages,) int64 catalog page ids. Files: ann/g<generation>.{pages,offsets,
entries}.npy (np.save, no pickle; loaded memory-mapped) and ann/state.json naming them with
the catalog generation they reflect. A writer rebuilds a stale cache at the end of
`colrag index` (one pass over the codes: 2 bytes per token); a reader with a stale cache
searches it (pages removed since are skipped) and treats pages added since as candidates
(colrag.search), rebuilding in memory only when too many pages are missing from it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import atomic_write_json
from ..errors import IndexStoreError
from .index import ANN_DIR, Index, Snapshot

STATE_FILE = "state.json"
_ARRAY_NAME = re.compile(r"g\d{1,18}\.(pages|offsets|entries)\.npy")  # the array files colrag writes here
_OWN_NAME = re.compile(r"state\.json|\.state\.json\.\w+\.tmp|g\d{1,18}\.(pages|offsets|entries)\.npy|\.g\d{1,18}\.(pages|offsets|entries)\.npy\.tmp")
_CHUNK_ROWS = 1 << 22  # codes handled per step of a build (~5,000 pages)


@dataclass
class CentroidIvf:
    generation: int
    n_centroids: int
    page_ids: np.ndarray  # (n_pages,) int64 catalog ids; a page's position is its index here
    offsets: np.ndarray  # (n_centroids + 1,) int64
    entries: np.ndarray  # (nnz,) uint32 page positions, grouped by centroid

    def pages_of(self, centroid: int) -> np.ndarray:
        return self.entries[self.offsets[centroid] : self.offsets[centroid + 1]]

    @property
    def nbytes(self) -> int:
        return int(self.page_ids.nbytes + self.offsets.nbytes + self.entries.nbytes)


def build(idx: Index, snap: Snapshot) -> CentroidIvf | None:
    """The inverted file of every page in `snap` (None while the index has no codebook)."""
    if snap.codebook is None:
        return None
    n_c = int(snap.codebook["coarse"]) * int(snap.codebook["fine"])
    pages = snap.pages
    codes_parts, pos_parts = [], []
    start = 0
    while start < len(pages):
        # a run of pages of one segment, about _CHUNK_ROWS codes
        seg = pages[start].segment_id
        end, rows = start, 0
        while end < len(pages) and pages[end].segment_id == seg and rows < _CHUNK_ROWS:
            rows += pages[end].n_tokens
            end += 1
        codes = idx.segment_codes(snap, seg)
        chunk = pages[start:end]
        block = np.concatenate([codes[p.row_offset : p.row_offset + p.n_tokens] for p in chunk]).astype(np.int64)  # (rows,)
        pos = np.repeat(np.arange(start, end, dtype=np.int64), [p.n_tokens for p in chunk])  # (rows,)
        key = np.unique(pos * n_c + block)  # unique (page, centroid) pairs, page-major
        codes_parts.append((key % n_c).astype(np.uint16))
        pos_parts.append((key // n_c).astype(np.uint32))
        start = end
    codes_all = np.concatenate(codes_parts) if codes_parts else np.zeros(0, np.uint16)
    pos_all = np.concatenate(pos_parts) if pos_parts else np.zeros(0, np.uint32)
    order = np.argsort(codes_all, kind="stable")  # keeps page positions increasing within a centroid
    offsets = np.zeros(n_c + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes_all, minlength=n_c), out=offsets[1:])
    page_ids = np.fromiter((p.id for p in pages), dtype=np.int64, count=len(pages))
    return CentroidIvf(snap.generation, n_c, page_ids, offsets, pos_all[order])


def load(idx: Index) -> CentroidIvf | None:
    """The cached inverted file (memory-mapped), or None when missing or unreadable (it is only a cache)."""
    folder = idx.path / ANN_DIR
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        names = {k: state[k] for k in ("pages", "offsets", "entries")}
        if not all(isinstance(n, str) and _ARRAY_NAME.fullmatch(n) for n in names.values()):
            return None  # state.json names a file colrag does not write: never open it
        arrays = {k: np.load(folder / n, mmap_mode="r", allow_pickle=False) for k, n in names.items()}
        n_c = int(state["n_centroids"])
        if len(arrays["offsets"]) != n_c + 1 or int(arrays["offsets"][-1]) != len(arrays["entries"]):
            return None
        return CentroidIvf(int(state["generation"]), n_c, np.asarray(arrays["pages"]), arrays["offsets"], arrays["entries"])
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def save(idx: Index, ivf: CentroidIvf) -> None:
    """Write the arrays under names carrying the generation, then point state.json at them."""
    folder = _own_folder(idx)
    folder.mkdir(exist_ok=True)
    base = f"g{ivf.generation}"
    names = {}
    for key, arr in (("pages", ivf.page_ids), ("offsets", ivf.offsets), ("entries", ivf.entries)):
        names[key] = f"{base}.{key}.npy"
        tmp = folder / f".{names[key]}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(arr), allow_pickle=False)
        tmp.replace(folder / names[key])
    atomic_write_json(folder / STATE_FILE, {"generation": ivf.generation, "n_centroids": ivf.n_centroids, **names})
    for old in folder.iterdir():
        if old.name not in (STATE_FILE, *names.values()) and _OWN_NAME.fullmatch(old.name):
            old.unlink(missing_ok=True)


def drop(idx: Index) -> None:
    """Delete the cache (only the names colrag writes in ann/)."""
    folder = _own_folder(idx)
    if folder.is_dir():
        for f in folder.iterdir():
            if _OWN_NAME.fullmatch(f.name):
                f.unlink(missing_ok=True)


def _own_folder(idx: Index) -> Path:
    folder = idx.path / ANN_DIR
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise IndexStoreError(f"{folder} is a link or not a folder: colrag does not write through links inside an index")
    return folder


def ensure(idx: Index, snap: Snapshot, *, save_to_disk: bool = False) -> CentroidIvf | None:
    """An inverted file for exactly the pages of `snap`: the cache if current, else rebuilt."""
    ivf = load(idx)
    if ivf is not None and ivf.generation == snap.generation:
        return ivf
    ivf = build(idx, snap)
    if ivf is not None and save_to_disk:
        save(idx, ivf)
    return ivf
