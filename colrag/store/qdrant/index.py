"""QdrantIndex: the page-index API (add_page / commit / search / remove_file / close) on a
Qdrant engine, `open_qdrant` (open or create, manifest and retriever checked) and
`copy_local_index` (`colrag export-index`: a local index's stored vectors copied, resumable).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...errors import IndexStoreError, InputError
from ...search import Hit
from ..lock import WriterLock
from .features import EdgeFeatures, edge_features
from .schema import (
    CANDIDATES,
    COMMIT_BATCH,
    DOC,
    EDGE_PREFIX,
    EXACT_ALL_PAGES,
    FLOAT16_MAX,
    FORMAT,
    HNSW_M,
    POOLED,
    POOLED_VECTORS,
    SCHEMA_VERSION,
    SERVER_PREFIX,
    TOKENS,
    Engine,
    _edge_folder,
    _Page,
    check_manifest,
    doc_point_id,
    parse_spec,
    point_id,
    pool_tokens,
    serving_generation,
)


@dataclass
class QdrantIndex:
    """A page index in Qdrant (see the module docstring). Open with open_qdrant()."""

    engine: Engine
    location: str
    dim: int | None
    manifest: dict[str, Any] | None
    retriever: dict[str, Any] | None = None
    exact_all_pages: int = EXACT_ALL_PAGES
    candidates: int = CANDIDATES
    lock: WriterLock | None = None
    folder: Path | None = None  # an Edge index's folder (None: a server collection)
    features: EdgeFeatures | None = None  # the Edge folder's page features, when the manifest names them
    extra_manifest: dict[str, Any] = field(default_factory=dict)  # more manifest fields for a new index
    _pending: list[tuple[str, Any]] = field(default_factory=list)
    _closed: bool = False

    # -- writing ------------------------------------------------------------------
    def add_page(
        self, file: str, page: int, vectors: np.ndarray, *, extra: dict[str, Any] | None = None, generation: int = 0
    ) -> None:
        """Buffer one page's (n_tokens, dim) vectors; stored by the next commit(). `extra`: more payload
        (`colrag index` adds width, height, state and the document's generation, which picks the point id)."""
        self._open()
        if not isinstance(file, str) or not file:
            raise InputError("add_page: file must be a non-empty string")
        if int(page) < 1:
            raise InputError(f"add_page: page numbers are 1-based, got {page}")
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) == 0:
            raise InputError(f"{file} page {page}: vectors of shape {vecs.shape}, expected (n_tokens, dim)")
        if self.dim is None:
            self.dim = int(vecs.shape[1])
        if vecs.shape[1] != self.dim:
            raise InputError(f"{file} page {page}: {vecs.shape[1]}-d vectors, the index holds {self.dim}-d ones")
        if not np.all(np.isfinite(vecs)) or np.abs(vecs).max() > FLOAT16_MAX:
            raise InputError(f"{file} page {page}: non-finite vectors (or beyond float16's range)")
        vecs = np.ascontiguousarray(vecs)
        page_ = _Page(point_id(file, page, generation), file, int(page), vecs, pool_tokens(vecs), dict(extra or {}))
        self._pending.append(("add", page_))

    def remove_file(self, file: str) -> None:
        """Forget every page of a file, its catalog facts and its page features (at the next commit())."""
        self._open()
        self._pending.append(("remove", file))

    def commit(self) -> None:
        """Store the buffered pages and removals, in order; on return they are searchable and durable."""
        self._open()
        if not self._pending:
            return
        if self.manifest is None:
            if self.dim is None:  # only removals on an index never written
                self._pending.clear()
                return
            self._create()
        batch: list[_Page] = []
        for kind, item in self._pending:
            if kind == "add":
                batch.append(item)
                if len(batch) >= COMMIT_BATCH:
                    self.engine.upsert(batch)
                    batch = []
            else:
                if batch:
                    self.engine.upsert(batch)
                    batch = []
                self._forget(item)
        if batch:
            self.engine.upsert(batch)
        self.engine.flush()
        self._pending.clear()

    def _forget(self, file: str) -> None:
        pages = [p for _, p, _ in self.engine.scroll_pages(file)] if self.features is not None else []
        self.engine.delete_file(file)
        self.engine.delete_ids([doc_point_id(file)])
        if self.features is not None:
            self.features.remove(file, pages)

    def ensure_created(self) -> None:
        """Create the collection and its manifest now (the index's dim must be known)."""
        self._open()
        if self.manifest is None:
            if self.dim is None:
                raise IndexStoreError(f"index {self.location}: the vector size is not known yet")
            self._create()

    def update_manifest(self, fields: dict[str, Any]) -> None:
        """Add fields to the stored manifest (e.g. page_features, for pages indexed from now on)."""
        self.ensure_created()
        assert self.manifest is not None
        self.manifest = {**self.manifest, **fields}
        self.engine.put_manifest(self.manifest)

    def _create(self) -> None:
        assert self.dim is not None
        self.engine.create(self.dim)
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "colrag_version": __version__,
            "created_at": time.time(),
            "dim": self.dim,
            "retriever": self.retriever,  # None: vectors added through the API, no model known
            "vectors": {
                TOKENS: "multivector MaxSim, float16, HNSW off (m=0)",
                POOLED: f"{POOLED_VECTORS} k-means centroids, multivector MaxSim, float16, HNSW m={HNSW_M}",
            },
            **self.extra_manifest,
        }
        self.engine.put_manifest(manifest)
        self.manifest = manifest

    # -- reading ------------------------------------------------------------------
    def search(self, query_vectors: np.ndarray, k: int = 5) -> list[Hit]:
        """The k best pages by MaxSim: [Hit(file, page, score)], best first (ties: file, page)."""
        self._open()
        if k < 1:
            raise InputError("k (--top-k) must be at least 1")
        q = np.asarray(query_vectors, dtype=np.float32)
        if self.manifest is None or self.dim is None:
            raise IndexStoreError(
                f"index {self.location} has no pages yet: add pages (or run `colrag index DIR`) first"
            )
        if q.ndim != 2 or q.shape[1] != self.dim or len(q) == 0 or not np.all(np.isfinite(q)):
            raise InputError(f"query vectors of shape {q.shape}, expected finite (n_tokens, {self.dim})")
        n_pages = self.engine.count_pages()
        exact = n_pages <= max(self.exact_all_pages, k)
        found = self.engine.query(q, k, exact, self.candidates)
        found.sort(key=lambda s: (-s.score, s.file, s.page))
        return [Hit(s.file, s.page, float(s.score)) for s in found[:k]]

    def search_text(self, query: str, retriever: Any, k: int = 5) -> list[Hit]:
        """The k best pages for a text query, embedded by the retriever that built the index."""
        built = (self.manifest or {}).get("retriever")
        if not built:
            raise IndexStoreError(
                f"index {self.location} holds precomputed vectors and records no retriever: "
                "search it with query vectors (search)"
            )
        if built.get("bundle_id") != str(retriever.bundle_id):
            raise IndexStoreError(
                f"index {self.location} was built with retriever {built.get('name')!r} "
                f"(bundle {built.get('bundle_id')}), ({retriever.name!r}): use the same retriever"
            )
        (q,) = retriever.embed_queries([query])
        return self.search(q, k)

    def optimize(self) -> None:
        """Let Qdrant build what its optimizers build (the pooled vectors' HNSW graph, merged segments) now.

        An Edge shard has no background optimizer: until this runs, new pages' pooled vectors
        are scanned rather than looked up in the graph (same results, slower).
        `colrag index` runs it at the end of a run."""
        self._open()
        if self.manifest is not None:
            self.engine.optimize()

    def pages(self, file: str | None = None) -> set[tuple[str, int]]:
        """Committed (file, page) pairs, of one file or all: what a resumed run can skip."""
        self._open()
        if self.manifest is None:
            return set()
        return {(f, p) for f, p, _ in self.engine.scroll_pages(file)}

    def page_vectors(self, file: str, page: int) -> np.ndarray | None:
        """The stored (n_tokens, dim) vectors of a page as searched now (float16 values as float32), None
        if absent. While a changed file is re-indexed that is its previous version (catalog.py)."""
        self._open()
        if self.manifest is None:
            return None
        generation = serving_generation(self.engine.get_meta(doc_point_id(file)))
        return self.engine.vectors_of(point_id(file, page, generation))

    def stats(self) -> dict[str, Any]:
        self._open()
        files: dict[str, int] = {}
        tokens = 0
        if self.manifest is not None:
            for f, _, n in self.engine.scroll_pages(None):
                files[f] = files.get(f, 0) + 1
                tokens += n
        pages = sum(files.values())
        disk = self.engine.disk_bytes()
        return {
            "index": self.location,
            "backend": type(self.engine).__name__,
            "documents": len(files),
            "pages": pages,
            "tokens": tokens,
            "dim": self.dim,
            "retriever": (self.manifest or {}).get("retriever"),
            "bytes_on_disk": disk,
            "bytes_per_page": round(disk / pages) if disk is not None and pages else None,
        }

    # -- lifetime -----------------------------------------------------------------
    def _open(self) -> None:
        if self._closed:
            raise IndexStoreError(f"index {self.location} is closed")

    def close(self) -> None:
        """Close without committing: pages added since the last commit() are dropped."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        try:
            self.engine.close()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def __enter__(self) -> QdrantIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_qdrant(
    spec: str,
    create: bool = True,
    dim: int | None = None,
    retriever: dict[str, Any] | None = None,
    *,
    client: Any = None,
) -> QdrantIndex:
    """Open (or, with create=True, create on first commit) a Qdrant page index.

    spec: 'qdrant+edge:PATH' or 'qdrant:http://HOST:6333/COLLECTION'. `client` replaces the
    QdrantClient made from the URL (tests pass QdrantClient(':memory:')); then spec's URL is
    only a label. `retriever` ({"bundle_id", "name"}) is recorded at creation and checked after.
    """
    kind, where, collection = parse_spec(spec)
    lock = None
    engine: Engine
    if kind == "edge":
        folder = Path(where).expanduser()
        lock = _edge_folder(folder, create)
        try:
            from .edge import EdgeEngine

            engine = EdgeEngine(folder)
        except BaseException:
            lock.release()
            raise
        location = f"{EDGE_PREFIX}{folder}"
    else:
        assert collection is not None
        from .server import ServerEngine

        engine = ServerEngine(client, where, collection)
        location = f"{SERVER_PREFIX}{where}/{collection}"
    try:
        manifest = engine.get_manifest() if engine.exists() else None
        if manifest is None:
            if engine.exists() and not engine.is_empty():  # an empty one (made by hand, or a crash) is adopted
                raise IndexStoreError(
                    f"{location} exists and is not a colrag index (no colrag manifest point); choose another"
                )
            if not create:
                raise IndexStoreError(f"no index at {location}: run `colrag index DIR --index {spec}` to create it")
        else:
            dim = check_manifest(manifest, location, dim)
            built = manifest.get("retriever")
            if retriever is not None and built is not None and built.get("bundle_id") != retriever.get("bundle_id"):
                raise IndexStoreError(
                    f"index {location} was built with retriever {built.get('name')!r} "
                    f"(bundle {built.get('bundle_id')}), "
                    f"not the one given ({retriever.get('name')!r}): use the same retriever, or another --index"
                )
        edge_folder = Path(where).expanduser() if kind == "edge" else None
        features = edge_features(edge_folder, manifest)
        return QdrantIndex(engine, location, dim, manifest, retriever, lock=lock, folder=edge_folder, features=features)
    except BaseException:
        engine.close()
        if lock is not None:
            lock.release()
        raise


def copy_local_index(
    source: str | os.PathLike, target: str, *, client: Any = None, progress: Any = None
) -> dict[str, int]:
    """Copy a local colrag index's pages into a Qdrant index, without re-embedding: the stored
    vectors are read back (Index.page_vectors) and added page by page, then each document's
    catalog facts (so `colrag index --index qdrant...` afterwards skips the unchanged files).
    Resumable: pages the target already holds are skipped, commits happen every COMMIT_BATCH
    pages, so a copy interrupted at any moment is finished by running it again. Returns counts."""
    from ..index import Index

    with Index.open(source) as src:
        info = src.manifest.get("retriever") or {}
        retriever = {"bundle_id": info.get("bundle_id"), "name": info.get("name")} if info else None
        snap = src.snapshot()
        with open_qdrant(target, create=True, dim=src.dim, retriever=retriever, client=client) as dst:
            dst.extra_manifest = {"max_pixels": src.manifest.get("max_pixels"), "render": src.render.as_dict()}
            have = dst.pages()
            copied = skipped = 0
            for record in snap.pages:
                if (record.path, record.page_no) in have:
                    skipped += 1
                    continue
                dst.add_page(record.path, record.page_no, src.page_vectors(snap, record))
                copied += 1
                if copied % COMMIT_BATCH == 0:
                    dst.commit()
                    if progress is not None:
                        progress(copied + skipped, len(snap.pages))
            dst.commit()
            _copy_documents(src, dst)
            if copied:
                dst.optimize()
    return {"pages": len(snap.pages), "copied": copied, "skipped": skipped}


def _copy_documents(src: Any, dst: QdrantIndex) -> None:
    """The source's done and failed documents as document points (colrag.store.qdrant.catalog)."""
    dst.ensure_created()
    for doc in src.documents():
        if doc.status not in ("done", "failed"):
            continue
        errors = [[p, kind, msg] for _, p, kind, msg in src.page_errors(doc.id)]
        facts = {"size": doc.size, "mtime_ns": doc.mtime_ns, "sha256": doc.sha256, "n_pages": doc.n_pages}
        payload = {DOC: doc.path, **facts, "status": doc.status, "error": doc.error, "page_errors": errors}
        dst.engine.put_meta(doc_point_id(doc.path), payload)
    dst.engine.flush()
