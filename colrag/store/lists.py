"""Page lists for the candidate stage: centroid -> catalog ids of the pages holding a token of it.

A FAISS inverted file (IndexIVFFlat over 1-d entries): list c holds, once each, the
catalog ids of the pages that have at least one token assigned to centroid c (the
catalog's per-page centroid sets, colrag.store.coarse); each entry's 1-d value is unused
(1.0). FAISS builds it (`add_core` with the precomputed assignment), writes it
(vectors/lists-gNNNNNNNNN.faiss, named after the catalog generation it reflects) and maps it
read-only for readers (IO_FLAG_MMAP), so opening a 100,000-page index reads nothing
until a search probes a list. It is a cache: the writer rebuilds it from the catalog
when the pages it lacks pass a threshold; readers score the pages it lacks (ids above
the lists' `max_page_id`: page ids only grow) directly and skip the pages removed since
(colrag.search).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import faiss_io


def lists_name(generation: int) -> str:
    return f"lists-g{generation:09d}.faiss"


def build(n_centroids: int, page_ids: np.ndarray, centroid_sets: list[np.ndarray]) -> Any:
    """The page lists of these pages (page_ids[i] holds the centroids centroid_sets[i])."""
    faiss = faiss_io.faiss_module()
    quantizer = faiss.IndexFlatIP(1)  # never searched: the coarse quantizer lives in coarse-*.faiss
    quantizer.add(np.zeros((n_centroids, 1), dtype=np.float32))
    ivf = faiss.IndexIVFFlat(quantizer, 1, n_centroids, faiss.METRIC_INNER_PRODUCT)
    ivf.is_trained = True
    sizes = np.fromiter((len(s) for s in centroid_sets), dtype=np.int64, count=len(centroid_sets))
    if sizes.sum():
        assign = np.ascontiguousarray(np.concatenate(centroid_sets).astype(np.int64))
        ids = np.ascontiguousarray(np.repeat(np.asarray(page_ids, dtype=np.int64), sizes))
        ones = np.ones((len(ids), 1), dtype=np.float32)
        ivf.add_core(len(ids), faiss.swig_ptr(ones), faiss.swig_ptr(ids), faiss.swig_ptr(assign))
    return ivf


class PageLists:
    """Read access to a page-lists index (memory-mapped or in memory)."""

    def __init__(self, ivf: Any, generation: int, max_page_id: int):
        self.ivf = ivf
        self.generation = generation
        self.max_page_id = max_page_id  # every page id <= this that is still visible is on the lists
        self.n_centroids = int(ivf.nlist)
        self._invlists = ivf.invlists
        self._faiss = faiss_io.faiss_module()

    def pages(self, centroid: int) -> np.ndarray:
        """The (n,) int64 catalog page ids on one list (a view into the mapping)."""
        n = int(self._invlists.list_size(int(centroid)))
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        return self._faiss.rev_swig_ptr(self._invlists.get_ids(int(centroid)), n)

    def all_page_ids(self) -> np.ndarray:
        """Every distinct page id the lists hold (one pass over them)."""
        parts = [self.pages(c) for c in range(self.n_centroids)]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    @property
    def entries(self) -> int:
        return int(self.ivf.ntotal)
