"""colrag's Python API for page vectors: store and search multi-vector pages without any model bundle.

    import colrag
    # a writer; a new index takes dim from the first page (or dim=128)
    ix = colrag.open_index("path/or/name", create=True)
    ix.add_page("report.pdf", 3, vectors)          # (n_tokens, dim) float32, e.g. embedded on a GPU elsewhere
    ix.commit()
    hits = ix.search(query_vectors, k=5)           # (n_query_tokens, dim) float32 -> [Hit(file, page, score)]
    ix.remove_file("report.pdf"); ix.commit(); ix.close()

`open_index` takes a name (a folder under $COLRAG_HOME/indexes) or a path, like `--index`, or a
Qdrant index (`qdrant+edge:PATH`, `qdrant:http://HOST:6333/COLLECTION`; docs/SCALE.md).
Rows are stored as unit vectors (FAISS SQ8; MaxSim compares directions, as ColQwen2's
normalised vectors do). An index created here records that it has no retriever, so
`colrag search "text"` on it explains that it needs query vectors. The CLI uses the same
objects for `colrag search` (`search_text`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np

from .errors import IndexStoreError, InputError
from .search import Hit, Searcher
from .store import Index, RetrieverInfo

__all__ = ["Hit", "VectorIndex", "open_index"]


class VectorIndex:
    """An open index: a writer (add_page / remove_file / commit) unless opened with readonly=True."""

    def __init__(self, index: Index | None, *, threads: int | None = None, target: Any = None):
        self._index = index
        self._target = target  # a new index, created with the first page's dim
        self.threads = threads
        self._pending: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        self._removed: set[str] = set()
        self._searcher: Searcher | None = None

    @property
    def index(self) -> Index:
        if self._index is None:
            raise IndexStoreError(f"index {self._target} has no pages yet: add_page() and commit() first")
        return self._index

    @property
    def path(self) -> str:
        return str(self._index.path if self._index is not None else self._target)

    @property
    def dim(self) -> int | None:
        return self._index.dim if self._index is not None else None

    def add_page(self, file: str, page: int, vectors: Any) -> None:
        """Stage one page's (n_tokens, dim) vectors (page numbers are 1-based); stored at commit()."""
        x = np.asarray(vectors, dtype=np.float32)
        if self._index is None and x.ndim == 2 and 0 < x.shape[1] <= 65536:
            self._index = Index.open_writer(
                self._target, None, dim=int(x.shape[1])
            )  # a new index: dim from the first page
        if not self.index.writable:
            raise IndexStoreError(f"index {self.path} was opened read-only")
        if x.ndim != 2 or x.shape[1] != self.dim or len(x) == 0 or not np.all(np.isfinite(x)):
            raise InputError(f"{file} page {page}: vectors must be a finite (n, {self.dim}) array, not shape {x.shape}")
        if not isinstance(page, int) or page < 1:
            raise InputError(f"{file}: page numbers are integers from 1, not {page!r}")
        self._removed.discard(str(file))
        self._pending[str(file)][page] = x

    def remove_file(self, file: str) -> None:
        """Forget every page of a file (at commit())."""
        if self._index is None:
            return
        if not self.index.writable:
            raise IndexStoreError(f"index {self.path} was opened read-only")
        self._pending.pop(str(file), None)
        self._removed.add(str(file))

    def commit(self) -> None:
        """Store the staged pages and removals: searches see all of them from now on, or none after a crash."""
        if self._index is None:
            return
        if self._removed:
            self.index.remove_documents(sorted(self._removed))
            self._removed.clear()
        for file, pages in sorted(self._pending.items()):
            self.index.writer.put_pages(file, [(no, 0, 0, x) for no, x in sorted(pages.items())])
        self._pending.clear()
        self.index.refresh()

    def search(self, query_vectors: Any, k: int = 5) -> list[Hit]:
        """The k best pages for one query's (n_tokens, dim) vectors, by MaxSim."""
        return self._search().search_vectors(np.asarray(query_vectors, dtype=np.float32), k)

    def search_text(self, query: str, retriever: Any, k: int = 5) -> list[Hit]:
        """The k best pages for a text query, embedded by the retriever that built the index."""
        from .store.manifest import check_retriever

        check_retriever(self.index.path, self.index.manifest, RetrieverInfo.of(retriever))
        searcher = self._search()
        searcher.retriever = retriever
        return searcher.search(query, k)

    def _search(self) -> Searcher:
        if self._searcher is None:
            self._searcher = Searcher(self.index, None, threads=self.threads)
        return self._searcher

    def close(self) -> None:
        """Close (staged, uncommitted pages are dropped)."""
        self._pending.clear()
        if self._index is not None:
            self._index.close()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_index(
    path_or_name: str | os.PathLike | None = None,
    *,
    create: bool = True,
    dim: int | None = None,
    readonly: bool = False,
    threads: int | None = None,
) -> VectorIndex:
    """Open an index by name or path: a writer (created when missing and `create`, with `dim`), or a
    reader (readonly=True; works while another process writes). `threads`: FAISS and rerank threads.

    `qdrant+edge:PATH` or `qdrant:http://HOST:6333/COLLECTION` opens a Qdrant index instead
    (colrag.store.qdrant.QdrantIndex: the same add_page / commit / search / search_text /
    remove_file / close; an Edge index is opened by one process at a time; docs/SCALE.md)."""
    from .paths import index_dir
    from .store.qdrant import is_qdrant_spec

    if is_qdrant_spec(path_or_name):
        from .store.qdrant import open_qdrant

        return open_qdrant(str(path_or_name), create=create and not readonly, dim=dim)  # type: ignore[return-value]

    target = index_dir(str(path_or_name) if path_or_name is not None else None)
    if readonly:
        return VectorIndex(Index.open(target), threads=threads)
    exists = (target / "manifest.json").is_file()
    if not exists and not create:
        raise IndexStoreError(f"no index at {target} (open_index(..., create=True) creates one)")
    if not exists and not dim:
        return VectorIndex(None, threads=threads, target=target)  # created by the first add_page
    return VectorIndex(Index.open_writer(target, None, dim=dim), threads=threads)
