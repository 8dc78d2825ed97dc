"""Search: embed the query, gather candidate pages (FAISS), rerank them by MaxSim over their stored codes.

Candidate stage (parameters explained in docs/INDEX_FORMAT.md):
  - an index with at most EXACT_ALL_PAGES visible pages, or without coarse centroids yet
    (colrag.store.coarse): every page is a candidate, so results equal brute-force MaxSim
    over the whole index (over the decoded stored vectors) exactly;
  - a larger one (PLAID-style centroid interaction): FAISS's coarse quantizer gives each
    query token its NPROBE best centroids (quantizer.search); a page on the FAISS page list
    (colrag.store.lists) of a probed centroid gets, for that query token, the best such
    centroid's score (0 when none of its centroids was probed); the sum over query tokens
    ranks the pages and the best CANDIDATES go on. Pages removed since the lists were
    built are filtered out here (their ids are not in the snapshot); pages added since
    are always candidates.
Rerank: MaxSim over the candidates' SQ8 codes (maxsim_sq8): FAISS's SQ8 decode is affine,
x = SCALE * c + OFFSET, so q . x = SCALE * (q . c) + OFFSET * sum(q) is applied after the
product on the raw codes. Scores equal MaxSim over the decoded vectors to float rounding.
The candidates are cut into fixed blocks of BLOCK_PAGES pages, scored by `threads`
workers: the same blocks whatever the thread count, so results do not depend on it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexStoreError, InputError
from .scoring import maxsim
from .store.catalog import PageRecord
from .store.index import Index, Snapshot
from .store.lists import PageLists
from .store.segments import OFFSET, SCALE
from .vlm.runtime import configured_threads

EXACT_ALL_PAGES = 500
NPROBE = 8
CANDIDATES = 256  # up to CANDIDATES_FLAT_PAGES visible pages; beyond, candidates_for() grows it
CANDIDATES_FLAT_PAGES = 100_000  # measured: 256 candidates hold tie-tolerant recall 1.000 at 100k (BENCHMARKS.md)
MAX_CANDIDATES = 1024
MAX_STALE_PAGES = 2000  # pages the lists lack before a reader builds them in memory instead
BLAS_THREADS = 1  # numpy's OpenBLAS threads during a search (see _blas_threads)
MAX_SEARCH_WORKERS = 4  # threads that rerank candidates; measured on 2 cores only
BLOCK_PAGES = 32  # pages per rerank block (fixed: the blocks do not depend on the thread count)


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
    ids_sorted: np.ndarray | None = None  # (n_pages,) int64 visible page ids, sorted
    order: np.ndarray | None = None  # (n_pages,) positions in snap.pages of ids_sorted
    lists: PageLists | None = None
    uncovered: list[PageRecord] | None = None  # visible pages the lists do not hold (added since)


class Searcher:
    def __init__(
        self,
        index: Index,
        retriever: Any,
        *,
        exact_all_pages: int = EXACT_ALL_PAGES,
        nprobe: int = NPROBE,
        candidates: int | None = None,
        threads: int | None = None,
        missing: str = "zero",
    ):
        self.index = index
        self.retriever = retriever
        self.exact_all_pages = exact_all_pages
        self.nprobe = nprobe
        self.n_candidates = candidates  # None: candidates_for(the number of visible pages)
        self.threads = threads
        self.missing = missing
        self._view: _View | None = None

    def search(self, query: str, top_k: int = 5) -> list[Hit]:
        if not query.strip():
            raise InputError("the query is empty")
        if self.retriever is None:
            raise IndexStoreError(
                f"index {self.index.path} was filled with precomputed vectors and has no retriever to embed "
                "a text query: search it from Python with colrag.open_index(...).search(query_vectors)"
            )
        (q,) = self.retriever.embed_queries([query])  # (n_q, dim)
        return self.search_vectors(q, top_k)

    def search_vectors(self, q: np.ndarray, top_k: int = 5) -> list[Hit]:
        if top_k < 1:
            raise InputError("--top-k must be at least 1")
        q = np.asarray(q, dtype=np.float32)  # (n_q, dim)
        if q.ndim != 2 or q.shape[1] != self.index.dim or len(q) == 0 or not np.all(np.isfinite(q)):
            raise InputError(f"query vectors must be a finite (n, {self.index.dim}) array, not shape {q.shape}")
        view = self._current_view()
        snap = view.snap
        if not snap.pages:
            raise IndexStoreError(f"index {self.index.path} has no pages yet: run `colrag index DIR` first")
        pages = self.candidates(q, top_k)
        self.index.prefetch(snap, pages)  # cold pages: one parallel read instead of one fault after another
        if pages is snap.pages:  # every page: the very computation a brute-force check does
            scores = maxsim([q], [self.index.page_vectors(snap, p) for p in pages])[0]  # (n_pages,)
        else:
            scores = maxsim_sq8(q, [self.index.page_codes(snap, p) for p in pages], workers=self.workers())
        order = sorted(range(len(pages)), key=lambda i: (-scores[i], pages[i].path, pages[i].page_no))
        return [Hit(pages[i].path, pages[i].page_no, float(scores[i])) for i in order[:top_k]]

    def workers(self) -> int:
        return max(1, min(self.threads, MAX_SEARCH_WORKERS)) if self.threads else search_workers()

    def _current_view(self) -> _View:
        gen = self.index.generation()
        if self._view is None or self._view.snap.generation != gen:
            self._view = _View(self.index.snapshot())
        return self._view

    def _attach_lists(self, view: _View) -> None:
        """The page lists: the saved cache (current or stale), or lists built in memory."""
        snap = view.snap
        ids = np.fromiter((p.id for p in snap.pages), dtype=np.int64, count=len(snap.pages))
        view.order = np.argsort(ids, kind="stable")
        view.ids_sorted = ids[view.order]
        lists = self.index.page_lists(snap)
        missing = view.ids_sorted > (lists.max_page_id if lists is not None else -1)  # added since (page ids only grow)
        if lists is None or int(missing.sum()) > MAX_STALE_PAGES:
            lists = self.index.build_page_lists(snap)  # a writer saves it; a reader keeps it in memory
            missing[:] = False
        view.lists = lists
        view.uncovered = [snap.pages[i] for i in view.order[missing]]

    def candidates(self, q: np.ndarray, top_k: int) -> list[PageRecord]:
        view = self._current_view()
        snap = view.snap
        if len(snap.pages) <= max(self.exact_all_pages, top_k) or snap.coarse is None:
            return snap.pages
        if view.lists is None:
            self._attach_lists(view)
        assert view.lists is not None and view.ids_sorted is not None and view.order is not None
        quantizer = self.index.coarse_quantizer(snap)
        nprobe = min(self.nprobe, int(quantizer.ntotal))
        extra = int(self.missing == "next" and nprobe < int(quantizer.ntotal))
        with faiss_threads(self.threads):
            sim, cent = quantizer.search(np.ascontiguousarray(q), nprobe + extra)  # (n_q, nprobe + extra), best first
        probe_sim, probe = sim[:, :nprobe], cent[:, :nprobe]
        fill = sim[:, nprobe] if extra else None  # a token's unprobed centroids score at most its next centroid's score
        with _blas_threads(BLAS_THREADS):
            scores = centroid_scores(
                view.lists, probe, probe_sim, view.ids_sorted, fill
            )  # (n_pages,) in ids_sorted order
        covered = np.flatnonzero(scores > -np.inf)
        n = self.n_candidates if self.n_candidates is not None else candidates_for(len(snap.pages))
        want = min(len(covered), max(n, top_k))
        best = covered[np.argpartition(-scores[covered], want - 1)[:want]] if want < len(covered) else covered
        return [snap.pages[i] for i in view.order[best]] + (view.uncovered or [])


def candidates_for(n_pages: int) -> int:
    """How many pages the rerank scores: CANDIDATES up to CANDIDATES_FLAT_PAGES pages, then growing as
    the square root of the index size (a multiple of BLOCK_PAGES), at most MAX_CANDIDATES.

    Measured on the clustered corpus (docs/INDEX_FORMAT.md): tie-tolerant recall@5 with 128 / 256 /
    512 candidates was 0.985 / 1.000 / 1.000 at 10,000 pages and 0.960 / 0.995 / 1.000 at 30,000:
    tripling the index doubled the candidates needed. Beyond 30,000 pages the growth is extrapolated
    (480 candidates at 100,000 pages), not measured."""
    if n_pages <= CANDIDATES_FLAT_PAGES:
        return CANDIDATES
    grown = CANDIDATES * (n_pages / CANDIDATES_FLAT_PAGES) ** 0.5
    return int(min(MAX_CANDIDATES, round(grown / BLOCK_PAGES) * BLOCK_PAGES))


def centroid_scores(
    lists: PageLists, probe: np.ndarray, probe_sim: np.ndarray, ids_sorted: np.ndarray, fill: np.ndarray | None = None
) -> np.ndarray:
    """Approximate MaxSim of every visible page (positions of ids_sorted): the sum over query tokens of
    the best score among the token's probed centroids whose list holds the page; for a token none of
    whose probed centroids the page holds, fill[token] (None: 0); -inf for pages on no probed list at all."""
    n_q, nprobe = probe.shape
    if fill is None:
        best = np.zeros((len(ids_sorted), n_q), dtype=np.float32)  # (n_pages, n_q)
    else:
        best = np.empty((len(ids_sorted), n_q), dtype=np.float32)
        best[:] = np.asarray(fill, dtype=np.float32)
    seen = np.zeros(len(ids_sorted), dtype=bool)
    flat = best.reshape(-1)
    # page id -> position in ids_sorted (-1: not visible): one gather per entry instead of a binary search
    last = max(int(ids_sorted[-1]) if len(ids_sorted) else 0, int(lists.max_page_id)) + 1  # the -1 sentinel
    where = np.full(last + 1, -1, dtype=np.int64)
    where[ids_sorted] = np.arange(len(ids_sorted))
    for r in range(nprobe - 1, -1, -1):  # worst probe first: a better centroid of the same (page, token) overwrites it
        parts = [lists.pages(c) for c in probe[:, r] if c >= 0]
        toks = [t for t in range(n_q) if probe[t, r] >= 0]
        if not parts:
            continue
        ids = np.concatenate(parts)
        tok = np.repeat(np.asarray(toks), [len(p) for p in parts])
        sims = np.repeat(probe_sim[toks, r], [len(p) for p in parts])
        pos = where[np.minimum(ids, last)]
        live = pos >= 0  # pages removed since the lists were built are filtered out here
        pos_c, tok, sims = pos[live], tok[live], sims[live]
        flat[pos_c * n_q + tok] = sims
        seen[pos_c] = True
    scores = best @ np.ones(
        n_q, dtype=np.float32
    )  # (n_pages,) row sums; a BLAS gemv reads the array faster than .sum(1)
    scores[~seen] = -np.inf
    return scores


def maxsim_sq8(q: np.ndarray, pages: list[np.ndarray], workers: int = 1, block_pages: int = BLOCK_PAGES) -> np.ndarray:
    """MaxSim of one query (n_q, dim) against pages of SQ8 codes (n_tokens, dim) uint8, each decoded as
    FAISS does (x = SCALE * c + OFFSET): score = sum_i (SCALE * max_t q_i . c_t + OFFSET * sum(q_i)).

    Pages are scored in fixed blocks of `block_pages` (one product per block, one-thread BLAS),
    spread over `workers` threads: the blocks, hence the scores, are the same for any thread count."""
    scores = np.zeros(len(pages), dtype=np.float32)
    if not pages:
        return scores
    q = np.ascontiguousarray(q, dtype=np.float32)
    qsum = q.sum(axis=1)  # (n_q,)
    blocks = [(s, min(s + block_pages, len(pages))) for s in range(0, len(pages), block_pages)]

    def run(share: list[tuple[int, int]]) -> None:
        rows_max = max(sum(len(p) for p in pages[a:b]) for a, b in share)
        buf = np.empty((rows_max, q.shape[1]), dtype=np.float32)  # codes widened straight into it (one pass)
        with _blas_threads(BLAS_THREADS):
            for a, b in share:
                n = 0
                for page in pages[a:b]:
                    np.copyto(buf[n : n + len(page)], page, casting="unsafe")
                    n += len(page)
                sim = buf[:n] @ q.T  # (n, n_q): this orientation multiplies faster than q @ rows.T
                starts = np.cumsum([0] + [len(p) for p in pages[a : b - 1]])
                best = np.maximum.reduceat(sim, starts, axis=0)  # (b - a, n_q)
                scores[a:b] = (best * SCALE + qsum * OFFSET) @ np.ones(len(q), dtype=np.float32)

    n_workers = max(1, min(workers, len(blocks)))
    if n_workers == 1:
        run(blocks)
        return scores
    with ThreadPoolExecutor(n_workers) as pool:
        list(pool.map(run, [blocks[k::n_workers] for k in range(n_workers)]))  # list(): re-raises a worker's exception
    return scores


def search_workers() -> int:
    """One rerank thread per core, at most MAX_SEARCH_WORKERS.

    Cores: OMP_NUM_THREADS, as for onnxruntime, else the machine's."""
    return max(1, min(configured_threads() or os.cpu_count() or 1, MAX_SEARCH_WORKERS))


@contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads for the duration (None: leave them as they are)."""
    if not n:
        yield
        return
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


_SET_LOCAL_THREADS: list = []


@contextmanager
def _blas_threads(n: int) -> Iterator[None]:
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
