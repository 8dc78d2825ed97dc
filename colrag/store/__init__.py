"""Index storage: manifest, SQLite catalog, FAISS vector files (SQ8 segments, coarse centroids, page lists), writer lock."""

from .check import CheckReport
from .index import Index, Snapshot
from .manifest import RetrieverInfo

__all__ = ["CheckReport", "Index", "RetrieverInfo", "Snapshot"]
