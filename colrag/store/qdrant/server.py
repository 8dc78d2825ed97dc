"""A Qdrant server or cluster through `qdrant-client` (`qdrant:http://HOST:6333/COLLECTION`).

Every write waits for the server (wait=True); the server optimizes (builds HNSW, merges
segments) in the background. Tests run it against qdrant-client's local mode, a Python
re-implementation of the API, not against a real server (docs/SCALE.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ...errors import IndexStoreError
from .schema import (
    DOC,
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
    _import,
    _Page,
    _payload_page,
    _Scored,
)


class ServerEngine:
    def __init__(self, client: Any, url: str, collection: str):
        qc = _import("qdrant_client")
        self.models = qc.models
        self.own_client = client is None  # a client passed in is the caller's to close
        self.client = client if client is not None else qc.QdrantClient(url=url, timeout=60)
        self.collection = collection

    def exists(self) -> bool:
        return bool(self.client.collection_exists(self.collection))

    def is_empty(self) -> bool:
        return int(self.client.count(self.collection, exact=True).count) == 0

    def create(self, dim: int) -> None:
        """Create the collection, or adopt an empty one made beforehand (e.g. with shards and replicas)."""
        m = self.models
        if self.exists():
            self._check_vectors(dim)
        else:
            self._create_collection(dim)
        for key in ("file", DOC, STATE):
            self.client.create_payload_index(self.collection, key, m.PayloadSchemaType.KEYWORD, wait=True)

    def _check_vectors(self, dim: int) -> None:
        vectors = self.client.get_collection(self.collection).config.params.vectors
        for name in (TOKENS, POOLED):
            v = vectors.get(name) if isinstance(vectors, dict) else None
            if v is None or v.size != dim or v.multivector_config is None:
                raise IndexStoreError(
                    f"Qdrant collection {self.collection} exists without a {dim}-d multivector {name!r}: "
                    "create it with colrag's vector config (docs/SCALE.md) or let colrag create it"
                )

    def _create_collection(self, dim: int) -> None:
        m = self.models
        self.client.create_collection(
            self.collection,
            vectors_config={
                TOKENS: m.VectorParams(
                    size=dim,
                    distance=m.Distance.DOT,
                    multivector_config=m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM),
                    datatype=m.Datatype.FLOAT16,
                    hnsw_config=m.HnswConfigDiff(m=0),
                ),
                POOLED: m.VectorParams(
                    size=dim,
                    distance=m.Distance.DOT,
                    multivector_config=m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM),
                    datatype=m.Datatype.FLOAT16,
                    hnsw_config=m.HnswConfigDiff(
                        m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=HNSW_FULL_SCAN_KB
                    ),
                ),
            },
        )

    def get_manifest(self) -> dict[str, Any] | None:
        return self.get_meta(MANIFEST_ID)

    def put_manifest(self, manifest: dict[str, Any]) -> None:
        self.put_meta(MANIFEST_ID, manifest)

    def get_meta(self, point: str) -> dict[str, Any] | None:
        """The payload of a vector-less point (the manifest, a document), None if absent."""
        recs = self.client.retrieve(self.collection, [point], with_payload=True, with_vectors=False)
        return dict(recs[0].payload) if recs else None

    def put_meta(self, point: str, payload: dict[str, Any]) -> None:
        self.client.upsert(self.collection, [self.models.PointStruct(id=point, vector={}, payload=payload)], wait=True)

    def delete_ids(self, points: list[str]) -> None:
        if points:
            selector = self.models.PointIdsList(points=list(points))
            self.client.delete(self.collection, points_selector=selector, wait=True)

    def set_file_state(self, file: str, state: str, generation: int | None = None) -> None:
        """Every page of a file (of one generation) gets payload state=`state` (one request)."""
        selector = self.models.FilterSelector(filter=self._file_filter(file, only_gen=generation))
        self.client.set_payload(self.collection, payload={STATE: state}, points=selector, wait=True)

    def scroll_docs(self) -> Iterator[dict[str, Any]]:
        """The payloads of every document point."""
        m = self.models
        flt = m.Filter(must_not=[m.IsEmptyCondition(is_empty=m.PayloadField(key=DOC))])
        offset = None
        while True:
            recs, offset = self.client.scroll(
                self.collection, scroll_filter=flt, limit=1024, offset=offset, with_payload=True, with_vectors=False
            )
            for r in recs:
                yield dict(r.payload or {})
            if offset is None:
                return

    def upsert(self, pages: list[_Page]) -> None:
        m = self.models
        points = [
            m.PointStruct(
                id=p.id,
                vector={TOKENS: p.vectors.tolist(), POOLED: p.pooled.tolist()},
                payload={"file": p.file, "page": p.page, "n_tokens": len(p.vectors), **p.extra},
            )
            for p in pages
        ]
        self.client.upsert(self.collection, points, wait=True)

    def _file_filter(self, file: str, only_gen: int | None = None, except_gen: int | None = None) -> Any:
        """A file's pages; of one generation, or all but one (pages without GEN count as not it)."""
        m = self.models
        must = [m.FieldCondition(key="file", match=m.MatchValue(value=file))]
        if only_gen is not None:
            must.append(m.FieldCondition(key=GEN, match=m.MatchValue(value=int(only_gen))))
        must_not = []
        if except_gen is not None:
            must_not.append(m.FieldCondition(key=GEN, match=m.MatchValue(value=int(except_gen))))
        return m.Filter(must=must, must_not=must_not or None)

    def _pages_filter(self) -> Any:
        m = self.models
        return m.Filter(must_not=[m.IsEmptyCondition(is_empty=m.PayloadField(key="file"))])

    def delete_file(self, file: str, only_gen: int | None = None, except_gen: int | None = None) -> None:
        selector = self.models.FilterSelector(filter=self._file_filter(file, only_gen, except_gen))
        self.client.delete(self.collection, points_selector=selector, wait=True)

    def flush(self) -> None:
        """Every request waited for the server to apply it (wait=True)."""

    def optimize(self) -> None:
        """A server optimizes (quantizes, builds HNSW) in the background on its own."""

    def count_pages(self) -> int:
        return int(self.client.count(self.collection, count_filter=self._pages_filter(), exact=True).count)

    def scroll_pages(self, file: str | None, generation: int | None = None) -> Iterator[tuple[str, int, int]]:
        flt = self._file_filter(file, only_gen=generation) if file is not None else self._pages_filter()
        offset = None
        while True:
            recs, offset = self.client.scroll(
                self.collection,
                scroll_filter=flt,
                limit=1024,
                offset=offset,
                with_payload=["file", "page", "n_tokens"],
                with_vectors=False,
            )
            for r in recs:
                yield _payload_page(r.payload)
            if offset is None:
                return

    def vectors_of(self, point: str) -> np.ndarray | None:
        recs = self.client.retrieve(self.collection, [point], with_payload=False, with_vectors=[TOKENS])
        return np.asarray(recs[0].vector[TOKENS], dtype=np.float32) if recs else None

    def query(self, q: np.ndarray, k: int, exact: bool, candidates: int) -> list[_Scored]:
        """Pages of documents being indexed (state INDEXING) are left out, in both stages."""
        m = self.models
        visible = m.Filter(must_not=[m.FieldCondition(key=STATE, match=m.MatchValue(value=INDEXING))])
        if exact:
            res = self.client.query_points(
                self.collection,
                query=q.tolist(),
                using=TOKENS,
                limit=k,
                query_filter=visible,
                search_params=m.SearchParams(exact=True),
                with_payload=["file", "page"],
            )
        else:
            n = max(candidates, k)
            pre = m.Prefetch(
                query=q.tolist(), using=POOLED, limit=n, filter=visible, params=m.SearchParams(hnsw_ef=max(HNSW_EF, n))
            )
            res = self.client.query_points(
                self.collection,
                prefetch=[pre],
                query=q.tolist(),
                using=TOKENS,
                limit=k,
                query_filter=visible,
                with_payload=["file", "page"],
            )
        return [_Scored(str(p.payload["file"]), int(p.payload["page"]), float(p.score)) for p in res.points]

    def disk_bytes(self) -> int | None:
        return None  # the server's disk is not ours to measure

    def close(self) -> None:
        if self.own_client:
            self.client.close()
