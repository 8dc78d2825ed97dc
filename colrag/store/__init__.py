"""Index storage.

A local index is a folder (colrag.store.index): manifest, SQLite catalog, FAISS vector files
(SQ8 segments, coarse centroids, page lists), page features and a writer lock.
colrag.store.qdrant keeps the pages in Qdrant instead (the `qdrant` extra).
"""

from .check import CheckReport
from .index import Index, Snapshot
from .manifest import RetrieverInfo

__all__ = ["CheckReport", "Index", "RetrieverInfo", "Snapshot"]
