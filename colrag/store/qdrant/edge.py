"""The embedded engine: a Qdrant Edge shard (`qdrant-edge-py`, Qdrant's Rust engine in this
process, the same storage format as a server) in `<folder>/shard`. One process at a time
(Qdrant locks its write-ahead log; colrag's write.lock says so first). No background
optimizer: `optimize()` builds the pooled vectors' HNSW graph when asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import IndexStoreError
from .schema import (
    DOC,
    EDGE_SHARD_DIR,
    GEN,
    HNSW_EF,
    HNSW_EF_CONSTRUCT,
    HNSW_FULL_SCAN_KB,
    HNSW_M,
    INDEXING,
    MANIFEST_ID,
    POOLED,
    STATE,
    TOKENS,
    _folder_bytes,
    _import,
    _Page,
    _payload_page,
    _Scored,
)


class EdgeEngine:
    def __init__(self, folder: Path):
        self.qe = _import("qdrant_edge")
        self.folder = folder
        self.path = folder / EDGE_SHARD_DIR
        self.shard: Any = None
        if self.exists():
            try:
                self.shard = self.qe.EdgeShard.load(str(self.path))
            except Exception as exc:  # the engine raises a bare Exception with its message
                raise IndexStoreError(f"cannot open the Qdrant Edge shard {self.path}: {exc}") from None

    def exists(self) -> bool:
        return (self.path / "edge_config.json").is_file()

    def is_empty(self) -> bool:
        return int(self.shard.count(self.qe.CountRequest(exact=True))) == 0

    def create(self, dim: int) -> None:
        qe = self.qe
        if self.shard is not None:  # a shard created by a run that died before writing its manifest
            self._field_indexes()
            return
        tokens = qe.EdgeVectorParams(
            size=dim,
            distance=qe.Distance.Dot,
            multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
            datatype=qe.VectorStorageDatatype.Float16,
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10000),
        )
        pooled = qe.EdgeVectorParams(
            size=dim,
            distance=qe.Distance.Dot,
            multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
            datatype=qe.VectorStorageDatatype.Float16,
            hnsw_config=qe.HnswIndexConfig(
                m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=HNSW_FULL_SCAN_KB
            ),
        )
        self.shard = qe.EdgeShard.create(str(self.path), qe.EdgeConfig(vectors={TOKENS: tokens, POOLED: pooled}))
        self._field_indexes()

    def _field_indexes(self) -> None:
        qe = self.qe
        for key in ("file", DOC, STATE):
            self.shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))

    def get_manifest(self) -> dict[str, Any] | None:
        return self.get_meta(MANIFEST_ID)

    def put_manifest(self, manifest: dict[str, Any]) -> None:
        self.put_meta(MANIFEST_ID, manifest)
        self.shard.flush()

    def get_meta(self, point: str) -> dict[str, Any] | None:
        """The payload of a vector-less point (the manifest, a document), None if absent."""
        recs = self.shard.retrieve([point], with_payload=True, with_vector=False)
        return dict(recs[0].payload) if recs else None

    def put_meta(self, point: str, payload: dict[str, Any]) -> None:
        self.shard.update(self.qe.UpdateOperation.upsert_points([self.qe.Point(point, {}, payload)]))

    def delete_ids(self, points: list[str]) -> None:
        if points:
            self.shard.update(self.qe.UpdateOperation.delete_points(points))

    def set_file_state(self, file: str, state: str, generation: int | None = None) -> None:
        """Every page of a file (of one generation) gets payload state=`state` (one operation)."""
        flt = self._file_filter(file, only_gen=generation)
        self.shard.update(self.qe.UpdateOperation.set_payload_by_filter(flt, {STATE: state}))

    def scroll_docs(self) -> Iterator[dict[str, Any]]:
        """The payloads of every document point."""
        qe = self.qe
        flt = qe.Filter(must=[qe.FieldCondition(DOC, is_empty=False)])
        offset = None
        while True:
            recs, offset = self.shard.scroll(
                qe.ScrollRequest(offset=offset, limit=1024, filter=flt, with_payload=True, with_vector=False)
            )
            for r in recs:
                yield dict(r.payload or {})
            if offset is None:
                return

    def upsert(self, pages: list[_Page]) -> None:
        qe = self.qe
        points = [
            qe.Point(
                p.id,
                {TOKENS: p.vectors, POOLED: p.pooled},
                {"file": p.file, "page": p.page, "n_tokens": len(p.vectors), **p.extra},
            )
            for p in pages
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def _file_filter(self, file: str, only_gen: int | None = None, except_gen: int | None = None) -> Any:
        """A file's pages; of one generation, or all but one (pages without GEN count as not it)."""
        qe = self.qe
        must = [qe.FieldCondition("file", match=qe.MatchValue(file))]
        if only_gen is not None:
            must.append(qe.FieldCondition(GEN, match=qe.MatchValue(int(only_gen))))
        must_not = [qe.FieldCondition(GEN, match=qe.MatchValue(int(except_gen)))] if except_gen is not None else []
        return qe.Filter(must=must, must_not=must_not)

    def delete_file(self, file: str, only_gen: int | None = None, except_gen: int | None = None) -> None:
        flt = self._file_filter(file, only_gen, except_gen)
        self.shard.update(self.qe.UpdateOperation.delete_points_by_filter(flt))

    def flush(self) -> None:
        self.shard.flush()

    def optimize(self) -> None:
        self.shard.optimize()

    def _pages_filter(self) -> Any:
        qe = self.qe
        return qe.Filter(must=[qe.FieldCondition("file", is_empty=False)])

    def count_pages(self) -> int:
        return int(self.shard.count(self.qe.CountRequest(exact=True, filter=self._pages_filter())))

    def scroll_pages(self, file: str | None, generation: int | None = None) -> Iterator[tuple[str, int, int]]:
        qe = self.qe
        flt = self._file_filter(file, only_gen=generation) if file is not None else self._pages_filter()
        offset = None
        while True:
            recs, offset = self.shard.scroll(
                qe.ScrollRequest(
                    offset=offset, limit=1024, filter=flt, with_payload=["file", "page", "n_tokens"], with_vector=False
                )
            )
            for r in recs:
                yield _payload_page(r.payload)
            if offset is None:
                return

    def vectors_of(self, point: str) -> np.ndarray | None:
        recs = self.shard.retrieve([point], with_payload=False, with_vector=[TOKENS])
        return np.asarray(recs[0].vector[TOKENS], dtype=np.float32) if recs else None

    def query(self, q: np.ndarray, k: int, exact: bool, candidates: int) -> list[_Scored]:
        """Pages of documents being indexed (state INDEXING) are left out, in both stages."""
        qe = self.qe
        visible = qe.Filter(must_not=[qe.FieldCondition(STATE, match=qe.MatchValue(INDEXING))])
        if exact:
            req = qe.QueryRequest(
                limit=k,
                query=qe.Query.Nearest(q, using=TOKENS),
                filter=visible,
                params=qe.SearchParams(exact=True),
                with_payload=["file", "page"],
            )
        else:
            n = max(candidates, k)
            pre = qe.Prefetch(
                limit=n,
                query=qe.Query.Nearest(q, using=POOLED),
                filter=visible,
                params=qe.SearchParams(hnsw_ef=max(HNSW_EF, n)),
            )
            req = qe.QueryRequest(
                limit=k,
                prefetches=[pre],
                query=qe.Query.Nearest(q, using=TOKENS),
                filter=visible,
                with_payload=["file", "page"],
            )
        return [_Scored(str(p.payload["file"]), int(p.payload["page"]), float(p.score)) for p in self.shard.query(req)]

    def disk_bytes(self) -> int | None:
        return _folder_bytes(self.folder)

    def close(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None
