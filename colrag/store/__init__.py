"""Index storage: manifest, SQLite catalog, fp16 vector segments, FAISS cache, writer lock."""

from .index import CheckReport, Index, RetrieverInfo, Snapshot

__all__ = ["Index", "RetrieverInfo", "Snapshot", "CheckReport"]
