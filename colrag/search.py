"""Search: embed the query, gather candidate pages, rerank them by exact MaxSim.

Candidate stage (parameters explained in docs/INDEX_FORMAT.md):
  - an index with at most EXACT_ALL_PAGES visible pages: every page is a candidate,
    so results equal brute-force MaxSim over the whole index exactly;
  - a larger one: the FAISS token index (colrag.store.ann) returns, for each query
    token, its TOKEN_HITS nearest page tokens; their pages form the candidate set,
    grown (TOKEN_HITS doubled) until it holds at least max(MIN_CANDIDATES,
    10 * top_k) pages, and cut to the MAX_RERANK best by their partial MaxSim.
Rerank: colrag.scoring.maxsim over the stored fp16 vectors (as float32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import IndexStoreError, InputError
from .scoring import maxsim
from .store import ann
from .store.catalog import PageRecord
from .store.index import Index, Snapshot

EXACT_ALL_PAGES = 2000
TOKEN_HITS = 256
MIN_CANDIDATES = 100
MAX_RERANK = 2000


@dataclass(frozen=True)
class Hit:
    file: str
    page: int  # 1-based
    score: float

    def as_dict(self) -> dict:
        return asdict(self)


class Searcher:
    def __init__(
        self,
        index: Index,
        retriever,
        *,
        exact_all_pages: int = EXACT_ALL_PAGES,
        token_hits: int = TOKEN_HITS,
        min_candidates: int = MIN_CANDIDATES,
        max_rerank: int = MAX_RERANK,
    ):
        self.index = index
        self.retriever = retriever
        self.exact_all_pages = exact_all_pages
        self.token_hits = token_hits
        self.min_candidates = min_candidates
        self.max_rerank = max_rerank
        self._ann: ann.TokenAnn | None = None

    def search(self, query: str, top_k: int = 5) -> list[Hit]:
        if not query.strip():
            raise InputError("the query is empty")
        (q,) = self.retriever.embed_queries([query])  # (n_q, dim)
        return self.search_vectors(q, top_k)

    def search_vectors(self, q: np.ndarray, top_k: int = 5) -> list[Hit]:
        if top_k < 1:
            raise InputError("--top-k must be at least 1")
        snap = self.index.snapshot()
        if not snap.pages:
            raise IndexStoreError(f"index {self.index.path} has no pages yet: run `colrag index DIR` first")
        q = np.asarray(q, dtype=np.float32)  # (n_q, dim)
        pages = self.candidates(q, snap, top_k)
        scores = maxsim([q], [self.index.page_vectors(snap, p) for p in pages])[0]  # (n_candidates,)
        order = sorted(range(len(pages)), key=lambda i: (-scores[i], pages[i].path, pages[i].page_no))
        return [Hit(pages[i].path, pages[i].page_no, float(scores[i])) for i in order[:top_k]]

    def candidates(self, q: np.ndarray, snap: Snapshot, top_k: int) -> list[PageRecord]:
        if len(snap.pages) <= self.exact_all_pages:
            return snap.pages
        if self._ann is None or self._ann.generation != snap.generation:
            # a writer saves the refreshed cache; a reader only extends it in memory
            self._ann = ann.ensure(self.index, snap, save_to_disk=self.index.writable)
        by_id = {p.id: p for p in snap.pages}
        want = min(len(by_id), max(self.min_candidates, 10 * top_k))
        k = self.token_hits
        while True:
            scores, page_ids = self._ann.search(q, k)  # (n_q, k) each
            partial = _partial_maxsim(scores, page_ids, by_id)
            if len(partial) >= want or k >= self._ann.index.ntotal:
                break
            k *= 2
        best = sorted(partial, key=lambda pid: -partial[pid])[: max(want, self.max_rerank)]
        return [by_id[pid] for pid in best]


def _partial_maxsim(scores: np.ndarray, page_ids: np.ndarray, live: dict) -> dict[int, float]:
    """Per candidate page: sum over query tokens of the best hit seen in that page (a lower bound of MaxSim)."""
    best: dict[int, float] = {}
    for row_scores, row_pages in zip(scores, page_ids):
        seen: dict[int, float] = {}
        for s, pid in zip(row_scores.tolist(), row_pages.tolist()):
            if pid >= 0 and pid in live and pid not in seen:
                seen[pid] = s  # hits come best first
        for pid, s in seen.items():
            best[pid] = best.get(pid, 0.0) + s
    return best
