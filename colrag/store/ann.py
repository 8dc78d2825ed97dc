"""FAISS token index for candidate generation: a cache, rebuildable from vectors/.

Every visible page token vector is one FAISS entry; `token_pages[i]` is the page id of
entry i. Search asks, for each query token, its nearest page tokens and takes the
pages they belong to as candidates (exact MaxSim reranks them; see colrag.search).

Kind, chosen by the number of token vectors N at (re)build time:
  - N <= FLAT_MAX_TOKENS: `IndexScalarQuantizer(fp16, inner product)`: exact token search.
  - otherwise `IndexIVFScalarQuantizer(fp16, inner product)` with nlist ~ sqrt(N)
    lists, trained on 40 sampled tokens per list, searched with nprobe = NPROBE lists.

Files: ann/g<generation>.faiss, ann/g<generation>.pages.npy (int64 page ids) and
ann/state.json naming them with the catalog generation they reflect. A stale cache is
extended with the pages added since (pages removed since are filtered at search time)
and rebuilt when over a quarter of its entries belong to removed pages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import atomic_write_json
from .index import Index, Snapshot

ANN_DIR = "ann"
STATE_FILE = "state.json"
FLAT_MAX_TOKENS = 1 << 18  # ~340 pages of 768 tokens: exact token search is cheap below this
NPROBE = 32
TRAIN_PER_LIST = 40  # k-means training points per inverted list
MAX_DEAD_FRACTION = 0.25
_ADD_CHUNK = 1 << 16


@dataclass
class TokenAnn:
    index: object  # faiss.Index
    token_pages: np.ndarray  # (ntotal,) int64 page id of every entry
    generation: int
    kind: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """For each query token (n_q, dim) its k best entries: (scores (n_q, k), page ids (n_q, k), -1 = none)."""
        k = max(1, min(k, self.index.ntotal))
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # (n_q, k) each
        pages = np.where(ids >= 0, self.token_pages[np.maximum(ids, 0)], -1)
        return scores, pages


def _faiss():
    import faiss

    return faiss


def _nlist(n_tokens: int) -> int:
    """About sqrt(N) lists, a power of two in [256, 65536]."""
    return int(min(65536, max(256, 2 ** round(math.log2(math.sqrt(max(n_tokens, 1)))))))


def _new_index(dim: int, n_tokens: int, sample: np.ndarray | None):
    faiss = _faiss()
    if n_tokens <= FLAT_MAX_TOKENS or sample is None or len(sample) < _nlist(n_tokens) * 4:
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT), "flat-fp16"
    nlist = _nlist(n_tokens)
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    ivf.train(sample)
    ivf.nprobe = NPROBE
    return ivf, f"ivf{nlist}-fp16"


def _page_rows(idx: Index, snap: Snapshot, pages) -> tuple[list[np.ndarray], list[np.ndarray]]:
    vecs, owners = [], []
    for p in pages:
        vecs.append(idx.page_vectors(snap, p))
        owners.append(np.full(p.n_tokens, p.id, dtype=np.int64))
    return vecs, owners


def _add(index, vecs: list[np.ndarray]) -> None:
    batch, size = [], 0
    for v in vecs + [None]:
        if v is not None:
            batch.append(v)
            size += len(v)
        if batch and (v is None or size >= _ADD_CHUNK):
            index.add(np.ascontiguousarray(np.concatenate(batch), dtype=np.float32))
            batch, size = [], 0


def build(idx: Index, snap: Snapshot) -> TokenAnn:
    pages = snap.pages
    n_tokens = sum(p.n_tokens for p in pages)
    sample = None
    if n_tokens > FLAT_MAX_TOKENS:
        # k-means on TRAIN_PER_LIST tokens per list, drawn from random pages (a few per page)
        rng = np.random.default_rng(0)
        n_train = TRAIN_PER_LIST * _nlist(n_tokens)
        chosen = np.sort(rng.choice(len(pages), size=min(len(pages), max(1, n_train // 16)), replace=False))
        rows = []
        for i in chosen:
            vecs = idx.page_vectors(snap, pages[i])
            rows.append(np.asarray(vecs[rng.choice(len(vecs), size=min(len(vecs), -(-n_train // len(chosen))), replace=False)], dtype=np.float32))
        sample = np.concatenate(rows)[:n_train]  # (n_train, dim)
    index, kind = _new_index(idx.dim, n_tokens, sample)
    vecs, owners = _page_rows(idx, snap, pages)
    _add(index, vecs)
    token_pages = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    return TokenAnn(index, token_pages, snap.generation, kind)


def load(idx: Index) -> TokenAnn | None:
    """The cached index, or None when missing or unreadable (it is only a cache)."""
    faiss = _faiss()
    folder = idx.path / ANN_DIR
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        index = faiss.read_index(str(folder / state["faiss"]))
        token_pages = np.load(folder / state["pages"], allow_pickle=False)
        if index.d != idx.dim or index.ntotal != len(token_pages):
            return None
        if hasattr(index, "nprobe"):
            index.nprobe = NPROBE
        return TokenAnn(index, token_pages.astype(np.int64), int(state["generation"]), str(state["kind"]))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError):
        return None


def save(idx: Index, ann: TokenAnn) -> None:
    """Write the cache under names carrying its generation, then point state.json at them."""
    faiss = _faiss()
    folder = idx.path / ANN_DIR
    folder.mkdir(exist_ok=True)
    base = f"g{ann.generation}"
    tmp = folder / f".{base}.faiss.tmp"
    faiss.write_index(ann.index, str(tmp))
    tmp.replace(folder / f"{base}.faiss")
    with open(folder / f".{base}.pages.tmp", "wb") as f:
        np.save(f, ann.token_pages, allow_pickle=False)
    (folder / f".{base}.pages.tmp").replace(folder / f"{base}.pages.npy")
    atomic_write_json(
        folder / STATE_FILE,
        {"generation": ann.generation, "kind": ann.kind, "faiss": f"{base}.faiss", "pages": f"{base}.pages.npy", "ntotal": int(ann.index.ntotal)},
    )
    for old in folder.iterdir():
        if old.name not in (STATE_FILE, f"{base}.faiss", f"{base}.pages.npy"):
            old.unlink(missing_ok=True)


def drop(idx: Index) -> None:
    folder = idx.path / ANN_DIR
    if folder.is_dir():
        for f in folder.iterdir():
            f.unlink(missing_ok=True)


def ensure(idx: Index, snap: Snapshot, *, save_to_disk: bool = False) -> TokenAnn:
    """A token index covering every page of `snap`: the cache as is, extended, or rebuilt."""
    ann = load(idx)
    if ann is not None and ann.generation == snap.generation:
        return ann
    live = {p.id for p in snap.pages}
    if ann is not None:
        dead = ~np.isin(ann.token_pages, np.fromiter(live, dtype=np.int64, count=len(live)))
        if len(dead) and dead.mean() > MAX_DEAD_FRACTION:
            ann = None
    if ann is None:
        ann = build(idx, snap)
    else:
        have = set(np.unique(ann.token_pages).tolist())
        new = [p for p in snap.pages if p.id not in have]
        vecs, owners = _page_rows(idx, snap, new)
        _add(ann.index, vecs)
        if owners:
            ann.token_pages = np.concatenate([ann.token_pages, *owners])
        ann.generation = snap.generation
    if save_to_disk:
        save(idx, ann)
    return ann
