"""Pages in Qdrant: the page-index API (add_page / commit / search / remove_file / close) on
Qdrant's engine, embedded (`qdrant+edge:PATH`, the `qdrant-edge-py` package) or on a server
or cluster (`qdrant:http://HOST:6333/COLLECTION`, the `qdrant-client` package).

Install with `pip install 'colrag[qdrant]'`. Nothing here imports qdrant until an index is opened.

One Qdrant point per page, id uuid5(file, page) (so re-adding a page overwrites it: a resumed
run never duplicates), with
    vector "tokens":  the page's token vectors, a multivector compared by MaxSim, stored as
                      float16, HNSW off (m=0: a graph over every token vector is what Qdrant's
                      docs advise against; it ran for minutes at 200 pages here)
    vector "pooled":  POOLED_VECTORS k-means centroids of the page's tokens (pool_tokens), a
                      multivector compared by MaxSim, float16, with an HNSW graph over pages:
                      the candidate stage (Qdrant's documented pattern for ColPali-style pages)
    payload:          {"file", "page", "n_tokens"} (a keyword index on "file")
and one vector-less point (MANIFEST_ID) holding the index's manifest (format, dim, retriever).

Search: up to EXACT_ALL_PAGES pages, Qdrant's exact MaxSim over every page's float16 vectors,
i.e. brute force (Qdrant rounds the query to float16 too and sums in float32). Larger: the
`candidates` pages found by HNSW on the pooled multivectors are prefetched and ranked by
Qdrant's MaxSim over their float16 token vectors; every returned score is that MaxSim.
Binary quantization was measured and left out: on Qdrant Edge 0.9 it made multivector
MaxSim slower, not faster (docs/SCALE.md). Measured recall and latency: docs/SCALE.md.

Where the catalog lives: in the points' payload, not in a local SQLite file. A Qdrant server
is shared by several indexing machines and readers; a catalog on one machine would diverge,
and keeping a SQLite file and a remote collection in step would need a two-phase commit.
With the payload, a page and its catalog facts are one point written by one operation.

Durability: `commit()` sends the buffered pages (one upsert per COMMIT_BATCH pages) and, on
Edge, calls EdgeShard.flush(). Qdrant writes every update to its write-ahead log before
applying it and replays the log when the shard is loaded, so a process killed at any moment
leaves an openable shard holding every committed page; pages not yet committed are lost and
are re-added by the resumed run (same ids). An Edge shard is opened by one process at a
time (Qdrant locks its WAL); a server takes concurrent writers and readers.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import __version__
from ..bundle import atomic_write_json
from ..errors import IndexStoreError, InputError
from ..search import Hit
from .lock import LOCK_FILE, WriterLock

EDGE_PREFIX = "qdrant+edge:"
SERVER_PREFIX = "qdrant:"
FORMAT = "colrag-qdrant"
SCHEMA_VERSION = 1
EDGE_MARKER = "colrag-qdrant.json"  # in an Edge index folder: says colrag made it
EDGE_SHARD_DIR = "shard"
TOKENS = "tokens"
POOLED = "pooled"
MANIFEST_ID = "00000000-0000-4000-8000-00000000c01a"
_ID_NAMESPACE = uuid.UUID("6f0c5a9e-3d1b-4f5e-9a57-2f4b8c1d7e01")
EXACT_ALL_PAGES = 500  # up to this many pages every page is scored exactly (brute force)
POOLED_VECTORS = 32  # k-means centroids of a page's tokens: the candidate stage's small multivector
POOLED_ITERATIONS = 4
CANDIDATES = 256  # pages prefetched by the pooled multivector in a larger index
HNSW_M = 16  # the pooled multivectors' HNSW graph (Qdrant's defaults)
HNSW_EF_CONSTRUCT = 100
HNSW_EF = 128  # search-time ef (at least the number of candidates)
HNSW_FULL_SCAN_KB = 1000  # below this much pooled data in a segment Qdrant scans instead
COMMIT_BATCH = 64  # pages per upsert request
FLOAT16_MAX = 65504.0


class PageIndex(Protocol):
    """The page-index API of issue 12 (`colrag.open_index`), which this backend implements."""

    dim: int | None

    def add_page(self, file: str, page: int, vectors: np.ndarray) -> None: ...
    def commit(self) -> None: ...
    def search(self, query_vectors: np.ndarray, k: int = 5) -> list[Hit]: ...
    def remove_file(self, file: str) -> None: ...
    def close(self) -> None: ...


def is_qdrant_spec(spec: str | os.PathLike | None) -> bool:
    return isinstance(spec, str) and (spec.startswith(EDGE_PREFIX) or spec.startswith(SERVER_PREFIX))


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'qdrant+edge:PATH' -> ('edge', PATH, None);
    'qdrant:http(s)://HOST:PORT/COLLECTION' -> ('server', URL, COLLECTION)."""
    if spec.startswith(EDGE_PREFIX):
        path = spec[len(EDGE_PREFIX) :]
        if not path:
            raise InputError("--index qdrant+edge:PATH needs a folder path")
        return "edge", path, None
    if spec.startswith(SERVER_PREFIX):
        rest = spec[len(SERVER_PREFIX) :]
        if not (rest.startswith("http://") or rest.startswith("https://")):
            raise InputError(f"--index {spec!r}: expected qdrant:http://HOST:6333/COLLECTION")
        scheme, _, tail = rest.partition("://")
        host, _, collection = tail.partition("/")
        collection = collection.strip("/")
        if not host or not collection or "/" in collection:
            raise InputError(f"--index {spec!r}: expected qdrant:http://HOST:6333/COLLECTION (one collection name)")
        if not collection.replace("-", "").replace("_", "").isalnum():
            raise InputError(f"invalid Qdrant collection name {collection!r}: use letters, digits, '-' and '_'")
        return "server", f"{scheme}://{host}", collection
    raise InputError(f"{spec!r} is not a Qdrant index (qdrant+edge:PATH or qdrant:http://HOST:6333/COLLECTION)")


def pool_tokens(vectors: np.ndarray, n: int = POOLED_VECTORS, iterations: int = POOLED_ITERATIONS) -> np.ndarray:
    """A page's tokens summarised by n centroids (k-means by dot product, deterministic: seeded
    with evenly spaced tokens); a page of at most n tokens is its own summary."""
    if len(vectors) <= n:
        return vectors
    centres = vectors[np.linspace(0, len(vectors) - 1, n).astype(int)].copy()  # (n, dim)
    for _ in range(iterations):
        assign = np.argmax(vectors @ centres.T, axis=1)  # (n_tokens,)
        onehot = np.zeros((len(vectors), n), dtype=np.float32)
        onehot[np.arange(len(vectors)), assign] = 1.0
        sums = onehot.T @ vectors  # (n, dim)
        counts = np.bincount(assign, minlength=n)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return np.ascontiguousarray(centres, dtype=np.float32)


def point_id(file: str, page: int) -> str:
    """The page's point id: deterministic, so writing a page again replaces it."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{file}\0{int(page)}"))


def _import(module: str) -> Any:
    try:
        return __import__(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise IndexStoreError(
            f"a Qdrant index needs the {module.replace('_', '-')} package: pip install 'colrag[qdrant]'"
        ) from None


@dataclass
class _Page:
    id: str
    file: str
    page: int
    vectors: np.ndarray  # (n_tokens, dim) float32
    pooled: np.ndarray  # (<= POOLED_VECTORS, dim) float32


@dataclass
class _Scored:
    file: str
    page: int
    score: float


class _Engine(Protocol):
    """What QdrantIndex needs from a Qdrant: the embedded engine or a server collection."""

    def exists(self) -> bool: ...
    def is_empty(self) -> bool: ...
    def create(self, dim: int) -> None: ...
    def get_manifest(self) -> dict[str, Any] | None: ...
    def put_manifest(self, manifest: dict[str, Any]) -> None: ...
    def upsert(self, pages: list[_Page]) -> None: ...
    def delete_file(self, file: str) -> None: ...
    def flush(self) -> None: ...
    def count_pages(self) -> int: ...
    def scroll_pages(self, file: str | None) -> Iterator[tuple[str, int, int]]: ...
    def vectors_of(self, file: str, page: int) -> np.ndarray | None: ...
    def query(self, q: np.ndarray, k: int, exact: bool, candidates: int) -> list[_Scored]: ...
    def optimize(self) -> None: ...
    def disk_bytes(self) -> int | None: ...
    def close(self) -> None: ...


@dataclass
class QdrantIndex:
    """A page index in Qdrant (see the module docstring). Open with open_qdrant()."""

    engine: _Engine
    location: str
    dim: int | None
    manifest: dict[str, Any] | None
    retriever: dict[str, Any] | None = None
    exact_all_pages: int = EXACT_ALL_PAGES
    candidates: int = CANDIDATES
    lock: WriterLock | None = None
    _pending: list[tuple[str, Any]] = field(default_factory=list)
    _closed: bool = False

    # -- writing ------------------------------------------------------------------
    def add_page(self, file: str, page: int, vectors: np.ndarray) -> None:
        """Buffer one page's (n_tokens, dim) vectors; stored by the next commit()."""
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
        self._pending.append(("add", _Page(point_id(file, page), file, int(page), vecs, pool_tokens(vecs))))

    def remove_file(self, file: str) -> None:
        """Forget every page of a file (at the next commit())."""
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
                self.engine.delete_file(item)
        if batch:
            self.engine.upsert(batch)
        self.engine.flush()
        self._pending.clear()

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
        """The stored (n_tokens, dim) vectors of a page (float16 values as float32), None if absent."""
        self._open()
        return None if self.manifest is None else self.engine.vectors_of(file, page)

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


def check_manifest(manifest: dict[str, Any], where: str, dim: int | None) -> int:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexStoreError(f"{where} is not a colrag index (no colrag manifest in it)")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise IndexStoreError(
            f"index {where} has schema version {version!r}, newer than this colrag reads ({SCHEMA_VERSION}): "
            "upgrade colrag"
        )
    stored = manifest.get("dim")
    if not isinstance(stored, int) or stored < 1:
        raise IndexStoreError(f"index {where}: its manifest has no valid dim ({stored!r})")
    if dim is not None and dim != stored:
        raise IndexStoreError(f"index {where} holds {stored}-d vectors, not {dim}-d")
    return stored


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
    engine: _Engine
    if kind == "edge":
        folder = Path(where).expanduser()
        lock = _edge_folder(folder, create)
        try:
            engine = _EdgeEngine(folder)
        except BaseException:
            lock.release()
            raise
        location = f"{EDGE_PREFIX}{folder}"
    else:
        assert collection is not None
        engine = _ServerEngine(client, where, collection)
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
        return QdrantIndex(engine, location, dim, manifest, retriever, lock=lock)
    except BaseException:
        engine.close()
        if lock is not None:
            lock.release()
        raise


def _edge_folder(folder: Path, create: bool) -> WriterLock:
    """Check the folder is an Edge index colrag made (or a new/empty one), and lock it."""
    if folder.exists() and not folder.is_dir():
        raise IndexStoreError(f"{folder} is a file, not an index folder")
    marker = folder / EDGE_MARKER
    if not marker.is_file():
        if not create:
            raise IndexStoreError(
                f"no index at {folder}: run `colrag index DIR --index {EDGE_PREFIX}{folder}` to create it"
            )
        if folder.is_dir():
            strangers = sorted(p.name for p in folder.iterdir() if p.name not in (LOCK_FILE,))
            if strangers:
                raise IndexStoreError(
                    f"{folder} exists and is not a colrag index (it holds {', '.join(strangers[:3])}); "
                    "choose another --index"
                )
        folder.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(folder)
    try:
        lock.acquire()
    except IndexStoreError:
        raise IndexStoreError(
            f"index {folder} is open in another colrag process; a Qdrant Edge index is opened by one process at a time "
            "(use a Qdrant server to share one)"
        ) from None
    if not marker.is_file():
        atomic_write_json(
            marker, {"format": FORMAT + "-edge", "schema_version": SCHEMA_VERSION, "shard": EDGE_SHARD_DIR}
        )
    return lock


def _folder_bytes(folder: Path) -> int:
    """Bytes the folder's files occupy on disk (allocated blocks: Qdrant's files are sparse)."""
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_blocks * 512
        except FileNotFoundError:
            pass
    return total


# -- Qdrant Edge (embedded engine) ----------------------------------------------------


class _EdgeEngine:
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
            self.shard.update(qe.UpdateOperation.create_field_index("file", qe.PayloadSchemaType.Keyword))
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
        self.shard.update(qe.UpdateOperation.create_field_index("file", qe.PayloadSchemaType.Keyword))

    def get_manifest(self) -> dict[str, Any] | None:
        recs = self.shard.retrieve([MANIFEST_ID], with_payload=True, with_vector=False)
        return dict(recs[0].payload) if recs else None

    def put_manifest(self, manifest: dict[str, Any]) -> None:
        self.shard.update(self.qe.UpdateOperation.upsert_points([self.qe.Point(MANIFEST_ID, {}, manifest)]))
        self.shard.flush()

    def upsert(self, pages: list[_Page]) -> None:
        qe = self.qe
        points = [
            qe.Point(
                p.id,
                {TOKENS: p.vectors, POOLED: p.pooled},
                {"file": p.file, "page": p.page, "n_tokens": len(p.vectors)},
            )
            for p in pages
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def _file_filter(self, file: str) -> Any:
        qe = self.qe
        return qe.Filter(must=[qe.FieldCondition("file", match=qe.MatchValue(file))])

    def delete_file(self, file: str) -> None:
        self.shard.update(self.qe.UpdateOperation.delete_points_by_filter(self._file_filter(file)))

    def flush(self) -> None:
        self.shard.flush()

    def optimize(self) -> None:
        self.shard.optimize()

    def _pages_filter(self) -> Any:
        qe = self.qe
        return qe.Filter(must=[qe.FieldCondition("file", is_empty=False)])

    def count_pages(self) -> int:
        return int(self.shard.count(self.qe.CountRequest(exact=True, filter=self._pages_filter())))

    def scroll_pages(self, file: str | None) -> Iterator[tuple[str, int, int]]:
        qe = self.qe
        flt = self._file_filter(file) if file is not None else self._pages_filter()
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

    def vectors_of(self, file: str, page: int) -> np.ndarray | None:
        recs = self.shard.retrieve([point_id(file, page)], with_payload=False, with_vector=[TOKENS])
        return np.asarray(recs[0].vector[TOKENS], dtype=np.float32) if recs else None

    def query(self, q: np.ndarray, k: int, exact: bool, candidates: int) -> list[_Scored]:
        qe = self.qe
        if exact:
            req = qe.QueryRequest(
                limit=k,
                query=qe.Query.Nearest(q, using=TOKENS),
                params=qe.SearchParams(exact=True),
                with_payload=["file", "page"],
            )
        else:
            n = max(candidates, k)
            pre = qe.Prefetch(
                limit=n, query=qe.Query.Nearest(q, using=POOLED), params=qe.SearchParams(hnsw_ef=max(HNSW_EF, n))
            )
            req = qe.QueryRequest(
                limit=k, prefetches=[pre], query=qe.Query.Nearest(q, using=TOKENS), with_payload=["file", "page"]
            )
        return [_Scored(str(p.payload["file"]), int(p.payload["page"]), float(p.score)) for p in self.shard.query(req)]

    def disk_bytes(self) -> int | None:
        return _folder_bytes(self.folder)

    def close(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None


def _payload_page(payload: dict[str, Any] | None) -> tuple[str, int, int]:
    if not payload or not isinstance(payload.get("file"), str) or not isinstance(payload.get("page"), int):
        raise IndexStoreError(f"a page point has an invalid payload {payload!r}: the index is damaged")
    return payload["file"], payload["page"], int(payload.get("n_tokens", 0))


# -- a Qdrant server or cluster (qdrant-client) ---------------------------------------


class _ServerEngine:
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
        self.client.create_payload_index(self.collection, "file", m.PayloadSchemaType.KEYWORD, wait=True)

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
        recs = self.client.retrieve(self.collection, [MANIFEST_ID], with_payload=True, with_vectors=False)
        return dict(recs[0].payload) if recs else None

    def put_manifest(self, manifest: dict[str, Any]) -> None:
        self.client.upsert(
            self.collection, [self.models.PointStruct(id=MANIFEST_ID, vector={}, payload=manifest)], wait=True
        )

    def upsert(self, pages: list[_Page]) -> None:
        m = self.models
        points = [
            m.PointStruct(
                id=p.id,
                vector={TOKENS: p.vectors.tolist(), POOLED: p.pooled.tolist()},
                payload={"file": p.file, "page": p.page, "n_tokens": len(p.vectors)},
            )
            for p in pages
        ]
        self.client.upsert(self.collection, points, wait=True)

    def _file_filter(self, file: str) -> Any:
        m = self.models
        return m.Filter(must=[m.FieldCondition(key="file", match=m.MatchValue(value=file))])

    def _pages_filter(self) -> Any:
        m = self.models
        return m.Filter(must_not=[m.IsEmptyCondition(is_empty=m.PayloadField(key="file"))])

    def delete_file(self, file: str) -> None:
        self.client.delete(
            self.collection, points_selector=self.models.FilterSelector(filter=self._file_filter(file)), wait=True
        )

    def flush(self) -> None:
        """Every request waited for the server to apply it (wait=True)."""

    def optimize(self) -> None:
        """A server optimizes (quantizes, builds HNSW) in the background on its own."""

    def count_pages(self) -> int:
        return int(self.client.count(self.collection, count_filter=self._pages_filter(), exact=True).count)

    def scroll_pages(self, file: str | None) -> Iterator[tuple[str, int, int]]:
        flt = self._file_filter(file) if file is not None else self._pages_filter()
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

    def vectors_of(self, file: str, page: int) -> np.ndarray | None:
        recs = self.client.retrieve(self.collection, [point_id(file, page)], with_payload=False, with_vectors=[TOKENS])
        return np.asarray(recs[0].vector[TOKENS], dtype=np.float32) if recs else None

    def query(self, q: np.ndarray, k: int, exact: bool, candidates: int) -> list[_Scored]:
        m = self.models
        if exact:
            res = self.client.query_points(
                self.collection,
                query=q.tolist(),
                using=TOKENS,
                limit=k,
                search_params=m.SearchParams(exact=True),
                with_payload=["file", "page"],
            )
        else:
            n = max(candidates, k)
            pre = m.Prefetch(query=q.tolist(), using=POOLED, limit=n, params=m.SearchParams(hnsw_ef=max(HNSW_EF, n)))
            res = self.client.query_points(
                self.collection, prefetch=[pre], query=q.tolist(), using=TOKENS, limit=k, with_payload=["file", "page"]
            )
        return [_Scored(str(p.payload["file"]), int(p.payload["page"]), float(p.score)) for p in res.points]

    def disk_bytes(self) -> int | None:
        return None  # the server's disk is not ours to measure

    def close(self) -> None:
        if self.own_client:
            self.client.close()


def copy_local_index(
    source: str | os.PathLike, target: str, *, client: Any = None, progress: Any = None
) -> dict[str, int]:
    """Copy a local colrag index's pages into a Qdrant index, without re-embedding: the stored
    vectors are read back (Index.page_vectors) and added page by page. Resumable: pages the
    target already holds are skipped, commits happen every COMMIT_BATCH pages, so a copy
    interrupted at any moment is finished by running it again. Returns counts."""
    from .index import Index

    with Index.open(source) as src:
        info = src.manifest.get("retriever") or {}
        retriever = {"bundle_id": info.get("bundle_id"), "name": info.get("name")} if info else None
        snap = src.snapshot()
        with open_qdrant(target, create=True, dim=src.dim, retriever=retriever, client=client) as dst:
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
            if copied:
                dst.optimize()
    return {"pages": len(snap.pages), "copied": copied, "skipped": skipped}
