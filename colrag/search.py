"""Search: embed the query, gather candidate pages, rerank them by exact MaxSim.

Candidate stage (parameters explained in docs/INDEX_FORMAT.md):
  - an index with at most EXACT_ALL_PAGES visible pages, or without centroids yet
    (colrag.store.codebook): every page is a candidate, so results equal brute-force
    MaxSim over the whole index exactly;
  - a larger one (PLAID-style centroid interaction): each query token picks its NPROBE
    best centroids; a page on the inverted list (colrag.store.ann) of a probed centroid
    gets, for that query token, the best such centroid's score (0 when none of its
    centroids was probed); the sum over query tokens ranks the pages, and the best
    CANDIDATES of them are reranked.
Rerank: colrag.scoring.maxsim over the candidates' stored int8 rows, dequantized as
Index.page_vectors does: every returned score is the exact MaxSim over the stored vectors
(bit for bit when every page is scored; to float rounding, ~1e-7 relative, otherwise, as
BLAS may sum a product in another order for another set of pages).
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import IndexStoreError, InputError
from .runtime import configured_threads
from .scoring import maxsim
from .store import ann
from .store.catalog import PageRecord
from .store.index import Index, Snapshot
from .store.vectors import willneed

EXACT_ALL_PAGES = 500
NPROBE = 8
CANDIDATES = 256
MAX_STALE_PAGES = 2000  # pages missing from a stale inverted file before a reader rebuilds it in memory
BLAS_THREADS = 1  # numpy's OpenBLAS threads during a search (see _blas_threads)
PROBE_GROUP = 64  # centroids per group when picking each query token's best ones (best_centroids)
MAX_SEARCH_WORKERS = 4  # threads that rerank candidates (maxsim_int8); measured on 2 cores only
MIN_PAGES_PER_WORKER = 32  # below this a second thread costs more than it saves


@dataclass(frozen=True)
class Hit:
    file: str
    page: int  # 1-based
    score: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _View:
    """What one catalog generation needs for search, computed once per generation."""

    snap: Snapshot
    ivf: ann.CentroidIvf | None = None
    ivf_pages: list[PageRecord | None] | None = None  # page of each inverted-file position (None: removed since)
    live: np.ndarray | None = None  # (n_positions,) bool: the position's page is still visible
    uncovered: list[PageRecord] | None = None  # visible pages the inverted file does not know (added since)


class Searcher:
    def __init__(
        self,
        index: Index,
        retriever,
        *,
        exact_all_pages: int = EXACT_ALL_PAGES,
        nprobe: int = NPROBE,
        candidates: int = CANDIDATES,
    ):
        self.index = index
        self.retriever = retriever
        self.exact_all_pages = exact_all_pages
        self.nprobe = nprobe
        self.n_candidates = candidates
        self._view: _View | None = None

    def search(self, query: str, top_k: int = 5) -> list[Hit]:
        if not query.strip():
            raise InputError("the query is empty")
        (q,) = self.retriever.embed_queries([query])  # (n_q, dim)
        return self.search_vectors(q, top_k)

    def search_vectors(self, q: np.ndarray, top_k: int = 5) -> list[Hit]:
        if top_k < 1:
            raise InputError("--top-k must be at least 1")
        view = self._current_view()
        snap = view.snap
        if not snap.pages:
            raise IndexStoreError(f"index {self.index.path} has no pages yet: run `colrag index DIR` first")
        q = np.asarray(q, dtype=np.float32)  # (n_q, dim)
        pages = self.candidates(q, top_k)
        self.index.prefetch(snap, pages)  # cold pages: one parallel read instead of one fault after another
        if pages is snap.pages:  # every page: the very computation a brute-force check does
            scores = maxsim([q], [self.index.page_vectors(snap, p) for p in pages])[0]  # (n_pages,)
        else:
            scores = maxsim_int8(q, [self.index.page_rows(snap, p) for p in pages])  # (n_candidates,)
        order = sorted(range(len(pages)), key=lambda i: (-scores[i], pages[i].path, pages[i].page_no))
        return [Hit(pages[i].path, pages[i].page_no, float(scores[i])) for i in order[:top_k]]

    def _current_view(self) -> _View:
        gen = self.index.generation()
        if self._view is None or self._view.snap.generation != gen:
            self._view = _View(self.index.snapshot())
        return self._view

    def _centroid_view(self, view: _View) -> None:
        """Attach the inverted file: the cache (current or stale), or one built in memory."""
        snap = view.snap
        ivf = ann.load(self.index)
        by_id = {p.id: p for p in snap.pages}
        if ivf is not None and ivf.generation != snap.generation:
            known = set(ivf.page_ids.tolist())
            if sum(p.id not in known for p in snap.pages) > MAX_STALE_PAGES:
                ivf = None
        if ivf is None:
            # a writer saves what it builds; a reader keeps it in memory for this process
            ivf = ann.ensure(self.index, snap, save_to_disk=self.index.writable)
        view.ivf = ivf
        view.ivf_pages = [by_id.get(i) for i in ivf.page_ids.tolist()]
        view.live = np.fromiter((p is not None for p in view.ivf_pages), dtype=bool, count=len(view.ivf_pages))
        known = set(ivf.page_ids.tolist())
        view.uncovered = [p for p in snap.pages if p.id not in known]

    def candidates(self, q: np.ndarray, top_k: int) -> list[PageRecord]:
        view = self._current_view()
        snap = view.snap
        if len(snap.pages) <= max(self.exact_all_pages, top_k) or snap.codebook is None:
            return snap.pages
        if view.ivf is None:
            self._centroid_view(view)
        book = self.index.codebook(snap)
        with _blas_threads(BLAS_THREADS):
            scores = centroid_scores(q, book.fine, view.ivf, self.nprobe)  # (n_positions,)
        live = view.live
        scores[~live] = -np.inf
        want = min(int(live.sum()), max(self.n_candidates, top_k))
        best = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
        best = best[np.isfinite(scores[best])]
        return [view.ivf_pages[i] for i in best] + view.uncovered


def maxsim_int8(q: np.ndarray, pages: list[np.ndarray], block_rows: int = 1 << 14, workers: int | None = None) -> np.ndarray:
    """MaxSim of one query (n_q, dim) against pages of stored int8 rows, dequantized on the fly:
    score = sum_i max_t (q_i . r_t) / ||r_t||.

    The pages are split into `workers` contiguous shares (default: search_workers()),
    each scored in its own thread with a one-thread BLAS (numpy releases
    the GIL in every step), so both cores of a laptop work without OpenBLAS's own
    threads, which spin and wait when the machine is busy (see _blas_threads)."""
    scores = np.zeros(len(pages), dtype=np.float32)
    if not pages:
        return scores
    n_workers = max(1, min(workers or search_workers(), len(pages) // MIN_PAGES_PER_WORKER))
    if n_workers == 1:
        with _blas_threads(BLAS_THREADS):
            _maxsim_int8_into(q, pages, scores, block_rows)
        return scores
    cuts = np.linspace(0, len(pages), n_workers + 1).astype(int)

    def share(k: int) -> None:
        with _blas_threads(BLAS_THREADS):
            _maxsim_int8_into(q, pages[cuts[k] : cuts[k + 1]], scores[cuts[k] : cuts[k + 1]], block_rows)

    with ThreadPoolExecutor(n_workers) as pool:
        list(pool.map(share, range(n_workers)))  # list(): re-raises a worker's exception here
    return scores


def search_workers() -> int:
    """One rerank thread per core (OMP_NUM_THREADS, as for onnxruntime, else the machine's), at most MAX_SEARCH_WORKERS."""
    return max(1, min(configured_threads() or os.cpu_count() or 1, MAX_SEARCH_WORKERS))


def _maxsim_int8_into(q: np.ndarray, pages: list[np.ndarray], scores: np.ndarray, block_rows: int) -> None:
    """maxsim_int8 of `pages` written into `scores`, on blocks of ~block_rows rows (cache-sized).

    Each page's int8 rows are widened straight into a float32 block buffer (one pass; an
    int8 concatenate + astype took 5x longer), and 1 / ||r_t|| scales the (n, n_q)
    similarities rather than the (n, dim) rows."""
    if not pages:
        return
    dim = pages[0].shape[1]
    buf = np.empty((max(block_rows, max(len(p) for p in pages)), dim), dtype=np.float32)
    i = 0
    while i < len(pages):
        j, n = i, 0
        while j < len(pages) and n + len(pages[j]) <= len(buf):
            np.copyto(buf[n : n + len(pages[j])], pages[j], casting="unsafe")
            n += len(pages[j])
            j += 1
        block = buf[:n]  # (n, dim)
        inv_norm = 1.0 / np.sqrt(np.einsum("ij,ij->i", block, block))  # (n,)
        sim = block @ q.T  # (n, n_q): this orientation multiplies faster than q @ block.T
        sim *= inv_norm[:, None]
        starts = np.cumsum([0] + [len(p) for p in pages[i : j - 1]])
        scores[i:j] = np.maximum.reduceat(sim, starts, axis=0) @ np.ones(len(q), dtype=np.float32)  # (j - i,)
        i = j


def best_centroids(sim_t: np.ndarray, k: int, group: int = PROBE_GROUP) -> tuple[np.ndarray, np.ndarray]:
    """The k best centroids of each query token, from sim_t (n_centroids, n_q): ids and scores, (n_q, k) each, unordered.

    Exact, and ~7x faster than one argpartition over every centroid: the k best of a
    column lie in the k groups (of `group` consecutive centroids) with the highest maxima,
    since a group outside those has k better elements above its maximum."""
    n_c, n_q = sim_t.shape
    if n_c % group or n_c // group <= k:
        ids = np.argpartition(-sim_t, k - 1, axis=0)[:k]  # (k, n_q)
    else:
        group_max = sim_t.reshape(n_c // group, group, n_q).max(axis=1)  # (n_groups, n_q)
        groups = np.argpartition(-group_max, k - 1, axis=0)[:k]  # (k, n_q)
        cand = (groups[:, None, :] * group + np.arange(group)[None, :, None]).reshape(k * group, n_q)
        pick = np.argpartition(-np.take_along_axis(sim_t, cand, axis=0), k - 1, axis=0)[:k]  # (k, n_q)
        ids = np.take_along_axis(cand, pick, axis=0)
    return ids.T, np.take_along_axis(sim_t, ids, axis=0).T


def centroid_scores(q: np.ndarray, centroids: np.ndarray, ivf: ann.CentroidIvf, nprobe: int) -> np.ndarray:
    """Approximate MaxSim of every inverted-file page: sum over query tokens of the best score
    among the token's `nprobe` best centroids that the page holds (0 when it holds none)."""
    sim_t = centroids @ q.T  # (n_centroids, n_q): this orientation multiplies faster than q @ centroids.T
    n_q = len(q)
    nprobe = min(nprobe, sim_t.shape[0])
    probe, probe_sim = best_centroids(sim_t, nprobe)  # (n_q, nprobe) each, unordered
    rank = np.argsort(-probe_sim, axis=1)
    probe = np.take_along_axis(probe, rank, axis=1)  # (n_q, nprobe) best first
    probe_sim = np.take_along_axis(probe_sim, rank, axis=1)
    best = np.zeros((len(ivf.page_ids), n_q), dtype=np.float32)  # (n_pages, n_q)
    flat = best.reshape(-1)
    offsets, entries = ivf.offsets, ivf.entries
    starts, ends = offsets[probe].reshape(-1), offsets[probe + 1].reshape(-1)  # every list this search reads
    willneed(entries, [(int(a) * entries.itemsize, int(b - a) * entries.itemsize) for a, b in zip(starts, ends)])
    # worst probe first: a better centroid of the same (page, token) overwrites it
    for r in range(nprobe - 1, -1, -1):
        cs = probe[:, r]
        lists = [entries[offsets[c] : offsets[c + 1]] for c in cs]
        sizes = np.fromiter((len(x) for x in lists), dtype=np.int64, count=n_q)
        if not sizes.sum():
            continue
        pos = np.concatenate(lists).astype(np.int64)  # (sum sizes,)
        tok = np.repeat(np.arange(n_q), sizes)
        flat[pos * n_q + tok] = np.repeat(probe_sim[:, r], sizes)
    return best @ np.ones(n_q, dtype=np.float32)  # (n_pages,) row sums; a BLAS gemv reads the array faster than .sum(1)


_SET_LOCAL_THREADS: list = []


@contextmanager
def _blas_threads(n: int):
    """Run numpy's OpenBLAS with n threads in this thread (best effort; OpenBLAS >= 0.3.27).

    A search multiplies many small matrices (25 query tokens x a few hundred pages); with
    every core busy elsewhere, OpenBLAS's own threads spin and wait: measured on the
    2-core machine under load 3-4, 512 candidate pages took 150-240 ms with 2 BLAS
    threads and 43 ms with 1.
    """
    if not _SET_LOCAL_THREADS:
        fn = None
        libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
        for lib in sorted(libs.glob("*openblas*.so*")) if libs.is_dir() else []:
            try:
                fn = ctypes.CDLL(str(lib)).openblas_set_num_threads_local
                fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
                break
            except (OSError, AttributeError):
                fn = None
        _SET_LOCAL_THREADS.append(fn)
    fn = _SET_LOCAL_THREADS[0]
    if fn is None or n <= 0:
        yield
        return
    previous = fn(n)
    try:
        yield
    finally:
        fn(previous)
